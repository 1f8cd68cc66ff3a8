"""Volumes: a user's named, persistent storage, mounted read-write at /data/<name>/ in
every box of that user (see docs/ARCHITECTURE.md, "Volumes")."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from sophon.api.deps import PrincipalDep
from sophon.api.openapi import errors
from sophon.errors import BadRequest, Conflict, NotFound
from sophon.sandbox.models import VOLUME_NAME_PATTERN
from sophon.services import Services
from sophon.store.tables import Volume

router = APIRouter(prefix="/v1/volumes", tags=["volumes"])


class VolumeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=VOLUME_NAME_PATTERN,
                      description="Lowercase letters, digits and '-'; mounted at /data/<name>/")
    size_mb: int | None = Field(None, ge=16, description="Its quota; by default "
                                "SOPHON_BOX_DISK_MB, at most SOPHON_BOX_DISK_MAX_MB")


class VolumeView(BaseModel):
    name: str
    mount_path: str
    size_mb: int
    used_bytes: int | None = None
    created_at: str


class VolumeList(BaseModel):
    volumes: list[VolumeView]


def _iso(dt: datetime) -> str:
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).isoformat().replace("+00:00", "Z")


def _view(services: Services, v: Volume) -> VolumeView:
    use = services.boxes.volumes.usage(v.id)
    return VolumeView(name=v.name, mount_path=f"/data/{v.name}/", size_mb=v.size_mb,
                      used_bytes=use.used_bytes if use.limit_bytes else None,
                      created_at=_iso(v.created_at))


@router.post("", status_code=201, response_model=VolumeView, responses=errors(
    400, (409, "You have a volume of that name already (`conflict`).")))
async def create_volume(body: VolumeCreate, request: Request,
                        principal: PrincipalDep) -> VolumeView:
    """Make a volume: every box of yours (each thread, each execution) mounts it
    read-write at /data/<name>/ from its next execution on."""
    services: Services = request.app.state.services
    limit = services.settings.disk_max_mb
    size = body.size_mb or services.settings.box_disk_mb
    if size > limit:
        raise BadRequest(f"size_mb is {size}, over this server's ceiling of {limit} MiB "
                         "a volume (SOPHON_BOX_DISK_MAX_MB)")
    await services.quotas.check_disk(principal.user_id, size, "a new volume")
    base = services.settings.box_uid_first + services.settings.box_uid_count
    for _ in range(5):  # a gid taken concurrently: take the next
        async with services.db() as db:
            if (await db.execute(select(Volume.id).where(
                    Volume.user_id == principal.user_id, Volume.name == body.name))).first():
                raise Conflict(f"you have a volume named {body.name!r} already")
            top = (await db.execute(select(func.max(Volume.gid)))).scalar_one_or_none()
            vol = Volume(id=uuid.uuid4().hex[:31], user_id=principal.user_id, name=body.name,
                         size_mb=size, gid=max(base, (top or 0) + 1),
                         created_at=datetime.now(UTC))
            db.add(vol)
            try:
                await db.commit()
            except IntegrityError:
                continue
        services.executions.forget_volumes(principal.user_id)
        services.boxes.know_volume(vol.id, vol.size_mb, vol.gid)
        return _view(services, vol)
    raise Conflict(f"could not make volume {body.name!r}; try again")


@router.get("", response_model=VolumeList)
async def list_volumes(request: Request, principal: PrincipalDep) -> VolumeList:
    """Your volumes."""
    services: Services = request.app.state.services
    async with services.db() as db:
        rows = (await db.execute(select(Volume).where(Volume.user_id == principal.user_id)
                                 .order_by(Volume.name))).scalars().all()
    return VolumeList(volumes=[_view(services, v) for v in rows])


@router.delete("/{name}", status_code=204, responses=errors(404))
async def delete_volume(name: str, request: Request, principal: PrincipalDep) -> Response:
    """Delete a volume and its files, for good. Boxes that mount it are stopped (their
    own files stay); their next execution runs without it."""
    services: Services = request.app.state.services
    async with services.db() as db:
        vol = (await db.execute(select(Volume).where(
            Volume.user_id == principal.user_id, Volume.name == name))).scalar_one_or_none()
        if vol is None:
            raise NotFound(f"no volume {name!r}")
        await db.delete(vol)
        await db.commit()
    services.executions.forget_volumes(principal.user_id)
    await services.boxes.remove_volume(vol.id)
    return Response(status_code=204)
