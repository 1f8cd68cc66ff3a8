"""A git starter names a host path: it must not become a way into another box's files.

Every box of a root server runs as the same host uid, so a clone made by a box could
read any other box's workspace. Clones are therefore read by a staging box under a uid
that owns nothing; these tests point a clone at another session's workspace (a real
git repository with a secret in it) by every route a user could try.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the staging uid needs a root server")


def exec_out(http: httpx.Client, session_id: str, command: str) -> str:
    r = http.post(f"/v1/sessions/{session_id}/exec", json={"command": command})
    assert r.status_code == 200, r.text
    lines = [httpx.Response(200, content=line).json() for line in r.content.splitlines()]
    return "".join(ev["data"] for ev in lines if ev["type"] == "exec_output")


@pytest.fixture
def victim(server: LiveServer) -> Iterator[Path]:
    """Another user's session whose workspace holds a committed secret; its host path."""
    key = server.add_user()
    with httpx.Client(base_url=server.url, timeout=60,
                      headers={"Authorization": f"Bearer {key}"}) as other:
        s = other.post("/v1/sessions", json={"name": "victim", "starter": {"type": "empty"}})
        assert s.status_code == 201, s.text
        sid = s.json()["id"]
        exec_out(other, sid, "echo victim-secret > s.txt && git add s.txt && "
                             "git -c user.name=v -c user.email=v@v commit -qm s")
        yield server.data_dir / "boxes" / ("s" + sid.removeprefix("ses_")) / "workspace"


def refused(http: httpx.Client, url: str) -> httpx.Response:
    r = http.post("/v1/sessions", json={"name": "thief", "starter": {"type": "git", "url": url}})
    assert r.status_code == 400, r.text
    assert "victim-secret" not in r.text
    return r


def test_clone_of_another_sessions_workspace_is_refused(http: httpx.Client,
                                                        victim: Path) -> None:
    assert (victim / ".git").is_dir()  # the control: the target is a real repository
    r = refused(http, str(victim))
    assert r.json()["error"] == "invalid_request"
    refused(http, f"file://{victim}")


def test_clone_through_a_symlink_to_another_workspace_is_refused(http: httpx.Client,
                                                                 victim: Path) -> None:
    links = Path(tempfile.mkdtemp(prefix="sophon-links-", dir="/tmp"))
    links.chmod(0o755)
    (links / "repo").symlink_to(victim)
    refused(http, str(links / "repo"))


def test_clone_of_the_data_directory_is_refused(http: httpx.Client, server: LiveServer) -> None:
    refused(http, str(server.data_dir))
    refused(http, str(server.data_dir / "boxes"))
