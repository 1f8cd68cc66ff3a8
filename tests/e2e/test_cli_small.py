"""Small things a CLI user meets: which approvals are waiting, a busy session's answer in
the CLI's own words, and only what the server can run offered."""

from __future__ import annotations

import json
import re

import pytest

from sophon.client import Client
from sophon.testing import ModelServer
from tests.conftest import LiveServer, wait_for
from tests.e2e.cli_support import BASH, SHELL_TURN, assert_one_line_error, sophon, start, stop


def test_approvals_lists_what_waits_and_says_how_to_answer(
        env: dict[str, str], model: ModelServer, server: LiveServer, key: str) -> None:
    model.set_script(SHELL_TURN)
    sid = sophon(env, "claude-code", "new", "--name", "waits").stdout.strip()
    assert sophon(env, "claude-code", "approvals", sid).stdout.strip() == \
        "nothing is waiting for an answer"
    proc, out, err = start(env, "claude-code", "send", sid, "write hi.txt")
    try:
        with Client(server.url, key) as c:
            wait_for(lambda: c.approvals(sid), 30, 0.1, "the approval request")
            pending = c.approvals(sid)[0]
        r = sophon(env, "claude-code", "approvals", sid)
        assert r.returncode == 0, r.stderr
        assert pending["approval_id"] in r.stdout and BASH[:40] in r.stdout
        assert f"sophon claude-code approve|deny {sid} APPROVAL" in r.stdout
        # A second message while the turn waits: the CLI's words, not the API's.
        busy = sophon(env, "claude-code", "send", sid, "and another thing")
        assert busy.returncode == 1
        assert "--queue" in busy.stderr and '"queue"' not in busy.stderr
        assert sophon(env, "claude-code", "approve", sid, pending["approval_id"]).returncode == 0
        assert proc.wait(30) == 0
    finally:
        stop(proc)


def test_the_cli_offers_only_what_the_server_can_run(env: dict[str, str]) -> None:
    caps = json.loads(sophon(env, "capabilities", "--json").stdout)
    missing = next((b for b in caps["bases"] if not b["available"]), None)
    shown = sophon(env, "capabilities")
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"^python\s+yes\s", shown.stdout, re.M)
    assert "native" in shown.stdout and "sonnet (" in shown.stdout
    if missing is None:
        pytest.skip("this host has every base's toolchain")
    assert f"no: {missing['reason']}" in shown.stdout

    refused = sophon(env, "claude-code", "new", "--name", "x", "--base", missing["name"])
    assert refused.returncode == 2
    assert f"the {missing['name']} base is not available on this server" in refused.stderr
    assert missing["reason"] in refused.stderr and "python" in refused.stderr
    unknown = sophon(env, "claude-code", "new", "--name", "x", "--base", "cobol")
    assert unknown.returncode == 2 and "unknown base 'cobol'" in unknown.stderr
    assert json.loads(sophon(env, "claude-code", "list", "--json").stdout) == []


def test_new_takes_mcp_servers(env: dict[str, str]) -> None:
    sid = sophon(env, "claude-code", "new", "--name", "tools", "--mcp",
                 "docs=python3 'my server.py' --port 0", "--mcp", "b=node b.js")
    assert sid.returncode == 0, sid.stderr
    got = json.loads(sophon(env, "claude-code", "list", "--json").stdout)[0]
    assert [(m["name"], m["command"]) for m in got["mcp_servers"]] == [
        ("docs", ["python3", "my server.py", "--port", "0"]), ("b", ["node", "b.js"])]
    bad = sophon(env, "claude-code", "new", "--name", "x", "--mcp", "no-command")
    assert bad.returncode == 2 and "--mcp takes NAME=COMMAND" in bad.stderr


def test_a_sessions_mcp_servers_change_after_it_starts(env: dict[str, str]) -> None:
    sid = sophon(env, "claude-code", "new", "--name", "later").stdout.strip()
    assert "no MCP servers" in sophon(env, "claude-code", "mcp", "list", sid).stdout
    added = sophon(env, "claude-code", "mcp", "add", sid, "docs=python3 'my server.py'")
    assert added.returncode == 0 and "mcp__docs__" in added.stdout, added.stderr
    url = sophon(env, "claude-code", "mcp", "add", sid, "search=http://mcp.example.test:8931/mcp")
    assert url.returncode == 0, url.stderr
    view = json.loads(sophon(env, "claude-code", "list", "--json").stdout)[0]
    assert view["mcp_servers"] == [
        {"name": "docs", "command": ["python3", "my server.py"], "url": None, "headers": {},
         "env": {}},
        {"name": "search", "command": None, "url": "http://mcp.example.test:8931/mcp",
         "headers": {}, "env": {}}]
    assert "mcp.example.test:8931" in view["network"]["allow"]  # the url's host joins the list
    listed = sophon(env, "claude-code", "mcp", "list", sid).stdout.splitlines()
    assert listed[1].split() == ["docs", "command", "python3", "'my", "server.py'"]
    assert listed[2].split() == ["search", "url", "http://mcp.example.test:8931/mcp"]
    assert_one_line_error(sophon(env, "claude-code", "mcp", "add", sid, "docs=node d.js"),
                          "named docs already")
    assert_one_line_error(sophon(env, "claude-code", "mcp", "rm", sid, "nope"),
                          "no MCP server named nope")
    assert sophon(env, "claude-code", "mcp", "rm", sid, "docs").returncode == 0
    view = json.loads(sophon(env, "claude-code", "list", "--json").stdout)[0]
    assert [m["name"] for m in view["mcp_servers"]] == ["search"]
    bad = sophon(env, "claude-code", "mcp", "add", sid, "=x")
    assert bad.returncode == 2 and "NAME=COMMAND or NAME=URL" in bad.stderr
