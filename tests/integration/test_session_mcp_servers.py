"""A session's own tools: MCP servers it opts into run in its sandbox, and the agent
calls their tools (mcp__<server>__<tool>) under the approval policy; a broken server is
said and left out, never a failed turn."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sophon.testing import ModelServer
from tests.conftest import LiveServer, serve_with_model, wait_for
from tests.integration.mcp_support import DEMO, SERVER, HttpMcpServer


def tool_use(name: str, tool_id: str, **input: Any) -> dict[str, Any]:
    return {"content": [{"type": "tool_use", "id": tool_id, "name": name, "input": input}]}


@pytest.fixture(scope="module")
def server(model: ModelServer) -> Iterator[LiveServer]:
    with serve_with_model(model) as srv:
        yield srv


def user_of(srv: LiveServer) -> httpx.Client:
    return httpx.Client(base_url=srv.url, timeout=60,
                        headers={"Authorization": f"Bearer {srv.add_user()}"})


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with user_of(server) as c:
        yield c


def session(http: httpx.Client, **body: Any) -> str:
    r = http.post("/v1/sessions", json={"name": "tools", "base": "python", **body})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    for path, text in (("demo_server.py", SERVER), (".marker", "the sandbox\n")):
        assert http.put(f"/v1/sessions/{sid}/files/{path}",
                        content=text.encode()).status_code == 201
    return str(sid)


def events(http: httpx.Client, sid: str) -> list[dict[str, Any]]:
    return list(http.get(f"/v1/sessions/{sid}/events", params={"limit": 5000},
                         headers={"Accept": "application/json"}).json()["events"])


def turn_over(http: httpx.Client, sid: str, nth: int = 1) -> list[dict[str, Any]] | None:
    """The events once the nth message's turn has ended."""
    evs = events(http, sid)
    users = [i for i, e in enumerate(evs) if e["type"] == "user"]
    return evs if len(users) >= nth and any(
        e["type"] == "status" and e["status"] in ("idle", "error")
        for e in evs[users[nth - 1]:]) else None


def test_the_agent_calls_a_sessions_mcp_tool_after_approval(http: httpx.Client,
                                                            model: ModelServer) -> None:
    model.set_script({"turns": [tool_use("mcp__demo__shout", "t1", text="hello"), "shouted"]})
    sid = session(http, mcp_servers=[DEMO])
    assert http.get(f"/v1/sessions/{sid}").json()["mcp_servers"] == [
        {**DEMO, "env": {}, "url": None, "headers": {}}]
    assert http.post(f"/v1/sessions/{sid}/messages", json={"content": "shout"}
                     ).status_code == 202
    asked = wait_for(lambda: [e for e in events(http, sid) if e["type"] == "approval_request"],
                     30, 0.05, "the approval request")
    assert asked[0]["tool"] == "mcp__demo__shout"  # type: ignore[index]
    assert asked[0]["input"] == {"text": "hello"}  # type: ignore[index]
    assert http.post(f"/v1/sessions/{sid}/approvals/{asked[0]['approval_id']}",  # type: ignore[index]
                     json={"decision": "allow"}).status_code == 200
    evs = wait_for(lambda: turn_over(http, sid), 30, 0.05, "the turn to end")
    # Typed events like a built-in tool's: the call, then its result.
    [use] = [e for e in evs if e["type"] == "tool_use"]  # type: ignore[union-attr]
    assert (use["tool"], use["input"], use["tool_use_id"]) == (
        "mcp__demo__shout", {"text": "hello"}, "t1")
    [result] = [e for e in evs if e["type"] == "tool_result"]  # type: ignore[union-attr]
    assert result["tool_use_id"] == "t1"
    assert (result["content"], result["is_error"]) == ("HELLO (from the sandbox)", False)
    # The model was offered the tool with the server's own schema, beside the built-ins.
    offered = {t["name"]: t for t in model.requests[0]["tools"]}
    assert {"Read", "Bash", "mcp__demo__shout", "mcp__demo__crash"} <= set(offered)
    assert offered["mcp__demo__shout"]["input_schema"]["required"] == ["text"]
    assert not [e for e in evs if e["type"] == "session_error"]  # type: ignore[union-attr]


