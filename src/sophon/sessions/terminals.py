"""A session's terminals: shells on a pty in its box (box.Box.terminal), outliving the
connections that watch them.

A terminal keeps running when its last viewer goes (a page reload, a dropped network),
for ``terminal_keep_seconds``; a viewer that comes back with its id gets the last
``SCROLLBACK`` bytes, then what follows. While a terminal runs it holds the box, so the
box does not sleep under a person typing. A session may have several.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass, field

from sophon.box.box import ExecInput
from sophon.box.bwrap import WORKSPACE
from sophon.errors import BoxError, BoxRequestError, Conflict, NotFound
from sophon.sessions.service import SessionService
from sophon.users import Principal

log = logging.getLogger(__name__)

SCROLLBACK = 64 * 1024  # bytes a viewer that attaches gets of what came before
VIEWER_QUEUE = 1024  # chunks a slow viewer may fall behind before it is let go
MAX_PER_SESSION = 8
PROMPT = r"\[\e[1;32m\]\w\[\e[0m\] \$ "  # the directory, in green: where cd left you


@dataclass
class Terminal:
    id: str
    session_id: str
    user_id: str
    keys: ExecInput = field(default_factory=ExecInput)
    scrollback: bytearray = field(default_factory=bytearray)
    viewers: set[asyncio.Queue[bytes | None]] = field(default_factory=set)
    exit_code: int | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    idle: asyncio.TimerHandle | None = None

    def attach(self) -> asyncio.Queue[bytes | None]:
        """A viewer: the scrollback first, then output as it comes; None at the end."""
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(VIEWER_QUEUE)
        if self.scrollback:
            queue.put_nowait(bytes(self.scrollback))
        if self.ended.is_set():
            queue.put_nowait(None)
        self.viewers.add(queue)
        return queue

    def _publish(self, data: bytes | None) -> None:
        if data is not None:
            self.scrollback += data
            del self.scrollback[:-SCROLLBACK]
        for queue in list(self.viewers):
            try:
                queue.put_nowait(data)
            except asyncio.QueueFull:  # too slow: let it go (it may attach again)
                self.viewers.discard(queue)
                with contextlib.suppress(asyncio.QueueFull):
                    queue.get_nowait()
                    queue.put_nowait(None)


class Terminals:
    def __init__(self, sessions: SessionService, keep_seconds: float) -> None:
        self.sessions = sessions
        self.keep_seconds = keep_seconds
        self._all: dict[str, Terminal] = {}

    async def open(self, principal: Principal, session_id: str, rows: int,
                   cols: int) -> Terminal:
        row = await self.sessions.get_row(principal, session_id)  # 404 for a stranger
        if len([t for t in self._all.values() if t.session_id == session_id]) \
                >= MAX_PER_SESSION:
            raise Conflict(f"this session has {MAX_PER_SESSION} terminals open already; "
                           "close one (exit its shell) first")
        term = Terminal("term_" + secrets.token_hex(8), session_id, principal.user_id)
        self._all[term.id] = term
        env = {**await self.sessions.exec_env(session_id,
                                              await self.sessions.refresh_secrets(session_id)),
               "TERM": "xterm-256color", "PS1": PROMPT}
        started = asyncio.get_running_loop().create_future()

        async def run() -> None:
            try:
                async with self.sessions.box(row) as box:
                    started.set_result(None)
                    async for data in box.terminal(env=env, cwd=WORKSPACE, rows=rows,
                                                   cols=cols, keys=term.keys):
                        term._publish(data)
            except (BoxError, BoxRequestError) as exc:
                if not started.done():
                    started.set_exception(exc)
                log.info("terminal %s of session %s ended: %s", term.id, session_id, exc)
            except BaseException as exc:
                if not started.done():
                    started.set_exception(exc)
                raise
            finally:
                term.ended.set()
                term._publish(None)
                self._all.pop(term.id, None)

        term.task = asyncio.create_task(run(), name=f"terminal-{term.id}")
        await started  # the box is up (a sleeping one woken), or why it is not
        return term

    def get(self, principal: Principal, session_id: str, terminal_id: str) -> Terminal:
        term = self._all.get(terminal_id)
        if term is None or term.session_id != session_id or term.user_id != principal.user_id:
            raise NotFound(f"no terminal {terminal_id!r} is running in this session (it "
                           "ended, or was never opened)")
        return term

    def detach(self, term: Terminal, queue: asyncio.Queue[bytes | None]) -> None:
        """A viewer went; the last one leaving starts the terminal's keep time."""
        term.viewers.discard(queue)
        if not term.viewers and not term.ended.is_set() and term.idle is None:
            term.idle = asyncio.get_running_loop().call_later(
                self.keep_seconds, lambda: self._end(term))

    def _end(self, term: Terminal) -> None:
        if term.task is not None and not term.viewers:
            term.task.cancel()  # leaving the pty stream ends the shell in the box

    async def close(self) -> None:
        tasks = [t.task for t in self._all.values() if t.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
