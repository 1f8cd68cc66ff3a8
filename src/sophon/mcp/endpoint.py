"""The ASGI endpoint at /mcp (mcp/server.py holds the tools).

The MCP SDK takes most of a second to import; a server that no agent ever calls over MCP
should not pay it at every start (nor every test its server). So the endpoint loads it,
off the event loop, on the first request, and keeps its session manager running until
the server stops.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from sophon.errors import SophonError
from sophon.services import Services


class _Starting(SophonError):
    status = 503
    code = "starting"


class McpEndpoint:
    """A missing or wrong key is the API's 401 before any MCP message is read; the rest
    is the MCP SDK's streamable HTTP."""

    def __init__(self) -> None:
        self.services: Services | None = None
        self._manager: Any = None
        self._lock = asyncio.Lock()
        self._closing = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode()
        scheme, _, key = header.partition(" ")
        try:
            if self.services is None:
                raise _Starting("the server is starting; try again in a moment")
            await self.services.users.authenticate(
                key.strip() if scheme.lower() == "bearer" else None)
            manager = await self._ensure(self.services)
        except SophonError as exc:
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            await JSONResponse({"error": exc.code, "message": exc.message}, exc.status,
                               headers=headers)(scope, receive, send)
            return
        await manager.handle_request(scope, receive, send)

    async def _ensure(self, services: Services) -> Any:
        async with self._lock:
            if self._manager is None:
                # The SDK logs every stateless request's end at INFO: one line per call.
                logging.getLogger("mcp").setLevel(logging.WARNING)
                server = await asyncio.to_thread(importlib.import_module, "sophon.mcp.server")
                manager = server.make_manager(services)
                running = asyncio.Event()
                self._runner = asyncio.create_task(self._run(manager, running),
                                                   name="mcp-session-manager")
                await running.wait()
                if self._runner.done():  # it could not start: its error, said once
                    self._runner.result()
                self._manager = manager
        return self._manager

    async def _run(self, manager: Any, running: asyncio.Event) -> None:
        try:
            async with manager.run():
                running.set()
                await self._closing.wait()
        finally:
            running.set()

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner
