"""Code in a session's box calls the model as the session: the official anthropic SDK,
configured by nothing but the environment every exec gets, reaches the model gateway
through the egress door with the session's own token; the call is metered; the
provider key is in no variable, file or process of the box."""

from __future__ import annotations

import importlib.metadata as metadata
import io
import json
import re
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sophon.testing import ModelServer
from tests.conftest import LiveServer, make_data_dir, wait_for

PROVIDER_KEY = "sk-ant-test-provider-key-kept-on-the-server-0123456789"
PART = 3 * 1024 * 1024  # under the API's 4 MiB body limit


def sdk_tarball() -> bytes:
    """The anthropic SDK and what it needs, from this virtualenv (the box's python is
    the host's, the same version, and tests reach no package index)."""
    todo, seen, files = ["anthropic"], set(), []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for req in dist.requires or []:
            if "extra ==" not in req:
                todo.append(re.split(r"[<>=!; \[]", req)[0])
        for f in dist.files or []:
            path = Path(str(dist.locate_file(f)))
            if path.is_file() and "__pycache__" not in f.parts and not str(f).startswith(".."):
                files.append((path, str(f)))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, arc in files:
            tar.add(path, arcname=arc)
    return buf.getvalue()


@pytest.fixture(scope="module")
def model() -> Iterator[ModelServer]:
    with ModelServer(["hello from the gateway"] * 50) as ms:
        yield ms


@pytest.fixture(scope="module")
def srv(model: ModelServer) -> Iterator[LiveServer]:
    path = make_data_dir()
    server = LiveServer(path, env={"ANTHROPIC_API_KEY": PROVIDER_KEY,
                                   "ANTHROPIC_BASE_URL": model.url}).start()
    yield server
    server.stop()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def http(srv: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.url, timeout=120,
                      headers={"Authorization": f"Bearer {srv.add_user()}"}) as c:
        yield c


def run(http: httpx.Client, sid: str, command: str) -> tuple[str, int | None]:
    r = http.post(f"/v1/sessions/{sid}/exec", json={"command": command, "timeout": 120})
    r.raise_for_status()
    out, code = [], None
    for line in r.text.splitlines():
        ev = json.loads(line)
        if ev["type"] == "exec_output":
            out.append(ev["data"])
        elif ev["type"] == "exec_end":
            code = ev["exit_code"]
    return "".join(out), code


def test_the_anthropic_sdk_in_a_box_calls_the_model_as_the_session(
        http: httpx.Client, model: ModelServer) -> None:
    sid = http.post("/v1/sessions", json={"name": "sdk", "base": "python"}).json()["id"]
    blob = sdk_tarball()
    for i in range(0, len(blob), PART):
        r = http.put(f"/v1/sessions/{sid}/files/.sdk/part{i // PART:03d}",
                     content=blob[i:i + PART])
        assert r.status_code in (200, 201), r.text
    out, code = run(http, sid, "cd .sdk && cat part* | tar -xzf - && rm part*")
    assert code == 0, out
    script = ("import anthropic\n"
              "client = anthropic.Anthropic()\n"  # everything from the environment
              "m = client.messages.create(model='claude-sonnet-4-5', max_tokens=50,"
              " messages=[{'role': 'user', 'content': 'hi'}])\n"
              "print('answer:', m.content[0].text)\n")
    out, code = run(http, sid, f"PYTHONPATH=/workspace/.sdk python3 - <<'EOF'\n{script}EOF")
    assert code == 0, out
    assert "answer: hello from the gateway" in out
    # The provider got the server's key, not the box's token.
    assert model.request_headers[-1].get("x-api-key") == PROVIDER_KEY

    calls = wait_for(lambda: http.get(f"/v1/sessions/{sid}/usage").json()["calls"], 10,
                     what="the call to be metered")
    assert len(calls) == 1  # type: ignore[arg-type]

    # The key is nowhere in the box: environment, files, any process's environment.
    out, _ = run(http, sid, "env; grep -rsl -- 'provider-key-kept' /workspace /home /tmp "
                            "/etc /opt /proc/*/environ 2>/dev/null; true")
    assert PROVIDER_KEY not in out and "provider-key-kept" not in out


def test_a_box_token_is_the_sessions_own(http: httpx.Client, srv: LiveServer) -> None:
    """The token reaches the gateway only as its session: another session's box gets
    another, a made-up one is refused, and it stops working with its session."""
    a = http.post("/v1/sessions", json={"name": "a"}).json()["id"]
    b = http.post("/v1/sessions", json={"name": "b"}).json()["id"]
    tok_a = run(http, a, "printf %s \"$ANTHROPIC_AUTH_TOKEN\"")[0]
    tok_b = run(http, b, "printf %s \"$ANTHROPIC_AUTH_TOKEN\"")[0]
    assert tok_a and tok_b and tok_a != tok_b
    body = {"model": "claude-sonnet-4-5", "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}]}

    def call(token: str) -> int:
        return httpx.post(f"{srv.url}/v1/messages", json=body,
                          headers={"x-api-key": token}).status_code

    assert call(tok_a) == 200  # control
    assert call(tok_a[:-1] + ("0" if tok_a[-1] != "0" else "1")) == 401
    http.delete(f"/v1/sessions/{a}").raise_for_status()
    assert call(tok_a) == 401


CURL_MESSAGE = ("curl -s \"$ANTHROPIC_BASE_URL/v1/messages\" "
                "-H \"x-api-key: $ANTHROPIC_AUTH_TOKEN\" "
                "-H 'content-type: application/json' -H 'anthropic-version: 2023-06-01' "
                "-d '{\"model\": \"claude-sonnet-4-5\", \"max_tokens\": 5, "
                "\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}'")
OWN_KEY = "sk-ant-users-own-key-0123456789abcdefghij"


def test_an_anthropic_connector_with_a_value_is_the_key_its_calls_use(
        http: httpx.Client, model: ModelServer) -> None:
    r = http.post("/v1/connectors", json={"name": "mine", "type": "anthropic",
                                          "value": OWN_KEY, "execute": True})
    assert r.status_code == 201, r.text
    sid = http.post("/v1/sessions", json={"name": "own", "connectors": ["mine"]}).json()["id"]
    out, code = run(http, sid, CURL_MESSAGE)
    assert code == 0 and "hello from the gateway" in out, out
    assert model.request_headers[-1].get("x-api-key") == OWN_KEY
    # Control: a session without the connector calls with the server's key.
    other = http.post("/v1/sessions", json={"name": "server's"}).json()["id"]
    out, code = run(http, other, CURL_MESSAGE)
    assert code == 0 and "hello from the gateway" in out, out
    assert model.request_headers[-1].get("x-api-key") == PROVIDER_KEY

    # An execution API thread of a user whose anthropic connector is marked for it gets
    # the gateway too, with a token of its own box, and calls with the connector's key.
    r = http.post("/v1/sandbox/execute", json={
        "code": CURL_MESSAGE + "; echo; env | grep -c sk-ant- || true", "language": "bash",
        "thread_id": "with-claude", "timeout": 60})
    assert r.status_code == 200, r.text
    stdout = r.json()["stdout"]
    assert "hello from the gateway" in stdout, stdout
    assert stdout.rstrip().endswith("0")  # no provider key in the thread's environment
    assert model.request_headers[-1].get("x-api-key") == OWN_KEY
