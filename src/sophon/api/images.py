"""Images API: thin routes over ImageService (docs/ARCHITECTURE.md, "Images")."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import StreamingResponse

from sophon.api.deps import PrincipalDep, ServicesDep
from sophon.api.openapi import SSE_EVENT, EventStreamResponse, errors
from sophon.errors import BadRequest
from sophon.images.models import CreateImage, ImageList
from sophon.images.store import ImageView

router = APIRouter(prefix="/v1/images", tags=["images"])


@router.get("", response_model=ImageList, responses=errors(400))
async def list_images(services: ServicesDep, principal: PrincipalDep) -> ImageList:
    """The built-in images and your own, each with its status (ready, building, not
    built, failed, unavailable)."""
    return ImageList(images=await services.images.list(principal))


@router.post("", status_code=202, response_model=ImageView, responses=errors(
    400, (409, "You have an image of that name already (`conflict`)."),
    (429, "You have SOPHON_USER_MAX_IMAGES images already (`limit_exceeded`).")))
async def create_image(body: CreateImage, services: ServicesDep,
                       principal: PrincipalDep) -> ImageView:
    """Define an image of your own on a built-in base; its build starts now (follow it
    with `GET /v1/images/{name}/log`). Sessions (`base`) and execute-API threads
    (`image`) can name it once it is ready."""
    return await services.images.create(principal, body)


@router.get("/{name}", response_model=ImageView, responses=errors(400, 404))
async def get_image(name: str, services: ServicesDep, principal: PrincipalDep) -> ImageView:
    """One image: a built-in one or yours."""
    return await services.images.get(principal, name)


@router.get("/{name}/log", response_class=EventStreamResponse, responses={
    200: {"description": "The build's log as server-sent events: an `image_log` event "
                         "per line (its id the line's number), followed while it builds, "
                         "then one `image_status` event with the image as it ended",
          "content": {"text/event-stream": {"schema": SSE_EVENT}}},
    **errors(400, 404)})
async def image_log(
    name: str,
    services: ServicesDep,
    principal: PrincipalDep,
    after: int | None = Query(None, ge=0, le=10**9),
    last_event_id: str | None = Header(None, pattern=r"^[0-9]{0,9}$"),
) -> Response:
    start = after
    if start is None and last_event_id:
        if not last_event_id.isdigit():
            raise BadRequest("Last-Event-ID must be a line number")
        start = int(last_event_id)
    lines = await services.images.log_lines(principal, name, start or 0,
                                            services.settings.sse_heartbeat_seconds)

    async def stream() -> AsyncIterator[bytes]:
        yield b"retry: 1000\n\n"
        async for item in lines:
            if item is None:
                yield b": heartbeat\n\n"
            elif isinstance(item, ImageView):
                data = json.dumps({"type": "image_status", "image": item.model_dump()})
                yield f"event: image_status\ndata: {data}\n\n".encode()
            else:
                n, line = item
                data = json.dumps({"type": "image_log", "line": n, "text": line})
                yield f"id: {n}\nevent: image_log\ndata: {data}\n\n".encode()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.delete("/{name}", status_code=204, responses=errors(
    400, 404, (409, "Sessions or threads of yours run on it (`conflict`); the message "
                    "names them.")))
async def delete_image(name: str, services: ServicesDep, principal: PrincipalDep) -> Response:
    """Delete an image of yours. Refused while a session or thread of yours runs on it."""
    await services.images.delete(principal, name)
    return Response(status_code=204)
