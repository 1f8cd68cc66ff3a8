"""Approvals: a pending question to the session's owner, answered through the API.

Whoever needs an answer (the agent, later) calls ``ask`` and awaits the result; the
owner answers with ``decide``. Pending approvals are rows, so they survive a restart;
an answer that arrives after a restart is recorded even though nobody waits for it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sophon.errors import Conflict, NotFound
from sophon.events.log import EventLog
from sophon.events.types import ApprovalDecision, ApprovalRequest
from sophon.store.owned import owned
from sophon.store.tables import ApprovalRow, SessionRow
from sophon.users import Principal

StatusSetter = Callable[[str, str], Awaitable[None]]


class ApprovalService:
    def __init__(self, db: async_sessionmaker[AsyncSession], log: EventLog,
                 set_status: StatusSetter) -> None:
        self._db = db
        self._log = log
        self._set_status = set_status
        self._waiting: dict[str, asyncio.Future[ApprovalDecision]] = {}

    async def ask(self, session_id: str, tool: str, input: dict[str, Any],
                  reason: str, timeout: float | None = None,
                  on_timeout: str = "deny") -> ApprovalDecision:
        """Record a pending approval, then wait for the owner's answer (with a
        ``timeout``: at most that long, after which ``on_timeout`` answers, by
        ``timeout``)."""
        approval_id = "apr_" + secrets.token_hex(10)
        async with self._db() as db:
            db.add(ApprovalRow(id=approval_id, session_id=session_id, tool=tool, input=input,
                               reason=reason, status="pending", remember=False))
            await db.commit()
        future: asyncio.Future[ApprovalDecision] = asyncio.get_running_loop().create_future()
        self._waiting[approval_id] = future
        try:
            expires = None if timeout is None else datetime.now(UTC) + timedelta(seconds=timeout)
            await self._log.append(session_id, ApprovalRequest(
                approval_id=approval_id, tool=tool, input=input, reason=reason,
                expires_at=expires, on_timeout=on_timeout if expires else None))
            await self._set_status(session_id, "waiting_approval")
            if timeout is None:
                return await future
            try:
                return await asyncio.wait_for(asyncio.shield(future), timeout)
            except TimeoutError:
                return await self._expire(session_id, approval_id, timeout, on_timeout,
                                          future)
        finally:
            self._waiting.pop(approval_id, None)

    async def _expire(self, session_id: str, approval_id: str, timeout: float,
                      answer: str, future: asyncio.Future[ApprovalDecision]
                      ) -> ApprovalDecision:
        async with self._db() as db:
            row = await db.get(ApprovalRow, approval_id)
            if row is not None and row.status == "pending":
                row.status, row.decided_at = answer, datetime.now(UTC)
                await db.commit()
                expired = True
            else:
                expired = False
        if not expired:  # answered just now, between the timeout and this
            return await future
        event = await self._log.append(session_id, ApprovalDecision(
            approval_id=approval_id, decision=answer, by="timeout",  # type: ignore[arg-type]
            reason=f"no answer within {timeout:g} s: the session's answer on timeout is "
                   f"{answer}"))
        return event  # type: ignore[no-any-return]

    async def pending(self, principal: Principal, session_id: str) -> list[ApprovalRow]:
        """The owner's session's unanswered approvals, oldest first."""
        async with self._db() as db:
            await owned(db, SessionRow, principal.user_id, session_id, what="session")
            return list((await db.execute(
                select(ApprovalRow).where(ApprovalRow.session_id == session_id,
                                          ApprovalRow.status == "pending")
                .order_by(ApprovalRow.created_at))).scalars())

    async def decide(self, principal: Principal, session_id: str, approval_id: str,
                     decision: str, remember: bool, reason: str | None = None
                     ) -> ApprovalDecision:
        """The owner's answer to an approval of their session, recorded as by them."""
        async with self._db() as db:
            await owned(db, SessionRow, principal.user_id, session_id, what="session")
            row = await db.get(ApprovalRow, approval_id)
            if row is None or row.session_id != session_id:
                raise NotFound(f"no approval {approval_id!r} in this session")
            if row.status != "pending":
                raise Conflict(f"approval {approval_id!r} was already answered ({row.status})")
            row.status, row.remember, row.decided_at = decision, remember, datetime.now(UTC)
            await db.commit()
        event = await self._log.append(session_id, ApprovalDecision(
            approval_id=approval_id, decision=decision,  # type: ignore[arg-type]
            remember=remember, by=principal.name, reason=reason))
        # Nobody waits for an answer given after a restart: the turn it belonged to was
        # cut off at start-up, so the session's status is not this answer's to change.
        future = self._waiting.get(approval_id)
        if future is not None and not future.done():
            future.set_result(event)
        return event  # type: ignore[no-any-return]
