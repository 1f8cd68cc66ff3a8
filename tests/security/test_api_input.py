"""Strict input on the API: the body limit however the body arrives, names checked as
whole strings, numbers that are numbers, and a result that says when its output was cut.

Each probe has a control: the same request made valid is accepted, so a refusal here is
the check at work, not a request broken some other way.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sophon.api.app import MAX_BODY_BYTES
from tests.conftest import LiveServer

MIB = 1024 * 1024


def chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """A body httpx sends with Transfer-Encoding: chunked (no Content-Length)."""
    block = b"x" * size
    for _ in range(total // size):
        yield block


def peak_rss_kib(server: LiveServer) -> int:
    assert server.proc is not None
    with open(f"/proc/{server.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/PID/status")


def refused(resp: httpx.Response) -> None:
    assert resp.status_code == 413, resp.text
    assert resp.json()["error"] == "payload_too_large", resp.text
    assert resp.json()["message"]


# --- the body limit -----------------------------------------------------------------

ROUTES = [
    ("POST", "/v1/sandbox/execute"),
    ("POST", "/v1/sessions"),
    ("PATCH", "/v1/sessions/ses_none"),
    ("PUT", "/v1/sessions/ses_none/files/big.bin"),
    ("PUT", "/v1/sessions/ses_none/secrets/TOKEN"),
    ("POST", "/v1/sessions/ses_none/messages"),
    ("POST", "/v1/messages"),  # the model gateway
    ("GET", "/v1/me"),  # a route that never reads its body
    ("POST", "/v1/no-such-route"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_a_chunked_body_over_the_limit_is_refused_on_every_route(
        http: httpx.Client, method: str, path: str) -> None:
    started = time.monotonic()
    resp = http.request(method, path, content=chunks(2 * MAX_BODY_BYTES))
    assert "content-length" not in resp.request.headers  # chunked, as the probe means
    refused(resp)
    assert time.monotonic() - started < 10


def test_the_413_comes_before_the_body_ends(server: LiveServer, api_key: str) -> None:
    """The limit is counted while the body arrives: a client that passes it and goes on
    sending (here: never ends its chunked body) has its answer at once."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    head = (f"POST /v1/sandbox/execute HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {api_key}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    block = 64 * 1024
    chunk = f"{block:x}\r\n".encode() + b"x" * block + b"\r\n"

    def send() -> None:
        try:
            sock.sendall(head)
            for _ in range(MAX_BODY_BYTES // block + 2):  # just past the limit; no last chunk
                sock.sendall(chunk)
        except OSError:
            pass  # the server may close once it has answered

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        got = b""
        while b"\r\n\r\n" not in got:
            data = sock.recv(65536)  # times out (fails) if the server waits for the end
            assert data, "the server closed without answering"
            got += data
        assert got.startswith(b"HTTP/1.1 413"), got[:200]
    finally:
        sock.close()
        sender.join(10)


def test_a_64_mib_chunked_body_is_refused_without_growing_the_server(
        own_server: LiveServer) -> None:
    key = own_server.add_user()
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=own_server.url, headers=headers, timeout=60) as http:
        assert http.get("/v1/me").status_code == 200  # warm: the server's ordinary peak
        before = peak_rss_kib(own_server)
        started = time.monotonic()
        refused(http.post("/v1/sessions", content=chunks(64 * MIB)))
        elapsed = time.monotonic() - started
        # The connection is still good after the refusal.
        assert http.get("/v1/me").status_code == 200
    grew = peak_rss_kib(own_server) - before
    assert grew < 24 * 1024, f"the server's peak memory grew by {grew} KiB"
    assert elapsed < 15


def test_chunked_bodies_under_the_limit_still_work(http: httpx.Client) -> None:
    body = json.dumps({"code": "echo ok", "language": "bash"}).encode()
    resp = http.post("/v1/sandbox/execute", content=iter([body[:10], body[10:]]))
    assert resp.status_code == 200 and resp.json()["stdout"] == "ok\n", resp.text

    sid = http.post("/v1/sessions", json={"name": "limit"}).json()["id"]
    try:
        size = 3 * MIB  # a file upload near the limit, chunked
        put = http.put(f"/v1/sessions/{sid}/files/big.bin", content=chunks(size))
        assert put.status_code == 201 and put.json()["size"] == size, put.text
        # And the limit is the same for a file: one byte over is refused.
        refused(http.put(f"/v1/sessions/{sid}/files/big2.bin",
                         content=iter([b"x" * MAX_BODY_BYTES, b"x"])))
    finally:
        http.delete(f"/v1/sessions/{sid}")


