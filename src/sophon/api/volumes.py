"""Volumes API: thin routes over VolumeService (see docs/ARCHITECTURE.md, "Volumes")."""

from __future__ import annotations

from fastapi import APIRouter, Response

from sophon.api.deps import PrincipalDep, ServicesDep
from sophon.api.openapi import errors
from sophon.volumes.models import VolumeCreate, VolumeList, VolumeView

router = APIRouter(prefix="/v1/volumes", tags=["volumes"])


@router.post("", status_code=201, response_model=VolumeView, responses=errors(
    400, (409, "You have a volume of that name already (`conflict`)."),
    (429, "It would take your disk past SOPHON_USER_MAX_DISK_MB (`limit_exceeded`).")))
async def create_volume(body: VolumeCreate, services: ServicesDep,
                        principal: PrincipalDep) -> VolumeView:
    """Make a volume: every box of yours (each thread, each execution) mounts it
    read-write at /data/<name>/ from its next execution on."""
    return await services.volumes.create(principal, body.name, body.size_mb)


@router.get("", response_model=VolumeList)
async def list_volumes(services: ServicesDep, principal: PrincipalDep) -> VolumeList:
    """Your volumes."""
    return VolumeList(volumes=await services.volumes.list(principal))


@router.delete("/{name}", status_code=204, responses=errors(404))
async def delete_volume(name: str, services: ServicesDep, principal: PrincipalDep) -> Response:
    """Delete a volume and its files, for good. Boxes that mount it are stopped (their
    own files stay); their next execution runs without it."""
    await services.volumes.delete(principal, name)
    return Response(status_code=204)
