"""The one way to load a row that belongs to a user (a session, thread, volume,
execution): every service that takes a caller's id goes through ``owned``, so no route
has to remember to check.

Another user's row is answered exactly as a missing one (404, never 403): a caller
learns nothing about what exists beyond their own.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from sophon.errors import NotFound
from sophon.store.tables import Execution, SessionRow, Thread, Volume

Row = TypeVar("Row", SessionRow, Thread, Volume, Execution)


async def owned(db: AsyncSession, table: type[Row], user_id: str, key: str | None = None, *,
                name: str | None = None, what: str, missing: str | None = None) -> Row:
    """The user's row of ``table`` with primary key ``key`` (or, for a table of named
    things, ``name``); NotFound (``missing``, or "no <what> <id>") for any other."""
    row: Any
    if name is not None:
        assert key is None, "a row is found by its key or by its name, not both"
        row = (await db.execute(select(table).where(
            table.user_id == user_id, table.name == name))).scalar_one_or_none()
    else:
        assert key is not None, "a row is found by its key or by its name"
        row = await db.get(table, key)
    if row is None or row.user_id != user_id:
        raise NotFound(missing or f"no {what} {key if name is None else name!r}")
    return row  # type: ignore[no-any-return]
