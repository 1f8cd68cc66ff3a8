"""A session survives a server restart whole; a turn the restart cut off is reported."""

from __future__ import annotations

import asyncio
import json

import httpx

from tests.conftest import LiveServer, wait_for


def _set_status(server: LiveServer, session_id: str, status: str) -> None:
    """Put the session in the state a running turn leaves it in (turns come with the
    agent; the recovery path is the same)."""
    from sophon.store.db import make_engine, sessionmaker
    from sophon.store.tables import SessionRow

    async def update() -> None:
        engine = make_engine(f"sqlite+aiosqlite:///{server.data_dir / 'sophon.db'}")
        async with sessionmaker(engine)() as db:
            row = await db.get(SessionRow, session_id)
            assert row is not None
            row.status = status
            await db.commit()
        await engine.dispose()

    asyncio.run(update())


def test_session_survives_restart_and_a_cut_off_turn_is_reported(
    own_server: LiveServer,
) -> None:
    key = own_server.add_user()
    http = httpx.Client(base_url=own_server.url, timeout=60,
                        headers={"Authorization": f"Bearer {key}"})
    s = http.post("/v1/sessions", json={"name": "durable",
                                        "starter": {"type": "template", "name": "python"}})
    sid = s.json()["id"]
    r = http.post(f"/v1/sessions/{sid}/exec", json={
        "command": "echo more >> README.md && git -c user.name=t -c user.email=t@t "
                   "commit -qam second"})
    assert json.loads(r.content.splitlines()[-1])["exit_code"] == 0
    http.put(f"/v1/sessions/{sid}/secrets/TOKEN", json={"value": "restart-secret-123"})

    def page() -> list[dict]:
        return list(http.get(f"/v1/sessions/{sid}/events",
                             headers={"Accept": "application/json"}).json()["events"])

    wait_for(lambda: any(e["type"] == "file_change" for e in page()),
             what="the README change to be logged")
    old = page()
    own_server.stop()
    _set_status(own_server, sid, "running")
    own_server.start()

    got = http.get(f"/v1/sessions/{sid}").json()
    assert got["status"] == "sleeping"  # idle, with its box not started yet
    events = page()
    assert events[: len(old)] == old
    new = events[len(old):]
    assert new[0]["type"] == "session_error" and new[0]["code"] == "interrupted"
    assert "cut off" in new[0]["message"]
    assert new[1]["type"] == "status" and new[1]["status"] == "idle"
    # Files, history and secrets are all still there, and the session works.
    r = http.post(f"/v1/sessions/{sid}/exec", json={
        "command": "git log --format=%s; tail -1 README.md; echo $TOKEN"})
    out = "".join(json.loads(line).get("data", "") for line in r.content.splitlines())
    assert out == "second\nInitial commit\nmore\n[redacted]\n"
    assert http.get(f"/v1/sessions/{sid}").json()["status"] == "idle"


def test_a_turn_cut_off_while_waiting_for_approval(data_dir) -> None:  # type: ignore[no-untyped-def]
    """kill -9 while a Bash call waits for approval: after the restart the turn is
    reported cut off, the pending approval can still be answered (and is recorded), and
    the next message runs a new turn."""
    from sophon.testing import ModelServer

    with ModelServer() as model:
        model.set_script({"turns": [
            {"content": [{"type": "tool_use", "name": "Bash", "input": {"command": "true"}}]},
            "after the restart",
        ]})
        srv = LiveServer(data_dir, env={"ANTHROPIC_API_KEY": "k",
                                        "ANTHROPIC_BASE_URL": model.url}).start()
        try:
            key = srv.add_user()
            http = httpx.Client(base_url=srv.url, timeout=60,
                                headers={"Authorization": f"Bearer {key}"})
            sid = http.post("/v1/sessions", json={"name": "w"}).json()["id"]

            def page() -> list[dict]:
                return list(http.get(f"/v1/sessions/{sid}/events", params={"limit": 5000},
                                     headers={"Accept": "application/json"}).json()["events"])

            assert http.post(f"/v1/sessions/{sid}/messages",
                             json={"content": "run it"}).status_code == 202
            req = wait_for(lambda: next((e for e in page() if e["type"] == "approval_request"),
                                        None), 20, what="the approval request")
            wait_for(lambda: http.get(f"/v1/sessions/{sid}").json()["status"]
                     == "waiting_approval", what="waiting_approval")
            srv.kill()
            srv.start()

            errors = [e for e in page() if e["type"] == "session_error"]
            assert [e["code"] for e in errors] == ["interrupted"]
            assert "approval" in errors[0]["message"] and "cut off" in errors[0]["message"]
            assert http.get(f"/v1/sessions/{sid}").json()["status"] in ("idle", "sleeping")

            r = http.post(f"/v1/sessions/{sid}/approvals/{req['approval_id']}",
                          json={"decision": "allow"})
            assert r.status_code == 200, r.text
            assert page()[-1]["type"] == "approval_decision"
            assert http.get(f"/v1/sessions/{sid}").json()["status"] in ("idle", "sleeping")

            assert http.post(f"/v1/sessions/{sid}/messages",
                             json={"content": "again"}).status_code == 202
            wait_for(lambda: any(e["type"] == "assistant" and e["text"] == "after the restart"
                                 for e in page()), 20, what="the next turn")
            # The model saw the cut-off call with an error result, then the new message.
            history = model.requests[-1]["messages"]
            assert history[0]["content"][0]["text"] == "run it" if isinstance(
                history[0]["content"], list) else history[0]["content"] == "run it"
            results = [b for m in history if isinstance(m["content"], list)
                       for b in m["content"] if b.get("type") == "tool_result"]
            assert len(results) == 1 and results[0]["is_error"]
        finally:
            srv.stop()
