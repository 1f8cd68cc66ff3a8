"""Events appended on one node reach the streams open on every other (PostgreSQL's
LISTEN/NOTIFY). A notification names the node, the session and the seq, never the event
itself: the subscriber reads the rows from the table, so a lost notification (or a
listener connection that dropped and came back) costs latency, never an event."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import URL

log = logging.getLogger("sophon.cluster")

CHANNEL = "sophon_events"
RECONNECT_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)


def payload(node_id: str, session_id: str, seq: int) -> str:
    return f"{node_id}:{session_id}:{seq}"


def parse(text: str) -> tuple[str, str, int] | None:
    node, _, rest = text.partition(":")
    session_id, _, seq = rest.rpartition(":")
    if not node or not session_id or not seq.isdigit():
        return None
    return node, session_id, int(seq)


class EventListener:
    """One connection per node, LISTENing; ``on_event(session_id, seq)`` for each other
    node's append, ``on_gap()`` after the connection came back (what was sent meanwhile
    was lost: every stream looks at the table again)."""

    def __init__(self, url: URL, node_id: str, on_event: Callable[[str, int], None],
                 on_gap: Callable[[], None]) -> None:
        self._dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.node_id = node_id
        self._on_event = on_event
        self._on_gap = on_gap
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-listener")

    def _heard(self, _conn: Any, _pid: int, _channel: str, text: str) -> None:
        found = parse(text)
        if found is not None and found[0] != self.node_id:
            self._on_event(found[1], found[2])

    async def _run(self) -> None:
        import asyncpg  # only a cluster on PostgreSQL has it

        attempt = 0
        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(self._dsn)
            except (OSError, asyncpg.PostgresError) as exc:
                wait = RECONNECT_SECONDS[min(attempt, len(RECONNECT_SECONDS) - 1)]
                log.warning("event listener: cannot reach the database (%s); again in "
                            "%.1f s", exc, wait)
                attempt += 1
                await asyncio.sleep(wait)
                continue
            try:
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._heard)
                if attempt:
                    log.info("event listener: connected again")
                    self._on_gap()
                attempt = 1  # from now on, a reconnection means notifications were lost
                await lost.wait()
                log.warning("event listener: connection lost; reconnecting")
            finally:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=2)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
