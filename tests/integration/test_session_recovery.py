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
