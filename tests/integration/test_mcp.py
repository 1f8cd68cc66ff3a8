"""Sessions as tools for other agents: the official MCP client (the `mcp` package)
against the server's /mcp, with the scripted model."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from sophon.testing import ModelServer
from tests.conftest import LiveServer, serve_with_model, wait_for

mcp_client = pytest.importorskip("mcp.client.streamable_http")
from mcp import ClientSession  # noqa: E402

WRITE_THEN_DONE = {"turns": [
    {"content": [{"type": "tool_use", "name": "Write",
                  "input": {"file_path": "/workspace/notes.md",
                            "content": "# delegated\nline two\n"}}],
     "usage": {"input_tokens": 1000, "output_tokens": 20}},
    {"content": "MCP-DONE wrote notes.md", "usage": {"input_tokens": 1100, "output_tokens": 9}},
]}


@pytest.fixture(scope="module")
def server(model: ModelServer) -> Iterator[LiveServer]:
    with serve_with_model(model) as srv:
        yield srv


@asynccontextmanager
async def connect(server: LiveServer, key: str) -> AsyncIterator[ClientSession]:
    http = mcp_client.create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    async with mcp_client.streamable_http_client(server.url + "/mcp", http_client=http) as (
            read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def call(s: ClientSession, tool: str, **args: Any) -> dict[str, Any]:
    """A tool's structured result; a tool error fails the test with its text."""
    res = await s.call_tool(tool, args)
    text = "".join(getattr(b, "text", "") for b in res.content)
    assert not res.is_error, f"{tool}: {text}"
    return dict(res.structured_content or json.loads(text))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_an_agent_delegates_a_task_and_reads_the_outcome(server: LiveServer,
                                                         model: ModelServer) -> None:
    model.set_script(WRITE_THEN_DONE)
    key = server.add_user()

    async def story() -> None:
        async with connect(server, key) as s:
            names = {t.name for t in (await s.list_tools()).tools}
            assert {"claude_code_start", "claude_code_send", "claude_code_status",
                    "claude_code_list", "claude_code_events", "claude_code_exec",
                    "claude_code_diff", "claude_code_approve", "claude_code_interrupt",
                    "claude_code_export", "claude_code_delete", "claude_code_wait"} <= names
            started = await call(s, "claude_code_start", name="delegated", base="python")
            sid = started["session_id"]
            assert sid.startswith("ses_") and started["session"]["status"] == "idle"

            told: list[str] = []

            async def progress(done: float, total: float | None, message: str | None) -> None:
                told.append(str(message))

            res = await s.call_tool("claude_code_send", {"session_id": sid,
                                                         "message": "write notes.md"},
                                    progress_callback=progress)
            assert not res.is_error, res
            sent = dict(res.structured_content or {})
            assert sent["status"] == "done", sent
            assert told == ["tool: Write"]  # a progress notification per tool call
            assert sent["text"] == "MCP-DONE wrote notes.md"
            assert sent["files_changed"] == [{"path": "notes.md", "change": "created",
                                              "added": 2, "removed": 0}]
            assert (sent["input_tokens"], sent["output_tokens"]) == (2100, 29)
            assert sent["cost_usd"] > 0

            status = await call(s, "claude_code_status", session_id=sid)
            assert status["status"] == "idle" and status["pending_approvals"] == []
            listed = await call(s, "claude_code_list")
            assert [x["id"] for x in listed["sessions"]] == [sid]
            events = await call(s, "claude_code_events", session_id=sid, after_seq=0)
            assert "user" in [e["type"] for e in events["events"]]
            ran = await call(s, "claude_code_exec", session_id=sid, command="cat notes.md")
            assert (ran["exit_code"], ran["output"]) == (0, "# delegated\nline two\n")
            diff = await call(s, "claude_code_diff", session_id=sid)
            assert "+line two" in diff["diff"]
            export = await call(s, "claude_code_export", session_id=sid)
            assert export["path"] == f"/v1/sessions/{sid}/export"
            r = await asyncio.to_thread(httpx.get, server.url + export["path"],
                                        headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200 and r.content[:2] == b"\x1f\x8b"
            assert (await call(s, "claude_code_delete", session_id=sid)) == {"deleted": sid}
            gone = await s.call_tool("claude_code_status", {"session_id": sid})
            assert gone.is_error

    run(story())


def test_another_users_session_is_not_found_and_a_key_is_needed(server: LiveServer) -> None:
    alice, bob = server.add_user(), server.add_user()

    async def story() -> None:
        async with connect(server, alice) as s:
            sid = (await call(s, "claude_code_start", name="private"))["session_id"]
        async with connect(server, bob) as s:
            for tool, args in (("claude_code_status", {}), ("claude_code_diff", {}),
                               ("claude_code_send", {"message": "hi"}),
                               ("claude_code_delete", {})):
                res = await s.call_tool(tool, {"session_id": sid, **args})
                text = "".join(getattr(b, "text", "") for b in res.content)
                assert res.is_error and "not_found" in text, (tool, text)
            assert (await call(s, "claude_code_list"))["sessions"] == []

    run(story())
    r = httpx.post(server.url + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    r = httpx.post(server.url + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                   headers={"Authorization": "Bearer sk-sophon-wrong"})
    assert r.status_code == 401


def test_an_approval_and_a_long_turn_come_back_to_the_caller(server: LiveServer,
                                                             model: ModelServer) -> None:
    """The shell asks on first use: send returns waiting_approval with the call; the
    caller approves and waits. A turn longer than wait_seconds returns running, and
    claude_code_wait picks it up where it was, nothing lost."""
    model.set_script({"turns": [
        {"content": [{"type": "tool_use", "name": "Bash",
                      "input": {"command": "sleep 3; echo slept-$((2+3))"}}]},
        "SLEPT-DONE"]})
    key = server.add_user()

    async def story() -> None:
        async with connect(server, key) as s:
            sid = (await call(s, "claude_code_start", name="gated"))["session_id"]
            sent = await call(s, "claude_code_send", session_id=sid, message="sleep a bit",
                              wait_seconds=30)
            assert sent["status"] == "waiting_approval", sent
            [pending] = sent["pending_approvals"]
            assert pending["tool"] == "Bash" and "sleep 3" in pending["input"]["command"]
            await call(s, "claude_code_approve", session_id=sid,
                       approval_id=pending["approval_id"])
            early = await call(s, "claude_code_wait", session_id=sid,
                               resume_after_seq=sent["resume_after_seq"], wait_seconds=0.5)
            assert early["status"] == "running", early
            done = await call(s, "claude_code_wait", session_id=sid,
                              resume_after_seq=sent["resume_after_seq"], wait_seconds=30)
            assert done["status"] == "done" and done["text"] == "SLEPT-DONE", done

    run(story())


def test_sophon_mcp_serves_the_same_tools_on_stdio(server: LiveServer, model: ModelServer,
                                                   tmp_path: Path) -> None:
    """`sophon mcp`, as an agent runs it (a command speaking MCP on stdio), with the
    login `sophon login` saved: start → send → status → events → diff → export →
    delete; another user's session is not found through it either."""
    from mcp.client.stdio import StdioServerParameters, stdio_client

    model.set_script(WRITE_THEN_DONE)
    key, other = server.add_user(), server.add_user()
    sophon = str(Path(sys.executable).with_name("sophon"))
    home = {"XDG_CONFIG_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    subprocess.run([sophon, "login", "--url", server.url, "--api-key", key], env=home,
                   check=True, capture_output=True, timeout=60)
    params = StdioServerParameters(command=sophon, args=["mcp"], env=home)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {other}"}
                      ) as theirs:
        their_sid = theirs.post("/v1/sessions", json={"name": "theirs"}).json()["id"]

    async def story() -> None:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as s:
            await s.initialize()
            assert "claude_code_send" in {t.name for t in (await s.list_tools()).tools}
            sid = (await call(s, "claude_code_start", name="over-stdio"))["session_id"]
            sent = await call(s, "claude_code_send", session_id=sid, message="write it")
            assert sent["status"] == "done" and sent["text"] == "MCP-DONE wrote notes.md"
            status = await call(s, "claude_code_status", session_id=sid)
            assert status["status"] == "idle"
            events = await call(s, "claude_code_events", session_id=sid, after_seq=0)
            assert "tool_use" in [e["type"] for e in events["events"]]
            diff = await call(s, "claude_code_diff", session_id=sid)
            assert "+line two" in diff["diff"]
            export = await call(s, "claude_code_export", session_id=sid)
            assert export["path"] == f"/v1/sessions/{sid}/export"
            assert (await call(s, "claude_code_delete", session_id=sid)) == {"deleted": sid}
            for tool in ("claude_code_status", "claude_code_delete"):
                res = await s.call_tool(tool, {"session_id": their_sid})
                text = "".join(getattr(b, "text", "") for b in res.content)
                assert res.is_error and "not_found" in text, (tool, text)

    run(story())
    # A wrong key is said at once, on stderr, with a non-zero exit.
    bad = subprocess.run([sophon, "mcp"], env={"SOPHON_URL": server.url,
                                               "SOPHON_API_KEY": "sk-sophon-wrong",
                                               "XDG_CONFIG_HOME": str(tmp_path),
                                               "PATH": "/usr/bin:/bin"},
                         input="", capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.startswith("error: "), bad.stderr


def test_an_interrupt_ends_a_running_turn(server: LiveServer, model: ModelServer) -> None:
    """claude_code_interrupt stops a turn in the middle of a command: the turn's
    outcome says interrupted, and the session takes the next message."""
    model.set_script({"turns": [
        {"content": [{"type": "tool_use", "name": "Bash", "input": {"command": "sleep 60"}}]},
        "AFTER"]})
    key = server.add_user()

    async def story() -> None:
        async with connect(server, key) as s:
            sid = (await call(s, "claude_code_start", name="stoppable",
                              shell="allow"))["session_id"]
            sent = await call(s, "claude_code_send", session_id=sid, message="sleep",
                              wait_seconds=1)
            assert sent["status"] == "running", sent
            await call(s, "claude_code_interrupt", session_id=sid)
            done = await call(s, "claude_code_wait", session_id=sid,
                              resume_after_seq=sent["resume_after_seq"], wait_seconds=30)
            assert done["status"] == "interrupted", done
            again = await call(s, "claude_code_send", session_id=sid, message="go on",
                               wait_seconds=30)
            assert again["status"] == "done" and again["text"] == "AFTER", again

    run(story())


def test_start_takes_the_whole_approval_policy_and_a_first_message(
        server: LiveServer, model: ModelServer) -> None:
    """claude_code_start with a per-tool rule and a first message: the rule is the
    session's, and the first turn's outcome comes back with the id."""
    model.set_script(WRITE_THEN_DONE)
    key = server.add_user()

    async def story() -> dict[str, Any]:
        async with connect(server, key) as s:
            return await call(s, "claude_code_start", name="ruled", message="write notes",
                              approval={"shell": "deny", "tools": {"Write": "allow"},
                                        "timeout_seconds": 60, "on_timeout": "deny"})

    started = run(story())
    assert started["turn"]["status"] == "done"
    assert started["turn"]["text"] == "MCP-DONE wrote notes.md"
    view = httpx.get(f"{server.url}/v1/sessions/{started['session_id']}",
                     headers={"Authorization": f"Bearer {key}"}).json()
    assert view["approval"]["shell"] == "deny"
    assert view["approval"]["tools"] == {"Write": "allow"}
    assert view["approval"]["timeout_seconds"] == 60


def test_a_send_cut_off_by_a_restart_is_told_after_it(model: ModelServer) -> None:
    """A send made as an MCP task outlives the server: after a restart, the task's state
    and result, and claude_code_wait from its seq, say how the turn ended (cut off, with
    the reason), nothing lost."""
    model.set_script({"turns": [
        {"content": [{"type": "tool_use", "name": "Bash", "input": {"command": "sleep 60"}}]},
        "never"]})
    with serve_with_model(model) as srv:
        key = srv.add_user()

        async def before() -> str:
            async with connect(srv, key) as s:
                return str((await call(s, "claude_code_start", name="cut", shell="allow"))[
                    "session_id"])

        sid = run(before())
        # The send as an MCP task, running (its sleep under way) when the server dies.
        made = rpc(srv, key, "tools/call", {"name": "claude_code_send", "task": {"ttl": 600000},
                                            "arguments": {"session_id": sid,
                                                          "message": "sleep"}})
        task = made["result"]["task"]["taskId"]
        seq = int(task.rsplit(".", 1)[1])

        def sleeping() -> bool:
            evs = httpx.get(f"{srv.url}/v1/sessions/{sid}/events", headers={
                "Authorization": f"Bearer {key}", "Accept": "application/json"}).json()
            return any(e["type"] == "tool_use" for e in evs["events"])

        wait_for(sleeping, 30, 0.1, "the turn's command to run")
        assert rpc(srv, key, "tasks/get", {"taskId": task})["result"]["status"] == "working"
        srv.kill()
        srv.start()

        async def after() -> dict[str, Any]:
            async with connect(srv, key) as s:
                return await call(s, "claude_code_wait", session_id=sid,
                                  resume_after_seq=seq, wait_seconds=10)

        outcome = run(after())
        assert outcome["status"] == "failed", outcome
        assert outcome["error"].startswith("interrupted: the server stopped during a turn")
        # The task made before the restart: its state and result say the same.
        assert rpc(srv, key, "tasks/get", {"taskId": task})["result"]["status"] == "failed"
        result = rpc(srv, key, "tasks/result", {"taskId": task})["result"]
        assert result["isError"] and result["structuredContent"]["status"] == "failed"


CLAUDE = Path("/usr/local/lib/sophon-claude/bin/claude")  # scripts/box-tools installs it


def test_claude_code_delegates_a_task_to_a_sophon_session(server: LiveServer,
                                                          model: ModelServer,
                                                          tmp_path: Path) -> None:
    """The real Claude Code CLI as the calling agent: Sophon's /mcp added with `claude mcp
    add --transport http`, its own model calls through Sophon's gateway (a session's
    token) to the scripted model, which has it call claude_code_start with a first
    message; the delegated session does the work and the CLI reports the answer."""
    if not CLAUDE.exists():
        pytest.skip("the claude CLI is not installed (scripts/box-tools)")

    def tool_use(tool: str, **input: Any) -> dict[str, Any]:
        return {"content": [{"type": "tool_use", "name": tool, "input": input}]}

    rules = {"rules": [
        {"when": {"last_user_contains": "DELEGATE-TASK", "last_tool_result_contains": "MCP-DONE"},
         "reply": "DELEGATED-OK: notes.md is written"},
        {"when": {"last_user_contains": "DELEGATE-TASK"},
         "reply": tool_use("mcp__sophon__claude_code_start", name="delegated",
                           message="WRITE-NOTES please")},
        {"when": {"last_user_contains": "WRITE-NOTES", "last_tool_result_contains": ""},
         "reply": "MCP-DONE wrote notes.md"},
        {"when": {"last_user_contains": "WRITE-NOTES"},
         "reply": tool_use("Write", file_path="/workspace/notes.md", content="# delegated\n")},
    ], "default": "ok"}
    model.set_script({"turns": [rules] * 40})
    key = server.add_user()
    with httpx.Client(base_url=server.url, timeout=60,
                      headers={"Authorization": f"Bearer {key}"}) as http:
        caller = http.post("/v1/sessions", json={"name": "caller"}).json()["id"]
        token = http.post(f"/v1/sessions/{caller}/gateway-token").json()["token"]
        home = tmp_path / "home"
        home.mkdir()
        env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "ANTHROPIC_BASE_URL": server.url,
               "ANTHROPIC_AUTH_TOKEN": token, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
               "DISABLE_AUTOUPDATER": "1"}
        # As a user adds Sophon to Claude Code.
        added = subprocess.run(
            [str(CLAUDE), "mcp", "add", "--transport", "http", "--scope", "user", "sophon",
             server.url + "/mcp", "--header", f"Authorization: Bearer {key}"],
            env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        assert added.returncode == 0, added.stderr
        done = subprocess.run(
            [str(CLAUDE), "-p", "DELEGATE-TASK: have a Sophon session write notes.md",
             "--output-format", "json", "--max-turns", "4",
             "--allowedTools", "mcp__sophon__claude_code_start"],
            env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=180)
        assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["result"] == "DELEGATED-OK: notes.md is written", result
        sessions = {s["name"]: s["id"] for s in http.get("/v1/sessions").json()["sessions"]}
        delegated = sessions["delegated"]
        got = http.get(f"/v1/sessions/{delegated}/files/notes.md").json()
        assert got["content"] == "# delegated\n"
        # The caller's own model calls were metered on its session, through the gateway.
        assert http.get(f"/v1/sessions/{caller}/usage").json()["calls"]


def rpc(server: LiveServer, key: str, method: str, params: dict[str, Any] | None = None,
        ) -> dict[str, Any]:
    """One JSON-RPC request to the stateless /mcp, as a client of MCP Tasks sends it."""
    r = httpx.post(server.url + "/mcp", timeout=120, json={
        "jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}, headers={
        "Authorization": f"Bearer {key}", "MCP-Protocol-Version": "2025-11-25",
        "Accept": "application/json, text/event-stream"})
    assert r.status_code == 200, r.text
    data = next(line[5:] for line in r.text.splitlines() if line.startswith("data:"))
    return dict(json.loads(data))


def test_a_send_as_an_mcp_task_is_polled_approved_and_fetched(server: LiveServer,
                                                              model: ModelServer) -> None:
    """MCP Tasks (2025-11-25): the capability is offered; a task-augmented send answers
    at once with a working task; tasks/get says input_required while an approval
    waits, then completed; tasks/result is the outcome; a stranger's poll is refused."""
    model.set_script({"turns": [
        {"content": [{"type": "tool_use", "name": "Bash",
                      "input": {"command": "echo tasked-$((6*7))"}}]},
        "TASK-DONE"]})
    key, stranger = server.add_user(), server.add_user()
    init = rpc(server, key, "initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                           "clientInfo": {"name": "t", "version": "1"}})
    assert init["result"]["capabilities"]["tasks"]["requests"] == {"tools": {"call": {}}}

    async def start() -> str:
        async with connect(server, key) as s:
            return str((await call(s, "claude_code_start", name="tasked"))["session_id"])

    sid = run(start())
    made = rpc(server, key, "tools/call", {"name": "claude_code_send", "task": {"ttl": 60000},
                                           "arguments": {"session_id": sid,
                                                         "message": "run it"}})
    assert "result" in made, made
    task = made["result"]["task"]
    assert task["status"] == "working" and task["taskId"].startswith(sid + ".")

    def state() -> str:
        return str(rpc(server, key, "tasks/get", {"taskId": task["taskId"]})
                   ["result"]["status"])

    wait_for(lambda: state() == "input_required", 30, 0.1, "the task to wait on approval")

    async def approve() -> None:
        async with connect(server, key) as s:
            [pending] = (await call(s, "claude_code_status", session_id=sid))[
                "pending_approvals"]
            await call(s, "claude_code_approve", session_id=sid,
                       approval_id=pending["approval_id"])

    run(approve())
    result = rpc(server, key, "tasks/result", {"taskId": task["taskId"]})["result"]
    assert result["structuredContent"]["status"] == "done", result
    assert result["structuredContent"]["text"] == "TASK-DONE"
    assert state() == "completed"
    refused = rpc(server, stranger, "tasks/get", {"taskId": task["taskId"]})
    assert "not_found" in refused["error"]["message"], refused


def test_a_task_can_be_cancelled(server: LiveServer, model: ModelServer) -> None:
    model.set_script({"turns": [
        {"content": [{"type": "tool_use", "name": "Bash", "input": {"command": "sleep 60"}}]},
        "never"]})
    key = server.add_user()

    async def start() -> str:
        async with connect(server, key) as s:
            return str((await call(s, "claude_code_start", name="long", shell="allow"))[
                "session_id"])

    sid = run(start())
    task = rpc(server, key, "tools/call", {"name": "claude_code_send", "task": {},
                                           "arguments": {"session_id": sid,
                                                         "message": "sleep"}})["result"]["task"]
    wait_for(lambda: '"sleep 60"' in httpx.get(
        f"{server.url}/v1/sessions/{sid}/events", headers={
            "Authorization": f"Bearer {key}", "Accept": "application/json"}).text,
        30, 0.1, "the command to start")
    cancelled = rpc(server, key, "tasks/cancel", {"taskId": task["taskId"]})["result"]
    assert cancelled["status"] == "cancelled", cancelled
    assert rpc(server, key, "tasks/get", {"taskId": task["taskId"]})["result"]["status"] \
        == "cancelled"
