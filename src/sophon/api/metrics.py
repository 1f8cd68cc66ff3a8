"""``GET /metrics``: the server's metrics in Prometheus's text format, for admins."""

from __future__ import annotations

import os

from fastapi import APIRouter, Response

from sophon import metrics
from sophon.api.deps import AdminDep
from sophon.box import ids
from sophon.services import Services

router = APIRouter()

def live_gauges(services: Services) -> dict[str, tuple[str, object, str]]:
    """What is true right now, read at each scrape."""
    boxes = services.boxes
    awake: dict[str, int] = {k.name.lower(): 0 for k in ids.Kind}
    for box_id in boxes.awake():
        kind = ids.kind_of(box_id)
        label = kind.name.lower() if kind is not None else "other"
        awake[label] = awake.get(label, 0) + 1
    try:
        on_disk = sum(1 for e in os.scandir(services.settings.boxes_dir) if e.is_dir())
    except OSError:
        on_disk = 0
    total_awake = sum(awake.values())
    return {
        "sophon_boxes_awake": ("Boxes running now, by kind (the pool's are executions)",
                               awake, "kind"),
        "sophon_boxes_asleep": ("Boxes with files kept on disk but not running",
                                max(0, on_disk - total_awake), ""),
        "sophon_box_pool_level": ("Started, empty boxes ready to be handed out",
                                  boxes.pool_level, ""),
        "sophon_executions_in_flight": ("Executions accepted and not yet finished",
                                        services.executions.in_flight, ""),
        "sophon_door_connections_open": (
            "Connections through the egress door now",
            sum(t.open for t in services.egress.door.tallies.values()), ""),
    }


@router.get("/metrics", include_in_schema=False)
async def scrape(_: AdminDep) -> Response:
    return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)
