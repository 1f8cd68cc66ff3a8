"""`runtime: claude-code` sessions: the real Claude Code CLI, one long-lived process per
session in its box, runs the turns; its model calls go through the gateway to the
scripted model, each tool call it asks about waits on Sophon's approval policy (the
CLI's stdio control protocol), and what it does becomes the same typed events as the
native runtime's."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sophon.testing import ModelServer
from tests.conftest import LiveServer, make_data_dir, wait_for
from tests.integration.mcp_support import DEMO, SERVER

NAP = "import time; time.sleep(30); print(chr(119) + chr(111) + chr(107) + chr(101))"  # woke
SLOW_TEXT = " ".join(f"word{i}" for i in range(120))  # streamed over ~15 s


def text(t: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": t}]}


def tool(name: str, **input: Any) -> dict[str, Any]:
    return {"content": [{"type": "tool_use", "name": name, "input": input}],
            "stop_reason": "tool_use"}


def turn() -> dict[str, Any]:
    return {"rules": [
        {"when": {"last_user_contains": "PLAN", "last_tool_result_contains": ""},
         "reply": text("PLANNED")},
        {"when": {"last_user_contains": "PLAN"},
         "reply": tool("TodoWrite", todos=[
             {"content": "write the tests", "status": "completed", "activeForm": "Writing"},
             {"content": "fix the bug", "status": "in_progress", "activeForm": "Fixing"}])},
        {"when": {"last_user_contains": "AGAIN", "last_tool_result_contains": "again.txt"},
         "reply": text("DONE AGAIN")},
        {"when": {"last_user_contains": "AGAIN"},
         "reply": tool("Write", file_path="/workspace/again.txt", content="again\n")},
        {"when": {"last_user_contains": "SECOND"}, "reply": text("second answer")},
        {"when": {"last_user_contains": "MCPTOOL", "last_tool_result_contains": "HELLO"},
         "reply": text("done shouting")},
        {"when": {"last_user_contains": "MCPTOOL"},
         "reply": tool("mcp__demo__shout", text="hello")},
        {"when": {"last_user_contains": "SPEND", "last_tool_result_contains": ""},
         "reply": text("should not be reached")},
        {"when": {"last_user_contains": "SPEND"},
         "reply": {**tool("Write", file_path="/workspace/spent.txt", content="spent\n"),
                   "usage": {"input_tokens": 1_000_000, "output_tokens": 10}}},
        {"when": {"last_user_contains": "SLEEPY", "last_tool_result_contains": ""},
         "reply": text("slept")},
        {"when": {"last_user_contains": "SLEEPY"},
         "reply": tool("Bash", command=f"python3 -c '{NAP}'", description="nap")},
        {"when": {"last_user_contains": "SLOW"},
         "reply": {**text(SLOW_TEXT), "chunk_delay_ms": 250}},
        {"when": {"last_user_contains": "NEVER-ANSWER"}, "reply": {**text("too late"),
                                                          "delay_ms": 120_000}},
        {"when": {"last_tool_result_contains": "hi from claude"}, "reply": text("DONE")},
        {"when": {"tool_result_is_error": True}, "reply": text("STOPPED: not allowed")},
        {"when": {"last_tool_result_contains": ""},
         "reply": tool("Bash", command="cat hello.txt", description="show the file")},
        {"when": {"last_user_contains": "SESSION"},
         "reply": tool("Write", file_path="/workspace/hello.txt", content="hi from claude\n")},
    ], "default": text("ok")}


@pytest.fixture(scope="module")
def model() -> Iterator[ModelServer]:
    with ModelServer({"turns": [turn() for _ in range(200)]}) as ms:
        yield ms


@pytest.fixture(scope="module")
def server(model: ModelServer) -> Iterator[LiveServer]:
    path = make_data_dir()
    srv = LiveServer(path, env={"ANTHROPIC_API_KEY": "sk-ant-test-key-0123456789abcdef",
                                "ANTHROPIC_BASE_URL": model.url}).start()
    health = httpx.get(srv.url + "/healthz").json()
    if str(health["box_claude_code"]).startswith("missing"):
        srv.stop()
        pytest.skip(f"the claude CLI is not installed for boxes: {health['box_claude_code']}")
    yield srv
    srv.stop()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60,
                      headers={"Authorization": f"Bearer {server.add_user()}"}) as c:
        yield c


def events(http: httpx.Client, sid: str) -> list[dict[str, Any]]:
    r = http.get(f"/v1/sessions/{sid}/events", params={"limit": 5000},
                 headers={"Accept": "application/json"})
    return list(r.json()["events"])


def session(http: httpx.Client) -> str:
    r = http.post("/v1/sessions", json={"name": "cc", "base": "python",
                                        "runtime": "claude-code"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def idle_after(http: httpx.Client, sid: str, n_users: int) -> list[dict[str, Any]] | None:
    evs = events(http, sid)
    users = [i for i, e in enumerate(evs) if e["type"] == "user"]
    if len(users) >= n_users and any(e["type"] == "status" and e["status"] in ("idle", "error")
                                     for e in evs[users[n_users - 1]:]):
        return evs
    return None


def answer(http: httpx.Client, sid: str, decision: str) -> dict[str, Any]:
    asked = wait_for(lambda: [e for e in events(http, sid) if e["type"] == "approval_request"],
                     90, 0.2, "the Bash approval request")
    request = asked[-1]  # type: ignore[index]
    r = http.post(f"/v1/sessions/{sid}/approvals/{request['approval_id']}",
                  json={"decision": decision})
    assert r.status_code == 200, r.text
    return dict(request)


def test_a_turn_writes_asks_before_bash_and_logs_typed_events(
        http: httpx.Client, model: ModelServer) -> None:
    sid = session(http)
    assert http.post(f"/v1/sessions/{sid}/messages",
                     json={"content": "SESSION: write hello.txt, then show it"}).status_code == 202
    request = answer(http, sid, "allow")
    assert request["tool"] == "Bash" and request["input"]["command"] == "cat hello.txt"
    evs = wait_for(lambda: idle_after(http, sid, 1), 120, 0.3, "the turn to end")
    assert isinstance(evs, list)
    types = [e["type"] for e in evs]
    for needed in ("user", "tool_use", "tool_result", "file_change", "assistant", "usage"):
        assert needed in types, types
    uses = [e["tool"] for e in evs if e["type"] == "tool_use"]
    assert uses == ["Write", "Bash"]
    results = [e for e in evs if e["type"] == "tool_result"]
    assert "hi from claude" in results[-1]["content"] and not results[-1]["is_error"]
    assert any(e["type"] == "file_change" and e["path"] == "hello.txt" for e in evs)
    assert [e["text"] for e in evs if e["type"] == "assistant"][-1] == "DONE"
    assert not [e for e in evs if e["type"] == "session_error"]
    # Metered by the gateway, as the session.
    assert http.get(f"/v1/sessions/{sid}/usage").json()["calls"]

    # The next turn carries on the same conversation (the CLI resumes it).
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "SECOND question"})
    evs = wait_for(lambda: idle_after(http, sid, 2), 120, 0.3, "the second turn to end")
    assert [e["text"] for e in evs if e["type"] == "assistant"][-1] == "second answer"  # type: ignore[union-attr]
    sent = json.dumps(model.requests[-1]["messages"])
    assert "SESSION: write hello.txt" in sent and "hi from claude" in sent


def test_a_denied_tool_does_not_run(http: httpx.Client) -> None:
    sid = session(http)
    http.post(f"/v1/sessions/{sid}/messages",
              json={"content": "SESSION: write hello.txt, then show it"})
    answer(http, sid, "deny")
    evs = wait_for(lambda: idle_after(http, sid, 1), 120, 0.3, "the turn to end")
    results = [e for e in evs if e["type"] == "tool_result"]  # type: ignore[union-attr]
    assert results[-1]["is_error"] and "hi from claude" not in results[-1]["content"]
    assert [e["text"] for e in evs if e["type"] == "assistant"][-1] == "STOPPED: not allowed"  # type: ignore[union-attr]


def test_an_interrupt_while_a_tool_waits_ends_the_turn(http: httpx.Client) -> None:
    sid = session(http)
    http.post(f"/v1/sessions/{sid}/messages",
              json={"content": "SESSION: write hello.txt, then show it"})
    wait_for(lambda: [e for e in events(http, sid) if e["type"] == "approval_request"],
             90, 0.2, "the Bash approval request")
    started = time.monotonic()
    assert http.post(f"/v1/sessions/{sid}/interrupt").json() == {"interrupted": True}
    evs = wait_for(lambda: idle_after(http, sid, 1), 30, 0.2, "the turn to end")
    assert time.monotonic() - started < 20
    assert http.get(f"/v1/sessions/{sid}/approvals").json()["approvals"] == []
    statuses = [e for e in evs if e["type"] == "status"]  # type: ignore[union-attr]
    assert statuses[-1]["detail"] == "interrupted by the user"


def test_without_the_cli_the_runtime_is_a_clear_400(data_dir: Path) -> None:
    srv = LiveServer(data_dir, env={"SOPHON_BOX_CLAUDE_DIR": str(data_dir / "none")}).start()
    try:
        assert httpx.get(srv.url + "/healthz").json()["box_claude_code"].startswith("missing")
        http = httpx.Client(base_url=srv.url, headers={"Authorization":
                                                       f"Bearer {srv.add_user()}"})
        r = http.post("/v1/sessions", json={"name": "cc", "runtime": "claude-code"})
        assert r.status_code == 400
        assert "claude-code runtime is not available" in r.json()["message"]
        assert "scripts/box-tools" in r.json()["message"]
        assert http.get("/v1/sessions").json()["sessions"] == []
        # The native runtime is not affected (control).
        assert http.post("/v1/sessions", json={"name": "n"}).status_code == 201
    finally:
        srv.stop()


def test_the_turn_reaches_only_the_gateway(http: httpx.Client) -> None:
    """The CLI's own calls (telemetry, feature flags, updates) are off: a whole turn
    leaves no refused connection behind."""
    sid = session(http)
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "SECOND, just answer"})
    evs = wait_for(lambda: idle_after(http, sid, 1), 120, 0.3, "the turn to end")
    assert [e for e in evs if e["type"] == "network_denied"] == []  # type: ignore[union-attr]
    usage = wait_for(lambda: (lambda n: n if n["connections"] else None)(
        http.get(f"/v1/sessions/{sid}/usage").json()["network"]), 10, 0.2, "the metering")
    assert usage["denied"] == 0  # type: ignore[index]


def test_max_turns_holds(http: httpx.Client) -> None:
    r = http.post("/v1/sessions", json={"name": "cc", "base": "python",
                                        "runtime": "claude-code", "max_turns": 1,
                                        "approval": {"shell": "allow"}})
    sid = r.json()["id"]
    http.post(f"/v1/sessions/{sid}/messages",
              json={"content": "SESSION: write hello.txt, then show it"})
    evs = wait_for(lambda: idle_after(http, sid, 1), 120, 0.3, "the turn to end")
    errors = [e for e in evs if e["type"] == "session_error"]  # type: ignore[union-attr]
    assert [e["code"] for e in errors] == ["max_turns"]
    assert [e["tool"] for e in evs if e["type"] == "tool_use"] == ["Write"]  # type: ignore[union-attr]


def test_the_conversation_survives_a_killed_server(
        http: httpx.Client, server: LiveServer, model: ModelServer) -> None:
    sid = session(http)
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "SECOND: remember FIRST-TURN"})
    wait_for(lambda: idle_after(http, sid, 1), 120, 0.3, "the first turn to end")
    server.kill()
    server.start()
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "SECOND again"})
    wait_for(lambda: idle_after(http, sid, 2), 120, 0.3, "the second turn to end")
    # The CLI resumed its conversation from the box's disk: the model saw the first turn.
    assert "remember FIRST-TURN" in json.dumps(model.requests[-1]["messages"])


def test_remember_holds_for_the_next_calls(http: httpx.Client) -> None:
    """An allow with "remember" is written to the session's policy: the CLI's next call
    of that tool, in a later turn, asks nobody."""
    r = http.post("/v1/sessions", json={"name": "cc", "base": "python",
                                        "runtime": "claude-code",
                                        "approval": {"shell": "allow", "tools": {"Write": "ask"}}})
    sid = r.json()["id"]
    http.post(f"/v1/sessions/{sid}/messages",
              json={"content": "SESSION: write hello.txt, then show it"})
    asked = wait_for(lambda: [e for e in events(http, sid) if e["type"] == "approval_request"],
                     90, 0.2, "the Write approval request")
    request = asked[0]  # type: ignore[index]
    assert request["tool"] == "Write"
    r = http.post(f"/v1/sessions/{sid}/approvals/{request['approval_id']}",
                  json={"decision": "allow", "remember": True})
    assert r.status_code == 200, r.text
    wait_for(lambda: idle_after(http, sid, 1), 120, 0.3, "the first turn to end")
    assert http.get(f"/v1/sessions/{sid}").json()["approval"]["tools"]["Write"] == "allow"
    http.post(f"/v1/sessions/{sid}/messages",
              json={"content": "AGAIN: write again.txt"})
    evs = wait_for(lambda: idle_after(http, sid, 2), 120, 0.3, "the second turn to end")
    assert [e["tool"] for e in evs if e["type"] == "tool_use"].count("Write") == 2  # type: ignore[union-attr]
    assert len([e for e in evs if e["type"] == "approval_request"]) == 1  # type: ignore[union-attr]


def test_the_clis_task_list_becomes_task_updates(http: httpx.Client) -> None:
    sid = session(http)
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "PLAN the work"})
    evs = wait_for(lambda: idle_after(http, sid, 1), 120, 0.3, "the turn to end")
    tasks = [(e["task_id"], e["subject"], e["status"]) for e in evs  # type: ignore[union-attr]
             if e["type"] == "task_update"]
    assert tasks == [("1", "write the tests", "completed"), ("2", "fix the bug", "in_progress")]


def box_exec(http: httpx.Client, sid: str, command: str) -> str:
    r = http.post(f"/v1/sessions/{sid}/exec", json={"command": command, "timeout": 30})
    assert r.status_code == 200, r.text
    evs = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    return "".join(e.get("data", "") for e in evs if e.get("type") == "exec_output")


CLI_PIDS = "pgrep -f 'input-forma[t] stream-json' || true"  # (the pattern skips pgrep's shell)


def test_the_cli_stays_up_between_turns(http: httpx.Client) -> None:
    sid = session(http)
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "SECOND one"})
    wait_for(lambda: idle_after(http, sid, 1), 120, 0.3, "the first turn to end")
    first = box_exec(http, sid, CLI_PIDS).split()
    assert len(first) == 1, first
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "SECOND two"})
    wait_for(lambda: idle_after(http, sid, 2), 120, 0.3, "the second turn to end")
    assert box_exec(http, sid, CLI_PIDS).split() == first


def test_a_crashed_cli_is_resumed_on_the_next_message(
        http: httpx.Client, model: ModelServer) -> None:
    sid = session(http)
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "SECOND: remember CRASH-TURN"})
    wait_for(lambda: idle_after(http, sid, 1), 120, 0.3, "the first turn to end")
    box_exec(http, sid, "pkill -KILL -f 'input-forma[t] stream-json'")
    # At once: the server may not have seen the CLI's end yet when the message comes.
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "SECOND after the crash"})
    evs = wait_for(lambda: idle_after(http, sid, 2), 120, 0.3, "the second turn to end")
    assert not [e for e in evs if e["type"] == "session_error"]  # type: ignore[union-attr]
    assert "remember CRASH-TURN" in json.dumps(model.requests[-1]["messages"])


def test_an_interrupt_while_the_reply_streams_is_the_clis_own(http: httpx.Client) -> None:
    """The interrupt goes to the CLI (its control request): the turn ends at once with
    what was said so far, and the same CLI takes the next message."""
    sid = session(http)
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "SECOND warm up"})
    wait_for(lambda: idle_after(http, sid, 1), 120, 0.3, "the first turn to end")
    pids = box_exec(http, sid, CLI_PIDS).split()
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "SLOW: say a lot"})
    wait_for(lambda: http.get(f"/v1/sessions/{sid}").json()["status"] == "running", 30, 0.1,
             "the turn to start")
    started = time.monotonic()
    assert http.post(f"/v1/sessions/{sid}/interrupt").json() == {"interrupted": True}
    evs = wait_for(lambda: idle_after(http, sid, 2), 30, 0.2, "the turn to end")
    # Well inside the grace after which a CLI that ignores the interrupt is stopped.
    assert time.monotonic() - started < 8
    statuses = [e for e in evs if e["type"] == "status"]  # type: ignore[union-attr]
    assert statuses[-1]["detail"] == "interrupted by the user"
    second = [i for i, e in enumerate(evs) if e["type"] == "user"][1]  # type: ignore[arg-type]
    said = [e["text"] for e in evs[second:] if e["type"] == "assistant"]  # type: ignore[index]
    assert all(SLOW_TEXT.startswith(t) and t != SLOW_TEXT for t in said), said
    assert box_exec(http, sid, CLI_PIDS).split() == pids  # not killed
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "SECOND after it"})
    evs = wait_for(lambda: idle_after(http, sid, 3), 120, 0.3, "the third turn to end")
    assert [e["text"] for e in evs if e["type"] == "assistant"][-1] == "second answer"  # type: ignore[union-attr]


def test_a_hung_cli_is_stopped_and_the_next_message_carries_on(
        model: ModelServer, data_dir: Path) -> None:
    srv = LiveServer(data_dir, env={"ANTHROPIC_API_KEY": "sk-ant-test-key-0123456789abcdef",
                                    "ANTHROPIC_BASE_URL": model.url,
                                    "SOPHON_CLAUDE_CODE_STALL_SECONDS": "4",
                                    "SOPHON_CLAUDE_CODE_KEEP_SECONDS": "2"}).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=60, headers={
                "Authorization": f"Bearer {srv.add_user()}"}) as http:
            sid = session(http)
            http.post(f"/v1/sessions/{sid}/messages", json={"content": "NEVER-ANSWER"})
            evs = wait_for(lambda: idle_after(http, sid, 1), 60, 0.3, "the hung turn to end")
            errors = [e for e in evs if e["type"] == "session_error"]  # type: ignore[union-attr]
            assert [e["code"] for e in errors] == ["claude_code_hung"], errors
            assert "printed nothing for 4 s" in errors[0]["message"]
            assert box_exec(http, sid, CLI_PIDS).split() == []  # stopped
            http.post(f"/v1/sessions/{sid}/messages", json={"content": "SECOND then"})
            evs = wait_for(lambda: idle_after(http, sid, 2), 120, 0.3, "the next turn to end")
            assert [e["text"] for e in evs if e["type"] == "assistant"][-1] == "second answer"  # type: ignore[union-attr]
            # Quiet for longer than SOPHON_CLAUDE_CODE_KEEP_SECONDS: the CLI exits, so the
            # box can idle and sleep like any other.
            wait_for(lambda: not box_exec(http, sid, CLI_PIDS).split(), 30, 0.3,
                     "the quiet CLI to exit")
    finally:
        srv.stop()


def test_switching_runtimes_carries_the_conversation_both_ways(
        http: httpx.Client, model: ModelServer) -> None:
    r = http.post("/v1/sessions", json={"name": "switch", "base": "python"})
    sid = r.json()["id"]
    assert r.json()["runtime"] == "native"
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "SECOND: remember NATIVE-TURN"})
    wait_for(lambda: idle_after(http, sid, 1), 120, 0.3, "the native turn to end")

    r = http.patch(f"/v1/sessions/{sid}", json={"runtime": "claude-code"})
    assert r.status_code == 200 and r.json()["runtime"] == "claude-code", r.text
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "SECOND: and CLI-TURN"})
    evs = wait_for(lambda: idle_after(http, sid, 2), 120, 0.3, "the claude-code turn to end")
    assert not [e for e in evs if e["type"] == "session_error"]  # type: ignore[union-attr]
    assert box_exec(http, sid, CLI_PIDS).split()  # the CLI ran it
    # The CLI resumed the native conversation, seeded into its transcript.
    sent = json.dumps(model.requests[-1]["messages"])
    assert "remember NATIVE-TURN" in sent and "second answer" in sent

    # During a turn: a clear 409, and nothing changes.
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "SLOW: say a lot"})
    wait_for(lambda: http.get(f"/v1/sessions/{sid}").json()["status"] == "running", 30, 0.1,
             "the turn to start")
    r = http.patch(f"/v1/sessions/{sid}", json={"runtime": "native"})
    assert r.status_code == 409 and r.json()["error"] == "turn_in_progress", r.text
    assert "interrupt it" in r.json()["message"]
    assert http.get(f"/v1/sessions/{sid}").json()["runtime"] == "claude-code"
    http.post(f"/v1/sessions/{sid}/interrupt")
    wait_for(lambda: idle_after(http, sid, 3), 30, 0.2, "the interrupted turn to end")

    # And back: the native runtime carries on from the events both runtimes write; the
    # session's CLI is ended.
    r = http.patch(f"/v1/sessions/{sid}", json={"runtime": "native"})
    assert r.status_code == 200 and r.json()["runtime"] == "native", r.text
    assert box_exec(http, sid, CLI_PIDS).split() == []
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "SECOND: native again"})
    wait_for(lambda: idle_after(http, sid, 4), 120, 0.3, "the native turn to end")
    sent = json.dumps(model.requests[-1]["messages"])
    assert "remember NATIVE-TURN" in sent and "and CLI-TURN" in sent
    assert http.patch(f"/v1/sessions/{sid}", json={"runtime": None}).status_code == 400


def test_an_interrupt_while_a_command_runs_stops_it_and_keeps_the_cli(
        http: httpx.Client) -> None:
    r = http.post("/v1/sessions", json={"name": "cc", "base": "python",
                                        "runtime": "claude-code", "approval": {"shell": "allow"}})
    sid = r.json()["id"]
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "SLEEPY: take a nap"})
    wait_for(lambda: [e for e in events(http, sid) if e["type"] == "tool_use"], 60, 0.2,
             "the Bash call")
    wait_for(lambda: "time.sleep(30)" in box_exec(http, sid, "ps -eo args"), 30, 0.2,
             "the command to run")
    pids = box_exec(http, sid, CLI_PIDS).split()
    started = time.monotonic()
    assert http.post(f"/v1/sessions/{sid}/interrupt").json() == {"interrupted": True}
    evs = wait_for(lambda: idle_after(http, sid, 1), 30, 0.2, "the turn to end")
    assert time.monotonic() - started < 8  # the CLI's interrupt, not the 10 s fallback
    statuses = [e for e in evs if e["type"] == "status"]  # type: ignore[union-attr]
    assert statuses[-1]["detail"] == "interrupted by the user"
    assert "woke" not in json.dumps(evs)
    assert "time.sleep(30)" not in box_exec(http, sid, "ps -eo args")  # the command stopped
    assert box_exec(http, sid, CLI_PIDS).split() == pids  # the CLI was not


def test_a_users_own_key_answers_where_the_server_has_none(model: ModelServer) -> None:
    """A server with no provider key refuses a message up front, unless the session's CLI
    calls can use the user's own anthropic connector."""
    path = make_data_dir()
    srv = LiveServer(path, env={"ANTHROPIC_API_KEY": "", "ANTHROPIC_BASE_URL": model.url})
    try:
        srv.start()
        with httpx.Client(base_url=srv.url, timeout=60,
                          headers={"Authorization": f"Bearer {srv.add_user()}"}) as http:
            r = http.post("/v1/connectors", json={
                "name": "mine", "type": "anthropic",
                "value": "sk-ant-api03-" + "k" * 40})
            assert r.status_code == 201, r.text
            without = session(http)
            r = http.post(f"/v1/sessions/{without}/messages", json={"content": "SECOND"})
            assert (r.status_code, r.json()["error"]) == (503, "provider_not_configured")
            r = http.post("/v1/sessions", json={"name": "own", "base": "python",
                                                "runtime": "claude-code",
                                                "connectors": ["mine"]})
            sid = r.json()["id"]
            r = http.post(f"/v1/sessions/{sid}/messages", json={"content": "SECOND"})
            assert r.status_code == 202, r.text
            evs = wait_for(lambda: idle_after(http, sid, 1), 120, 0.3, "the turn to end")
            assert [e["text"] for e in evs  # type: ignore[union-attr]
                    if e["type"] == "assistant"][-1] == "second answer"
    finally:
        srv.stop()
        shutil.rmtree(path, ignore_errors=True)


