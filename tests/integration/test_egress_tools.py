"""Ordinary tools work through the egress door, with nothing but what every exec is told
(HTTP(S)_PROXY, npm_config_*, ...): curl, wget, Python's urllib (and requests when the
box has it), pip from a local index, Node's fetch, npm from a local registry, git clone
and push over smart HTTP; the execution API's threads by SOPHON_EGRESS_EXECUTE; and the
door under load, silence and a server restart.

The test hosts are on 127.0.0.2 (tests/integration/egress_hosts.py): inside a box
127.0.0.1 is the box's own loopback, so a box reaches them only through the door, and
only because the server opens them (SOPHON_EGRESS_ALLOW_PRIVATE) and the box's list
names them. Every refusal here has a control beside it that reaches an allowed host.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from baponi import Baponi

from tests.conftest import LiveServer, make_data_dir, wait_for
from tests.integration.egress_hosts import (
    FILE_TEXT,
    HOST,
    NPM_PACKAGE,
    WHEEL_MODULE,
    WHEEL_PROJECT,
    FileServer,
    GitServer,
    NpmRegistry,
    PackageIndex,
    TestCA,
)

CAP = 50  # SOPHON_EGRESS_MAX_CONNECTIONS_PER_BOX on the module's server
PARALLEL = 1000  # the figure: one box opening a thousand at once
DOOR = "127.0.0.1:3128"  # the door inside every box (SOPHON_EGRESS_BOX_PORT's default)
CA_PATH = "/workspace/test-ca.pem"


@dataclass
class Hosts:
    ca: TestCA
    files: FileServer
    tls: FileServer
    index: PackageIndex
    npm: NpmRegistry
    git: GitServer
    git_tls: GitServer
    unopened: FileServer  # on 127.0.0.2 too, but not in SOPHON_EGRESS_ALLOW_PRIVATE

    @property
    def opened(self) -> list[str]:
        return [h.addr for h in (self.files, self.tls, self.index, self.npm, self.git,
                                 self.git_tls)]


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    ca = TestCA()
    h = Hosts(ca, FileServer(), FileServer(tls=ca), PackageIndex(), NpmRegistry(),
              GitServer(), GitServer(tls=ca), FileServer())
    yield h
    for srv in (h.files, h.tls, h.index, h.npm, h.git, h.git_tls, h.unopened):
        if isinstance(srv, FileServer):
            srv.release.set()
        srv.close()
    ca.close()


def serve(hosts: Hosts, **env: str) -> LiveServer:
    return LiveServer(make_data_dir(), env={
        "SOPHON_EGRESS_ALLOW_PRIVATE": ",".join(hosts.opened), **env}).start()


@pytest.fixture(scope="module")
def server(hosts: Hosts) -> Iterator[LiveServer]:
    srv = serve(hosts, SOPHON_EGRESS_MAX_CONNECTIONS_PER_BOX=str(CAP),
                SOPHON_EGRESS_HEAD_TIMEOUT_SECONDS="1")
    yield srv
    srv.stop()
    shutil.rmtree(srv.data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with client_for(server, server.add_user()) as c:
        yield c


def client_for(srv: LiveServer, key: str) -> httpx.Client:
    return httpx.Client(base_url=srv.url, timeout=180,
                        headers={"Authorization": f"Bearer {key}"})


def new_session(http: httpx.Client, base: str, allow: list[str], ca: TestCA | None = None
                ) -> str:
    r = http.post("/v1/sessions", json={
        "name": f"egress-{base}", "starter": {"type": "empty"}, "base": base,
        "network": {"allow": allow}, "approval": {"shell": "allow"}})
    assert r.status_code == 201, r.text
    sid = str(r.json()["id"])
    if ca is not None:
        put = http.put(f"/v1/sessions/{sid}/files/test-ca.pem", content=ca.ca_pem)
        assert put.status_code in (200, 201), put.text
    return sid


@pytest.fixture(scope="module")
def python_box(http: httpx.Client, hosts: Hosts) -> str:
    """A python session whose list names every opened test host, the test CA in its
    workspace."""
    return new_session(http, "python", hosts.opened, hosts.ca)


@pytest.fixture(scope="module")
def node_box(http: httpx.Client, hosts: Hosts) -> str:
    return new_session(http, "node", hosts.opened, hosts.ca)


@pytest.fixture(scope="module")
def bare_box(http: httpx.Client) -> str:
    """A generic session with nothing on its list: the refusals' box."""
    return new_session(http, "generic", [])


