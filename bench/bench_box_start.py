"""Box start against the number of boxes already running (issue 16, "Capacity, measured").

Each box's disk is mounted in a mount namespace of the box's own, never in the host's:
every new mount namespace (bwrap's, ``unshare``'s) copies the whole table it starts from,
and ``mount -o loop`` searches every loop device in use, so with the disks in the host's
table each start paid for every box running. This benchmark starts N idle boxes (800 in
the full run) and times, in the same run, the same starts with none running and with N:

* restart: a stopped box started again over its existing disk (a thread or session
  waking up): the launcher's mount namespace, the loop device, the mount, bwrap, boxd;
* new box: the same plus making its disk image (``mkfs.ext4``) and its uid;
* bare bwrap: ``bwrap`` with the namespaces Sophon asks for, running ``true``, started
  from the host's namespace (what the red-team measured: 3.6 -> 18.2 ms at 826 mounts).

Figure = p50 with N running / p50 with none; goal <= 1.2 (judged raw, for the two box
starts; the bare bwrap row is the kernel's own cost, for context). The boxes are started through
``BoxManager`` in this process (root needed, as for the server), not over HTTP, so the
figure is the sandbox start alone. Each kind of start is timed alternately with the
others, so what else the machine does weighs on all alike.

    .venv/bin/python bench/run.py --only box_start
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from bench_cold import bare_bwrap
from common import Figure, Samples, make_data_dir, remove_server_cgroups

T = TypeVar("T")
GOAL_RATIO = 1.2
QUIET_IDLE = 0.9
COMMAND = ".venv/bin/python bench/run.py --only box_start"
# Enough for N boxes: no pool, no idle stop during the run, small memory limits (they
# add up to the admission budget, if the server has one), no per-user ceiling.
ENV = {
    "SOPHON_BOX_POOL_SIZE": "0",
    "SOPHON_BOX_MEMORY_MB": "64",
    "SOPHON_BOX_MEMORY_BUDGET_MB": str(2**31),
    "SOPHON_BOX_START_CONCURRENCY": "64",
    "SOPHON_BOX_UID_COUNT": "20000",
    "SOPHON_USER_MAX_BOXES": "0",
    "SOPHON_BOX_DISK_MB": "256",
    "SOPHON_LOG_LEVEL": "warning",
}


def mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def host_mounts() -> int:
    return len(Path("/proc/self/mounts").read_text().splitlines())


async def _measure(mgr: object, probes: list[str], samples: int) -> dict[str, Samples]:
    """``samples`` of each kind of start, interleaved."""
    from sophon.box.manager import BoxManager

    assert isinstance(mgr, BoxManager)
    bare = bare_bwrap("/usr/bin/true")
    out: dict[str, list[float]] = {"restart": [], "new": [], "bare": [], "ref": []}
    for i in range(samples):
        probe = probes[i % len(probes)]
        t0 = time.perf_counter()
        await mgr.get(probe, idle_after=36000)
        out["restart"].append((time.perf_counter() - t0) * 1e3)
        await mgr.stop(probe)

        fresh = "x" + uuid.uuid4().hex[:31]
        t0 = time.perf_counter()
        await mgr.get(fresh, idle_after=36000)
        out["new"].append((time.perf_counter() - t0) * 1e3)
        await mgr.destroy(fresh)

        t0 = time.perf_counter()
        await asyncio.to_thread(subprocess.run, bare, check=True, stdin=subprocess.DEVNULL)
        out["bare"].append((time.perf_counter() - t0) * 1e3)

        t0 = time.perf_counter()
        await asyncio.to_thread(subprocess.run, ["/usr/bin/true"], check=True)
        out["ref"].append((time.perf_counter() - t0) * 1e3)
    return {k: Samples(v) for k, v in out.items()}


def _cpu_idle_and_total() -> tuple[int, int]:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)


async def _settle(deadline_s: float = 90.0) -> float:
    """Wait until the kernel has finished the work that starting the boxes left behind
    (the figure is about boxes running, not boxes just started); seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline_s:
        idle0, total0 = _cpu_idle_and_total()
        await asyncio.sleep(1.0)  # the window measured
        idle1, total1 = _cpu_idle_and_total()
        if (idle1 - idle0) >= QUIET_IDLE * max(total1 - total0, 1):
            break
    return time.monotonic() - t0


