"""Turns: one at a time per session, queued on request, interruptible."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator

from sophon import metrics
from sophon.agent import history
from sophon.agent.claude_code import run_claude_turn
from sophon.agent.claude_process import ClaudeProcesses, seeded_transcript, transcript_path
from sophon.agent.runtime import Turn, _all_events, run_turn
from sophon.box.bwrap import HOME
from sophon.config import Settings
from sophon.errors import BadRequest, TurnBusy
from sophon.gateway.service import Caller, Gateway
from sophon.sessions.checkpoints import Checkpoints
from sophon.sessions.service import SessionService
from sophon.store.tables import SessionRow
from sophon.users import Principal

log = logging.getLogger(__name__)

CANCEL_TRIES = 20  # an interrupted tool has this many
CANCEL_INTERVAL = 0.25  # seconds each to return before the turn is cancelled outright


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


class AgentService:
    def __init__(self, sessions: SessionService, gateway: Gateway, settings: Settings,
                 checkpoints: Checkpoints | None = None) -> None:
        self.sessions = sessions
        self.gateway = gateway
        self.settings = settings
        self.checkpoints = checkpoints
        self._turns: dict[str, Turn] = {}
        self._queued: dict[str, deque[Turn]] = {}
        self._held: dict[str, str] = {}  # session -> what keeps turns from starting
        self.claude = ClaudeProcesses()  # the claude-code sessions' CLIs

    def running(self, session_id: str) -> Turn | None:
        return self._turns.get(session_id)

    @contextlib.contextmanager
    def hold(self, session_id: str, what: str) -> Iterator[None]:
        """No turn starts in the session while this is held (a rewind): a 409 now if one
        runs, and a message sent meanwhile is a 409 saying why."""
        if session_id in self._turns:
            raise TurnBusy(f"a turn is running in this session; wait for it to end or "
                           f"interrupt it, then start {what} again")
        if session_id in self._held:
            raise TurnBusy(f"{self._held[session_id]} is in progress in this session")
        self._held[session_id] = what
        try:
            yield
        finally:
            del self._held[session_id]

    async def send(self, principal: Principal, session_id: str, content: str,
                   queue: bool = False) -> dict[str, object]:
        row = await self.sessions.get_row(principal, session_id)  # 404 for a stranger
        if self.sessions.ownership is not None:  # its turns run where its box does
            await self.sessions.ownership.hold("session", session_id)
        # No model to answer: said once, here, rather than a message logged and a turn
        # that fails. The CLI runtime's calls may use the user's own connector's key.
        if row.runtime == "claude-code":
            await self.gateway.key_for(Caller(row.id, row.user_id, row))
        else:
            self.gateway.require_key()
        turn = Turn(session_id, principal, content)
        if session_id in self._held:
            raise TurnBusy(f"{self._held[session_id]} is in progress in this session; send "
                           "the message once it is done")
        if session_id in self._turns:
            if not queue:
                raise TurnBusy("a turn is already running in this session; wait for it, "
                               "interrupt it, or send with \"queue\": true")
            pending = self._queued.setdefault(session_id, deque())
            pending.append(turn)
            return {"queued": True, "position": len(pending)}
        # A sleeping session's box must fit the user's limit now: a 429 for the message,
        # rather than a turn that starts and fails to wake it.
        self.sessions.boxes.check_room_for(row.box_id)  # the server's room: a 503 now
        await self.sessions.quotas.admit_box(principal.user_id, row.box_id)
        self._start(turn)
        return {"queued": False}

    async def _with_reviews(self, session_id: str, content: str) -> str:
        """The message, after what the owner's reviews since the last one said (rejected
        hunks, line comments): the agent hears of them with it, whatever the runtime."""
        since = await self.sessions.events.last_of_type(session_id, "user")
        reviews = [r for r in await self.sessions.events.read_type(session_id, "review")
                   if r.seq > since]
        return f"{history.review_note(reviews)}\n\n{content}" if reviews else content

    def _start(self, turn: Turn) -> None:
        self._turns[turn.session_id] = turn
        turn.task = asyncio.create_task(self._run(turn), name=f"turn-{turn.session_id}")

    async def _run(self, turn: Turn) -> None:
        started, outcome = time.monotonic(), "ended"
        try:
            row = await self.sessions.get_row(turn.principal, turn.session_id)
            # As the turn starts, not when it was queued: of two messages queued after a
            # review, the first carries it.
            turn.content = await self._with_reviews(turn.session_id, turn.content)
            if row.runtime == "claude-code":
                await run_claude_turn(turn, self.sessions, self.settings, self.claude,
                                      self.checkpoints)
            else:
                await run_turn(turn, self.sessions, self.gateway, self.settings,
                               self.checkpoints)
        except asyncio.CancelledError:
            outcome = "cancelled"
        except Exception:
            outcome = "failed"
            log.exception("turn in session %s failed", turn.session_id)
        finally:
            metrics.turns.labels("interrupted" if turn.interrupted else outcome).observe(
                time.monotonic() - started)
            if self._turns.get(turn.session_id) is turn:
                del self._turns[turn.session_id]
            pending = self._queued.get(turn.session_id)
            if pending and not turn.interrupted:
                self._start(pending.popleft())

    async def switch_runtime(self, principal: Principal, session_id: str,
                             runtime: str) -> None:
        """Run the session's next turns with the other runtime, the conversation carried
        over: the native runtime rebuilds it from the events, which both runtimes write
        alike; for the CLI it is written into the box as a transcript it resumes."""
        row = await self.sessions.get_row(principal, session_id)
        if row.runtime == runtime:
            return
        if session_id in self._turns:
            raise TurnBusy("a turn is running in this session; wait for it to end or "
                           "interrupt it, then switch the runtime")
        if runtime == "claude-code":
            missing = self.sessions.claude_code_missing()
            if missing:
                raise BadRequest(f"the claude-code runtime is not available on this "
                                 f"server: {missing}")
            await self.reseed(row)
        else:
            await self.claude.end(session_id)
        await self.sessions.update(principal, session_id, {"runtime": runtime})

    async def imported(self, principal: Principal, session_id: str) -> None:
        """After an import: a claude-code session's CLI resumes the conversation from a
        transcript rebuilt from the events (its own files were not in the export)."""
        row = await self.sessions.get_row(principal, session_id)
        if row.runtime == "claude-code":
            await self.reseed(row)

    async def reseed(self, row: SessionRow) -> None:
        """The CLI's transcript written from the events (the conversation as it now is),
        for its next start to resume."""
        messages = history.rebuild(await _all_events(self.sessions, row.id))
        if messages:
            data = seeded_transcript(row.id, self.settings.models.resolve(row.model), messages)
            async with self.sessions.box(row) as box:
                await box.put_file(HOME, transcript_path(row.id), _once(data))

    async def interrupt(self, principal: Principal, session_id: str) -> bool:
        """Stop the running turn now: commands are killed (their output so far is kept),
        a model reply being streamed is cut where it is. Queued messages are dropped."""
        await self.sessions.get_row(principal, session_id)
        if self.sessions.ownership is not None:
            await self.sessions.ownership.hold("session", session_id)
        self._queued.pop(session_id, None)
        turn = self._turns.get(session_id)
        if turn is None or turn.task is None:
            return False
        turn.interrupted = True
        if turn.interrupter is not None:
            # The runtime ends its turn itself (a deadline later at most).
            with contextlib.suppress(Exception):
                await turn.interrupter()
        elif turn.phase == "tool" and turn.box is not None:
            # The tool returns with what it had, and the loop ends. A command that was
            # only starting is not in flight yet: ask again until the turn ends, and if
            # it still runs, stop it outright (its output is then lost, not the turn).
            for _ in range(CANCEL_TRIES):
                box = turn.box
                if box is None:
                    break
                await box.cancel_all()
                done, _ = await asyncio.wait({turn.task}, timeout=CANCEL_INTERVAL)
                if done:
                    break
            else:
                turn.task.cancel()
        else:
            turn.task.cancel()  # streaming, or waiting for an approval: stop right there
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(asyncio.shield(turn.task), 15)
        return True

    async def let_go(self, session_id: str) -> None:
        """Another node runs the session now (it reported this node's turn as cut off):
        the turn here stops without a word, and what was queued behind it is dropped."""
        self._queued.pop(session_id, None)
        turn = self._turns.get(session_id)
        if turn is not None and turn.task is not None:
            turn.task.cancel()
            await asyncio.gather(turn.task, return_exceptions=True)

    async def close(self) -> None:
        for turn in list(self._turns.values()):
            if turn.task is not None:
                turn.task.cancel()
        await asyncio.gather(*(t.task for t in self._turns.values() if t.task),
                             return_exceptions=True)
        await self.claude.close()
