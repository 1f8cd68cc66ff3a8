"""Execution webhooks: the user's signing secret (see sophon.webhooks)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from sophon.api.deps import PrincipalDep

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


class WebhookSecretOut(BaseModel):
    secret: str = Field(description="`whsec_<base64>`: verify deliveries with it (Standard "
                                    "Webhooks); shown this once, never again")


@router.post("/secret", response_model=WebhookSecretOut,
             summary="Create or rotate the webhook signing secret")
async def rotate_secret(request: Request, principal: PrincipalDep) -> WebhookSecretOut:
    """Makes a new signing secret for the caller's execution webhooks, replacing the old
    one: deliveries from now on are signed with the new secret only."""
    secrets = request.app.state.services.executions.webhook_secrets
    return WebhookSecretOut(secret=await secrets.rotate(principal.user_id))
