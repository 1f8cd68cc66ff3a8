"""Checkpoints, rewind and fork: every step that changes files is kept; a session goes
back to any of them (files exactly, the conversation cut), the rewind can be undone, and
a fork starts a new session from one; the user's branches, index and stash are never
touched."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sophon.testing import ModelServer
from tests.conftest import LiveServer, serve_with_model, wait_for
from tests.integration.mcp_support import DEMO, SERVER
from tests.integration.session_support import events, sh, turn, user


def tool(name: str, **input: Any) -> dict[str, Any]:
    return {"type": "tool_use", "name": name, "input": input}


# Turn 1 writes a.txt; turn 2 writes b.txt, then removes a.txt and writes an ignored
# file with Bash; turn 3 only talks.
SCRIPT = {"turns": [
    {"content": [tool("Write", file_path="/workspace/a.txt", content="one\n")]},
    "first turn done",
    {"content": [tool("Write", file_path="/workspace/b.txt", content="two\n")]},
    {"content": [tool("Bash", command="rm a.txt && mkdir -p logs && echo noise > "
                                      "logs/run.log && echo ok")]},
    "second turn done",
    "third turn done",
    "fourth turn done",
]}


@pytest.fixture(scope="module")
def server(model: ModelServer) -> Iterator[LiveServer]:
    with serve_with_model(model) as srv:
        yield srv


def checkpoints(http: httpx.Client, sid: str) -> list[dict[str, Any]]:
    r = http.get(f"/v1/sessions/{sid}/checkpoints")
    assert r.status_code == 200, r.text
    return list(r.json()["checkpoints"])


def files(http: httpx.Client, sid: str) -> str:
    """The workspace's files (not .git) with their contents, one per line."""
    return sh(http, sid, "find . -path ./.git -prune -o -type f -print | sort | "
                         "while read f; do echo \"$f=$(cat \"$f\")\"; done")


def rewind(http: httpx.Client, sid: str, cp: str, **what: bool) -> httpx.Response:
    return http.post(f"/v1/sessions/{sid}/rewind", json={"checkpoint": cp, **what})


def two_turns(http: httpx.Client, model: ModelServer) -> str:
    model.set_script(SCRIPT)
    sid = http.post("/v1/sessions", json={"name": "cp", "approval": {"shell": "allow"}}
                    ).json()["id"]
    # Committed: the tree is HEAD's, which is no change (no checkpoint).
    sh(http, sid, "echo logs/ > .gitignore && git add .gitignore && git commit -qm ignore")
    turn(http, sid, "FIRST: write a.txt")
    turn(http, sid, "SECOND: write b.txt and remove a.txt")
    return sid


