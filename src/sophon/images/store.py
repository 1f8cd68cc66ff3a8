"""The images on this server: built on first need (one build per digest however many
ask at once, across processes too), kept content-addressed under ``images_dir`` and
shared read-only by every box of their base.

    <images_dir>/<digest>/image.sqfs   the image (squashfs): a box's /usr, /etc and /var
    <images_dir>/<digest>/mnt/         where it is mounted, read-only, for every box
    <images_dir>/<digest>/image.json   its definition, size and build time
    <images_dir>/<digest>/build.log    what mmdebstrap printed
    <images_dir>/.build-<digest>-*/    a build under way (removed if it fails)
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from sophon.errors import BadRequest
from sophon.images import builder
from sophon.images.builder import ImageBuildFailed
from sophon.images.definitions import BUILTIN, ImageDef

log = logging.getLogger("sophon.images")


class ImageView(BaseModel):
    name: str
    description: str
    digest: str
    status: str  # ready | building | not built | unavailable | failed
    size_bytes: int | None = None
    built_at: str | None = None
    build_seconds: float | None = None
    reason: str | None = None  # unavailable: why; failed: the build's error
    progress: str | None = None  # building: the build's last line
    # A user's own image: the built-in it builds on, and what it adds.
    builtin: bool = True
    base: str | None = None
    apt: list[str] = []
    pip: list[str] = []
    npm: list[str] = []
    run: list[str] = []
    env: dict[str, str] = {}
    allow: list[str] = []
    created_at: str | None = None
    # What a box on it gets unless its session asks otherwise (images/sizing.py).
    limits: dict[str, int | float] | None = None


@dataclass
class _Building:
    task: asyncio.Task[Path]
    last_line: str = ""
    listeners: list[asyncio.Event] = field(default_factory=list)


def _publish(scratch: Path, final: Path, info: dict[str, object]) -> None:
    """A finished build under its digest: image.json last, since it marks it ready."""
    shutil.rmtree(final, ignore_errors=True)  # a half-removed earlier one
    scratch.chmod(0o711)
    scratch.rename(final)
    (final / "image.json").write_text(json.dumps(info, indent=2))


class ImageStore:
    def __init__(self, images_dir: Path, *, sources: list[str] | None = None,
                 timeout: float = 900.0, max_bytes: int | None = None,
                 mount_points: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())) -> None:
        self.dir = images_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o711)  # boxes walk to their root; nobody lists the images
        self.sources = builder.host_sources() if sources is None else sources
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.mount_points = mount_points
        self._building: dict[str, _Building] = {}
        self._mounted: set[str] = set()

    @staticmethod
    def definition(name: str) -> ImageDef:
        found = BUILTIN.get(name)
        if found is None:
            raise BadRequest(f"unknown image {name!r}; the images are "
                             f"{', '.join(BUILTIN)}")
        return found

    def built(self, digest: str) -> bool:
        return (self.dir / digest / "image.json").is_file()

    async def root_of(self, digest: str) -> Path | None:
        """The root of a built image, mounted (once for every server on this directory);
        None if it is not (or no longer) built."""
        if not self.built(digest):
            return None
        mnt = self.dir / digest / "mnt"
        if digest not in self._mounted:  # checked once per server, not per box start
            await asyncio.to_thread(self._mount, digest, mnt)
            self._mounted.add(digest)
        return mnt

    def _mount(self, digest: str, mnt: Path) -> None:
        with self._locked(digest):
            if os.path.ismount(mnt):
                return
            mnt.mkdir(mode=0o755, exist_ok=True)
            done = subprocess.run(
                ["mount", "-t", "squashfs", "-o", "ro,loop,nodev,nosuid",
                 str(self.dir / digest / "image.sqfs"), str(mnt)],
                capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                raise ImageBuildFailed(f"image {digest} could not be mounted: "
                                       f"{done.stderr.strip() or done.stdout.strip()}")

    @contextlib.contextmanager
    def _locked(self, digest: str) -> Iterator[None]:
        """One holder at a time per image, across every server on this directory."""
        fd = os.open(self.dir / f".{digest}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    async def ensure(self, image: str | ImageDef,
                     run_steps: builder.StepRunner | None = None) -> tuple[ImageDef, Path]:
        """The image (a built-in's name, or a definition), built first if it is not yet
        (or its definition changed); one build for every caller that asks meanwhile.
        A user image's steps run through ``run_steps`` (box/builds.py)."""
        definition = self.definition(image) if isinstance(image, str) else image
        name = definition.name
        if definition.unavailable:
            raise BadRequest(f"image {name!r} is not available on this server: "
                             f"{definition.unavailable}")
        root = await self.root_of(definition.digest)
        if root is not None:
            return definition, root
        building = self._building.get(definition.digest)
        if building is None:
            building = _Building(asyncio.ensure_future(self._build(definition, run_steps)))
            self._building[definition.digest] = building
            building.task.add_done_callback(
                lambda _t, d=definition.digest: self._building.pop(d, None))
        return definition, await asyncio.shield(building.task)

    def building(self, digest: str) -> bool:
        return digest in self._building

    async def _build(self, definition: ImageDef,
                     run_steps: builder.StepRunner | None) -> Path:
        digest = definition.digest
        fd = os.open(self.dir / f".{digest}.build", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            # Another server on this directory may be building it: wait for its build.
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
            if self.built(digest):
                return await self._root(digest)
            # Holding the lock, any scratch of this digest is a build that was cut off.
            for stale in self.dir.glob(f".build-{digest}-*"):
                await asyncio.to_thread(builder.remove_scratch, stale)
            with contextlib.suppress(FileNotFoundError):  # a new build, a new log
                (self.dir / f".{digest}.failed.log").unlink()
            log.info("building image %s (%s): the first box of this base waits for it",
                     definition.name, digest)
            from_image = await self._base_to_unpack(definition)
            scratch = Path(tempfile.mkdtemp(prefix=f".build-{digest}-", dir=self.dir))
            started = time.monotonic()
            try:
                size = await builder.build(definition, scratch, self.sources, self.timeout,
                                           self.mount_points, self._progress(digest),
                                           run_steps, self.max_bytes, from_image)
                info = {"name": definition.name, "description": definition.description,
                        "digest": digest, "suite": definition.suite,
                        "packages": sorted(definition.packages), "steps": definition.steps,
                        "size_bytes": size,
                        "build_seconds": round(time.monotonic() - started, 1),
                        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                final = self.dir / digest
                await asyncio.to_thread(_publish, scratch, final, info)
            except BaseException:
                self._keep_log(digest, scratch)
                await asyncio.to_thread(builder.remove_scratch, scratch)
                raise
            return await self._root(digest)
        finally:
            os.close(fd)

    async def _base_to_unpack(self, definition: ImageDef) -> Path | None:
        """The built base a user image can start from: one whose packages are the
        image's own (no apt package added), built first if it is not yet."""
        base = BUILTIN.get(definition.base or "")
        if base is None or base.unavailable or (base.suite, set(base.packages)) != (
                definition.suite, set(definition.packages)):
            return None
        await self.ensure(base)
        return self.dir / base.digest / "image.sqfs"

    def log_path(self, digest: str) -> Path | None:
        """The build log of an image: in its directory once built, in the scratch of a
        build under way, or the last failed build's (kept beside it); None if none."""
        built = self.dir / digest / "build.log"
        if built.is_file():
            return built
        for scratch in self.dir.glob(f".build-{digest}-*"):
            return scratch / "build.log"
        failed = self.dir / f".{digest}.failed.log"
        return failed if failed.is_file() else None

    def _keep_log(self, digest: str, scratch: Path) -> None:
        with contextlib.suppress(OSError):
            shutil.copyfile(scratch / "build.log", self.dir / f".{digest}.failed.log")

    async def _root(self, digest: str) -> Path:
        root = await self.root_of(digest)
        assert root is not None
        return root

    def _progress(self, digest: str) -> Callable[[str], None]:
        def heard(line: str) -> None:
            building = self._building.get(digest)
            if building is not None and line:
                building.last_line = line
                for listener in building.listeners:
                    listener.set()
            if line.startswith(("I: ", "--- step")):
                log.info("image %s: %s", digest[:12], line.removeprefix("I: "))
        return heard

    async def wait_for_more(self, digest: str, timeout: float) -> None:
        """Until the build of ``digest`` prints a line or ends (or ``timeout``)."""
        building = self._building.get(digest)
        if building is None:
            return
        heard = asyncio.Event()
        building.listeners.append(heard)
        try:
            waiter = asyncio.ensure_future(heard.wait())
            await asyncio.wait({waiter, building.task}, timeout=timeout)
            waiter.cancel()
        finally:
            building.listeners.remove(heard)

    def list(self) -> list[ImageView]:
        return [self.state(ImageView(name=d.name, description=d.description,
                                     digest=d.digest, status="not built"), d.unavailable)
                for d in BUILTIN.values()]

    def state(self, view: ImageView, unavailable: str | None = None) -> ImageView:
        """``view`` with what this store knows of its digest: built (size, time),
        building (its last line), or neither."""
        building = self._building.get(view.digest)
        if unavailable:
            view.status, view.reason = "unavailable", unavailable
        elif self.built(view.digest):
            info = json.loads((self.dir / view.digest / "image.json").read_text())
            view.status, view.reason = "ready", None
            view.size_bytes = info.get("size_bytes")
            view.built_at = info.get("built_at")
            view.build_seconds = info.get("build_seconds")
        elif building is not None:
            view.status, view.progress = "building", building.last_line or None
        return view

    def remove(self, name: str, in_use: list[str]) -> None:
        """Delete a built image; refused while boxes use it (``in_use`` names them)."""
        definition = self.definition(name)
        if in_use:
            raise BadRequest(f"image {name!r} is used by {len(in_use)} box(es) "
                             f"({', '.join(in_use[:10])}); delete them first")
        self.remove_digest(definition.digest)

    def remove_digest(self, digest: str) -> None:
        with self._locked(digest):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / f".{digest}.failed.log").unlink()
            with contextlib.suppress(FileNotFoundError):
                (self.dir / digest / "image.json").unlink()
            mnt = self.dir / digest / "mnt"
            if os.path.ismount(mnt):
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=60)
            self._mounted.discard(digest)
            shutil.rmtree(self.dir / digest, ignore_errors=True)
