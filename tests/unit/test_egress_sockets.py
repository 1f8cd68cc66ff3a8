"""The door's connect to a host (egress/sockets.py ``connect_socket``): done without a trip
through the loop when the handshake is over at once, waited for when it is not, an
error when the host refuses, and a timeout leaves nothing registered with the loop."""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest

from sophon.egress.sockets import connect_socket


def _client() -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    return sock


async def test_a_listening_host_is_connected() -> None:
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener, _client() as sock:
        await connect_socket(loop, sock, listener.getsockname())
        assert sock.getpeername() == listener.getsockname()


async def test_a_refusing_host_is_an_error_naming_the_refusal() -> None:
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        addr = listener.getsockname()  # a port nothing listens on once this is closed
    with _client() as sock, pytest.raises(OSError) as caught:
        await connect_socket(loop, sock, addr)
    assert caught.value.errno == errno.ECONNREFUSED


def _full_listener() -> tuple[socket.socket, socket.socket]:
    """A listener whose accept queue (one connection at backlog 0) is full: the kernel
    drops further SYNs, so a new connection stays in progress until there is room (its
    SYN is sent again a second later)."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    filler = socket.create_connection(listener.getsockname(), timeout=5)
    return listener, filler


async def test_a_connection_that_is_not_over_at_once_is_waited_for() -> None:
    loop = asyncio.get_running_loop()
    listener, filler = _full_listener()
    with listener, filler, _client() as sock:
        pending = asyncio.ensure_future(connect_socket(loop, sock, listener.getsockname()))
        await asyncio.sleep(0.1)
        assert not pending.done()  # still waiting: its SYN was dropped
        listener.accept()[0].close()  # room in the queue: the SYN sent again gets in
        async with asyncio.timeout(10):
            await pending
        assert sock.getpeername() == listener.getsockname()


async def test_a_timed_out_connect_leaves_no_watch_on_the_loop() -> None:
    loop = asyncio.get_running_loop()
    listener, filler = _full_listener()
    with listener, filler, _client() as sock:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await connect_socket(loop, sock, listener.getsockname())
        assert not loop.remove_writer(sock.fileno())  # nothing was left registered
