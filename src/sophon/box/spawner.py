"""The server's side of spawnd (spawnd.py): box processes started by a small helper.

``Spawner.spawn`` hands spawnd what one box start needs and returns a ``SpawnedProcess``,
which looks to ``Box`` like an asyncio subprocess: ``pid``, ``stdin``, ``stdout``,
``stderr``, ``returncode``, ``kill()`` and ``wait()``. Kills go through a pidfd, so a
signal can never reach another process that got the same pid later. spawnd is started on
the first spawn and again after it died (every box dies with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sophon.errors import BoxError

log = logging.getLogger(__name__)

SPAWND = Path(__file__).with_name("spawnd.py")
HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
MAX_MESSAGE = 1 << 16
AHEAD_ACK_SECONDS = 2.0  # for a child made ahead to say it took a start


@dataclass
class Launch:
    """One box start, as spawnd's child carries it out (see spawnd.py)."""

    argv: list[str]
    env: dict[str, str]
    pass_fds: tuple[int, ...] = ()  # kept at these numbers in the child
    cgroup_procs: list[str] = field(default_factory=list)
    mount: dict[str, object] | None = None  # device, target, flags, data, uid
    creds: dict[str, object] | None = None  # uid, gid, groups
    rlimits: list[tuple[str, int, int]] = field(default_factory=list)


async def _drain(stream: asyncio.StreamReader, keep: int = 2**16) -> bytes:
    """Read to the end, keeping the last ``keep`` bytes."""
    tail = b""
    while chunk := await stream.read(2**16):
        tail = (tail + chunk)[-keep:]
    return tail


