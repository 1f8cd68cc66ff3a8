"""Checkpoints: the whole working tree kept as a commit after every step that can change
it, so any point of a session can be gone back to, forked from or compared.

Taken inside the box by git, as the sandbox's user, in the project's own repository but
never through its branches, index or stash: a private index (``.git/sophon/index``)
that ``git add -A`` brings up to date (untracked files in, ignored files out; its
cached file stats make a checkpoint of an unchanged tree cost a stat per file), a
``write-tree``, and a commit (of no parent, so that a pruned one can be collected)
under ``refs/sophon/checkpoints/<id>``; ``refs/sophon/last`` is the latest. Nothing
is committed when the tree is the same as the last checkpoint's. The refs live in the
project's ``.git``, so they travel with an export and a fork; the ``checkpoint`` events
in the log say which commit is which checkpoint, when and why.

A restore resets the private index to the target with ``read-tree --reset -u``, which
rewrites only the files that differ from the state just checkpointed, removes the ones
added since and brings back the ones deleted; ignored files are left alone.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

from sophon.box.box import Box, ExecEvent, ExecOutcome
from sophon.box.bwrap import BASE_ENV, WORKSPACE
from sophon.cluster.ownership import SessionElsewhere
from sophon.errors import BadRequest, NotFound
from sophon.events.types import Checkpoint, CheckpointFile
from sophon.sessions.service import SessionService
from sophon.store.tables import SessionRow
from sophon.users import Principal

log = logging.getLogger(__name__)

FILES_LISTED = 100  # files named in a checkpoint event; files_changed counts them all
DIFF_LIMIT = 4 * 1024 * 1024
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
# Tools that only read: no checkpoint after them (any other tool, an MCP server's
# included, may change files; a checkpoint where nothing changed costs no event).
READ_ONLY_TOOLS = frozenset({
    "Read", "Glob", "Grep", "LS", "TaskCreate", "TaskUpdate", "TaskList", "TaskGet",
    "TodoWrite", "WebFetch", "WebSearch", "NotebookRead", "ExitPlanMode", "BashOutput",
})
def may_write(tool: str) -> bool:
    """Whether a tool call may change files (a checkpoint follows it, and it waits for
    the one before it)."""
    return tool not in READ_ONLY_TOOLS


_IDENTITY = {"GIT_AUTHOR_NAME": "Sophon", "GIT_AUTHOR_EMAIL": "sophon@localhost",
             "GIT_COMMITTER_NAME": "Sophon", "GIT_COMMITTER_EMAIL": "sophon@localhost"}

# Where the repository is ($gd) and its private index; exit 3 when there is none. A
# plain .git directory, the usual case, costs no git process to find.
_FIND = """if [ -d .git ]; then gd=$PWD/.git
else gd=$(git rev-parse --absolute-git-dir 2>/dev/null) || {
  echo "/workspace is no git repository" >&2; exit 3; }; fi
[ -d "$gd/sophon" ] || mkdir "$gd/sophon"
export GIT_INDEX_FILE="$gd/sophon/index"
"""

# The private index brought up to the working tree: every file but ignored ones and
# those over $CP_MAX_KB KiB (out of the index, as if ignored: the pathspec excludes them).
_ADD = """big="$gd/sophon/large"
find . -path ./.git -prune -o -type f -size +"$CP_MAX_KB"k -printf '%P\\0' > "$big"
if [ -s "$big" ]; then
  { printf '.\\0'; sed -z 's/^/:(exclude,literal)/' "$big"; } > "$big.spec"
  git add -A --ignore-errors --pathspec-from-file="$big.spec" --pathspec-file-nul \\
    >/dev/null 2>&1 || true
  xargs -0 git rm -q --cached --ignore-unmatch -- < "$big" >/dev/null 2>&1 || true
else
  git add -A --ignore-errors . >/dev/null 2>&1 || true
