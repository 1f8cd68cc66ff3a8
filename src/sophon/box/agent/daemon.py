"""boxd: the agent that runs as the first process inside every box (started by
``boxd.py`` beside this file).

Standard library only: it must run under any python3 an image offers. It speaks
length-prefixed JSON frames on stdin/stdout (4-byte big-endian length, then UTF-8
JSON). Every request carries an integer ``id``; requests run concurrently, each
on a thread of its own while it runs (threads are reused), and every reply frame
echoes the id.

An exec may ask for a standard input (``"stdin": true``): the command then reads a
socket that ``input`` requests (``{"op": "input", "target", "data", "eof"}``) write to,
as a long-lived program such as Claude Code's CLI takes one message after another.
A socket, not a pipe, so a write to a command that has stopped reading fails with
EPIPE instead of killing boxd with SIGPIPE.

Replies: ``{"id", "kind": "out", "stream", "data"}`` while an exec runs, then
exactly one ``{"id", "kind": "done", ...}`` or ``{"id", "kind": "error", "code",
"message"}``. A frame without an id gets no reply: the only one is ``credit``
(``{"op": "credit", "target", "size"}``), the host's go-ahead for more output of an
exec that asked for flow control with a ``window``.

No frame the host sends can end boxd: one over the size limit is read and discarded,
one that is not JSON is dropped, and either is answered with an error when its id can
be read, so the request fails instead of the box.

This process lives on the untrusted side of the boundary: the host validates
every frame it sends. It makes itself non-dumpable so that workloads, which run
under the same uid, cannot ptrace it, read its memory, or open its end of the
host's pipes through /proc. It runs as pid 1 of the box (bwrap --as-pid-1): an
init that a workload could reach would hold those same pipes. As pid 1 it reaps
every orphan, so it owns all waiting: one thread calls waitpid(-1) for the box.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import ctypes
import json
import os
import re
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time

from threads import Credit, Reaper, Workers  # boxd.py put this directory on sys.path

HEADER = struct.Struct(">I")
MAX_FRAME = 8 * 1024 * 1024
MIN_WINDOW = 256 * 1024  # characters: an output frame (CHUNK as base64) must fit
CHUNK = 64 * 1024
PR_SET_DUMPABLE = 4

_write_lock = threading.Lock()
_out = sys.stdout.buffer
_running: dict[int, subprocess.Popen[bytes]] = {}
_credits: dict[int, Credit] = {}  # windowed execs' flow control, under _running_lock
_running_lock = threading.Lock()
_cancelled: set[int] = set()  # cancels that arrived before their exec started


class Feed:
    """Where ``input`` requests write: an exec's stdin socket, or a terminal's pty."""

    def __init__(self, sock: socket.socket | None = None, pty: int | None = None) -> None:
        self.sock, self.pty = sock, pty
        self.lock = threading.Lock()  # one write at a time, in order

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.sock is not None:
                view = view[self.sock.send(view, socket.MSG_NOSIGNAL):]
            else:
                view = view[os.write(self.pty, view):]  # type: ignore[arg-type]

    def end(self) -> None:
        if self.sock is not None:
            self.sock.shutdown(socket.SHUT_WR)
        # (a terminal has no end of input: its shell reads Ctrl-D as a person sends it)

    def close(self) -> None:
        """Wake a write blocked on a full socket, then close it (a pty is closed by the
        terminal that opened it)."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            with self.lock:
                self.sock.close()


_stdins: dict[int, Feed] = {}  # under _running_lock
# Execs with an input, from their arrival until they end: an input request may overtake
# its exec's start (they run on different threads) and waits for it here.
_fed_starts: dict[int, threading.Event] = {}  # under _running_lock


_reaper = Reaper()


def send(frame: dict[str, object]) -> None:
    data = json.dumps(frame, separators=(",", ":")).encode()
    if len(data) > MAX_FRAME:
        # The host stops a box that sends a frame over the limit: fail the request instead.
        data = json.dumps({"id": frame.get("id"), "kind": "error", "code": "reply_too_large",
                           "message": f"the answer would be {len(data)} bytes, over the "
                                      f"{MAX_FRAME}-byte frame limit"}).encode()
    with _write_lock:
        _out.write(HEADER.pack(len(data)) + data)
        _out.flush()


