"""The read-only tmpfs holding boxd's directory, which every box binds (box/agent_fs.py):
a copy of the agent dir that nobody can write, removed when its server closes, and one
left by a server that died removed by the next."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

import pytest

from sophon.box.agent_fs import AgentFs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="it mounts: root only")


def dead_pid() -> int:
    pid = 4_000_000
    while Path(f"/proc/{pid}").exists():
        pid += 1
    return pid


def test_a_read_only_copy_that_goes_with_its_server(tmp_path: Path) -> None:
    source = tmp_path / "agent"
    (source / "__pycache__").mkdir(parents=True)
    (source / "boxd").write_bytes(b"\x7fELF...")
    (source / "boxd").chmod(0o755)
    (source / "helper.py").write_text("print('hi')\n")
    (source / "__pycache__" / "files.cpython-311.pyc").write_bytes(b"pyc")
    (source / ".boxd.123").write_bytes(b"a half-copied file")
    run_dir = tmp_path / "run"
    # One left by a server that died: its pid is no process's now.
    stale = run_dir / str(dead_pid())
    stale.mkdir(parents=True)
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mount(b"tmpfs", str(stale).encode(), b"tmpfs", 0, None) == 0

    fs = AgentFs.mount(source, run_dir)
    assert fs is not None
    try:
        assert not stale.exists()  # the dead server's copy is gone
        assert os.path.ismount(fs.path) and fs.path.name == str(os.getpid())
        assert sorted(str(p.relative_to(fs.path)) for p in fs.path.rglob("*")) == [
            "__pycache__", "__pycache__/files.cpython-311.pyc", "boxd", "helper.py"]
        assert (fs.path / "boxd").stat().st_mode & 0o777 == 0o755
        assert (fs.path / "helper.py").read_text() == "print('hi')\n"
        for write in (lambda: (fs.path / "helper.py").write_text("x"),
                      lambda: (fs.path / "new").write_text("x")):
            with pytest.raises(OSError) as refused:
                write()
            assert refused.value.errno == errno.EROFS
    finally:
        fs.unmount()
    assert not os.path.ismount(fs.path) and not fs.path.exists()


def test_without_a_mount_boxes_get_copies(tmp_path: Path) -> None:
    # A run directory that cannot be made: the server says so and boxes copy the files.
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert AgentFs.mount(tmp_path, blocker / "run") is None
