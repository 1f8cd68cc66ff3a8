"""Tool parameters of the native agent, as the model sees their results.

Each test seeds a fresh session's workspace over the files API, lets the scripted model
call tools with the parameters under test, and checks the tool_result twice: in the
session's event log and in the next request the model received."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sophon.agent.tools import BASH_MAX_MS
from sophon.testing import ModelServer
from tests.conftest import LiveServer
from tests.integration.test_agent_edges import (
    PROVIDER_KEY,
    create_session,
    live_server,
    no_session_errors,
    results_by_id,
    run_turn,
    sent_results,
    stop_server,
    tool_use,
)


@pytest.fixture(scope="module")
def ms() -> Iterator[ModelServer]:
    with ModelServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def server(ms: ModelServer) -> Iterator[LiveServer]:
    srv = live_server({"ANTHROPIC_API_KEY": PROVIDER_KEY, "ANTHROPIC_BASE_URL": ms.url})
    yield srv
    stop_server(srv)


def seeded(http: httpx.Client, files: dict[str, str]) -> str:
    """A new session (shell allowed, no approvals) whose workspace holds ``files``."""
    sid = create_session(http, {"shell": "allow"})
    for path, content in files.items():
        r = http.put(f"/v1/sessions/{sid}/files/{path}", content=content.encode())
        assert r.status_code in (200, 201), r.text
    return sid


def call(ms: ModelServer, http: httpx.Client, sid: str,
         calls: list[tuple[str, str, dict[str, Any]]]) -> dict[str, tuple[bool, str]]:
    """Run one turn whose single reply makes ``calls`` (id, tool, input), in order; the
    model's view of each result: tool_use id -> (is_error, content)."""
    ms.set_script([{"content": [tool_use(name, inp, tid) for tid, name, inp in calls]},
                   "done"])
    evs = run_turn(http, sid, "use the tools")
    no_session_errors(evs)
    assert len(ms.requests) == 2, "the turn must go on to the model after the tools"
    logged, sent = results_by_id(evs), sent_results(ms.requests[1])
    assert set(sent) == set(logged) == {tid for tid, _, _ in calls}
    for tid in sent:  # the log shows exactly what the model was given
        assert (logged[tid]["is_error"], logged[tid]["content"]) == \
            (sent[tid]["is_error"], sent[tid]["content"]), tid
    return {tid: (bool(r["is_error"]), str(r["content"])) for tid, r in sent.items()}


def file_text(http: httpx.Client, sid: str, path: str) -> str | None:
    r = http.get(f"/v1/sessions/{sid}/files/{path}")
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    return str(r.json()["content"])


# --- Read ------------------------------------------------------------------------------

def test_read_offset_and_limit_give_a_numbered_slice(ms: ModelServer,
                                                     http: httpx.Client) -> None:
    sid = seeded(http, {"lines.txt": "".join(f"line {n}\n" for n in range(1, 11))})
    got = call(ms, http, sid, [
        ("slice", "Read", {"file_path": "lines.txt", "offset": 3, "limit": 4}),
        ("tail", "Read", {"file_path": "/workspace/lines.txt", "offset": 9}),
        ("head", "Read", {"file_path": "lines.txt", "limit": 2}),
        ("past", "Read", {"file_path": "lines.txt", "offset": 20}),
        ("missing", "Read", {"file_path": "nope/absent.txt"}),
    ])
    assert got["slice"] == (False, "     3\tline 3\n     4\tline 4\n     5\tline 5\n"
                                   "     6\tline 6")
    assert got["tail"] == (False, "     9\tline 9\n    10\tline 10")
    assert got["head"] == (False, "     1\tline 1\n     2\tline 2")
    assert got["past"] == (True, "offset 20 is past the end of the file (10 lines)")
    assert got["missing"] == (True, "File does not exist: /workspace/nope/absent.txt")


# --- Edit ------------------------------------------------------------------------------

def test_edit_replace_all_and_a_missing_old_string(ms: ModelServer,
                                                   http: httpx.Client) -> None:
    sid = seeded(http, {"rep.py": "foo = 1\nprint(foo, foo)\n# foo\n",
                        "keep.py": "alpha = 1\n"})
    got = call(ms, http, sid, [
        ("read_rep", "Read", {"file_path": "rep.py"}),
        ("read_keep", "Read", {"file_path": "keep.py"}),
        ("all", "Edit", {"file_path": "rep.py", "old_string": "foo", "new_string": "bar",
                         "replace_all": True}),
        ("absent", "Edit", {"file_path": "/workspace/keep.py", "old_string": "omega",
                            "new_string": "beta"}),
        # replace_all with a single occurrence is fine, and says one replacement.
        ("once", "Edit", {"file_path": "keep.py", "old_string": "= 1", "new_string": "= 2",
                          "replace_all": True}),
    ])
    assert got["all"] == (False, "Edited /workspace/rep.py (4 replacements)")
    assert file_text(http, sid, "rep.py") == "bar = 1\nprint(bar, bar)\n# bar\n"
    assert got["absent"] == (True, "old_string was not found in keep.py")
    assert got["once"] == (False, "Edited /workspace/keep.py (1 replacement)")
    assert file_text(http, sid, "keep.py") == "alpha = 2\n"


