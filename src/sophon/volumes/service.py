"""Volumes: a user's named, persistent storage, mounted read-write at /data/<name>/ in
every box of that user (see docs/ARCHITECTURE.md, "Volumes").

The one owner of volume data: the rows, the gids they are given, and the per-user map
that executions mount from, which is dropped here whenever a volume is made or deleted.
The images and mounts themselves are box/volumes.py's.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sophon.box.manager import BoxManager
from sophon.config import Settings
from sophon.errors import BadRequest, Conflict
from sophon.store.owned import owned
from sophon.store.tables import Volume, iso
from sophon.users import Principal
from sophon.volumes.models import VolumeView

if TYPE_CHECKING:
    from sophon.quotas import Quotas

# A user's volumes by name: (id, gid, size_mb).
UserVolumes = dict[str, tuple[str, int, int]]


class VolumeService:
    def __init__(self, settings: Settings, db: async_sessionmaker[AsyncSession],
                 boxes: BoxManager, quotas: Quotas) -> None:
        self.settings = settings
        self._db = db
        self.boxes = boxes
        self.quotas = quotas
        # Read on every execution; dropped for a user whenever they make or delete one.
        self._by_user: dict[str, UserVolumes] = {}

    def _view(self, v: Volume) -> VolumeView:
        use = self.boxes.volumes.usage(v.id)
        return VolumeView(name=v.name, mount_path=f"/data/{v.name}/", size_mb=v.size_mb,
                          used_bytes=use.used_bytes if use.limit_bytes else None,
                          created_at=iso(v.created_at))

    async def create(self, principal: Principal, name: str,
                     size_mb: int | None) -> VolumeView:
        limit = self.settings.disk_max_mb
        size = size_mb or self.settings.box_disk_mb
        if size > limit:
            raise BadRequest(f"size_mb is {size}, over this server's ceiling of {limit} MiB "
                             "a volume (SOPHON_BOX_DISK_MAX_MB)")
        await self.quotas.check_disk(principal.user_id, size, "a new volume")
        # Volume gids sit above every box uid, so no box's uid is ever a volume's group.
        base = self.settings.box_uid_first + self.settings.box_uid_count
        for _ in range(5):  # a gid taken concurrently: take the next
            async with self._db() as db:
                if (await db.execute(select(Volume.id).where(
                        Volume.user_id == principal.user_id, Volume.name == name))).first():
                    raise Conflict(f"you have a volume named {name!r} already")
                top = (await db.execute(select(func.max(Volume.gid)))).scalar_one_or_none()
                vol = Volume(id=uuid.uuid4().hex[:31], user_id=principal.user_id, name=name,
                             size_mb=size, gid=max(base, (top or 0) + 1),
                             created_at=datetime.now(UTC))
                db.add(vol)
                try:
                    await db.commit()
                except IntegrityError:
                    continue
            self._by_user.pop(principal.user_id, None)
            self.boxes.know_volume(vol.id, vol.size_mb, vol.gid)
            return self._view(vol)
        raise Conflict(f"could not make volume {name!r}; try again")

    async def list(self, principal: Principal) -> list[VolumeView]:
        async with self._db() as db:
            rows = (await db.execute(select(Volume).where(Volume.user_id == principal.user_id)
                                     .order_by(Volume.name))).scalars().all()
        return [self._view(v) for v in rows]

    async def delete(self, principal: Principal, name: str) -> None:
        """The volume and its files, for good; boxes that mount it are stopped."""
        async with self._db() as db:
            vol = await owned(db, Volume, principal.user_id, name=name, what="volume")
            await db.delete(vol)
            await db.commit()
        self._by_user.pop(principal.user_id, None)
        await self.boxes.remove_volume(vol.id)

    async def of_user(self, user_id: str) -> UserVolumes:
        """The user's volumes, for what their executions mount (kept between calls)."""
        got = self._by_user.get(user_id)
        if got is None:
            async with self._db() as db:
                rows = (await db.execute(select(Volume).where(Volume.user_id == user_id))
                        ).scalars().all()
            got = {r.name: (r.id, r.gid, r.size_mb) for r in rows}
            for vid, gid, size_mb in got.values():
                self.boxes.know_volume(vid, size_mb, gid)
            self._by_user[user_id] = got
        return got