def read_exact(stream, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        part = stream.read(n - len(buf))
        if not part:
            return None
        buf += part
    return buf


def skip(stream, n: int) -> bool:
    """Read and drop ``n`` bytes, a chunk at a time; False at end of stream."""
    while n > 0:
        part = stream.read(min(n, CHUNK))
        if not part:
            return False
        n -= len(part)
    return True


_ID = re.compile(rb'\s*\{\s*"id"\s*:\s*(\d{1,18})\s*[,}]')


def refuse(head: bytes, code: str, message: str) -> None:
    """Answer a request boxd could not read with an error, if its id can be found at
    its start (the host always puts it first); else nobody is waiting for it."""
    m = _ID.match(head)
    if m:
        send({"id": int(m.group(1)), "kind": "error", "code": code, "message": message})


class RequestError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --- operations -------------------------------------------------------------


def op_exec(rid: int, req: dict) -> dict:
    try:
        return _exec(rid, req)
    finally:  # whatever happened, an input waiting for this exec's start waits no more
        with _running_lock:
            _fed_starts.pop(rid, threading.Event()).set()


def _exec(rid: int, req: dict) -> dict:
    argv = req["argv"]
    timeout = float(req.get("timeout", 60))
    cap = int(req.get("output_cap", 1024 * 1024))
    env = req.get("env") or {}
    binary = bool(req.get("binary"))
    cwd = req.get("cwd") or os.environ.get("HOME", "/")
    script = req.get("script")
    window = req.get("window")
    credit = None
    if window is not None:
        if not isinstance(window, int) or isinstance(window, bool) or window < MIN_WINDOW:
            raise RequestError("invalid_request",
                               f"an exec's window is at least {MIN_WINDOW} characters")
        credit = Credit(window)
    script_path = None
    if script is not None:
        script_path = _write_script(rid, script)
        argv = [a.replace("{script}", script_path) for a in argv]
    feed = child_end = None
    if req.get("stdin"):
        feed, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        feed.shutdown(socket.SHUT_RD)  # the command only reads; boxd only writes
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=child_end if child_end is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
    except (OSError, ValueError) as exc:
        if feed is not None:
            feed.close()
        raise RequestError("spawn_failed", f"could not start {argv[0]!r}: {exc}") from exc
    finally:
        if child_end is not None:
            child_end.close()
    _reaper.spawned()
    with _running_lock:
        _running[rid] = proc
        if feed is not None:
            _stdins[rid] = Feed(sock=feed)
            _fed_starts.pop(rid, threading.Event()).set()
        if credit is not None:
            _credits[rid] = credit
        if rid in _cancelled:
            _cancelled.discard(rid)
            _kill_group(proc)
            if credit is not None:
                credit.close()
    sent = {"stdout": 0, "stderr": 0}
    truncated = {"stdout": False, "stderr": False}
    decoders = {s: codecs.getincrementaldecoder("utf-8")("replace") for s in sent}
    streams = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}
    poller = select.poll()
    for fd in streams:
        poller.register(fd, select.POLLIN)
    deadline = started + timeout
    timed_out = False
    exited_at: float | None = None
    stalled = 0.0  # seconds spent waiting for credit since the main process exited

    def emit(name: str, data: str) -> None:
        """Send an output frame, after waiting for credit if the exec is windowed;
        dropped if it was cancelled or the deadline passed while waiting."""
        nonlocal stalled
        if credit is not None:
            began = time.monotonic()
            ok = credit.take(len(data), deadline)
            if exited_at is not None:
                stalled += time.monotonic() - began
            if not ok:
                return
        send({"id": rid, "kind": "out", "stream": name, "data": data})

    try:
        while streams:
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                _kill_group(proc)
                break
            if exited_at is None and _reaper.exited(proc.pid):
                exited_at = now
            # Once the main process has exited, a background child may still hold
            # the pipes open: give it a moment to flush, then stop listening. Time
            # spent waiting for the host's credit does not count: what the pipes
            # still hold is the output's end, not a straggler's.
            if exited_at is not None and now - exited_at - stalled > 0.2:
                break
            wait = min(deadline - now, 0.05 if exited_at is not None else 0.25)
            for fd, _ in poller.poll(wait * 1000):
                name = streams[fd]
                data = os.read(fd, CHUNK)
                if not data:
                    poller.unregister(fd)
                    del streams[fd]
                    continue
                room = cap - sent[name]
                if room <= 0:
                    truncated[name] = True
                    continue
                if len(data) > room:
                    data = data[:room]
                    truncated[name] = True
                sent[name] += len(data)
                text = (base64.b64encode(data).decode() if binary
                        else decoders[name].decode(data))
                if text:
                    emit(name, text)
        code = None
        if not timed_out:
            code = _reaper.wait(proc.pid, max(deadline - time.monotonic(), 0))
            if code is None:
                timed_out = True
                _kill_group(proc)
        if code is None:
            code = _reaper.wait(proc.pid, None)
        # Popen must not wait for this pid itself: it may belong to a new child by now.
        proc.returncode = code
    finally:
        proc.stdout.close()
        proc.stderr.close()
        with _running_lock:
            _running.pop(rid, None)
            _credits.pop(rid, None)
            fed = _stdins.pop(rid, None)
        if fed is not None:
            fed.close()
        if script_path:
            with contextlib.suppress(OSError):
                os.unlink(script_path)
    for name, dec in decoders.items():
        tail = "" if binary else dec.decode(b"", final=True)
        if tail:
            emit(name, tail)
    return {
        "exit_code": code if code >= 0 else 128 - code,
        "signal": -code if code < 0 else None,
        "timed_out": timed_out,
        "truncated": truncated["stdout"] or truncated["stderr"],
        "duration_ms": int((time.monotonic() - started) * 1000),
    }


