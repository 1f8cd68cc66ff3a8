"""A request that needs a session's box, made to a node that does not run it, is sent on
to the node that does, and its answer streamed back: the caller never sees the
difference. The same for a new session, sent to the node with the most room.

The request goes as it came (method, path, query, headers with the caller's own
credentials, body streamed), so the owner checks who asks exactly as for a direct
request: another user's session is a 404 on every node. A header the nodes alone can
make (an HMAC under the data directory's key, which every node of a cluster shares)
marks a forwarded request, which is served where it lands, never sent on again.

What any node serves from the database is not forwarded: a session's event stream
(followed on every node through LISTEN/NOTIFY, cluster/notify.py) and lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import re
from collections.abc import AsyncIterator

import httpx
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from sophon.cluster.ownership import Owner, Ownership

log = logging.getLogger("sophon.cluster")

HEADER = b"x-sophon-forwarded"
SESSION_PATH = re.compile(r"^/v1/sessions/(ses_[0-9a-f]+)(/.*)?$")
# Served from the database by whichever node is asked.
ANY_NODE = {("GET", "/events")}
PLACED = {("POST", "/v1/sessions"), ("POST", "/v1/sessions/import")}
# Not passed on (hop by hop), or set for the next hop here.
DROPPED = {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
           b"te", b"trailer", b"transfer-encoding", b"upgrade", HEADER}


class Forwarding:
    def __init__(self, ownership: Ownership, key: bytes) -> None:
        self.ownership = ownership
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

    async def owner_for(self, scope: Scope) -> Owner | None:
        """The other node that should answer the request; None: this one."""
        method, path = scope["method"], scope["path"]
        if (method, path) in PLACED:
            return await self.ownership.place()
        found = SESSION_PATH.match(path)
        if found is None or (method, found.group(2) or "") in ANY_NODE:
            return None
        return await self.ownership.locate("session", found.group(1))

    async def forward(self, owner: Owner, scope: Scope, receive: Receive, send: Send) -> None:
        url = owner.url + scope["raw_path"].decode("latin-1") if scope.get("raw_path") \
            else owner.url + scope["path"]
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in DROPPED]
        headers.append((HEADER, self.token))
        client = scope.get("client")
        if client:
            headers.append((b"x-forwarded-for", client[0].encode()))

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
                 "message": f"the node that runs this session ({owner.url}) does not answer; "
                            f"if it stopped, another node takes the session over within "
                            f"{retry} s: try again then"},
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
            if scope["type"] == "http" else None
        forwarding: Forwarding | None = getattr(services, "forwarding", None)
        if forwarding is None or forwarding.forwarded(scope):
            await self.app(scope, receive, send)
            return
        owner = await forwarding.owner_for(scope)
        if owner is None:
            await self.app(scope, receive, send)
            return
        await forwarding.forward(owner, scope, receive, send)
