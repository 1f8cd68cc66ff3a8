"""Going back: a session rewound to a checkpoint (its files, its conversation or both),
and a new session forked from one. Never during a turn; never losing anything: the
state before a rewind is itself a checkpoint, and a rewind to it undoes the rewind."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from sophon.agent import history
from sophon.agent.runtime import _all_events
from sophon.agent.service import AgentService
from sophon.errors import BadRequest, Conflict, SophonError
from sophon.events.types import Review, ReviewComment, ReviewHunk, Rewind, Status
from sophon.sessions.checkpoints import CheckpointError, Checkpoints, split_hunks
from sophon.sessions.imports import import_archive
from sophon.sessions.models import SessionView
from sophon.users import Principal


class Rewinds:
    def __init__(self, agent: AgentService, checkpoints: Checkpoints) -> None:
        self.agent = agent
        self.sessions = agent.sessions
        self.checkpoints = checkpoints

    async def rewind(self, principal: Principal, session_id: str, checkpoint_id: str,
                     files: bool, conversation: bool) -> Rewind:
        row = await self.sessions.get_row(principal, session_id)  # 404 for a stranger
        if not files and not conversation:
            raise BadRequest("say what to rewind: files, conversation or both (true)")
        target = await self.checkpoints.find(session_id, checkpoint_id)
        with self.agent.hold(session_id, "a rewind"):
            turn = await self.checkpoints.turns(session_id)
            async with self.sessions.box(row) as box:
                try:
                    if files:
                        before, _ = await self.checkpoints.restore(
                            box, session_id, target.commit, turn, checkpoint_id)
                    else:  # the conversation alone: mark where it stood, to undo to
                        marked = await self.checkpoints.take(box, session_id, "before_rewind",
                                                             turn, force=True)
                        if marked is None:
                            raise CheckpointError("the session's state could not be kept "
                                                  "before the rewind (is /workspace still "
                                                  "a git repository?)")
                        before = marked
                except CheckpointError as exc:
                    raise BadRequest(str(exc)) from None
            event: Rewind = await self.sessions.events.append(session_id, Rewind(
                checkpoint_id=checkpoint_id, to_seq=target.seq, files=files,
                conversation=conversation, undo=before.checkpoint_id))
            if conversation and row.runtime == "claude-code":
                # The CLI's own transcript goes back too: it resumes the cut conversation.
                await self.agent.claude.end(session_id)
                await self.agent.reseed(row)
        return event

    async def fork(self, principal: Principal, session_id: str, checkpoint_id: str,
                   name: str | None) -> SessionView:
        """A new session as this one was at the checkpoint: its files exactly, and the
        conversation up to it (its settings and secrets too)."""
        row = await self.sessions.get_row(principal, session_id)
        target = await self.checkpoints.find(session_id, checkpoint_id)
        upto = [ev for ev in await _all_events(self.sessions, session_id)
                if ev.seq <= target.seq]
        kept = [ev for ev in history.effective(upto)
                if ev.type not in ("session_start", "status")]

        async def events() -> AsyncIterator[Any]:
            for ev in kept:
                yield ev.model_copy(update={"seq": 0})

        def note(old: dict[str, Any], dropped: list[str], count: int) -> Status:
            return Status(status="idle", detail=(
                f"forked from {row.name} ({row.id}) at checkpoint {checkpoint_id} (turn "
                f"{target.turn}): {count} events" + (
                    f"; connectors you no longer have were left out: {', '.join(dropped)}"
                    if dropped else "")))

        view = await import_archive(self.sessions, principal,
                                    self.sessions.export(principal, session_id),
                                    name or f"{row.name} (fork)", events=events(), note=note)
        try:
            for secret, value in (await self.sessions.secrets.values(session_id)).items():
                await self.sessions.secrets.put(principal, view.id, secret, value)
            fork_row = await self.sessions.get_row(principal, view.id)
            async with self.sessions.box(fork_row) as box:
                await self.checkpoints.reset(box, view.id, target.commit)
            await self.agent.imported(principal, view.id)
        except BaseException:
            with contextlib.suppress(SophonError):
                await self.sessions.purge(principal, view.id)
            raise
        return await self.sessions.get(principal, view.id)


    async def review(self, principal: Principal, session_id: str, turn: int,
                     reject: list[tuple[str, int]],
                     comments: list[tuple[str, int, str]]) -> Review:
        """The owner's review of a turn: the rejected hunks (by file and place in the
        turn's diff) are reverted in the workspace now; they and the comments reach the
        agent with the next message, which the comments are at once."""
        row = await self.sessions.get_row(principal, session_id)
        if not reject and not comments:
            raise BadRequest("a review rejects a hunk or comments on a line (or both)")
        base, head = await self.checkpoints.turn_range(session_id, turn)
        with self.agent.hold(session_id, "a review"):
            async with self.sessions.box(row) as box:
                by_file = split_hunks(await self.checkpoints.diff(box, base, head)
                                      if base != head else "")
                hunks: list[ReviewHunk] = []
                for path, n in reject:
                    header, parts = by_file.get(path, ("", []))
                    if not 0 <= n < len(parts):
                        raise BadRequest(f"turn {turn} changed no hunk {n} of {path!r} "
                                         f"(GET .../turns/{turn}/diff shows its hunks)")
                    hunks.append(ReviewHunk(path=path, hunk=n, patch=header + parts[n]))
                try:
                    for path in dict.fromkeys(h.path for h in hunks):
                        mine = [h for h in hunks if h.path == path]
                        patch = by_file[path][0] + "".join(by_file[path][1][h.hunk]
                                                           for h in sorted(mine, key=_hunk))
                        await self.checkpoints.revert(box, patch)
                except CheckpointError as exc:
                    raise Conflict(str(exc)) from None
                turns = await self.checkpoints.turns(session_id)
                if hunks:
                    await self.checkpoints.take(box, session_id, "review", turns)
            event: Review = await self.sessions.events.append(session_id, Review(
                turn=turn, rejected=hunks,
                comments=[ReviewComment(path=p, line=n, text=t) for p, n, t in comments]))
        if comments:
            await self.agent.send(principal, session_id, "Please address my review.",
                                  queue=True)
        return event


def _hunk(h: ReviewHunk) -> int:
    return h.hunk
