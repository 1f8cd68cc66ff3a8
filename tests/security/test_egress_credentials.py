"""Credentials that code never holds: a GitHub connector's token reaches the git host
through the door, which speaks TLS to the box with Sophon's CA and swaps the box's
placeholder for the real token; the token is in no file, variable, process, event or
export of the box; a push past the connector's rules is refused.

The git host is a smart-HTTP server over TLS on 127.0.0.2 (with a CA of the test's own,
which the door is told to trust) that demands the real token, standing in for GitHub
(SOPHON_EGRESS_GITHUB_HOSTS names it, as an admin would name a GitHub Enterprise)."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from tests.conftest import LiveServer, make_data_dir, wait_for
from tests.integration.egress_hosts import GIT_ENV, TestCA, _GitHandler, _Host

TOKEN = "ghp_" + "R3alT0kenThatNeverEntersABox0123456"
REPO = "acme/app"


class _AuthGitHandler(_GitHandler):
    host: ClassVar[TokenGitServer]  # type: ignore[misc]

    def _cgi(self) -> None:
        auth = self.headers.get("Authorization", "")
        self.host.auth_seen.append(auth)
        expected = "Basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
        if auth != expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="test"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super()._cgi()


class TokenGitServer(_Host):
    """``acme/app.git`` with one commit on main, answering only the real token."""

    handler = _AuthGitHandler

    def __init__(self, tls: TestCA) -> None:
        self.auth_seen: list[str] = []
        self.root = Path(tempfile.mkdtemp(prefix="sophon-test-git-"))
        self.bare = self.root / f"{REPO}.git"
        self.bare.parent.mkdir(parents=True)
        run = lambda *a, cwd=None: subprocess.run(  # noqa: E731
            ["git", *a], cwd=cwd, env=GIT_ENV, check=True, capture_output=True)
        run("init", "-q", "--bare", "-b", "main", str(self.bare))
        run("config", "http.receivepack", "true", cwd=self.bare)
        work = self.root / "work"
        run("init", "-q", "-b", "main", str(work))
        (work / "README").write_text("first\n")
        run("add", "README", cwd=work)
        run("commit", "-q", "-m", "first", cwd=work)
        run("push", "-q", str(self.bare), "main", cwd=work)
        shutil.rmtree(work)
        super().__init__(tls)

    def refs(self) -> dict[str, str]:
        out = subprocess.run(["git", "for-each-ref", "--format=%(refname) %(objectname)"],
                             cwd=self.bare, env=GIT_ENV, capture_output=True, text=True,
                             check=True).stdout
        return dict(line.split() for line in out.splitlines())


@pytest.fixture(scope="module")
def git() -> Iterator[TokenGitServer]:
    ca = TestCA()
    srv = TokenGitServer(ca)
    srv.ca = ca  # type: ignore[attr-defined]
    yield srv
    srv.close()
    ca.close()


@pytest.fixture(scope="module")
def server(git: TokenGitServer) -> Iterator[LiveServer]:
    path = make_data_dir()
    ca_file = path / "test-ca.pem"
    ca_file.write_bytes(git.ca.ca_pem)  # type: ignore[attr-defined]
    srv = LiveServer(path, env={"SOPHON_EGRESS_ALLOW_PRIVATE": git.addr,
                                "SOPHON_EGRESS_GITHUB_HOSTS": git.addr,
                                "SOPHON_EGRESS_TRUST_CA": str(ca_file)}).start()
    yield srv
    srv.stop()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120,
                      headers={"Authorization": f"Bearer {server.add_user()}"}) as c:
        yield c


def connector(http: httpx.Client, **extra: Any) -> str:
    r = http.post("/v1/connectors", json={"name": "gh", "type": "github", "value": TOKEN,
                                          **extra})
    assert r.status_code == 201, r.text
    return "gh"


def session(http: httpx.Client, **extra: Any) -> str:
    r = http.post("/v1/sessions", json={"name": "git", "base": "generic", **extra})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


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


def events(http: httpx.Client, sid: str) -> list[dict[str, Any]]:
    r = http.get(f"/v1/sessions/{sid}/events", params={"limit": 5000},
                 headers={"Accept": "application/json"})
    return list(r.json()["events"])


IDENTITY = "git config --global user.email t@example.com && git config --global user.name T"


def test_git_clones_and_pushes_with_a_token_the_box_never_holds(
        http: httpx.Client, server: LiveServer, git: TokenGitServer) -> None:
    sid = session(http, connectors=[connector(http, push=[f"{REPO}:sophon/*"])])
    out, code = run(http, sid, f"git clone -q https://{git.addr}/{REPO}.git app && "
                               "cat app/README")
    assert code == 0, out
    assert "first" in out
    # The host was given the real token, as git's Basic auth, by the door.
    real = "Basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    assert real in git.auth_seen

    # A push to a branch the connector allows lands on the host.
    out, code = run(http, sid, f"{IDENTITY} && cd app && git checkout -q -b sophon/fix && "
                               "echo two >> README && git commit -qam two && "
                               "git push -q origin sophon/fix 2>&1")
    assert code == 0, out
    assert "refs/heads/sophon/fix" in git.refs()

    # A push to main is refused by the door: a clear error, and main does not move.
    main_before = git.refs()["refs/heads/main"]
    out, code = run(http, sid, "cd app && git push origin HEAD:main 2>&1")
    assert code != 0
    assert "403" in out
    assert git.refs()["refs/heads/main"] == main_before
    denied = wait_for(lambda: [e for e in events(http, sid) if e["type"] == "network_denied"],
                      10, what="a network_denied event")
    assert denied[0]["rule"] == "push_not_allowed"  # type: ignore[index]
    assert "refs/heads/main" in denied[0]["message"]  # type: ignore[index]

    # The token is nowhere in the box: not in its environment (where a placeholder is),
    # not in any file git wrote, not in any process's environment or command line. (The
    # pattern is split in the command: the command itself is in the session's events.)
    out, _ = run(http, sid, "env; cat ~/.gitconfig ~/.git-credentials app/.git/config "
                            "2>/dev/null; grep -rsl 'R3al''T0ken' /workspace /home /tmp /etc "
                            "/proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null; true")
    assert "R3alT0ken" not in out
    assert "GH_TOKEN=sophon_placeholder_" in out
    assert TOKEN not in json.dumps(events(http, sid))
    export = http.get(f"/v1/sessions/{sid}/export")
    assert export.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(export.content), mode="r:gz") as tar:
        for member in tar.getmembers():
            f = tar.extractfile(member)
            assert f is None or b"R3alT0ken" not in f.read(), member.name
    assert TOKEN not in (server.data_dir / "server.log").read_text()


def test_a_placeholder_is_worthless_outside_its_own_session(
        http: httpx.Client, git: TokenGitServer) -> None:
    """Another session's placeholder, sent by a session whose door knows its own, is
    passed on as it is: the host refuses it."""
    name = connector(http)
    a = session(http, connectors=[name])
    b = session(http, connectors=[name])
    token_a = run(http, a, "printf %s \"$GH_TOKEN\"")[0]
    token_b = run(http, b, "printf %s \"$GH_TOKEN\"")[0]
    assert token_a.startswith("sophon_placeholder_") and token_a != token_b
    url = f"https://x-access-token:{token_a}@{git.addr}/{REPO}.git"
    out, code = run(http, b, f"GIT_CONFIG_COUNT=0 GIT_TERMINAL_PROMPT=0 git ls-remote {url} 2>&1")
    assert code != 0, out
    out, code = run(http, a, f"GIT_CONFIG_COUNT=0 GIT_TERMINAL_PROMPT=0 git ls-remote {url} 2>&1")
    assert code == 0, out  # control: in its own session it works


def test_without_the_connector_the_host_is_not_reached_with_a_token(
        http: httpx.Client, git: TokenGitServer) -> None:
    sid = session(http, network={"allow": [git.addr]})
    seen = len(git.auth_seen)
    out, code = run(http, sid, f"GIT_TERMINAL_PROMPT=0 git ls-remote https://{git.addr}/{REPO}.git "
                               "2>&1")
    assert code != 0
    # Not intercepted without a connector: a plain tunnel, so the box does not trust the
    # host's certificate (it is the test's CA, not Sophon's) and nothing reaches it.
    assert "certificate" in out.lower() or "SSL" in out
    assert all(a == "" for a in git.auth_seen[seen:])


def test_a_session_starts_from_an_https_clone_through_its_connector(
        http: httpx.Client, git: TokenGitServer) -> None:
    url = f"https://{git.addr}/{REPO}.git"
    r = http.post("/v1/sessions", json={"name": "c", "starter": {"type": "git", "url": url},
                                        "connectors": [connector(http)]})
    assert r.status_code == 201, r.text
    out, code = run(http, r.json()["id"], "cat README; git remote get-url origin")
    assert (code, out) == (0, f"first\n{url}\n")  # origin kept: pushing back works
    # Without the connector the host is not on the session's list: a 400 naming it.
    r = http.post("/v1/sessions", json={"name": "c", "starter": {"type": "git", "url": url}})
    assert r.status_code == 400
    assert r.json()["error"] == "network_not_allowed"
    assert git.addr in r.json()["message"]


def test_a_connectors_value_pasted_into_a_session_is_redacted_from_its_events(
        http: httpx.Client) -> None:
    """No box holds it, but a person might paste it into a command: the session's log
    redacts it like a secret, in the command and in what it printed."""
    sid = session(http, connectors=[connector(http)])
    out, code = run(http, sid, f"echo {TOKEN}")
    assert code == 0
    logged = json.dumps(events(http, sid))
    assert TOKEN not in logged
    assert "R3alT0ken" not in logged
