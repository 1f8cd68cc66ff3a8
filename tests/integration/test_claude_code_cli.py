"""The real Claude Code CLI in every box (installed by scripts/box-tools), run as the
Baponi guide runs it: `claude -p ... --dangerously-skip-permissions` in an execution API
thread, its model calls through the egress door to Sophon's gateway and on to the
scripted model, with no provider key in the box."""

from __future__ import annotations

import functools
import json
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from sophon.testing import ModelServer
from tests.conftest import LiveServer, make_data_dir
from tests.integration.egress_hosts import HOST, GitServer

PROVIDER_KEY = "sk-ant-test-provider-key-never-in-a-box-0123456789"


def turn() -> dict[str, Any]:
    """Any request: after a tool ran, finish; asked to write, write; the CLI's own side
    requests (titles, checks) get a short text."""
    return {"rules": [
        {"when": {"last_user_contains": "NEVER-ANSWER"},
         "reply": {"content": [{"type": "text", "text": "too late"}], "delay_ms": 120_000}},
        {"when": {"last_user_contains": "LOOP"},
         "reply": {"content": [{"type": "tool_use", "name": "Bash", "input": {
             "command": "echo again", "description": "again"}}], "stop_reason": "tool_use"}},
        {"when": {"last_tool_result_contains": ""},
         "reply": {"content": [{"type": "text", "text": "DONE: the file is written"}]}},
        {"when": {"last_user_contains": "MULTI"},
         "reply": {"content": [{"type": "tool_use", "name": "Write", "input": {
             "file_path": "/home/baponi/app/CHANGES.md", "content": "claude was here\n"}}],
             "stop_reason": "tool_use"}},
        {"when": {"last_user_contains": "ONE-SHOT"},
         "reply": {"content": [{"type": "tool_use", "name": "Write", "input": {
             "file_path": "/home/baponi/hello.txt", "content": "hi from claude\n"}}],
             "stop_reason": "tool_use"}},
    ], "default": {"content": [{"type": "text", "text": "ok"}]}}


@pytest.fixture(scope="module")
def model() -> Iterator[ModelServer]:
    with ModelServer({"turns": [turn() for _ in range(40)]}) as ms:
        yield ms


@pytest.fixture(scope="module")
def git() -> Iterator[GitServer]:
    srv = GitServer()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def server(model: ModelServer, git: GitServer) -> Iterator[LiveServer]:
    path = make_data_dir()
    # The execution API reaches any public address and, opened here, the test's git host.
    srv = LiveServer(path, env={"ANTHROPIC_API_KEY": PROVIDER_KEY,
                                "ANTHROPIC_BASE_URL": model.url,
                                "SOPHON_EGRESS_EXECUTE": "public",
                                "SOPHON_EGRESS_ALLOW_PRIVATE": git.addr}).start()
    health = httpx.get(srv.url + "/healthz").json()
    if str(health["box_claude_code"]).startswith("missing"):
        srv.stop()
        pytest.skip(f"the claude CLI is not installed for boxes: {health['box_claude_code']}")
    yield srv
    srv.stop()
    shutil.rmtree(path, ignore_errors=True)


