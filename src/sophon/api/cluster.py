"""``GET /v1/cluster``: the nodes on this server's database, and draining one, for admins."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from sophon.api.deps import AdminDep, ServicesDep
from sophon.api.openapi import errors
from sophon.cluster.nodes import NodeView
from sophon.errors import NotFound

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


class Drain(BaseModel):
    draining: bool = Field(True, description="false: take work again")


@router.post("/v1/cluster/nodes/{node_id}/drain", response_model=NodeView, responses=errors(
    (403, "Only admins (SOPHON_ADMIN_USERS) drain nodes (`forbidden`)."), 404))
async def drain(node_id: str, _: AdminDep, services: ServicesDep,
                body: Drain | None = None) -> NodeView:
    """Drain a node: it gets no new session or thread, and at each heartbeat hands on
    the sessions it runs that are between turns (their boxes stop; the next request for
    one, on any node, starts it on another). Turns and execs running there finish
    first. ``{"draining": false}`` undoes it."""
    found = await services.nodes.set_draining(node_id, (body or Drain()).draining)
    if found is None:
        raise NotFound(f"there is no node {node_id}; `sophon cluster` lists them")
    return found
