"""The native runtime against the scripted model server, real boxes and live HTTP."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sophon.agent.tools import TOOL_NAMES
from sophon.testing import ModelServer
from tests.conftest import LiveServer, make_data_dir, wait_for

BUGGY = "def add(a, b):\n    return a - b\n"
TEST = ("import unittest\nfrom calc import add\n\n\nclass T(unittest.TestCase):\n"
        "    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n\n\n"
        "if __name__ == '__main__':\n    unittest.main()\n")


def tool(name: str, **input: Any) -> dict[str, Any]:
    return {"type": "tool_use", "name": name, "input": input}


@pytest.fixture(scope="module")
def model() -> Iterator[ModelServer]:
    with ModelServer() as ms:
        yield ms


@pytest.fixture(scope="module")
def server(model: ModelServer) -> Iterator[LiveServer]:
    data = make_data_dir()
    srv = LiveServer(data, env={"ANTHROPIC_API_KEY": "test-key",
                                "ANTHROPIC_BASE_URL": model.url}).start()
    yield srv
    srv.stop()
    shutil.rmtree(data, ignore_errors=True)


def new_session(http: httpx.Client, **body: Any) -> str:
    r = http.post("/v1/sessions", json={"name": "agent", **body})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def events(http: httpx.Client, sid: str) -> list[dict[str, Any]]:
    r = http.get(f"/v1/sessions/{sid}/events", params={"limit": 5000},
                 headers={"Accept": "application/json"})
    return list(r.json()["events"])


def turn_over(http: httpx.Client, sid: str, nth: int) -> list[dict[str, Any]] | None:
    """The events, once the nth message's turn has ended (an idle status after it)."""
    evs = events(http, sid)
    users = [i for i, e in enumerate(evs) if e["type"] == "user"]
    if len(users) >= nth and any(e["type"] == "status" and e["status"] in ("idle", "error")
                                 for e in evs[users[nth - 1]:]):
        return evs
    return None


def wait_turn(http: httpx.Client, sid: str, deadline: float = 30,
              nth: int = 1) -> list[dict[str, Any]]:
    return wait_for(lambda: turn_over(http, sid, nth), deadline, 0.05,  # type: ignore[return-value]
                    "the turn to end")


def last_text(evs: list[dict[str, Any]]) -> str:
    return str([e for e in evs if e["type"] == "assistant"][-1]["text"])


def send(http: httpx.Client, sid: str, content: str, **extra: Any) -> httpx.Response:
    return http.post(f"/v1/sessions/{sid}/messages", json={"content": content, **extra})


def sh(http: httpx.Client, sid: str, command: str) -> str:
    r = http.post(f"/v1/sessions/{sid}/exec", json={"command": command})
    return "".join(httpx.Response(200, content=line).json().get("data", "")
                   for line in r.content.splitlines())


def answer_approval(http: httpx.Client, sid: str, decision: str) -> dict[str, Any]:
    req = wait_for(lambda: next((e for e in events(http, sid)
                                 if e["type"] == "approval_request"), None),
                   20, 0.05, "an approval request")
    # The session's status follows its approval_request (the next event in its stream).
    wait_for(lambda: http.get(f"/v1/sessions/{sid}").json()["status"] == "waiting_approval",
             10, 0.02, "the status waiting_approval")
    r = http.post(f"/v1/sessions/{sid}/approvals/{req['approval_id']}",
                  json={"decision": decision})
    assert r.status_code == 200, r.text
    return req  # type: ignore[no-any-return]


