"""The dashboard in a real browser: Playwright driving Debian's chromium against a live
server whose model is the scripted model server.

A person's whole day with one session: sign in, create it from the form, send a message,
approve the shell, watch the tool calls and the file change arrive, follow the agent's
edit in the editor, save their own, meet a conflict without losing anything, run a
command in the terminal, read the usage chart, export, delete.

Screenshots of the main pages go to the test's tmp directory; with
SOPHON_UPDATE_SCREENSHOTS=1 they are written to docs/screenshots/ instead.
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
from pathlib import Path

import httpx
import pytest

from sophon.testing import ModelServer
from tests.conftest import LiveServer, wait_for
from tests.e2e.conftest import DEADLINE_MS, NEEDS_DASHBOARD, new_user

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

REPO = Path(__file__).resolve().parents[2]
DIST = REPO / "ui" / "dist" / "index.html"

pytestmark = NEEDS_DASHBOARD

NOTES = "alpha\nbeta\n"
# One message: write notes.txt, then run Bash (the first shell use asks); a second message:
# read the file and edit it. Each request to the model uses the next turn.
JOURNEY = {"turns": [
    {"content": [
        {"type": "thinking", "thinking": "A notes file, then a check with the shell."},
        "I'll write **notes.txt**, then check it.",
        {"type": "tool_use", "name": "Write",
         "input": {"file_path": "/workspace/notes.txt", "content": NOTES}}]},
    {"content": [{"type": "tool_use", "name": "Bash",
                  "input": {"command": "wc -l < notes.txt; echo shell-$((40+2))"}}]},
    {"content": "Done: `notes.txt` has two lines.",
     "usage": {"input_tokens": 1200, "output_tokens": 40}},
    {"content": [{"type": "tool_use", "name": "Read",
                  "input": {"file_path": "/workspace/notes.txt"}}]},
    {"content": [{"type": "tool_use", "name": "Edit",
                  "input": {"file_path": "/workspace/notes.txt", "old_string": "beta",
                            "new_string": "gamma from claude"}}]},
    {"content": "Edited notes.txt."},
]}


def api(server: LiveServer, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=60,
                        headers={"Authorization": f"Bearer {key}"})


def sign_in(page, server: LiveServer, key: str) -> None:
    page.goto(server.url + "/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Sessions").wait_for()


def editor_text(page) -> str:
    return page.locator(".monaco-editor .view-lines").inner_text().replace("\u00a0", " ")


expect = playwright_api.expect
expect.set_options(timeout=DEADLINE_MS)  # the machine is shared: generous deadlines


def test_the_first_load_is_small_and_leaves_monaco_out() -> None:
    """What index.html loads before any route (the entry, its preloads, its CSS) stays
    under 300 KB gzipped; Monaco and xterm come only when the editor or terminal opens."""
    html = DIST.read_text()
    refs = re.findall(r'(?:src|href)="/(assets/[^"]+)"', html)
    assert any(r.endswith(".js") for r in refs), html
    files = [DIST.parent / r for r in refs]
    total = sum(len(gzip.compress(f.read_bytes(), 9)) for f in files)
    assert total < 300_000, f"first load is {total} bytes gzipped"
    for f in files:
        text = f.read_text(errors="replace")
        assert "monaco-editor" not in text and "MonacoEnvironment" not in text, f.name
        assert "xterm-helper-textarea" not in text, f.name


def test_sign_in_refuses_a_wrong_key_and_sign_out_ends_the_cookie(
        page, server: LiveServer, key: str, shots: Path) -> None:
    page.goto(server.url + "/sessions")
    page.get_by_label("API key").fill("sk-sophon-not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not valid")
    page.screenshot(path=str(shots / "sign-in.png"))
    assert not any(c["name"] == "sophon_session" for c in page.context.cookies())

    sign_in(page, server, key)
    # The key is nowhere in the page's storage; the cookie is HttpOnly.
    stored = page.evaluate(
        "() => JSON.stringify({...localStorage}) + JSON.stringify({...sessionStorage})")
    assert key not in stored
    cookie = next(c for c in page.context.cookies() if c["name"] == "sophon_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API key")).to_be_visible()
    page.reload()  # the cookie is gone on the server too: a reload does not sign back in
    expect(page.get_by_label("API key")).to_be_visible()
    assert page.request.get(server.url + "/v1/sessions").status == 401


def test_another_users_session_is_not_reachable(page, server: LiveServer, key: str) -> None:
    other = new_user(server)
    with api(server, other) as theirs:
        r = theirs.post("/v1/sessions", json={"name": "not-yours"})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
    try:
        sign_in(page, server, key)
        expect(page.get_by_text("No sessions yet.")).to_be_visible()
        page.goto(f"{server.url}/sessions/{sid}")
        expect(page.get_by_role("heading", name="Session not found")).to_be_visible()
        expect(page.get_by_text("not-yours")).to_have_count(0)
    finally:
        with api(server, other) as theirs:
            theirs.delete(f"/v1/sessions/{sid}")


def test_a_session_from_start_to_delete(page, server: LiveServer, key: str,
                                        model: ModelServer, shots: Path) -> None:
    model.set_script(JOURNEY)
    sign_in(page, server, key)

    # --- create it from the form
    page.get_by_role("button", name="New session").click()
    page.get_by_label("Name").fill("notes-demo")
    page.get_by_label("Max turns").fill("20")
    page.screenshot(path=str(shots / "new-session.png"))
    page.get_by_role("button", name="Create session").click()
    expect(page.get_by_role("heading", name="notes-demo")).to_be_visible()
    sid = page.url.rsplit("/", 1)[-1]
    client = api(server, key)
    assert client.get(f"/v1/sessions/{sid}").json()["max_turns"] == 20

    # --- a message; the shell asks first; approve it on the card
    page.get_by_label("Message").fill("Write notes.txt and check it")
    page.get_by_label("Message").press("Enter")
    card = page.locator(".approval.waiting")
    expect(card).to_contain_text("wc -l < notes.txt")
    expect(page.locator(".approval-banner")).to_be_visible()
    page.screenshot(path=str(shots / "approval.png"))
    card.get_by_role("button", name="Allow", exact=True).click()
    expect(page.locator(".approval.answered")).to_contain_text("Allowed")
    expect(page.get_by_text("has two lines")).to_be_visible()
    expect(page.locator(".session-head")).to_contain_text(re.compile(r"[1-9][0-9.]*k? tokens"))

    # --- the tool calls and the file change, folded; unfolded they show input and result
    write = page.locator(".tool-ok", has_text="Write")
    bash = page.locator(".tool-ok", has_text="Bash")
    expect(write).to_be_visible()
    expect(bash).to_be_visible()
    bash.get_by_role("button").first.click()
    expect(bash.locator("pre.out")).to_contain_text("shell-42")  # the output, not the command
    change = page.locator('.file-change[data-path="notes.txt"]').first
    expect(change).to_contain_text("created")
    expect(page.locator('.tree-item[data-path="notes.txt"]')).to_be_visible()  # tree refreshed
    expect(page.locator("[data-status]").first).to_have_attribute("data-status", "idle")
    page.screenshot(path=str(shots / "session.png"))

    # --- open it in the editor; the agent's next edit arrives while nothing is unsaved
    page.locator('.tree-item[data-path="notes.txt"]').click()
    expect(page.locator(".monaco-editor .view-lines")).to_contain_text("beta")
    page.get_by_label("Message").fill("Now edit it")
    page.get_by_label("Message").press("Enter")
    expect(page.locator(".monaco-editor .view-lines")).to_contain_text("gamma from claude")
    expect(page.get_by_test_id("editor-state")).to_have_text("up to date")
    expect(page.get_by_text("Edited notes.txt.")).to_be_visible()

    # --- edit and save with Ctrl-S
    page.locator(".monaco-editor .view-lines").click()
    page.keyboard.press("Control+End")
    page.keyboard.type("mine")
    expect(page.get_by_test_id("editor-state")).to_have_text("unsaved changes")
    page.keyboard.press("Control+s")
    expect(page.get_by_test_id("editor-state")).to_have_text("saved")
    saved = client.get(f"/v1/sessions/{sid}/files/notes.txt").json()
    assert saved["content"] == "alpha\ngamma from claude\nmine"
    page.screenshot(path=str(shots / "editor.png"))

    # --- a conflict: unsaved edits here, a change through the API meanwhile
    page.keyboard.type(" and more")
    expect(page.get_by_test_id("editor-state")).to_have_text("unsaved changes")
    r = client.put(f"/v1/sessions/{sid}/files/notes.txt", content=b"changed by the API\n",
                   headers={"If-Match": f'"{saved["etag"]}"'})
    assert r.status_code == 200, r.text
    page.keyboard.press("Control+s")  # a 412 if it wins the race, else the change shows
    conflict = page.get_by_test_id("conflict")
    expect(conflict).to_contain_text("Conflict")
    expect(conflict).to_contain_text("Nothing was overwritten")
    assert "mine and more" in editor_text(page)  # the user's text is still there
    theirs = client.get(f"/v1/sessions/{sid}/files/notes.txt").json()["content"]
    assert theirs == "changed by the API\n"  # and the server's was not overwritten
    page.screenshot(path=str(shots / "conflict.png"))
    conflict.get_by_role("button", name=re.compile("Keep mine")).click()
    expect(page.get_by_test_id("editor-state")).to_have_text("saved")
    expect(conflict).to_have_count(0)
    assert client.get(f"/v1/sessions/{sid}/files/notes.txt").json()["content"].endswith(
        "mine and more")

    # --- the terminal: a real shell (cd persists, Ctrl-C interrupts), kept over a reload
    page.get_by_role("tab", name="Terminal").click()
    status = page.get_by_test_id("terminal-status")
    expect(status).to_have_attribute("data-state", "connected")
    rows = page.locator(".xterm-rows")
    page.locator(".xterm").click()
    page.keyboard.type("cd /tmp && echo term-$((6*7))")
    page.keyboard.press("Enter")
    expect(rows).to_contain_text("term-42")
    page.keyboard.type("sleep 30; echo woke-$((1+1))")
    page.keyboard.press("Enter")
    # Ctrl-C once sleep runs in the foreground (sooner, the shell would take it).
    wait_for(lambda: '"exit_code":0' in client.post(f"/v1/sessions/{sid}/exec", json={
        "command": "pgrep -x sleep", "timeout": 10}).text.replace(" ", ""), 15, 0.05,
             "sleep to run")
    page.keyboard.press("Control+C")
    page.keyboard.type("pwd; echo back-$((2+5))")
    page.keyboard.press("Enter")
    expect(rows).to_contain_text("back-7", timeout=10_000)
    expect(rows).not_to_contain_text("woke-2")
    page.screenshot(path=str(shots / "terminal.png"))
    page.reload()
    page.get_by_role("tab", name="Terminal").click()
    expect(status).to_have_attribute("data-state", "connected")
    expect(rows).to_contain_text("back-7")  # the same shell, its screen replayed
    page.locator(".xterm").click()
    page.keyboard.type("echo still-$((3*3)) $PWD")
    page.keyboard.press("Enter")
    expect(rows).to_contain_text("still-9 /tmp")

    # --- usage: a point per model call on the chart
    page.get_by_role("tab", name="Usage").click()
    chart = page.locator("figure.chart")
    expect(chart).to_be_visible()
    assert int(chart.get_attribute("data-points")) == len(model.requests) == 6
    expect(chart.locator("canvas")).to_have_count(1)
    page.screenshot(path=str(shots / "usage-session.png"))

    # --- the diff against HEAD
    page.get_by_role("tab", name="Diff").click()
    expect(page.locator(".diff-file")).to_contain_text("notes.txt")
    expect(page.locator(".dl.add", has_text="mine and more")).to_have_count(1)

    # --- export: the workspace as a .tar.gz, with the file as saved
    with page.expect_download() as download:
        page.locator(".session-head").get_by_role("link", name="Export").click()
    data = Path(download.value.path()).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        names = tar.getnames()
        member = next(n for n in names if n.endswith("notes.txt"))
        assert tar.extractfile(member).read().decode().endswith("mine and more")

    # --- the usage page: per day and per session
    page.get_by_role("link", name="Usage").click()
    expect(page.get_by_text(re.compile(r"Today: [1-9][0-9.]*k? tokens"))).to_be_visible()
    per_session = page.locator('figure.chart[aria-label="Tokens and cost per session"]')
    expect(per_session).to_have_attribute("data-points", "1")
    expect(page.get_by_role("cell", name="notes-demo")).to_be_visible()
    expect(page.get_by_test_id("token-budget")).to_have_text("no limit")  # none is set
    # The per-user limits, at their defaults, with this user's use.
    expect(page.get_by_test_id("limit-boxes_awake")).to_contain_text("of 20")
    expect(page.get_by_test_id("limit-disk_mb")).to_contain_text("of 256 GiB")
    expect(page.get_by_test_id("limit-events_per_minute")).to_contain_text("of 12000")
    page.screenshot(path=str(shots / "usage.png"))

    # --- the list shows it; delete it from its page, after a confirmation
    page.get_by_role("link", name="Sessions").click()
    row = page.locator(f'tr[data-session-id="{sid}"]')
    expect(row).to_contain_text("notes-demo")
    expect(row).to_contain_text("idle")
    page.screenshot(path=str(shots / "sessions.png"))
    row.get_by_role("link", name="notes-demo").click()
    page.locator(".session-head").get_by_role("button", name="Delete").click()
    page.get_by_role("button", name="Cancel").click()
    assert client.get(f"/v1/sessions/{sid}").status_code == 200  # cancel deletes nothing
    page.locator(".session-head").get_by_role("button", name="Delete").click()
    page.get_by_role("button", name="Delete session").click()
    expect(page.get_by_role("heading", name="Sessions")).to_be_visible()
    expect(page.locator(f'tr[data-session-id="{sid}"]')).to_have_count(0)
    assert client.get(f"/v1/sessions/{sid}").status_code == 404
    client.close()


def wait_idle(client: httpx.Client, sid: str, min_seq: int, deadline: float = 240.0) -> None:
    # Generous: 10,000 events take ~10 s alone, many times that on a loaded machine.
    seen: dict[str, object] = {}

    def done() -> bool:
        seen.update(client.get(f"/v1/sessions/{sid}").json())
        if seen["status"] == "error":  # the turn failed: say why, at once
            last = int(str(seen["last_seq"]))
            tail = client.get(f"/v1/sessions/{sid}/events", headers={"Accept": "application/json"},
                              params={"after": max(0, last - 20), "limit": 20}).json()
            raise AssertionError(f"the turn failed at seq {last}: " + "; ".join(
                str(e.get("message")) for e in tail["events"] if e["type"] == "session_error"))
        return seen["status"] == "idle" and int(str(seen["last_seq"])) >= min_seq
    try:
        wait_for(done, deadline, 0.2, f"session {sid} to reach seq {min_seq}")
    except AssertionError as exc:  # where it stood: stuck, or only slow
        raise AssertionError(f"{exc}; last seen: status {seen.get('status')}, "
                             f"last_seq {seen.get('last_seq')}") from None


# Scrolls the event pane from the newest event to the oldest, one step a frame, and
# returns every frame's duration (ms): what a reader dragging through the log would get.
SCROLL_THROUGH = """async () => {
  const el = document.querySelector('.event-scroll');
  const frames = [];
  let last = performance.now();
  el.scrollTop = el.scrollHeight;
  await new Promise(r => requestAnimationFrame(r));
  last = performance.now();
  while (el.scrollTop > 0) {
    el.scrollTop = Math.max(0, el.scrollTop - 1500);
    await new Promise(r => requestAnimationFrame(r));
    const now = performance.now();
    frames.push(now - last);
    last = now;
  }
  return {frames, rows: document.querySelectorAll('.vrow').length};
}"""


def test_an_event_pane_of_ten_thousand_events_stays_fast(
        page, server: LiveServer, key: str, model: ModelServer, shots: Path) -> None:
    """A session of 10,000 events: the newest page paints at once (figures printed)."""
    blocks = [f"Step {i}:\n\n```sh\necho {i}\n```\n- one\n- two" if i % 50 == 0
              else f"Line {i}: " + "lorem ipsum " * (i % 7 + 1) for i in range(10_000)]
    model.set_script({"turns": [{"content": blocks}]})
    client = api(server, key)
    sid = client.post("/v1/sessions", json={"name": "ten-thousand"}).json()["id"]
    assert client.post(f"/v1/sessions/{sid}/messages", json={"content": "go"}).status_code == 202
    wait_idle(client, sid, 10_000)
    last_seq = client.get(f"/v1/sessions/{sid}").json()["last_seq"]

    sign_in(page, server, key)
    page.goto(f"{server.url}/sessions/{sid}")
    expect(page.get_by_text("Line 9999:")).to_be_visible()
    painted = page.evaluate(
        "() => performance.getEntriesByName('sophon:events-painted')[0].startTime")
    nav = page.evaluate("() => performance.getEntriesByType('navigation')[0].responseEnd")
    # Only the newest page is fetched and only the rows in view are in the DOM.
    rows = page.locator(".vrow").count()
    assert rows < 80, rows
    assert painted < 3000, f"first useful paint took {painted:.0f} ms"

    # Every older page, then a scroll through all of them.
    more = page.get_by_role("button", name=re.compile(r"Load \d+ earlier"))
    while more.count():
        more.click()
        expect(page.get_by_role("button", name="Loading…")).to_have_count(0)
    expect(page.get_by_text(f"{last_seq:,} events")).to_be_visible()
    got = page.evaluate(SCROLL_THROUGH)
    frames = sorted(got["frames"])
    p95 = frames[int(len(frames) * 0.95)]
    assert got["rows"] < 120, got["rows"]  # virtualised with all 10,000 loaded
    expect(page.get_by_text("Session “ten-thousand” started")).to_be_visible()
    print(f"\n10,000 events: first useful paint {painted:.0f} ms after navigation "
          f"(HTML in at {nav:.0f} ms), {rows} rows in the DOM; scroll through all: "
          f"{len(frames)} frames, median {frames[len(frames) // 2]:.1f} ms, "
          f"p95 {p95:.1f} ms, max {frames[-1]:.1f} ms")
    assert p95 < 100, f"scrolling frames: p95 {p95:.0f} ms"
    client.delete(f"/v1/sessions/{sid}")
    client.close()


def test_the_page_reconnects_after_a_server_restart(
        page, own_server: LiveServer, model: ModelServer) -> None:
    model.set_script({"turns": ["Back after the restart."]})
    key = new_user(own_server)
    client = api(own_server, key)
    sid = client.post("/v1/sessions", json={"name": "restart-me"}).json()["id"]
    sign_in(page, own_server, key)
    page.goto(f"{own_server.url}/sessions/{sid}")
    expect(page.get_by_text("Session “restart-me” started")).to_be_visible()

    own_server.stop()
    expect(page.get_by_text("Lost the live connection")).to_be_visible()
    own_server.start()
    expect(page.get_by_text("Reconnected")).to_be_visible()
    # The stream is live again: a message sent now shows, and nothing shows twice.
    assert client.post(f"/v1/sessions/{sid}/messages",
                       json={"content": "still there?"}).status_code == 202
    expect(page.get_by_text("Back after the restart.")).to_be_visible()
    expect(page.get_by_text("Session “restart-me” started")).to_have_count(1)
    client.close()


def test_a_narrow_window_and_the_keyboard(page, server: LiveServer, key: str,
                                          model: ModelServer, shots: Path) -> None:
    """At phone width the panes become tabs; a message goes with Enter and an approval
    is answered with a key (no mouse on the card)."""
    model.set_script({"turns": [
        {"content": [{"type": "tool_use", "name": "Bash",
                      "input": {"command": "echo k-$((2*3))"}}]},
        "The shell said k-6.",
    ]})
    client = api(server, key)
    sid = client.post("/v1/sessions", json={"name": "narrow"}).json()["id"]
    page.set_viewport_size({"width": 420, "height": 800})
    sign_in(page, server, key)
    page.goto(f"{server.url}/sessions/{sid}")
    page.get_by_role("tab", name="Chat").click()
    box = page.get_by_label("Message")
    box.fill("run it")
    box.press("Enter")
    expect(page.locator(".approval-banner")).to_be_visible()
    page.get_by_role("heading", name="narrow").click()  # focus out of the text box
    page.keyboard.press("a")
    expect(page.get_by_text("The shell said k-6.")).to_be_visible()
    expect(page.locator(".approval-banner")).to_have_count(0)
    page.screenshot(path=str(shots / "narrow.png"))
    page.get_by_role("tab", name="Files").click()
    expect(page.get_by_role("navigation", name="Project files")).to_contain_text("No files yet")
    client.delete(f"/v1/sessions/{sid}")
    client.close()


def test_a_running_commands_output_shows_on_its_card_as_it_prints(
        page, server: LiveServer, key: str, model: ModelServer, shots: Path) -> None:
    gated = ("echo step-1; while [ ! -e /workspace/go ]; do sleep 0.05; done; "
             "echo step-2")
    model.set_script({"turns": [
        {"content": [{"type": "tool_use", "name": "Bash", "input": {"command": gated}}]},
        "Counted."]})
    client = api(server, key)
    sid = client.post("/v1/sessions", json={"name": "live-card",
                                            "approval": {"shell": "allow"}}).json()["id"]
    sign_in(page, server, key)
    page.goto(f"{server.url}/sessions/{sid}")
    assert client.post(f"/v1/sessions/{sid}/messages",
                       json={"content": "count"}).status_code == 202
    # While the command waits on the gate: the card is running and shows its last line.
    card = page.locator(".tool-running", has_text="Bash")
    expect(card.locator(".tool-live")).to_have_text("step-1")
    card.get_by_role("button").first.click()
    expect(card.locator("pre.live-output")).to_contain_text("step-1")
    page.screenshot(path=str(shots / "live-output.png"))
    assert client.put(f"/v1/sessions/{sid}/files/go", content=b"").status_code in (200, 201)
    done = page.locator(".tool-ok", has_text="Bash")
    expect(done.locator("pre.out")).to_contain_text("step-2")
    expect(done.locator(".tool-live")).to_have_count(0)
    client.close()


def test_the_form_offers_only_what_the_server_can_run(page, server: LiveServer,
                                                      key: str) -> None:
    caps = api(server, key).get("/v1/capabilities").json()
    sign_in(page, server, key)
    page.get_by_role("button", name="New session").click()
    for base in caps["bases"]:
        option = page.locator(f'label:has-text("Base") option[value="{base["name"]}"]')
        expect(option).to_contain_text(base["description"])  # what its image holds
        if base["available"]:
            expect(option).to_be_enabled()
        else:  # shown, disabled, with the reason (dotnet where the host has none)
            expect(option).to_be_disabled()
            expect(option).to_contain_text(base["reason"])
    runtime = next(r for r in caps["runtimes"] if r["name"] == "claude-code")
    option = page.locator('label:has-text("Runtime") option[value="claude-code"]')
    if runtime["available"]:
        expect(option).to_be_enabled()
    else:
        expect(option).to_be_disabled()


def test_the_form_offers_the_users_own_images(page, server: LiveServer, key: str) -> None:
    client = api(server, key)
    # Nothing added to generic: the same digest as generic's image, so ready at once.
    made = client.post("/v1/images", json={"name": "my-shell", "from": "generic",
                                           "description": "generic, my way"})
    if made.status_code == 400 and "images are off" in made.text:
        pytest.skip("this server has no images")
    assert made.status_code == 202, made.text
    sign_in(page, server, key)
    page.get_by_role("button", name="New session").click()
    option = page.locator('label:has-text("Base") optgroup[label="Your images"] '
                          'option[value="my-shell"]')
    expect(option).to_contain_text("generic, my way")
    expect(option).to_be_enabled()
    page.get_by_label("Name").fill("on-my-image")
    page.get_by_label("Base").select_option("my-shell")
    # The box's size: the image's defaults as placeholders, and what is asked instead.
    caps = client.get("/v1/capabilities").json()
    generic = next(b for b in caps["bases"] if b["name"] == "generic")
    memory = page.get_by_label("Memory (MiB)")
    expect(memory).to_have_attribute("placeholder", str(generic["limits"]["memory_mb"]))
    expect(memory).to_have_attribute("max", str(caps["limits"]["memory_max_mb"]))
    memory.fill("300")
    page.get_by_role("button", name="Create session").click()
    page.wait_for_url("**/sessions/ses_*")
    sid = page.url.rsplit("/", 1)[-1]
    view = client.get(f"/v1/sessions/{sid}").json()
    assert (view["base"], view["image_name"]) == ("generic", "my-shell"), view
    assert view["limits"]["memory_mb"] == 300, view
    client.close()


def test_the_create_button_is_in_sight_on_a_900_px_high_window(page, server: LiveServer,
                                                                key: str) -> None:
    page.set_viewport_size({"width": 1280, "height": 900})
    sign_in(page, server, key)
    page.get_by_role("button", name="New session").click()
    create = page.get_by_role("button", name="Create session")
    expect(create).to_be_in_viewport()
    page.get_by_label("Name").click()  # and still after the form has scrolled
    page.mouse.wheel(0, 2000)
    expect(create).to_be_in_viewport()


COST_COLOR_PIXELS = """(figure) => {
  const canvas = figure.querySelector("canvas");
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;  // pixels of the cost series' color (#f0b72f)
  for (let i = 0; i < data.length; i += 4) {
    if (Math.abs(data[i] - 240) < 24 && Math.abs(data[i + 1] - 183) < 24 &&
        Math.abs(data[i + 2] - 47) < 30 && data[i + 3] > 200) n++;
  }
  return n;
}"""


def test_the_usage_page_keeps_sessions_apart(page, server: LiveServer, key: str,
                                             model: ModelServer, shots: Path) -> None:
    """Per session, cost is a point per session, not a line joining separate sessions;
    two sessions of one name are told apart."""
    model.set_script({"turns": [
        {"content": "ok", "usage": {"input_tokens": n, "output_tokens": 10}}
        for n in (1000, 3000, 2000)]})
    client = api(server, key)
    for name in ("twin", "twin", "solo"):
        sid = client.post("/v1/sessions", json={"name": name}).json()["id"]
        assert client.post(f"/v1/sessions/{sid}/messages",
                           json={"content": "hi"}).status_code == 202
        wait_for(lambda sid=sid: client.get(f"/v1/sessions/{sid}").json()["usage"]
                 ["cost_usd"] > 0, 30, 0.05, "the turn's usage")
    sign_in(page, server, key)
    page.get_by_role("link", name="Usage").click()
    per_session = page.locator('figure.chart[aria-label="Tokens and cost per session"]')
    expect(per_session).to_have_attribute("data-points", "3")
    expect(page.get_by_role("link", name=re.compile(r"^twin \(\w{6}\)$"))).to_have_count(2)
    expect(page.get_by_role("link", name="solo", exact=True)).to_have_count(1)
    per_day = page.locator('figure.chart[aria-label="Tokens and cost per day"]')
    joined = per_day.evaluate(COST_COLOR_PIXELS)
    apart = per_session.evaluate(COST_COLOR_PIXELS)
    # The control: over days, cost is a line (hundreds of pixels); over sessions, three
    # points of 7 px.
    assert joined > 500, joined
    assert 0 < apart < 400, apart
    per_session.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "usage-sessions.png"))
    client.close()


TUI = """\
import curses

