"""Edge cases of the native agent over real HTTP, against the scripted model server.

One scripted Anthropic server runs in the test process and one ``sophon serve`` talks to
it; each test loads its own script and uses its own user and session. Tool mistakes,
approval webhooks, tool policies, the gateway proxy, metering, a missing provider key and
the per-user token budget are each driven through ``POST /messages`` and checked in the
session's event log and in what the model was sent."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anthropic
import httpx
import pytest

from sophon.testing import ModelServer
from tests.conftest import LiveServer, free_port, make_data_dir, wait_for

JSON = {"Accept": "application/json"}
TURN_DEADLINE = 30.0
PROVIDER_KEY = "test-key"
# Inherited settings that would change what these servers do; each server gets only ours.
INHERITED = ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "SOPHON_ANTHROPIC_API_KEY",
             "SOPHON_ANTHROPIC_BASE_URL", "SOPHON_USER_TOKEN_BUDGET",
             "SOPHON_APPROVAL_WEBHOOK_TIMEOUT")
WEBHOOK_TIMEOUT_S = 1  # the module server's; the slow webhook takes longer than this
SLOW_WEBHOOK_S = 4.0


# --- servers -----------------------------------------------------------------------

def live_server(env: dict[str, str]) -> LiveServer:
    """A started server whose environment has exactly our model settings."""
    srv = LiveServer(make_data_dir())
    for name in INHERITED:
        srv.env.pop(name, None)
    srv.env.update(env)
    try:
        return srv.start()
    except BaseException:
        stop_server(srv)
        raise


def stop_server(srv: LiveServer) -> None:
    srv.stop()
    shutil.rmtree(srv.data_dir, ignore_errors=True)


@contextlib.contextmanager
def running_server(env: dict[str, str]) -> Iterator[LiveServer]:
    srv = live_server(env)
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture(scope="module")
def ms() -> Iterator[ModelServer]:
    with ModelServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def dead_port() -> int:
    """A loopback port nothing listens on, for an approval webhook that cannot be reached."""
    return free_port()


@pytest.fixture(scope="module")
def server(ms: ModelServer, webhook: Webhook, dead_port: int) -> Iterator[LiveServer]:
    # Approval webhooks go to public https hosts only; these loopback ones are listed.
    allowed = f"127.0.0.1:{webhook.port},127.0.0.1:{dead_port}"
    srv = live_server({"ANTHROPIC_API_KEY": PROVIDER_KEY, "ANTHROPIC_BASE_URL": ms.url,
                       "SOPHON_APPROVAL_WEBHOOK_TIMEOUT": str(WEBHOOK_TIMEOUT_S),
                       "SOPHON_WEBHOOK_ALLOW_INSECURE_HOSTS": allowed})
    yield srv
    stop_server(srv)


class Webhook:
    """An approval webhook: denies commands containing ``rm``, allows the rest; under
    ``/slow`` it answers only after ``SLOW_WEBHOOK_S``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.release = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.calls.append((self.path, body))
                if self.path == "/slow":
                    hook.release.wait(SLOW_WEBHOOK_S)
                command = str(body.get("input", {}).get("command", ""))
                answer = ({"approved": False, "reason": "not on weekends"}
                          if "rm" in command.split() else {"approved": True})
                data = json.dumps(answer).encode()
                with contextlib.suppress(OSError):  # the slow one's caller has gone
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


# --- helpers -----------------------------------------------------------------------

def client(srv: LiveServer, key: str) -> httpx.Client:
    return httpx.Client(base_url=srv.url, timeout=60,
                        headers={"Authorization": f"Bearer {key}"})


