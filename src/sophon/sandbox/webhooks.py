"""Execution webhooks: when an execution with a ``webhook_url`` ends, its status (the body
``GET /v1/executions/{id}`` answers) is POSTed there, signed per the Standard Webhooks
spec (https://www.standardwebhooks.com): headers ``webhook-id`` (``msg_<trace_id>``, the
same on every retry), ``webhook-timestamp`` (Unix seconds of the attempt) and
``webhook-signature: v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>``.

The secret is the user's (``POST /v1/webhooks/secret`` makes or replaces it and shows it
once, ``whsec_<base64>``); it is kept Fernet-encrypted with the key of session secrets.
A webhook execution from a user without one is refused (400).

Where a webhook may go: ``https`` only, to a host whose every address is public (not
loopback, link-local, private, multicast, reserved or unspecified), checked when the
execution is requested and again before each attempt; redirects are not followed. An
admin may list ``host:port``s in ``SOPHON_WEBHOOK_ALLOW_INSECURE_HOSTS``: those may be
plain ``http`` and any address. TLS certificates are verified (``SSL_CERT_FILE`` names
another CA bundle).

A failed attempt (connection error, timeout, a status other than 2xx) is retried after
each delay of ``SOPHON_WEBHOOK_RETRY_DELAYS`` (0.5, 1, 2, 4 s: five attempts); then the
delivery is ``failed``. Deliveries live in the server's memory: one a restart cuts off is
marked ``failed`` by ``ExecutionService.recover``, not resumed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sophon.errors import BadRequest, SophonError
from sophon.store.tables import WebhookSecret

log = logging.getLogger(__name__)

MAX_URL_LENGTH = 2048
SECRET_PREFIX = "whsec_"
RESOLVE_TIMEOUT = 5.0


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header's value for ``body``."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


class SecretStore:
    """Each user's signing secret, encrypted at rest."""

    def __init__(self, db: async_sessionmaker[AsyncSession], key: bytes) -> None:
        self._db = db
        self._fernet = Fernet(key)
        self._cache: dict[str, str] = {}  # this process is the only writer

    async def rotate(self, user_id: str) -> str:
        """A new secret for the user, replacing any old one; the only time it is shown."""
        secret = new_secret()
        async with self._db() as db:
            await db.merge(WebhookSecret(user_id=user_id,
                                         secret=self._fernet.encrypt(secret.encode()),
                                         created_at=datetime.now(UTC)))
            await db.commit()
        self._cache[user_id] = secret
        return secret

    async def get(self, user_id: str) -> str | None:
        cached = self._cache.get(user_id)
        if cached is not None:
            return cached
        async with self._db() as db:
            token = (await db.execute(select(WebhookSecret.secret)
                                      .where(WebhookSecret.user_id == user_id))
                     ).scalar_one_or_none()
        if token is None:
            return None
        try:
            secret = self._fernet.decrypt(token).decode()
        except InvalidToken as exc:
            raise SophonError("the webhook secret cannot be decrypted: the secret key "
                              "changed (SOPHON_SECRET_KEY or secret.key in the data "
                              "directory); make a new one with POST /v1/webhooks/secret"
                              ) from exc
        self._cache[user_id] = secret
        return secret


def _blocked(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_multicast
            or ip.is_unspecified or ip.is_reserved or not ip.is_global)


def _host_port(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a webhook URL, or a 400 saying what is wrong with it."""
    if len(url) > MAX_URL_LENGTH:
        raise BadRequest(f"webhook_url is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadRequest(f"webhook_url is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not parts.hostname:
        raise BadRequest("webhook_url must be an https:// URL with a host name")
    if parts.username is not None or parts.password is not None:
        raise BadRequest("webhook_url must not contain a user name or password")
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80)


def allowed_insecure(host: str, port: int, allow: list[str]) -> bool:
    name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return name in {a.strip().lower() for a in allow}


async def check_url(url: str, allow: list[str]) -> None:
    """Refuse (400) a webhook URL the server must not send to; see the module's text."""
    scheme, host, port = _host_port(url)
    if allowed_insecure(host, port, allow):
        return
    if scheme != "https":
        raise BadRequest("webhook_url must use https (an admin may allow a host:port over "
                         "http with SOPHON_WEBHOOK_ALLOW_INSECURE_HOSTS)")
    try:
        ips = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT)
        except (OSError, TimeoutError):
            raise BadRequest(f"webhook_url: the host {host!r} cannot be resolved") from None
        ips = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not ips or any(_blocked(ip) for ip in ips):
        raise BadRequest(f"webhook_url: {host!r} is a loopback, link-local, private or "
                         "otherwise non-public address; webhooks go to public hosts only "
                         "(an admin may allow it with SOPHON_WEBHOOK_ALLOW_INSECURE_HOSTS)")


class Deliverer:
    """Sends webhooks, retrying with the configured delays."""

    def __init__(self, allow: list[str], delays: list[float], timeout: float) -> None:
        self.allow = allow
        self.delays = delays
        self.timeout = timeout
        self._http: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, url: str, msg_id: str, body: bytes, secret: str,
              done: Callable[[bool], Awaitable[None]]) -> None:
        """Deliver in the background; ``done(delivered)`` is awaited at the end."""
        task = asyncio.create_task(self._deliver(url, msg_id, body, secret, done),
                                   name=f"webhook-{msg_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, url: str, msg_id: str, body: bytes, secret: str,
                       done: Callable[[bool], Awaitable[None]]) -> None:
        delivered = False
        for attempt, delay in enumerate([0.0, *self.delays], 1):
            if delay:
                await asyncio.sleep(delay)
            try:
                delivered = await self._attempt(url, msg_id, body, secret)
            except Exception as exc:  # connection refused, timeout, a refused address
                log.info("webhook %s attempt %d to %s: %s", msg_id, attempt, url, exc)
            if delivered:
                break
        try:
            await done(delivered)
        except Exception:
            log.exception("could not record the webhook delivery of %s", msg_id)

    async def _attempt(self, url: str, msg_id: str, body: bytes, secret: str) -> bool:
        await check_url(url, self.allow)  # again: the name may resolve elsewhere now
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False)
        ts = int(time.time())
        resp = await self._http.post(url, content=body, headers={
            "content-type": "application/json", "user-agent": "sophon-webhooks/1",
            "webhook-id": msg_id, "webhook-timestamp": str(ts),
            "webhook-signature": sign(secret, msg_id, ts, body)})
        if not 200 <= resp.status_code < 300:
            log.info("webhook %s to %s: HTTP %d", msg_id, url, resp.status_code)
        return 200 <= resp.status_code < 300

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
