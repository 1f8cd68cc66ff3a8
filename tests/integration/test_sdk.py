"""The Python SDK's promises against a live server: where it finds its URL and key, typed
errors, pagination, an events iterator that survives a server restart or a dropped
connection, file names with URL characters, diff, deny and the execution routes.

The documented examples are in test_sdk_docs.py, the AsyncClient in test_sdk_async.py.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from sophon.client import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ConflictError,
    ConnectionFailed,
    NotFoundError,
    PreconditionFailedError,
    SophonAPIError,
)
from sophon.sessions.models import SessionView
from sophon.testing import ModelServer
from tests.conftest import LiveServer, free_port, wait_for
from tests.integration import sdk_support
from tests.integration.sdk_support import LONG, SCRIPTS, Proxy, run

# This module's fixtures (tests/integration/sdk_support.py): one scripted model and one
# server for the module, and a client of each test's own user.
model, server, client = sdk_support.model, sdk_support.server, sdk_support.client
no_config, proxy = sdk_support.no_config, sdk_support.proxy


# --- configuration -----------------------------------------------------------------------

def test_no_key_anywhere_is_an_authentication_error(no_config: Path) -> None:
    for make in (Client, AsyncClient):
        with pytest.raises(AuthenticationError) as info:
            make()
        assert info.value.status == 401 and info.value.code == "unauthorized"
        assert "SOPHON_API_KEY" in info.value.message


def test_arguments_then_environment_then_login_file(server: LiveServer, api_key: str,
                                                    no_config: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**os.environ, "XDG_CONFIG_HOME": str(no_config)}
    done = subprocess.run([sys.executable, "-m", "sophon.cli", "login", "--url", server.url,
                           "--api-key", api_key], env=env, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    saved = no_config / "sophon" / "config.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600

    with Client() as c:  # the file alone
        assert c.base_url == server.url
        me = c.me()
    monkeypatch.setenv("SOPHON_API_KEY", "sk-sophon-wrong")  # the environment beats it
    with Client() as c, pytest.raises(AuthenticationError):
        c.me()
    with Client(api_key=api_key) as c:  # an argument beats both
        assert c.me() == me
    monkeypatch.setenv("SOPHON_URL", f"http://127.0.0.1:{free_port()}")
    with Client(server.url, api_key) as c:
        assert c.me() == me


# --- typed errors ---------------------------------------------------------------------------

def test_wrong_key_is_401_unauthorized(server: LiveServer) -> None:
    with Client(server.url, "sk-sophon-not-a-key") as c:
        with pytest.raises(AuthenticationError) as info:
            c.me()
        with pytest.raises(AuthenticationError):
            list(c.exec("ses_x", "true"))
        with pytest.raises(AuthenticationError):
            next(c.events("ses_x"))
    err = info.value
    assert isinstance(err, SophonAPIError)
    assert (err.status, err.code) == (401, "unauthorized") and err.message


def test_unknown_or_foreign_session_is_404(server: LiveServer, client: Client) -> None:
    with pytest.raises(NotFoundError) as info:
        client.get_session("ses_nope")
    assert (info.value.status, info.value.code) == (404, "not_found")
    assert "ses_nope" in info.value.message

    theirs = client.create_session("theirs").id
    with Client(server.url, server.add_user()) as stranger:
        for call in (lambda: stranger.get_session(theirs),
                     lambda: stranger.read_file(theirs, "x"),
                     lambda: list(stranger.exec(theirs, "true")),
                     lambda: stranger.export(theirs, io.BytesIO()),
                     lambda: next(stranger.events(theirs)),
                     lambda: stranger.delete_session(theirs)):
            with pytest.raises(NotFoundError):
                call()
    with pytest.raises(NotFoundError):
        client.read_file(theirs, "missing.txt")
    client.delete_session(theirs)
    with pytest.raises(NotFoundError):
        client.delete_session(theirs)


def test_bad_input_is_400(client: Client) -> None:
    with pytest.raises(BadRequestError) as info:
        client.create_session("x", base="no-such-base")
    assert (info.value.status, info.value.code) == (400, "invalid_request")
    assert "no-such-base" in info.value.message
    with pytest.raises(ValueError):  # refused before any request
        client.create_session("x", template="python", clone="/tmp/repo")


def test_second_message_during_a_turn_is_409(client: Client, model: ModelServer) -> None:
    model.set_script(SCRIPTS["approval"])
    sid = client.create_session("busy", template="python", base="python").id
    assert client.send_message(sid, "Run the tests.") == {"queued": False}
    pending = wait_for(lambda: client.approvals(sid), 20, 0.05, "an approval request")
    assert pending[0]["tool"] == "Bash"  # type: ignore[index]
    # The request is stored just before the status changes.
    wait_for(lambda: client.get_session(sid).status == "waiting_approval", 5, 0.02,
             "the waiting_approval status")

    with pytest.raises(ConflictError) as info:
        client.send_message(sid, "And another thing.")
    assert (info.value.status, info.value.code) == (409, "turn_in_progress")
    assert client.send_message(sid, "Later, then.", queue=True) == {"queued": True,
                                                                     "position": 1}
    assert client.interrupt(sid) is True
    wait_for(lambda: client.get_session(sid).status == "idle", 20, 0.05, "the turn to stop")
    assert client.interrupt(sid) is False


def test_stale_or_missing_etag_is_precondition_failed(client: Client) -> None:
    sid = client.create_session("etags").id
    first = client.write_file(sid, "a.txt", "one\n")
    assert client.read_file(sid, "a.txt").etag == first
    second = client.write_file(sid, "a.txt", "two\n", etag=first)
    assert second != first

    with pytest.raises(PreconditionFailedError) as stale:
        client.write_file(sid, "a.txt", "lost\n", etag=first)
    assert (stale.value.status, stale.value.code) == (412, "precondition_failed")
    with pytest.raises(PreconditionFailedError) as missing:
        client.write_file(sid, "a.txt", "lost\n")
    assert (missing.value.status, missing.value.code) == (428, "precondition_required")
    with pytest.raises(PreconditionFailedError) as exists:
        client.write_file(sid, "a.txt", "lost\n", create_only=True)
    assert exists.value.status == 412

    now = client.read_file(sid, "a.txt")
    assert (now.content, now.etag) == ("two\n", second)
    assert client.write_file(sid, "b.txt", b"\x00\x01", create_only=True)
    assert client.read_file(sid, "b.txt").binary


def test_server_down_is_connection_failed(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, "sk-sophon-any") as c:
        for call in (c.me,
                     lambda: c.get_session("ses_x"),
                     lambda: list(c.exec("ses_x", "true")),
                     lambda: c.export("ses_x", tmp_path / "x.tar.gz"),
                     lambda: c.execute("print(1)"),
                     lambda: list(c.execute_stream("print(1)"))):
            with pytest.raises(ConnectionFailed) as info:
                call()
            assert isinstance(info.value, SophonAPIError)
            assert info.value.status == 0
            assert url in info.value.message and "cannot reach" in info.value.message


# --- listing ---------------------------------------------------------------------------------

def test_list_sessions_newest_first_with_a_limit(client: Client) -> None:
    made = [client.create_session(f"s{i}").id for i in range(4)]
    listed = list(client.list_sessions())
    assert all(isinstance(s, SessionView) for s in listed)
    assert [s.id for s in listed] == made[::-1]
    assert [s.created_at for s in listed] == sorted((s.created_at for s in listed),
                                                   reverse=True)
    assert [s.id for s in client.list_sessions(limit=2)] == made[:1:-1]
    assert [s.id for s in client.list_sessions(limit=1)] == made[-1:]
    assert list(client.list_sessions(limit=0)) == []
    assert len(list(client.list_sessions(limit=50))) == 4


def test_list_sessions_follows_the_cursor_across_pages(client: Client,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """With pages of 2, 5 sessions take 3 pages and come out once each, in order."""
    made = [client.create_session(f"p{i}").id for i in range(5)]
    cursors: list[str | None] = []
    call = client._http.call

    def counting(method: str, path: str, **kwargs: Any) -> Any:
        if method == "GET" and path == "/v1/sessions":
            assert kwargs["params"]["limit"] == 2
            cursors.append(kwargs["params"].get("cursor"))
        return call(method, path, **kwargs)

    monkeypatch.setattr(client._http, "call", counting)
    assert [s.id for s in client.list_sessions(page_size=2)] == made[::-1]
    assert len(cursors) == 3 and cursors[0] is None and all(cursors[1:])
    cursors.clear()
    assert [s.id for s in client.list_sessions(limit=3, page_size=2)] == made[:1:-1]
    assert len(cursors) == 2  # stops fetching once it has enough


# --- events --------------------------------------------------------------------------------

def test_events_replay_then_follow(client: Client) -> None:
    sid = client.create_session("log").id
    ran = run(client, sid, "echo one")
    log = list(client.events(sid, follow=False))
    assert [e.seq for e in log] == list(range(1, len(log) + 1))
    assert log[0].type == "session_start" and log[-len(ran):] == ran
    assert list(client.events(sid, after=log[-2].seq, follow=False)) == log[-1:]
    assert client.event_page(sid, after=1, limit=2) == log[1:3]

    # Live: the command runs while the iterator waits for new events.
    later = threading.Timer(0.3, run, args=(client, sid, "echo two"))
    later.start()
    seen: list[Any] = []
    for event in client.events(sid, after=log[-1].seq):
        seen.append(event)
        if event.type == "exec_end":
            break
    later.join()
    assert seen[0].seq == log[-1].seq + 1 and seen[-1].type == "exec_end"
    assert "".join(e.data for e in seen if e.type == "exec_output") == "two\n"


def test_events_iterator_reconnects_across_a_restart(own_server: LiveServer) -> None:
    key = own_server.add_user()
    with Client(own_server.url, key) as c, Client(own_server.url, key) as follower:
        sid = c.create_session("follow").id
        run(c, sid, "echo before")
        got: list[Any] = []
        reconnects: list[int] = []
        stop = threading.Event()
        failure: list[BaseException] = []

        def follow() -> None:
            try:
                for event in follower.events(sid, on_reconnect=reconnects.append):
                    got.append(event)
                    if stop.is_set() and event.type == "exec_end":
                        return
            except BaseException as exc:  # reported by the test below
                failure.append(exc)

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        before = c.get_session(sid).last_seq
        wait_for(lambda: got and got[-1].seq >= before, 10, 0.02, "the replay")

        own_server.restart()
        during = run(c, sid, "echo after the restart")  # maybe before it is back: no gap
        wait_for(lambda: failure or (got and got[-1].seq >= during[-1].seq), 20, 0.02,
                 "the iterator to catch up after the restart")
        assert not failure, failure
        stop.set()
        last = run(c, sid, "echo live")
        thread.join(15)
        assert not thread.is_alive() and not failure, failure

        log = list(c.events(sid, follow=False))
        seqs = [e.seq for e in got]
        assert seqs == list(range(1, len(got) + 1)), seqs  # no gap, no duplicate
        assert got == log[:len(got)] and got[-1] == last[-1]
        assert reconnects and reconnects[0] >= before


# --- the file-name bug ------------------------------------------------------------------------

ODD_NAMES = ("what?.txt", "c#.md", "100%41.txt")


def test_file_names_with_url_characters(client: Client) -> None:
    sid = client.create_session("names").id
    for name in ODD_NAMES:
        client.write_file(sid, name, name)
    assert set(ODD_NAMES) <= {e.path for e in client.files(sid).entries}
    for name in ODD_NAMES:
        assert client.read_file(sid, name).content == name


def test_file_names_with_url_characters_are_fine_over_http(client: Client,
                                                            http: httpx.Client) -> None:
    """What the SDK should do: the API itself handles these names when they are quoted."""
    from urllib.parse import quote

    sid = client.create_session("names").id
    for name in ODD_NAMES:
        r = http.put(f"/v1/sessions/{sid}/files/{quote(name)}", content=name.encode())
        assert r.status_code == 201, r.text
    assert set(ODD_NAMES) <= {e.path for e in client.files(sid).entries}


def test_failed_export_leaves_no_file(client: Client, tmp_path: Path) -> None:
    dest = tmp_path / "missing.tar.gz"
    with pytest.raises(NotFoundError):
        client.export("ses_nope", dest)
    assert not dest.exists()


# --- reconnecting with Last-Event-ID ------------------------------------------------------------

def test_events_resume_after_the_last_event_seen(client: Client, proxy: Proxy,
                                                 api_key: str) -> None:
    """A dropped stream is asked again with Last-Event-ID = the last seq yielded, so the
    server replays only what was missed: nothing twice, nothing lost."""
    sid = client.create_session("resume").id
    run(client, sid, "echo before")
    before = client.get_session(sid).last_seq
    got: list[Any] = []
    with Client(proxy.url, api_key) as follower:
        events = follower.events(sid)
        while not got or got[-1].seq < before:
            got.append(next(events))
        proxy.cut()
        during = run(client, sid, "echo during")  # written while the stream is down
        while got[-1].seq < during[-1].seq:
            got.append(next(events))
        events.close()
    streams = proxy.event_streams(sid)
    assert [last for last, _ in streams] == ["0", str(before)]
    assert streams[1][1][0] == before + 1  # the server replayed from there, not from 1
    assert [e.seq for e in got] == list(range(1, during[-1].seq + 1))
    assert got == list(client.events(sid, follow=False))


# --- diff, deny, the execution routes ------------------------------------------------------------

def test_diff_since_an_older_commit(client: Client) -> None:
    sid = client.create_session("diff", template="python", base="python").id
    first = "".join(e.data for e in run(client, sid, "git rev-parse HEAD")
                    if e.type == "exec_output").strip()
    calc = client.read_file(sid, "calc.py")
    client.write_file(sid, "calc.py", calc.content + "# second\n", etag=calc.etag)
    ended = run(client, sid, "git -c user.name=t -c user.email=t@x commit -qam second")
    assert ended[-1].exit_code == 0, ended
    assert client.diff(sid) == ""  # the workspace is HEAD now
    since = client.diff(sid, since=first)
    assert "+# second" in since and "calc.py" in since


def test_deny_with_a_reason_reaches_the_model(client: Client, model: ModelServer) -> None:
    model.set_script(SCRIPTS["approval"])
    sid = client.create_session("deny", template="python", base="python").id
    client.send_message(sid, "Run the tests.")
    pending = wait_for(lambda: client.approvals(sid), 20, 0.05, "an approval request")
    decision = client.deny(sid, pending[0]["approval_id"], reason="not before lunch")  # type: ignore[index]
    assert (decision.type, decision.decision, decision.reason) == (
        "approval_decision", "deny", "not before lunch")
    wait_for(lambda: client.get_session(sid).status == "idle", 20, 0.05, "the turn to end")
    told = json.dumps(model.requests[-1]["messages"][-1])
    assert "was denied: not before lunch" in told, told
    assert not any(e.type == "exec_start" for e in client.events(sid, follow=False))


def test_get_and_cancel_an_execution(client: Client) -> None:
    accepted = client.start_execution(LONG, timeout=300)
    trace = accepted["trace_id"]
    assert accepted["status"] == "queued"
    wait_for(lambda: client.get_execution(trace)["status"] == "running", 30, 0.05,
             "the execution to run")
    t0 = time.monotonic()
    assert client.cancel_execution(trace) == "cancelled"
    assert time.monotonic() - t0 < 30
    status = client.get_execution(trace)
    assert (status["trace_id"], status["status"]) == (trace, "cancelled")
    assert [e["type"] for e in client.execution_output(trace)][-1] == "result"
    with pytest.raises(NotFoundError):
        client.get_execution("exe_does_not_exist")

    streamed = list(client.execute_stream("print(6 * 7)"))  # the status event names it
    done = client.get_execution(streamed[0]["trace_id"])
    assert (done["status"], done["stdout"], done["delivery_mode"]) == ("success", "42\n",
                                                                       "stream")
    assert client.cancel_execution(done["trace_id"]) == "success"  # over: nothing to stop
