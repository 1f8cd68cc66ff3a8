"""A send over MCP tells its caller it is alive: a progress notification for each tool
call, and one after each quiet spell (a long command) so that clients which reset their
call timeout on progress keep waiting; the count only ever grows, as MCP asks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from sophon.events.log import Stored
from sophon.events.types import Status, ToolUse, to_wire
from sophon.mcp.turns import wait_for_turn


def stored(seq: int, event: Status | ToolUse) -> Stored:
    data = {**to_wire(event), "seq": seq}
    return Stored(seq, data["type"], json.dumps(data))


async def _story() -> tuple[list[tuple[int, str]], list[int]]:
    release = asyncio.Event()

    async def follow(after: int) -> AsyncIterator[list[Stored]]:
        yield [stored(after + 1, ToolUse(tool_use_id="t1", tool="Bash",
                                         input={"command": "sleep 60"}))]
        await release.wait()  # the command runs: nothing happens for a while
        yield [stored(after + 2, Status(status="idle"))]

    told: list[tuple[int, str]] = []

    async def progress(n: int, what: str) -> None:
        told.append((n, what))
        if len(told) == 4:
            release.set()

    got = await asyncio.wait_for(
        wait_for_turn(follow, 10, 30, started=True, progress=progress, quiet=0.05), 10)
    return told, [s.seq for s in got]


def test_a_quiet_turn_still_sends_progress_that_only_grows() -> None:
    told, seqs = asyncio.run(_story())
    assert told[0] == (1, "tool: Bash")
    assert [n for n, _ in told] == [1, 2, 3, 4]
    assert all(what == "still working" for _, what in told[1:])
    assert seqs == [11, 12]  # nothing lost across the quiet spells


async def _chatty() -> list[tuple[int, str]]:
    """A long command that prints all along: events keep coming, none a tool call."""

    async def follow(after: int) -> AsyncIterator[list[Stored]]:
        yield [stored(after + 1, ToolUse(tool_use_id="t1", tool="Bash",
                                         input={"command": "pip install big"}))]
        for n in range(2, 40):
            await asyncio.sleep(0.02)
            yield [stored(after + n, Status(status="running", detail="output"))]
        yield [stored(after + 40, Status(status="idle"))]

    told: list[tuple[int, str]] = []

    async def progress(n: int, what: str) -> None:
        told.append((n, what))

    await asyncio.wait_for(
        wait_for_turn(follow, 0, 30, started=True, progress=progress, quiet=0.1), 10)
    return told


def test_a_turn_that_prints_all_along_is_still_said_to_be_alive() -> None:
    told = asyncio.run(_chatty())  # about 0.8 s of output, told every 0.1 s without a call
    assert told[0] == (1, "tool: Bash")
    assert len([w for _, w in told if w == "still working"]) >= 4, told
    assert [n for n, _ in told] == list(range(1, len(told) + 1))