def test_each_step_that_changes_files_is_a_checkpoint(server: LiveServer,
                                                      model: ModelServer) -> None:
    with user(server) as http:
        sid = two_turns(http, model)
        cps = checkpoints(http, sid)
        # The first turn's start (the base of its diff: the tree as HEAD has it), then
        # turn 1's Write (its first tool call) and turn 2's Write and Bash, and each
        # turn's end (always, changed or not).
        got = [(c["turn"], c["reason"], c["step"]) for c in cps]
        assert got == [(1, "turn_start", None), (1, "tool", 1), (1, "turn_end", None),
                       (2, "tool", 1), (2, "tool", 2), (2, "turn_end", None)], got
        assert cps[0]["files"] == []
        assert [(f["path"], f["change"]) for f in cps[1]["files"]] == [("a.txt", "added")]
        assert cps[2]["files"] == [] and cps[2]["commit"] == cps[1]["commit"]
        assert [(f["path"], f["change"]) for f in cps[3]["files"]] == [("b.txt", "added")]
        # A Bash change is one too; the ignored logs/ is not in it.
        assert [(f["path"], f["change"]) for f in cps[4]["files"]] == [("a.txt", "deleted")]
        tool_uses = [e["tool_use_id"] for e in events(http, sid) if e["type"] == "tool_use"]
        assert [c["tool_use_id"] for c in cps if c["reason"] == "tool"] == tool_uses
        assert [c["seq"] for c in cps] == sorted(c["seq"] for c in cps)  # oldest first
        # An outside edit (an editor save) and an exec are checkpointed too (just after
        # them, in the background of the request).
        put = http.put(f"/v1/sessions/{sid}/files/c.txt", content=b"three\n",
                       headers={"If-None-Match": "*"})
        assert put.status_code == 201, put.text
        saved = wait_for(lambda: checkpoints(http, sid)[6:], 10, 0.05, "the save's checkpoint")
        assert [(c["reason"], c["turn"], [f["path"] for f in c["files"]])  # type: ignore[attr-defined]
                for c in saved] == [("save", 2, ["c.txt"])]
        sh(http, sid, "echo four > d.txt")
        done = wait_for(lambda: checkpoints(http, sid)[7:], 10, 0.05, "the exec's checkpoint")
        assert [(c["reason"], [f["path"] for f in c["files"]])  # type: ignore[attr-defined]
                for c in done] == [("exec", ["d.txt"])]
        # Each is a commit under the hidden refs; the user's own repository is as they
        # left it: one branch, a clean index, no stash.
        refs = sh(http, sid, "git for-each-ref --format='%(refname)' refs/sophon/checkpoints")
        assert len(refs.split()) == 8
        assert sh(http, sid, "git branch --format='%(refname:short)'; git stash list; "
                             "git diff --cached --stat; git log --format=%s") == \
            "main\nignore\nInitial commit\n"
        # Nothing changed: no checkpoint but the turn's end, with no new commit.
        count = len(checkpoints(http, sid))
        sh(http, sid, "cat d.txt")
        turn(http, sid, "THIRD: just talk")
        cps = checkpoints(http, sid)
        assert [c["reason"] for c in cps[count:]] == ["turn_end"]
        assert cps[-1]["commit"] == cps[-2]["commit"] and cps[-1]["files"] == []


def test_a_rewind_restores_files_and_cuts_the_conversation_and_can_be_undone(
        server: LiveServer, model: ModelServer) -> None:
    with user(server) as http:
        sid = two_turns(http, model)
        sh(http, sid, "echo later > e.txt")  # a file added after: it goes
        before = files(http, sid)
        assert before == "./.gitignore=logs/\n./b.txt=two\n./e.txt=later\n" \
                         "./logs/run.log=noise\n"
        end_of_first = [c for c in checkpoints(http, sid) if c["turn"] == 1][-1]
        r = rewind(http, sid, end_of_first["id"], files=True, conversation=True)
        assert r.status_code == 200, r.text
        event = r.json()
        assert event["type"] == "rewind" and event["to_seq"] == end_of_first["seq"]
        # Exactly as it was, the ignored file left alone.
        assert files(http, sid) == "./.gitignore=logs/\n./a.txt=one\n./logs/run.log=noise\n"
        assert sh(http, sid, "git log --format=%s; git diff --cached --stat") == \
            "ignore\nInitial commit\n"
        reasons = [c["reason"] for c in checkpoints(http, sid)][-2:]
        assert reasons == ["before_rewind", "rewind"]

        # The model no longer hears of the second turn.
        turn(http, sid, "THIRD: anything left?")
        said = json.dumps(model.requests[-1]["messages"])
        assert "FIRST" in said and "first turn done" in said
        assert "SECOND" not in said and "second turn done" not in said
        assert "THIRD" in said

        # Undone: the files and the conversation as they were just before the rewind.
        r = rewind(http, sid, event["undo"], files=True, conversation=True)
        assert r.status_code == 200, r.text
        assert files(http, sid) == before
        turn(http, sid, "FOURTH: and now?")
        said = json.dumps(model.requests[-1]["messages"])
        assert "SECOND" in said and "second turn done" in said
        assert "THIRD" not in said and "FOURTH" in said


