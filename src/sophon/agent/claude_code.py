"""The `claude-code` runtime: the real Claude Code CLI runs the session's turns in its box.

    the user's message is logged and written to the session's CLI (claude_process.py:
        one long-lived process per running session, started with --resume when the
        conversation already exists under $HOME/.claude on the box's disk)
    its model calls go through the egress door to the gateway (metered, budgeted)
    each tool call the CLI asks about (control_request can_use_tool) is answered by
        the session's approval policy (ask, webhook, remember) exactly as for the native
        runtime; the answer goes back as a control_response
    each line it prints becomes Sophon's typed events (assistant, thinking, tool_use,
        tool_result, task_update; file changes come from the box's watcher as for any
        turn); its partial messages (stream_event) are what an interrupt keeps
    the turn ends at the CLI's `result`; an interrupt is the CLI's own interrupt request;
        a CLI that prints nothing for claude_code_stall_seconds with no question pending
        is stopped, and the turn ends with a session_error
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import Any

from sophon.agent import policy
from sophon.agent.claude_process import ClaudeProcess, ClaudeProcesses, Ended, argv_for
from sophon.agent.runtime import Turn, _all_events, _withdraw_approvals
from sophon.config import Settings
from sophon.errors import BoxError, BoxRequestError, SophonError
from sophon.events.types import (
    Assistant,
    SessionError,
    TaskUpdate,
    Thinking,
    ToolResult,
    ToolUse,
    User,
)
from sophon.sessions.checkpoints import Checkpoints, TurnCheckpoints
from sophon.sessions.models import ApprovalPolicy
from sophon.sessions.service import SessionService

log = logging.getLogger(__name__)

INTERRUPT_GRACE = 10.0  # seconds for the CLI to end an interrupted turn before it is stopped


async def run_claude_turn(turn: Turn, sessions: SessionService, settings: Settings,
                          processes: ClaudeProcesses,
                          checkpoints: Checkpoints | None = None) -> None:
    emit = sessions.events
    sid = turn.session_id
    row = await sessions.get_row(turn.principal, sid)
    earlier = any(e.type == "user" for e in await _all_events(sessions, sid))
    await emit.append(sid, User(content=turn.content))
    await sessions.set_status(sid, "running")
    failed: str | None = None
    try:
        env = await sessions.exec_env(sid, await sessions.refresh_secrets(sid))
        approval = ApprovalPolicy.model_validate(row.approval)
        argv = argv_for(sid, settings.models.resolve(row.model), row.system_prompt,
                        row.max_turns, approval, earlier, row.max_budget_usd,
                        row.mcp_servers)
        async with sessions.box(row) as box:
            turn.box = box
            marks = await checkpoints.for_turn(box, sid) if checkpoints else None
            if marks is not None:
                await marks.start()
            current = processes.get(sid)
            reused = current is not None and current.same(box, argv, env)
            proc = await processes.start(sid, box, argv, env)
            try:
                failed = await _Turn(turn, sessions, settings, processes, proc, reused,
                                     marks).run()
            except _GoneBetweenTurns:
                # It had died since the last turn, its end not seen yet: a new one resumes.
                proc = await processes.start(sid, box, argv, env)
                failed = await _Turn(turn, sessions, settings, processes, proc, False,
                                     marks).run()
            finally:
                if marks is not None:  # however the turn ended
                    await asyncio.shield(marks.end())
    except asyncio.CancelledError:
        if not turn.interrupted:
            await asyncio.shield(emit.append(sid, SessionError(
                code="interrupted", message="the server stopped during this turn, which was "
                "cut off; send the next message to continue")))
            raise
    except SophonError as exc:
        failed = exc.message
        await emit.append(sid, SessionError(code=exc.code, message=exc.message))
    finally:
        turn.box = turn.interrupter = None
        if turn.interrupted:
            with contextlib.suppress(Exception):
                await asyncio.shield(_withdraw_approvals(turn, sessions))
        processes.retire_later(sid, settings.claude_code_keep_seconds)
        status, detail = ("error", failed) if failed else (
            "idle", "interrupted by the user" if turn.interrupted else None)
        with contextlib.suppress(Exception):
            await asyncio.shield(sessions.end_turn(sid, status, detail))


class _GoneBetweenTurns(Exception):
    """The CLI kept from the last turn ended before it read this turn's message."""


