"""A hard disk quota per box: a sparse ext4 image, mounted in the box's own mount namespace.

``boxes/<id>/disk.img`` holds the box's ``workspace/`` and ``home/``; ``boxes/<id>/workspace``
and ``home`` are symlinks into ``boxes/<id>/disk``, which is what the sandbox binds. The
image is attached to a loop device here, but mounted (nosuid, nodev, discard) only inside
the box's launcher, in a mount namespace of its own (see bwrap.py): the host's mount table
never holds a box's disk, because every new mount namespace copies the whole table and a
table that grew with the boxes running made every box start slower. The mount goes away
with the box's last process, and the loop device (autoclear) with it. A workload that
fills its disk gets ENOSPC from its own filesystem; the host's disk holds at most the
image's size, and files deleted in the box give their space back (``discard`` punches
holes in the image). The image is sparse, so an empty box costs about a megabyte.

Mounting needs root; an unprivileged server runs without quotas and says so. Boxes made
before quotas existed (real directories, no image) keep working without one. Staging
boxes and volumes are still mounted on the host (few, and their files are read from
outside the box that wrote them).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import shutil
import struct
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from sophon.box import held_mount
from sophon.errors import BoxError

log = logging.getLogger(__name__)

SUBDIRS = ("workspace", "home")
# A box counts as out of disk below this much free space: ext4 keeps a little back for
# its own metadata, so a filled disk still shows some hundreds of KiB free.
FULL_BELOW_BYTES = 2**20
FULL_BELOW_SHARE = 0.01
# discard: what a workload deletes is punched out of the image, so the host gets it back.
# noinit_itable: the image is made sparse (all zeros), so the inode tables mkfs left
# uninitialised (lazy_itable_init) read as zeros already; ext4 would otherwise zero them
# in a kernel thread after each first mount, disk writes that every box start paid for.
MOUNT_OPTIONS = "nosuid,nodev,noatime,discard,noinit_itable"
# mount(8)'s names for the flags in MOUNT_OPTIONS; the rest go to ext4 as data.
MOUNT_FLAGS = {"nosuid": 0x2, "nodev": 0x4, "noexec": 0x8, "noatime": 0x400}

# <linux/loop.h>
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_AUTOCLEAR = 4
# Formatted images of the default size kept ready, each attached to a loop device
# already: a new box takes one (a rename) instead of waiting on its request's path for
# mkfs.ext4 (9 ms here) and the attach (about 1 ms).
SPARE_DISKS = 2
# How long a start waits for the previous run of the same box to let go of its disk (its
# processes are gone once the box has stopped, so this is the kernel finishing up).
RELEASE_WAIT_S = 10.0


@dataclass(frozen=True)
class DiskUse:
    used_bytes: int
    limit_bytes: int | None  # None: no quota for this box


@dataclass(eq=False)
class BoxDisk:
    """A box's image on a loop device, for the box's launcher to mount at ``mountpoint``
    in its own mount namespace. The device clears itself when its last user closes it, so
    ``fd`` holds it until the box has mounted it (``close`` once the box has started or
    failed to). ``held``: a spare's filesystem, set up ahead (held_mount.py), -1 if not."""

    device: str
    mountpoint: Path
    fd: int
    held: int = -1

    def close(self) -> None:
        _close(self.held, self.fd)
        self.fd = self.held = -1


# A spare disk ready for a box: its loop device's number, a descriptor holding the
# device, and one holding its filesystem set up ahead (-1 if none).
Attached = tuple[int, int, int]


def _close(*fds: int) -> None:
    for fd in fds:
        if fd >= 0:
            os.close(fd)


def mount_flags(options: str) -> tuple[int, str]:
    """``mount -o`` options as mount(2)'s flags and data."""
    names = options.split(",")
    flags = sum(MOUNT_FLAGS[n] for n in names if n in MOUNT_FLAGS)
    return flags, ",".join(n for n in names if n not in MOUNT_FLAGS)


def _failed(name: str, stderr: bytes) -> BoxError:
    return BoxError(f"{name} failed: {stderr.decode(errors='replace').strip()[-500:]}")


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          timeout=60, check=False)
    if proc.returncode != 0:
        raise _failed(argv[0], proc.stderr)


