"""Sessions API: thin routes over SessionService and Workspace.

Every service here takes the caller and checks that the session is theirs (a stranger's
is a 404); a route never checks on its own."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from sophon.api.deps import PrincipalDep, ServicesDep
from sophon.api.openapi import (
    SSE_EVENT,
    EventStreamResponse,
    GzipResponse,
    NDJSONResponse,
    errors,
)
from sophon.errors import BadRequest
from sophon.events.log import Stored
from sophon.events.types import to_wire
from sophon.sessions.imports import import_archive
from sophon.sessions.models import (
    CreateSession,
    Decision,
    ExecRequest,
    FileContent,
    FileTree,
    SecretValue,
    SendMessage,
    SessionPage,
    SessionView,
    UpdateSession,
    check_secret_name,
)
from sophon.sessions.service import page_cursor

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])
NDJSON = "application/x-ndjson"

MAX_SEQ = 2**63 - 1  # an event seq is a 64-bit integer in the store

# Documentation only (OpenAPI): shapes that have no model of their own.
EVENT_PAGE = {"type": "object", "required": ["events", "last_seq"], "properties": {
    "events": {"type": "array", "items": {"type": "object"}},
    "last_seq": {"type": "integer"}}}
WRITTEN = {"type": "object", "required": ["path", "size", "etag"], "properties": {
    "path": {"type": "string"}, "size": {"type": "integer"}, "etag": {"type": "string"}}}
SECRET_BODY = {"type": "object", "required": ["value"], "additionalProperties": False,
               "properties": {"value": {"type": "string", "minLength": 1,
                                        "maxLength": 65536}}}


@router.post("", status_code=201, response_model=SessionView, responses=errors(429, 503))
async def create_session(body: CreateSession, services: ServicesDep,
                         principal: PrincipalDep) -> SessionView:
    return await services.sessions.create(principal, body)


@router.post("/import", status_code=201, response_model=SessionView, responses=errors(
    (400, "Not an export archive, or its settings do not hold here (`invalid_request`): "
          "the message says what."), 429, 503),
    openapi_extra={"requestBody": {"description": "An archive from GET "
                                   "/v1/sessions/{id}/export (a .tar.gz), as is",
                                   "content": {"application/octet-stream": {
                                       "schema": {"type": "string", "format": "binary"}}}}})
async def import_session(request: Request, services: ServicesDep, principal: PrincipalDep,
                         name: str | None = Query(None, min_length=1, max_length=200)
                         ) -> SessionView:
    """A new session from an export: its settings, project (git history included) and
    events; the conversation goes on from there. Streamed to a sandbox, never held."""
    view = await import_archive(services.sessions, principal, request.stream(), name)
    await services.agent.imported(principal, view.id)
    return view


@router.get("", response_model=SessionPage)
async def list_sessions(services: ServicesDep, principal: PrincipalDep,
                        limit: int = Query(50, ge=1, le=200),
                        cursor: str | None = None) -> SessionPage:
    views = await services.sessions.list(principal, limit + 1, cursor)
    more = len(views) > limit
    views = views[:limit]
    return SessionPage(sessions=views, next_cursor=page_cursor(views[-1]) if more else None)


@router.get("/{session_id}", response_model=SessionView, responses=errors(404))
async def get_session(session_id: str, services: ServicesDep,
                      principal: PrincipalDep) -> SessionView:
    return await services.sessions.get(principal, session_id)


@router.patch("/{session_id}", response_model=SessionView, responses=errors(400, 404, 409))
async def update_session(session_id: str, body: UpdateSession, services: ServicesDep,
                         principal: PrincipalDep) -> SessionView:
    changes = body.model_dump(exclude_unset=True)
    runtime = changes.pop("runtime", None)
    if runtime is not None:
        await services.agent.switch_runtime(principal, session_id, runtime)
    return await services.sessions.update(principal, session_id, changes)


@router.delete("/{session_id}", status_code=204, responses=errors(404))
async def delete_session(session_id: str, services: ServicesDep,
                         principal: PrincipalDep) -> Response:
    await services.sessions.delete(principal, session_id)
    return Response(status_code=204)


# --- events -----------------------------------------------------------------

def _sse(batch: list[Stored]) -> bytes:
    return "".join(f"id: {s.seq}\nevent: {s.type}\ndata: {s.json}\n\n"
                   for s in batch).encode()


@router.get("/{session_id}/events", response_class=EventStreamResponse, responses={
    200: {"description": "The session's events as server-sent events, followed live; "
                         "with `Accept: application/json`, one page of them",
          "content": {"text/event-stream": {"schema": SSE_EVENT},
                      "application/json": {"schema": EVENT_PAGE}}},
    **errors(404)})
async def events(
    session_id: str,
    request: Request,
    services: ServicesDep,
    principal: PrincipalDep,
    after: int | None = Query(None, ge=0, le=MAX_SEQ),
    limit: int = Query(500, ge=1, le=5000),
    last_event_id: str | None = Header(None, pattern=r"^[0-9]{0,18}$"),
) -> Response:
    start = after
    if start is None and last_event_id:
        if not last_event_id.isdigit():
            raise BadRequest("Last-Event-ID must be an event seq (a number)")
        start = int(last_event_id)
    start = start or 0
    if "application/json" in request.headers.get("accept", ""):
        page, last = await services.sessions.events_page(principal, session_id, start, limit)
        body = f'{{"events":[{",".join(s.json for s in page)}],"last_seq":{last}}}'
        return Response(body, media_type="application/json")
    batches = await services.sessions.follow_events(
        principal, session_id, start, services.settings.sse_heartbeat_seconds)

    async def stream() -> AsyncIterator[bytes]:
        yield b"retry: 1000\n\n"
        async for batch in batches:
            yield b": heartbeat\n\n" if batch is None else _sse(batch)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# --- exec, files, diff --------------------------------------------------------

@router.post("/{session_id}/exec", response_class=NDJSONResponse, responses={
    200: {"description": "exec_start, exec_output and exec_end events, one JSON object "
                         "a line"},
    **errors(404, 429, 503)})
async def exec_command(session_id: str, body: ExecRequest, services: ServicesDep,
                       principal: PrincipalDep) -> StreamingResponse:
    events = await services.sessions.exec(principal, session_id, body.command, body.timeout)

    async def stream() -> AsyncIterator[bytes]:
        async for ev in events:
            yield json.dumps(to_wire(ev), separators=(",", ":")).encode() + b"\n"

    return StreamingResponse(stream(), media_type=NDJSON)


@router.get("/{session_id}/files", response_model=FileTree,
            responses=errors(400, 404, 503))
async def file_tree(session_id: str, services: ServicesDep,
                    principal: PrincipalDep) -> FileTree:
    return await services.workspace.tree(principal, session_id)


@router.get("/{session_id}/files/{path:path}", response_model=FileContent,
            responses=errors(400, 404, 503))
async def read_file(session_id: str, path: str, services: ServicesDep,
                    principal: PrincipalDep) -> JSONResponse:
    content = await services.workspace.read(principal, session_id, path)
    headers = {"ETag": f'"{content.etag}"'} if content.etag else {}
    return JSONResponse(content.model_dump(), headers=headers)


@router.put("/{session_id}/files/{path:path}", responses={
    200: {"description": "The file was replaced",
          "content": {"application/json": {"schema": WRITTEN}}},
    201: {"description": "The file was created",
          "content": {"application/json": {"schema": WRITTEN}}},
    **errors(400, 404, 412, 428, 503)},
    openapi_extra={"requestBody": {"description": "The file's new content, as is",
                                   "content": {"application/octet-stream": {
                                       "schema": {"type": "string", "format": "binary"}}}}})
async def write_file(session_id: str, path: str, request: Request, services: ServicesDep,
                     principal: PrincipalDep, if_match: str | None = Header(None),
                     if_none_match: str | None = Header(None)) -> JSONResponse:
    data = await request.body()
    got = await services.workspace.write(principal, session_id, path, data, if_match,
                                         if_none_match == "*")
    status = 201 if got.get("created") else 200
    return JSONResponse({"path": path, "size": got["size"], "etag": got["etag"]}, status,
                        headers={"ETag": f'"{got["etag"]}"'})


@router.get("/{session_id}/diff", responses=errors(404, 503))
async def diff(session_id: str, services: ServicesDep, principal: PrincipalDep,
               since: str | None = None) -> dict[str, str]:
    text = await services.workspace.diff(principal, session_id, since)
    return {"base": since or "HEAD", "diff": text}


# --- approvals, secrets, export -------------------------------------------------

@router.get("/{session_id}/approvals", responses=errors(404))
async def pending_approvals(session_id: str, services: ServicesDep,
                            principal: PrincipalDep) -> dict[str, list[dict[str, Any]]]:
    rows = await services.sessions.approvals.pending(principal, session_id)
    return {"approvals": [{"approval_id": r.id, "tool": r.tool, "input": r.input,
                           "reason": r.reason, "created_at": r.created_at.isoformat()}
                          for r in rows]}


@router.post("/{session_id}/approvals/{approval_id}", responses=errors(
    404, (409, "The approval was already answered (`conflict`).")))
async def decide(session_id: str, approval_id: str, body: Decision, services: ServicesDep,
                 principal: PrincipalDep) -> dict[str, Any]:
    event = await services.sessions.approvals.decide(
        principal, session_id, approval_id, body.decision, body.remember, reason=body.reason)
    return to_wire(event)


@router.get("/{session_id}/secrets", responses=errors(404))
async def list_secrets(session_id: str, services: ServicesDep,
                       principal: PrincipalDep) -> dict[str, list[str]]:
    return {"names": await services.sessions.secrets.names(principal, session_id)}


@router.put("/{session_id}/secrets/{name}", status_code=204, responses=errors(400, 404),
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": SECRET_BODY},
                 "text/plain": {"schema": {"type": "string", "minLength": 1,
                                           "maxLength": 65536}}}}})
async def put_secret(session_id: str, name: str, request: Request, services: ServicesDep,
                     principal: PrincipalDep) -> Response:
    try:
        check_secret_name(name)
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    raw = await request.body()
    if request.headers.get("content-type", "").split(";")[0].strip() == "application/json":
        try:  # {"value": "..."}; a JSON body without one is a mistake, not a value
            value = SecretValue.model_validate_json(raw).value
        except ValueError as exc:
            raise BadRequest('a JSON body is {"value": "<the secret>"}') from exc
    else:  # the raw value itself
        value = raw.decode("utf-8", "replace")
    if not value or len(value) > 65_536:
        raise BadRequest("a secret value is 1 to 65536 characters")
    await services.sessions.secrets.put(principal, session_id, name, value)
    await services.sessions.refresh_secrets(session_id)
    return Response(status_code=204)


@router.delete("/{session_id}/secrets/{name}", status_code=204, responses=errors(404))
async def delete_secret(session_id: str, name: str, services: ServicesDep,
                        principal: PrincipalDep) -> Response:
    await services.sessions.secrets.remove(principal, session_id, name)
    await services.sessions.refresh_secrets(session_id)
    return Response(status_code=204)


@router.get("/{session_id}/export", response_class=GzipResponse, responses={
    200: {"description": "The workspace as a .tar.gz"}, **errors(400, 404, 503)})
async def export(session_id: str, services: ServicesDep,
                 principal: PrincipalDep) -> StreamingResponse:
    chunks = services.sessions.export(principal, session_id)
    first = await anext(chunks, b"")  # errors before the first byte are proper responses

    async def body() -> AsyncIterator[bytes]:
        yield first
        async for chunk in chunks:
            yield chunk

    return StreamingResponse(body(), media_type="application/gzip", headers={
        "Content-Disposition": f'attachment; filename="{session_id}.tar.gz"'})


# --- the agent ------------------------------------------------------------------

@router.post("/{session_id}/messages", status_code=202, responses=errors(
    404, (409, "A turn is running and `queue` is false (`turn_in_progress`)."), 429,
    (503, "No sandbox can be had now (`sandbox_unavailable`), or no model can answer "
          "(`provider_not_configured`: the server has no provider key, and for a "
          "claude-code session the user no anthropic connector with one either).")))
async def send_message(session_id: str, body: SendMessage, services: ServicesDep,
                       principal: PrincipalDep) -> dict[str, object]:
    return await services.agent.send(principal, session_id, body.content, body.queue)


@router.post("/{session_id}/interrupt", responses=errors(404))
async def interrupt(session_id: str, services: ServicesDep,
                    principal: PrincipalDep) -> dict[str, bool]:
    return {"interrupted": await services.agent.interrupt(principal, session_id)}


@router.get("/{session_id}/usage", responses=errors(404))
async def usage(session_id: str, services: ServicesDep,
                principal: PrincipalDep) -> dict[str, object]:
    calls = await services.gateway.usage_series(principal, session_id)
    last = calls[-1] if calls else {}
    network = await services.egress.usage([session_id])
    # Totals from the same read as the calls, so the two always agree.
    return {"session_id": session_id, "totals": {
        "input_tokens": last.get("cumulative_input_tokens", 0),
        "output_tokens": last.get("cumulative_output_tokens", 0),
        "cost_usd": last.get("cumulative_cost_usd", 0.0)}, "calls": calls,
        "network": network[session_id]}


@router.post("/{session_id}/gateway-token", responses=errors(404))
async def gateway_token(session_id: str, services: ServicesDep,
                        principal: PrincipalDep) -> dict[str, str]:
    """A new token for a runtime inside the session's box to reach the model gateway
    (the previous one stops working). It can only call the model, for this session."""
    return {"token": await services.gateway.issue_token(principal, session_id)}
