"""The editor's files, diffs, secrets, approvals and export of a session."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import tarfile
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, wait_for


@pytest.fixture
def session(http: httpx.Client) -> str:
    r = http.post("/v1/sessions", json={"name": "ws", "starter": {"type": "empty"}})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def sh(http: httpx.Client, session_id: str, command: str) -> tuple[int, str, list[dict]]:
    r = http.post(f"/v1/sessions/{session_id}/exec", json={"command": command})
    assert r.status_code == 200, r.text
    events = [json.loads(line) for line in r.content.splitlines()]
    out = "".join(ev["data"] for ev in events if ev["type"] == "exec_output")
    return events[-1]["exit_code"], out, events


def all_events(http: httpx.Client, session_id: str) -> list[dict]:
    r = http.get(f"/v1/sessions/{session_id}/events", params={"limit": 5000},
                 headers={"Accept": "application/json"})
    return list(r.json()["events"])


def test_files_tree_read_and_write_with_etags(http: httpx.Client, session: str) -> None:
    base = f"/v1/sessions/{session}/files"
    created = http.put(f"{base}/src/app.py", content=b"print('v1')\n")
    assert created.status_code == 201
    etag = created.headers["etag"]
    tree = http.get(base).json()
    assert [e["path"] for e in tree["entries"]] == ["src", "src/app.py"]  # no .git
    got = http.get(f"{base}/src/app.py")
    assert got.json()["content"] == "print('v1')\n" and got.headers["etag"] == etag
    # The agent (here: an exec) changes the file after the editor read it.
    sh(http, session, "echo \"print('agent')\" > src/app.py")
    stale = http.put(f"{base}/src/app.py", content=b"print('editor')\n",
                     headers={"If-Match": etag})
    assert stale.status_code == 412 and stale.json()["error"] == "precondition_failed"
    assert http.get(f"{base}/src/app.py").json()["content"] == "print('agent')\n"
    # Without If-Match an existing file is not overwritten either.
    blind = http.put(f"{base}/src/app.py", content=b"x")
    assert blind.status_code == 428 and "If-Match" in blind.json()["message"]
    fresh = http.get(f"{base}/src/app.py").headers["etag"]
    ok = http.put(f"{base}/src/app.py", content=b"print('editor')\n",
                  headers={"If-Match": fresh})
    assert ok.status_code == 200 and ok.headers["etag"] != fresh
    exists = http.put(f"{base}/src/app.py", content=b"y", headers={"If-None-Match": "*"})
    assert exists.status_code == 412


def test_binary_large_and_missing_files_say_so(http: httpx.Client, session: str) -> None:
    base = f"/v1/sessions/{session}/files"
    sh(http, session, "printf 'a\\0b' > bin.dat && head -c 3000000 /dev/zero > big.dat")
    binary = http.get(f"{base}/bin.dat").json()
    assert binary["binary"] and binary["encoding"] == "base64" and binary["content"] == "YQBi"
    big = http.get(f"{base}/big.dat").json()
    assert big["truncated"] and big["content"] is None and big["size"] == 3000000
    missing = http.get(f"{base}/nope.txt")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_paths_that_leave_the_workspace_are_400(http: httpx.Client, session: str) -> None:
    base = f"/v1/sessions/{session}/files"
    sh(http, session, "ln -s /etc/passwd passwd-link && ln -s / root-link && "
                      "ln -s .. up && mkdir d && ln -s ../.. d/upup")
    # (httpx would normalise a literal "../" away, so the dots are percent-encoded.)
    for path in ("%2E%2E/%2E%2E/etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd",
                 "passwd-link", "root-link/etc/passwd", "up/workspace", "d/upup/etc/hosts"):
        r = http.get(f"{base}/{path}")
        assert r.status_code == 400, (path, r.status_code, r.text)
        assert r.json()["error"] == "path_outside_workspace", path
        w = http.put(f"{base}/{path}", content=b"pwned", headers={"If-None-Match": "*"})
        assert w.status_code == 400, (path, w.text)
    # Nothing was written through a link: the link targets are unchanged.
    code, out, _ = sh(http, session, "readlink passwd-link; ls /; cat /etc/hostname")
    assert out.startswith("/etc/passwd\n") and "pwned" not in out


def test_diff_against_head_and_since(http: httpx.Client, session: str) -> None:
    sh(http, session, "echo one > a.txt && git add a.txt && "
                      "git -c user.name=t -c user.email=t@t commit -qm a")
    _, head, _ = sh(http, session, "git rev-parse HEAD")
    sh(http, session, "echo two >> a.txt && echo new > b.txt")
    d = http.get(f"/v1/sessions/{session}/diff").json()
    assert d["base"] == "HEAD"
    assert "+two" in d["diff"] and "b/b.txt" in d["diff"] and "+new" in d["diff"]
    _, first, _ = sh(http, session, "git rev-list --max-parents=0 HEAD")
    since = http.get(f"/v1/sessions/{session}/diff", params={"since": first.strip()}).json()
    assert "+one" in since["diff"]
    bad = http.get(f"/v1/sessions/{session}/diff", params={"since": "nosuchref"})
    assert bad.status_code == 400 and "no commit" in bad.json()["message"]
    inject = http.get(f"/v1/sessions/{session}/diff", params={"since": "--output=/x"})
    assert inject.status_code == 400
    assert head  # the first commit exists


def test_secrets_are_injected_listed_by_name_and_redacted(
    http: httpx.Client, session: str, server: LiveServer
) -> None:
    token = "s3cr3t-value-9f8e7d"
    base = f"/v1/sessions/{session}/secrets"
    assert http.put(f"{base}/API_TOKEN", json={"value": token}).status_code == 204
    assert http.put(f"{base}/lower", json={"value": "x"}).status_code == 400
    assert http.get(base).json() == {"names": ["API_TOKEN"]}
    code, out, streamed = sh(http, session, 'echo "token=$API_TOKEN"; echo "$API_TOKEN" > t.txt')
    assert code == 0
    assert out == "token=[redacted]\n"
    assert token not in json.dumps(streamed)
    wait_for(lambda: any(e["type"] == "file_change" and e["path"] == "t.txt"
                         for e in all_events(http, session)), what="the file_change")
    stored = json.dumps(all_events(http, session))
    assert token not in stored and "[redacted]" in stored
    # The file itself holds the real value (it is the workload's), but the editor view
    # is the owner's own read: redaction applies to events, not to files.
    assert token not in (server.data_dir / "server.log").read_text()
    assert token.encode() not in (server.data_dir / "sophon.db").read_bytes()
    assert http.delete(f"{base}/API_TOKEN").status_code == 204
    assert http.get(base).json() == {"names": []}
    assert http.delete(f"{base}/API_TOKEN").status_code == 404


def test_export_round_trip(http: httpx.Client, session: str, tmp_path: Path) -> None:
    sh(http, session, "echo hello > hello.txt && git add -A && "
                      "git -c user.name=t -c user.email=t@t commit -qm 'add hello'")
    r = http.get(f"/v1/sessions/{session}/export")
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        names = tar.getnames()
        tar.extractall(tmp_path, filter="data")
    assert "project/hello.txt" in names and "events.jsonl" in names and "session.json" in names
    log = subprocess.run(["git", "-c", f"safe.directory={tmp_path / 'project'}", "log",
                          "--format=%s"], cwd=tmp_path / "project", capture_output=True,
                         text=True, check=True).stdout
    assert log == "add hello\nInitial commit\n"
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "session_start"
    assert json.loads((tmp_path / "session.json").read_text())["id"] == session


def _insert_pending_approval(server: LiveServer, session_id: str) -> str:
    """A pending approval as a runtime leaves it (e.g. one asked before a restart)."""
    from sophon.store.db import make_engine, sessionmaker
    from sophon.store.tables import ApprovalRow

    async def insert() -> None:
        engine = make_engine(f"sqlite+aiosqlite:///{server.data_dir / 'sophon.db'}")
        async with sessionmaker(engine)() as db:
            db.add(ApprovalRow(id="apr_test0001", session_id=session_id, tool="Bash",
                               input={"command": "rm -rf build"}, reason="first shell use",
                               status="pending", remember=False))
            await db.commit()
        await engine.dispose()

    asyncio.run(insert())
    return "apr_test0001"


def test_pending_approval_is_listed_and_answered_once(
    http: httpx.Client, session: str, server: LiveServer
) -> None:
    approval_id = _insert_pending_approval(server, session)
    pending = http.get(f"/v1/sessions/{session}/approvals").json()["approvals"]
    assert [(a["approval_id"], a["tool"]) for a in pending] == [(approval_id, "Bash")]
    bad = http.post(f"/v1/sessions/{session}/approvals/{approval_id}",
                    json={"decision": "maybe"})
    assert bad.status_code == 400
    r = http.post(f"/v1/sessions/{session}/approvals/{approval_id}",
                  json={"decision": "deny", "reason": "not now"})
    assert r.status_code == 200 and r.json()["type"] == "approval_decision"
    again = http.post(f"/v1/sessions/{session}/approvals/{approval_id}",
                      json={"decision": "allow"})
    assert again.status_code == 409
    assert http.get(f"/v1/sessions/{session}/approvals").json()["approvals"] == []
    decision = [e for e in all_events(http, session) if e["type"] == "approval_decision"]
    assert decision[0]["decision"] == "deny" and decision[0]["reason"] == "not now"
    unknown = http.post(f"/v1/sessions/{session}/approvals/apr_nope", json={"decision": "allow"})
    assert unknown.status_code == 404


def test_exec_timeout_and_exit_codes(http: httpx.Client, session: str) -> None:
    r = http.post(f"/v1/sessions/{session}/exec", json={"command": "sleep 5", "timeout": 1})
    end = json.loads(r.content.splitlines()[-1])
    assert end["type"] == "exec_end" and end["error"] == "timeout"
    code, _, events = sh(http, session, "exit 4")
    assert code == 4 and [e["type"] for e in events] == ["exec_start", "exec_end"]
    assert http.post(f"/v1/sessions/{session}/exec", json={"command": ""}).status_code == 400
