"""``sophon serve`` for tests, forked from a process that has imported the server already.

A server spends about 2 s of CPU importing its modules before it listens, and the suite
starts a few hundred, two test files at a time on two cores. Each test worker keeps one
"zygote": a process that imports the server's modules once, then forks a server per
request. The child runs the same entry point as ``python -m sophon.cli serve`` (the CLI's
``main``) with the test's environment, arguments, log and working directory, and nothing
else of the zygote's: its descriptors are closed, its signal handling reset and its
environment replaced.

The zygote is the servers' parent and a subreaper: it reaps them and whatever is orphaned
under them (as init would) and tells the worker each server's exit status. ``Forked`` is
the part of ``subprocess.Popen`` the tests use.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

ZYGOTE = r"""
import ctypes, json, os, selectors, signal, sys

import sophon.cli
import sophon.api.app
import sophon.services
import uvicorn.lifespan.on, uvicorn.loops.auto
import uvicorn.protocols.http.auto, uvicorn.protocols.websockets.auto

PR_SET_CHILD_SUBREAPER = 36
ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

def serve(req):
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    log = os.open(req["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    os.environ.clear()
    os.environ.update(req["env"])
    os.chdir(req["cwd"])
    sys.argv = ["sophon", *req["args"]]
    code = 1
    try:
        sophon.cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:
                pass
        os._exit(code)

def tell(line):
    os.write(1, (line + "\n").encode())

woken, wake = os.pipe()
os.set_blocking(wake, False)
signal.set_wakeup_fd(wake)
signal.signal(signal.SIGCHLD, lambda *_: None)
selector = selectors.DefaultSelector()
selector.register(0, selectors.EVENT_READ)
selector.register(woken, selectors.EVENT_READ)
servers, pending = set(), b""
while True:
    for key, _ in selector.select():
        if key.fd == woken:
            os.read(woken, 4096)
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                if pid in servers:
                    servers.discard(pid)
                    tell(f"exit {pid} {os.waitstatus_to_exitcode(status)}")
            continue
        data = os.read(0, 65536)
        if not data:
            sys.exit(0)  # the test worker is gone: its servers are init's
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            pid = os.fork()
            if pid == 0:
                serve(json.loads(line))
            servers.add(pid)
            tell(f"pid {pid}")
"""


class Forked:
    """A server forked by the zygote: as much of ``subprocess.Popen`` as the tests use."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.ended = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self.ended.wait(timeout):
            raise subprocess.TimeoutExpired(f"server {self.pid}", timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            # Not reaped before the zygote says so: the pid is still this server's.
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._forked: dict[int, Forked] = {}
        self._started: queue.Queue[Forked] = queue.Queue()

    def _start(self) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, cwd="/")
        threading.Thread(target=self._listen, args=(proc,), daemon=True,
                         name="zygote").start()
        return proc

    def _listen(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            what, pid, *code = line.split()
            if what == "pid":  # its exit, if it comes, is told after this line
                self._forked[int(pid)] = server = Forked(int(pid))
                self._started.put(server)
            elif (server := self._forked.pop(int(pid), None)) is not None:
                server.returncode = int(code[0])
                server.ended.set()

    def fork(self, args: list[str], env: dict[str, str], log: Path, cwd: str) -> Forked:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            assert self._proc.stdin is not None
            self._proc.stdin.write(json.dumps({"args": args, "env": env, "log": str(log),
                                               "cwd": cwd}) + "\n")
            self._proc.stdin.flush()
            return self._started.get(timeout=60)


ZYGOTE_PROCESS = Zygote()


def forkable(env: dict[str, str]) -> bool:
    """Whether a server with this environment can come from the zygote: the variables
    Python reads at its own start (PYTHONPATH, …) must be the zygote's."""
    return all(env.get(k) == os.environ.get(k)
               for k in {*env, *os.environ} if k.startswith("PYTHON"))
