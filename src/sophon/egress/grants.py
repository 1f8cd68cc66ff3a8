"""What each box may reach: its grant, from what the box is (box/ids.py) and the store.

A session's box: its base's list, its own ``network.allow``, the hosts of its
connectors. An execution box (a thread's, a one-off's): the admin's policy for the
execution API (``SOPHON_EGRESS_EXECUTE``) plus the hosts of the user's connectors marked
``execute``. Every list is within the admin's deny rules and refused set.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sophon.box import ids
from sophon.config import Settings
from sophon.egress.connectors import ConnectorGrant, ConnectorService
from sophon.egress.door import Grant, HostCredential
from sophon.egress.intercept import Credential
from sophon.egress.policy import (
    BASE_ALLOW,
    REGISTRIES,
    HostRule,
    IPAddress,
    Policy,
    check_ceiling,
    parse_address,
    parse_rule,
)
from sophon.store.tables import SessionRow

GRANT_SECONDS = 5.0
CACHE_MAX = 10_000


class AdminRules:
    """The admin's settings, parsed once at start-up (a bad one stops the server with
    the setting's name, not the first connection)."""

    def __init__(self, settings: Settings) -> None:
        def parsed(name: str, values: list[str]) -> list[HostRule]:
            try:
                return [parse_rule(v) for v in values]
            except Exception as exc:
                raise SystemExit(f"SOPHON_{name.upper()}: {exc}") from exc

        self.ceiling = parsed("egress_ceiling", settings.egress_ceiling)
        self.deny = parsed("egress_deny", settings.egress_deny)
        try:
            self.private: frozenset[tuple[IPAddress, int]] = frozenset(
                parse_address(a) for a in settings.egress_allow_private)
        except Exception as exc:
            raise SystemExit(f"SOPHON_EGRESS_ALLOW_PRIVATE: {exc}") from exc
        self.execute = settings.egress_execute

    def check_session_rules(self, allow: list[str]) -> list[HostRule]:
        """A session's ``network.allow``, parsed, or a 400 for a rule past the ceiling."""
        rules = [parse_rule(a) for a in allow]
        check_ceiling(rules, self.ceiling, self.private)
        return rules


class Placeholders:
    """What a box holds instead of a connector's value: made from the owner (session or
    thread) and the connector's name with a key only the server has, so it means
    something only to this owner's door, and is the same after every restart."""

    PREFIX = "sophon_placeholder_"

    def __init__(self, key: bytes) -> None:
        self._key = hmac.new(key, b"sophon connector placeholder", hashlib.sha256).digest()

    def make(self, owner_id: str, connector: str) -> str:
        mac = hmac.new(self._key, f"{owner_id}\0{connector}".encode(), hashlib.sha256)
        return self.PREFIX + mac.hexdigest()[:40]


