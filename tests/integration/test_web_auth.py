"""The dashboard's server side: sign-in with a key or a one-time link (an HttpOnly,
SameSite=Strict cookie), CSRF defences for cookie requests, sign-out, and the built
dashboard served at `/` with a fallback to its index.html."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, make_data_dir

COOKIE = "sophon_session"


@pytest.fixture(scope="module")
def ui_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="sophon-ui-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def server(ui_root: Path) -> Iterator[LiveServer]:
    """The module's server, serving the dashboard from ``ui_root/dist`` (absent at first)."""
    data = make_data_dir()
    srv = LiveServer(data, env={"SOPHON_UI_DIR": str(ui_root / "dist")}).start()
    yield srv
    srv.stop()
    shutil.rmtree(data, ignore_errors=True)


@dataclass
class Browser:
    """A signed-in browser: a client holding the cookie, and the CSRF token."""

    client: httpx.Client
    cookie: str
    csrf: str
    user: str


def sign_in(server: LiveServer, key: str, **headers: str) -> Browser:
    client = httpx.Client(base_url=server.url, timeout=30)
    r = client.post("/v1/auth/session", json={"api_key": key}, headers=headers)
    assert r.status_code == 200, r.text
    return Browser(client, client.cookies[COOKIE], r.json()["csrf_token"], r.json()["user"])


@pytest.fixture
def browser(server: LiveServer) -> Iterator[Browser]:
    b = sign_in(server, server.add_user())
    yield b
    b.client.close()


def with_cookie(server: LiveServer, cookie: str) -> httpx.Client:
    """A fresh client sending only this cookie value (as a client that kept it would)."""
    return httpx.Client(base_url=server.url, timeout=30, headers={"Cookie": f"{COOKIE}={cookie}"})


def new_session(client: httpx.Client, **headers: str) -> dict:
    r = client.post("/v1/sessions", json={"name": "web", "starter": {"type": "empty"}},
                    headers=headers)
    assert r.status_code == 201, r.text
    return dict(r.json())


def cli(server: LiveServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sophon.cli", *args], capture_output=True,
                          text=True, timeout=60,
                          env={**os.environ, "SOPHON_DATA_DIR": str(server.data_dir)})


def user_name(key: str, server: LiveServer) -> str:
    return str(httpx.get(server.url + "/v1/me", headers={"Authorization": f"Bearer {key}"}
                         ).json()["name"])


# --- signing in and out ------------------------------------------------------------------

def test_signing_in_sets_an_httponly_strict_cookie(server: LiveServer) -> None:
    key = server.add_user()
    r = httpx.post(server.url + "/v1/auth/session", json={"api_key": key})
    assert r.status_code == 200, r.text
    assert r.json() == {"user": user_name(key, server), "csrf_token": r.json()["csrf_token"]}
    assert len(r.json()["csrf_token"]) >= 32
    cookie = r.headers["set-cookie"]
    value = r.cookies[COOKIE]
    assert cookie.startswith(f"{COOKIE}={value};") and len(value) >= 32 and value != key
    attrs = {a.strip() for a in cookie.split(";")[1:]}
    assert attrs == {"HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=604800"}
    assert r.headers["cache-control"] == "no-store"
    # The cookie alone is the sign-in: GET /v1/auth/session gives the same user and token.
    with with_cookie(server, value) as c:
        assert c.get("/v1/auth/session").json() == r.json()

    # Reached over https (a TLS proxy on this host says so), the cookie is Secure as well.
    r = httpx.post(server.url + "/v1/auth/session", json={"api_key": key},
                   headers={"X-Forwarded-Proto": "https"})
    assert r.status_code == 200 and "Secure" in r.headers["set-cookie"].split("; ")


def test_a_wrong_key_is_refused_with_a_clear_message(server: LiveServer) -> None:
    r = httpx.post(server.url + "/v1/auth/session", json={"api_key": "sk-sophon-wrong"})
    assert r.status_code == 401
    assert r.json()["error"] == "unauthorized"
    assert r.json()["message"].startswith("that API key is not valid")
    assert "set-cookie" not in r.headers
    # Not signed in: no cookie, or a made-up one, is a 401 everywhere.
    assert httpx.get(server.url + "/v1/auth/session").status_code == 401
    with with_cookie(server, "made-up") as c:
        assert c.get("/v1/auth/session").status_code == 401
        assert c.get("/v1/me").json()["error"] == "unauthorized"


