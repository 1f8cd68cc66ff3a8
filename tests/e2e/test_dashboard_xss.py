"""XSS through the dashboard, in Debian's chromium: a session name, a file name and its
content, a user's message, the model's text (Markdown, with javascript: links), a tool's
output and an exec's output, all carrying HTML and script, are shown as text and never
run. The control injects the same payload as HTML into the page and sees it run, so the
probe (``window.__xss``) does detect a script that runs.

The browser, the page and the signed-in user come from test_dashboard.py; the server
(with the scripted model) from this directory's conftest.
"""

from __future__ import annotations

import json

import httpx
import pytest

from sophon.testing import ModelServer
from tests.conftest import LiveServer, wait_for
from tests.e2e.test_dashboard import (  # noqa: F401 (pytestmark: the same skips)
    api,
    expect,
    pytestmark,
    sign_in,
)

IMG = "<img src=x onerror=window.__xss=1>"
SCRIPT = "</script><script>window.__xss=1</script>"
SVG = "<svg onload=window.__xss=1>"
NAME = f"xss {IMG} {SVG}"
FILE = f"{IMG}.txt"
TOOL_CMD = f"printf '%s\\n' 'tool-{IMG}' 'tool-{SVG}'"
EXEC_CMD = f"printf '%s\\n' 'exec-{IMG}' 'exec-{SCRIPT}'"
# The model's reply: the payloads as plain text, in a code block, and as links.
REPLY = "\n".join([
    f"said-{IMG}",
    "",
    "```html",
    f"code-{SCRIPT}",
    "```",
    "",
    "[click me](javascript:window.__xss=1) and "
    "<a href=\"javascript:window.__xss=1\">raw link</a>",
])
SCRIPT_TURNS = {"turns": [
    {"content": [REPLY, {"type": "tool_use", "name": "Bash", "input": {"command": TOOL_CMD}}]},
    {"content": "xss-done"},
]}

# Anything in the page that would run: a handler attribute or a javascript: link.
ACTIVE = """() => {
  const bad = [];
  for (const el of document.querySelectorAll('*')) {
    for (const a of el.attributes) {
      if (a.name.startsWith('on') || /^\\s*javascript:/i.test(a.value)) {
        bad.push(el.tagName + ' ' + a.name + '=' + a.value);
      }
    }
  }
  return bad;
}"""


def assert_nothing_ran(pg) -> None:  # type: ignore[no-untyped-def]
    assert pg.evaluate("() => window.__xss") is None
    assert pg.evaluate(ACTIVE) == []