class _Turn:
    """One turn's conversation with the CLI: the message in, its lines and questions out,
    until its result."""

    def __init__(self, turn: Turn, sessions: SessionService, settings: Settings,
                 processes: ClaudeProcesses, proc: ClaudeProcess, reused: bool,
                 marks: TurnCheckpoints | None) -> None:
        self.turn, self.sessions, self.settings = turn, sessions, settings
        self.processes, self.proc = processes, proc
        self.reused, self.heard = reused, False
        self.lines = _Lines(sessions, turn.session_id, marks)
        self.asking: dict[str, asyncio.Task[None]] = {}  # control request id -> answer
        self.woken = asyncio.Event()

    async def _interrupt(self) -> None:
        self.woken.set()
        with contextlib.suppress(BoxError, BoxRequestError):
            await self.proc.interrupt()

    async def run(self) -> str | None:
        """Why the turn failed, or None."""
        sid = self.turn.session_id
        emit = self.sessions.events
        self.turn.interrupter = self._interrupt
        self.turn.phase = "model"
        with contextlib.suppress(BoxError, BoxRequestError):
            # (A CLI that is gone already has its end in the lines, with why.)
            await self.proc.say(self.turn.content)
        stall = self.settings.claude_code_stall_seconds
        interrupted_at: float | None = None
        nxt: asyncio.Task[dict[str, Any] | Ended] = asyncio.ensure_future(self.proc.lines.get())
        wake = asyncio.ensure_future(self.woken.wait())
        try:
            while True:
                if self.turn.interrupted and interrupted_at is None:
                    interrupted_at = time.monotonic()
                    await self._stop_asking()
                if interrupted_at is not None:
                    timeout: float | None = max(0.0, interrupted_at + INTERRUPT_GRACE
                                                - time.monotonic())
                else:
                    timeout = None if self.asking else stall
                done, _ = await asyncio.wait({nxt, wake} if not wake.done() else {nxt},
                                             timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                if done == {wake}:
                    continue  # interrupted: loop round to act on it
                if nxt not in done:
                    if self.asking and interrupted_at is None:
                        continue
                    await self.processes.end(sid)
                    if interrupted_at is not None:
                        await self.lines.keep_partial()
                        return None
                    message = (f"Claude Code printed nothing for {stall:g} s and was "
                               "stopped (a hung CLI); send a message to continue")
                    await emit.append(sid, SessionError(code="claude_code_hung",
                                                        message=message))
                    return message
                msg = nxt.result()
                if isinstance(msg, Ended):
                    self.processes.forget(sid, self.proc)
                    if self.reused and not self.heard and interrupted_at is None:
                        raise _GoneBetweenTurns
                    if interrupted_at is not None:
                        await self.lines.keep_partial()
                        return None
                    message = self.lines.failure(msg)
                    await emit.append(sid, SessionError(code="claude_code", message=message))
                    return message
                self.heard = True
                nxt = asyncio.ensure_future(self.proc.lines.get())
                kind = msg.get("type")
                if kind == "control_request":
                    self._question(msg)
                elif kind == "control_cancel_request":
                    task = self.asking.pop(str(msg.get("request_id")), None)
                    if task is not None:
                        task.cancel()
                elif kind != "control_response":
                    await self.lines.line(msg)
                if kind == "result":
                    break
        finally:
            nxt.cancel()
            wake.cancel()
            await self._stop_asking()
        if interrupted_at is not None:
            await self.lines.keep_partial()
            return None
        if self.lines.max_turns:
            await emit.append(sid, SessionError(
                code="max_turns", message="the turn reached max_turns "
                f"({self.lines.result_turns or ''}) and was stopped; send a message to "
                "continue".replace(" ()", "")))
            return None
        failure = self.lines.result_failure()
        if failure:
            await emit.append(sid, SessionError(code=self.lines.failure_code(),
                                                message=failure))
        return failure

    def _question(self, msg: dict[str, Any]) -> None:
        request_id = str(msg.get("request_id"))
        request = msg.get("request") or {}
        if request.get("subtype") == "can_use_tool":
            task = asyncio.ensure_future(self._answer(request_id, request))
            self.asking[request_id] = task
            task.add_done_callback(lambda _: self.asking.pop(request_id, None))
        else:  # nothing else is asked of Sophon: say so, so the CLI does not wait
            asyncio.ensure_future(self._respond(request_id, error=(
                f"Sophon does not answer {request.get('subtype')!r} requests")))

    async def _answer(self, request_id: str, request: dict[str, Any]) -> None:
        """May the CLI run this tool call? The session's approval policy answers, as for
        the native runtime; a remembered allow is also given to the CLI for the session."""
        tool = str(request.get("tool_name"))
        tool_input = request.get("input")
        tool_input = tool_input if isinstance(tool_input, dict) else {}
        sid, owner = self.turn.session_id, self.turn.principal
        before = ApprovalPolicy.model_validate((await self.sessions.get_row(owner, sid)).approval)
        self.turn.phase = "approval"
        verdict = await policy.authorize(self.sessions, sid, before, tool, tool_input,
                                         self.settings.models.approval_webhook_timeout, owner)
        self.turn.phase = "model"
        if not verdict.allowed:
            await self._respond(request_id, {"behavior": "deny", "message": verdict.reason
                                             or f"the session's approval policy denies {tool}"})
            return
        answer: dict[str, Any] = {"behavior": "allow", "updatedInput": tool_input}
        after = ApprovalPolicy.model_validate((await self.sessions.get_row(owner, sid)).approval)
        if policy.mode_for(before, tool) != "allow" and policy.mode_for(after, tool) == "allow":
            answer["updatedPermissions"] = [{"type": "addRules", "rules": [{"toolName": tool}],
                                             "behavior": "allow", "destination": "session"}]
        await self._respond(request_id, answer)

    async def _respond(self, request_id: str, answer: dict[str, Any] | None = None,
                       error: str | None = None) -> None:
        response: dict[str, Any] = (
            {"subtype": "error", "request_id": request_id, "error": error} if error else
            {"subtype": "success", "request_id": request_id, "response": answer})
        with contextlib.suppress(BoxError, BoxRequestError):  # the CLI is gone: no one asks
            await self.proc.send({"type": "control_response", "response": response})

    async def _stop_asking(self) -> None:
        tasks = list(self.asking.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.asking.clear()


class _Lines:
    """The CLI's stream-json lines as Sophon's events."""

    def __init__(self, sessions: SessionService, sid: str,
                 marks: TurnCheckpoints | None = None) -> None:
        self.sessions, self.sid, self.marks = sessions, sid, marks
        self.tools: dict[str, str] = {}  # tool_use id -> the tool's name
        self.result: dict[str, Any] | None = None
        self.max_turns = False
        self.result_turns: int | None = None
        self.tasks: dict[int, tuple[str, str]] = {}  # the task list as last logged
        self.partial: list[str] = []  # text of the message being streamed

    async def line(self, msg: dict[str, Any]) -> None:
        emit = self.sessions.events
        kind = msg.get("type")
        content = (msg.get("message") or {}).get("content")
        if kind == "stream_event":
            self._stream_event(msg.get("event") or {})
        elif kind == "system" and msg.get("subtype") == "init":
            await self._servers(msg.get("mcp_servers"))
        elif kind == "assistant" and isinstance(content, list):
            self.partial = []  # the whole message is here: nothing partial left to keep
            for block in content:
                if block.get("type") == "text" and block.get("text"):
                    await emit.append(self.sid, Assistant(text=block["text"]))
                elif block.get("type") == "thinking":
                    await emit.append(self.sid, Thinking(text=block.get("thinking", ""),
                                                         signature=block.get("signature")))
                elif block.get("type") == "tool_use":
                    self.tools[str(block.get("id"))] = str(block.get("name"))
                    await emit.append(self.sid, ToolUse(
                        tool_use_id=str(block.get("id")), tool=str(block.get("name")),
                        input=block.get("input") or {}))
                    if block.get("name") == "TodoWrite":
                        await self._todos(block.get("input") or {})
        elif kind == "user" and isinstance(content, list):
            for block in content:
                if block.get("type") == "tool_result":
                    use_id = str(block.get("tool_use_id"))
                    await emit.append(self.sid, ToolResult(
                        tool_use_id=use_id, content=_text(block.get("content")),
                        is_error=bool(block.get("is_error"))))
                    if self.marks is not None:  # the CLI ran it: its changes are made
                        await self.marks.after_tool(self.tools.get(use_id, "?"), use_id)
        elif kind == "result":
            self.result = msg
            self.max_turns = msg.get("subtype") == "error_max_turns"
            turns = msg.get("num_turns")
            self.result_turns = turns if isinstance(turns, int) else None

    async def _servers(self, servers: Any) -> None:
        """The session's MCP servers the CLI could not start (its init line says which,
        not why): a session_error each, as the native runtime says them; the CLI leaves
        their tools out and the turn goes on."""
        for server in servers if isinstance(servers, list) else []:
            status = server.get("status") if isinstance(server, dict) else None
            if status in (None, "connected", "pending"):
                continue
            await self.sessions.events.append(self.sid, SessionError(
                code="mcp_server", message=(
                    f"the MCP server {server.get('name')} could not start (the Claude Code "
                    f"CLI says: {status}); its tools are left out of this turn")))

    def _stream_event(self, event: dict[str, Any]) -> None:
        """The model's reply as it streams: its text so far (an interrupt keeps it)."""
        if event.get("type") == "message_start":
            self.partial = []
        delta = event.get("delta") or {}
        if event.get("type") == "content_block_delta" and delta.get("type") == "text_delta":
            self.partial.append(str(delta.get("text", "")))

    async def keep_partial(self) -> None:
        """An interrupt during streaming keeps what the model had said so far."""
        text = "".join(self.partial)
        self.partial = []
        if text:
            await self.sessions.events.append(self.sid, Assistant(text=text))

    async def _todos(self, tool_input: dict[str, Any]) -> None:
        """The CLI's task list (TodoWrite sends all of it each time) as task_update events
        for the tasks that changed, numbered by their place in the list."""
        todos = tool_input.get("todos")
        if not isinstance(todos, list):
            return
        for i, todo in enumerate(todos, 1):
            if not isinstance(todo, dict):
                continue
            status = todo.get("status")
            subject = str(todo.get("content") or "")[:500]
            if status not in ("pending", "in_progress", "completed") or not subject:
                continue
            key = (subject, status)
            if self.tasks.get(i) == key:
                continue
            self.tasks[i] = key
            await self.sessions.events.append(self.sid, TaskUpdate(
                task_id=str(i), subject=subject, status=status,
                description=todo.get("activeForm") if isinstance(todo.get("activeForm"), str)
                else None))

    def result_failure(self) -> str | None:
        """Why a turn that ended with a result failed, in a sentence, or None. A budget
        the gateway held (its 402, which the CLI ends on) is said in the gateway's own
        words, as the native runtime says it."""
        if self.result is not None and self.result.get("is_error") and not self.max_turns:
            detail = _text(self.result.get("result")) or str(self.result.get("subtype"))
            spent = _BUDGET_REFUSAL.search(detail)
            if spent:
                return spent.group(1)
            if self.result.get("subtype") == "error_max_budget_usd":
                return ("Claude Code stopped the turn at the session's budget; raise "
                        "max_budget_usd to continue")
            return f"Claude Code ended with an error: {detail}"
        return None

    def failure_code(self) -> str:
        detail = _text((self.result or {}).get("result"))
        budget = _BUDGET_REFUSAL.search(detail) or (
            (self.result or {}).get("subtype") == "error_max_budget_usd")
        return "budget_exceeded" if budget else "claude_code"

    def failure(self, ended: Ended) -> str:
        """Why the CLI ended before the turn's result, in a sentence."""
        tail = ended.stderr[-500:] or "no output"
        if ended.outcome is None:
            return f"Claude Code stopped before the turn ended ({ended.reason}): {tail}"
        return f"Claude Code exited ({ended.outcome.exit_code}) without a result: {tail}"


# How the CLI reports the gateway's refusal of a call past a budget (api/gateway.py).
_BUDGET_REFUSAL = re.compile(r"API Error: 402 (.+)", re.S)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return "" if content is None else str(content)
