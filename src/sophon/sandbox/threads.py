"""Threads: a user's named, persistent boxes of the execution API.

Listing, deleting (the box's files, disk image and uid go with it), and housekeeping:
a thread unused for ``SOPHON_THREAD_EXPIRY_DAYS`` is deleted, and execution records
older than ``SOPHON_EXECUTION_RETENTION_DAYS`` are pruned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sophon.box.manager import BoxManager
from sophon.errors import ThreadBusy
from sophon.sandbox.models import TERMINAL
from sophon.store.owned import owned
from sophon.store.tables import Execution, Thread, iso
from sophon.users import Principal

log = logging.getLogger(__name__)

# A thread's last use is written at most this often (seconds): expiry counts in days,
# and a write on every execution would slow the warm path.
TOUCH_EVERY = 3600.0
PRUNE_BATCH = 1000  # rows a delete statement takes, so the writer is never held long


class NetworkUsageView(BaseModel):
    """What went through the egress door: bytes from the box out, bytes back in, the
    connections made and those refused."""

    bytes_out: int = 0
    bytes_in: int = 0
    connections: int = 0
    denied: int = 0


class ThreadView(BaseModel):
    thread_id: str
    created_at: str
    last_used_at: str
    awake: bool  # its box is running now
    network: NetworkUsageView = Field(default_factory=NetworkUsageView)


class ThreadList(BaseModel):
    threads: list[ThreadView]


class ThreadService:
    """``claim(user_id, name, why)`` marks a thread busy for the execution service (an
    execute on it meanwhile is a 409) or raises ThreadBusy; ``release(user_id, name)``
    ends that and forgets the thread's box id."""

    def __init__(self, boxes: BoxManager, db: async_sessionmaker[AsyncSession],
                 claim: Callable[[str, str, str], None],
                 release: Callable[[str, str], None]) -> None:
        self.boxes = boxes
        self.settings = boxes.settings
        self._db = db
        self._claim = claim
        self._release = release
        self._touched: dict[str, float] = {}  # box id: when its last use was written
        # Set by sophon.services: network usage by thread (box) id, from the egress door.
        self.network_usage: Callable[[list[str]], Awaitable[dict[str, dict[str, int]]]] | \
            None = None
        self._writes: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None

    # --- last use ------------------------------------------------------------

    def touch(self, box_id: str) -> None:
        """The thread of this box is being used: write so, unless written lately."""
        now = time.monotonic()
        if now - self._touched.get(box_id, -TOUCH_EVERY) < TOUCH_EVERY:
            return
        self._touched[box_id] = now
        self._spawn(self._write_touch(box_id))

    async def _write_touch(self, box_id: str) -> None:
        async with self._db() as db:
            await db.execute(update(Thread).where(Thread.id == box_id)
                             .values(last_used_at=datetime.now(UTC)))
            await db.commit()

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("thread bookkeeping failed")

        task = asyncio.get_running_loop().create_task(run())
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    # --- the API -------------------------------------------------------------

    async def list(self, principal: Principal) -> ThreadList:
        async with self._db() as db:
            rows = (await db.execute(
                select(Thread).where(Thread.user_id == principal.user_id)
                .order_by(Thread.name))).scalars().all()
        usage = (await self.network_usage([r.id for r in rows])
                 if self.network_usage is not None and rows else {})
        return ThreadList(threads=[ThreadView(
            thread_id=r.name, created_at=iso(r.created_at),
            last_used_at=iso(r.last_used_at or r.created_at),
            awake=self.boxes.running(r.id) is not None,
            network=NetworkUsageView(**usage.get(r.id, {}))) for r in rows])

    async def delete(self, principal: Principal, name: str) -> None:
        """Delete the caller's thread with its files, disk image and uid. Another
        user's or no thread is a 404; one running an execution (or a file transfer) a
        409."""
        async with self._db() as db:
            box_id = (await owned(db, Thread, principal.user_id, name=name,
                                  what="thread")).id
        if not await self._remove(principal.user_id, name, box_id):
            raise ThreadBusy(f"thread {name!r} is in use (a file transfer); try again "
                             "when it is done")

    async def _remove(self, user_id: str, name: str, box_id: str) -> bool:
        """False if the thread's box is held (a files-API transfer); an execution on it
        raises ThreadBusy."""
        self._claim(user_id, name, "being deleted")
        try:
            box = self.boxes.running(box_id)
            if box is not None and box.busy:
                return False
            async with self._db() as db:
                await db.execute(delete(Thread).where(Thread.id == box_id))
                await db.commit()
            self._touched.pop(box_id, None)
            await self.boxes.destroy(box_id)
        finally:
            self._release(user_id, name)
        return True

    async def forget(self, box_id: str) -> None:
        """Remove a thread whose box never started (an execute refused a 503)."""
        async with self._db() as db:
            await db.execute(delete(Thread).where(Thread.id == box_id))
            await db.commit()
        self._touched.pop(box_id, None)
        await self.boxes.destroy(box_id)

    # --- housekeeping ----------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop().create_task(self._housekeeping(),
                                                            name="thread-housekeeping")

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        await asyncio.gather(*self._writes, return_exceptions=True)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.settings.housekeeping_seconds)
            for job in (self.expire, self.prune):
                try:
                    await job()
                except Exception:
                    log.exception("housekeeping: %s failed", job.__name__)

    async def expire(self) -> int:
        """Delete threads unused for SOPHON_THREAD_EXPIRY_DAYS; ones busy now wait for
        the next round."""
        days = self.settings.thread_expiry_days
        if not days:
            return 0
        cutoff = datetime.now(UTC) - timedelta(days=days)
        async with self._db() as db:
            old = (await db.execute(select(Thread.user_id, Thread.name, Thread.id).where(
                func.coalesce(Thread.last_used_at, Thread.created_at) < cutoff))).all()
        gone = 0
        for user_id, name, box_id in old:
            with contextlib.suppress(ThreadBusy):  # an execution on it: next round
                gone += await self._remove(user_id, name, box_id)
        if gone:
            log.info("deleted %d thread(s) unused for %g days", gone, days)
        return gone

    async def prune(self) -> int:
        """Delete finished executions' records older than
        SOPHON_EXECUTION_RETENTION_DAYS, a batch at a time."""
        days = self.settings.execution_retention_days
        if not days:
            return 0
        cutoff = datetime.now(UTC) - timedelta(days=days)
        total = 0
        while True:
            async with self._db() as db:
                batch = select(Execution.trace_id).where(
                    Execution.created_at < cutoff, Execution.status.in_(TERMINAL)
                ).limit(PRUNE_BATCH)
                res = await db.execute(delete(Execution).where(
                    Execution.trace_id.in_(batch)))
                await db.commit()
            n = res.rowcount or 0  # type: ignore[attr-defined]
            total += n
            if n < PRUNE_BATCH:
                break
            await asyncio.sleep(0)  # let the writer in between batches
        if total:
            log.info("pruned %d execution record(s) older than %g days", total, days)
        return total