# --- names are whole strings --------------------------------------------------------

def execute(http: httpx.Client, **fields: Any) -> httpx.Response:
    return http.post("/v1/sandbox/execute", json={"code": "true", "language": "bash",
                                                  "timeout": 10, **fields})


@pytest.mark.parametrize(("field", "bad", "good"), [
    ("thread_id", "abc\n", "abc"),
    ("env_vars", {"FOO\n": "1"}, {"FOO": "1"}),
    ("env_vars", {"PATH\n": "/evil"}, {"PATH_EXTRA": "/x"}),
    ("metadata", {"k\n": "v"}, {"k": "v"}),
])
def test_execute_names_with_a_trailing_newline_are_refused(
        http: httpx.Client, field: str, bad: object, good: object) -> None:
    resp = execute(http, **{field: bad})
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_request", resp.text
    assert field in resp.json()["message"]
    control = execute(http, **{field: good})
    assert control.status_code == 200 and control.json()["success"], control.text


@pytest.mark.parametrize(("fields", "control"), [
    ({"model": "claude-x-1\n"}, {"model": "claude-x-1"}),
    # A public address written as one: the control needs no name lookup (webhooks go to
    # public hosts only, and nothing is sent at create).
    ({"approval": {"webhook": "https://93.184.216.34/hook\n"}},
     {"approval": {"webhook": "https://93.184.216.34/hook"}}),
    ({"starter": {"type": "git", "url": "https://example.com/r.git", "ref": "main\n"}}, None),
])
def test_session_fields_with_a_trailing_newline_are_refused(
        http: httpx.Client, fields: dict, control: dict | None) -> None:
    resp = http.post("/v1/sessions", json={"name": "nl", **fields})
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_request", resp.text
    if control is not None:
        ok = http.post("/v1/sessions", json={"name": "nl", **control})
        assert ok.status_code == 201, ok.text
        http.delete(f"/v1/sessions/{ok.json()['id']}")


def test_a_secret_name_with_a_trailing_newline_is_refused(http: httpx.Client) -> None:
    sid = http.post("/v1/sessions", json={"name": "secrets"}).json()["id"]
    try:
        bad = http.put(f"/v1/sessions/{sid}/secrets/TOKEN%0A", json={"value": "s3cret"})
        assert bad.status_code == 400 and "secret names" in bad.json()["message"], bad.text
        ok = http.put(f"/v1/sessions/{sid}/secrets/TOKEN", json={"value": "s3cret"})
        assert ok.status_code == 204, ok.text
        assert http.get(f"/v1/sessions/{sid}/secrets").json()["names"] == ["TOKEN"]
    finally:
        http.delete(f"/v1/sessions/{sid}")


def test_a_json_secret_body_without_a_value_is_refused_not_stored(http: httpx.Client) -> None:
    sid = http.post("/v1/sessions", json={"name": "secrets"}).json()["id"]
    try:
        for body in ("{}", '{"valu": "x"}', '{"value": ""}', "[1]"):
            bad = http.put(f"/v1/sessions/{sid}/secrets/TOKEN", content=body,
                           headers={"content-type": "application/json"})
            assert bad.status_code == 400, (body, bad.text)
            assert bad.json()["error"] == "invalid_request", bad.text
        assert http.get(f"/v1/sessions/{sid}/secrets").json()["names"] == []
        # Control: the same bytes as text/plain are the value itself.
        ok = http.put(f"/v1/sessions/{sid}/secrets/TOKEN", content="{}",
                      headers={"content-type": "text/plain"})
        assert ok.status_code == 204, ok.text
        assert http.get(f"/v1/sessions/{sid}/secrets").json()["names"] == ["TOKEN"]
    finally:
        http.delete(f"/v1/sessions/{sid}")


# --- numbers are numbers --------------------------------------------------------------

@pytest.mark.parametrize("timeout", ["10", True, 10.5, 10.0, None])
def test_execute_timeout_must_be_a_whole_number(http: httpx.Client, timeout: object) -> None:
    resp = execute(http, timeout=timeout)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_request", resp.text
    assert resp.json()["message"].startswith("timeout: must be a whole number of seconds")
    control = execute(http, timeout=10)
    assert control.status_code == 200, control.text


