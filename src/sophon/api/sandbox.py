"""The Baponi-compatible execution API: thin routes over ExecutionService."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from sophon.api.deps import PrincipalDep
from sophon.api.openapi import NDJSON, NDJSONResponse, errors, ndjson
from sophon.sandbox.models import Accepted, ExecuteRequest, ExecutionStatus, SandboxResult
from sophon.services import Services

router = APIRouter(prefix="/v1", tags=["sandbox"])


async def _ndjson(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    async for ev in events:
        if ev.get("type") == "result" and isinstance(ev.get("result"), dict):
            # The result object says whether its output was cut, as the inline form does.
            ev = {**ev, "result": {**ev["result"],
                                   "output_truncated": bool(ev.get("output_truncated"))}}
        yield json.dumps(ev, separators=(",", ":")).encode() + b"\n"


def _links(trace_id: str) -> dict[str, Any]:
    """OpenAPI links from an execution's answer to the routes that take its trace_id."""
    execution = "#/paths/~1v1~1executions~1{trace_id}"
    return {name: {"operationRef": execution + tail, "parameters": {"trace_id": trace_id}}
            for name, tail in (("GetExecution", "/get"), ("CancelExecution", "~1cancel/post"),
                               ("ExecutionOutput", "~1output/get"))}


def _services(request: Request) -> Services:
    # Not ServicesDep: a plain-function dependency costs a hop through the thread pool
    # on every call.
    return request.app.state.services  # type: ignore[no-any-return]


def _wants_ndjson(request: Request) -> bool:
    return NDJSON in request.headers.get("accept", "")


async def _parse(request: Request) -> ExecuteRequest:
    # The body is JSON whatever Content-Type says, so `curl -d` works as people expect.
    raw = await request.body()
    try:
        return ExecuteRequest.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


@router.post(
    "/sandbox/execute",
    response_model=SandboxResult,
    responses={
        200: {"description": "The result (JSON), or with `Accept: application/x-ndjson` "
                             "the execution's events as they happen, one JSON object a line",
              "content": ndjson("status, output, keepalive and result events"),
              "headers": {"X-Trace-Id": {"description": "The execution's id",
                                         "schema": {"type": "string"}}},
              "links": _links("$response.header.X-Trace-Id")},
        202: {"model": Accepted,
              "description": "With `Prefer: respond-async`: accepted; follow it with "
                             "GET /v1/executions/{trace_id}",
              "links": _links("$response.body#/trace_id")},
        **errors(400, (409, "The thread is already running an execution (`thread_busy`)."),
                 429,
                 (503, "No sandbox can be had now (`sandbox_unavailable`): a capacity limit "
                       "is reached, which the message names; `Retry-After` says when to "
                       "try again. Answered before any NDJSON or async acceptance.")),
    },
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": ExecuteRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    }}}},
)
async def execute(
    request: Request,
    principal: PrincipalDep,
    prefer: str | None = Header(None),
) -> Any:
    services = _services(request)
    body = await _parse(request)
    if prefer and "respond-async" in prefer:
        run = await services.executions.start(principal, body, "async")
        return JSONResponse(Accepted(trace_id=run.trace_id, status="queued").model_dump(), 202)
    if _wants_ndjson(request):
        run = await services.executions.start(principal, body, "stream")
        return StreamingResponse(_ndjson(run.follow()), media_type=NDJSON,
                                 headers={"X-Trace-Id": run.trace_id})
    run = await services.executions.start(principal, body, "inline")
    await run.done.wait()
    # Serialised once by the run, while its row was being committed.
    return Response(run.body, media_type="application/json",
                    headers={"X-Trace-Id": run.trace_id})


@router.get("/executions/{trace_id}", response_model=ExecutionStatus,
            responses=errors(404))
async def get_execution(trace_id: str, request: Request,
                        principal: PrincipalDep) -> ExecutionStatus:
    return await _services(request).executions.status(principal, trace_id)


@router.post("/executions/{trace_id}/cancel", responses=errors(404))
async def cancel_execution(trace_id: str, request: Request,
                           principal: PrincipalDep) -> dict[str, str]:
    status = await _services(request).executions.cancel(principal, trace_id)
    return {"trace_id": trace_id, "status": status}


@router.get("/executions/{trace_id}/output", response_class=NDJSONResponse, responses={
    200: {"description": "The execution's events from `after_seq` on, one JSON object a "
                         "line; a running execution is followed to its end"},
    **errors(404)})
async def execution_output(
    trace_id: str,
    request: Request,
    principal: PrincipalDep,
    after_seq: int = Query(0, ge=0),
) -> StreamingResponse:
    events = await _services(request).executions.events(principal, trace_id, after_seq)
    return StreamingResponse(_ndjson(events), media_type=NDJSON)
