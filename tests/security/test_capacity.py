"""Capacity limits: when no box can be had (uids, open files, the memory budget, the start
queue), every route that needs one answers 503 `sandbox_unavailable` with Retry-After and
a message naming the limit, never an execution that "failed"; within the limits, work
goes on."""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest

from sophon.testing import ModelServer
from tests.conftest import LiveServer, model_env, wait_for
from tests.security.helpers import client, execute, live_server, thread_name

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="per-box uids need a root server")

NDJSON = {"Accept": "application/x-ndjson"}
ASYNC = {"Prefer": "respond-async"}
MODES = {"inline": {}, "stream": NDJSON, "async": ASYNC}


def assert_unavailable(resp: httpx.Response, setting: str) -> None:
    assert resp.status_code == 503, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["error"] == "sandbox_unavailable", resp.text
    assert setting in resp.json()["message"], resp.text
    assert int(resp.headers["retry-after"]) > 0


def post_execute(http: httpx.Client, mode: str, thread_id: str | None = None,
                 code: str = "echo ok") -> httpx.Response:
    body: dict[str, Any] = {"code": code, "language": "bash", "timeout": 20}
    if thread_id is not None:
        body["thread_id"] = thread_id
    return http.post("/v1/sandbox/execute", json=body, headers=MODES[mode])


def test_out_of_uids_is_a_503_in_every_mode_of_execute_and_session_create() -> None:
    env = {"SOPHON_BOX_UID_COUNT": "1", "SOPHON_BOX_POOL_SIZE": "0"}
    with live_server(env) as srv, client(srv, srv.add_user()) as http:
        # Control: within the limit, a thread runs (and holds the only uid).
        assert execute(http, "echo first", thread_id="holder")["stdout"] == "first\n"
        for mode in MODES:
            assert_unavailable(post_execute(http, mode), "SOPHON_BOX_UID_COUNT")
            assert_unavailable(post_execute(http, mode, thread_name("new")),
                               "SOPHON_BOX_UID_COUNT")
        assert_unavailable(http.post("/v1/sessions", json={"name": "s"}),
                           "SOPHON_BOX_UID_COUNT")
        # The files API: a thread made by an upload URL has no box yet; listing needs one.
        up = http.post("/v1/files/upload_url", json={"source": "thread", "id": "by-files",
                                                     "path": "a.txt", "content_length": 1})
        assert up.status_code == 200, up.text
        assert_unavailable(http.post("/v1/files/list", json={
            "source": "thread", "id": "by-files", "path": ""}), "SOPHON_BOX_UID_COUNT")
        assert [t["thread_id"] for t in http.get("/v1/threads").json()["threads"]] == [
            "by-files", "holder"]
        # The thread that has the uid still works, in every mode.
        assert execute(http, "echo again", thread_id="holder")["stdout"] == "again\n"
        stream = post_execute(http, "stream", "holder")
        assert stream.status_code == 200 and b'"stdout"' in stream.content


def test_the_memory_budget_admits_as_many_boxes_as_it_holds() -> None:
    # Room for two boxes of 512 MiB.
    env = {"SOPHON_BOX_MEMORY_BUDGET_MB": "1024", "SOPHON_BOX_POOL_SIZE": "0",
           "SOPHON_BOX_MEMORY_MB": "512"}
    with live_server(env) as srv, client(srv, srv.add_user()) as http:
        for t in ("mem-a", "mem-b"):  # control: within the budget
            assert execute(http, "echo up", thread_id=t)["exit_code"] == 0
        for mode in MODES:
            assert_unavailable(post_execute(http, mode, "mem-c"),
                               "SOPHON_BOX_MEMORY_BUDGET_MB")
        assert_unavailable(post_execute(http, "inline"), "SOPHON_BOX_MEMORY_BUDGET_MB")
        # An awake thread is no new box: it still runs.
        assert execute(http, "echo still", thread_id="mem-a")["stdout"] == "still\n"
        # A box stopped makes room.
        assert http.delete("/v1/threads/mem-b").status_code == 204
        assert execute(http, "echo in", thread_id="mem-c")["stdout"] == "in\n"


def burst(http: httpx.Client, n: int) -> list[httpx.Response]:
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda i: post_execute(http, "inline", code=f"echo {i}"),
                             range(n)))


def test_starts_beyond_the_concurrency_cap_wait_their_turn() -> None:
    env = {"SOPHON_BOX_START_CONCURRENCY": "1", "SOPHON_BOX_POOL_SIZE": "0"}
    with live_server(env) as srv, client(srv, srv.add_user()) as http:
        got = burst(http, 6)
        assert [r.status_code for r in got] == [200] * 6, [r.text for r in got]
        assert sorted(r.json()["stdout"] for r in got) == [f"{i}\n" for i in range(6)]


