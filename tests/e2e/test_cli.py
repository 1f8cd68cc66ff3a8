"""The ``sophon`` console script end to end: a real server, a scripted model, real terminals.

Every command runs as a subprocess, the way a user runs it. Each test has its own user and,
where it matters, its own ``XDG_CONFIG_HOME``, so no test sees another's sessions or config.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import re
import select
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from sophon.cli import app as sophon_app
from sophon.client import Client
from sophon.testing import ModelServer
from tests.conftest import LiveServer, free_port, make_data_dir, wait_for

_SCRIPT = Path(sys.executable).with_name("sophon")
SOPHON = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "sophon.cli"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>]")
SESSION_ID = re.compile(r"^ses_[0-9a-f]+$")
CLI_DEADLINE = 30.0

# The model's side of one approved shell call: call Bash, then say what it printed. The
# command prints "greetings", a word that is not in the command itself, so seeing it in the
# output proves the tool result (not the tool call) was shown.
BASH = "printf 'greet%s\\n' ings > hi.txt && cat hi.txt"
FINAL = "The file says greetings."
SHELL_TURN = {"turns": [
    {"content": ["Let me write the file.",
                 {"type": "tool_use", "name": "Bash", "input": {"command": BASH}}]},
    {"rules": [{"when": {"last_tool_result_contains": "greetings"}, "reply": FINAL}]},
]}


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> Iterator[ModelServer]:
    with ModelServer() as ms:
        yield ms


def model_env(model: ModelServer) -> dict[str, str]:
    return {"ANTHROPIC_API_KEY": "test-key", "ANTHROPIC_BASE_URL": model.url}


@pytest.fixture(scope="module")
def server(model: ModelServer) -> Iterator[LiveServer]:
    data = make_data_dir()
    srv = LiveServer(data, env=model_env(model)).start()
    yield srv
    srv.stop()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def config_home(tmp_path: Path) -> Path:
    path = tmp_path / "xdg"
    path.mkdir()
    return path


@pytest.fixture
def key(server: LiveServer) -> str:
    return server.add_user()


@pytest.fixture
def env(server: LiveServer, key: str, config_home: Path) -> dict[str, str]:
    """The environment of a user who set SOPHON_URL and SOPHON_API_KEY."""
    return cli_env(config_home, SOPHON_URL=server.url, SOPHON_API_KEY=key)


def cli_env(config_home: Path, **extra: str) -> dict[str, str]:
    """A clean environment: no SOPHON_* from outside, an empty config dir, a wide terminal."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SOPHON_", "ANTHROPIC_"))}
    return {**base, "XDG_CONFIG_HOME": str(config_home), "COLUMNS": "200", "LINES": "50",
            "PYTHONUNBUFFERED": "1", **extra}


# --- running the CLI --------------------------------------------------------------------


def sophon(env: dict[str, str], *args: str, input: str | None = None,
           timeout: float = CLI_DEADLINE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SOPHON, *args], env=env, input=input, capture_output=True,
                          text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL if input is None else None)


def assert_one_line_error(r: subprocess.CompletedProcess[str], *needles: str) -> str:
    """A user's mistake: non-zero exit, exactly one line on stderr, never a traceback."""
    assert r.returncode != 0, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle in line, line
    return line


class Lines:
    """A child's output pipe, read line by line in a thread (so reads can have deadlines)."""

    def __init__(self, pipe: Any) -> None:
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(pipe,), daemon=True)
        self._thread.start()
        self.closed = False

    def _pump(self, pipe: Any) -> None:
        for line in iter(pipe.readline, ""):
            self._q.put(line)
        self._q.put(None)

    def _drain(self, timeout: float) -> None:
        try:
            item = self._q.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            if item is None:
                self.closed = True
            else:
                self.lines.append(item)
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return

    def wait_until(self, predicate: Any, deadline: float = CLI_DEADLINE,
                   what: str = "output") -> Any:
        end = time.monotonic() + deadline
        while True:
            value = predicate(self.lines)
            if value:
                return value
            if self.closed:
                raise AssertionError(f"the output ended before {what}:\n{self.text}")
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}:\n{self.text}")
            self._drain(min(left, 0.2))

    def finish(self, deadline: float = 10.0) -> str:
        self._thread.join(deadline)
        self._drain(0.01)
        while not self._q.empty():
            self._drain(0.01)
        return self.text

    @property
    def text(self) -> str:
        return "".join(self.lines)


