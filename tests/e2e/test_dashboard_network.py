"""The dashboard's network pages in a real browser (Playwright driving Debian's chromium):
the Connectors page, a session's network settings from the New Session form and its
Network tab, refused connections in the event stream, and network approvals answered
from the page.

Two test hosts listen on 127.0.0.2 (inside a box 127.0.0.1 is the box's own loopback),
both opened by the admin (SOPHON_EGRESS_ALLOW_PRIVATE); a session reaches one only when
its list names it. Nothing here leaves the machine. Commands run in the session's box
through the exec API, as a program of the agent's would.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, make_data_dir, wait_for
from tests.e2e.conftest import CHROMIUM, NEEDS_DASHBOARD

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

DEADLINE_MS = 30_000
HOST = "127.0.0.2"
# Shaped like a fine-grained GitHub token; never sent anywhere (no test connects to github).
TOKEN = "github_pat_" + "Zq7" * 12

pytestmark = NEEDS_DASHBOARD

expect = playwright_api.expect
expect.set_options(timeout=DEADLINE_MS)


class _Hello(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.hits += 1  # type: ignore[attr-defined]
        body = b"hello from the test host\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Host:
    """A plain HTTP server on 127.0.0.2 that counts the requests it answers."""

    def __init__(self) -> None:
        self.httpd = ThreadingHTTPServer((HOST, 0), _Hello)
        self.httpd.hits = 0  # type: ignore[attr-defined]
        self.port = int(self.httpd.server_address[1])
        self.addr = f"{HOST}:{self.port}"
        self.url = f"http://{self.addr}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def hits(self) -> int:
        return int(self.httpd.hits)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[Host, Host]]:
    """``listed``: a session's list names it (the control); ``other``: opened by the admin,
    named by no list, so reached only after an approval."""
    a, b = Host(), Host()
    yield a, b
    a.close()
    b.close()


@pytest.fixture(scope="module")
def server(hosts: tuple[Host, Host]) -> Iterator[LiveServer]:
    path = make_data_dir()
    srv = LiveServer(path, env={
        "SOPHON_EGRESS_ALLOW_PRIVATE": ",".join(h.addr for h in hosts)}).start()
    yield srv
    srv.stop()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def http(server: LiveServer, key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120,
                      headers={"Authorization": f"Bearer {key}"}) as c:
        yield c


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, server: LiveServer, key: str) -> Iterator[Any]:
    """A fresh context at 1280x800, signed in as the test's user; page errors fail the
    test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(DEADLINE_MS)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(server.url + "/")
    pg.get_by_label("API key").fill(key)
    pg.get_by_role("button", name="Sign in").click()
    pg.get_by_role("heading", name="Sessions").wait_for()
    yield pg
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    return tmp_path


def fetch(http: httpx.Client, sid: str, url: str) -> str:
    """Fetch ``url`` from the session's box (through the door, as every program does):
    the status, or ``refused`` and the error."""
    code = (f"import urllib.request as u\ntry:\n    print(u.urlopen({url!r}, timeout=60).status)\n"
            "except Exception as e:\n    print('refused', e)\n")
    r = http.post(f"/v1/sessions/{sid}/exec", timeout=180,
                  json={"command": f"python3 - <<'EOF'\n{code}EOF", "timeout": 150})
    r.raise_for_status()
    events = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    return "".join(e.get("data", "") for e in events if e["type"] == "exec_output").strip()


