"""What the server tells a browser: the dashboard's page may not be framed by another
site, the API answers JSON as JSON (so text a user or a workload chose is never served
as a page of this origin), files come back as bytes to save, and the one HTML page that
names something from the request escapes it."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import LiveServer
from tests.security.helpers import live_server, thread_name

PAYLOAD = "<img src=x onerror=window.__xss=1></script><script>window.__xss=1</script>"
INDEX = "<!doctype html><title>built</title><div id=root></div>"


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server serving a dashboard build of its own (the repository's may be absent)."""
    dist = tmp_path_factory.mktemp("ui") / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text(INDEX)
    (dist / "assets" / "app-1234.js").write_text("console.log(1)")
    with live_server({"SOPHON_UI_DIR": str(dist)}) as srv:
        yield srv


@pytest.fixture
def api(web: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=web.url, timeout=60,
                      headers={"Authorization": f"Bearer {web.add_user()}"}) as c:
        yield c


def test_the_page_may_not_be_framed(web: LiveServer) -> None:
    for path in ("/", "/sessions", "/sessions/s_anything"):  # the page, and its fallback
        r = httpx.get(web.url + path, timeout=10)
        assert r.status_code == 200 and r.text == INDEX, path  # control: it is the page
        assert r.headers["content-type"].startswith("text/html")
        assert r.headers["x-frame-options"] == "DENY", path
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], path
        assert r.headers["x-content-type-options"] == "nosniff", path
    r = httpx.get(web.url + "/assets/app-1234.js", timeout=10)
    assert r.status_code == 200 and r.headers["x-content-type-options"] == "nosniff"


def is_json(r: httpx.Response) -> bool:
    return r.headers["content-type"].split(";")[0].strip() == "application/json"


def test_text_a_user_chose_comes_back_as_json_never_as_a_page(
    web: LiveServer, api: httpx.Client
) -> None:
    r = api.post("/v1/sessions", json={"name": PAYLOAD, "starter": {"type": "empty"}})
    assert r.status_code == 201 and is_json(r), r.text
    sid = r.json()["id"]
    assert r.json()["name"] == PAYLOAD  # control: the payload is stored as it was sent
    r = api.put(f"/v1/sessions/{sid}/files/page.html", content=PAYLOAD.encode())
    assert r.status_code == 201 and is_json(r), r.text
    out = api.post(f"/v1/sessions/{sid}/exec", json={"command": f"printf '%s' '{PAYLOAD}'"})
    assert out.headers["content-type"].startswith("application/x-ndjson")
    assert PAYLOAD in "".join(json.loads(x).get("data", "") for x in out.text.splitlines())
    answers = [
        api.get(f"/v1/sessions/{sid}"),
        api.get("/v1/sessions"),
        api.get(f"/v1/sessions/{sid}/files/page.html"),
        api.get(f"/v1/sessions/{sid}/files"),
        api.get(f"/v1/sessions/{sid}/events", headers={"Accept": "application/json"}),
        api.get(f"/v1/sessions/{sid}/files/{PAYLOAD.replace('/', '_')}"),  # a 404 naming it
        api.get(f"/v1/{PAYLOAD.replace('/', '_')}"),                      # no such route
        httpx.get(f"{web.url}/v1/sessions/{sid}", timeout=10),            # no key: 401
        api.post("/v1/sessions", json={"name": PAYLOAD, "model": PAYLOAD}),  # a 400
    ]
    for r in answers:
        assert is_json(r), (r.request.url, r.status_code, r.headers["content-type"])
    assert PAYLOAD in answers[2].json()["content"]  # control: the payload is in there


def test_a_downloaded_file_is_bytes_to_save(api: httpx.Client) -> None:
    thread = thread_name("html")
    body = PAYLOAD.encode()
    grant = api.post("/v1/files/upload_url", json={"source": "thread", "id": thread,
                                                   "path": "page.html",
                                                   "content_length": len(body),
                                                   "content_type": "text/html"})
    assert grant.status_code == 200, grant.text
    assert httpx.put(grant.json()["url"], content=body, timeout=30).status_code == 200
    url = api.post("/v1/files/download_url", json={"source": "thread", "id": thread,
                                                   "path": "page.html"}).json()["url"]
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200 and r.content == body  # control: the file is the page
    assert r.headers["content-type"] == "application/octet-stream"


def test_the_sign_in_link_page_escapes_what_the_link_says(web: LiveServer) -> None:
    r = httpx.get(f"{web.url}/v1/auth/link/{PAYLOAD.replace('/', '_')}", timeout=10)
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "<img" not in r.text and "<script>" not in r.text, r.text
    assert "Unknown sign-in link" in r.text  # control: it is the page that would show it

