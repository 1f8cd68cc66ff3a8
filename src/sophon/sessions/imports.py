"""A session made from an export archive (``GET /v1/sessions/{id}/export``): the archive's
settings, its project with the git history, and its event log, so that the conversation
goes on where it was.

The archive is untrusted: it is unpacked only inside a staging box (a fresh uid that
owns no other box's files, its own disk bounding what the archive may unpack to), never
on the host. The host reads two files back from that box as data, ``session.json``
(capped) and ``events.jsonl`` (a piece at a time), and checks them as it checks any
request and event; the session's own box then copies the project from the staging
box's workspace, as a local clone does.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from sophon.box.box import Box
from sophon.box.bwrap import BASE_ENV, WORKSPACE
from sophon.errors import BadRequest, BoxRequestError
from sophon.events.types import SessionStart, Status, from_wire
from sophon.sessions.models import CreateSession, NetworkSettings, SessionView
from sophon.sessions.starters import run_or_refuse
from sophon.users import Principal

if TYPE_CHECKING:
    from sophon.sessions.service import SessionService

ARCHIVE = "import.tar.gz"
UNPACKED = "unpacked"
MAX_SETTINGS_BYTES = 1 << 20
EVENTS_PIECE = 4 << 20
# What an archive's settings may carry over: the rest (ids, usage, status) is the old
# session's, not the new one's.
CARRIED = ("name", "base", "model", "runtime", "system_prompt", "approval", "max_turns",
           "max_budget_usd", "network", "mcp_servers")

# Unpacked as the staging box's user (no owners kept); the project must be there; then
# readable by the session's box, which runs as another uid. What is wrong is said in a
# line on stderr.
_UNPACK = f"""set -o pipefail
fail() {{ echo "$1" >&2; exit 3; }}
gzip -t {ARCHIVE} 2>/dev/null || fail "it is not a gzip file (an export is a .tar.gz)"
mkdir {UNPACKED}
if ! out=$(tar -xzf {ARCHIVE} -C {UNPACKED} --no-same-owner 2>&1); then
  avail=$(df -k --output=avail . | tail -n 1)
  [ "${{avail// /}}" -lt 1024 ] && fail "it unpacks to more than a session's disk here"
  fail "it is not a tar archive ($(echo "$out" | tail -n 1))"
