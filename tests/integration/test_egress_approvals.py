"""Network approvals: a session whose network says "ask" turns a connection to a host
outside its list into an approval request, and the connection waits for the answer."""

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

from tests.conftest import LiveServer, make_data_dir, wait_for

HOST = "127.0.0.2"


class _Hello(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.hits += 1  # type: ignore[attr-defined]
        body = b"hello from the test host"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def target() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer((HOST, 0), _Hello)
    httpd.hits = 0  # type: ignore[attr-defined]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()


class _Webhook(BaseHTTPRequestHandler):
    """An approval webhook that allows connections to the target host alone."""

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.asked.append(body)  # type: ignore[attr-defined]
        allowed = body["tool"] == "Network" and body["input"]["host"] == HOST
        answer = json.dumps({"approved": allowed, "reason": "by the test's webhook"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


@pytest.fixture(scope="module")
def webhook() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer((HOST, 0), _Webhook)
    httpd.asked = []  # type: ignore[attr-defined]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()


@pytest.fixture(scope="module")
def srv(target: ThreadingHTTPServer, webhook: ThreadingHTTPServer) -> Iterator[LiveServer]:
    path = make_data_dir()
    addr = f"{HOST}:{target.server_address[1]}"
    server = LiveServer(path, env={
        "SOPHON_EGRESS_ALLOW_PRIVATE": addr, "SOPHON_EGRESS_APPROVAL_TIMEOUT_SECONDS": "3",
        "SOPHON_WEBHOOK_ALLOW_INSECURE_HOSTS": f"{HOST}:{webhook.server_address[1]}"}).start()
    yield server
    server.stop()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def http(srv: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.url, timeout=60,
                      headers={"Authorization": f"Bearer {srv.add_user()}"}) as c:
        yield c


def _session(http: httpx.Client) -> str:
    r = http.post("/v1/sessions", json={"name": "ask", "base": "python",
                                        "network": {"ask": True}})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _fetch(http: httpx.Client, sid: str, url: str) -> str:
    """Run a fetch in the box; what it printed (the status, or the error)."""
    code = (f"import urllib.request as u\ntry:\n    print(u.urlopen({url!r}, timeout=30).status)\n"
            "except Exception as e:\n    print('refused', e)\n")
    r = http.post(f"/v1/sessions/{sid}/exec", timeout=90,
                  json={"command": f"python3 - <<'EOF'\n{code}EOF", "timeout": 60})
    r.raise_for_status()
    return "".join(json.loads(line).get("data", "") for line in r.text.splitlines()
                   if json.loads(line).get("type") == "exec_output")


def _pending(http: httpx.Client, sid: str) -> list[dict[str, Any]]:
    return list(http.get(f"/v1/sessions/{sid}/approvals").json()["approvals"])


def _events(http: httpx.Client, sid: str, kind: str) -> list[dict[str, Any]]:
    r = http.get(f"/v1/sessions/{sid}/events", params={"after": 0},
                 headers={"Accept": "application/json"})
    body = r.json()
    events = body["events"] if isinstance(body, dict) else body
    return [e for e in events if e["type"] == kind]


def _answer(http: httpx.Client, sid: str, decision: str, remember: bool = False
            ) -> dict[str, Any]:
    approval = wait_for(lambda: _pending(http, sid), 30, what="a network approval request")[0]
    assert approval["tool"] == "Network"
    r = http.post(f"/v1/sessions/{sid}/approvals/{approval['approval_id']}",
                  json={"decision": decision, "remember": remember})
    assert r.status_code == 200, r.text
    return dict(approval)


def test_an_approved_connection_completes_and_remember_adds_the_host(
        http: httpx.Client, target: ThreadingHTTPServer) -> None:
    sid = _session(http)
    url = f"http://{HOST}:{target.server_address[1]}/"
    with ThreadPoolExecutor(1) as pool:
        fetched: Future[str] = pool.submit(_fetch, http, sid, url)
        approval = _answer(http, sid, "allow", remember=True)
        assert fetched.result(60).strip() == "200"
    assert approval["input"] == {"host": HOST, "port": target.server_address[1]}
    # remembered: on the session's list, and the next connection asks nobody
    allow = http.get(f"/v1/sessions/{sid}").json()["network"]["allow"]
    assert allow == [f"{HOST}:{target.server_address[1]}"]
    assert _fetch(http, sid, url).strip() == "200"
    assert len(_events(http, sid, "approval_request")) == 1


def test_an_approval_without_remember_lets_that_connection_alone_through(
        http: httpx.Client, target: ThreadingHTTPServer) -> None:
    sid = _session(http)
    url = f"http://{HOST}:{target.server_address[1]}/once"
    with ThreadPoolExecutor(1) as pool:
        first: Future[str] = pool.submit(_fetch, http, sid, url)
        _answer(http, sid, "allow")
        assert first.result(60).strip() == "200"
        # the same address again: asked again (what the door keeps of its decisions
        # is for hosts on the list, never for one a person let through once)
        second: Future[str] = pool.submit(_fetch, http, sid, url)
        _answer(http, sid, "deny")
        out = second.result(60)
    assert "refused" in out and "403" in out
    assert len(_events(http, sid, "approval_request")) == 2
    assert http.get(f"/v1/sessions/{sid}").json()["network"]["allow"] == []


def test_a_denied_connection_is_refused_and_the_host_sees_nothing(
        http: httpx.Client, target: ThreadingHTTPServer) -> None:
    sid = _session(http)
    url = f"http://{HOST}:{target.server_address[1]}/denied"
    hits = target.hits  # type: ignore[attr-defined]
    with ThreadPoolExecutor(1) as pool:
        fetched = pool.submit(_fetch, http, sid, url)
        _answer(http, sid, "deny")
        out = fetched.result(60)
    assert "refused" in out and "403" in out
    assert target.hits == hits  # type: ignore[attr-defined]
    denied = _events(http, sid, "network_denied")
    assert [(d["host"], d["rule"]) for d in denied] == [(HOST, "approval_denied")]
    assert http.get(f"/v1/sessions/{sid}").json()["network"]["allow"] == []


def test_no_answer_in_time_is_a_deny(http: httpx.Client,
                                     target: ThreadingHTTPServer) -> None:
    sid = _session(http)
    out = _fetch(http, sid, f"http://{HOST}:{target.server_address[1]}/late")
    assert "refused" in out and "403" in out
    decisions = _events(http, sid, "approval_decision")
    assert [(d["decision"], d["by"]) for d in decisions] == [("deny", "timeout")]
    assert _pending(http, sid) == []


def test_a_sessions_approval_webhook_answers_network_approvals(
        http: httpx.Client, target: ThreadingHTTPServer, webhook: ThreadingHTTPServer) -> None:
    hook = f"http://{HOST}:{webhook.server_address[1]}/approve"
    r = http.post("/v1/sessions", json={"name": "hooked", "base": "python",
                                        "network": {"ask": True},
                                        "approval": {"webhook": hook}})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    port = target.server_address[1]
    assert _fetch(http, sid, f"http://{HOST}:{port}/hooked").strip() == "200"
    asked = webhook.asked[-1]  # type: ignore[attr-defined]
    assert asked["tool"] == "Network" and asked["input"] == {"host": HOST, "port": port}
    decisions = _events(http, sid, "approval_decision")
    assert [(d["decision"], d["by"]) for d in decisions] == [("allow", "webhook")]
    # The webhook says no to anything else: refused, and the other host sees nothing.
    out = _fetch(http, sid, f"http://127.0.0.3:{port}/")
    assert "refused" in out and "403" in out
