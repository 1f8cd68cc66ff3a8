"""A request that needs a session's box, made to a node that does not run it, is sent on
to the node that does, and its answer streamed back: the caller never sees the
difference. The same for a new session, sent to the node with the most room.

The request goes as it came (method, path, query, headers with the caller's own
credentials, body streamed), so the owner checks who asks exactly as for a direct
request: another user's session is a 404 on every node. A header the nodes alone can
make (an HMAC under the data directory's key, which every node of a cluster shares)
marks a forwarded request, which is served where it lands, never sent on again.

A tool call of the MCP endpoint (stateless: any node can answer any request) goes the
same way, by the session its arguments name (``claude_code_start``: by placement).

The execution API's threads go the same way: an execute or a files-API call naming a
thread goes to the node that runs the thread's box (a thread not made yet, to the node
with the most room, which makes it); a signed file URL, to the node running the box it
was signed for; an execution's status, output or cancel, to the node it runs on.

What any node serves from the database is not forwarded: a session's event stream
(followed on every node through LISTEN/NOTIFY, cluster/notify.py) and lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import re
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie

import httpx
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from sophon.asgi import replay
from sophon.box import ids
from sophon.cluster.ownership import Owner, Ownership
from sophon.errors import SophonError
from sophon.sandbox.files import verify
from sophon.users import WEB_COOKIE, UserService

log = logging.getLogger("sophon.cluster")

HEADER = b"x-sophon-forwarded"
SESSION_PATH = re.compile(r"^/v1/sessions/(ses_[0-9a-f]+)(/.*)?$")
SESSION_ID = re.compile(r"^ses_[0-9a-f]+$")
# Served from the database by whichever node is asked.
ANY_NODE = {("GET", "/events")}
PLACED = {("POST", "/v1/sessions"), ("POST", "/v1/sessions/import")}
# Requests that name a thread in their JSON body, and the field that does.
THREAD_IN_BODY = {"/v1/sandbox/execute": "thread_id", "/v1/files/upload_url": "id",
                  "/v1/files/download_url": "id", "/v1/files/list": "id"}
MCP_PATH = "/mcp"
THREAD_PATH = re.compile(r"^/v1/threads/([^/]+)$")
EXECUTION_PATH = re.compile(r"^/v1/sandbox/executions/([^/]+)(/.*)?$")
BLOB_PATH = re.compile(r"^/v1/files/blob/([^/]+)$")
# Not passed on (hop by hop), or set for the next hop here.
DROPPED = {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
           b"te", b"trailer", b"transfer-encoding", b"upgrade", HEADER}


class Forwarding:
    def __init__(self, ownership: Ownership, key: bytes, users: UserService,
                 files_key: bytes) -> None:
        self.ownership = ownership
        self.users = users
        self.files_key = files_key
        self.token = hmac.new(key, b"sophon: a request forwarded by a node",
                              hashlib.sha256).hexdigest().encode()
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            # No read timeout: an event stream or a long exec answers for as long as
            # it runs; the caller's going away ends it (see Forwarder).
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(None, connect=5.0),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=32))
        return self._client

    def forwarded(self, scope: Scope) -> bool:
        return any(name == HEADER and hmac.compare_digest(value, self.token)
                   for name, value in scope["headers"])

    async def owner_for(self, scope: Scope, body: bytes | None) -> Owner | None:
        """The other node that should answer the request; None: this one (also for
        whatever this node cannot read: the route here then says what is wrong)."""
        method, path = scope["method"], scope["path"]
        if (method, path) in PLACED:
            return await self.ownership.place()
        found = SESSION_PATH.match(path)
        if found is not None:
            if (method, found.group(2) or "") in ANY_NODE:
                return None
            return await self.ownership.locate("session", found.group(1))
        if path == MCP_PATH and method == "POST" and body is not None:
            return await self._mcp_call(body)
        if path in THREAD_IN_BODY and body is not None:
            try:
                named = json.loads(body)
                thread = named.get(THREAD_IN_BODY[path]) if isinstance(named, dict) else None
            except ValueError:
                return None
            if not isinstance(thread, str) or named.get("source", "thread") != "thread":
                return None  # a one-off execution runs anywhere; a volume, here
            return await self._thread(scope, thread)
        if (found := THREAD_PATH.match(path)) is not None:
            return await self._thread(scope, found.group(1), make=False)
        if (found := EXECUTION_PATH.match(path)) is not None:
            return await self.ownership.execution_node(found.group(1))
        if (found := BLOB_PATH.match(path)) is not None:
            try:
                grant = verify(self.files_key, found.group(1), method)
            except SophonError:
                return None
            if ids.kind_of(grant.box_id) is not ids.Kind.EXECUTION:
                return None
            return await self.ownership.locate("thread", grant.box_id)
        return None

    async def _mcp_call(self, body: bytes) -> Owner | None:
        """A JSON-RPC ``tools/call`` naming a session: to the node that runs it."""
        try:
            message = json.loads(body)
        except ValueError:
            return None
        params = message.get("params") if isinstance(message, dict) else None
        if not isinstance(params, dict) or message.get("method") != "tools/call":
            return None  # also a batch, or the handshake: answered here
        if params.get("name") == "claude_code_start":
            return await self.ownership.place()
        arguments = params.get("arguments")
        session = arguments.get("session_id") if isinstance(arguments, dict) else None
        if not isinstance(session, str) or SESSION_ID.match(session) is None:
            return None
        return await self.ownership.locate("session", session)

    async def _thread(self, scope: Scope, name: str, make: bool = True) -> Owner | None:
        user_id = await self._caller(scope)
        if user_id is None:
            return None
        thread = await self.ownership.thread_id(user_id, name)
        if thread is None:  # made by the node with the most room
            return await self.ownership.place() if make else None
        return await self.ownership.locate("thread", thread)

    async def _caller(self, scope: Scope) -> str | None:
        """The user the request is from, by API key or dashboard cookie (None: the
        route here answers, with its 401)."""
        headers = dict(scope["headers"])
        scheme, _, key = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        try:
            if scheme.lower() == "bearer":
                return (await self.users.authenticate(key.strip())).user_id
            cookies = SimpleCookie(headers.get(b"cookie", b"").decode("latin-1"))
            if WEB_COOKIE in cookies:
                return (await self.users.web_session(cookies[WEB_COOKIE].value))[0].user_id
        except SophonError:
            pass
        return None

    async def forward(self, owner: Owner, scope: Scope, receive: Receive, send: Send) -> None:
        url = owner.url + scope["raw_path"].decode("latin-1") if scope.get("raw_path") \
            else owner.url + scope["path"]
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in DROPPED]
        headers += self._marks(scope)

        async def body() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    raise ConnectionResetError("the caller went away")
                yield message.get("body", b"")
                if not message.get("more_body", False):
                    return

        request = self.client.build_request(scope["method"], url, headers=headers,
                                            content=body())
        try:
            response = await self.client.send(request, stream=True)
        except (httpx.TransportError, ConnectionResetError) as exc:
            log.warning("node %s (%s) did not answer a forwarded request: %s",
                        owner.node_id, owner.url, exc)
            retry = math.ceil(self.ownership.settings.node_lease_seconds)
            await JSONResponse(
                {"error": "node_unreachable",
                 "message": f"the node that runs this ({owner.url}) does not answer; if it "
                            f"stopped, another node takes its work over within {retry} s: "
                            "try again then"},
                503, headers={"Retry-After": str(retry)})(scope, receive, send)
            return
        try:
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": [(k, v) for k, v in response.headers.raw
                                    if k.lower() not in DROPPED]})

            async def pump() -> None:
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk,
                                "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})

            async def caller_gone() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass

            pumping = asyncio.ensure_future(pump())
            watching = asyncio.ensure_future(caller_gone())
            try:
                await asyncio.wait({pumping, watching}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (pumping, watching):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            if pumping.done() and not pumping.cancelled() and pumping.exception():
                raise pumping.exception()  # type: ignore[misc]
        finally:
            await response.aclose()

    def _marks(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        """What the owner is told about the request: that a node forwarded it, who
        asked, and the Host the caller used (what a browser's Origin is checked against)."""
        marks = [(HEADER, self.token)]
        if client := scope.get("client"):
            marks.append((b"x-forwarded-for", client[0].encode()))
        if host := dict(scope["headers"]).get(b"host"):
            marks.append((b"x-forwarded-host", host))
        return marks

    async def forward_websocket(self, owner: Owner, scope: Scope, receive: Receive,
                                send: Send) -> None:
        """A terminal on another node's box: the WebSocket goes on to that node, frames
        both ways; a refusal there (a 403 before the upgrade) is the caller's refusal."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake

        url = owner.url.replace("http", "ws", 1) + scope["path"]
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        passed = {b"authorization", b"cookie", b"origin", b"user-agent"}
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
                   if k.lower() in passed]
        headers += [(k.decode(), v.decode("latin-1")) for k, v in self._marks(scope)]
        await receive()  # websocket.connect
        try:
            upstream = await connect(url, additional_headers=headers, open_timeout=10,
                                     max_size=None, compression=None)
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            log.info("terminal on node %s refused or unreachable: %s", owner.url, exc)
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "websocket.accept"})

        async def inbound() -> None:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("bytes") is not None:
                    await upstream.send(message["bytes"])
                elif message.get("text") is not None:
                    await upstream.send(message["text"])

        async def outbound() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for frame in upstream:
                    key = "bytes" if isinstance(frame, bytes) else "text"
                    await send({"type": "websocket.send", key: frame})
            await send({"type": "websocket.close", "code": upstream.close_code or 1000})

        tasks = [asyncio.ensure_future(inbound()), asyncio.ensure_future(outbound())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await upstream.close()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class Forwarder:
    """The ASGI side: a request another node should answer goes there; any other (and
    every request on a server alone) goes on to the routes here, at the cost of an
    attribute lookup."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services = getattr(scope["app"].state, "services", None) \
            if scope["type"] in ("http", "websocket") else None
        forwarding: Forwarding | None = getattr(services, "forwarding", None)
        if forwarding is None or forwarding.forwarded(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            found = SESSION_PATH.match(scope["path"])
            owner = await forwarding.ownership.locate("session", found.group(1)) \
                if found is not None and found.group(2) == "/terminal" else None
            if owner is None:
                await self.app(scope, receive, send)
            else:
                await forwarding.forward_websocket(owner, scope, receive, send)
            return
        body = None
        if scope["path"] in THREAD_IN_BODY or scope["path"] == MCP_PATH:
            # Which thread is in the body, which BodyLimit has read whole already: it is
            # read here, and handed on again.
            first = await receive()
            body = first.get("body", b"") if first["type"] == "http.request" else None
            receive = replay(first, receive)
        owner = await forwarding.owner_for(scope, body)
        if owner is None:
            await self.app(scope, receive, send)
            return
        await forwarding.forward(owner, scope, receive, send)

