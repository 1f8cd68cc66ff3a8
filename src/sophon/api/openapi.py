"""The OpenAPI document, made to say what the server really sends.

Every error is ``{"error": code, "message": text}`` (``ErrorBody``). A route lists its
own errors with ``responses=errors(...)``; what holds for every route is added here once:

- 400 wherever FastAPI would have listed its 422 (the server answers a request that fails
  validation with 400 ``invalid_request``, never 422), and FastAPI's validation schemas go;
- 401 and the bearer security scheme on every route that needs an API key;
- 413 on every route: the body limit (``app.BodyLimit``) holds for all of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from sophon.api import deps

REF = "#/components/schemas/"
SECURITY_SCHEME = "apiKey"
NDJSON = "application/x-ndjson"


class NDJSONResponse(StreamingResponse):
    """For ``response_class=``: documents a route's 200 as newline-delimited JSON."""

    media_type = NDJSON


class EventStreamResponse(StreamingResponse):
    """For ``response_class=``: documents a route's 200 as server-sent events."""

    media_type = "text/event-stream"


class GzipResponse(StreamingResponse):
    """For ``response_class=``: documents a route's 200 as a gzip file."""

    media_type = "application/gzip"


# One server-sent event, as OpenAPI before 3.2 has a text/event-stream schema describe it.
SSE_EVENT = {"type": "object", "properties": {
    "id": {"type": "string"}, "event": {"type": "string"}, "data": {"type": "string"},
    "retry": {"type": "integer"}}}


def ndjson(what: str) -> dict[str, Any]:
    """``content`` for a response that can also be newline-delimited JSON."""
    return {NDJSON: {"schema": {"type": "string", "description": what}}}


class ErrorBody(BaseModel):
    """What every error response carries."""

    error: str = Field(description="A machine-readable code: invalid_request, not_found, "
                                   "thread_busy, payload_too_large, ...")
    message: str = Field(description="What went wrong, for a person to read.")


ERRORS: dict[int, str] = {
    400: "The request is not valid: a field, a parameter, a header or the body (the "
         "message says which). `error` is `invalid_request` or a more precise code.",
    401: "No API key, or one that is not valid (`unauthorized`).",
    404: "There is no such resource for this user (`not_found`).",
    409: "The resource is busy or already in that state (`conflict`).",
    412: "If-Match does not match the current ETag (`precondition_failed`).",
    413: "The request body is larger than the server's limit (`payload_too_large`).",
    428: "The file exists: send If-Match with the ETag you read "
         "(`precondition_required`).",
    429: "A per-user limit is reached (`limit_exceeded`): boxes awake, executions at "
         "once, disk, or the event rate; the message names it and its setting, and "
         "`Retry-After` says when trying again may work.",
    503: "No sandbox can be had or reached now (`sandbox_unavailable`): the message says "
         "why (a capacity limit names its setting); `Retry-After` when waiting helps.",
}


def errors(*statuses: int | tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status with ``ErrorBody``, described by the
    default text or by the ``(status, text)`` given."""
    out: dict[int | str, dict[str, Any]] = {}
    for item in statuses:
        status, text = item if isinstance(item, tuple) else (item, ERRORS[item])
        # Explicit JSON (not "model"): FastAPI would file it under the route's media type.
        out[status] = {"description": text, "content": {
            "application/json": {"schema": {"$ref": REF + "ErrorBody"}}}}
    return out


def _needs_key(dependant: Dependant) -> bool:
    return any(d.call is deps.principal or _needs_key(d) for d in dependant.dependencies)


def _operations(routers: Iterable[APIRouter],
                doc: dict[str, Any]) -> Iterator[tuple[APIRoute, dict[str, Any]]]:
    for router in routers:
        for route in router.routes:
            if not isinstance(route, APIRoute) or not route.include_in_schema:
                continue
            item = doc.get("paths", {}).get(route.path_format, {})
            for method in route.methods:
                if method.lower() in item:
                    yield route, item[method.lower()]


def build(app: FastAPI, routers: Iterable[APIRouter]) -> dict[str, Any]:
    doc = get_openapi(title=app.title, version=app.version, description=app.description,
                      openapi_version=app.openapi_version, routes=app.routes,
                      tags=app.openapi_tags, servers=app.servers,
                      separate_input_output_schemas=app.separate_input_output_schemas)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.setdefault("ErrorBody", ErrorBody.model_json_schema(ref_template=REF + "{model}"))
    components["securitySchemes"] = {SECURITY_SCHEME: {
        "type": "http", "scheme": "bearer",
        "description": "An API key from `sophon users add NAME`, as "
                       "`Authorization: Bearer <key>`."}}
    for route, op in _operations(routers, doc):
        responses = op.setdefault("responses", {})
        if responses.pop("422", None) is not None:
            responses.setdefault("400", errors(400)[400])
        if _needs_key(route.dependant):
            op["security"] = [{SECURITY_SCHEME: []}]
            responses.setdefault("401", errors(401)[401])
        responses.setdefault("413", errors(413)[413])
        op["responses"] = dict(sorted(responses.items()))
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return doc


def install(app: FastAPI, *routers: APIRouter) -> None:
    """Serve ``build()`` (made once, when first asked for) as the app's OpenAPI;
    ``routers`` are those the app includes, as they were given to it."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app, routers)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