def main(screen):
    h, w = screen.getmaxyx()
    screen.addstr(5, 10, "FULL-SCREEN")
    screen.addstr(6, 10, f"SIZE {h}x{w}")
    screen.refresh()
    while screen.getch() != ord("q"):
        pass

curses.wrapper(main)
"""


def test_a_full_screen_program_runs_in_the_terminal(page, server: LiveServer, key: str,
                                                    shots: Path) -> None:
    """A curses program (as vim or top is) takes the whole screen at the browser's size,
    reads keys raw, and leaves the shell's screen as it was when it quits."""
    client = api(server, key)
    sid = client.post("/v1/sessions", json={"name": "tui", "base": "python"}).json()["id"]
    assert client.put(f"/v1/sessions/{sid}/files/tui.py", content=TUI.encode()).status_code \
        in (200, 201)
    sign_in(page, server, key)
    page.goto(f"{server.url}/sessions/{sid}")
    page.get_by_role("tab", name="Terminal").click()
    expect(page.get_by_test_id("terminal-status")).to_have_attribute("data-state",
                                                                      "connected")
    rows = page.locator(".xterm-rows")
    page.locator(".xterm").click()
    page.keyboard.type("echo before-$((2*4)); python3 tui.py")
    page.keyboard.press("Enter")
    expect(rows).to_contain_text("FULL-SCREEN")
    # The alternate screen: the shell's lines are gone, the text sits where it was put,
    # and the program saw the terminal's real size.
    expect(rows).not_to_contain_text("before-8")
    lines = rows.locator(":scope > div")
    expect(lines.nth(5)).to_have_text(re.compile(r"^\s{10}FULL-SCREEN\s*$"))
    size = re.search(r"SIZE (\d+)x(\d+)", lines.nth(6).inner_text())
    assert size and int(size.group(1)) == lines.count() and int(size.group(2)) > 40, size
    page.screenshot(path=str(shots / "terminal-full-screen.png"))
    page.keyboard.type("x")  # a key read raw: no echo, no Enter needed, still running
    expect(rows).to_contain_text("FULL-SCREEN")
    page.keyboard.type("q")
    expect(rows).to_contain_text("before-8")  # the shell's screen is back as it was
    expect(rows).not_to_contain_text("FULL-SCREEN")
    page.keyboard.type("echo after-$((3*3))")
    page.keyboard.press("Enter")
    expect(rows).to_contain_text("after-9")
    client.delete(f"/v1/sessions/{sid}")
    client.close()


