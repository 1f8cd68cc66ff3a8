"""The `claude-code` runtime: the real Claude Code CLI runs each turn in the session's box.

    the user's message is logged
    `claude -p <message> --output-format stream-json` runs in /workspace, the first turn
        with a session id made from Sophon's, every later one resuming it (the CLI keeps
        the conversation under $HOME/.claude, on the box's persistent disk)
    its model calls go through the egress door to the gateway (metered, budgeted)
    before each tool call its PreToolUse hook (box/agent/claude_hook.py) asks Sophon,
        which answers by the session's approval policy (ask, webhook, remember) exactly
        as for the native runtime
    each line it prints becomes Sophon's typed events (assistant, thinking, tool_use,
        tool_result; file changes come from the box's watcher as for any turn)

Departure from the issue's design (a long-lived CLI per session over the stdio control
protocol): boxd's exec has no stdin channel, so the CLI runs a turn at a time and its
permission questions come over the hook, through the door; the conversation carries over
by --resume. An interrupt kills the CLI (what it logged so far stays).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any

from sophon.agent import policy
from sophon.agent.runtime import Turn, _all_events, _withdraw_approvals
from sophon.box.box import ExecEvent, ExecOutcome
from sophon.box.bwrap import WORKSPACE
from sophon.config import Settings
from sophon.errors import SophonError
from sophon.events.types import (
    Assistant,
    SessionError,
    TaskUpdate,
    Thinking,
    ToolResult,
    ToolUse,
    User,
)
from sophon.sessions.models import ApprovalPolicy
from sophon.sessions.service import SessionService
from sophon.users import Principal

log = logging.getLogger(__name__)

HOOK = "/opt/sophon/agent/claude_hook.py"
# The CLI's settings for Sophon's turns: every tool call asks the hook first (it waits
# as long as a person may take to answer).
SETTINGS = json.dumps({"hooks": {"PreToolUse": [{"matcher": "*", "hooks": [
    {"type": "command", "command": f"/usr/bin/python3 -I -S {HOOK}", "timeout": 86400}]}]}})
CC_NAMESPACE = uuid.UUID("6f1c2b7e-5d0a-4c1e-9a57-0b3c9e2d8f41")
# The hook's questions being answered, per session (see run_claude_turn's end).
_asking: dict[str, set[asyncio.Task[Any]]] = {}
OUTPUT_CAP = 256 * 2**20
TURN_SECONDS = 6 * 3600


def conversation_id(session_id: str) -> str:
    """The CLI's session id for a Sophon session: the same every turn, after restarts."""
    return str(uuid.uuid5(CC_NAMESPACE, session_id))


def argv_for(turn: Turn, model: str, system_prompt: str | None, max_turns: int | None,
             resume: bool) -> list[str]:
    cc = conversation_id(turn.session_id)
    argv = ["claude", "-p", turn.content, "--output-format", "stream-json", "--verbose",
            "--model", model, "--dangerously-skip-permissions", "--settings", SETTINGS,
            *(["--resume", cc] if resume else ["--session-id", cc])]
    if system_prompt:
        argv += ["--append-system-prompt", system_prompt]
    if max_turns is not None:
        argv += ["--max-turns", str(max_turns)]
    return argv


async def run_claude_turn(turn: Turn, sessions: SessionService, settings: Settings) -> None:
    emit = sessions.events
    sid = turn.session_id
    row = await sessions.get_row(turn.principal, sid)
    earlier = any(e.type == "user" for e in await _all_events(sessions, sid))
    await emit.append(sid, User(content=turn.content))
    await sessions.set_status(sid, "running")
    failed: str | None = None
    try:
        env = await sessions.exec_env(sid, await sessions.refresh_secrets(sid))
        argv = argv_for(turn, settings.models.resolve(row.model), row.system_prompt,
                        row.max_turns, earlier)
        async with sessions.box(row) as box:
            turn.box, turn.phase = box, "tool"  # an interrupt kills the CLI
            reader = _Lines(sessions, sid)
            outcome = None
            async for ev in box.exec(argv, timeout=TURN_SECONDS, env=env, cwd=WORKSPACE,
                                     output_cap=OUTPUT_CAP):
                if isinstance(ev, ExecEvent):
                    await reader.feed(ev.stream, ev.data)
                elif isinstance(ev, ExecOutcome):
                    outcome = ev
            await reader.flush()
        if turn.interrupted:
            return
        failed = reader.failure(outcome)
        if failed:
            await emit.append(sid, SessionError(code="claude_code", message=failed))
        elif reader.max_turns:
            failed = None
            await emit.append(sid, SessionError(
                code="max_turns", message=f"the turn reached max_turns ({row.max_turns}) and "
                "was stopped; send a message to continue"))
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
        turn.box = None
        if turn.interrupted:
            with contextlib.suppress(Exception):
                await asyncio.shield(_withdraw_approvals(turn, sessions))
        # A question the hook asked is answered (or withdrawn) before the turn's status
        # is: the answer sets "running", which must not come after this turn's "idle".
        asking = _asking.get(sid)
        if asking:
            await asyncio.wait(set(asking), timeout=5)
        status, detail = ("error", failed) if failed else (
            "idle", "interrupted by the user" if turn.interrupted else None)
        with contextlib.suppress(Exception):
            await asyncio.shield(sessions.set_status(sid, status, detail))