def test_builds_tests_fixes_and_passes(http: httpx.Client, model: ModelServer) -> None:
    model.set_script({"turns": [
        {"content": [{"type": "thinking", "thinking": "A calculator with a test."},
                     "I'll write the module and its test.",
                     tool("Write", file_path="/workspace/calc.py", content=BUGGY),
                     tool("Write", file_path="test_calc.py", content=TEST),
                     tool("TaskCreate", subject="Make the tests pass",
                          description="write, run, fix")]},
        {"content": [tool("Bash", command="python3 -m unittest -q 2>&1",
                          description="run the tests")]},
        {"rules": [{"when": {"last_tool_result_contains": "FAILED"},
                    "reply": {"content": ["The test fails; let me look.",
                                          tool("Read", file_path="/workspace/calc.py")]}}]},
        {"content": [tool("Edit", file_path="/workspace/calc.py", old_string="a - b",
                          new_string="a + b")]},
        {"content": [tool("Bash", command="python3 -m unittest -q 2>&1")]},
        {"rules": [{"when": {"last_tool_result_contains": "OK"},
                    "reply": {"content": [tool("TaskUpdate", taskId="1",
                                               status="completed")]}}]},
        "All tests pass.",
    ]})
    sid = new_session(http, system_prompt="Keep answers short.")
    assert send(http, sid, "Write calc.py with add() and a test, and make it pass.")\
        .status_code == 202
    req = answer_approval(http, sid, "allow")  # the first Bash asks (shell: ask_once)
    assert req["tool"] == "Bash" and "unittest" in req["input"]["command"]
    evs = wait_turn(http, sid)

    kinds = [e["type"] for e in evs
             if e["type"] not in ("file_change", "usage", "tool_output", "checkpoint")]
    story = kinds[kinds.index("user"):]
    assert story == [
        "user", "status", "thinking", "assistant", "tool_use", "tool_use", "tool_use",
        "tool_result", "tool_result", "task_update", "tool_result",
        "tool_use", "approval_request", "status", "approval_decision", "status",
        "tool_result", "assistant", "tool_use", "tool_result", "tool_use", "tool_result",
        "tool_use", "tool_result", "tool_use", "task_update", "tool_result", "assistant",
        "status"], [e for e in evs if e["type"] in ("session_error", "tool_result")]
    results = [e for e in evs if e["type"] == "tool_result"]
    assert "FAILED" in results[3]["content"] and results[3]["is_error"]
    assert results[4]["content"].startswith("     1\tdef add")
    assert "OK" in results[6]["content"] and not results[6]["is_error"]
    assert [e["status"] for e in evs if e["type"] == "task_update"] == ["pending", "completed"]
    assert story[-1] == "status" and evs[-1 if evs[-1]["type"] != "file_change" else -2]
    assert any(e["type"] == "usage" for e in evs)
    # Checkpoints: the turn's start and end, and after tool calls that change files
    # (the Writes, the Edit; a Bash that leaves __pycache__ behind), never a read-only one.
    cps = [e for e in evs if e["type"] == "checkpoint"]
    assert cps[0]["reason"] == "turn_start" and cps[-1]["reason"] == "turn_end"
    tools = {e["tool_use_id"]: e["tool"] for e in evs if e["type"] == "tool_use"}
    after = [tools[c["tool_use_id"]] for c in cps if c["reason"] == "tool"]
    assert after[:2] == ["Write", "Write"] and "Edit" in after and "Read" not in after
    # The watcher reports changes within a second, which may be after a quick turn ended.
    wait_for(lambda: {"calc.py", "test_calc.py"} <= {
        e["path"] for e in events(http, sid) if e["type"] == "file_change"}, 5,
        what="file_change events for the files the agent wrote")
    assert sh(http, sid, "cat calc.py") == "def add(a, b):\n    return a + b\n"
    diff = http.get(f"/v1/sessions/{sid}/diff").json()["diff"]
    assert "b/calc.py" in diff and "+    return a + b" in diff and "b/test_calc.py" in diff
    # The second Bash did not ask again: ask_once, allowed once.
    assert kinds.count("approval_request") == 1
    assert http.get(f"/v1/sessions/{sid}").json()["approval"]["shell"] == "allow"

    first, second = model.requests[0], model.requests[1]
    assert {t["name"] for t in first["tools"]} == TOOL_NAMES
    assert all("input_schema" in t for t in first["tools"])
    assert "Keep answers short." in str(first["system"])
    assert first["model"] == "claude-sonnet-4-5" and first["stream"] is True
    assert first["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "Write calc.py with add() and a test, and make it pass."}]}]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert [b["type"] for b in second["messages"][1]["content"]] == [
        "thinking", "text", "tool_use", "tool_use", "tool_use"]
    assert [b["type"] for b in second["messages"][2]["content"]] == ["tool_result"] * 3


def test_denied_shell_gives_the_model_an_error(http: httpx.Client,
                                              model: ModelServer) -> None:
    model.set_script({"turns": [
        {"content": [tool("Bash", command="rm -rf build")]},
        {"rules": [{"when": {"tool_result_is_error": True,
                             "last_tool_result_contains": "denied"},
                    "reply": "Understood, I won't run it."}]},
    ]})
    sid = new_session(http)
    send(http, sid, "clean up")
    answer_approval(http, sid, "deny")
    evs = wait_turn(http, sid)
    result = next(e for e in evs if e["type"] == "tool_result")
    assert result["is_error"] and "denied" in result["content"]
    assert "won't" in last_text(evs)
    # A deny is not remembered: the policy still asks.
    assert http.get(f"/v1/sessions/{sid}").json()["approval"]["shell"] == "ask_once"


def test_max_turns_stops_a_runaway_loop(http: httpx.Client, model: ModelServer) -> None:
    model.set_script({"turns": [{"content": [tool("Glob", pattern="**/*")]}] * 20})
    sid = new_session(http, max_turns=3)
    send(http, sid, "loop forever")
    evs = wait_turn(http, sid)
    assert len(model.requests) == 3
    err = next(e for e in evs if e["type"] == "session_error")
    assert err["code"] == "max_turns" and "3" in err["message"]
    assert [e["type"] for e in evs][-1] == "status"


