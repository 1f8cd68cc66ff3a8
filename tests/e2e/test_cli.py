"""The ``sophon`` console script end to end: the whole seed workflow, approvals without a
terminal, a stream across a server restart, and mistakes (one line, never a traceback).

Every command runs as a subprocess, the way a user runs it, against a real server and a
scripted model (tests/e2e/conftest.py). Each test has its own user and, where it matters,
its own ``XDG_CONFIG_HOME``, so no test sees another's sessions or config.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from sophon.client import Client
from sophon.testing import ModelServer
from tests.conftest import LiveServer, free_port, wait_for
from tests.e2e.cli_support import (
    BASH,
    CLI_DEADLINE,
    FINAL,
    SESSION_ID,
    SHELL_TURN,
    SOPHON,
    Pty,
    assert_one_line_error,
    cli_env,
    events_json,
    sophon,
    start,
    stop,
    turn_over,
)

# --- 1. the whole seed workflow -----------------------------------------------------------


def test_seed_workflow(server: LiveServer, key: str, model: ModelServer, config_home: Path,
                       tmp_path: Path) -> None:
    env = cli_env(config_home)  # no SOPHON_*: everything below runs on the saved config

    r = sophon(env, "login", "--url", server.url, "--api-key", key)
    assert r.returncode == 0, r.stderr
    config = config_home / "sophon" / "config.json"
    assert str(config) in r.stdout and "logged in" in r.stdout
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert json.loads(config.read_text()) == {"url": server.url, "api_key": key}

    r = sophon(env, "claude-code", "new", "--name", "demo", "--base", "python",
               "--template", "python")
    assert r.returncode == 0, r.stderr
    sid = r.stdout.strip()
    assert SESSION_ID.match(sid), r.stdout

    r = sophon(env, "claude-code", "list")
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if sid in line)
    assert "demo" in row and "python" in row and "idle" in row
    r = sophon(env, "claude-code", "list", "--json")
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)  # one JSON document: an array of sessions
    assert [(s["id"], s["name"], s["base"]) for s in listed] == [(sid, "demo", "python")]
    assert listed[0]["approval"]["shell"] == "ask_once"

    # send, in a terminal: the first shell call asks, we answer y, the turn runs to the end.
    model.set_script(SHELL_TURN)
    term = Pty([*SOPHON, "claude-code", "send", sid, "write hi.txt"], env)
    try:
        term.expect("allow Bash?")
        assert "approval needed" in term.text and f"Bash({BASH}" in term.text
        term.send("y\n")
        code = term.wait()
    finally:
        term.close()
    out = term.text
    assert code == 0, out
    assert "Traceback" not in out
    steps = ["you write hi.txt", "Let me write the file.", f"Bash({BASH}",
             "approval needed", "allow Bash?", "allow by", "greetings", FINAL, "idle"]
    positions = [out.find(s, out.find("allow Bash?") if i > 4 else 0)
                 for i, s in enumerate(steps)]
    assert all(p >= 0 for p in positions), (steps, positions, out)
    assert positions == sorted(positions), out  # in that order
    assert "\n  greetings\n" in out  # the tool result, indented under the call
    assert len(model.requests) == 2

    # stream --from-start --json: the whole log, raw, one event a line; it never ends itself.
    proc, lines, errors = start(env, "claude-code", "stream", sid, "--from-start", "--json")
    try:
        lines.wait_until(turn_over, what="the end of the turn")
    finally:
        stop(proc)
    evs = events_json(lines.lines)
    assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1))
    kinds = [e["type"] for e in evs]
    assert kinds[0] == "session_start"
    for kind in ("user", "assistant", "tool_use", "approval_request", "approval_decision",
                 "tool_result", "usage", "status"):
        assert kind in kinds, kinds
    assert next(e for e in evs if e["type"] == "tool_result")["content"].strip() == "greetings"
    assert [e for e in evs if e["type"] == "assistant"][-1]["text"] == FINAL
    assert "Traceback" not in errors.finish()

    r = sophon(env, "claude-code", "exec", sid, "cat hi.txt; exit 3")
    assert (r.returncode, r.stdout) == (3, "greetings\n"), r.stderr

    out_dir = tmp_path / "exports"
    out_dir.mkdir()
    r = sophon(env, "claude-code", "export", sid, "--out", f"{out_dir}/")
    assert r.returncode == 0, r.stderr
    archive = out_dir / f"{sid}.tar.gz"
    assert archive.is_file() and str(archive) in r.stdout
    assert [p.name for p in out_dir.iterdir()] == [archive.name]
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert "project/hi.txt" in names and "events.jsonl" in names, names
        logged = tar.extractfile("events.jsonl").read().decode()  # type: ignore[union-attr]
    assert [json.loads(line)["seq"] for line in logged.splitlines()][:len(evs)] == \
        [e["seq"] for e in evs]

    r = sophon(env, "claude-code", "delete", sid, input="n\n")
    assert r.returncode != 0 and "Delete session demo" in r.stdout, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    r = sophon(env, "claude-code", "list", "--json")
    assert sid in r.stdout

    r = sophon(env, "claude-code", "delete", sid, "--yes")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"deleted {sid}"
    r = sophon(env, "claude-code", "list", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == []

    r = sophon(env, "claude-code", "exec", sid, "cat hi.txt")
    assert r.returncode == 125  # Sophon's own failure, not the command's exit code
    assert_one_line_error(r, "no session", sid)
    assert r.stdout == ""


def test_export_into_a_new_directory_and_import_it_back(env: dict[str, str],
                                                        tmp_path: Path) -> None:
    sid = sophon(env, "claude-code", "new", "--name", "exp").stdout.strip()
    assert SESSION_ID.match(sid)
    out_dir = tmp_path / "not-yet"
    r = sophon(env, "claude-code", "export", sid, "--out", f"{out_dir}/")
    assert r.returncode == 0, r.stderr
    assert out_dir.is_dir(), f"{out_dir} is a file"
    assert (out_dir / f"{sid}.tar.gz").is_file()

    # ... and back, as a new session of another name; a file that is no export is one
    # line, exit 1; no file at all is a usage error.
    r = sophon(env, "claude-code", "import", str(out_dir / f"{sid}.tar.gz"), "--name", "back")
    assert r.returncode == 0, r.stderr
    new = r.stdout.strip()
    assert SESSION_ID.match(new) and new != sid
    listed = json.loads(sophon(env, "claude-code", "list", "--json").stdout)
    assert {s["name"] for s in listed} >= {"exp", "back"}
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not an archive")
    r = sophon(env, "claude-code", "import", str(junk))
    assert r.returncode == 1
    assert_one_line_error(r, "the archive cannot be imported: it is not a gzip file")
    r = sophon(env, "claude-code", "import", str(tmp_path / "missing.tar.gz"))
    assert r.returncode == 2 and "no such file" in r.stderr


# --- 2. approvals without a terminal ----------------------------------------------------------


def test_send_without_a_tty_says_how_to_approve(env: dict[str, str], model: ModelServer) -> None:
    model.set_script(SHELL_TURN)
    sid = sophon(env, "claude-code", "new", "--name", "piped").stdout.strip()
    assert SESSION_ID.match(sid)

    proc, out, err = start(env, "claude-code", "send", sid, "write hi.txt")
    try:
        hint = err.wait_until(
            lambda lines: re.search(rf"sophon claude-code approve {sid} (apr_\w+)",
                                    "".join(lines)),
            what="how to approve")
        approval_id = hint.group(1)
        assert proc.poll() is None  # still following the turn, not waiting on a prompt
        r = sophon(env, "claude-code", "approve", sid, approval_id)
        assert (r.returncode, r.stdout.strip()) == (0, "allowed"), r.stderr
        assert proc.wait(CLI_DEADLINE) == 0
    finally:
        stop(proc)
    stdout, stderr = out.finish(), err.finish()
    assert "allow Bash?" not in stdout + stderr and "Traceback" not in stderr
    assert "approval needed" in stdout and approval_id in stdout
    assert "allow by" in stdout and "greetings" in stdout and FINAL in stdout

    r = sophon(env, "claude-code", "approve", sid, approval_id)  # already answered
    assert_one_line_error(r)


# --- 3. stream across a server restart ---------------------------------------------------------


def test_stream_survives_a_server_restart(own_server: LiveServer, config_home: Path) -> None:
    key = own_server.add_user()
    env = cli_env(config_home, SOPHON_URL=own_server.url, SOPHON_API_KEY=key)
    with Client(own_server.url, key) as c:
        sid = c.create_session("restart").id

    def run(command: str) -> None:
        with Client(own_server.url, key) as c:
            assert [e.exit_code for e in c.exec(sid, command) if e.type == "exec_end"] == [0]

    proc, out, err = start(env, "claude-code", "stream", sid, "--json")

    def connected() -> bool:
        """Events made before the stream asked for the session's last seq are not shown:
        make some until the stream prints one."""
        assert proc.poll() is None, err.finish()
        run("echo ping")
        with contextlib.suppress(AssertionError):
            return bool(out.wait_until(lambda lines: bool(lines), 1.0, "a first event"))
        return False

    try:
        wait_for(connected, CLI_DEADLINE, 0, "the stream to connect")
        run("echo before-1")
        run("echo before-2")
        out.wait_until(ended_after("before-2"), what="events before the restart")
        count_before = len(out.lines)

        own_server.restart()
        run("echo after-1")
        run("echo after-2")
        out.wait_until(ended_after("after-2"), what="events after the restart")
        assert proc.poll() is None, err.finish()
        assert len(out.lines) > count_before

        proc.send_signal(signal.SIGINT)
        code = proc.wait(10)
    finally:
        stop(proc)
    out.finish()
    stderr = err.finish()
    assert code in (0, 130), stderr
    assert "Traceback" not in stderr, stderr
    evs = events_json(out.lines)
    seqs = [e["seq"] for e in evs]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs  # +1 each, no duplicate
    words = [e["data"].strip() for e in evs if e["type"] == "exec_output"]
    assert words[-4:] == ["before-1", "before-2", "after-1", "after-2"], words
    assert [e["command"] for e in evs if e["type"] == "exec_start"][-2:] == [
        "echo after-1", "echo after-2"]


def ended_after(word: str) -> Any:
    """The exec that printed ``word`` has ended."""
    def check(lines: list[str]) -> bool:
        printed = False
        for ev in events_json(lines):
            printed = printed or (ev["type"] == "exec_output" and word in ev["data"])
            if printed and ev["type"] == "exec_end":
                return True
        return False
    return check


# --- 4. mistakes are one line, never a traceback --------------------------------------------


def test_wrong_api_key(server: LiveServer, config_home: Path) -> None:
    env = cli_env(config_home, SOPHON_URL=server.url, SOPHON_API_KEY="sk-sophon-wrong")
    assert_one_line_error(sophon(env, "claude-code", "list"))
    assert_one_line_error(sophon(env, "sandbox", "exec", "true"))
    r = sophon(cli_env(config_home), "login", "--url", server.url, "--api-key", "sk-wrong")
    assert_one_line_error(r)
    assert not (config_home / "sophon" / "config.json").exists()


def test_server_down(config_home: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    env = cli_env(config_home, SOPHON_URL=url, SOPHON_API_KEY="sk-sophon-x")
    assert_one_line_error(sophon(env, "claude-code", "list"), "cannot reach", url)
    assert_one_line_error(sophon(env, "claude-code", "stream", "ses_0123"), "cannot reach")
    assert_one_line_error(sophon(env, "sandbox", "exec", "true"), "cannot reach")
    r = sophon(cli_env(config_home), "login", "--url", url, "--api-key", "sk-sophon-x")
    assert_one_line_error(r, "cannot reach")


@pytest.mark.parametrize("args", [
    ("exec", "ses_0000000000000000", "ls"),
    ("send", "ses_0000000000000000", "hi"),
    ("stream", "ses_0000000000000000"),
    ("delete", "ses_0000000000000000", "--yes"),
    ("usage", "ses_0000000000000000"),
    ("approve", "ses_0000000000000000", "apr_0000"),
    ("secrets", "list", "ses_0000000000000000"),
], ids=lambda a: "-".join(a[:2]) if a[0] == "secrets" else a[0])
def test_unknown_session(env: dict[str, str], args: tuple[str, ...]) -> None:
    r = sophon(env, "claude-code", *args)
    assert_one_line_error(r, "no session", "ses_0000000000000000")


def test_failed_export_leaves_no_file(env: dict[str, str], tmp_path: Path) -> None:
    r = sophon(env, "claude-code", "export", "ses_0000000000000000", "--out", f"{tmp_path}/")
    assert_one_line_error(r, "no session")
    assert list(tmp_path.iterdir()) == [tmp_path / "xdg"]  # only the config dir


def test_clone_and_template_together(env: dict[str, str]) -> None:
    r = sophon(env, "claude-code", "new", "--name", "x", "--clone", "https://example.com/r.git",
               "--template", "python")
    assert_one_line_error(r, "--clone", "--template")


def test_unknown_base(env: dict[str, str]) -> None:
    assert_one_line_error(sophon(env, "claude-code", "new", "--name", "x", "--base", "cobol"),
                          "cobol")
    r = sophon(env, "claude-code", "list", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == []  # nothing was created


def test_no_api_key_at_all(server: LiveServer, config_home: Path) -> None:
    env = cli_env(config_home, SOPHON_URL=server.url)  # nothing in env, an empty config dir
    assert_one_line_error(sophon(env, "claude-code", "list"), "no API key", "sophon login")
    assert_one_line_error(sophon(env, "sandbox", "exec", "true"), "no API key")


# --- 5. a turn that fails ---------------------------------------------------------------------


def test_send_exits_1_when_the_turn_fails(env: dict[str, str], model: ModelServer) -> None:
    """A failed turn is a failed command: `send` shows the error and exits 1, so a script
    that runs it stops there; the session says "error" until the next message."""
    model.set_script({"turns": [
        {"error": {"status": 400, "message": "prompt is too long"}},
        "Back on track."]})
    sid = sophon(env, "claude-code", "new", "--name", "fails").stdout.strip()
    assert SESSION_ID.match(sid)

    r = sophon(env, "claude-code", "send", sid, "hello")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    assert "model_error" in r.stdout and "prompt is too long" in r.stdout, r.stdout
    assert "— error" in r.stdout, r.stdout  # the status that ended the turn
    assert len(model.requests) == 1  # a 400 is not retried
    listed = json.loads(sophon(env, "claude-code", "list", "--json").stdout)
    assert [(s["id"], s["status"]) for s in listed] == [(sid, "error")]

    # The next turn works, and `send` says so with 0: the 1 came from the failure.
    r = sophon(env, "claude-code", "send", sid, "again", "--json")
    assert r.returncode == 0, (r.stdout, r.stderr)
    evs = events_json(r.stdout.splitlines())
    assert [e["text"] for e in evs if e["type"] == "assistant"] == ["Back on track."]
    assert (evs[-1]["type"], evs[-1]["status"]) == ("status", "idle")
