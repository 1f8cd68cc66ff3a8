"""Building an image: ``mmdebstrap`` makes a Debian root from the host's apt sources into
a scratch directory, the finishing steps make it safe and ready to be a box's read-only
root, ``mksquashfs`` packs it into one file, and only then is it renamed to its digest
(a failed or cut-off build leaves nothing that could be used)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sophon.box import disk
from sophon.errors import SophonError
from sophon.images.definitions import BOX_NEEDS, ImageDef

log = logging.getLogger("sophon.images")

# Documentation and translations are most of a minimal root's size and no box reads them.
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*",
                 "/usr/share/locale/*", "/usr/share/lintian/*")
# Snapshot mirrors serve Release files past their Valid-Until date.
APT_OPTIONS = ('Acquire::Check-Valid-Until "false"',)


class ImageBuildFailed(SophonError):
    """A build that did not finish: the message ends with the last lines of its log.
    Nothing of it is used; the next need of the image builds it again."""

    status = 503
    code = "image_build_failed"


def host_sources(apt_dir: Path = Path("/etc/apt")) -> list[str]:
    """The host's apt sources (the mirrors this machine reaches), as mmdebstrap takes
    them: a file's contents are pasted into the image's sources."""
    found = []
    listed = apt_dir / "sources.list"
    if listed.is_file() and any(line.strip() and not line.lstrip().startswith("#")
                                for line in listed.read_text(errors="replace").splitlines()):
        found.append(str(listed))
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        found += sorted(str(p) for p in parts.iterdir()
                        if p.suffix in (".list", ".sources") and p.is_file())
    return found


def command(definition: ImageDef, target: Path, sources: list[str]) -> list[str]:
    """mmdebstrap in a mount namespace of its own: the /proc, /sys and /dev it mounts in
    the new root go with it however it ends (killed at a timeout, the server stopped),
    never left in the host's table under a directory that is then removed."""
    packages = sorted(set(definition.packages) | set(BOX_NEEDS))
    argv = ["unshare", "--mount", "--propagation", "private", "--",
            "mmdebstrap", "--variant=minbase", "--format=directory",
            f"--include={','.join(packages)}"]
    argv += [f"--aptopt={opt}" for opt in APT_OPTIONS]
    argv += [f"--dpkgopt=path-exclude={glob}" for glob in DPKG_EXCLUDES]
    return [*argv, definition.suite, str(target), *sources]


def finish(root: Path, mount_points: tuple[tuple[str, ...], tuple[str, ...]]) -> int:
    """Make a built root fit to be shared read-only by boxes: no setuid or setgid file
    (a box's processes cannot gain privileges anyway; this leaves nothing to try), the
    files and directories the box layer mounts over made, everything readable by a box's
    uid where it was readable by others. Returns the root's size in bytes."""
    files, dirs = mount_points
    for rel in dirs:
        _real_dirs(root, rel)
    for rel in files:
        path = root / rel.lstrip("/")
        _real_dirs(root, str(Path(rel).parent))
        if not path.exists() and not path.is_symlink():
            path.touch(0o644)
        elif path.is_symlink():  # e.g. /etc/resolv.conf; a bind needs a real file
            path.unlink()
            path.touch(0o644)
    size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                continue
            size += st.st_size
            if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(path, stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))
    root.chmod(0o755)
    return size


def _real_dirs(root: Path, rel: str) -> None:
    """``rel`` and each directory above it inside ``root``, made where missing, as real
    directories. A symlink among them is refused, never followed: this runs as root on
    the host after a user's build steps, which could have made ``/etc`` a link to the
    host's own."""
    path = root
    for part in Path(rel.lstrip("/")).parts:
        path = path / part
        if path.is_symlink():
            raise ImageBuildFailed(f"the image's /{path.relative_to(root)} is a symbolic "
                                   "link; a build step may not replace a directory a box "
                                   "mounts into with a link")
        if not path.exists():
            path.mkdir()
        elif not path.is_dir():
            raise ImageBuildFailed(f"the image's /{path.relative_to(root)} is not a "
                                   "directory; a box mounts into it")


# Runs a user image's steps in a build box over the root (box/builds.py): the root, the
# steps, the time left, and where each line of output goes.
StepRunner = Callable[[Path, list[str], float, Callable[[str], None]], Awaitable[None]]


