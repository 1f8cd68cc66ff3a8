"""A read-only copy of the agent dir (boxd and its file helper) on a tmpfs of its own,
which every box binds as ``/opt/sophon/agent``: one mount for bwrap instead of a dozen
files copied into each box (boxd alone is 2 MB; the copies took about 2.5 ms of every
start). A tmpfs of its own, so the bind shows in a box's mount table as ``/`` of a tmpfs,
not as a host path that names the data directory. Root only (it mounts).

It lives under /run (RUN_DIR), one per server process, named by its pid: outside the data
directory, so removing a data directory never meets a read-only mount. A server removes
its own when it closes; one left by a process that died is removed by the next server
that starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

from sophon.box.libc import LIBC, checked

log = logging.getLogger(__name__)

RUN_DIR = Path("/run/sophon/agent-fs")
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT = 1, 2, 4, 32
MNT_DETACH = 2


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if os.path.ismount(path):
        LIBC.umount2(str(path).encode(), MNT_DETACH)
    with contextlib.suppress(OSError):
        path.rmdir()


class AgentFs:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def mount(cls, source: Path, run_dir: Path = RUN_DIR,
              what: str = "the agent's files") -> AgentFs | None:
        """The copy of ``source``, or None (boxes then get copies of its files) when it
        cannot be made; the reason is logged (etc_fs.py makes one of /etc the same way)."""
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            run_dir.chmod(0o755)
            run_dir.parent.chmod(0o755)
            for d in run_dir.iterdir():
                if d.name.isdigit() and (int(d.name) == os.getpid() or not _alive(int(d.name))):
                    _remove(d)
            path = run_dir / str(os.getpid())
            path.mkdir(mode=0o755)
            flags = MS_NOSUID | MS_NODEV
            checked(LIBC.mount(b"tmpfs", str(path).encode(), b"tmpfs", flags,
                               b"mode=0755,size=64m"), f"mounting a tmpfs on {path}")
            try:
                shutil.copytree(source, path, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns(".*"))
                checked(LIBC.mount(None, str(path).encode(), None,
                                   MS_REMOUNT | MS_RDONLY | flags, None),
                       f"making {path} read-only")
            except BaseException:
                _remove(path)
                raise
        except OSError as exc:
            log.warning("boxes get copies of %s (no shared copy: %s)", what, exc)
            return None
        return cls(path)

    def unmount(self) -> None:
        _remove(self.path)
