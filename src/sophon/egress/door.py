"""The egress door: one HTTP proxy in the server, the only way out of every box.

Each box's boxd listens on the box's own loopback and hands the listening socket to the
host (box/bwrap.py); the door accepts from it here. So a connection's box is known by
the socket it came through, never by anything the workload sends, and the box keeps
its own empty network namespace (no interface but loopback, no route, no DNS).

Per connection: read one request head (``CONNECT host:port`` for HTTPS, an absolute
``http://`` URL for plain HTTP), ask the box's grant (whose box, which policy), decide
on the name (policy.check_listed), resolve it here and decide on each address
(policy.check_address), connect to an address that passed, and splice bytes both ways.
Plain HTTP is sent on with ``Connection: close`` (one request per connection, so a
second request on it can never reach a host that was not checked) and with the
connectors' headers put in. A refusal is a 403 whose body says what and why, and a
``network_denied`` report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sophon.config import Settings
from sophon.egress.policy import (
    IPAddress,
    Policy,
    Refusal,
    check_address,
    check_listed,
    normalize_host,
    parse_ip,
)

if TYPE_CHECKING:
    from sophon.box.box import Box
    from sophon.egress.connectors import ConnectorGrant

log = logging.getLogger(__name__)

# The name boxes reach the model gateway by (ANTHROPIC_BASE_URL). ``.internal`` is kept
# for private use, so it never names a public host; the door answers it itself.
GATEWAY_HOST = "gateway.sophon.internal"
GATEWAY_PATHS = ("/v1/messages",)

MAX_HEAD = 64 * 1024
CHUNK = 256 * 1024
# Headers that are about the hop to the proxy, not the request: never sent on.
HOP_HEADERS = frozenset({"connection", "proxy-connection", "keep-alive", "proxy-authorization",
                         "proxy-authenticate", "te", "trailer", "upgrade"})


@dataclass(frozen=True)
class Grant:
    """Whose a box's traffic is and what it may reach: looked up for each connection,
    so a change to a session's network list holds from its next connection."""

    owner_id: str  # the session's or thread's id: what usage is metered under
    user_id: str
    policy: Policy
    session_id: str | None = None
    connectors: tuple[ConnectorGrant, ...] = ()


@dataclass(frozen=True)
class Denial:
    owner_id: str
    user_id: str
    session_id: str | None
    host: str
    port: int
    rule: str
    message: str


# (box id) -> its grant, or None for a box with no network owner.
GrantLookup = Callable[[str], Awaitable[Grant | None]]
# Asked when a session that says "ask" connects to a host outside its list: True to
# let this connection through.
AskHook = Callable[[Grant, str, int], Awaitable[bool]]


@dataclass
class Tally:
    user_id: str
    bytes_out: int = 0
    bytes_in: int = 0
    connections: int = 0
    denied: int = 0


class Refused(Exception):
    def __init__(self, status: int, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.status = status
        self.refusal = refusal


@dataclass
class _Head:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]] = field(default_factory=list)


def parse_head(raw: bytes) -> _Head:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise Refused(400, Refusal("bad_request", "this is an HTTP proxy: send CONNECT "
                                                  "host:port or a request for an http:// URL"))
    head = _Head(parts[0].upper(), parts[1], parts[2])
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise Refused(400, Refusal("bad_request", "a request header is malformed"))
        head.headers.append((name, value.strip()))
    return head


def split_target(head: _Head) -> tuple[str, int, str]:
    """The host, port and (plain HTTP) origin-form path a request is for."""
    if head.method == "CONNECT":
        host, sep, port = head.target.rpartition(":")
        if not sep or not port.isdigit():
            raise Refused(400, Refusal("bad_request", "CONNECT needs host:port"))
        return host.strip("[]"), int(port), ""
    if not head.target.lower().startswith("http://"):
        raise Refused(400, Refusal(
            "bad_request", "this is an HTTP proxy: use it through HTTP_PROXY/HTTPS_PROXY "
                           "(an http:// URL, or CONNECT for https)"))
    url = urlsplit(head.target)
    try:
        port = url.port or 80
    except ValueError as exc:
        raise Refused(400, Refusal("bad_request", f"bad URL: {exc}")) from None
    if not url.hostname:
        raise Refused(400, Refusal("bad_request", "the URL has no host"))
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    return url.hostname, port, path


