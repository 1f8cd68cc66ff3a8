"""The model gateway's Anthropic-compatible endpoint, for runtimes inside boxes.

It authenticates with a per-session token (``x-api-key`` or ``Authorization: Bearer``),
never a user's API key, and the provider key never leaves the server.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from sophon.api.deps import ServicesDep
from sophon.errors import SophonError

router = APIRouter(tags=["gateway"])

# Errors here are the Anthropic API's, so that its clients understand them.
ANTHROPIC_ERROR = {"type": "object", "required": ["type", "error"], "properties": {
    "type": {"type": "string", "enum": ["error"]},
    "error": {"type": "object", "required": ["type", "message"], "properties": {
        "type": {"type": "string"}, "message": {"type": "string"}}}}}


def _documented(text: str) -> dict[str, object]:
    return {"description": text, "content": {"application/json": {"schema": ANTHROPIC_ERROR}}}


RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"description": "The provider's answer, as JSON or (`stream: true`) server-sent "
                         "events", "content": {"application/json": {"schema": {}},
                                               "text/event-stream": {"schema": {}}}},
    400: _documented("The body is not a JSON object (`invalid_request_error`)"),
    401: _documented("No session token, or one that is not valid "
                          "(`authentication_error`)"),
    402: _documented("The session's budget is spent (`billing_error`)"),
    503: _documented("No provider key on the server (`api_error`)"),
    "default": {"description": "The provider's own status and error, passed through"},
}


def _anthropic_error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"type": "error", "error": {"type": kind, "message": message}}, status)


@router.post("/v1/messages", responses=RESPONSES, openapi_extra={"requestBody": {
    "description": "An Anthropic Messages API request",
    "content": {"application/json": {"schema": {"type": "object"}}}}})
async def messages(request: Request, services: ServicesDep) -> object:
    token = request.headers.get("x-api-key")
    if not token:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else None
    try:
        caller = await services.gateway.caller_for_token(token)
        body = json.loads(await request.body() or b"{}")
        if not isinstance(body, dict):
            return _anthropic_error(400, "invalid_request_error", "the body must be an object")
        status, headers, stream = await services.gateway.forward(caller, body,
                                                                 dict(request.headers))
    except SophonError as exc:
        kind = {401: "authentication_error", 402: "billing_error",
                503: "api_error"}.get(exc.status, "invalid_request_error")
        return _anthropic_error(exc.status, kind, exc.message)
    except ValueError:
        return _anthropic_error(400, "invalid_request_error", "the body is not valid JSON")
    return StreamingResponse(stream, status_code=status, media_type=headers["content-type"])