def test_files_or_conversation_alone(server: LiveServer, model: ModelServer) -> None:
    with user(server) as http:
        sid = two_turns(http, model)
        first = [c for c in checkpoints(http, sid) if c["turn"] == 1][-1]["id"]
        r = rewind(http, sid, first, files=False, conversation=True)
        assert r.status_code == 200, r.text
        assert "./b.txt=two" in files(http, sid)  # the files stay as they are
        turn(http, sid, "THIRD")
        assert "SECOND" not in json.dumps(model.requests[-1]["messages"])
        r = rewind(http, sid, first, files=True, conversation=False)
        assert r.status_code == 200, r.text
        assert "./a.txt=one" in files(http, sid)
        turn(http, sid, "FOURTH")
        said = json.dumps(model.requests[-1]["messages"])
        assert "THIRD" in said and "FOURTH" in said  # the conversation went on


def test_a_fork_starts_where_the_checkpoint_was(server: LiveServer,
                                                model: ModelServer) -> None:
    with user(server) as http:
        sid = http.post("/v1/sessions", json={"name": "orig", "approval": {"shell": "allow"}}
                        ).json()["id"]
        assert http.put(f"/v1/sessions/{sid}/secrets/TOKEN", json={"value": "s3cret-v"}
                        ).status_code == 204
        model.set_script(SCRIPT)
        turn(http, sid, "FIRST: write a.txt")
        turn(http, sid, "SECOND: write b.txt and remove a.txt")
        first = [c for c in checkpoints(http, sid) if c["turn"] == 1][-1]
        r = http.post(f"/v1/sessions/{sid}/fork", json={"checkpoint": first["id"],
                                                        "name": "branch"})
        assert r.status_code == 201, r.text
        fork = r.json()
        assert fork["id"] != sid and fork["name"] == "branch"
        assert fork["approval"]["shell"] == "allow"
        assert files(http, fork["id"]) == "./a.txt=one\n"
        # The secret came along (its value is redacted from what is shown back).
        assert sh(http, fork["id"], '[ "$TOKEN" = s3cret-v ] && echo same') == "same\n"
        evs = events(http, fork["id"])
        assert [e["content"] for e in evs if e["type"] == "user"] == ["FIRST: write a.txt"]
        [note] = [e for e in evs if "forked from" in (e.get("detail") or "")]
        assert note["detail"].startswith(f"forked from orig ({sid}) at checkpoint {first['id']}")
        # The fork's checkpoints go back as far as the original's did at that point.
        assert [c["id"] for c in checkpoints(http, fork["id"])] == \
            [c["id"] for c in checkpoints(http, sid) if c["seq"] <= first["seq"]]
        turn(http, fork["id"], "THIRD: in the fork")
        said = json.dumps(model.requests[-1]["messages"])
        assert "FIRST" in said and "SECOND" not in said
        # The original is untouched.
        assert files(http, sid) == "./b.txt=two\n./logs/run.log=noise\n"


def test_review_what_a_turn_changed(server: LiveServer, model: ModelServer) -> None:
    with user(server) as http:
        sid = two_turns(http, model)
        r = http.get(f"/v1/sessions/{sid}/turns/2/diff")
        assert r.status_code == 200, r.text
        diff = r.json()["diff"]
        assert "+++ b/b.txt" in diff and "+two" in diff
        assert "--- a/a.txt" in diff and "-one" in diff
        assert "logs/run.log" not in diff and ".gitignore" not in diff
        one = http.get(f"/v1/sessions/{sid}/turns/1/diff").json()["diff"]
        assert "+one" in one and "b.txt" not in one
        cps = checkpoints(http, sid)
        between = http.get(f"/v1/sessions/{sid}/checkpoints/diff",
                           params={"from": cps[0]["id"], "to": cps[-1]["id"]}).json()
        assert "+two" in between["diff"] and "a.txt" not in between["diff"]
        assert http.get(f"/v1/sessions/{sid}/turns/9/diff").status_code == 404


