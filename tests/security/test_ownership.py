"""Nobody reaches another user's objects, through any route.

Every route under /v1 that names a session, thread, volume, execution or approval (in
its path or its body) is found in the app itself, so a new one without a case here fails
``test_every_route_that_names_an_object_has_a_case``. For each, user B naming user A's
object gets a 404, exactly as for an object that does not exist (a 403 would tell B it
exists), and A (the control) gets an answer that is not a 404: the probe was right.

The services check ownership themselves (one helper, ``sophon.store.owned``), not the
routes: ``test_services_check_the_owner_themselves`` calls them without any route.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from sophon.api.app import create_app
from sophon.config import ModelSettings, Settings
from sophon.errors import NotFound
from sophon.events.log import EventLog
from sophon.gateway.service import Gateway
from sophon.sessions.approvals import ApprovalService
from sophon.sessions.secrets import SecretStore
from sophon.store.db import make_engine, migrate, sessionmaker
from sophon.store.owned import owned
from sophon.store.tables import ApprovalRow, Execution, SessionRow, Thread, Volume
from sophon.testing import ModelServer
from sophon.users import Principal, UserService
from tests.conftest import LiveServer, serve_with_model, wait_for
from tests.security.helpers import client

# Path parameters and body fields that name a user's object.
ID_PARAMS = {"session_id", "thread_id", "trace_id", "approval_id", "execution_id",
             "volume_name"}
BODY_IDS = {"session_id", "thread_id", "id", "volume"}
# Objects a user names (a {name} under these is one of them).
NAMED = ("/v1/volumes/", "/v1/connectors/")


def _body_fields(doc: dict[str, Any], op: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for media in op.get("requestBody", {}).get("content", {}).values():
        schema = media.get("schema", {})
        if "$ref" in schema:
            schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        names |= set(schema.get("properties", {}))
    return names


def routes_naming_objects() -> set[tuple[str, str]]:
    """(method, path) of every route under /v1 that takes an object's id or name, from
    the app's own description of its routes."""
    doc = create_app(Settings()).openapi()
    found = set()
    for path, item in doc["paths"].items():
        if not path.startswith("/v1/"):
            continue
        params = set(re.findall(r"{(\w+)", path))
        for method, op in item.items():
            if params & ID_PARAMS or _body_fields(doc, op) & BODY_IDS or \
                    (path.startswith(NAMED) and "name" in params):
                found.add((method.upper(), path))
    return found


# --- the objects ------------------------------------------------------------------------


@dataclass
class World:
    """User A's objects (and B's own session), and a client for each user."""

    srv: LiveServer
    a: httpx.Client
    b: httpx.Client
    session: str
    b_session: str
    thread: str
    trace: str
    volume: str
    approval: str
    checkpoint: str = ""

    def new_session(self) -> str:
        r = self.a.post("/v1/sessions", json={"name": "own", "starter": {"type": "empty"}})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def new_volume(self) -> str:
        name = f"vol-{secrets.token_hex(4)}"
        r = self.a.post("/v1/volumes", json={"name": name, "size_mb": 16})
        assert r.status_code == 201, r.text
        return name

    def new_connector(self) -> str:
        name = f"con-{secrets.token_hex(4)}"
        r = self.a.post("/v1/connectors", json={"name": name, "type": "anthropic"})
        assert r.status_code == 201, r.text
        return name

    def new_thread(self) -> str:
        name = f"own-{secrets.token_hex(4)}"
        r = self.a.post("/v1/sandbox/execute", json={
            "code": "echo a-only > /home/baponi/marker.txt", "language": "bash",
            "thread_id": name})
        assert r.status_code == 200 and r.json()["success"], r.text
        return name

    def new_secret(self) -> str:
        name = f"S_{secrets.token_hex(4).upper()}"
        r = self.a.put(f"/v1/sessions/{self.session}/secrets/{name}", json={"value": "v"})
        assert r.status_code == 204, r.text
        return name

    def new_approval(self) -> str:
        """A pending approval in A's session, as the agent's policy leaves one."""
        approval_id = "apr_" + secrets.token_hex(10)

        async def insert() -> None:
            engine = make_engine(f"sqlite+aiosqlite:///{self.srv.data_dir / 'sophon.db'}")
            try:
                async with sessionmaker(engine)() as db:
                    db.add(ApprovalRow(id=approval_id, session_id=self.session, tool="Bash",
                                       input={"command": "true"}, reason="shell: ask",
                                       status="pending", remember=False))
                    await db.commit()
            finally:
                await engine.dispose()

        asyncio.run(insert())
        return approval_id