fi
rm -f {ARCHIVE}
test -d {UNPACKED}/project || fail "no project/ directory in it"
test -f {UNPACKED}/session.json || fail "no session.json in it"
chmod -R a+rX {UNPACKED}/project
"""
_COPY = ("cp -a /mnt/source/. . && "
         "if [ ! -d .git ]; then git init -q -b main && git add -A && "
         "git -c user.name=Sophon -c user.email=sophon@localhost commit -q --allow-empty "
         "-m 'Imported'; fi")


Note = Callable[[dict[str, Any], list[str], int], Status]


async def import_archive(sessions: SessionService, principal: Principal,
                         archive: AsyncIterable[bytes], name: str | None = None, *,
                         events: AsyncIterable[Any] | None = None,
                         note: Note | None = None) -> SessionView:
    """A new session from an export archive: its settings, project and event log,
    unpacked in a staging box. Connectors the archive names that this user has not are
    left out, and said so. A fork gives its own ``events`` (the archive's are then not
    read) and ``note`` (what the last event says of where the session came from)."""

    async def has_connector(connector: str) -> bool:
        if sessions.check_network is None:
            return True
        try:
            await sessions.check_network(principal.user_id, NetworkSettings(), [connector])
        except BadRequest:
            return False
        return True

    env = {**BASE_ENV, "TERM": "dumb"}  # the staging box has no network, no secret
    async with sessions.boxes.staging({}) as (staging, staged):
        await unpack(staging, archive, env)
        req, dropped, old = await settings_of(staging, name, sessions.settings.disk_max_mb,
                                              has_connector)
        staged.chmod(0o755)  # the session's box, another uid, copies from it
        view = await sessions.create(principal, req, imported=project_dir(staged))
        try:
            count = 0
            async for event in events if events is not None else events_of(staging):
                await sessions.events.append(view.id, event)
                count += 1
            await sessions.events.append(view.id, (note or imported_note)(old, dropped, count))
        except BaseException:
            await sessions.purge(principal, view.id)
            raise
    return await sessions.get(principal, view.id)


async def unpack(staging: Box, archive: AsyncIterable[bytes], env: dict[str, str]) -> None:
    """Put the archive in the staging box and unpack it there; a 400 saying what is
    wrong with it (not a tar.gz, no project, larger than the box's disk)."""
    try:
        await staging.put_file(WORKSPACE, ARCHIVE, archive)
    except BoxRequestError as exc:
        raise BadRequest(f"the archive could not be stored for unpacking: {exc}") from None
    await run_or_refuse(staging, ["bash", "-c", _UNPACK], env, "the archive cannot be imported")


async def settings_of(staging: Box, name: str | None, max_disk_mb: int,
                      has_connector: Callable[[str], Awaitable[bool]]
                      ) -> tuple[CreateSession, list[str], dict[str, Any]]:
    """The new session's request from the archive's session.json (checked as any
    request is; its disk as large as the old one's, within this server's ceiling), the
    connectors it named that this user has not, and the old view."""
    got = await staging.read_path(WORKSPACE, f"{UNPACKED}/session.json", MAX_SETTINGS_BYTES)
    if got.get("truncated"):
        raise BadRequest("the archive's session.json is over 1 MiB")
    try:
        old = json.loads(got["data"])  # type: ignore[arg-type]
        if not isinstance(old, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise BadRequest(f"the archive's session.json is not JSON: {exc}") from None
    fields = {k: old[k] for k in CARRIED if old.get(k) is not None}
    if name is not None:
        fields["name"] = name
    disk = old.get("disk")
    limit = disk.get("limit_bytes") if isinstance(disk, dict) else None
    if isinstance(limit, int) and limit > 0:
        fields["disk_mb"] = max(16, min(limit >> 20, max_disk_mb))
    connectors = [c for c in old.get("connectors") or [] if isinstance(c, str)]
    kept = [c for c in connectors if await has_connector(c)]
    try:
        req = CreateSession.model_validate({**fields, "connectors": kept})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BadRequest(f"the archive's session.json: {where}: {first['msg']}") from None
    return req, [c for c in connectors if c not in kept], old


async def copy_project(box: Box, env: dict[str, str]) -> None:
    """In the new session's box, with the staging box's unpacked archive at /mnt/source:
    the project, its .git included, becomes the workspace."""
    await run_or_refuse(box, ["bash", "-c", _COPY], env, "copying the project")


async def events_of(staging: Box) -> AsyncIterator[Any]:
    """The archive's events, in order, each checked as a typed event; the old session's
    own start is left out (the new session has its own)."""
    offset, rest = 0, b""
    while True:
        try:
            got = await staging.read_path(WORKSPACE, f"{UNPACKED}/events.jsonl",
                                          EVENTS_PIECE, offset)
        except BoxRequestError:
            if offset:
                raise
            return  # an archive without a log: the project alone
        piece: bytes = got["data"]  # type: ignore[assignment]
        offset += len(piece)
        more = bool(got.get("truncated"))
        lines = (rest + piece).split(b"\n")
        rest = lines.pop() if more else b""
        for line in lines:
            if not line.strip():
                continue
            try:
                event = from_wire(line)
            except ValidationError as exc:
                raise BadRequest("the archive's events.jsonl holds something that is not "
                                 f"one of Sophon's events: {exc.errors()[0]['msg']}") from None
            if not isinstance(event, SessionStart):
                yield event
        if not more:
            return


def imported_note(old: dict[str, Any], dropped: list[str], count: int) -> Status:
    where = f"{old.get('name', '?')} ({old.get('id', '?')})"
    detail = f"imported from an export of {where}: {count} events"
    if dropped:
        detail += (f"; connectors you do not have were left out: {', '.join(dropped)} "
                   "(add them, then attach them with PATCH)")
    return Status(status="idle", detail=detail)


def project_dir(staged: Path) -> Path:
    return staged / UNPACKED / "project"
