"""The session page's timeline in Chromium: turns and their checkpoints, a restore that
can be undone, a fork, and a turn reviewed hunk by hunk with a line comment."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from sophon.testing import ModelServer
from tests.conftest import LiveServer, wait_for
from tests.e2e.conftest import DEADLINE_MS, NEEDS_DASHBOARD

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = NEEDS_DASHBOARD
expect = playwright_api.expect
expect.set_options(timeout=DEADLINE_MS)

APP = "".join(f"line {i}\n" for i in range(1, 31))
TURNS = {"turns": [
    {"content": [{"type": "tool_use", "name": "Write",
                  "input": {"file_path": "/workspace/app.py", "content": APP}}]},
    "wrote app.py",
    {"content": [{"type": "tool_use", "name": "Bash", "input": {
        "command": "sed -i -e 's/^line 2$/line two/' -e 's/^line 28$/line 28!/' app.py"}}]},
    "edited app.py",
    "thanks for the review",
]}


def sh(http: httpx.Client, sid: str, command: str) -> str:
    import json

    r = http.post(f"/v1/sessions/{sid}/exec", json={"command": command})
    return "".join(e["data"] for e in map(json.loads, r.text.splitlines())
                   if e["type"] == "exec_output")


def idle_after(http: httpx.Client, sid: str, users: int) -> bool:
    evs = http.get(f"/v1/sessions/{sid}/events", params={"limit": 5000},
                   headers={"Accept": "application/json"}).json()["events"]
    seen = [i for i, e in enumerate(evs) if e["type"] == "user"]
    return len(seen) >= users and any(e["type"] == "status" and e["status"] == "idle"
                                      for e in evs[seen[users - 1]:])


def test_the_timeline_restores_forks_and_reviews(page, server: LiveServer, key: str,
                                                 model: ModelServer, shots: Path) -> None:
    model.set_script(TURNS)
    http = httpx.Client(base_url=server.url, timeout=60,
                        headers={"Authorization": f"Bearer {key}"})
    sid = http.post("/v1/sessions", json={"name": "timeline", "approval": {"shell": "allow"}}
                    ).json()["id"]
    for n, message in enumerate(("write app.py", "edit two lines"), 1):
        assert http.post(f"/v1/sessions/{sid}/messages", json={"content": message}
                         ).status_code == 202
        wait_for(lambda n=n: idle_after(http, sid, n), 60, 0.05, "the turn to end")

    page.goto(server.url + "/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Sessions").wait_for()
    page.goto(f"{server.url}/sessions/{sid}")
    page.get_by_role("tab", name="Timeline").click()
    timeline = page.get_by_role("list", name="Turns and checkpoints")
    expect(timeline).to_contain_text("Turn 1")
    expect(timeline).to_contain_text("write app.py")  # the turn's message
    expect(timeline).to_contain_text("Turn 2")
    page.screenshot(path=str(shots / "timeline.png"))

    # Restore both to turn 1's end, then undo it.
    turn1 = page.locator(".timeline-turn").filter(has_text="Turn 1")
    turn1.get_by_role("button", name=re.compile("turn end")).click()
    page.get_by_role("button", name="Restore both").click()
    expect(page.get_by_role("status")).to_contain_text("Files and conversation restored")
    # Turn 2's messages stay in the pane, marked: the agent no longer sees them.
    rewound = page.locator(".vrow.rewound")
    expect(rewound.filter(has_text="edit two lines")).to_have_count(1)
    expect(page.locator(".vrow").filter(has_text="write app.py").first).not_to_have_class(
        re.compile("rewound"))
    assert "line two" not in sh(http, sid, "cat app.py")
    before = http.get(f"/v1/sessions/{sid}/checkpoints").json()["checkpoints"][-2]
    assert before["reason"] == "before_rewind"
    assert "line two" in sh(http, sid, f"git show {before['commit']}:app.py")
    page.get_by_role("button", name="Undo").click()
    expect(page.get_by_role("status")).to_contain_text("Undone")
    expect(rewound).to_have_count(0)  # undone: the agent sees turn 2 again
    assert "line two" in sh(http, sid, "cat app.py")

    # Review turn 2: reject its second hunk, comment on a line of the first.
    page.locator(".timeline-turn").filter(has_text="Turn 2").get_by_role(
        "button", name="Review changes").click()
    review = page.get_by_role("region", name="Review of turn 2")
    review.get_by_label("Reject hunk 2 of app.py").check()
    review.get_by_role("button", name="Comment on line 2", exact=True).click()
    review.get_by_role("textbox", name="Comment on line 2", exact=True).fill("why two in words?")
    review.get_by_role("button", name="Keep comment").click()
    page.screenshot(path=str(shots / "review.png"))
    review.get_by_role("button", name="Submit review (2)").click()
    expect(page.get_by_role("status")).to_contain_text("1 hunk reverted; 1 comment sent")
    text = sh(http, sid, "cat app.py")
    assert "line two\n" in text and "line 28\n" in text
    wait_for(lambda: idle_after(http, sid, 3), 60, 0.05, "the review's turn")
    said = str(model.requests[-1]["messages"][-1])
    assert "app.py:2: why two in words?" in said and "line 28!" in said

    # Fork from turn 1's end: the new session opens.
    turn1.get_by_role("button", name=re.compile("turn end")).click()
    page.get_by_role("button", name="Fork…").click()
    page.get_by_label("Fork name").fill("timeline-b")
    page.get_by_role("button", name="Create fork").click()
    expect(page.locator(".session-head")).to_contain_text("timeline-b")
    fork_id = page.url.rsplit("/", 1)[-1]
    assert fork_id != sid and "line two" not in sh(http, fork_id, "cat app.py")
    http.close()


# Seen from the page: the tab is hidden (the user looks elsewhere), and each browser
# notification is recorded instead of shown.
HIDDEN_AND_RECORDED = """
Object.defineProperty(document, "hidden", {get: () => window.__hidden === true});
window.__notes = [];
window.Notification = class {
  static permission = "granted";
  static requestPermission() { return Promise.resolve("granted"); }
  constructor(title, options) { window.__notes.push(title + " | " + (options || {}).body); }
};
"""


def test_an_approval_counts_down_and_calls_for_attention(page, server: LiveServer, key: str,
                                                        model: ModelServer) -> None:
    model.set_script({"turns": [
        {"content": [{"type": "tool_use", "name": "Bash", "input": {"command": "echo hi"}}]},
        "said hi"]})
    http = httpx.Client(base_url=server.url, timeout=60,
                        headers={"Authorization": f"Bearer {key}"})
    sid = http.post("/v1/sessions", json={"name": "patient", "approval": {
        "timeout_seconds": 20, "on_timeout": "allow"}}).json()["id"]
    page.add_init_script(HIDDEN_AND_RECORDED)
    page.goto(server.url + "/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Sessions").wait_for()
    page.goto(f"{server.url}/sessions/{sid}")
    expect(page).to_have_title("patient · Sophon")
    page.evaluate("window.__hidden = true")
    assert http.post(f"/v1/sessions/{sid}/messages", json={"content": "say hi"}
                     ).status_code == 202
    # The banner and the card count down to the session's answer on timeout.
    banner = page.locator(".approval-banner")
    expect(banner.get_by_test_id("approval-countdown")).to_have_text(
        re.compile(r"· allow in 0:(1\d|0\d)"))
    expect(page).to_have_title("(1) Approval · patient · Sophon")
    notes = page.evaluate("window.__notes")
    assert any(n.startswith("patient: an approval waits | Bash") for n in notes), notes
    page.get_by_role("button", name=re.compile("^Allow")).first.click()
    expect(page).to_have_title("✓ patient · Sophon")  # the turn ended while hidden
    wait_for(lambda: any(n.startswith("patient: the turn ended")
                         for n in page.evaluate("window.__notes")), 30, 0.1,
             "the turn's notification")
    page.evaluate("window.__hidden = false; document.dispatchEvent(new Event('visibilitychange'))")
    expect(page).to_have_title("patient · Sophon")
    http.close()