fi
"""

# $1 the checkpoint's id, $2 its message, $3 "force" to record one even when nothing
# changed ("first": only if there is no checkpoint yet), $4 the empty tree. The first
# checkpoint compares with HEAD's tree: a session's files as it began are not a change.
# Prints "same <commit>" or "new <commit>", then the changes (name-status, NUL
# separated). Exit 3: no repository.
_TAKE = """set -e
$FIND
$ADD
tree=$(git write-tree)
last="" lasttree=""
[ -s "$gd/sophon/last" ] && read -r last lasttree < "$gd/sophon/last"
if [ -z "$lasttree" ]; then  # no note of the last one (an older session's): ask git
  at=$(git for-each-ref --format='%(objectname) %(tree)' refs/sophon/last)
  read -r last lasttree <<< "$at" || true
fi
[ -n "$last" ] || lasttree=$(git rev-parse -q --verify 'HEAD^{tree}' || echo "$4")
if [ "$tree" = "$lasttree" ] && [ "$3" != force ] && { [ "$3" != first ] || [ -n "$last" ]; }
then echo "same $last"; exit 0; fi
# Refs written as files (what git reads; a process fewer each than update-ref).
refs="$gd/refs/sophon"
[ -d "$refs/checkpoints" ] || mkdir -p "$refs/checkpoints"
if [ "$tree" = "$lasttree" ] && [ -n "$last" ]; then commit=$last
else
  commit=$(git commit-tree "$tree" -m "$2")
  printf '%s\\n' "$commit" > "$refs/last"
  printf '%s %s\\n' "$commit" "$tree" > "$gd/sophon/last"