def test_a_start_that_waits_too_long_for_its_turn_is_a_503() -> None:
    env = {"SOPHON_BOX_START_CONCURRENCY": "1", "SOPHON_BOX_START_WAIT_SECONDS": "0",
           "SOPHON_BOX_POOL_SIZE": "0"}
    with live_server(env) as srv, client(srv, srv.add_user()) as http:
        got = burst(http, 6)
        refused = [r for r in got if r.status_code != 200]
        assert refused, "every start of the burst got its turn at once"
        for r in refused:
            assert_unavailable(r, "SOPHON_BOX_START_CONCURRENCY")
        # Control: those that got a turn ran, and the server goes on.
        assert all(r.json()["success"] for r in got if r.status_code == 200)
        assert execute(http, "echo after")["stdout"] == "after\n"


@contextlib.contextmanager
def server_with_open_files(soft: int, hard: int,
                           env: dict[str, str]) -> Iterator[LiveServer]:
    """A server started with these open-file limits (set in the child only)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    # Its own process (not forked from the test worker's zygote), which Popen starts.
    with mock.patch.object(LiveServer, "forked", False), \
            mock.patch("tests.conftest.subprocess.Popen",
                       functools.partial(subprocess.Popen, preexec_fn=limit)), \
            live_server(env) as srv:
        yield srv


def limits_of(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files line")


def started(srv: LiveServer) -> int:
    assert srv.proc is not None
    return srv.proc.pid


def test_the_server_raises_its_open_file_limit_to_the_hard_limit() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard <= 1024:
        pytest.skip("the hard limit leaves nothing to raise")
    with server_with_open_files(1024, hard, {"SOPHON_BOX_POOL_SIZE": "0"}) as srv:
        assert limits_of(started(srv)) == (hard, hard)
        # Control: a process started the same way keeps the soft limit it was given.
        probe = subprocess.run(["sh", "-c", "ulimit -Sn"], capture_output=True, text=True,
                               preexec_fn=lambda: resource.setrlimit(
                                   resource.RLIMIT_NOFILE, (1024, hard)))
        assert probe.stdout.strip() == "1024"


def test_out_of_open_files_is_a_503_that_says_so() -> None:
    env = {"SOPHON_BOX_POOL_SIZE": "0", "SOPHON_USER_MAX_BOXES": "1000"}  # fds run out first
    with server_with_open_files(200, 200, env) as srv, \
            client(srv, srv.add_user()) as http:
        assert limits_of(started(srv)) == (200, 200)
        assert execute(http, "echo one", thread_id="fd-0")["exit_code"] == 0  # control

        def next_refused() -> httpx.Response | None:
            r = post_execute(http, "inline", thread_name("fd"))
            assert r.status_code in (200, 503), r.text
            if r.status_code == 200:
                assert r.json()["success"], r.text
                return None
            return r

        refused = wait_for(next_refused, 120, 0, "a start to run out of open files")
        assert isinstance(refused, httpx.Response)
        assert_unavailable(refused, "open-file limit")
        # The boxes already running still answer.
        assert execute(http, "echo two", thread_id="fd-0")["stdout"] == "two\n"


def test_waking_a_session_past_the_memory_budget_is_a_503_up_front() -> None:
    # Room for one box: a sleeping session cannot wake while a thread holds it.
    env = {"SOPHON_BOX_MEMORY_BUDGET_MB": "512", "SOPHON_BOX_MEMORY_MB": "512",
           "SOPHON_BOX_POOL_SIZE": "0", "SOPHON_SESSION_IDLE_SECONDS": "1",
           "SOPHON_IDLE_CHECK_SECONDS": "0.2"}
    with ModelServer() as model, live_server({**env, **model_env(model.url)}) as srv, \
            client(srv, srv.add_user()) as http:
        created = http.post("/v1/sessions", json={"name": "asleep"})
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        wait_for(lambda: http.get(f"/v1/sessions/{sid}").json()["status"] == "sleeping",
                 30, 0.1, "the session to fall asleep")
        holder = thread_name("holder")
        assert execute(http, "true", thread_id=holder)["exit_code"] == 0
        # Both answer before anything starts: no 200 stream with a failed exec, no turn.
        assert_unavailable(http.post(f"/v1/sessions/{sid}/exec", json={"command": "true"}),
                           "SOPHON_BOX_MEMORY_BUDGET_MB")
        assert_unavailable(http.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"}),
                           "SOPHON_BOX_MEMORY_BUDGET_MB")
        events = http.get(f"/v1/sessions/{sid}/events",
                          headers={"Accept": "application/json"}).json()["events"]
        assert not any(e["type"] in ("exec_start", "user") for e in events)
        # Control: once the thread's box is gone, the session wakes for its exec.
        assert http.delete(f"/v1/threads/{holder}").status_code == 204
        ok = http.post(f"/v1/sessions/{sid}/exec", json={"command": "echo awake"})
        assert ok.status_code == 200 and b"awake" in ok.content, ok.text