def test_what_cannot_be_rewound_is_said(server: LiveServer, model: ModelServer) -> None:
    with user(server) as http, user(server) as stranger:
        sid = two_turns(http, model)
        cp = checkpoints(http, sid)[-1]["id"]
        r = rewind(http, sid, "cp_0123456789abcdef", files=True)
        assert r.status_code == 404 and "no checkpoint" in r.json()["message"]
        r = rewind(http, sid, cp, files=False, conversation=False)
        assert r.status_code == 400 and "files, conversation or both" in r.text
        assert rewind(http, sid, "not-an-id").status_code == 400
        assert rewind(stranger, sid, cp).status_code == 404
        assert stranger.get(f"/v1/sessions/{sid}/checkpoints").status_code == 404
        assert stranger.post(f"/v1/sessions/{sid}/fork", json={"checkpoint": cp}
                             ).status_code == 404
        # During a turn: a 409, and nothing changes.
        model.set_script({"turns": [{"content": [tool("Bash", command="sleep 5")]}, "ok"]})
        assert http.post(f"/v1/sessions/{sid}/messages", json={"content": "wait"}
                         ).status_code == 202
        wait_for(lambda: http.get(f"/v1/sessions/{sid}").json()["status"] == "running",
                 10, 0.05, "the turn to run")
        r = rewind(http, sid, cp)
        assert r.status_code == 409 and r.json()["error"] == "turn_in_progress"
        assert http.post(f"/v1/sessions/{sid}/interrupt").status_code == 200


def test_checkpoints_survive_a_restart_and_an_export(server: LiveServer,
                                                     model: ModelServer) -> None:
    with user(server) as http:
        sid = two_turns(http, model)
        cps = checkpoints(http, sid)
        exported = http.get(f"/v1/sessions/{sid}/export")
        assert exported.status_code == 200
        r = http.post("/v1/sessions/import", content=exported.content,
                      headers={"Content-Type": "application/gzip"})
        assert r.status_code == 201, r.text
        copy = r.json()["id"]
        assert [c["id"] for c in checkpoints(http, copy)] == [c["id"] for c in cps]
        first = [c for c in cps if c["turn"] == 1][-1]["id"]
        assert rewind(http, copy, first).status_code == 200
        assert files(http, copy) == "./.gitignore=logs/\n./a.txt=one\n./logs/run.log=noise\n"
    server.restart()
    with httpx.Client(base_url=server.url, timeout=120, headers=http.headers) as again:
        assert [c["id"] for c in checkpoints(again, sid)] == [c["id"] for c in cps]
        assert rewind(again, sid, first).status_code == 200
        assert "./a.txt=one" in files(again, sid)


EDITS = {"turns": [
    {"content": [tool("Write", file_path="/workspace/app.py",
                      content="".join(f"line {i}\n" for i in range(1, 31)))]},
    "wrote app.py",
    {"content": [tool("Bash", command="sed -i -e 's/^line 2$/line two/' "
                                      "-e 's/^line 28$/line twenty-eight/' app.py")]},
    "edited app.py",
    "noted",
    "addressed",
]}


