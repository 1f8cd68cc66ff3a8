"""Threads end: DELETE /v1/threads/{id} frees a thread's files, disk image and uid; an
unused thread expires (SOPHON_THREAD_EXPIRY_DAYS); old execution records are pruned
(SOPHON_EXECUTION_RETENTION_DAYS)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from sophon.client import AsyncClient, Client, NotFoundError
from tests.conftest import LiveServer, wait_for
from tests.security.helpers import cancel, client, execute, live_server, start_async

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="per-box uids need a root server")


def box_of(srv: LiveServer, thread_id: str) -> Path | None:
    with sqlite3.connect(srv.data_dir / "sophon.db") as db:
        row = db.execute("SELECT id FROM threads WHERE name = ?", (thread_id,)).fetchone()
    return None if row is None else srv.data_dir / "boxes" / row[0]


def names(http: httpx.Client) -> list[str]:
    resp = http.get("/v1/threads")
    assert resp.status_code == 200, resp.text
    return [t["thread_id"] for t in resp.json()["threads"]]


@needs_root
def test_deleting_a_thread_frees_its_uid_and_its_disk() -> None:
    env = {"SOPHON_BOX_UID_COUNT": "1", "SOPHON_BOX_POOL_SIZE": "0"}
    with live_server(env) as srv, client(srv, srv.add_user()) as http:
        assert execute(http, "echo kept > ~/f.txt", thread_id="t1")["exit_code"] == 0
        box = box_of(srv, "t1")
        assert box is not None and (box / "disk.img").exists() and (box / "uid").exists()
        assert names(http) == ["t1"]
        # The only uid is the thread's: no other box can start ...
        assert http.post("/v1/sandbox/execute", json={"code": "true", "language": "bash"}
                         ).status_code == 503

        resp = http.delete("/v1/threads/t1")
        assert resp.status_code == 204, resp.text
        assert not box.exists()  # files, image and uid file
        assert names(http) == [] and box_of(srv, "t1") is None
        # ... until the thread is gone: its uid is free again, and the same name is a
        # new, empty thread.
        got = execute(http, "ls ~/f.txt 2>&1 || echo none", thread_id="t1")
        assert got["stdout"].endswith("none\n"), got


def test_a_thread_is_deleted_only_by_its_owner(server: LiveServer, http: httpx.Client) -> None:
    assert execute(http, "echo mine > ~/m.txt", thread_id="owned")["exit_code"] == 0
    with client(server, server.add_user()) as other:
        assert execute(other, "true", thread_id="theirs")["exit_code"] == 0
        for who, name in ((other, "owned"), (http, "theirs"), (http, "no-such-thread")):
            resp = who.delete(f"/v1/threads/{name}")
            assert resp.status_code == 404, resp.text
            assert resp.json()["error"] == "not_found"
        assert names(other) == ["theirs"]
    # Control: the owner's thread is untouched, and the owner can delete it.
    assert execute(http, "cat ~/m.txt", thread_id="owned")["stdout"] == "mine\n"
    assert http.delete("/v1/threads/owned").status_code == 204


def test_a_busy_thread_is_not_deleted(http: httpx.Client) -> None:
    trace = start_async(http, "sleep 30", thread_id="busy", timeout=60)
    wait_for(lambda: http.get(f"/v1/executions/{trace}").json()["status"] == "running",
             20, 0.05, "the execution to run")
    resp = http.delete("/v1/threads/busy")
    assert resp.status_code == 409, resp.text
    assert resp.json()["error"] == "thread_busy"
    cancel(http, trace)
    wait_for(lambda: http.delete("/v1/threads/busy").status_code == 204, 20, 0.1,
             "the thread to be deleted once idle")
    assert names(http) == []


def set_back(srv: LiveServer, sql: str, *args: object) -> None:
    with sqlite3.connect(srv.data_dir / "sophon.db", timeout=10) as db:
        db.execute(sql, args)


def test_unused_threads_expire_and_old_execution_records_are_pruned() -> None:
    env = {"SOPHON_HOUSEKEEPING_SECONDS": "0.2", "SOPHON_THREAD_EXPIRY_DAYS": "30",
           "SOPHON_EXECUTION_RETENTION_DAYS": "30", "SOPHON_BOX_POOL_SIZE": "0"}
    with live_server(env) as srv, client(srv, srv.add_user()) as http:
        for t in ("old", "recent"):
            assert execute(http, "echo x > ~/x", thread_id=t)["exit_code"] == 0
        old_box = box_of(srv, "old")
        assert old_box is not None and old_box.exists()
        long_ago = (datetime.now(UTC) - timedelta(days=40)).strftime("%Y-%m-%d %H:%M:%S.%f")
        set_back(srv, "UPDATE threads SET last_used_at = ? WHERE name = 'old'", long_ago)

        wait_for(lambda: box_of(srv, "old") is None and not old_box.exists(), 20, 0.1,
                 "the unused thread to expire")
        assert names(http) == ["recent"]  # control: a thread in use stays
        assert execute(http, "cat ~/x", thread_id="recent")["stdout"] == "x\n"

        traces = [http.post("/v1/sandbox/execute", json={"code": f"echo {i}",
                                                          "language": "bash"}
                            ).headers["x-trace-id"] for i in range(2)]
        set_back(srv, "UPDATE executions SET created_at = ? WHERE trace_id = ?",
                 long_ago, traces[0])
        wait_for(lambda: not stored(srv, traces[0]), 20, 0.1,
                 "the old execution record to be pruned")
        assert stored(srv, traces[1])  # control: a recent record stays


def stored(srv: LiveServer, trace_id: str) -> bool:
    with sqlite3.connect(srv.data_dir / "sophon.db", timeout=10) as db:
        return db.execute("SELECT 1 FROM executions WHERE trace_id = ?",
                          (trace_id,)).fetchone() is not None


def cli(srv: LiveServer, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SOPHON_URL": srv.url, "SOPHON_API_KEY": key}
    return subprocess.run([sys.executable, "-m", "sophon.cli", "sandbox", "threads", *args],
                          env=env, capture_output=True, text=True, timeout=60)


def test_threads_from_the_cli_and_the_sdk(server: LiveServer, api_key: str,
                                          http: httpx.Client) -> None:
    assert execute(http, "true", thread_id="cli-t")["exit_code"] == 0
    listed = cli(server, api_key, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [t["thread_id"] for t in json.loads(listed.stdout)] == ["cli-t"]
    gone = cli(server, api_key, "rm", "cli-t", "--yes")
    assert gone.returncode == 0 and "deleted cli-t" in gone.stdout, gone.stderr
    missing = cli(server, api_key, "rm", "cli-t", "--yes")
    assert missing.returncode != 0 and "no thread 'cli-t'" in missing.stderr

    async def with_async_client() -> list[str]:
        async with AsyncClient(server.url, api_key) as client:
            await client.execute("print(1)", thread_id="sdk-t")
            before = [t["thread_id"] for t in await client.list_threads()]
            await client.delete_thread("sdk-t")
            return before + [t["thread_id"] for t in await client.list_threads()]

    assert asyncio.run(with_async_client()) == ["sdk-t"]
    with Client(server.url, api_key) as client, pytest.raises(NotFoundError):
        client.delete_thread("sdk-t")


def test_many_new_threads_at_once_all_run() -> None:
    """More new threads at once than the store has connections (SQLAlchemy's pool: 5 + 10
    overflow): each must give its connection back before it is checked against the
    user's limits, which read the store too, or the pool runs dry and requests fail."""
    n = 24
    env = {"SOPHON_USER_MAX_BOXES": "0", "SOPHON_USER_MAX_CONCURRENT_EXECUTIONS": "0",
           "SOPHON_BOX_POOL_SIZE": "0"}
    with live_server(env) as srv, client(srv, srv.add_user()) as http:
        def one(i: int) -> httpx.Response:
            return http.post("/v1/sandbox/execute", json={
                "code": f"echo {i}", "language": "bash", "thread_id": f"many-{i}"})

        with ThreadPoolExecutor(n) as pool:
            answers = list(pool.map(one, range(n)))
        assert [(r.status_code, r.json().get("stdout")) for r in answers] == [
            (200, f"{i}\n") for i in range(n)]
        assert len(names(http)) == n


def test_a_commit_in_a_thread_has_an_identity_the_user_can_replace(
        server: LiveServer, api_key: str) -> None:
    with Client(server.url, api_key) as c:
        made = c.execute("cd ~ && git init -q repo && cd repo && git commit -q --allow-empty "
                         "-m first && git log --format='%an <%ae>'", language="bash",
                         thread_id="ident")
        assert made.exit_code == 0, made.stderr
        assert made.stdout.strip() == "Sophon <sophon@localhost>"
        mine = c.execute("cd ~/repo && git config --global user.name Ada && git config "
                         "--global user.email ada@example.com && git commit -q --allow-empty "
                         "-m second && git log -1 --format='%an <%ae>'", language="bash",
                         thread_id="ident")
        assert mine.stdout.strip() == "Ada <ada@example.com>", mine.stderr
