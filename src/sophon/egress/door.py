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
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sophon.config import Settings
from sophon.egress.ca import SophonCA, upstream_context
from sophon.egress.intercept import (
    Credential,
    chunk_payload,
    exchange,
    peek_body,
    push_refusal,
    read_head,
    rewrite_headers,
)
from sophon.egress.policy import (
    HostRule,
    IPAddress,
    Policy,
    Refusal,
    check_address,
    check_listed,
    normalize_host,
    parse_ip,
)
from sophon.egress.sockets import connect_socket, send_now
from sophon.egress.splice import BulkRelay, Scrubber, Splice, Tally
from sophon.egress.upstream import (
    ProxyError,
    Upstream,
    UpstreamProxy,
    open_socket,
    tunnel,
)

if TYPE_CHECKING:
    from sophon.box.box import Box

log = logging.getLogger(__name__)

# The name boxes reach the model gateway by (ANTHROPIC_BASE_URL). ``.internal`` is kept
# for private use, so it never names a public host; the door answers it itself.
GATEWAY_HOST = "gateway.sophon.internal"
# What the gateway host answers: the model.
GATEWAY_PATHS = ("/v1/messages",)
ANTHROPIC_DOMAINS = ("anthropic.com", "claude.ai", "claude.com")

MAX_HEAD = 64 * 1024
DECIDED_MAX = 4096  # decisions kept (Door._decide) before they are all forgotten
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
    credentials: tuple[HostCredential, ...] = ()

    def credentials_for(self, host: str, port: int) -> list[Credential]:
        return [c.credential for c in self.credentials
                if any(r.matches(host, port) for r in c.hosts)]


@dataclass(frozen=True)
class HostCredential:
    hosts: tuple[HostRule, ...]
    credential: Credential


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


def response(status: int, message: str) -> bytes:
    """The door's own answer. The message is in the body and, for the clients that print
    the status line but not the body (pip, Python's urllib and requests: "Tunnel
    connection failed: 403 ..."), in the reason phrase too, as printable ASCII."""
    text = f"Sophon network door: {message}"
    reason = f"{REASONS.get(status, 'Error')} ({text})"
    reason = "".join(c if " " <= c <= "~" else "?" for c in reason)[:MAX_REASON]
    data = (text + "\n").encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(data)}\r\nconnection: close\r\n"
            f"x-sophon-door: refused\r\n\r\n").encode() + data


MAX_REASON = 400
REASONS = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 431: "Request Header "
           "Fields Too Large", 502: "Bad Gateway", 503: "Service Unavailable",
           504: "Gateway Timeout"}