@pytest.fixture(scope="module")
def server(model: ModelServer) -> Iterator[LiveServer]:
    with serve_with_model(model) as srv:
        yield srv


@pytest.fixture(scope="module")
def world(server: LiveServer, model: ModelServer) -> Iterator[World]:
    with client(server, server.add_user()) as a, client(server, server.add_user()) as b:
        w = World(server, a, b, "", "", "", "", "", "")
        w.session = w.new_session()
        r = a.put(f"/v1/sessions/{w.session}/files/hello.txt", content=b"hello\n")
        assert r.status_code in (200, 201), r.text
        # A turn, so that A's session has one (its diff, its review) and checkpoints.
        model.set_script({"turns": ["ok"]})
        assert a.post(f"/v1/sessions/{w.session}/messages", json={"content": "hi"}
                      ).status_code == 202

        def turn_ended() -> str | None:
            cps = a.get(f"/v1/sessions/{w.session}/checkpoints").json()["checkpoints"]
            return next((c["id"] for c in cps if c["reason"] == "turn_end"), None)

        w.checkpoint = str(wait_for(turn_ended, 60, 0.05, "A's turn to end"))
        r = b.post("/v1/sessions", json={"name": "b's", "starter": {"type": "empty"}})
        assert r.status_code == 201, r.text
        w.b_session = r.json()["id"]
        w.thread = w.new_thread()
        r = a.post("/v1/sandbox/execute", json={"code": "echo done", "language": "bash"})
        assert r.status_code == 200, r.text
        w.trace = r.headers["X-Trace-Id"]
        w.volume = w.new_volume()
        w.approval = w.new_approval()
        yield w


# --- the cases --------------------------------------------------------------------------


@dataclass
class Probe:
    """One request, made by B and then by A. ``fresh`` objects are made for the probe
    alone (A's control changes or deletes them); ``body`` may name objects as
    ``{thread}`` or ``{volume}``."""

    body: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    fresh: tuple[str, ...] = ()
    stream: bool = False  # read the status only: the answer is an endless stream
    b_own_session: bool = False  # B names A's object under B's own session
    check: Callable[[World], None] | None = None  # a probe of its own, not a 404


def _thread_is_per_user(w: World) -> None:
    """The execute API makes a thread of that name for B: B's own, empty one."""
    code = "cat /home/baponi/marker.txt 2>&1; true"
    thread = w.new_thread()
    got_b = w.b.post("/v1/sandbox/execute", json={"code": code, "language": "bash",
                                                  "thread_id": thread}).json()
    assert "a-only" not in got_b["stdout"], got_b
    got_a = w.a.post("/v1/sandbox/execute", json={"code": code, "language": "bash",
                                                  "thread_id": thread}).json()
    assert got_a["stdout"] == "a-only\n", got_a  # control


def _upload_makes_bs_own_thread(w: World) -> None:
    """An upload, like an execute, makes the thread it names: B's own, not A's."""
    thread = w.new_thread()  # not w.thread: B must still have no thread of that name
    body = {"source": "thread", "id": thread, "path": "up.txt", "content_length": 4}
    assert w.b.post("/v1/files/upload_url", json=body).status_code == 200
    listing = {"source": "thread", "id": thread}
    got_b = w.b.post("/v1/files/list", json=listing)
    assert got_b.status_code == 200 and "marker.txt" not in got_b.text, got_b.text
    got_a = w.a.post("/v1/files/list", json=listing)
    assert got_a.status_code == 200 and "marker.txt" in got_a.text, got_a.text  # control


S = "/v1/sessions/{session_id}"
FILES = [Probe(body={"source": "thread", "id": "{thread}", "path": "marker.txt"}),
         Probe(body={"source": "volume", "id": "{volume}", "path": "x.txt",
                     "content_length": 4})]
