"""``sophon claude-code`` and a session's network: ``new --allow/--ask-network/--connector``
creates the session with those settings, ``stream`` prints a refused connection as one
readable line, and a network approval is answered at the terminal's prompt.

Two test hosts listen on 127.0.0.2 (inside a box 127.0.0.1 is the box's own loopback),
both opened by the admin (SOPHON_EGRESS_ALLOW_PRIVATE); a session reaches one only when
its list names it. Nothing here leaves the machine. Commands run in the session's box
through the exec API, as a program of the agent's would.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from sophon.testing import ModelServer
from tests.conftest import LiveServer, make_data_dir, wait_for
from tests.e2e.cli_support import SOPHON, Pty, assert_one_line_error, model_env, sophon, start, stop

HOST = "127.0.0.2"
TOKEN = "github_pat_" + "Qx9" * 12  # shaped like a token; nothing connects to github


class _Hello(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.hits += 1  # type: ignore[attr-defined]
        body = b"hello from the test host\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Host:
    """A plain HTTP server on 127.0.0.2 that counts the requests it answers."""

    def __init__(self) -> None:
        self.httpd = ThreadingHTTPServer((HOST, 0), _Hello)
        self.httpd.hits = 0  # type: ignore[attr-defined]
        self.addr = f"{HOST}:{self.httpd.server_address[1]}"
        self.url = f"http://{self.addr}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def hits(self) -> int:
        return int(self.httpd.hits)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[Host, Host]]:
    """``listed``: the sessions' lists name it (the control); ``other``: opened by the
    admin, on no list."""
    a, b = Host(), Host()
    yield a, b
    a.close()
    b.close()


@pytest.fixture(scope="module")
def server(model: ModelServer, hosts: tuple[Host, Host]) -> Iterator[LiveServer]:
    path = make_data_dir()
    srv = LiveServer(path, env={**model_env(model), "SOPHON_EGRESS_ALLOW_PRIVATE": ",".join(
        h.addr for h in hosts)}).start()
    yield srv
    srv.stop()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def http(server: LiveServer, key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120,
                      headers={"Authorization": f"Bearer {key}"}) as c:
        yield c


def fetch(http: httpx.Client, sid: str, url: str) -> str:
    """Fetch ``url`` from the session's box: the status, or ``refused`` and the error."""
    code = (f"import urllib.request as u\ntry:\n    print(u.urlopen({url!r}, timeout=60).status)\n"
            "except Exception as e:\n    print('refused', e)\n")
    r = http.post(f"/v1/sessions/{sid}/exec", timeout=180,
                  json={"command": f"python3 - <<'EOF'\n{code}EOF", "timeout": 150})
    r.raise_for_status()
    events = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    return "".join(e.get("data", "") for e in events if e["type"] == "exec_output").strip()


def new_session(env: dict[str, str], *args: str) -> str:
    r = sophon(env, "claude-code", "new", *args)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_new_with_a_list_ask_and_connectors(env: dict[str, str], http: httpx.Client,
                                            hosts: tuple[Host, Host]) -> None:
    listed, _ = hosts
    for name in ("gh", "gh-ops"):
        r = http.post("/v1/connectors", json={"name": name, "type": "github", "value": TOKEN})
        assert r.status_code == 201, r.text

    sid = new_session(env, "--name", "net", "--base", "python", "--allow", listed.addr,
                      "--allow", "*.example.com", "--allow", "api.example.org:8443",
                      "--ask-network", "--connector", "gh", "--connector", "gh-ops")
    view = http.get(f"/v1/sessions/{sid}").json()
    assert view["network"] == {"allow": [listed.addr, "*.example.com", "api.example.org:8443"],
                               "ask": True}
    assert view["connectors"] == ["gh", "gh-ops"]

    # Without the options: the base's list only, refused otherwise, nothing attached.
    plain = new_session(env, "--name", "plain")
    view = http.get(f"/v1/sessions/{plain}").json()
    assert (view["network"], view["connectors"]) == ({"allow": [], "ask": False}, [])

    # A connector the user lacks, a rule that is not a host: one line each, no session.
    before = len(http.get("/v1/sessions").json()["sessions"])
    assert_one_line_error(sophon(env, "claude-code", "new", "--name", "x", "--connector",
                                 "nope"), "nope")
    assert_one_line_error(sophon(env, "claude-code", "new", "--name", "x", "--allow",
                                 "http://example.com/path"))
    assert len(http.get("/v1/sessions").json()["sessions"]) == before


def test_stream_prints_a_refused_connection_in_one_line(
        env: dict[str, str], http: httpx.Client, hosts: tuple[Host, Host]) -> None:
    listed, other = hosts
    sid = new_session(env, "--name", "refused", "--base", "python", "--allow", listed.addr)
    assert fetch(http, sid, listed.url) == "200"  # the control: the listed host answers
    hits = other.hits
    out = fetch(http, sid, other.url)
    assert out.startswith("refused") and "403" in out, out
    assert other.hits == hits

    proc, lines, errors = start(env, "claude-code", "stream", sid, "--from-start")
    try:
        line = lines.wait_until(
            lambda ls: next((x for x in ls if "network: refused" in x), None),
            what="the refused connection")
    finally:
        stop(proc)
    assert line.rstrip("\n") == (
        f"✗ network: refused {other.addr} (not_allowed) — {other.addr} is not on this "
        "sandbox's network list; add it to the session's network.allow")
    text = lines.finish()
    assert text.count("network: refused") == 1, text  # the listed host was not refused
    assert "Traceback" not in errors.finish()

    r = sophon(env, "claude-code", "usage", sid)
    assert r.returncode == 0, r.stderr
    assert "connections" in r.stdout and "1 refused" in r.stdout, r.stdout


def test_stream_asks_for_a_network_approval_and_remembers_the_host(
        env: dict[str, str], http: httpx.Client, hosts: tuple[Host, Host]) -> None:
    _, other = hosts
    sid = new_session(env, "--name", "asks", "--base", "python", "--ask-network")
    hits = other.hits
    with ThreadPoolExecutor(1) as pool:
        fetched: Future[str] = pool.submit(fetch, http, sid, other.url)
        # The request is pending before the stream starts: --from-start replays it, and
        # a request nobody has answered yet is asked about.
        wait_for(lambda: http.get(f"/v1/sessions/{sid}/approvals").json()["approvals"], 60,
                 0.1, "the network approval request")
        term = Pty([*SOPHON, "claude-code", "stream", sid, "--from-start"], env)
        try:
            term.expect(f"allow a connection to {other.addr}?")
            assert f"network approval needed connect to {other.addr}?" in term.text
            term.send("r\n")
            assert fetched.result(120) == "200"
            term.expect("allow by")
        finally:
            term.close()
    assert other.hits == hits + 1

    # Replayed again, the answered request is shown but not asked about.
    term = Pty([*SOPHON, "claude-code", "stream", sid, "--from-start"], env)
    try:
        term.expect("allow by")
    finally:
        term.close()
    assert f"network approval needed connect to {other.addr}?" in term.text
    assert "allow a connection to" not in term.text
    assert "Traceback" not in term.text
    view: dict[str, Any] = http.get(f"/v1/sessions/{sid}").json()
    assert view["network"] == {"allow": [other.addr], "ask": True}
    assert fetch(http, sid, other.url) == "200"  # remembered: nobody is asked again
    approvals = http.get(f"/v1/sessions/{sid}/events", params={"after": 0},
                         headers={"Accept": "application/json"}).json()["events"]
    assert [e["tool"] for e in approvals if e["type"] == "approval_request"] == ["Network"]