def unpack_command(image: Path, target: Path) -> list[str]:
    """The root of a built image, unpacked (owners, modes and xattrs as built): a user
    image that adds no Debian package starts from its base's files in seconds instead
    of a whole mmdebstrap of the same packages."""
    return ["unsquashfs", "-quiet", "-no-progress", "-dest", str(target), str(image)]


async def build(definition: ImageDef, scratch: Path, sources: list[str], timeout: float,
                mount_points: tuple[tuple[str, ...], tuple[str, ...]],
                progress: Callable[[str], None], run_steps: StepRunner | None = None,
                max_bytes: int | None = None, from_image: Path | None = None) -> int:
    """Build ``definition`` into ``scratch / "root"``, its log in ``scratch / "build.log"``;
    ``progress`` hears each line mmdebstrap (and each step) prints. The root is made by
    mmdebstrap, or unpacked from ``from_image`` (a built image of the same packages). A
    user image's steps run through ``run_steps``; a root larger than ``max_bytes`` fails
    the build. Returns the root's size."""
    tool = "unsquashfs" if from_image else "mmdebstrap"
    if shutil.which(tool) is None:
        package = "squashfs-tools" if from_image else "mmdebstrap"
        raise ImageBuildFailed(f"{tool} is not installed on this server "
                               f"(apt-get install {package})")
    root = scratch / "root"
    argv = (unpack_command(from_image, root) if from_image
            else command(definition, root, sources))
    started = time.monotonic()
    log_file = await asyncio.to_thread(open, scratch / "build.log", "wb")
    with log_file:
        log_file.write(("$ " + " ".join(argv) + "\n").encode())
        log_file.flush()
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                while line := await proc.stdout.readline():
                    log_file.write(line)
                    log_file.flush()
                    progress(line.decode(errors="replace").rstrip())
                code = await proc.wait()
        except TimeoutError:
            await _stop(proc)
            raise ImageBuildFailed(f"the build of image {definition.name!r} took longer "
                                   f"than {timeout:.0f} s (SOPHON_IMAGE_BUILD_TIMEOUT) and "
                                   f"was stopped{_tail(scratch)}") from None
        except BaseException:
            await _stop(proc)
            raise
    if code != 0:
        raise ImageBuildFailed(f"the build of image {definition.name!r} failed ({tool} "
                               f"exited with {code}){_tail(scratch)}")
    size = await asyncio.to_thread(finish, root, mount_points)
    steps = definition.steps
    if steps:
        if run_steps is None:
            raise ImageBuildFailed(f"image {definition.name!r} has build steps, and this "
                                   "server has no build box to run them in")
        left = timeout - (time.monotonic() - started)
        os.chmod(scratch, 0o711)  # the build box's uid walks to the root it writes
        if max_bytes is not None:  # the steps write on a disk of the image's size
            moving = asyncio.ensure_future(asyncio.to_thread(_onto_disk, scratch, root,
                                                             max_bytes))
            try:
                root = await asyncio.shield(moving)
            except asyncio.CancelledError:
                # The thread cannot be stopped: let its mount land before the scratch
                # directory is cleaned up (which unmounts what it finds there).
                with contextlib.suppress(Exception):
                    await moving
                raise

        def heard(line: str) -> None:
            step_log.write((line + "\n").encode(errors="replace"))
            progress(line)
        step_log = await asyncio.to_thread(open, scratch / "build.log", "ab", buffering=0)
        with step_log:
            try:
                await run_steps(root, steps, left, heard)
            except SophonError as exc:
                heard(f"E: {exc}")
                full = ""
                if max_bytes is not None and _nearly_full(root):
                    full = (f"; the image's space is full: an image may be at most "
                            f"{max_bytes / 2**20:.0f} MiB on this server "
                            "(SOPHON_IMAGE_MAX_MB)")
                raise ImageBuildFailed(f"the build of image {definition.name!r} failed: "
                                       f"{exc}{full}") from None
        # Again: a step may have made a setuid file (its own, packed as root's).
        size = await asyncio.to_thread(finish, root, mount_points)
    if max_bytes is not None and size > max_bytes:
        raise ImageBuildFailed(f"image {definition.name!r} is {size / 2**20:.0f} MiB, over "
                               f"this server's limit of {max_bytes / 2**20:.0f} MiB an image "
                               "(SOPHON_IMAGE_MAX_MB)")
    await squash(root, scratch / "image.sqfs", timeout, all_root=bool(steps))
    if root != scratch / "root":  # on the steps' disk
        await asyncio.to_thread(_off_disk, scratch, root)
    else:
        await asyncio.to_thread(shutil.rmtree, root)
    log.info("image %s (%s) built in %.1f s, %.0f MiB", definition.name,
             definition.digest, time.monotonic() - started, size / 2**20)
    return size


