"""Users and their API keys."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sophon.errors import Conflict, Unauthorized
from sophon.store.tables import ApiKey, User

KEY_PREFIX = "sk-sophon-"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of a request."""

    user_id: str
    name: str


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
        return Principal(user.id, name), key

    async def add_key(self, name: str) -> str:
        async with self._sessions() as db:
            user = (await db.execute(select(User).where(User.name == name))).scalar_one_or_none()
            if user is None:
                raise Unauthorized(f"no user named {name!r}")
            row, key = self._new_key_row(user.id)
            db.add(row)
            await db.commit()
        return key

    @staticmethod
    def _new_key_row(user_id: str) -> tuple[ApiKey, str]:
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKey(id=uuid.uuid4().hex, user_id=user_id, key_hash=hash_key(key),
                     prefix=key[: len(KEY_PREFIX) + 4])
        return row, key

    async def authenticate(self, key: str | None) -> Principal:
        if not key:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        digest = hash_key(key)
        cached = self._cache.get(digest)
        if cached is not None:
            return cached
        async with self._sessions() as db:
            row = (
                await db.execute(
                    select(User.id, User.name)
                    .join(ApiKey, ApiKey.user_id == User.id)
                    .where(ApiKey.key_hash == digest)
                )
            ).first()
        if row is None:
            raise Unauthorized("invalid API key")
        principal = Principal(row.id, row.name)
        self._cache[digest] = principal
        return principal