def execute(http: httpx.Client, code: str, thread: str) -> dict[str, Any]:
    r = http.post("/v1/sandbox/execute", json={"code": code, "language": "bash",
                                               "thread_id": thread, "timeout": 300}, timeout=330)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_the_guides_one_shot_claude_runs_in_a_thread_through_the_gateway(
        server: LiveServer, model: ModelServer) -> None:
    http = httpx.Client(base_url=server.url, timeout=60,
                        headers={"Authorization": f"Bearer {server.add_user()}"})
    # claude is on every thread's PATH.
    where = execute(http, "command -v claude && claude --version", "t")
    assert where["exit_code"] == 0, where
    assert where["stdout"].splitlines()[1].endswith("(Claude Code)")

    # It is also where the guide's Agent SDK example looks (cli_path), in every thread:
    # the one link in a new thread's home. Without an anthropic connector for the
    # execution API the thread has no gateway.
    bare = execute(http, "echo ${ANTHROPIC_BASE_URL:-none}; cd ~ && find . -mindepth 1; "
                         "/home/baponi/.local/bin/claude --version", "t")
    assert bare["stdout"].splitlines()[:4] == ["none", "./.local", "./.local/bin",
                                                "./.local/bin/claude"], bare
    assert bare["stdout"].strip().endswith("(Claude Code)"), bare
    r = http.post("/v1/connectors", json={"name": "claude", "type": "anthropic",
                                          "execute": True})
    assert r.status_code == 201, r.text

    res = execute(http, 'cd /home/baponi && claude -p "ONE-SHOT: write hello.txt" '
                        "--dangerously-skip-permissions --output-format json --max-turns 5",
                  "t")
    assert res["exit_code"] == 0, res
    result = json.loads(res["stdout"].strip().splitlines()[-1])
    assert result["is_error"] is False and "DONE" in result["result"], result
    kept = execute(http, "cat /home/baponi/hello.txt; env", "t")["stdout"]
    assert kept.startswith("hi from claude\n")
    assert PROVIDER_KEY not in kept and "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1" in kept
    # Every model call reached the model with the server's key: through the gateway.
    assert model.requests and all(h.get("x-api-key") == PROVIDER_KEY
                                  for h in model.request_headers)


def test_clone_claude_commit_push_in_one_thread_and_max_turns_hold(
        server: LiveServer, git: GitServer) -> None:
    """The guide's multi-step flow in one thread: clone over HTTP, run claude with
    stream-json, commit and push what it wrote; and --max-turns stops a looping agent."""
    http = httpx.Client(base_url=server.url, timeout=60,
                        headers={"Authorization": f"Bearer {server.add_user()}"})
    r = http.post("/v1/connectors", json={"name": "claude", "type": "anthropic",
                                          "execute": True})
    assert r.status_code == 201, r.text
    res = execute(http, (
        f"cd /home/baponi && git clone -q {git.url}/repo.git app && cd app && "
        'claude -p "MULTI: add CHANGES.md" --output-format stream-json --verbose '
        "--max-turns 50 --dangerously-skip-permissions > ../run.jsonl && "
        "git add -A && git -c user.name=c -c user.email=c@example.com commit -qm 'by claude' "
        "&& git push -q origin HEAD:main && tail -1 ../run.jsonl"), "multi")
    assert res["exit_code"] == 0, res
    last = json.loads(res["stdout"].strip().splitlines()[-1])
    assert last["type"] == "result" and last["is_error"] is False, last
    assert git.log()[0] == "by claude"

    looped = execute(http, 'cd /home/baponi && claude -p "LOOP forever" --output-format json '
                           "--max-turns 2 --dangerously-skip-permissions", "multi")
    result = json.loads(looped["stdout"].strip().splitlines()[-1])
    assert result["subtype"] == "error_max_turns", result


def test_max_budget_holds_and_a_timeout_kills_the_cli_keeping_its_output(
        server: LiveServer) -> None:
    http = httpx.Client(base_url=server.url, timeout=60,
                        headers={"Authorization": f"Bearer {server.add_user()}"})
    r = http.post("/v1/connectors", json={"name": "claude", "type": "anthropic",
                                          "execute": True})
    assert r.status_code == 201, r.text
    # The CLI counts each call's cost from the usage the gateway passes on: a looping
    # agent stops at the budget.
    spent = execute(http, 'cd /home/baponi && claude -p "LOOP forever" --output-format json '
                          "--max-turns 50 --max-budget-usd 0.01 "
                          "--dangerously-skip-permissions", "budget")
    result = json.loads(spent["stdout"].strip().splitlines()[-1])
    assert "budget" in result["subtype"] and result["num_turns"] < 50, result

    # A model that never answers: the execution's timeout kills the CLI, and what it had
    # printed (stream-json's first line) comes back.
    r = http.post("/v1/sandbox/execute", json={
        "code": 'cd /home/baponi && claude -p "NEVER-ANSWER" --output-format stream-json '
                "--verbose --dangerously-skip-permissions", "language": "bash",
        "thread_id": "budget", "timeout": 8}, timeout=60)
    hung = r.json()
    assert r.status_code == 200 and hung["success"] is False, hung
    assert hung["error"] == "timeout", hung
    first = json.loads(hung["stdout"].splitlines()[0])
    assert first["type"] == "system" and first["subtype"] == "init", first
    left = execute(http, "pgrep -f 'claude -[p]' || echo none", "budget")
    assert left["stdout"].strip() == "none", left


