"""Connectors: a user's credentials for named hosts, which the egress door puts on the
wire for a box that holds only a placeholder (see docs/ARCHITECTURE.md, "Connectors").

- ``github``: a GitHub token, for ``github.com`` and ``api.github.com``; ``push``
  optionally names the repositories (and branches) a push may go to.
- ``anthropic``: a provider key, or none (the server's own key, through the gateway).
- ``http``: a header (``header``: value) sent to one host (``host[:port]``).

Values are sealed at rest like session secrets (``sophon.keys.Sealer``), never returned
to a caller and never logged; only the door reads them, through ``grants`` and
``execute_grants``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sophon.errors import BadRequest, Conflict, NotFound, SophonError
from sophon.keys import Sealer
from sophon.store.tables import ApiKey, Connector, iso
from sophon.users import Principal

ConnectorType = Literal["github", "anthropic", "http"]

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
MAX_VALUE_BYTES = 8 * 1024
MAX_PUSH_RULES = 100
MAX_KEYS = 100

# The hosts a github connector's token is sent to.
GITHUB_HOSTS: tuple[str, ...] = ("github.com", "api.github.com")

_NAME = re.compile(NAME_PATTERN)
_GITHUB_TOKEN = re.compile(r"(?:github_pat_|ghp_|gho_|ghu_|ghs_|ghr_)[A-Za-z0-9_]{20,255}")
_ANTHROPIC_KEY = re.compile(r"sk-ant-[A-Za-z0-9_\-]{20,}")
_HEADER = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}")
# Headers the door itself owns (framing, the connection, the proxy hop): never a
# connector's to set.
FORBIDDEN_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "proxy-authorization",
    "proxy-connection", "upgrade", "te", "trailer", "keep-alive"})
# Control characters have no place in a header value (CR and LF would start a new header).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# GitHub's own rules: an owner is letters, digits and '-', a repository also '.' and '_'.
_PUSH = re.compile(r"(?P<owner>[A-Za-z0-9](?:[A-Za-z0-9-]{0,38}))/"
                   r"(?P<repo>[A-Za-z0-9._-]{1,100})(?::(?P<branch>[^\s:]{1,255}))?")
_BRANCH = re.compile(r"[A-Za-z0-9._/*?+@=-]+")


# --- the wire ---------------------------------------------------------------------------


class CreateConnector(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    name: str = Field(json_schema_extra={"pattern": NAME_PATTERN}, description=(
        "Lowercase letters, digits and '-', at most 63; unique among your connectors"))
    type: ConnectorType = Field(description=(
        "github: a GitHub token for github.com and api.github.com; anthropic: a provider "
        "key, or none to use the server's own through the gateway; http: a header sent "
        "to one host"))
    value: str | None = Field(
        None, json_schema_extra={"maxLength": MAX_VALUE_BYTES},
        description="The credential (at most 8 KiB); stored encrypted and never shown "
                    "again. Required but for anthropic")
    host: str | None = Field(None, description="http only: the host, as name[:port]")
    header: str | None = Field(None, description=(
        "http only: the header the value is sent in (Authorization, X-Api-Key, ...)"))
    execute: bool = Field(False, description=(
        "Whether the execution API's executions get this connector with every one of "
        "your API keys"))
    keys: list[str] | None = Field(None, json_schema_extra={"maxItems": MAX_KEYS},
                                   description=(
        "Instead of execute: the API keys (their ids, as GET /v1/keys lists them) whose "
        "executions get this connector"))
    push: list[str] | None = Field(None, description=(
        "github only: where a push may go, as owner/repo or owner/repo:branch (a glob "
        "such as feature/* allowed); omitted: anywhere the token may push"))

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.fullmatch(name):
            raise ValueError("a connector's name is lowercase letters, digits and '-', "
                             "starting with a letter or digit, at most 63 characters")
        return name

    @field_validator("value")
    @classmethod
    def _value(cls, value: str | None) -> str | None:
        # The value itself is never part of a message.
        if value is not None and len(value.encode()) > MAX_VALUE_BYTES:
            raise ValueError(f"the value is longer than {MAX_VALUE_BYTES} bytes")
        return value


class UpdateConnector(BaseModel):
    """Which executions get a connector; its value and hosts never change (delete it and
    create it again)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    execute: bool | None = Field(None, description=(
        "true: the executions of every one of your keys get it; false: none do"))
    keys: list[str] | None = Field(None, json_schema_extra={"maxItems": MAX_KEYS},
                                   description=(
        "Only the executions made with these keys (ids, as GET /v1/keys lists them)"))


