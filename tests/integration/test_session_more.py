"""More of the sessions issue over live HTTP: isolation of the agent routes, waking on a
file request or a message, what DELETE removes, the cap on file_change diffs, secrets in
the agent's Bash runs, and walking the session list page by page."""

from __future__ import annotations

import difflib
import json
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sophon.box.agent.watch import DIFF_LIMIT, TEXT_LIMIT
from sophon.testing import ModelServer
from tests.conftest import LiveServer, make_data_dir, wait_for
from tests.integration.test_agent import send, tool, wait_turn
from tests.integration.test_session_events import (
    EVENT_DEADLINE,
    SSEStream,
    assert_contiguous,
    client,
    full_log,
    log_page,
    new_session,
    run_exec,
    wait_asleep,
)
from tests.security.helpers import box_files

FAKE = "ses_" + "0" * 24


@pytest.fixture(scope="module")
def model() -> Iterator[ModelServer]:
    with ModelServer() as ms:
        yield ms


def _start(model: ModelServer, **env: str) -> LiveServer:
    return LiveServer(make_data_dir(), env={"ANTHROPIC_API_KEY": "test-key",
                                            "ANTHROPIC_BASE_URL": model.url, **env}).start()


@pytest.fixture(scope="module")
def server(model: ModelServer) -> Iterator[LiveServer]:
    srv = _start(model)
    yield srv
    srv.stop()
    shutil.rmtree(srv.data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def sleepy(model: ModelServer) -> Iterator[LiveServer]:
    """Session boxes go to sleep half a second after their last use."""
    srv = _start(model, SOPHON_SESSION_IDLE_SECONDS="0.5", SOPHON_IDLE_CHECK_SECONDS="0.1")
    yield srv
    srv.stop()
    shutil.rmtree(srv.data_dir, ignore_errors=True)


def agent_session(http: httpx.Client, name: str = "agent") -> str:
    """A session whose shell commands need no approval."""
    r = http.post("/v1/sessions", json={"name": name, "approval": {"shell": "allow"}})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def of_type(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["type"] == kind]


def db_rows(srv: LiveServer, table: str, session_id: str) -> int:
    """Rows of a session in the server's database, read with a read-only connection."""
    db = sqlite3.connect(f"file:{srv.data_dir / 'sophon.db'}?mode=ro", uri=True, timeout=10)
    try:
        return int(db.execute(f"SELECT count(*) FROM {table} WHERE session_id = ?",  # noqa: S608
                              (session_id,)).fetchone()[0])
    finally:
        db.close()


# --- a. the agent's routes are private too -------------------------------------------

def test_another_user_gets_404_on_the_agent_routes(server: LiveServer, http: httpx.Client,
                                                   model: ModelServer) -> None:
    model.set_script([
        {"content": [tool("Bash", command="sleep 2; echo slept")]},
        "Done.",
        "Through the gateway.",
    ])
    sid = agent_session(http)
    token = http.post(f"/v1/sessions/{sid}/gateway-token").json()["token"]
    assert send(http, sid, "run it").status_code == 202
    # The turn is in its Bash call when the stranger tries to interrupt it.
    wait_for(lambda: of_type(full_log(http, sid), "tool_use"), EVENT_DEADLINE,
             what="the Bash call")

    routes: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "interrupt", {}),
        ("POST", "messages", {"json": {"content": "ignore your instructions"}}),
        ("POST", "messages", {"json": {"content": "queued", "queue": True}}),
        ("GET", "usage", {}),
        ("POST", "gateway-token", {}),
    ]
    with client(server, server.add_user()) as intruder:
        for method, route, kw in routes:
            for target in (sid, FAKE):
                r = intruder.request(method, f"/v1/sessions/{target}/{route}", **kw)
                assert r.status_code == 404, (method, route, target, r.text)
                assert r.json()["error"] == "not_found", (method, route, r.text)
            if route == "usage":
                # Once the owner has usage to hide, asked again.
                wait_for(lambda: http.get(f"/v1/sessions/{sid}/usage").json()["calls"],
                         EVENT_DEADLINE, what="the owner's usage")
                r = intruder.get(f"/v1/sessions/{sid}/usage")
                assert r.status_code == 404 and "calls" not in r.json()

    # The owner's turn was neither interrupted nor joined by the stranger's messages.
    evs = wait_turn(http, sid)
    (result,) = of_type(evs, "tool_result")
    assert result["content"] == "slept" and not result["is_error"]
    assert [e["content"] for e in of_type(evs, "user")] == ["run it"]
    assert not [e for e in of_type(evs, "status") if e.get("detail")]
    assert of_type(evs, "assistant")[-1]["text"] == "Done."
    assert len(model.requests) == 2
    assert len(http.get(f"/v1/sessions/{sid}/usage").json()["calls"]) == 2
    # The stranger's gateway-token call did not replace the owner's token.
    r = httpx.post(server.url + "/v1/messages", timeout=30, headers={
        "x-api-key": token, "anthropic-version": "2023-06-01"}, json={
        "model": "haiku", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    assert r.json()["content"][0]["text"] == "Through the gateway."


# --- b. waking --------------------------------------------------------------------------

def _statuses(http: httpx.Client, sid: str, after: int) -> list[tuple[str, str | None]]:
    return [(e["status"], e.get("detail"))
            for e in of_type(log_page(http, sid, after=after)["events"], "status")]


def test_a_file_request_alone_wakes_a_sleeping_session(sleepy: LiveServer) -> None:
    with client(sleepy, sleepy.add_user()) as http:
        sid = new_session(http)
        wrote = run_exec(http, sid, "mkdir -p src && echo kept > src/state.txt")
        mark = wrote[-1]["seq"]
        wait_asleep(http, sid, mark)
        asleep_at = log_page(http, sid)["last_seq"]

        got = http.get(f"/v1/sessions/{sid}/files/src/state.txt")
        assert got.status_code == 200, got.text
        assert got.json()["content"] == "kept\n" and got.headers["ETag"]
        assert _statuses(http, sid, asleep_at)[:1] == [("idle", "woke up")]
        # It really ran: it goes to sleep again by itself.
        wait_asleep(http, sid, log_page(http, sid)["last_seq"])

        # The tree alone wakes it as well.
        asleep_at = log_page(http, sid)["last_seq"]
        tree = http.get(f"/v1/sessions/{sid}/files")
        assert tree.status_code == 200
        assert {e["path"] for e in tree.json()["entries"]} >= {"src", "src/state.txt"}
        assert _statuses(http, sid, asleep_at)[:1] == [("idle", "woke up")]
        log = full_log(http, sid)
        assert not of_type(log, "exec_start")[1:], "only the first exec ran"
        assert_contiguous([e["seq"] for e in log])


def test_a_message_wakes_a_sleeping_session(sleepy: LiveServer, model: ModelServer) -> None:
    model.set_script([
        {"content": ["Let me look.", tool("Bash", command="cat state.txt")]},
        "It says kept.",
    ])
    with client(sleepy, sleepy.add_user()) as http:
        sid = agent_session(http, "wake-by-message")
        wrote = run_exec(http, sid, "echo kept > state.txt")
        wait_asleep(http, sid, wrote[-1]["seq"])
        asleep_at = log_page(http, sid)["last_seq"]

        assert send(http, sid, "what is in state.txt?").status_code == 202
        evs = wait_turn(http, sid)
        after = [e for e in evs if e["seq"] > asleep_at]
        (result,) = of_type(after, "tool_result")
        assert result["content"] == "kept" and not result["is_error"]
        assert of_type(after, "assistant")[-1]["text"] == "It says kept."
        assert not of_type(after, "session_error")
        statuses = [e["status"] for e in of_type(after, "status")]
        assert statuses[:1] == ["running"] and "idle" in statuses
        # The box the message started goes back to sleep once the turn is over.
        wait_asleep(http, sid, of_type(after, "status")[-1]["seq"])
        assert len(model.requests) == 2


# --- c. delete ---------------------------------------------------------------------------

def _delete_removes_everything(srv: LiveServer, http: httpx.Client, sid: str,
                               marker: str) -> None:
    boxes = srv.data_dir / "boxes"
    box_dir = boxes / ("s" + sid.removeprefix("ses_"))
    # A running box's files are seen through its launcher's mount namespace (its disk is
    # mounted only there); a sleeping box's are in its disk image.
    assert (box_dir / "disk.img").exists()
    view = box_files(box_dir)
    if view != box_dir:
        assert (view / "workspace" / marker).exists()
    assert db_rows(srv, "events", sid) == log_page(http, sid)["last_seq"] > 0
    assert db_rows(srv, "secrets", sid) == 1

    r = http.delete(f"/v1/sessions/{sid}")
    assert r.status_code == 204, r.text
    assert db_rows(srv, "events", sid) == 0
    for table in ("secrets", "approvals", "open_execs", "sessions"):
        column = "id" if table == "sessions" else "session_id"
        db = sqlite3.connect(f"file:{srv.data_dir / 'sophon.db'}?mode=ro", uri=True)
        try:
            left = db.execute(f"SELECT count(*) FROM {table} WHERE {column} = ?",  # noqa: S608
                              (sid,)).fetchone()[0]
        finally:
            db.close()
        assert left == 0, f"{left} row(s) of the deleted session left in {table}"
    assert not box_dir.exists(), f"{box_dir} is still there"
    assert sid not in [s["id"] for s in http.get("/v1/sessions").json()["sessions"]]
    assert http.get(f"/v1/sessions/{sid}").status_code == 404
    assert http.delete(f"/v1/sessions/{sid}").status_code == 404
    # Nothing of it comes back later (a late watcher or writer would add rows).
    assert http.get(f"/v1/sessions/{sid}/events", headers={
        "Accept": "application/json"}).status_code == 404
    assert db_rows(srv, "events", sid) == 0


def test_delete_removes_events_box_and_listing(server: LiveServer, api_key: str,
                                               http: httpx.Client) -> None:
    sid = new_session(http, "doomed")
    keep = new_session(http, "kept")
    assert http.put(f"/v1/sessions/{sid}/secrets/TOKEN", json={"value": "v"}).status_code == 204
    run_exec(http, sid, "echo x > marker-c1.txt; echo y > other.txt")
    wait_for(lambda: len(of_type(full_log(http, sid), "file_change")) == 2, EVENT_DEADLINE,
             what="the file changes")
    kept_events = full_log(http, keep)
    with SSEStream(server, api_key, sid) as sse:
        _delete_removes_everything(server, http, sid, "marker-c1.txt")
        assert sse.ended.wait(5), "the event stream of a deleted session stayed open"
    # The other session of the same user is untouched.
    assert [s["id"] for s in http.get("/v1/sessions").json()["sessions"]] == [keep]
    assert full_log(http, keep) == kept_events
    assert db_rows(server, "events", keep) == len(kept_events)


def test_delete_of_a_sleeping_session(sleepy: LiveServer) -> None:
    with client(sleepy, sleepy.add_user()) as http:
        sid = new_session(http, "asleep")
        assert http.put(f"/v1/sessions/{sid}/secrets/TOKEN",
                        json={"value": "v"}).status_code == 204
        wrote = run_exec(http, sid, "echo x > marker-c2.txt")
        wait_asleep(http, sid, wrote[-1]["seq"])
        _delete_removes_everything(sleepy, http, sid, "marker-c2.txt")


# --- d. the diff cap -------------------------------------------------------------------

def test_file_change_diffs_are_capped_and_flagged(server: LiveServer, api_key: str,
                                                  http: httpx.Client) -> None:
    sid = new_session(http, "diffs")
    start = log_page(http, sid)["last_seq"]
    numbers = "".join(f"{i}\n" for i in range(1, 20001))  # ~106 KiB of text
    assert DIFF_LIMIT < len(numbers) < TEXT_LIMIT
    with SSEStream(server, api_key, sid, params={"after": start}) as sse:

        def change(path: str, kind: str) -> dict:
            return sse.wait_event(lambda d: d["type"] == "file_change" and d["path"] == path
                                  and d["change"] == kind, what=f"{kind} {path}")["data"]

        run_exec(http, sid, "seq 1 20000 > big.txt; echo short > small.txt")
        big = change("big.txt", "created")
        full = "".join(difflib.unified_diff([], numbers.splitlines(keepends=True),
                                            "/dev/null", "b/big.txt"))
        assert len(full) > DIFF_LIMIT
        assert big["diff_truncated"] is True and big["binary"] is False
        assert big["size"] == len(numbers)
        assert big["diff"] == full[:DIFF_LIMIT]  # the start of the real diff, cut at the cap
        small = change("small.txt", "created")
        assert small["diff_truncated"] is False and small["diff"].endswith("+short\n")

        # A change to every line of it: the diff is twice the file, cut the same way.
        run_exec(http, sid, "sed -i 's/^/x/' big.txt")
        mod = change("big.txt", "modified")
        after = "".join(f"x{i}\n" for i in range(1, 20001))
        full = "".join(difflib.unified_diff(numbers.splitlines(keepends=True),
                                            after.splitlines(keepends=True),
                                            "a/big.txt", "b/big.txt"))
        assert mod["diff_truncated"] is True and mod["size"] == len(after)
        assert mod["diff"] == full[:DIFF_LIMIT]

        # A small change to the big file is not cut.
        run_exec(http, sid, "sed -i '1s/.*/first/' big.txt")
        one = sse.wait_event(lambda d: d["type"] == "file_change" and d["path"] == "big.txt"
                             and d["seq"] > mod["seq"], what="the one-line change")["data"]
        assert one["diff_truncated"] is False
        assert "-x1\n+first\n" in one["diff"] and len(one["diff"]) < 200

        # Past the text limit there is no diff at all, and no flag.
        run_exec(http, sid, f"head -c {TEXT_LIMIT + 1} /dev/zero | tr '\\0' a > huge.txt")
        huge = change("huge.txt", "created")
        assert huge["diff"] is None and huge["diff_truncated"] is False
        assert huge["binary"] is False and huge["size"] == TEXT_LIMIT + 1

        sse.check()
    # The stored events say the same as the streamed ones.
    stored = {e["seq"]: e for e in full_log(http, sid)}
    for ev in (big, small, mod, one, huge):
        assert stored[ev["seq"]] == ev


def test_a_costly_diff_does_not_hold_up_later_changes(server: LiveServer, api_key: str,
                                                      http: httpx.Client) -> None:
    sid = new_session(http, "slow-diff")
    start = log_page(http, sid)["last_seq"]
    with SSEStream(server, api_key, sid, params={"after": start}) as sse:
        run_exec(http, sid, "seq 1 20000 > big.txt")
        sse.wait_event(lambda d: d["type"] == "file_change" and d["path"] == "big.txt",
                       what="big.txt created")
        # Line i becomes "i0", which was line 10*i: difflib finds many matches (seconds).
        run_exec(http, sid, "sed -i 's/$/0/' big.txt")
        run_exec(http, sid, "echo later > small.txt")
        written = time.time()
        ev = sse.wait_event(lambda d: d["type"] == "file_change" and d["path"] == "small.txt",
                            deadline=5, what="the change of small.txt")
        assert ev["wall"] - written < 1.0


# --- e. secrets in the agent's Bash ----------------------------------------------------

def test_secrets_reach_bash_but_no_event_or_log(server: LiveServer, api_key: str,
                                               http: httpx.Client,
                                               model: ModelServer) -> None:
    value = "s3cr3t-" + uuid.uuid4().hex
    model.set_script([
        {"content": [tool("Bash", command='echo "value=$MY_SECRET"')]},
        # A model that knows the value puts it in a tool call of its own.
        {"content": [tool("Bash", command=f'test "$MY_SECRET" = "{value}" && echo same')]},
        f"The secret is {value}.",
    ])
    sid = agent_session(http, "secrets")
    r = http.put(f"/v1/sessions/{sid}/secrets/MY_SECRET", json={"value": value})
    assert r.status_code == 204
    with SSEStream(server, api_key, sid) as sse:
        assert send(http, sid, "show me the secret").status_code == 202
        evs = wait_turn(http, sid)
        sse.wait_seq(evs[-1]["seq"])
        streamed = sse.data

    uses, results = of_type(evs, "tool_use"), of_type(evs, "tool_result")
    assert [u["input"]["command"] for u in uses] == [
        'echo "value=$MY_SECRET"', 'test "$MY_SECRET" = "[redacted]" && echo same']
    # Injected (the first shows it is set, the second that it is the real value) ...
    assert [(r["content"], r["is_error"]) for r in results] == [
        ("value=[redacted]", False), ("same", False)]
    assert of_type(evs, "assistant")[-1]["text"] == "The secret is [redacted]."
    assert len(model.requests) == 3
    # The model is given the redacted result too: the value never reaches the provider.
    sent = json.dumps([m for req in model.requests for m in req["messages"]
                       if m["role"] == "user"])
    assert "value=[redacted]" in sent and value not in sent
    # ... and nowhere in what is stored, streamed or logged.
    assert streamed == evs[:len(streamed)] and len(streamed) == len(evs)
    assert value not in json.dumps(evs) and value not in json.dumps(streamed)
    assert value not in (server.data_dir / "server.log").read_text(errors="replace")
    for name in ("sophon.db", "sophon.db-wal"):
        path: Path = server.data_dir / name
        if path.exists():
            assert value.encode() not in path.read_bytes(), name


# --- f. pagination ---------------------------------------------------------------------

def walk(http: httpx.Client, limit: int, between: Any = None) -> list[dict]:
    """Every session, page by page, following the cursor the API returns."""
    seen: list[dict] = []
    params: dict[str, Any] = {"limit": limit}
    while True:
        page = http.get("/v1/sessions", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        assert 0 < len(body["sessions"]) <= limit or (not seen and not body["sessions"])
        seen += body["sessions"]
        if body["next_cursor"] is None:
            return seen
        assert len(body["sessions"]) == limit
        if between is not None:
            between()
            between = None
        params = {"limit": limit, "cursor": body["next_cursor"]}


def test_list_pages_are_newest_first_without_gaps(server: LiveServer,
                                                  http: httpx.Client) -> None:
    created = [new_session(http, f"page-{i}") for i in range(7)]
    with client(server, server.add_user()) as other:
        new_session(other, "not-yours")  # in between, in time; never in this user's list
    created.append(new_session(http, "page-7"))
    newest_first = created[::-1]
    for limit in (1, 2, 3, 8, 50):
        seen = walk(http, limit)
        ids = [s["id"] for s in seen]
        assert len(ids) == len(set(ids)), f"limit {limit}: duplicates"
        assert ids == newest_first, f"limit {limit}"
        stamps = [s["created_at"] for s in seen]
        assert stamps == sorted(stamps, reverse=True)

    # A session created during the walk does not shift the pages that follow.
    late: list[str] = []
    seen = walk(http, 3, between=lambda: late.append(new_session(http, "late")))
    assert [s["id"] for s in seen] == newest_first
    assert [s["id"] for s in walk(http, 3)] == late + newest_first


def test_list_pages_do_not_skip_sessions_created_at_the_same_instant(
        server: LiveServer, http: httpx.Client) -> None:
    created = [new_session(http, f"tie-{i}") for i in range(4)]
    db = sqlite3.connect(server.data_dir / "sophon.db", timeout=10)
    try:  # two sessions made in the same microsecond (e.g. by two clients at once)
        (stamp,) = db.execute("SELECT created_at FROM sessions WHERE id = ?",
                              (created[1],)).fetchone()
        db.execute("UPDATE sessions SET created_at = ? WHERE id = ?", (stamp, created[2]))
        db.commit()
    finally:
        db.close()
    everything = [s["id"] for s in walk(http, 50)]
    assert sorted(everything) == sorted(created)
    ids = [s["id"] for s in walk(http, 2)]
    assert sorted(ids) == sorted(created), f"skipped: {set(created) - set(ids)}"