def test_html_from_users_workloads_and_the_model_is_shown_never_run(
        page, server: LiveServer, key: str, model: ModelServer) -> None:  # noqa: F811
    model.set_script(SCRIPT_TURNS)
    with api(server, key) as client:
        r = client.post("/v1/sessions", json={"name": NAME, "starter": {"type": "empty"},
                                              "approval": {"shell": "allow"}})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        r = client.put(f"/v1/sessions/{sid}/files/{FILE}", content=f"file-{SCRIPT}\n".encode())
        assert r.status_code == 201, r.text
        r = client.post(f"/v1/sessions/{sid}/exec", json={"command": EXEC_CMD})
        assert r.status_code == 200 and '"exit_code":0' in r.text.replace(" ", ""), r.text
        r = client.post(f"/v1/sessions/{sid}/messages", json={"content": f"asked-{IMG} {SCRIPT}"})
        assert r.status_code == 202, r.text

        def events() -> list[dict]:
            got = client.get(f"/v1/sessions/{sid}/events", params={"limit": 5000},
                             headers={"Accept": "application/json"})
            return list(got.json()["events"])

        wait_for(lambda: any(e["type"] == "assistant" and e["text"] == "xss-done"
                             for e in events()), 60, 0.2, "the scripted turn to end")
        wait_for(lambda: any(e["type"] == "file_change" and e["path"] == FILE
                             for e in events()), 30, 0.2, "the file change")
        results = [e for e in events() if e["type"] == "tool_result"]
        assert results and f"tool-{IMG}" in results[0]["content"], results

    sign_in(page, server, key)
    # The sessions list: the name as text.
    row = page.locator(f'tr[data-session-id="{sid}"]')
    expect(row).to_contain_text(NAME)
    assert_nothing_ran(page)

    # The session page: heading, messages, the model's Markdown, the file tree.
    row.get_by_role("link").first.click()
    expect(page.get_by_role("heading", name=NAME)).to_be_visible()
    expect(page.locator(".msg.user")).to_contain_text(f"asked-{IMG} {SCRIPT}")
    reply = page.locator(".msg.assistant").first
    expect(reply).to_contain_text(f"said-{IMG}")
    expect(reply.locator("pre")).to_contain_text(f"code-{SCRIPT}")
    expect(reply).to_contain_text("javascript:window.__xss=1")  # a link shown, not made
    expect(reply).to_contain_text('<a href="javascript:window.__xss=1">raw link</a>')
    expect(page.get_by_text("xss-done")).to_be_visible()
    item = page.locator(".tree-item").filter(has_text=FILE)
    expect(item).to_be_visible()
    assert_nothing_ran(page)

    # The tool's and the exec's output, unfolded.
    tool = page.locator(".fold-row", has_text="Bash").first
    tool.get_by_role("button").first.click()
    expect(tool.locator("pre.out")).to_contain_text(f"tool-{IMG}")
    expect(tool.locator("pre.out")).to_contain_text(f"tool-{SVG}")
    exec_row = page.locator(".fold-row.exec").first
    exec_row.get_by_role("button").first.click()
    expect(exec_row.locator("pre")).to_contain_text(f"exec-{SCRIPT}")
    expect(exec_row.locator("pre")).to_contain_text(f"exec-{IMG}")
    assert_nothing_ran(page)

    # The file, opened in the editor.
    item.click()
    expect(page.locator(".monaco-editor .view-lines")).to_contain_text("file-</script>")
    assert_nothing_ran(page)

    # Control: the same payload, made HTML, does run, and the probe sees it.
    page.evaluate(f"() => {{ const d = document.createElement('div'); "
                  f"d.innerHTML = {json.dumps(IMG)}; document.body.appendChild(d); }}")
    page.wait_for_function("() => window.__xss === 1")
    assert page.evaluate(ACTIVE), "the probe does not see an onerror attribute"


@pytest.mark.parametrize("path", ["/", "/sessions"])
def test_the_page_refuses_to_be_framed_in_the_browser(
        page, server: LiveServer, path: str) -> None:  # noqa: F811
    """Chromium honours the headers: another origin's page that frames the dashboard
    gets nothing in its frame. Control: a page it may frame loads there."""
    r = httpx.get(server.url + path, timeout=10)
    assert r.headers["x-frame-options"] == "DENY"
    framed = {"done": False}

    def host(route) -> None:  # type: ignore[no-untyped-def]
        framed["done"] = True
        route.fulfill(content_type="text/html", body=(
            f'<iframe name=app src="{server.url}{path}"></iframe>'
            f'<iframe id=ok srcdoc="<p id=inner>framed fine</p>"></iframe>'))

    page.route("http://evil.example/", host)
    page.goto("http://evil.example/")
    assert framed["done"]
    ok = page.frame_locator("#ok").locator("#inner")
    expect(ok).to_have_text("framed fine")
    # A refused frame is left on Chromium's error page, with none of the app in it.
    def refused() -> str | None:
        frame = page.frame(name="app")
        url = frame.url if frame is not None else ""
        return url if url.startswith("chrome-error://") else None

    wait_for(refused, 15, 0.1, "the dashboard's frame to be refused")
    assert page.frame(name="app").evaluate("() => document.querySelector('#root')") is None