def test_the_cookie_authenticates_reads_and_the_event_stream(browser: Browser) -> None:
    c = browser.client
    assert c.get("/v1/me").json()["name"] == browser.user
    s = new_session(c, **{"X-CSRF-Token": browser.csrf})
    assert [x["id"] for x in c.get("/v1/sessions").json()["sessions"]] == [s["id"]]
    assert c.get(f"/v1/sessions/{s['id']}").json()["name"] == "web"
    # SSE, as an EventSource sends it: the cookie and no other credential.
    with c.stream("GET", f"/v1/sessions/{s['id']}/events",
                  headers={"Accept": "text/event-stream"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("event:"))
    assert first == "event: session_start"


def test_a_change_by_cookie_needs_the_csrf_token(server: LiveServer, browser: Browser) -> None:
    c = browser.client
    body = {"name": "web", "starter": {"type": "empty"}}
    for headers in ({}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": ""}):
        r = c.post("/v1/sessions", json=body, headers=headers)
        assert r.status_code == 403, r.text
        assert r.json()["error"] == "csrf_failed" and "X-CSRF-Token" in r.json()["message"]
    assert c.get("/v1/sessions").json()["sessions"] == []  # nothing was made
    s = new_session(c, **{"X-CSRF-Token": browser.csrf})
    for method in ("PATCH", "DELETE"):  # every method that changes something
        r = c.request(method, f"/v1/sessions/{s['id']}", json={"name": "x"}
                      if method == "PATCH" else None)
        assert r.status_code == 403 and r.json()["error"] == "csrf_failed", method
    r = c.patch(f"/v1/sessions/{s['id']}", json={"name": "renamed"},
                headers={"X-CSRF-Token": browser.csrf})
    assert r.status_code == 200 and r.json()["name"] == "renamed"
    # A Bearer key needs no token: the cookie's rule does not touch the API.
    key = server.add_user()
    r = httpx.post(server.url + "/v1/executions/none/cancel",
                   headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 404


def test_a_cross_site_origin_is_refused(server: LiveServer, browser: Browser) -> None:
    c, token = browser.client, {"X-CSRF-Token": browser.csrf}
    for origin in ("http://evil.example", "null", server.url.replace("127.0.0.1", "localhost"),
                   server.url.rsplit(":", 1)[0] + ":1"):
        r = c.post("/v1/sessions", json={"name": "web"}, headers={**token, "Origin": origin})
        assert r.status_code == 403 and r.json()["error"] == "csrf_failed", origin
        assert "Origin" in r.json()["message"]
    assert c.get("/v1/sessions").json()["sessions"] == []
    # Another site's page cannot sign its visitor in either (to an account it chose).
    r = httpx.post(server.url + "/v1/auth/session", json={"api_key": server.add_user()},
                   headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "set-cookie" not in r.headers
    # The server's own page is welcome.
    new_session(c, **token, Origin=server.url)


def test_signing_out_ends_the_cookie(server: LiveServer, browser: Browser) -> None:
    r = browser.client.delete("/v1/auth/session")
    assert r.status_code == 204
    assert r.headers["set-cookie"] == f"{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
    # Ended on the server too: a client that kept the value is refused.
    with with_cookie(server, browser.cookie) as c:
        assert c.get("/v1/auth/session").status_code == 401
        r = c.get("/v1/me")
        assert r.status_code == 401 and "sign in again" in r.json()["message"]
    assert httpx.delete(server.url + "/v1/auth/session").status_code == 204  # idempotent


def test_another_users_session_is_not_found_by_cookie(server: LiveServer,
                                                      browser: Browser) -> None:
    other = server.add_user()
    with httpx.Client(base_url=server.url, timeout=30,
                      headers={"Authorization": f"Bearer {other}"}) as owner:
        theirs = new_session(owner)["id"]
    c, token = browser.client, {"X-CSRF-Token": browser.csrf}
    for r in (c.get(f"/v1/sessions/{theirs}"), c.get(f"/v1/sessions/{theirs}/events"),
              c.get(f"/v1/sessions/{theirs}/files"),
              c.patch(f"/v1/sessions/{theirs}", json={"name": "x"}, headers=token),
              c.delete(f"/v1/sessions/{theirs}", headers=token)):
        assert r.status_code == 404 and r.json()["error"] == "not_found", r.request.url
    assert c.get("/v1/sessions").json()["sessions"] == []


def test_deleting_the_key_ends_its_sign_ins(server: LiveServer, browser: Browser) -> None:
    """There is no revoke command yet; this is what one will do (delete the key's row)."""
    db = sqlite3.connect(server.data_dir / "sophon.db")
    try:
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("DELETE FROM api_keys WHERE user_id = "
                   "(SELECT id FROM users WHERE name = ?)", (browser.user,))
        db.commit()
    finally:
        db.close()
    assert browser.client.get("/v1/me").status_code == 401


# --- one-time sign-in links --------------------------------------------------------------

def test_a_sign_in_link_works_once(server: LiveServer) -> None:
    name = user_name(server.add_user(), server)
    made = cli(server, "users", "sign-in-link", name, "--url", server.url + "/")
    assert made.returncode == 0, made.stderr
    link = made.stdout.strip()
    assert link.startswith(server.url + "/v1/auth/link/") and "//v1" not in link

    first = httpx.get(link)
    assert first.status_code == 303 and first.headers["location"] == "/"
    value = first.cookies[COOKIE]
    assert "HttpOnly; SameSite=Strict; Path=/; Max-Age=604800" in first.headers["set-cookie"]
    with with_cookie(server, value) as c:
        assert c.get("/v1/auth/session").json()["user"] == name

    again = httpx.get(link)
    assert again.status_code == 410 and "set-cookie" not in again.headers
    assert again.headers["content-type"].startswith("text/html")
    assert "used already" in again.text
    unknown = httpx.get(link[:-4] + "AAAA")
    assert unknown.status_code == 404 and "not known" in unknown.text


def test_an_expired_link_is_refused(server: LiveServer) -> None:
    from sophon.store.db import make_engine, sessionmaker
    from sophon.users import UserService

    name = user_name(server.add_user(), server)

    async def expired_link() -> str:
        engine = make_engine(f"sqlite+aiosqlite:///{server.data_dir / 'sophon.db'}")
        try:
            return await UserService(sessionmaker(engine)).create_sign_in_link(
                name, ttl=timedelta(0))
        finally:
            await engine.dispose()

    r = httpx.get(f"{server.url}/v1/auth/link/{asyncio.run(expired_link())}")
    assert r.status_code == 410 and "expired" in r.text and "set-cookie" not in r.headers


def test_a_link_for_nobody_is_an_error(server: LiveServer) -> None:
    made = cli(server, "users", "sign-in-link", "nobody-at-all")
    assert made.returncode == 1 and "no user named 'nobody-at-all'" in made.stderr


# --- the dashboard's files ---------------------------------------------------------------

INDEX = "<!doctype html><title>Sophon</title><div id=root></div>"
ASSET = "console.log('app');\n"


def build_ui(ui_root: Path) -> Path:
    dist = ui_root / "dist"
    (dist / "assets").mkdir(parents=True, exist_ok=True)
    (dist / "index.html").write_text(INDEX)
    (dist / "assets" / "index-3f2a9c.js").write_text(ASSET)
    (dist / "favicon.svg").write_text("<svg/>")
    return dist


def test_the_dashboard_page_says_when_it_is_not_built(server: LiveServer,
                                                      ui_root: Path) -> None:
    shutil.rmtree(ui_root / "dist", ignore_errors=True)
    for path in ("/", "/sessions/abc"):
        r = httpx.get(server.url + path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "not built" in r.text and "make ui" in r.text
    # Built while the server runs: served at once, no restart.
    build_ui(ui_root)
    assert httpx.get(server.url + "/").text == INDEX


def test_the_built_dashboard_is_served_with_a_fallback_to_its_page(
        server: LiveServer, ui_root: Path) -> None:
    build_ui(ui_root)
    (ui_root / "secret.txt").write_text("not for the web")
    for path in ("/", "/sessions/abc", "/sessions/ses_1/files/src/app.py", "/usage"):
        r = httpx.get(server.url + path)
        assert r.status_code == 200 and r.text == INDEX, path
        assert r.headers["cache-control"] == "no-cache" and r.headers["x-frame-options"] == "DENY"
    asset = httpx.get(server.url + "/assets/index-3f2a9c.js")
    assert asset.status_code == 200 and asset.text == ASSET
    assert "javascript" in asset.headers["content-type"]
    assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
    icon = httpx.get(server.url + "/favicon.svg")
    assert icon.text == "<svg/>" and icon.headers["cache-control"] == "no-cache"
    assert httpx.head(server.url + "/sessions/abc").status_code == 200
    # A missing hashed file is a 404, not the page in its place.
    assert httpx.get(server.url + "/assets/index-000000.js").status_code == 404
    # Nothing outside the directory, however the path is spelled.
    with httpx.Client(base_url=server.url) as c:
        for raw in ("/..%2fsecret.txt", "/assets/..%2f..%2fsecret.txt", "/%2e%2e/secret.txt"):
            r = c.get(httpx.URL(server.url + raw))
            assert "not for the web" not in r.text, raw

    # The API keeps its JSON answers: unknown /v1 paths and wrong methods.
    for method, path in (("GET", "/v1/nothing"), ("POST", "/v1/nothing"), ("GET", "/v1"),
                         ("POST", "/sessions/abc")):
        r = httpx.request(method, server.url + path)
        assert r.status_code == 404 and r.json()["error"] == "not_found", (method, path)
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"
    assert httpx.get(server.url + "/openapi.json").json()["paths"]["/v1/auth/session"]


def test_a_link_names_the_port_the_server_runs_on(server: LiveServer) -> None:
    """Without --url, the link is for the server that runs on this data directory, on
    whatever port it was given (not the default 8765); and the server says how to get one."""
    name = user_name(server.add_user(), server)
    made = cli(server, "users", "sign-in-link", name)
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip().startswith(server.url + "/v1/auth/link/")
    assert httpx.get(made.stdout.strip()).status_code == 303
    assert "sophon users sign-in-link NAME" in server.log.read_text()
