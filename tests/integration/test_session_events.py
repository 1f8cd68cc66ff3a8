"""The session event log over real HTTP: SSE replay and live delivery, resumption,
durability across restarts and crashes, heartbeats, file changes, sleeping sessions
and per-user isolation of every session route."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, make_data_dir, wait_for

JSON = {"Accept": "application/json"}
EVENT_DEADLINE = 10.0


# --- helpers -------------------------------------------------------------------

def client(srv: LiveServer, key: str) -> httpx.Client:
    return httpx.Client(base_url=srv.url, timeout=60,
                        headers={"Authorization": f"Bearer {key}"})


def new_session(http: httpx.Client, name: str = "events") -> str:
    r = http.post("/v1/sessions", json={"name": name, "starter": {"type": "empty"}})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "idle" and body["last_seq"] >= 1
    return str(body["id"])


def run_exec(http: httpx.Client, sid: str, command: str, timeout: int = 30) -> list[dict]:
    """Run a command; the NDJSON events of its response, checked for shape."""
    r = http.post(f"/v1/sessions/{sid}/exec", json={"command": command, "timeout": timeout})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    events = [json.loads(line) for line in r.text.splitlines() if line]
    assert events[0]["type"] == "exec_start" and events[-1]["type"] == "exec_end", events
    assert {e["exec_id"] for e in events} == {events[0]["exec_id"]}
    return events


def output_of(events: list[dict], stream: str = "stdout") -> str:
    return "".join(e["data"] for e in events
                   if e["type"] == "exec_output" and e["stream"] == stream)


def log_page(http: httpx.Client, sid: str, **params: Any) -> dict:
    r = http.get(f"/v1/sessions/{sid}/events", headers=JSON, params=params)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def full_log(http: httpx.Client, sid: str) -> list[dict]:
    return log_page(http, sid, limit=5000)["events"]  # type: ignore[no-any-return]


def assert_wellformed(events: list[dict]) -> None:
    for ev in events:
        assert isinstance(ev.get("type"), str) and ev["type"], ev
        assert isinstance(ev.get("seq"), int) and ev["seq"] >= 1, ev
        assert isinstance(ev.get("ts"), str) and ev["ts"], ev


def assert_contiguous(seqs: list[int], first: int = 1) -> None:
    """Exactly first, first+1, ...: no gap, no duplicate, in order."""
    assert seqs == list(range(first, first + len(seqs))), seqs


class SSEStream:
    """A client of a session's SSE stream, read by a background thread.

    Parses the stream as the SSE spec says (fields, blank-line dispatch, comment lines)
    and records every event with its arrival time, so tests can wait with deadlines."""

    def __init__(self, srv: LiveServer, key: str, sid: str,
                 headers: dict[str, str] | None = None,
                 params: dict[str, Any] | None = None) -> None:
        self._client = httpx.Client(
            base_url=srv.url, headers={"Authorization": f"Bearer {key}", **(headers or {})},
            timeout=httpx.Timeout(10, read=None))
        self._path = f"/v1/sessions/{sid}/events"
        self._params = params
        self.events: list[dict] = []        # {"id", "event", "data", "mono", "wall"}
        self.comments: list[tuple[str, float]] = []
        self.status: int | None = None
        self.error: BaseException | None = None
        self.ended = threading.Event()
        self._ready = threading.Event()
        self._sock: socket.socket | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the SSE stream did not answer"
        assert self.status == 200, f"SSE stream answered {self.status}: {self.error}"

    def _run(self) -> None:
        try:
            with self._client.stream("GET", self._path, params=self._params) as resp:
                self.status = resp.status_code
                stream = resp.extensions.get("network_stream")
                if stream is not None:
                    self._sock = stream.get_extra_info("socket")
                if resp.status_code != 200:
                    resp.read()
                    return
                assert resp.headers["content-type"].startswith("text/event-stream")
                self._ready.set()
                fields: dict[str, str] = {}
                data: list[str] = []
                for line in resp.iter_lines():
                    if line == "":
                        if data:
                            self.events.append({
                                "id": fields.get("id"), "event": fields.get("event"),
                                "data": json.loads("\n".join(data)),
                                "mono": time.monotonic(), "wall": time.time()})
                        fields, data = {}, []
                    elif line.startswith(":"):
                        self.comments.append((line[1:].strip(), time.monotonic()))
                    else:
                        name, _, value = line.partition(":")
                        value = value.removeprefix(" ")
                        if name == "data":
                            data.append(value)
                        else:
                            fields[name] = value
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            if not self._closing:
                self.error = exc
        finally:
            self._ready.set()
            self.ended.set()

    # what was received

    @property
    def seqs(self) -> list[int]:
        return [e["data"]["seq"] for e in self.events]

    @property
    def data(self) -> list[dict]:
        return [e["data"] for e in self.events]

    @property
    def last_seq(self) -> int:
        return self.seqs[-1] if self.events else 0

    def check(self) -> None:
        """Every event's id and event fields agree with its data."""
        for e in self.events:
            assert e["id"] == str(e["data"]["seq"]), e
            assert e["event"] == e["data"]["type"], e
        assert_wellformed(self.data)

    def wait_seq(self, seq: int, deadline: float = EVENT_DEADLINE) -> None:
        wait_for(lambda: self.last_seq >= seq or self._dead(), deadline,
                 what=f"SSE event seq {seq}")
        assert self.last_seq >= seq, f"stream ended at {self.last_seq}: {self.error}"

    def wait_event(self, match: Callable[[dict], bool], deadline: float = EVENT_DEADLINE,
                   what: str = "an SSE event") -> dict:
        def found() -> dict | None:
            for e in list(self.events):
                if match(e["data"]):
                    return e
            if self._dead():
                raise AssertionError(f"stream ended waiting for {what}: {self.error}")
            return None

        return wait_for(found, deadline, what=what)  # type: ignore[return-value]

    def _dead(self) -> bool:
        return self.ended.is_set()

    def close(self) -> None:
        self._closing = True
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        self._client.close()

    def __enter__(self) -> SSEStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def make_server() -> Iterator[Callable[[dict[str, str]], LiveServer]]:
    """Servers with their own settings, stopped and removed afterwards."""
    made: list[LiveServer] = []

    def make(env: dict[str, str]) -> LiveServer:
        srv = LiveServer(make_data_dir(), env=env).start()
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.stop()
        shutil.rmtree(srv.data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def sleepy_server() -> Iterator[LiveServer]:
    """A server whose session boxes go to sleep half a second after their last use."""
    srv = LiveServer(make_data_dir(), env={"SOPHON_SESSION_IDLE_SECONDS": "0.5",
                                           "SOPHON_IDLE_CHECK_SECONDS": "0.1"}).start()
    yield srv
    srv.stop()
    shutil.rmtree(srv.data_dir, ignore_errors=True)


def wait_asleep(http: httpx.Client, sid: str, after_seq: int) -> None:
    """Until the session reports sleeping and its log says so after ``after_seq``.

    The status event is written once the box has fully stopped, so a request sent
    after it never meets a half-stopped box."""
    wait_for(lambda: http.get(f"/v1/sessions/{sid}").json()["status"] == "sleeping",
             EVENT_DEADLINE, what="the session to sleep")

    def slept() -> bool:
        return any(e["type"] == "status" and e["status"] == "sleeping"
                   for e in log_page(http, sid, after=after_seq)["events"])

    wait_for(slept, EVENT_DEADLINE, what="a status event 'sleeping'")


# --- 1. replay then live -----------------------------------------------------------

def test_sse_replays_the_log_then_stays_live(server: LiveServer, api_key: str,
                                             http: httpx.Client) -> None:
    sid = new_session(http)
    first = run_exec(http, sid, "echo one; echo two >&2")
    second = run_exec(http, sid, "echo three")
    known = log_page(http, sid)["last_seq"]
    assert known >= 1 + len(first) + len(second)

    with SSEStream(server, api_key, sid) as sse:
        sse.wait_seq(known)
        replayed = len(sse.events)
        assert sse.seqs[:replayed] == list(range(1, known + 1))
        assert sse.data[0]["type"] == "session_start"
        # Replayed events are the ones the exec responses handed out.
        by_seq = {e["seq"]: e for e in sse.data}
        for ev in first + second:
            assert by_seq[ev["seq"]] == ev

        live = run_exec(http, sid, "echo four; echo five")
        sse.wait_seq(live[-1]["seq"])
        assert live[0]["seq"] == known + 1
        by_seq = {e["seq"]: e for e in sse.data}
        for ev in live:
            assert by_seq[ev["seq"]] == ev
        assert output_of(live) == "four\nfive\n"

        sse.check()
        assert_contiguous(sse.seqs)
        assert sse.data == full_log(http, sid)[:len(sse.events)]


# --- 2. resume -----------------------------------------------------------------------

def test_resume_with_last_event_id_and_after(server: LiveServer, api_key: str,
                                             http: httpx.Client) -> None:
    sid = new_session(http)
    run_exec(http, sid, "echo a; echo b; echo c")
    run_exec(http, sid, "echo d")
    log = full_log(http, sid)
    total = log[-1]["seq"]
    n = 3
    assert total > n + 2

    with SSEStream(server, api_key, sid, headers={"Last-Event-ID": str(n)}) as by_header:
        by_header.wait_seq(total)
    with SSEStream(server, api_key, sid, params={"after": n}) as by_param:
        by_param.wait_seq(total)
    for sse in (by_header, by_param):
        sse.check()
        assert sse.seqs[0] == n + 1
        assert_contiguous(sse.seqs, n + 1)
        assert sse.data == log[n:]

    # Resuming at the end gives nothing until something new happens, then only that.
    with SSEStream(server, api_key, sid, headers={"Last-Event-ID": str(total)}) as tail:
        new = run_exec(http, sid, "echo e")
        tail.wait_seq(new[-1]["seq"])
        assert tail.seqs == [e["seq"] for e in new]

    r = http.get(f"/v1/sessions/{sid}/events", headers={"Last-Event-ID": "x1"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


# --- 3. restart --------------------------------------------------------------------

def test_resume_across_a_server_restart(own_server: LiveServer) -> None:
    key = own_server.add_user()
    with client(own_server, key) as http:
        sid = new_session(http)
        run_exec(http, sid, "echo before-1")
        with SSEStream(own_server, key, sid) as sse:
            run_exec(http, sid, "echo before-2")
            sse.wait_seq(full_log(http, sid)[-1]["seq"])
            sse.check()
            seen = sse.data
        # Made while no client listened, before the restart: must be replayed.
        unseen = run_exec(http, sid, "echo unseen")
        last_seen = seen[-1]["seq"]

        own_server.restart()

        after_restart = run_exec(http, sid, "echo after-restart")
        assert output_of(after_restart) == "after-restart\n"
        with SSEStream(own_server, key, sid, headers={"Last-Event-ID": str(last_seen)}) as sse2:
            sse2.wait_seq(after_restart[-1]["seq"])
            live = run_exec(http, sid, "echo live")
            sse2.wait_seq(live[-1]["seq"])
            sse2.check()
            resumed = sse2.data

        combined = seen + resumed
        assert_contiguous([e["seq"] for e in combined])
        assert combined == full_log(http, sid)[:len(combined)]
        got = {e["seq"]: e for e in resumed}
        for ev in unseen + after_restart + live:
            assert got[ev["seq"]] == ev


def test_graceful_stop_ends_open_sse_streams(own_server: LiveServer) -> None:
    key = own_server.add_user()
    with client(own_server, key) as http:
        sid = new_session(http)
    sse = SSEStream(own_server, key, sid)
    try:
        sse.wait_seq(1)
        assert own_server.proc is not None
        own_server.proc.send_signal(signal.SIGTERM)
        try:
            own_server.proc.wait(4)
        except subprocess.TimeoutExpired:
            pytest.fail("the server did not stop within 4 s of SIGTERM with an SSE "
                        "client connected")
        assert sse.ended.wait(2), "the SSE stream stayed open after the server stopped"
    finally:
        sse.close()  # lets a hanging server finish its shutdown
    # Ended by the server itself as it stops, not cut off at the deadline: no traceback.
    log = own_server.log.read_text()
    assert "Traceback" not in log and "graceful shutdown exceeded" not in log, log[-3000:]


def test_graceful_stop_with_a_terminal_and_streams_open_is_clean(
        own_server: LiveServer) -> None:
    from websockets.sync.client import connect

    key = own_server.add_user()
    with client(own_server, key) as http:
        sid = new_session(http)
    streams = [SSEStream(own_server, key, sid) for _ in range(2)]
    url = own_server.url.replace("http://", "ws://") + f"/v1/sessions/{sid}/terminal"
    try:
        with connect(url, additional_headers={"Authorization": f"Bearer {key}"},
                     open_timeout=15) as ws:
            ws.recv(timeout=15)  # the terminal is up
            for sse in streams:
                sse.wait_seq(1)
            assert own_server.proc is not None
            own_server.proc.send_signal(signal.SIGTERM)
            own_server.proc.wait(10)
    finally:
        for sse in streams:
            sse.close()
    log = own_server.log.read_text()
    assert "Traceback" not in log and "graceful shutdown exceeded" not in log, log[-3000:]


# --- 4. crash during an exec -------------------------------------------------------

def test_kill_9_during_exec_keeps_acknowledged_events(own_server: LiveServer) -> None:
    key = own_server.add_user()
    with client(own_server, key) as http:
        sid = new_session(http)
        received: list[dict] = []
        command = "for i in $(seq 1 50); do echo line-$i; sleep 0.1; done"
        with http.stream("POST", f"/v1/sessions/{sid}/exec",
                         json={"command": command, "timeout": 60}) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            while sum(e["type"] == "exec_output" for e in received) < 3:
                received.append(json.loads(next(lines)))
            own_server.kill()  # while the exec runs and the response is open
        assert received[0]["type"] == "exec_start"
        exec_id = received[0]["exec_id"]
        own_server.start()

        log = full_log(http, sid)
        assert_wellformed(log)
        assert_contiguous([e["seq"] for e in log])
        by_seq = {e["seq"]: e for e in log}
        for ev in received:
            assert by_seq.get(ev["seq"]) == ev, f"acknowledged event lost or changed: {ev}"
        mine = [e for e in log if e.get("exec_id") == exec_id]
        ends = [e for e in mine if e["type"] == "exec_end"]
        assert len(ends) == 1, mine
        assert mine[-1] is ends[0]
        assert ends[0]["error"] == "interrupted" and ends[0]["exit_code"] == -1
        assert output_of(mine).startswith("line-1\nline-2\nline-3\n")

        after = run_exec(http, sid, "echo after-crash")
        assert output_of(after) == "after-crash\n"
        assert after[-1]["exit_code"] == 0 and after[-1]["error"] is None
        assert after[0]["seq"] > ends[0]["seq"]
        assert_contiguous([e["seq"] for e in full_log(http, sid)])


# --- 5. JSON pages ----------------------------------------------------------------

def test_json_page_slices_the_log(http: httpx.Client) -> None:
    sid = new_session(http)
    run_exec(http, sid, "echo 1")
    run_exec(http, sid, "echo 2")
    whole = log_page(http, sid)
    events, last = whole["events"], whole["last_seq"]
    assert_wellformed(events)
    assert_contiguous([e["seq"] for e in events])
    assert last == events[-1]["seq"] >= 7
    assert http.get(f"/v1/sessions/{sid}").json()["last_seq"] == last

    page = log_page(http, sid, after=1, limit=3)
    assert [e["seq"] for e in page["events"]] == [2, 3, 4]
    assert page["events"] == events[1:4]
    assert page["last_seq"] == last
    assert [e["seq"] for e in log_page(http, sid, after=last - 1, limit=10)["events"]] == [last]
    assert log_page(http, sid, after=last) == {"events": [], "last_seq": last}
    assert log_page(http, sid, after=last + 100) == {"events": [], "last_seq": last}
    assert log_page(http, sid, limit=2)["events"] == events[:2]
    # Last-Event-ID works for pages too.
    r = http.get(f"/v1/sessions/{sid}/events", headers={**JSON, "Last-Event-ID": "2"})
    assert r.json()["events"] == events[2:]
    for bad in ({"limit": 0}, {"after": -1}):
        r = http.get(f"/v1/sessions/{sid}/events", headers=JSON, params=bad)
        assert r.status_code == 400, bad


# --- 6. heartbeats ------------------------------------------------------------------

def test_idle_sse_stream_gets_heartbeats(make_server: Callable[..., LiveServer]) -> None:
    srv = make_server({"SOPHON_SSE_HEARTBEAT_SECONDS": "0.2"})
    key = srv.add_user()
    with client(srv, key) as http:
        sid = new_session(http)
        last = log_page(http, sid)["last_seq"]
    with SSEStream(srv, key, sid, params={"after": last}) as sse:
        wait_for(lambda: len(sse.comments) >= 3, 5, what="three heartbeats")
        assert all(text == "heartbeat" for text, _ in sse.comments)
        assert not sse.events
        gaps = [b[1] - a[1] for a, b in zip(sse.comments, sse.comments[1:], strict=False)]
        assert all(0.1 < g < 1.0 for g in gaps), gaps


# --- 7. file changes ----------------------------------------------------------------

def test_file_changes_arrive_within_a_second(server: LiveServer, api_key: str,
                                             http: httpx.Client) -> None:
    sid = new_session(http)
    start = log_page(http, sid)["last_seq"]
    with SSEStream(server, api_key, sid, params={"after": start}) as sse:

        def change_of(path: str, kind: str, after_seq: int) -> dict:
            return sse.wait_event(
                lambda d: (d["type"] == "file_change" and d["path"] == path
                           and d["change"] == kind and d["seq"] > after_seq),
                what=f"file_change {kind} {path}")

        def check(ev: dict, changed_at: float, size: int | None) -> None:
            latency = ev["wall"] - changed_at
            assert latency < 1.0, f"{ev['data']['path']}: {latency:.3f} s"
            data = ev["data"]
            assert set(data) >= {"path", "change", "size", "diff", "type", "seq", "ts"}
            assert data["size"] == size

        # An exec writes a file.
        done = run_exec(http, sid, "printf 'hello\\nworld\\n' > from_exec.txt")
        t = time.time()
        ev = change_of("from_exec.txt", "created", done[0]["seq"])
        check(ev, t, 12)
        assert "+hello\n+world\n" in ev["data"]["diff"]
        assert ev["data"]["diff"].startswith("--- /dev/null\n+++ b/from_exec.txt\n")
        assert not ev["data"]["binary"]

        # An editor save: a new file, then a change to it with If-Match.
        seq = sse.last_seq
        r = http.put(f"/v1/sessions/{sid}/files/docs/note.md", content=b"old line\n")
        t = time.time()
        assert r.status_code == 201, r.text
        ev = change_of("docs/note.md", "created", seq)
        check(ev, t, 9)
        assert "+old line\n" in ev["data"]["diff"]

        got = http.get(f"/v1/sessions/{sid}/files/docs/note.md")
        assert got.status_code == 200 and got.json()["content"] == "old line\n"
        seq = sse.last_seq
        r = http.put(f"/v1/sessions/{sid}/files/docs/note.md", content=b"new line\n",
                     headers={"If-Match": got.headers["ETag"]})
        t = time.time()
        assert r.status_code == 200, r.text
        ev = change_of("docs/note.md", "modified", seq)
        check(ev, t, 9)
        diff = ev["data"]["diff"]
        assert "--- a/docs/note.md\n+++ b/docs/note.md\n" in diff
        assert "-old line\n" in diff and "+new line\n" in diff

        # A background process that outlives the exec writing it.
        seq = sse.last_seq
        bg = run_exec(http, sid, "setsid nohup sh -c 'sleep 0.5; echo late > bg.txt' "
                                 ">/dev/null 2>&1 </dev/null &")
        exec_done = time.time()
        assert bg[-1]["exit_code"] == 0
        ev = change_of("bg.txt", "created", seq)
        tree = http.get(f"/v1/sessions/{sid}/files").json()["entries"]
        (entry,) = [e for e in tree if e["path"] == "bg.txt"]
        written_at = entry["mtime"]
        assert written_at > exec_done + 0.2, "bg.txt was written by the exec itself"
        check(ev, written_at, 5)
        assert "+late\n" in ev["data"]["diff"]

        # A binary file: a change, no diff.
        seq = sse.last_seq
        run_exec(http, sid, "printf 'a\\000b' > blob.bin")
        t = time.time()
        ev = change_of("blob.bin", "created", seq)
        check(ev, t, 3)
        assert ev["data"]["binary"] and ev["data"]["diff"] is None

        # A delete.
        seq = sse.last_seq
        run_exec(http, sid, "rm from_exec.txt")
        t = time.time()
        ev = change_of("from_exec.txt", "deleted", seq)
        assert ev["wall"] - t < 1.0
        assert ev["data"]["size"] is None
        assert "-hello\n-world\n" in ev["data"]["diff"]

        sse.check()
        assert_contiguous(sse.seqs, start + 1)


# --- 8. sleeping --------------------------------------------------------------------

def test_idle_session_sleeps_and_wakes_with_its_files(sleepy_server: LiveServer) -> None:
    srv = sleepy_server
    key = srv.add_user()
    with client(srv, key) as http:
        sid = new_session(http)
        wrote = run_exec(http, sid, "echo kept > state.txt")
        end_seq = wrote[-1]["seq"]
        wait_asleep(http, sid, end_seq)

        again = run_exec(http, sid, "cat state.txt")
        assert output_of(again) == "kept\n"
        assert again[-1]["exit_code"] == 0
        log = log_page(http, sid, after=end_seq)["events"]
        statuses = [(e["status"], e.get("detail")) for e in log if e["type"] == "status"]
        assert ("idle", "woke up") in statuses, statuses
        assert statuses.index(("idle", "woke up")) > [s for s, _ in statuses].index("sleeping")
        got = http.get(f"/v1/sessions/{sid}/files/state.txt")
        assert got.status_code == 200 and got.json()["content"] == "kept\n"
        assert_contiguous([e["seq"] for e in full_log(http, sid)])


# --- 9. isolation -------------------------------------------------------------------

def test_another_user_sees_nothing_of_a_session(server: LiveServer, api_key: str,
                                                http: httpx.Client) -> None:
    sid = new_session(http, "private")
    run_exec(http, sid, "echo secret-content > mine.txt")
    r = http.put(f"/v1/sessions/{sid}/secrets/API_TOKEN", json={"value": "s3cr3t-value"})
    assert r.status_code == 204, r.text
    wait_for(lambda: any(e["type"] == "file_change" for e in full_log(http, sid)),
             EVENT_DEADLINE, what="the file_change of mine.txt")
    before_log = full_log(http, sid)
    before_view = http.get(f"/v1/sessions/{sid}").json()
    etag = http.get(f"/v1/sessions/{sid}/files/mine.txt").headers["ETag"]

    base = f"/v1/sessions/{sid}"
    routes: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", base, {}),
        ("PATCH", base, {"json": {"name": "hijacked"}}),
        ("DELETE", base, {}),
        ("GET", f"{base}/events", {"headers": JSON}),
        ("GET", f"{base}/events", {"headers": {"Accept": "text/event-stream"}}),
        ("GET", f"{base}/events", {"params": {"after": 0}}),
        ("POST", f"{base}/exec", {"json": {"command": "rm -rf ./*"}}),
        ("GET", f"{base}/files", {}),
        ("GET", f"{base}/files/mine.txt", {}),
        ("PUT", f"{base}/files/mine.txt", {"content": b"overwritten",
                                           "headers": {"If-Match": etag}}),
        ("PUT", f"{base}/files/new.txt", {"content": b"planted"}),
        ("GET", f"{base}/diff", {}),
        ("GET", f"{base}/approvals", {}),
        ("POST", f"{base}/approvals/apr_x", {"json": {"decision": "allow"}}),
        ("GET", f"{base}/secrets", {}),
        ("PUT", f"{base}/secrets/API_TOKEN", {"json": {"value": "stolen"}}),
        ("PUT", f"{base}/secrets/OTHER", {"json": {"value": "planted"}}),
        ("DELETE", f"{base}/secrets/API_TOKEN", {}),
        ("GET", f"{base}/export", {}),
    ]
    other = server.add_user()
    with client(server, other) as intruder:
        for method, path, kw in routes:
            # Streamed, so a wrongly opened SSE stream fails the test instead of hanging it.
            with intruder.stream(method, path, **kw) as r:
                status = r.status_code
                body = r.read() if status != 200 else b""
            assert status == 404, f"{method} {path}: {status} {body[:200]!r}"
            got = json.loads(body)
            assert got["error"] == "not_found", (method, path, got)
            # The same answer as for a session that does not exist at all.
            fake = path.replace(sid, "ses_" + "0" * 24)
            with intruder.stream(method, fake, **kw) as r:
                assert r.status_code == 404 and json.loads(r.read())["error"] == "not_found"
        # Nor is it listed.
        assert intruder.get("/v1/sessions").json()["sessions"] == []

    # The owner's session is unharmed.
    view = http.get(f"/v1/sessions/{sid}").json()
    assert view["name"] == "private" and view["last_seq"] == before_view["last_seq"]
    assert full_log(http, sid) == before_log
    got = http.get(f"/v1/sessions/{sid}/files/mine.txt")
    assert got.json()["content"] == "secret-content\n" and got.headers["ETag"] == etag
    assert http.get(f"/v1/sessions/{sid}/files/new.txt").status_code == 404
    assert http.get(f"/v1/sessions/{sid}/secrets").json() == {"names": ["API_TOKEN"]}
    check = run_exec(http, sid, "cat mine.txt; printenv API_TOKEN")
    assert output_of(check) == "secret-content\n[redacted]\n"


def test_change_made_by_the_waking_request_is_reported(sleepy_server: LiveServer) -> None:
    """Each session sleeps, then one exec wakes it and at once writes a file; a marker
    written 0.3 s later proves the watcher is running. The race is timing-dependent
    (about a third of wakes lose the change here), so many sessions try it at once."""
    srv = sleepy_server
    key = srv.add_user()
    sessions, rounds = 12, 2

    def trial(sid: str, http: httpx.Client, n: int, after_seq: int) -> tuple[bool, int]:
        wait_asleep(http, sid, after_seq)
        ran = run_exec(http, sid,
                       f"echo woke > woke{n}.txt; sleep 0.3; echo m > marker{n}.txt")

        def changed() -> set[str]:
            return {e["path"] for e in full_log(http, sid) if e["type"] == "file_change"}

        wait_for(lambda: f"marker{n}.txt" in changed(), EVENT_DEADLINE,
                 what=f"the change of marker{n}.txt")
        return f"woke{n}.txt" in changed(), ran[-1]["seq"]

    def one_session(i: int) -> list[bool]:
        with client(srv, key) as http:
            sid = new_session(http, f"wake-{i}")
            seen, after_seq = [], 0
            for n in range(rounds):
                ok, after_seq = trial(sid, http, n, after_seq)
                seen.append(ok)
            return seen

    with ThreadPoolExecutor(sessions) as pool:
        results = [ok for got in pool.map(one_session, range(sessions)) for ok in got]
    lost = results.count(False)
    assert lost == 0, f"{lost} of {len(results)} changes made on waking were never reported"
