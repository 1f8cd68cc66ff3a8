"""Figure 4: the memory an idle thread box holds on the host.

One thread runs bash ``true`` once, then sits idle. Its processes are found on the
host through the box's memory cgroup (``cgroup.procs``) and checked against a scan
of /proc for processes running as the box host uid: the outer ``bwrap`` (which
stays behind as the sandbox's monitor), bwrap's init inside the pid namespace, and
boxd's ``python3``. Reported: the sum of their RSS and PSS (from
``/proc/<pid>/smaps_rollup``) and the cgroup's own accounting (v1
``memory.usage_in_bytes`` and ``memory.stat``; v2 ``memory.current``), which also
counts page cache and kernel memory charged to the box.

Baseline: an idle bare ``python3 -c 'import time; time.sleep(60)'`` under the same
interpreter boxd uses.

    .venv/bin/python bench/run.py --only memory
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import subprocess
import time
from pathlib import Path

from common import (
    BOX_PYTHON,
    EXECUTE,
    Figure,
    check,
    client,
    execute_body,
    live_server,
    proc_cmdline,
    proc_nspid,
    proc_uid,
    smaps_rollup,
)

MiB = 2**20


def baseline() -> dict[str, int]:
    proc = subprocess.Popen([BOX_PYTHON, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(1.0)
        return smaps_rollup(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def box_cgroup_dirs(server_pid: int, data_dir: Path, box_id: str) -> dict[str, Path]:
    """The box's cgroup directories, keyed by controller ("" for v2), found the way the
    server names them: ``<server's cgroup>/sophon-<sha256(data dir)[:12]>/<box id>.<n>``."""
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    found: dict[str, Path] = {}
    for line in Path(f"/proc/{server_pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            if c not in ("memory", ""):
                continue
            root = Path("/sys/fs/cgroup") / ("memory" if c else "")
            # A v2 server may have moved itself into a "sophon-server" leaf.
            rel = path.lstrip("/").removesuffix("sophon-server").rstrip("/")
            # One cgroup per start of the box: <box id>.<n>.
            for d in (root / rel / f"sophon-{digest}").glob(f"{box_id}.*"):
                if d.is_dir():
                    found[c] = d
    return found


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _memory_stat(d: Path) -> dict[str, int]:
    try:
        lines = (d / "memory.stat").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v) for k, v in (line.split() for line in lines)}


def _thread_box_id(data_dir: Path, thread: str) -> str:
    with contextlib.closing(sqlite3.connect(f"file:{data_dir / 'sophon.db'}?mode=ro",
                                            uri=True)) as db:
        row = db.execute("SELECT id FROM threads WHERE name = ?", (thread,)).fetchone()
    if row is None:
        raise RuntimeError(f"no thread {thread!r} in the database")
    return str(row[0])


def _uid_scan(box_id: str, uid: int) -> set[int]:
    pids = set()
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if proc_uid(int(p.name)) == uid and box_id in (p / "cgroup").read_text():
                pids.add(int(p.name))
        except OSError:
            continue
    return pids


def _role(pid: int) -> str:
    cmd = proc_cmdline(pid)
    ns = proc_nspid(pid)
    if "bwrap" in cmd.split()[0]:
        where = "outside the box's pid namespace (monitor)" if len(ns) == 1 else \
            f"pid {ns[-1]} in the box"
        return f"bwrap, {where}"
    return f"`{cmd}`, pid {ns[-1]} in the box"


def run(settle: float = 2.0) -> list[Figure]:
    base = baseline()
    with live_server() as (srv, key), client(srv, key) as http:
        check(http.post(EXECUTE, json=execute_body("true", "bash", thread_id="bench-idle")))
        time.sleep(settle)
        box_id = _thread_box_id(srv.data_dir, "bench-idle")
        others = sorted(p.name for p in (srv.data_dir / "boxes").iterdir() if p.name != box_id)
        assert srv.proc is not None
        cg = box_cgroup_dirs(srv.proc.pid, srv.data_dir, box_id)
        mem_dir = cg.get("memory") or cg.get("")
        if mem_dir is None:
            raise RuntimeError("the box has no memory cgroup (cgroups unusable here?)")
        pids = sorted({int(p) for p in (mem_dir / "cgroup.procs").read_text().split()})
        uid = int((srv.data_dir / "boxes" / box_id / "uid").read_text())  # the box's own
        scanned = _uid_scan(box_id, uid)
        if set(pids) != scanned:
            raise RuntimeError(f"cgroup.procs {pids} != uid-{uid} scan {sorted(scanned)}")
        per_proc = [(pid, _role(pid), smaps_rollup(pid)) for pid in pids]
        usage = _read_int(mem_dir / "memory.usage_in_bytes") or _read_int(
            mem_dir / "memory.current")
        stat = _memory_stat(mem_dir)

    rss = sum(s["Rss"] for _, _, s in per_proc)
    pss = sum(s["Pss"] for _, _, s in per_proc)
    details = [f"box {box_id}: {len(pids)} processes, all uid {uid}, memory cgroup "
               f"{mem_dir}"]
    if others:
        details.append(f"besides it the server keeps {len(others)} started, empty box(es) in "
                       "its pool (not counted here; each costs about the same)")
    for pid, cmd, s in per_proc:
        details.append(f"pid {pid} {cmd}: RSS {s['Rss'] / MiB:.1f} MiB, "
                       f"PSS {s['Pss'] / MiB:.1f} MiB")
    details.append(f"sum: RSS {rss / MiB:.1f} MiB, PSS {pss / MiB:.1f} MiB")
    if usage is not None:
        parts = ", ".join(f"{k} {stat[k] / MiB:.1f} MiB" for k in
                          ("rss", "cache", "mapped_file", "shmem", "anon", "file")
                          if k in stat)
        details.append(f"cgroup usage {usage / MiB:.1f} MiB ({parts})")
    details.append(f"baseline idle `{BOX_PYTHON} -c 'import time; time.sleep(60)'`: "
                   f"RSS {base['Rss'] / MiB:.1f} MiB, PSS {base['Pss'] / MiB:.1f} MiB")
    figs = [Figure(
        key="memory",
        title="Idle box memory, RSS sum of its processes",
        command=".venv/bin/python bench/run.py --only memory",
        value=rss / MiB,
        unit="MiB",
        baseline=base["Rss"] / MiB,
        baseline_label="idle bare `python3` RSS",
        details=details,
    ), Figure(
        key="memory-pss",
        title="Idle box memory, PSS sum of its processes",
        command=".venv/bin/python bench/run.py --only memory",
        value=pss / MiB,
        unit="MiB",
        baseline=base["Pss"] / MiB,
        baseline_label="idle bare `python3` PSS",
    )]
    if usage is not None:
        figs.append(Figure(
            key="memory-cgroup",
            title="Idle box memory, the box cgroup's usage",
            command=".venv/bin/python bench/run.py --only memory",
            value=usage / MiB,
            unit="MiB",
            baseline=base["Rss"] / MiB,
            baseline_label="idle bare `python3` RSS",
        ))
    return figs


if __name__ == "__main__":
    for fig in run():
        print(fig.title, f"{fig.value:.1f}", "\n  " + "\n  ".join(fig.details))
