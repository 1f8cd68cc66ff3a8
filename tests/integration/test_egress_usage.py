"""Network usage per thread: what an execution API thread moved through the egress door
shows in the thread list, beside the session's in its usage."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import LiveServer, make_data_dir, wait_for
from tests.integration.egress_hosts import FileServer


@pytest.fixture(scope="module")
def host() -> Iterator[FileServer]:
    srv = FileServer()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def server(host: FileServer) -> Iterator[LiveServer]:
    path = make_data_dir()
    srv = LiveServer(path, env={"SOPHON_EGRESS_ALLOW_PRIVATE": host.addr}).start()
    yield srv
    srv.stop()
    shutil.rmtree(path, ignore_errors=True)


def test_a_threads_traffic_is_metered_in_the_thread_list(server: LiveServer,
                                                         host: FileServer) -> None:
    http = httpx.Client(base_url=server.url, timeout=60,
                        headers={"Authorization": f"Bearer {server.add_user()}"})
    # The execution API's threads reach the package registries and the hosts of the
    # user's connectors marked for it: an http connector opens the test host.
    r = http.post("/v1/connectors", json={"name": "files", "type": "http", "host": host.addr,
                                          "header": "X-Key", "value": "key-0123456",
                                          "execute": True})
    assert r.status_code == 201, r.text
    code = f"curl -sf {host.url}/x && curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.2:9/"
    r = http.post("/v1/sandbox/execute", json={"code": code, "language": "bash",
                                               "thread_id": "metered", "timeout": 30})
    assert r.status_code == 200, r.text
    assert "hello from the test host" in r.json()["stdout"]
    assert r.json()["stdout"].endswith("403")  # an unlisted port: refused

    def network() -> dict[str, int] | None:
        threads = http.get("/v1/threads").json()["threads"]
        net = next(t for t in threads if t["thread_id"] == "metered")["network"]
        return net if net["connections"] and net["denied"] else None

    net = wait_for(network, 10, what="the thread's network usage")
    assert net["connections"] == 1 and net["denied"] == 1  # type: ignore[index]
    assert net["bytes_in"] > len("hello from the test host")  # type: ignore[index]
    assert net["bytes_out"] > 0  # type: ignore[index]

    # Deleted with its thread: what the thread moved is not kept after it.
    def rows() -> int:
        with sqlite3.connect(server.data_dir / "sophon.db") as db:
            return int(db.execute("SELECT count(*) FROM network_usage").fetchone()[0])

    wait_for(rows, 10, what="the usage row to be written")
    assert http.delete("/v1/threads/metered").status_code == 204
    assert rows() == 0