def response(status: int, reason: str, body: str) -> bytes:
    data = (body + "\n").encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(data)}\r\nconnection: close\r\n"
            f"x-sophon-door: refused\r\n\r\n").encode() + data


REASONS = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 431: "Request Header "
           "Fields Too Large", 502: "Bad Gateway", 503: "Service Unavailable",
           504: "Gateway Timeout"}


class _Half(asyncio.Protocol):
    """One side of a spliced connection: what it receives, its peer writes."""

    def __init__(self, conn: _Splice, outbound: bool) -> None:
        self.conn = conn
        self.outbound = outbound  # the box's side: what it receives goes out
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.early: list[bytes] = []
        self.eof = False
        self.scrub: Scrubber | None = None  # the host's side of a connector's request

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.conn.touch(len(data), self.outbound)
        if self.scrub is not None:
            data = self.scrub.feed(data)
        peer = self.peer
        if peer is None or peer.transport is None:
            self.early.append(data)
            return
        peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        self._flush_scrub()
        peer = self.peer
        if peer is not None and peer.transport is not None and peer.transport.can_write_eof():
            peer.transport.write_eof()
        if peer is None or peer.eof:
            self.conn.close()
        return True

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


class _Splice:
    """Two halves and an idle timer (one timer re-armed lazily, not one per read)."""

    def __init__(self, tally: Tally, idle: float) -> None:
        self.tally = tally
        self.idle = idle
        self.box = _Half(self, outbound=True)
        self.host = _Half(self, outbound=False)
        self.box.peer, self.host.peer = self.host, self.box
        self.done = asyncio.get_running_loop().create_future()
        self.last = time.monotonic()
        self._timer = asyncio.get_running_loop().call_later(idle, self._check_idle)

    def touch(self, n: int, outbound: bool) -> None:
        self.last = time.monotonic()
        if outbound:
            self.tally.bytes_out += n
        else:
            self.tally.bytes_in += n

    def start(self) -> None:
        for half in (self.box, self.host):
            assert half.peer is not None and half.peer.transport is not None
            for data in half.early:
                half.peer.transport.write(data)
            half.early.clear()

    def _check_idle(self) -> None:
        quiet = time.monotonic() - self.last
        if quiet >= self.idle:
            self.close()
        else:
            self._timer = asyncio.get_running_loop().call_later(self.idle - quiet,
                                                                self._check_idle)

    def close(self) -> None:
        self._timer.cancel()
        for half in (self.box, self.host):
            if half.transport is not None:
                half.transport.close()  # flushes what is buffered first
        if not self.done.done():
            self.done.set_result(None)