async def _bench(boxes: int, samples: int, data_dir: Path) -> tuple[
        dict[str, Samples], dict[str, Samples], int, list[str]]:
    from sophon.box.manager import BoxManager
    from sophon.config import Settings

    mgr = BoxManager(Settings(data_dir=data_dir))
    await mgr.start()
    notes: list[str] = []
    try:
        probes = ["x" + uuid.uuid4().hex[:31] for _ in range(3)]
        for p in probes:  # made once, so a restart finds its disk
            await mgr.get(p, idle_after=36000)
            await mgr.stop(p)
        idle = await _measure(mgr, probes, samples)
        mounts_idle = host_mounts()

        running: list[str] = []
        t0 = time.monotonic()
        for _ in range(boxes):
            box_id = "x" + uuid.uuid4().hex[:31]
            try:
                await mgr.get(box_id, idle_after=36000)
            except Exception as exc:  # out of memory, uids, ...: report what fitted
                notes.append(f"stopped starting boxes at {len(running)}: {exc}")
                break
            running.append(box_id)
        notes.append(f"{len(running)} idle boxes started in {time.monotonic() - t0:.0f} s; "
                     f"host mount table: {mounts_idle} entries with none running, "
                     f"{host_mounts()} with {len(running)}; memory available then: "
                     f"{mem_available_mib():.0f} MiB")
        settled = await _settle()
        notes.append(f"then {settled:.0f} s until the machine was quiet again (CPU ≥ "
                     f"{QUIET_IDLE:.0%} idle over a second), before the starts were timed")
        busy = await _measure(mgr, probes, samples)
        # None running again, so a load that drifted during the run weighs on both sides.
        await asyncio.gather(*(mgr.stop(b) for b in running))
        await _settle()  # their teardown is not what the baseline is about either
        after = await _measure(mgr, probes, samples)
        idle = {k: Samples(idle[k].ms + after[k].ms) for k in idle}
        return idle, busy, len(running), notes
    finally:
        await mgr.close()


def _loop_run() -> Callable[[Coroutine[Any, Any, T]], T]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run  # type: ignore[no-any-return]


def run(boxes: int = 800, samples: int = 60) -> list[Figure]:
    if os.geteuid() != 0:
        return [Figure("box_start", "Box start with N boxes running", COMMAND, float("nan"),
                       "ms", float("nan"), "none running",
                       details=["skipped: box disks need a root server"])]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # pipes: 3 per box
    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update(ENV)
    data_dir = make_data_dir()
    cgroups = Path("/proc/self/cgroup").read_text()
    try:
        # The event loop the server runs on (uvicorn takes uvloop when it is installed):
        # how a box's launcher is spawned (libuv's fork) is part of what is measured.
        idle, busy, started, notes = _loop_run()(_bench(boxes, samples, data_dir))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        remove_server_cgroups(data_dir, cgroups)
        shutil.rmtree(data_dir, ignore_errors=True)

    # The goal is judged on the raw ratio. The bare bwrap row and the reference (fork and
    # exec of /usr/bin/true from this process, timed alternately with the starts) are
    # context: what the kernel and this process pay with N boxes running whatever
    # Sophon does, which the starts cannot be faster than.
    drift = busy["ref"].p50 / idle["ref"].p50
    figures = []
    titles = {"restart": "Box restart (existing disk)", "new": "New box (disk made)",
              "bare": "Bare `bwrap true` from the host (no Sophon code)"}
    for key, title in titles.items():
        a, b = idle[key], busy[key]
        raw = b.p50 / a.p50
        figures.append(Figure(
            f"box_start_{key}", f"{title}, {started} boxes running vs none", COMMAND,
            b.p50, "ms", a.p50, "none running",
            goal=f"≤ {GOAL_RATIO}×" if key != "bare" else None,
            met=raw <= GOAL_RATIO if key != "bare" else None,
            details=[f"none running: {a.describe()}", f"{started} running: {b.describe()}",
                     f"for reference, fork+exec of true from this process moved "
                     f"{drift:.2f}× (p50 {idle['ref'].p50:.2f} -> {busy['ref'].p50:.2f} ms) "
                     f"and a bare `bwrap true` {busy['bare'].p50 / idle['bare'].p50:.2f}×",
                     *notes]))
    return figures
