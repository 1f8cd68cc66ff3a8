"""A server behind an outbound proxy (HTTPS_PROXY/HTTP_PROXY in its environment): the
egress door decides as always, then reaches what it allowed through that proxy, with
the proxy's credentials; what it refuses never reaches the proxy."""

from __future__ import annotations

import json
import select
import shutil
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.conftest import LiveServer, make_data_dir
from tests.integration.egress_hosts import HOST, FileServer

NAME = "files.example.test"  # resolves nowhere: only the proxy knows it


class _Proxy(BaseHTTPRequestHandler):
    """Answers a plain request itself; tunnels a CONNECT to the test file server."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.seen.append(("GET", self.path, self.headers.get("Proxy-Authorization")))  # type: ignore[attr-defined]
        body = f"via proxy {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_CONNECT(self) -> None:
        self.server.seen.append(("CONNECT", self.path, self.headers.get("Proxy-Authorization")))  # type: ignore[attr-defined]
        upstream = socket.create_connection((HOST, self.server.files_port))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()
        conns = [self.connection, upstream]
        while True:
            ready, _, _ = select.select(conns, [], [], 10)
            if not ready:
                break
            for c in ready:
                data = c.recv(65536)
                if not data:
                    upstream.close()
                    return
                (upstream if c is self.connection else self.connection).sendall(data)


@pytest.fixture(scope="module")
def files() -> Iterator[FileServer]:
    srv = FileServer()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def proxy(files: FileServer) -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer((HOST, 0), _Proxy)
    httpd.daemon_threads = True
    httpd.seen = []  # type: ignore[attr-defined]
    httpd.files_port = files.port  # type: ignore[attr-defined]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()


@pytest.fixture(scope="module")
def server(proxy: ThreadingHTTPServer) -> Iterator[LiveServer]:
    path = make_data_dir()
    url = f"http://door:s3cret@{HOST}:{proxy.server_address[1]}"
    srv = LiveServer(path, env={"HTTP_PROXY": url, "HTTPS_PROXY": url}).start()
    yield srv
    srv.stop()
    shutil.rmtree(path, ignore_errors=True)


def run(http: httpx.Client, sid: str, command: str) -> str:
    r = http.post(f"/v1/sessions/{sid}/exec", json={"command": command, "timeout": 60})
    r.raise_for_status()
    return "".join(json.loads(line).get("data", "") for line in r.text.splitlines()
                   if json.loads(line)["type"] == "exec_output")


def test_allowed_traffic_goes_through_the_servers_proxy(server: LiveServer,
                                                        proxy: ThreadingHTTPServer) -> None:
    http = httpx.Client(base_url=server.url, timeout=60,
                        headers={"Authorization": f"Bearer {server.add_user()}"})
    r = http.post("/v1/sessions", json={"name": "p", "network": {"allow": [NAME]}})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    seen = proxy.seen  # type: ignore[attr-defined]
    auth = "Basic ZG9vcjpzM2NyZXQ="  # door:s3cret, from the proxy URL

    # Plain HTTP: the door sends the request on to the proxy in absolute form.
    assert run(http, sid, f"curl -s http://{NAME}/x") == f"via proxy http://{NAME}/x"
    assert seen[-1] == ("GET", f"http://{NAME}/x", auth)
    # A tunnel: the door's CONNECT to the proxy carries the name (the proxy resolves it).
    out = run(http, sid, f"curl -sS -p http://{NAME}/x 2>&1")
    assert out == "hello from the test host\n"
    assert seen[-1] == ("CONNECT", f"{NAME}:80", auth)

    # Refused by the door, never sent to the proxy: an unlisted name, a loopback address.
    before = len(seen)
    code = "curl -s -o /dev/null -w '%{http_code} '"
    out = run(http, sid, f"{code} http://other.example.test/; "
                         f"{code} http://127.0.0.5:{server.port}/healthz")
    assert out.split() == ["403", "403"]
    assert len(seen) == before
