"""The claude-code runtime's command line: a session's budget and MCP servers reach the
CLI as its own flags, and the servers' tools are among those it asks Sophon about."""

from __future__ import annotations

import json

from sophon.agent.claude_process import argv_for
from sophon.sessions.models import ApprovalPolicy


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_mcp_servers_and_the_budget_are_the_clis_own_flags() -> None:
    argv = argv_for("ses_x", "claude-sonnet-4-5", None, None, ApprovalPolicy(), False,
                    max_budget_usd=0.5,
                    mcp_servers=[{"name": "docs", "command": ["python3", "srv.py", "-v"],
                                  "env": {"LEVEL": "2"}}])
    assert flag(argv, "--max-budget-usd") == "0.5"
    assert json.loads(flag(argv, "--mcp-config")) == {"mcpServers": {"docs": {
        "type": "stdio", "command": "python3", "args": ["srv.py", "-v"],
        "env": {"LEVEL": "2"}}}}
    assert "mcp__docs" in json.loads(flag(argv, "--settings"))["permissions"]["ask"]


def test_without_them_no_flag_is_added() -> None:
    argv = argv_for("ses_x", "claude-sonnet-4-5", None, None, ApprovalPolicy(), False)
    assert "--mcp-config" not in argv and "--max-budget-usd" not in argv