def test_edit_with_a_missing_old_string_leaves_the_file_alone(ms: ModelServer,
                                                             http: httpx.Client) -> None:
    sid = seeded(http, {"keep.py": "alpha = 1\n"})
    before = http.get(f"/v1/sessions/{sid}/files/keep.py").headers["etag"]
    got = call(ms, http, sid, [
        ("read", "Read", {"file_path": "keep.py"}),
        ("absent", "Edit", {"file_path": "keep.py", "old_string": "omega",
                            "new_string": "beta", "replace_all": True}),
    ])
    assert got["absent"] == (True, "old_string was not found in keep.py")
    after = http.get(f"/v1/sessions/{sid}/files/keep.py")
    assert after.json()["content"] == "alpha = 1\n" and after.headers["etag"] == before


# --- Glob ------------------------------------------------------------------------------

def test_glob_path_limits_matches_to_that_directory(ms: ModelServer,
                                                    http: httpx.Client) -> None:
    sid = seeded(http, {"a/x.py": "", "a/deep/z.py": "", "a/notes.md": "", "b/y.py": "",
                        "top.py": ""})
    got = call(ms, http, sid, [
        ("under_a", "Glob", {"pattern": "**/*.py", "path": "a"}),
        ("under_b", "Glob", {"pattern": "*.py", "path": "/workspace/b"}),
        ("shallow", "Glob", {"pattern": "*.py", "path": "a"}),
        ("none", "Glob", {"pattern": "*.rs", "path": "a"}),
    ])
    assert got["under_a"][0] is False
    assert set(got["under_a"][1].splitlines()) == {"/workspace/a/x.py",
                                                   "/workspace/a/deep/z.py"}
    assert got["under_b"] == (False, "/workspace/b/y.py")
    assert got["shallow"] == (False, "/workspace/a/x.py")
    assert got["none"] == (False, "No files found")


# --- Grep ------------------------------------------------------------------------------

NUMS = "one\ntwo\nthree\nfour\nfive\nsix\nseven\neight\nnine\n"


def test_grep_case_and_context(ms: ModelServer, http: httpx.Client) -> None:
    sid = seeded(http, {"greet.txt": "Hello\nhello\nHELLO\nbye\n", "nums.txt": NUMS})
    content = {"output_mode": "content"}
    got = call(ms, http, sid, [
        ("exact", "Grep", {"pattern": "hello", **content}),
        ("nocase", "Grep", {"pattern": "hello", "-i": True, **content}),
        ("after", "Grep", {"pattern": "^five$", "-A": 1, **content}),
        ("before", "Grep", {"pattern": "^five$", "-B": 2, **content}),
        ("around", "Grep", {"pattern": "^five$", "-C": 1, **content}),
        ("file", "Grep", {"pattern": "^f", "path": "nums.txt", **content}),
    ])
    assert got["exact"] == (False, "greet.txt:2:hello")
    assert got["nocase"] == (False, "greet.txt:1:Hello\ngreet.txt:2:hello\ngreet.txt:3:HELLO")
    assert got["after"] == (False, "nums.txt:5:five\nnums.txt-6-six")
    assert got["before"] == (False, "nums.txt-3-three\nnums.txt-4-four\nnums.txt:5:five")
    assert got["around"] == (False, "nums.txt-4-four\nnums.txt:5:five\nnums.txt-6-six")
    # A path that is one file still names it on every line.
    assert got["file"] == (False, "nums.txt:4:four\nnums.txt:5:five")


def test_grep_head_limit_and_output_modes(ms: ModelServer, http: httpx.Client) -> None:
    sid = seeded(http, {"many.txt": "".join(f"x{n}\n" for n in range(1, 10)),
                        "doc.md": "needle\nhay\nneedle\n", "code.py": "needle = 1\n",
                        "sub/deep.md": "NEEDLE\n", "plain.md": "hay only\n"})
    got = call(ms, http, sid, [
        ("head", "Grep", {"pattern": "^x", "output_mode": "content", "head_limit": 3}),
        ("count", "Grep", {"pattern": "needle", "output_mode": "count"}),
        ("count_i", "Grep", {"pattern": "needle", "output_mode": "count", "-i": True}),
        ("files", "Grep", {"pattern": "needle", "output_mode": "files_with_matches"}),
        ("default", "Grep", {"pattern": "needle", "-i": True}),
        ("files_head", "Grep", {"pattern": "needle", "-i": True, "head_limit": 1}),
    ])
    assert got["head"] == (False, "many.txt:1:x1\nmany.txt:2:x2\nmany.txt:3:x3")
    # count: file:matches, files without a match left out.
    assert got["count"][0] is False
    assert set(got["count"][1].splitlines()) == {"doc.md:2", "code.py:1"}
    assert set(got["count_i"][1].splitlines()) == {"doc.md:2", "code.py:1", "sub/deep.md:1"}
    assert got["files"][0] is False
    assert set(got["files"][1].splitlines()) == {"doc.md", "code.py"}
    # files_with_matches is the default mode.
    assert set(got["default"][1].splitlines()) == {"doc.md", "code.py", "sub/deep.md"}
    assert got["files_head"][0] is False
    assert got["files_head"][1] in {"doc.md", "code.py", "sub/deep.md"}


