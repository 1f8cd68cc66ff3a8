"""Two connections spliced into one: bytes each way as they come, with flow control
(a side that cannot keep up pauses the other), an idle timeout, a meter, and the
masking of connector values in what a host sends back."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import time
from dataclasses import dataclass


@dataclass
class Tally:
    """An owner's traffic not yet written to the store. Splices add to it as bytes
    pass; ``take`` hands what has been counted to the writer and starts again at zero
    (the same object, which open connections keep adding to)."""

    user_id: str
    bytes_out: int = 0
    bytes_in: int = 0
    connections: int = 0
    denied: int = 0
    open: int = 0  # connections through the door now

    def take(self) -> tuple[int, int, int, int]:
        counts = (self.bytes_out, self.bytes_in, self.connections, self.denied)
        self.bytes_out = self.bytes_in = self.connections = self.denied = 0
        return counts

    def give_back(self, counts: tuple[int, int, int, int]) -> None:
        self.bytes_out += counts[0]
        self.bytes_in += counts[1]
        self.connections += counts[2]
        self.denied += counts[3]


WRITE_BUFFER = 512 * 1024


class Half(asyncio.Protocol):
    """One side of a spliced connection: what it receives, its peer writes."""

    def __init__(self, conn: Splice, outbound: bool) -> None:
        self.conn = conn
        self.outbound = outbound  # the box's side: what it receives goes out
        self.transport: asyncio.Transport | None = None
        self.peer: Half | None = None
        self.early: list[bytes] = []
        self.eof = False
        self.scrub: Scrubber | None = None  # the host's side of a connector's request

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # A larger buffer before the other side is paused: a bulk download then moves in
        # fewer, larger steps (at most WRITE_BUFFER held per direction of a connection).
        self.transport.set_write_buffer_limits(high=WRITE_BUFFER)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.conn.touch(len(data), self.outbound)
        if self.scrub is not None:
            data = self.scrub.feed(data)
        peer = self.peer
        if not self.conn.started or peer is None or peer.transport is None:
            # Until both sides are up and what came early has gone first: in order.
            self.early.append(data)
            return
        peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        if self.conn.started:
            self.pass_eof()
        return True  # until then start() passes it on, after what came before it

    def pass_eof(self) -> None:
        self._flush_scrub()
        peer = self.peer
        if peer is not None and peer.transport is not None and peer.transport.can_write_eof():
            peer.transport.write_eof()
        if peer is None or peer.eof:
            self.conn.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def _flush_scrub(self) -> None:
        if self.scrub is not None:
            tail, self.scrub = self.scrub.flush(), None
            if tail and self.peer is not None and self.peer.transport is not None:
                self.peer.transport.write(tail)

    def connection_lost(self, exc: Exception | None) -> None:
        self._flush_scrub()
        self.conn.close()


class Scrubber:
    """Masks a connector's real values in what a host sends back (an echo service, an
    error page quoting the request): the box never reads them. Same-length masks, so a
    Content-Length stays true; the request asked for no compression, so the bytes are
    plain. A value split across two reads is caught: the last len-1 bytes wait."""

    def __init__(self, values: list[bytes]) -> None:
        self.values = [v for v in values if v]
        self.keep = max((len(v) for v in self.values), default=1) - 1
        self.tail = b""

    def feed(self, data: bytes) -> bytes:
        buf = self.tail + data
        for v in self.values:
            buf = buf.replace(v, b"*" * len(v))
        if self.keep and len(buf) > self.keep:
            buf, self.tail = buf[:-self.keep], buf[-self.keep:]
        elif self.keep:
            buf, self.tail = b"", buf
        return buf

    def flush(self) -> bytes:
        tail, self.tail = self.tail, b""
        return tail


class _Relay:
    """What both kinds of splice share: the meter, ``done``, and an idle timer (one
    timer re-armed lazily, not one per read). ``close`` ends the relay."""

    def __init__(self, tally: Tally, idle: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.tally = tally
        self.idle = idle
        self.done = self.loop.create_future()
        self.last = time.monotonic()
        self._timer = self.loop.call_later(idle, self._check_idle)

    def touch(self, n: int, outbound: bool) -> None:
        self.last = time.monotonic()
        if outbound:
            self.tally.bytes_out += n
        else:
            self.tally.bytes_in += n

    def _check_idle(self) -> None:
        quiet = time.monotonic() - self.last
        if quiet >= self.idle:
            self.close()
        else:
            self._timer = self.loop.call_later(self.idle - quiet, self._check_idle)

    def _ended(self) -> None:
        self._timer.cancel()
        if not self.done.done():
            self.done.set_result(None)

    def close(self) -> None:
        raise NotImplementedError


class Splice(_Relay):
    """Two halves, each an asyncio protocol."""

    def __init__(self, tally: Tally, idle: float) -> None:
        super().__init__(tally, idle)
        self.box = Half(self, outbound=True)
        self.host = Half(self, outbound=False)
        self.box.peer, self.host.peer = self.host, self.box
        self.started = False

    def start(self) -> None:
        for half in (self.box, self.host):
            assert half.peer is not None and half.peer.transport is not None
            for data in half.early:
                half.peer.transport.write(data)
            half.early.clear()
        self.started = True
        for half in (self.box, self.host):
            if half.eof:
                half.pass_eof()

    def close(self) -> None:
        for half in (self.box, self.host):
            if half.transport is not None:
                half.transport.close()  # flushes what is buffered first
        self._ended()


PIPE_SIZE = 256 * 1024
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, named in the fcntl module from Python 3.10 on Linux


class _Flow:
    """One direction of a kernel splice: ``src`` → a pipe → ``dst``, driven by the
    loop's readiness callbacks. The bytes move inside the kernel; Python sees counts."""

    def __init__(self, owner: KernelSplice, src: socket.socket, dst: socket.socket,
                 outbound: bool) -> None:
        self.owner = owner
        self.src, self.dst = src.fileno(), dst.fileno()
        self.dst_sock = dst
        self.outbound = outbound
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # a smaller pipe only means more steps
            fcntl.fcntl(self.w, F_SETPIPE_SZ, PIPE_SIZE)
        self.held = 0  # bytes in the pipe, not yet sent on
        self.reading = self.writing = False
        self.eof = False
        self.finished = False

    def start(self) -> None:
        self._want_read()

    def _want_read(self) -> None:
        if not self.reading:
            self.owner.loop.add_reader(self.src, self._readable)
            self.reading = True

    def _stop_read(self) -> None:
        if self.reading:
            self.owner.loop.remove_reader(self.src)
            self.reading = False

    def _readable(self) -> None:
        try:
            n = os.splice(self.src, self.w, PIPE_SIZE,
                          flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.owner.close()
            return
        if n == 0:
            self.eof = True
            self._stop_read()
        else:
            self.held += n
            self.owner.touch(n, self.outbound)
        self._drain()

    def _writable(self) -> None:
        self._drain()

    def _drain(self) -> None:
        while self.held:
            try:
                n = os.splice(self.r, self.dst, self.held,
                              flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
            except (BlockingIOError, InterruptedError):
                # The other side cannot take more now: stop reading until it can (flow
                # control, as with the transports' pause_reading).
                self._stop_read()
                if not self.writing:
                    self.owner.loop.add_writer(self.dst, self._writable)
                    self.writing = True
                return
            except OSError:
                self.owner.close()
                return
            self.held -= n
        if self.writing:
            self.owner.loop.remove_writer(self.dst)
            self.writing = False
        if self.eof:
            self._finish()
        else:
            self._want_read()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        with contextlib.suppress(OSError):
            self.dst_sock.shutdown(socket.SHUT_WR)
        self.owner.flow_done()

    def close(self) -> None:
        self._stop_read()
        if self.writing:
            self.owner.loop.remove_writer(self.dst)
            self.writing = False
        for fd in (self.r, self.w):
            with contextlib.suppress(OSError):
                os.close(fd)


class KernelSplice(_Relay):
    """The splice of two connected sockets done by the kernel (splice(2) through a pipe
    each way), for connections whose bytes nothing needs to see (no connector value to
    mask): no byte is copied into Python, so a download costs the door a fraction of the
    CPU. Same flow control (a side that cannot take more pauses the other), idle timeout
    and meter as ``Splice``. The sockets stay the caller's to close."""

    def __init__(self, tally: Tally, idle: float, box: socket.socket,
                 host: socket.socket) -> None:
        self._flows: list[_Flow] = []
        try:
            self._flows.append(_Flow(self, box, host, outbound=True))
            self._flows.append(_Flow(self, host, box, outbound=False))
        except BaseException:  # out of descriptors: the pipes made so far are closed
            for flow in self._flows:
                flow.close()
            raise
        super().__init__(tally, idle)
        self._finished = 0
        self._closed = False

    def start(self) -> None:
        for flow in self._flows:
            flow.start()

    def flow_done(self) -> None:
        self._finished += 1
        if self._finished == len(self._flows):
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for flow in self._flows:
            flow.close()
        self._ended()
