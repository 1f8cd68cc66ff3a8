"""``GET /v1/cluster``: the nodes on this server's database, for admins."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from sophon.api.deps import AdminDep, ServicesDep
from sophon.api.openapi import errors
from sophon.cluster.nodes import NodeView

router = APIRouter()


class Cluster(BaseModel):
    node: str = Field(description="The node that answered")
    database: str = Field(description="sqlite (one node) or postgresql (any number)")
    nodes: list[NodeView] = Field(description="Every node that has not long stopped, "
                                              "oldest first; alive: heard from within "
                                              "SOPHON_NODE_LEASE_SECONDS")


@router.get("/v1/cluster", response_model=Cluster, responses=errors(
    (403, "Only admins (SOPHON_ADMIN_USERS) see the cluster (`forbidden`).")))
async def cluster(_: AdminDep, services: ServicesDep) -> Cluster:
    """The nodes sharing this server's database, with each one's load at its last
    heartbeat (admins: SOPHON_ADMIN_USERS)."""
    return Cluster(node=services.nodes.id, database=services.engine.url.get_backend_name(),
                   nodes=await services.nodes.list())
