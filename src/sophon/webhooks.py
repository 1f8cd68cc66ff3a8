"""Outbound webhooks, the only way the server POSTs to a URL a user gave: execution
webhooks (an execution's status when it ends) and approval webhooks (a session's
``approval.webhook``, asked instead of the owner).

Where a webhook may go: ``https`` only, to a host whose every address is public (not
loopback, link-local, private, shared, multicast, reserved or unspecified; an IPv4
address inside IPv6, mapped, 6to4 or NAT64, is judged as the IPv4 address). Names under
``localhost`` and IPv4 addresses written any other way than four decimal numbers
(``127.1``, ``2130706433``, ``0x7f.1``) are refused before anything is resolved. An admin
may list ``host:port``s in ``SOPHON_WEBHOOK_ALLOW_INSECURE_HOSTS``: those may be plain
``http`` and any address.

The URL is checked when it is given (a 400) and again before each attempt, and the
attempt connects to the addresses that check saw, never resolving the name a second
time: a name that answers a public address to the check and a private one to the
connection (DNS rebinding) reaches nothing. The request still carries the name: the
``Host`` header and the TLS server name, so the certificate is verified for the name
(``SSL_CERT_FILE`` or ``SSL_CERT_DIR`` names another CA bundle). No proxy from the
environment is used, no redirect is followed, every attempt has a deadline for the whole
exchange, and at most ``read_limit`` bytes of the answer are read, undecoded.

Signing follows Standard Webhooks (https://www.standardwebhooks.com): ``webhook-id``
(the same on every retry), ``webhook-timestamp`` (Unix seconds of the attempt) and, when
the user has a secret, ``webhook-signature: v1,<base64 HMAC-SHA256(secret,
"<id>.<timestamp>.<body>")>``. The secret is the user's (``POST /v1/webhooks/secret``
makes or replaces it and shows it once, ``whsec_<base64>``), kept Fernet-encrypted with
the key of session secrets.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sophon import metrics
from sophon.config import Settings
from sophon.errors import BadRequest
from sophon.keys import Sealer, secret_key
from sophon.store.tables import WebhookSecret

log = logging.getLogger(__name__)

MAX_URL_LENGTH = 2048
SECRET_PREFIX = "whsec_"
RESOLVE_TIMEOUT = 5.0
USER_AGENT = "sophon-webhooks/1"
ALLOW_SETTING = "SOPHON_WEBHOOK_ALLOW_INSECURE_HOSTS"
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header's value for ``body``."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


class WebhookSecrets:
    """Each user's signing secret, encrypted at rest. Read from the table on every use
    (webhooks are rare next to a database read), so every holder sees a rotation at once."""

    def __init__(self, db: async_sessionmaker[AsyncSession], key: bytes) -> None:
        self._db = db
        self._sealer = Sealer(key)

    async def rotate(self, user_id: str) -> str:
        """A new secret for the user, replacing any old one; the only time it is shown."""
        secret = new_secret()
        async with self._db() as db:
            await db.merge(WebhookSecret(user_id=user_id,
                                         secret=self._sealer.seal(secret),
                                         created_at=datetime.now(UTC)))
            await db.commit()
        return secret

    async def get(self, user_id: str) -> str | None:
        async with self._db() as db:
            token = (await db.execute(select(WebhookSecret.secret)
                                      .where(WebhookSecret.user_id == user_id))
                     ).scalar_one_or_none()
        if token is None:
            return None
        return self._sealer.unseal(token, "the webhook secret",
                                   "; make a new one with POST /v1/webhooks/secret")


# --- where a webhook may go -------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """A checked webhook URL and the addresses it may be sent to."""

    url: httpx.URL
    host: str  # the host as checked: an IDNA name or an address
    addresses: tuple[str, ...]  # what the check resolved; the only places to connect to


def blocked(ip: IP) -> bool:
    """Whether the address is anything but a public one."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour
        if inner is None and ip in NAT64:
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if inner is not None and blocked(inner):
            return True
    return (ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_multicast
            or ip.is_unspecified or ip.is_reserved or not ip.is_global)


def allowed_insecure(host: str, port: int, allow: Sequence[str]) -> bool:
    name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return name in {a.strip().lower() for a in allow}


def _parse(url: str, field: str) -> tuple[httpx.URL, str, int]:
    """(the URL, its host, its port), or a 400 saying what is wrong with it."""
    if len(url) > MAX_URL_LENGTH:
        raise BadRequest(f"{field} is longer than {MAX_URL_LENGTH} characters")
    try:
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii").lower()
    except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
        raise BadRequest(f"{field} is not a valid URL: {exc}") from None
    if parsed.scheme not in ("https", "http") or not host:
        raise BadRequest(f"{field} must be an https:// URL with a host name")
    if parsed.userinfo:
        raise BadRequest(f"{field} must not contain a user name or password")
    return parsed, host, parsed.port or (443 if parsed.scheme == "https" else 80)


def _odd_address(host: str) -> bool:
    """An IPv4 address in a form other than four decimal numbers: the resolver would
    take ``127.1`` or ``2130706433`` for 127.0.0.1; no public host is written so."""
    try:
        ipaddress.ip_address(host)
        return False
    except ValueError:
        pass
    try:
        socket.inet_aton(host)
        return True
    except OSError:
        return False


async def _resolve(host: str, port: int) -> tuple[str, ...]:
    try:
        ip = ipaddress.ip_address(host)
        return (str(ip),)
    except ValueError:
        pass
    try:
        infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT)
    except (OSError, TimeoutError, UnicodeError):
        return ()
    # Scope ids go: a link-local address is refused anyway, and an allowed one is
    # reached as written.
    found = [str(ipaddress.ip_address(str(info[4][0]).split("%")[0])) for info in infos]
    return tuple(dict.fromkeys(found))