_script_dir: list[str] = []
_script_lock = threading.Lock()


def _script_directory() -> str:
    with _script_lock:
        d = _script_dir[0] if _script_dir else None
        try:
            st = os.lstat(d) if d else None
        except OSError:
            st = None
        while st is None or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            # tempfile.mkdtemp's way without its import (~5 ms of a new box's first exec,
            # so of every one-off execution).
            d, st = "/tmp/.boxd-" + os.urandom(8).hex(), None
            try:
                os.mkdir(d, 0o700)
                st = os.lstat(d)
            except FileExistsError:
                continue
            except OSError as exc:
                raise RequestError("spawn_failed", f"no directory for the code: {exc}") from exc
        _script_dir[:] = [d]
        return d


def _write_script(rid: int, script: str) -> str:
    """Write code to run into a private directory under /tmp.

    Workloads share boxd's uid and can replace anything there; a directory that is
    no longer ours (gone, or swapped for a symlink) is replaced by a new one, and the
    file is created exclusively without following links. At worst a workload spoils
    its own execution, never boxd or a later one."""
    path = f"{_script_directory()}/exec-{rid}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise RequestError("spawn_failed", f"could not write the code to run: {exc}") from exc
    try:
        view = memoryview(script.encode())
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    return path


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def op_cancel(rid: int, req: dict) -> dict:
    target = int(req["target"])
    if target in _watches:
        _watches[target].set()  # type: ignore[attr-defined]
        return {"cancelled": True}
    with _running_lock:
        proc = _running.get(target)
        if proc is None:
            _cancelled.add(target)
            return {"cancelled": False}
        credit = _credits.get(target)
    _kill_group(proc)
    if credit is not None:
        credit.close()  # its output is no longer wanted: stop waiting to send it
    return {"cancelled": True}


def _started_feed(target: object) -> Feed | None:
    """The input of exec or terminal ``target``, once it has started: a keystroke or a
    resize sent right after the request that starts it waits for it, not a not_running."""
    with _running_lock:
        starting = _fed_starts.get(target)  # type: ignore[arg-type]
    if starting is not None:
        starting.wait(60)
    with _running_lock:
        return _stdins.get(target)  # type: ignore[arg-type]


