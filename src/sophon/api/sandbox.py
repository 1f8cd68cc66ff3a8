"""The Baponi-compatible execution API: thin routes over ExecutionService."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from sophon.api.deps import PrincipalDep, ServicesDep
from sophon.sandbox.models import Accepted, ExecuteRequest, ExecutionStatus, SandboxResult

router = APIRouter(prefix="/v1", tags=["sandbox"])
NDJSON = "application/x-ndjson"


async def _ndjson(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    async for ev in events:
        yield json.dumps(ev, separators=(",", ":")).encode() + b"\n"


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
    responses={202: {"model": Accepted}},
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": ExecuteRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    }}}},
)
async def execute(
    request: Request,
    services: ServicesDep,
    principal: PrincipalDep,
    prefer: str | None = Header(None),
) -> Any:
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
    return JSONResponse(run.result.model_dump() if run.result else {},
                        headers={"X-Trace-Id": run.trace_id})


@router.get("/executions/{trace_id}", response_model=ExecutionStatus)
async def get_execution(trace_id: str, services: ServicesDep,
                        principal: PrincipalDep) -> ExecutionStatus:
    return await services.executions.status(principal, trace_id)


@router.post("/executions/{trace_id}/cancel")
async def cancel_execution(trace_id: str, services: ServicesDep,
                           principal: PrincipalDep) -> dict[str, str]:
    status = await services.executions.cancel(principal, trace_id)
    return {"trace_id": trace_id, "status": status}


@router.get("/executions/{trace_id}/output")
async def execution_output(
    trace_id: str,
    services: ServicesDep,
    principal: PrincipalDep,
    after_seq: int = Query(0, ge=0),
) -> StreamingResponse:
    events = await services.executions.events(principal, trace_id, after_seq)
    return StreamingResponse(_ndjson(events), media_type=NDJSON)
