"""Session secrets: encrypted at rest, injected as environment variables, never returned."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sophon.errors import NotFound
from sophon.keys import Sealer
from sophon.store.owned import owned
from sophon.store.tables import SecretRow, SessionRow
from sophon.users import Principal


class SecretStore:
    def __init__(self, db: async_sessionmaker[AsyncSession], key: bytes) -> None:
        self._db = db
        self._sealer = Sealer(key)
        # Decrypted values per session, read on every exec and turn; this process is the
        # only writer, so dropping an entry on each change keeps it true.
        self._cache: dict[str, dict[str, str]] = {}

    def forget(self, session_id: str) -> None:
        self._cache.pop(session_id, None)

    async def put(self, principal: Principal, session_id: str, name: str, value: str) -> None:
        token = self._sealer.seal(value)
        self.forget(session_id)
        async with self._db() as db:
            await owned(db, SessionRow, principal.user_id, session_id, what="session")
            await db.merge(SecretRow(session_id=session_id, name=name, value=token))
            await db.commit()
        self.forget(session_id)

    async def names(self, principal: Principal, session_id: str) -> list[str]:
        async with self._db() as db:
            await owned(db, SessionRow, principal.user_id, session_id, what="session")
            return list((await db.execute(
                select(SecretRow.name).where(SecretRow.session_id == session_id)
                .order_by(SecretRow.name))).scalars())

    async def remove(self, principal: Principal, session_id: str, name: str) -> None:
        async with self._db() as db:
            await owned(db, SessionRow, principal.user_id, session_id, what="session")
            res = await db.execute(delete(SecretRow).where(
                SecretRow.session_id == session_id, SecretRow.name == name))
            await db.commit()
        self.forget(session_id)
        if not res.rowcount:  # type: ignore[attr-defined]
            raise NotFound(f"no secret named {name!r}")

    async def values(self, session_id: str) -> dict[str, str]:
        """Decrypted, for the session's own execs and turns (never for a caller)."""
        cached = self._cache.get(session_id)
        if cached is not None:
            return dict(cached)
        async with self._db() as db:
            rows = (await db.execute(
                select(SecretRow).where(SecretRow.session_id == session_id))).scalars().all()
        values = {r.name: self._sealer.unseal(r.value, "stored secrets") for r in rows}
        self._cache[session_id] = values
        return dict(values)
