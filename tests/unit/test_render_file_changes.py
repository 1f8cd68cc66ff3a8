"""How the CLI shows some events: file changes, one by one and folded
(file_changes_coalesced), and a running command's output."""

from __future__ import annotations

import io

from rich.console import Console

from sophon.commands.render import render


def _shown(ev: dict[str, object]) -> str:
    out = io.StringIO()
    render(Console(file=out, width=200, color_system=None), ev)
    return out.getvalue()


def test_a_folded_burst_of_changes_says_how_many_and_names_some() -> None:
    text = _shown({"type": "file_changes_coalesced", "seq": 9, "ts": "2026-01-01T00:00:00Z",
                   "changes": 450, "files": 150, "seconds": 5.0,
                   "paths": [f"f{i:03}.txt" for i in range(100)]})
    assert "450 changes to 150 files in 5 s" in text
    assert "f000.txt, f001.txt, f002.txt, …" in text
    assert "f003.txt" not in text


def test_a_single_change_is_still_shown_with_its_path() -> None:
    text = _shown({"type": "file_change", "seq": 3, "ts": "2026-01-01T00:00:00Z",
                   "path": "calc.py", "change": "modified", "size": 10,
                   "diff": "--- a\n+++ b\n@@ -1 +1 @@\n-a\n+b\n", "diff_truncated": False,
                   "binary": False})
    assert "modified calc.py" in text


def test_a_running_commands_output_is_printed_as_it_comes() -> None:
    text = _shown({"type": "tool_output", "seq": 4, "ts": "2026-01-01T00:00:00Z",
                   "tool_use_id": "toolu_1", "stream": "stdout", "data": "step-1\n",
                   "index": 0})
    assert text == "step-1\n"
