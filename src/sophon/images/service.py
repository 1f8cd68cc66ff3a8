"""Images as users see them: the built-in ones and each user's own.

A user's image is a row (its name, base and additions) and a definition whose digest
names the built image in the store; two users' same definitions share one build and one
file. Sessions and execute-API threads name an image (``base`` / ``image``); a name is
resolved here to the definition the box layer runs on, built first if it is not yet.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sophon.box import builds
from sophon.box.manager import BoxManager, boxes_on_image
from sophon.config import Settings
from sophon.egress.policy import BASE_ALLOW
from sophon.errors import BadRequest, Conflict, LimitExceeded, NotFound
from sophon.images import sizing
from sophon.images.builder import ImageBuildFailed
from sophon.images.definitions import BUILTIN, ImageDef
from sophon.images.models import CreateImage
from sophon.images.store import ImageStore, ImageView
from sophon.quotas import Quotas
from sophon.store.tables import ImageRow, SessionRow, Thread, iso
from sophon.users import Principal

log = logging.getLogger("sophon.images")

# A built-in's digest is never removed with a user's image (one with nothing added is
# the same image).
BUILTIN_DIGESTS = frozenset(d.digest for d in BUILTIN.values())
# A deleted image's files wait for the boxes on it to go (a one-off's, being deleted).
REMOVE_WAIT_SECONDS = 0.5
REMOVE_WAIT_ROUNDS = 120
# A log followed while its build waits to start (no build to wait on): looked at again.
QUEUED_POLL_SECONDS = 0.2


def definition_of(row: ImageRow) -> ImageDef:
    spec = row.spec
    base = BUILTIN[row.base]
    return ImageDef(name=row.name, description=spec.get("description") or
                    f"{row.base} with {_additions(spec)}",
                    packages=(*base.packages, *spec.get("apt", [])), suite=base.suite,
                    base=row.base, pip=tuple(spec.get("pip", [])),
                    npm=tuple(spec.get("npm", [])), run=tuple(spec.get("run", [])),
                    env=tuple(sorted(spec.get("env", {}).items())),
                    allow=tuple(spec.get("allow", [])))


def _additions(spec: dict[str, Any]) -> str:
    parts = [f"{len(spec[k])} {k} package(s)" for k in ("apt", "pip", "npm") if spec.get(k)]
    if spec.get("run"):
        parts.append(f"{len(spec['run'])} run step(s)")
    return ", ".join(parts) or "nothing added"


class ImageService:
    def __init__(self, settings: Settings, db: async_sessionmaker[AsyncSession],
                 boxes: BoxManager, build_env: Callable[[], dict[str, str]],
                 check_allow: Callable[[list[str]], object]) -> None:
        self.settings = settings
        self._db = db
        self.boxes = boxes
        self._build_env = build_env  # the egress door's proxy settings
        self._check_allow = check_allow  # a 400 for a host past the admin's ceiling
        self._tasks: set[asyncio.Task[None]] = set()
        # The user's disk, images included (quotas.py): a build that would take it past
        # the limit fails, and its files go unless another image is the same.
        self.quotas: Quotas | None = None
        # One refusal at a time per digest: two users' builds of one definition end
        # together, and the second must see the first one failed when it counts who
        # else keeps the files (else each counts the other, and they stay for nobody).
        self._refusing: dict[str, asyncio.Lock] = {}

    @property
    def store(self) -> ImageStore:
        if self.boxes.images is None:
            raise BadRequest(f"images are off on this server ({self.boxes.images_off}): "
                             "boxes run on the host's /usr, and no image can be built")
        return self.boxes.images

    # --- defining and building ---------------------------------------------------

    async def create(self, principal: Principal, req: CreateImage) -> ImageView:
        """A new image of the user's: its build starts now (``GET .../log`` follows it)."""
        store = self.store
        if BUILTIN[req.base].unavailable:
            raise BadRequest(f"image {req.base!r} is not available on this server: "
                             f"{BUILTIN[req.base].unavailable}")
        self._check_allow(req.allow)
        spec = req.model_dump(exclude={"name", "base"})
        row = ImageRow(id="img_" + secrets.token_hex(12), user_id=principal.user_id,
                       name=req.name, base=req.base, spec=spec, digest="", status="building")
        row.digest = definition_of(row).digest
        async with self._db() as db:
            limit = self.settings.user_max_images
            count = await db.scalar(select(func.count()).select_from(ImageRow)
                                    .where(ImageRow.user_id == principal.user_id))
            if limit and (count or 0) >= limit:
                raise LimitExceeded(f"you have {count} images, the most this server allows "
                                    f"per user (SOPHON_USER_MAX_IMAGES={limit}); delete one "
                                    "first")
            db.add(row)
            try:
                await db.commit()
            except IntegrityError:
                raise Conflict(f"you have an image named {req.name!r} already; delete it "
                               "first, or choose another name") from None
        self._start_build(row)
        return self._view(row, store)

    def _start_build(self, row: ImageRow) -> None:
        self._track(asyncio.create_task(self._build(row.id), name=f"image-{row.id}"))

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _build(self, image_id: str) -> None:
        async with self._db() as db:
            row = await db.get(ImageRow, image_id)
        if row is None:
            return
        status, error, too_big = "ready", None, False
        # Built by this build (not found built: another user's, or another server's on
        # the same store): only then are its files this user's doing, to drop if refused.
        made_here = self.boxes.images is not None and not self.boxes.images.built(row.digest)
        try:
            await self.ensure(row)
            error = await self._past_disk_limit(row)
            if error is not None:
                status, too_big = "failed", made_here
        except ImageBuildFailed as exc:
            status, error = "failed", str(exc)
        except Exception as exc:  # a bug: said in the image, and logged with its trace
            log.exception("the build of image %s failed", image_id)
            status, error = "failed", f"the build failed: {exc}"
        if not too_big:
            await self._set_status(image_id, status, error)
            return
        lock = self._refusing.setdefault(row.digest, asyncio.Lock())
        async with lock:  # gone before the image is said failed
            await self._drop_if_unused(row)
            await self._set_status(image_id, status, error)
        if not lock.locked():
            self._refusing.pop(row.digest, None)

    async def _set_status(self, image_id: str, status: str, error: str | None) -> None:
        async with self._db() as db:
            found = await db.get(ImageRow, image_id)
            if found is not None:
                found.status, found.error = status, error
                await db.commit()

    async def _past_disk_limit(self, row: ImageRow) -> str | None:
        """Why the image just built may not be kept (the user's disk with it is past
        SOPHON_USER_MAX_DISK_MB), or None."""
        limit = self.settings.user_max_disk_mb
        if self.quotas is None or not limit:
            return None
        used = await self.quotas.disk_mb(row.user_id)
        if used <= limit:
            return None
        return (f"the image is {self._mb(row.digest)} MiB; with it your disk would be {used} "
                f"MiB (your sessions', threads', volumes' and images' sizes added up), over "
                f"the {limit} MiB this server allows per user (SOPHON_USER_MAX_DISK_MB); "
                "delete a session, volume or image you no longer need, then define it again")

    async def _drop_if_unused(self, row: ImageRow) -> None:
        """A refused image's files go, unless another image (a built-in, or any user's
        that did not fail) is the same."""
        async with self._db() as db:
            others = await db.scalar(select(func.count()).select_from(ImageRow).where(
                ImageRow.digest == row.digest, ImageRow.id != row.id,
                ImageRow.status != "failed"))
        if not others and row.digest not in BUILTIN_DIGESTS and self.boxes.images:
            await asyncio.to_thread(self.boxes.images.remove_digest, row.digest)

    def _mb(self, digest: str) -> int:
        """A built image's size in MiB (rounded up); 0 if it is not built."""
        store = self.boxes.images
        if store is None or not store.built(digest):
            return 0
        view = store.state(ImageView(name="", description="", digest=digest,
                                     status="not built"))
        return -(-(view.size_bytes or 0) // 2**20)

    async def disk_mb(self, user_id: str) -> int:
        """The MiB of the user's own images that are built and not failed (one shared
        with another user counts for each)."""
        async with self._db() as db:
            digests = list((await db.execute(select(ImageRow.digest).where(
                ImageRow.user_id == user_id, ImageRow.status != "failed"))).scalars())
        return sum(self._mb(d) for d in digests)

    async def ensure(self, row: ImageRow) -> ImageDef:
        """The user's image, built (again, if its files are gone) before this returns."""
        definition = definition_of(row)
        allow = (*BASE_ALLOW.get(row.base, ()), *definition.allow)
        runner = functools.partial(self._run_steps, row.user_id, allow, dict(definition.env),
                                   sizing.defaults(self.settings, row.base))
        await self.store.ensure(definition, runner)
        return definition

    async def _run_steps(self, user_id: str, allow: tuple[str, ...], own_env: dict[str, str],
                         size: sizing.Size, root: Path, steps: list[str], timeout: float,
                         progress: Callable[[str], None]) -> None:
        env = {**builds.BUILD_ENV, **self._build_env(), **own_env}
        await builds.run_steps(self.boxes, root, steps, user_id=user_id, allow=allow,
                               env=env, size=size, progress=progress, timeout=timeout)

    async def recover(self) -> None:
        """Builds cut off by the last stop start again (content-addressed: what was
        half-made is thrown away, nothing half-built is ever used)."""
        if self.boxes.images is None:
            return
        async with self._db() as db:
            rows = list((await db.execute(select(ImageRow).where(
                ImageRow.status == "building"))).scalars())
        for row in rows:
            log.info("image %s of user %s: its build was cut off; building it again",
                     row.name, row.user_id)
            self._start_build(row)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- reading --------------------------------------------------------------------

    def _view(self, row: ImageRow, store: ImageStore) -> ImageView:
        spec = row.spec
        view = ImageView(name=row.name, description=definition_of(row).description,
                         digest=row.digest, status="not built", builtin=False,
                         base=row.base, apt=spec.get("apt", []), pip=spec.get("pip", []),
                         npm=spec.get("npm", []), run=spec.get("run", []),
                         env=spec.get("env", {}), allow=spec.get("allow", []),
                         created_at=iso(row.created_at))
        view = store.state(view)
        if row.status == "failed":  # built or not (found built, but past the disk limit)
            view.status, view.reason, view.size_bytes = "failed", row.error, None
        elif view.status == "not built" and row.status == "building":
            view.status = "building"  # queued: the task has not reached the store yet
        return view

    async def _row(self, principal: Principal, name: str) -> ImageRow:
        async with self._db() as db:
            row = (await db.execute(select(ImageRow).where(
                ImageRow.user_id == principal.user_id, ImageRow.name == name)
            )).scalar_one_or_none()
        if row is None:
            raise NotFound(f"no image named {name!r}; yours and the built-in ones are "
                           "listed by GET /v1/images")
        return row

    async def list(self, principal: Principal) -> list[ImageView]:
        store = self.boxes.images
        if store is None:
            return []
        async with self._db() as db:
            rows = (await db.execute(select(ImageRow).where(
                ImageRow.user_id == principal.user_id).order_by(ImageRow.name))).scalars()
            return [self._sized(v) for v in (*store.list(), *(self._view(r, store)
                                                             for r in rows))]

    async def get(self, principal: Principal, name: str) -> ImageView:
        store = self.store
        if name in BUILTIN:
            return self._sized(next(v for v in store.list() if v.name == name))
        return self._sized(self._view(await self._row(principal, name), store))

    def _sized(self, view: ImageView) -> ImageView:
        view.limits = sizing.defaults(self.settings, view.base or view.name).as_dict()
        return view

    async def log_lines(self, principal: Principal, name: str, after: int,
                        heartbeat: float) -> AsyncIterator[tuple[int, str] | ImageView | None]:
        """The image's build log, a line at a time with its number (from 1), after line
        ``after``, followed while it builds; then the image as it ended. None: a
        heartbeat is due. A stranger's image raises here, before anything is sent."""
        digest = (await self.get(principal, name)).digest
        store = self.store

        async def follow() -> AsyncIterator[tuple[int, str] | ImageView | None]:
            seen = 0
            while True:
                building = store.building(digest)
                path = store.log_path(digest)
                lines = await asyncio.to_thread(_read_lines, path) if path else []
                if not building and len(lines) and not lines[-1].endswith("\n"):
                    lines[-1] += "\n"
                for n, line in enumerate(lines, 1):
                    if n > max(seen, after) and line.endswith("\n"):
                        seen = n
                        yield n, line.rstrip("\n")
                if not building and not await self._queued(principal, name):
                    yield await self.get(principal, name)
                    return
                if not building:  # queued: its task has not reached the store yet
                    await asyncio.sleep(QUEUED_POLL_SECONDS)
                    continue
                before = seen
                await store.wait_for_more(digest, heartbeat)
                if seen == before and store.building(digest):
                    yield None
        return follow()

    async def _queued(self, principal: Principal, name: str) -> bool:
        """A user's image whose build has not ended (its task may not have reached the
        store yet, or is writing how it ended)."""
        return name not in BUILTIN and (await self._row(principal, name)).status == "building"

    # --- naming an image -------------------------------------------------------------

    async def resolve(self, user_id: str, name: str) -> tuple[str, ImageDef]:
        """What a session's ``base`` or a thread's ``image`` names: (the built-in base
        whose tools and hosts it has, the definition to run on), built if it is not."""
        store = self.store
        if name in BUILTIN:
            definition, _ = await store.ensure(name)
            return name, definition
        async with self._db() as db:
            row = (await db.execute(select(ImageRow).where(
                ImageRow.user_id == user_id, ImageRow.name == name))).scalar_one_or_none()
        if row is None:
            raise BadRequest(f"unknown base or image {name!r}: the built-in ones are "
                             f"{', '.join(BUILTIN)}; yours are listed by GET /v1/images")
        if row.status == "failed":
            raise BadRequest(f"image {name!r} failed to build ({row.error}); delete it and "
                             "define it again")
        try:
            return row.base, await self.ensure(row)
        except ImageBuildFailed as exc:
            raise BadRequest(f"image {name!r} could not be built: {exc}") from None

    # --- deleting ---------------------------------------------------------------------

    async def delete(self, principal: Principal, name: str) -> None:
        """Delete the user's image; refused while their sessions or threads run on it
        (named in the error). Its files go once no other user's image is the same."""
        if name in BUILTIN:
            raise BadRequest(f"{name!r} is a built-in image; an admin removes those with "
                             "`sophon images rm`")
        row = await self._row(principal, name)
        users = await self._users(principal.user_id, row.digest)
        if users:
            raise Conflict(f"image {name!r} is used by {', '.join(users[:20])}"
                           f"{' and more' if len(users) > 20 else ''}; delete those "
                           "first")
        async with self._db() as db:
            found = await db.get(ImageRow, row.id)
            if found is not None:
                await db.delete(found)
                await db.commit()
            others = await db.scalar(select(func.count()).select_from(ImageRow)
                                     .where(ImageRow.digest == row.digest))
        if not others and row.digest not in BUILTIN_DIGESTS:
            self._track(asyncio.create_task(self._remove_when_unused(row.digest),
                                            name=f"image-remove-{row.digest[:12]}"))

    async def _remove_when_unused(self, digest: str) -> None:
        """The image's files, once no box uses it (a one-off's box may still be going
        away) and no image of any user here is the same again; after a while, left for
        the next delete."""
        store = self.boxes.images
        for _ in range(REMOVE_WAIT_ROUNDS):
            if store is None or store.building(digest):
                return
            if not await asyncio.to_thread(boxes_on_image, self.settings.boxes_dir, digest):
                async with self._db() as db:
                    again = await db.scalar(select(func.count()).select_from(ImageRow)
                                            .where(ImageRow.digest == digest))
                if not again:
                    await asyncio.to_thread(store.remove_digest, digest)
                return
            await asyncio.sleep(REMOVE_WAIT_SECONDS)
        log.info("image %s stays on disk: boxes still run on it", digest[:12])

    async def _users(self, user_id: str, digest: str) -> list[str]:
        """The user's sessions (by id and name) and threads on image ``digest``."""
        box_ids = set(await asyncio.to_thread(boxes_on_image, self.settings.boxes_dir, digest))
        if not box_ids:
            return []
        async with self._db() as db:
            sessions = (await db.execute(select(SessionRow.id, SessionRow.name).where(
                SessionRow.user_id == user_id, SessionRow.box_id.in_(box_ids)))).all()
            threads = (await db.execute(select(Thread.name).where(
                Thread.user_id == user_id, Thread.id.in_(box_ids)))).scalars()
            return [*(f"session {sid} ({sname})" for sid, sname in sessions),
                    *(f"thread {t}" for t in threads)]


def _read_lines(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace", newline="\n") as f:
            return f.readlines()
    except FileNotFoundError:
        return []
