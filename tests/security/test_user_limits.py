"""Per-user limits: one user cannot take the host's boxes, executions, disk or event log
for themselves. Past a limit a request is a 429 ``limit_exceeded`` that names the limit and
its setting; another user is not affected; and once the use goes down, work goes again.
A box that keeps a background process but gets no request is stopped after
SOPHON_BOX_MAX_UNATTENDED_SECONDS, and the next request starts it over the same files."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from sophon.testing import ModelServer
from tests.conftest import model_env, wait_for
from tests.security.helpers import (
    cancel,
    client,
    execute,
    host_pids,
    live_server,
    start_async,
    thread_name,
    unique_sleep,
    wait_finished,
    wait_gone,
    wait_host_pids,
)

EXECUTE = "/v1/sandbox/execute"
JSON = {"Accept": "application/json"}


def assert_limit(resp: httpx.Response, setting: str, retry: bool = True) -> None:
    """A 429 limit_exceeded whose message names ``setting``; Retry-After where waiting helps."""
    assert resp.status_code == 429, resp.text
    body = resp.json()
    assert body["error"] == "limit_exceeded", body
    assert setting in body["message"], body
    if retry:
        assert int(resp.headers["Retry-After"]) >= 1, resp.headers
    else:
        assert "Retry-After" not in resp.headers, resp.headers


def limits(http: httpx.Client) -> dict[str, Any]:
    resp = http.get("/v1/me")
    assert resp.status_code == 200, resp.text
    return resp.json()["limits"]  # type: ignore[no-any-return]


def post_execute(http: httpx.Client, code: str, thread_id: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"code": code, "language": "bash", "timeout": 30}
    if thread_id is not None:
        body["thread_id"] = thread_id
    return http.post(EXECUTE, json=body)


def new_session(http: httpx.Client, name: str, **extra: Any) -> httpx.Response:
    return http.post("/v1/sessions", json={"name": name, "starter": {"type": "empty"}, **extra})


def test_executions_past_the_concurrent_limit_are_429_while_the_others_run() -> None:
    n = 2
    env = {"SOPHON_USER_MAX_CONCURRENT_EXECUTIONS": str(n), "SOPHON_USER_MAX_BOXES": str(n)}
    with live_server(env) as srv, client(srv, srv.add_user()) as http, \
            client(srv, srv.add_user()) as other:
        running = [start_async(http, "sleep 60") for _ in range(n)]
        try:
            assert limits(http)["concurrent_executions"] == {
                "used": n, "limit": n, "setting": "SOPHON_USER_MAX_CONCURRENT_EXECUTIONS"}
            # One-off, on a thread, and asynchronously: each is one execution too many.
            assert_limit(post_execute(http, "echo one-too-many"),
                         "SOPHON_USER_MAX_CONCURRENT_EXECUTIONS")
            assert_limit(post_execute(http, "echo t", thread_id=thread_name("conc")),
                         "SOPHON_USER_MAX_CONCURRENT_EXECUTIONS")
            assert_limit(http.post(EXECUTE, json={"code": "true", "language": "bash"},
                                   headers={"Prefer": "respond-async"}),
                         "SOPHON_USER_MAX_CONCURRENT_EXECUTIONS")
            # Control: another user runs meanwhile.
            assert execute(other, "echo other")["stdout"] == "other\n"
            for trace_id in running:  # the n go on untouched
                assert http.get(f"/v1/executions/{trace_id}").json()["status"] == "running"
        finally:
            for trace_id in running:
                cancel(http, trace_id)
        for trace_id in running:
            wait_finished(http, trace_id)
        # Once they ended, the next one runs; and n clients each running one-offs back to
        # back stay within both limits (a finished one-off's box is no longer theirs).
        assert execute(http, "echo again")["stdout"] == "again\n"
        with ThreadPoolExecutor(n) as pool:
            outs = list(pool.map(lambda i: execute(http, f"echo {i}")["stdout"], range(4 * n)))
        assert outs == [f"{i}\n" for i in range(4 * n)]
        assert limits(http)["concurrent_executions"]["used"] == 0


def test_boxes_awake_past_the_limit_are_429_until_idle_ones_sleep() -> None:
    env = {"SOPHON_USER_MAX_BOXES": "2", "SOPHON_THREAD_IDLE_SECONDS": "1",
           "SOPHON_IDLE_CHECK_SECONDS": "0.3"}
    with live_server(env) as srv, client(srv, srv.add_user()) as http, \
            client(srv, srv.add_user()) as other:
        # Two threads kept awake by executions that run.
        running = [start_async(http, "sleep 60", thread_id=thread_name(f"awake{i}"))
                   for i in range(2)]
        try:
            got = limits(http)["boxes_awake"]
            assert got == {"used": 2, "limit": 2, "setting": "SOPHON_USER_MAX_BOXES"}, got
            third = thread_name("third")
            assert_limit(post_execute(http, "echo 3", thread_id=third), "SOPHON_USER_MAX_BOXES")
            assert_limit(post_execute(http, "echo one-off"), "SOPHON_USER_MAX_BOXES")
            # A session's box is one of the user's boxes too.
            assert_limit(new_session(http, "one-box-too-many"), "SOPHON_USER_MAX_BOXES")
            # Control: another user is not affected.
            assert execute(other, "echo b", thread_id="same-name")["stdout"] == "b\n"
            assert new_session(other, "fine").status_code == 201
        finally:
            for trace_id in running:
                cancel(http, trace_id)
        for trace_id in running:
            wait_finished(http, trace_id)

        # Idle boxes sleep, and then a new box may wake.
        def runs() -> bool:
            resp = post_execute(http, "echo woke", thread_id=third)
            assert resp.status_code in (200, 429), resp.text
            return resp.status_code == 200 and resp.json()["stdout"] == "woke\n"

        wait_for(runs, 30, 0.3, "an execution on a third thread once the others slept")


@pytest.mark.skipif(os.geteuid() != 0, reason="disk images need a root server")
def test_disk_past_the_users_total_is_429_and_deleting_frees_it() -> None:
    box_mb, total_mb = 32, 80
    env = {"SOPHON_BOX_DISK_MB": str(box_mb), "SOPHON_USER_MAX_DISK_MB": str(total_mb)}
    with live_server(env) as srv, client(srv, srv.add_user()) as http, \
            client(srv, srv.add_user()) as other:
        first = new_session(http, "first", disk_mb=box_mb)
        assert first.status_code == 201, first.text
        vol = http.post("/v1/volumes", json={"name": "data", "size_mb": box_mb})
        assert vol.status_code == 201, vol.text
        got = limits(http)["disk_mb"]
        assert got == {"used": 2 * box_mb, "limit": total_mb,
                       "setting": "SOPHON_USER_MAX_DISK_MB"}, got
        # 64 MiB made; 32 more would be 96 > 80: a session, a volume and a thread alike.
        assert_limit(new_session(http, "second", disk_mb=box_mb), "SOPHON_USER_MAX_DISK_MB",
                     retry=False)
        assert_limit(http.post("/v1/volumes", json={"name": "more", "size_mb": box_mb}),
                     "SOPHON_USER_MAX_DISK_MB", retry=False)
        assert_limit(post_execute(http, "true", thread_id=thread_name("disk")),
                     "SOPHON_USER_MAX_DISK_MB", retry=False)
        # What fits is fine: a small volume, and one-off executions (no disk kept).
        assert http.post("/v1/volumes", json={"name": "small", "size_mb": 16}).status_code == 201
        assert execute(http, "echo one-off")["stdout"] == "one-off\n"
        # Control: another user has their own total.
        assert new_session(other, "theirs", disk_mb=box_mb).status_code == 201
        assert new_session(other, "theirs2", disk_mb=box_mb).status_code == 201
        # Deleting frees the room.
        assert http.delete(f"/v1/sessions/{first.json()['id']}").status_code == 204
        again = new_session(http, "second", disk_mb=box_mb)
        assert again.status_code == 201, again.text


def test_events_past_the_rate_refuse_new_work_but_never_cut_running_work() -> None:
    per_minute = 60
    env = {"SOPHON_USER_MAX_EVENTS_PER_MINUTE": str(per_minute)}
    lines = 72
    # One output event a line: each line comes well after the one before.
    noisy = f"for i in $(seq {lines}); do echo line$i; sleep 0.02; done"
    with live_server(env) as srv, client(srv, srv.add_user()) as http, \
            client(srv, srv.add_user()) as other:
        sid = new_session(http, "noisy").json()["id"]
        r = http.post(f"/v1/sessions/{sid}/exec", json={"command": noisy, "timeout": 60})
        assert r.status_code == 200, r.text
        # The exec that passed the rate ran to its end, every line recorded.
        log = http.get(f"/v1/sessions/{sid}/events", headers=JSON,
                       params={"limit": 5000}).json()["events"]
        out = "".join(e["data"] for e in log if e["type"] == "exec_output")
        assert out == "".join(f"line{i}\n" for i in range(1, lines + 1))
        assert [e for e in log if e["type"] == "exec_end"][-1]["exit_code"] == 0
        assert len(log) > per_minute  # the probe did pass the rate
        assert limits(http)["events_per_minute"]["used"] >= per_minute
        # New work waits: another exec, a new session.
        refused = http.post(f"/v1/sessions/{sid}/exec", json={"command": "echo more"})
        assert_limit(refused, "SOPHON_USER_MAX_EVENTS_PER_MINUTE")
        assert int(refused.headers["Retry-After"]) <= 60
        assert_limit(new_session(http, "another"), "SOPHON_USER_MAX_EVENTS_PER_MINUTE")
        # Control: another user's sessions are not slowed.
        theirs = new_session(other, "quiet").json()["id"]
        ok = other.post(f"/v1/sessions/{theirs}/exec", json={"command": "echo fine"})
        assert ok.status_code == 200 and "fine" in ok.text
        # Once the rate has refilled, work goes again.

        def runs() -> bool:
            resp = http.post(f"/v1/sessions/{sid}/exec", json={"command": "echo back"})
            assert resp.status_code in (200, 429), resp.text
            return resp.status_code == 200 and "back" in resp.text

        wait_for(runs, 90, 1.0, "an exec once the event rate refilled")


def test_a_box_with_a_background_process_and_no_request_is_stopped() -> None:
    env = {"SOPHON_BOX_MAX_UNATTENDED_SECONDS": "2", "SOPHON_IDLE_CHECK_SECONDS": "0.3"}
    with live_server(env) as srv, client(srv, srv.add_user()) as http:
        # A thread: a background process that would keep its box awake for ever.
        marker = unique_sleep()
        thread = thread_name("unattended")
        res = execute(http, f"echo kept > ~/kept.txt; sleep {marker} >/dev/null 2>&1 &",
                      thread_id=thread)
        assert res["exit_code"] == 0, res
        wait_host_pids(marker)
        # Control: a thread with a background process that gets requests stays awake.
        attended, kept = thread_name("attended"), unique_sleep()
        execute(http, f"sleep {kept} >/dev/null 2>&1 &", thread_id=attended)
        kept_pids = wait_host_pids(kept)

        def stopped() -> bool:
            assert execute(http, "true", thread_id=attended)["exit_code"] == 0
            return not host_pids(marker)

        wait_for(stopped, 30, 0.3, "the unattended thread's process to be ended")
        assert host_pids(kept) == kept_pids
        # The warning is written once the stop is done, a moment after the process ends.
        wait_for(lambda: "without a request" in srv.log.read_text(), 10, 0.1,
                 "the server to log the unattended stop")
        # The next request starts it again, over the same files, without the process.
        res = execute(http, f"cat ~/kept.txt; pgrep -f 'sleep {marker}' || echo none",
                      thread_id=thread)
        assert res["stdout"] == "kept\nnone\n", res

        # A session: the same, and its log says why.
        sid = new_session(http, "unattended").json()["id"]
        marker = unique_sleep()
        r = http.post(f"/v1/sessions/{sid}/exec",
                      json={"command": f"echo s > kept.txt; sleep {marker} >/dev/null 2>&1 &"})
        assert r.status_code == 200, r.text
        wait_host_pids(marker)
        wait_gone(marker, 30)

        def said() -> list[dict[str, Any]]:
            log = http.get(f"/v1/sessions/{sid}/events", headers=JSON,
                           params={"limit": 5000}).json()["events"]
            return [e for e in log if e["type"] == "status" and e["status"] == "sleeping"]

        stopped = wait_for(said, 10, 0.1, "the session's status: sleeping")
        assert isinstance(stopped, list)
        assert stopped[-1]["detail"] == ("stopped after 2 s without a request; a background "
                                         "process was ended"), stopped
        r = http.post(f"/v1/sessions/{sid}/exec", json={"command": "cat kept.txt"})
        assert r.status_code == 200, r.text
        events = [json.loads(line) for line in r.text.splitlines() if line]
        assert "".join(e.get("data", "") for e in events if e["type"] == "exec_output") == "s\n"
        assert not host_pids(marker)


def test_a_message_that_would_wake_a_box_past_the_limit_is_429_up_front() -> None:
    env = {"SOPHON_USER_MAX_BOXES": "1", "SOPHON_SESSION_IDLE_SECONDS": "1",
           "SOPHON_IDLE_CHECK_SECONDS": "0.2", "SOPHON_BOX_POOL_SIZE": "0"}
    with ModelServer() as model, live_server({**env, **model_env(model.url)}) as srv, \
            client(srv, srv.add_user()) as http:
        created = new_session(http, "sleeper")
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        wait_for(lambda: http.get(f"/v1/sessions/{sid}").json()["status"] == "sleeping",
                 30, 0.1, "the session to fall asleep")
        thread = thread_name("holder")
        assert post_execute(http, "true", thread_id=thread).json()["success"]  # the one box
        refused = http.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"})
        assert_limit(refused, "SOPHON_USER_MAX_BOXES")
        assert "you have 1 sandbox awake" in refused.json()["message"]
        used = limits(http)["boxes_awake"]["used"]
        assert used == 1 and isinstance(used, int)  # a count, shown as one
        # Nothing was started or logged for the refused message.
        events = http.get(f"/v1/sessions/{sid}/events", headers=JSON).json()["events"]
        assert not any(e["type"] == "user" for e in events)
        # Control: with the thread gone, the same message is taken.
        assert http.delete(f"/v1/threads/{thread}").status_code == 204
        accepted = http.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"})
        assert accepted.status_code == 202, accepted.text


def test_the_files_api_cannot_make_or_wake_a_box_past_the_limit() -> None:
    env = {"SOPHON_USER_MAX_BOXES": "1", "SOPHON_BOX_POOL_SIZE": "0"}
    with live_server(env) as srv, client(srv, srv.add_user()) as http:
        holder = thread_name("holder")
        assert post_execute(http, "echo kept > /home/baponi/k.txt",
                            thread_id=holder).json()["success"]
        # A new thread made by an upload is a box too many.
        refused = http.post("/v1/files/upload_url", json={
            "source": "thread", "id": thread_name("new"), "path": "a.txt",
            "content_length": 3})
        assert_limit(refused, "SOPHON_USER_MAX_BOXES")
        # Control: the thread whose box is awake takes uploads and downloads.
        up = http.post("/v1/files/upload_url", json={
            "source": "thread", "id": holder, "path": "a.txt", "content_length": 3})
        assert up.status_code == 200, up.text
        assert httpx.put(up.json()["url"], content=b"abc").status_code in (200, 201, 204)
        down = http.post("/v1/files/download_url", json={
            "source": "thread", "id": holder, "path": "k.txt"})
        assert httpx.get(down.json()["url"]).content == b"kept\n"
