"""Workspace file operations for boxd, confined to a root directory.

Paths are relative to the root. Each one is opened component by component with
O_NOFOLLOW from a directory descriptor, so neither ``..`` nor a symlink (one a
workload planted included) can lead outside the root. Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import stat

SKIP_DIRS = {".git"}
TREE_LIMIT = 20_000


class PathError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def split(rel: str) -> list[str]:
    if rel.startswith("/") or "\x00" in rel:
        raise PathError("path_outside_workspace", f"{rel!r} is not a path inside the workspace")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise PathError("path_outside_workspace", f"{rel!r} leaves the workspace")
    return parts


def open_dir(root: str, parts: list[str], create: bool = False) -> int:
    """A descriptor of root/parts..., refusing symlinks at every step."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if _is_link(fd, part):
                    raise PathError("path_outside_workspace",
                                    f"{part!r} is a symbolic link; links are not followed") from exc
                raise
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def etag_of(data: bytes) -> str:
    # Imported here: it loads OpenSSL (~5 ms), and a thread's box imports this module
    # before its first request to link Claude Code (daemon.link_claude).
    import hashlib

    return hashlib.sha256(data).hexdigest()[:32]


def read(root: str, rel: str, limit: int, offset: int = 0) -> dict:
    """At most ``limit`` bytes of the file from ``offset`` (a large file is read in
    several requests, each within a frame)."""
    parts = split(rel)
    if not parts:
        raise PathError("is_a_directory", "the workspace root is a directory")
    try:
        dfd = open_dir(root, parts[:-1])
    except FileNotFoundError as exc:
        raise PathError("not_found", f"{rel} does not exist") from exc
    try:
        if _is_link(dfd, parts[-1]):
            raise PathError("path_outside_workspace",
                            f"{rel} is a symbolic link; links are not followed")
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
        except FileNotFoundError as exc:
            raise PathError("not_found", f"{rel} does not exist") from exc
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if stat.S_ISDIR(st.st_mode):
                raise PathError("is_a_directory", f"{rel} is a directory")
            if not stat.S_ISREG(st.st_mode):
                raise PathError("not_a_file", f"{rel} is not a regular file")
            if offset:
                f.seek(offset)
            data = f.read(limit + 1)
    finally:
        os.close(dfd)
    truncated = len(data) > limit
    if truncated or offset:
        data = data[:limit]
        etag = None  # a partial read cannot vouch for the whole file
    else:
        etag = etag_of(data)
    return {"data": data, "size": st.st_size, "truncated": truncated, "etag": etag,
            "mtime": st.st_mtime}


def write(root: str, rel: str, data: bytes, if_match: str | None, if_none_match: bool,
          mode: int = 0o644) -> dict:
    """Write atomically (temp file, then rename). ``if_match`` is the etag the writer
    last saw; a different current content is a conflict, never overwritten."""
    parts = split(rel)
    if not parts:
        raise PathError("is_a_directory", "the workspace root is a directory")
    dfd = open_dir(root, parts[:-1], create=True)
    try:
        name = parts[-1]
        if _is_link(dfd, name):
            raise PathError("path_outside_workspace",
                            f"{rel} is a symbolic link; links are not followed")
        current = None
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
            with os.fdopen(fd, "rb") as f:
                if stat.S_ISDIR(os.fstat(f.fileno()).st_mode):
                    raise PathError("is_a_directory", f"{rel} is a directory")
                current = etag_of(f.read())
        if if_none_match and current is not None:
            raise PathError("precondition_failed", f"{rel} already exists")
        if if_match is not None and if_match != current:
            raise PathError("precondition_failed",
                            f"{rel} changed since it was read (or does not exist)")
        tmp = f".{name}.sophon-{os.getpid()}-{id(data)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode,
                     dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
    finally:
        os.close(dfd)
    return {"size": len(data), "etag": etag_of(data), "created": current is None}


def put(root: str, rel: str, upload: str, offset: int, data: bytes, final: bool,
        abort: bool = False, mode: int = 0o644) -> dict:
    """One chunk of an upload too large for a frame. Chunks go, in order, to a hidden
    temporary file beside the target (``upload`` names it); the final one renames it
    over the target, so readers see the old file or the whole new one. ``abort``
    removes the temporary file. Every chunk opens its way from the root again."""
    parts = split(rel)
    if not parts:
        raise PathError("is_a_directory", "the root is a directory")
    if not upload.isalnum() or len(upload) > 64:
        raise PathError("invalid_request", "bad upload id")
    tmp = f".sophon-upload-{upload}.tmp"
    dfd = open_dir(root, parts[:-1], create=not abort)
    try:
        name = parts[-1]
        if abort:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dfd)
            return {"aborted": True}
        if _is_link(dfd, name):
            raise PathError("path_outside_workspace",
                            f"{rel} is a symbolic link; links are not followed")
        flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        if offset == 0:
            flags |= os.O_CREAT | os.O_EXCL
        fd = os.open(tmp, flags, mode, dir_fd=dfd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size != offset:
                raise PathError("upload_conflict", f"the upload of {rel} was interfered with")
            view = memoryview(data)
            at = offset
            while view:
                n = os.pwrite(fd, view, at)
                view, at = view[n:], at + n
        finally:
            os.close(fd)
        if final:
            try:
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except IsADirectoryError as exc:
                raise PathError("is_a_directory", f"{rel} is a directory") from exc
    except BaseException:
        if not abort:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
        raise
    finally:
        os.close(dfd)
    return {"size": offset + len(data)}


def link(root: str, rel: str, target: str) -> dict:
    """A symbolic link at ``rel`` (its directories made), unless something is there
    already: what a workload put there is its own and stays."""
    parts = split(rel)
    if not parts:
        raise PathError("is_a_directory", "the workspace root is a directory")
    dfd = open_dir(root, parts[:-1], create=True)
    try:
        os.symlink(target, parts[-1], dir_fd=dfd)
        return {"created": True}
    except FileExistsError:
        return {"created": False}
    finally:
        os.close(dfd)


def tree(root: str, rel: str = "") -> dict:
    """Every entry under root/rel (not .git), depth first, capped."""
    start = open_dir(root, split(rel))
    entries: list[dict] = []
    truncated = False

    def walk(fd: int, prefix: str) -> None:
        nonlocal truncated
        with os.scandir(fd) as it:
            items = sorted(it, key=lambda e: e.name)
        for e in items:
            if len(entries) >= TREE_LIMIT:
                truncated = True
                return
            st = e.stat(follow_symlinks=False)
            path = prefix + e.name
            if stat.S_ISDIR(st.st_mode):
                if e.name in SKIP_DIRS:
                    continue
                entries.append({"path": path, "type": "dir", "size": 0, "mtime": st.st_mtime})
                try:
                    sub = os.open(e.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                  dir_fd=fd)
                except OSError:
                    continue
                try:
                    walk(sub, path + "/")
                finally:
                    os.close(sub)
            else:
                kind = ("symlink" if stat.S_ISLNK(st.st_mode)
                        else "file" if stat.S_ISREG(st.st_mode) else "other")
                entries.append({"path": path, "type": kind, "size": st.st_size,
                                "mtime": st.st_mtime})

    try:
        walk(start, "")
    finally:
        os.close(start)
    return {"entries": entries, "truncated": truncated}