@pytest.mark.parametrize(("path", "body"), [
    ("exec", {"command": "true", "timeout": "10"}),
    ("exec", {"command": "true", "timeout": True}),
    ("messages", {"content": "hi", "queue": 0}),
])
def test_session_numbers_and_flags_are_not_coerced(
        http: httpx.Client, path: str, body: dict) -> None:
    sid = http.post("/v1/sessions", json={"name": "strict"}).json()["id"]
    try:
        resp = http.post(f"/v1/sessions/{sid}/{path}", json=body)
        assert resp.status_code == 400 and resp.json()["error"] == "invalid_request", resp.text
        key = next(k for k in body if k in ("timeout", "queue"))
        assert resp.json()["message"].startswith(key)
        control = http.post(f"/v1/sessions/{sid}/exec", json={"command": "true", "timeout": 10})
        assert control.status_code == 200, control.text
    finally:
        http.delete(f"/v1/sessions/{sid}")


@pytest.mark.parametrize("body", [
    b'{"name": "n", "max_turns": "5"}',
    b'{"name": "n", "max_turns": true}',
    b'{"name": "n", "max_turns": 5.0}',
    b'{"name": "n", "max_budget_usd": "2.5"}',
    b'{"name": "n", "max_budget_usd": 1e999}',  # JSON parses it as infinity
])
def test_session_limits_are_plain_finite_numbers(http: httpx.Client, body: bytes) -> None:
    headers = {"Content-Type": "application/json"}
    resp = http.post("/v1/sessions", content=body, headers=headers)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_request", resp.text
    ok = http.post("/v1/sessions", json={"name": "n", "max_turns": 5, "max_budget_usd": 2.5})
    assert ok.status_code == 201, ok.text
    assert (ok.json()["max_turns"], ok.json()["max_budget_usd"]) == (5, 2.5)
    http.delete(f"/v1/sessions/{ok.json()['id']}")


def test_event_positions_out_of_range_are_refused_not_a_crash(http: httpx.Client) -> None:
    sid = http.post("/v1/sessions", json={"name": "seq"}).json()["id"]
    page = {"Accept": "application/json"}
    try:
        # Past a 64-bit integer (the store's), and a digit that is not 0-9 ("²").
        for params, extra in (({"after": 2**64}, {}), ({}, {"Last-Event-ID": b"\xb2"})):
            resp = http.get(f"/v1/sessions/{sid}/events", params=params,
                            headers={**page, **extra})
            assert resp.status_code == 400, resp.text
        ok = http.get(f"/v1/sessions/{sid}/events", headers={**page, "Last-Event-ID": "0"})
        assert ok.status_code == 200 and ok.json()["events"], ok.text
    finally:
        http.delete(f"/v1/sessions/{sid}")


# --- a cut output says so, in every form ------------------------------------------------

def _forms(http: httpx.Client, code: str) -> dict[str, bool]:
    """output_truncated as each form of the result gives it."""
    body = {"code": code, "language": "python", "timeout": 30}
    inline = http.post("/v1/sandbox/execute", json=body)
    assert inline.status_code == 200, inline.text
    stream = http.post("/v1/sandbox/execute", json=body,
                       headers={"Accept": "application/x-ndjson"})
    result = [json.loads(line) for line in stream.content.splitlines()][-1]
    assert result["type"] == "result", result
    status = http.get(f"/v1/executions/{inline.headers['x-trace-id']}").json()
    replay = http.get(f"/v1/executions/{inline.headers['x-trace-id']}/output")
    replayed = [json.loads(line) for line in replay.content.splitlines()][-1]
    return {"inline": inline.json()["output_truncated"],
            "stream": result["output_truncated"],
            "stream result": result["result"]["output_truncated"],
            "status": status["output_truncated"],
            "replay result": replayed["result"]["output_truncated"]}


def test_a_cut_output_says_so_in_every_form_of_the_result(http: httpx.Client) -> None:
    forms = _forms(http, "print('x' * 1_200_000)")  # past the 1 MiB output cap
    assert all(forms.values()), forms
    forms = _forms(http, "print('x' * 1000)")  # control: nothing cut, nothing said
    assert not any(forms.values()), forms
