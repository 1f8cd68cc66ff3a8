"""The host's handle on one running box: requests to boxd over its stdin/stdout."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import secrets
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sophon.box.cgroups import BoxCgroup
from sophon.box.protocol import (
    MIN_WINDOW,
    Change,
    Done,
    ExecResult,
    Failure,
    Output,
    Ready,
    Watching,
    credit,
    encode,
    read_reply,
)
from sophon.errors import BoxError, BoxProtocolError, BoxRequestError

if TYPE_CHECKING:
    from sophon.box.spawner import SpawnedProcess

log = logging.getLogger(__name__)

Reply = Output | Change | Watching | Done | Failure

INPUT_PIECE = 1_000_000  # characters of an exec's input a request: six bytes each at most
PUT_CHUNK = 1024 * 1024  # per fput request: 1.33 MiB of base64, well inside a frame


@dataclass(frozen=True)
class ExecOutcome:
    """What an exec came to, as the host judged it (boxd's word plus the cgroup's)."""

    exit_code: int
    timed_out: bool = False
    oom_killed: bool = False
    truncated: bool = False
    duration_ms: int = 0
    signal: int | None = None


@dataclass
class ExecEvent:
    stream: str
    data: str


async def stdout_lines(events: AsyncIterable[ExecEvent | ExecOutcome], max_line: int
                       ) -> AsyncIterator[str | ExecEvent | ExecOutcome]:
    """An exec's events with its standard output as whole lines (without the newline;
    what follows the last newline comes at the end), its stderr and outcome as they
    are: for programs that speak a line at a time. ValueError for a line past
    ``max_line`` characters."""
    buffer = ""
    try:
        async for ev in events:
            if isinstance(ev, ExecEvent) and ev.stream == "stdout":
                *whole, buffer = (buffer + ev.data).split("\n")
                if len(buffer) > max_line:
                    raise ValueError(f"a line over {max_line:,} characters")
                for line in whole:
                    yield line
            else:
                yield ev
    finally:  # left early (a long line, the reader gone): the exec is cancelled now
        if isinstance(events, AsyncGenerator):
            await events.aclose()
    if buffer:
        yield buffer


class ExecInput:
    """The standard input of an exec that asked for one (``Box.exec(stdin=...)``): text
    written while the command runs, in order; ``close`` ends it (the command reads EOF).
    A write waits until the exec has been sent to the box."""

    def __init__(self) -> None:
        self._target: tuple[Box, int] | None = None
        self._bound = asyncio.Event()
        self._lock = asyncio.Lock()

    def _bind(self, box: Box, rid: int) -> None:
        self._target = (box, rid)
        self._bound.set()

    async def write(self, data: str, *, eof: bool = False) -> None:
        """Raises BoxRequestError ``input_closed`` or ``not_running`` once the command
        has stopped reading or ended."""
        await self._bound.wait()
        assert self._target is not None
        box, rid = self._target
        async with self._lock:  # in order, one at a time
            # In pieces that fit a frame whatever they hold (JSON may make one character
            # six bytes): a paste of any size goes, never a payload_too_large.
            pieces = [data[i:i + INPUT_PIECE] for i in range(0, len(data), INPUT_PIECE)]
            for n, piece in enumerate(pieces or [""]):
                last = n == max(len(pieces), 1) - 1
                await box.request("input", target=rid, data=piece, eof=eof and last)

    async def close(self) -> None:
        await self.write("", eof=True)

    async def resize(self, rows: int, cols: int) -> None:
        """A terminal's new size (its programs get SIGWINCH)."""
        await self._bound.wait()
        assert self._target is not None
        box, rid = self._target
        await box.request("resize", target=rid, rows=rows, cols=cols)


@dataclass
class _Pending:
    op: str
    queue: asyncio.Queue[Reply | BaseException] = field(default_factory=asyncio.Queue)
    # Flow control (windowed execs only): characters of output data boxd has sent and
    # the host has not credited back, and those taken by the consumer since the last
    # credit. ``outstanding`` never passes ``window``, so the queue holds at most that.
    window: int | None = None
    outstanding: int = 0
    taken: int = 0


@dataclass
class _Settled:
    """Put in a watch's queue after a rescan's changes: set once the watch's reader has
    taken everything before it."""

    taken: asyncio.Event = field(default_factory=asyncio.Event)