def events_json(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines if line.strip()]


def turn_over(lines: list[str]) -> bool:
    """A status idle after the user's message: the turn has ended."""
    seen_user = False
    for ev in events_json(lines):
        seen_user = seen_user or ev["type"] == "user"
        if seen_user and ev["type"] == "status" and ev["status"] == "idle":
            return True
    return False


class Pty:
    """A child with a pseudo-terminal for stdin, stdout and stderr."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        self.master = master
        # A session of its own with the terminal as its controlling tty, as in a shell:
        # hidden prompts (getpass) read /dev/tty.
        self.proc = subprocess.Popen(args, env={**env, "TERM": "xterm"}, stdin=slave,
                                     stdout=slave, stderr=slave, close_fds=True,
                                     start_new_session=True,
                                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        self.raw = b""

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw.decode("utf-8", "replace")).replace("\r\n", "\n")

    def _read(self, timeout: float) -> bool:
        """Read what is there; False once the terminal is closed (the child has gone)."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: every slave end is closed
            return False
        self.raw += chunk
        return bool(chunk)

    def expect(self, needle: str, deadline: float = CLI_DEADLINE) -> None:
        end = time.monotonic() + deadline
        while needle not in self.text:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {needle!r}:\n{self.text}")
            if not self._read(min(left, 0.2)):
                raise AssertionError(f"the program ended before {needle!r}:\n{self.text}")

    def send(self, data: str) -> None:
        os.write(self.master, data.encode())

    def wait(self, deadline: float = CLI_DEADLINE) -> int:
        end = time.monotonic() + deadline
        while self._read(min(max(end - time.monotonic(), 0), 0.2)):
            if time.monotonic() > end:
                self.proc.kill()
                raise AssertionError(f"the program did not end:\n{self.text}")
        return self.proc.wait(max(end - time.monotonic(), 1))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        with contextlib.suppress(OSError):
            os.close(self.master)


def start(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], Lines, Lines]:
    proc = subprocess.Popen([*SOPHON, *args], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, Lines(proc.stdout), Lines(proc.stderr)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)


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
    assert r.returncode == 1
    assert_one_line_error(r, "no session", sid)
    assert r.stdout == ""


def test_export_into_a_new_directory(env: dict[str, str], tmp_path: Path) -> None:
    sid = sophon(env, "claude-code", "new", "--name", "exp").stdout.strip()
    assert SESSION_ID.match(sid)
    out_dir = tmp_path / "not-yet"
    r = sophon(env, "claude-code", "export", sid, "--out", f"{out_dir}/")
    assert r.returncode == 0, r.stderr
    assert out_dir.is_dir(), f"{out_dir} is a file"
    assert (out_dir / f"{sid}.tar.gz").is_file()


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


@pytest.fixture
def own_server(model: ModelServer, data_dir: Path) -> Iterator[LiveServer]:
    srv = LiveServer(data_dir, env=model_env(model)).start()
    yield srv
    srv.stop()


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


# --- 5. sandbox exec -----------------------------------------------------------------------


def test_sandbox_exec(env: dict[str, str]) -> None:
    r = sophon(env, "sandbox", "exec", "--language", "python", "print(6*7)")
    assert (r.returncode, r.stdout) == (0, "42\n"), r.stderr

    r = sophon(env, "sandbox", "exec", "--thread", "t1", "echo kept > note.txt")
    assert r.returncode == 0, r.stderr
    r = sophon(env, "sandbox", "exec", "--thread", "t1", "cat note.txt")
    assert (r.returncode, r.stdout) == (0, "kept\n"), r.stderr

    r = sophon(env, "sandbox", "exec", "--language", "python", "-",
               input="import sys\nprint('from', 'stdin')\nprint('oops', file=sys.stderr)\n")
    assert (r.returncode, r.stdout, r.stderr) == (0, "from stdin\n", "oops\n")

    r = sophon(env, "sandbox", "exec", "echo partial; exit 7")
    assert (r.returncode, r.stdout) == (7, "partial\n"), r.stderr
    r = sophon(env, "sandbox", "exec", "--language", "python", "raise SystemExit(4)")
    assert r.returncode == 4, r.stderr


