"""A copy of a repository the sandbox cannot read, made by the server on a user's behalf.

Only for paths under an admin's SOPHON_GIT_LOCAL_ROOTS: the admin chose to share them,
whatever their modes. The copy holds what a clone reads (the ``.git`` directory, or the
whole of a bare repository) as plain files any uid may read, so that the staging box
clones from it as from any other path. The walk never follows a symbolic link: a link is
copied as a link, and so means inside the box what it would mean there, never what it
points to on the host. Nothing of the repository is run: no git on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import stat
from collections.abc import AsyncIterator
from pathlib import Path

from sophon.errors import BadRequest

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
MAX_ENTRIES = 1_000_000
MAX_DEPTH = 100


class _Budget:
    def __init__(self, max_bytes: int) -> None:
        self.bytes_left = max_bytes
        self.entries_left = MAX_ENTRIES
        self.max_bytes = max_bytes

    def spend(self, size: int) -> None:
        self.bytes_left -= size
        self.entries_left -= 1
        if self.bytes_left < 0 or self.entries_left < 0:
            raise BadRequest(f"the repository is larger than a session's disk "
                             f"({self.max_bytes // 2**20} MiB, or {MAX_ENTRIES:,} files); "
                             "clone a smaller one or ask for more disk (disk_mb)")


@contextlib.asynccontextmanager
async def server_copy(source: str, under: Path, max_bytes: int) -> AsyncIterator[Path]:
    """A copy of the repository at ``source`` in a new directory of ``under``, for a
    staging box to read; gone when the block ends."""
    dest = under / secrets.token_hex(8)
    try:
        await asyncio.to_thread(copy_repository, source, dest, max_bytes)
        yield dest
    finally:
        await asyncio.to_thread(shutil.rmtree, dest, True)


def copy_repository(source: str, dest: Path, max_bytes: int) -> None:
    """Copy the repository at ``source`` (a real path the server has checked) to
    ``dest``, which must not exist; at most ``max_bytes``."""
    try:
        _copy_repository(source, dest, max_bytes)
    except OSError as exc:  # changed under the walk: a link where a directory was, ...
        raise BadRequest(f"{source} changed while it was read; try again "
                         f"({exc.strerror or exc})") from None


def _copy_repository(source: str, dest: Path, max_bytes: int) -> None:
    # Search but no listing for others: the staging box's uid must reach its copy.
    dest.parent.mkdir(exist_ok=True)
    dest.parent.chmod(0o711)
    top = os.open(source, _DIR_FLAGS)
    try:
        budget = _Budget(max_bytes)
        _mkdir(dest)
        try:
            git = os.open(".git", _DIR_FLAGS, dir_fd=top)
        except OSError:  # a bare repository (or not one: git in the box will say so)
            _copy_dir(top, dest, budget)
            return
        try:
            _mkdir(dest / ".git")
            _copy_dir(git, dest / ".git", budget)
        finally:
            os.close(git)
    finally:
        os.close(top)


def _mkdir(path: Path) -> None:
    path.mkdir()
    path.chmod(0o755)  # whatever the server's umask: boxes read it


def _copy_dir(fd: int, dest: Path, budget: _Budget, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise BadRequest(f"the repository nests directories over {MAX_DEPTH} deep")
    for name in os.listdir(fd):
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        target = dest / name
        if stat.S_ISDIR(st.st_mode):
            budget.spend(0)
            sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
            try:
                _mkdir(target)
                _copy_dir(sub, target, budget, depth + 1)
            finally:
                os.close(sub)
        elif stat.S_ISLNK(st.st_mode):
            budget.spend(0)
            target.symlink_to(os.readlink(name, dir_fd=fd))
        elif stat.S_ISREG(st.st_mode):
            _copy_file(fd, name, target, budget)
        # sockets, fifos and devices are no part of a repository: left out


def _copy_file(fd: int, name: str, target: Path, budget: _Budget) -> None:
    src = os.open(name, _FILE_FLAGS, dir_fd=fd)
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):  # swapped since the listing
            return
        budget.spend(st.st_size)
        with open(target, "xb") as out:
            os.fchmod(out.fileno(), 0o644)  # whatever the server's umask: boxes read it
            left = st.st_size  # what was counted: a file that grows meanwhile is cut there
            while left > 0:
                chunk = os.read(src, min(left, 1 << 20))
                if not chunk:
                    break
                left -= len(chunk)
                out.write(chunk)
    finally:
        os.close(src)
