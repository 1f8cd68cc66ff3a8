"""Per-user limits: how many boxes a user keeps awake, how many executions run at once,
how much disk their boxes and volumes may grow to, and how fast their sessions append
events. The one place that counts a user's use and refuses what would pass a limit.

Counts come from the box manager (running boxes and their owners), from this module's
own counters (executions in flight, recent events) and from the database (the user's
threads, sessions and volumes). Going over is ``LimitExceeded``: a 429 whose message
names the limit and its setting, with ``Retry-After`` where waiting helps.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sophon.box import ids
from sophon.config import Settings
from sophon.errors import LimitExceeded
from sophon.store.tables import SessionRow, Thread, Volume

if TYPE_CHECKING:
    from sophon.box.manager import BoxManager


class LimitUse(BaseModel):
    """One limit: what the user uses now, the ceiling (None: no limit), its setting."""

    used: int
    limit: int | None
    setting: str


class UserLimits(BaseModel):
    boxes_awake: LimitUse
    concurrent_executions: LimitUse
    disk_mb: LimitUse
    events_per_minute: LimitUse
    box_max_unattended_seconds: float | None  # None: a busy box is never stopped


class _Bucket:
    """A token bucket: a minute's worth of events may come at once, then they refill at
    the per-minute rate. Events are never refused here (they come from work already
    running); a bucket in debt refuses new work until it has refilled."""

    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.tokens = self.capacity
        self.at = time.monotonic()
        self.recent: list[float] = []  # times of the last minute's events, for /v1/me

    def refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now

    def take(self) -> None:
        self.refill()
        self.tokens -= 1
        now = time.monotonic()
        self.recent.append(now)
        if len(self.recent) > 2 * self.capacity + 64:
            self.trim(now)

    def trim(self, now: float) -> None:
        cut = now - 60
        self.recent = [t for t in self.recent if t > cut]


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _span(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


class Quotas:
    def __init__(self, settings: Settings, boxes: BoxManager,
                 db: async_sessionmaker[AsyncSession]) -> None:
        self.settings = settings
        self.boxes = boxes
        self._db = db
        self._running: defaultdict[str, int] = defaultdict(int)  # user: executions
        self._buckets: dict[str, _Bucket] = {}
        self._session_owner: dict[str, str] = {}
        self._owners_loaded = False
        self._loading = asyncio.Lock()
        # The MiB of a user's own built images (images/service.py sets it).
        self.user_images_mb: Callable[[str], Awaitable[int]] | None = None

    # --- boxes awake ----------------------------------------------------------

    async def _load_owners(self) -> None:
        """Tell the box manager who owns each thread, session and volume box, once: a
        box woken by any route then counts for its owner."""
        if self._owners_loaded:
            return
        async with self._loading:
            if self._owners_loaded:
                return
            async with self._db() as db:
                rows = [*(await db.execute(select(Thread.id, Thread.user_id))).all(),
                        *(await db.execute(select(SessionRow.box_id,
                                                  SessionRow.user_id))).all(),
                        *((ids.box_id(ids.Kind.VOLUME, vid), uid) for vid, uid in
                          (await db.execute(select(Volume.id, Volume.user_id))).all())]
            for box_id, user_id in rows:
                self.boxes.set_owner(box_id, user_id)
            self._owners_loaded = True

    async def admit_box(self, user_id: str, box_id: str | None = None,
                        pooled: bool = True) -> str:
        """The box for the user's next piece of work, counted against their boxes awake.

        ``box_id`` None: a new box (a started one from the pool when there is one and
        ``pooled``; not for a box on an image of its own). A
        box that is running, or being woken by another request, costs nothing more. The
        check and the claim happen with no await between them, so concurrent requests
        cannot all pass a limit of one."""
        await self._load_owners()
        if box_id is not None and self.boxes.awake_or_waking(box_id):
            self.boxes.claim(box_id, user_id)
            return box_id
        limit = self.settings.user_max_boxes
        awake = self.boxes.awake_of(user_id)
        if limit and len(awake) >= limit:
            raise LimitExceeded(
                f"you have {_count(len(awake), 'sandbox', 'sandboxes')} awake, the most "
                "this server allows per "
                f"user (SOPHON_USER_MAX_BOXES={limit}); stop one, or wait for idle ones to "
                "sleep", retry_after=self.boxes.next_sleep_in(awake))
        if box_id is None:
            box_id = self.boxes.new_box_id(pooled)
        self.boxes.claim(box_id, user_id)
        return box_id

    # --- executions at once ---------------------------------------------------

    def begin_execution(self, user_id: str) -> None:
        """Count one more execution of the user in flight; ``end_execution`` when it ends."""
        limit = self.settings.user_max_concurrent_executions
        running = self._running[user_id]
        if limit and running >= limit:
            raise LimitExceeded(
                f"you have {_count(running, 'execution', 'executions')} running, the most "
                "this server allows per "
                f"user at once (SOPHON_USER_MAX_CONCURRENT_EXECUTIONS={limit}); wait for "
                "one to finish", retry_after=1)
        self._running[user_id] = running + 1

    def end_execution(self, user_id: str) -> None:
        left = self._running[user_id] - 1
        if left > 0:
            self._running[user_id] = left
        else:
            self._running.pop(user_id, None)

    # --- disk -----------------------------------------------------------------

    async def disk_mb(self, user_id: str) -> int:
        """What the user's thread and session disks and volumes may grow to, in MiB:
        each disk image's size (one not made yet counts at the default size); and the
        user's own built images (told by the image service, once it is open)."""
        async with self._db() as db:
            box_ids = [*(await db.execute(select(Thread.id).where(
                           Thread.user_id == user_id))).scalars(),
                       *(await db.execute(select(SessionRow.box_id).where(
                           SessionRow.user_id == user_id))).scalars()]
            volumes = (await db.execute(select(func.coalesce(func.sum(Volume.size_mb), 0))
                                        .where(Volume.user_id == user_id))).scalar_one()
        boxes = await asyncio.to_thread(self._images_mb, box_ids)
        images = await self.user_images_mb(user_id) if self.user_images_mb else 0
        return boxes + int(volumes) + images

    def _images_mb(self, box_ids: list[str]) -> int:
        total = 0
        for box_id in box_ids:
            try:
                total += self.boxes.disks.image(box_id).stat().st_size // 2**20
            except OSError:
                total += self.settings.box_disk_mb
        return total

    async def check_disk(self, user_id: str, adding_mb: int, what: str) -> None:
        """Refuse ``what`` (a new session, thread or volume of ``adding_mb``) if it would
        bring the user's disk past the limit. Waiting does not help: no Retry-After."""
        limit = self.settings.user_max_disk_mb
        if not limit:
            return
        used = await self.disk_mb(user_id)
        if used + adding_mb > limit:
            raise LimitExceeded(
                f"{what} of {adding_mb} MiB would bring your disk to {used + adding_mb} "
                f"MiB (your sessions', threads', volumes' and images' sizes added up), "
                f"over the {limit} MiB this server allows per user "
                "(SOPHON_USER_MAX_DISK_MB); delete a session, volume or image you no longer "
                "need, or ask for a smaller size")

    # --- events ---------------------------------------------------------------

    def know_session(self, session_id: str, user_id: str) -> None:
        """Whose the session's events are (called wherever a session is used)."""
        self._session_owner[session_id] = user_id

    def note_event(self, session_id: str) -> None:
        """Called by the event log for every event it appends."""
        user_id = self._session_owner.get(session_id)
        if user_id is None or not self.settings.user_max_events_per_minute:
            return
        bucket = self._buckets.get(user_id)
        if bucket is None:
            bucket = self._buckets[user_id] = _Bucket(self.settings.user_max_events_per_minute)
        bucket.take()

    def check_events(self, user_id: str) -> None:
        """Refuse new work (a session, an exec) while the user's sessions are over their
        event rate. Work already running is never cut short."""
        limit = self.settings.user_max_events_per_minute
        bucket = self._buckets.get(user_id)
        if not limit or bucket is None:
            return
        bucket.refill()
        if bucket.tokens < 1:
            wait = math.ceil((1 - bucket.tokens) / bucket.rate)
            raise LimitExceeded(
                f"your sessions appended events faster than this server allows per user "
                f"({limit} a minute, SOPHON_USER_MAX_EVENTS_PER_MINUTE); what is running "
                f"goes on, but new work waits about {wait} s", retry_after=wait)

    def events_last_minute(self, user_id: str) -> int:
        bucket = self._buckets.get(user_id)
        if bucket is None:
            return 0
        bucket.trim(time.monotonic())
        return len(bucket.recent)

    def forget_session(self, session_id: str) -> None:
        self._session_owner.pop(session_id, None)

    # --- what /v1/me shows ----------------------------------------------------

    async def usage(self, user_id: str) -> UserLimits:
        await self._load_owners()
        s = self.settings
        unattended = s.box_max_unattended_seconds
        return UserLimits(
            boxes_awake=LimitUse(used=len(self.boxes.awake_of(user_id)),
                                 limit=s.user_max_boxes or None,
                                 setting="SOPHON_USER_MAX_BOXES"),
            concurrent_executions=LimitUse(used=self._running.get(user_id, 0),
                                           limit=s.user_max_concurrent_executions or None,
                                           setting="SOPHON_USER_MAX_CONCURRENT_EXECUTIONS"),
            disk_mb=LimitUse(used=await self.disk_mb(user_id), limit=s.user_max_disk_mb or None,
                             setting="SOPHON_USER_MAX_DISK_MB"),
            events_per_minute=LimitUse(used=self.events_last_minute(user_id),
                                       limit=s.user_max_events_per_minute or None,
                                       setting="SOPHON_USER_MAX_EVENTS_PER_MINUTE"),
            box_max_unattended_seconds=unattended or None,
        )


def unattended_detail(seconds: float, processes: int) -> str:
    """What a session's log says when its box was stopped for want of requests."""
    ended = ("; a background process was ended" if processes == 1 else
             f"; {processes} background processes were ended" if processes > 1 else "")
    return f"stopped after {_span(seconds)} without a request{ended}"
