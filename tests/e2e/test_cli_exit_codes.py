"""The CLI's exit codes say how things ended, as its help says: `send` 0 done, 1 failed
or cut off, 3 interrupted, 130 left with Ctrl-C (the turn goes on, and it says how to
follow it); `exec` 125 when Sophon could not run the command, else the command's own."""

from __future__ import annotations

import signal
from pathlib import Path

from sophon.client import Client
from sophon.testing import ModelServer
from tests.conftest import LiveServer, wait_for
from tests.e2e.cli_support import (
    CLI_DEADLINE,
    SOPHON,
    Pty,
    assert_one_line_error,
    cli_env,
    sophon,
    start,
    stop,
)

SLOW = {"turns": [{"content": "finally", "delay_ms": 8000}]}


def status(server: LiveServer, key: str, sid: str) -> str:
    with Client(server.url, key) as c:
        return c.get_session(sid).status


def test_send_exits_0_when_done_and_3_when_interrupted(
        env: dict[str, str], model: ModelServer, server: LiveServer, key: str) -> None:
    model.set_script({"turns": ["all done"]})
    sid = sophon(env, "claude-code", "new", "--name", "codes").stdout.strip()
    r = sophon(env, "claude-code", "send", sid, "hello")
    assert r.returncode == 0, r.stderr

    model.set_script(SLOW)
    proc, out, err = start(env, "claude-code", "send", sid, "take your time")
    try:
        wait_for(lambda: status(server, key, sid) == "running", CLI_DEADLINE, 0.05,
                 "the turn to start")
        assert sophon(env, "claude-code", "interrupt", sid).returncode == 0
        assert proc.wait(CLI_DEADLINE) == 3
    finally:
        stop(proc)
    assert "interrupted by the user" in out.finish()


def test_ctrl_c_leaves_the_turn_running_and_says_how_to_follow_it(
        env: dict[str, str], model: ModelServer, server: LiveServer, key: str) -> None:
    model.set_script(SLOW)
    sid = sophon(env, "claude-code", "new", "--name", "ctrl-c").stdout.strip()
    term = Pty([*SOPHON, "claude-code", "send", sid, "take your time"], env)
    try:
        wait_for(lambda: status(server, key, sid) == "running", CLI_DEADLINE, 0.05,
                 "the turn to start")
        term.proc.send_signal(signal.SIGINT)
        assert term.wait() == 130
    finally:
        term.close()
    assert f"sophon claude-code stream {sid}" in term.text
    assert f"sophon claude-code interrupt {sid}" in term.text
    assert "Traceback" not in term.text
    # The turn goes on without the CLI, and ends as it would have.
    assert status(server, key, sid) == "running"
    wait_for(lambda: status(server, key, sid) == "idle", 30, 0.1, "the turn to end")


def test_send_exits_1_when_a_restart_cuts_the_turn_off(
        own_server: LiveServer, model: ModelServer, config_home: Path) -> None:
    key = own_server.add_user()
    env = cli_env(config_home, SOPHON_URL=own_server.url, SOPHON_API_KEY=key)
    model.set_script({"turns": [{"content": "never seen", "delay_ms": 60_000}]})
    sid = sophon(env, "claude-code", "new", "--name", "cut").stdout.strip()
    proc, out, err = start(env, "claude-code", "send", sid, "work long")
    try:
        wait_for(lambda: status(own_server, key, sid) == "running", CLI_DEADLINE, 0.05,
                 "the turn to start")
        own_server.restart()  # the CLI reconnects and sees the turn cut off
        assert proc.wait(CLI_DEADLINE) == 1
    finally:
        stop(proc)
    assert "interrupted" in out.finish()


def test_exec_tells_no_such_session_from_the_commands_exit_code(
        env: dict[str, str]) -> None:
    r = sophon(env, "claude-code", "exec", "ses_0123456789abcdef", "true")
    assert r.returncode == 125
    assert_one_line_error(r, "no session")
    sid = sophon(env, "claude-code", "new", "--name", "exec-codes").stdout.strip()
    assert sophon(env, "claude-code", "exec", sid, "exit 1").returncode == 1
    down = cli_env(Path(env["XDG_CONFIG_HOME"]), SOPHON_URL="http://127.0.0.1:9",
                   SOPHON_API_KEY="sk-sophon-x")
    assert sophon(down, "claude-code", "exec", sid, "true").returncode == 125
