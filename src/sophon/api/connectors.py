"""Connectors API: thin routes over ConnectorService (see docs/ARCHITECTURE.md,
"Connectors"). A connector's value goes in once and never comes back out."""

from __future__ import annotations

from fastapi import APIRouter, Response

from sophon.api.deps import PrincipalDep, ServicesDep
from sophon.api.openapi import errors
from sophon.egress.connectors import (
    ConnectorList,
    ConnectorView,
    CreateConnector,
    UpdateConnector,
)

router = APIRouter(prefix="/v1/connectors", tags=["connectors"])


@router.post("", status_code=201, response_model=ConnectorView, responses=errors(
    (400, "The request is not valid (`invalid_request`): an unknown type, a value that "
          "does not look like that type's credential, a host that is not one host "
          "(a `*`, a URL), a header the door owns; the message says which."),
    (409, "You have a connector of that name already (`conflict`).")))
async def create_connector(body: CreateConnector, services: ServicesDep,
                           principal: PrincipalDep) -> ConnectorView:
    """Store a credential for the egress door: it is sealed at rest, never shown again,
    and sent upstream by the door for the boxes of the sessions it is attached to; a
    box holds only a placeholder."""
    return await services.connectors.create(principal, body)


@router.get("", response_model=ConnectorList)
async def list_connectors(services: ServicesDep, principal: PrincipalDep) -> ConnectorList:
    """Your connectors: names, types and hosts, never their values."""
    return ConnectorList(connectors=await services.connectors.list(principal))


@router.patch("/{name}", response_model=ConnectorView, responses=errors(
    (400, "The request is not valid (`invalid_request`): both `execute: true` and `keys`, "
          "a key id that is not one of yours, or nothing to change."),
    404))
async def update_connector(name: str, body: UpdateConnector, services: ServicesDep,
                           principal: PrincipalDep) -> ConnectorView:
    """Which of the execution API's executions get the connector: those of every one of
    your API keys (`execute: true`), of some (`keys`), or none (`execute: false`). Boxes
    get the change from their next execution on."""
    return await services.connectors.update(principal, name, body)


@router.delete("/{name}", status_code=204, responses=errors(404))
async def delete_connector(name: str, services: ServicesDep,
                           principal: PrincipalDep) -> Response:
    """Delete a connector and its value, for good; boxes get it no more from their
    next connection on."""
    await services.connectors.delete(principal, name)
    return Response(status_code=204)