def test_max_budget_stops_a_runaway_loop(http: httpx.Client, model: ModelServer) -> None:
    # Each call costs 1M input tokens of sonnet: $3.
    costly = {"content": [tool("Glob", pattern="*")], "usage": {"input_tokens": 1_000_000,
                                                               "output_tokens": 10}}
    model.set_script({"turns": [costly] * 10})
    sid = new_session(http, max_budget_usd=5.0)
    send(http, sid, "spend")
    evs = wait_turn(http, sid)
    err = next(e for e in evs if e["type"] == "session_error")
    assert err["code"] == "budget_exceeded" and "$5.00" in err["message"]
    assert len(model.requests) == 2
    usage = http.get(f"/v1/sessions/{sid}/usage").json()
    assert len(usage["calls"]) == 2 and usage["totals"]["cost_usd"] == pytest.approx(6.0003)
    # Raising the budget lets the session go on.
    http.patch(f"/v1/sessions/{sid}", json={"max_budget_usd": 100})
    model.set_script({"turns": ["Done."]})
    send(http, sid, "go on")
    assert last_text(wait_turn(http, sid, nth=2)) == "Done."


def test_interrupt_during_a_long_bash(http: httpx.Client, model: ModelServer) -> None:
    model.set_script({"turns": [
        {"content": [tool("Bash", command="touch started; for i in $(seq 1 300); do "
                                          "echo tick $i; sleep 0.1; done")]},
        "never reached",
    ]})
    sid = new_session(http, approval={"shell": "allow"})
    send(http, sid, "run the long thing")
    wait_for(lambda: any(e["type"] == "file_change" and e["path"] == "started"
                         for e in events(http, sid)), 20, 0.05, "the command to start")
    r = http.post(f"/v1/sessions/{sid}/interrupt")
    assert r.json() == {"interrupted": True}
    evs = wait_turn(http, sid, 10)
    result = next(e for e in evs if e["type"] == "tool_result")
    assert "tick 1" in result["content"] and "interrupted" in result["content"]
    assert "tick 300" not in result["content"]
    last = [e for e in evs if e["type"] != "file_change"][-1]
    assert (last["type"], last["status"], last["detail"]) == (
        "status", "idle", "interrupted by the user")
    assert len(model.requests) == 1
    assert "sleep" not in sh(http, sid, "ps -eo args")
    assert http.post(f"/v1/sessions/{sid}/interrupt").json() == {"interrupted": False}


def test_second_message_is_409_unless_queued(http: httpx.Client, model: ModelServer) -> None:
    model.set_script({"turns": [{"content": "first", "delay_ms": 1500}, "second"]})
    sid = new_session(http)
    assert send(http, sid, "one").status_code == 202
    busy = send(http, sid, "two")
    assert busy.status_code == 409 and busy.json()["error"] == "turn_in_progress"
    queued = send(http, sid, "two", queue=True)
    assert queued.status_code == 202 and queued.json()["queued"] is True

    def both_done() -> bool:
        evs = events(http, sid)
        return sum(e["type"] == "assistant" for e in evs) == 2 and \
            evs[-1]["type"] == "status" and evs[-1]["status"] == "idle"

    wait_for(both_done, 30, 0.05, "both turns")
    texts = [e.get("text") or e.get("content") for e in events(http, sid)
             if e["type"] in ("user", "assistant")]
    assert texts == ["one", "first", "two", "second"]


def test_history_survives_a_restart(model: ModelServer, data_dir: Any) -> None:
    srv = LiveServer(data_dir, env={"ANTHROPIC_API_KEY": "test-key",
                                    "ANTHROPIC_BASE_URL": model.url}).start()
    try:
        key = srv.add_user()
        http = httpx.Client(base_url=srv.url, timeout=60,
                            headers={"Authorization": f"Bearer {key}"})
        model.set_script({"turns": [
            {"content": [tool("Write", file_path="notes.md", content="# Notes\n")]},
            "Wrote the notes.",
            "You asked me to write notes.md.",
        ]})
        sid = new_session(http)
        send(http, sid, "write notes")
        wait_turn(http, sid)
        before = model.requests[-1]["messages"]
        srv.restart()
        send(http, sid, "what did I ask?")
        evs = wait_turn(http, sid, nth=2)
        after = model.requests[-1]["messages"]
        assert after[: len(before)] == before
        assert after[len(before)]["role"] == "assistant"
        assert after[len(before)]["content"] == [{"type": "text", "text": "Wrote the notes."}]
        assert after[-1] == {"role": "user", "content": [
            {"type": "text", "text": "what did I ask?"}]}
        assert last_text(evs) == "You asked me to write notes.md."
    finally:
        srv.stop()


def test_a_file_written_at_the_end_of_a_turn_is_logged_before_the_turn_ends(
        http: httpx.Client, model: ModelServer) -> None:
    """The watcher scans every quarter second; the turn's end asks it to scan at once, so
    whoever reads up to the end (the CLI's send, an MCP caller) sees every file it made."""
    model.set_script({"turns": [
        {"content": [tool("Bash", command="for i in 1 2 3; do echo $i > late-$i.txt; done")]},
        "written"]})
    sid = new_session(http, approval={"shell": "allow"})
    assert send(http, sid, "write them").status_code == 202
    evs = wait_turn(http, sid)
    end = max(i for i, e in enumerate(evs) if e["type"] == "status" and e["status"] == "idle")
    logged = {e["path"] for e in evs[:end] if e["type"] == "file_change"}
    assert logged == {"late-1.txt", "late-2.txt", "late-3.txt"}, evs[-6:]