@pytest.fixture(scope="module")
def bare_python_box(http: httpx.Client) -> str:
    """A python session with nothing but its base's list (no local host): pip's refusals."""
    return new_session(http, "python", [])


def sh(http: httpx.Client, sid: str, command: str, timeout: int = 120) -> tuple[int, str]:
    """Run ``command`` in the session's box: (exit code, stdout and stderr)."""
    r = http.post(f"/v1/sessions/{sid}/exec", json={"command": command, "timeout": timeout},
                  timeout=timeout + 60)
    assert r.status_code == 200, r.text
    events = [json.loads(line) for line in r.content.splitlines() if line.strip()]
    out = "".join(ev["data"] for ev in events if ev["type"] == "exec_output")
    assert events[-1]["type"] == "exec_end", events[-1]
    return int(events[-1]["exit_code"]), out


def refused_events(http: httpx.Client, sid: str) -> list[dict]:
    r = http.get(f"/v1/sessions/{sid}/events", headers={"Accept": "application/json"},
                 params={"limit": 1000})
    assert r.status_code == 200, r.text
    return [e for e in r.json()["events"] if e["type"] == "network_denied"]


def door_said_not_listed(out: str, addr: str) -> bool:
    return (f"Sophon network door: {addr} is not on this sandbox's network list" in out)


# --- curl and wget -------------------------------------------------------------------------


def test_curl_http_and_https_through_the_door(http: httpx.Client, hosts: Hosts,
                                              python_box: str, bare_box: str) -> None:
    code, out = sh(http, python_box, f"curl -sS {hosts.files.url}/x")
    assert (code, out) == (0, FILE_TEXT)
    # https: a CONNECT tunnel, not intercepted: the host's own certificate, which only
    # the test's CA verifies, reaches curl.
    code, out = sh(http, python_box, f"curl -sS --cacert {CA_PATH} "
                                     f"-w '\\nconnect %{{http_connect}}' {hosts.tls.url}/x")
    assert (code, out) == (0, FILE_TEXT + "\nconnect 200"), out
    assert "/x" in hosts.tls.hits
    # Refused: the same host from a box whose list does not name it, beside the control
    # above; curl shows the door's reason.
    code, out = sh(http, bare_box, f"curl -sS -w '\\nstatus %{{http_code}}' "
                                   f"{hosts.files.url}/x")
    assert code == 0 and out.endswith("status 403"), out
    assert door_said_not_listed(out, hosts.files.addr), out
    code, out = sh(http, bare_box, f"curl -sS --cacert {CA_PATH} {hosts.tls.url}/x")
    assert code != 0 and "403" in out, out
    denied = refused_events(http, bare_box)
    assert {(e["host"], e["port"], e["rule"]) for e in denied} >= {
        (HOST, hosts.files.port, "not_allowed"), (HOST, hosts.tls.port, "not_allowed")}


def test_wget_http_and_https_through_the_door(http: httpx.Client, hosts: Hosts,
                                              python_box: str) -> None:
    code, out = sh(http, python_box, "command -v wget || echo missing")
    if "missing" in out:
        pytest.skip("wget is not installed on this machine (the box sees the host's /usr)")
    code, out = sh(http, python_box, f"wget -qO- {hosts.files.url}/x")
    assert (code, out) == (0, FILE_TEXT)
    code, out = sh(http, python_box, f"wget -qO- --ca-certificate={CA_PATH} {hosts.tls.url}/x")
    assert (code, out) == (0, FILE_TEXT)
    # Control: a host the list does not name is refused, with the door's 403.
    code, out = sh(http, python_box, f"wget -O- {hosts.unopened.url}/x 2>&1")
    assert code != 0 and "403" in out, out


# --- Python ------------------------------------------------------------------------------


URLLIB = """
import ssl, sys, urllib.request, urllib.error
ctx = ssl.create_default_context(cafile={ca!r})
for url in sys.argv[1:]:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=30) as r:
            print(url.split(':')[0], r.status, r.read().decode().strip())
    except urllib.error.HTTPError as e:
        print(url.split(':')[0], e.code, e.read().decode().strip())
    except OSError as e:
        print(url.split(':')[0], 'error', e)
"""


