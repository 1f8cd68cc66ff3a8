"""Nodes on one PostgreSQL database: each registers itself and lists the others (alive
while they beat, not once stopped or silent), and a session's events appended on one node
reach a stream open on another at once (LISTEN/NOTIFY), in order, with no gap and no
duplicate; a stream that lost its notifications still gets every event from the table."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sophon.client import Client
from tests.conftest import LiveServer, make_data_dir, wait_for
from tests.e2e.cli_support import cli_env, sophon
from tests.integration.postgres_support import NEEDS_POSTGRES
from tests.integration.session_support import sh
from tests.integration.test_session_events import SSEStream

pytestmark = NEEDS_POSTGRES

FAST = {"SOPHON_NODE_HEARTBEAT_SECONDS": "0.2", "SOPHON_NODE_LEASE_SECONDS": "1.5"}


@pytest.fixture
def nodes(postgres_url: str) -> Iterator[tuple[LiveServer, LiveServer]]:
    env = {"SOPHON_DATABASE_URL": postgres_url, **FAST}
    a = LiveServer(make_data_dir(), env=env).start()
    b = LiveServer(make_data_dir(), env=env).start()
    try:
        yield a, b
    finally:
        for srv in (a, b):
            srv.stop()
            shutil.rmtree(srv.data_dir, ignore_errors=True)


def cluster(srv: LiveServer, key: str) -> dict:
    r = httpx.get(f"{srv.url}/v1/cluster", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_nodes_list_each_other_and_a_stopped_one_is_not_alive(
        nodes: tuple[LiveServer, LiveServer], postgres_url: str, tmp_path: Path) -> None:
    a, b = nodes
    admin = a.add_user("admin", database_url=postgres_url)
    user = a.add_user(database_url=postgres_url)
    on_a, on_b = cluster(a, admin), cluster(b, admin)
    assert on_a["database"] == "postgresql" and on_a["node"] != on_b["node"]
    assert [n["id"] for n in on_a["nodes"]] == [n["id"] for n in on_b["nodes"]] == [
        on_a["node"], on_b["node"]]
    assert all(n["alive"] for n in on_b["nodes"])
    assert [n["url"] for n in on_b["nodes"]] == [a.url, b.url]
    assert [n["this"] for n in on_b["nodes"]] == [False, True]
    assert httpx.get(f"{a.url}/healthz").json()["node"] == {"id": on_a["node"], "url": a.url}
    # Only admins see the cluster.
    assert httpx.get(f"{b.url}/v1/cluster",
                     headers={"Authorization": f"Bearer {user}"}).status_code == 403
    # The SDK and the CLI show the same.
    with Client(b.url, admin) as sdk:
        assert [n["id"] for n in sdk.cluster()["nodes"]] == [on_a["node"], on_b["node"]]
    listed = sophon(cli_env(tmp_path, SOPHON_URL=b.url, SOPHON_API_KEY=admin), "cluster")
    assert listed.returncode == 0, listed.stderr
    assert f"{on_b['node']} *" in listed.stdout and on_a["node"] in listed.stdout
    assert listed.stdout.count("alive") == 2, listed.stdout
    refused = sophon(cli_env(tmp_path, SOPHON_URL=b.url, SOPHON_API_KEY=user), "cluster")
    assert refused.returncode == 1 and "SOPHON_ADMIN_USERS" in refused.stderr, refused
    # Heartbeats carry the load.
    beat = cluster(b, admin)["nodes"][0]["heartbeat_at"]
    wait_for(lambda: cluster(b, admin)["nodes"][0]["heartbeat_at"] != beat, 5, 0.1,
             "a heartbeat")
    # A node stopped cleanly says so; one killed is taken for dead after the lease.
    a.stop()
    [gone] = [n for n in cluster(b, admin)["nodes"] if n["id"] == on_a["node"]]
    assert not gone["alive"] and gone["stopped_at"]
    a.start()
    again = cluster(a, admin)["node"]
    assert again != on_a["node"]  # a new process, a new node
    a.kill()
    wait_for(lambda: not [n for n in cluster(b, admin)["nodes"]
                          if n["id"] == again and n["alive"]], 10, 0.2,
             "the killed node to be taken for dead")


def test_events_appended_on_one_node_stream_from_another(
        nodes: tuple[LiveServer, LiveServer], postgres_url: str) -> None:
    a, b = nodes
    key = a.add_user(database_url=postgres_url)
    with httpx.Client(base_url=a.url, timeout=60,
                      headers={"Authorization": f"Bearer {key}"}) as http:
        sid = http.post("/v1/sessions", json={"name": "shared"}).json()["id"]
        with SSEStream(b, key, sid) as far, SSEStream(a, key, sid) as near:
            sh(http, sid, "for i in 1 2 3 4 5; do echo line-$i; done")
            last = http.get(f"/v1/sessions/{sid}/events",
                            headers={"Accept": "application/json"}).json()["last_seq"]
            started = time.monotonic()
            far.wait_seq(last)
            took = time.monotonic() - started
            near.wait_seq(last)
            # The same events on both nodes, each once, in order.
            assert far.seqs == near.seqs == list(range(1, last + 1))
            assert far.data == near.data
            # Woken by the notification, not by a poll.
            assert took < 1.0, took
            # Another node's append on a session with its next seq taken here too.
            sh(http, sid, "echo more")
            later = http.get(f"/v1/sessions/{sid}/events",
                             headers={"Accept": "application/json"}).json()["last_seq"]
            far.wait_seq(later)
            assert far.seqs == list(range(1, later + 1))