def test_a_denied_call_does_not_reach_the_server(http: httpx.Client,
                                                 model: ModelServer) -> None:
    model.set_script({"turns": [tool_use("mcp__demo__shout", "t1", text="no"), "ok"]})
    sid = session(http, mcp_servers=[DEMO],
                  approval={"tools": {"mcp__demo__shout": "deny"}})
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "shout"})
    evs = wait_for(lambda: turn_over(http, sid), 30, 0.05, "the turn to end")
    [result] = [e for e in evs if e["type"] == "tool_result"]  # type: ignore[union-attr]
    assert result["is_error"] and "denied" in result["content"]
    assert "NO" not in result["content"]


def test_a_broken_server_is_said_and_the_turn_goes_on(http: httpx.Client,
                                                       model: ModelServer) -> None:
    """One server that cannot start, one whose tool crashes it: each is a session_error
    and (for the call) a tool error; the turn ends as the model ends it."""
    broken = {"name": "broken", "command": ["python3", "-c",
                                            "import sys; print('no', file=sys.stderr); "
                                            "sys.exit(3)"]}
    model.set_script({"turns": [tool_use("mcp__demo__crash", "t1"), "carried on"]})
    sid = session(http, mcp_servers=[DEMO, broken], approval={"tools": {
        "mcp__demo__crash": "allow"}})
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "crash it"})
    evs = wait_for(lambda: turn_over(http, sid), 30, 0.05, "the turn to end")
    errors = [e["message"] for e in evs if e["type"] == "session_error"]  # type: ignore[union-attr]
    assert any(m.startswith("the MCP server broken could not start") and "exited (3): no" in m
               for m in errors), errors
    assert any(m.startswith("the MCP server demo failed on crash: it exited (7)")
               for m in errors), errors
    [result] = [e for e in evs if e["type"] == "tool_result"]  # type: ignore[union-attr]
    assert result["is_error"]
    assert [e["text"] for e in evs if e["type"] == "assistant"] == ["carried on"]  # type: ignore[union-attr]
    assert evs[-1]["type"] == "status" and evs[-1]["status"] == "idle"  # type: ignore[index]
    assert "mcp__broken" not in json.dumps(model.requests[-1]["tools"])


def test_malformed_output_is_a_tool_error_at_once_not_a_hung_turn(
        http: httpx.Client, model: ModelServer) -> None:
    """A server that prints a line that is not JSON (skipped) and answers a call with a
    JSON-RPC message that is not an MCP result: the call is a tool error and a
    session_error at once (not after the call timeout), and the server stays usable."""
    model.set_script({"turns": [tool_use("mcp__demo__shout", "t1", text="garble"),
                                tool_use("mcp__demo__shout", "t2", text="again"), "done"]})
    sid = session(http, mcp_servers=[DEMO],
                  approval={"tools": {"mcp__demo__shout": "allow"}})
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "garble"})
    evs = wait_for(lambda: turn_over(http, sid), 30, 0.05, "the turn to end")
    errors = [e["message"] for e in evs if e["type"] == "session_error"]  # type: ignore[union-attr]
    assert errors == ["the MCP server demo failed on shout: it answered with something "
                      "not MCP"], errors
    results = {e["tool_use_id"]: e for e in evs if e["type"] == "tool_result"}  # type: ignore[union-attr]
    assert results["t1"]["is_error"] and "not MCP" in results["t1"]["content"]
    assert (results["t2"]["content"], results["t2"]["is_error"]) == (
        "AGAIN (from the sandbox)", False)
    assert evs[-1]["type"] == "status" and evs[-1]["status"] == "idle"  # type: ignore[index]


def test_servers_are_checked_and_changed_like_any_setting(http: httpx.Client) -> None:
    bad = [[{"name": "no spaces", "command": ["x"]}], [{"name": "a", "command": []}],
           [{"name": "a", "command": ["x"]}, {"name": "a", "command": ["y"]}],
           [{"name": "a"}], [{"name": "a", "command": ["x"], "url": "https://a.example"}],
           [{"name": "a", "url": "ftp://a.example"}],
           [{"name": "a", "url": "https://a.example:port/mcp"}]]
    for servers in bad:
        r = http.post("/v1/sessions", json={"name": "x", "mcp_servers": servers})
        assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text
    sid = http.post("/v1/sessions", json={"name": "x"}).json()["id"]
    r = http.patch(f"/v1/sessions/{sid}", json={"mcp_servers": [DEMO]})
    assert r.status_code == 200 and r.json()["mcp_servers"][0]["name"] == "demo"
    r = http.patch(f"/v1/sessions/{sid}", json={"mcp_servers": []})
    assert r.json()["mcp_servers"] == []


