"""boxd's file helper in a real box: it runs as the box's user beside the workloads, but
it is no workload: a box whose only process besides boxd is its helper counts none, and
stops when idle."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from sophon.box.box import ExecOutcome
from sophon.box.manager import BoxManager
from sophon.config import Settings

ENV = {"PATH": "/usr/bin:/bin"}


async def sh(box, script: str) -> ExecOutcome:  # type: ignore[no-untyped-def]
    outcome = None
    async for ev in box.exec(["sh", "-c", script], timeout=10, env=ENV, cwd="/workspace",
                             output_cap=1000):
        if isinstance(ev, ExecOutcome):
            outcome = ev
    assert outcome is not None
    return outcome


async def test_the_file_helper_is_not_a_workload(data_dir: Path) -> None:
    manager = BoxManager(Settings(data_dir=data_dir, box_pool_size=0))
    await manager.start()
    try:
        box = await manager.get("h1", idle_after=0.2)
        await box.write_path("/workspace", "f.txt", b"x")  # the helper runs from now on
        seen = await sh(box, "pgrep -fc helper.py")
        assert seen.exit_code == 0, "the helper should be running"
        assert await box.process_count() == 0
        # Control: a workload left running counts, and keeps the box awake.
        assert (await sh(box, "setsid sleep 300 >/dev/null 2>&1 < /dev/null &")).exit_code == 0
        assert await box.process_count() == 1
        await asyncio.sleep(0.3)
        assert not await manager.stop_if_idle("h1")
        assert (await sh(box, "pkill -x sleep; true")).exit_code == 0
        end = time.monotonic() + 10
        while not await manager.stop_if_idle("h1"):  # idle with only its helper left
            assert time.monotonic() < end, "the box with only its helper never stopped"
            await asyncio.sleep(0.1)
        assert manager.running("h1") is None
    finally:
        await manager.close()
