"""The /etc a box without an image binds (box/etc_fs.py): made once, read-only, and made
again when a host file it copies changes."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from sophon.box.etc_fs import EtcFs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="it mounts a tmpfs: root only")


@pytest.fixture
def layout(tmp_path: Path) -> tuple[EtcFs, Path]:
    host = tmp_path / "host-etc"
    (host / "ssl").mkdir(parents=True)
    (host / "services").write_text("one\n")
    generated = tmp_path / "generated"
    generated.mkdir()
    (generated / "passwd").write_text("user:x:1000:1000::/home/user:/bin/bash\n")
    fs = EtcFs({"passwd": generated / "passwd"},
               (str(host / "services"), str(host / "missing")),
               (str(host / "ssl"), str(host / "alternatives")),
               run_dir=tmp_path / "run", host_etc=str(host))
    yield fs, host
    fs.close()


def test_the_copy_holds_every_file_read_only(layout: tuple[EtcFs, Path]) -> None:
    fs, _ = layout
    path = fs.current()
    assert path is not None and os.path.ismount(path)
    assert (path / "passwd").read_text().startswith("user:x:1000")
    assert (path / "services").read_text() == "one\n"
    assert (path / "ssl").is_dir() and not list((path / "ssl").iterdir())  # a mount point
    assert not (path / "missing").exists() and not (path / "alternatives").exists()
    with pytest.raises(OSError) as err:
        (path / "passwd").write_text("root::0:0::/:/bin/sh\n")
    assert err.value.errno == errno.EROFS
    assert fs.provides() == {"/etc/passwd"}


def test_a_changed_host_file_is_copied_again_and_an_unchanged_one_is_not(
    layout: tuple[EtcFs, Path]
) -> None:
    fs, host = layout
    first = fs.current()
    assert first is not None
    inode = (first / "services").stat().st_ino
    assert fs.current() == first and (first / "services").stat().st_ino == inode
    (host / "services").write_text("two, longer\n")
    again = fs.current()
    assert again is not None and (again / "services").read_text() == "two, longer\n"


def test_files_added_later_are_in_the_next_copy(layout: tuple[EtcFs, Path],
                                                 tmp_path: Path) -> None:
    fs, _ = layout
    assert fs.current() is not None
    ca = tmp_path / "ca.pem"
    ca.write_text("CA\n")
    fs.add({"/etc/sophon/ca.pem": ca})
    path = fs.current()
    assert path is not None and (path / "sophon" / "ca.pem").read_text() == "CA\n"
    assert "/etc/sophon/ca.pem" in fs.provides()
    fs.close()
    assert not os.path.ismount(path)
