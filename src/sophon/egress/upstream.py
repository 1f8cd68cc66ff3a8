"""The server's own outbound proxy: when the machine reaches the internet only through
one (``HTTPS_PROXY``/``HTTP_PROXY`` in the server's environment, ``NO_PROXY`` for what
bypasses it), the door sends what it allowed on through that proxy.

The door still decides first (the box's list, the admin's rules) and still checks every
address it can resolve itself; a name it cannot resolve (a network whose only DNS is
the proxy's) is left to the proxy, which is the admin's.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from sophon.egress.sockets import connect_socket

MAX_HEAD = 16 * 1024


class ProxyError(Exception):
    """The server's proxy could not be reached or refused the connection."""


@dataclass(frozen=True)
class UpstreamProxy:
    host: str
    port: int
    authorization: str | None = None  # Proxy-Authorization, from user:password in the URL

    @classmethod
    def parse(cls, url: str) -> UpstreamProxy:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "") or not parts.hostname:
            raise ValueError(f"{url!r}: the server's proxy must be an http:// URL")
        auth = None
        if parts.username is not None:
            raw = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            auth = "Basic " + base64.b64encode(raw.encode()).decode()
        return cls(parts.hostname, parts.port or 80, auth)

    def header_lines(self) -> str:
        return f"Proxy-Authorization: {self.authorization}\r\n" if self.authorization else ""


class Upstream:
    """Which proxy, if any, a connection to a host goes through."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        env = {k.lower(): v for k, v in environ.items()
               if k.lower() in ("http_proxy", "https_proxy", "no_proxy") and v}
        self._proxies = {k.removesuffix("_proxy"): v for k, v in env.items()}
        self.http = UpstreamProxy.parse(env["http_proxy"]) if "http_proxy" in env else None
        self.https = UpstreamProxy.parse(env["https_proxy"]) if "https_proxy" in env else None

    def for_host(self, host: str, tls: bool) -> UpstreamProxy | None:
        proxy = self.https if tls else self.http
        if proxy is None or urllib.request.proxy_bypass_environment(host, self._proxies):
            return None
        return proxy


async def open_socket(loop: asyncio.AbstractEventLoop, proxy: UpstreamProxy,
                      timeout: float) -> socket.socket:
    infos = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
    error: Exception | None = None
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            await connect_socket(loop, sock, addr, timeout)
            return sock
        except (OSError, TimeoutError) as exc:
            sock.close()
            error = exc
    raise ProxyError(f"the server's proxy {proxy.host}:{proxy.port} is unreachable: {error}")


async def tunnel(loop: asyncio.AbstractEventLoop, proxy: UpstreamProxy, host: str,
                 port: int, timeout: float) -> socket.socket:
    """A socket through the proxy to ``host:port`` (CONNECT), ready for the bytes."""
    sock = await open_socket(loop, proxy, timeout)
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        await loop.sock_sendall(sock, (f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
                                       f"{proxy.header_lines()}\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1), timeout)
            if not chunk or len(head) > MAX_HEAD:
                raise ProxyError("the server's proxy closed the connection")
            head += chunk  # a byte at a time: nothing of the tunnel is read past the head
        status = head.split(b"\r\n", 1)[0].split(b" ")
        if len(status) < 2 or status[1] != b"200":
            raise ProxyError(f"the server's proxy answered {b' '.join(status[1:]).decode()!r} "
                             f"to CONNECT {target}")
        return sock
    except BaseException:
        sock.close()
        raise
