"""Sessions: a persistent git workspace in a box, and the event log of all that happens.

The session row caches what the log says (status, usage, last activity); the log is
the truth. A session's box stops when idle (the session is then ``sleeping``) and
starts again on the next request that needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sophon.box import ids
from sophon.box.box import Box, ExecEvent, ExecOutcome
from sophon.box.bwrap import BASE_ENV, WORKSPACE
from sophon.box.manager import BoxManager
from sophon.box.outcome import judge
from sophon.box.protocol import Watching
from sophon.config import Settings
from sophon.errors import BadRequest, BoxError, NetworkDisabled, SophonError
from sophon.events.log import EventLog, Stored
from sophon.events.types import (
    ExecEnd,
    ExecOutput,
    ExecStart,
    SessionError,
    SessionStart,
    Status,
)
from sophon.images import sizing
from sophon.quotas import Quotas, unattended_detail
from sophon.sessions import imports, profiles
from sophon.sessions.approvals import ApprovalService
from sophon.sessions.file_changes import ChangeLimiter
from sophon.sessions.local_copy import server_copy
from sophon.sessions.models import (
    ApprovalPolicy,
    BoxSize,
    CreateSession,
    DiskInfo,
    McpServer,
    NetworkSettings,
    SessionView,
    Usage,
)
from sophon.sessions.secrets import SecretStore
from sophon.sessions.starters import (
    SOURCE_MOUNT,
    mount_refused,
    prepare_workspace,
    remote_url,
    stage_clone,
    validate_starter,
)
from sophon.store.owned import owned
from sophon.store.tables import OpenExec, SessionRow
from sophon.users import Principal
from sophon.webhooks import Webhooks

if TYPE_CHECKING:
    from sophon.cluster.ownership import Ownership
    from sophon.images.service import ImageService

log = logging.getLogger(__name__)

BUSY_STATUSES = ("running", "waiting_approval")


async def _no_door(session_id: str) -> dict[str, str]:
    return {}


def page_cursor(view: SessionView) -> str:
    return f"{view.created_at.isoformat()}~{view.id}"


def parse_cursor(cursor: str) -> tuple[datetime, str]:
    created, _, session_id = cursor.partition("~")
    try:
        when = datetime.fromisoformat(created)
    except ValueError:
        raise BadRequest("cursor is not one this API gave out; use next_cursor as is") from None
    return _utc(when), session_id


def box_id_of(session_id: str) -> str:
    return ids.box_id(ids.Kind.SESSION, session_id.removeprefix("ses_"))


def session_id_of(box_id: str) -> str | None:
    key = ids.key_of(box_id, ids.Kind.SESSION)
    return None if key is None else "ses_" + key


class SessionService:
    def __init__(self, settings: Settings, db: async_sessionmaker[AsyncSession],
                 boxes: BoxManager, events: EventLog, secrets_store: SecretStore,
                 quotas: Quotas | None = None, webhooks: Webhooks | None = None) -> None:
        self.settings = settings
        self.quotas = quotas or Quotas(settings, boxes, db)
        self._db = db
        self.boxes = boxes
        self.events = events
        self.secrets = secrets_store
        self.approvals = ApprovalService(db, events, self.set_status)
        # Approval webhooks (agent/policy.py): the same sender as execution webhooks.
        self.webhooks = webhooks or Webhooks(settings, db)
        self._watchers: dict[str, tuple[Box, asyncio.Task[None], asyncio.Event]] = {}
        self._change_limits: dict[str, ChangeLimiter] = {}  # per session, across watchers
        self._versions: dict[str, int] = {}  # bumped on every change of a session's settings
        self._tasks: set[asyncio.Task[None]] = set()
        boxes.on_idle_stop.append(self._box_went_idle)
        boxes.on_unattended_stop.append(self._box_unattended)
        # Set by sophon.services when the egress door runs: checks a session's network
        # settings and connector names (a 400 for either), and what every exec of a
        # session gets to go through the door (proxy, CA and gateway variables).
        self.check_network: Callable[[str, NetworkSettings, list[str]],
                                     Awaitable[None]] | None = None
        self.door_env: Callable[[str], Awaitable[dict[str, str]]] = _no_door
        # ... the real values of the session's connectors (redacted from its events),
        # and whether a new session's box may reach a clone URL's host:port.
        self.connector_values: Callable[[str], Awaitable[list[str]]] | None = None
        # Why boxes have no claude CLI (None: they have it), for the claude-code runtime.
        self.claude_code_missing: Callable[[], str | None] = lambda: "no claude CLI"
        self.check_reachable: Callable[[str, str, NetworkSettings, list[str], str, int],
                                       Awaitable[None]] | None = None
        # Users' own images (sophon/images/service.py), which a session's base may name.
        self.images: ImageService | None = None
        # Told after a change to a session's files from outside a turn's tools (a save,
        # an exec): sessions/checkpoints.py takes a checkpoint of it.
        self.after_change: Callable[[SessionRow, str], None] | None = None
        # Which node runs each session's box (sophon/cluster/ownership.py); None: this
        # server alone runs them all.
        self.ownership: Ownership | None = None

    # --- lifecycle -----------------------------------------------------------

    async def recover(self) -> None:
        """After a restart: turns that were running (or waiting for an approval) were
        cut off, execs too. A pending approval stays answerable; its answer is recorded,
        but no turn waits for it any more. In a cluster, only the sessions of nodes that
        stopped or died are this node's to report (see cluster/ownership.py)."""
        # Copies of clones that a stopped server was making (sessions/local_copy.py).
        await asyncio.to_thread(shutil.rmtree, self.settings.staging_dir, True)
        if self.ownership is not None and self.ownership.clustered:
            await self.ownership.take_orphans()
            return
        async with self._db() as db:
            cut = set((await db.scalars(select(SessionRow.id).where(
                SessionRow.status.in_(BUSY_STATUSES)))).all())
            cut |= set((await db.scalars(select(OpenExec.session_id))).all())
        for session_id in cut:
            await self.cut_off(session_id, "the server stopped")

    async def cut_off(self, session_id: str, who: str) -> None:
        """Report the session's turn and execs that ``who`` (the server, a node) cut off
        by stopping: the turn as interrupted, each exec as ended with -1."""
        async with self._db() as db:
            status = await db.scalar(select(SessionRow.status).where(
                SessionRow.id == session_id))
            open_execs = list((await db.scalars(select(OpenExec).where(
                OpenExec.session_id == session_id))).all())
        if status in BUSY_STATUSES:
            waiting = " while it waited for an approval" if status == "waiting_approval" else ""
            await self.events.append(session_id, SessionError(
                code="interrupted",
                message=f"{who} during a turn{waiting}, and the turn was cut "
                        "off; send the next message to continue"))
            await self.set_status(session_id, "idle")
        for ex in open_execs:
            await self.events.append(ex.session_id, ExecEnd(
                exec_id=ex.exec_id, exit_code=-1, error="interrupted"))
        if open_execs:
            async with self._db() as db:
                await db.execute(delete(OpenExec).where(OpenExec.session_id == session_id))
                await db.commit()

    async def close(self) -> None:
        tasks = [t for _, t, _ in self._watchers.values()] + list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.events.close()

    async def create(self, principal: Principal, req: CreateSession,
                     imported: Path | None = None) -> SessionView:
        """A new session, its workspace from the starter; or, with ``imported`` (a
        staging box's unpacked export), from that project (see import_archive)."""
        if req.runtime == "claude-code" and self.claude_code_missing():
            # Refused rather than quietly run natively: the choice must mean what it says.
            raise BadRequest(f"the claude-code runtime is not available on this server: "
                             f"{self.claude_code_missing()}; use runtime 'native'")
        base, own_image = req.base, None
        if req.base not in profiles.PROFILES and self.images is not None \
                and self.boxes.images is not None:
            # One of the user's own images: built already, or built now (once).
            base, own_image = await self.images.resolve(principal.user_id, req.base)
        else:
            profiles.resolve(req.base, self.boxes.images)
        if req.approval.webhook:  # checked again before each call
            await self.webhooks.check(req.approval.webhook, "approval.webhook")
        # The base's defaults, or what was asked within the admin's ceilings (a 400).
        size = sizing.resolve(self.settings, base, req.limits, req.disk_mb)
        source = await validate_starter(req.starter, self.settings)
        if req.mcp_servers:  # a url server's host joins the list (within the ceiling)
            req = req.model_copy(update={"network": NetworkSettings.model_validate(
                _with_mcp_hosts(req.network.model_dump(), req.mcp_servers))})
        if self.check_network is not None:
            await self.check_network(principal.user_id, req.network, req.connectors)
        remote = remote_url(req.starter)
        if remote is not None and self.check_reachable is not None:
            await self.check_reachable(principal.user_id, base, req.network,
                                       req.connectors, *remote)
        elif remote is not None:
            raise NetworkDisabled("sandboxes on this server have no network, so a clone "
                                  "from a URL cannot work; clone from a local path")
        self.quotas.check_events(principal.user_id)
        await self.quotas.check_disk(principal.user_id, size.disk_mb, "a new session")
        session_id = "ses_" + secrets.token_hex(12)
        row = SessionRow(
            id=session_id, user_id=principal.user_id, name=req.name, base=base,
            image=req.base if own_image is not None else None,
            model=req.model, runtime=req.runtime, system_prompt=req.system_prompt,
            starter=req.starter.model_dump(), approval=req.approval.model_dump(),
            status="idle", box_id=box_id_of(session_id), input_tokens=0, output_tokens=0,
            cost_usd=0.0, max_turns=req.max_turns, max_budget_usd=req.max_budget_usd,
            network=req.network.model_dump(), connectors=list(req.connectors),
            mcp_servers=[m.model_dump() for m in req.mcp_servers],
        )
        if self.ownership is not None and self.ownership.clustered:
            row.node_id = self.ownership.node_id  # made here, run here
            await self.ownership.claim_new("session", session_id)
        image = None
        if self.boxes.images is not None:
            # The first session of a base waits for its image to be built (once).
            image, _ = await self.boxes.images.ensure(own_image or base)
        self.quotas.know_session(session_id, principal.user_id)
        await self.quotas.admit_box(principal.user_id, row.box_id)
        async with self._db() as db:
            db.add(row)
            await db.commit()
        try:
            if image is not None:
                self.boxes.set_image(row.box_id, image.digest)
            self.boxes.set_limits(row.box_id, size.memory_mb, size.cpus, size.pids)
            await self.events.append(session_id, SessionStart(
                name=req.name, base=base, model=req.model, runtime=req.runtime,
                starter=req.starter.model_dump()))
            env = await self.exec_env(session_id, {})
            async with contextlib.AsyncExitStack() as stack:
                extra = None
                if imported is not None:
                    extra = {str(imported): SOURCE_MOUNT}
                elif source is not None:
                    path = source.path
                    if source.copy:
                        path = str(await stack.enter_async_context(server_copy(
                            path, self.settings.staging_dir,
                            size.disk_mb * 2**20)))
                    # Read the user's path in a box that can read nothing of any other
                    # box, then let the session's box clone from that box's copy.
                    try:
                        staging, staged = await stack.enter_async_context(
                            self.boxes.staging({path: SOURCE_MOUNT}))
                    except BoxError as exc:
                        raise mount_refused(exc, req.starter.url,  # type: ignore[union-attr]
                                            self.settings) from None
                    await stage_clone(staging, req.starter, env)  # type: ignore[arg-type]
                    await staging.stop()
                    staged.chmod(0o755)
                    extra = {str(staged): SOURCE_MOUNT}
                async with self.boxes.use(row.box_id, self.settings.session_idle_seconds,
                                          extra_ro_binds=extra, disk_mb=size.disk_mb) as box:
                    if imported is not None:
                        await imports.copy_project(box, env)
                    else:
                        await prepare_workspace(box, req.starter, env)
                    self._watch(session_id, box)
        except BaseException:
            await self._purge(row)
            raise
        return await self.view(row)

    async def purge(self, principal: Principal, session_id: str) -> None:
        """Remove a session that could not be finished (an import that failed)."""
        await self._purge(await self.get_row(principal, session_id))

    async def _purge(self, row: SessionRow) -> None:
        if self.ownership is not None:
            await self.ownership.hold("session", row.id)
        self._stop_watching(row.id)
        await self.boxes.destroy(row.box_id)
        async with self._db() as db:
            await db.execute(delete(SessionRow).where(SessionRow.id == row.id))
            await db.commit()
        await self.events.delete(row.id)
        self.secrets.forget(row.id)
        self.quotas.forget_session(row.id)
        if self.ownership is not None:
            await self.ownership.forget("session", row.id)

    async def busy(self, session_id: str) -> bool:
        """Whether a turn or an exec of the session is under way."""
        async with self._db() as db:
            status = await db.scalar(select(SessionRow.status).where(
                SessionRow.id == session_id))
            execs = await db.scalar(select(OpenExec.exec_id).where(
                OpenExec.session_id == session_id).limit(1))
        return status in BUSY_STATUSES or execs is not None

    async def let_go(self, session_id: str) -> None:
        """This node no longer runs the session (drained, or taken over by another node
        after this one was silent too long): its watcher and box stop here."""
        self._stop_watching(session_id)
        await self.boxes.stop(box_id_of(session_id))

    def _stop_watching(self, session_id: str) -> None:
        self._change_limits.pop(session_id, None)
        watcher = self._watchers.pop(session_id, None)
        if watcher is not None:
            watcher[1].cancel()

    async def delete(self, principal: Principal, session_id: str) -> None:
        await self._purge(await self.get_row(principal, session_id))

    async def get_row(self, principal: Principal, session_id: str) -> SessionRow:
        async with self._db() as db:
            return await owned(db, SessionRow, principal.user_id, session_id, what="session")

    async def get(self, principal: Principal, session_id: str) -> SessionView:
        return await self.view(await self.get_row(principal, session_id))

    async def events_page(self, principal: Principal, session_id: str, after: int,
                          limit: int) -> tuple[list[Stored], int]:
        """A page of the owner's session's events after ``after``, and the last seq."""
        await self.get_row(principal, session_id)
        return (await self.events.read_raw(session_id, after, limit),
                await self.events.last_seq(session_id))

    async def follow_events(self, principal: Principal, session_id: str, after: int,
                            heartbeat: float) -> AsyncIterator[list[Stored] | None]:
        """The owner's session's events after ``after``, in batches, followed live (None:
        a heartbeat is due). A stranger's session raises here, before anything is sent."""
        await self.get_row(principal, session_id)
        return self.events.follow(session_id, after, batch=True, heartbeat=heartbeat)

    async def view(self, row: SessionRow) -> SessionView:
        status = row.status
        limits = self.boxes.limits_of(row.box_id)
        if status == "idle" and self.boxes.running(row.box_id) is None:
            status = "sleeping"
        return SessionView(
            id=row.id, name=row.name, status=status,  # type: ignore[arg-type]
            base=row.base, image=self.boxes.image_of(row.box_id), image_name=row.image,
            limits=BoxSize(memory_mb=limits.memory_bytes // 2**20, cpus=limits.cpus,
                           pids=limits.pids),
            model=row.model,
            runtime=row.runtime, system_prompt=row.system_prompt, starter=row.starter,
            approval=ApprovalPolicy.model_validate(row.approval),
            created_at=_utc(row.created_at), last_activity_at=_utc(row.last_activity_at),
            usage=Usage(input_tokens=row.input_tokens, output_tokens=row.output_tokens,
                        cost_usd=row.cost_usd),
            max_turns=row.max_turns, max_budget_usd=row.max_budget_usd,
            last_seq=await self.events.last_seq(row.id),
            disk=DiskInfo(**vars(self.boxes.disk_use(row.box_id))),
            network=NetworkSettings.model_validate(row.network or {}),
            connectors=list(row.connectors or []),
            mcp_servers=[McpServer.model_validate(m) for m in row.mcp_servers or []],
        )

    async def list(self, principal: Principal, limit: int,
                   cursor: str | None) -> list[SessionView]:
        """Newest first; ``cursor`` (from ``page_cursor``) resumes after a session."""
        query = (select(SessionRow).where(SessionRow.user_id == principal.user_id)
                 .order_by(SessionRow.created_at.desc(), SessionRow.id.desc()).limit(limit))
        if cursor is not None:
            created, session_id = parse_cursor(cursor)
            # The id breaks ties, so sessions created in the same instant are never skipped.
            query = query.where(or_(SessionRow.created_at < created,
                                    and_(SessionRow.created_at == created,
                                         SessionRow.id < session_id)))
        async with self._db() as db:
            rows = (await db.execute(query)).scalars().all()
        return [await self.view(r) for r in rows]

    def version(self, session_id: str) -> int:
        return self._versions.get(session_id, 0)

    async def update(self, principal: Principal, session_id: str,
                     changes: dict[str, Any]) -> SessionView:
        hook = (changes.get("approval") or {}).get("webhook")
        if hook and hook != (await self.get_row(principal, session_id)).approval.get("webhook"):
            await self.webhooks.check(hook, "approval.webhook")  # and before each call
        if changes.get("mcp_servers"):  # a url server's host joins the list
            network = changes.get("network") or \
                (await self.get_row(principal, session_id)).network or {}
            changes["network"] = _with_mcp_hosts(
                network, [McpServer.model_validate(m) for m in changes["mcp_servers"]])
        if ("network" in changes or "connectors" in changes) and self.check_network:
            await self.check_network(
                principal.user_id, NetworkSettings.model_validate(changes.get("network") or {}),
                list(changes.get("connectors") or []))
        async with self._db() as db:
            row = await owned(db, SessionRow, principal.user_id, session_id, what="session")
            for key, value in changes.items():
                setattr(row, key, value)
            await db.commit()
        self._versions[session_id] = self.version(session_id) + 1
        if "connectors" in changes:
            await self.refresh_secrets(session_id)
        return await self.view(row)

    async def set_status(self, session_id: str, status: str, detail: str | None = None) -> None:
        async with self._db() as db:
            row = await db.get(SessionRow, session_id)
            if row is None or row.status == status:
                return
            row.status = status
            row.last_activity_at = datetime.now(UTC)
            await db.commit()
        await self.events.append(session_id, Status(status=status, detail=detail))

    async def end_turn(self, session_id: str, status: str, detail: str | None) -> None:
        """A turn's last word: first the file changes it made (the watcher scans at
        once, so a file written just before the end is logged before it), then its
        status."""
        watcher = self._watchers.get(session_id)
        if watcher is not None and not watcher[1].done():
            with contextlib.suppress(Exception):
                marks = await asyncio.wait_for(watcher[0].settle_changes(), SETTLE_SECONDS)
                await asyncio.wait_for(asyncio.gather(*(m.wait() for m in marks)),
                                       SETTLE_SECONDS)
        await self.set_status(session_id, status, detail)

    async def touch(self, session_id: str) -> None:
        async with self._db() as db:
            row = await db.get(SessionRow, session_id)
            if row is not None:
                row.last_activity_at = datetime.now(UTC)
                await db.commit()

    # --- the box -------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def box(self, row: SessionRow, take: bool = True) -> AsyncIterator[Box]:
        """The session's running box, woken if it was sleeping, with its watcher on
        (``take``: see ``Ownership.hold``)."""
        if self.ownership is not None:
            await self.ownership.hold("session", row.id, take)
        await self.refresh_secrets(row.id)
        self.quotas.know_session(row.id, row.user_id)
        was_sleeping = self.boxes.running(row.box_id) is None
        if was_sleeping:  # waking it: one more box awake for its owner
            await self.quotas.admit_box(row.user_id, row.box_id)
        async with self.boxes.use(row.box_id, self.settings.session_idle_seconds,
                                  take=take) as box:
            watching = self._watch(row.id, box)
            # Hand the box out only once the watcher has its first snapshot, so a change
            # made by this very request is reported.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watching.wait(), 10)
            if was_sleeping:
                async with self._db() as db:
                    current = await db.scalar(
                        select(SessionRow.status).where(SessionRow.id == row.id))
                # Only an idle session says so; in a turn, the status stays "running".
                if current == "idle":
                    await self.events.append(row.id, Status(status="idle", detail="woke up"))
            yield box

    def _watch(self, session_id: str, box: Box) -> asyncio.Event:
        """Make sure the box's changes are being followed; the event is set once the
        watcher has taken its first snapshot."""
        current = self._watchers.get(session_id)
        if current is not None and current[0] is box and not current[1].done():
            return current[2]
        watching = asyncio.Event()
        task = asyncio.create_task(self._follow_changes(session_id, box, watching),
                                   name=f"watch-{session_id}")
        self._watchers[session_id] = (box, task, watching)
        return watching

    async def _follow_changes(self, session_id: str, box: Box, watching: asyncio.Event) -> None:
        limits = self._change_limits.get(session_id)
        if limits is None:
            limits = self._change_limits[session_id] = ChangeLimiter(self.settings)
        flusher = asyncio.create_task(self._flush_changes(session_id, limits),
                                      name=f"changes-{session_id}")
        try:
            async for ch in box.watch(WORKSPACE):
                if isinstance(ch, Watching):
                    watching.set()
                    continue
                if (folded := limits.due()) is not None:
                    await self.events.append(session_id, folded)
                if (event := limits.admit(ch)) is not None:
                    await self.events.append(session_id, event)
        except SophonError:
            pass  # the box stopped; the next request starts a new watcher
        except Exception:
            log.exception("file watcher of session %s failed", session_id)
        finally:
            watching.set()  # never leave a request waiting on a watcher that is gone
            flusher.cancel()
        # Not cancelled (the box stopped): what was folded until then is told now.
        if (folded := limits.flush()) is not None:
            with contextlib.suppress(Exception):  # the session may be gone
                await self.events.append(session_id, folded)

    async def _flush_changes(self, session_id: str, limits: ChangeLimiter) -> None:
        """Log each window's coalesced changes when it ends, even if no change follows."""
        try:
            while True:
                await asyncio.sleep(limits.wait())
                if (folded := limits.due()) is not None:
                    await self.events.append(session_id, folded)
        except Exception:
            log.exception("file changes of session %s could not be logged", session_id)

    async def _box_went_idle(self, box_id: str) -> None:
        session_id = session_id_of(box_id)
        if session_id is not None:
            await self.events.append(session_id, Status(status="sleeping",
                                                        detail="box stopped after idle"))

    async def _box_unattended(self, box_id: str, processes: int) -> None:
        session_id = session_id_of(box_id)
        if session_id is not None:
            await self.events.append(session_id, Status(status="sleeping", detail=unattended_detail(
                self.settings.box_max_unattended_seconds, processes)))

    async def refresh_secrets(self, session_id: str) -> dict[str, str]:
        """The session's secrets, and the log told to redact their current values (and
        those of its connectors, which no box holds, but a user might paste)."""
        values = await self.secrets.values(session_id)
        more = await self.connector_values(session_id) if self.connector_values else []
        self.events.set_secrets(session_id, [*values.values(), *more])
        return values

    async def exec_env(self, session_id: str, secret_values: dict[str, str]) -> dict[str, str]:
        # No .pyc files in the project: an edit that keeps a file's size within the same
        # second (an agent's quick fix) would otherwise run the stale bytecode.
        return {**BASE_ENV, "TERM": "dumb", "PYTHONDONTWRITEBYTECODE": "1",
                **await self.door_env(session_id), **secret_values}

    # --- exec ----------------------------------------------------------------

    async def exec(self, principal: Principal, session_id: str, command: str,
                   timeout: int) -> AsyncIterator[Any]:
        """Start the owner's command in the workspace (a missing session raises here);
        returns the events it makes as they come. The command runs to its end even if
        the caller stops reading."""
        row = await self.get_row(principal, session_id)
        # Refused here (a 429), not as a failed exec: the box to wake, the event rate.
        self.quotas.know_session(row.id, row.user_id)
        self.quotas.check_events(row.user_id)
        self.boxes.check_room_for(row.box_id)  # a 503 now, not an exec that "failed"
        await self.quotas.admit_box(row.user_id, row.box_id)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        # It outlives the reader when the caller stops reading, and its bookkeeping runs
        # after the last event is handed out.
        self.spawn(self._run_exec(row, command, timeout, queue))

        async def events() -> AsyncIterator[Any]:
            while (item := await queue.get()) is not None:
                yield item
        return events()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Work that outlives the request that started it: tracked until done, and
        waited for (or cancelled) when the server stops."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_exec(self, row: SessionRow, command: str, timeout: int,
                        queue: asyncio.Queue[Any]) -> None:
        exec_id = "exe_" + secrets.token_hex(10)
        started = time.monotonic()
        outcome: ExecOutcome | None = None
        error: str | None = None
        # exec_start is stored while the command starts: the two overlap, and the
        # caller gets exec_start (once stored) before any output.
        opening: asyncio.Future[Any] | None = None
        announced = False

        async def announce() -> None:
            nonlocal announced
            if opening is not None and not announced:
                announced = True
                await queue.put((await opening)[0])

        try:
            values = await self.refresh_secrets(row.id)
            opening = asyncio.gather(
                self.events.append(row.id, ExecStart(exec_id=exec_id, command=command)),
                self._mark_open(exec_id, row.id))
            async with self.box(row) as box:
                async for ev in box.exec(["bash", "-c", command], timeout=timeout,
                                         env=await self.exec_env(row.id, values), cwd=WORKSPACE,
                                         output_cap=self.settings.limits.output_cap_bytes):
                    await announce()
                    if isinstance(ev, ExecEvent):
                        await queue.put(await self.events.append(row.id, ExecOutput(
                            exec_id=exec_id, stream=ev.stream,  # type: ignore[arg-type]
                            data=ev.data)))
                    else:
                        outcome = ev
        except SophonError as exc:
            error = exc.code
            log.warning("exec in session %s failed: %s", row.id, exc.message)
        except Exception:
            error = "sandbox_error"
            log.exception("exec in session %s failed", row.id)
        finally:
            if outcome is not None:
                error = judge(outcome, lambda: self.boxes.disk_full(row.box_id)).error
            end = ExecEnd(
                exec_id=exec_id,
                exit_code=outcome.exit_code if outcome else -1,
                error=error,
                duration_ms=int((time.monotonic() - started) * 1000),
                truncated=bool(outcome and outcome.truncated),
            )
            with contextlib.suppress(Exception):
                await announce()
                await queue.put(await asyncio.shield(self.events.append(row.id, end)))
            await queue.put(None)
            # After the caller has its answer: the exec is over and recorded as such.
            with contextlib.suppress(Exception):
                async with self._db() as db:
                    await db.execute(delete(OpenExec).where(OpenExec.exec_id == exec_id))
                    await db.execute(update(SessionRow).where(SessionRow.id == row.id)
                                     .values(last_activity_at=datetime.now(UTC)))
                    await db.commit()
            if self.after_change is not None:
                self.after_change(row, "exec")

    async def _mark_open(self, exec_id: str, session_id: str) -> None:
        async with self._db() as db:
            await db.execute(insert(OpenExec).values(exec_id=exec_id, session_id=session_id))
            await db.commit()

    # --- export --------------------------------------------------------------

    async def export(self, principal: Principal, session_id: str) -> AsyncIterator[bytes]:
        """A tar.gz of the project (with .git), events.jsonl and session.json, made in
        the box and streamed as it is made. The tar waits for a slow reader: boxd sends
        at most ``EXPORT_WINDOW`` ahead of what the caller has taken, so an export costs
        the server that much however large it is and however slowly it is read."""
        import base64

        row = await self.get_row(principal, session_id)
        view = await self.view(row)
        # Its own directory, so that two exports of a session at once do not meet.
        staging = f".sophon-export-{secrets.token_hex(6)}"
        async with self.box(row) as box:
            # Both go in pieces: an event log can be far larger than one frame to boxd.
            await box.put_file("/tmp", f"{staging}/session.json",
                               _pieces(view.model_dump_json(indent=2).encode()))
            await box.put_file("/tmp", f"{staging}/events.jsonl", self._event_lines(row.id))
            # A file that changes while it is read (the agent at work, a checkpoint
            # writing into .git) is taken as tar found it: tar's exit 1, not a failure.
            command = (f"tar -czf - --warning=no-file-changed "
                       f"--transform='s,^\\.,project,' -C {WORKSPACE} . "
                       f"-C /tmp/{staging} events.jsonl session.json; rc=$?; "
                       f"rm -rf /tmp/{staging}; [ $rc -eq 1 ] && rc=0; exit $rc")
            # The cap is no bound on memory (the window is); the box's disk bounds the size.
            # Closed at once if the caller goes: that cancels the tar.
            async with contextlib.aclosing(box.exec(
                    ["bash", "-c", command], timeout=3600,
                    env=await self.exec_env(session_id, {}),
                    cwd=WORKSPACE, output_cap=1 << 40, binary=True,
                    window=EXPORT_WINDOW)) as events:
                async for ev in events:
                    if isinstance(ev, ExecEvent) and ev.stream == "stdout":
                        yield base64.b64decode(ev.data)
                    elif isinstance(ev, ExecOutcome) and ev.exit_code != 0:
                        raise BadRequest(f"export failed (tar exited {ev.exit_code})")

    async def _event_lines(self, session_id: str) -> AsyncIterator[bytes]:
        """The session's log as JSON lines, a page at a time."""
        after = 0
        while page := await self.events.read_raw(session_id, after, 2000):
            yield ("\n".join(s.json for s in page) + "\n").encode()
            after = page[-1].seq


SETTLE_SECONDS = 5.0  # at most, for a turn's last file changes (a huge tree scans slowly)
EXPORT_WINDOW = 4 * 1024 * 1024  # characters of base64: 3 MiB of the tarball


async def _pieces(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _with_mcp_hosts(network: dict[str, Any], servers: list[McpServer]) -> dict[str, Any]:
    allow = list(network.get("allow") or [])
    for server in servers:
        host = server.host()
        if host is not None and host not in allow:
            allow.append(host)
    return {**network, "allow": allow}


def _utc(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