def test_python_urllib_http_and_https(http: httpx.Client, hosts: Hosts,
                                      python_box: str) -> None:
    script = URLLIB.format(ca=CA_PATH)
    code, out = sh(http, python_box, f"python3 - {hosts.files.url}/x {hosts.tls.url}/x "
                                     f"{hosts.unopened.url}/x <<'EOF'\n{script}\nEOF")
    lines = out.splitlines()
    assert code == 0 and lines[:2] == [f"http 200 {FILE_TEXT.strip()}",
                                       f"https 200 {FILE_TEXT.strip()}"], out
    # Beside them, a host not on the list: the door's 403, readable.
    assert lines[2].startswith("http 403 Sophon network door:"), out
    assert door_said_not_listed(lines[2], hosts.unopened.addr), out


def test_python_requests_http_and_https(http: httpx.Client, hosts: Hosts,
                                        python_box: str) -> None:
    code, out = sh(http, python_box, "python3 -c 'import requests' 2>&1")
    if code != 0:
        pytest.skip("requests is not importable by the box's python3 (the host's "
                    f"/usr/bin/python3 has no requests): {out.strip().splitlines()[-1]}")
    code, out = sh(http, python_box, (
        "python3 -c 'import requests, sys; "
        f"print(requests.get(\"{hosts.files.url}/x\").text, end=\"\"); "
        f"print(requests.get(\"{hosts.tls.url}/x\", verify=\"{CA_PATH}\").text, end=\"\"); "
        f"print(requests.get(\"{hosts.unopened.url}/x\").status_code)'"))
    assert (code, out) == (0, FILE_TEXT + FILE_TEXT + "403\n"), out


def test_pip_install_from_a_local_index(http: httpx.Client, hosts: Hosts, python_box: str,
                                        bare_python_box: str) -> None:
    """A python session (its base list names PyPI, which no test may reach; the
    session's own list names the local index) installs a wheel with plain ``pip``."""
    code, out = sh(http, python_box, (
        f"pip install --index-url {hosts.index.url}/simple {WHEEL_PROJECT} 2>&1 && "
        f"python3 -c 'import {WHEEL_MODULE} as m; print(\"answer\", m.ANSWER)'"))
    assert code == 0 and out.endswith("answer 42\n"), out
    assert f"/simple/{WHEEL_PROJECT}/" in hosts.index.hits
    assert f"/files/{hosts.index.wheel_name}" in hosts.index.hits
    # Refused: the same index from a box whose list does not name it. pip logs an index
    # page's HTTP error at debug level (plain pip and -v say only "from versions:
    # none"), so -vvv shows the door's 403.
    seen = len(hosts.index.hits)
    code, out = sh(http, bare_python_box, (
        f"pip install -vvv --retries 0 --index-url {hosts.index.url}/simple {WHEEL_PROJECT} 2>&1"))
    assert code != 0 and "403 Client Error: Forbidden" in out, out
    assert len(hosts.index.hits) == seen  # nothing reached the index
    assert any(e["port"] == hosts.index.port for e in refused_events(http, bare_python_box))


def test_pip_says_why_the_door_refused_an_https_index(http: httpx.Client, hosts: Hosts,
                                                      bare_python_box: str) -> None:
    """pip prints a refused tunnel's status line, not its body: the door's reason is in
    the line, so plain pip (no -v) says which host was refused and what to change."""
    code, out = sh(http, bare_python_box, (
        f"pip download --no-deps -d /tmp/refused --retries 1 "
        f"--index-url {hosts.tls.url}/simple {WHEEL_PROJECT} 2>&1"))
    assert code != 0, out
    assert ("Tunnel connection failed: 403 Forbidden (Sophon network door: "
            f"{hosts.tls.addr} is not on this sandbox's network list; add it to the "
            "session's network.allow)") in out, out


# --- Node --------------------------------------------------------------------------------