WHEELHOUSE = Path(__file__).resolve().parents[2] / ".cache" / "wheelhouse"

AGENT_SDK_SCRIPT = """
import anyio, json, shutil
from claude_agent_sdk import ClaudeAgentOptions, HookMatcher, query

seen = []

async def control_plane(input_data, tool_use_id, context):
    seen.append(input_data["tool_name"])  # every tool call passes here first
    return {}

async def main():
    options = ClaudeAgentOptions(
        cli_path="/home/baponi/.local/bin/claude", cwd="/home/baponi", max_turns=5,
        permission_mode="bypassPermissions",
        hooks={"PreToolUse": [HookMatcher(matcher=None, hooks=[control_plane])]})
    async for message in query(prompt="ONE-SHOT: write hello.txt", options=options):
        pass
    print(json.dumps(seen))

anyio.run(main)
"""


def test_the_agent_sdk_example_runs_in_a_thread_with_a_pretooluse_hook(
        model: ModelServer) -> None:
    """The guide's Agent SDK example: pip install claude-agent-sdk (from a loopback index
    holding the wheels `make test` downloaded), ClaudeAgentOptions(cli_path=...), and a
    PreToolUse hook that sees every tool call."""
    if not (WHEELHOUSE / ".done").exists():
        pytest.skip("no wheelhouse (make test downloads it into .cache/wheelhouse)")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(WHEELHOUSE))
    index = ThreadingHTTPServer((HOST, 0), handler)
    threading.Thread(target=index.serve_forever, daemon=True).start()
    addr = f"{HOST}:{index.server_address[1]}"
    path = make_data_dir()
    srv = LiveServer(path, env={"ANTHROPIC_API_KEY": PROVIDER_KEY,
                                "ANTHROPIC_BASE_URL": model.url,
                                "SOPHON_EGRESS_ALLOW_PRIVATE": addr,
                                "SOPHON_EGRESS_EXECUTE": "public"}).start()
    try:
        http = httpx.Client(base_url=srv.url, timeout=60,
                            headers={"Authorization": f"Bearer {srv.add_user()}"})
        http.post("/v1/connectors", json={"name": "claude", "type": "anthropic",
                                          "execute": True}).raise_for_status()
        # The wheel holds its own CLI (~190 MB): unpacked on the box's disk, not in its
        # /tmp (SOPHON_BOX_TMP_MB, 64 by default).
        res = execute(http, "mkdir -p ~/.pip-tmp && TMPDIR=~/.pip-tmp pip install -q --user "
                            f"--no-index --find-links http://{addr}/ claude-agent-sdk "
                            "&& rm -rf ~/.pip-tmp", "sdk")
        assert res["exit_code"] == 0, res
        res = execute(http, f"python3 - <<'EOF'\n{AGENT_SDK_SCRIPT}EOF", "sdk")
        assert res["exit_code"] == 0, res
        assert json.loads(res["stdout"].strip().splitlines()[-1]) == ["Write"]
        kept = execute(http, "cat /home/baponi/hello.txt", "sdk")["stdout"]
        assert kept == "hi from claude\n"
    finally:
        srv.stop()
        index.shutdown()
        shutil.rmtree(path, ignore_errors=True)
