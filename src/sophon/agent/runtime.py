"""The native runtime: one turn of the agent loop, top to bottom.

    the user's message is logged
    until the model ends its turn (or a limit, an error or an interrupt ends it):
        ask the model (through the gateway), logging its blocks as they complete
        run each tool call it made (if the policy allows), logging the results
    the session goes back to idle

The history sent to the model is rebuilt from the session's events, so a turn after a
restart continues the same conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sophon.agent import history, policy
from sophon.agent.live import LiveOutput
from sophon.agent.mcp_servers import SessionMcp
from sophon.agent.tools import TOOLS, ToolContext, run_tool
from sophon.box.box import Box
from sophon.config import Settings
from sophon.errors import SophonError
from sophon.events.types import Assistant, SessionError, Thinking, ToolResult, ToolUse, User
from sophon.gateway.messages import BlockDone, MessageDone, TextDelta
from sophon.gateway.service import Gateway
from sophon.sessions.checkpoints import Checkpoints, may_write
from sophon.sessions.models import ApprovalPolicy
from sophon.sessions.service import SessionService
from sophon.store.tables import SessionRow
from sophon.users import Principal

# Errors that are a limit doing its job: the turn ends, but nothing failed.
LIMITS = frozenset({"budget_exceeded", "limit_exceeded"})

SYSTEM_PROMPT = """You are Claude, working as a software engineer in a sandboxed project.
The project is the git repository at /workspace; it persists between turns. Use the tools
to read, write and run code: Read before you Edit or overwrite a file, run the tests with
Bash, and keep a task list with TaskCreate/TaskUpdate for multi-step work. The sandbox
reaches the network only through an HTTP proxy (already set in the environment), and only
the hosts this session allows; others are refused with a 403 that says why."""


@dataclass
class Turn:
    """A turn in progress, as the service that runs it sees it."""

    session_id: str
    principal: Principal
    content: str
    box: Box | None = None
    phase: str = "starting"  # model | tool | approval
    interrupted: bool = False
    task: asyncio.Task[None] | None = None
    partial: list[str] = field(default_factory=list)  # text of the block being streamed
    metering: asyncio.Task[Any] | None = None  # the last call's usage, being recorded
    metering_cost: float = 0.0
    # How a runtime that stops its own turns is told to (claude-code: the CLI's interrupt).
    interrupter: Callable[[], Awaitable[None]] | None = None

    async def settle_usage(self) -> None:
        if self.metering is not None:
            task, self.metering = self.metering, None
            await task

    row: SessionRow | None = None  # the session as last read, and the version read
    row_version: int = -1
    cost_since_row: float = 0.0  # spent since that read (the row's cost_usd lacks it)

    async def fresh_row(self, sessions: SessionService) -> SessionRow:
        """The session's settings, read again only when they changed (a PATCH)."""
        version = sessions.version(self.session_id)
        if self.row is None or version != self.row_version:
            unsettled = (0.0 if self.metering is None or self.metering.done()
                         else self.metering_cost)  # taken before the read: never undercount
            self.row = await sessions.get_row(self.principal, self.session_id)
            self.row_version, self.cost_since_row = version, unsettled
        return self.row


