"""A box stopped for good on this node, with nothing of it started again meanwhile.

A node hands a box's work on to another node (a drain) and stops the box in one step
(``BoxManager.no_start``): a start of the same box asked meanwhile on this node waits,
then asks whether the box is still this node's to run (``may_start``), and starts and
mounts nothing when it is not. A second mount of the box's disk beside the next node's
would lose what either wrote. A deleted box likewise: a start asked before the delete (a
checkpoint after an exec) finds it gone, rather than making it again over the files
being removed (which also held the delete up for 10 s, waiting for the disk).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from sophon.box.box import Box, ExecEvent
from sophon.box.disk import backing_file
from sophon.box.manager import BoxManager
from sophon.cluster.ownership import SessionElsewhere
from sophon.errors import NotFound


async def sh(box: Box, command: str) -> str:
    out = ""
    async for ev in box.exec(["sh", "-c", command], timeout=30, env={"PATH": "/usr/bin:/bin"},
                             cwd="/workspace", output_cap=65536):
        if isinstance(ev, ExecEvent):
            out += ev.data
        else:
            assert ev.exit_code == 0, out
    return out


def loops_of(image: Path) -> list[str]:
    """The loop devices attached to ``image`` now."""
    path = str(image.resolve())
    return [dev.name for dev in Path("/sys/block").glob("loop*")
            if dev.name[4:].isdigit() and backing_file(int(dev.name[4:])) == path]


async def test_a_start_asked_while_the_box_is_handed_on_starts_nothing(
        manager: BoxManager) -> None:
    mine = True
    asked: list[str] = []

    async def may_start(box_id: str, take: bool) -> None:
        asked.append(box_id)
        if not mine:
            raise SessionElsewhere("this session runs on node n2 now")

    manager.may_start = may_start
    async with manager.use("h1") as box:
        await sh(box, "echo kept > f")
    assert asked == ["h1"]

    async with manager.no_start("h1"):
        mine = False  # the hand-on: the database says another node runs it from now
        stopping = asyncio.create_task(manager.stop("h1"))
        await asyncio.wait_for(box.stopped.wait(), 30)
        late = asyncio.create_task(manager.get("h1"))  # a checkpoint asked for earlier
        await asyncio.sleep(0)
        assert not late.done(), "a start went ahead while the box was being handed on"
        await stopping
    with pytest.raises(SessionElsewhere):
        await late
    assert asked == ["h1", "h1"]
    assert manager.running("h1") is None
    if manager.disks.enabled:  # its disk is let go, and not mounted again here
        assert loops_of(manager.disks.image("h1")) == []

    mine = True  # handed back later: it starts here again, with its files
    async with manager.use("h1") as box:
        assert await sh(box, "cat f") == "kept\n"


async def test_a_start_asked_while_the_box_is_deleted_starts_nothing(
        manager: BoxManager) -> None:
    async with manager.use("d1") as box:
        await sh(box, "echo doomed > f")
    image = manager.disks.image("d1")
    deleting = asyncio.create_task(manager.destroy("d1"))
    await asyncio.wait_for(box.stopped.wait(), 30)
    late = asyncio.create_task(manager.get("d1"))  # a checkpoint asked for earlier
    started = time.monotonic()
    await deleting
    assert time.monotonic() - started < 5  # not held up by a disk mounted again
    with pytest.raises(NotFound):
        await late
    assert manager.running("d1") is None
    assert not manager.box_dir("d1").exists()
    if manager.disks.enabled:
        assert loops_of(image) == []
    with pytest.raises(NotFound):  # and later
        await manager.get("d1")
