"""The door survives what a box or a host can do to it: a client that asks for a flood
and never reads it (the door holds a bounded amount, not the flood), and a host that
accepts and then says nothing (the connection ends after the idle timeout; other
connections go on meanwhile)."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import LiveServer, make_data_dir, wait_for
from tests.integration.egress_hosts import HOST, FileServer, free_port

IDLE = 2  # SOPHON_EGRESS_IDLE_TIMEOUT_SECONDS of the module's server


class Flood:
    """Answers any request with an endless body of zeros, as fast as it is taken."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sent = 0
        self.sock = socket.create_server((HOST, self.port))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._flood, args=(conn,), daemon=True).start()

    def _flood(self, conn: socket.socket) -> None:
        chunk = b"\0" * 65536
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\n")
            while True:
                conn.sendall(chunk)
                self.sent += len(chunk)
        except OSError:
            conn.close()


class Silent:
    """Accepts connections and never sends a byte."""

    def __init__(self) -> None:
        self.port = free_port()
        self.held: list[socket.socket] = []
        self.sock = socket.create_server((HOST, self.port))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[Flood, Silent, FileServer]]:
    flood, silent, files = Flood(), Silent(), FileServer()
    yield flood, silent, files
    flood.sock.close()
    silent.sock.close()
    files.close()


@pytest.fixture(scope="module")
def server(hosts: tuple[Flood, Silent, FileServer]) -> Iterator[LiveServer]:
    flood, silent, files = hosts
    opened = f"{HOST}:{flood.port},{HOST}:{silent.port},{files.addr}"
    path = make_data_dir()
    srv = LiveServer(path, env={"SOPHON_EGRESS_ALLOW_PRIVATE": opened,
                                "SOPHON_EGRESS_IDLE_TIMEOUT_SECONDS": str(IDLE)}).start()
    yield srv
    srv.stop()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def session(server: LiveServer, hosts: tuple[Flood, Silent, FileServer]
            ) -> Iterator[tuple[httpx.Client, str]]:
    flood, silent, files = hosts
    http = httpx.Client(base_url=server.url, timeout=120,
                        headers={"Authorization": f"Bearer {server.add_user()}"})
    r = http.post("/v1/sessions", json={"name": "robust", "network": {"allow": [
        f"{HOST}:{flood.port}", f"{HOST}:{silent.port}", files.addr]}})
    assert r.status_code == 201, r.text
    yield http, r.json()["id"]
    http.close()


def run(http: httpx.Client, sid: str, command: str, timeout: int = 60) -> str:
    r = http.post(f"/v1/sessions/{sid}/exec", json={"command": command, "timeout": timeout},
                  timeout=timeout + 30)
    r.raise_for_status()
    return "".join(json.loads(line).get("data", "") for line in r.text.splitlines()
                   if json.loads(line)["type"] == "exec_output")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


# Asks for the flood through the door and never reads a byte of the answer.
NEVER_READS = """
import os, socket, time
s = socket.create_connection(("127.0.0.1", 3128))
s.sendall(b"GET http://{addr}/ HTTP/1.1\\r\\nHost: {addr}\\r\\n\\r\\n")
print("asked", flush=True)
time.sleep({hold})
print("done")
"""


def test_a_client_that_never_reads_costs_the_door_a_bounded_buffer(
        server: LiveServer, hosts: tuple[Flood, Silent, FileServer],
        session: tuple[httpx.Client, str]) -> None:
    flood, _, files = hosts
    http, sid = session
    assert server.proc is not None
    run(http, sid, "true")  # the box is up before the baseline
    before = rss_kib(server.proc.pid)
    script = NEVER_READS.format(addr=f"{HOST}:{flood.port}", hold=6)
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(run, http, sid, f"python3 - <<'EOF'\n{script}EOF")
        # The flood is stopped by flow control: what it got out stops growing.
        wait_for(lambda: flood.sent > 0, 20, what="the flood to start")
        time.sleep(1)  # not a wait for a state: the window in which growth would show
        sent = flood.sent
        time.sleep(1)
        assert flood.sent - sent < 8 * 2**20, "the door kept reading a flood nobody takes"
        # Meanwhile other connections of the same box go on (control).
        assert run(http, sid, f"curl -s {files.url}/x") == "hello from the test host\n"
        grown = rss_kib(server.proc.pid) - before
        assert held.result(60).endswith("done\n")
    assert grown < 64 * 1024, f"the server grew by {grown} KiB"


def test_a_host_that_never_answers_is_let_go_after_the_idle_timeout(
        hosts: tuple[Flood, Silent, FileServer], session: tuple[httpx.Client, str]) -> None:
    _, silent, files = hosts
    http, sid = session
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        waiting = pool.submit(run, http, sid, f"curl -s -m 60 -o /dev/null -w '%{{http_code}}' "
                                              f"http://{HOST}:{silent.port}/; echo \" $?\"")
        # The door answers other requests while that one hangs (control).
        assert run(http, sid, f"curl -s {files.url}/x") == "hello from the test host\n"
        out = waiting.result(60)
    took = time.monotonic() - started
    # curl saw the connection end (no answer: code 000, exit 52 "empty reply") after
    # about the idle timeout, not its own 60 s limit.
    assert out.split() == ["000", "52"], out
    assert IDLE - 0.5 <= took < 30, took