async def run_turn(turn: Turn, sessions: SessionService, gateway: Gateway,
                   settings: Settings, checkpoints: Checkpoints | None = None) -> None:
    emit = sessions.events
    sid = turn.session_id
    row = await sessions.get_row(turn.principal, sid)
    await emit.append(sid, User(content=turn.content))
    await sessions.set_status(sid, "running")
    failed: str | None = None
    try:
        gateway.require_key()  # without a provider key, the turn ends here, saying why
        events = await _all_events(sessions, sid)
        messages = history.rebuild(events)
        env = {**await sessions.exec_env(sid, await sessions.refresh_secrets(sid))}
        async with sessions.box(row) as box, contextlib.AsyncExitStack() as stack:
            turn.box = box
            ctx = ToolContext(box, env, lambda ev: emit.append(sid, ev),
                              tasks=history.tasks_of(history.effective(events)),
                              output_cap=settings.limits.output_cap_bytes)
            marks = await checkpoints.for_turn(box, sid) if checkpoints else None
            if marks is not None:  # taken while the model is first asked
                await marks.start(wait=False)
                # The turn's end is checkpointed however it ends (interrupted too).
                stack.push_async_callback(lambda: asyncio.shield(marks.end()))
            if row.mcp_servers:  # the session's own tools, for this turn
                ctx.mcp = await SessionMcp.open(box, row.mcp_servers, env, ctx.emit,
                                                settings.mcp_start_seconds,
                                                settings.mcp_call_seconds)
                stack.push_async_callback(ctx.mcp.close)
            for n in itertools.count(1):
                row = await turn.fresh_row(sessions)
                if row.max_turns is not None and n > row.max_turns:
                    await emit.append(sid, SessionError(
                        code="max_turns", message=f"the turn reached max_turns "
                        f"({row.max_turns}) and was stopped; send a message to continue"))
                    break
                turn.phase = "model"
                reply = await _ask_model(turn, sessions, gateway, settings, row, messages,
                                         ctx.mcp.tools if ctx.mcp else [])
                messages.append({"role": "assistant", "content": reply["content"]})
                calls = [b for b in reply["content"] if b["type"] == "tool_use"]
                if reply["stop_reason"] != "tool_use" or not calls:
                    break
                results = []
                current = ApprovalPolicy.model_validate(row.approval)
                for call in calls:
                    if marks is not None and may_write(call["name"]):
                        await marks.settle()  # the last call's checkpoint first
                    content, is_error, asked = await _call_tool(turn, sessions, settings,
                                                                current, ctx, call)
                    if asked:  # an answer may have changed the policy (ask_once, remember)
                        current = ApprovalPolicy.model_validate(
                            (await turn.fresh_row(sessions)).approval)
                    logged = await emit.append(sid, ToolResult(
                        tool_use_id=call["id"], content=content, is_error=is_error))
                    if marks is not None:  # taken while the model is asked again
                        await marks.after_tool(call["name"], call["id"], wait=False)
                    # The model gets the logged (redacted) result: a secret's value never
                    # reaches the provider, and a rebuilt history reads the same.
                    results.append({"type": "tool_result", "tool_use_id": call["id"],
                                    "content": logged.content, "is_error": is_error})
                messages.append({"role": "user", "content": results})
                if turn.interrupted:
                    break
    except asyncio.CancelledError:
        await asyncio.shield(_keep_partial(turn, sessions))
        if turn.interrupted and turn.phase == "approval":
            await asyncio.shield(_withdraw_approvals(turn, sessions))
        if not turn.interrupted:  # the server is stopping
            await asyncio.shield(emit.append(sid, SessionError(
                code="interrupted", message="the server stopped during this turn, which was "
                "cut off; send the next message to continue")))
            raise
    except SophonError as exc:
        await emit.append(sid, SessionError(code=exc.code, message=exc.message))
        failed = None if exc.code in LIMITS else exc.message
    except Exception as exc:  # a model or network failure ends the turn, not the server
        failed = _describe(exc)
        await emit.append(sid, SessionError(code="model_error", message=failed))
    finally:
        turn.box = None
        with contextlib.suppress(Exception):
            await asyncio.shield(turn.settle_usage())
        # A turn that failed leaves the session in "error" until the next message; one
        # that reached a limit or was interrupted ended as it should, so it is idle.
        status, detail = ("error", failed) if failed else (
            "idle", "interrupted by the user" if turn.interrupted else None)
        with contextlib.suppress(Exception):
            await asyncio.shield(sessions.end_turn(sid, status, detail))


async def _all_events(sessions: SessionService, sid: str) -> list[Any]:
    out: list[Any] = []
    while True:
        page = await sessions.events.read(sid, out[-1].seq if out else 0, 5000)
        out += page
        if len(page) < 5000:
            return out


