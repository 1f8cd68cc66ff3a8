"""Connecting and sending without a trip through the event loop when the socket is
ready. A connection's set-up is on the path of every request a box makes (the tunnel's
added latency, issue 17): each trip through the loop is a wake-up, and
``loop.sock_connect`` under ``asyncio.wait_for`` costs several (measured: 300 µs for a
connection on loopback, against 60 µs this way)."""

from __future__ import annotations

import asyncio
import errno
import os
import select
import socket


async def send_now(loop: asyncio.AbstractEventLoop, sock: socket.socket, data: bytes) -> None:
    """``loop.sock_sendall``, written straight when the socket takes it all."""
    try:
        sent = sock.send(data)
    except (BlockingIOError, InterruptedError):
        sent = 0
    if sent < len(data):
        await loop.sock_sendall(sock, data[sent:])


async def connect_socket(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                         addr: tuple[str, int] | tuple[str, int, int, int],
                         timeout: float | None = None) -> None:
    """Connect the non-blocking ``sock`` (TimeoutError after ``timeout`` seconds); to a
    near host the handshake is often done by the time connect() returns or a poll
    later, and then the loop is not asked."""
    err = sock.connect_ex(addr)
    if err in (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY):
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        if not poller.poll(0):
            done = loop.create_future()
            loop.add_writer(sock.fileno(), lambda: done.done() or done.set_result(None))
            try:
                async with asyncio.timeout(timeout):
                    await done
            finally:
                loop.remove_writer(sock.fileno())
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))