def op_input(rid: int, req: dict) -> dict:
    """Write to the standard input of a running exec that asked for one; ``eof`` closes
    it after the data."""
    target, data = req.get("target"), req.get("data", "")
    if not isinstance(target, int) or not isinstance(data, str):
        raise RequestError("invalid_request", "input needs an integer target and text data")
    fed = _started_feed(target)
    if fed is None:
        raise RequestError("not_running", f"exec {target} is not running with an input")
    with fed.lock:
        try:
            fed.write(data.encode())
            if req.get("eof"):
                fed.end()
        except OSError as exc:  # closed: the command ended, or stopped reading
            raise RequestError("input_closed",
                               f"exec {target} no longer reads its input: {exc}") from exc
    return {"written": len(data)}


# A terminal's shell gets the pty as its controlling terminal: a new session whose first
# tty is it (os.login_tty), so Ctrl-C reaches what runs in the foreground.
LOGIN_TTY = "import os, sys; os.login_tty(0); os.execvp(sys.argv[1], sys.argv[1:])"


def _winsize(fd: int, rows: int, cols: int) -> None:
    import fcntl
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _size(req: dict) -> tuple[int, int]:
    rows, cols = req.get("rows", 24), req.get("cols", 80)
    if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1000
               for v in (rows, cols)):
        raise RequestError("invalid_request", "rows and cols are whole numbers, 1 to 1000")
    return rows, cols


def op_pty(rid: int, req: dict) -> dict:
    try:
        return _pty(rid, req)
    finally:  # an input waiting for this terminal's start waits no more
        with _running_lock:
            _fed_starts.pop(rid, threading.Event()).set()


def _pty(rid: int, req: dict) -> dict:
    """A terminal: ``argv`` (a login shell by default) on a new pty, its output streamed
    (base64, flow-controlled by ``window``) until it and everything holding the pty have
    exited or it is cancelled; ``input`` writes keystrokes, ``resize`` sets its size."""
    rows, cols = _size(req)
    window = req.get("window")
    if not isinstance(window, int) or isinstance(window, bool) or window < MIN_WINDOW:
        raise RequestError("invalid_request", f"a terminal's window is at least {MIN_WINDOW}")
    argv = req.get("argv") or ["bash", "-l"]
    master, slave = os.openpty()
    try:
        _winsize(slave, rows, cols)
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", LOGIN_TTY, *argv], stdin=slave, stdout=slave,
            stderr=slave, cwd=req.get("cwd") or os.environ.get("HOME", "/"),
            env=req.get("env") or {}, close_fds=True)
    except (OSError, ValueError) as exc:
        os.close(master)
        raise RequestError("spawn_failed", f"could not start {argv[0]!r}: {exc}") from exc
    finally:
        os.close(slave)
    _reaper.spawned()
    credit = Credit(window)
    with _running_lock:
        _running[rid] = proc
        _credits[rid] = credit
        _stdins[rid] = Feed(pty=master)
        _fed_starts.pop(rid, threading.Event()).set()
        if rid in _cancelled:
            _cancelled.discard(rid)
            _kill_group(proc)
    try:
        while True:
            try:
                data = os.read(master, CHUNK)
            except OSError:  # EIO: no process holds the pty any more
                break
            if not data:
                break
            text = base64.b64encode(data).decode()
            if not credit.take(len(text), time.monotonic() + 10**9):
                break  # cancelled while waiting for the host
            send({"id": rid, "kind": "out", "stream": "stdout", "data": text})
        code = _reaper.wait(proc.pid, None)
    finally:
        with _running_lock:
            _running.pop(rid, None)
            _credits.pop(rid, None)
            fed = _stdins.pop(rid, None)
        _kill_group(proc)  # what the shell left running on the pty goes with it
        if fed is not None:
            with fed.lock:
                os.close(master)
    proc.returncode = code
    return {"exit_code": code if code >= 0 else 128 - code}


