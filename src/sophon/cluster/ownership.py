"""Which node runs each session's box (its watcher, turns and execs) and each thread's.

A session or thread belongs to one node at a time: its row names the node
(``node_id``), and the lease is that node's heartbeat (nodes.py): while the node beats,
what it owns stays its own; once it is silent for ``node_lease_seconds`` (or stopped),
any node may take what it owned, with an UPDATE that only succeeds where the row still
names the node that was seen, so two nodes never both take it. The node that takes a
session reports what the dead node cut off (a turn, an exec) exactly as a restart does.

Every node checks, at each heartbeat, that what it believes it owns is still its own
(another node takes over only once this node's lease ran out, e.g. after a long pause),
and takes over the sessions of dead nodes that were in the middle of something, so a
cut-off turn is reported within the lease time, not at the next request.

On SQLite the server is alone: it owns everything and nothing here touches the database.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sophon.cluster.nodes import NodeRegistry
from sophon.config import Settings
from sophon.errors import SophonError
from sophon.store.tables import Execution, NodeRow, OpenExec, SessionRow, Thread, utcnow

log = logging.getLogger("sophon.cluster")

Kind = Literal["session", "thread"]
_TABLES = {"session": SessionRow, "thread": Thread}


class SessionElsewhere(SophonError):
    """A node was asked to run what another, live node runs (a request that reached it
    without going through the forwarding, such as a tool call of the MCP endpoint)."""

    status = 409
    code = "runs_on_another_node"


@dataclass(frozen=True)
class Owner:
    node_id: str
    url: str


class Ownership:
    def __init__(self, settings: Settings, db: async_sessionmaker[AsyncSession],
                 nodes: NodeRegistry) -> None:
        self.settings = settings
        self.clustered = settings.clustered
        self._db = db
        self.nodes = nodes
        self._mine: dict[Kind, set[str]] = {"session": set(), "thread": set()}
        # Told of each session or thread taken from a node that stopped or died (what
        # it cut off is reported), and of each one this node found taken from it.
        self.on_taken: dict[Kind, Callable[[str], Awaitable[None]]] = {}
        self.on_lost: dict[Kind, Callable[[str], Awaitable[None]]] = {}

    @property
    def node_id(self) -> str:
        return self.nodes.id

    def mine(self, kind: Kind) -> set[str]:
        return set(self._mine[kind])

    def _alive(self) -> ColumnElement[bool]:
        """A node that beat within the lease and did not stop, and that is not an
        earlier run of this one (same address: this process is there now)."""
        since = utcnow() - timedelta(seconds=self.settings.node_lease_seconds)
        return and_(NodeRow.stopped_at.is_(None), NodeRow.heartbeat_at >= since,
                    or_(NodeRow.id == self.node_id, NodeRow.url != self.nodes.url))

    # --- where a session or thread runs -------------------------------------------

    async def locate(self, kind: Kind, key: str, here: bool = False,
                     take: bool = True) -> Owner | None:
        """The live node that runs it, if another; None if this node does (taking it
        now when no live node had it) or if there is no such row (the route says 404).
        A node being drained sends what no node runs to the placed node, unless the
        request is ``here`` already (forwarded to it): then it takes it, and hands it on
        at a later heartbeat."""
        if not self.clustered or key in self._mine[kind]:
            return None
        table = _TABLES[kind]
        while True:
            async with self._db() as db:
                found = (await db.execute(
                    select(table.node_id, NodeRow.url)
                    .select_from(table)
                    .outerjoin(NodeRow, (NodeRow.id == table.node_id) & self._alive())
                    .where(table.id == key))).first()
            if found is None:
                return None
            node_id, url = found
            if node_id == self.node_id:
                self._mine[kind].add(key)
                return None
            if node_id is not None and url is not None:
                return Owner(node_id, url)
            if self.nodes.draining and not here and (elsewhere := await self.place()):
                return elsewhere  # which takes it: a node being drained takes nothing
            if not take:
                raise SessionElsewhere(f"no node runs this {kind} now, and node "
                                       f"{self.node_id} takes it only for a request")
            if await self._take(kind, key, node_id):
                return None
            # Another node took it between the read and the update: look again.

    async def thread_id(self, user_id: str, name: str) -> str | None:
        async with self._db() as db:
            return await db.scalar(select(Thread.id).where(Thread.user_id == user_id,
                                                           Thread.name == name))

    async def execution_node(self, trace_id: str) -> Owner | None:
        """The live node, if another, that an execution runs (or ran) on: what it
        keeps in memory (the output of a run still going) is there."""
        async with self._db() as db:
            found = (await db.execute(
                select(NodeRow.id, NodeRow.url).join(
                    Execution, Execution.node_id == NodeRow.id)
                .where(Execution.trace_id == trace_id, self._alive()))).first()
        if found is None or found.id == self.node_id:
            return None
        return Owner(found.id, found.url)

    async def hold(self, kind: Kind, key: str, take: bool = True) -> None:
        """Before this node runs its box: raise if another live node runs it. With
        ``take`` False (work of the node's own, after a request: a checkpoint), also if
        this node does not hold it now: a drained node that released a session never
        takes it back for that, while the node it went to is about to run it."""
        owner = await self.locate(kind, key, here=True, take=take)
        if owner is not None:
            raise SessionElsewhere(
                f"this {kind} runs on node {owner.node_id} ({owner.url}); ask that node, "
                "or any node's API, which forwards to it")

    async def _take(self, kind: Kind, key: str, previous: str | None) -> bool:
        table = _TABLES[kind]
        async with self._db() as db:
            done = await db.execute(
                update(table).where(table.id == key,
                                    table.node_id.is_(None) if previous is None
                                    else table.node_id == previous)
                .values(node_id=self.node_id))
            await db.commit()
        if not done.rowcount:  # type: ignore[attr-defined]
            return False
        self._mine[kind].add(key)
        if previous is not None:
            log.warning("node %s took %s %s over from node %s, which stopped or died",
                        self.node_id, kind, key, previous)
        taken = self.on_taken.get(kind)
        if taken is not None:
            await taken(key)
        return True

    async def claim_new(self, kind: Kind, key: str) -> None:
        """A session or thread made on this node is this node's from the start."""
        if self.clustered:
            self._mine[kind].add(key)

    async def release(self, kind: Kind, key: str) -> None:
        """Hand it back (this node stops, or is drained): the next request for it, on
        any node, takes it at once, with no lease to wait out."""
        if not self.clustered:
            return
        self._mine[kind].discard(key)
        table = _TABLES[kind]
        async with self._db() as db:
            await db.execute(update(table).where(table.id == key,
                                                 table.node_id == self.node_id)
                             .values(node_id=None))
            await db.commit()

    async def release_all(self) -> None:
        if not self.clustered:
            return
        for kind, table in _TABLES.items():
            self._mine[kind].clear()  # type: ignore[index]
            async with self._db() as db:
                await db.execute(update(table).where(table.node_id == self.node_id)
                                 .values(node_id=None))
                await db.commit()

    async def forget(self, kind: Kind, key: str) -> None:
        self._mine[kind].discard(key)

    # --- placement ---------------------------------------------------------------------

    async def place(self) -> Owner | None:
        """The node a new session or thread should run on: of the live nodes not being
        drained, the one with the fewest sessions and threads, then the most free memory
        (by the GiB: a few MiB are noise), then this one, saving a hop (None: this one)."""
        if not self.clustered:
            return None
        async with self._db() as db:
            nodes = (await db.execute(select(NodeRow.id, NodeRow.url,
                                             NodeRow.memory_available_mb)
                                      .where(self._alive(), NodeRow.draining.is_(False))
                                      )).all()
            if not nodes or [n.id for n in nodes] == [self.node_id]:
                return None  # (none: this node, drained or not, as a last resort)
            ids = [n.id for n in nodes]
            counts: dict[str, int] = dict.fromkeys(ids, 0)
            for table in (SessionRow, Thread):
                for node_id, n in (await db.execute(
                        select(table.node_id, func.count()).where(table.node_id.in_(ids))
                        .group_by(table.node_id))).all():
                    counts[node_id] += n
        best = min(nodes, key=lambda n: (counts[n.id], -(n.memory_available_mb // 1024),
                                         n.id != self.node_id))
        return None if best.id == self.node_id else Owner(best.id, best.url)

    # --- at each heartbeat -----------------------------------------------------------------

    async def check(self) -> None:
        """What another node took from this one is let go here; what dead nodes were in
        the middle of is taken over (and reported cut off)."""
        if not self.clustered:
            return
        for kind, table in _TABLES.items():
            mine = self._mine[kind]  # type: ignore[index]
            if not mine:
                continue
            async with self._db() as db:
                lost = set((await db.scalars(
                    select(table.id).where(table.id.in_(mine),
                                           or_(table.node_id.is_(None),
                                               table.node_id != self.node_id)))).all())
            for key in lost:
                mine.discard(key)
                log.warning("node %s: %s %s was taken over by another node", self.node_id,
                            kind, key)
                handler = self.on_lost.get(kind)  # type: ignore[call-overload]
                if handler is not None:
                    await handler(key)
        await self.take_orphans()

    async def take_orphans(self) -> int:
        """Take the sessions a dead node left in the middle of a turn or an exec."""
        if not self.clustered:
            return 0
        alive = select(NodeRow.id).where(self._alive())
        busy = or_(SessionRow.status.in_(("running", "waiting_approval")),
                   SessionRow.id.in_(select(OpenExec.session_id)))
        async with self._db() as db:
            orphans = list((await db.execute(
                select(SessionRow.id, SessionRow.node_id)
                .where(SessionRow.node_id.not_in(alive) | SessionRow.node_id.is_(None), busy)
            )).all())
        random.shuffle(orphans)  # nodes sweeping at once take different ones first
        taken = 0
        for key, previous in orphans:
            taken += await self._take("session", key, previous)
        # A one-off or thread execution dies with its node: it ends as failed, as after
        # a restart, instead of staying "running" for ever.
        async with self._db() as db:
            await db.execute(
                update(Execution)
                .where(Execution.status.in_(("queued", "running")),
                       Execution.node_id.is_not(None), Execution.node_id.not_in(alive))
                .values(status="failed", error="interrupted", exit_code=-1,
                        completed_at=utcnow()))
            await db.commit()
        return taken
