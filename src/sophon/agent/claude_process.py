"""One long-lived Claude Code CLI per running claude-code session, in the session's box.

    claude --input-format stream-json --output-format stream-json --verbose
           --include-partial-messages --permission-prompt-tool stdio ...

runs in /workspace as an exec with a standard input (box.ExecInput). Each turn writes one
``user`` line; the CLI answers with lines until its ``result``. Its questions
(``control_request`` ``can_use_tool``) come on stdout like any line, and their answers
(``control_response``) go back on stdin, as does an ``interrupt``.

The process stays up between turns and is ended when the session has been quiet for
``claude_code_keep_seconds`` (the box may then idle and sleep as any box), when its
settings change (model, system prompt, max turns, the approval rules it was started
with, the environment), or when it hangs. The next turn starts it again with
``--resume``: the conversation lives under $HOME/.claude on the box's disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sophon.agent.mcp_servers import command_of, env_of
from sophon.agent.policy import mode_for
from sophon.box.box import Box, ExecInput, ExecOutcome, stdout_lines
from sophon.box.bwrap import WORKSPACE
from sophon.errors import BoxError, BoxRequestError
from sophon.sessions.models import ApprovalPolicy

log = logging.getLogger(__name__)

CC_NAMESPACE = uuid.UUID("6f1c2b7e-5d0a-4c1e-9a57-0b3c9e2d8f41")
LIFETIME = 30 * 24 * 3600.0  # the exec's own deadline: the process is ended long before
OUTPUT_WINDOW = 1024 * 1024  # characters boxd may send ahead of the reader
STDERR_KEPT = 4096


def conversation_id(session_id: str) -> str:
    """The CLI's session id for a Sophon session: the same every turn, after restarts."""
    return str(uuid.uuid5(CC_NAMESPACE, session_id))


def transcript_path(session_id: str) -> str:
    """Where the CLI keeps a session's conversation, relative to $HOME (its project
    directory is named after the working directory, /workspace)."""
    return f".claude/projects/{WORKSPACE.replace('/', '-')}/{conversation_id(session_id)}.jsonl"


