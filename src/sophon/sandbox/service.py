"""Executions: run code in a thread's box, stream it, record it.

Every execution is a ``Run``: a task that drives one exec in a box and an
append-only list of NDJSON-ready events (``status``, ``output``, ``result``) that any
number of readers follow. The JSON, NDJSON and async forms of the API are three
ways of reading the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import shutil
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from sophon import metrics
from sophon.box import ids
from sophon.box.box import Box, ExecEvent, ExecOutcome
from sophon.box.bwrap import BASE_ENV, WORKSPACE, check_beneath
from sophon.box.manager import BoxManager
from sophon.box.outcome import OUT_OF_MEMORY, TIMEOUT, judge
from sophon.box.volumes import VolumeMount
from sophon.errors import BadRequest, BoxError, BoxRequestError, ThreadBusy
from sophon.images import sizing
from sophon.quotas import Quotas
from sophon.sandbox.models import (
    TERMINAL,
    ExecuteRequest,
    ExecutionStatus,
    SandboxResult,
    split_sub_path,
)
from sophon.sandbox.records import Recorder
from sophon.sandbox.threads import ThreadService
from sophon.store.owned import owned
from sophon.store.tables import Execution, Thread, iso
from sophon.users import Principal
from sophon.volumes.service import VolumeService
from sophon.webhooks import Webhooks

if TYPE_CHECKING:
    from sophon.cluster.ownership import Ownership
    from sophon.images.service import ImageService

log = logging.getLogger(__name__)

# The script goes to a file in the box's private /tmp, never on a command line
# (one argument is capped at 128 KiB). Python keeps the working directory on
# sys.path, as ``python -c`` would.
RUNNERS: dict[str, list[str]] = {
    "python": ["python3", "-c",
               "import runpy,sys;sys.argv=['-c'];runpy.run_path('{script}',run_name='__main__')"],
    "bash": ["bash", "{script}"],
    "node": ["node", "{script}"],
}
FINISHED_RUNS_KEPT = 256
# The Baponi status of an exec that did not run to its own end (else "failed").
STATUS_OF = {TIMEOUT: "timeout", OUT_OF_MEMORY: "oom"}


def new_trace_id() -> str:
    return "trc_" + secrets.token_hex(10)


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else iso(dt)


class Run:
    def __init__(self, trace_id: str, principal: Principal, req: ExecuteRequest, mode: str):
        self.trace_id = trace_id
        self.principal = principal
        self.req = req
        self.mode = mode
        self.status = "queued"
        self.events: list[dict[str, Any]] = []
        self.result: SandboxResult | None = None
        self.body = b""  # the JSON answer, serialised once
        self.truncated = False
        self.duration_ms = 0
        self.created_at = datetime.now(UTC)
        self.completed_at: datetime | None = None
        self.cancelled = False
        self.box_id: str | None = None
        self.box: Box | None = None  # set while the exec runs
        self.done = asyncio.Event()
        self._changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.stored = False  # whether its row exists yet
        # pending until the webhook is delivered or has failed; None without a webhook.
        self.webhook_status: str | None = "pending" if req.webhook_url else None

    def emit(self, event: dict[str, Any]) -> None:
        event["seq"] = len(self.events) + 1
        self.events.append(event)
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(
        self, after: int = 0, keepalive: float = 15.0
    ) -> AsyncIterator[dict[str, Any]]:
        """Every event after ``after``, then live ones until the result."""
        i = after
        while True:
            while i < len(self.events):
                i += 1
                yield self.events[i - 1]
            if self.done.is_set() and i >= len(self.events):
                return
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), keepalive)
            except TimeoutError:
                yield {"type": "keepalive", "seq": i}

    def status_view(self) -> ExecutionStatus:
        r = self.result
        return ExecutionStatus(
            trace_id=self.trace_id,
            status=self.status,  # type: ignore[arg-type]
            exit_code=r.exit_code if r else None,
            stdout=r.stdout if r else None,
            stderr=r.stderr if r else None,
            error=r.error if r else None,
            duration_ms=self.duration_ms,
            delivery_mode=self.mode,
            created_at=_iso(self.created_at) or "",
            completed_at=_iso(self.completed_at),
            output_truncated=self.truncated,
            thread_id=self.req.thread_id,
            metadata=self.req.metadata,
            webhook_url=self.req.webhook_url,
            webhook_delivery_status=self.webhook_status,  # type: ignore[arg-type]
        )


class ExecutionService:
    def __init__(self, boxes: BoxManager, sessions: async_sessionmaker[AsyncSession],
                 engine: AsyncEngine, quotas: Quotas | None = None,
                 volumes: VolumeService | None = None,
                 webhooks: Webhooks | None = None) -> None:
        self.boxes = boxes
        # The node this server is in a cluster (sophon/cluster/): each execution row
        # names it, so that one node's death cuts off only its own.
        self.node_id: str | None = None
        self.ownership: Ownership | None = None
        # Set by sophon.services: what every execution is told to reach the egress door.
        self.door_env: Callable[[str, str, str | None], Awaitable[dict[str, str]]] | None \
            = None
        # ... and the images an execution may name (sophon/images/service.py).
        self.images: ImageService | None = None
        self.quotas = quotas or Quotas(boxes.settings, boxes, sessions)
        self.volumes = volumes or VolumeService(boxes.settings, sessions, boxes, self.quotas)
        self._sessions = sessions
        self._engine = engine
        self._runs: OrderedDict[str, Run] = OrderedDict()
        self._finished: deque[str] = deque()
        self.records = Recorder(engine)
        self._busy: dict[tuple[str, str], str] = {}
        self._thread_ids: dict[tuple[str, str], str] = {}
        self.languages = {"python", "bash"}
        if shutil.which("node", path="/usr/local/bin:/usr/bin:/bin"):
            self.languages.add("node")
        settings = boxes.settings
        self.webhooks = webhooks or Webhooks(settings, sessions)
        self.threads = ThreadService(boxes, sessions, self._claim_thread, self._release_thread)
        self.webhook_secrets = self.webhooks.secrets

    @property
    def in_flight(self) -> int:
        """Executions accepted and not finished yet."""
        return sum(1 for r in self._runs.values() if r.task is not None and not r.task.done())

    async def recover(self) -> int:
        """Runs cut off by a server stop end as failed; none stays 'running' forever.
        One-off boxes a crash left on disk are deleted. Call before boxes start. In a
        cluster, the other nodes' boxes and executions are theirs: a node's are ended by
        the node that finds it dead (cluster/ownership.py)."""
        if self.node_id is not None:
            return 0
        async with self._sessions() as db:
            threads = set((await db.execute(select(Thread.id))).scalars())
        for d in self.boxes.settings.boxes_dir.iterdir():
            # An execution box no thread has is a one-off's; staging boxes are never kept.
            kind = ids.kind_of(d.name)
            if (kind is ids.Kind.EXECUTION and d.name not in threads) or \
                    kind is ids.Kind.STAGING:
                await self.boxes.destroy(d.name)
        async with self._sessions() as db:
            res = await db.execute(
                update(Execution)
                .where(Execution.status.in_(("queued", "running")))
                .values(status="failed", error="interrupted", exit_code=-1,
                        completed_at=datetime.now(UTC))
            )
            # Webhook deliveries live in memory: one a stop cut off is not resumed.
            await db.execute(update(Execution)
                             .where(Execution.webhook_delivery_status == "pending")
                             .values(webhook_delivery_status="failed"))
            await db.commit()
        return res.rowcount or 0  # type: ignore[attr-defined]

    async def close(self) -> None:
        await self.threads.close()
        tasks = [r.task for r in self._runs.values() if r.task and not r.task.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.webhooks.close()
        await self.records.close()

    # --- volumes ------------------------------------------------------------

    async def user_volumes(self, user_id: str) -> dict[str, tuple[str, int, int]]:
        return await self.volumes.of_user(user_id)

    async def mounts_for(self, user_id: str,
                         sub_paths: list[str] | None) -> tuple[VolumeMount, ...]:
        """What an execution of the user mounts: every volume at /data/<name>/, or, with
        ``sub_paths``, only those paths. A sub_path of no such volume is a 400."""
        vols = await self.user_volumes(user_id)
        if sub_paths is None:
            return tuple(VolumeMount(vid, name, gid) for name, (vid, gid, _) in
                         sorted(vols.items()))
        mounts = []
        for path in sub_paths:
            name, sub = split_sub_path(path)
            if name not in vols:
                raise BadRequest(f"sub_path {path!r}: you have no volume named {name!r}")
            vid, gid, _ = vols[name]
            mounts.append(VolumeMount(vid, name, gid, sub))
        # A path under another one listed is already seen through it.
        inside = [m.inside for m in mounts]
        keep = {m for m in mounts if not any(
            m.inside != o and m.inside.startswith(o + "/") for o in inside)}
        return tuple(sorted(keep, key=lambda m: m.inside))

    async def check_sub_paths(self, user_id: str, sub_paths: list[str]) -> None:
        """Refuse (400) sub_paths of no such volume, or that go through a symlink or a
        file in it. A link made after this is refused again when the box starts, and
        the execution fails with the same code."""
        sizes = {vid: size for vid, _, size in (await self.user_volumes(user_id)).values()}
        for m in await self.mounts_for(user_id, sub_paths):
            if m.sub:
                root = await self.boxes.volumes.attach(m.volume_id, sizes[m.volume_id], m.gid)
                await asyncio.to_thread(check_beneath, root, m.sub)

    # --- starting ---------------------------------------------------------

    async def start(self, principal: Principal, req: ExecuteRequest, mode: str) -> Run:
        if req.language not in self.languages:
            raise BadRequest(f"language {req.language!r} is not available on this server")
        if req.webhook_url is not None:
            await self.webhooks.check(req.webhook_url)
            if await self.webhook_secrets.get(principal.user_id) is None:
                raise BadRequest("webhook_url needs a webhook signing secret: create one "
                                 "with POST /v1/webhooks/secret (shown once)")
        if req.sub_paths is not None:  # no such volume, or a symlink in it: a 400 now
            await self.check_sub_paths(principal.user_id, req.sub_paths)
        image = await self._image(principal, req.image)
        key = (principal.user_id, req.thread_id) if req.thread_id else None
        if key is not None and key in self._busy:
            raise ThreadBusy(
                f"thread {req.thread_id!r} is already running an execution "
                f"({self._busy[key]}); wait for it to finish or cancel it"
            )
        run = Run(new_trace_id(), principal, req, mode)
        self.quotas.begin_execution(principal.user_id)  # a 429 past the user's limit
        if key is not None:
            self._busy[key] = run.trace_id
        box: Box | None = None
        try:
            # The box is had before the request is answered, in every mode: a limit
            # reached (uids, memory, open files, the start queue) is a 503 that names
            # it, never an execution that "failed".
            box, kind = await self._hold_box(run, image)
            if mode in ("async", "stream"):
                # The client has the trace id before the end (the 202, the stream's
                # X-Trace-Id): the row exists from now, so a crash leaves it interrupted.
                await self._insert(run)
        except BaseException:
            if box is not None:
                self.boxes.release(box)
            if key is not None:
                self._busy.pop(key, None)
            self.quotas.end_execution(principal.user_id)
            raise
        self._runs[run.trace_id] = run
        run.task = asyncio.create_task(self._drive(run, key, box, kind),
                                       name=f"run-{run.trace_id}")
        return run

    async def _image(self, principal: Principal, name: str | None) -> tuple[str, str] | None:
        """The base and digest of the image an execution names, built first if it is not
        yet; None: no image named (a pooled box, on the host's /usr)."""
        if name is None:
            return None
        if self.images is None or self.boxes.images is None:
            raise BadRequest(f"image {name!r}: images are off on this server "
                             f"({self.boxes.images_off or 'no image service'})")
        base, definition = await self.images.resolve(principal.user_id, name)
        return base, definition.digest

    async def _hold_box(self, run: Run,
                        image: tuple[str, str] | None = None) -> tuple[Box, str]:
        digest = image[1] if image else None
        box_id, kind = await self._box_id_for(run.principal, run.req.thread_id, digest)
        run.box_id = box_id
        try:
            if kind != "known" and image is not None:
                self.boxes.set_image(box_id, image[1])
                size = sizing.defaults(self.boxes.settings, image[0])
                self.boxes.set_limits(box_id, size.memory_mb, size.cpus, size.pids)
            elif kind == "known" and digest is not None and \
                    self.boxes.image_of(box_id) != digest:
                raise BadRequest(
                    f"thread {run.req.thread_id!r} runs on "
                    f"{'another image' if self.boxes.image_of(box_id) else 'no image'}; "
                    "a thread keeps the image it was made with (use a new thread_id for "
                    f"image {run.req.image!r})")
            volumes = await self.mounts_for(run.principal.user_id, run.req.sub_paths)
            box = await self.boxes.hold(box_id, volumes=volumes)
        except BaseException:
            if kind == "fresh":
                self.boxes.discard(box_id)
            elif kind == "new":  # a thread that never ran is not left behind
                assert run.req.thread_id is not None
                self._thread_ids.pop((run.principal.user_id, run.req.thread_id), None)
                await self.threads.forget(box_id)
            raise
        if kind != "fresh":
            self.threads.touch(box_id)
        return box, kind

    def _claim_thread(self, user_id: str, name: str, why: str) -> None:
        """Hold a thread as an execution would (one on it meanwhile is a 409)."""
        if (user_id, name) in self._busy:
            raise ThreadBusy(f"thread {name!r} is running an execution "
                             f"({self._busy[(user_id, name)]}); wait for it or cancel it")
        self._busy[(user_id, name)] = why

    async def let_go(self, thread_box: str) -> None:
        """Another node runs the thread now (or this one is drained): its box stops
        here, and what is known of it here is forgotten."""
        for key, box_id in list(self._thread_ids.items()):
            if box_id == thread_box:
                del self._thread_ids[key]
        await self.boxes.stop(thread_box)

    def _release_thread(self, user_id: str, name: str) -> None:
        self._busy.pop((user_id, name), None)
        self._thread_ids.pop((user_id, name), None)

    async def _box_id_for(self, principal: Principal, thread: str | None,
                          digest: str | None = None) -> tuple[str, str]:
        """The box for a run, and whether it is a one-off's (``fresh``), a new thread's
        (``new``) or a known thread's (``known``). A pooled box runs on the host's /usr:
        with an image (``digest``), a new box is started for it."""
        # Each box to start or wake counts against the user's boxes awake (a 429).
        pooled = digest is None
        if thread is None:
            return await self.quotas.admit_box(principal.user_id, pooled=pooled), "fresh"
        key = (principal.user_id, thread)
        cached = self._thread_ids.get(key)
        if cached:
            if self.ownership is not None:
                await self.ownership.hold("thread", cached)
            return await self.quotas.admit_box(principal.user_id, cached), "known"
        kind = "known"
        async with self._sessions() as db:
            found = (await db.execute(
                select(Thread.id).where(Thread.user_id == key[0], Thread.name == thread)
            )).scalar_one_or_none()
        if found is None:
            # The quota checks read the store too: never while holding a connection, or
            # concurrent new threads hold the whole pool waiting for one more.
            await self.quotas.check_disk(key[0], self.boxes.settings.box_disk_mb,
                                         "a new thread")
            found, kind = await self.quotas.admit_box(key[0], pooled=pooled), "new"
            async with self._sessions() as db:
                db.add(Thread(id=found, user_id=key[0], name=thread, node_id=self.node_id))
                try:
                    await db.commit()
                except IntegrityError:  # the same thread was made concurrently
                    await db.rollback()
                    await self.boxes.destroy(found)  # still "new": the pool is short
                    found = (await db.execute(
                        select(Thread.id).where(Thread.user_id == key[0], Thread.name == thread)
                    )).scalar_one()
        if kind == "known":
            if self.ownership is not None:  # its box runs on one node at a time
                await self.ownership.hold("thread", found)
            await self.quotas.admit_box(key[0], found)
        elif self.ownership is not None:
            await self.ownership.claim_new("thread", found)
        self._thread_ids[key] = found
        return found, kind

    # --- running ----------------------------------------------------------

    async def _drive(self, run: Run, busy_key: tuple[str, str] | None, box: Box,
                     kind: str) -> None:
        started = time.monotonic()
        out: dict[str, list[str]] = {"stdout": [], "stderr": []}
        outcome: ExecOutcome | None = None
        infra_error: str | None = None
        try:
            run.status = "running"
            run.emit({"type": "status", "trace_id": run.trace_id, "status": "running"})
            outcome = await self._exec(run, box, out)
        except BoxRequestError as exc:
            infra_error = exc.code
            out["stderr"].append(exc.message + "\n")
        except BadRequest as exc:  # a sub_path's volume deleted since the request
            infra_error = exc.code
            out["stderr"].append(exc.message + "\n")
        except BoxError as exc:
            log.warning("execution %s: %s", run.trace_id, exc)
            infra_error = "sandbox_error"
        except asyncio.CancelledError:
            run.cancelled = True
        except Exception:
            log.exception("execution %s failed", run.trace_id)
            infra_error = "internal_error"
        finally:
            self.boxes.release(box)
            self.quotas.end_execution(run.principal.user_id)
            if busy_key is not None:
                self._busy.pop(busy_key, None)
        run.duration_ms = int((time.monotonic() - started) * 1000)
        self._settle(run, outcome, infra_error, "".join(out["stdout"]), "".join(out["stderr"]))
        # The row is queued for the writer at once; the answer is made ready while it is
        # committed, and released only after: an answered execution is always on record.
        saving = self._save(run)
        assert run.result is not None
        result = run.result.model_dump()
        run.body = json.dumps(result, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            try:
                await asyncio.shield(saving)
            except asyncio.CancelledError:  # the server is stopping: the row still first
                await asyncio.wait([saving], timeout=10)
                raise
        except Exception:
            log.exception("could not record execution %s", run.trace_id)
        else:
            if run.req.webhook_url:
                await self._send_webhook(run)
        finally:
            run.emit({"type": "result", "trace_id": run.trace_id, "status": run.status,
                      "result": result, "output_truncated": run.truncated})
            run.done.set()
            metrics.executions.labels(run.status).observe(
                (datetime.now(UTC) - run.created_at).total_seconds())
            self._forget_old_runs(run)
            if kind == "fresh" and run.box_id:
                # A one-off box is deleted after the answer, not before it (its stop,
                # disk unmount and file removal take ~10-30 ms); the manager finishes
                # every such deletion before the server stops, and then refills the pool.
                self.boxes.discard(run.box_id)
            elif kind == "new":
                self.boxes.top_up()  # after the answer: a start would slow this run

    async def _exec(self, run: Run, box: Box, out: dict[str, list[str]]) -> ExecOutcome | None:
        door = (await self.door_env(box.id, run.principal.user_id, run.principal.key_id)
                if self.door_env is not None else {})
        env = {**BASE_ENV, **door, **(run.req.env_vars or {})}
        outcome = None
        # No await between this check and the exec being registered with the box,
        # so a cancel either sees run.box or is seen here.
        if run.cancelled:
            return None
        run.box = box
        async for ev in box.exec(
            RUNNERS[run.req.language],
            script=run.req.code,
            timeout=run.req.timeout,
            env=env,
            cwd=WORKSPACE,
            output_cap=self.boxes.settings.limits.output_cap_bytes,
        ):
            if isinstance(ev, ExecEvent):
                out[ev.stream].append(ev.data)
                run.emit({"type": "output", "stream": ev.stream, "data": ev.data})
            else:
                outcome = ev
        return outcome

    def _settle(self, run: Run, outcome: ExecOutcome | None, infra_error: str | None,
                stdout: str, stderr: str) -> None:
        run.completed_at = datetime.now(UTC)
        if run.cancelled:
            code = outcome.exit_code if outcome else -1
            run.status, error = "cancelled", "cancelled"
        elif outcome is None:
            code, run.status, error = -1, "failed", infra_error or "sandbox_error"
            if error == "sandbox_error":  # say it in words too: the code alone is cryptic
                stderr += ("\n" if stderr and not stderr.endswith("\n") else "") + (
                    "sophon: the sandbox stopped before the command finished; the next "
                    "execution starts a fresh sandbox over the same files\n")
        else:
            box_id = run.box_id
            code = outcome.exit_code
            error = judge(outcome, lambda: box_id is not None and
                          self.boxes.disk_full(box_id)).error
            if error is None:
                run.status = "success" if code == 0 else "failed"
            else:
                run.status = STATUS_OF.get(error, "failed")
        run.truncated = bool(outcome and outcome.truncated)
        run.result = SandboxResult(success=run.status == "success", stdout=stdout,
                                   stderr=stderr, exit_code=code, error=error,
                                   output_truncated=run.truncated)

    async def _insert(self, run: Run) -> None:
        await self.records.insert(self._row(run))
        run.stored = True

    def _save(self, run: Run) -> asyncio.Future[None]:
        """Queue the run's final row with the writer (one commit for every row waiting);
        the future is done once it is committed. On the path of every answer."""
        try:
            return self.records.submit("update" if run.stored else "insert", self._row(run))
        except Exception as exc:  # reported where it is awaited, like a failed commit
            failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed

    def _row(self, run: Run) -> dict[str, Any]:
        r = run.result
        return {
            "trace_id": run.trace_id, "user_id": run.principal.user_id,
            "thread_id": run.req.thread_id, "language": run.req.language,
            "status": run.status, "delivery_mode": run.mode,
            "stdout": r.stdout if r else "", "stderr": r.stderr if r else "",
            "exit_code": r.exit_code if r else None, "error": r.error if r else None,
            "output_truncated": run.truncated, "duration_ms": run.duration_ms,
            "metadata": run.req.metadata, "created_at": run.created_at,
            "completed_at": run.completed_at, "webhook_url": run.req.webhook_url,
            "webhook_delivery_status": run.webhook_status, "node_id": self.node_id,
        }

    async def _send_webhook(self, run: Run) -> None:
        """Start delivering the run's status (stored by now) to its webhook_url; the
        outcome goes into the run and its row."""
        assert run.req.webhook_url is not None
        try:
            secret = await self.webhook_secrets.get(run.principal.user_id)
        except Exception:
            log.exception("webhook of %s: no usable secret", run.trace_id)
            secret = None
        body = run.status_view().model_dump_json().encode()

        async def done(delivered: bool) -> None:
            run.webhook_status = "delivered" if delivered else "failed"
            await self.records.update(self._row(run))

        if secret is None:  # deleted or unreadable since the request was accepted
            await done(False)
            return
        self.webhooks.start(run.req.webhook_url, "msg_" + run.trace_id, body, secret, done)

    def _forget_old_runs(self, run: Run) -> None:
        """Keep the last FINISHED_RUNS_KEPT finished runs in memory (the rest are read
        from their rows)."""
        self._finished.append(run.trace_id)
        while len(self._finished) > FINISHED_RUNS_KEPT:
            self._runs.pop(self._finished.popleft(), None)

    # --- reading and cancelling ------------------------------------------

    def live(self, principal: Principal, trace_id: str) -> Run | None:
        run = self._runs.get(trace_id)
        if run is not None and run.principal.user_id == principal.user_id:
            return run
        return None

    async def status(self, principal: Principal, trace_id: str) -> ExecutionStatus:
        run = self.live(principal, trace_id)
        if run is not None:
            return run.status_view()
        row = await self._load(principal, trace_id)
        return ExecutionStatus(
            trace_id=row.trace_id, status=row.status,  # type: ignore[arg-type]
            exit_code=row.exit_code, stdout=row.stdout, stderr=row.stderr, error=row.error,
            duration_ms=row.duration_ms, delivery_mode=row.delivery_mode,
            created_at=_iso(row.created_at) or "", completed_at=_iso(row.completed_at),
            output_truncated=row.output_truncated, thread_id=row.thread_id, metadata=row.meta,
            webhook_url=row.webhook_url,
            webhook_delivery_status=row.webhook_delivery_status,  # type: ignore[arg-type]
        )

    async def _load(self, principal: Principal, trace_id: str) -> Execution:
        async with self._sessions() as db:
            return await owned(db, Execution, principal.user_id, trace_id, what="execution")

    async def events(self, principal: Principal, trace_id: str,
                     after: int = 0) -> AsyncIterator[dict[str, Any]]:
        """The run's event stream; for a run from before a restart, rebuilt from its record."""
        run = self.live(principal, trace_id)
        if run is not None:
            return run.follow(after)
        st = await self.status(principal, trace_id)
        return _replay(st, after)

    async def cancel(self, principal: Principal, trace_id: str) -> str:
        run = self.live(principal, trace_id)
        if run is None:
            return (await self.status(principal, trace_id)).status
        if run.done.is_set():
            return run.status
        run.cancelled = True
        if run.box is not None:
            await run.box.cancel_all()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.done.wait(), 10)
        return "cancelled"


async def _replay(st: ExecutionStatus, after: int) -> AsyncIterator[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {"type": "status", "trace_id": st.trace_id, "status": "running"}
    ]
    for stream in ("stdout", "stderr"):
        data = getattr(st, stream)
        if data:
            events.append({"type": "output", "stream": stream, "data": data})
    if st.status in TERMINAL:
        result = SandboxResult(success=st.status == "success", stdout=st.stdout or "",
                               stderr=st.stderr or "",
                               exit_code=-1 if st.exit_code is None else st.exit_code,
                               error=st.error)
        events.append({"type": "result", "trace_id": st.trace_id, "status": st.status,
                       "result": result.model_dump(), "output_truncated": st.output_truncated})
    for i, ev in enumerate(events, 1):
        if i > after:
            yield {**ev, "seq": i}
