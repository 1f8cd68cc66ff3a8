"""Box processes made ahead (box/ahead.py): a new box starts in a cgroup that already has
its first process in it, with the box's own limits, and another is made in its place."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sophon.box.ahead import AHEAD, Ahead
from sophon.box.box import ExecOutcome
from sophon.box.cgroups import BoxCgroup
from sophon.box.manager import BoxManager
from sophon.config import Settings
from tests.integration.test_box_limits import run

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="cgroups are managed only by a root server")


async def until(ok: Callable[[], bool], what: str) -> None:
    """Polled on the loop: the manager's own tasks make them, on this loop."""
    end = time.monotonic() + 30
    while not ok():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def memory_limit(cg: BoxCgroup) -> int:
    d = cg.dirs[0]
    name = "memory.max" if cg.version == 2 else "memory.limit_in_bytes"
    return int((d / name).read_text())


async def ready_ahead(manager: BoxManager) -> tuple[Ahead, list[tuple[BoxCgroup, int]]]:
    ahead = manager.backend.ahead
    assert ahead is not None, "a root server has cgroups here"
    await until(lambda: ahead.ready == AHEAD, "the box processes made ahead")
    return ahead, [(cg, pid) for cg, pid, _ in ahead._ready]


async def test_a_new_box_starts_in_a_cgroup_made_ahead_with_its_own_limits(
        data_dir: Path) -> None:
    manager = BoxManager(Settings(data_dir=data_dir, box_pool_size=0))
    await manager.start()
    try:
        ahead, waiting = await ready_ahead(manager)
        # Each waits in its cgroup, alone, and nothing of a box runs there yet (it joins
        # it just after spawnd has said it was made); the server's own limits are
        # written there already (most boxes have them).
        await until(lambda: all(cg.pids() == [pid] for cg, pid in waiting),
                    "each process made ahead alone in its cgroup")
        for cg, _ in waiting:
            assert memory_limit(cg) == manager.limits.memory_bytes
        manager.set_limits("a1", memory_mb=160, cpus=0.5, pids=64)
        async with manager.use("a1") as box:
            assert box.cgroup is not None
            assert box.cgroup.dirs in [cg.dirs for cg, _ in waiting]
            assert memory_limit(box.cgroup) == 160 * 2**20
            assert box.pid in box.cgroup.pids()
        # The limits hold for what runs in it.
        _, outcome = await run(manager, "a1", "b = bytearray(400 * 2**20)\n"
                                              "for i in range(0, len(b), 4096): b[i] = 1")
        assert isinstance(outcome, ExecOutcome) and outcome.oom_killed, outcome
        _, fine = await run(manager, "a1", "print('ok')")
        assert fine.exit_code == 0
        # Another is made in its place, once nothing is asked for.
        _, again = await ready_ahead(manager)
        assert {pid for _, pid in again} - {pid for _, pid in waiting}
    finally:
        await manager.close()


async def test_a_box_starts_when_what_was_made_ahead_is_gone(data_dir: Path) -> None:
    """Killed in its cgroup (or spawnd started again): the start forks as usual, into
    a cgroup with the box's limits, and the dead one's exit is nobody's."""
    manager = BoxManager(Settings(data_dir=data_dir, box_pool_size=0))
    await manager.start()
    try:
        _, waiting = await ready_ahead(manager)
        for _, pid in waiting:
            os.kill(pid, signal.SIGKILL)
        manager.set_limits("g1", memory_mb=144, cpus=0.5, pids=64)
        _, outcome = await run(manager, "g1", "print('ok')")
        assert outcome.exit_code == 0
        box = manager.running("g1")
        assert box is not None and box.cgroup is not None
        assert box.pid not in [pid for _, pid in waiting]
        assert memory_limit(box.cgroup) == 144 * 2**20
        # spawnd itself gone: its children made ahead went with it.
        spawner = manager.backend.spawner
        await ready_ahead(manager)
        assert spawner._proc is not None
        spawner._proc.kill()
        await until(lambda: spawner.pid is None, "the server to see spawnd gone")
        _, outcome = await run(manager, "g2", "print('ok')")
        assert outcome.exit_code == 0
    finally:
        await manager.close()


async def test_a_start_cancelled_after_taking_one_leaves_no_process_or_cgroup(
        data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request that goes away mid-start (its client hung up) takes what it took with
    it: the waiting child is killed and its cgroup removed, not kept until shutdown."""
    manager = BoxManager(Settings(data_dir=data_dir, box_pool_size=0))
    await manager.start()
    try:
        _, waiting = await ready_ahead(manager)
        cgroup, pid = waiting[0]  # the first taken
        spawning = asyncio.Event()

        async def stuck(*_: object, **__: object) -> None:
            spawning.set()
            await asyncio.sleep(3600)

        monkeypatch.setattr(manager.backend.spawner, "spawn", stuck)
        start = asyncio.create_task(manager.get("c1"))
        await asyncio.wait_for(spawning.wait(), 30)
        start.cancel()
        with pytest.raises(asyncio.CancelledError):
            await start
        assert not any(d.exists() for d in cgroup.dirs)
        await until(lambda: not Path(f"/proc/{pid}").exists(), "the waiting child to end")
        assert not manager.backend.spawner.is_ahead(pid)
    finally:
        await manager.close()


async def test_a_start_that_fails_before_its_launch_gives_back_what_it_took(
        data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cgroup made ahead is taken while the box's disk is made ready; when the disk
    fails, the start fails with its reason and the cgroup and its waiting child go."""
    from sophon.errors import BoxError

    manager = BoxManager(Settings(data_dir=data_dir, box_pool_size=0))
    await manager.start()
    try:
        _, waiting = await ready_ahead(manager)
        cgroup, pid = waiting[0]  # the first taken

        async def no_disk(*_: object, **__: object) -> None:
            await asyncio.sleep(0.05)  # the cgroup is taken meanwhile
            raise BoxError("no disk today")

        monkeypatch.setattr(manager.disks, "prepare", no_disk)
        with pytest.raises(BoxError, match="no disk today"):
            await manager.get("f1")
        assert not any(d.exists() for d in cgroup.dirs)
        await until(lambda: not Path(f"/proc/{pid}").exists(), "the waiting child to end")
        assert not manager.backend.spawner.is_ahead(pid)
        monkeypatch.undo()  # control: with a disk, the box starts
        _, outcome = await run(manager, "f1", "print('ok')")
        assert outcome.exit_code == 0
    finally:
        await manager.close()
