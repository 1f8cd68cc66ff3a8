"""Users, their API keys, and browser sign-ins (the dashboard's cookie, one-time links)."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

from pydantic import BaseModel, Field
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sophon.errors import Conflict, NotFound, SophonError, Unauthorized
from sophon.store.tables import ApiKey, SignInLink, User, WebSession, iso, utcnow

KEY_PREFIX = "sk-sophon-"
WEB_SESSION_TTL = timedelta(days=7)
SIGN_IN_LINK_TTL = timedelta(minutes=15)


# The dashboard's session cookie (its value names a row of web_sessions).
WEB_COOKIE = "sophon_session"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of a request."""

    user_id: str
    name: str
    # The API key the request was made with (a dashboard sign-in: the key it was made
    # with; None for a one-time link's): what the execution API's connectors go by.
    key_id: str | None = None


class KeyView(BaseModel):
    """One of a user's API keys as its owner sees it: never the key itself."""

    id: str = Field(description="What connectors name the key by (`keys`)")
    prefix: str = Field(description="The key's first characters, to tell it apart")
    created_at: str
    current: bool = Field(description="Whether this request was made with it")


class KeyList(BaseModel):
    keys: list[KeyView]


@dataclass(frozen=True)
class WebSignIn:
    """A new browser sign-in: ``cookie`` goes out once in Set-Cookie and is never stored
    (the row's id is its sha256); ``csrf_token`` must come back with every change."""

    principal: Principal
    cookie: str
    csrf_token: str


