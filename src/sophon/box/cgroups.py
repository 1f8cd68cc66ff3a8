"""Per-box resource limits through cgroups, v2 or v1, whichever the host has.

A ``CgroupTree`` owns one directory per controller hierarchy (one for v2, one per
controller for v1), named after the server's data directory so two servers on one
machine never touch each other's boxes. Each start of a box gets a child cgroup in it,
named after the box and the start (``<box id>.<n>``): a box that died and is being
cleaned up never shares a cgroup with the same box started again meanwhile. A box
process is placed in its cgroup before it execs bubblewrap (see ``procs_files``), so
nothing in the box ever runs outside its limits. ``CgroupTree.remove`` at shutdown
takes the whole tree away, leftovers of interrupted starts included.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids", "cpu")


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    cpus: float
    pids: int


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def _own_cgroups() -> dict[str, str]:
    """Map controller (or "" for v2) to this process's cgroup path."""
    found: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            found[""] = path
        for c in controllers.split(","):
            if c:
                found[c] = path
    return found


def _v1_mounts() -> dict[str, Path]:
    mounts: dict[str, Path] = {}
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "cgroup":
            for opt in parts[3].split(","):
                if opt in V1_CONTROLLERS:
                    mounts[opt] = Path(parts[1])
    return mounts