class ConnectorView(BaseModel):
    """A connector as its owner sees it: never its value."""

    name: str
    type: ConnectorType
    host: str | None = None
    header: str | None = None
    execute: bool = Field(description="The executions of every one of your keys get it")
    keys: list[str] | None = Field(None, description=(
        "Only the executions made with these API keys get it"))
    push: list[str] | None = None
    created_at: str


class ConnectorList(BaseModel):
    connectors: list[ConnectorView]


# --- what the door gets -----------------------------------------------------------------


@dataclass(frozen=True)
class ConnectorGrant:
    """A connector as the egress door uses it, value decrypted. For the door alone: it
    never goes to a caller, a box, an event or a log line (``value`` is left out of its
    repr)."""

    name: str
    type: str
    value: str | None = field(repr=False)
    hosts: tuple[str, ...]  # github: GITHUB_HOSTS; anthropic: (); http: (its host,)
    header: str | None
    push: tuple[str, ...]  # github: owner/repo[:branch-glob], owner and repo lower-cased;
    # empty: anywhere


# --- validation -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Checked:
    host: str | None
    header: str | None
    push: list[str] | None


def _ipv4_spelling(host: str) -> ipaddress.IPv4Address | None:
    """The address of ``127.1``, ``0x7f.1``, ``2130706433`` and other spellings the C
    library reads as IPv4, so that one address has one form."""
    if re.fullmatch(r"[0-9a-fx.]+", host) and host[:1].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def canonical_host(text: str) -> str:
    """An http connector's ``host[:port]``: lower case, no trailing dot, an address in
    its one spelling (IPv6 in brackets); a 400 saying what is wrong with anything else."""
    what = f"host {text!r}"
    if not text:
        raise BadRequest("an http connector needs a host: the name (and port, if not "
                         "80 or 443) its header is sent to, as api.example.com[:8443]")
    if "*" in text:
        raise BadRequest(f"{what} is too wide: a connector names one host, without "
                         "wildcards")
    if "://" in text or any(c in text for c in "/?#@"):
        raise BadRequest(f"{what} is not a host name: give name[:port] "
                         "(api.example.com or api.example.com:8443), not a URL")
    if any(c.isspace() for c in text) or not text.isascii():
        raise BadRequest(f"{what} is not a host name: no spaces, ASCII only "
                         "(write an international name in its xn-- form)")
    host, port = text.lower(), None
    if m := re.fullmatch(r"\[([0-9a-f:.]+)\](?::([^:]*))?", host):
        host, port = m.group(1), m.group(2)
        try:
            v6 = ipaddress.IPv6Address(host)
        except ValueError:
            raise BadRequest(f"{what}: {host!r} in brackets is not an IPv6 address") \
                from None
        name = f"[{v6}]"
    elif host.count(":") > 1:
        try:
            name = f"[{ipaddress.IPv6Address(host)}]"
        except ValueError:
            raise BadRequest(f"{what} is not a host name or an address") from None
    else:
        if ":" in host:
            host, port = host.split(":")
        host = host.rstrip(".")
        ip = _ipv4_spelling(host)
        if ip is not None:
            name = str(ip)
        elif not _DNS_NAME.fullmatch(host) or len(host) > 253:
            raise BadRequest(f"{what} is not a host name: letters, digits, '-' and '.', "
                             "at most 253 characters")
        elif host.rsplit(".", 1)[-1].isdigit():
            raise BadRequest(f"{what} is neither an IPv4 address nor a host name")
        else:
            name = host
    if port is None:
        return name
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise BadRequest(f"{what}: the port must be a number from 1 to 65535")
    return f"{name}:{int(port)}"


