"""The Python SDK against a live server: every example of docs/SDK.md, run as a user would
run it, then the SDK's own promises (typed errors, pagination, an events iterator that
survives a server restart, the AsyncClient).

One ``sophon serve`` per module talks to one in-process scripted model server. Each
documented example runs in a fresh interpreter (``python -c``) with ``SOPHON_URL`` and
``SOPHON_API_KEY`` set for a fresh user, exactly as it is printed. An HTML comment line
above a block sets it up: ``<!-- script: NAME -->`` loads ``SCRIPTS[NAME]`` into the model
server first; ``<!-- expect: TEXT -->`` requires TEXT in what the block printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
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
from tests.conftest import LiveServer, free_port, make_data_dir, wait_for

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "SDK.md"
BLOCK_TIMEOUT = 60
# Settings inherited from the environment that would change what the server or a block does.
INHERITED = ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "SOPHON_ANTHROPIC_API_KEY",
             "SOPHON_ANTHROPIC_BASE_URL", "SOPHON_USER_TOKEN_BUDGET", "SOPHON_URL",
             "SOPHON_API_KEY", "XDG_CONFIG_HOME")


def tool(name: str, **input: Any) -> dict[str, Any]:
    return {"type": "tool_use", "name": name, "input": input}


# The scripts a documented block may ask for: kept simple on purpose.
SCRIPTS: dict[str, dict[str, Any]] = {
    # One shell command (the first in a session: it waits for approval), then a text reply.
    "approval": {"turns": [
        {"content": ["I'll run the tests.",
                     tool("Bash", command="python3 -m unittest -q 2>&1")]},
        {"rules": [{"when": {"last_tool_result_contains": "OK"},
                    "reply": "All 3 tests pass."}],
         "default": "The tests did not pass."},
    ]},
    # Text replies only (one per turn; two turns may run at once).
    "text": {"turns": ["Hello!", "Hello!"]},
}


# --- the documented examples -----------------------------------------------------------

@dataclass
class Block:
    number: int
    heading: str
    code: str
    line: int
    script: str | None = None
    expect: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-")
        return f"{self.number:02d}-{slug}"


MARKER = re.compile(r"^<!--\s*(\w+):\s*(.*?)\s*-->$")


def parse_blocks(text: str) -> list[Block]:
    """Every ```python block, with the marker comments directly above its fence."""
    lines = text.splitlines()
    blocks: list[Block] = []
    heading = "top"
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.strip() == "```python":
            end = lines.index("```", i + 1)
            block = Block(len(blocks) + 1, heading, "\n".join(lines[i + 1:end]) + "\n", i + 1)
            j = i - 1
            while j >= 0 and (m := MARKER.match(lines[j].strip())):
                if m.group(1) == "script":
                    block.script = m.group(2)
                elif m.group(1) == "expect":
                    block.expect.insert(0, m.group(2))
                else:
                    raise ValueError(f"SDK.md line {j + 1}: unknown marker {m.group(1)!r}")
                j -= 1
            blocks.append(block)
            i = end
        i += 1
    return blocks


BLOCKS = parse_blocks(DOC.read_text())


@pytest.fixture(scope="module")
def model() -> Iterator[ModelServer]:
    with ModelServer() as ms:
        yield ms


@pytest.fixture(scope="module")
def server(model: ModelServer) -> Iterator[LiveServer]:
    data = make_data_dir()
    srv = LiveServer(data)
    for name in INHERITED:
        srv.env.pop(name, None)
    srv.env.update({"ANTHROPIC_API_KEY": "test-key", "ANTHROPIC_BASE_URL": model.url})
    srv.start()
    yield srv
    srv.stop()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def client(server: LiveServer, api_key: str) -> Iterator[Client]:
    with Client(server.url, api_key) as c:
        yield c


