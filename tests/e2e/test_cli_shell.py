"""`sophon claude-code shell`: the session's shell in the user's own terminal (a
pseudo-terminal here), raw: Ctrl-C reaches the sandbox, cd persists, a dropped
connection leaves the shell to come back to."""

from __future__ import annotations

import re

from tests.conftest import wait_for
from tests.e2e.cli_support import SOPHON, Pty, assert_one_line_error, sophon


def test_the_shell_is_a_terminal_in_the_sandbox(env: dict[str, str]) -> None:
    sid = sophon(env, "claude-code", "new", "--name", "shell").stdout.strip()
    term = Pty([*SOPHON, "claude-code", "shell", sid], env)
    try:
        term.expect("/workspace $ ")  # the shell's prompt
        term.send("cd /tmp && stty size && echo X-$((2*21))\r")
        term.expect("X-42")
        assert "50 200" in term.text  # this terminal's size
        term.send("sleep 30; echo WOKE-$((1+1))\r")
        # Ctrl-C once sleep runs in the foreground (sooner, the shell would take it).
        wait_for(lambda: sophon(env, "claude-code", "exec", sid, "pgrep -x sleep")
                 .returncode == 0, 15, 0.05, "sleep to run")
        term.send("\x03")  # to the sandbox's shell: it interrupts sleep, not this command
        term.send("pwd; echo BACK-$((3+4))\r")
        term.expect("BACK-7", deadline=10)
        assert "WOKE-2" not in term.text and "/tmp\n" in term.text
        assert term.proc.poll() is None
        term.send("exit\r")
        assert term.wait() == 0
    finally:
        term.close()


def test_a_dropped_connection_leaves_the_shell_to_attach_to(env: dict[str, str]) -> None:
    sid = sophon(env, "claude-code", "new", "--name", "shell-again").stdout.strip()
    # Input that ends (a pipe) drops the connection: the shell keeps running, and the
    # command says how to come back.
    r = sophon(env, "claude-code", "shell", sid, input="cd /etc; export KEPT=yes\n")
    assert r.returncode == 0, r.stderr
    found = re.search(r"--attach (term_[0-9a-f]+)", r.stderr)
    assert found, r.stderr
    term = Pty([*SOPHON, "claude-code", "shell", sid, "--attach", found.group(1)], env)
    try:
        term.expect("$ ")
        term.send("echo $KEPT $PWD AGAIN-$((5+5))\r")
        term.expect("yes /etc AGAIN-10")
        term.send("exit\r")
        assert term.wait() == 0
    finally:
        term.close()


def test_no_such_session_is_one_line(env: dict[str, str]) -> None:
    assert_one_line_error(sophon(env, "claude-code", "shell", "ses_0123456789abcdef"),
                          "no session")
