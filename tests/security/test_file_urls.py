"""Signed file URLs point at the server's configured address (SOPHON_PUBLIC_URL), never at
whatever Host header the caller sent: a URL handed on to someone else must not be a
link to an attacker's host that carries a valid token."""

from __future__ import annotations

import shutil

import httpx

from tests.conftest import LiveServer, make_data_dir
from tests.security.helpers import client, thread_name

EVIL = "evil.example"


def signed(http: httpx.Client, kind: str, thread: str, path: str, **extra: object) -> str:
    r = http.post(f"/v1/files/{kind}_url", json={"source": "thread", "id": thread,
                                                  "path": path, **extra},
                  headers={"Host": EVIL, "X-Forwarded-Host": EVIL})
    assert r.status_code == 200, r.text
    url = r.json()["url"]
    assert EVIL not in url
    return str(url)


def round_trip(http: httpx.Client, base: str) -> None:
    t = thread_name("urls")
    put = signed(http, "upload", t, "a.txt", content_length=5)
    get = signed(http, "download", t, "a.txt")
    for url in (put, get):
        assert url.startswith(base + "/v1/files/blob/"), url
    # Control: the URLs work, with no API key.
    assert httpx.put(put, content=b"hello", timeout=30).status_code == 200
    got = httpx.get(get, timeout=30)
    assert got.status_code == 200 and got.content == b"hello"


def test_signed_urls_use_the_default_address_whatever_the_host_header(
        http: httpx.Client, server: LiveServer) -> None:
    round_trip(http, server.url)  # http://127.0.0.1:<port>: SOPHON_HOST and the port


def test_signed_urls_use_sophon_public_url() -> None:
    data_dir = make_data_dir()
    srv = LiveServer(data_dir)
    base = f"http://localhost:{srv.port}/"  # another name for this server, with a slash
    srv.env["SOPHON_PUBLIC_URL"] = base
    try:
        srv.start()
        with client(srv, srv.add_user()) as http:
            round_trip(http, base.rstrip("/"))
    finally:
        srv.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
