"""Volumes: named storage of one user, mounted at /data/<name>/ in that user's boxes.

Each volume is its own sparse ext4 image (its quota, made and mounted with the same
helpers as a box's disk) and has its own host gid; the boxes that mount it get that gid
as a supplementary group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from sophon.box.disk import Disks, DiskUse, make_image, mount_image, mounted_use, unmount
from sophon.errors import BoxError

VOLUMES_MOUNT = "/data"
# A default POSIX ACL of user::rwx group::rwx other::--- (system.posix_acl_default,
# version 2, entries sorted by tag): with it on a directory, what is made in it gets
# group rights as asked for, whatever the process's umask, so one box's files in a
# volume stay writable by the other boxes of the same user (same group).
_ACL_DEFAULT = struct.pack("<I", 2) + b"".join(
    struct.pack("<HHI", tag, perm, 0xFFFFFFFF) for tag, perm in ((1, 7), (4, 7), (0x20, 0)))


@dataclass(frozen=True)
class VolumeMount:
    """One volume (or one sub-path of it) to mount in a box at /data/<name>/<sub>."""

    volume_id: str
    name: str
    gid: int
    sub: str = ""

    @property
    def inside(self) -> str:
        return f"{VOLUMES_MOUNT}/{self.name}" + (f"/{self.sub}" if self.sub else "")


class VolumeStore:
    """Volumes on the host: ``volumes/<id>/disk.img`` (a sparse ext4 image, the quota),
    loop-mounted at ``volumes/<id>/disk`` from first use until the volume is deleted or
    the server stops; without disk images (no root) a plain directory there. The root
    of a volume is ``root:<gid> 2770`` with a default ACL, so every box of its user, each
    its own uid but all given the volume's gid, can read and write all of it."""

    def __init__(self, data_dir: Path, disks: Disks) -> None:
        self.dir = data_dir / "volumes"
        self.disks = disks
        self._locks: dict[str, asyncio.Lock] = {}

    def root(self, volume_id: str) -> Path:
        return self.dir / volume_id / "disk"

    async def attach(self, volume_id: str, size_mb: int, gid: int) -> Path:
        async with self._locks.setdefault(volume_id, asyncio.Lock()):
            await asyncio.to_thread(self._attach, volume_id, size_mb, gid)
        return self.root(volume_id)

    def _attach(self, volume_id: str, size_mb: int, gid: int) -> None:
        self.dir.mkdir(mode=0o711, exist_ok=True)
        d, mnt = self.dir / volume_id, self.root(volume_id)
        d.mkdir(mode=0o711, exist_ok=True)
        if self.disks.enabled:
            make_image(d / "disk.img", size_mb)
            mount_image(d / "disk.img", mnt)
        mnt.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            os.chown(mnt, 0, gid)
            mnt.chmod(0o2770)
            with contextlib.suppress(OSError):  # a filesystem without ACLs
                os.setxattr(mnt, "system.posix_acl_default", _ACL_DEFAULT)
            with contextlib.suppress(FileNotFoundError):
                (mnt / "lost+found").rmdir()
        else:
            mnt.chmod(0o700)

    async def remove(self, volume_id: str) -> None:
        async with self._locks.setdefault(volume_id, asyncio.Lock()):
            await asyncio.to_thread(self._remove, volume_id)
        self._locks.pop(volume_id, None)

    def _remove(self, volume_id: str) -> None:
        unmount(self.root(volume_id))
        shutil.rmtree(self.dir / volume_id, ignore_errors=True)

    def usage(self, volume_id: str) -> DiskUse:
        return mounted_use(self.root(volume_id)) or DiskUse(0, None)

    def detach_all(self) -> None:
        if not self.dir.is_dir():
            return
        for d in self.dir.iterdir():
            with contextlib.suppress(BoxError):
                unmount(d / "disk")
