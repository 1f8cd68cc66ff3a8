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
async def me(principal: PrincipalDep, services: ServicesDep) -> dict[str, object]:
    """Who you are, and your token budget across sessions (None: no budget)."""
    budget = services.gateway.models.user_token_budget
    return {"id": principal.user_id, "name": principal.name,
            "token_budget": budget or None,
            "tokens_used": await services.gateway.user_tokens(principal.user_id)}