UPLOADS = [Probe(check=_upload_makes_bs_own_thread), FILES[1]]
CASES: dict[tuple[str, str], list[Probe]] = {
    ("GET", S): [Probe()],
    ("PATCH", S): [Probe(body={"name": "renamed"})],
    ("DELETE", S): [Probe(fresh=("session",))],
    ("GET", S + "/events"): [Probe(headers={"Accept": "application/json"}),
                             Probe(stream=True)],
    ("POST", S + "/exec"): [Probe(body={"command": "true"})],
    ("GET", S + "/files"): [Probe()],
    ("GET", S + "/files/{path}"): [Probe()],
    ("PUT", S + "/files/{path}"): [Probe(content=b"changed\n")],
    ("GET", S + "/diff"): [Probe()],
    ("GET", S + "/approvals"): [Probe()],
    ("POST", S + "/approvals/{approval_id}"): [
        Probe(body={"decision": "deny"}, fresh=("approval",)),
        Probe(body={"decision": "deny"}, fresh=("approval",), b_own_session=True)],
    ("GET", S + "/secrets"): [Probe()],
    ("PUT", S + "/secrets/{name}"): [Probe(body={"value": "from-b"})],
    ("DELETE", S + "/secrets/{name}"): [Probe(fresh=("secret",))],
    ("GET", S + "/export"): [Probe(stream=True)],
    ("POST", S + "/messages"): [Probe(body={"content": "hello"}, fresh=("session",))],
    ("POST", S + "/interrupt"): [Probe()],
    ("GET", S + "/usage"): [Probe()],
    ("GET", S + "/checkpoints"): [Probe()],
    ("GET", S + "/checkpoints/diff"): [Probe()],
    ("GET", S + "/turns/{turn}/diff"): [Probe()],
    ("POST", S + "/rewind"): [Probe(body={"checkpoint": "{checkpoint}"})],
    ("POST", S + "/fork"): [Probe(body={"checkpoint": "{checkpoint}"})],
    ("POST", S + "/turns/{turn}/review"): [Probe(body={"comments": [
        {"path": "hello.txt", "line": 1, "text": "a comment"}]})],
    ("POST", S + "/gateway-token"): [Probe()],
    ("GET", "/v1/executions/{trace_id}"): [Probe()],
    ("POST", "/v1/executions/{trace_id}/cancel"): [Probe()],
    ("GET", "/v1/executions/{trace_id}/output"): [Probe()],
    ("DELETE", "/v1/volumes/{name}"): [Probe(fresh=("volume",))],
    ("PATCH", "/v1/connectors/{name}"): [Probe(body={"execute": True}, fresh=("connector",))],
    ("DELETE", "/v1/connectors/{name}"): [Probe(fresh=("connector",))],
    ("DELETE", "/v1/threads/{thread_id}"): [Probe(fresh=("thread",))],
    ("POST", "/v1/files/upload_url"): UPLOADS,
    ("POST", "/v1/files/download_url"): FILES,
    ("POST", "/v1/files/list"): FILES,
    ("POST", "/v1/sandbox/execute"): [Probe(check=_thread_is_per_user)],
}

ROUTES = sorted(routes_naming_objects())


def test_every_route_that_names_an_object_has_a_case() -> None:
    assert ROUTES, "no route found: the enumeration is broken"
    missing = [r for r in ROUTES if r not in CASES]
    assert not missing, f"add a case to CASES for {missing}"


def _fill(w: World, path: str, probe: Probe) -> tuple[str, str, Any]:
    """The path for A and for B, and the body, with A's objects (fresh where asked)."""
    ids = {"session_id": w.session, "trace_id": w.trace, "approval_id": w.approval,
           "thread_id": w.thread, "path": "hello.txt", "turn": "1",
           "name": w.volume if path.startswith("/v1/volumes/") else "TOKEN"}
    for kind in probe.fresh:
        if kind == "session":
            ids["session_id"] = w.new_session()
        elif kind == "volume":
            ids["name"] = w.new_volume()
        elif kind == "connector":
            ids["name"] = w.new_connector()
        elif kind == "thread":
            ids["thread_id"] = w.new_thread()
        elif kind == "secret":
            ids["name"] = w.new_secret()
        elif kind == "approval":
            ids["approval_id"] = w.new_approval()
    body = probe.body
    if isinstance(body, dict):
        body = {k: v.format(thread=w.thread, volume=w.volume, checkpoint=w.checkpoint)
                if isinstance(v, str) else v for k, v in body.items()}
    a_path = path.format(**ids)
    b_path = path.format(**{**ids, "session_id": w.b_session}) if probe.b_own_session \
        else a_path
    return a_path, b_path, body