class BoxCgroup:
    """One box's cgroup (a directory per hierarchy)."""

    def __init__(self, dirs: list[Path], version: int) -> None:
        self.dirs = dirs
        self.version = version

    @property
    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs]

    def limit(self, limits: Limits) -> None:
        if self.version == 2:
            d = self.dirs[0]
            _write(d / "memory.max", str(limits.memory_bytes))
            if (d / "memory.swap.max").exists():
                _write(d / "memory.swap.max", "0")
            _write(d / "pids.max", str(limits.pids))
            _write(d / "cpu.max", f"{int(limits.cpus * 100_000)} 100000")
            return
        mem, pids, cpu = self.dirs
        _write(mem / "memory.limit_in_bytes", str(limits.memory_bytes))
        if (mem / "memory.memsw.limit_in_bytes").exists():
            _write(mem / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
        _write(pids / "pids.max", str(limits.pids))
        _write(cpu / "cpu.cfs_period_us", "100000")
        _write(cpu / "cpu.cfs_quota_us", str(int(limits.cpus * 100_000)))

    def _memory_dir(self) -> Path:
        return self.dirs[0]  # v2 has one dir; v1 lists the memory hierarchy first

    def oom_kills(self) -> int:
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            text = (self._memory_dir() / name).read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def pids(self) -> list[int]:
        found: set[int] = set()
        for f in self.procs_files:
            try:
                found.update(int(p) for p in f.read_text().split())
            except OSError:
                continue
        return sorted(found)

    def kill_all(self, deadline_s: float = 5.0) -> None:
        if self.version == 2:
            kill = self.dirs[0] / "cgroup.kill"
            if kill.exists():
                with contextlib.suppress(OSError):
                    _write(kill, "1")
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
        log.warning("cgroup %s still has processes after kill", self.dirs[0])

    def remove(self) -> None:
        self.kill_all()
        for d in self.dirs:
            _rmdir_tree(d)


def _rmdir_tree(d: Path) -> None:
    if not d.exists():
        return
    for child in d.iterdir():
        if child.is_dir():
            _rmdir_tree(child)
    _rmdir(d)


def _rmdir(d: Path) -> None:
    """rmdir, waiting out (for a second) the moment a just-emptied cgroup stays busy."""
    for _ in range(100):
        try:
            d.rmdir()
            return
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return
            if exc.errno != errno.EBUSY:
                raise
            time.sleep(0.01)


class CgroupTree:
    """The server's slice of the cgroup hierarchy; ``None`` from ``detect`` when unusable."""

    def __init__(self, parents: list[Path], version: int,
                 server_leaf: Path | None = None) -> None:
        self.parents = parents
        self.version = version
        self.server_leaf = server_leaf  # v2: the leaf the server moved itself into
        self._starts = itertools.count(1)

    @classmethod
    def detect(cls, name: str) -> CgroupTree | None:
        made: list[Path] = []  # taken away again if the setup fails half-way
        try:
            if (CGROUP_ROOT / "cgroup.controllers").exists():
                return cls._setup_v2(name, made)
            return cls._setup_v1(name, made)
        except OSError as exc:
            log.debug("cgroups unusable: %s", exc)
            for d in reversed(made):
                with contextlib.suppress(OSError):
                    d.rmdir()
            return None

    @classmethod
    def _setup_v1(cls, name: str, made: list[Path]) -> CgroupTree | None:
        mounts, own = _v1_mounts(), _own_cgroups()
        if any(c not in mounts for c in V1_CONTROLLERS):
            return None
        parents = []
        for c in V1_CONTROLLERS:
            parent = mounts[c] / own.get(c, "/").lstrip("/") / name
            parent.mkdir(exist_ok=True)
            made.append(parent)
            parents.append(parent)
        return cls(parents, 1)

    @classmethod
    def _setup_v2(cls, name: str, made: list[Path]) -> CgroupTree | None:
        own = CGROUP_ROOT / _own_cgroups().get("", "/").lstrip("/")
        wanted = {"memory", "pids", "cpu"}
        if not wanted <= set((own / "cgroup.controllers").read_text().split()):
            return None
        parent = own / name
        parent.mkdir(exist_ok=True)
        made.append(parent)
        enable = " ".join(f"+{c}" for c in sorted(wanted))
        leaf = None
        try:
            _write(own / "cgroup.subtree_control", enable)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            # "No internal processes": move the server into a leaf of its own first.
            leaf = own / "sophon-server"
            leaf.mkdir(exist_ok=True)
            _write(leaf / "cgroup.procs", str(os.getpid()))
            _write(own / "cgroup.subtree_control", enable)
        _write(parent / "cgroup.subtree_control", enable)
        return cls([parent], 2, leaf)

    def create(self, box_id: str, limits: Limits) -> BoxCgroup:
        cg = self.make(f"{box_id}.{next(self._starts)}")
        cg.limit(limits)
        return cg

    def make(self, name: str) -> BoxCgroup:
        """A new cgroup with no limits of its own yet (see ``BoxCgroup.limit``)."""
        dirs = [p / name for p in self.parents]
        for d in dirs:
            d.mkdir(exist_ok=True)
        return BoxCgroup(dirs, self.version)

    def make_ahead(self) -> BoxCgroup:
        """A cgroup for a box not asked for yet (see ahead.py); a name no run of the
        server has used, as a box's is (a new server's count starts at 1 again)."""
        return self.make(f"ahead.{secrets.token_hex(6)}")

    def remove(self) -> None:
        """Remove the server's cgroups at shutdown: every box's that is still there (a
        start cut short by the shutdown leaves one, with a process in it), then the
        parents; on v2, the server goes back where it was and its leaf goes too."""
        try:
            self.reap_orphans()
            for p in self.parents:
                _rmdir(p)
        except OSError as exc:
            log.warning("could not remove the server's cgroups: %s", exc)
        left = [str(p) for p in self.parents if p.exists()]
        if left:
            log.warning("the server's cgroups are still there: %s", ", ".join(left))
        if self.server_leaf is not None:
            own = self.server_leaf.parent
            with contextlib.suppress(OSError):
                # The controllers were off before the server turned them on (a cgroup
                # with processes cannot have them), so turning them off restores it.
                _write(own / "cgroup.subtree_control", "-cpu -memory -pids")
                _write(own / "cgroup.procs", str(os.getpid()))
                _rmdir(self.server_leaf)

    def reap_orphans(self) -> int:
        """Kill and remove every box cgroup in the tree: at start-up, those a previous run
        of this server left behind."""
        names = {d.name for p in self.parents if p.exists() for d in p.iterdir() if d.is_dir()}
        for name in names:
            BoxCgroup([p / name for p in self.parents], self.version).remove()
        return len(names)