def seeded_transcript(session_id: str, model: str, messages: list[dict[str, Any]]) -> bytes:
    """A conversation the CLI resumes (``--resume``) as its own: the native runtime's
    history (agent/history.py, messages the API accepts) in the CLI's transcript lines,
    each the child of the one before."""
    cc, parent, out = conversation_id(session_id), None, []
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    for n, message in enumerate(messages):
        line_id = str(uuid.uuid5(CC_NAMESPACE, f"{cc}/{n}"))
        body: dict[str, Any] = {"role": message["role"], "content": message["content"]}
        if message["role"] == "assistant":
            uses = any(b.get("type") == "tool_use" for b in message["content"])
            body = {"id": f"msg_seed_{n}", "type": "message", **body, "model": model,
                    "stop_reason": "tool_use" if uses else "end_turn",
                    "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
        out.append({"parentUuid": parent, "isSidechain": False, "type": message["role"],
                    "message": body, "uuid": line_id, "timestamp": stamp,
                    "userType": "external", "cwd": WORKSPACE, "sessionId": cc})
        parent = line_id
    return "".join(json.dumps(line) + "\n" for line in out).encode()


def asked_tools(policy: ApprovalPolicy) -> list[str]:
    """Tools the CLI must ask about whatever it thinks of them (it runs read-only tools
    and commands such as ``cat`` without asking): those Sophon's policy does not simply
    allow. The CLI asks about the rest of what it considers risky on its own."""
    named = set(policy.tools) | {"Bash"}
    return sorted(t for t in named if mode_for(policy, t) != "allow")


def argv_for(session_id: str, model: str, system_prompt: str | None,
             max_turns: int | None, policy: ApprovalPolicy, resume: bool,
             max_budget_usd: float | None = None,
             mcp_servers: list[dict[str, Any]] | None = None) -> list[str]:
    cc = conversation_id(session_id)
    # The session's MCP servers' tools are asked about (Sophon's policy answers).
    ask = asked_tools(policy) + [f"mcp__{m['name']}" for m in mcp_servers or []]
    settings = {"permissions": {"ask": ask}}
    argv = ["claude", "--input-format", "stream-json", "--output-format", "stream-json",
            "--verbose", "--include-partial-messages", "--permission-prompt-tool", "stdio",
            "--model", model, "--settings", json.dumps(settings),
            *(["--resume", cc] if resume else ["--session-id", cc])]
    if system_prompt:
        argv += ["--append-system-prompt", system_prompt]
    if max_turns is not None:
        argv += ["--max-turns", str(max_turns)]
    if max_budget_usd is not None:  # the CLI's own stop; the gateway's counts the session
        argv += ["--max-budget-usd", f"{max_budget_usd:g}"]
    if mcp_servers:  # run by the CLI in the box, as the native runtime runs them
        argv += ["--mcp-config", json.dumps({"mcpServers": {
            m["name"]: {"type": "stdio", "command": command_of(m)[0],
                        "args": command_of(m)[1:], "env": env_of(m)}
            for m in mcp_servers}})]
    return argv


def _settings(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--resume", "--session-id"):
            skip = True
        else:
            out.append(arg)
    return out


@dataclass(frozen=True)
class Ended:
    """The CLI is gone: how it ended (its exit, or why the exec failed)."""

    outcome: ExecOutcome | None
    reason: str
    stderr: str


class ClaudeProcess:
    """The CLI running in a box: lines in (``send``), lines out (``next``)."""

    def __init__(self, box: Box, argv: list[str], env: dict[str, str]) -> None:
        self.box, self.argv, self.env = box, argv, env
        self.feed = ExecInput()
        self.lines: asyncio.Queue[dict[str, Any] | Ended] = asyncio.Queue()
        self.ended: Ended | None = None
        self._stderr = ""
        self._idle: asyncio.TimerHandle | None = None
        self._reader = asyncio.get_running_loop().create_task(
            self._read(), name=f"claude-{box.id}")

    @property
    def alive(self) -> bool:
        return self.ended is None and not self.box.stopped.is_set()

    def same(self, box: Box, argv: list[str], env: dict[str, str]) -> bool:
        """Whether this process runs with these settings (a first turn's --session-id
        and a later one's --resume name the same conversation)."""
        return (self.alive and box is self.box and env == self.env
                and _settings(argv) == _settings(self.argv))

    async def _read(self) -> None:
        outcome, reason = None, "the CLI exited"
        try:
            async for item in stdout_lines(self.box.exec(
                    self.argv, timeout=LIFETIME, env=self.env, cwd=WORKSPACE,
                    output_cap=2**62, window=OUTPUT_WINDOW, stdin=self.feed), 2**62):
                if isinstance(item, str):
                    self._line(item)
                elif isinstance(item, ExecOutcome):
                    outcome = item
                else:
                    self._stderr = (self._stderr + item.data)[-STDERR_KEPT:]
        except (BoxError, BoxRequestError) as exc:
            reason = f"the box stopped under the CLI: {exc}"
        except asyncio.CancelledError:
            reason = "the CLI was stopped"
            raise
        finally:
            self.ended = Ended(outcome, reason, self._stderr.strip())
            self.lines.put_nowait(self.ended)

    def _line(self, line: str) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            return
        if isinstance(msg, dict):
            self.lines.put_nowait(msg)

    async def send(self, message: dict[str, Any]) -> None:
        """One line to the CLI; raises BoxError or BoxRequestError if it is gone."""
        await self.feed.write(json.dumps(message) + "\n")

    async def say(self, text: str) -> None:
        await self.send({"type": "user", "message": {"role": "user", "content": text},
                         "parent_tool_use_id": None})

    async def interrupt(self) -> None:
        await self.send({"type": "control_request", "request_id": "int_" + uuid.uuid4().hex,
                         "request": {"subtype": "interrupt"}})

    def keep_for(self, seconds: float, forget: Any) -> None:
        """End the process after ``seconds`` with no turn (see ``hold``)."""
        self.hold()
        self._idle = asyncio.get_running_loop().call_later(
            seconds, lambda: asyncio.ensure_future(self._retire(forget)))

    def hold(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    async def _retire(self, forget: Any) -> None:
        forget(self)
        await self.stop()

    async def stop(self, grace: float = 5.0) -> None:
        """Close its input (the CLI exits at EOF); kill it if it has not after ``grace``."""
        self.hold()
        if self.alive:
            with contextlib.suppress(BoxError, BoxRequestError):
                await asyncio.wait_for(self.feed.close(), grace)
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._reader), grace)
        if not self._reader.done():  # leaving the windowed exec cancels it in the box
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


class ClaudeProcesses:
    """The running CLIs, by session."""

    def __init__(self) -> None:
        self._by_session: dict[str, ClaudeProcess] = {}

    def get(self, session_id: str) -> ClaudeProcess | None:
        return self._by_session.get(session_id)

    async def start(self, session_id: str, box: Box, argv: list[str],
                    env: dict[str, str]) -> ClaudeProcess:
        """The session's CLI with these settings: the running one, or a new one (a running
        one with other settings is ended first)."""
        current = self._by_session.get(session_id)
        if current is not None and current.same(box, argv, env):
            current.hold()
            return current
        if current is not None:
            await self.end(session_id)
        proc = self._by_session[session_id] = ClaudeProcess(box, argv, env)
        return proc

    def retire_later(self, session_id: str, seconds: float) -> None:
        proc = self._by_session.get(session_id)
        if proc is not None:
            proc.keep_for(seconds, lambda p: self._forget(session_id, p))

    def forget(self, session_id: str, proc: ClaudeProcess) -> None:
        """Drop a process that has ended."""
        self._forget(session_id, proc)

    def _forget(self, session_id: str, proc: ClaudeProcess) -> None:
        if self._by_session.get(session_id) is proc:
            del self._by_session[session_id]

    async def end(self, session_id: str) -> None:
        proc = self._by_session.pop(session_id, None)
        if proc is not None:
            await proc.stop()

    async def close(self) -> None:
        await asyncio.gather(*(self.end(sid) for sid in list(self._by_session)),
                             return_exceptions=True)

