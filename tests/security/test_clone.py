"""A git starter names a host path: it must not become a way into another box's files.

Every box of a root server runs as the same host uid, so a clone made by a box could
read any other box's workspace. Clones are therefore read by a staging box under a uid
that owns nothing; these tests point a clone at another session's workspace (a real
git repository with a secret in it) by every route a user could try.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer
from tests.security.helpers import box_files, client, live_server

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the staging uid needs a root server")


def exec_out(http: httpx.Client, session_id: str, command: str) -> str:
    r = http.post(f"/v1/sessions/{session_id}/exec", json={"command": command})
    assert r.status_code == 200, r.text
    lines = [httpx.Response(200, content=line).json() for line in r.content.splitlines()]
    return "".join(ev["data"] for ev in lines if ev["type"] == "exec_output")


@pytest.fixture
def victim(server: LiveServer) -> Iterator[Path]:
    """Another user's session whose workspace holds a committed secret; its path as root
    on the host sees it (through the box's launcher: its disk is mounted only there)."""
    key = server.add_user()
    with httpx.Client(base_url=server.url, timeout=60,
                      headers={"Authorization": f"Bearer {key}"}) as other:
        s = other.post("/v1/sessions", json={"name": "victim", "starter": {"type": "empty"}})
        assert s.status_code == 201, s.text
        sid = s.json()["id"]
        exec_out(other, sid, "echo victim-secret > s.txt && git add s.txt && "
                             "git -c user.name=v -c user.email=v@v commit -qm s")
        yield box_files(server.data_dir / "boxes" / ("s" + sid.removeprefix("ses_"))) \
            / "workspace"


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


# --- probing the host through clone paths ---------------------------------------------


def make_repo(path: Path, content: str) -> Path:
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    (path / "f.txt").write_text(content)
    subprocess.run(["git", "-C", str(path), "add", "f.txt"], check=True)
    subprocess.run(["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t",
                    "commit", "-qm", "f"], check=True)
    subprocess.run(["chmod", "-R", "a+rX", str(path)], check=True)
    return path


@pytest.fixture
def host_dirs() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="sophon-probe-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def answer(http: httpx.Client, url: str) -> tuple[int, str, str]:
    """What a clone of ``url`` answers, with the path itself taken out of the message."""
    r = http.post("/v1/sessions", json={"name": "probe", "starter": {"type": "git",
                                                                      "url": url}})
    assert r.status_code != 500, (url, r.text)
    body = r.json()
    shown = url.removeprefix("file://")
    return r.status_code, body.get("error", ""), body.get("message", "").replace(shown, "<p>")


def test_a_path_only_root_can_read_answers_as_a_missing_one(http: httpx.Client,
                                                            host_dirs: Path) -> None:
    secret = host_dirs / "root-only"
    repo = make_repo(secret / "repo", "root-only-secret\n")
    secret.chmod(0o700)  # the repository is readable, but no one but root can reach it
    pairs = [
        (str(secret), str(host_dirs / "no-such-dir")),
        (str(repo), str(secret / "no-such-repo")),
        (f"file://{repo}", f"file://{secret}/no-such-repo"),
        ("/proc/1/root", "/proc/1/no-such-entry"),
        ("/proc/1/root/etc", "/proc/1/no-such-entry/etc"),
    ]
    for there, missing in pairs:
        got, want = answer(http, there), answer(http, missing)
        assert got == want, (there, got, missing, want)
        assert got[0] == 400 and got[1] == "invalid_request", got
    # Control: the same repository, once any user may reach it, clones.
    secret.chmod(0o755)
    r = http.post("/v1/sessions", json={"name": "ok", "starter": {"type": "git",
                                                                   "url": str(repo)}})
    assert r.status_code == 201, r.text
    assert exec_out(http, r.json()["id"], "cat f.txt") == "root-only-secret\n"


def test_no_clone_path_is_a_server_error(http: httpx.Client, host_dirs: Path) -> None:
    (host_dirs / "a").symlink_to(host_dirs / "b")
    (host_dirs / "b").symlink_to(host_dirs / "a")
    odd = ["/proc/1/root", "/proc/self/root", "/proc/1/cwd", "/proc/self/fd/0",
           "file:///proc/1/root/etc", "/root", "/root/.ssh", "/var/lib/sophon",
           "/tmp/x\x00y", "/" + "a" * 2000, "/a" + "/b" * 1000, str(host_dirs / "a"),
           "/dev/null", "/dev/shm", "/etc/passwd", "/etc/../etc/./passwd"]
    for url in odd:
        status, code, _ = answer(http, url)
        assert (status, code) == (400, "invalid_request"), (url, status, code)
    # Control: a world-readable repository clones, by its path and through a symlink.
    repo = make_repo(host_dirs / "public", "public\n")
    (host_dirs / "link").symlink_to(repo)
    for url in (str(repo), f"file://{host_dirs / 'link'}"):
        r = http.post("/v1/sessions", json={"name": "ok", "starter": {"type": "git",
                                                                       "url": url}})
        assert r.status_code == 201, r.text
        assert exec_out(http, r.json()["id"], "cat f.txt") == "public\n"


# --- an admin's roots, read on the user's behalf ----------------------------------------


def test_an_admins_root_is_read_for_the_sandbox_and_nothing_past_it(host_dirs: Path) -> None:
    """Under SOPHON_GIT_LOCAL_ROOTS a repository only root can reach clones (the server
    copies it for the sandbox); the copy follows no link out, and a path outside the
    roots still answers as a missing one."""
    shared = host_dirs / "shared"
    repo = make_repo(shared / "team" / "repo", "shared-work\n")
    (shared / "team").chmod(0o700)  # the sandbox's uid cannot reach it
    secret = host_dirs / "root-only.txt"
    secret.write_text("host-secret-past-the-root\n")
    secret.chmod(0o600)
    # A link inside .git to a file past the root, where git will read it (a ref).
    (repo / ".git" / "refs" / "heads" / "leak").symlink_to(secret)
    outside = make_repo(host_dirs / "private" / "repo", "private\n")
    (host_dirs / "private").chmod(0o700)
    with live_server({"SOPHON_GIT_LOCAL_ROOTS": str(shared)}) as srv, \
            client(srv, srv.add_user()) as http:
        r = http.post("/v1/sessions", json={"name": "team", "starter": {
            "type": "git", "url": str(repo)}})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        assert exec_out(http, sid, "cat f.txt; git log --format=%s") == "shared-work\nf\n"
        seen = exec_out(http, sid, "git branch -a; git for-each-ref; "
                                   "grep -r host-secret . /mnt 2>/dev/null; true")
        assert "host-secret" not in seen and "leak" not in seen, seen
        assert not list((srv.data_dir / "staging").iterdir())  # the copy is gone

        status, code, message = answer(http, str(outside))
        assert (status, code) == (400, "invalid_request")
        assert (status, code, message) == answer(http, str(host_dirs / "private" / "nothing"))


def test_a_path_nobody_may_read_but_the_sandbox_may_not_is_said_plainly(
        http: httpx.Client, host_dirs: Path) -> None:
    """The check reads as `nobody`; a directory that only `nobody` may read passes it,
    and the staging box (another uid) cannot mount it: the user hears what any
    unreadable path answers, not bwrap's words."""
    repo = make_repo(host_dirs / "nobodys" / "repo", "nobody's\n")
    os.chown(host_dirs / "nobodys", 65534, 65534)
    (host_dirs / "nobodys").chmod(0o700)
    status, code, message = answer(http, str(repo))
    assert (status, code) == (400, "invalid_request"), message
    assert "bwrap" not in message and "box " not in message
    assert (status, code, message) == answer(http, str(host_dirs / "no-such-dir"))
