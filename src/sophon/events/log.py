"""The durable, live event log of every session.

``append`` gives an event the next ``seq`` of its session, redacts secrets, and hands
it to one writer task, which commits everything waiting in a single transaction (group
commit) and only then publishes each event to live subscribers, in order. ``follow``
replays from the store after a given seq and then stays live, with no gap and no
duplicate, however the two overlap.

Events travel as ``Stored``: the seq, the type and the wire JSON, made once at append.
A stream writes that JSON as it is; whoever needs the typed model parses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from sophon import metrics
from sophon.cluster import notify
from sophon.events.types import from_wire, to_wire
from sophon.store.tables import EventRow

PAGE = 1000
QUEUE_LIMIT = 10_000
REDACTED = "[redacted]"


@dataclass(frozen=True, slots=True)
class Stored:
    seq: int
    type: str
    json: str

    def event(self) -> Any:
        return from_wire(self.json)


class _Overflow:
    """Put in a subscriber's queue when it fell too far behind: it re-reads the store."""


OVERFLOW = _Overflow()
CLOSED = _Overflow()  # the session was deleted, or the server stops: its followers end


def redact_event(data: dict[str, Any], secrets: Iterable[str]) -> dict[str, Any]:
    """Redact an event's wire form. Its frame (type, seq, ts) and ids are Sophon's own,
    never a secret: a short secret such as "1" must not break a timestamp or an id."""
    return {k: v if k in FRAME or k.endswith("_id") else redact(v, secrets)
            for k, v in data.items()}


FRAME = frozenset({"type", "seq", "ts"})


def redact(value: Any, secrets: Iterable[str]) -> Any:
    """Replace every occurrence of a secret value in every string inside ``value``."""
    if isinstance(value, str):
        for s in secrets:
            if s and s in value:
                value = value.replace(s, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, secrets) for v in value]
    return value


@dataclass
class _Write:
    session_id: str
    row: dict[str, Any]
    stored: Stored
    done: asyncio.Future[None]


