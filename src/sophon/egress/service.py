"""The egress door wired into the server: its grants, what boxes are told, refusals as
events, and the meter on every box's traffic."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sophon import metrics
from sophon.box import ids
from sophon.box.bwrap import BASE_ENV, TRUST_BUNDLE, TRUST_CA
from sophon.box.manager import BoxManager
from sophon.config import Settings
from sophon.egress.ca import SophonCA
from sophon.egress.connectors import ConnectorGrant, ConnectorService
from sophon.egress.door import GATEWAY_HOST, Denial, Door, Grant
from sophon.egress.grants import AdminRules, Grants, Placeholders
from sophon.egress.policy import (
    WEB_PORTS,
    check_address,
    check_listed,
    normalize_host,
    parse_ip,
)
from sophon.egress.splice import Tally
from sophon.errors import NetworkNotAllowed
from sophon.events.log import EventLog
from sophon.events.types import ApprovalDecision, ApprovalRequest, NetworkDenied
from sophon.gateway.service import Caller
from sophon.sessions.models import NetworkSettings
from sophon.sessions.service import SessionService
from sophon.store.tables import NetworkUsage, SessionRow

log = logging.getLogger(__name__)

FLUSH_SECONDS = 2.0
NETWORK_TOOL = "Network"  # what a network approval's request names as its tool
LOOPBACK = "localhost,127.0.0.1,::1"
# Where OpenSSL, Python's requests, pip, git and curl take their trusted CAs from.
CA_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "GIT_SSL_CAINFO",
                "CURL_CA_BUNDLE")


def node_preload(node_dir: Path) -> str | None:
    """The preload that sends Node's fetch through the door, if it is installed where
    boxes see it (under /usr)."""
    preload = node_dir / "proxy.js"
    if not preload.is_file():
        return None
    if not str(node_dir.resolve()).startswith("/usr/"):
        log.warning("%s is not under /usr, which boxes see: Node's fetch in boxes will not "
                    "use the egress door", node_dir)
        return None
    return str(preload)


def claude_code_status(claude_dir: Path) -> str:
    """The boxes' Claude Code CLI: its version, or why there is none (for /healthz)."""
    try:
        version = (claude_dir / ".installed").read_text().strip()
    except OSError:
        return (f"missing: not installed in {claude_dir} (make run or make test as root "
                "install it with scripts/box-tools)")
    if not (claude_dir / "bin" / "claude").exists():
        return f"missing: {claude_dir}/bin/claude is not there (run scripts/box-tools again)"
    return version