class Grants:
    def __init__(self, rules: AdminRules, db: async_sessionmaker[AsyncSession],
                 connectors: ConnectorService, owner_of: Callable[[str], str | None],
                 placeholders: Placeholders, github_hosts: list[str],
                 build_rules: dict[str, tuple[str, tuple[str, ...]]] | None = None) -> None:
        self.rules = rules
        # A build box's user and the hosts its steps may reach (box/builds.py).
        self._build_rules = build_rules if build_rules is not None else {}
        self._db = db
        self._connectors = connectors
        self._owner_of = owner_of  # an execution box's user (box/manager.py)
        self.placeholders = placeholders
        self._github_hosts = tuple(github_hosts)
        # Each box's grant, for GRANT_SECONDS: a connection then costs no store read.
        # Every change this server makes to what a grant is made of (a session's
        # network or connectors, a user's connectors, a remembered approval) calls
        # ``forget``; the expiry covers a change made by hand in the store.
        self._cache: dict[str, tuple[float, Grant | None]] = {}
        self._generation = 0
        # The API key of the execution running (or last run) in each execution box: a
        # connector may be for some of a user's keys only, and a thread's box serves
        # whichever of them calls it (one execution at a time).
        self._exec_keys: dict[str, str | None] = {}

    def forget(self) -> None:
        self._cache.clear()
        self._generation += 1

    def use_key(self, box_id: str, key_id: str | None) -> None:
        """From now on the box's grant is the one for executions made with ``key_id``."""
        if box_id in self._exec_keys and self._exec_keys[box_id] == key_id:
            return
        self._exec_keys[box_id] = key_id
        self._cache.pop(box_id, None)
        self._generation += 1  # a lookup under way for the old key is not cached

    def key_of(self, box_id: str) -> str | None:
        return self._exec_keys.get(box_id)

    def drop_box(self, box_id: str) -> None:
        self._exec_keys.pop(box_id, None)
        self._cache.pop(box_id, None)

    def credentials(self, owner_id: str, connectors: list[ConnectorGrant]
                    ) -> tuple[HostCredential, ...]:
        """Each connector the door applies, with the hosts it applies on (an anthropic
        connector is the gateway's, on no host)."""
        out = []
        for c in connectors:
            if c.value is None or c.type not in ("github", "http"):
                continue
            hosts = self._github_hosts if c.type == "github" else c.hosts
            out.append(HostCredential(tuple(parse_rule(h) for h in hosts), Credential(
                name=c.name, type=c.type, value=c.value,
                placeholder=self.placeholders.make(owner_id, c.name), header=c.header,
                push=c.push)))
        return tuple(out)

    def _policy(self, allow: list[HostRule], ask: bool = False,
                public: bool = False) -> Policy:
        return Policy(allow=allow, deny=self.rules.deny, private=self.rules.private,
                      ask=ask, public=public)

    async def for_box(self, box_id: str) -> Grant | None:
        now = time.monotonic()
        cached = self._cache.get(box_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        if len(self._cache) > CACHE_MAX:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        generation = self._generation
        grant = await self._lookup(box_id)
        if generation == self._generation:  # not forgotten while it was being read
            self._cache[box_id] = (now + GRANT_SECONDS, grant)
        return grant

    async def _lookup(self, box_id: str) -> Grant | None:
        kind = ids.kind_of(box_id)
        if kind is ids.Kind.SESSION:
            return await self._for_session("ses_" + box_id[1:])
        if kind is ids.Kind.EXECUTION:
            return await self._for_execution(box_id)
        if kind is ids.Kind.BUILD and box_id in self._build_rules:
            user_id, allow = self._build_rules[box_id]
            return Grant(owner_id=box_id, user_id=user_id,
                         policy=self._policy([parse_rule(h) for h in allow]))
        return None  # staging and volume boxes have no network

    async def _for_session(self, session_id: str) -> Grant | None:
        async with self._db() as db:
            row = await db.get(SessionRow, session_id)
        if row is None:
            return None
        return await self.for_session(row.id, row.user_id, row.base, row.network or {},
                                      list(row.connectors or []))

    async def for_session(self, session_id: str, user_id: str, base: str,
                          network: dict[str, Any], connector_names: list[str]) -> Grant:
        """A session's grant from its settings (stored, or asked for at create time)."""
        connectors = await self._connectors.grants(user_id, connector_names)
        credentials = self.credentials(session_id, connectors)
        allow = [parse_rule(h) for h in BASE_ALLOW.get(base, ())]
        allow += [parse_rule(a) for a in network.get("allow", [])]
        allow += [r for c in credentials for r in c.hosts]
        return Grant(owner_id=session_id, user_id=user_id, session_id=session_id,
                     policy=self._policy(allow, ask=bool(network.get("ask"))),
                     credentials=credentials)

    async def _for_execution(self, box_id: str) -> Grant | None:
        user_id = self._owner_of(box_id)
        if user_id is None or self.rules.execute == "off":
            return None
        connectors = await self._connectors.execute_grants(user_id, self.key_of(box_id))
        credentials = self.credentials(box_id, connectors)
        allow = [parse_rule(h) for h in REGISTRIES] + [r for c in credentials for r in c.hosts]
        return Grant(owner_id=box_id, user_id=user_id,
                     policy=self._policy(allow, public=self.rules.execute == "public"),
                     credentials=credentials)