def test_an_imported_session_resumes_its_conversation_in_the_cli(
        http: httpx.Client, model: ModelServer) -> None:
    """Export, then import: the new session's CLI resumes the conversation (a transcript
    rebuilt from the imported events), so its first model call carries the old turns."""
    sid = session(http)
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "SECOND: the word is PAPAYA"})
    wait_for(lambda: idle_after(http, sid, 1), 120, 0.3, "the first turn")
    exported = http.get(f"/v1/sessions/{sid}/export")
    assert exported.status_code == 200
    r = http.post("/v1/sessions/import", content=exported.content,
                  headers={"Content-Type": "application/gzip"})
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["runtime"] == "claude-code"
    before = len(model.requests)
    http.post(f"/v1/sessions/{new['id']}/messages",
              json={"content": "SECOND: which word was it?"})
    evs = wait_for(lambda: idle_after(http, new["id"], 2), 120, 0.3, "the imported turn")
    assert [e["text"] for e in evs  # type: ignore[union-attr]
            if e["type"] == "assistant"][-1] == "second answer"
    carried = [json.dumps(req["messages"]) for req in model.requests[before:]]
    assert any("PAPAYA" in m and "which word was it?" in m for m in carried), carried


def test_a_budget_holds_at_sophons_gateway_and_in_the_cli(http: httpx.Client) -> None:
    """A session's max_budget_usd is Sophon's (the gateway refuses the call past it,
    and the turn ends saying so) and the CLI's own (--max-budget-usd)."""
    r = http.post("/v1/sessions", json={"name": "cc", "base": "python",
                                        "runtime": "claude-code", "max_budget_usd": 0.5,
                                        "approval": {"shell": "allow",
                                                     "tools": {"Write": "allow"}}})
    sid = r.json()["id"]
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "SPEND it all"})
    evs = wait_for(lambda: idle_after(http, sid, 1), 120, 0.3, "the turn to end")
    errors = [e for e in evs if e["type"] == "session_error"]  # type: ignore[union-attr]
    assert [e["code"] for e in errors] == ["budget_exceeded"], errors
    # Whichever stops it first, the gateway (its 402) or the CLI itself, says so.
    assert "max_budget_usd" in errors[0]["message"], errors
    assert "should not be reached" not in json.dumps(evs)
    assert http.get(f"/v1/sessions/{sid}").json()["usage"]["cost_usd"] > 0.5
    ps = http.post(f"/v1/sessions/{sid}/exec", json={
        "command": "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '"}).text
    assert "--max-budget-usd 0.5" in ps, ps