def session(http: httpx.Client, sid: str) -> dict[str, Any]:
    r = http.get(f"/v1/sessions/{sid}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def no_value_in_page(page: Any, value: str) -> None:
    """Nowhere: not in the markup, not in a field's value, not in the page's storage."""
    assert value not in page.content()
    fields = page.evaluate(
        "() => [...document.querySelectorAll('input, textarea')].map(e => e.value)")
    assert value not in json.dumps(fields)
    stored = page.evaluate(
        "() => JSON.stringify({...localStorage}) + JSON.stringify({...sessionStorage})")
    assert value not in stored


def add_github_connector(page: Any, name: str, push: str = "") -> None:
    page.get_by_role("link", name="Connectors").click()
    page.get_by_role("heading", name="Add a connector").wait_for()
    form = page.locator("form", has=page.get_by_role("heading", name="Add a connector"))
    form.get_by_label("Name").fill(name)
    form.get_by_label("Type").select_option("github")
    form.get_by_label("Value").fill(TOKEN)
    if push:
        form.get_by_label("Pushes may go to").fill(push)
    form.get_by_role("button", name="Add connector").click()
    expect(page.locator(f"tr[data-connector='{name}']")).to_be_visible()


# --- the Connectors page --------------------------------------------------------------------


def test_connectors_page_adds_lists_and_deletes_and_never_shows_a_value(
        page: Any, http: httpx.Client, shots: Path) -> None:
    page.get_by_role("link", name="Connectors").click()
    expect(page.get_by_text("No connectors yet.")).to_be_visible()
    form = page.locator("form", has=page.get_by_role("heading", name="Add a connector"))

    # A value the server refuses: its sentence and code on the page, nothing created.
    form.get_by_label("Name").fill("gh-work")
    form.get_by_label("Value").fill("not-a-token")
    form.get_by_role("button", name="Add connector").click()
    expect(form.get_by_role("alert")).to_contain_text("does not look like a GitHub token")
    expect(form.get_by_role("alert")).to_contain_text("(invalid_request)")
    assert http.get("/v1/connectors").json()["connectors"] == []

    # A github connector with a push rule; an http one for a host of the user's own.
    form.get_by_label("Value").fill(TOKEN)
    form.get_by_label("Pushes may go to").fill("acme/api:main\nacme/web")
    form.get_by_role("button", name="Add connector").click()
    row = page.locator("tr[data-connector='gh-work']")
    expect(row).to_contain_text("github")
    expect(row).to_contain_text("acme/api:main, acme/web")
    expect(form.get_by_label("Value")).to_have_value("")

    form.get_by_label("Name").fill("metrics")
    form.get_by_label("Type").select_option("http")
    form.get_by_label("Host", exact=True).fill("metrics.example.com:8443")
    form.get_by_label("Header", exact=True).fill("X-Api-Key")
    form.get_by_label("Value").fill("mk-" + "s3cr3t" * 4)
    form.get_by_label("The execution API's runs get it").select_option(
        label="Only with the key you signed in with")
    form.get_by_role("button", name="Add connector").click()
    row = page.locator("tr[data-connector='metrics']")
    expect(row).to_contain_text("metrics.example.com:8443")
    expect(row).to_contain_text("X-Api-Key")
    expect(row).to_contain_text("one key")
    page.screenshot(path=str(shots / "connectors.png"), full_page=True)

    listed = {c["name"]: c for c in http.get("/v1/connectors").json()["connectors"]}
    assert listed["gh-work"]["push"] == ["acme/api:main", "acme/web"]
    [signed_in_with] = [k["id"] for k in http.get("/v1/keys").json()["keys"] if k["current"]]
    assert (listed["metrics"]["host"], listed["metrics"]["header"], listed["metrics"]["execute"],
            listed["metrics"]["keys"]) == ("metrics.example.com:8443", "X-Api-Key", False,
                                           [signed_in_with])
    for value in (TOKEN, "mk-" + "s3cr3t" * 4):
        no_value_in_page(page, value)
    page.reload()
    expect(page.locator("tr[data-connector='metrics']")).to_be_visible()
    for value in (TOKEN, "mk-" + "s3cr3t" * 4):
        no_value_in_page(page, value)

    # Delete asks first; Cancel keeps it, the confirmed delete removes it on the server.
    page.get_by_role("button", name="Delete connector metrics").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Delete the connector “metrics”?")
    dialog.get_by_role("button", name="Cancel").click()
    expect(page.locator("tr[data-connector='metrics']")).to_be_visible()
    assert len(http.get("/v1/connectors").json()["connectors"]) == 2
    page.get_by_role("button", name="Delete connector metrics").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete connector").click()
    expect(page.locator("tr[data-connector='metrics']")).to_have_count(0)
    assert [c["name"] for c in http.get("/v1/connectors").json()["connectors"]] == ["gh-work"]


# --- a session's network: settings, refusals, traffic ---------------------------------------


def test_a_session_with_a_list_and_a_connector_shows_refusals_and_takes_edits(
        page: Any, http: httpx.Client, hosts: tuple[Host, Host], shots: Path) -> None:
    listed, other = hosts
    add_github_connector(page, "gh-work")
    page.get_by_role("link", name="Sessions").click()
    page.get_by_role("button", name="New session").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Name", exact=True).fill("net-demo")
    dialog.get_by_label("Base").select_option("python")
    dialog.get_by_label("Hosts it may reach").fill(f"{listed.addr}\n")
    dialog.get_by_role("checkbox", name="gh-work").check()
    expect(dialog).to_contain_text("pypi.org")  # the python base's own list, said
    page.screenshot(path=str(shots / "new-session-network.png"), full_page=True)
    dialog.get_by_role("button", name="Create session").click()
    expect(page.get_by_role("heading", name="net-demo")).to_be_visible()
    sid = page.url.rsplit("/", 1)[-1]

    view = session(http, sid)
    assert view["network"] == {"allow": [listed.addr], "ask": False}
    assert view["connectors"] == ["gh-work"]

    # The listed host is reached (the control); the other is refused, and the stream
    # shows it as a card: host:port, the rule, the sentence the program got.
    assert fetch(http, sid, listed.url) == "200"
    hits = other.hits
    out = fetch(http, sid, other.url)
    assert out.startswith("refused") and "403" in out, out
    assert other.hits == hits
    card = page.locator(".net-denied")
    expect(card).to_have_count(1)
    expect(card).to_contain_text(f"{other.addr}")
    expect(card).to_contain_text("not on the list")
    expect(card.locator(".rule-tag")).to_have_attribute("title", "rule: not_allowed")
    expect(card).to_contain_text("is not on this sandbox's network list")  # the door's
    assert card.get_attribute("data-rule") == "not_allowed"
    expect(page.get_by_test_id("network-chip")).to_contain_text("1 refused")
    page.screenshot(path=str(shots / "session-refused.png"))

    # Where the tokens are: the traffic and the refusal.
    page.get_by_role("tab", name="Usage").click()
    stats = page.get_by_test_id("network-usage")
    expect(stats).to_contain_text("Refused1")
    expect(stats.locator("div", has_text="Connections")).not_to_contain_text("Connections0")

    # The Network tab shows the settings; adding the other host there (PATCH) opens it.
    page.get_by_role("tab", name="Network").click()
    summary = page.get_by_test_id("network-summary")
    expect(summary).to_contain_text(listed.addr)
    expect(summary).to_contain_text("pypi.org")
    expect(summary).to_contain_text("gh-work")
    expect(summary).to_contain_text("other hosts: refused")
    box = page.get_by_label("Hosts it may reach")
    expect(box).to_have_value(listed.addr)
    expect(page.get_by_role("checkbox", name="gh-work")).to_be_checked()
    box.fill(f"{listed.addr}\n{other.addr}")
    page.get_by_label("Ask before connecting to other hosts").check()
    page.get_by_role("button", name="Save network settings").click()
    expect(page.get_by_role("status").filter(has_text="Saved")).to_be_visible()
    expect(summary).to_contain_text(other.addr)
    page.screenshot(path=str(shots / "session-network-tab.png"))
    view = session(http, sid)
    assert view["network"] == {"allow": [listed.addr, other.addr], "ask": True}
    assert view["connectors"] == ["gh-work"]
    assert fetch(http, sid, other.url) == "200"
    assert other.hits == hits + 1

    # A rule the server refuses is its sentence on the page, and nothing changes.
    box.fill("http://not a host/")
    page.get_by_role("button", name="Save network settings").click()
    expect(page.get_by_role("alert")).to_be_visible()
    assert session(http, sid)["network"]["allow"] == [listed.addr, other.addr]
    no_value_in_page(page, TOKEN)


def test_a_network_approval_is_answered_from_the_page(
        page: Any, http: httpx.Client, server: LiveServer, hosts: tuple[Host, Host],
        shots: Path) -> None:
    _, other = hosts
    r = http.post("/v1/sessions", json={"name": "ask-net", "base": "python",
                                        "network": {"ask": True}})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    page.goto(f"{server.url}/sessions/{sid}")
    expect(page.get_by_role("heading", name="ask-net")).to_be_visible()

    with ThreadPoolExecutor(1) as pool:
        # Denied from the card: the program gets a 403, the host sees nothing.
        hits = other.hits
        fetched: Future[str] = pool.submit(fetch, http, sid, other.url)
        card = page.locator(".network-approval.waiting")
        expect(card).to_contain_text(f"Allow a connection to {other.addr}?")
        banner = page.locator(".approval-banner")
        expect(banner).to_contain_text(f"Network approval: connect to {other.addr}?")
        expect(banner.get_by_role("button", name="Allow and remember")).to_be_visible()
        page.screenshot(path=str(shots / "network-approval.png"))
        card.get_by_role("button", name="Deny").click()
        out = fetched.result(120)
        assert out.startswith("refused") and "403" in out, out
        assert other.hits == hits
        expect(page.locator(".net-denied[data-rule='approval_denied']")).to_contain_text(
            other.addr)
        expect(page.locator(".network-approval.answered").first).to_contain_text("Denied")

        # Allowed and remembered from the card: the fetch completes, the host is on the
        # session's list, and the next connection asks nobody.
        fetched = pool.submit(fetch, http, sid, other.url)
        card = page.locator(".network-approval.waiting")
        expect(card).to_contain_text(other.addr)
        card.get_by_role("button", name="Allow and remember").click()
        assert fetched.result(120) == "200"
    assert other.hits == hits + 1
    expect(page.locator(".network-approval.answered").nth(1)).to_contain_text(
        "added to the session's list")
    assert session(http, sid)["network"]["allow"] == [other.addr]
    assert fetch(http, sid, other.url) == "200"
    requests = [e for e in http.get(f"/v1/sessions/{sid}/events", params={"after": 0},
                                    headers={"Accept": "application/json"}).json()["events"]
                if e["type"] == "approval_request"]
    assert [e["tool"] for e in requests] == ["Network", "Network"]
    page.get_by_role("tab", name="Network").click()
    expect(page.get_by_test_id("network-summary")).to_contain_text(other.addr)
    page.screenshot(path=str(shots / "network-approval-answered.png"))

    # The traffic counts the approved connections and the denied one, on the page too.
    def counted() -> dict[str, int] | None:
        net = http.get(f"/v1/sessions/{sid}/usage").json()["network"]
        return net if net["connections"] >= 2 and net["denied"] >= 1 else None

    net = wait_for(counted, 20, 0.2, "the usage API to count the connections")
    assert isinstance(net, dict) and net["bytes_in"] > 0
    page.get_by_role("tab", name="Usage").click()
    stats = page.get_by_test_id("network-usage")
    expect(stats).to_contain_text("Refused1")
    expect(stats).to_contain_text(f"Connections{net['connections']}")
    expect(page.get_by_test_id("network-chip")).to_contain_text("1 refused")