def _push_rule(text: str) -> str:
    m = _PUSH.fullmatch(text)
    if m is None or m.group("repo") in (".", ".."):
        raise BadRequest(f"push rule {text!r} is not owner/repo or owner/repo:branch "
                         "(a branch may be a glob, such as feature/*)")
    rule = f"{m.group('owner')}/{m.group('repo')}".lower()
    branch = m.group("branch")
    if branch is None:
        return rule
    if (not _BRANCH.fullmatch(branch) or ".." in branch or "//" in branch
            or branch.startswith(("/", "-", ".")) or branch.endswith(("/", ".", ".lock"))):
        raise BadRequest(f"push rule {text!r}: {branch!r} is not a branch name or glob "
                         "(letters, digits, '.', '_', '-', '/', and '*' or '?' to match)")
    return f"{rule}:{branch}"


def check(req: CreateConnector) -> _Checked:
    """The rules of each type, each broken one a 400 that says what to do; what is kept
    (the host in its canonical form)."""
    t = req.type
    if t != "http":
        for fname in ("host", "header"):
            if getattr(req, fname) is not None:
                goes = (f"its hosts are {' and '.join(GITHUB_HOSTS)}" if t == "github"
                        else "it is used through the server's model gateway")
                raise BadRequest(f"{'an' if t == 'anthropic' else 'a'} {t} connector takes "
                                 f"no {fname}: {goes}; use type http for a header sent to "
                                 "a host of your own")
    if req.push is not None and t != "github":
        raise BadRequest(f"push is for github connectors only, not {t}")
    if t == "github":
        if not req.value:
            raise BadRequest("a github connector needs a value: a GitHub token "
                             "(a fine-grained one, github_pat_..., is best)")
        if not _GITHUB_TOKEN.fullmatch(req.value):
            raise BadRequest("the value does not look like a GitHub token: one starts with "
                             "github_pat_, ghp_, gho_, ghu_, ghs_ or ghr_, then at least 20 "
                             "letters, digits or '_'")
        push = None
        if req.push is not None:
            if not req.push:
                raise BadRequest("push is empty: list where pushes may go, or leave it out "
                                 "to allow any push the token may make")
            if len(req.push) > MAX_PUSH_RULES:
                raise BadRequest(f"push has {len(req.push)} rules; at most "
                                 f"{MAX_PUSH_RULES}")
            push = list(dict.fromkeys(_push_rule(p) for p in req.push))
        return _Checked(None, None, push)
    if t == "anthropic":
        if req.value is not None and not _ANTHROPIC_KEY.fullmatch(req.value):
            raise BadRequest("the value does not look like an Anthropic key: one starts with "
                             "sk-ant-, then at least 20 letters, digits, '-' or '_'; leave "
                             "it out to use the server's own key through the gateway")
        return _Checked(None, None, None)
    # http
    host = canonical_host(req.host or "")
    if not req.header:
        raise BadRequest("an http connector needs a header: the one its value is sent in "
                         "(Authorization, X-Api-Key, ...)")
    if not _HEADER.fullmatch(req.header):
        raise BadRequest(f"header {req.header[:130]!r} is not a header name: letters, "
                         "digits and !#$%&'*+.^_`|~- only, at most 128")
    if req.header.lower() in FORBIDDEN_HEADERS:
        raise BadRequest(f"header {req.header!r} is the door's own (it frames the request "
                         "or the connection); a connector cannot set it")
    if not req.value:
        raise BadRequest(f"an http connector needs a value: what to send in {req.header}")
    if _CONTROL.search(req.value):
        raise BadRequest("the value holds a control character (a line break, NUL, ...), "
                         "which a header cannot carry")
    if len(req.value) < 8:
        # The door masks a connector's value wherever it shows up in an answer: a value
        # this short would mangle ordinary text, and is no credential anyway.
        raise BadRequest("the value is too short to be a credential (at least 8 "
                         "characters)")
    if not req.value.isascii():
        raise BadRequest("the value holds a character outside ASCII, which a header "
                         "cannot carry as it is; encode it as the host expects (e.g. "
                         "base64)")
    return _Checked(host, req.header, None)


