"""Sessions: creation from each starter, validation, listing, deletion."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, make_data_dir, wait_for
from tests.security.helpers import box_dir_holding


@pytest.fixture(scope="module")
def repos() -> Iterator[Path]:
    """A host directory, readable by other users, holding one small repository."""
    root = Path(tempfile.mkdtemp(prefix="sophon-repos-", dir="/tmp"))
    root.chmod(0o755)
    repo = root / "demo"
    repo.mkdir()
    env = {"GIT_AUTHOR_NAME": "T", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "T", "GIT_COMMITTER_EMAIL": "t@example.com",
           "PATH": "/usr/bin:/bin"}

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    (repo / "app.py").write_text("print('demo')\n")
    git("add", "-A")
    git("commit", "-q", "-m", "first")
    git("checkout", "-q", "-b", "feature")
    (repo / "feature.txt").write_text("on the branch\n")
    git("add", "-A")
    git("commit", "-q", "-m", "second")
    git("checkout", "-q", "main")
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def server(repos: Path) -> Iterator[LiveServer]:
    data = make_data_dir()
    srv = LiveServer(data).start()
    yield srv
    srv.stop()
    shutil.rmtree(data, ignore_errors=True)


def create(http: httpx.Client, **body: object) -> dict:
    r = http.post("/v1/sessions", json={"name": "s", **body})
    assert r.status_code == 201, r.text
    return r.json()


def sh(http: httpx.Client, session_id: str, command: str) -> tuple[int, str]:
    r = http.post(f"/v1/sessions/{session_id}/exec", json={"command": command})
    assert r.status_code == 200, r.text
    lines = [httpx.Response(200, content=line).json() for line in r.content.splitlines()]
    out = "".join(ev["data"] for ev in lines if ev["type"] == "exec_output")
    return lines[-1]["exit_code"], out


def test_empty_session_is_a_git_repo_with_a_first_commit(http: httpx.Client) -> None:
    s = create(http, starter={"type": "empty"}, base="generic", model="haiku",
               system_prompt="Be brief.")
    assert s["id"].startswith("ses_")
    assert (s["status"], s["base"], s["model"], s["runtime"]) == ("idle", "generic", "haiku",
                                                                  "native")
    assert s["system_prompt"] == "Be brief."
    assert s["approval"]["shell"] == "ask_once"
    code, out = sh(http, s["id"], "git log --format=%s && git status --porcelain && pwd")
    assert code == 0
    assert out == "Initial commit\n/workspace\n"
    first = http.get(f"/v1/sessions/{s['id']}/events",
                     headers={"Accept": "application/json"}).json()["events"][0]
    assert first["type"] == "session_start" and first["seq"] == 1


@pytest.mark.parametrize("template, command", [
    ("python", "python3 -m unittest 2>&1 | tail -1"),
    ("node", "npm test --silent 2>&1 | grep -E '^# (pass|fail)'"),
])
def test_template_sessions_have_a_passing_test(http: httpx.Client, template: str,
                                               command: str) -> None:
    s = create(http, starter={"type": "template", "name": template}, base=template)
    code, out = sh(http, s["id"], command)
    assert code == 0, out
    assert out in ("OK\n", "# pass 3\n# fail 0\n"), out
    _, log = sh(http, s["id"], "git log --oneline | wc -l; git status --porcelain")
    assert log.strip() == "1"


def test_git_clone_from_a_local_path_and_ref(http: httpx.Client, repos: Path) -> None:
    s = create(http, starter={"type": "git", "url": str(repos / "demo")})
    assert sh(http, s["id"], "git log --format=%s; cat app.py")[1] == "first\nprint('demo')\n"
    b = create(http, starter={"type": "git", "url": f"file://{repos}/demo", "ref": "feature"})
    _, out = sh(http, b["id"], "git log --format=%s; cat feature.txt; git remote")
    assert out == "second\nfirst\non the branch\n"


@pytest.mark.parametrize("starter, code, needle", [
    # A generic session's list is empty: the host is named in the answer, with the fix.
    ({"type": "git", "url": "https://github.com/octocat/Hello-World"}, "network_not_allowed",
     "github.com:443 is not on this sandbox's network list"),
    ({"type": "git", "url": "https://user:ghp_x@github.com/o/r"}, "invalid_request",
     "the clone URL carries credentials"),
    ({"type": "git", "url": "ssh://git@github.com/o/r"}, "network_disabled",
     "neither an http(s):// URL nor a local path"),
    ({"type": "git", "url": "/no/such/dir"}, "invalid_request", "not a directory"),
    ({"type": "git", "url": "/etc"}, "invalid_request", "git clone failed"),
    ({"type": "template", "name": "cobol"}, "invalid_request", "available: node, python"),
    ({"type": "svn"}, "invalid_request", "starter"),
])
def test_bad_starters_are_clear_400s(http: httpx.Client, starter: dict, code: str,
                                     needle: str) -> None:
    r = http.post("/v1/sessions", json={"name": "bad", "starter": starter})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == code and needle in r.json()["message"]


def test_a_failed_clone_leaves_nothing_behind(http: httpx.Client, repos: Path) -> None:
    (repos / "not-a-repo").mkdir(exist_ok=True)
    r = http.post("/v1/sessions", json={"name": "x", "starter": {
        "type": "git", "url": str(repos / "not-a-repo")}})
    assert r.status_code == 400 and "git clone failed" in r.json()["message"]
    assert http.get("/v1/sessions").json()["sessions"] == []


@pytest.mark.parametrize("body, needle", [
    ({"base": "cobol"}, "unknown base"),
    ({"model": "gpt-4"}, "opus, sonnet, haiku"),
    ({"runtime": "docker"}, "runtime"),
    ({"name": ""}, "name"),
    ({"approval": {"shell": "sometimes"}}, "shell"),
])
def test_bad_session_fields_are_400(http: httpx.Client, body: dict, needle: str) -> None:
    r = http.post("/v1/sessions", json={"name": "x", **body})
    assert r.status_code == 400, r.text
    assert needle in r.json()["message"]


def test_a_base_whose_toolchain_is_missing_is_400(http: httpx.Client) -> None:
    if shutil.which("dotnet"):
        pytest.skip("this host has dotnet")
    r = http.post("/v1/sessions", json={"name": "x", "base": "dotnet"})
    assert r.status_code == 400
    assert r.json()["message"].startswith("base 'dotnet' is not available on this server: ")


def test_list_is_newest_first_and_paginated(http: httpx.Client) -> None:
    ids = [create(http, name=f"n{i}")["id"] for i in range(3)]
    page = http.get("/v1/sessions", params={"limit": 2}).json()
    assert [s["id"] for s in page["sessions"]] == ids[::-1][:2]
    rest = http.get("/v1/sessions", params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert [s["id"] for s in rest["sessions"]] == ids[:1]
    assert rest["next_cursor"] is None


def test_patch_changes_policy_and_name(http: httpx.Client) -> None:
    s = create(http)
    r = http.patch(f"/v1/sessions/{s['id']}", json={
        "name": "renamed", "approval": {"shell": "allow", "tools": {"Write": "ask"}}})
    assert r.status_code == 200
    got = http.get(f"/v1/sessions/{s['id']}").json()
    assert got["name"] == "renamed"
    assert got["approval"]["shell"] == "allow" and got["approval"]["tools"] == {"Write": "ask"}


def test_delete_removes_box_files_and_events(http: httpx.Client, server: LiveServer) -> None:
    s = create(http)
    sh(http, s["id"], "echo x > marker-for-delete.txt")
    # The box's disk is mounted in its launcher's mount namespace only: look through it.
    box = box_dir_holding(server, "workspace/marker-for-delete.txt")
    box_dir = server.data_dir / "boxes" / box.name
    assert http.delete(f"/v1/sessions/{s['id']}").status_code == 204
    assert http.get(f"/v1/sessions/{s['id']}").status_code == 404
    assert http.get(f"/v1/sessions/{s['id']}/events",
                    headers={"Accept": "application/json"}).status_code == 404
    assert not box_dir.exists()  # its directory and disk image are gone


def test_delete_ends_open_event_streams(http: httpx.Client, server: LiveServer,
                                        api_key: str) -> None:
    import threading

    s = create(http)
    ended = threading.Event()
    seen: list[str] = []

    def follow() -> None:
        with httpx.Client(base_url=server.url, timeout=30,
                          headers={"Authorization": f"Bearer {api_key}"}) as c, \
                c.stream("GET", f"/v1/sessions/{s['id']}/events") as r:
            for line in r.iter_lines():
                seen.append(line)
        ended.set()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    wait_for(lambda: any(line.startswith("id: ") for line in seen), what="the stream to start")
    assert not ended.is_set()
    assert http.delete(f"/v1/sessions/{s['id']}").status_code == 204
    wait_for(ended.is_set, 10, what="the stream of a deleted session to end")


def test_sessions_created_in_the_same_instant_are_not_skipped_across_pages(
        http: httpx.Client, server: LiveServer) -> None:
    import sqlite3

    ids = [create(http, name=f"same{i}")["id"] for i in range(4)]
    with sqlite3.connect(server.data_dir / "sophon.db") as db:
        db.executemany("UPDATE sessions SET created_at = '2026-01-01 00:00:00.000000' "
                       "WHERE id = ?", [(i,) for i in ids])
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, object] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = http.get("/v1/sessions", params=params).json()
        seen += [s["id"] for s in page["sessions"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    bad = http.get("/v1/sessions", params={"cursor": "yesterday"})
    assert bad.status_code == 400 and "next_cursor" in bad.json()["message"]


@pytest.mark.parametrize("body, needle", [
    ({"name": None}, "name cannot be null"),
    ({"approval": None}, "approval cannot be null"),
    ({"max_turns": 0}, "max_turns"),
    ({"colour": "red"}, "colour"),
])
def test_bad_patches_are_400_and_change_nothing(http: httpx.Client, body: dict,
                                                needle: str) -> None:
    s = create(http, max_turns=5)
    r = http.patch(f"/v1/sessions/{s['id']}", json=body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["message"]
    got = http.get(f"/v1/sessions/{s['id']}").json()
    assert (got["name"], got["max_turns"], got["approval"]) == (s["name"], 5, s["approval"])


def test_patch_with_null_clears_optional_limits(http: httpx.Client) -> None:
    s = create(http, max_turns=5, max_budget_usd=2.5, system_prompt="Be brief.")
    r = http.patch(f"/v1/sessions/{s['id']}",
                   json={"max_turns": None, "max_budget_usd": None, "system_prompt": None})
    assert r.status_code == 200, r.text
    got = http.get(f"/v1/sessions/{s['id']}").json()
    assert (got["max_turns"], got["max_budget_usd"], got["system_prompt"]) == (None, None, None)
