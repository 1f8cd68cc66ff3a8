"""The execution rows: written by one writer, many rows to a commit (group commit).

What a user is promised: an execution that was answered is on record. Its answer (the
JSON result, the stream's ``result`` event) is released only once its row is committed
(``ExecutionService._drive`` awaits the future ``Recorder.submit`` returns), so
``GET /v1/executions/{id}`` finds it even if the server is killed a moment after the
answer. A write-behind (answer first, record soon after) would have been faster still,
and would break exactly that; it was not done. What changes here is only how rows get
there: one writer takes every row waiting, writes them in one transaction, commits once,
and then releases all their answers. A quiet server pays one short commit per
execution; a busy one a commit per batch, and execution writers never queue on the
database's write lock behind each other.

On SQLite (the default) the writer is a thread with its own ``sqlite3`` connection (WAL,
the same pragmas as the engine's): a batch costs one hop to that thread and back, against
four or five for a statement through SQLAlchemy's aiosqlite pool. Values are converted
by the table's own SQLAlchemy types, so the rows are exactly what the ORM would write.
On any other database (PostgreSQL) the writer is a task on the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import bindparam, insert, update
from sqlalchemy.ext.asyncio import AsyncEngine

from sophon.store.tables import Execution

log = logging.getLogger(__name__)

TABLE = Execution.__table__

# (kind, row, future): kind is "insert" or "update" (by trace_id).
Item = tuple[str, dict[str, Any], asyncio.Future[None]]


def _settle(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)


class Recorder:
    """Writes execution rows; ``insert``/``update`` return once the row is committed."""

    def __init__(self, engine: AsyncEngine, sqlite_thread: bool = True) -> None:
        url = engine.url
        if sqlite_thread and url.get_backend_name() == "sqlite" and \
                url.database not in (None, "", ":memory:"):
            self._writer: _SqliteWriter | _EngineWriter = _SqliteWriter(engine, url.database)
        else:
            self._writer = _EngineWriter(engine)

    def submit(self, kind: str, row: dict[str, Any]) -> asyncio.Future[None]:
        """Queue an ``insert`` or an ``update`` (by trace_id) of ``row``; the future is
        done once it is committed (or holds the error)."""
        return self._writer.submit(kind, row)

    async def insert(self, row: dict[str, Any]) -> None:
        await self.submit("insert", row)

    async def update(self, row: dict[str, Any]) -> None:
        await self.submit("update", row)

    async def close(self) -> None:
        await self._writer.close()


class _SqliteWriter:
    def __init__(self, engine: AsyncEngine, path: str) -> None:
        dialect = engine.dialect
        self._path = path
        names = [c.key for c in TABLE.columns]
        ins = insert(TABLE).compile(dialect=dialect, column_keys=names)
        upd = update(TABLE).where(TABLE.c.trace_id == bindparam("_trace_id")).compile(
            dialect=dialect, column_keys=names)
        self._sql = {"insert": (ins.string, list(ins.positiontup or [])),
                     "update": (upd.string, list(upd.positiontup or []))}
        self._convert: dict[str, Callable[[Any], Any] | None] = {
            c.key: c.type._cached_bind_processor(dialect) for c in TABLE.columns}
        self._queue: queue.SimpleQueue[Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _params(self, kind: str, row: dict[str, Any]) -> list[Any]:
        out = []
        for name in self._sql[kind][1]:
            # _trace_id: the row's, in the WHERE; a column the row leaves out is NULL
            # (as the engine writer does for the nullable webhook columns).
            value = row.get(name.removeprefix("_"))
            conv = self._convert.get(name)
            out.append(value if conv is None else conv(value))
        return out

    def submit(self, kind: str, row: dict[str, Any]) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._start()
        self._queue.put((kind, row, fut))
        return fut

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, daemon=True,
                                                    name="execution-writer")
                    self._thread.start()

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON",
                       "busy_timeout=5000"):
            con.execute("PRAGMA " + pragma)
        return con

    def _run(self) -> None:
        con: sqlite3.Connection | None = None
        try:
            while True:
                batch = [self._queue.get()]
                with contextlib.suppress(queue.Empty):
                    while True:
                        batch.append(self._queue.get_nowait())
                items = [i for i in batch if i is not None]
                if items:
                    try:
                        if con is None:
                            con = self._connect()
                        outcome = self._commit(con, items)
                    except Exception as exc:  # no database at all: this batch fails
                        log.exception("could not open the database for execution rows")
                        outcome = [exc] * len(items)
                    for (_, _, fut), error in zip(items, outcome, strict=True):
                        with contextlib.suppress(RuntimeError):  # the loop is gone
                            fut.get_loop().call_soon_threadsafe(_settle, fut, error)
                if len(items) != len(batch):
                    return  # closed
        finally:
            if con is not None:
                con.close()

    def _commit(self, con: sqlite3.Connection,
                items: list[Item]) -> list[BaseException | None]:
        """One transaction for the batch; if it fails, one per row, so that one bad row
        (its user deleted meanwhile) does not lose the others."""
        try:
            self._transaction(con, items)
            return [None] * len(items)
        except Exception:
            outcome: list[BaseException | None] = []
            for item in items:
                try:
                    self._transaction(con, [item])
                    outcome.append(None)
                except Exception as exc:
                    outcome.append(exc)
            return outcome

    def _transaction(self, con: sqlite3.Connection, items: list[Item]) -> None:
        con.execute("BEGIN IMMEDIATE")
        try:
            for kind, row, _ in items:
                con.execute(self._sql[kind][0], self._params(kind, row))
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join, 10)


class _EngineWriter:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._pending: list[Item] = []
        self._task: asyncio.Task[None] | None = None

    def submit(self, kind: str, row: dict[str, Any]) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((kind, row, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="execution-writer")
        return fut

    async def _run(self) -> None:
        while self._pending:
            items, self._pending = self._pending, []
            try:
                await self._transaction(items)
                outcome: list[BaseException | None] = [None] * len(items)
            except Exception:
                outcome = []
                for item in items:
                    try:
                        await self._transaction([item])
                        outcome.append(None)
                    except Exception as exc:
                        outcome.append(exc)
            for (_, _, fut), exc in zip(items, outcome, strict=True):
                _settle(fut, exc)

    async def _transaction(self, items: list[Item]) -> None:
        async with self._engine.begin() as conn:
            inserts = [row for kind, row, _ in items if kind == "insert"]
            if inserts:
                await conn.execute(insert(Execution), inserts)
            for kind, row, _ in items:
                if kind == "update":
                    await conn.execute(update(Execution)
                                       .where(Execution.trace_id == row["trace_id"])
                                       .values(**row))

    async def close(self) -> None:
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
