"""Checkpoints, rewind, fork and review: thin routes over sessions/checkpoints.py and
agent/rewind.py, which check that the session is the caller's."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Query

from sophon.api.deps import PrincipalDep, ServicesDep
from sophon.api.openapi import errors
from sophon.events.types import to_wire
from sophon.sessions.models import (
    CheckpointDiff,
    CheckpointId,
    CheckpointList,
    ForkRequest,
    ReviewRequest,
    RewindRequest,
    SessionView,
)

router = APIRouter(prefix="/v1/sessions", tags=["checkpoints"])


@router.get("/{session_id}/checkpoints", response_model=CheckpointList,
            responses=errors(404))
async def list_checkpoints(session_id: str, services: ServicesDep,
                           principal: PrincipalDep) -> dict[str, Any]:
    """The session's checkpoints, oldest first."""
    return {"checkpoints": await services.checkpoints.listing(principal, session_id)}


@router.get("/{session_id}/checkpoints/diff", response_model=CheckpointDiff,
            responses=errors(400, 404))
async def checkpoints_diff(session_id: str, services: ServicesDep, principal: PrincipalDep,
                           base: CheckpointId | None = Query(None, alias="from"),
                           head: CheckpointId | None = Query(None, alias="to"),
                           ) -> CheckpointDiff:
    """What changed between two checkpoints (``to``: the latest by default; ``from``:
    the one before ``to`` by default), as a unified diff."""
    frm, to, text = await services.checkpoints.compare(principal, session_id, base, head)
    return CheckpointDiff(base=frm, head=to, diff=text)


@router.get("/{session_id}/turns/{turn}/diff", response_model=CheckpointDiff,
            responses=errors(404))
async def turn_diff(session_id: str, services: ServicesDep, principal: PrincipalDep,
                    turn: int = Path(ge=1, le=10**9)) -> CheckpointDiff:
    """What one turn changed (turns counted from 1): from the tree as it began to its
    last checkpoint."""
    frm, to, text = await services.checkpoints.turn_diff(principal, session_id, turn)
    return CheckpointDiff(base=frm, head=to, diff=text)


@router.post("/{session_id}/rewind", responses=errors(
    400, 404, (409, "A turn is running, or another rewind is (`turn_in_progress`).")))
async def rewind(session_id: str, body: RewindRequest, services: ServicesDep,
                 principal: PrincipalDep) -> dict[str, Any]:
    """Back to a checkpoint: its files exactly, the conversation as it was then, or
    both. Returns the ``rewind`` event; its ``undo`` is the checkpoint to rewind to to
    undo it."""
    event = await services.rewinds.rewind(principal, session_id, body.checkpoint,
                                          body.files, body.conversation)
    return to_wire(event)


@router.post("/{session_id}/fork", status_code=201, response_model=SessionView,
             responses=errors(400, 404, 429, 503))
async def fork(session_id: str, body: ForkRequest, services: ServicesDep,
               principal: PrincipalDep) -> SessionView:
    """A new session as this one was at a checkpoint: files, git history, settings,
    secrets, and the conversation up to it."""
    return await services.rewinds.fork(principal, session_id, body.checkpoint, body.name)


@router.post("/{session_id}/turns/{turn}/review", responses=errors(
    400, 404, (409, "A turn is running (`turn_in_progress`), or a rejected hunk no longer "
                    "applies: its file changed since (`conflict`).")))
async def review_turn(session_id: str, body: ReviewRequest, services: ServicesDep,
                      principal: PrincipalDep, turn: int = Path(ge=1, le=10**9)
                      ) -> dict[str, Any]:
    """Review what a turn changed: each rejected hunk (by file and its place in the
    turn's diff) is reverted in the workspace now; the rejections and line comments go
    to the agent with the next message, which comments send at once. Returns the
    ``review`` event."""
    event = await services.rewinds.review(
        principal, session_id, turn, [(r.path, r.hunk) for r in body.reject],
        [(c.path, c.line, c.text) for c in body.comments])
    return to_wire(event)