class Door:
    def __init__(self, settings: Settings, grants: GrantLookup,
                 on_denied: Callable[[Denial], Awaitable[None]],
                 ask: AskHook | None = None) -> None:
        self.settings = settings
        self._grants = grants
        self._on_denied = on_denied
        self._ask = ask
        self._listeners: dict[str, int] = {}  # box id: the listener's fd
        self._open: dict[str, int] = {}  # box id: connections open
        self._tasks: set[asyncio.Task[None]] = set()
        self.tallies: dict[str, Tally] = {}  # owner id: not yet written to the store
        # The server's own listener, where the gateway's route is (a name or a wildcard
        # address: its loopback).
        server_ip = parse_ip(settings.host)
        if server_ip is None or server_ip.is_unspecified:
            server_ip = parse_ip("::1" if settings.host == "::" else "127.0.0.1")
        assert server_ip is not None
        self.gateway_addr: tuple[IPAddress, int] = (server_ip, settings.port)
        self.server_ports = frozenset({settings.port})

    # --- boxes -----------------------------------------------------------------------

    def attach(self, box: Box) -> None:
        """Serve the box's listener until the box stops."""
        listener = box.door
        if listener is None:
            return
        self._listeners[box.id] = listener.fileno()
        asyncio.get_running_loop().add_reader(listener.fileno(), self._accept, box.id,
                                              listener)
        box.on_stopped.append(self.detach)

    def detach(self, box: Box) -> None:
        fd = self._listeners.pop(box.id, None)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)

    def _accept(self, box_id: str, listener: socket.socket) -> None:
        for _ in range(64):  # a burst at a time, then the loop's other work
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                log.exception("box %s: accepting from its door failed", box_id)
                return
            conn.setblocking(False)
            task = asyncio.get_running_loop().create_task(self._serve(box_id, conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- one connection --------------------------------------------------------------

    async def _serve(self, box_id: str, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        opened = self._open.get(box_id, 0)
        if opened >= self.settings.egress_max_connections_per_box:
            with contextlib.suppress(OSError):
                await loop.sock_sendall(conn, response(503, REASONS[503], (
                    f"this sandbox already has {opened} connections open through the "
                    "network door (SOPHON_EGRESS_MAX_CONNECTIONS_PER_BOX); close some "
                    "and retry")))
            conn.close()
            return
        self._open[box_id] = opened + 1
        grant: Grant | None = None
        try:
            head_raw, rest = await asyncio.wait_for(
                _read_head(loop, conn), self.settings.egress_head_timeout_seconds)
            head = parse_head(head_raw)
            grant = await self._grants(box_id)
            if grant is None:
                raise Refused(403, Refusal("no_network", "this sandbox has no network"))
            await self._forward(loop, conn, grant, head, rest)
        except Refused as exc:
            if exc.status == 403 and grant is not None:
                await self._deny(grant, head, exc.refusal)
            with contextlib.suppress(OSError):
                await loop.sock_sendall(conn, response(
                    exc.status, REASONS.get(exc.status, "Error"),
                    f"Sophon network door: {exc.refusal.message}"))
        except (TimeoutError, ConnectionError, OSError):
            pass  # a box that hung up or never finished its request
        except Exception:
            log.exception("box %s: the network door failed on a connection", box_id)
        finally:
            conn.close()
            self._open[box_id] -= 1
            if not self._open[box_id]:
                del self._open[box_id]

    async def _deny(self, grant: Grant, head: _Head | None, refusal: Refusal) -> None:
        host, port = "", 0
        if head is not None:
            with contextlib.suppress(Refused):
                host, port, _ = split_target(head)
        self.tally(grant).denied += 1
        log.info("network refused: %s %s:%s (%s)", grant.owner_id, host, port, refusal.rule)
        try:
            await self._on_denied(Denial(grant.owner_id, grant.user_id, grant.session_id,
                                         normalize_host(host) if host else host, port,
                                         refusal.rule, refusal.message))
        except Exception:
            log.exception("could not record a network refusal")

    def tally(self, grant: Grant) -> Tally:
        t = self.tallies.get(grant.owner_id)
        if t is None:
            t = self.tallies[grant.owner_id] = Tally(grant.user_id)
        return t

    async def _forward(self, loop: asyncio.AbstractEventLoop, conn: socket.socket,
                       grant: Grant, head: _Head, rest: bytes) -> None:
        host, port, path = split_target(head)
        name = normalize_host(host)
        headers, secrets = head.headers, []
        if name == GATEWAY_HOST:
            if head.method == "CONNECT" or not path.startswith(GATEWAY_PATHS):
                raise Refused(404, Refusal("gateway", f"the model gateway answers "
                                                      f"POST http://{GATEWAY_HOST}/v1/messages"))
            addrs = [self.gateway_addr]
        else:
            refusal = check_listed(grant.policy, name, port)
            if refusal is not None and refusal.rule == "not_allowed" and grant.policy.ask \
                    and self._ask is not None:
                refusal = None if await self._ask(grant, name, port) else Refusal(
                    "approval_denied", f"{name}:{port} is not on this sandbox's network "
                                       "list, and the connection was not approved")
            if refusal is not None:
                raise Refused(403, refusal)
            addrs = await self._resolve(loop, grant.policy, name, port)
            headers, secrets = self._with_connectors(grant, name, port, headers)
        upstream = await self._connect(loop, addrs)
        tally = self.tally(grant)
        tally.connections += 1
        splice = _Splice(tally, self.settings.egress_idle_timeout_seconds)
        if name != GATEWAY_HOST and secrets:
            splice.host.scrub = Scrubber(secrets)
        try:
            if head.method == "CONNECT":
                await loop.sock_sendall(conn, b"HTTP/1.1 200 Connection established\r\n\r\n")
                first = rest
            else:
                first = _origin_request(head, path, name, port, headers) + rest
            await loop.create_connection(lambda: splice.host, sock=upstream)
            upstream = None
            await loop.connect_accepted_socket(lambda: splice.box, sock=conn.dup())
            assert splice.host.transport is not None
            if first:
                splice.host.transport.write(first)
            splice.start()
            await splice.done
        finally:
            splice.close()
            if upstream is not None:
                upstream.close()

    async def _resolve(self, loop: asyncio.AbstractEventLoop, policy: Policy, name: str,
                       port: int) -> list[tuple[IPAddress, int]]:
        """The addresses the door itself resolves ``name`` to that pass the address
        check; it connects to one of these, never resolving again (no rebinding)."""
        ip = parse_ip(name)
        if ip is not None:
            found = [ip]
        else:
            try:
                infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise Refused(502, Refusal("unresolved", f"could not resolve {name}: "
                                                         f"{exc.strerror or exc}")) from None
            found = []
            for info in infos:
                addr = parse_ip(str(info[4][0]).split("%")[0])
                if addr is not None and addr not in found:
                    found.append(addr)
        passed, first_refusal = [], None
        for addr in found:
            local = port in self.server_ports and _is_local(addr)
            refusal = check_address(policy, addr, port, self.server_ports, local)
            if refusal is None:
                passed.append((addr, port))
            elif first_refusal is None:
                first_refusal = refusal
        if not passed:
            raise Refused(403, first_refusal or Refusal("unresolved", f"{name} has no address"))
        return passed

    async def _connect(self, loop: asyncio.AbstractEventLoop,
                       addrs: list[tuple[IPAddress, int]]) -> socket.socket:
        error: Exception | None = None
        for ip, port in addrs:
            sock = socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                                 socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, (str(ip), port)),
                                       self.settings.egress_connect_timeout_seconds)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock
            except (OSError, TimeoutError) as exc:
                sock.close()
                error = exc
        what = "timed out" if isinstance(error, TimeoutError) else str(error)
        raise Refused(502 if not isinstance(error, TimeoutError) else 504,
                      Refusal("unreachable", f"could not connect to {addrs[0][0]} port "
                                             f"{addrs[0][1]}: {what}"))

    def _with_connectors(self, grant: Grant, host: str, port: int,
                         headers: list[tuple[str, str]]
                         ) -> tuple[list[tuple[str, str]], list[bytes]]:
        """The request's headers with each matching http connector's put in (plain
        HTTP only: an https request is a tunnel the door does not open), and the values
        put in, to be masked in the answer."""
        values: list[bytes] = []
        for c in grant.connectors:
            if c.type != "http" or not c.header or c.value is None:
                continue
            if not any(_host_matches(h, host, port) for h in c.hosts):
                continue
            headers = [(k, v) for k, v in headers if k.lower() not in
                       (c.header.lower(), "accept-encoding")]
            headers += [(c.header, c.value), ("Accept-Encoding", "identity")]
            values.append(c.value.encode())
        return headers, values


def _host_matches(spec: str, host: str, port: int) -> bool:
    name, sep, p = spec.rpartition(":") if spec.count(":") == 1 else (spec, "", "")
    if not sep:
        name, p = spec, ""
    return normalize_host(name) == host and (int(p) == port if p else port in (80, 443))


def _origin_request(head: _Head, path: str, host: str, port: int,
                    headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{head.method} {path} HTTP/1.1"]
    has_host = False
    for k, v in headers:
        low = k.lower()
        if low in HOP_HEADERS:
            continue
        has_host = has_host or low == "host"
        lines.append(f"{k}: {v}")
    if not has_host:
        lines.append(f"Host: {host}" + ("" if port == 80 else f":{port}"))
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_head(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while True:
        chunk = await loop.sock_recv(conn, 16384)
        if not chunk:
            raise ConnectionResetError("the box closed the connection")
        buf += chunk
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            return buf[:end], buf[end + 4:]
        if len(buf) > MAX_HEAD:
            raise Refused(431, Refusal("bad_request", f"the request head is over {MAX_HEAD} "
                                                      "bytes"))


def _is_local(ip: IPAddress) -> bool:
    """Whether ``ip`` is one of this machine's addresses (binding to it works only then)."""
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((str(ip), 0))
        except OSError:
            return False
    return True
