"""External tools a session opts into: MCP servers run in its sandbox, for a turn.

Each server is a program in the session's box (its ``command``), spoken to with MCP's
stdio transport (one JSON-RPC message a line) through an exec with a standard input, so
it has exactly the sandbox's rights and network. The native agent gets its tools as
``mcp__<server>__<tool>``; calling one goes through the approval policy like any tool
(ask unless the policy says otherwise, see policy.mode_for). A server that does not
start, does not answer in time, or says something that is not MCP is a ``session_error``
and a tool error, never a failed turn: the turn goes on without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from sophon.box.box import Box, ExecInput, ExecOutcome, stdout_lines
from sophon.box.bwrap import AGENT_DIR, WORKSPACE
from sophon.errors import BoxError, BoxRequestError
from sophon.events.types import SessionError

PROTOCOL_VERSION = "2025-06-18"
MAX_LINE = 4 * 1024 * 1024
MAX_TOOLS = 100
STDERR_KEPT = 2000
PREFIX = "mcp__"
_NAME = re.compile(r"[^A-Za-z0-9_-]")


class McpServerFailed(Exception):
    """The server cannot be used: why, in a sentence."""


class BoxMcpServer:
    """One server's process in the box and the JSON-RPC exchanges with it."""

    def __init__(self, box: Box, name: str, command: list[str], env: dict[str, str],
                 start_seconds: float = 20.0, call_seconds: float = 300.0) -> None:
        self.box, self.name, self.command, self.env = box, name, command, env
        self.start_seconds, self.call_seconds = start_seconds, call_seconds
        self.feed = ExecInput()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._stderr = ""
        self._ended: str | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> list[dict[str, Any]]:
        """Start it, shake hands, and return its tools (as MCP lists them)."""
        self._reader = asyncio.create_task(self._read(), name=f"mcp-{self.name}")
        await self._request("initialize", {
            "protocolVersion": PROTOCOL_VERSION, "capabilities": {},
            "clientInfo": {"name": "sophon", "version": "0.1.0"}}, self.start_seconds)
        await self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        tools: list[dict[str, Any]] = []
        cursor = None
        for _ in range(20):  # pages
            got = await self._request("tools/list", {"cursor": cursor} if cursor else {},
                                      self.start_seconds)
            tools += [t for t in got.get("tools") or [] if isinstance(t, dict)
                      and isinstance(t.get("name"), str)]
            cursor = got.get("nextCursor")
            if not cursor or len(tools) >= MAX_TOOLS:
                break
        return tools[:MAX_TOOLS]

    async def call(self, tool: str, arguments: dict[str, Any]) -> tuple[str, bool]:
        """(the result as text, is_error). Raises McpServerFailed if the server failed."""
        got = await self._request("tools/call", {"name": tool, "arguments": arguments},
                                  self.call_seconds)
        parts = []
        for block in got.get("content") or []:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text":
                parts.append(str(block.get("text", "")))
            else:
                parts.append(f"[{block.get('type', 'content')} not shown]")
        if not parts and got.get("structuredContent") is not None:
            parts.append(json.dumps(got["structuredContent"]))
        return "\n".join(parts), bool(got.get("isError"))

    async def close(self) -> None:
        with contextlib.suppress(BoxError, BoxRequestError, TimeoutError):
            await asyncio.wait_for(self.feed.close(), 5)  # a stdio server ends at EOF
        if self._reader is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._reader), 5)
            if not self._reader.done():
                self._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reader

    async def _request(self, method: str, params: dict[str, Any],
                       timeout: float) -> dict[str, Any]:
        if self._ended is not None:
            raise McpServerFailed(self._ended)
        rid = next(self._ids)
        waiter = self._waiting[rid] = asyncio.get_running_loop().create_future()
        try:
            await self._send({"jsonrpc": "2.0", "id": rid, "method": method,
                              "params": params})
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise McpServerFailed(f"it did not answer {method} within {timeout:g} s") \
                from None
        finally:
            self._waiting.pop(rid, None)

    async def _send(self, message: dict[str, Any]) -> None:
        try:
            await self.feed.write(json.dumps(message) + "\n")
        except (BoxError, BoxRequestError) as exc:
            # It has most likely exited: say how (its code and stderr), once known.
            if self._reader is not None:
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(self._reader), 2)
            raise McpServerFailed(self._ended or f"it stopped reading ({exc})") from None

    async def _read(self) -> None:
        outcome, why = None, None
        try:
            async for item in stdout_lines(self.box.exec(
                    self.command, timeout=24 * 3600, env=self.env, cwd=WORKSPACE,
                    output_cap=2**62, window=1 << 20, stdin=self.feed), MAX_LINE):
                if isinstance(item, str):
                    await self._line(item)
                elif isinstance(item, ExecOutcome):
                    outcome = item
                else:
                    self._stderr = (self._stderr + item.data)[-STDERR_KEPT:]
        except ValueError as exc:  # a line past MAX_LINE: not a server to go on with
            why = f"it sent {exc}"
        except (BoxError, BoxRequestError) as exc:
            why = f"the sandbox stopped under it ({exc})"
        finally:
            if why is None:
                code = outcome.exit_code if outcome is not None else "?"
                tail = self._stderr.strip()[-500:]
                why = f"it exited ({code})" + (f": {tail}" if tail else "")
            self._ended = why
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_exception(McpServerFailed(why))

    async def _line(self, line: str) -> None:
        if not line.strip():
            return
        try:
            msg = json.loads(line)
        except ValueError:
            return  # a stray print: MCP clients skip what is not JSON-RPC
        if not isinstance(msg, dict):
            return
        if "method" in msg and "id" in msg:  # the server asks us: nothing is offered
            await self._send({"jsonrpc": "2.0", "id": msg["id"], "error": {
                "code": -32601, "message": f"{msg['method']} is not offered by this client"}})
            return
        waiter = self._waiting.get(msg.get("id"))  # type: ignore[arg-type]
        if waiter is None or waiter.done():
            return
        if isinstance(msg.get("error"), dict):
            error = msg["error"]
            waiter.set_exception(McpServerFailed(
                f"it answered with an error {error.get('code')}: {error.get('message')}"))
        elif isinstance(msg.get("result"), dict):
            waiter.set_result(msg["result"])
        else:
            waiter.set_exception(McpServerFailed("it answered with something not MCP"))