def test_the_cli_calls_a_sessions_mcp_tool_under_sophons_approval(http: httpx.Client) -> None:
    """A session's MCP server reaches the CLI as --mcp-config (run by the CLI in the box);
    its tool waits on Sophon's approval like any other, then runs. A server that cannot
    start is a session_error, and the turn goes on without it."""
    broken = {"name": "broken", "command": ["python3", "-c", "import sys; sys.exit(3)"]}
    r = http.post("/v1/sessions", json={"name": "cc", "base": "python",
                                        "runtime": "claude-code",
                                        "mcp_servers": [DEMO, broken]})
    sid = r.json()["id"]
    for path, body in (("demo_server.py", SERVER), (".marker", "the box\n")):
        assert http.put(f"/v1/sessions/{sid}/files/{path}", content=body.encode()
                        ).status_code == 201
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "MCPTOOL: shout hello"})
    request = answer(http, sid, "allow")
    assert request["tool"] == "mcp__demo__shout" and request["input"] == {"text": "hello"}
    evs = wait_for(lambda: idle_after(http, sid, 1), 120, 0.3, "the turn to end")
    results = [e for e in evs if e["type"] == "tool_result"]  # type: ignore[union-attr]
    assert "HELLO (from the box)" in results[-1]["content"], results
    assert [e["text"] for e in evs  # type: ignore[union-attr]
            if e["type"] == "assistant"][-1] == "done shouting"
    errors = [e["message"] for e in evs if e["type"] == "session_error"]  # type: ignore[union-attr]
    assert len(errors) == 1 and errors[0].startswith(
        "the MCP server broken could not start (the Claude Code CLI says: failed)"), errors


def test_a_conversation_rewind_reaches_the_clis_transcript(
        http: httpx.Client, model: ModelServer) -> None:
    """The CLI keeps its own transcript: a rewind of the conversation ends the CLI and
    writes the cut conversation for the next one to resume, so the model no longer hears
    of what came after the checkpoint; the files go back too."""
    sid = session(http)
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "SECOND: the word is MANGO"})
    wait_for(lambda: idle_after(http, sid, 1), 120, 0.3, "the first turn")
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "AGAIN: the word is KIWI"})
    wait_for(lambda: idle_after(http, sid, 2), 120, 0.3, "the second turn")
    cps = http.get(f"/v1/sessions/{sid}/checkpoints").json()["checkpoints"]
    assert [c["reason"] for c in cps if c["turn"] == 2][-2:] == ["tool", "turn_end"]
    end_of_first = [c for c in cps if c["turn"] == 1][-1]["id"]
    r = http.post(f"/v1/sessions/{sid}/rewind", json={"checkpoint": end_of_first})
    assert r.status_code == 200, r.text
    before = len(model.requests)
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "SECOND: which word?"})
    wait_for(lambda: idle_after(http, sid, 3), 120, 0.3, "the third turn")
    said = [json.dumps(req["messages"]) for req in model.requests[before:]]
    assert said and all("MANGO" in m and "KIWI" not in m for m in said), said
    listing = http.post(f"/v1/sessions/{sid}/exec", json={"command": "ls"}).text
    assert "again.txt" not in listing  # turn 2's Write went with the rewind
