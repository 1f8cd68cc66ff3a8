"""The egress door's bulk relay: what one side sends reaches the other whole and in
order, each way, half-closes pass through, the meter counts every byte, a reader that
stops reading holds the sender back instead of the door buffering, and a quiet
connection is closed after the idle timeout."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import tracemalloc
from collections.abc import Awaitable, Callable

from sophon.egress.splice import CHUNK, BulkRelay, Tally


async def _pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of one TCP connection on loopback, non-blocking (as the door has them)."""
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        accepted, _ = await asyncio.gather(loop.sock_accept(listener),
                                           loop.sock_connect(client,
                                                             listener.getsockname()))
    server = accepted[0]
    server.setblocking(False)
    return client, server


async def _read_all(sock: socket.socket) -> bytes:
    loop, got = asyncio.get_running_loop(), bytearray()
    while chunk := await loop.sock_recv(sock, 1 << 20):
        got += chunk
    return bytes(got)


async def _relayed(body: Callable[[socket.socket, socket.socket, BulkRelay, Tally],
                                  Awaitable[None]], idle: float = 30.0) -> None:
    """The box's end and the host's end, with the door's relay between their peers."""
    box, door_box = await _pair()
    door_host, host = await _pair()
    tally = Tally("usr_test")
    relay = BulkRelay(tally, idle, door_box, door_host)
    relay.start()
    try:
        await asyncio.wait_for(body(box, host, relay, tally), 30)
    finally:
        relay.close()
        for s in (box, door_box, door_host, host):
            s.close()


def test_bytes_go_through_whole_each_way_and_half_closes_pass() -> None:
    async def body(box: socket.socket, host: socket.socket, relay: BulkRelay,
                   tally: Tally) -> None:
        loop = asyncio.get_running_loop()
        request, answer = os.urandom(3 * 2**20 + 7), os.urandom(9 * 2**20 + 3)

        async def send(sock: socket.socket, data: bytes) -> None:
            await loop.sock_sendall(sock, data)
            sock.shutdown(socket.SHUT_WR)  # whole: the other end sees its end

        _, got_request = await asyncio.gather(send(box, request), _read_all(host))
        assert hashlib.sha256(got_request).digest() == hashlib.sha256(request).digest()
        _, got_answer = await asyncio.gather(send(host, answer), _read_all(box))
        assert hashlib.sha256(got_answer).digest() == hashlib.sha256(answer).digest()
        await asyncio.wait_for(relay.done, 5)  # both ways ended: the relay is done
        assert (tally.bytes_out, tally.bytes_in) == (len(request), len(answer))

    asyncio.run(_relayed(body))


def test_a_reader_that_stops_holds_the_sender_back() -> None:
    async def body(box: socket.socket, host: socket.socket, relay: BulkRelay,
                   tally: Tally) -> None:
        loop = asyncio.get_running_loop()
        chunk, sent = b"x" * 65536, 0
        # The box never reads: the host's sends must stop being taken after about the
        # sockets' buffers and one read buffer, not run on into the door's memory.
        while True:
            try:
                sent += host.send(chunk)
            except BlockingIOError:
                await asyncio.sleep(0.05)
                try:
                    sent += host.send(chunk)
                except BlockingIOError:
                    break
        assert tally.bytes_in <= sent
        # The door stopped reading the host and waits for the box to take more (not a
        # loop on "would block").
        back = relay._flows[1]
        assert (back.reading, back.writing) == (False, True)
        buffers = sum(s.getsockopt(socket.SOL_SOCKET, o) for s in (box, host)
                      for o in (socket.SO_RCVBUF, socket.SO_SNDBUF))
        assert sent < 4 * (buffers + CHUNK), (sent, buffers)
        # Once the box reads, everything arrives.
        host.shutdown(socket.SHUT_WR)
        assert len(await _read_all(box)) == sent
        del loop

    asyncio.run(_relayed(body))


def test_a_quiet_connection_is_closed_after_the_idle_timeout() -> None:
    async def body(box: socket.socket, host: socket.socket, relay: BulkRelay,
                   tally: Tally) -> None:
        await asyncio.wait_for(relay.done, 5)

    asyncio.run(_relayed(body, idle=0.3))


def test_open_connections_hold_no_read_buffer_once_their_bytes_went_on() -> None:
    """A read buffer is lent for as long as its bytes wait: 100 open connections that
    each carried a message hold far less than 100 of them."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            pairs, relays = [], []
            for _ in range(100):
                box, door_box = await _pair()
                door_host, host = await _pair()
                relay = BulkRelay(Tally("usr_test"), 30.0, door_box, door_host)
                relay.start()
                pairs.append((box, door_box, door_host, host))
                relays.append(relay)
                await loop.sock_sendall(host, b"hello")
                assert await loop.sock_recv(box, 16) == b"hello"
            held = tracemalloc.get_traced_memory()[0] - before
            assert held < 10 * CHUNK, held
        finally:
            tracemalloc.stop()
            for relay in relays:
                relay.close()
            for group in pairs:
                for s in group:
                    s.close()

    asyncio.run(main())