class Door:
    def __init__(self, settings: Settings, grants: GrantLookup,
                 on_denied: Callable[[Denial], Awaitable[None]],
                 ask: AskHook | None = None, ca: SophonCA | None = None) -> None:
        self.settings = settings
        self.ca = ca
        self.upstream_tls = upstream_context(settings.egress_trust_ca)
        try:
            self.upstream = Upstream(os.environ)  # the server's own outbound proxy, if any
        except ValueError as exc:
            raise SystemExit(f"HTTPS_PROXY/HTTP_PROXY: {exc}") from exc
        self._grants = grants
        self._on_denied = on_denied
        self._ask = ask
        self._listeners: dict[str, int] = {}  # box id: the listener's fd
        self._open: dict[str, int] = {}  # box id: connections open
        self._tasks: set[asyncio.Task[None]] = set()
        # (id of a grant, address, port, tls): (that grant, where it may be reached)
        self._decided: dict[tuple[int, str, int, bool],
                            tuple[Grant, list[tuple[IPAddress, int]]]] = {}
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
            # Each write the relay makes is a flight of the box's protocol (a TLS
            # handshake's): sent at once, not held back for the previous one's ACK.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
            await _answer(loop, conn, response(503, (
                f"this sandbox already has {opened} connections open through the "
                "network door (SOPHON_EGRESS_MAX_CONNECTIONS_PER_BOX); close some "
                "and retry")))
            conn.close()
            return
        self._open[box_id] = opened + 1
        grant: Grant | None = None
        try:
            head_raw, rest = await _read_head(loop, conn,
                                              self.settings.egress_head_timeout_seconds)
            head = parse_head(head_raw)
            grant = await self._grants(box_id)
            if grant is None:
                raise Refused(403, Refusal("no_network", "this sandbox has no network"))
            await self._forward(loop, conn, grant, head, rest)
        except Refused as exc:
            if exc.status == 403 and grant is not None:
                host, port = "", 0
                if head is not None:
                    with contextlib.suppress(Refused):
                        host, port, _ = split_target(head)
                await self._deny(grant, host, port, exc.refusal)
            await _answer(loop, conn, response(exc.status, exc.refusal.message))
        except (TimeoutError, ConnectionError, OSError):
            pass  # a box that hung up or never finished its request
        except Exception:
            log.exception("box %s: the network door failed on a connection", box_id)
        finally:
            conn.close()
            self._open[box_id] -= 1
            if not self._open[box_id]:
                del self._open[box_id]

    async def _deny(self, grant: Grant, host: str, port: int, refusal: Refusal) -> None:
        self.tally(grant).denied += 1
        if host.endswith(ANTHROPIC_DOMAINS):
            # Code in a box reaches the model through the gateway alone; the CLI's own
            # calls (telemetry, flags, updates) are turned off, so this is worth a look.
            log.warning("%s tried to reach %s:%s directly, not through the model gateway",
                        grant.owner_id, host, port)
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
        proxy: UpstreamProxy | None = None
        if name == GATEWAY_HOST:
            if head.method == "CONNECT" or not path.startswith(GATEWAY_PATHS):
                raise Refused(404, Refusal("gateway", f"the model gateway answers "
                                                      f"POST http://{GATEWAY_HOST}/v1/messages"))
            addrs = [self.gateway_addr]
        else:
            addrs, proxy = await self._decide(loop, grant, name, port,
                                              tls=head.method == "CONNECT")
            creds = grant.credentials_for(name, port)
            if creds and head.method == "CONNECT":
                await self._intercept(loop, conn, grant, name, port, addrs, creds, proxy)
                return
            if creds:
                headers = rewrite_headers(headers, creds)
                secrets = [c.value.encode() for c in creds]
        if proxy is not None and head.method != "CONNECT":
            upstream = await self._via_proxy(loop, proxy)
        else:
            upstream = await self._reach(loop, addrs, proxy, name, port)
        tally = self.tally(grant)
        tally.connections += 1
        tally.open += 1
        relay: BulkRelay | Splice | None = None
        try:
            if head.method == "CONNECT":
                await send_now(loop, conn, b"HTTP/1.1 200 Connection established\r\n\r\n")
                first = rest
            else:
                target = path if proxy is None else (
                    f"http://{name}" + ("" if port == 80 else f":{port}") + path)
                first = _origin_request(head, target, name, port, headers, proxy) + rest
            if first:  # before the box's side is read: what it sends next goes after
                await loop.sock_sendall(upstream, first)
                tally.bytes_out += len(first)
            idle = self.settings.egress_idle_timeout_seconds
            if name == GATEWAY_HOST or not secrets:
                # Nothing to mask in what comes back: bytes go on as they are.
                relay = BulkRelay(tally, idle, conn, upstream)
                relay.start()
            else:
                relay = splice = Splice(tally, idle)
                splice.host.scrub = Scrubber(secrets)
                await loop.create_connection(lambda: splice.host, sock=upstream)
                upstream = None  # the transport's now
                await loop.connect_accepted_socket(lambda: splice.box, sock=conn.dup())
                splice.start()
            await relay.done
        finally:
            tally.open -= 1
            if relay is not None:
                relay.close()
            if upstream is not None:
                upstream.close()

    async def _decide(self, loop: asyncio.AbstractEventLoop, grant: Grant, name: str,
                      port: int, tls: bool
                      ) -> tuple[list[tuple[IPAddress, int]], UpstreamProxy | None]:
        """Where ``name:port`` may be reached for this grant, and through which of the
        server's proxies (None: directly); Refused if it may not. The answer for an
        address on the grant's list is kept as long as the grant: it needs no name
        looked up and cannot change, and a box connects to the same few again and again.
        One a person approved is not kept (they approved that connection)."""
        key = (id(grant), name, port, tls)
        kept = self._decided.get(key)
        if kept is not None and kept[0] is grant:  # the grant held there: its id is its own
            return kept[1], None
        refusal = check_listed(grant.policy, name, port)
        listed = refusal is None
        if refusal is not None and refusal.rule == "not_allowed" and grant.policy.ask \
                and self._ask is not None:
            refusal = None if await self._ask(grant, name, port) else Refusal(
                "approval_denied", f"{name}:{port} is not on this sandbox's network "
                                   "list, and the connection was not approved")
        if refusal is not None:
            raise Refused(403, refusal)
        proxy = self.upstream.for_host(name, tls=tls)
        addrs = await self._resolve(loop, grant.policy, name, port,
                                    unresolved_ok=proxy is not None)
        if listed and proxy is None and parse_ip(name) is not None:
            if len(self._decided) >= DECIDED_MAX:
                self._decided.clear()
            self._decided[key] = (grant, addrs)
        return addrs, proxy

    async def _intercept(self, loop: asyncio.AbstractEventLoop, conn: socket.socket,
                         grant: Grant, name: str, port: int,
                         addrs: list[tuple[IPAddress, int]], creds: list[Credential],
                         proxy: UpstreamProxy | None) -> None:
        """HTTPS to a connector's host: TLS with the box under Sophon's CA, one request
        with the real credential, TLS to the host checked against the system's trust
        (intercept.py)."""
        if self.ca is None:
            raise Refused(502, Refusal("no_ca", "the door has no CA to speak TLS with"))
        upstream: socket.socket | None = await self._reach(loop, addrs, proxy, name, port)
        idle = self.settings.egress_idle_timeout_seconds
        box_w = up_w = None
        try:
            await loop.sock_sendall(conn, b"HTTP/1.1 200 Connection established\r\n\r\n")
            box_r, box_w = await asyncio.wait_for(
                _tls_server_streams(loop, conn.dup(), self.ca.server_context(name)), idle)
            head = parse_head((await asyncio.wait_for(read_head(box_r), idle))[:-4])
            path, _, query = head.target.partition("?")
            body_start = await peek_body(box_r, head.headers)
            chunked = any(k.lower() == "transfer-encoding" and "chunked" in v.lower()
                          for k, v in head.headers)
            refusal = push_refusal(head.method, path, query,
                                   chunk_payload(body_start, chunked), creds)
            if refusal is not None:
                await self._deny(grant, name, port, refusal)
                box_w.write(response(403, refusal.message))
                await box_w.drain()
                return
            headers = rewrite_headers(head.headers, creds)
            if not any(k.lower() == "host" for k, _ in headers):
                headers.append(("Host", name if port == 443 else f"{name}:{port}"))
            first = (f"{head.method} {head.target} HTTP/1.1\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode("latin-1") + body_start
            up_r, up_w = await asyncio.wait_for(asyncio.open_connection(
                sock=upstream, ssl=self.upstream_tls, server_hostname=name), idle)
            upstream = None
            tally = self.tally(grant)
            tally.connections += 1
            tally.open += 1
            try:
                await exchange(box_r, box_w, up_r, up_w, first, tally,
                               [c.value.encode() for c in creds], idle)
            finally:
                tally.open -= 1
        except (ssl.SSLError, ValueError, asyncio.IncompleteReadError) as exc:
            log.info("%s: TLS to %s:%s through the door failed: %s", grant.owner_id, name,
                     port, exc)
        finally:
            for w in (box_w, up_w):
                if w is not None:
                    w.close()
            if upstream is not None:
                upstream.close()

    async def _reach(self, loop: asyncio.AbstractEventLoop,
                    addrs: list[tuple[IPAddress, int]], proxy: UpstreamProxy | None,
                    name: str, port: int) -> socket.socket:
        """A connection to the host: to an address that passed, or through the server's
        proxy (a CONNECT for the name: the proxy resolves it)."""
        if proxy is None:
            return await self._connect(loop, addrs)
        try:
            return await tunnel(loop, proxy, name, port,
                                self.settings.egress_connect_timeout_seconds)
        except (ProxyError, OSError, TimeoutError) as exc:
            raise Refused(502, Refusal("upstream_proxy", str(exc) or "the server's proxy "
                                                                     "timed out")) from None

    async def _via_proxy(self, loop: asyncio.AbstractEventLoop,
                         proxy: UpstreamProxy) -> socket.socket:
        try:
            return await open_socket(loop, proxy, self.settings.egress_connect_timeout_seconds)
        except (ProxyError, OSError) as exc:
            raise Refused(502, Refusal("upstream_proxy", str(exc))) from None

    async def _resolve(self, loop: asyncio.AbstractEventLoop, policy: Policy, name: str,
                       port: int, unresolved_ok: bool = False) -> list[tuple[IPAddress, int]]:
        """The addresses the door itself resolves ``name`` to that pass the address
        check; it connects to one of these, never resolving again (no rebinding). With
        the server's proxy, a name the door cannot resolve is the proxy's to resolve."""
        ip = parse_ip(name)
        if ip is not None:
            found = [ip]
        else:
            try:
                infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                if unresolved_ok:
                    return []
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
                # Named as the box asked for it: which of its hosts, and what it became.
                first_refusal = Refusal(refusal.rule, refusal.message if name == str(addr)
                                        else f"{name}:{port} resolves to {refusal.message}")
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
                await connect_socket(loop, sock, (str(ip), port),
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


def _origin_request(head: _Head, path: str, host: str, port: int,
                    headers: list[tuple[str, str]],
                    proxy: UpstreamProxy | None = None) -> bytes:
    """The request as the host (or, ``path`` an absolute URL, the server's proxy) gets
    it: hop-by-hop headers dropped, one request per connection."""
    lines = [f"{head.method} {path} HTTP/1.1"]
    if proxy is not None and proxy.authorization:
        lines.append(f"Proxy-Authorization: {proxy.authorization}")
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


async def _read_head(loop: asyncio.AbstractEventLoop, conn: socket.socket,
                     timeout: float) -> tuple[bytes, bytes]:
    # The socket first, the loop only if nothing is there yet (why: sockets.py).
    buf, deadline = b"", loop.time() + timeout
    while True:
        try:
            chunk = conn.recv(16384)
        except (BlockingIOError, InterruptedError):
            async with asyncio.timeout_at(deadline):
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


async def _answer(loop: asyncio.AbstractEventLoop, conn: socket.socket, data: bytes,
                  linger: float = 2.0, most: int = 4 * 2**20) -> None:
    """Send a refusal the box can read even while it is still sending (an upload): our
    side is shut first, then what it sends is read and dropped for a moment. Closing
    with unread bytes would make the kernel reset the connection, and the client would
    see a broken pipe instead of the answer."""
    try:
        await loop.sock_sendall(conn, data)
        conn.shutdown(socket.SHUT_WR)
        end, read = loop.time() + linger, 0
        while read < most and (left := end - loop.time()) > 0:
            chunk = await asyncio.wait_for(loop.sock_recv(conn, 65536), left)
            if not chunk:
                return
            read += len(chunk)
    except (OSError, TimeoutError):
        pass


async def _tls_server_streams(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                              ctx: ssl.SSLContext
                              ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Streams over TLS where the door is the server, the handshake done on the socket
    itself: a plain transport first would read the box's ClientHello as data before a
    ``start_tls`` could see it (StreamWriter.start_tls also takes the client's side for
    a connection it did not accept)."""
    reader = asyncio.StreamReader(limit=MAX_HEAD, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock=sock, ssl=ctx)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


def _is_local(ip: IPAddress) -> bool:
    """Whether ``ip`` is one of this machine's addresses (binding to it works only then)."""
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((str(ip), 0))
        except OSError:
            return False
    return True
