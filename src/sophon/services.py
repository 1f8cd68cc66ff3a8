"""The server's long-lived parts, wired together once at start-up."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from sophon.box.manager import BoxManager
from sophon.config import Settings
from sophon.sandbox.service import ExecutionService
from sophon.store.db import make_engine, migrate, sessionmaker
from sophon.users import UserService

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    db: async_sessionmaker[AsyncSession]
    users: UserService
    boxes: BoxManager
    executions: ExecutionService

    @classmethod
    async def open(cls, settings: Settings) -> Services:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.resolved_database_url)
        await migrate(engine)
        db = sessionmaker(engine)
        boxes = BoxManager(settings)
        executions = ExecutionService(boxes, db)
        cut_off = await executions.recover()
        if cut_off:
            log.warning("%d execution(s) were cut off by the last stop; marked failed", cut_off)
        await boxes.start()
        return cls(settings, engine, db, UserService(db), boxes, executions)

    async def close(self) -> None:
        await self.executions.close()
        await self.boxes.close()
        await self.engine.dispose()