class LinkGone(SophonError):
    """A sign-in link that was used already, or has expired."""

    status = 410
    code = "link_gone"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class UserService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._cache: dict[str, Principal] = {}

    async def create(self, name: str) -> tuple[Principal, str]:
        """Create a user and their first API key; the key is returned once, never stored."""
        user = User(id=uuid.uuid4().hex, name=name)
        row, key = self._new_key_row(user.id)
        async with self._sessions() as db:
            db.add(user)
            try:
                await db.flush()
            except IntegrityError as exc:
                raise Conflict(f"a user named {name!r} already exists") from exc
            db.add(row)
            await db.commit()
        return Principal(user.id, name, row.id), key

    async def add_key(self, name: str) -> str:
        async with self._sessions() as db:
            user = (await db.execute(select(User).where(User.name == name))).scalar_one_or_none()
            if user is None:
                raise Unauthorized(f"no user named {name!r}")
            row, key = self._new_key_row(user.id)
            db.add(row)
            await db.commit()
        return key

    async def keys(self, principal: Principal) -> list[KeyView]:
        """The caller's API keys, oldest first."""
        async with self._sessions() as db:
            rows = (await db.execute(select(ApiKey).where(
                ApiKey.user_id == principal.user_id).order_by(ApiKey.created_at, ApiKey.id))
                    ).scalars().all()
        return [KeyView(id=r.id, prefix=r.prefix, created_at=iso(r.created_at),
                        current=r.id == principal.key_id) for r in rows]

    @staticmethod
    def _new_key_row(user_id: str) -> tuple[ApiKey, str]:
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKey(id=uuid.uuid4().hex, user_id=user_id, key_hash=hash_key(key),
                     prefix=key[: len(KEY_PREFIX) + 4])
        return row, key

    async def authenticate(self, key: str | None) -> Principal:
        if not key:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>' "
                               "(or sign in to the dashboard)")
        digest = hash_key(key)
        cached = self._cache.get(digest)
        if cached is not None:
            return cached
        async with self._sessions() as db:
            row = (
                await db.execute(
                    select(User.id, User.name, ApiKey.id.label("key_id"))
                    .join(ApiKey, ApiKey.user_id == User.id)
                    .where(ApiKey.key_hash == digest)
                )
            ).first()
        if row is None:
            raise Unauthorized("invalid API key")
        principal = Principal(row.id, row.name, row.key_id)
        self._cache[digest] = principal
        return principal

    # --- browser sign-ins -------------------------------------------------------------

    async def sign_in(self, key: str) -> WebSignIn:
        """A web session made with an API key; it ends when the key is deleted."""
        async with self._sessions() as db:
            row = (await db.execute(
                select(User.id, User.name, ApiKey.id.label("key_id"))
                .join(ApiKey, ApiKey.user_id == User.id)
                .where(ApiKey.key_hash == hash_key(key)))).first()
            if row is None:
                raise Unauthorized("that API key is not valid (mistyped, or revoked): "
                                   "check it and try again")
            signed_in = await self._new_web_session(
                db, Principal(row.id, row.name, row.key_id), row.key_id)
            await db.commit()
        return signed_in

    async def sign_in_with_link(self, token: str) -> WebSignIn:
        """Use up a one-time link and make a web session with it."""
        digest = hash_key(token)
        now = utcnow()
        async with self._sessions() as db:
            used = await db.execute(
                update(SignInLink)
                .where(SignInLink.id == digest, SignInLink.used_at.is_(None),
                       SignInLink.expires_at > now)
                .values(used_at=now))
            if used.rowcount != 1:  # type: ignore[attr-defined]
                link = await db.get(SignInLink, digest)
                if link is None:
                    raise NotFound("this sign-in link is not known")
                if link.used_at is not None:
                    raise LinkGone("this sign-in link has been used already: links work once")
                raise LinkGone("this sign-in link has expired: links work for 15 minutes")
            user = (await db.execute(
                select(User.id, User.name).join(SignInLink, SignInLink.user_id == User.id)
                .where(SignInLink.id == digest))).one()
            signed_in = await self._new_web_session(db, Principal(user.id, user.name), None)
            await db.commit()
        return signed_in

    async def web_session(self, cookie: str) -> tuple[Principal, str]:
        """The caller and CSRF token of a live web session."""
        async with self._sessions() as db:
            row = (await db.execute(
                select(User.id, User.name, WebSession.csrf_token, WebSession.api_key_id)
                .join(WebSession, WebSession.user_id == User.id)
                .where(WebSession.id == hash_key(cookie), WebSession.expires_at > utcnow())
            )).first()
        if row is None:
            raise Unauthorized("your sign-in has ended (signed out, expired, or its key "
                               "was revoked): sign in again")
        return Principal(row.id, row.name, row.api_key_id), row.csrf_token

    async def sign_out(self, cookie: str) -> None:
        async with self._sessions() as db:
            await db.execute(delete(WebSession).where(WebSession.id == hash_key(cookie)))
            await db.commit()

    async def create_sign_in_link(self, name: str,
                                  ttl: timedelta = SIGN_IN_LINK_TTL) -> str:
        """A one-time sign-in token for user ``name`` (stored hashed; shown once)."""
        token = secrets.token_urlsafe(32)
        now = utcnow()
        async with self._sessions() as db:
            user_id = (await db.execute(
                select(User.id).where(User.name == name))).scalar_one_or_none()
            if user_id is None:
                raise NotFound(f"no user named {name!r}")
            await db.execute(delete(SignInLink).where(SignInLink.expires_at <= now))
            db.add(SignInLink(id=hash_key(token), user_id=user_id, created_at=now,
                              expires_at=now + ttl))
            await db.commit()
        return token

    @staticmethod
    async def _new_web_session(db: AsyncSession, principal: Principal,
                               key_id: str | None) -> WebSignIn:
        cookie, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = utcnow()
        await db.execute(delete(WebSession).where(WebSession.expires_at <= now))  # old ones
        db.add(WebSession(id=hash_key(cookie), user_id=principal.user_id, api_key_id=key_id,
                          csrf_token=csrf, created_at=now, expires_at=now + WEB_SESSION_TTL))
        return WebSignIn(principal, cookie, csrf)
