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
from dataclasses import dataclass
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
    status: str  # ready | building | not built | unavailable
    size_bytes: int | None = None
    built_at: str | None = None
    build_seconds: float | None = None
    reason: str | None = None  # unavailable: why
    progress: str | None = None  # building: mmdebstrap's last line


@dataclass
class _Building:
    task: asyncio.Task[Path]
    last_line: str = ""


def _publish(scratch: Path, final: Path, info: dict[str, object]) -> None:
    """A finished build under its digest: image.json last, since it marks it ready."""
    shutil.rmtree(final, ignore_errors=True)  # a half-removed earlier one
    scratch.chmod(0o711)
    scratch.rename(final)
    (final / "image.json").write_text(json.dumps(info, indent=2))


class ImageStore:
    def __init__(self, images_dir: Path, *, sources: list[str] | None = None,
                 timeout: float = 900.0,
                 mount_points: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())) -> None:
        self.dir = images_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o711)  # boxes walk to their root; nobody lists the images
        self.sources = builder.host_sources() if sources is None else sources
        self.timeout = timeout
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

    async def ensure(self, name: str) -> tuple[ImageDef, Path]:
        """The image of ``name``, built first if it is not yet (or its definition changed);
        one build for every caller that asks meanwhile."""
        definition = self.definition(name)
        if definition.unavailable:
            raise BadRequest(f"image {name!r} is not available on this server: "
                             f"{definition.unavailable}")
        root = await self.root_of(definition.digest)
        if root is not None:
            return definition, root
        building = self._building.get(definition.digest)
        if building is None:
            building = _Building(asyncio.ensure_future(self._build(definition)))
            self._building[definition.digest] = building
            building.task.add_done_callback(
                lambda _t, d=definition.digest: self._building.pop(d, None))
        return definition, await asyncio.shield(building.task)

    async def _build(self, definition: ImageDef) -> Path:
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
            log.info("building image %s (%s): the first box of this base waits for it",
                     definition.name, digest)
            scratch = Path(tempfile.mkdtemp(prefix=f".build-{digest}-", dir=self.dir))
            started = time.monotonic()
            try:
                size = await builder.build(definition, scratch, self.sources, self.timeout,
                                           self.mount_points, self._progress(digest))
                info = {"name": definition.name, "description": definition.description,
                        "digest": digest, "suite": definition.suite,
                        "packages": sorted(definition.packages), "size_bytes": size,
                        "build_seconds": round(time.monotonic() - started, 1),
                        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                final = self.dir / digest
                await asyncio.to_thread(_publish, scratch, final, info)
            except BaseException:
                await asyncio.to_thread(builder.remove_scratch, scratch)
                raise
            return await self._root(digest)
        finally:
            os.close(fd)

    async def _root(self, digest: str) -> Path:
        root = await self.root_of(digest)
        assert root is not None
        return root

    def _progress(self, digest: str) -> Callable[[str], None]:
        def heard(line: str) -> None:
            building = self._building.get(digest)
            if building is not None and line:
                building.last_line = line
            if line.startswith("I: "):
                log.info("image %s: %s", digest[:12], line[3:])
        return heard

    def list(self) -> list[ImageView]:
        out = []
        for definition in BUILTIN.values():
            view = ImageView(name=definition.name, description=definition.description,
                             digest=definition.digest, status="not built")
            building = self._building.get(definition.digest)
            if definition.unavailable:
                view.status, view.reason = "unavailable", definition.unavailable
            elif self.built(definition.digest):
                info = json.loads((self.dir / definition.digest / "image.json").read_text())
                view.status = "ready"
                view.size_bytes = info.get("size_bytes")
                view.built_at = info.get("built_at")
                view.build_seconds = info.get("build_seconds")
            elif building is not None:
                view.status, view.progress = "building", building.last_line or None
            out.append(view)
        return out

    def remove(self, name: str, in_use: list[str]) -> None:
        """Delete a built image; refused while boxes use it (``in_use`` names them)."""
        definition = self.definition(name)
        if in_use:
            raise BadRequest(f"image {name!r} is used by {len(in_use)} box(es) "
                             f"({', '.join(in_use[:10])}); delete them first")
        with self._locked(definition.digest):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / definition.digest / "image.json").unlink()
            mnt = self.dir / definition.digest / "mnt"
            if os.path.ismount(mnt):
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=60)
            self._mounted.discard(definition.digest)
            shutil.rmtree(self.dir / definition.digest, ignore_errors=True)