async def _stop(proc: asyncio.subprocess.Process, grace: float = 10.0) -> None:
    """mmdebstrap and everything it started: asked to stop (it cleans up on SIGTERM),
    then killed."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), wait)
            return
        except TimeoutError:
            continue


# The steps' disk: an inode per 4 KiB (a root is many small files; mkfs's default, one
# per 16 KiB, runs out first), which costs ext4 1/16 of the disk in inode tables; with
# its journal and files' last blocks, a quarter more than the limit and 256 MiB hold an
# image at the limit (the exact limit is checked after the steps). Sparse: only what is
# written takes room.
STEPS_DISK_FACTOR = 1.25
STEPS_DISK_SLACK_MB = 256
STEPS_BYTES_PER_INODE = 4096


def _onto_disk(scratch: Path, root: Path, max_bytes: int) -> Path:
    """The root moved onto an ext4 disk sized for ``max_bytes`` mounted at
    ``scratch/steps``: a user's build steps fill that disk, never the host's."""
    img, mnt = scratch / "steps.img", scratch / "steps"
    size_mb = int(max_bytes / 2**20 * STEPS_DISK_FACTOR) + STEPS_DISK_SLACK_MB
    try:
        disk.make_image(img, size_mb, STEPS_BYTES_PER_INODE)
        disk.mount_image(img, mnt)
        (mnt / "lost+found").rmdir()  # ext4's, not the image's
        copied = subprocess.run(["cp", "-a", f"{root}/.", str(mnt)], capture_output=True,
                                timeout=900, check=False)
    except (SophonError, OSError, subprocess.TimeoutExpired) as exc:
        raise ImageBuildFailed(f"could not make the disk the build steps run on: {exc}"
                               ) from None
    if copied.returncode != 0:
        raise ImageBuildFailed("could not copy the image's root onto its build disk: "
                               f"{copied.stderr.decode(errors='replace')[-300:]}")
    shutil.rmtree(root)
    return mnt


def _off_disk(scratch: Path, mnt: Path) -> None:
    disk.unmount(mnt)
    mnt.rmdir()
    (scratch / "steps.img").unlink(missing_ok=True)


def _nearly_full(path: Path) -> bool:
    """Whether the disk under ``path`` has (almost) no room left: what made a step fail."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 8 * 2**20 or st.f_favail < 64


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` in this process's mount table, deepest first."""
    prefix = str(path).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as table:
        for line in table:
            point = line.split()[4].replace("\\040", " ")
            if point == str(path) or point.startswith(prefix):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def remove_scratch(scratch: Path) -> None:
    """A build's scratch directory, gone; never through a mount left in it (a removal
    that went on into a bound /dev or /proc would reach the host's)."""
    for point in mounts_under(scratch):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=60)
    left = mounts_under(scratch)
    if left:
        log.error("not removing %s: %s still mounted there", scratch, ", ".join(left))
        return
    shutil.rmtree(scratch, ignore_errors=True)


async def squash(root: Path, target: Path, timeout: float, all_root: bool = False) -> None:
    """The root as one read-only squashfs file: a filesystem of its own, so a box's
    mountinfo shows its paths from the image's root, never the data directory's. lz4:
    ~1 s to make, and quick to read back. ``all_root``: every file owned by root (a
    root a build box's uid wrote to)."""
    if shutil.which("mksquashfs") is None:
        raise ImageBuildFailed("mksquashfs is not installed on this server "
                               "(apt-get install squashfs-tools)")
    proc = await asyncio.create_subprocess_exec(
        "mksquashfs", str(root), str(target), "-comp", "lz4", "-noappend", "-quiet",
        "-no-progress", *(["-all-root"] if all_root else []),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise ImageBuildFailed(f"mksquashfs failed: {out.decode(errors='replace')[-500:]}")


def _tail(scratch: Path, lines: int = 6) -> str:
    try:
        text = (scratch / "build.log").read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return ": " + " | ".join(line.strip() for line in text if line.strip())
