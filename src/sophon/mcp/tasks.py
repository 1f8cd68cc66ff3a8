"""MCP Tasks (spec 2025-11-25) for claude_code_send: a client that asks for a task gets
one at once and polls it (tasks/get), fetches its result (tasks/result) or cancels it.

The task is the turn itself, and its id names it: ``<session id>.<seq before the
message>``. Its state is read from the session's events each time (mcp/turns.py), so a
task outlives the client's connection and a server restart, and needs no store of its
own: working while the turn runs, input_required while it waits for an approval
(answered with claude_code_approve), then completed, failed or cancelled.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import mcp.types as types
from mcp.shared.exceptions import MCPError

from sophon.errors import NotFound, SophonError
from sophon.mcp.turns import TurnOutcome

if TYPE_CHECKING:
    from sophon.mcp.server import SessionTools

POLL_MS = 1000
RESULT_WAIT = 3600.0
STATES = {"running": "working", "waiting_approval": "input_required", "done": "completed",
          "failed": "failed", "interrupted": "cancelled"}
TASKED = ("claude_code_send",)


def task_id(session_id: str, after: int) -> str:
    return f"{session_id}.{after}"


def parse(task: str) -> tuple[str, int]:
    session_id, _, after = task.rpartition(".")
    if not session_id.startswith("ses_") or not after.isdigit():
        raise NotFound(f"no task {task[:100]!r}")
    return session_id, int(after)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _task(outcome: TurnOutcome, task: str, ttl: int | None) -> types.Task:
    message = outcome.error or (
        "waiting for an approval: answer it with claude_code_approve"
        if outcome.status == "waiting_approval" else None)
    return types.Task(task_id=task, status=STATES[outcome.status], status_message=message,  # type: ignore[arg-type]
                      created_at=_now(), last_updated_at=_now(), ttl=ttl,
                      poll_interval=POLL_MS)


def _error(exc: SophonError) -> MCPError:
    """A JSON-RPC error the client reads: invalid params for a task that is not the
    caller's (or not one), internal otherwise."""
    code = -32602 if exc.status in (400, 404) else -32603
    return MCPError(code, f"{exc.code}: {exc.message}")


def middleware(tools: SessionTools) -> Any:
    """A task-augmented claude_code_send answers at once with its task. (A middleware,
    not the tools/call handler: the SDK checks a handler's answer against
    CallToolResult alone, which a task is not.)"""

    async def on_request(ctx: Any, call_next: Any) -> Any:
        params = ctx.params if isinstance(ctx.params, dict) else {}
        if ctx.method != "tools/call" or not isinstance(params.get("task"), dict) or \
                params.get("name") not in TASKED:
            return await call_next(ctx)
        args = params.get("arguments") or {}
        try:
            who = await tools.principal_of(ctx.request)
            after = await tools.start_turn(who, str(args.get("session_id", "")),
                                           str(args.get("message", "")))
        except SophonError as exc:
            return {"content": [{"type": "text", "text": f"{exc.code}: {exc.message}"}],
                    "isError": True}
        ttl = params["task"].get("ttl")
        return types.CreateTaskResult(task=types.Task(
            task_id=task_id(str(args["session_id"]), after), status="working",
            created_at=_now(), last_updated_at=_now(),
            ttl=ttl if isinstance(ttl, int) else None, poll_interval=POLL_MS,
        )).model_dump(mode="json", by_alias=True, exclude_none=True)

    return on_request


def install(server: Any, tools: SessionTools) -> None:
    """Add task support to the MCP server: the capability, and tasks/get, tasks/result
    and tasks/cancel (with ``middleware`` for the task-augmented send)."""
    lowlevel = server._lowlevel_server  # the SDK's own server: tasks are not in its API yet
    capabilities = lowlevel.get_capabilities

    def with_tasks(*args: Any, **kwargs: Any) -> types.ServerCapabilities:
        caps = capabilities(*args, **kwargs)
        return caps.model_copy(update={"tasks": types.ServerTasksCapability(
            cancel={}, requests={"tools": {"call": {}}})})

    lowlevel.get_capabilities = with_tasks

    async def outcome(ctx: Any, task: str, wait: float) -> TurnOutcome:
        who = await tools.principal_of(ctx.request)
        session_id, after = parse(task)
        await tools.owned(who, session_id)
        return await tools.outcome(None, who, session_id, after, wait)

    async def on_get(ctx: Any, params: types.GetTaskRequestParams) -> Any:
        try:
            got = await outcome(ctx, params.task_id, 0)
        except SophonError as exc:
            raise _error(exc) from None
        return types.GetTaskResult(**_task(got, params.task_id, None).model_dump())

    async def on_result(ctx: Any, params: types.GetTaskPayloadRequestParams) -> Any:
        try:  # blocks until the task is done, through any approvals it waits for
            who = await tools.principal_of(ctx.request)
            session_id, after = parse(params.task_id)
            await tools.owned(who, session_id)
            got = await tools.outcome(None, who, session_id, after, RESULT_WAIT,
                                      stop_at_approval=False)
        except SophonError as exc:
            raise _error(exc) from None
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=json.dumps(got.model_dump()))],
            structured_content=got.model_dump(), is_error=got.status == "failed")

    async def on_cancel(ctx: Any, params: types.CancelTaskRequestParams) -> Any:
        try:
            who = await tools.principal_of(ctx.request)
            session_id, _ = parse(params.task_id)
            await tools.interrupt(who, session_id)
            got = await outcome(ctx, params.task_id, 10.0)
        except SophonError as exc:
            raise _error(exc) from None
        return types.CancelTaskResult(**_task(got, params.task_id, None).model_dump())

    lowlevel.add_request_handler("tasks/get", types.GetTaskRequestParams, on_get)
    lowlevel.add_request_handler("tasks/result", types.GetTaskPayloadRequestParams, on_result)
    lowlevel.add_request_handler("tasks/cancel", types.CancelTaskRequestParams, on_cancel)
