"""How the CLI shows some events: file changes, one by one and folded
(file_changes_coalesced), a running command's output, and checkpoints, rewinds and
reviews."""

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


def test_checkpoints_rewinds_and_reviews_say_what_they_are() -> None:
    assert _shown({"type": "checkpoint", "checkpoint_id": "cp_0123456789abcdef",
                   "reason": "tool", "files_changed": 2}) == \
        "  ⚑ checkpoint cp_0123456789abcdef (after a tool call, 2 files changed)\n"
    assert "(turn end)" in _shown({"type": "checkpoint", "checkpoint_id": "cp_1",
                                   "reason": "turn_end", "files_changed": 0})
    text = _shown({"type": "rewind", "checkpoint_id": "cp_1", "files": True,
                   "conversation": False, "undo": "cp_2"})
    assert text == "↶ rewound files to cp_1 (undo: rewind to cp_2)\n"
    text = _shown({"type": "review", "turn": 3, "rejected": [{}], "comments": [{}, {}]})
    assert "review of turn 3: 1 hunk(s) reverted, 2 comment(s)" in text
