"""Execution rows go through one writer (group commit): each is committed before its
caller is told so, rows are what the ORM would have written, and one bad row in a
batch does not lose the others."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from sophon.sandbox.records import Recorder
from sophon.store.db import make_engine, migrate, sessionmaker
from sophon.store.tables import Execution, User


@pytest.fixture(params=[True, False], ids=["sqlite-thread", "engine-task"])
def writer(request: pytest.FixtureRequest) -> bool:
    """Both writers: a thread on its own sqlite3 connection (SQLite), and a task on the
    engine (any other database); the second is run here on SQLite too."""
    return bool(request.param)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'sophon.db'}")
    await migrate(eng)
    async with eng.begin() as conn:
        await conn.execute(insert(User), [{"id": "u1", "name": "one"}])
    yield eng
    await eng.dispose()


def row(**over: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"trace_id": "trc_" + uuid.uuid4().hex[:20], "user_id": "u1", "thread_id": "t",
            "language": "bash", "status": "success", "delivery_mode": "inline",
            "stdout": "out ü\n", "stderr": "", "exit_code": 0, "error": None,
            "output_truncated": True, "duration_ms": 7, "metadata": {"k": "v"},
            "created_at": now, "completed_at": now, **over}


async def test_rows_read_back_as_the_orm_writes_them(engine: AsyncEngine, writer: bool) -> None:
    rec = Recorder(engine, writer)
    mine, theirs = row(), row(metadata=None, completed_at=None, exit_code=None)
    await rec.insert(mine)
    await rec.insert(theirs)
    control = row()
    async with engine.begin() as conn:  # the way rows were written before the writer
        await conn.execute(insert(Execution), [control])
    await rec.close()
    async with sessionmaker(engine)() as db:
        got = {r.trace_id: r for r in (await db.execute(select(Execution))).scalars()}
    for want in (mine, theirs, control):
        r = got[want["trace_id"]]
        assert (r.stdout, r.meta, r.output_truncated, r.exit_code, r.duration_ms) == (
            want["stdout"], want["metadata"], True, want["exit_code"], 7)
        assert r.created_at.replace(tzinfo=UTC) == want["created_at"]
    assert got[theirs["trace_id"]].completed_at is None
    # Stored alike, byte for byte, in the columns whose encoding a type decides.
    with sqlite3.connect(engine.url.database) as con:
        stored = {t: (c, m, o) for t, c, m, o in con.execute(
            "SELECT trace_id, created_at, metadata, output_truncated FROM executions")}
    assert {len(v[0]) for v in stored.values()} == {26}
    assert stored[mine["trace_id"]][1:] == stored[control["trace_id"]][1:]


async def test_each_row_is_committed_before_its_writer_hears_so(engine: AsyncEngine,
                                                               writer: bool) -> None:
    rec = Recorder(engine, writer)
    path = engine.url.database
    seen: list[bool] = []

    def visible(trace_id: str) -> bool:  # from another connection: only committed rows
        with sqlite3.connect(path) as con:
            return con.execute("SELECT 1 FROM executions WHERE trace_id = ?",
                               (trace_id,)).fetchone() is not None

    async def one(r: dict[str, Any]) -> None:
        await rec.insert(r)
        seen.append(visible(r["trace_id"]))

    rows = [row() for _ in range(200)]
    await asyncio.gather(*(one(r) for r in rows))  # many at once: batched commits
    await rec.close()
    assert seen == [True] * len(rows)


async def test_a_bad_row_fails_alone(engine: AsyncEngine, writer: bool) -> None:
    rec = Recorder(engine, writer)
    good = [row() for _ in range(20)]
    bad = row(user_id="no-such-user")  # the foreign key refuses it
    futures = [rec.submit("insert", r) for r in good[:10]]
    futures.append(rec.submit("insert", bad))
    futures += [rec.submit("insert", r) for r in good[10:]]
    results = await asyncio.gather(*futures, return_exceptions=True)
    await rec.close()
    assert [isinstance(x, Exception) for x in results] == \
        [False] * 10 + [True] + [False] * 10
    with sqlite3.connect(engine.url.database) as con:
        stored = {t for (t,) in con.execute("SELECT trace_id FROM executions")}
    assert stored == {r["trace_id"] for r in good}


async def test_an_update_replaces_the_accepted_row(engine: AsyncEngine, writer: bool) -> None:
    rec = Recorder(engine, writer)
    accepted = row(status="queued", stdout="", exit_code=None, completed_at=None)
    await rec.insert(accepted)
    await rec.update({**accepted, "status": "failed", "stdout": "done", "exit_code": 3,
                      "completed_at": datetime.now(UTC)})
    await rec.close()
    async with sessionmaker(engine)() as db:
        r = await db.get(Execution, accepted["trace_id"])
    assert r is not None and (r.status, r.stdout, r.exit_code) == ("failed", "done", 3)
    assert r.completed_at is not None