def op_resize(rid: int, req: dict) -> dict:
    rows, cols = _size(req)
    fed = _started_feed(req.get("target"))
    if fed is None or fed.pty is None:
        raise RequestError("not_running", f"terminal {req.get('target')} is not running")
    with fed.lock:
        _winsize(fed.pty, rows, cols)
    return {"rows": rows, "cols": cols}


def give_credit(req: dict) -> None:
    """The host took some of an exec's output (see ``Credit``); on the main thread."""
    target, size = req.get("target"), req.get("size")
    if not isinstance(target, int) or not isinstance(size, int) or size <= 0:
        return
    with _running_lock:
        credit = _credits.get(target)
    if credit is not None:
        credit.give(size)


def _files():  # type: ignore[no-untyped-def]
    import files  # imported on first use: a box that never touches files starts faster

    return files


def _path_errors(fn):  # type: ignore[no-untyped-def]
    def wrapped(rid: int, req: dict) -> dict:
        mod = _files()
        try:
            return fn(mod, rid, req)
        except mod.PathError as exc:
            raise RequestError(exc.code, exc.message) from exc
        except FileNotFoundError as exc:
            raise RequestError("not_found", f"{req.get('path')!r} does not exist") from exc
        except NotADirectoryError as exc:
            raise RequestError("not_a_directory", f"{req.get('path')!r}: {exc.strerror}") from exc
        except OSError as exc:
            raise RequestError("io_error", f"{req.get('path')!r}: {exc.strerror}") from exc
    return wrapped


