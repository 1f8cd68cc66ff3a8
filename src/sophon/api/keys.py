"""Your API keys (never the keys themselves): their ids are what connectors name to go
with some keys' executions only."""

from __future__ import annotations

from fastapi import APIRouter

from sophon.api.deps import PrincipalDep, ServicesDep
from sophon.users import KeyList

router = APIRouter(prefix="/v1/keys", tags=["keys"])


@router.get("", response_model=KeyList)
async def list_keys(services: ServicesDep, principal: PrincipalDep) -> KeyList:
    """Your API keys, oldest first: id, the key's first characters, and whether this
    request was made with it. New keys come from the server's admin
    (`sophon users add-key NAME`)."""
    return KeyList(keys=await services.users.keys(principal))