def create_session(http: httpx.Client, approval: dict[str, Any] | None = None,
                   **extra: Any) -> str:
    body: dict[str, Any] = {"name": "edges", "starter": {"type": "empty"}, **extra}
    if approval is not None:
        body["approval"] = approval
    r = http.post("/v1/sessions", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def events(http: httpx.Client, sid: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        r = http.get(f"/v1/sessions/{sid}/events", headers=JSON,
                     params={"after": out[-1]["seq"] if out else 0, "limit": 5000})
        assert r.status_code == 200, r.text
        page = r.json()["events"]
        out += page
        if len(page) < 5000:
            return out


def of_type(evs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in evs if e["type"] == kind]


def turn_over(evs: list[dict[str, Any]], users: int) -> bool:
    """The ``users``-th user message is logged and an idle status follows the last one."""
    at = [i for i, e in enumerate(evs) if e["type"] == "user"]
    return len(at) >= users and any(e["type"] == "status" and e["status"] in ("idle", "error")
                                    for e in evs[at[-1] + 1:])


def send(http: httpx.Client, sid: str, content: str) -> None:
    r = http.post(f"/v1/sessions/{sid}/messages", json={"content": content})
    assert r.status_code == 202, r.text


def run_turn(http: httpx.Client, sid: str, content: str,
             deadline: float = TURN_DEADLINE) -> list[dict[str, Any]]:
    """Send a message and wait for its turn to end; the session's whole log."""
    users = len(of_type(events(http, sid), "user")) + 1
    send(http, sid, content)

    def over() -> list[dict[str, Any]] | None:
        evs = events(http, sid)
        return evs if turn_over(evs, users) else None

    evs = wait_for(over, deadline, 0.05, "the turn to end")
    assert isinstance(evs, list)
    return evs


def tool_use(name: str, input: dict[str, Any], id: str) -> dict[str, Any]:
    return {"type": "tool_use", "name": name, "input": input, "id": id}


def results_by_id(evs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["tool_use_id"]: e for e in of_type(evs, "tool_result")}


def sent_results(request: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The tool results in the last message of a request the model received."""
    last = request["messages"][-1]
    assert last["role"] == "user", last
    return {b["tool_use_id"]: b for b in last["content"] if b["type"] == "tool_result"}


def no_session_errors(evs: list[dict[str, Any]]) -> None:
    assert not of_type(evs, "session_error"), of_type(evs, "session_error")


# --- 1. tools ----------------------------------------------------------------------

SETUP = ("printf 'foo\\nfoo\\nbar\\n' > dup.txt && printf 'one\\n' > unread.txt && "
         "printf 'alpha\\nbeta\\n' > old.py && touch -d 2001-01-01 old.py && "
         "mkdir -p sub && printf 'beta two\\n' > sub/mid.py && "
         "touch -d 2010-01-01 sub/mid.py && printf 'gamma\\n' > new.py")

TOOL_CALLS = [
    tool_use("Bash", {"command": SETUP}, "toolu_setup"),
    tool_use("Read", {"file_path": "dup.txt"}, "toolu_read_dup"),
    tool_use("Edit", {"file_path": "/workspace/dup.txt", "old_string": "foo",
                      "new_string": "baz"}, "toolu_edit_dup"),
    tool_use("Edit", {"file_path": "unread.txt", "old_string": "one", "new_string": "two"},
             "toolu_edit_unread"),
    tool_use("Read", {"file_path": "missing.txt"}, "toolu_read_missing"),
    tool_use("Grep", {"pattern": "zzz_nowhere_[0-9]+"}, "toolu_grep_none"),
    tool_use("Bash", {"command": "sleep 5", "timeout": 1000}, "toolu_sleep"),
    tool_use("Write", {"file_path": "/etc/x", "content": "no"}, "toolu_write_etc"),
    tool_use("Write", {"file_path": "../../x", "content": "no"}, "toolu_write_up"),
    tool_use("Frobnicate", {"how": "hard"}, "toolu_unknown"),
    tool_use("Glob", {"pattern": "**/*.py"}, "toolu_glob"),
    tool_use("Grep", {"pattern": "beta", "output_mode": "content", "-n": True},
             "toolu_grep_content"),
]

# tool_use id -> (is_error, text the result must contain)
EXPECTED = {
    "toolu_setup": (False, "(no output)"),
    "toolu_read_dup": (False, "     1\tfoo\n     2\tfoo\n     3\tbar"),
    "toolu_edit_dup": (True, "old_string occurs 2 times in dup.txt"),
    "toolu_edit_unread": (True, "unread.txt has not been read yet; Read it before editing"),
    "toolu_read_missing": (True, "File does not exist: /workspace/missing.txt"),
    "toolu_grep_none": (False, "No matches found"),
    "toolu_sleep": (True, "Command timed out after 1 s"),
    "toolu_write_etc": (True, "/etc/x is outside the workspace"),
    "toolu_write_up": (True, "../../x is outside the workspace"),
    "toolu_unknown": (True, "unknown tool 'Frobnicate'"),
    "toolu_glob": (False, "/workspace/new.py\n/workspace/sub/mid.py\n/workspace/old.py"),
    "toolu_grep_content": (False, "beta"),
}


def test_tool_mistakes_are_error_results_and_the_turn_goes_on(
        ms: ModelServer, http: httpx.Client) -> None:
    ms.set_script([
        {"content": ["Let me try a few things.", *TOOL_CALLS]},
        {"rules": [{"when": {"tool_result_is_error": True},
                    "reply": "Some of those failed, as expected."}]},
    ])
    sid = create_session(http, {"shell": "allow"})
    started = time.monotonic()
    evs = run_turn(http, sid, "exercise the tools")
    assert time.monotonic() - started < 20  # the 5 s sleep was cut at 1 s
    no_session_errors(evs)

    logged = results_by_id(evs)
    assert [e["tool_use_id"] for e in of_type(evs, "tool_use")] == [c["id"] for c in TOOL_CALLS]
    assert set(logged) == set(EXPECTED)
    assert len(ms.requests) == 2, "the turn must go on after the failed tools"
    sent = sent_results(ms.requests[1])
    assert set(sent) == set(EXPECTED)
    for tid, (is_error, text) in EXPECTED.items():
        for where, result in (("log", logged[tid]), ("model", sent[tid])):
            assert result["is_error"] is is_error, (where, tid, result)
            assert text in result["content"], (where, tid, result["content"])
    assert "unknown tool 'Frobnicate'" in sent["toolu_unknown"]["content"]
    assert "Bash" in sent["toolu_unknown"]["content"]  # it lists the real tools

    # Glob lists newest first and only the matches; Grep content mode is file:line:text.
    assert sent["toolu_glob"]["content"] == \
        "/workspace/new.py\n/workspace/sub/mid.py\n/workspace/old.py"
    assert set(sent["toolu_grep_content"]["content"].splitlines()) == \
        {"old.py:2:beta", "sub/mid.py:1:beta two"}

    # The failed edits left the files alone, and the model's reply ended the turn.
    r = http.get(f"/v1/sessions/{sid}/files/dup.txt")
    assert r.status_code == 200, r.text
    assert r.json()["content"] == "foo\nfoo\nbar\n"
    assert of_type(evs, "assistant")[-1]["text"] == "Some of those failed, as expected."


# --- 2. the approval webhook -----------------------------------------------------------

def test_webhook_allows_and_denies(ms: ModelServer, http: httpx.Client,
                                   webhook: Webhook) -> None:
    ms.set_script([
        {"content": [tool_use("Bash", {"command": "rm -rf build"}, "toolu_rm"),
                     tool_use("Bash", {"command": "echo approved-ran"}, "toolu_echo"),
                     tool_use("Bash", {"command": "echo again"}, "toolu_again")]},
        "done",
    ])
    webhook.calls.clear()
    sid = create_session(http, {"shell": "ask_once", "webhook": webhook.url + "/hook"})
    evs = run_turn(http, sid, "clean up")
    no_session_errors(evs)

    results = results_by_id(evs)
    assert results["toolu_rm"]["is_error"] is True
    assert results["toolu_rm"]["content"] == \
        "Permission to use Bash was denied: not on weekends."
    assert results["toolu_echo"] == {**results["toolu_echo"], "is_error": False,
                                     "content": "approved-ran"}
    assert results["toolu_again"]["is_error"] is False
    assert results["toolu_again"]["content"] == "again"

    # The webhook was asked twice: the allow held for the rest of the session (ask_once).
    assert [(path, body["tool"], body["input"]["command"]) for path, body in webhook.calls] \
        == [("/hook", "Bash", "rm -rf build"), ("/hook", "Bash", "echo approved-ran")]
    assert all(body["session_id"] == sid for _, body in webhook.calls)
    requests, decisions = of_type(evs, "approval_request"), of_type(evs, "approval_decision")
    assert [r["input"]["command"] for r in requests] == ["rm -rf build", "echo approved-ran"]
    assert [(d["decision"], d["by"], d["reason"]) for d in decisions] == \
        [("deny", "webhook", "not on weekends"), ("allow", "webhook", None)]
    assert [d["approval_id"] for d in decisions] == [r["approval_id"] for r in requests]
    assert http.get(f"/v1/sessions/{sid}").json()["approval"]["shell"] == "allow"

    sent = sent_results(ms.requests[1])
    assert sent["toolu_rm"]["is_error"] is True and "not on weekends" in \
        sent["toolu_rm"]["content"]


def test_an_unanswered_approval_gets_the_sessions_answer_on_timeout(
        ms: ModelServer, http: httpx.Client) -> None:
    ms.set_script([
        {"content": [tool_use("Bash", {"command": "echo let-through"}, "toolu_a"),
                     tool_use("Write", {"file_path": "/workspace/x.txt", "content": "x"},
                              "toolu_b")]},
        "done",
    ])
    sid = create_session(http, {"tools": {"Bash": "ask", "Write": "ask"},
                                "timeout_seconds": 5, "on_timeout": "allow"})
    started = time.monotonic()
    evs = run_turn(http, sid, "go")
    no_session_errors(evs)
    requests = of_type(evs, "approval_request")
    # The request says when, and with what, it will be answered.
    assert [r["on_timeout"] for r in requests] == ["allow", "allow"]
    assert all(r["expires_at"] for r in requests)
    assert [(d["decision"], d["by"]) for d in of_type(evs, "approval_decision")] == \
        [("allow", "timeout"), ("allow", "timeout")]
    assert results_by_id(evs)["toolu_a"]["content"] == "let-through"
    assert time.monotonic() - started >= 9  # each waited its 5 s
    # By default the answer on timeout is deny; without a timeout it waits.
    ms.set_script([{"content": [tool_use("Bash", {"command": "echo no"}, "toolu_c")]},
                   "done"])
    sid = create_session(http, {"tools": {"Bash": "ask"}, "timeout_seconds": 5})
    evs = run_turn(http, sid, "go")
    assert results_by_id(evs)["toolu_c"]["is_error"] is True
    assert "no answer within 5 s" in of_type(evs, "approval_decision")[0]["reason"]
    assert http.post("/v1/sessions", json={"name": "x", "approval": {"timeout_seconds": 1}}
                     ).status_code == 400


def test_unreachable_webhook_denies(ms: ModelServer, http: httpx.Client,
                                    dead_port: int) -> None:
    ms.set_script([{"content": [tool_use("Bash", {"command": "echo hi"}, "toolu_hi")]},
                   "done"])
    sid = create_session(http, {"shell": "ask_once",
                                "webhook": f"http://127.0.0.1:{dead_port}/hook"})
    evs = run_turn(http, sid, "say hi")
    no_session_errors(evs)
    result = results_by_id(evs)["toolu_hi"]
    assert result["is_error"] is True
    # One sentence for every failure: which one it was is for the server's log only.
    assert result["content"] == \
        "Permission to use Bash was denied: the approval webhook gave no valid answer."
    [decision] = of_type(evs, "approval_decision")
    assert decision["decision"] == "deny" and decision["by"] == "webhook"
    assert decision["reason"] == "the approval webhook gave no valid answer"
    assert http.get(f"/v1/sessions/{sid}").json()["approval"]["shell"] == "ask_once"
    assert len(ms.requests) == 2


def test_slow_webhook_denies(ms: ModelServer, http: httpx.Client, webhook: Webhook) -> None:
    ms.set_script([{"content": [tool_use("Bash", {"command": "echo hi"}, "toolu_hi")]},
                   "done"])
    sid = create_session(http, {"shell": "ask_once", "webhook": webhook.url + "/slow"})
    started = time.monotonic()
    evs = run_turn(http, sid, "say hi")
    assert time.monotonic() - started < SLOW_WEBHOOK_S  # it did not wait for the answer
    no_session_errors(evs)
    result = results_by_id(evs)["toolu_hi"]
    assert result["is_error"] is True
    assert result["content"] == \
        "Permission to use Bash was denied: the approval webhook gave no valid answer."
    [decision] = of_type(evs, "approval_decision")
    assert (decision["decision"], decision["by"], decision["reason"]) == \
        ("deny", "webhook", "the approval webhook gave no valid answer")
    assert len(ms.requests) == 2


# --- 3. tool policy --------------------------------------------------------------------

@pytest.mark.parametrize(("approval", "call"), [
    ({"shell": "deny"}, tool_use("Bash", {"command": "echo hi"}, "toolu_denied")),
    ({"shell": "allow", "tools": {"Write": "deny"}},
     tool_use("Write", {"file_path": "w.txt", "content": "x"}, "toolu_denied")),
], ids=["shell-deny", "write-deny"])
def test_policy_denies_without_asking(ms: ModelServer, http: httpx.Client,
                                      approval: dict[str, Any], call: dict[str, Any]) -> None:
    ms.set_script([{"content": [call, tool_use("Glob", {"pattern": "*"}, "toolu_glob")]},
                   "ok"])
    sid = create_session(http, approval)
    evs = run_turn(http, sid, "try it")
    no_session_errors(evs)
    results = results_by_id(evs)
    assert results["toolu_denied"]["is_error"] is True
    assert results["toolu_denied"]["content"] == (
        f"Permission to use {call['name']} was denied: the session's policy denies "
        f"{call['name']}.")
    assert results["toolu_glob"]["is_error"] is False  # other tools still run
    assert not of_type(evs, "approval_request") and not of_type(evs, "approval_decision")
    assert len(ms.requests) == 2
    assert sent_results(ms.requests[1])["toolu_denied"]["is_error"] is True
    if call["name"] == "Write":
        assert http.get(f"/v1/sessions/{sid}/files/w.txt").status_code == 404


# --- 4. the gateway proxy --------------------------------------------------------------

def sdk(server: LiveServer, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0)


def test_gateway_proxies_with_the_provider_key(ms: ModelServer, server: LiveServer,
                                               http: httpx.Client, api_key: str) -> None:
    ms.set_script([
        {"content": "Hello through the gateway.",
         "usage": {"input_tokens": 12, "output_tokens": 5}},
        {"content": "Streamed through the gateway.",
         "usage": {"input_tokens": 20, "output_tokens": 7}},
        {"content": "Bearer works too.", "usage": {"input_tokens": 3, "output_tokens": 2}},
    ])
    sid = create_session(http)
    r = http.post(f"/v1/sessions/{sid}/gateway-token")
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    ask = {"model": "sonnet", "max_tokens": 64,
           "messages": [{"role": "user", "content": "hi"}]}

    with sdk(server, token) as claude:
        message = claude.messages.create(**ask)  # type: ignore[call-overload]
        assert message.content[0].text == "Hello through the gateway."
        assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 5)
        with claude.messages.stream(**ask) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text == "Streamed through the gateway."
        assert final.stop_reason == "end_turn" and final.usage.output_tokens == 7
    # Authorization: Bearer is accepted as well as x-api-key.
    r = httpx.post(server.url + "/v1/messages", json=ask, timeout=30,
                   headers={"Authorization": f"Bearer {token}",
                            "anthropic-version": "2023-06-01"})
    assert r.status_code == 200, r.text
    assert r.json()["content"][0]["text"] == "Bearer works too."

    # The provider got the alias resolved, the real key, and never the session token.
    assert [q["model"] for q in ms.requests] == ["claude-sonnet-4-5"] * 3
    assert [bool(q.get("stream")) for q in ms.requests] == [False, True, False]
    headers = ms.request_headers
    assert len(headers) == 3
    for h in headers:
        assert h.get("x-api-key") == PROVIDER_KEY
        assert not any(token in v or api_key in v for v in h.values()), h

    def metered() -> dict[str, Any] | None:
        body = http.get(f"/v1/sessions/{sid}/usage").json()
        return body if len(body["calls"]) == 3 else None

    usage = wait_for(metered, 10, 0.05, "the gateway calls to be metered")
    assert isinstance(usage, dict)
    calls = usage["calls"]
    assert [(c["model"], c["input_tokens"], c["output_tokens"]) for c in calls] == \
        [("claude-sonnet-4-5", 12, 5), ("claude-sonnet-4-5", 20, 7),
         ("claude-sonnet-4-5", 3, 2)]
    assert usage["totals"]["input_tokens"] == 35 and usage["totals"]["output_tokens"] == 14
    assert usage["totals"]["cost_usd"] == pytest.approx((35 * 3 + 14 * 15) / 1e6)

    # Wrong credentials are refused before the provider is called.
    for bad in ("sk-sophon-session-not-a-real-token", api_key):
        with sdk(server, bad) as claude, pytest.raises(anthropic.AuthenticationError) as exc:
            claude.messages.create(**ask)  # type: ignore[call-overload]
        assert exc.value.status_code == 401
    # A new token replaces the old one.
    assert http.post(f"/v1/sessions/{sid}/gateway-token").status_code == 200
    with sdk(server, token) as claude, pytest.raises(anthropic.AuthenticationError):
        claude.messages.create(**ask)  # type: ignore[call-overload]
    assert len(ms.requests) == 3


# --- 5. metering ------------------------------------------------------------------------

def test_turn_usage_is_metered_and_priced(ms: ModelServer, http: httpx.Client) -> None:
    ms.set_script([{"content": "Counted.", "usage": {"input_tokens": 1000,
                                                     "output_tokens": 500}}])
    sid = create_session(http, model="sonnet")
    evs = run_turn(http, sid, "count me")
    no_session_errors(evs)
    cost = (1000 * 3 + 500 * 15) / 1e6
    assert cost == pytest.approx(0.0105)

    [event] = of_type(evs, "usage")
    assert (event["model"], event["input_tokens"], event["output_tokens"]) == \
        ("claude-sonnet-4-5", 1000, 500)
    assert event["cost_usd"] == pytest.approx(cost)

    usage = http.get(f"/v1/sessions/{sid}/usage").json()
    [call] = usage["calls"]
    assert (call["model"], call["input_tokens"], call["output_tokens"]) == \
        ("claude-sonnet-4-5", 1000, 500)
    assert call["cost_usd"] == pytest.approx(cost)
    assert call["cumulative_cost_usd"] == pytest.approx(cost)
    assert usage["totals"] == {"input_tokens": 1000, "output_tokens": 500,
                               "cost_usd": pytest.approx(cost)}
    view = http.get(f"/v1/sessions/{sid}").json()
    assert view["usage"] == usage["totals"]
    assert ms.requests[0]["model"] == "claude-sonnet-4-5"


# --- 6. no provider key --------------------------------------------------------------

@pytest.mark.parametrize("env", [{}, {"ANTHROPIC_API_KEY": ""}], ids=["unset", "empty"])
def test_without_a_provider_key_a_message_is_refused_up_front(ms: ModelServer,
                                                               env: dict[str, str]) -> None:
    ms.set_script(["never sent"])
    with running_server(env) as srv:  # no usable key (and no base URL)
        assert srv.env.get("ANTHROPIC_API_KEY", "") == ""
        with client(srv, srv.add_user()) as http:
            sid = create_session(http)
            before = events(http, sid)
            r = http.post(f"/v1/sessions/{sid}/messages", json={"content": "hello?"})
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "provider_not_configured"
            assert "set ANTHROPIC_API_KEY" in r.json()["message"]
            # Said once, in the answer: nothing logged, no turn, the session as it was.
            assert events(http, sid) == before
            assert http.get(f"/v1/sessions/{sid}").json()["status"] == "idle"
            # The same for a claude-code session of a user with no key of their own.
            cc = create_session(http, runtime="claude-code")
            r = http.post(f"/v1/sessions/{cc}/messages", json={"content": "hello?"})
            assert (r.status_code, r.json()["error"]) == (503, "provider_not_configured")

            # The gateway says so too, as an Anthropic-style error.
            token = http.post(f"/v1/sessions/{sid}/gateway-token").json()["token"]
            with sdk(srv, token) as claude, pytest.raises(anthropic.APIStatusError) as exc:
                claude.messages.create(model="sonnet", max_tokens=8,
                                       messages=[{"role": "user", "content": "hi"}])
            assert exc.value.status_code == 503
            assert "ANTHROPIC_API_KEY" in str(exc.value)
    assert ms.requests == []


# --- 7. the per-user token budget ------------------------------------------------------

def test_user_token_budget_stops_the_loop(ms: ModelServer) -> None:
    # The gateway's pre-call estimate (system prompt + tools + messages, ~1,000 tokens)
    # lets the first call through (0 + ~1,000 <= 2,000) but not the second (1,500 + ~1,000).
    spend = {"input_tokens": 1000, "output_tokens": 500}
    ms.set_script([{"content": [tool_use("Glob", {"pattern": "*"}, f"toolu_loop{n}")],
                    "usage": spend} for n in range(5)])
    budget = {"ANTHROPIC_API_KEY": PROVIDER_KEY, "ANTHROPIC_BASE_URL": ms.url,
              "SOPHON_USER_TOKEN_BUDGET": "2000"}
    with running_server(budget) as srv, client(srv, srv.add_user()) as http:
        sid = create_session(http)
        evs = run_turn(http, sid, "loop")
        assert len(ms.requests) == 1, "the second call would pass the budget"
        assert [e["tool_use_id"] for e in of_type(evs, "tool_result")] == ["toolu_loop0"]
        [error] = of_type(evs, "session_error")
        assert error["code"] == "budget_exceeded"
        assert "token budget of 2,000 tokens" in error["message"]
        assert "1,500 used" in error["message"]
        assert evs[-1]["type"] == "status" and evs[-1]["status"] == "idle"
        assert http.get(f"/v1/sessions/{sid}/usage").json()["totals"]["input_tokens"] \
            == 1000
        me = http.get("/v1/me").json()  # what the dashboard shows as what is left
        assert (me["token_budget"], me["tokens_used"]) == (2000, 1500)

        # The budget is the user's: another session of theirs is refused at once.
        other = create_session(http)
        evs = run_turn(http, other, "anything left?")
        [error] = of_type(evs, "session_error")
        assert error["code"] == "budget_exceeded"
        assert "token budget" in error["message"]
        assert not of_type(evs, "assistant") and not of_type(evs, "tool_use")
        assert len(ms.requests) == 1


# --- 8. a failed turn --------------------------------------------------------------------

@pytest.mark.parametrize("failure", [
    {"error": {"status": 400, "message": "prompt is too long"}},
    {"content": ["half a sent"], "stream_error": {"type": "api_error",
                                                 "message": "the stream broke"}},
], ids=["http-error", "stream-error"])
def test_a_failed_turn_leaves_the_session_in_error_until_the_next_message(
        ms: ModelServer, http: httpx.Client, failure: dict[str, Any]) -> None:
    ms.set_script([failure, "back on track"])
    sid = create_session(http)
    evs = run_turn(http, sid, "first")
    [error] = of_type(evs, "session_error")
    assert error["code"] == "model_error" and "the model call failed" in error["message"]
    assert evs[-1]["type"] == "status" and evs[-1]["status"] == "error"
    assert evs[-1]["detail"] == error["message"]
    assert http.get(f"/v1/sessions/{sid}").json()["status"] == "error"

    evs = run_turn(http, sid, "again")
    assert of_type(evs, "assistant")[-1]["text"] == "back on track"
    assert evs[-1]["type"] == "status" and evs[-1]["status"] == "idle"
    assert http.get(f"/v1/sessions/{sid}").json()["status"] in ("idle", "sleeping")
