"""Two nodes' event logs on one database (here two EventLogs on one SQLite file, as two
servers on one PostgreSQL would be): a stream on one node learns of the other's appends
only when told (the LISTEN/NOTIFY listener calls ``appended_elsewhere``), and after its
notifications may have been lost (``look_again``), and then reads them from the table:
each event once, in order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sophon.events.log import EventLog
from sophon.events.types import Status
from sophon.store.db import make_engine, migrate, sessionmaker
from sophon.store.tables import SessionRow
from sophon.users import UserService


@pytest.fixture
async def two_nodes(tmp_path: Path) -> AsyncIterator[tuple[EventLog, EventLog]]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sophon.db'}"
    engine_a, engine_b = make_engine(url), make_engine(url)
    await migrate(engine_a)
    db = sessionmaker(engine_a)
    owner, _ = await UserService(db).create("a")
    async with db() as s:
        s.add(SessionRow(id="ses_x", user_id=owner.user_id, name="x", base="generic",
                         model="m", runtime="native", starter={}, approval={},
                         status="idle", box_id="sx"))
        await s.commit()
    a, b = EventLog(engine_a), EventLog(engine_b)
    yield a, b
    for log, engine in ((a, engine_a), (b, engine_b)):
        await log.close()
        await engine.dispose()


class Reader:
    """A node's stream, read in the background into ``seqs``."""

    def __init__(self, log: EventLog, session_id: str) -> None:
        self.seqs: list[int] = []
        self._more = asyncio.Event()
        self._task = asyncio.create_task(self._read(log, session_id))

    async def _read(self, log: EventLog, session_id: str) -> None:
        async for item in log.follow(session_id, heartbeat=0.05):
            if item is not None:
                self.seqs.append(item.seq)
                self._more.set()

    async def wait(self, count: int, timeout: float = 5.0) -> list[int]:
        async with asyncio.timeout(timeout):
            while len(self.seqs) < count:
                self._more.clear()
                await self._more.wait()
        return self.seqs

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def test_a_stream_hears_of_another_nodes_appends_only_when_told(
        two_nodes: tuple[EventLog, EventLog]) -> None:
    a, b = two_nodes
    await a.append("ses_x", Status(status="idle"))
    stream = Reader(b, "ses_x")
    assert await stream.wait(1) == [1]  # from the table, on subscribing
    for _ in range(3):
        await a.append("ses_x", Status(status="running"))
    # Control: nothing tells B, so its stream sees nothing new.
    await asyncio.sleep(0.3)
    assert stream.seqs == [1]
    b.appended_elsewhere("ses_x", 4)
    assert await stream.wait(4) == [1, 2, 3, 4]
    # Notifications lost (the listener's connection dropped): B looks at the table again.
    await a.append("ses_x", Status(status="idle"))
    b.look_again()
    assert await stream.wait(5) == [1, 2, 3, 4, 5]
    # A poke with nothing new yields nothing twice.
    b.appended_elsewhere("ses_x", 5)
    await asyncio.sleep(0.3)
    assert stream.seqs == [1, 2, 3, 4, 5]
    await stream.close()


async def test_a_node_that_hears_of_later_seqs_does_not_reuse_them(
        two_nodes: tuple[EventLog, EventLog]) -> None:
    a, b = two_nodes
    await b.append("ses_x", Status(status="idle"))  # B has read seq 1 as its last
    await a.append("ses_x", Status(status="running"))
    b.appended_elsewhere("ses_x", 2)
    stored = await b.append("ses_x", Status(status="idle"))
    assert stored.seq == 3
