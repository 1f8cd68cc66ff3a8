"""The /etc of a box without an image, made once per server and bound whole.

Such a box used to get each of its /etc files copied in by bwrap at every start: the
generated ones (passwd, hosts, ...), the host's own (ld.so.cache, services, mime.types,
...) and Sophon's CA files, some 400 KB written into each box's root, about 1 ms of a
start. Now the server puts them together once in a read-only tmpfs of its own (as
agent_fs.py does for boxd) and every such box binds it at /etc; the host directories a
box sees under /etc (ssl, alternatives, ...) are bound over the empty directories it holds
for them. The host's files are checked at each start (a stat each) and the copy is made
again when one changed, so an update on the host is seen by the next box, as before.
Root only (it mounts); without it boxes get the copies as before.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from sophon.box.agent_fs import AgentFs

RUN_DIR = Path("/run/sophon/etc-fs")

# What a host file looked like when it was copied: its identity and last change.
Signature = tuple[tuple[str, int, int, int] | tuple[str], ...]


def _signature(paths: Iterable[str]) -> Signature:
    out: list[tuple[str, int, int, int] | tuple[str]] = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            out.append((p,))
            continue
        out.append((p, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class EtcFs:
    """``generated``: the server's own /etc files (name: host file); ``system``: the
    host's files a box gets (the same path under ``host_etc``); ``mount_points``: the
    directories under ``host_etc`` bound over it (made empty here, where they exist)."""

    def __init__(self, generated: dict[str, Path], system: tuple[str, ...],
                 mount_points: tuple[str, ...], run_dir: Path = RUN_DIR,
                 host_etc: str = "/etc") -> None:
        self.host_etc = host_etc
        self.generated = dict(generated)
        self.system = system
        self.mount_points = mount_points
        self.run_dir = run_dir
        self.extra: dict[str, Path] = {}  # path under /etc: host file (Sophon's CA)
        self._fs: AgentFs | None = None
        self._made_from: Signature | None = None
        self.broken = False  # could not be made: boxes get copies

    def provides(self) -> set[str]:
        """The box paths this /etc holds, beyond the host's own files."""
        return {f"/etc/{name}" for name in (*self.generated, *self.extra)}

    def add(self, files: dict[str, Path]) -> None:
        """More files under /etc (box path: host file), in every copy from now on."""
        self.extra.update({inside.removeprefix("/etc/"): host for inside, host in files.items()})
        self._made_from = None

    def current(self) -> Path | None:
        """The copy for the next box, made again first if a host file changed; None if
        it cannot be made (the reason is logged once)."""
        if self.broken:
            return None
        now = _signature(self.system)
        if self._fs is None or now != self._made_from:
            self._make(now)
        return self._fs.path if self._fs is not None else None

    def _make(self, signature: Signature) -> None:
        # Put together in a directory of this call's own, gone once copied: nothing of
        # it is left where another process could see it half made.
        with tempfile.TemporaryDirectory(prefix="sophon-etc-") as tmp:
            self._mount(Path(tmp), signature)

    def _mount(self, staging: Path, signature: Signature) -> None:
        for name, host in {**self.generated, **self.extra}.items():
            dest = staging / name
            dest.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            shutil.copyfile(host, dest)
        for path in self.system:
            if os.path.isfile(path):
                shutil.copyfile(path, staging / os.path.relpath(path, self.host_etc))
        for path in self.mount_points:
            if os.path.isdir(path):
                (staging / os.path.relpath(path, self.host_etc)).mkdir(
                    mode=0o755, exist_ok=True)
        for p in [staging, *staging.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        if self._fs is not None:
            self._fs.unmount()  # boxes running keep the copy they bound
        self._fs = AgentFs.mount(staging, self.run_dir, "their /etc files")
        self.broken = self._fs is None
        self._made_from = signature

    def close(self) -> None:
        if self._fs is not None:
            self._fs.unmount()
            self._fs = None
