"""The egress door wired into the server: its grants, what boxes are told, refusals as
events, and the meter on every box's traffic."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sophon.box.manager import BoxManager
from sophon.config import Settings
from sophon.egress.connectors import ConnectorService
from sophon.egress.door import GATEWAY_HOST, Denial, Door, Grant, Tally
from sophon.egress.grants import AdminRules, Grants
from sophon.events.log import EventLog
from sophon.events.types import NetworkDenied
from sophon.sessions.models import NetworkSettings
from sophon.store.tables import NetworkUsage

log = logging.getLogger(__name__)

FLUSH_SECONDS = 2.0
LOOPBACK = "localhost,127.0.0.1,::1"


def proxy_env(port: int) -> dict[str, str]:
    """What every exec is told so that ordinary tools go through the door: curl, wget,
    pip, git and Python read the *_proxy variables (curl only the lower-case
    http_proxy), npm its own, Node's fetch NODE_USE_ENV_PROXY. The box's own loopback
    is not proxied."""
    url = f"http://127.0.0.1:{port}"
    return {"HTTP_PROXY": url, "http_proxy": url, "HTTPS_PROXY": url, "https_proxy": url,
            "NO_PROXY": LOOPBACK, "no_proxy": LOOPBACK,
            "npm_config_proxy": url, "npm_config_https_proxy": url,
            "NODE_USE_ENV_PROXY": "1"}


class Egress:
    def __init__(self, settings: Settings, db: async_sessionmaker[AsyncSession],
                 events: EventLog, connectors: ConnectorService, boxes: BoxManager,
                 box_token: Any) -> None:
        self.settings = settings
        self._db = db
        self._events = events
        self.connectors = connectors
        self._box_token = box_token  # Gateway.box_token: a session id -> its box's token
        self.rules = AdminRules(settings)
        self.grants = Grants(self.rules, db, connectors, boxes.owner_of)
        self.door = Door(settings, self.grants.for_box, self._denied)
        boxes.on_started.append(self.door.attach)
        self._proxy_env = proxy_env(settings.egress_box_port)
        self._flusher: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_loop(), name="egress-meter")

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.door.close()
        await self.flush()

    # --- what boxes are told ---------------------------------------------------------

    def execution_env(self) -> dict[str, str]:
        return dict(self._proxy_env)

    def session_env(self, session_id: str) -> dict[str, str]:
        """The proxy, and the model gateway with the session's own token: code in the box
        (the anthropic SDK, Claude Code) calls the model as the session, metered and
        budgeted, and never sees the provider key."""
        return {**self._proxy_env, "ANTHROPIC_BASE_URL": f"http://{GATEWAY_HOST}",
                "ANTHROPIC_AUTH_TOKEN": self._box_token(session_id)}

    async def check_session(self, user_id: str, network: NetworkSettings,
                            connectors: list[str]) -> None:
        """A 400 for a rule past the admin's ceiling or a connector the user lacks."""
        self.rules.check_session_rules(network.allow)
        await self.connectors.check_names(user_id, connectors)

    # --- refusals and the meter ------------------------------------------------------

    async def _denied(self, denial: Denial) -> None:
        if denial.session_id is not None:
            await self._events.append(denial.session_id, NetworkDenied(
                host=denial.host, port=denial.port, rule=denial.rule, message=denial.message))

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await self.flush()
            except Exception:
                log.exception("could not record network usage")

    async def flush(self) -> None:
        """Add what the door counted since the last flush to each owner's row."""
        tallies, self.door.tallies = self.door.tallies, {}
        if not tallies:
            return
        async with self._db() as db:
            for owner_id, t in tallies.items():
                row = await db.get(NetworkUsage, owner_id)
                if row is None:
                    row = NetworkUsage(owner_id=owner_id, user_id=t.user_id, bytes_out=0,
                                       bytes_in=0, connections=0, denied=0)
                    db.add(row)
                row.bytes_out += t.bytes_out
                row.bytes_in += t.bytes_in
                row.connections += t.connections
                row.denied += t.denied
            await db.commit()

    async def usage(self, owner_ids: list[str]) -> dict[str, dict[str, int]]:
        """Bytes out and in, connections and refusals per owner, up to this moment."""
        async with self._db() as db:
            rows = {r.owner_id: r for r in (await db.execute(
                select(NetworkUsage).where(NetworkUsage.owner_id.in_(owner_ids)))).scalars()}
        out = {}
        for owner_id in owner_ids:
            row, t = rows.get(owner_id), self.door.tallies.get(owner_id, Tally(""))
            out[owner_id] = {
                "bytes_out": (row.bytes_out if row else 0) + t.bytes_out,
                "bytes_in": (row.bytes_in if row else 0) + t.bytes_in,
                "connections": (row.connections if row else 0) + t.connections,
                "denied": (row.denied if row else 0) + t.denied}
        return out


__all__ = ["Egress", "Grant", "proxy_env"]