async def _ask_model(turn: Turn, sessions: SessionService, gateway: Gateway,
                     settings: Settings, row: SessionRow, messages: list[dict[str, Any]],
                     extra_tools: list[dict[str, Any]]) -> dict[str, Any]:
    """Stream one reply; log each block when it completes; meter the call."""
    model = settings.models.resolve(row.model)
    system = SYSTEM_PROMPT + (f"\n\n{row.system_prompt}" if row.system_prompt else "")
    params = {"model": model, "max_tokens": settings.models.max_tokens, "system": system,
              "messages": messages, "tools": TOOLS + extra_tools}
    if settings.models.user_token_budget:
        await turn.settle_usage()  # the user's total is summed from the records
    await gateway.check_budget(row, model, params, turn.cost_since_row)
    blocks: list[dict[str, Any]] = []
    logging: list[asyncio.Task[None]] = []  # appends run in order while the stream goes on
    turn.partial = []
    final = MessageDone(None)
    try:
        async for ev in gateway.stream(params):
            if isinstance(ev, TextDelta):
                turn.partial.append(ev.text)
            elif isinstance(ev, BlockDone):
                blocks.append(_clean(ev.block))
                turn.partial = []
                logging.append(asyncio.create_task(_log_block(sessions, row.id, ev.block)))
            else:
                final = ev
    finally:
        # Every block is in the log before anything acts on it (or the turn ends).
        await asyncio.shield(asyncio.gather(*logging))
    # Recorded while the tools run (the next budget check counts it either way), after
    # the previous record, so the session's totals are written in order.
    counted = final.usage
    turn.metering_cost = gateway.cost(model, counted)
    turn.cost_since_row += turn.metering_cost
    turn.metering = asyncio.create_task(
        _record_after(turn.metering, gateway.record(row.id, model, counted)))
    return {"content": blocks, "stop_reason": final.stop_reason}


async def _record_after(previous: asyncio.Task[Any] | None, record: Any) -> Any:
    if previous is not None:
        with contextlib.suppress(Exception):
            await previous
    return await record


def _clean(block: dict[str, Any]) -> dict[str, Any]:
    """The block as the API takes it back (no SDK-only fields)."""
    keep = {"text": ("type", "text"), "thinking": ("type", "thinking", "signature"),
            "tool_use": ("type", "id", "name", "input"),
            "redacted_thinking": ("type", "data")}.get(block["type"], tuple(block))
    return {k: block[k] for k in keep if k in block}


async def _log_block(sessions: SessionService, sid: str, block: dict[str, Any]) -> None:
    log = sessions.events
    if block["type"] == "text" and block.get("text"):
        await log.append(sid, Assistant(text=block["text"]))
    elif block["type"] == "thinking":
        await log.append(sid, Thinking(text=block.get("thinking", ""),
                                       signature=block.get("signature")))
    elif block["type"] == "tool_use":
        await log.append(sid, ToolUse(tool_use_id=block["id"], tool=block["name"],
                                      input=block.get("input") or {}))


async def _call_tool(turn: Turn, sessions: SessionService, settings: Settings,
                     current: ApprovalPolicy, ctx: ToolContext,
                     call: dict[str, Any]) -> tuple[str, bool, bool]:
    """(content, is_error, whether the owner or a webhook was asked)."""
    if turn.interrupted:
        return "Not run: the user interrupted the turn.", True, False
    turn.phase = "approval"
    asked = policy.mode_for(current, call["name"]) == "ask"
    verdict = await policy.authorize(sessions, turn.session_id, current, call["name"],
                                     call.get("input") or {},
                                     settings.models.approval_webhook_timeout, turn.principal)
    if not verdict.allowed:
        why = f": {verdict.reason}" if verdict.reason else ""
        return f"Permission to use {call['name']} was denied{why}.", True, asked
    turn.phase = "tool"
    live = LiveOutput(ctx.emit, call["id"], settings.limits.output_cap_bytes,
                      sessions.events.secrets_of(turn.session_id))
    ctx.on_output = live.feed
    try:
        if ctx.mcp is not None and ctx.mcp.owns(call["name"]):
            content, is_error = await ctx.mcp.call(call["name"], call.get("input") or {},
                                                   ctx.emit)
        else:
            content, is_error = await run_tool(ctx, call["name"], call.get("input") or {})
    finally:
        ctx.on_output = None
        await live.close()
    if turn.interrupted:
        content = f"{content}\n[interrupted by the user]"
    return content, is_error, asked


async def _keep_partial(turn: Turn, sessions: SessionService) -> None:
    """An interrupt during streaming keeps what the model had said so far."""
    text = "".join(turn.partial)
    if text:
        await sessions.events.append(turn.session_id, Assistant(text=text))


async def _withdraw_approvals(turn: Turn, sessions: SessionService) -> None:
    """An interrupt while the turn waits for an approval withdraws the question: it is
    no longer pending, and its record says why."""
    for row in await sessions.approvals.pending(turn.principal, turn.session_id):
        with contextlib.suppress(SophonError):  # answered at the same moment
            await sessions.approvals.decide(
                turn.principal, turn.session_id, row.id, "deny", False,
                reason="withdrawn: the turn was interrupted before it was answered")


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"the model call failed ({status}): {message}" if status else \
        f"the model call failed: {message}"
