"""CSRF on every route that changes something, signed in by the dashboard's cookie.

tests/integration/test_web_auth.py tries session create, rename and delete. Here every
POST, PUT, PATCH and DELETE under /v1 is found in the app's own OpenAPI description
(so a new route is tried as soon as it exists), and each is sent by cookie, naming the
user's real objects with a real body, without the X-CSRF-Token, with a wrong one, and with
the right one from a foreign Origin: each is a 403 ``csrf_failed`` and nothing changed.
The controls send the same requests with the token (and the server's own Origin) and
see them work.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from sophon.api.app import create_app
from sophon.config import Settings
from sophon.store.db import make_engine, sessionmaker
from sophon.store.tables import ApprovalRow
from sophon.testing import ModelServer
from tests.conftest import LiveServer, model_env, wait_for
from tests.security.helpers import client, live_server

COOKIE = "sophon_session"
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
# Routes that do not take the cookie, and why.
NOT_BY_COOKIE = {
    ("POST", "/v1/auth/session"),  # signs in with a key: the Origin check alone (web_auth)
    ("DELETE", "/v1/auth/session"),  # signs out: needs no one's rights
    ("PUT", "/v1/files/blob/{token}"),  # the signed token in the path is the authority
    ("POST", "/v1/messages"),  # the model gateway: a session token, never the cookie
}


def unsafe_routes() -> set[tuple[str, str]]:
    doc = create_app(Settings()).openapi()
    return {(m.upper(), p) for p, item in doc["paths"].items() if p.startswith("/v1/")
            for m in item if m.upper() in UNSAFE}


@dataclass
class User:
    """One user, with a Bearer client (to set up and look) and a signed-in cookie."""

    srv: LiveServer
    bearer: httpx.Client
    cookie: str
    csrf: str
    session: str = ""
    thread: str = ""
    trace: str = ""
    volume: str = ""
    approval: str = ""

    def by_cookie(self) -> httpx.Client:
        return httpx.Client(base_url=self.srv.url, timeout=60,
                            headers={"Cookie": f"{COOKIE}={self.cookie}"})

    def snapshot(self) -> dict[str, Any]:
        """What any of the routes would change, seen through the Bearer key."""
        b = self.bearer
        sessions = b.get("/v1/sessions").json()["sessions"]
        view = b.get(f"/v1/sessions/{self.session}").json()
        return {
            "sessions": sorted((s["id"], s["name"]) for s in sessions),
            "last_seq": view["last_seq"],
            "file": b.get(f"/v1/sessions/{self.session}/files/hello.txt").json()["content"],
            "secrets": b.get(f"/v1/sessions/{self.session}/secrets").json(),
            "approvals": b.get(f"/v1/sessions/{self.session}/approvals").json(),
            "volumes": sorted(v["name"] for v in b.get("/v1/volumes").json()["volumes"]),
            "threads": sorted(t["thread_id"] for t in b.get("/v1/threads").json()["threads"]),
            "trace": b.get(f"/v1/executions/{self.trace}").json()["status"],
        }


def _insert_approval(srv: LiveServer, session_id: str) -> str:
    approval_id = "apr_" + secrets.token_hex(10)

    async def insert() -> None:
        engine = make_engine(f"sqlite+aiosqlite:///{srv.data_dir / 'sophon.db'}")
        try:
            async with sessionmaker(engine)() as db:
                db.add(ApprovalRow(id=approval_id, session_id=session_id, tool="Bash",
                                   input={"command": "true"}, reason="shell: ask",
                                   status="pending", remember=False))
                await db.commit()
        finally:
            await engine.dispose()

    asyncio.run(insert())
    return approval_id


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with ModelServer() as model, live_server(model_env(model.url)) as srv:
        yield srv


@pytest.fixture(scope="module")
def user(server: LiveServer) -> Iterator[User]:
    key = server.add_user()
    signed = httpx.post(server.url + "/v1/auth/session", json={"api_key": key})
    assert signed.status_code == 200, signed.text
    with client(server, key) as b:
        u = User(server, b, signed.cookies[COOKIE], signed.json()["csrf_token"])
        r = b.post("/v1/sessions", json={"name": "kept", "starter": {"type": "empty"}})
        assert r.status_code == 201, r.text
        u.session = r.json()["id"]
        assert b.put(f"/v1/sessions/{u.session}/files/hello.txt",
                     content=b"hello\n").status_code == 201
        # The watcher logs the new file a little later: before any snapshot is taken.
        wait_for(lambda: any(e["type"] == "file_change" for e in b.get(
            f"/v1/sessions/{u.session}/events", headers={"Accept": "application/json"}
        ).json()["events"]), 20, 0.1, "the file change to be logged")
        assert b.put(f"/v1/sessions/{u.session}/secrets/TOKEN",
                     json={"value": "v"}).status_code == 204
        u.thread = f"kept-{secrets.token_hex(4)}"
        r = b.post("/v1/sandbox/execute", json={"code": "sleep 300", "language": "bash",
                                                "thread_id": u.thread},
                   headers={"Prefer": "respond-async"})
        assert r.status_code == 202, r.text
        u.trace = r.json()["trace_id"]
        u.volume = f"vol-{secrets.token_hex(4)}"
        assert b.post("/v1/volumes", json={"name": u.volume, "size_mb": 16}).status_code == 201
        u.approval = _insert_approval(server, u.session)
        yield u
        b.post(f"/v1/executions/{u.trace}/cancel")


def request_for(u: User, method: str, path: str) -> dict[str, Any]:
    """The route's path with the user's own objects, and a body that would do something."""
    names = {"session_id": u.session, "trace_id": u.trace, "approval_id": u.approval,
             "thread_id": u.thread, "path": "hello.txt", "turn": "1",
             "node_id": "node_0000000000000000",
             "name": u.volume if path.startswith("/v1/volumes/") else "TOKEN"}
    bodies: dict[tuple[str, str], Any] = {
        ("POST", "/v1/sandbox/execute"): {"code": "echo hi", "language": "bash"},
        ("POST", "/v1/files/upload_url"): {"source": "thread", "id": u.thread,
                                          "path": "f.txt", "content_length": 2},
        ("POST", "/v1/files/download_url"): {"source": "thread", "id": u.thread,
                                            "path": "f.txt"},
        ("POST", "/v1/files/list"): {"source": "thread", "id": u.thread},
        ("POST", "/v1/sessions"): {"name": "made-by-csrf", "starter": {"type": "empty"}},
        ("PATCH", "/v1/sessions/{session_id}"): {"name": "renamed-by-csrf"},
        ("POST", "/v1/sessions/{session_id}/exec"): {"command": "echo hi"},
        ("POST", "/v1/sessions/{session_id}/approvals/{approval_id}"): {"decision": "allow"},
        ("PUT", "/v1/sessions/{session_id}/secrets/{name}"): {"value": "from-csrf"},
        ("POST", "/v1/sessions/{session_id}/messages"): {"content": "from-csrf"},
        ("POST", "/v1/sessions/{session_id}/rewind"): {"checkpoint": "cp_0123456789abcdef"},
        ("POST", "/v1/sessions/{session_id}/fork"): {"checkpoint": "cp_0123456789abcdef"},
        ("POST", "/v1/sessions/{session_id}/turns/{turn}/review"): {"comments": [
            {"path": "hello.txt", "line": 1, "text": "from-csrf"}]},
        ("POST", "/v1/volumes"): {"name": "made-by-csrf", "size_mb": 16},
    }
    kw: dict[str, Any] = {"method": method, "url": path.format(**names)}
    if (method, path) == ("PUT", "/v1/sessions/{session_id}/files/{path}"):
        kw["content"] = b"changed-by-csrf\n"
    elif (method, path) in bodies:
        kw["json"] = bodies[(method, path)]
    return kw


ROUTES = sorted(unsafe_routes() - NOT_BY_COOKIE)


def test_every_changing_route_is_tried() -> None:
    found = unsafe_routes()
    assert len(ROUTES) >= 15, ROUTES  # the enumeration works
    assert found >= NOT_BY_COOKIE, NOT_BY_COOKIE - found  # the exemptions are real routes


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_a_cookie_request_without_the_token_or_from_another_site_is_refused(
    user: User, method: str, path: str
) -> None:
    before = user.snapshot()
    token = {"X-CSRF-Token": user.csrf}
    with user.by_cookie() as c:
        for headers in ({}, {"X-CSRF-Token": "wrong-" + user.csrf},
                        {**token, "Origin": "http://evil.example"},
                        {**token, "Origin": user.srv.url.replace("127.0.0.1", "localhost")}):
            kw = request_for(user, method, path)
            r = c.request(**kw, headers=headers)
            assert r.status_code == 403, (method, path, headers, r.status_code, r.text)
            assert r.json()["error"] == "csrf_failed", r.text
            assert r.headers["content-type"].startswith("application/json")
        # Control: the same cookie and request get past the check with the token (a 404
        # or 400 for a request no one could make is fine: it was not refused as CSRF).
        probe = request_for(user, "GET", "/v1/sessions/{session_id}")
        assert c.request(**probe).status_code == 200  # a read needs no token
    assert user.snapshot() == before, f"{method} {path} changed something"


def test_with_the_token_the_same_requests_work(user: User) -> None:
    """The controls: sessions, files, messages, exec, secrets, volumes and threads
    created, changed and deleted by cookie with the token, from the server's own page."""
    b = user.bearer
    ok = {"X-CSRF-Token": user.csrf, "Origin": user.srv.url}
    with user.by_cookie() as c:
        r = c.post("/v1/sessions", json={"name": "by-cookie", "starter": {"type": "empty"}},
                   headers=ok)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        r = c.put(f"/v1/sessions/{sid}/files/notes.txt", content=b"mine\n", headers=ok)
        assert r.status_code == 201, r.text
        r = c.post(f"/v1/sessions/{sid}/exec", json={"command": "cat notes.txt"}, headers=ok)
        assert r.status_code == 200 and "mine" in r.text, r.text
        r = c.post(f"/v1/sessions/{sid}/messages", json={"content": "hello"}, headers=ok)
        assert r.status_code == 202, r.text
        r = c.put(f"/v1/sessions/{sid}/secrets/API", json={"value": "x"}, headers=ok)
        assert r.status_code == 204, r.text
        r = c.patch(f"/v1/sessions/{sid}", json={"name": "renamed"}, headers=ok)
        assert r.status_code == 200 and r.json()["name"] == "renamed", r.text
        volume = f"vol-{secrets.token_hex(4)}"
        r = c.post("/v1/volumes", json={"name": volume, "size_mb": 16}, headers=ok)
        assert r.status_code == 201, r.text
        r = c.delete(f"/v1/volumes/{volume}", headers=ok)
        assert r.status_code == 204, r.text
        thread = f"t-{secrets.token_hex(4)}"
        r = c.post("/v1/sandbox/execute", json={"code": "echo by-cookie", "language": "bash",
                                                "thread_id": thread}, headers=ok)
        assert r.status_code == 200 and r.json()["stdout"] == "by-cookie\n", r.text
        r = c.delete(f"/v1/threads/{thread}", headers=ok)
        assert r.status_code == 204, r.text
        r = c.delete(f"/v1/sessions/{sid}", headers=ok)
        assert r.status_code == 204, r.text
    assert b.get(f"/v1/sessions/{sid}").status_code == 404
