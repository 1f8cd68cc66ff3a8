"""A hard disk quota per box: a sparse ext4 image, loop-mounted while the box runs.

``boxes/<id>/disk.img`` holds the box's ``workspace/`` and ``home/``; while the box runs
it is mounted (nosuid, nodev) at ``boxes/<id>/disk``, and ``boxes/<id>/workspace`` and
``home`` are symlinks into it, which is what the sandbox binds. A workload that fills it
gets ENOSPC from its own filesystem; the host's disk holds at most the image's size. The
image is sparse, so an empty box costs about a megabyte.

Mounting needs root; an unprivileged server runs without quotas and says so. Boxes made
before quotas existed (real directories, no image) keep working without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sophon.errors import BoxError

log = logging.getLogger(__name__)

SUBDIRS = ("workspace", "home")
# A box counts as out of disk below this much free space: ext4 keeps a little back for
# its own metadata, so a filled disk still shows some hundreds of KiB free.
FULL_BELOW_BYTES = 2**20
FULL_BELOW_SHARE = 0.01


@dataclass(frozen=True)
class DiskUse:
    used_bytes: int
    limit_bytes: int | None  # None: no quota for this box


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          timeout=60, check=False)
    if proc.returncode != 0:
        raise BoxError(f"{argv[0]} failed: {proc.stderr.decode(errors='replace').strip()[-500:]}")


def make_image(img: Path, size_mb: int) -> None:
    """A sparse ext4 image of ``size_mb`` at ``img``, unless there is one already."""
    if img.exists():
        return
    tmp = img.with_suffix(".new")
    with open(tmp, "wb") as f:
        f.truncate(size_mb * 2**20)
    # No reserved blocks (no root inside a box); lazy init keeps it sparse and fast.
    _run("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1",
         str(tmp))
    tmp.chmod(0o600)
    os.replace(tmp, img)


def mount_image(img: Path, mnt: Path) -> None:
    """Loop-mount ``img`` at ``mnt`` (nosuid, nodev), unless it is mounted already."""
    if not os.path.ismount(mnt):
        mnt.mkdir(exist_ok=True)
        _run("mount", "-o", "loop,nosuid,nodev,noatime", str(img), str(mnt))


def unmount(mnt: Path) -> None:
    if os.path.ismount(mnt):
        # Lazily, so a process still finishing in a dying box cannot keep it busy.
        try:
            _run("umount", "-l", str(mnt))
        except BoxError:
            if os.path.ismount(mnt):  # not just a concurrent unmount that came first
                raise


def mounted_use(mnt: Path) -> DiskUse | None:
    """Used and total bytes of the filesystem mounted at ``mnt``; None if none is."""
    if not os.path.ismount(mnt):
        return None
    st = os.statvfs(mnt)
    return DiskUse((st.f_blocks - st.f_bfree) * st.f_frsize, st.f_blocks * st.f_frsize)


class Disks:
    def __init__(self, boxes_dir: Path, default_mb: int) -> None:
        self.boxes_dir = boxes_dir
        self.default_mb = default_mb
        tools = [shutil.which(t, path="/usr/sbin:/usr/bin:/sbin:/bin")
                 for t in ("mkfs.ext4", "mount", "umount")]
        self.enabled = os.geteuid() == 0 and all(tools)
        self.mode = (f"ext4 image per box, {default_mb} MiB by default" if self.enabled else
                     "off (needs root and e2fsprogs): a box can fill the host's disk")

    def image(self, box_id: str) -> Path:
        return self.boxes_dir / box_id / "disk.img"

    def mountpoint(self, box_id: str) -> Path:
        return self.boxes_dir / box_id / "disk"

    def _legacy(self, box_id: str) -> bool:
        ws = self.boxes_dir / box_id / "workspace"
        return ws.is_dir() and not ws.is_symlink()

    async def attach(self, box_id: str, size_mb: int | None = None) -> None:
        """Make the box's files available at boxes/<id>/{workspace,home}: create its
        image on first use, and mount it."""
        if self.enabled:
            await asyncio.to_thread(self._attach, box_id, size_mb)

    def _attach(self, box_id: str, size_mb: int | None) -> None:
        if self._legacy(box_id):
            return
        d, img, mnt = self.boxes_dir / box_id, self.image(box_id), self.mountpoint(box_id)
        d.mkdir(parents=True, exist_ok=True)
        make_image(img, size_mb or self.default_mb)
        mount_image(img, mnt)
        mnt.chmod(0o755)  # walkable by the box's uid; its two directories are 0700
        for sub in SUBDIRS:
            (mnt / sub).mkdir(exist_ok=True)
            link = d / sub
            if not link.is_symlink():
                link.symlink_to(f"disk/{sub}")

    async def detach(self, box_id: str) -> None:
        if self.enabled:
            await asyncio.to_thread(unmount, self.mountpoint(box_id))

    def usage(self, box_id: str) -> DiskUse:
        use = mounted_use(self.mountpoint(box_id))
        if use is not None:
            return use
        img = self.image(box_id)
        with contextlib.suppress(OSError):
            st2 = img.stat()
            return DiskUse(st2.st_blocks * 512, st2.st_size)
        return DiskUse(0, None)

    def full(self, box_id: str) -> bool:
        """Whether the box's disk is (about) full: an exec that failed then failed for it."""
        mnt = self.mountpoint(box_id)
        if not os.path.ismount(mnt):
            return False
        st = os.statvfs(mnt)
        return st.f_bavail * st.f_frsize < max(FULL_BELOW_BYTES,
                                               FULL_BELOW_SHARE * st.f_blocks * st.f_frsize)

    async def detach_all(self) -> int:
        """Unmount every box disk under this data directory (at start-up, after a crash;
        at shutdown)."""
        return await asyncio.to_thread(self._detach_all) if self.enabled else 0

    def _detach_all(self) -> int:
        prefix = str(self.boxes_dir.resolve()) + "/"
        mounted = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        stale = [m for m in mounted if m.startswith(prefix) and m.endswith("/disk")]
        for m in stale:
            with contextlib.suppress(BoxError):
                _run("umount", "-l", m)
        return len(stale)
