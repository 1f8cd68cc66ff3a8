"""The nodes sharing this database: each server registers itself at start (a fresh id
per process), says it is alive every ``node_heartbeat_seconds`` with its load, and is
taken for dead once silent for ``node_lease_seconds``. On SQLite the one server is the
one node; on PostgreSQL every server on the same database is listed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sophon.config import Settings
from sophon.store.tables import NodeRow, SessionRow, iso, utcnow

log = logging.getLogger("sophon.cluster")

# Rows of nodes that stopped (or died) longer ago than this are removed.
FORGET_AFTER = timedelta(days=1)


class NodeView(BaseModel):
    id: str
    url: str
    host: str
    pid: int
    started_at: str
    heartbeat_at: str
    alive: bool
    stopped_at: str | None = None
    boxes_awake: int
    memory_available_mb: int
    sessions: int = 0  # that it runs
    draining: bool = False
    this: bool  # the node that answered


def memory_available_mb() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


class NodeRegistry:
    def __init__(self, settings: Settings, db: async_sessionmaker[AsyncSession],
                 boxes_awake: Callable[[], int]) -> None:
        self.settings = settings
        self._db = db
        self._boxes_awake = boxes_awake
        self.id = "node_" + secrets.token_hex(8)
        self.url = (settings.node_url or settings.base_url).rstrip("/")
        self._tasks: list[asyncio.Task[None]] = []
        # Being drained (set by an admin, read at each heartbeat); and what runs after
        # each heartbeat (ownership checks, the drain itself), on a task of its own: work
        # there (stopping boxes, taking sessions over) never delays the next heartbeat,
        # or a busy node would lose its lease to its own bookkeeping.
        self.draining = False
        self.after_beat: list[Callable[[], Awaitable[None]]] = []
        self._beaten = asyncio.Event()

    async def start(self) -> None:
        async with self._db() as db:
            db.add(NodeRow(id=self.id, url=self.url, host=socket.gethostname()[:255],
                           pid=os.getpid(), started_at=utcnow(), heartbeat_at=utcnow(),
                           boxes_awake=0, memory_available_mb=memory_available_mb()))
            await db.commit()
        log.info("node %s (%s) joined", self.id, self.url)
        self._tasks = [asyncio.create_task(self._beat_loop(), name="node-heartbeat"),
                       asyncio.create_task(self._after_loop(), name="node-after-beat")]

    async def beat(self) -> None:
        """Say this node is alive, with its load; forget nodes long gone."""
        async with self._db() as db:
            row = await db.get(NodeRow, self.id)
            if row is None:  # removed by hand, or by a node that took it for long dead
                row = NodeRow(id=self.id, url=self.url, host=socket.gethostname()[:255],
                              pid=os.getpid(), started_at=utcnow())
                db.add(row)
            self.draining = bool(row.draining)
            row.boxes_awake = self._boxes_awake()
            row.memory_available_mb = memory_available_mb()
            cutoff = utcnow() - FORGET_AFTER
            for old in (await db.scalars(select(NodeRow).where(
                    NodeRow.heartbeat_at < cutoff, NodeRow.id != self.id))).all():
                await db.delete(old)
            # Stamped last: a process paused in the middle of this must not write, once
            # it runs again, a time from before its pause.
            row.heartbeat_at = utcnow()
            await db.commit()

    async def _beat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.node_heartbeat_seconds)
            try:
                await self.beat()
            except Exception:  # the database away for a moment: said, and tried again
                log.exception("node %s: could not write its heartbeat", self.id)
                continue
            self._beaten.set()

    async def _after_loop(self) -> None:
        """Runs ``after_beat`` once after each heartbeat, or once after several if the
        work took longer than a beat."""
        while True:
            await self._beaten.wait()
            self._beaten.clear()
            for then in self.after_beat:
                try:
                    await then()
                except Exception:
                    log.exception("node %s: after its heartbeat", self.id)

    async def set_draining(self, node_id: str, draining: bool) -> NodeView | None:
        async with self._db() as db:
            row = await db.get(NodeRow, node_id)
            if row is None:
                return None
            row.draining = draining
            await db.commit()
            await db.refresh(row)
        if node_id == self.id:
            self.draining = draining
        return self._view(row)

    async def list(self) -> list[NodeView]:
        async with self._db() as db:
            rows = (await db.scalars(select(NodeRow).order_by(NodeRow.started_at,
                                                              NodeRow.id))).all()
            runs = dict((await db.execute(
                select(SessionRow.node_id, func.count()).where(SessionRow.node_id.is_not(None))
                .group_by(SessionRow.node_id))).all())
        return [self._view(r).model_copy(update={"sessions": runs.get(r.id, 0)})
                for r in rows]

    def _view(self, row: NodeRow) -> NodeView:
        lease = timedelta(seconds=self.settings.node_lease_seconds)
        beat = _aware(row.heartbeat_at)
        alive = row.stopped_at is None and utcnow() - beat <= lease
        return NodeView(id=row.id, url=row.url, host=row.host, pid=row.pid,
                        started_at=iso(row.started_at), heartbeat_at=iso(row.heartbeat_at),
                        alive=alive,
                        stopped_at=iso(row.stopped_at) if row.stopped_at else None,
                        boxes_awake=row.boxes_awake,
                        memory_available_mb=row.memory_available_mb,
                        draining=bool(row.draining), this=row.id == self.id)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):  # a stop with the database gone still stops
            async with self._db() as db:
                row = await db.get(NodeRow, self.id)
                if row is not None:
                    row.stopped_at = utcnow()
                    await db.commit()
        log.info("node %s left", self.id)


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
