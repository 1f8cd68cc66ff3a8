"""The model gateway: the only way to the provider, and the meter on every call.

The provider key stays here. The native runtime calls ``stream``; a runtime inside a
box calls the Anthropic-compatible ``/v1/messages`` route with a per-session token
(see ``forward``). Both are metered per call, session and user, and both refuse a call
that would pass a budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sophon import metrics
from sophon.config import ModelSettings
from sophon.errors import BudgetExceeded, ProviderNotConfigured, Unauthorized
from sophon.events.log import EventLog
from sophon.events.types import Usage
from sophon.gateway.messages import ANTHROPIC_VERSION, Event, merge_usage, stream_message
from sophon.store.owned import owned
from sophon.store.tables import SessionRow, UsageRecord
from sophon.users import Principal

DEFAULT_BASE_URL = "https://api.anthropic.com"
# A box's own token (its ANTHROPIC_AUTH_TOKEN): the session id and a MAC over it, so it
# needs no row, is the same after every restart, and dies with its session.
BOX_TOKEN_PREFIX = "sk-sophon-box-"


@dataclass(frozen=True)
class Caller:
    """Who a gateway call is from: a session (its row: budget, totals, events) or an
    execution box (a thread's or a one-off's: metered under its id, the user's budget)."""

    owner_id: str
    user_id: str
    row: SessionRow | None = None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _estimate_input_tokens(params: dict[str, Any]) -> int:
    """A cheap upper-ish estimate (4 characters a token) used only for budget checks."""
    size = len(json.dumps(params.get("messages", []))) + len(str(params.get("system") or ""))
    size += len(json.dumps(params.get("tools", [])))
    return size // 4


class Gateway:
    def __init__(self, models: ModelSettings, db: async_sessionmaker[AsyncSession],
                 events: EventLog, token_key: bytes | None = None) -> None:
        self.models = models
        self._token_key = hmac.new(token_key or secrets.token_bytes(32),
                                   b"sophon gateway box token", hashlib.sha256).digest()
        self._db = db
        self._events = events
        self._http: httpx.AsyncClient | None = None
        self._recording: set[asyncio.Task[Any]] = set()
        self._unrecorded: dict[str, float] = {}  # cost of proxied calls being recorded
        # Set by sophon.services: an execution box's user (box/manager.py), and the key
        # of a caller's own anthropic connector, which its calls use instead of the
        # server's (egress/service.py).
        self.box_owner: Callable[[str], str | None] = lambda box_id: None
        self.connector_key: Callable[[Caller], Awaitable[str | None]] | None = None

    @property
    def configured(self) -> bool:
        return bool(self.models.anthropic_api_key)

    def _require_key(self) -> str:
        if not self.models.anthropic_api_key:
            raise ProviderNotConfigured(
                "no model provider is configured: set ANTHROPIC_API_KEY (and "
                "ANTHROPIC_BASE_URL for another Anthropic-compatible endpoint) in the "
                "server's environment and restart it")
        return self.models.anthropic_api_key

    async def key_for(self, caller: Caller) -> str:
        """The key the caller's calls through the gateway use: its own anthropic
        connector's, else the server's; ProviderNotConfigured if neither exists."""
        own = await self.connector_key(caller) if self.connector_key is not None else None
        return own or self._require_key()

    def require_key(self) -> None:
        """ProviderNotConfigured unless the server has a key (the native runtime's)."""
        self._require_key()

    async def stream(self, params: dict[str, Any]) -> AsyncIterator[Event]:
        """One Messages API call of the native runtime with the server's key, streamed
        (gateway/messages.py); metered by the caller, which knows the session."""
        key = self._require_key()
        async for event in stream_message(self._client(), self.models.anthropic_base_url
                                          or DEFAULT_BASE_URL, key, params):
            yield event

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10))
        return self._http

    async def close(self) -> None:
        await asyncio.gather(*self._recording, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()

    # --- money ------------------------------------------------------------------

    def cost(self, model: str, usage: dict[str, int]) -> float:
        p = self.models.price(model)
        return (usage.get("input_tokens", 0) * p.input
                + usage.get("output_tokens", 0) * p.output
                + usage.get("cache_read_input_tokens", 0) * p.cache_read
                + usage.get("cache_creation_input_tokens", 0) * p.cache_write) / 1_000_000

    async def user_tokens(self, user_id: str) -> int:
        async with self._db() as db:
            used = await db.scalar(
                select(func.coalesce(func.sum(UsageRecord.input_tokens
                                              + UsageRecord.output_tokens), 0))
                .where(UsageRecord.user_id == user_id))
        return int(used or 0)

    async def check_budget(self, row: SessionRow | Caller, model: str, params: dict[str, Any],
                           pending_cost: float = 0.0) -> None:
        """Refuse a call that would take the session (as of ``row``, fresh from the
        store, plus ``pending_cost`` not yet recorded there) or its user past a budget."""
        estimate = _estimate_input_tokens(params)
        if isinstance(row, Caller):  # an execution box's: the user's budget alone
            if row.row is None:
                return await self._check_user_budget(row.user_id, estimate)
            row = row.row
        if row.max_budget_usd is not None:
            spent = row.cost_usd + pending_cost
            next_cost = self.cost(model, {"input_tokens": estimate})
            if spent + next_cost > row.max_budget_usd:
                raise BudgetExceeded(
                    f"the session's budget of ${row.max_budget_usd:.2f} is spent "
                    f"(${spent:.4f} so far; the next call would cost about "
                    f"${next_cost:.4f}); raise max_budget_usd to continue")
        await self._check_user_budget(row.user_id, estimate)

    async def _check_user_budget(self, user_id: str, estimate: int) -> None:
        budget = self.models.user_token_budget
        if budget:
            used = await self.user_tokens(user_id)
            if used + estimate > budget:
                raise BudgetExceeded(
                    f"your token budget of {budget:,} tokens is spent ({used:,} used)")

    async def record(self, session_id: str, model: str, usage: dict[str, int]) -> Any:
        """Meter one call: a usage record, the session's totals, and a ``usage`` event."""
        cost = self.cost(model, usage)
        for kind, key in (("input", "input_tokens"), ("output", "output_tokens"),
                          ("cache_read", "cache_read_input_tokens"),
                          ("cache_write", "cache_creation_input_tokens")):
            metrics.gateway_tokens.labels(model, kind).inc(usage.get(key, 0))
        metrics.gateway_cost.labels(model).inc(cost)
        async with self._db() as db:
            user_id = await db.scalar(select(SessionRow.user_id)
                                      .where(SessionRow.id == session_id))
            if user_id is None:
                owner = self.box_owner(session_id)  # an execution box's call
                if owner is not None:
                    db.add(_record_row(owner, session_id, model, usage, cost))
                    await db.commit()
                return None
            db.add(_record_row(user_id, session_id, model, usage, cost))
            await db.execute(update(SessionRow).where(SessionRow.id == session_id).values(
                input_tokens=SessionRow.input_tokens + usage.get("input_tokens", 0),
                output_tokens=SessionRow.output_tokens + usage.get("output_tokens", 0),
                cost_usd=SessionRow.cost_usd + cost))
            await db.commit()
        return await self._events.append(session_id, Usage(
            model=model, input_tokens=usage.get("input_tokens", 0),
            output_tokens=usage.get("output_tokens", 0),
            cache_read_tokens=usage.get("cache_read_input_tokens", 0),
            cache_write_tokens=usage.get("cache_creation_input_tokens", 0),
            cost_usd=round(cost, 8)))

    async def usage_series(self, principal: Principal,
                           session_id: str) -> list[dict[str, Any]]:
        """Every metered call of the owner's session, with running totals."""
        async with self._db() as db:
            await owned(db, SessionRow, principal.user_id, session_id, what="session")
            rows = (await db.execute(
                select(UsageRecord).where(UsageRecord.session_id == session_id)
                .order_by(UsageRecord.id))).scalars().all()
        out, total_in, total_out, total_cost = [], 0, 0, 0.0
        total_read = total_write = 0
        for r in rows:
            total_in += r.input_tokens
            total_out += r.output_tokens
            total_read += r.cache_read_tokens
            total_write += r.cache_write_tokens
            total_cost += r.cost_usd
            ts = r.ts if r.ts.tzinfo else r.ts.replace(tzinfo=UTC)
            out.append({"ts": ts.isoformat(), "model": r.model,
                        "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
                        "cache_read_tokens": r.cache_read_tokens,
                        "cache_write_tokens": r.cache_write_tokens,
                        "cost_usd": r.cost_usd, "cumulative_input_tokens": total_in,
                        "cumulative_output_tokens": total_out,
                        "cumulative_cache_read_tokens": total_read,
                        "cumulative_cache_write_tokens": total_write,
                        "cumulative_cost_usd": round(total_cost, 8)})
        return out

    # --- per-session tokens for runtimes inside boxes ----------------------------

    async def issue_token(self, principal: Principal, session_id: str) -> str:
        token = "sk-sophon-session-" + secrets.token_urlsafe(32)
        async with self._db() as db:
            await owned(db, SessionRow, principal.user_id, session_id, what="session")
            await db.execute(update(SessionRow).where(SessionRow.id == session_id)
                             .values(gateway_token_hash=token_hash(token)))
            await db.commit()
        return token

    def box_token(self, session_id: str) -> str:
        """The token every exec in the session's box gets, for the gateway alone."""
        mac = hmac.new(self._token_key, session_id.encode(), hashlib.sha256).hexdigest()
        return f"{BOX_TOKEN_PREFIX}{session_id}-{mac[:40]}"

    async def caller_for_token(self, token: str | None) -> Caller:
        """The session or execution box a token was given to (a box's token names its
        owner and is checked by its MAC; an issued session token by its hash)."""
        if not token:
            raise Unauthorized("missing session token (x-api-key)")
        if token.startswith(BOX_TOKEN_PREFIX):
            owner_id = token[len(BOX_TOKEN_PREFIX):].rpartition("-")[0]
            if not hmac.compare_digest(self.box_token(owner_id), token):
                raise Unauthorized("invalid session token")
            if not owner_id.startswith("ses_"):
                user_id = self.box_owner(owner_id)
                if user_id is None:  # the box is gone, and its token with it
                    raise Unauthorized("invalid session token")
                return Caller(owner_id, user_id)
        row = await self.session_for_token(token)
        return Caller(row.id, row.user_id, row)

    async def session_for_token(self, token: str | None) -> SessionRow:
        if not token:
            raise Unauthorized("missing session token (x-api-key)")
        async with self._db() as db:
            if token.startswith(BOX_TOKEN_PREFIX):
                session_id = token[len(BOX_TOKEN_PREFIX):].rpartition("-")[0]
                ok = hmac.compare_digest(self.box_token(session_id), token)
                row = await db.get(SessionRow, session_id) if ok else None
            else:
                row = (await db.execute(select(SessionRow).where(
                    SessionRow.gateway_token_hash == token_hash(token)))).scalar_one_or_none()
        if row is None:
            raise Unauthorized("invalid session token")
        return row

    async def forward(self, caller: Caller, body: dict[str, Any],
                      headers: dict[str, str]) -> tuple[int, dict[str, str],
                                                        AsyncIterator[bytes]]:
        """Pass a Messages API call through to the provider with the real key (the
        caller's own anthropic connector's, or the server's), metering what comes back.
        Returns status, headers and the body as it streams."""
        key = await self.key_for(caller)
        default_model = caller.row.model if caller.row is not None else "sonnet"
        model = self.models.resolve(str(body.get("model", default_model)))
        body = {**body, "model": model}
        # The cost of calls still being recorded, taken before the session is read again:
        # a record that lands in between is counted twice, never missed.
        pending = self._unrecorded.get(caller.owner_id, 0.0)
        if caller.row is not None:
            async with self._db() as db:
                row = await db.get(SessionRow, caller.owner_id) or caller.row
            await self.check_budget(row, model, body, pending)
        else:
            await self.check_budget(caller, model, body, pending)
        base = (self.models.anthropic_base_url or DEFAULT_BASE_URL).rstrip("/")
        # identity: the body is relayed byte for byte without its content-encoding
        # header, and read here for the usage.
        out_headers = {"x-api-key": key, "content-type": "application/json",
                       "accept-encoding": "identity",
                       "anthropic-version": headers.get("anthropic-version", ANTHROPIC_VERSION)}
        if "anthropic-beta" in headers:
            out_headers["anthropic-beta"] = headers["anthropic-beta"]
        request = self._client().build_request("POST", f"{base}/v1/messages", json=body,
                                           headers=out_headers)
        response = await self._client().send(request, stream=True)
        media = response.headers.get("content-type", "application/json")

        async def relay() -> AsyncIterator[bytes]:
            usage: dict[str, int] = {}
            buffer = b""
            try:
                async for chunk in response.aiter_raw():
                    yield chunk
                    if response.status_code == 200:
                        buffer += chunk
                        buffer = _scan_usage(buffer, usage, media)
                if response.status_code == 200 and "json" in media:
                    with contextlib.suppress(ValueError, AttributeError):
                        merge_usage(usage, json.loads(buffer or b"{}").get("usage") or {})
            finally:
                await response.aclose()
                if usage:  # metered after the client has its last byte, not before
                    self._meter_later(caller.owner_id, model, usage)

        return response.status_code, {"content-type": media}, relay()

    def _meter_later(self, session_id: str, model: str, usage: dict[str, int]) -> None:
        cost = self.cost(model, usage)
        self._unrecorded[session_id] = self._unrecorded.get(session_id, 0.0) + cost
        task = asyncio.create_task(self.record(session_id, model, usage))
        self._recording.add(task)

        def done(task: asyncio.Task[Any]) -> None:
            self._recording.discard(task)
            left = self._unrecorded.get(session_id, 0.0) - cost
            if left > 1e-12:
                self._unrecorded[session_id] = left
            else:
                self._unrecorded.pop(session_id, None)

        task.add_done_callback(done)


def _record_row(user_id: str, owner_id: str, model: str, usage: dict[str, int],
                cost: float) -> UsageRecord:
    return UsageRecord(
        user_id=user_id, session_id=owner_id, ts=datetime.now(UTC), model=model,
        input_tokens=usage.get("input_tokens", 0), output_tokens=usage.get("output_tokens", 0),
        cache_read_tokens=usage.get("cache_read_input_tokens", 0),
        cache_write_tokens=usage.get("cache_creation_input_tokens", 0), cost_usd=cost)


def _scan_usage(buffer: bytes, usage: dict[str, int], media: str) -> bytes:
    """Pick usage out of whole SSE frames; return what is left of the buffer."""
    if "event-stream" not in media:
        return buffer
    *frames, rest = buffer.split(b"\n\n")
    for frame in frames:
        for line in frame.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            try:
                data = json.loads(line[5:])
            except ValueError:
                continue
            if data.get("type") == "message_start":
                merge_usage(usage, data.get("message", {}).get("usage") or {})
            elif data.get("type") == "message_delta":
                merge_usage(usage, data.get("usage") or {})
    return rest