class SessionMcp:
    """The turn's MCP servers: their tools for the model, and calls routed to them."""

    def __init__(self) -> None:
        self.tools: list[dict[str, Any]] = []  # as the Messages API takes them
        self._routes: dict[str, tuple[BoxMcpServer, str]] = {}
        self._servers: list[BoxMcpServer] = []

    @classmethod
    async def open(cls, box: Box, servers: list[dict[str, Any]], env: dict[str, str],
                   emit: Callable[[Any], Awaitable[Any]], start_seconds: float = 20.0,
                   call_seconds: float = 300.0) -> SessionMcp:
        """Start every server (at once); one that fails is said in a session_error and
        left out."""
        self = cls()

        async def one(spec: dict[str, Any]) -> None:
            server = BoxMcpServer(box, spec["name"], command_of(spec),
                                  {**env, **env_of(spec)}, start_seconds, call_seconds)
            try:
                listed = await server.start()
            except McpServerFailed as exc:
                await server.close()
                await emit(SessionError(code="mcp_server", message=(
                    f"the MCP server {spec['name']} could not start, so its tools are left "
                    f"out of this turn: {exc}")))
                return
            self._servers.append(server)
            for tool in listed:
                name = f"{PREFIX}{spec['name']}__{_NAME.sub('_', tool['name'])}"[:128]
                self._routes[name] = (server, tool["name"])
                schema = tool.get("inputSchema")
                self.tools.append({
                    "name": name, "description": str(tool.get("description") or "")[:4000],
                    "input_schema": schema if isinstance(schema, dict) else
                    {"type": "object"}})

        await asyncio.gather(*(one(s) for s in servers))
        return self

    def owns(self, tool: str) -> bool:
        return tool in self._routes

    async def call(self, tool: str, arguments: dict[str, Any],
                   emit: Callable[[Any], Awaitable[Any]]) -> tuple[str, bool]:
        server, name = self._routes[tool]
        try:
            return await server.call(name, arguments)
        except McpServerFailed as exc:
            message = f"the MCP server {server.name} failed on {name}: {exc}"
            await emit(SessionError(code="mcp_server", message=message))
            return message, True

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self._servers), return_exceptions=True)


def command_of(spec: dict[str, Any]) -> list[str]:
    """What runs in the box for a server: its command, or for a url the bridge that
    speaks to it through the box's egress door (box/agent/mcp_http.py)."""
    if spec.get("url"):
        return ["python3", f"{AGENT_DIR}/mcp_http.py", spec["url"]]
    return list(spec["command"])


def env_of(spec: dict[str, Any]) -> dict[str, str]:
    env = dict(spec.get("env") or {})
    if spec.get("url") and spec.get("headers"):
        env["SOPHON_MCP_HEADERS"] = json.dumps(spec["headers"])
    return env


def is_mcp_tool(tool: str) -> bool:
    return tool.startswith(PREFIX)