def test_the_form_adds_mcp_servers_and_says_what_is_wrong(page, server: LiveServer,
                                                          key: str) -> None:
    sign_in(page, server, key)
    page.get_by_role("button", name="New session").click()
    page.get_by_label("Name").fill("with-tools")
    servers = page.get_by_label(re.compile("One per line, as server=command"))
    servers.fill("no command here")
    page.get_by_role("button", name="Create session").click()
    expect(page.get_by_role("alert")).to_contain_text("write server=command")
    servers.fill("docs=python3 'docs server.py' -v\nnotes=node notes.js")
    page.get_by_role("button", name="Create session").click()
    expect(page.locator(".session-head")).to_contain_text("with-tools")
    sid = page.url.rsplit("/", 1)[-1]
    got = api(server, key).get(f"/v1/sessions/{sid}").json()["mcp_servers"]
    assert [(m["name"], m["command"]) for m in got] == [
        ("docs", ["python3", "docs server.py", "-v"]), ("notes", ["node", "notes.js"])]


def test_the_settings_tab_changes_a_running_sessions_tools_and_limits(
        page, server: LiveServer, key: str, shots: Path) -> None:
    client = api(server, key)
    sid = client.post("/v1/sessions", json={
        "name": "tools-later", "max_turns": 5,
        "mcp_servers": [{"name": "docs", "command": ["python3", "docs server.py"],
                         "env": {"DOCS_ROOT": "/workspace/docs"}}]}).json()["id"]
    sign_in(page, server, key)
    page.goto(f"{server.url}/sessions/{sid}")
    page.get_by_role("tab", name="Settings").click()
    servers = page.get_by_label(re.compile("MCP servers: one per line"))
    expect(servers).to_have_value("docs=python3 'docs server.py'")  # quoted as typed
    expect(page.get_by_label("Max turns")).to_have_value("5")
    save = page.get_by_role("button", name="Save settings")
    expect(save).to_be_disabled()  # nothing changed yet
    servers.fill("docs=python3 'docs server.py'\nbroken")
    save.click()
    expect(page.get_by_role("alert")).to_contain_text("write server=command or server=URL")
    servers.fill("docs=python3 'docs server.py'\nsearch=https://mcp.example.test/mcp")
    page.get_by_label("Max turns").fill("")
    page.get_by_label("Name").fill("tools-now")
    save.click()
    expect(page.get_by_role("status")).to_contain_text("the next turn uses these settings")
    expect(page.locator(".session-head")).to_contain_text("tools-now")
    page.screenshot(path=str(shots / "settings-tab.png"))
    got = client.get(f"/v1/sessions/{sid}").json()
    assert got["name"] == "tools-now" and got["max_turns"] is None
    assert [(m["name"], m["command"], m["url"], m["env"]) for m in got["mcp_servers"]] == [
        # The unchanged server keeps its environment, which the text does not show.
        ("docs", ["python3", "docs server.py"], None, {"DOCS_ROOT": "/workspace/docs"}),
        ("search", None, "https://mcp.example.test/mcp", {})]
    assert "mcp.example.test:443" in got["network"]["allow"]
    client.close()