def test_node_fetch_through_the_door(http: httpx.Client, hosts: Hosts, node_box: str) -> None:
    """Node's own fetch goes through the door: from Node 24 by NODE_USE_ENV_PROXY, before
    it by the preload scripts/box-tools installs (NODE_OPTIONS); beside it a refused host
    fails with the door's 403 (undici tunnels even http:// URLs, and reports a refused
    CONNECT as the fetch's error), not a connection refused."""
    if not Path("/usr/local/lib/sophon-node/proxy.js").is_file():
        pytest.skip("scripts/box-tools has not installed the fetch preload (needs root, npm)")
    script = ("fetch(process.argv[1]).then(async r => process.stdout.write(r.status + ' ' + "
              "await r.text()))"
              ".catch(e => { console.log('fetch failed:', String(e.cause && "
              "(e.cause.cause || e.cause).message)); process.exit(3); })")
    seen = len(hosts.files.hits)
    code, out = sh(http, node_box, f"node -e \"{script}\" {hosts.files.url}/x")
    assert (code, out) == (0, f"200 {FILE_TEXT}"), out
    assert len(hosts.files.hits) == seen + 1
    unopened = len(hosts.unopened.hits)
    code, out = sh(http, node_box, f"node -e \"{script}\" {hosts.unopened.url}/x")
    assert code == 3 and "Proxy response (403)" in out, out
    assert len(hosts.unopened.hits) == unopened
    # No warning or other noise from the preload in a program's output.
    code, out = sh(http, node_box, "node -e \"console.log('quiet')\" 2>&1")
    assert (code, out) == (0, "quiet\n")


def test_npm_install_from_a_local_registry(http: httpx.Client, hosts: Hosts,
                                           node_box: str) -> None:
    code, out = sh(http, node_box, (
        "mkdir -p /workspace/npmapp && cd /workspace/npmapp && npm init -y >/dev/null && "
        f"npm install --registry {hosts.npm.url}/ --no-audit --no-fund {NPM_PACKAGE} 2>&1 && "
        f"node -e \"console.log('answer', require('{NPM_PACKAGE}').answer)\""))
    assert code == 0 and out.endswith("answer 42\n"), out
    assert f"/{NPM_PACKAGE}" in hosts.npm.hits
    assert f"/{NPM_PACKAGE}/-/{NPM_PACKAGE}-1.0.0.tgz" in hosts.npm.hits
    # Refused beside it: a registry the list does not name (the unopened host), npm
    # reports the 403.
    code, out = sh(http, node_box, (
        "cd /workspace/npmapp && npm install --fetch-retries 0 "
        f"--registry {hosts.unopened.url}/ --no-audit --no-fund left-pad 2>&1"))
    assert code != 0 and "403" in out, out


# --- git ---------------------------------------------------------------------------------


GIT_IDENTITY = ("export GIT_AUTHOR_NAME=Box GIT_AUTHOR_EMAIL=box@example.com "
                "GIT_COMMITTER_NAME=Box GIT_COMMITTER_EMAIL=box@example.com")


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_git_clone_and_push_over_smart_http(http: httpx.Client, hosts: Hosts,
                                            python_box: str, scheme: str) -> None:
    git = hosts.git if scheme == "http" else hosts.git_tls
    ca = f"export GIT_SSL_CAINFO={CA_PATH}; " if scheme == "https" else ""
    code, out = sh(http, python_box, (
        f"{ca}{GIT_IDENTITY}; cd /workspace && rm -rf clone-{scheme} && "
        f"git clone -q {git.url}/repo.git clone-{scheme} 2>&1 && cd clone-{scheme} && "
        "cat README && echo second > README && git commit -qam 'from the box' && "
        "git push -q origin main 2>&1 && git ls-remote origin main"))
    assert code == 0, out
    assert out.startswith("first\n"), out
    assert git.log() == ["from the box", "first"]
    assert out.strip().endswith("refs/heads/main")
    assert any("git-receive-pack" in h for h in git.hits)


# --- the execution API -----------------------------------------------------------------


def curl_status(url: str) -> str:
    return f"curl -sS -w '\\nstatus %{{http_code}}' {url}"