fi
printf '%s\\n' "$commit" > "$refs/checkpoints/$1"
echo "new $commit"
git -c core.quotepath=off diff-tree -r -z --no-renames --name-status "$lasttree" "$tree"
""".replace("$FIND", _FIND).replace("$ADD", _ADD)

# $@ checkpoints to remove (ids): their refs go, and what no other checkpoint holds is
# collected by git in time (checkpoints are commits without parents).
_PRUNE = """printf 'delete refs/sophon/checkpoints/%s\\n' "$@" | git update-ref --stdin
git gc --auto --quiet >/dev/null 2>&1 || true
"""

# $1 the commit to restore. Run right after a checkpoint, so the private index is the
# working tree as it is.
_RESTORE = """set -e
$FIND
git read-tree --reset -u "$1"
""".replace("$FIND", _FIND)

# $1 the commit: the working tree made its, and the one the next checkpoint compares
# with (a fork's copy of the project, whose last checkpoint was the source's).
_RESET = """set -e
$FIND
$ADD
git read-tree --reset -u "$1"
git update-ref refs/sophon/last "$1"
printf '%s %s\\n' "$1" "$(git rev-parse "$1^{tree}")" > "$gd/sophon/last"
""".replace("$FIND", _FIND).replace("$ADD", _ADD)

# $1 a patch file: reversed into the working tree (not the index), then removed.
_REVERT = """trap 'rm -f "$1"' EXIT
git apply -R --recount --whitespace=nowarn "$1"
"""

_DIFF = """git -c core.quotepath=off diff --no-color --no-ext-diff --no-renames "$1" "$2" --"""


class CheckpointError(Exception):
    pass


async def _run(box: Box, script: str, args: list[str], cap: int = 1 << 20,
               max_kb: int = 10 * 1024) -> tuple[int, str, str]:
    out: list[str] = []
    err: list[str] = []
    code = -1
    # Index version 4 (paths prefix-compressed) for a new private index: a third of the
    # size, and write-tree over 10,000 files takes 15 ms instead of 38.
    env = {**BASE_ENV, **_IDENTITY, "CP_MAX_KB": str(max_kb), "GIT_INDEX_VERSION": "4"}
    async for ev in box.exec(["bash", "-c", script, "checkpoint", *args], timeout=600,
                             env=env, cwd=WORKSPACE, output_cap=cap):
        if isinstance(ev, ExecEvent):
            (out if ev.stream == "stdout" else err).append(ev.data)
        elif isinstance(ev, ExecOutcome):
            code = ev.exit_code
    return code, "".join(out), "".join(err)


def _changes(listing: str) -> list[CheckpointFile]:
    kinds = {"A": "added", "M": "modified", "D": "deleted", "T": "modified"}
    parts = listing.split("\0")
    return [CheckpointFile(path=path, change=kinds.get(status[:1], "modified"))  # type: ignore[arg-type]
            for status, path in zip(parts[0::2], parts[1::2], strict=False) if path]


class Checkpoints:
    def __init__(self, sessions: SessionService) -> None:
        self.sessions = sessions
        self._locks: dict[str, asyncio.Lock] = {}
        self.max_kb = max(1, int(sessions.settings.checkpoint_max_file_mb * 1024))

    def lock(self, session_id: str) -> asyncio.Lock:
        """Held while the session's tree is checkpointed or restored: one at a time."""
        return self._locks.setdefault(session_id, asyncio.Lock())

    async def take(self, box: Box, session_id: str, reason: str, turn: int,
                   step: int | None = None, tool_use_id: str | None = None,
                   force: bool | str = False) -> Checkpoint | None:
        """A checkpoint if the tree changed since the last one (or ``force``; "first":
        if there is none yet), logged as an event; None when nothing changed or the
        workspace has no repository."""
        async with self.lock(session_id):
            return await self._take(box, session_id, reason, turn, step, tool_use_id, force)

    async def _take(self, box: Box, session_id: str, reason: str, turn: int,
                    step: int | None, tool_use_id: str | None,
                    force: bool | str) -> Checkpoint | None:
        cp_id = "cp_" + secrets.token_hex(8)
        mode = force if isinstance(force, str) else "force" if force else ""
        code, out, err = await _run(box, _TAKE, [cp_id, f"{reason} (turn {turn})", mode,
                                                 EMPTY_TREE], max_kb=self.max_kb)
        if code != 0:
            log.warning("no checkpoint of session %s: %s", session_id, err.strip()[-300:])
            return None
        head, _, listing = out.partition("\n")
        kind, _, commit = head.partition(" ")
        if kind != "new":
            return None
        files = _changes(listing)
        pruned = await self._prune(box, session_id)
        event = Checkpoint(checkpoint_id=cp_id, commit=commit, turn=turn, step=step,
                           reason=reason, tool_use_id=tool_use_id,  # type: ignore[arg-type]
                           files=files[:FILES_LISTED], files_changed=len(files),
                           pruned=pruned)
        logged: Checkpoint = await self.sessions.events.append(session_id, event)
        return logged

    async def _prune(self, box: Box, session_id: str) -> list[str]:
        """With a retention setting: the oldest checkpoints past it, removed (the new
        one, not logged yet, counts as kept)."""
        keep = self.sessions.settings.checkpoint_keep
        if not keep:
            return []
        kept = await self.all(session_id)
        extra = [c.checkpoint_id for c in kept[:max(0, len(kept) + 1 - keep)]]
        if extra:
            code, _, err = await _run(box, _PRUNE, extra)
            if code != 0:
                log.warning("pruning checkpoints of %s failed: %s", session_id, err[-300:])
                return []
        return extra

    async def for_turn(self, box: Box, session_id: str) -> TurnCheckpoints:
        """For the turn just begun (its user message logged)."""
        return TurnCheckpoints(self, box, session_id, await self.turns(session_id))

    def take_soon(self, row: SessionRow, reason: str) -> None:
        """After a save or an exec: a checkpoint, in the background of the request."""
        async def take() -> None:
            try:
                async with self.sessions.box(row, take=False) as box:
                    await self.take(box, row.id, reason, await self.turns(row.id))
            except NotFound:
                pass  # the session was deleted meanwhile: nothing left to keep
            except SessionElsewhere as exc:  # handed on (a drain): its next node keeps on
                log.info("no checkpoint after %s in session %s: %s", reason, row.id,
                         exc.message)
            except Exception as exc:  # a checkpoint lost is logged, never the save's error
                log.warning("checkpoint after %s in session %s failed: %s", reason, row.id, exc)

        self.sessions.spawn(take())

    async def restore(self, box: Box, session_id: str, commit: str, turn: int,
                      checkpoint_id: str) -> tuple[Checkpoint, Checkpoint | None]:
        """The working tree made exactly the checkpoint's: a checkpoint of how it was
        first (forced, so the rewind can be undone), then the restore, then a checkpoint
        of the result."""
        async with self.lock(session_id):
            before = await self._take(box, session_id, "before_rewind", turn, None, None,
                                      True)
            if before is None:
                raise CheckpointError("the workspace's state could not be kept before the "
                                      "rewind (is /workspace still a git repository?)")
            code, _, err = await _run(box, _RESTORE, [commit])
            if code != 0:
                raise CheckpointError(f"restoring {checkpoint_id} failed: "
                                      f"{err.strip()[-300:]}")
            after = await self._take(box, session_id, "rewind", turn, None, None, False)
            return before, after

    async def revert(self, box: Box, patch: str) -> None:
        """Take ``patch`` (hunks of a diff whose result is in the working tree) back out
        of the working tree; a CheckpointError saying why when it no longer applies."""
        name = f".sophon-review-{secrets.token_hex(6)}.patch"

        async def data() -> AsyncIterator[bytes]:
            yield patch.encode()

        await box.put_file("/tmp", name, data())
        code, _, err = await _run(box, _REVERT, [f"/tmp/{name}"])
        if code != 0:
            said = (err.strip().splitlines() or ["git apply failed"])[-1]
            raise CheckpointError(f"the change cannot be taken back: the file has changed "
                                  f"since that turn ({said})")

    async def reset(self, box: Box, session_id: str, commit: str) -> None:
        """The working tree made exactly ``commit``'s, logging nothing (a fork)."""
        async with self.lock(session_id):
            code, _, err = await _run(box, _RESET, [commit], max_kb=self.max_kb)
        if code != 0:
            raise CheckpointError(f"restoring {commit[:12]} failed: {err.strip()[-300:]}")

    async def diff(self, box: Box, base: str, target: str) -> str:
        code, out, err = await _run(box, _DIFF, [base, target], DIFF_LIMIT)
        if code != 0:
            raise BadRequest(f"git diff failed: {err.strip()[-300:]}")
        return out

    # --- for the API: the owner's -----------------------------------------------------

    async def listing(self, principal: Principal, session_id: str) -> list[dict[str, Any]]:
        await self.sessions.get_row(principal, session_id)  # 404 for a stranger
        return [view(cp) for cp in await self.all(session_id)]

    async def compare(self, principal: Principal, session_id: str, base: str | None,
                      head: str | None) -> tuple[str, str, str]:
        """(base commit, head commit, the diff) between two checkpoints: ``head`` by
        default the latest, ``base`` by default the one before ``head``."""
        row = await self.sessions.get_row(principal, session_id)
        cps = await self.all(session_id)
        if not cps:
            raise NotFound("this session has no checkpoints yet")
        to = (await self.find(session_id, head)) if head else cps[-1]
        if base:
            frm = (await self.find(session_id, base)).commit
        else:
            earlier = [c for c in cps if c.seq < to.seq and c.commit != to.commit]
            frm = earlier[-1].commit if earlier else EMPTY_TREE
        return frm, to.commit, await self._diff(row, frm, to.commit)

    async def turn_diff(self, principal: Principal, session_id: str,
                        n: int) -> tuple[str, str, str]:
        """What turn ``n`` changed: (base, head, the diff)."""
        row = await self.sessions.get_row(principal, session_id)
        base, head = await self.turn_range(session_id, n)
        return base, head, (await self._diff(row, base, head) if base != head else "")

    async def _diff(self, row: SessionRow, base: str, head: str) -> str:
        async with self.sessions.box(row) as box:
            return await self.diff(box, base, head)

    # --- what the log says ------------------------------------------------------------

    async def all(self, session_id: str) -> list[Checkpoint]:
        """The session's checkpoints, oldest first (not those pruned since)."""
        stored = [ev for ev in await self.sessions.events.read_type(session_id, "checkpoint")
                  if isinstance(ev, Checkpoint)]
        pruned = {p for ev in stored for p in ev.pruned}
        return [ev for ev in stored if ev.checkpoint_id not in pruned]

    async def find(self, session_id: str, checkpoint_id: str) -> Checkpoint:
        for cp in await self.all(session_id):
            if cp.checkpoint_id == checkpoint_id:
                return cp
        raise NotFound(f"no checkpoint {checkpoint_id!r} in this session (GET "
                       f"/v1/sessions/{session_id}/checkpoints lists them; past "
                       "SOPHON_CHECKPOINT_KEEP, the oldest are removed)")

    async def turns(self, session_id: str) -> int:
        """How many turns the session has had (user messages in its log)."""
        return await self.sessions.events.count_type(session_id, "user")

    async def turn_range(self, session_id: str, n: int) -> tuple[str, str]:
        """The commits before and after turn ``n``: its start (the checkpoint taken as it
        began, or the last one before it) and its last checkpoint."""
        cps = await self.all(session_id)
        if n < 1 or n > await self.turns(session_id):
            raise NotFound(f"this session has no turn {n} (turns are counted from 1)")
        start = [c for c in cps if c.turn < n or (c.turn == n and c.reason == "turn_start")]
        # The turn's own steps: not a save, an exec or a review after it, which count
        # the turn before them too.
        within = [c for c in cps if c.turn == n and c.reason in ("turn_start", "tool",
                                                                 "turn_end")]
        base = start[-1].commit if start else EMPTY_TREE
        end = within[-1].commit if within else base
        return base, end


