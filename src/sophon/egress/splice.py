"""Two connections spliced into one: bytes each way as they come, with flow control
(a side that cannot keep up pauses the other), an idle timeout, a meter, and the
masking of connector values in what a host sends back."""

from __future__ import annotations

import asyncio
import contextlib
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


CHUNK = 1024 * 1024  # the most one read takes in
SPARE_CHUNKS = 4  # read buffers kept for reuse once no bytes wait in them


class _Chunks:
    """The bulk relay's read buffers, shared by every connection: a read borrows one,
    and its flow keeps it only while the bytes in it wait for the other side to take
    them. What the door holds follows the bytes in flight (at most one CHUNK per
    direction of a connection), not the connections open."""

    def __init__(self) -> None:
        self._spare: list[bytearray] = []

    def take(self) -> bytearray:
        try:
            return self._spare.pop()
        except IndexError:
            return bytearray(CHUNK)

    def give(self, chunk: bytearray) -> None:
        if len(self._spare) < SPARE_CHUNKS:
            self._spare.append(chunk)


_CHUNKS = _Chunks()


class _Flow:
    """One direction of a bulk relay: ``src`` read into a large buffer, sent on to
    ``dst``, driven by the loop's readiness callbacks. Until what was read has all been
    sent, ``src`` is not read again (flow control)."""

    def __init__(self, owner: BulkRelay, src: socket.socket, dst: socket.socket,
                 outbound: bool) -> None:
        self.owner = owner
        self.src, self.dst = src, dst
        src.setblocking(False)
        self.outbound = outbound
        self.chunk: bytearray | None = None  # read, not all sent on yet
        self.sent = self.held = 0
        self.reading = self.writing = False
        self.finished = self.closed = False

    def start(self) -> None:
        self._want_read()

    def _want_read(self) -> None:
        if not self.reading and not self.closed:
            self.owner.loop.add_reader(self.src.fileno(), self._readable)
            self.reading = True

    def _stop_read(self) -> None:
        if self.reading:
            self.owner.loop.remove_reader(self.src.fileno())
            self.reading = False

    def _readable(self) -> None:
        chunk = _CHUNKS.take()
        try:
            n = self.src.recv_into(chunk)
        except (BlockingIOError, InterruptedError):
            _CHUNKS.give(chunk)
            return
        except OSError:
            _CHUNKS.give(chunk)
            self.owner.close()
            return
        if n == 0:
            _CHUNKS.give(chunk)
            self._stop_read()
            self._finish()
            return
        self.owner.touch(n, self.outbound)
        self.chunk, self.sent, self.held = chunk, 0, n
        self._drain()

    def _drain(self) -> None:
        assert self.chunk is not None
        with memoryview(self.chunk) as view:
            while self.sent < self.held:
                try:
                    self.sent += self.dst.send(view[self.sent:self.held])
                except (BlockingIOError, InterruptedError):
                    # The other side cannot take more now: stop reading until it can.
                    self._stop_read()
                    if not self.writing:
                        self.owner.loop.add_writer(self.dst.fileno(), self._drain)
                        self.writing = True
                    return
                except OSError:
                    self.owner.close()
                    return
        _CHUNKS.give(self.chunk)
        self.chunk = None
        if self.writing:
            self.owner.loop.remove_writer(self.dst.fileno())
            self.writing = False
        self._want_read()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        with contextlib.suppress(OSError):
            self.dst.shutdown(socket.SHUT_WR)
        self.owner.flow_done()

    def close(self) -> None:
        self._stop_read()
        self.closed = True
        if self.writing:
            self.owner.loop.remove_writer(self.dst.fileno())
            self.writing = False
        if self.chunk is not None:
            _CHUNKS.give(self.chunk)
            self.chunk = None


class BulkRelay(_Relay):
    """The relay of two connected sockets whose bytes nothing needs to see (no
    connector value to mask), each way through a large read buffer: few wake-ups per
    megabyte, and the box's side sent in full segments. (A ``splice(2)`` through a pipe
    copied nothing into Python, but the segments it built from the host's pieces cost the
    box's reader more than the copy saved; docs/BENCHMARKS.md, "A copy instead of the
    splice".) Same flow control (a side that cannot take more pauses the
    other), idle timeout and meter as ``Splice``. The sockets stay the caller's to close."""

    def __init__(self, tally: Tally, idle: float, box: socket.socket,
                 host: socket.socket) -> None:
        super().__init__(tally, idle)
        self._flows = [_Flow(self, box, host, outbound=True),
                       _Flow(self, host, box, outbound=False)]
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
