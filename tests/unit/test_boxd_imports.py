"""What boxd imports before a box's first request: each module costs every new box's
first exec (an execution's box links Claude Code through files.py before it reads one)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

AGENT = Path(__file__).resolve().parents[2] / "src" / "sophon" / "box" / "agent"

# Loaded on first use only: OpenSSL (~5 ms in a box), the file watcher.
LATER = ("hashlib", "_hashlib", "watch")


def test_boxd_and_its_file_module_load_nothing_heavy_before_the_first_request() -> None:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import daemon, files; "
            "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(AGENT)],
                         capture_output=True, text=True, check=True).stdout.split()
    assert "daemon" in out and "files" in out
    assert not [m for m in LATER if m in out], out