def test_a_rejected_hunk_is_reverted_and_told_to_the_agent(server: LiveServer,
                                                           model: ModelServer) -> None:
    with user(server) as http:
        model.set_script(EDITS)
        sid = http.post("/v1/sessions", json={"name": "review", "approval": {"shell": "allow"}}
                        ).json()["id"]
        turn(http, sid, "write app.py")
        turn(http, sid, "rename two lines")
        diff = http.get(f"/v1/sessions/{sid}/turns/2/diff").json()["diff"]
        assert diff.count("\n@@ ") == 2  # two hunks, far apart
        r = http.post(f"/v1/sessions/{sid}/turns/2/review",
                      json={"reject": [{"path": "app.py", "hunk": 1}]})
        assert r.status_code == 200, r.text
        review = r.json()
        assert review["type"] == "review" and "line twenty-eight" in review["rejected"][0]["patch"]
        text = sh(http, sid, "cat app.py")
        assert "line two\n" in text and "line 28\n" in text  # only the second hunk went
        assert checkpoints(http, sid)[-1]["reason"] == "review"
        # Told with the next message, before it.
        turn(http, sid, "what now?")
        said = model.requests[-1]["messages"][-1]["content"][-1]["text"]
        assert said.startswith("I reviewed what turn 2 changed and rejected these hunks")
        assert "line twenty-eight" in said and said.endswith("what now?")
        # Comments are a message of their own, at once.
        asked = len(model.requests)
        r = http.post(f"/v1/sessions/{sid}/turns/1/review",
                      json={"comments": [{"path": "app.py", "line": 3, "text": "say why"}]})
        assert r.status_code == 200, r.text
        wait_for(lambda: len(model.requests) == asked + 1 and
                 http.get(f"/v1/sessions/{sid}").json()["status"] == "idle", 30, 0.05,
                 "the comments' turn")
        said = model.requests[-1]["messages"][-1]["content"][-1]["text"]
        assert "- app.py:3: say why" in said
        # A hunk that is not there, or no longer applies, is said; nothing changes.
        r = http.post(f"/v1/sessions/{sid}/turns/2/review",
                      json={"reject": [{"path": "app.py", "hunk": 5}]})
        assert r.status_code == 400 and "no hunk 5" in r.json()["message"]
        r = http.post(f"/v1/sessions/{sid}/turns/2/review",
                      json={"reject": [{"path": "app.py", "hunk": 1}]})  # reverted already
        assert r.status_code == 409 and "cannot be taken back" in r.json()["message"]
        assert sh(http, sid, "cat app.py") == text
        assert http.post(f"/v1/sessions/{sid}/turns/2/review", json={}).status_code == 400


def test_a_file_over_the_size_limit_is_left_out_and_left_alone(server: LiveServer,
                                                               model: ModelServer) -> None:
    with user(server) as http:
        sid = two_turns(http, model)
        sh(http, sid, "head -c 11M /dev/zero > big.bin && echo small > small.txt")
        last = wait_for(lambda: [c for c in checkpoints(http, sid) if c["reason"] == "exec"],
                        10, 0.05, "the exec's checkpoint")
        # Over 10 MiB (SOPHON_CHECKPOINT_MAX_FILE_MB): not kept, so not in the list.
        assert [f["path"] for f in last[-1]["files"]] == ["small.txt"]  # type: ignore[index]
        first = [c for c in checkpoints(http, sid) if c["turn"] == 1][-1]["id"]
        assert rewind(http, sid, first, files=True, conversation=False).status_code == 200
        assert sh(http, sid, "ls; stat -c %s big.bin") == "a.txt\nbig.bin\nlogs\n11534336\n"


def test_a_retention_setting_removes_the_oldest_and_says_so(model: ModelServer) -> None:
    with serve_with_model(model, SOPHON_CHECKPOINT_KEEP="3") as srv, user(srv) as http:
        sid = http.post("/v1/sessions", json={"name": "kept"}).json()["id"]
        for i in range(5):
            sh(http, sid, f"echo {i} > n{i}.txt")
            wait_for(lambda i=i: sum(e["type"] == "checkpoint" for e in events(http, sid))
                     > i, 10, 0.05, "the exec's checkpoint")
        logged = [e for e in events(http, sid) if e["type"] == "checkpoint"]
        listed = checkpoints(http, sid)
        assert [c["id"] for c in listed] == [e["checkpoint_id"] for e in logged[-3:]]
        # Each removal is named by the checkpoint taken as it happened.
        assert [e["pruned"] for e in logged] == [[], [], [], [logged[0]["checkpoint_id"]],
                                                 [logged[1]["checkpoint_id"]]]
        refs = sh(http, sid, "git for-each-ref --format='%(refname)' refs/sophon/checkpoints")
        assert len(refs.split()) == 3
        r = rewind(http, sid, logged[0]["checkpoint_id"])
        assert r.status_code == 404 and "SOPHON_CHECKPOINT_KEEP" in r.json()["message"]
        assert rewind(http, sid, listed[0]["id"]).status_code == 200
        assert "n2.txt" in sh(http, sid, "ls") and "n3.txt" not in sh(http, sid, "ls")


