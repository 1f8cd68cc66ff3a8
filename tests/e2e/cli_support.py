"""What the CLI tests share: how to run ``sophon`` as a user would (plain, piped, in a
terminal), how to read what it prints, and the scripted model turns they use."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any

from sophon.testing import ModelServer
from tests import conftest

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


def model_env(model: ModelServer) -> dict[str, str]:
    return conftest.model_env(model.url)


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
        def as_in_a_terminal() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            interruptible()

        self.proc = subprocess.Popen(args, env={**env, "TERM": "xterm"}, stdin=slave,
                                     stdout=slave, stderr=slave, close_fds=True,
                                     start_new_session=True, preexec_fn=as_in_a_terminal)
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


def interruptible() -> None:
    """In the child: Ctrl-C (SIGINT) as a terminal gives it. A test run started in the
    background by a non-interactive shell has SIGINT ignored, which children inherit, and
    Python then leaves it ignored: the CLI would never see the tests' Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], Lines, Lines]:
    proc = subprocess.Popen([*SOPHON, *args], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=interruptible)
    return proc, Lines(proc.stdout), Lines(proc.stderr)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)