def mkfs_argv(path: Path, bytes_per_inode: int | None = None,
              root: Path | None = None) -> list[str]:
    # No reserved blocks (no root inside a box); lazy init keeps it sparse and fast.
    # ``root``: a directory whose tree the filesystem starts with.
    inodes = ["-i", str(bytes_per_inode)] if bytes_per_inode else []
    tree = ["-d", str(root)] if root is not None else []
    return ["mkfs.ext4", "-q", "-F", "-m", "0", *inodes, *tree,
            "-E", "lazy_itable_init=1,lazy_journal_init=1", str(path)]


def _sparse_file(img: Path, size_mb: int) -> Path:
    """The image's file, made under a temporary name, the server's alone from the start."""
    tmp = img.with_suffix(".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # (one a crash left with other bits)
        os.ftruncate(fd, size_mb * 2**20)
    finally:
        os.close(fd)
    return tmp


def _install_image(tmp: Path, img: Path) -> None:
    tmp.chmod(0o600)
    os.replace(tmp, img)


def make_image(img: Path, size_mb: int, bytes_per_inode: int | None = None) -> None:
    """A sparse ext4 image of ``size_mb`` at ``img``, unless there is one already
    (``bytes_per_inode``: more inodes than mkfs's default, for a tree of small files)."""
    if img.exists():
        return
    tmp = _sparse_file(img, size_mb)
    _run(*mkfs_argv(tmp, bytes_per_inode))
    _install_image(tmp, img)


# Runs a command (argv) and returns its exit code and what it wrote to stderr.
Runner = Callable[[list[str]], Awaitable[tuple[int, bytes]]]


def attach_loop(img: Path) -> tuple[int, int]:
    """Attach ``img`` to a free loop device (autoclear); returns its number and an open
    descriptor of it, which keeps it attached until closed or mounted.

    Done with the kernel's ioctls rather than ``mount -o loop`` or ``losetup``: those look
    through every loop device in use for one backed by the same file first, and with a
    loop device per running box that search made each start slower than the last."""
    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    backing = os.open(img, os.O_RDWR | os.O_CLOEXEC)
    name = str(img).encode()[:63]
    # struct loop_config: fd, block_size, struct loop_info64 (lo_flags, lo_file_name), pad.
    info = struct.pack("=QQQQQIIII64s64s32sQQ", 0, 0, 0, 0, 0, 0, 0, 0,
                       LO_FLAGS_AUTOCLEAR, name, b"", b"", 0, 0)
    config = struct.pack("=II", backing, 0) + info + bytes(64)
    try:
        for _ in range(100):
            number = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            fd = os.open(f"/dev/loop{number}", os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.ioctl(fd, LOOP_CONFIGURE, config)
            except OSError as exc:
                os.close(fd)
                if exc.errno == errno.EBUSY:  # another process took it first
                    continue
                raise BoxError(f"could not attach {img.name} to a loop device: {exc}") from exc
            return number, fd
        raise BoxError("could not attach a disk image: no loop device stayed free")
    finally:
        os.close(backing)
        os.close(ctl)


def attach_spare(img: Path) -> Attached:
    """``attach_loop``, and the filesystem set up ahead when the kernel allows it: the
    box that takes the spare mounts it in a few microseconds instead of about 0.6 ms."""
    number, fd = attach_loop(img)
    try:
        held = held_mount.hold(f"/dev/loop{number}", "ext4", mount_flags(MOUNT_OPTIONS)[1])
    except OSError as exc:
        log.debug("spare disk %s not set up ahead: %s", img.name, exc)
        return number, fd, -1
    for sub in SUBDIRS:  # read now, so the box's launcher finds them in memory
        with contextlib.suppress(OSError):
            os.stat(sub, dir_fd=held, follow_symlinks=False)
    return number, fd, held


def backing_file(number: int) -> str | None:
    """The file loop device ``number`` is attached to, None if it is free."""
    try:
        return Path(f"/sys/block/loop{number}/loop/backing_file").read_text().rstrip("\n")
    except OSError:
        return None


def mount_image(img: Path, mnt: Path) -> None:
    """Loop-mount ``img`` at ``mnt`` on the host, unless something is mounted there."""
    if not os.path.ismount(mnt):
        mnt.mkdir(exist_ok=True)
        number, fd = attach_loop(img)
        try:
            _run("mount", "-n", "-t", "ext4", "-o", MOUNT_OPTIONS, f"/dev/loop{number}",
                 str(mnt))
        finally:
            os.close(fd)  # the mount holds the device now (or it clears itself)


def unmount(mnt: Path) -> None:
    if os.path.ismount(mnt):
        # Lazily, so a process still finishing in a dying box cannot keep it busy.
        try:
            _run("umount", "-l", str(mnt))
        except BoxError:
            if os.path.ismount(mnt):  # not just a concurrent unmount that came first
                raise


def mounted_use(mnt: Path | str) -> DiskUse | None:
    """Used and total bytes of the filesystem mounted at ``mnt``; None if none is."""
    try:
        if not os.path.ismount(mnt):
            return None
        st = os.statvfs(mnt)
    except OSError:  # a box's view that went away with it
        return None
    return DiskUse((st.f_blocks - st.f_bfree) * st.f_frsize, st.f_blocks * st.f_frsize)


class Disks:
    def __init__(self, boxes_dir: Path, default_mb: int, runner: Runner,
                 spare_dir: Path | None = None) -> None:
        self.boxes_dir = boxes_dir
        self.default_mb = default_mb
        self.runner = runner
        # Spares: <size in MiB>-<random>.img, in the data directory (the same filesystem as
        # the boxes', so taking one is a rename). Each node of a cluster has its own: a
        # spare is attached to a loop device by the node that made it, and only that node
        # may take it.
        self.spare_dir = spare_dir or boxes_dir.parent / "spare-disks"
        self.on_spare_taken: Callable[[], None] | None = None  # the manager makes another
        tools = [shutil.which(t, path="/usr/sbin:/usr/bin:/sbin:/bin")
                 for t in ("mkfs.ext4", "mount", "umount")]
        self.enabled = (os.geteuid() == 0 and all(tools)
                        and os.path.exists("/dev/loop-control"))
        self.mode = (f"ext4 image per box, {default_mb} MiB by default" if self.enabled else
                     "off (needs root, e2fsprogs and loop devices): a box can fill the "
                     "host's disk")
        # Box id: the loop device its last start used. A start of the same box waits for
        # it to be let go, so one image is never mounted twice at once.
        self._loops: dict[str, int] = {}
        # Spare image: its loop device (number, descriptor holding it).
        self._spare_loops: dict[Path, Attached] = {}
        # What a new disk starts with: its workspace and home, made by mkfs, so a box's
        # first start does not wait on the writes of their first creation (~1 ms).
        self.template = boxes_dir.parent / "disk-template"

    def image(self, box_id: str) -> Path:
        return self.boxes_dir / box_id / "disk.img"

    def mountpoint(self, box_id: str) -> Path:
        return self.boxes_dir / box_id / "disk"

    def _legacy(self, box_id: str) -> bool:
        ws = self.boxes_dir / box_id / "workspace"
        return ws.is_dir() and not ws.is_symlink()

    def _layout(self, box_id: str, size_mb: int | None) -> tuple[Path, Path]:
        d, img, mnt = self.boxes_dir / box_id, self.image(box_id), self.mountpoint(box_id)
        d.mkdir(parents=True, exist_ok=True)
        make_image(img, size_mb or self.default_mb)
        mnt.mkdir(exist_ok=True)
        for sub in SUBDIRS:
            link = d / sub
            if not link.is_symlink():
                link.symlink_to(f"disk/{sub}")
        return img, mnt

    async def prepare(self, box_id: str, size_mb: int | None = None) -> BoxDisk | None:
        """The box's disk, made on first use and attached to a loop device, for its
        launcher to mount; None for a box without one (no quotas, or a box from before
        them, whose files are real directories)."""
        if not self.enabled:
            return None
        # A new box that takes a spare attached already, the usual case: a rename and a
        # few stats, done here (the trip to a thread and back took longer than they do).
        disk, took = self._prepare_new(box_id, size_mb)
        if took and self.on_spare_taken is not None:
            self.on_spare_taken()
        if disk is not False:
            return disk
        img = self.image(box_id)
        if not img.exists() and not self._legacy(box_id):
            await self._make_image(img, size_mb or self.default_mb)
        return await asyncio.to_thread(self._prepare, box_id, size_mb)

    def _prepare_new(self, box_id: str, size_mb: int | None
                     ) -> tuple[BoxDisk | None | bool, bool]:
        """A new box's disk from a spare attached already: (its disk, True); else
        (False, whether a spare was taken): the caller makes, attaches or finds it."""
        img = self.image(box_id)
        if img.exists() or self._legacy(box_id):
            return False, False
        taken = self._take_spare(img, size_mb or self.default_mb)
        if taken is None:
            return False, False
        if taken is True:  # a spare without its own loop device: attached in a thread
            return False, True
        return self._prepare(box_id, size_mb, taken), True

    def _spares(self) -> list[Path]:
        return sorted(self.spare_dir.glob(f"{self.default_mb}-*.img"))

    def _take_spare(self, img: Path, size_mb: int) -> Attached | bool | None:
        """Move a spare to ``img``: its loop device if it has one, True if not; None when
        there is no spare to take."""
        if size_mb != self.default_mb:
            return None
        img.parent.mkdir(parents=True, exist_ok=True)
        for spare in self._spares():
            loop = self._spare_loops.pop(spare, None)
            try:
                os.chmod(spare, 0o600)  # the box's files: whatever a hand did to the spare
                os.replace(spare, img)
            except FileNotFoundError:  # taken meanwhile (another node on this directory)
                if loop is not None:
                    _close(loop[2], loop[1])
                continue
            except OSError:  # not the same filesystem after all: mkfs it is
                if loop is not None:
                    _close(loop[2], loop[1])
                return None
            return loop if loop is not None else True
        return None

    def clear_spares(self) -> None:
        """At start, every spare goes (another size, half made by a crash, or left by
        hands we do not know): new ones take a few ms each, in the background."""
        self.release_spares()
        for f in self.spare_dir.glob("*"):
            f.unlink(missing_ok=True)

    def release_spares(self) -> None:
        """At close: the spares this process attached go, with their loop devices."""
        for spare, (_, fd, held) in list(self._spare_loops.items()):
            _close(held, fd)
            spare.unlink(missing_ok=True)
        self._spare_loops.clear()

    async def make_spares(self, before_each: Callable[[], Awaitable[None]]) -> None:
        """Make spares until SPARE_DISKS are ready, each after ``before_each`` (the box
        manager's wait for a quiet moment: not on a request's CPU)."""
        if not self.enabled:
            return
        await asyncio.to_thread(self.spare_dir.mkdir, mode=0o700, exist_ok=True)
        while len(await asyncio.to_thread(self._spares)) < SPARE_DISKS:
            await before_each()
            spare = self.spare_dir / f"{self.default_mb}-{os.urandom(8).hex()}.img"
            # Made and attached under a name no start takes (_spares lists *.img): a
            # start that took it half-way would attach the image a second time.
            made = spare.with_suffix(".made")
            await self._make_image(made, self.default_mb)
            attached: Attached | None = None
            try:
                attached = await asyncio.to_thread(attach_spare, made)
            except (BoxError, OSError) as exc:  # it is taken without one, attached then
                log.warning("a spare disk has no loop device ahead: %s", exc)
            # Here, with no await between: the name and the device are taken together.
            try:
                os.replace(made, spare)
            except OSError as exc:  # removed meanwhile (the server is closing)
                if attached is not None:
                    _close(attached[2], attached[1])
                log.warning("a spare disk was lost before it was ready: %s", exc)
                continue
            if attached is not None:
                self._spare_loops[spare] = attached

    async def _make_image(self, img: Path, size_mb: int) -> None:
        """``make_image`` with mkfs run by ``runner`` (the box launcher, whose fork does
        not copy the server's descriptor table: thousands of entries with hundreds of
        boxes running)."""
        img.parent.mkdir(parents=True, exist_ok=True)
        tmp = await asyncio.to_thread(_sparse_file, img, size_mb)
        await asyncio.to_thread(self._make_template)
        code, err = await self.runner(mkfs_argv(tmp, root=self.template))
        if code != 0:
            tmp.unlink(missing_ok=True)
            raise _failed("mkfs.ext4", err)
        await asyncio.to_thread(_install_image, tmp, img)

    def _make_template(self) -> None:
        self.template.mkdir(mode=0o755, exist_ok=True)
        for sub in SUBDIRS:
            (self.template / sub).mkdir(mode=0o700, exist_ok=True)

    def _prepare(self, box_id: str, size_mb: int | None,
                 attached: Attached | None = None) -> BoxDisk | None:
        if self._legacy(box_id):
            return None
        img, mnt = self._layout(box_id, size_mb)
        if os.path.ismount(mnt):  # mounted on the host by an older server: used as is
            if attached is not None:
                _close(attached[2], attached[1])
            return None
        self._wait_released(box_id, img)
        number, fd, held = attached if attached is not None else (*attach_loop(img), -1)
        self._loops[box_id] = number
        return BoxDisk(f"/dev/loop{number}", mnt, fd, held)

    def _wait_released(self, box_id: str, img: Path) -> None:
        number = self._loops.get(box_id)
        if number is None:
            return
        path = str(img.resolve())
        end = time.monotonic() + RELEASE_WAIT_S
        while backing_file(number) == path:
            if time.monotonic() > end:
                raise BoxError(f"the disk of box {box_id} is still in use by its previous "
                               "run; try again shortly")
            time.sleep(0.001)  # the kernel lets go within milliseconds of the box's end
        self._loops.pop(box_id, None)

    async def adopt(self, box_id: str) -> None:
        """The box was run by another node until now (cluster/ownership.py): if a loop
        device still holds its image (that node's box, not gone yet: on one machine, a
        node paused rather than dead), the next start waits for it, and refuses rather
        than mount the image twice."""
        if self.enabled and box_id not in self._loops:
            await asyncio.to_thread(self._adopt, box_id)

    def _adopt(self, box_id: str) -> None:
        path = str(self.image(box_id).resolve())
        with contextlib.suppress(OSError):
            for dev in Path("/sys/block").glob("loop*"):
                number = dev.name[4:]
                if number.isdigit() and backing_file(int(number)) == path:
                    self._loops[box_id] = int(number)
                    return

    async def released(self, box_id: str) -> None:
        """Once a stopped box's disk is let go by the kernel (its mount went with the
        box's last process; the loop device clears itself a moment later): from then on
        the image is whole on the host, and a start of the box need not wait for it."""
        if self.enabled and box_id in self._loops:
            await asyncio.to_thread(self._wait_released, box_id, self.image(box_id))

    async def attach(self, box_id: str, size_mb: int | None = None) -> None:
        """Mount the box's disk on the host (a staging box, whose copy another box reads
        once it has stopped), making its image on first use."""
        if self.enabled:
            await asyncio.to_thread(self._attach, box_id, size_mb)

    def _attach(self, box_id: str, size_mb: int | None) -> None:
        if self._legacy(box_id):
            return
        img, mnt = self._layout(box_id, size_mb)
        mount_image(img, mnt)
        mnt.chmod(0o755)  # walkable by the box's uid; its two directories are 0700
        for sub in SUBDIRS:
            (mnt / sub).mkdir(exist_ok=True)

    async def detach(self, box_id: str) -> None:
        """Unmount the box's disk from the host, where only a staging box's (or an older
        server's) is; a box's own namespace takes its mount with it."""
        if self.enabled:
            await asyncio.to_thread(unmount, self.mountpoint(box_id))

    def _view(self, box_id: str, pid: int | None) -> str:
        """Where the host sees the box's mountpoint: through its launcher's root
        (``/proc/<pid>/root``, the launcher's mount namespace) while it runs."""
        mnt = os.path.abspath(self.mountpoint(box_id))
        return f"/proc/{pid}/root{mnt}" if pid is not None else mnt

    def usage(self, box_id: str, pid: int | None = None) -> DiskUse:
        """``pid``: the box's launcher (the outer bwrap) if it runs; else, or if its disk
        is not mounted, the image's allocated size."""
        use = mounted_use(self._view(box_id, pid))
        if use is not None:
            return use
        img = self.image(box_id)
        with contextlib.suppress(OSError):
            st2 = img.stat()
            return DiskUse(st2.st_blocks * 512, st2.st_size)
        return DiskUse(0, None)

    def full(self, box_id: str, pid: int | None = None) -> bool:
        """Whether the box's disk is (about) full: an exec that failed then failed for it."""
        view = self._view(box_id, pid)
        try:
            if not os.path.ismount(view):
                return False
            st = os.statvfs(view)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < max(FULL_BELOW_BYTES,
                                               FULL_BELOW_SHARE * st.f_blocks * st.f_frsize)

    async def detach_all(self) -> int:
        """Unmount every box disk under this data directory from the host (a staging
        box's, or an older server's, left by a crash); and note the loop devices still
        attached to this directory's images (boxes of a crashed run, dying), which the
        next start of each box waits for."""
        return await asyncio.to_thread(self._detach_all) if self.enabled else 0

    def _detach_all(self) -> int:
        prefix = str(self.boxes_dir.resolve()) + "/"
        mounted = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        stale = [m for m in mounted if m.startswith(prefix) and m.endswith("/disk")]
        for m in stale:
            with contextlib.suppress(BoxError):
                _run("umount", "-l", m)
        with contextlib.suppress(OSError):
            for dev in Path("/sys/block").glob("loop*"):
                path = backing_file(int(dev.name[4:])) if dev.name[4:].isdigit() else None
                if path and path.startswith(prefix) and path.endswith("/disk.img"):
                    self._loops[path[len(prefix):].split("/")[0]] = int(dev.name[4:])
        return len(stale)
