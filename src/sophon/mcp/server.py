"""Sophon as an MCP server: sessions as tools another agent can use.

Streamable HTTP at ``/mcp`` on the API's own port (stateless: any request may come to
any server, after a restart too), with the API's bearer keys: each call acts as the
key's user, as the API does, so another user's session is "not found". ``sophon mcp``
(commands/mcp.py) bridges stdio to it. The tools are thin: they call the same services
as the routes, and a turn's outcome is read from its events (mcp/turns.py), so a call
that waited past a restart, or past ``wait_seconds``, loses nothing.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from sophon.errors import SophonError
from sophon.events.types import ExecEnd, ExecOutput
from sophon.mcp import tasks
from sophon.mcp.turns import TurnOutcome, ended, summarize, wait_for_turn
from sophon.services import Services
from sophon.sessions.models import ApprovalPolicy, CreateSession, SessionView
from sophon.users import Principal

log = logging.getLogger(__name__)
INSTRUCTIONS = (
    "Sophon runs Claude coding sessions in sandboxes. Start one with claude_code_start "
    "(optionally with a first message), give it work with claude_code_send, which waits "
    "for the turn and returns Claude's answer and the files it changed. A turn that needs "
    "an approval returns status waiting_approval with the pending calls: answer with "
    "claude_code_approve, then claude_code_wait. A turn longer than wait_seconds returns "
    "status running: call claude_code_wait to go on waiting; nothing is lost.")
# Under the shortest timeout MCP clients commonly default to (60 s): a longer turn comes
# back as "running" with the seq to resume from, before the client gives up on the call.
WAIT_DEFAULT = 45.0

SessionId = Annotated[str, Field(description="The session's id (ses_...)")]
Wait = Annotated[float, Field(description="Seconds to wait for the turn to end; past "
                                          "them the result says running", ge=0, le=3600)]


class SessionTools:
    """The tools, over the server's services; ``services`` is set once they are open."""

    def __init__(self) -> None:
        self.services: Services | None = None

    async def principal(self, ctx: Context) -> Principal:
        return await self.principal_of(ctx.request_context.request)

    async def principal_of(self, request: Any) -> Principal:
        """The key's user: every MCP request carries the API key it came with."""
        header = request.headers.get("authorization", "") if request is not None else ""
        scheme, _, key = header.partition(" ")
        return await self._services().users.authenticate(
            key.strip() if scheme.lower() == "bearer" else None)

    # --- turns ----------------------------------------------------------------------

    async def start_turn(self, who: Principal, session_id: str, message: str) -> int:
        """Send the message; the log's last seq before it (where the turn's events
        begin)."""
        services = self._services()
        await self.owned(who, session_id)
        before = await services.sessions.events.last_seq(session_id)
        await services.agent.send(who, session_id, message)
        return before

    async def send(self, ctx: Context, session_id: str, message: str,
                   wait_seconds: float) -> TurnOutcome:
        who = await self.principal(ctx)
        before = await self.start_turn(who, session_id, message)
        return await self.outcome(ctx, who, session_id, before, wait_seconds)

    async def outcome(self, ctx: Context | None, who: Principal, session_id: str, after: int,
                      wait_seconds: float, stop_at_approval: bool = True) -> TurnOutcome:
        """The outcome of the turn whose message came after seq ``after``, waiting for
        it to end at most ``wait_seconds`` (and, with ``stop_at_approval``, no longer
        than until it waits for an approval)."""
        services = self._services()
        events = await self._events_after(who, session_id, after)
        pending = await self._pending(who, session_id)
        if not ended(events) and not (pending and stop_at_approval):
            last = events[-1].seq if events else after

            async def progress(n: int, what: str) -> None:
                # A client that asked for no progress (or went away) is no failure.
                with contextlib.suppress(Exception):
                    if ctx is not None:
                        await ctx.report_progress(n, None, what)

            events += await wait_for_turn(
                lambda start: services.sessions.events.follow(session_id, start, batch=True),
                last, wait_seconds, started=any(e.type == "user" for e in events),
                progress=progress, stop_at_approval=stop_at_approval)
            pending = await self._pending(who, session_id)
        return summarize(session_id, after, events, pending)

    async def owned(self, who: Principal, session_id: str) -> None:
        await self._services().sessions.get_row(who, session_id)  # NotFound for a stranger

    async def interrupt(self, who: Principal, session_id: str) -> bool:
        return await self._services().agent.interrupt(who, session_id)

    async def _events_after(self, who: Principal, session_id: str, after: int) -> list[Any]:
        services, out = self._services(), []
        while True:
            page, _ = await services.sessions.events_page(who, session_id, after, 2000)
            out += page
            if len(page) < 2000:
                return out
            after = page[-1].seq

    async def _pending(self, who: Principal, session_id: str) -> list[dict[str, Any]]:
        rows = await self._services().sessions.approvals.pending(who, session_id)
        return [{"approval_id": r.id, "tool": r.tool, "input": r.input, "reason": r.reason}
                for r in rows]

    def _services(self) -> Services:
        if self.services is None:
            raise ToolError("the server is starting; try again in a moment")
        return self.services