# --- 6. --help everywhere --------------------------------------------------------------------


def _commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], bool]]:
    """Every command path under the CLI, and whether it is a group (typer's own click)."""
    for name, cmd in group.commands.items():
        is_group = isinstance(getattr(cmd, "commands", None), dict)
        yield (*path, name), is_group
        if is_group:
            yield from _commands(cmd, (*path, name))


COMMANDS = list(_commands(typer.main.get_command(sophon_app)))
NO_EXAMPLE = {("claude-code", "secrets", "list"), ("claude-code", "secrets", "rm")}


def _help_all(paths: list[tuple[str, ...]], env: dict[str, str]) -> dict[
        tuple[str, ...], subprocess.CompletedProcess[str]]:
    """``--help`` of many commands, run side by side."""
    procs = {p: subprocess.Popen([*SOPHON, *p, "--help"], env=env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for p in paths}
    done = {}
    for p, proc in procs.items():
        out, err = proc.communicate(timeout=CLI_DEADLINE)
        done[p] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


def test_help_everywhere(config_home: Path) -> None:
    env = cli_env(config_home)
    assert len(COMMANDS) > 20
    results = _help_all([(), *(p for p, _ in COMMANDS)], env)
    for path, r in results.items():
        assert r.returncode == 0, (path, r.stderr)
        assert "Usage: sophon" in r.stdout and "Traceback" not in r.stderr, path
    for path, is_group in COMMANDS:
        text = results[path].stdout
        if is_group:  # a group lists what is under it
            children = [p[-1] for p, _ in COMMANDS if p[:-1] == path]
            assert all(child in text for child in children), (path, text)
        elif path not in NO_EXAMPLE:
            assert "Example:" in text, (path, text)
    no_args = sophon(env)  # no arguments at all: the top-level help
    assert "claude-code" in no_args.stdout + no_args.stderr


def test_help_of_secrets_list_and_rm_has_an_example(config_home: Path) -> None:
    results = _help_all(sorted(NO_EXAMPLE), cli_env(config_home))
    for path, r in results.items():
        assert r.returncode == 0
        assert "Example:" in r.stdout, path


def test_every_command_is_covered_by_the_help_test() -> None:
    leaves = {p for p, is_group in COMMANDS if not is_group}
    assert leaves >= NO_EXAMPLE
    assert {("login",), ("serve",), ("claude-code", "send"), ("sandbox", "exec"),
            ("users", "add"), ("testing", "model-server")} <= leaves


# --- 7. creating sessions: every option of `new` --------------------------------------------


def session(env: dict[str, str], sid: str) -> dict[str, Any]:
    """The session as `list --json` shows it."""
    r = sophon(env, "claude-code", "list", "--json")
    assert r.returncode == 0, r.stderr
    return next(s for s in json.loads(r.stdout) if s["id"] == sid)


def test_new_with_a_model_and_a_system_prompt_file(env: dict[str, str], model: ModelServer,
                                                   tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.md"
    prompt.write_text("Answer like a pirate.\nNever use the word 'treasure'.\n")
    r = sophon(env, "claude-code", "new", "--name", "pirate", "--model", "haiku",
               "--system-prompt", f"@{prompt}")
    assert r.returncode == 0, r.stderr
    sid = r.stdout.strip()
    shown = session(env, sid)
    assert (shown["model"], shown["system_prompt"]) == ("haiku", prompt.read_text())

    # The model gets it: the turn's request carries the file's text and the chosen model.
    model.set_script({"turns": [{"rules": [
        {"when": {"system_contains": "Answer like a pirate."}, "reply": "Arr."}],
        "default": "No pirate prompt."}]})
    r = sophon(env, "claude-code", "send", sid, "hello")
    assert r.returncode == 0, r.stderr
    assert "Arr." in r.stdout, r.stdout
    assert "haiku" in model.requests[0]["model"]

    r = sophon(env, "claude-code", "new", "--name", "plain", "--system-prompt", "Be brief.")
    assert session(env, r.stdout.strip())["system_prompt"] == "Be brief."
    r = sophon(env, "claude-code", "new", "--name", "x", "--system-prompt",
               f"@{tmp_path / 'missing.md'}")
    assert r.returncode == 2
    assert_one_line_error(r, "cannot read", "missing.md")


def test_new_clone_of_a_local_repository(env: dict[str, str]) -> None:
    repo = Path(tempfile.mkdtemp(prefix="sophon-cli-repo-", dir="/tmp"))
    try:
        git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
        subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
        (repo / "README.md").write_text("cloned from a local path\n")
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-qm", "first commit"], check=True)
        subprocess.run(["chmod", "-R", "a+rX", str(repo)], check=True)

        r = sophon(env, "claude-code", "new", "--name", "cloned", "--clone", str(repo))
        assert r.returncode == 0, r.stderr
        sid = r.stdout.strip()
        starter = session(env, sid)["starter"]
        assert (starter["type"], starter["url"]) == ("git", str(repo))
        r = sophon(env, "claude-code", "exec", sid, "cat README.md; git log --format=%s")
        assert (r.returncode, r.stdout) == (0, "cloned from a local path\nfirst commit\n"), \
            r.stderr
    finally:
        shutil.rmtree(repo, ignore_errors=True)


def test_new_runtime_reaches_the_server(env: dict[str, str]) -> None:
    r = sophon(env, "claude-code", "new", "--name", "native", "--runtime", "native")
    assert r.returncode == 0, r.stderr
    assert session(env, r.stdout.strip())["runtime"] == "native"
    # This server has no claude-code runtime yet and says so; a CLI that dropped the flag
    # would have made a native session instead.
    r = sophon(env, "claude-code", "new", "--name", "cc", "--runtime", "claude-code")
    if r.returncode == 0:
        assert session(env, r.stdout.strip())["runtime"] == "claude-code"
    else:
        assert_one_line_error(r, "claude-code")
        assert [s["name"] for s in json.loads(
            sophon(env, "claude-code", "list", "--json").stdout)] == ["native"]


# --- 8. approvals, interrupt, secrets, usage ---------------------------------------------------

DENIED_TURN = {"turns": [
    {"content": ["Let me write the file.",
                 {"type": "tool_use", "name": "Bash", "input": {"command": BASH}}]},
    {"rules": [{"when": {"last_tool_result_contains": "was denied"},
                "reply": "Understood, I did not run it."}],
     "default": "It ran."},
]}


def test_deny_with_a_reason(env: dict[str, str], model: ModelServer) -> None:
    model.set_script(DENIED_TURN)
    sid = sophon(env, "claude-code", "new", "--name", "deny").stdout.strip()
    proc, out, err = start(env, "claude-code", "send", sid, "write hi.txt")
    try:
        hint = err.wait_until(lambda lines: re.search(r"approve \S+ (apr_\w+)", "".join(lines)),
                              what="how to answer")
        r = sophon(env, "claude-code", "deny", sid, hint.group(1), "--reason", "not on a Friday")
        assert (r.returncode, r.stdout.strip()) == (0, "denied"), r.stderr
        assert proc.wait(CLI_DEADLINE) == 0
    finally:
        stop(proc)
    stdout = out.finish()
    assert "deny by" in stdout and "not on a Friday" in stdout, stdout
    assert "Understood, I did not run it." in stdout and "greetings" not in stdout
    told = json.dumps(model.requests[-1]["messages"][-1])
    assert "was denied: not on a Friday" in told, told
    r = sophon(env, "claude-code", "exec", sid, "test -e hi.txt")
    assert r.returncode == 1  # the command never ran


def test_send_answered_no_at_the_prompt(env: dict[str, str], model: ModelServer) -> None:
    model.set_script(DENIED_TURN)
    sid = sophon(env, "claude-code", "new", "--name", "says-no").stdout.strip()
    term = Pty([*SOPHON, "claude-code", "send", sid, "write hi.txt"], env)
    try:
        term.expect("allow Bash?")
        term.send("n\n")
        code = term.wait()
    finally:
        term.close()
    out = term.text
    assert code == 0, out
    assert "deny by" in out and "Understood, I did not run it." in out, out
    assert "greetings" not in out and "Traceback" not in out
    assert sophon(env, "claude-code", "exec", sid, "test -e hi.txt").returncode == 1


def test_interrupt_stops_the_running_turn(env: dict[str, str], server: LiveServer,
                                          key: str, model: ModelServer) -> None:
    model.set_script({"turns": [
        {"content": [{"type": "tool_use", "name": "Bash", "input": {"command": "sleep 300"}}]},
        {"reply": "Stopped."}]})
    with Client(server.url, key) as c:
        sid = c.create_session("long", approval={"shell": "allow"}).id
        c.send_message(sid, "wait a long time")
        wait_for(lambda: any(e.type == "exec_start" or e.type == "tool_use"
                             for e in c.events(sid, follow=False))
                 and c.get_session(sid).status == "running", CLI_DEADLINE, 0.05,
                 "the tool call to start")
        t0 = time.monotonic()
        r = sophon(env, "claude-code", "interrupt", sid)
        assert (r.returncode, r.stdout.strip()) == (0, "interrupted"), r.stderr
        wait_for(lambda: c.get_session(sid).status == "idle", CLI_DEADLINE, 0.05,
                 "the turn to stop")
        assert time.monotonic() - t0 < 60  # long before `sleep 300` would have ended
    r = sophon(env, "claude-code", "interrupt", sid)
    assert (r.returncode, r.stdout.strip()) == (0, "no turn was running"), r.stderr


def test_secrets_set_list_rm_never_show_a_value(env: dict[str, str]) -> None:
    sid = sophon(env, "claude-code", "new", "--name", "secrets").stdout.strip()
    shown = ""
    r = sophon(env, "claude-code", "secrets", "set", sid, "API_TOKEN", "arg-value-123")
    assert (r.returncode, r.stdout.strip()) == (0, "set API_TOKEN"), r.stderr
    shown += r.stdout + r.stderr
    r = sophon(env, "claude-code", "secrets", "set", sid, "PIPED", input="piped-value-456\n")
    assert (r.returncode, r.stdout.strip()) == (0, "set PIPED"), r.stderr
    shown += r.stdout + r.stderr
    term = Pty([*SOPHON, "claude-code", "secrets", "set", sid, "TYPED"], env)
    try:
        # "TYPED:", then getpass turns echo off (dropping what was typed before) and
        # writes the space: type after it, as a person would.
        term.expect("TYPED: ")
        term.send("typed-value-789\n")
        assert term.wait() == 0, term.text
    finally:
        term.close()
    shown += term.text
    assert "set TYPED" in term.text

    r = sophon(env, "claude-code", "secrets", "list", sid)
    assert (r.returncode, r.stdout.split()) == (0, ["API_TOKEN", "PIPED", "TYPED"]), r.stderr
    shown += r.stdout + r.stderr
    r = sophon(env, "claude-code", "exec", sid, 'test "$API_TOKEN $PIPED $TYPED" = '
               '"arg-value-123 piped-value-456 typed-value-789" && echo all-set')
    assert (r.returncode, r.stdout) == (0, "all-set\n"), r.stderr
    for value in ("arg-value-123", "piped-value-456", "typed-value-789"):
        assert value not in shown, shown  # never echoed, never printed back

    r = sophon(env, "claude-code", "secrets", "rm", sid, "PIPED")
    assert (r.returncode, r.stdout.strip()) == (0, "removed PIPED"), r.stderr
    assert sophon(env, "claude-code", "secrets", "list", sid).stdout.split() == [
        "API_TOKEN", "TYPED"]
    assert_one_line_error(sophon(env, "claude-code", "secrets", "set", sid, "bad-name", "v"),
                          "secret names")


def test_usage(env: dict[str, str], server: LiveServer, key: str, model: ModelServer) -> None:
    model.set_script({"turns": ["Hello!", "Hello again!"]})
    sid = sophon(env, "claude-code", "new", "--name", "usage").stdout.strip()
    r = sophon(env, "claude-code", "usage", sid)
    assert r.stdout.strip() == "0 tokens in, 0 out, $0.0000 over 0 calls", r.stderr
    for message in ("hi", "again"):
        assert sophon(env, "claude-code", "send", sid, message).returncode == 0
    with Client(server.url, key) as c:
        expected = c.usage(sid)
    t = expected["totals"]
    assert t["input_tokens"] > 0 and len(expected["calls"]) == 2
    r = sophon(env, "claude-code", "usage", sid)
    assert r.stdout.strip() == (f"{t['input_tokens']:,} tokens in, {t['output_tokens']:,} "
                                f"out, ${t['cost_usd']:.4f} over 2 calls"), r.stderr
    r = sophon(env, "claude-code", "usage", sid, "--json")
    assert json.loads(r.stdout) == expected


# --- 9. sandbox timeouts, export errors, what a command imports ---------------------------------


def test_sandbox_exec_timeout(env: dict[str, str]) -> None:
    t0 = time.monotonic()
    r = sophon(env, "sandbox", "exec", "--timeout", "1", "echo started; sleep 30; echo late")
    elapsed = time.monotonic() - t0
    assert r.returncode != 0 and r.stdout == "started\n", (r.stdout, r.stderr)
    assert "(timeout)" in r.stderr and "Traceback" not in r.stderr
    assert elapsed < 20, elapsed  # killed after 1 s, not after the 30 s sleep
    r = sophon(env, "sandbox", "exec", "--timeout", "0", "true")
    assert r.returncode != 0 and "Traceback" not in r.stderr


@pytest.mark.parametrize("where", ["/proc/nope/", "FILE/sub/"])
def test_export_to_a_place_that_cannot_be_written(env: dict[str, str], tmp_path: Path,
                                                  where: str) -> None:
    sid = sophon(env, "claude-code", "new", "--name", "exp").stdout.strip()
    blocker = tmp_path / "FILE"
    blocker.write_text("a file, not a directory")
    out = where.replace("FILE", str(blocker))
    r = sophon(env, "claude-code", "export", sid, "--out", out)
    assert r.returncode == 1
    assert_one_line_error(r, "cannot write", out.rstrip("/"))
    assert blocker.read_text() == "a file, not a directory"


IMPORTS_SEEN = """
import atexit, json, sys
heavy = ("httpx", "pydantic", "rich", "sophon.sessions.models", "sophon.events.types")
atexit.register(lambda: print(json.dumps([m for m in heavy if m in sys.modules]),
                              file=sys.stderr))
sys.argv = ["sophon", *sys.argv[1:]]
from sophon.cli import main
main()
"""


@pytest.mark.parametrize("args", [("--help",), ("claude-code", "list"),
                                  ("claude-code", "list", "--json")], ids=" ".join)
def test_quick_commands_import_nothing_heavy(env: dict[str, str], args: tuple[str, ...]) -> None:
    """What keeps start-up under 300 ms (bench/bench_cli.py): no httpx, no pydantic, and for
    `list`, no rich either."""
    r = subprocess.run([sys.executable, "-c", IMPORTS_SEEN, *args], env=env, text=True,
                       capture_output=True, timeout=CLI_DEADLINE)
    assert r.returncode == 0, r.stderr
    loaded = json.loads(r.stderr.strip().splitlines()[-1])
    allowed = {"rich"} if args == ("--help",) else set()
    assert set(loaded) <= allowed, loaded
