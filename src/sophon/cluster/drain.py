"""Draining a node (``sophon node drain``): placement sends it nothing new (ownership.py),
and at each of its heartbeats it hands on the sessions it runs that are between turns
and execs, and the threads whose boxes run nothing: their boxes stop here, and the next
request for one, on any node, starts it on the node that takes it. A running turn,
exec or execution finishes here first."""

from __future__ import annotations

import logging

from sophon.agent.service import AgentService
from sophon.cluster.ownership import Ownership
from sophon.sandbox.service import ExecutionService
from sophon.sessions.service import SessionService, box_id_of

log = logging.getLogger("sophon.cluster")


async def hand_on(ownership: Ownership, sessions: SessionService,
                  agent: AgentService, executions: ExecutionService) -> int:
    """One step of a drain; the number of sessions and threads handed on."""
    if not ownership.nodes.draining or await ownership.place() is None:
        return 0  # (every other node drained or gone too: nowhere to go)
    moved = 0
    boxes = sessions.boxes
    for session_id in sorted(ownership.mine("session")):
        # Under the box's start lock: a start on this node that was asked for before
        # the release (a checkpoint after an exec) either ends before it, and its box
        # is stopped here, or asks after it and finds the session is not this node's
        # (boxes.may_start); never a second mount of the disk beside the next node's.
        async with boxes.no_start(box_id_of(session_id)):
            if agent.running(session_id) is not None or await sessions.busy(session_id):
                continue
            # Handed on before the box stops, so a request that comes meanwhile goes to
            # the node that takes it, never to this box again.
            await ownership.release("session", session_id)
            await sessions.let_go(session_id)
        moved += 1
    for thread in sorted(ownership.mine("thread")):
        async with boxes.no_start(thread):  # a thread's id is its box's
            box = boxes.running(thread)
            if box is not None and box.busy:
                continue  # an execution or a file transfer: at a later heartbeat
            await ownership.release("thread", thread)
            await executions.let_go(thread)
        moved += 1
    if moved:
        log.info("node %s (draining) handed on %d session(s)", ownership.node_id, moved)
    return moved