def build(tools: SessionTools) -> MCPServer:
    """The MCP server and its tools (names with underscores: Anthropic's API allows no
    dots in tool names)."""
    server: MCPServer = MCPServer("sophon", instructions=INSTRUCTIONS, version="0.1.0",
                                  middleware=[tasks.middleware(tools)])

    def tool(description: str) -> Callable[[Callable[..., Awaitable[Any]]],
                                           Callable[..., Awaitable[Any]]]:
        def register(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            @functools.wraps(fn)
            async def guarded(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await fn(*args, **kwargs)
                except SophonError as exc:  # a user's mistake: said, not a crash
                    raise ToolError(f"{exc.code}: {exc.message}") from None
                except ToolError:
                    raise
                except Exception:
                    log.exception("MCP tool %s failed", fn.__name__)
                    raise ToolError(f"{fn.__name__} failed on the server (its log has "
                                    "why)") from None

            server.tool(name=fn.__name__, description=description)(guarded)
            return fn
        return register

    @tool("Create a Claude coding session (a sandbox with a git repository) and return its "
          "id. With `message`, also run a first turn and return its outcome, as "
          "claude_code_send does.")
    async def claude_code_start(
            ctx: Context,
            name: Annotated[str, Field(description="A name for the session",
                                       min_length=1, max_length=200)],
            base: Annotated[Literal["generic", "python", "node", "dotnet"], Field(
                description="The sandbox's toolchain")] = "generic",
            model: Annotated[str, Field(description="opus, sonnet, haiku or a model id")]
            = "sonnet",
            system_prompt: Annotated[str | None, Field(description="Extra instructions")]
            = None,
            template: Annotated[str | None, Field(description="Start from a template "
                                                               "(python, node)")] = None,
            clone: Annotated[str | None, Field(description="Start from a git clone (a URL "
                                                            "the sandbox may reach)")] = None,
            shell: Annotated[Literal["ask_once", "allow", "deny"], Field(
                description="Shell commands: ask on first use, always allowed, or never")]
            = "ask_once",
            approval: Annotated[ApprovalPolicy | None, Field(
                description="The whole approval policy (shell, per-tool rules such as "
                            "{\"Write\": \"allow\"}, a timeout and its answer, a "
                            "webhook); given, it replaces `shell`")] = None,
            runtime: Annotated[Literal["native", "claude-code"], Field(
                description="The agent: Sophon's, or the Claude Code CLI")] = "native",
            message: Annotated[str | None, Field(description="A first message")] = None,
            wait_seconds: Wait = WAIT_DEFAULT,
    ) -> dict[str, Any]:
        services, who = tools._services(), await tools.principal(ctx)
        starter: dict[str, Any] = {"type": "empty"}
        if template:
            starter = {"type": "template", "name": template}
        elif clone:
            starter = {"type": "git", "url": clone}
        req = CreateSession.model_validate({
            "name": name, "base": base, "model": model, "system_prompt": system_prompt,
            "starter": starter, "runtime": runtime,
            "approval": (approval or ApprovalPolicy(shell=shell)).model_dump()})
        view = await services.sessions.create(who, req)
        out: dict[str, Any] = {"session_id": view.id, "session": _brief(view)}
        if message:
            out["turn"] = (await tools.send(ctx, view.id, message, wait_seconds)
                           ).model_dump()
        return out

    @tool("Send a message to a session's agent and wait for the turn to end. Returns "
          "Claude's final text, the files changed (lines added and removed), the turn's "
          "tokens and cost, and its status: done, failed, interrupted, waiting_approval "
          "(answer with claude_code_approve, then call claude_code_wait) or running "
          "(wait_seconds passed: call claude_code_wait with resume_after_seq).")
    async def claude_code_send(ctx: Context, session_id: SessionId,
                               message: Annotated[str, Field(min_length=1,
                                                             max_length=1_000_000)],
                               wait_seconds: Wait = WAIT_DEFAULT) -> TurnOutcome:
        return await tools.send(ctx, session_id, message, wait_seconds)

    @tool("Go on waiting for a turn (after claude_code_send returned running or "
          "waiting_approval); returns its outcome as claude_code_send does.")
    async def claude_code_wait(ctx: Context, session_id: SessionId,
                               resume_after_seq: Annotated[int, Field(
                                   ge=0, description="From the earlier result")],
                               wait_seconds: Wait = WAIT_DEFAULT) -> TurnOutcome:
        services, who = tools._services(), await tools.principal(ctx)
        await services.sessions.get_row(who, session_id)
        return await tools.outcome(ctx, who, session_id, resume_after_seq, wait_seconds)

    @tool("A session's state: status (idle, running, waiting_approval, sleeping, error), "
          "settings, usage, and the approvals waiting for an answer.")
    async def claude_code_status(ctx: Context, session_id: SessionId) -> dict[str, Any]:
        services, who = tools._services(), await tools.principal(ctx)
        view = await services.sessions.get(who, session_id)
        return {**_brief(view), "pending_approvals": await tools._pending(who, session_id)}

    @tool("Your sessions, newest first.")
    async def claude_code_list(ctx: Context, limit: Annotated[int, Field(ge=1, le=200)] = 50
                               ) -> dict[str, Any]:
        services, who = tools._services(), await tools.principal(ctx)
        views = await services.sessions.list(who, limit, None)
        return {"sessions": [_brief(v) for v in views]}

    @tool("A session's typed events after a seq (user and assistant messages, tool calls "
          "and results, file changes, approvals, usage, status), oldest first.")
    async def claude_code_events(ctx: Context, session_id: SessionId,
                                 after_seq: Annotated[int, Field(ge=0)] = 0,
                                 limit: Annotated[int, Field(ge=1, le=500)] = 100
                                 ) -> dict[str, Any]:
        services, who = tools._services(), await tools.principal(ctx)
        page, last = await services.sessions.events_page(who, session_id, after_seq, limit)
        return {"events": [json.loads(s.json) for s in page], "last_seq": last}

    @tool("Run a shell command in the session's sandbox (in /workspace) and return its "
          "exit code and output.")
    async def claude_code_exec(ctx: Context, session_id: SessionId,
                               command: Annotated[str, Field(min_length=1)],
                               timeout: Annotated[int, Field(ge=1, le=3600)] = 120
                               ) -> dict[str, Any]:
        services, who = tools._services(), await tools.principal(ctx)
        output, exit_code, error = [], None, None
        async for ev in await services.sessions.exec(who, session_id, command, timeout):
            if isinstance(ev, ExecOutput):
                output.append(ev.data)
            elif isinstance(ev, ExecEnd):
                exit_code, error = ev.exit_code, ev.error
        text = "".join(output)
        return {"exit_code": exit_code, "output": text[-100_000:], "error": error,
                "truncated": len(text) > 100_000}

    @tool("The diff of the session's working tree against its last commit (or `since`, a "
          "commit).")
    async def claude_code_diff(ctx: Context, session_id: SessionId,
                               since: Annotated[str | None, Field(max_length=200)] = None
                               ) -> dict[str, str]:
        services, who = tools._services(), await tools.principal(ctx)
        return {"base": since or "HEAD",
                "diff": await services.workspace.diff(who, session_id, since)}

    @tool("Answer a tool call or connection that a session's turn waits on (its id from "
          "the pending_approvals of a result). `remember` allows the same again without "
          "asking.")
    async def claude_code_approve(ctx: Context, session_id: SessionId,
                                  approval_id: Annotated[str, Field(min_length=1)],
                                  decision: Literal["allow", "deny"] = "allow",
                                  remember: bool = False,
                                  reason: Annotated[str | None, Field(max_length=2000)]
                                  = None) -> dict[str, Any]:
        services, who = tools._services(), await tools.principal(ctx)
        event = await services.sessions.approvals.decide(who, session_id, approval_id,
                                                         decision, remember, reason=reason)
        return event.model_dump(mode="json")

    @tool("Stop the session's running turn now.")
    async def claude_code_interrupt(ctx: Context, session_id: SessionId) -> dict[str, bool]:
        services, who = tools._services(), await tools.principal(ctx)
        return {"interrupted": await services.agent.interrupt(who, session_id)}

    @tool("Where to download the session as a .tar.gz (project with git history, events, "
          "settings) with the same API key; POSTed to /v1/sessions/import, it becomes a "
          "session again.")
    async def claude_code_export(ctx: Context, session_id: SessionId) -> dict[str, str]:
        services, who = tools._services(), await tools.principal(ctx)
        await services.sessions.get_row(who, session_id)
        return {"method": "GET", "path": f"/v1/sessions/{session_id}/export",
                "how": "send the same Authorization header; POST the file to "
                       "/v1/sessions/import to make a session of it again"}

    @tool("Delete a session for good: its sandbox, files and events.")
    async def claude_code_delete(ctx: Context, session_id: SessionId) -> dict[str, str]:
        services, who = tools._services(), await tools.principal(ctx)
        await services.sessions.delete(who, session_id)
        return {"deleted": session_id}

    tasks.install(server, tools)
    return server


def make_manager(services: Services) -> Any:
    """The tools over ``services``, and the MCP SDK's streamable HTTP session manager that
    serves them."""
    from mcp.server.transport_security import TransportSecuritySettings

    tools = SessionTools()
    tools.services = services
    server = build(tools)
    # Called for its side effect, the session manager. Stateless: any request may come
    # after a restart; every request carries its key, so no DNS-rebinding check.
    server.streamable_http_app(stateless_http=True, transport_security=TransportSecuritySettings(
        enable_dns_rebinding_protection=False))
    return server.session_manager


def _brief(view: SessionView) -> dict[str, Any]:
    return {"id": view.id, "name": view.name, "status": view.status, "base": view.base,
            "model": view.model, "runtime": view.runtime,
            "usage": view.usage.model_dump(), "last_seq": view.last_seq,
            "created_at": view.created_at.isoformat()}