class _SqliteWriter:
    """Commits batches on a thread of its own with a plain sqlite3 connection.

    Through the async driver a commit costs several thread hand-offs (~2 ms); here it
    costs one each way. SQLite in WAL mode lets the server's other connections read
    meanwhile; writes from both sides take turns under the busy timeout."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._jobs: queue.SimpleQueue[tuple[list[_Write], asyncio.AbstractEventLoop,
                                            Callable[[list[_Write], BaseException | None],
                                                     None]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="event-writer", daemon=True)
        self._thread.start()

    def submit(self, batch: list[_Write], loop: asyncio.AbstractEventLoop,
               done: Callable[[list[_Write], BaseException | None], None]) -> None:
        self._jobs.put((batch, loop, done))

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(5)

    def _run(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        # An event of a session deleted meanwhile must fail, not leave an orphan row.
        db.execute("PRAGMA foreign_keys=ON")
        try:
            while (job := self._jobs.get()) is not None:
                batch, loop, done = job
                error: BaseException | None = None
                try:
                    db.execute("BEGIN IMMEDIATE")
                    db.executemany(
                        "INSERT INTO events (session_id, seq, type, ts, data) "
                        "VALUES (?, ?, ?, ?, ?)",
                        [(w.row["session_id"], w.row["seq"], w.row["type"],
                          w.row["ts"].strftime("%Y-%m-%d %H:%M:%S.%f"), w.row["data"])
                         for w in batch])
                    db.execute("COMMIT")
                except Exception as exc:
                    with contextlib.suppress(Exception):
                        db.execute("ROLLBACK")
                    error = exc
                loop.call_soon_threadsafe(done, batch, error)
        finally:
            db.close()


class EventLog:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        url = engine.url
        self._sqlite = (_SqliteWriter(url.database) if url.get_backend_name() == "sqlite"
                        and url.database not in (None, "", ":memory:") else None)
        self._in_flight = False
        self._locks: dict[str, asyncio.Lock] = {}
        self._last: dict[str, int] = {}
        self._subs: dict[str, set[asyncio.Queue[Any]]] = {}
        self._secrets: dict[str, tuple[str, ...]] = {}
        self._queue: list[_Write] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        # On PostgreSQL, each append is announced to the other nodes on the database
        # (cluster/notify.py) as this node: set by the node registry.
        self.node_id: str | None = None
        self._announce = url.get_backend_name() == "postgresql"
        # Told of every event stored, by session: the per-user event rate (quotas.py).
        self.on_append: Callable[[str], None] | None = None

    def set_secrets(self, session_id: str, values: Iterable[str]) -> None:
        # Longest first, so a secret containing another is redacted whole.
        self._secrets[session_id] = tuple(sorted((v for v in values if v), key=len,
                                                 reverse=True))

    def secrets_of(self, session_id: str) -> tuple[str, ...]:
        """The values redacted from the session's events."""
        return self._secrets.get(session_id, ())

    async def last_seq(self, session_id: str) -> int:
        if session_id not in self._last:
            async with self._engine.connect() as conn:
                found = await conn.scalar(
                    select(func.max(EventRow.seq)).where(EventRow.session_id == session_id))
            self._last.setdefault(session_id, found or 0)
        return self._last[session_id]

    async def append(self, session_id: str, event: Any) -> Any:
        """Store the event, then publish it; returns it with its seq (and redacted)."""
        lock = self._locks.setdefault(session_id, asyncio.Lock())
        async with lock:
            seq = await self.last_seq(session_id) + 1
            data = to_wire(event)
            data["seq"] = seq
            secrets = self._secrets.get(session_id)
            if secrets:
                data = redact_event(data, secrets)
                model = from_wire(data)
            else:
                model = event.model_copy(update={"seq": seq})
            text = json.dumps(data, separators=(",", ":"))
            write = _Write(session_id,
                           {"session_id": session_id, "seq": seq, "type": data["type"],
                            "ts": model.ts, "data": text},
                           Stored(seq, data["type"], text),
                           asyncio.get_running_loop().create_future())
            self._last[session_id] = seq
            self._queue.append(write)
            if self._sqlite is not None:
                self._submit_sqlite()
            else:
                self._wake.set()
                if self._writer is None or self._writer.done():
                    self._writer = asyncio.create_task(self._write_loop(), name="event-writer")
        await write.done
        metrics.events.labels(data["type"]).inc()
        if self.on_append is not None:
            self.on_append(session_id)
        return model

    def _submit_sqlite(self) -> None:
        # One batch in flight at a time: what queues meanwhile goes in the next one.
        if self._in_flight or not self._queue or self._sqlite is None:
            return
        batch, self._queue = self._queue, []
        self._in_flight = True
        self._sqlite.submit(batch, asyncio.get_running_loop(), self._committed)

    def _committed(self, batch: list[_Write], error: BaseException | None) -> None:
        self._in_flight = False
        if error is None:
            self._publish(batch)
        else:
            self._fail(batch, error)
        self._submit_sqlite()

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._queue = self._queue, []
            if not batch:
                continue
            try:
                async with self._engine.begin() as conn:
                    await conn.execute(insert(EventRow), [w.row for w in batch])
                    if self._announce and self.node_id is not None:
                        # Sent at commit, never for rows that were not stored.
                        last = {w.session_id: w.stored.seq for w in batch}
                        for sid, seq in last.items():
                            await conn.execute(text("SELECT pg_notify(:c, :p)"), {
                                "c": notify.CHANNEL, "p": notify.payload(self.node_id, sid,
                                                                         seq)})
            except Exception as exc:
                self._fail(batch, exc)
                continue
            self._publish(batch)

    def _publish(self, batch: list[_Write]) -> None:
        for w in batch:
            for q in list(self._subs.get(w.session_id, ())):
                if q.qsize() >= QUEUE_LIMIT:
                    _reset(q)
                else:
                    q.put_nowait(w.stored)
            if not w.done.done():
                w.done.set_result(None)

    def _fail(self, batch: list[_Write], exc: BaseException) -> None:
        # These seqs were never stored: fail them and every later write of the same
        # sessions already queued (they would leave a gap); the next append re-reads.
        failed = {w.session_id for w in batch}
        later = [w for w in self._queue if w.session_id in failed]
        self._queue = [w for w in self._queue if w.session_id not in failed]
        for w in batch + later:
            self._last.pop(w.session_id, None)
            if not w.done.done():
                w.done.set_exception(exc)

    async def close(self) -> None:
        await asyncio.gather(*(w.done for w in self._queue), return_exceptions=True)
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        if self._sqlite is not None:
            await asyncio.to_thread(self._sqlite.close)

    async def read_raw(self, session_id: str, after: int = 0,
                       limit: int = PAGE) -> list[Stored]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(
                select(EventRow.seq, EventRow.type, EventRow.data)
                .where(EventRow.session_id == session_id, EventRow.seq > after)
                .order_by(EventRow.seq)
                .limit(limit)
            )).all()
        return [Stored(r.seq, r.type, r.data) for r in rows]

    async def read_type(self, session_id: str, event_type: str) -> list[Any]:
        """Every event of one type, in order (through the (session, type) index)."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(
                select(EventRow.seq, EventRow.type, EventRow.data)
                .where(EventRow.session_id == session_id, EventRow.type == event_type)
                .order_by(EventRow.seq))).all()
        return [Stored(r.seq, r.type, r.data).event() for r in rows]

    async def last_of_type(self, session_id: str, event_type: str) -> int:
        """The seq of the session's last event of this type (0: none)."""
        async with self._engine.connect() as conn:
            found = await conn.scalar(
                select(func.max(EventRow.seq))
                .where(EventRow.session_id == session_id, EventRow.type == event_type))
        return int(found or 0)

    async def count_type(self, session_id: str, event_type: str) -> int:
        async with self._engine.connect() as conn:
            found = await conn.scalar(
                select(func.count()).select_from(EventRow)
                .where(EventRow.session_id == session_id, EventRow.type == event_type))
        return int(found or 0)

    async def read(self, session_id: str, after: int = 0, limit: int = PAGE) -> list[Any]:
        return [s.event() for s in await self.read_raw(session_id, after, limit)]

    async def follow(self, session_id: str, after: int = 0, heartbeat: float | None = None,
                     batch: bool = False) -> AsyncIterator[Any]:
        """Events after ``after`` from the store, then live ones, forever, as ``Stored``
        (lists of them with ``batch``). Yields None after ``heartbeat`` quiet seconds."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._subs.setdefault(session_id, set()).add(queue)
        last = after
        try:
            while True:
                # Catch up from the store (subscribed first, so nothing falls between).
                while True:
                    page = await self.read_raw(session_id, last)
                    if page:
                        last = page[-1].seq
                        if batch:
                            yield page
                        else:
                            for s in page:
                                yield s
                    if len(page) < PAGE:
                        break
                while True:
                    try:
                        item = await asyncio.wait_for(queue.get(), heartbeat)
                    except TimeoutError:
                        yield None
                        continue
                    items = [item]
                    while not queue.empty():
                        items.append(queue.get_nowait())
                    fresh: list[Stored] = []
                    gap = False
                    if CLOSED in items:
                        return
                    for it in items:
                        if it is OVERFLOW or it.seq > last + 1:
                            gap = True  # back to the store for the rest
                            break
                        if it.seq > last:
                            fresh.append(it)
                            last = it.seq
                    if batch:
                        if fresh:
                            yield fresh
                    else:
                        for it in fresh:
                            yield it
                    if gap:
                        break
        finally:
            subs = self._subs.get(session_id)
            if subs is not None:
                subs.discard(queue)
                if not subs:
                    del self._subs[session_id]

    async def delete(self, session_id: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(delete(EventRow).where(EventRow.session_id == session_id))
        self._last.pop(session_id, None)
        self._secrets.pop(session_id, None)
        self._locks.pop(session_id, None)
        for q in self._subs.get(session_id, ()):
            q.put_nowait(CLOSED)

    def appended_elsewhere(self, session_id: str, seq: int) -> None:
        """Another node stored the session's events up to ``seq``: the streams here read
        them from the table, and this node's next seq comes after it."""
        if session_id in self._last:  # never lowered: a write queued here keeps its seq
            self._last[session_id] = max(self._last[session_id], seq)
        for q in list(self._subs.get(session_id, ())):
            _poke(q)

    def look_again(self) -> None:
        """Notifications may have been lost: every stream reads the table again."""
        for subs in self._subs.values():
            for q in list(subs):
                _poke(q)

    def end_streams(self) -> None:
        """The server is stopping: every follower ends now (its client reconnects from
        its Last-Event-ID), instead of being cut off with a traceback at the deadline."""
        for subs in self._subs.values():
            for q in subs:
                q.put_nowait(CLOSED)


def _poke(q: asyncio.Queue[Any]) -> None:
    """A gap marker: the stream goes back to the store for what it has not seen."""
    if q.qsize() >= QUEUE_LIMIT:
        _reset(q)
    else:
        q.put_nowait(OVERFLOW)


def _reset(q: asyncio.Queue[Any]) -> None:
    while not q.empty():
        q.get_nowait()
    q.put_nowait(OVERFLOW)