# --- the service ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Held:
    """A user's connectors as the door gets them (or why one cannot be decrypted)."""

    by_name: dict[str, ConnectorGrant | SophonError]
    # The connectors executions get: each name with the keys it is for (None: every key).
    execute: tuple[tuple[str, frozenset[str] | None], ...]


def _view(row: Connector) -> ConnectorView:
    push = (row.rules or {}).get("push")
    return ConnectorView(name=row.name, type=row.type,  # type: ignore[arg-type]
                         host=row.host, header=row.header, execute=bool(row.execute),
                         keys=_keys_of(row), push=list(push) if push is not None else None,
                         created_at=iso(row.created_at))


def _keys_of(row: Connector) -> list[str] | None:
    """The API keys whose executions get the connector, if only some do."""
    keys = (row.rules or {}).get("keys")
    return list(keys) if keys is not None and not row.execute else None


def _attachment(execute: bool | None, keys: list[str] | None) -> tuple[bool, list[str] | None]:
    if execute and keys is not None:
        raise BadRequest("give execute: true (the executions of every one of your keys) or "
                         "keys (only those keys'), not both")
    if keys is not None and len(keys) > MAX_KEYS:
        raise BadRequest(f"keys names {len(keys)} keys; at most {MAX_KEYS}")
    return bool(execute), list(dict.fromkeys(keys)) if keys is not None else None