def test_execute_api_threads_reach_registries_and_connectors_only(
        server: LiveServer, hosts: Hosts) -> None:
    """SOPHON_EGRESS_EXECUTE=registries (the default): a thread of a user without
    connectors is refused the test host by the door; a user whose http connector (marked
    ``execute``) names it reaches it."""
    with Baponi(api_key=server.add_user(), base_url=server.url, max_retries=0) as plain:
        res = plain.execute(curl_status(f"{hosts.files.url}/x"), language="bash",
                            thread_id="net")
    assert res.stdout.endswith("status 403"), (res.stdout, res.stderr)
    assert door_said_not_listed(res.stdout, hosts.files.addr), res.stdout

    key = server.add_user()
    with client_for(server, key) as c:
        r = c.post("/v1/connectors", json={
            "name": "testhost", "type": "http", "host": hosts.files.addr,
            "header": "X-Test-Token", "value": "test-token-value", "execute": True})
        assert r.status_code == 201, r.text
    with Baponi(api_key=key, base_url=server.url, max_retries=0) as connected:
        res = connected.execute(curl_status(f"{hosts.files.url}/x"), language="bash",
                                thread_id="net")
    assert res.stdout == FILE_TEXT + "\nstatus 200", (res.stdout, res.stderr)


def test_a_connector_for_one_key_goes_with_that_keys_executions_only(
        server: LiveServer, hosts: Hosts) -> None:
    """Connectors attach to API keys, as in the Baponi guide: of one user's two keys,
    only the executions made with the attached one get it, even in a thread both use."""
    first = server.add_user("two-keys")
    second = server.add_key("two-keys")
    with client_for(server, first) as c:
        keys = c.get("/v1/keys").json()["keys"]
        assert [k["current"] for k in keys] == [True, False], keys
        assert [first.startswith(k["prefix"]) for k in keys] == [True, False], keys
        r = c.post("/v1/connectors", json={
            "name": "testhost", "type": "http", "host": hosts.files.addr,
            "header": "X-Test-Token", "value": "test-token-value", "keys": [keys[0]["id"]]})
        assert r.status_code == 201, r.text
        assert r.json()["keys"] == [keys[0]["id"]] and r.json()["execute"] is False

    def fetch(key: str) -> str:
        with Baponi(api_key=key, base_url=server.url, max_retries=0) as client:
            res = client.execute(curl_status(f"{hosts.files.url}/x"), language="bash",
                                 thread_id="shared")
        return str(res.stdout)

    def gateway(key: str) -> str:
        with Baponi(api_key=key, base_url=server.url, max_retries=0) as client:
            res = client.execute("echo ${ANTHROPIC_BASE_URL:-none}", language="bash",
                                 thread_id="shared")
        return str(res.stdout).strip()

    # An anthropic connector for the first key: its executions get the model gateway.
    with client_for(server, first) as c:
        r = c.post("/v1/connectors", json={"name": "claude", "type": "anthropic",
                                           "keys": [keys[0]["id"]]})
        assert r.status_code == 201, r.text
    assert gateway(first) == "http://gateway.sophon.internal"
    assert gateway(second) == "none"
    assert fetch(first) == FILE_TEXT + "\nstatus 200"
    refused = fetch(second)  # the same thread's box, with the other key
    assert refused.endswith("status 403") and door_said_not_listed(refused, hosts.files.addr)
    assert fetch(first) == FILE_TEXT + "\nstatus 200"
    # Attached to every key instead, the second key's executions get it too.
    with client_for(server, second) as c:
        r = c.patch("/v1/connectors/testhost", json={"execute": True})
        assert r.status_code == 200, r.text
        assert r.json()["keys"] is None and r.json()["execute"] is True
    assert fetch(second) == FILE_TEXT + "\nstatus 200"


def test_a_direct_call_to_anthropic_is_refused_and_logged(
        server: LiveServer, http: httpx.Client, bare_box: str) -> None:
    """Code in a box reaches the model through the gateway alone: a direct call to an
    Anthropic host is refused by the door (before any name is looked up) and the server
    log says which box tried."""
    code, out = sh(http, bare_box, "curl -sS -o /dev/null -w '%{http_code}' "
                                   "https://api.anthropic.com/v1/messages 2>&1")
    assert code != 0 and "403" in out, out
    box = "ses_" + bare_box.removeprefix("ses_")
    assert f"{box} tried to reach api.anthropic.com:443 directly, not through the model " \
           "gateway" in server.log.read_text(errors="replace")