def test_a_url_server_is_reached_through_the_door(model: ModelServer) -> None:
    """An MCP server at a URL: its host joins the session's list, the box reaches it
    through its egress door (a bridge in the box speaks stdio to the agent), headers go
    along, the server's session id is kept, and an SSE answer is read."""
    with HttpMcpServer() as web, serve_with_model(
            model, SOPHON_EGRESS_ALLOW_PRIVATE=f"127.0.0.2:{web.port}") as srv, \
            user_of(srv) as http:
        model.set_script({"turns": [tool_use("mcp__web__whoami", "t1"), "asked"]})
        r = http.post("/v1/sessions", json={
            "name": "web", "mcp_servers": [{"name": "web", "url": web.url,
                                            "headers": {"X-Team": "blue"}}],
            "approval": {"tools": {"mcp__web__whoami": "allow"}}})
        assert r.status_code == 201, r.text
        assert r.json()["network"]["allow"] == [f"127.0.0.2:{web.port}"]
        sid = r.json()["id"]
        http.post(f"/v1/sessions/{sid}/messages", json={"content": "who am I"})
        evs = wait_for(lambda: turn_over(http, sid), 30, 0.05, "the turn to end")
        [result] = [e for e in evs if e["type"] == "tool_result"]  # type: ignore[union-attr]
        assert (result["content"], result["is_error"]) == ("team=blue", False), evs
        assert web.sessions_seen[0] is None
        assert set(web.sessions_seen[1:]) == {"web-session-1"}
        # Without the host on the list (an url server added, then the list cut back),
        # the door refuses it: a tool-less turn that says why.
        r = http.patch(f"/v1/sessions/{sid}", json={"network": {"allow": []}})
        assert r.json()["network"]["allow"] == []
        model.set_script({"turns": ["nothing to call"]})
        r = http.post(f"/v1/sessions/{sid}/messages", json={"content": "again"})
        assert r.status_code == 202, r.text
        evs = wait_for(lambda: turn_over(http, sid, 2), 60, 0.05, "the turn to end")
        errors = [e["message"] for e in evs if e["type"] == "session_error"]  # type: ignore[union-attr]
        assert any("the MCP server web could not start" in m and "403" in m
                   for m in errors), errors


def test_a_server_that_does_not_answer_is_timed_out(model: ModelServer) -> None:
    """A server that never answers its handshake is left out after
    SOPHON_MCP_START_SECONDS; a call that never returns is a tool error after
    SOPHON_MCP_CALL_SECONDS; the turn ends as the model ends it."""
    silent = {"name": "silent", "command": ["python3", "-c", "import time; time.sleep(600)"]}
    with serve_with_model(model, SOPHON_MCP_START_SECONDS="1",
                          SOPHON_MCP_CALL_SECONDS="1") as srv, user_of(srv) as http:
        # demo's shout of "hang" never answers (see mcp_support.SERVER).
        model.set_script({"turns": [tool_use("mcp__demo__shout", "t1", text="hang"),
                                    "gave up"]})
        sid = session(http, mcp_servers=[DEMO, silent],
                      approval={"tools": {"mcp__demo__shout": "allow"}})
        http.post(f"/v1/sessions/{sid}/messages", json={"content": "try"})
        evs = wait_for(lambda: turn_over(http, sid), 30, 0.05, "the turn to end")
        errors = [e["message"] for e in evs if e["type"] == "session_error"]  # type: ignore[union-attr]
        assert any(m.startswith("the MCP server silent could not start") and
                   "did not answer initialize within 1 s" in m for m in errors), errors
        assert any(m.startswith("the MCP server demo failed on shout: it did not answer "
                                "tools/call within 1 s") for m in errors), errors
        [result] = [e for e in evs if e["type"] == "tool_result"]  # type: ignore[union-attr]
        assert result["is_error"]
        assert [e["text"] for e in evs if e["type"] == "assistant"] == ["gave up"]  # type: ignore[union-attr]