def test_a_review_is_told_once_to_messages_queued_after_it(server: LiveServer,
                                                          model: ModelServer) -> None:
    with user(server) as http:
        model.set_script({"turns": [*EDITS["turns"][:4], "first", "second"]})
        sid = http.post("/v1/sessions", json={"name": "once", "approval": {"shell": "allow"}}
                        ).json()["id"]
        turn(http, sid, "write app.py")
        turn(http, sid, "rename two lines")
        assert http.post(f"/v1/sessions/{sid}/turns/2/review",
                         json={"reject": [{"path": "app.py", "hunk": 0}]}).status_code == 200
        for content in ("ONE", "TWO"):
            assert http.post(f"/v1/sessions/{sid}/messages",
                             json={"content": content, "queue": True}).status_code == 202
        wait_for(lambda: sum(e["type"] == "user" for e in events(http, sid)) == 4 and
                 http.get(f"/v1/sessions/{sid}").json()["status"] == "idle", 30, 0.05,
                 "both turns")
        said = [e["content"] for e in events(http, sid) if e["type"] == "user"][2:]
        assert said[0].startswith("I reviewed what turn 2 changed") and said[0].endswith("ONE")
        assert said[1] == "TWO"


def test_checkpoints_are_kept_while_the_box_sleeps(model: ModelServer) -> None:
    """A sleeping session's box is stopped: its checkpoints are still listed, and a
    rewind wakes the box and restores from them."""
    with serve_with_model(model, SOPHON_SESSION_IDLE_SECONDS="0.5",
                          SOPHON_IDLE_CHECK_SECONDS="0.1") as srv, user(srv) as http:
        sid = http.post("/v1/sessions", json={"name": "sleepy"}).json()["id"]
        sh(http, sid, "echo one > one.txt")
        first = wait_for(lambda: checkpoints(http, sid), 10, 0.05, "the exec's checkpoint")
        sh(http, sid, "echo two > two.txt && rm one.txt")
        wait_for(lambda: len(checkpoints(http, sid)) == 2, 10, 0.05, "the second checkpoint")
        wait_for(lambda: http.get(f"/v1/sessions/{sid}").json()["status"] == "sleeping",
                 20, 0.05, "the session to sleep")
        assert [c["id"] for c in checkpoints(http, sid)][:1] == [first[0]["id"]]
        r = rewind(http, sid, first[0]["id"], files=True, conversation=False)
        assert r.status_code == 200, r.text
        assert files(http, sid) == "./one.txt=one\n"


def test_an_mcp_tool_that_writes_is_checkpointed(server: LiveServer,
                                                 model: ModelServer) -> None:
    with user(server) as http:
        model.set_script({"turns": [{"content": [{
            "type": "tool_use", "id": "m1", "name": "mcp__demo__shout",
            "input": {"text": "save"}}]}, "saved it"]})
        sid = http.post("/v1/sessions", json={
            "name": "mcp", "base": "python", "mcp_servers": [DEMO],
            "approval": {"tools": {"mcp__demo__shout": "allow"}}}).json()["id"]
        assert http.put(f"/v1/sessions/{sid}/files/demo_server.py",
                        content=SERVER.encode()).status_code == 201
        wait_for(lambda: checkpoints(http, sid), 10, 0.05, "the save's checkpoint")
        turn(http, sid, "save with the tool")
        [made] = [c for c in checkpoints(http, sid) if c["reason"] == "tool"]
        assert made["tool_use_id"] == "m1"
        assert [(f["path"], f["change"]) for f in made["files"]] == [("saved.txt", "added")]