async def check_url(url: str, allow: Sequence[str], field: str = "webhook_url") -> Target:
    """The URL and where it may be sent, or a 400 saying why it may not be; see the
    module's text."""
    parsed, host, port = _parse(url, field)
    listed = allowed_insecure(host, port, allow)
    how = f"(an admin may allow a host:port with {ALLOW_SETTING})"
    if not listed:
        if parsed.scheme != "https":
            raise BadRequest(f"{field} must use https {how}")
        bare = host.rstrip(".")
        if bare == "localhost" or bare.endswith(".localhost") or _odd_address(bare):
            raise BadRequest(f"{field}: {host!r} is not a public host name or a "
                             f"dotted IPv4 or IPv6 address; webhooks go to public hosts "
                             f"only {how}")
    addresses = await _resolve(host, port)
    if not addresses:
        # Said the same way as a private address: whether an internal name exists is
        # none of the caller's business.
        raise BadRequest(f"{field}: {host!r} could not be resolved to public addresses; "
                         f"webhooks go to public hosts only {how}")
    if not listed and any(blocked(ipaddress.ip_address(a)) for a in addresses):
        raise BadRequest(f"{field}: {host!r} is or resolves to a loopback, link-local, "
                         f"private or otherwise non-public address; webhooks go to public "
                         f"hosts only {how}")
    return Target(parsed, host, addresses)


# --- sending ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes  # at most the read_limit asked for


async def post_pinned(target: Target, body: bytes, headers: dict[str, str],
                      timeout: float, verify: ssl.SSLContext, read_limit: int = 0) -> Reply:
    """POST to the target's checked addresses in turn (the next only if the connection
    fails), naming the host in ``Host`` and in TLS; the whole exchange within
    ``timeout``. A client per attempt: a pooled TLS connection verified for one name
    must never carry a request for another that shares its address."""
    last: Exception = httpx.ConnectError(f"no address for {target.host}")
    async with asyncio.timeout(timeout):
        for address in target.addresses:
            async with httpx.AsyncClient(verify=verify, trust_env=False, timeout=timeout,
                                         follow_redirects=False) as client:
                request = client.build_request(
                    "POST", target.url.copy_with(host=address, fragment=None),
                    content=body,
                    headers={**headers, "host": target.url.netloc.decode("ascii"),
                             "accept-encoding": "identity"},
                    extensions={"sni_hostname": target.host})
                try:
                    response = await client.send(request, stream=True)
                except httpx.ConnectError as exc:
                    last = exc
                    continue
                try:
                    data = bytearray()
                    if read_limit:
                        async for chunk in response.aiter_raw():
                            data += chunk[:read_limit - len(data)]
                            if len(data) >= read_limit:
                                break
                finally:
                    await response.aclose()
                return Reply(response.status_code, bytes(data))
    raise last


def ssl_context() -> ssl.SSLContext:
    """Verifying, with the CA bundle of ``SSL_CERT_FILE``/``SSL_CERT_DIR`` if set."""
    return httpx.create_ssl_context(trust_env=True)


class Webhooks:
    """Checks and sends webhooks; execution webhooks are delivered in the background
    with retries, approval webhooks get one attempt that the turn waits for."""

    def __init__(self, settings: Settings, db: async_sessionmaker[AsyncSession]) -> None:
        self.allow = list(settings.webhook_allow_insecure_hosts)
        self.delays = list(settings.webhook_retry_delays)
        self.timeout = settings.webhook_timeout_seconds
        self.secrets = WebhookSecrets(db, secret_key(settings.data_dir))
        self._verify: ssl.SSLContext | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def check(self, url: str, field: str = "webhook_url") -> Target:
        return await check_url(url, self.allow, field)

    async def send(self, url: str, msg_id: str, body: bytes, secret: str | None, *,
                   field: str = "webhook_url", timeout: float | None = None,
                   read_limit: int = 0) -> Reply:
        """One attempt: the URL checked again, the connection pinned to what the check
        saw, signed with ``secret`` if there is one."""
        target = await self.check(url, field)  # again: the name may resolve elsewhere now
        ts = int(time.time())
        headers = {"content-type": "application/json", "user-agent": USER_AGENT,
                   "webhook-id": msg_id, "webhook-timestamp": str(ts)}
        if secret is not None:
            headers["webhook-signature"] = sign(secret, msg_id, ts, body)
        if self._verify is None:
            self._verify = ssl_context()
        return await post_pinned(target, body, headers, timeout or self.timeout,
                                 self._verify, read_limit)

    def start(self, url: str, msg_id: str, body: bytes, secret: str,
              done: Callable[[bool], Awaitable[None]]) -> None:
        """Deliver in the background, retrying a connection error, timeout or non-2xx
        after each configured delay; ``done(delivered)`` is awaited at the end."""
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
                reply = await self.send(url, msg_id, body, secret)
                delivered = 200 <= reply.status < 300
                if not delivered:
                    log.info("webhook %s attempt %d to %s: HTTP %d", msg_id, attempt, url,
                             reply.status)
            except Exception as exc:  # connection refused, timeout, a refused address
                log.info("webhook %s attempt %d to %s: %s", msg_id, attempt, url,
                         describe(exc))
            if delivered:
                break
        metrics.webhook_deliveries.labels("execution",
                                          "delivered" if delivered else "failed").inc()
        try:
            await done(delivered)
        except Exception:
            log.exception("could not record the webhook delivery of %s", msg_id)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def describe(exc: BaseException) -> str:
    """For the server's log only: it may quote the remote."""
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}"


def json_body(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