class _Lines:
    """The CLI's stream-json output, a line at a time, as Sophon's events."""

    def __init__(self, sessions: SessionService, sid: str) -> None:
        self.sessions, self.sid = sessions, sid
        self.buffer = ""
        self.stderr: list[str] = []
        self.result: dict[str, Any] | None = None
        self.max_turns = False
        self.tasks: dict[int, tuple[str, str]] = {}  # the task list as last logged

    async def feed(self, stream: str, data: str) -> None:
        if stream == "stderr":
            self.stderr.append(data)
            return
        self.buffer += data
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            await self._line(line)

    async def flush(self) -> None:
        if self.buffer.strip():
            await self._line(self.buffer)
        self.buffer = ""

    async def _line(self, line: str) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            return
        if not isinstance(msg, dict):
            return
        emit = self.sessions.events
        kind = msg.get("type")
        content = (msg.get("message") or {}).get("content")
        if kind == "assistant" and isinstance(content, list):
            for block in content:
                if block.get("type") == "text" and block.get("text"):
                    await emit.append(self.sid, Assistant(text=block["text"]))
                elif block.get("type") == "thinking":
                    await emit.append(self.sid, Thinking(text=block.get("thinking", ""),
                                                         signature=block.get("signature")))
                elif block.get("type") == "tool_use":
                    await emit.append(self.sid, ToolUse(
                        tool_use_id=str(block.get("id")), tool=str(block.get("name")),
                        input=block.get("input") or {}))
                    if block.get("name") == "TodoWrite":
                        await self._todos(block.get("input") or {})
        elif kind == "user" and isinstance(content, list):
            for block in content:
                if block.get("type") == "tool_result":
                    await emit.append(self.sid, ToolResult(
                        tool_use_id=str(block.get("tool_use_id")),
                        content=_text(block.get("content")),
                        is_error=bool(block.get("is_error"))))
        elif kind == "result":
            self.result = msg
            self.max_turns = msg.get("subtype") == "error_max_turns"

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

    def failure(self, outcome: ExecOutcome | None) -> str | None:
        """Why the turn failed, in a sentence, or None."""
        if self.result is not None:
            if self.result.get("is_error") and not self.max_turns:
                return f"Claude Code ended with an error: {_text(self.result.get('result'))}"
            return None
        tail = "".join(self.stderr).strip()[-500:]
        if outcome is not None and outcome.timed_out:
            return "Claude Code did not finish the turn in time and was stopped"
        code = outcome.exit_code if outcome is not None else "unknown"
        return f"Claude Code exited ({code}) without a result: {tail or 'no output'}"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return "" if content is None else str(content)


async def approve_tool(sessions: SessionService, settings: Settings, session_id: str,
                       user_id: str, tool: str, tool_input: dict[str, Any]) -> dict[str, Any]:
    """The hook's question: may the CLI in the session's box run this tool call? Answered
    by the session's approval policy, as for the native runtime."""
    owner = Principal(user_id=user_id, name="")
    row = await sessions.get_row(owner, session_id)
    task = asyncio.current_task()
    assert task is not None
    _asking.setdefault(session_id, set()).add(task)
    try:
        verdict = await policy.authorize(sessions, session_id,
                                         ApprovalPolicy.model_validate(row.approval), tool,
                                         tool_input, settings.models.approval_webhook_timeout,
                                         owner)
    finally:
        _asking[session_id].discard(task)
        if not _asking[session_id]:
            del _asking[session_id]
    return {"decision": "allow" if verdict.allowed else "deny",
            "reason": verdict.reason or ("" if verdict.allowed else
                                         f"the session's approval policy denies {tool}")}
