"""An imported archive is the importer's own data and nothing more: whatever its members
say (`..`, absolute paths, links to climb out through, a bomb), it is unpacked only
inside a staging box, and nothing lands on the host."""

from __future__ import annotations

import io
import os
import secrets
import shutil
import tarfile
import tempfile
from pathlib import Path

import httpx

from tests.conftest import LiveServer
from tests.security.helpers import client, live_server

SETTINGS = b'{"name": "tricky"}'


def tricky_archive(token: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(name: str, data: bytes = b"x", link: str | None = None,
                kind: bytes = tarfile.REGTYPE) -> None:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = kind, link
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        add("session.json", SETTINGS)
        add("project/ok.txt", b"fine\n")
        add(f"../../../../../tmp/dots-{token}")
        add(f"/tmp/absolute-{token}")
        add(f"project/../../../../tmp/inner-dots-{token}")
        add("project/up", link="/", kind=tarfile.SYMTYPE)
        add(f"project/up/tmp/through-link-{token}")
        add("project/hard", link="/etc/passwd", kind=tarfile.LNKTYPE)
    return buf.getvalue()


def test_an_archive_cannot_write_outside_the_staging_box(server: LiveServer,
                                                         http: httpx.Client) -> None:
    token = secrets.token_hex(6)
    r = http.post("/v1/sessions/import", content=tricky_archive(token),
                  headers={"Content-Type": "application/gzip"})
    assert r.status_code in (201, 400), r.text
    # Nothing with the token anywhere the server or the host could be reached.
    for root in ("/tmp", "/", str(server.data_dir)):
        for dirpath, dirnames, filenames in os.walk(root):
            if root != str(server.data_dir) and dirpath != root:
                dirnames[:] = []  # the top of /tmp and / only: where the names point
            dirnames[:] = [d for d in dirnames if not d.startswith("boxes")]
            assert not [f for f in filenames + dirnames if token in f], (dirpath, token)
    assert not list(server.data_dir.glob("boxes/g*"))  # the staging box is gone
    if r.status_code == 201:
        sid = r.json()["id"]
        out = http.post(f"/v1/sessions/{sid}/exec", json={"command": "cat ok.txt; ls -A"})
        assert "fine" in out.text
        # The host's /etc/passwd did not come along through the hard link.
        assert "root:x:0:0" not in http.post(f"/v1/sessions/{sid}/exec", json={
            "command": "cat hard 2>&1; true"}).text.replace("/etc/passwd", "")


def test_the_tricky_archive_escapes_a_naive_unpack() -> None:
    """The control: the archive above is a real attack. Unpacked on the host by a tool
    that trusts its members (tarfile without a filter), its `..`, absolute and
    through-a-link members land outside the directory it was unpacked into."""
    token = secrets.token_hex(6)
    escaped = [Path(f"/tmp/{kind}-{token}") for kind in ("dots", "absolute", "inner-dots",
                                                         "through-link")]
    top = Path(tempfile.mkdtemp(dir="/tmp"))
    scratch = top / "a"  # three levels down: every `..` member climbs to /tmp
    scratch.mkdir()
    try:
        with tarfile.open(fileobj=io.BytesIO(tricky_archive(token)), mode="r:gz") as tar:
            members = [m for m in tar.getmembers() if not m.islnk()]  # not /etc/passwd
            tar.extractall(scratch, members=members, filter="fully_trusted")
        assert [p.exists() for p in escaped] == [True, True, True, True]
    finally:
        for p in escaped:
            p.unlink(missing_ok=True)
        shutil.rmtree(top, ignore_errors=True)


def test_an_archive_larger_than_the_staging_disk_is_refused() -> None:
    """A gzip bomb: small on the wire, more than the staging box's disk once unpacked."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("session.json")
        info.size = len(SETTINGS)
        tar.addfile(info, io.BytesIO(SETTINGS))
        big = tarfile.TarInfo("project/zeros")
        big.size = 200 * 2**20  # past the 64 MiB disk below
        tar.addfile(big, _Zeros(big.size))
    assert len(buf.getvalue()) < 2 * 2**20
    with live_server({"SOPHON_BOX_DISK_MB": "64"}) as srv, \
            client(srv, srv.add_user()) as http:
        r = http.post("/v1/sessions/import", content=buf.getvalue(),
                      headers={"Content-Type": "application/gzip"})
        assert r.status_code == 400, r.text
        assert "it unpacks to more than a session's disk here" in r.json()["message"]
        assert http.get("/v1/sessions").json()["sessions"] == []
        assert not list(Path(srv.data_dir, "boxes").glob("g*"))


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n