class TurnCheckpoints:
    """A turn's checkpoints: at its start (if the tree changed since the last, or it is
    the session's first), after each tool call that may change files (its step: the
    tool call's number in the turn) and at its end (always). A failure to take one is
    logged, never the turn's.

    A tool call's checkpoint may run while the model is asked for its next step
    (``wait=False``): it must only be done before the next tool runs (``settle``), so
    that it holds what that call did and nothing after."""

    def __init__(self, checkpoints: Checkpoints, box: Box, session_id: str, turn: int) -> None:
        self.checkpoints, self.box, self.session_id, self.turn = checkpoints, box, session_id, turn
        self.step = 0
        self.pending: asyncio.Future[None] | None = None

    async def _take(self, reason: str, step: int | None = None,
                    tool_use_id: str | None = None, force: bool | str = False) -> None:
        try:
            await self.checkpoints.take(self.box, self.session_id, reason, self.turn, step,
                                        tool_use_id, force)
        except Exception as exc:
            log.warning("checkpoint (%s) of session %s failed: %s", reason, self.session_id,
                        exc)

    async def start(self, wait: bool = True) -> None:
        # The first turn's start is kept even unchanged: the base its diff is made from.
        self.pending = asyncio.ensure_future(self._take("turn_start", force="first"))
        if wait:
            await self.settle()

    async def after_tool(self, tool: str, tool_use_id: str, wait: bool = True) -> None:
        self.step += 1
        if not may_write(tool):
            return
        await self.settle()
        self.pending = asyncio.ensure_future(self._take("tool", self.step, tool_use_id))
        if wait:
            await self.settle()

    async def settle(self) -> None:
        """The last tool call's checkpoint is taken."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            await pending

    async def end(self) -> None:
        await self.settle()
        # Always: the end of a turn is where a rewind of the conversation most often
        # goes back to, changed files or not (an unchanged tree costs no commit).
        await self._take("turn_end", force=True)


def split_hunks(diff: str) -> dict[str, tuple[str, list[str]]]:
    """A ``git diff`` by file: each file's header (``diff --git`` to ``+++``) and its
    hunks (from an ``@@`` line to the next), as text that ``git apply`` takes back."""
    files: dict[str, tuple[str, list[str]]] = {}
    for block in ("\n" + diff).split("\ndiff --git ")[1:]:
        lines = ("diff --git " + block).splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        first = next((i for i, line in enumerate(lines) if line.startswith("@@")), len(lines))
        header, hunks = "".join(lines[:first]), []
        for line in lines[first:]:
            if line.startswith("@@"):
                hunks.append(line)
            else:
                hunks[-1] += line
        path = next((line[6:].rstrip("\n") for line in lines[:first]
                     if line.startswith("+++ b/")), None) or next(
            (line[6:].rstrip("\n") for line in lines[:first] if line.startswith("--- a/")), "")
        files[path] = (header, hunks)
    return files


def view(cp: Checkpoint) -> dict[str, Any]:
    """A checkpoint as the API lists it."""
    return {"id": cp.checkpoint_id, "seq": cp.seq, "turn": cp.turn, "step": cp.step,
            "reason": cp.reason, "tool_use_id": cp.tool_use_id, "ts": cp.ts,
            "commit": cp.commit, "files": [f.model_dump() for f in cp.files],
            "files_changed": cp.files_changed}
