"""What the session tests that drive a real server share: a user's client, the log, a
command's output, and a turn run to its end."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.conftest import LiveServer, wait_for


def user(server: LiveServer) -> httpx.Client:
    """A client for a new user of ``server``."""
    return httpx.Client(base_url=server.url, timeout=120,
                        headers={"Authorization": f"Bearer {server.add_user()}"})


def events(http: httpx.Client, sid: str) -> list[dict[str, Any]]:
    r = http.get(f"/v1/sessions/{sid}/events", params={"limit": 5000},
                 headers={"Accept": "application/json"})
    return list(r.json()["events"])


def sh(http: httpx.Client, sid: str, command: str) -> str:
    """What a command printed (stdout and stderr) in the session's workspace."""
    return sh_end(http, sid, command)[0]


def sh_end(http: httpx.Client, sid: str, command: str) -> tuple[str, dict[str, Any]]:
    """What a command printed, and its exec_end event (exit code, error)."""
    r = http.post(f"/v1/sessions/{sid}/exec", json={"command": command})
    assert r.status_code == 200, r.text
    lines = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    [end] = [e for e in lines if e["type"] == "exec_end"]
    return "".join(e["data"] for e in lines if e["type"] == "exec_output"), end


def turn(http: httpx.Client, sid: str, content: str) -> list[dict[str, Any]]:
    """Send a message and wait for its turn to end; the session's log."""
    n = sum(e["type"] == "user" for e in events(http, sid)) + 1
    r = http.post(f"/v1/sessions/{sid}/messages", json={"content": content})
    assert r.status_code == 202, r.text

    def over() -> list[dict[str, Any]] | None:
        evs = events(http, sid)
        users = [i for i, e in enumerate(evs) if e["type"] == "user"]
        done = len(users) >= n and any(e["type"] == "status" and e["status"] == "idle"
                                       for e in evs[users[n - 1]:])
        return evs if done else None

    return wait_for(over, 60, 0.05, "the turn to end")  # type: ignore[return-value]