def test_grep_glob_filters_the_files(ms: ModelServer, http: httpx.Client) -> None:
    sid = seeded(http, {"doc.md": "needle\n", "code.py": "needle\n", "notes.txt": "needle\n",
                        "src/app.ts": "needle\n", "src/lib/util.ts": "needle\n",
                        "src/view.tsx": "needle\n", "test/app.ts": "needle\n"})
    got = call(ms, http, sid, [
        ("md", "Grep", {"pattern": "needle", "glob": "*.md"}),
        ("braces", "Grep", {"pattern": "needle", "glob": "*.{py,txt}"}),
        ("nested", "Grep", {"pattern": "needle", "glob": "*.ts"}),
        ("pathglob", "Grep", {"pattern": "needle", "glob": "src/**/*.{ts,tsx}",
                              "output_mode": "content"}),
        ("under", "Grep", {"pattern": "needle", "glob": "lib/*.ts", "path": "src"}),
        ("nomatch", "Grep", {"pattern": "needle", "glob": "*.rs"}),
    ])
    assert got["md"] == (False, "doc.md")
    assert set(got["braces"][1].splitlines()) == {"code.py", "notes.txt"}
    assert set(got["nested"][1].splitlines()) == {"src/app.ts", "src/lib/util.ts",
                                                  "test/app.ts"}
    assert got["pathglob"][0] is False
    assert set(got["pathglob"][1].splitlines()) == {
        "src/app.ts:1:needle", "src/lib/util.ts:1:needle", "src/view.tsx:1:needle"}
    assert got["under"] == (False, "src/lib/util.ts")
    assert got["nomatch"] == (False, "No matches found")


# --- Bash ------------------------------------------------------------------------------

def test_bash_timeout_above_the_maximum_is_refused(ms: ModelServer,
                                                   http: httpx.Client) -> None:
    sid = seeded(http, {})
    got = call(ms, http, sid, [
        ("too_long", "Bash", {"command": "touch ran-too-long", "timeout": BASH_MAX_MS + 1}),
        ("at_max", "Bash", {"command": "echo fine", "timeout": BASH_MAX_MS}),
    ])
    assert got["too_long"] == (True, "timeout is in milliseconds, at most 600000")
    assert file_text(http, sid, "ran-too-long") is None  # refused, not run
    assert got["at_max"] == (False, "fine")


def test_bash_working_directory_persists(ms: ModelServer, http: httpx.Client) -> None:
    sid = seeded(http, {})
    got = call(ms, http, sid, [
        ("cd", "Bash", {"command": "mkdir -p sub/inner && cd sub"}),
        ("pwd", "Bash", {"command": "pwd"}),
        ("touch", "Bash", {"command": "touch here.txt && cd inner"}),
        ("pwd2", "Bash", {"command": "pwd"}),
        ("fail_after_cd", "Bash", {"command": "cd .. && false"}),
        ("pwd3", "Bash", {"command": "pwd"}),
    ])
    assert got["cd"] == (False, "(no output)")
    assert got["pwd"] == (False, "/workspace/sub")
    assert got["pwd2"] == (False, "/workspace/sub/inner")
    assert file_text(http, sid, "sub/here.txt") == ""
    # A failing command still leaves its directory behind for the next call.
    assert got["fail_after_cd"] == (True, "Exit code 1")
    assert got["pwd3"] == (False, "/workspace/sub")


def test_edit_refuses_a_file_changed_since_it_was_read(ms: ModelServer,
                                                       http: httpx.Client) -> None:
    sid = seeded(http, {"f.txt": "one\ntwo\n"})
    got = call(ms, http, sid, [
        ("r", "Read", {"file_path": "f.txt"}),
        ("e1", "Edit", {"file_path": "f.txt", "old_string": "one", "new_string": "ONE"}),
        ("e2", "Edit", {"file_path": "f.txt", "old_string": "two", "new_string": "TWO"}),
        ("b", "Bash", {"command": "echo from-someone-else >> f.txt"}),
        ("e3", "Edit", {"file_path": "f.txt", "old_string": "ONE", "new_string": "uno"}),
    ])
    assert not got["e1"][0] and not got["e2"][0]  # an edit after an edit needs no Read
    assert got["e3"][0] and "changed since it was read" in got["e3"][1]
    assert file_text(http, sid, "f.txt") == "ONE\nTWO\nfrom-someone-else\n"
