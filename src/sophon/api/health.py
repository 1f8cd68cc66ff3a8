from __future__ import annotations

from fastapi import APIRouter

from sophon.api.deps import PrincipalDep, ServicesDep

router = APIRouter()


@router.get("/healthz")
async def healthz(services: ServicesDep) -> dict[str, object]:
    return {"status": "ok", "box_limits": services.boxes.limits_mode,
            "box_seccomp": services.boxes.backend.seccomp_mode,
            "box_disk": services.boxes.disks.mode}


@router.get("/v1/me")
async def me(principal: PrincipalDep) -> dict[str, str]:
    return {"id": principal.user_id, "name": principal.name}