def _request(http: httpx.Client, method: str, path: str, probe: Probe,
             body: Any) -> tuple[int, bytes]:
    kw: dict[str, Any] = {"headers": probe.headers}
    if probe.content is not None:
        kw["content"] = probe.content
    elif body is not None:
        kw["json"] = body
    if probe.stream:
        with http.stream(method, path, **kw) as r:
            return r.status_code, (r.read() if r.status_code >= 400 else b"")
    r = http.request(method, path, **kw)
    return r.status_code, r.content


@pytest.mark.parametrize(("method", "path", "n"), [
    (m, p, n) for m, p in ROUTES for n in range(len(CASES.get((m, p), [])))])
def test_a_stranger_gets_404_and_the_owner_does_not(world: World, method: str, path: str,
                                                    n: int) -> None:
    probe = CASES[(method, path)][n]
    if probe.check is not None:
        probe.check(world)
        return
    a_path, b_path, body = _fill(world, path, probe)
    status, text = _request(world.b, method, b_path, probe, body)
    assert status == 404, (method, b_path, status, text)
    assert b'"error":"not_found"' in text.replace(b" ", b""), text
    status, text = _request(world.a, method, a_path, probe, body)
    # This server has no model: a message of the owner's is refused with that 503, after
    # the session was found.
    refused_for_no_model = status == 503 and b"provider_not_configured" in text
    assert status != 404 and (status < 500 or refused_for_no_model), \
        (method, a_path, status, text)


# --- the services, without any route ----------------------------------------------------


def test_services_check_the_owner_themselves(tmp_path: Path) -> None:
    async def scenario() -> None:
        engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'sophon.db'}")
        await migrate(engine)
        db = sessionmaker(engine)
        users = UserService(db)
        a, _ = await users.create("a")
        b, _ = await users.create("b")
        async with db() as s:
            s.add(SessionRow(id="ses_a", user_id=a.user_id, name="a", base="python",
                             model="m", runtime="native", starter={}, approval={},
                             status="idle", box_id="sa"))
            await s.commit()
        events = EventLog(engine)
        approvals = ApprovalService(db, events, _no_status)
        store = SecretStore(db, Fernet.generate_key())
        gateway = Gateway(ModelSettings(), db, events)
        strangers: list[Callable[[Principal], Any]] = [
            lambda p: approvals.pending(p, "ses_a"),
            lambda p: approvals.decide(p, "ses_a", "apr_x", "allow", False),
            lambda p: store.names(p, "ses_a"),
            lambda p: store.put(p, "ses_a", "K", "v"),
            lambda p: store.remove(p, "ses_a", "K"),
            lambda p: gateway.usage_series(p, "ses_a"),
            lambda p: gateway.issue_token(p, "ses_a"),
        ]
        try:
            for call in strangers:
                with pytest.raises(NotFound, match="no session 'ses_a'"):
                    await call(b)
            # Control: the owner is answered.
            assert await approvals.pending(a, "ses_a") == []
            await store.put(a, "ses_a", "K", "v")
            assert await store.names(a, "ses_a") == ["K"]
            assert await gateway.usage_series(a, "ses_a") == []
            async with db() as s:
                for table in (SessionRow, Execution, Thread, Volume):
                    with pytest.raises(NotFound):
                        await owned(s, table, b.user_id, "ses_a", what="thing")
                assert (await owned(s, SessionRow, a.user_id, "ses_a",
                                    what="session")).id == "ses_a"
        finally:
            await gateway.close()
            await events.close()
            await engine.dispose()

    asyncio.run(scenario())


async def _no_status(session_id: str, status: str) -> None:
    return None