@pytest.fixture
def no_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No SOPHON_URL / SOPHON_API_KEY and an empty config directory."""
    for name in ("SOPHON_URL", "SOPHON_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    return config


def test_the_doc_has_its_examples() -> None:
    assert len(BLOCKS) >= 12
    headings = {b.heading for b in BLOCKS}
    for needed in ("Configure", "Errors", "Sessions", "Run a command", "Files", "Diff",
                   "Secrets", "Talk to the agent", "Read the event log", "Usage", "Export",
                   "Delete", "The execution API", "AsyncClient", "RawClient"):
        assert needed in headings, f"no example under '## {needed}'"
    for block in BLOCKS:
        assert block.script is None or block.script in SCRIPTS, block.id


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_documented_example_runs(block: Block, server: LiveServer, model: ModelServer,
                                 tmp_path: Path) -> None:
    model.set_script(SCRIPTS[block.script] if block.script else None)
    key = server.add_user()
    env = {k: v for k, v in os.environ.items() if k not in INHERITED}
    env.update({"SOPHON_URL": server.url, "SOPHON_API_KEY": key,
                "XDG_CONFIG_HOME": str(tmp_path / "config")})
    try:
        proc = subprocess.run([sys.executable, "-c", block.code], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
        where = f"docs/SDK.md line {block.line}\n--- stdout\n{proc.stdout}\n--- stderr\n" \
                f"{proc.stderr}"
        assert proc.returncode == 0, where
        for text in block.expect:
            assert text in proc.stdout, f"{text!r} not printed; {where}"
        if block.script:
            assert model.requests, f"the example never called the model; {where}"
    finally:
        with Client(server.url, key) as mine:
            for session in list(mine.list_sessions()):
                mine.delete_session(session.id)


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

def run(client: Client, sid: str, command: str) -> list[Any]:
    return list(client.exec(sid, command))


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


# --- AsyncClient ----------------------------------------------------------------------------

async def test_async_client_basics(server: LiveServer, api_key: str) -> None:
    async with AsyncClient(server.url, api_key) as ac:
        s = await ac.create_session("async", template="python", base="python")
        assert (await ac.get_session(s.id)).name == "async"
        assert [x.id for x in await ac.list_sessions()] == [s.id]
        assert (await ac.update_session(s.id, name="renamed")).name == "renamed"

        assert "calc.py" in {e.path for e in (await ac.files(s.id)).entries}
        calc = await ac.read_file(s.id, "calc.py")
        etag = await ac.write_file(s.id, "calc.py", calc.content + "# edited\n",
                                   etag=calc.etag)
        assert etag != calc.etag
        with pytest.raises(PreconditionFailedError):
            await ac.write_file(s.id, "calc.py", "lost", etag=calc.etag)
        assert "+# edited" in await ac.diff(s.id)

        await ac.set_secret(s.id, "TOKEN", "hush-hush")
        ran = [e async for e in ac.exec(s.id, 'echo "hi $TOKEN"')]
        assert [e.type for e in ran][0::len(ran) - 1] == ["exec_start", "exec_end"]
        assert "".join(e.data for e in ran if e.type == "exec_output") == "hi [redacted]\n"

        seen = []
        async with contextlib.aclosing(ac.events(s.id)) as events:
            async for event in events:
                seen.append(event)
                if event.seq == ran[-1].seq:
                    break
        assert seen[0].type == "session_start"
        assert [e.seq for e in seen] == list(range(1, len(seen) + 1)) and seen[-len(ran):] == ran

        result = await ac.execute("print(6 * 7)")
        assert (result.success, result.stdout) == (True, "42\n")
        usage = await ac.usage(s.id)
        assert usage["totals"]["input_tokens"] == 0 and usage["calls"] == []

        await ac.delete_session(s.id)
        with pytest.raises(NotFoundError) as info:
            await ac.get_session(s.id)
        assert info.value.code == "not_found"


async def test_async_client_errors(server: LiveServer) -> None:
    async with AsyncClient(server.url, "sk-sophon-wrong") as ac:
        with pytest.raises(AuthenticationError) as info:
            await ac.list_sessions()
        assert (info.value.status, info.value.code) == (401, "unauthorized")
    async with AsyncClient(f"http://127.0.0.1:{free_port()}", "sk-sophon-any") as ac:
        with pytest.raises(ConnectionFailed):
            await ac.get_session("ses_x")
        with pytest.raises(ConnectionFailed):
            [e async for e in ac.exec("ses_x", "true")]


async def test_async_turn_with_an_approval(server: LiveServer, api_key: str,
                                           model: ModelServer) -> None:
    model.set_script(SCRIPTS["approval"])
    async with AsyncClient(server.url, api_key) as ac:
        s = await ac.create_session("agent", template="python", base="python")
        await ac.send_message(s.id, "Run the tests.")
        with pytest.raises(ConflictError):
            await ac.send_message(s.id, "Again.")
        texts = []
        async with contextlib.aclosing(ac.events(s.id, after=s.last_seq)) as events:
            async for event in events:
                if event.type == "approval_request":
                    assert [a["approval_id"] for a in await ac.approvals(s.id)] == \
                        [event.approval_id]
                    decision = await ac.decide(s.id, event.approval_id, "allow")
                    assert (decision.type, decision.decision) == ("approval_decision",
                                                                  "allow")
                elif event.type == "assistant":
                    texts.append(event.text)
                elif event.type == "status" and event.status == "idle":
                    break
        assert texts == ["I'll run the tests.", "All 3 tests pass."]
        assert await ac.interrupt(s.id) is False
        assert (await ac.usage(s.id))["totals"]["input_tokens"] > 0


# --- reconnecting with Last-Event-ID ------------------------------------------------------------

class Proxy:
    """A TCP proxy in front of the server that keeps what went through each connection
    and can cut them all, as a network or a load balancer would."""

    def __init__(self, port: int) -> None:
        self._upstream = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.sent: list[bytearray] = []  # what each client sent, by connection
        self.received: list[bytearray] = []  # what the server answered
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._upstream))
            up, down = bytearray(), bytearray()
            with self._lock:
                self.sent.append(up)
                self.received.append(down)
                self._open += [client, server]
            for src, dst, log in ((client, server, up), (server, client, down)):
                threading.Thread(target=self._pump, args=(src, dst, log), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, log: bytearray) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                log += data
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self._lock:
            open_, self._open = self._open, []
        for s in open_:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def event_streams(self, sid: str) -> list[tuple[str | None, list[int]]]:
        """For each events request: its Last-Event-ID, and the ids the server sent back."""
        with self._lock:
            pairs = list(zip(self.sent, self.received, strict=True))
        out = []
        for up, down in pairs:
            head = bytes(up).decode("latin-1")
            if not head.startswith(f"GET /v1/sessions/{sid}/events"):
                continue
            last = re.search(r"(?im)^last-event-id: *(\d+)\r$", head)
            ids = [int(i) for i in re.findall(rb"(?m)^id: (\d+)$", bytes(down))]
            out.append((last.group(1) if last else None, ids))
        return out

    def close(self) -> None:
        self._listener.close()
        self.cut()


@pytest.fixture
def proxy(server: LiveServer) -> Iterator[Proxy]:
    p = Proxy(server.port)
    yield p
    p.close()


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


async def test_async_events_resume_after_the_last_event_seen(client: Client, proxy: Proxy,
                                                             api_key: str) -> None:
    sid = client.create_session("resume").id
    run(client, sid, "echo before")
    before = client.get_session(sid).last_seq
    reconnects: list[int] = []
    got: list[Any] = []
    async with AsyncClient(proxy.url, api_key) as follower, contextlib.aclosing(
            follower.events(sid, on_reconnect=reconnects.append)) as events:
        async for event in events:
            got.append(event)
            if event.seq == before:
                proxy.cut()
                during = await asyncio.to_thread(run, client, sid, "echo during")
            elif reconnects and event.type == "exec_end":
                break
    streams = proxy.event_streams(sid)
    assert [last for last, _ in streams] == ["0", str(before)] and reconnects == [before]
    assert streams[1][1][0] == before + 1
    assert [e.seq for e in got] == list(range(1, during[-1].seq + 1))


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


LONG = "import time\nprint('started', flush=True)\ntime.sleep(120)\n"


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


# --- AsyncClient: everything Client has ----------------------------------------------------------

def test_async_client_has_every_method_of_client() -> None:
    public = {n for n in dir(Client) if not n.startswith("_")} - {"close"}
    missing = {n for n in public if not hasattr(AsyncClient, n)}
    assert not missing, missing


async def poll(check: Callable[[], Awaitable[Any]], what: str, deadline: float = 30) -> Any:
    """``wait_for`` for coroutines: the first truthy answer, or fail after ``deadline`` s."""
    end = time.monotonic() + deadline
    for _ in itertools.count():
        if value := await check():
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def running(ac: AsyncClient, trace: str) -> bool:
    return (await ac.get_execution(trace))["status"] == "running"


async def idle(ac: AsyncClient, sid: str) -> bool:
    return (await ac.get_session(sid)).status == "idle"


async def test_async_client_everything_else(server: LiveServer, api_key: str,
                                            model: ModelServer, tmp_path: Path) -> None:
    async with AsyncClient(server.url, api_key) as ac:
        assert (await ac.me())["name"]
        s = await ac.create_session("more", template="python", base="python")
        ran = [e async for e in ac.exec(s.id, "echo hi")]
        log = [e async for e in ac.events(s.id, follow=False)]
        assert [e.seq for e in log] == list(range(1, len(log) + 1)) and log[-len(ran):] == ran
        assert await ac.event_page(s.id, after=1, limit=2) == log[1:3]

        await ac.set_secret(s.id, "ONE", "first-secret")
        await ac.set_secret(s.id, "TWO", "second-secret")
        assert await ac.secrets(s.id) == ["ONE", "TWO"]
        await ac.delete_secret(s.id, "ONE")
        assert await ac.secrets(s.id) == ["TWO"]

        seen: list[int] = []
        size = await ac.export(s.id, tmp_path / "out", progress=seen.append)
        archive = tmp_path / "out" / f"{s.id}.tar.gz"
        assert archive.stat().st_size == size == seen[-1]
        with tarfile.open(archive) as tar:
            assert "project/calc.py" in tar.getnames()
        buffer = io.BytesIO()
        assert await ac.export(s.id, buffer) > 0 and buffer.getvalue()[:2] == b"\x1f\x8b"
        with pytest.raises(NotFoundError):
            await ac.export("ses_nope", tmp_path / "nope.tar.gz")
        assert not (tmp_path / "nope.tar.gz").exists()

        streamed = [e async for e in ac.execute_stream("print('a'); print('b')")]
        assert streamed[0]["type"] == "status" and streamed[-1]["type"] == "result"
        assert "".join(e["data"] for e in streamed if e["type"] == "output") == "a\nb\n"
        assert (await ac.get_execution(streamed[0]["trace_id"]))["stdout"] == "a\nb\n"
        trace = (await ac.start_execution(LONG, timeout=300))["trace_id"]
        await poll(lambda: running(ac, trace), "the execution to run")
        assert await ac.cancel_execution(trace) == "cancelled"
        assert (await ac.get_execution(trace))["status"] == "cancelled"
        assert [e["type"] async for e in ac.execution_output(trace)][-1] == "result"

        # approve and deny, one after the other (ask_once: the shell asks until allowed)
        model.set_script({"turns": [
            {"content": [tool("Bash", command="echo first")]}, {"reply": "denied, fine"},
            {"content": [tool("Bash", command="echo second")]}, {"reply": "done"}]})
        for answer in ("deny", "approve"):
            await ac.send_message(s.id, "go")
            pending = await poll(lambda: ac.approvals(s.id), "an approval request")
            if answer == "deny":
                decision = await ac.deny(s.id, pending[0]["approval_id"], reason="no")
            else:
                decision = await ac.approve(s.id, pending[0]["approval_id"])
            assert decision.decision == ("deny" if answer == "deny" else "allow")
            await poll(lambda: idle(ac, s.id), "the turn to end")
        outputs = [e.content for e in await ac.event_page(s.id, limit=5000)
                   if e.type == "tool_result"]
        assert outputs[0].startswith("Permission to use Bash was denied: no")
        assert outputs[1].strip() == "second"
        assert [x.id for x in await ac.list_sessions(limit=1)] == [s.id]