class ConnectorService:
    def __init__(self, db: async_sessionmaker[AsyncSession], sealer: Sealer) -> None:
        self._db = db
        self._sealer = sealer
        # Decrypted grants per user (or why one cannot be decrypted), read by the door on
        # every box start; this process is the only writer, so dropping a user's entry on
        # each change keeps it true. ``_changes`` keeps a read that raced a change from
        # filling the cache with what it read before the change.
        self._cache: dict[str, _Held] = {}
        self._changes = 0
        # Called after every change (the door's cached grants are made from these).
        self.on_change: list[Callable[[], None]] = []

    def _forget(self, user_id: str) -> None:
        self._changes += 1
        self._cache.pop(user_id, None)
        for callback in self.on_change:
            callback()

    async def create(self, principal: Principal, req: CreateConnector) -> ConnectorView:
        checked = check(req)
        execute, keys = _attachment(req.execute, req.keys)
        if keys:
            await self._check_keys(principal, keys)
        rules: dict[str, list[str]] = {}
        if checked.push is not None:
            rules["push"] = checked.push
        if keys is not None:
            rules["keys"] = keys
        row = Connector(
            id=uuid.uuid4().hex, user_id=principal.user_id, name=req.name, type=req.type,
            value=self._sealer.seal(req.value) if req.value is not None else None,
            host=checked.host, header=checked.header, execute=execute,
            rules=rules or None, created_at=datetime.now(UTC))
        taken = Conflict(f"you have a connector named {req.name!r} already; delete it first "
                         "to replace it")
        async with self._db() as db:
            if (await db.execute(select(Connector.id).where(
                    Connector.user_id == principal.user_id,
                    Connector.name == req.name))).first():
                raise taken
            db.add(row)
            try:
                await db.commit()
            except IntegrityError:  # made at the same moment by another request
                raise taken from None
        self._forget(principal.user_id)
        return _view(row)

    async def _check_keys(self, principal: Principal, keys: list[str]) -> None:
        """A 400 naming the first of ``keys`` that is not one of the caller's API keys."""
        async with self._db() as db:
            mine = set((await db.execute(select(ApiKey.id).where(
                ApiKey.user_id == principal.user_id))).scalars())
        for key_id in keys:
            if key_id not in mine:
                raise BadRequest(f"you have no API key with id {key_id!r}; GET /v1/keys "
                                 "(sophon connectors keys) lists yours")

    async def update(self, principal: Principal, name: str,
                     req: UpdateConnector) -> ConnectorView:
        """Attach the connector to the executions of every key, some keys, or none."""
        if not req.model_fields_set:
            raise BadRequest("nothing to change: give execute or keys")
        execute, keys = _attachment(req.execute, req.keys)
        if keys:
            await self._check_keys(principal, keys)
        async with self._db() as db:
            row = (await db.execute(select(Connector).where(
                Connector.user_id == principal.user_id, Connector.name == name))
                   ).scalar_one_or_none()
            if row is None:
                raise NotFound(f"no connector named {name!r}")
            rules = {k: v for k, v in (row.rules or {}).items() if k != "keys"}
            if keys is not None:
                rules["keys"] = keys
            row.execute = execute
            row.rules = rules or None
            await db.commit()
            view = _view(row)
        self._forget(principal.user_id)
        return view

    async def list(self, principal: Principal) -> list[ConnectorView]:
        async with self._db() as db:
            rows = (await db.execute(select(Connector).where(
                Connector.user_id == principal.user_id).order_by(Connector.name))
                    ).scalars().all()
        return [_view(r) for r in rows]

    async def delete(self, principal: Principal, name: str) -> None:
        """The connector, for good: boxes get it no more from their next connection."""
        async with self._db() as db:
            res = await db.execute(delete(Connector).where(
                Connector.user_id == principal.user_id, Connector.name == name))
            await db.commit()
        self._forget(principal.user_id)
        if not res.rowcount:  # type: ignore[attr-defined]
            raise NotFound(f"no connector named {name!r}")

    # --- for the egress door (internal: never a caller's) ------------------------------

    def _grant(self, row: Connector) -> ConnectorGrant | SophonError:
        value = None
        if row.value is not None:
            try:
                value = self._sealer.unseal(
                    row.value, f"connector {row.name!r}",
                    "; delete the connector and create it again")
            except SophonError as exc:
                return exc
        hosts: tuple[str, ...] = (GITHUB_HOSTS if row.type == "github" else
                                  (row.host,) if row.type == "http" and row.host else ())
        return ConnectorGrant(name=row.name, type=row.type, value=value, hosts=hosts,
                              header=row.header,
                              push=tuple((row.rules or {}).get("push") or ()))

    async def _of_user(self, user_id: str) -> _Held:
        held = self._cache.get(user_id)
        if held is None:
            changes = self._changes
            async with self._db() as db:
                rows = (await db.execute(select(Connector).where(
                    Connector.user_id == user_id).order_by(Connector.name))).scalars().all()
            held = _Held({r.name: self._grant(r) for r in rows},
                         tuple((r.name, None if r.execute else frozenset(_keys_of(r) or ()))
                               for r in rows if r.execute or _keys_of(r)))
            if changes == self._changes:
                self._cache[user_id] = held
        return held

    async def grants(self, user_id: str, names: list[str]) -> list[ConnectorGrant]:
        """The user's connectors of these names, decrypted, in the order given; a name
        with no connector (deleted since it was attached) is left out."""
        return self._pick(await self._of_user(user_id), names)

    async def execute_grants(self, user_id: str, key_id: str | None) -> list[ConnectorGrant]:
        """The user's connectors for an execution made with API key ``key_id``: those
        marked ``execute`` and those attached to that key."""
        held = await self._of_user(user_id)
        return self._pick(held, [name for name, keys in held.execute
                                 if keys is None or key_id in keys])

    @staticmethod
    def _pick(held: _Held, names: Iterable[str]) -> list[ConnectorGrant]:
        out = []
        for name in dict.fromkeys(names):
            grant = held.by_name.get(name)
            if isinstance(grant, SophonError):
                raise grant
            if grant is not None:
                out.append(grant)
        return out

    async def check_names(self, user_id: str, names: list[str]) -> None:
        """A 400 for the first name the user has no connector of (a session's settings)."""
        held = await self._of_user(user_id)
        for name in names:
            if name not in held.by_name:
                raise BadRequest(f"no connector named {name!r}; create it with "
                                 "POST /v1/connectors")
