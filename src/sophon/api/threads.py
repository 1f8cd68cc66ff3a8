"""Threads of the execution API: list yours, delete one (its files, disk and uid)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from sophon.api.deps import PrincipalDep
from sophon.api.openapi import errors
from sophon.sandbox.threads import ThreadList
from sophon.services import Services

router = APIRouter(prefix="/v1/threads", tags=["sandbox"])


def _services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


@router.get("", response_model=ThreadList)
async def list_threads(request: Request, principal: PrincipalDep) -> ThreadList:
    """Your threads, by name: when each was made and last used, and whether its box is
    running now."""
    return await _services(request).executions.threads.list(principal)


@router.delete("/{thread_id}", status_code=204, responses=errors(
    404, (409, "The thread is running an execution or a file transfer (`thread_busy`).")))
async def delete_thread(thread_id: str, request: Request, principal: PrincipalDep) -> Response:
    """Delete a thread for good: its files, its disk image and its host uid. The next
    execution with this thread_id starts a new, empty thread."""
    await _services(request).executions.threads.delete(principal, thread_id)
    return Response(status_code=204)