class Box:
    """A running sandbox. Safe to use from many tasks at once."""

    def __init__(
        self,
        box_id: str,
        proc: SpawnedProcess,
        cgroup: BoxCgroup | None,
        on_stop: Callable[[Box], None] | None = None,
    ) -> None:
        self.id = box_id
        self._proc = proc
        self.cgroup = cgroup
        self._on_stop = on_stop
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._reader: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.active = 0  # requests in flight
        self.leases = 0  # holders of the box (see BoxManager.use)
        self.last_used = time.monotonic()
        self.stopped = asyncio.Event()
        self.started_at = time.monotonic()
        # Whether the box's disk is (about) full; the manager, which owns the disk, sets it.
        self.disk_full: Callable[[], bool] = lambda: False
        # The listener on the box's loopback that its network goes through (bwrap.py),
        # served by the egress door; called when the box stops, for the door to let go.
        self.door: socket.socket | None = None
        self.on_stopped: list[Callable[[Box], None]] = []
        # Whether the guide's cli_path (sandbox/service.py) has been made in this box.

    @property
    def busy(self) -> bool:
        return bool(self.active or self.leases)

    @property
    def pid(self) -> int:
        return self._proc.pid

    async def wait_ready(self, timeout: float) -> None:
        assert self._proc.stdout is not None
        try:
            first = await asyncio.wait_for(read_reply(self._proc.stdout), timeout)
        except (TimeoutError, BoxProtocolError) as exc:
            await self.stop()
            raise BoxError(f"box {self.id} did not start: {exc or 'timed out'}") from exc
        if not isinstance(first, Ready):
            stderr = await self._stderr_tail()
            await self.stop()
            raise BoxError(f"box {self.id} did not start: {stderr or 'no greeting from boxd'}")
        self._reader = asyncio.create_task(self._read_loop(), name=f"box-{self.id}-reader")

    async def _stderr_tail(self) -> str:
        if self._proc.stderr is None:
            return ""
        with contextlib.suppress(TimeoutError):
            data = await asyncio.wait_for(self._proc.stderr.read(4096), 1.0)
            return data.decode(errors="replace").strip()
        return ""

    async def _read_loop(self) -> None:
        assert self._proc.stdout is not None
        error: BaseException = BoxError(f"box {self.id} stopped")
        try:
            while True:
                reply = await read_reply(self._proc.stdout)
                if reply is None:
                    break
                pending = self._pending.get(reply.id)
                if pending is not None and not isinstance(reply, Ready):
                    if pending.window is not None and isinstance(reply, Output):
                        # Never wait here for a slow consumer: every request on the box
                        # shares this reader. boxd waits for credit instead.
                        pending.outstanding += len(reply.data)
                        if pending.outstanding > pending.window:
                            raise BoxProtocolError(
                                f"boxd sent {pending.outstanding} characters of output "
                                f"past a {pending.window}-character window")
                    pending.queue.put_nowait(reply)
        except BoxProtocolError as exc:
            log.warning("box %s broke protocol: %s", self.id, exc)
            error = exc
        finally:
            for pending in self._pending.values():
                pending.queue.put_nowait(error)
            if not self.stopped.is_set():
                asyncio.get_running_loop().create_task(self.stop())

    async def _send(self, frame: dict[str, object]) -> None:
        data = encode(frame)  # refuses a frame boxd could not take, before anything is sent
        stdin = self._proc.stdin
        if self.stopped.is_set() or stdin is None or stdin.is_closing():
            raise BoxError(f"box {self.id} is not running")
        async with self._write_lock:
            try:
                stdin.write(data)
                await stdin.drain()
            except (ConnectionError, BrokenPipeError) as exc:
                raise BoxError(f"box {self.id} is not running") from exc

    async def _stream(self, op: str, fields: dict[str, object], busy: bool = True,
                      bind: ExecInput | None = None) -> AsyncIterator[Reply]:
        """Send a request; yield its output frames, then its one final frame.

        The bookkeeping ends before the final frame is yielded, so a caller that
        stops reading at the final frame leaves nothing counted as in flight.

        With a ``window`` field (an exec's), output is flow-controlled: each frame
        the caller has taken is credited back to boxd (a quarter window at a time),
        and a caller that leaves before the end cancels the request, since nobody
        would credit it again."""
        rid = next(self._ids)
        window = fields.get("window")
        pending = self._pending[rid] = _Pending(
            op, window=window if isinstance(window, int) else None)
        counted = int(busy)  # a watch is not work: it must not keep the box from idling
        self.active += counted
        self.last_used = time.monotonic()
        sent = ended = False
        try:
            await self._send({"id": rid, "op": op, **fields})
            sent = True
            if bind is not None:
                bind._bind(self, rid)
            while True:
                item = await pending.queue.get()
                if isinstance(item, BaseException):
                    ended = True
                    raise item
                if not isinstance(item, Output | Change | Watching | _Settled):
                    final, ended = item, True
                    break
                yield item
                if pending.window is not None and isinstance(item, Output):
                    pending.taken += len(item.data)
                    # (A stopped box has its reason waiting in the queue.)
                    if pending.taken >= pending.window // 4 and not self.stopped.is_set():
                        size, pending.taken = pending.taken, 0
                        pending.outstanding -= size
                        await self._send(credit(rid, size))
        finally:
            self._pending.pop(rid, None)
            self.active -= counted
            if counted:
                self.last_used = time.monotonic()
            if sent and not ended and pending.window is not None \
                    and not self.stopped.is_set():
                self._spawn(self._cancel(rid))
        yield final

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cancel(self, rid: int) -> None:
        with contextlib.suppress(BoxError, BoxRequestError):
            await self.request("cancel", target=rid)

    async def request(self, op: str, **fields: object) -> Done:
        async for reply in self._stream(op, fields):
            if isinstance(reply, Failure):
                raise BoxRequestError(reply.code, reply.message)
            if isinstance(reply, Done):
                return reply
        raise BoxProtocolError(f"boxd ended {op} without a result")

    async def exec(
        self,
        argv: list[str],
        *,
        timeout: float,
        env: dict[str, str],
        cwd: str,
        output_cap: int,
        script: str | None = None,
        binary: bool = False,
        window: int | None = None,
        stdin: ExecInput | None = None,
    ) -> AsyncIterator[ExecEvent | ExecOutcome]:
        """Run a command; yields output chunks, then exactly one ``ExecOutcome``.
        With ``binary``, chunk data is base64 and nothing is decoded as text. With
        ``stdin``, the command reads what is written to it (else it reads nothing).

        With ``window`` (characters of chunk data), boxd sends no more than that
        ahead of what the caller has taken: the command waits (its pipe fills) while
        the caller is slow, so a large output held by a slow reader costs the host at
        most ``window``. Leaving the loop early cancels the command."""
        oom_before = self.cgroup.oom_kills() if self.cgroup else 0
        fields: dict[str, object] = {
            "argv": argv,
            "timeout": timeout,
            "env": env,
            "cwd": cwd,
            "output_cap": output_cap,
        }
        if script is not None:
            fields["script"] = script
        if binary:
            fields["binary"] = True
        if window is not None:
            fields["window"] = max(window, MIN_WINDOW)
        if stdin is not None:
            fields["stdin"] = True
        # boxd caps each stream, but boxd is on the untrusted side: the host counts too,
        # and drops what passes the cap whatever boxd sends.
        room = {"stdout": output_cap, "stderr": output_cap}
        cut = False
        # Closed at once when the caller leaves, so a windowed exec is cancelled then.
        async with contextlib.aclosing(self._stream("exec", fields, bind=stdin)) as replies:
            async for reply in replies:
                if isinstance(reply, Change | Watching):
                    continue
                if isinstance(reply, Output):
                    data = reply.data
                    size = (len(data) // 4 * 3 - data[-2:].count("=") if binary
                            else len(data.encode()))
                    left = room.get(reply.stream, 0)
                    if size > left:
                        cut = True
                        if binary or left <= 0:
                            room[reply.stream] = 0
                            continue
                        data = data.encode()[:left].decode("utf-8", errors="ignore")
                        size = left
                    room[reply.stream] = left - size
                    yield ExecEvent(reply.stream, data)
                elif isinstance(reply, Failure):
                    raise BoxRequestError(reply.code, reply.message)
                else:
                    result = ExecResult.model_validate(reply.model_dump())
                    # Only a SIGKILL can be the memory limit's: of the command itself, or of
                    # a child a shell waited for (the shell then exits 137 = 128 + SIGKILL).
                    oom = result.exit_code == 137 and self.cgroup is not None \
                        and self.cgroup.oom_kills() > oom_before
                    yield ExecOutcome(
                        exit_code=result.exit_code,
                        timed_out=result.timed_out,
                        oom_killed=oom,
                        truncated=result.truncated or cut,
                        duration_ms=result.duration_ms,
                        signal=result.signal,
                    )

    async def terminal(self, *, env: dict[str, str], cwd: str, rows: int, cols: int,
                       keys: ExecInput, window: int = MIN_WINDOW,
                       argv: list[str] | None = None) -> AsyncIterator[bytes]:
        """A shell on a pty in the box: yields what it prints as it prints, until it (and
        whatever holds its pty) exits; ``keys`` writes to it and resizes it. Leaving early
        ends it. Flow-controlled: boxd sends at most ``window`` ahead of the caller."""
        fields: dict[str, object] = {"env": env, "cwd": cwd, "rows": rows, "cols": cols,
                                     "window": max(window, MIN_WINDOW)}
        if argv:
            fields["argv"] = argv
        async with contextlib.aclosing(self._stream("pty", fields, bind=keys)) as replies:
            async for reply in replies:
                if isinstance(reply, Output):
                    yield base64.b64decode(reply.data)
                elif isinstance(reply, Failure):
                    raise BoxRequestError(reply.code, reply.message)

    async def cancel_all(self, op: str = "exec") -> None:
        """Kill every exec (or end every request of ``op``) in flight on the box."""
        for rid in [r for r, p in self._pending.items() if p.op == op]:
            with contextlib.suppress(BoxError, BoxRequestError):
                await self.request("cancel", target=rid)

    async def read_path(self, root: str, path: str, limit: int,
                        offset: int = 0) -> dict[str, object]:
        """A file under ``root`` (``limit`` bytes from ``offset``), never following a
        symlink; data is bytes."""
        fields: dict[str, object] = {"root": root, "path": path, "limit": limit}
        if offset:
            fields["offset"] = offset
        done = await self.request("fread", **fields)
        got = done.model_dump()
        got["data"] = base64.b64decode(str(got.get("data", "")))
        return got

    async def write_path(self, root: str, path: str, data: bytes, *,
                         if_match: str | None = None,
                         if_none_match: bool = False) -> dict[str, object]:
        done = await self.request("fwrite", root=root, path=path,
                                  data=base64.b64encode(data).decode(),
                                  if_match=if_match, if_none_match=if_none_match)
        return done.model_dump()

    async def put_chunk(self, root: str, path: str, upload: str, offset: int, data: bytes,
                        *, final: bool = False) -> None:
        """One chunk of a large upload under ``root`` (see agent/files.py ``put``): the
        file appears, whole, when the ``final`` chunk is written."""
        await self.request("fput", root=root, path=path, upload=upload, offset=offset,
                           data=base64.b64encode(data).decode(), final=final)

    async def abort_put(self, root: str, path: str, upload: str) -> None:
        await self.request("fput", root=root, path=path, upload=upload, abort=True)

    async def put_file(self, root: str, path: str, pieces: AsyncIterable[bytes]) -> int:
        """Write a file of any size under ``root`` from ``pieces``, ``PUT_CHUNK`` bytes
        a request (no frame comes near the limit); it appears whole at the end, or not
        at all. Returns its size."""
        upload = secrets.token_hex(8)
        buf = bytearray()
        done = 0
        try:
            async for piece in pieces:
                buf += piece
                while len(buf) > PUT_CHUNK:
                    await self.put_chunk(root, path, upload, done, bytes(buf[:PUT_CHUNK]))
                    done += PUT_CHUNK
                    del buf[:PUT_CHUNK]
            await self.put_chunk(root, path, upload, done, bytes(buf), final=True)
        except BaseException:
            if not self.stopped.is_set():
                with contextlib.suppress(BoxError, BoxRequestError):
                    await self.abort_put(root, path, upload)
            raise
        return done + len(buf)

    async def link_path(self, root: str, path: str, target: str) -> bool:
        """A symbolic link at ``path`` under ``root`` unless something is there; whether
        it was made."""
        done = await self.request("link", root=root, path=path, target=target)
        return bool(done.model_dump().get("created"))

    async def tree(self, root: str, path: str = "") -> dict[str, object]:
        return (await self.request("tree", root=root, path=path)).model_dump()

    async def watch(self, root: str, interval: float = 0.25) -> AsyncIterator[Change | Watching]:
        """A ``Watching`` once the first snapshot is taken, then file changes under
        ``root`` as they are seen, until the box stops."""
        fields: dict[str, object] = {"root": root, "interval": interval}
        async for reply in self._stream("watch", fields, busy=False):
            if isinstance(reply, Change | Watching):
                yield reply
            elif isinstance(reply, _Settled):
                reply.taken.set()  # the reader has handled all before it
            elif isinstance(reply, Failure):
                raise BoxRequestError(reply.code, reply.message)

    async def settle_changes(self) -> list[asyncio.Event]:
        """Have every watch in the box scan now (a change made a moment ago may not have
        been seen yet); returns, for each watch, an event set once its reader has taken
        all that scan found. Nothing to wait for if no watch runs."""
        watches = [p for p in self._pending.values() if p.op == "watch"]
        if not watches:
            return []
        await self.request("rescan")  # answered after the scans' changes were sent
        marks = []
        for pending in watches:
            mark = _Settled()
            pending.queue.put_nowait(mark)  # type: ignore[arg-type]
            marks.append(mark.taken)
        return marks

    async def process_count(self) -> int:
        done = await self.request("procs")
        return int(getattr(done, "count", 0))

    async def stop(self) -> None:
        """Stop the box: every process in it dies, its files stay."""
        if self.stopped.is_set():
            return
        self.stopped.set()
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
        if self.cgroup is not None:
            await asyncio.to_thread(self.cgroup.remove)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._proc.wait(), 5)
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        for callback in self.on_stopped:
            callback(self)
        if self.door is not None:
            self.door.close()
            self.door = None
        if self._on_stop is not None:
            self._on_stop(self)
