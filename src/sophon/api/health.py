from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from sophon.api.deps import PrincipalDep, ServicesDep
from sophon.capabilities import Capabilities, capabilities
from sophon.quotas import UserLimits

router = APIRouter()


@router.get("/healthz")
async def healthz(services: ServicesDep) -> dict[str, object]:
    return {"status": "ok", "box_limits": services.boxes.limits_mode,
            "box_seccomp": services.boxes.backend.seccomp_mode,
            "box_disk": services.boxes.disks.mode,
            "box_claude_code": services.egress.claude_code,
            "box_images": _images(services),
            "node": {"id": services.nodes.id, "url": services.nodes.url}}


def _images(services: ServicesDep) -> object:
    """Each base image's state (a build under way: mmdebstrap's last line), or why
    boxes see the host's /usr."""
    store = services.boxes.images
    if store is None:
        return f"off: {services.boxes.images_off}"
    return {v.name: v.progress if v.status == "building" and v.progress else v.status
            for v in store.list()}


class Me(BaseModel):
    id: str
    name: str
    token_budget: int | None = Field(description="Tokens you may spend across sessions "
                                                 "(None: no budget)")
    tokens_used: int
    limits: UserLimits = Field(description="Your use of each per-user limit, and the limit "
                                           "(None: none) with the setting that sets it")


@router.get("/v1/me", response_model=Me)
async def me(principal: PrincipalDep, services: ServicesDep) -> Me:
    """Who you are, your token budget across sessions, and your use of the per-user
    limits: boxes awake, executions running, disk, events a minute."""
    budget = services.gateway.models.user_token_budget
    return Me(id=principal.user_id, name=principal.name, token_budget=budget or None,
              tokens_used=await services.gateway.user_tokens(principal.user_id),
              limits=await services.quotas.usage(principal.user_id))


@router.get("/v1/capabilities", response_model=Capabilities)
async def server_capabilities(principal: PrincipalDep, services: ServicesDep) -> Capabilities:
    """What this server offers: bases (with why one is not available), runtimes, models,
    network modes and the limits a session may ask for."""
    return capabilities(services.settings, services.sessions.claude_code_missing(),
                        services.boxes.images)