def test_execute_api_public_mode_still_refuses_unopened_loopback(hosts: Hosts) -> None:
    """SOPHON_EGRESS_EXECUTE=public: a thread reaches any public address and an address
    the admin opened, with no connector; a loopback address the admin did not open is
    still refused (private_address)."""
    srv = serve(hosts, SOPHON_EGRESS_EXECUTE="public")
    try:
        with Baponi(api_key=srv.add_user(), base_url=srv.url, max_retries=0) as c:
            res = c.execute(f"{curl_status(hosts.files.url + '/x')}; echo; "
                            f"{curl_status(hosts.unopened.url + '/x')}",
                            language="bash", thread_id="public")
    finally:
        srv.stop()
        shutil.rmtree(srv.data_dir, ignore_errors=True)
    opened, _, unopened = res.stdout.partition("\nstatus 200\n")
    assert opened == FILE_TEXT, (res.stdout, res.stderr)
    assert unopened.endswith("status 403"), res.stdout
    assert f"Sophon network door: {HOST} is a loopback address" in unopened, res.stdout
    assert "/x" not in hosts.unopened.hits


# --- the door under load, silence and restart --------------------------------------------


FLOOD = """
import asyncio, json, socket
N, HOST, PORT = {n}, {host!r}, {port}
results, resets, first_503 = {{}}, {{}}, None

async def one(i):
    # Plain sockets, read until the door or the host closes: a reset after the answer
    # is counted, and the answer kept (as curl would show it).
    global first_503
    loop = asyncio.get_running_loop()
    s = socket.socket()
    s.setblocking(False)
    data = b""
    await loop.sock_connect(s, ("127.0.0.1", 3128))
    try:
        await loop.sock_sendall(s, f"GET http://{{HOST}}:{{PORT}}/hold/{{i}} HTTP/1.1\\r\\n"
                                   f"Host: {{HOST}}:{{PORT}}\\r\\n\\r\\n".encode())
    except OSError as e:  # the door closed first: its answer may still be there to read
        resets[i] = "send: " + type(e).__name__
    try:
        while chunk := await loop.sock_recv(s, 65536):
            data += chunk
    except OSError as e:
        resets[i] = type(e).__name__
    s.close()
    status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.") else "none"
    results[i] = status
    if status == "503":
        if first_503 is None:
            first_503 = data.decode(errors="replace")
        print("refused", i, flush=True)
    elif status == "none":
        print("no answer", i, resets.get(i), flush=True)

async def main():
    await asyncio.gather(*(one(i) for i in range(N)))
    counts = {{}}
    for s in results.values():
        counts[s] = counts.get(s, 0) + 1
    reset_after = {{}}
    for i, e in resets.items():
        reset_after[results[i]] = reset_after.get(results[i], 0) + 1
    print("RESULT " + json.dumps({{"counts": counts, "resets": reset_after,
                                  "first_503": first_503}}), flush=True)

asyncio.run(main())
"""


def test_connections_past_the_cap_get_a_clear_503(http: httpx.Client, hosts: Hosts,
                                                  python_box: str) -> None:
    """1,000 parallel connections from one box, the cap at 50: 50 reach the host and
    complete once it answers, the other 950 are answered 503 by the door at once."""
    files = hosts.files
    files.release.clear()
    files.most_held = 0
    script = FLOOD.format(n=PARALLEL, host=HOST, port=files.port)
    refused = 0
    lines: list[str] = []
    end: dict = {}
    try:
        with http.stream("POST", f"/v1/sessions/{python_box}/exec",
                         json={"command": f"python3 - <<'EOF'\n{script}\nEOF", "timeout": 120},
                         timeout=httpx.Timeout(180, read=30)) as r:
            assert r.status_code == 200
            buf = ""
            for raw in r.iter_lines():
                if not raw.strip():
                    continue
                ev = json.loads(raw)
                if ev["type"] == "exec_output":
                    buf += ev["data"]
                    *done, buf = buf.split("\n")
                    lines += done
                    refused += sum(1 for line in done if line.startswith("refused"))
                    if refused == PARALLEL - CAP and not files.release.is_set():
                        # Every connection past the cap has its answer; the held ones
                        # are all at the host.
                        wait_for(lambda: files.holding == CAP, 15, what="50 held at the host")
                        files.release.set()
                if ev["type"] == "exec_end":
                    end = ev
    except httpx.ReadTimeout:
        pytest.fail(f"the box went quiet for 30 s: {refused} refused so far, "
                    f"{files.holding} held at the host (at most {files.most_held}); "
                    f"its last lines: {lines[-5:]}")
    finally:
        files.release.set()
    assert end.get("exit_code") == 0, lines[-20:]
    result = json.loads(next(line for line in lines if line.startswith("RESULT "))[7:])
    assert result["counts"] == {"200": CAP, "503": PARALLEL - CAP}, result
    assert files.most_held == CAP
    body = result["first_503"]
    assert "503 Service Unavailable" in body and "SOPHON_EGRESS_MAX_CONNECTIONS_PER_BOX" in body
    # And the door is free again: a request completes.
    assert sh(http, python_box, f"curl -sS {files.url}/x") == (0, FILE_TEXT)


