"""A running tool's output as it prints: ``tool_output`` events, before its result.

Pieces that arrive within ``INTERVAL`` of the last event are joined, so a command that
floods its output makes a few events a second, not thousands; at most ``cap`` characters
are sent in all (the tool's result, as ever, carries its output once it ends). The log
redacts secrets per event, so a secret must never be split across two: an end of a
piece that could be the start of a secret waits for the next piece or the end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sophon.events.types import ToolOutput

INTERVAL = 0.1  # seconds between a tool call's events: at most ten a second


class LiveOutput:
    def __init__(self, emit: Callable[[Any], Awaitable[Any]], tool_use_id: str, cap: int,
                 secrets: tuple[str, ...] = ()) -> None:
        self.emit, self.tool_use_id = emit, tool_use_id
        self.left = cap
        self.secrets = tuple(s for s in secrets if s)
        self.pending: dict[str, str] = {"stdout": "", "stderr": ""}
        self.index = 0
        self.last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def feed(self, stream: str, data: str) -> None:
        if self.left <= 0 or stream not in self.pending:
            return
        self.pending[stream] += data
        wait = self.last + INTERVAL - time.monotonic()
        if wait <= 0:
            await self._flush(final=False)
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(wait, self._later)

    def _later(self) -> None:
        self._timer = None
        self._flushing = asyncio.ensure_future(self._flush(final=False))

    async def close(self) -> None:
        """Send what is left: the command has ended."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self._flush(final=True)

    async def _flush(self, final: bool) -> None:
        async with self._lock:  # in order, one flush at a time
            self.last = time.monotonic()
            for stream, text in self.pending.items():
                keep = 0 if final else self._unsafe_tail(text)
                piece, self.pending[stream] = text[:len(text) - keep], text[len(text) - keep:]
                piece = piece[:self.left]
                if not piece:
                    continue
                self.left -= len(piece)
                await self.emit(ToolOutput(tool_use_id=self.tool_use_id, stream=stream,  # type: ignore[arg-type]
                                           data=piece, index=self.index))
                self.index += 1

    def _unsafe_tail(self, text: str) -> int:
        """How many of the last characters could begin a secret (the rest of which may
        come next)."""
        for k in range(min(len(text), max((len(s) for s in self.secrets), default=1) - 1),
                       0, -1):
            tail = text[-k:]
            if any(s.startswith(tail) for s in self.secrets):
                return k
        return 0
