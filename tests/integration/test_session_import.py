"""A session exported and imported again: its settings, project with git history and
events come back as a new session, and the conversation goes on; a bad archive is a
clear 400 that leaves nothing behind."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Iterator

import httpx
import pytest

from sophon.testing import ModelServer
from tests.conftest import LiveServer, serve_with_model
from tests.integration.session_support import events, sh, turn, user


@pytest.fixture(scope="module")
def server(model: ModelServer) -> Iterator[LiveServer]:
    with serve_with_model(model) as srv:
        yield srv


def archive(members: dict[str, bytes | None]) -> bytes:
    """A tar.gz of these members (None: a directory)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def import_(http: httpx.Client, data: bytes, name: str | None = None) -> httpx.Response:
    return http.post("/v1/sessions/import", content=data,
                     params={"name": name} if name else None,
                     headers={"Content-Type": "application/gzip"})


def test_an_exported_session_comes_back_and_its_conversation_goes_on(
        server: LiveServer, model: ModelServer) -> None:
    model.set_script(["the first answer", "the second answer"])
    with user(server) as alice, user(server) as bob:
        r = alice.post("/v1/sessions", json={
            "name": "calc", "base": "python", "model": "haiku",
            "starter": {"type": "template", "name": "python"},
            "system_prompt": "Be brief.", "approval": {"shell": "allow"}, "max_turns": 7,
            "network": {"allow": ["api.example.com"]}})
        assert r.status_code == 201, r.text
        old = r.json()["id"]
        sh(alice, old, "echo more >> calc.py && git commit -qam 'second commit' && "
                       "echo uncommitted > notes.txt")
        turn(alice, old, "the first question")
        exported = alice.get(f"/v1/sessions/{old}/export")
        assert exported.status_code == 200

        # Another user imports it, under a name of their own.
        r = import_(bob, exported.content, name="restored")
        assert r.status_code == 201, r.text
        new = r.json()
        assert new["id"] != old and new["name"] == "restored" and new["status"] == "idle"
        assert (new["base"], new["model"], new["runtime"], new["system_prompt"],
                new["max_turns"]) == ("python", "haiku", "native", "Be brief.", 7)
        assert new["approval"]["shell"] == "allow"
        assert new["network"]["allow"] == ["api.example.com"]
        sid = new["id"]
        assert sh(bob, sid, "git log --format=%s") == "second commit\nInitial commit\n"
        assert sh(bob, sid, "cat notes.txt; git status --short") == \
            "uncommitted\n?? notes.txt\n"
        evs = events(bob, sid)
        assert [e["content"] for e in evs if e["type"] == "user"] == ["the first question"]
        assert [e["text"] for e in evs if e["type"] == "assistant"] == ["the first answer"]
        [note] = [e for e in evs if "imported from" in (e.get("detail") or "")]
        assert note["detail"].startswith(f"imported from an export of calc ({old}): ")
        assert alice.get(f"/v1/sessions/{sid}").status_code == 404  # bob's, not alice's

        # The next message carries the imported conversation to the model.
        evs = turn(bob, sid, "the second question")
        said = json.dumps(model.requests[-1]["messages"])
        assert "the first question" in said and "the first answer" in said
        assert [e["text"] for e in evs if e["type"] == "assistant"][-1] == "the second answer"
        # The original is untouched.
        assert alice.get(f"/v1/sessions/{old}").json()["name"] == "calc"


def test_a_connector_the_importer_lacks_is_left_out_and_said(server: LiveServer) -> None:
    with user(server) as alice, user(server) as bob:
        assert alice.post("/v1/connectors", json={
            "name": "docs", "type": "http", "host": "docs.example.com",
            "header": "X-Key", "value": "k-123456"}).status_code == 201
        sid = alice.post("/v1/sessions", json={"name": "n", "connectors": ["docs"]}
                         ).json()["id"]
        data = alice.get(f"/v1/sessions/{sid}/export").content
        mine = import_(alice, data)
        assert mine.status_code == 201 and mine.json()["connectors"] == ["docs"]
        theirs = import_(bob, data)
        assert theirs.status_code == 201 and theirs.json()["connectors"] == []
        note = events(bob, theirs.json()["id"])[-1]["detail"]  # no exec since
        assert "connectors you do not have were left out: docs" in note


@pytest.mark.parametrize(("data", "says"), [
    (b"not an archive at all", "the archive cannot be imported: it is not a gzip file"),
    (gzip.compress(b"plain text, gzipped"), "no project/ directory in it"),
    (archive({"session.json": b"{}"}), "no project/ directory in it"),
    (archive({"project/": None, "project/a.txt": b"a"}), "no session.json in it"),
    (archive({"project/": None, "session.json": b"[1, 2"}), "session.json is not JSON"),
    (archive({"project/": None, "session.json": json.dumps(
        {"name": "x", "model": "gpt-4"}).encode()}), "session.json: model"),
    (archive({"project/": None, "session.json": b'{"name": "x"}',
              "events.jsonl": b'{"type": "nonsense", "seq": 1}\n'}),
     "events.jsonl holds something that is not one of Sophon's events"),
], ids=["text", "gzip-not-tar", "no-project", "no-settings", "bad-json", "bad-model",
        "bad-event"])
def test_a_bad_archive_is_a_clear_400_and_leaves_nothing(server: LiveServer, data: bytes,
                                                         says: str) -> None:
    with user(server) as http:
        r = import_(http, data)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "invalid_request"
        assert says in r.json()["message"], r.json()["message"]
        assert http.get("/v1/sessions").json()["sessions"] == []
    assert not list((server.data_dir / "boxes").glob("g*"))  # no staging box is left


def test_an_archive_without_events_or_git_still_makes_a_session(server: LiveServer) -> None:
    with user(server) as http:
        r = import_(http, archive({"project/": None, "project/a.txt": b"hello\n",
                                   "session.json": b'{"name": "bare"}'}))
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        assert sh(http, sid, "cat a.txt; git log --format=%s") == "hello\nImported\n"
