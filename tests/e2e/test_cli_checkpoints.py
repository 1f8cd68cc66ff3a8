"""`sophon claude-code checkpoints|rewind|fork|review` as a user types them: list what was
kept, see what a turn changed, go back (and undo it), start a fork, and mistakes said in
one line."""

from __future__ import annotations

import json
import re

from sophon.testing import ModelServer
from tests.e2e.cli_support import assert_one_line_error, sophon

TWO_TURNS = {"turns": [
    {"content": [{"type": "tool_use", "name": "Write",
                  "input": {"file_path": "/workspace/a.txt", "content": "one\n"}}]},
    "first done",
    {"content": [{"type": "tool_use", "name": "Write",
                  "input": {"file_path": "/workspace/b.txt", "content": "two\n"}}]},
    "second done",
]}


def files(env: dict[str, str], sid: str) -> str:
    return sophon(env, "claude-code", "exec", sid, "ls").stdout


def test_checkpoints_review_rewind_and_fork(env: dict[str, str], model: ModelServer) -> None:
    model.set_script(TWO_TURNS)
    sid = sophon(env, "claude-code", "new", "--name", "steps").stdout.strip()
    assert "no checkpoints yet" in sophon(env, "claude-code", "checkpoints", sid).stdout
    for message in ("FIRST", "SECOND"):
        r = sophon(env, "claude-code", "send", sid, message)
        assert r.returncode == 0, r.stderr

    listed = sophon(env, "claude-code", "checkpoints", sid)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ID", "TURN", "STEP", "AFTER", "TIME", "FILES"]
    rows = [line.split() for line in lines[1:]]
    assert [(r[1], r[2], r[3]) for r in rows if r[3] == "tool"] == [("1", "1", "tool"),
                                                                    ("2", "1", "tool")]
    assert any(r[-1] == "+a.txt" for r in rows) and any(r[-1] == "+b.txt" for r in rows)
    cps = json.loads(sophon(env, "claude-code", "checkpoints", sid, "--json").stdout)
    end_of_first = [c["id"] for c in cps if c["turn"] == 1][-1]

    # What the last turn changed, then the first (piped: plain text, no colours).
    last = sophon(env, "claude-code", "review", sid)
    assert last.returncode == 0 and "+two" in last.stdout and "a.txt" not in last.stdout
    assert "\x1b[" not in last.stdout
    assert "+one" in sophon(env, "claude-code", "review", sid, "--turn", "1").stdout
    between = sophon(env, "claude-code", "review", sid, "--from", cps[0]["id"])
    assert "+two" in between.stdout

    r = sophon(env, "claude-code", "rewind", sid, end_of_first)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"rewound the files and conversation to {end_of_first}"
    undo = re.search(r"undo with: (sophon claude-code rewind \S+ (cp_\w+))", r.stderr)
    assert undo, r.stderr
    assert files(env, sid) == "a.txt\n"
    assert sophon(env, "claude-code", "rewind", sid, undo.group(2)).returncode == 0
    assert files(env, sid) == "a.txt\nb.txt\n"

    forked = sophon(env, "claude-code", "fork", sid, end_of_first, "--name", "try-b")
    assert forked.returncode == 0, forked.stderr
    fork_id = forked.stdout.strip()
    assert fork_id.startswith("ses_") and fork_id != sid
    assert files(env, fork_id) == "a.txt\n"
    listing = sophon(env, "claude-code", "list").stdout
    assert re.search(rf"^try-b\s.*{fork_id}$", listing, re.M), listing


def test_mistakes_are_one_line(env: dict[str, str], model: ModelServer) -> None:
    model.set_script(TWO_TURNS)
    sid = sophon(env, "claude-code", "new", "--name", "oops").stdout.strip()
    assert_one_line_error(sophon(env, "claude-code", "review", sid), "no turn yet")
    assert sophon(env, "claude-code", "send", sid, "FIRST").returncode == 0
    assert_one_line_error(sophon(env, "claude-code", "rewind", sid, "cp_0123456789abcdef"),
                          "no checkpoint 'cp_0123456789abcdef'")
    both = sophon(env, "claude-code", "rewind", sid, "cp_0123456789abcdef",
                  "--files-only", "--conversation-only")
    assert both.returncode == 2 and "not both" in both.stderr
    assert_one_line_error(sophon(env, "claude-code", "review", sid, "--turn", "5"),
                          "no turn 5")
    assert_one_line_error(sophon(env, "claude-code", "fork", sid, "nope"), "checkpoint")