# What the claude CLI in a box is told beside the gateway: no calls of its own to
# Anthropic's other hosts (feature flags, telemetry, updates), which the door refuses.
CLAUDE_CODE_ENV = {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1"}


def proxy_env(port: int, preload: str | None = None) -> dict[str, str]:
    """What every exec is told so that ordinary tools go through the door: curl, wget,
    pip, git and Python read the *_proxy variables (curl only the lower-case
    http_proxy), npm its own, Node's fetch NODE_USE_ENV_PROXY. The box's own loopback
    is not proxied."""
    url = f"http://127.0.0.1:{port}"
    return {**{v: TRUST_BUNDLE for v in CA_VARIABLES}, "NODE_EXTRA_CA_CERTS": TRUST_CA,
            "HTTP_PROXY": url, "http_proxy": url, "HTTPS_PROXY": url, "https_proxy": url,
            "NO_PROXY": LOOPBACK, "no_proxy": LOOPBACK,
            "npm_config_proxy": url, "npm_config_https_proxy": url,
            "NODE_USE_ENV_PROXY": "1",
            **({"NODE_OPTIONS": f"--require {preload}"} if preload else {})}


class Egress:
    def __init__(self, settings: Settings, db: async_sessionmaker[AsyncSession],
                 events: EventLog, connectors: ConnectorService, boxes: BoxManager,
                 box_token: Any, key: bytes, sessions: SessionService | None = None) -> None:
        self.settings = settings
        self._db = db
        self._events = events
        self._sessions = sessions  # network approvals go through its approvals
        # One question per session, host and port at a time: pip's parallel connections
        # to a new host wait for the same answer.
        self._asking: dict[tuple[str, str, int], asyncio.Future[bool]] = {}
        self.connectors = connectors
        self._box_token = box_token  # Gateway.box_token: a session id -> its box's token
        self.rules = AdminRules(settings)
        self.grants = Grants(self.rules, db, connectors, boxes.owner_of, Placeholders(key),
                             settings.egress_github_hosts, boxes.build_rules)
        # The CA the door speaks TLS to a connector's hosts with, trusted in every box.
        self.ca = SophonCA(settings.data_dir)
        boxes.backend.trust(self.ca.bundle(), self.ca.pem)
        self.door = Door(settings, self.grants.for_box, self._denied, self._ask, self.ca)
        connectors.on_change.append(self.grants.forget)
        boxes.on_started.append(self.door.attach)
        boxes.on_destroyed.append(self.forget_box)
        self._proxy_env = proxy_env(settings.egress_box_port,
                                    node_preload(settings.box_node_dir))
        self.claude_code = claude_code_status(settings.box_claude_dir)
        if not self.claude_code.startswith("missing"):  # claude on every exec's PATH
            self._proxy_env["PATH"] = f"{BASE_ENV['PATH']}:{settings.box_claude_dir}/bin"
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

    async def execution_env(self, box_id: str, user_id: str,
                            key_id: str | None) -> dict[str, str]:
        """An execution's: the proxy, the placeholders of the user's connectors for the
        executions of API key ``key_id`` (the door applies those from now on in this box),
        and with an anthropic one among them the model gateway with the box's own token
        (metered under the thread's box, on the user's budget)."""
        self.grants.use_key(box_id, key_id)
        grants = await self.connectors.execute_grants(user_id, key_id)
        env = {**self._proxy_env, **self.connector_env(box_id, grants)}
        if any(g.type == "anthropic" for g in grants):
            env.update({"ANTHROPIC_BASE_URL": f"http://{GATEWAY_HOST}",
                        "ANTHROPIC_AUTH_TOKEN": self._box_token(box_id), **CLAUDE_CODE_ENV})
        return env

    def build_env(self) -> dict[str, str]:
        """A user image's build steps: the door's proxy settings, no connector."""
        return dict(self._proxy_env)

    async def connector_key(self, caller: Caller) -> str | None:
        """The provider key of the caller's own anthropic connector, if it has one with
        a value (the gateway then calls the model with it instead of the server's)."""
        if caller.row is not None:
            grants = await self.connectors.grants(caller.user_id,
                                                  list(caller.row.connectors or []))
        else:
            grants = await self.connectors.execute_grants(
                caller.user_id, self.grants.key_of(caller.owner_id))
        return next((g.value for g in grants if g.type == "anthropic" and g.value), None)

    async def session_env(self, session_id: str) -> dict[str, str]:
        """The proxy, the model gateway with the session's own token (code in the box,
        the anthropic SDK or Claude Code, calls the model as the session, metered and
        budgeted, and never sees the provider key), and a GitHub connector's
        placeholder where gh and git look for a token."""
        env = {**self._proxy_env, "ANTHROPIC_BASE_URL": f"http://{GATEWAY_HOST}",
               "ANTHROPIC_AUTH_TOKEN": self._box_token(session_id), **CLAUDE_CODE_ENV}
        async with self._db() as db:
            row = await db.get(SessionRow, session_id)
        if row is not None and row.connectors:
            grants = await self.connectors.grants(row.user_id, list(row.connectors))
            env.update(self.connector_env(session_id, grants))
        return env

    async def connector_values(self, session_id: str) -> list[str]:
        async with self._db() as db:
            row = await db.get(SessionRow, session_id)
        if row is None or not row.connectors:
            return []
        grants = await self.connectors.grants(row.user_id, list(row.connectors))
        return [g.value for g in grants if g.value]

    def connector_env(self, owner_id: str, grants: list[ConnectorGrant]) -> dict[str, str]:
        github = next((g for g in grants if g.type == "github"), None)
        if github is None:
            return {}
        token = self.grants.placeholders.make(owner_id, github.name)
        # git's credentials through the environment, never a file in the box: a helper
        # that answers with the placeholder for every GitHub host.
        helper = "!f() { echo username=x-access-token; echo password=$GH_TOKEN; }; f"
        env = {"GH_TOKEN": token, "GITHUB_TOKEN": token}
        hosts = self.settings.egress_github_hosts
        env["GIT_CONFIG_COUNT"] = str(len(hosts))
        for i, host in enumerate(hosts):
            env[f"GIT_CONFIG_KEY_{i}"] = f"credential.https://{host}.helper"
            env[f"GIT_CONFIG_VALUE_{i}"] = helper
        return env

    async def check_session(self, user_id: str, network: NetworkSettings,
                            connectors: list[str]) -> None:
        """A 400 for a rule past the admin's ceiling or a connector the user lacks.
        Called before a session's network or connectors change: grants are read again."""
        self.rules.check_session_rules(network.allow)
        await self.connectors.check_names(user_id, connectors)
        self.grants.forget()

    async def check_reachable(self, user_id: str, base: str, network: NetworkSettings,
                              connectors: list[str], host: str, port: int) -> None:
        """A 400 now, not a failed clone later: a new session's box could not reach the
        clone URL's host with the settings asked for."""
        grant = await self.grants.for_session("ses_new", user_id, base,
                                              network.model_dump(), connectors)
        name = normalize_host(host)
        refusal = check_listed(grant.policy, name, port)
        if refusal is None:
            ip = parse_ip(name)
            if ip is not None:
                refusal = check_address(grant.policy, ip, port, frozenset(), False)
        if refusal is not None:
            raise NetworkNotAllowed(f"the clone URL's host: {refusal.message}")

    # --- refusals and the meter ------------------------------------------------------

    async def _denied(self, denial: Denial) -> None:
        if denial.session_id is not None:
            await self._events.append(denial.session_id, NetworkDenied(
                host=denial.host, port=denial.port, rule=denial.rule, message=denial.message))

    async def _ask(self, grant: Grant, host: str, port: int) -> bool:
        """A session whose network says "ask": a host outside its list is an approval
        request in its event stream (the dashboard's card, the CLI's y/n, or its
        approval webhook), and the connection waits for the answer; "remember" adds the
        host to the session's list. No answer in time is a deny."""
        if grant.session_id is None or self._sessions is None:
            return False
        key = (grant.session_id, host, port)
        waiting = self._asking.get(key)
        if waiting is not None:
            return await asyncio.shield(waiting)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._asking[key] = future
        try:
            allowed = await self._ask_once(grant.session_id, host, port)
            future.set_result(allowed)
            return allowed
        except BaseException:
            future.set_result(False)
            raise
        finally:
            del self._asking[key]

    async def _ask_once(self, session_id: str, host: str, port: int) -> bool:
        from sophon.agent.policy import ask_webhook  # the agent's webhook client

        sessions = self._sessions
        assert sessions is not None
        async with self._db() as db:
            row = await db.get(SessionRow, session_id)
        if row is None:
            return False
        before = row.status
        tool, what = NETWORK_TOOL, {"host": host, "port": port}
        reason = (f"the sandbox wants to connect to {host}:{port}, which is not on its "
                  "network list")
        webhook = (row.approval or {}).get("webhook")
        if webhook:
            approval_id = "apr_" + secrets.token_hex(10)
            verdict = await ask_webhook(sessions.webhooks, webhook, approval_id, session_id,
                                        row.user_id, tool, what,
                                        self.settings.models.approval_webhook_timeout)
            await self._events.append(session_id, ApprovalRequest(
                approval_id=approval_id, tool=tool, input=what, reason=reason))
            await self._events.append(session_id, ApprovalDecision(
                approval_id=approval_id, decision="allow" if verdict.allowed else "deny",
                by="webhook", reason=verdict.reason))
            return verdict.allowed
        decision = await sessions.approvals.ask(
            session_id, tool, what, reason, timeout=self.settings.egress_approval_timeout_seconds)
        await sessions.set_status(session_id, before)
        if decision.remember and decision.decision == "allow":
            await self._remember(session_id, host, port)
        return decision.decision == "allow"

    async def _remember(self, session_id: str, host: str, port: int) -> None:
        rule = host if port in WEB_PORTS else f"{host}:{port}"
        if ":" in host:
            rule = f"[{host}]:{port}"
        async with self._db() as db:
            row = await db.get(SessionRow, session_id)
            if row is None:
                return
            network = dict(row.network or {})
            allow = list(network.get("allow", []))
            if rule not in allow:
                network["allow"] = [*allow, rule]
                row.network = network
                await db.commit()
        self.grants.forget()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await self.flush()
            except Exception:
                log.exception("could not record network usage")

    async def flush(self) -> None:
        """Add what the door counted since the last flush to each owner's row."""
        taken = {owner_id: (t, t.take()) for owner_id, t in self.door.tallies.items()}
        for owner_id, (t, counts) in taken.items():
            if not t.open and not any(counts):
                del self.door.tallies[owner_id]  # nothing open, nothing new: let it go
        taken = {k: v for k, v in taken.items() if any(v[1])}
        if not taken:
            return
        try:
            async with self._db() as db:
                for owner_id, (t, (out, inn, conns, denied)) in taken.items():
                    row = await db.get(NetworkUsage, owner_id)
                    if row is None:
                        row = NetworkUsage(owner_id=owner_id, user_id=t.user_id, bytes_out=0,
                                           bytes_in=0, connections=0, denied=0)
                        db.add(row)
                    row.bytes_out += out
                    row.bytes_in += inn
                    row.connections += conns
                    row.denied += denied
                await db.commit()
        except BaseException:
            for t, counts in taken.values():  # counted again at the next flush
                t.give_back(counts)
            raise
        for _t, (out, inn, conns, denied) in taken.values():
            metrics.door_connections.labels("opened").inc(conns)
            metrics.door_connections.labels("refused").inc(denied)
            metrics.door_bytes.labels("out").inc(out)
            metrics.door_bytes.labels("in").inc(inn)

    async def forget_box(self, box_id: str) -> None:
        """A session's or thread's box deleted for good: its network usage goes too."""
        owner_id = ("ses_" + box_id[1:] if ids.kind_of(box_id) is ids.Kind.SESSION
                    else box_id)
        self.door.tallies.pop(owner_id, None)
        self.grants.drop_box(box_id)
        async with self._db() as db:
            await db.execute(delete(NetworkUsage).where(NetworkUsage.owner_id == owner_id))
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
