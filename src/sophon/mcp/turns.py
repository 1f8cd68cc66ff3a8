"""What a calling agent needs to know of a turn: how it ended, Claude's final text, the
files it changed, what it cost. Read from the session's events, which are the truth
(a server restart loses no turn's outcome: it is in the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, Field

from sophon.events.log import Stored


class FileChanged(BaseModel):
    path: str
    change: str
    added: int = Field(0, description="Lines added (0 for a binary or a large diff)")
    removed: int = 0


class TurnOutcome(BaseModel):
    session_id: str
    status: str = Field(description="done, failed, interrupted, waiting_approval (a tool "
                                    "call waits: answer it with claude_code_approve), or "
                                    "running (wait_seconds passed: call claude_code_wait)")
    text: str = Field("", description="Claude's last message in this turn")
    error: str | None = None
    files_changed: list[FileChanged] = Field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    pending_approvals: list[dict[str, Any]] = Field(default_factory=list)
    resume_after_seq: int = Field(0, description="Where this turn's events begin: give it "
                                                 "to claude_code_wait to go on waiting")
    last_seq: int = 0


def _diff_counts(diff: str | None) -> tuple[int, int]:
    added = removed = 0
    for line in (diff or "").splitlines():
        if line.startswith("+") and not line.startswith("+++"):
            added += 1
        elif line.startswith("-") and not line.startswith("---"):
            removed += 1
    return added, removed


def summarize(session_id: str, user_seq: int, events: list[Stored],
              pending: list[dict[str, Any]]) -> TurnOutcome:
    """The outcome of the turn whose message came after ``user_seq``, from the events
    after that (in order); ``running`` unless a status after the message ended it."""
    out = TurnOutcome(session_id=session_id, status="running", resume_after_seq=user_seq)
    files: dict[str, FileChanged] = {}
    if events:
        out.last_seq = events[-1].seq
    for stored in _turn(events):
        ev = stored.event()
        kind = ev.type
        if kind == "assistant":
            out.text = ev.text
        elif kind == "file_change":
            added, removed = _diff_counts(ev.diff)
            seen = files.get(ev.path)
            if seen is None:
                files[ev.path] = FileChanged(path=ev.path, change=ev.change, added=added,
                                             removed=removed)
            else:
                seen.added += added
                seen.removed += removed
                seen.change = "created" if seen.change == "created" and \
                    ev.change != "deleted" else ev.change
        elif kind == "usage":
            out.input_tokens += ev.input_tokens
            out.output_tokens += ev.output_tokens
            out.cost_usd += ev.cost_usd
        elif kind == "session_error":
            out.error = f"{ev.code}: {ev.message}"
        elif kind == "status":
            if ev.status in ("idle", "error"):
                interrupted = (ev.detail or "").startswith("interrupted")
                out.status = ("interrupted" if interrupted else
                              "failed" if ev.status == "error" or out.error else "done")
                break
            out.status = "waiting_approval" if ev.status == "waiting_approval" else "running"
    out.files_changed = list(files.values())
    if out.status in ("running", "waiting_approval"):
        out.pending_approvals = pending
        if pending:
            out.status = "waiting_approval"
    out.cost_usd = round(out.cost_usd, 6)
    return out


def _turn(events: list[Stored]) -> list[Stored]:
    """The events from the turn's user message on (statuses before it, of a wake or an
    earlier turn, are not this turn's)."""
    for i, stored in enumerate(events):
        if stored.type == "user":
            return events[i:]
    return []


def ended(events: list[Stored]) -> bool:
    return any(s.type == "status" and s.event().status in ("idle", "error")
               for s in _turn(events))


# A turn quiet this long (a long command, a slow model) still tells the caller it is
# alive: clients that reset their call timeout on progress then keep waiting.
QUIET_PROGRESS_SECONDS = 10.0


async def wait_for_turn(follow: Callable[[int], Any], after: int, wait_seconds: float, *,
                        started: bool,
                        progress: Callable[[int, str], Awaitable[None]] | None = None,
                        stop_at_approval: bool = True,
                        quiet: float = QUIET_PROGRESS_SECONDS) -> list[Stored]:
    """The events after ``after`` up to the status that ends the turn (once its message
    is seen, or ``started``) or asks for an approval, or as many as came within
    ``wait_seconds``. ``progress`` is told of each tool call as it starts, and after
    each ``quiet`` seconds without one (its count only ever grows, as MCP asks)."""
    got: list[Stored] = []
    told = 0
    deadline = time.monotonic() + wait_seconds
    quiet_since = time.monotonic()
    stream = follow(after)
    # The next batch, kept across quiet spells: cancelling a generator's anext would
    # end the generator.
    next_batch: asyncio.Future[Any] | None = None
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return got
            if progress is not None and time.monotonic() - quiet_since >= quiet:
                # Checked on every pass: a turn printing tool output all along sends
                # events, but no tool call, and is still said to be alive.
                told += 1
                await progress(told, "still working")
                quiet_since = time.monotonic()
            if next_batch is None:
                next_batch = asyncio.ensure_future(anext(stream))
            until_told = quiet - (time.monotonic() - quiet_since)
            done, _ = await asyncio.wait({next_batch}, timeout=max(0.0, min(left, until_told)))
            if not done:
                continue
            arrived, next_batch = next_batch, None
            try:
                batch = arrived.result()
            except StopAsyncIteration:
                return got
            for stored in batch or []:
                got.append(stored)
                started = started or stored.type == "user"
                if stored.type == "tool_use" and progress is not None:
                    told += 1
                    await progress(told, f"tool: {stored.event().tool}")
                    quiet_since = time.monotonic()
                ends = ("idle", "error", "waiting_approval") if stop_at_approval else \
                    ("idle", "error")
                if started and stored.type == "status" and stored.event().status in ends:
                    return got  # ended, or the caller answers and waits again
    finally:
        if next_batch is not None:
            next_batch.cancel()
            # (an error of the follow's last read is not the caller's: it has its answer)
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
                await next_batch
        await stream.aclose()