SILENT = """
import json, socket, time, urllib.request
URL = {url!r}

def fetch():
    return urllib.request.urlopen(URL, timeout=30).read().decode()

def dropped_after(sock, start):
    sock.settimeout(30)
    try:
        data = sock.recv(4096)
    except OSError as e:
        data = type(e).__name__.encode()
    return data.decode(errors="replace"), round(time.monotonic() - start, 2)

start = time.monotonic()
silent = socket.create_connection(("127.0.0.1", 3128))
partial = socket.create_connection(("127.0.0.1", 3128))
partial.sendall(b"GET " + URL.encode() + b" HTTP/1.1\\r\\nHost: x\\r\\n")  # never finished
during = fetch()
out = {{"during": during, "silent": dropped_after(silent, start),
        "partial": dropped_after(partial, start), "after": fetch()}}
print(json.dumps(out))
"""


def test_a_client_that_never_sends_its_head_is_dropped(http: httpx.Client, hosts: Hosts,
                                                       python_box: str) -> None:
    """SOPHON_EGRESS_HEAD_TIMEOUT_SECONDS=1: a connection that sends nothing, and one
    that never finishes its head, are closed after about a second, with no answer;
    a request on another connection during and after them completes."""
    script = SILENT.format(url=f"{hosts.files.url}/x")
    code, out = sh(http, python_box, f"python3 - <<'EOF'\n{script}\nEOF")
    assert code == 0, out
    got = json.loads(out)
    assert got["during"] == FILE_TEXT and got["after"] == FILE_TEXT, got
    for which in ("silent", "partial"):
        data, elapsed = got[which]
        assert data == "", got  # closed by the door, no answer
        assert 0.9 <= elapsed < 10, got


def test_the_door_works_again_after_a_server_restart(hosts: Hosts) -> None:
    srv = serve(hosts)
    try:
        with client_for(srv, srv.add_user()) as c:
            sid = new_session(c, "python", [hosts.files.addr])
            assert sh(c, sid, f"curl -sS {hosts.files.url}/x") == (0, FILE_TEXT)
            srv.restart()  # the same data directory and port; the box is started again
            code, out = sh(c, sid, f"curl -sS {hosts.files.url}/x")
            assert (code, out) == (0, FILE_TEXT)
            # Its list held across the restart: a host it does not name is still refused.
            code, out = sh(c, sid, curl_status(f"{hosts.tls.url.replace('https', 'http')}/x"))
            assert out.endswith("status 403") and door_said_not_listed(out, hosts.tls.addr)
    finally:
        srv.stop()
        shutil.rmtree(srv.data_dir, ignore_errors=True)





UPLOAD = """
import urllib.request, urllib.error
for size in (1000, 4_000_000):
    try:
        urllib.request.urlopen(urllib.request.Request({url!r}, data=b"0" * size), timeout=30)
        print(size, "allowed?")
    except urllib.error.HTTPError as e:
        print(size, e.code, e.read().decode().split(":")[0])
    except OSError as e:
        print(size, "error", type(e).__name__, getattr(e, "reason", e))
"""


def test_a_refused_upload_still_reads_the_doors_403(http: httpx.Client, hosts: Hosts,
                                                    python_box: str) -> None:
    """Python's urllib POSTs 1 kB and 4 MB to a host the list does not name: both read
    the door's 403 (the door half-closes and drains before closing: closing with unread
    bytes would reset the connection, and the client would see a broken pipe)."""
    script = UPLOAD.format(url=f"{hosts.unopened.url}/x")
    code, out = sh(http, python_box, f"python3 - <<'EOF'\n{script}\nEOF")
    assert code == 0, out
    small, big = out.splitlines()
    assert small == "1000 403 Sophon network door", out  # the control
    assert big == "4000000 403 Sophon network door", out