class _PipeReader(asyncio.StreamReaderProtocol):
    """Closes its pipe at end of file: asyncio's own loop does that, uvloop's waits for
    ``close()``, and a transport left to the garbage collector closes its descriptor
    twice (the second time whatever has its number by then)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._pipe = transport

    def eof_received(self) -> bool:
        super().eof_received()
        self._pipe.close()
        return False


class SpawnedProcess:
    """A child of spawnd, driven like ``asyncio.subprocess.Process``."""

    def __init__(self, pid: int, pidfd: int, stdin: asyncio.StreamWriter,
                 stdout: asyncio.StreamReader, stderr: asyncio.StreamReader) -> None:
        self.pid = pid
        self._pidfd: int | None = pidfd
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.returncode: int | None = None
        self._exited = asyncio.Event()

    def send_signal(self, sig: int) -> None:
        if self._pidfd is None:
            raise ProcessLookupError(self.pid)
        signal.pidfd_send_signal(self._pidfd, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def exited(self, code: int) -> None:
        if self.returncode is not None:
            return
        self.returncode = code
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self.stdin.close()
        self._exited.set()


class Spawner:
    def __init__(self, python: str = sys.executable) -> None:
        self.python = python
        self._sock: socket.socket | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[tuple[dict[str, object], list[int]]]] = {}
        self._children: dict[int, SpawnedProcess] = {}
        self._early_exits: dict[int, int] = {}
        self._abandoned: set[int] = set()  # killed before spawn() returned them
        self._tasks: set[asyncio.Task[int]] = set()
        # Children made ahead, not yet used: pid -> (pidfd, the socket to hand it a start).
        self._ahead: dict[int, tuple[int, socket.socket]] = {}

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._sock is not None else None

    async def _ensure(self) -> socket.socket:
        async with self._lock:
            if self._sock is not None:
                return self._sock
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    self.python, "-I", "-S", str(SPAWND), str(theirs.fileno()),
                    str(os.getpid()), pass_fds=(theirs.fileno(),),
                    stdin=asyncio.subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin"})
            except OSError as exc:
                ours.close()
                raise BoxError(f"could not start the box launcher: {exc}") from exc
            finally:
                theirs.close()
            ours.setblocking(False)
            asyncio.get_running_loop().add_reader(ours.fileno(), self._on_readable)
            self._sock = ours
            return ours

    def _on_readable(self) -> None:
        sock = self._sock
        assert sock is not None
        while True:
            try:
                data, anc, _, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(4),
                                               socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, anc = b"", []
            fds = [fd for level, kind, blob in anc
                   if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
                   for fd in struct.unpack(f"{len(blob) // 4}i", blob[: len(blob) // 4 * 4])]
            if not data:
                self._lost()
                return
            msg = json.loads(data)
            if "exit" in msg:
                pid, code = int(msg["exit"]), int(msg["code"])
                waiting = self._ahead.pop(pid, None)
                if waiting is not None:  # made ahead and never used
                    os.close(waiting[0])
                    waiting[1].close()
                    continue
                proc = self._children.pop(pid, None)
                if proc is not None:
                    proc.exited(code)
                elif pid in self._abandoned:  # its spawn() was cancelled
                    self._abandoned.discard(pid)
                else:  # its spawn() has not finished wrapping it yet
                    self._early_exits[pid] = code
                continue
            reply = self._replies.pop(int(msg["id"]), None)
            if reply is None or reply.done():
                for fd in fds:
                    os.close(fd)
            else:
                reply.set_result((msg, fds))

    def _lost(self) -> None:
        """spawnd is gone, and every box with it (--die-with-parent)."""
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
            log.warning("the box launcher (spawnd) exited; boxes it started are gone")
        for reply in self._replies.values():
            if not reply.done():
                reply.set_exception(BoxError("the box launcher exited"))
        self._replies.clear()
        children, self._children = self._children, {}
        for proc in children.values():
            proc.exited(-signal.SIGKILL)
        self._early_exits.clear()
        self._abandoned.clear()
        self._forget_ahead()
        if self._proc is not None:
            proc_, self._proc = self._proc, None
            task = asyncio.get_running_loop().create_task(proc_.wait())  # reap it
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, sock: socket.socket, msg: dict[str, object], fds: list[int]) -> None:
        data = json.dumps(msg).encode()
        if len(data) > MAX_MESSAGE:
            raise BoxError("a box start too large for the launcher")
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock.sendmsg([data], anc)
                return
            except BlockingIOError:
                ready = loop.create_future()
                loop.add_writer(sock.fileno(), ready.set_result, None)
                try:
                    await ready
                finally:
                    loop.remove_writer(sock.fileno())

    def _forget_ahead(self) -> None:
        for pidfd, sock in self._ahead.values():
            os.close(pidfd)
            sock.close()
        self._ahead.clear()

    def is_ahead(self, pid: int) -> bool:
        """Whether this child made ahead still waits to be used."""
        return pid in self._ahead

    async def ahead(self, cgroup_procs: list[str]) -> int:
        """A child made now, in these cgroups, for a later ``spawn(..., by=pid)``: that
        start then skips joining them (see spawnd.py). Its pid."""
        sock = await self._ensure()
        rid = next(self._ids)
        msg, fds = await self._ask(sock, {"id": rid, "ahead": cgroup_procs}, [],
                                   "make a box process ahead")
        pid, (pidfd, sock_fd) = int(str(msg["pid"])), fds
        sock = socket.socket(fileno=sock_fd)
        sock.setblocking(False)
        self._ahead[pid] = (pidfd, sock)
        return pid

    def drop_ahead(self, pid: int) -> None:
        """End a child made ahead that will not be used."""
        waiting = self._ahead.pop(pid, None)
        if waiting is not None:
            waiting[1].close()
            self._end_ahead(pid, waiting[0])

    async def _hand_over(self, pid: int, msg: dict[str, object], fds: list[int]) -> int | None:
        """The start, straight to the child made ahead ``pid`` (spawnd, its parent, is not
        on the way): its pidfd once it says it took it; else None (it died, or was dying:
        it is killed, and the caller has spawnd fork instead)."""
        waiting = self._ahead.pop(pid, None)
        if waiting is None:
            return None  # gone already
        pidfd, sock = waiting
        try:
            with sock:
                data = json.dumps(msg).encode()
                anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
                sock.sendmsg([data], anc)
                took = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 1),
                                              AHEAD_ACK_SECONDS)
            if took == b"1":
                return pidfd
        except (OSError, TimeoutError):
            pass
        except BaseException:  # the start went away: so does the child
            self._end_ahead(pid, pidfd)
            raise
        self._end_ahead(pid, pidfd)  # never two processes for one start
        return None

    def _end_ahead(self, pid: int, pidfd: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        os.close(pidfd)
        if self._early_exits.pop(pid, None) is None:
            self._abandoned.add(pid)  # its exit is no child's

    async def spawn(self, launch: Launch, limit: int = 2**16,
                    by: int | None = None) -> SpawnedProcess:
        """Start one box process; ``limit`` is its output streams' buffer size. ``by``:
        a child made ahead (``ahead``) in the launch's cgroups, to start it."""
        sock = await self._ensure()
        pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(3)]
        (in_r, in_w), (out_r, out_w), (err_r, err_w) = pipes
        theirs = [in_r, out_w, err_w]
        ours = [in_w, out_r, err_r]
        rid = next(self._ids)
        start = {
            "id": rid, "argv": launch.argv, "env": launch.env,
            "targets": [0, 1, 2, *launch.pass_fds], "cgroup_procs": launch.cgroup_procs,
            "mount": launch.mount, "creds": launch.creds, "rlimits": launch.rlimits,
        }
        try:
            pidfd = None
            if by is not None:
                pidfd = await self._hand_over(by, start, [*theirs, *launch.pass_fds])
            if pidfd is not None:
                pid = by
            else:
                pid, pidfd = await self._fork(sock, start, [*theirs, *launch.pass_fds])
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        assert pid is not None
        try:
            proc = await self._wrap(pid, pidfd, ours, limit)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.close(pidfd)
            if self._early_exits.pop(pid, None) is None:
                self._abandoned.add(pid)
            raise
        self._children[pid] = proc
        code = self._early_exits.pop(pid, None)  # it may have ended while being wrapped
        if code is not None:
            self._children.pop(pid, None)
            proc.exited(code)
        return proc

    async def _ask(self, sock: socket.socket, msg: dict[str, object], fds: list[int],
                   what: str) -> tuple[dict[str, object], list[int]]:
        """Send spawnd a request (``msg["id"]``) and wait for its answer and descriptors;
        BoxError saying it could not ``what`` if spawnd says why."""
        rid = int(str(msg["id"]))
        reply: asyncio.Future[tuple[dict[str, object], list[int]]] = \
            asyncio.get_running_loop().create_future()
        self._replies[rid] = reply
        try:
            await self._send(sock, msg, fds)
            answer, got = await reply
        finally:
            self._replies.pop(rid, None)
        if "error" in answer:
            for fd in got:
                os.close(fd)
            raise BoxError(f"could not {what}: {answer['error']}")
        return answer, got

    async def _fork(self, sock: socket.socket, start: dict[str, object],
                    fds: list[int]) -> tuple[int, int]:
        """The start, to spawnd, which forks a child for it: its pid and pidfd."""
        msg, got = await self._ask(sock, start, fds, "start a box process")
        pid, (pidfd,) = int(str(msg["pid"])), got
        return pid, pidfd

    async def run(self, argv: list[str]) -> tuple[int, bytes]:
        """Run a host command (as the server's user, no box around it) to its end: its
        exit code and the last 64 KiB of its stderr. Its stdout is discarded."""
        proc = await self.spawn(Launch(argv=argv, env={"PATH": HOST_PATH}))
        proc.stdin.close()
        _, err, code = await asyncio.gather(_drain(proc.stdout), _drain(proc.stderr),
                                            proc.wait())
        return code, err

    @staticmethod
    async def _wrap(pid: int, pidfd: int, ours: list[int], limit: int) -> SpawnedProcess:
        loop = asyncio.get_running_loop()
        in_w, out_r, err_r = ours
        # uvloop's pipe transports close the descriptor themselves and then the file
        # object too, a second close that hits whatever another thread opened meanwhile
        # under the same number; asyncio's close only the file object.
        owns = isinstance(loop, asyncio.BaseEventLoop)
        files = [os.fdopen(in_w, "wb", buffering=0, closefd=owns),
                 os.fdopen(out_r, "rb", buffering=0, closefd=owns),
                 os.fdopen(err_r, "rb", buffering=0, closefd=owns)]
        transports: list[asyncio.BaseTransport] = []
        try:
            readers = []
            for f in files[1:]:
                reader = asyncio.StreamReader(limit=limit, loop=loop)
                transport, _ = await loop.connect_read_pipe(
                    lambda r=reader: _PipeReader(r, loop=loop), f)  # type: ignore[misc]
                transports.append(transport)
                readers.append(reader)
            transport, protocol = await loop.connect_write_pipe(
                asyncio.streams.FlowControlMixin, files[0])
            transports.append(transport)
        except BaseException:
            # A pipe a transport has is the transport's to close (twice would close
            # whatever got its number since).
            for t in transports:
                t.close()
            for i in (1, 2, 0)[len(transports):]:  # the order they were handed over in
                fd = files[i].fileno()
                files[i].close()
                if not owns:
                    os.close(fd)
            raise
        stdin = asyncio.StreamWriter(transport, protocol, None, loop)  # type: ignore[arg-type]
        return SpawnedProcess(pid, pidfd, stdin, readers[0], readers[1])

    async def close(self) -> None:
        """Stop spawnd; boxes it started die with it."""
        sock, proc = self._sock, self._proc
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()  # spawnd reads EOF and exits
            self._sock = None
        if proc is not None:
            self._proc = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        children, self._children = self._children, {}
        for child in children.values():
            child.exited(-signal.SIGKILL)
        self._forget_ahead()
