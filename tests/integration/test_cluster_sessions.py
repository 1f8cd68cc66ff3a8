"""Three nodes on one PostgreSQL database and one data directory (the storage every node
reaches; here, the same disk), as a team past one machine runs them: any node serves any
session, the node that runs a session's box answers what needs it whichever node was
asked, a killed node's sessions move on within the lease, new sessions go where there is
room, and a drained node hands its sessions on."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from sophon.testing import ModelServer
from tests.conftest import LiveServer, model_env, wait_for
from tests.e2e.cli_support import cli_env, sophon
from tests.integration.postgres_support import NEEDS_POSTGRES, nodes_on
from tests.integration.session_support import sh, sh_end
from tests.integration.test_agent_edges import tool_use
from tests.integration.test_mcp import call
from tests.integration.test_mcp import connect as mcp_session
from tests.integration.test_session_events import SSEStream
from tests.integration.test_terminal import Term, printed_lines

pytestmark = NEEDS_POSTGRES

LEASE = 3.0
FAST = {"SOPHON_NODE_HEARTBEAT_SECONDS": "0.3", "SOPHON_NODE_LEASE_SECONDS": str(LEASE)}
JSON = {"Accept": "application/json"}


@pytest.fixture
def trio(postgres_url: str) -> Iterator[tuple[ModelServer, list[LiveServer]]]:
    with ModelServer() as model, nodes_on(postgres_url, "abc",
                                          {**FAST, **model_env(model.url)}) as nodes:
        yield model, nodes


def client(srv: LiveServer, key: str) -> httpx.Client:
    return httpx.Client(base_url=srv.url, timeout=60,
                        headers={"Authorization": f"Bearer {key}"})


def node_id(srv: LiveServer) -> str:
    return str(httpx.get(f"{srv.url}/healthz").json()["node"]["id"])


def owner(postgres_url: str, sid: str) -> str | None:
    """The node that runs the session, as the database says."""
    from sophon.store.db import make_engine, sessionmaker
    from sophon.store.tables import SessionRow

    async def read() -> str | None:
        engine = make_engine(postgres_url)
        try:
            async with sessionmaker(engine)() as db:
                row = await db.get(SessionRow, sid)
                return row.node_id if row else None
        finally:
            await engine.dispose()

    return asyncio.run(read())


def page(http: httpx.Client, sid: str) -> list[dict[str, Any]]:
    r = http.get(f"/v1/sessions/{sid}/events", params={"limit": 5000}, headers=JSON)
    assert r.status_code == 200, r.text
    return list(r.json()["events"])


def wait_event(http: httpx.Client, sid: str, kind: str, deadline: float = 30,
               **fields: Any) -> dict[str, Any]:
    return wait_for(lambda: next((e for e in page(http, sid) if e["type"] == kind and all(
        e.get(k) == v for k, v in fields.items())), None), deadline,
        what=f"a {kind} event {fields}")  # type: ignore[return-value]


def wait_idle(http: httpx.Client, sid: str) -> None:
    wait_for(lambda: http.get(f"/v1/sessions/{sid}").json()["status"] in ("idle", "sleeping"),
             30, what="the turn to end")


def test_a_session_is_served_through_every_node_as_one(
        trio: tuple[ModelServer, list[LiveServer]], postgres_url: str) -> None:
    model, (a, b, c) = trio
    key = a.add_user(database_url=postgres_url)
    stranger = a.add_user(database_url=postgres_url)
    on_a, on_b, on_c = client(a, key), client(b, key), client(c, key)
    sid = on_a.post("/v1/sessions", json={"name": "shared"}).json()["id"]
    assert owner(postgres_url, sid) == node_id(a)  # made on A, with room: run by A

    with SSEStream(b, key, sid) as far:
        # An exec through C runs in A's box; a write through B with If-Match too.
        assert sh(on_c, sid, "echo from-c > c.txt; cat c.txt") == "from-c\n"
        etag = on_b.get(f"/v1/sessions/{sid}/files/c.txt").headers["etag"]
        put = on_b.put(f"/v1/sessions/{sid}/files/c.txt", content=b"by-b\n",
                       headers={"If-Match": etag})
        assert put.status_code == 200, put.text
        stale = on_c.put(f"/v1/sessions/{sid}/files/c.txt", content=b"late\n",
                         headers={"If-Match": etag})
        assert stale.status_code == 412 and stale.json()["error"] == "precondition_failed"

        # A turn sent through C, its shell approval answered through B, and the next
        # turn interrupted through B while its command runs.
        model.set_script([
            {"content": [tool_use("Bash", {"command": "cat c.txt"}, "toolu_read")]},
            "It says by-b.",
            {"content": [tool_use("Bash", {"command": "sleep 60"}, "toolu_slow")]},
            "never sent",
        ])
        assert on_c.post(f"/v1/sessions/{sid}/messages",
                         json={"content": "read it"}).status_code == 202
        asked = wait_event(on_b, sid, "approval_request")
        decided = on_b.post(f"/v1/sessions/{sid}/approvals/{asked['approval_id']}",
                            json={"decision": "allow"})
        assert decided.status_code == 200, decided.text
        result = wait_event(on_c, sid, "tool_result", tool_use_id="toolu_read")
        assert "by-b" in result["content"]
        wait_event(on_a, sid, "assistant", text="It says by-b.")
        wait_idle(on_b, sid)

        assert on_b.post(f"/v1/sessions/{sid}/messages",
                         json={"content": "wait"}).status_code == 202
        wait_event(on_c, sid, "tool_use", tool_use_id="toolu_slow")
        started = time.monotonic()
        stopped = on_b.post(f"/v1/sessions/{sid}/interrupt")
        assert stopped.json() == {"interrupted": True}, stopped.text
        assert time.monotonic() - started < 10
        wait_idle(on_c, sid)
        assert len(model.requests) == 3  # the interrupted turn asked no more

        # One stream, on a node that ran nothing of it: every event once, in order.
        last = on_a.get(f"/v1/sessions/{sid}/events", headers=JSON).json()["last_seq"]
        far.wait_seq(last)
        assert far.seqs == list(range(1, last + 1))
        assert far.data == page(on_c, sid)

    # A terminal opened on C is a shell in A's box.
    with connect(f"{c.url.replace('http', 'ws')}/v1/sessions/{sid}/terminal",
                 additional_headers={"Authorization": f"Bearer {key}"},
                 open_timeout=15) as ws:
        term = Term(ws)
        term.send("cat c.txt; echo $((6*7))\r")
        assert "42" in printed_lines(term.until("42"))
        assert "by-b" in printed_lines(term.seen)
    # The dashboard on C: signed in by cookie, a save (CSRF token, C's Origin) and a
    # terminal (C's Origin) go to A, which checks them against the Host the browser used.
    signed = httpx.post(f"{c.url}/v1/auth/session", json={"api_key": key})
    cookie = f"sophon_session={signed.cookies['sophon_session']}"
    browser = {"Cookie": cookie, "Origin": c.url}
    saved = httpx.put(f"{c.url}/v1/sessions/{sid}/files/c.txt", content=b"by-browser\n",
                      headers={**browser, "X-CSRF-Token": signed.json()["csrf_token"],
                               "If-Match": on_a.get(f"/v1/sessions/{sid}/files/c.txt")
                               .headers["etag"]})
    assert saved.status_code == 200, saved.text
    forged = httpx.put(f"{c.url}/v1/sessions/{sid}/files/c.txt", content=b"x",
                       headers={**browser, "Origin": "http://evil.example"})
    assert forged.status_code == 403
    with connect(f"{c.url.replace('http', 'ws')}/v1/sessions/{sid}/terminal",
                 additional_headers=browser, open_timeout=15) as ws:
        term = Term(ws)
        term.send("cat c.txt\r")
        assert "by-browser" in printed_lines(term.until("by-browser"))
    with pytest.raises(InvalidStatus):  # another site's page may not open one
        connect(f"{c.url.replace('http', 'ws')}/v1/sessions/{sid}/terminal",
                additional_headers={**browser, "Origin": "http://evil.example"},
                open_timeout=15)
    with pytest.raises(InvalidStatus):  # a stranger's refusal is passed on
        connect(f"{c.url.replace('http', 'ws')}/v1/sessions/{sid}/terminal",
                additional_headers={"Authorization": f"Bearer {stranger}"}, open_timeout=15)

    # An agent's MCP tool calls through C: run by A, like every other request.
    async def as_an_agent() -> tuple[dict[str, Any], dict[str, Any]]:
        async with mcp_session(c, key) as agent:
            ran = await call(agent, "claude_code_exec", session_id=sid, command="cat c.txt")
            made = await call(agent, "claude_code_start", name="by-mcp")
            return ran, made

    ran, made = asyncio.run(as_an_agent())
    assert ran["exit_code"] == 0 and "by-browser" in ran["output"], ran
    assert owner(postgres_url, made["session_id"]) in {node_id(n) for n in (a, b, c)}

    # Another user's session is a 404 on every node, whatever the route.
    for srv in (a, b, c):
        with client(srv, stranger) as other:
            for method, path in (("GET", ""), ("GET", "/events"), ("POST", "/exec"),
                                 ("GET", "/files/c.txt"), ("POST", "/interrupt")):
                r = other.request(method, f"/v1/sessions/{sid}{path}",
                                  json={"command": "true"} if path == "/exec" else None,
                                  headers=JSON)
                assert r.status_code == 404, (srv.url, method, path, r.text)
    assert owner(postgres_url, sid) == node_id(a)  # nothing moved


def test_a_killed_node_s_sessions_move_on_with_nothing_lost(
        trio: tuple[ModelServer, list[LiveServer]], postgres_url: str) -> None:
    model, (a, b, c) = trio
    key = a.add_user(database_url=postgres_url)
    on_a, on_b = client(a, key), client(b, key)
    sid = on_a.post("/v1/sessions", json={"name": "moving"}).json()["id"]
    assert owner(postgres_url, sid) == node_id(a)
    sh(on_a, sid, "echo one > notes.txt && git add -A && "
                  "git -c user.name=t -c user.email=t@t commit -qm one")
    model.set_script([
        {"content": [tool_use("Bash", {"command": "sleep 60"}, "toolu_slow")]},
        "Carrying on.",
    ])
    far = SSEStream(b, key, sid)
    assert on_a.post(f"/v1/sessions/{sid}/messages",
                     json={"content": "take your time"}).status_code == 202
    asked = wait_event(on_b, sid, "approval_request")
    on_b.post(f"/v1/sessions/{sid}/approvals/{asked['approval_id']}",
              json={"decision": "allow"})
    wait_event(on_b, sid, "tool_use", tool_use_id="toolu_slow")
    # ... and an exec through C, running in A's box too, when A dies.
    exec_failed: list[BaseException] = []

    def long_exec() -> None:
        try:
            with client(c, key) as on_c:
                on_c.post(f"/v1/sessions/{sid}/exec", json={"command": "sleep 60"})
        except BaseException as exc:  # noqa: BLE001 (the connection dies with A)
            exec_failed.append(exc)

    runner = threading.Thread(target=long_exec, daemon=True)
    runner.start()
    slow = wait_event(on_b, sid, "exec_start", command="sleep 60")["exec_id"]
    before = far.last_seq

    killed = time.monotonic()
    a.kill()
    cut = far.wait_event(lambda e: e["type"] == "session_error", LEASE + 15,
                         "the turn reported cut off")["data"]
    took = time.monotonic() - killed
    assert cut["code"] == "interrupted" and "node" in cut["message"], cut
    assert took < LEASE + 5, took
    new_owner = owner(postgres_url, sid)
    assert new_owner in (node_id(b), node_id(c))
    exec_end = far.wait_event(lambda e: e["type"] == "exec_end" and e["exec_id"] == slow,
                              10, "the exec's end")["data"]
    assert exec_end["exit_code"] == -1 and exec_end["error"] == "interrupted"
    wait_idle(on_b, sid)
    runner.join(10)

    # A client resuming from where it was, on the node it reaches now: no gap, no twice.
    last = on_b.get(f"/v1/sessions/{sid}/events", headers=JSON).json()["last_seq"]
    far.wait_seq(last)
    assert far.seqs == list(range(1, last + 1))
    far.close()
    with SSEStream(b, key, sid, headers={"Last-Event-ID": str(before)}) as resumed:
        resumed.wait_seq(last)
        assert resumed.seqs == list(range(before + 1, last + 1))

    # Files and git history are whole, and the conversation goes on where it was.
    assert sh(on_b, sid, "git log --format=%s; cat notes.txt") == "one\nInitial commit\none\n"
    assert on_b.post(f"/v1/sessions/{sid}/messages",
                     json={"content": "go on"}).status_code == 202
    wait_event(on_b, sid, "assistant", text="Carrying on.")
    history = model.requests[-1]["messages"]
    assert history[0]["content"][0]["text"] == "take your time"
    results = [b for m in history if isinstance(m["content"], list)
               for b in m["content"] if b.get("type") == "tool_result"]
    assert len(results) == 1 and results[0]["is_error"]
    assert history[-1]["content"][-1]["text"] == "go on"


def test_new_sessions_go_where_there_is_room_and_a_drained_node_hands_its_own_on(
        trio: tuple[ModelServer, list[LiveServer]], postgres_url: str, tmp_path: Any) -> None:
    _, (a, b, c) = trio
    admin = a.add_user("admin", database_url=postgres_url)
    key = a.add_user(database_url=postgres_url)
    on_a = client(a, key)
    ids = [on_a.post("/v1/sessions", json={"name": f"s{i}"}).json()["id"] for i in range(3)]
    # All asked of A; one each, the fewest first.
    placed = [owner(postgres_url, sid) for sid in ids]
    assert sorted(placed) == sorted(node_id(n) for n in (a, b, c)), placed
    for sid in ids:
        sh(on_a, sid, f"echo {sid} > mine.txt")
    [on_b_sid] = [sid for sid, n in zip(ids, placed, strict=True) if n == node_id(b)]

    env = cli_env(tmp_path, SOPHON_URL=c.url, SOPHON_API_KEY=admin)
    drained = sophon(env, "node", "drain", node_id(b))
    assert drained.returncode == 0, drained.stderr
    assert "draining" in drained.stdout
    refused = sophon(cli_env(tmp_path, SOPHON_URL=c.url, SOPHON_API_KEY=key),
                     "node", "drain", node_id(b))
    assert refused.returncode == 1 and "SOPHON_ADMIN_USERS" in refused.stderr

    def sessions_on(n: LiveServer) -> int:
        r = httpx.get(f"{c.url}/v1/cluster", headers={"Authorization": f"Bearer {admin}"})
        [row] = [x for x in r.json()["nodes"] if x["id"] == node_id(n)]
        assert row["draining"]
        return int(row["sessions"])

    wait_for(lambda: sessions_on(b) == 0, 15, 0.2, "B to hand its session on")
    listed = sophon(env, "cluster")
    assert "draining" in listed.stdout, listed.stdout
    # The session works through B still, now run by another node, its files whole.
    with client(b, key) as on_b:
        printed, end = sh_end(on_b, on_b_sid, "cat mine.txt")
        got = (printed, end["exit_code"], end["error"])
        assert got == (f"{on_b_sid}\n", 0, None), json.dumps(end)
    assert owner(postgres_url, on_b_sid) in (node_id(a), node_id(c))
    # Nothing new goes to B while it drains.
    more = [on_a.post("/v1/sessions", json={"name": f"m{i}"}).json()["id"] for i in range(2)]
    assert node_id(b) not in [owner(postgres_url, sid) for sid in more]
    # C drained too: A is the one node left to take work, whoever is asked.
    assert sophon(env, "node", "drain", node_id(c)).returncode == 0
    wait_for(lambda: sessions_on(c) == 0, 15, 0.2, "C to hand its sessions on")
    [on_c_sid] = [sid for sid, n in zip(ids, placed, strict=True) if n == node_id(c)]
    with client(c, key) as on_c:
        assert sh(on_c, on_c_sid, "cat mine.txt") == f"{on_c_sid}\n"
        last = on_c.post("/v1/sessions", json={"name": "last"}).json()["id"]
    assert owner(postgres_url, on_c_sid) == owner(postgres_url, last) == node_id(a)
    # Undone, B takes work again.
    assert sophon(env, "node", "drain", "--undo", node_id(b)).returncode == 0
    again = on_a.post("/v1/sessions", json={"name": "again"}).json()["id"]
    assert owner(postgres_url, again) == node_id(b)


def thread_owner(postgres_url: str, name: str) -> str | None:
    from sqlalchemy import select

    from sophon.store.db import make_engine, sessionmaker
    from sophon.store.tables import Thread

    async def read() -> str | None:
        engine = make_engine(postgres_url)
        try:
            async with sessionmaker(engine)() as db:
                return await db.scalar(select(Thread.node_id).where(Thread.name == name))
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_a_thread_runs_on_one_node_whichever_node_the_baponi_client_asks(
        trio: tuple[ModelServer, list[LiveServer]], postgres_url: str) -> None:
    from baponi import Baponi

    _, nodes = trio
    key = nodes[0].add_user(database_url=postgres_url)
    baponi = [Baponi(api_key=key, base_url=n.url, max_retries=0) for n in nodes]
    made = baponi[0].execute("echo one > /home/baponi/kept.txt; echo $$ > pid",
                             language="bash", thread_id="t1")
    assert made.success, made.stderr
    runs_on = thread_owner(postgres_url, "t1")
    assert runs_on in [node_id(n) for n in nodes]
    # Every node sends the thread's work to the node that runs its box.
    for client_ in baponi:
        got = client_.execute("cat /home/baponi/kept.txt", language="bash", thread_id="t1")
        assert got.stdout == "one\n", got.stderr
    # A signed upload URL from one node, used at it; the file read through another.
    up = baponi[2].upload_url(path="up.txt", content_length=3, source="thread", id="t1")
    assert httpx.put(up.url, content=b"hey", timeout=60).status_code == 200
    assert baponi[1].execute("cat /home/baponi/up.txt", language="bash",
                             thread_id="t1").stdout == "hey"
    listed = baponi[1].list_files(source="thread", id="t1")
    assert "up.txt" in [f.path for f in listed]
    # An execution's status from any node; a killed owner's thread moves on, files whole.
    handle = baponi[0].execute_webhook("sleep 0.2; echo later", language="bash",
                                       thread_id="t1")
    assert handle.wait(poll_interval=0.05, timeout=30).stdout == "later\n"
    for client_ in baponi:
        assert client_.get_execution(handle.trace_id).stdout == "later\n"
    assert thread_owner(postgres_url, "t1") == runs_on
    [dead] = [n for n in nodes if node_id(n) == runs_on]
    dead.kill()
    alive = [c for c, n in zip(baponi, nodes, strict=True) if n is not dead]
    refused: list[str] = []

    def after_the_move() -> Any:
        try:
            return alive[0].execute("cat /home/baponi/kept.txt /home/baponi/up.txt",
                                    language="bash", thread_id="t1")
        except Exception as exc:  # until the lease runs out: the owner does not answer
            refused.append(str(exc))
            return None

    moved = wait_for(after_the_move, LEASE + 15, 0.5, "the thread to move on")
    assert moved.stdout == "one\nhey"
    assert all("does not answer" in r for r in refused), refused
    assert thread_owner(postgres_url, "t1") not in (None, runs_on)
    for c in baponi:
        c.close()


def test_a_paused_node_lets_go_of_what_another_node_took_and_no_disk_is_mounted_twice(
        trio: tuple[ModelServer, list[LiveServer]], postgres_url: str) -> None:
    """A node that stops beating while its process lives on (SIGSTOP: a stopped VM, a
    long pause) loses its sessions after the lease; its box still holds the session's
    disk, so the node that took it refuses to mount it again until the paused node,
    running again, finds out and stops its box."""
    _, (a, b, _) = trio
    admin = a.add_user("admin", database_url=postgres_url)
    key = a.add_user(database_url=postgres_url)
    on_a, on_b = client(a, key), client(b, key)
    sid = on_a.post("/v1/sessions", json={"name": "paused"}).json()["id"]
    assert sh(on_a, sid, "echo before > f.txt; cat f.txt") == "before\n"
    assert owner(postgres_url, sid) == node_id(a)
    a_id = node_id(a)

    def a_row() -> dict[str, Any]:
        r = httpx.get(f"{b.url}/v1/cluster", headers={"Authorization": f"Bearer {admin}"})
        return next(n for n in r.json()["nodes"] if n["id"] == a_id)

    assert a.proc is not None
    a.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: not a_row()["alive"], LEASE + 10, 0.2, "A to be taken for dead")
        refused = on_b.post(f"/v1/sessions/{sid}/exec", json={"command": "cat f.txt"})
        [end] = [e for e in map(json.loads, refused.text.splitlines())
                 if e["type"] == "exec_end"]
        assert (end["exit_code"], end["error"]) == (-1, "sandbox_unavailable"), end
        assert owner(postgres_url, sid) == node_id(b)
    finally:
        a.proc.send_signal(signal.SIGCONT)
    # A beats again, sees the session is B's, and stops its box; B's box then starts.
    wait_for(lambda: a_row()["alive"], 10, 0.1, "A to beat again")

    def on_b_now() -> bool:
        r = on_b.post(f"/v1/sessions/{sid}/exec", json={"command": "true"})
        ends = [e for e in map(json.loads, r.text.splitlines()) if e["type"] == "exec_end"]
        return bool(ends[0]["exit_code"] == 0)

    wait_for(on_b_now, 30, 0.2, "B to run the session's box")
    assert sh(on_b, sid, "cat f.txt; echo after >> f.txt") == "before\n"
    assert sh(on_a, sid, "cat f.txt") == "before\nafter\n"  # through A, run by B
    assert owner(postgres_url, sid) == node_id(b)
