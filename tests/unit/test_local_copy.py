"""The server's copy of a repository under an admin's root: what a clone needs, no link
followed, nothing but files, directories and links, and never more than the disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sophon.errors import BadRequest
from sophon.sessions.local_copy import MAX_DEPTH, copy_repository


def test_only_the_git_directory_is_copied_links_stay_links(tmp_path: Path) -> None:
    src = tmp_path / "repo"
    (src / ".git" / "objects").mkdir(parents=True)
    (src / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (src / ".git" / "HEAD").chmod(0o600)
    (src / "work.txt").write_text("not committed\n")
    outside = tmp_path / "outside.txt"
    outside.write_text("past the root\n")
    (src / ".git" / "objects" / "link").symlink_to(outside)
    os.mkfifo(src / ".git" / "fifo")

    dest = tmp_path / "copies" / "one"
    copy_repository(str(src), dest, 1 << 20)
    assert (dest / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert (dest / ".git" / "HEAD").stat().st_mode & 0o777 == 0o644
    assert (dest / ".git").stat().st_mode & 0o777 == 0o755
    assert os.readlink(dest / ".git" / "objects" / "link") == str(outside)
    assert not (dest / ".git" / "fifo").exists() and not (dest / "work.txt").exists()
    assert (dest.parent.stat().st_mode & 0o777) == 0o711  # others reach, never list


def test_a_bare_repository_is_copied_whole(tmp_path: Path) -> None:
    src = tmp_path / "bare.git"
    (src / "refs").mkdir(parents=True)
    (src / "HEAD").write_text("ref: refs/heads/main\n")
    copy_repository(str(src), tmp_path / "c", 1 << 20)
    assert (tmp_path / "c" / "HEAD").is_file() and (tmp_path / "c" / "refs").is_dir()


def test_a_top_that_is_a_link_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "real" / ".git").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(BadRequest, match="changed while it was read"):
        copy_repository(str(tmp_path / "link"), tmp_path / "c", 1 << 20)


def test_more_than_the_disk_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "repo" / ".git"
    src.mkdir(parents=True)
    (src / "pack").write_bytes(b"x" * 5000)
    with pytest.raises(BadRequest, match="larger than a session's disk"):
        copy_repository(str(tmp_path / "repo"), tmp_path / "c", 4096)


def test_a_tree_nested_past_the_limit_is_refused(tmp_path: Path) -> None:
    deep = tmp_path / "repo" / ".git"
    deep.mkdir(parents=True)
    fd = os.open(deep, os.O_RDONLY)
    for _ in range(MAX_DEPTH + 2):  # relative steps: the path would outgrow PATH_MAX
        os.mkdir("d", dir_fd=fd)
        nxt = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    os.close(fd)
    with pytest.raises(BadRequest, match="nests directories"):
        copy_repository(str(tmp_path / "repo"), tmp_path / "c", 1 << 20)