@_path_errors
def op_fread(files, rid: int, req: dict) -> dict:  # type: ignore[no-untyped-def]
    got = files.read(req["root"], req["path"], int(req.get("limit", MAX_FRAME // 2)),
                     int(req.get("offset", 0)))
    got["data"] = base64.b64encode(got["data"]).decode()
    return got


@_path_errors
def op_fwrite(files, rid: int, req: dict) -> dict:  # type: ignore[no-untyped-def]
    return files.write(req["root"], req["path"], base64.b64decode(req["data"]),
                       req.get("if_match"), bool(req.get("if_none_match")))


@_path_errors
def op_fput(files, rid: int, req: dict) -> dict:  # type: ignore[no-untyped-def]
    return files.put(req["root"], req["path"], str(req["upload"]), int(req.get("offset", 0)),
                     base64.b64decode(req.get("data", "")), bool(req.get("final")),
                     bool(req.get("abort")))


@_path_errors
def op_link(files, rid: int, req: dict) -> dict:  # type: ignore[no-untyped-def]
    return files.link(req["root"], req["path"], str(req["target"]))


@_path_errors
def op_tree(files, rid: int, req: dict) -> dict:  # type: ignore[no-untyped-def]
    return files.tree(req["root"], req.get("path", ""))


_watches: dict[int, object] = {}  # watch.Control by request id


def op_watch(rid: int, req: dict) -> dict:
    """Stream file changes under ``root`` as ``change`` frames until cancelled."""
    import watch

    control = _watches[rid] = watch.Control()
    try:
        watch.run(req["root"], lambda change: send({"id": rid, "kind": "change", **change}),
                  control, float(req.get("interval", 0.25)),
                  ready=lambda: send({"id": rid, "kind": "watching"}))
    finally:
        _watches.pop(rid, None)
    return {"stopped": True}


def op_rescan(rid: int, req: dict) -> dict:
    """Every watch scans now; the answer comes once their changes have been sent (so the
    host has them before it has this)."""
    waiting = [control.rescan() for control in list(_watches.values())]  # type: ignore[attr-defined]
    deadline = time.monotonic() + float(req.get("timeout", 10))
    settled = all(done.wait(max(0.0, deadline - time.monotonic())) for done in waiting)
    return {"watches": len(waiting), "settled": settled}


def op_procs(rid: int, req: dict) -> dict:
    """Count workload processes: everything but boxd and the sandbox's init."""
    me, count = os.getpid(), 0
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in (1, me):
            count += 1
    return {"count": count}


def op_ping(rid: int, req: dict) -> dict:
    return {"pid": os.getpid()}


OPS = {
    "exec": op_exec,
    "cancel": op_cancel,
    "input": op_input,
    "pty": op_pty,
    "resize": op_resize,
    "procs": op_procs,
    "fread": op_fread,
    "fwrite": op_fwrite,
    "fput": op_fput,
    "tree": op_tree,
    "link": op_link,
    "watch": op_watch,
    "rescan": op_rescan,
    "ping": op_ping,
}


def answer(req: dict) -> dict | None:
    """Run a request; its final frame (``done`` or ``error``), None for no id."""
    rid = req.get("id")
    if not isinstance(rid, int):
        return None
    op = OPS.get(req.get("op"))
    try:
        if op is None:
            raise RequestError("unknown_op", f"unknown op {req.get('op')!r}")
        result = op(rid, req)
        return {"id": rid, "kind": "done", **result}
    except RequestError as exc:
        return {"id": rid, "kind": "error", "code": exc.code, "message": exc.message}
    except Exception as exc:  # a bug here must not kill the box
        return {"id": rid, "kind": "error", "code": "internal", "message": repr(exc)}


_workers = Workers(answer, send)


def make_undumpable() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


def hand_over_door() -> None:
    """Listen on the box's own loopback for the egress door and send the listening
    socket to the host, which accepts from it (the box's network namespace has no other
    way out). Sent before the greeting, so the host finds it waiting; boxd keeps no
    copy, and a failure is sent as text instead, for the host to log."""
    fd, port = os.environ.pop("SOPHON_DOOR_FD", None), os.environ.pop("SOPHON_DOOR_PORT", None)
    if fd is None or port is None:
        return
    channel = socket.socket(fileno=int(fd))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", int(port)))
            listener.listen(1024)
            socket.send_fds(channel, [b"door"], [listener.fileno()])
    except OSError as exc:
        with contextlib.suppress(OSError):
            channel.send(f"boxd could not listen on 127.0.0.1:{port}: {exc}".encode())
    finally:
        channel.close()


def link_claude() -> None:
    """Claude Code where the Baponi guide's examples look for it (its ``cli_path``,
    ~/.local/bin/claude in a thread's home), unless the thread put something there."""
    target = os.environ.pop("SOPHON_CLAUDE_LINK", None)
    if target is not None:
        import files

        with contextlib.suppress(OSError, files.PathError):
            files.link(os.environ.get("HOME", "/"), ".local/bin/claude", target)


def main() -> None:
    make_undumpable()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    inp = sys.stdin.buffer
    hand_over_door()
    send({"id": 0, "kind": "ready", "pid": os.getpid()})
    link_claude()  # before the first request is read; after the greeting, not to slow it
    _workers.warm(_script_directory)
    while True:
        header = read_exact(inp, HEADER.size)
        if header is None:
            break
        (length,) = HEADER.unpack(header)
        if length > MAX_FRAME:
            # Read past it (the stream stays in step), keeping only its start for the id.
            head = read_exact(inp, min(length, 64))
            if head is None or not skip(inp, length - len(head)):
                break
            refuse(head, "frame_too_large",
                   f"a {length}-byte request is over the {MAX_FRAME}-byte frame limit")
            continue
        body = read_exact(inp, length)
        if body is None:
            break
        try:
            req = json.loads(body)
        except ValueError:
            refuse(body[:64], "invalid_frame", "the request is not valid JSON")
            continue
        if not isinstance(req, dict):
            continue
        if req.get("op") == "credit" and "id" not in req:
            give_credit(req)  # here, not on a worker: it must not wait behind one
            continue
        if (req.get("op") == "pty" or req.get("op") == "exec" and req.get("stdin")) \
                and isinstance(req.get("id"), int):
            with _running_lock:
                _fed_starts[req["id"]] = threading.Event()
        _workers.submit(req)
    # The host went away. Exiting ends the sandbox: its init exits with us and the
    # kernel kills every process left in the pid namespace.

