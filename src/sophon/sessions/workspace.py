"""The editor's view of a session's files, and its diff. Every read and write goes
through boxd, which refuses paths that leave the workspace (``..``, absolute paths,
symlinks, including ones a workload planted)."""

from __future__ import annotations

import base64
import re

from sophon.box.box import ExecEvent, ExecOutcome
from sophon.box.bwrap import BASE_ENV, WORKSPACE
from sophon.errors import (
    BadRequest,
    BoxRequestError,
    NotFound,
    PreconditionFailed,
    PreconditionRequired,
    SophonError,
)
from sophon.sessions.models import FileContent, FileEntry, FileTree
from sophon.sessions.service import SessionService
from sophon.users import Principal

FILE_LIMIT = 2 * 1024 * 1024  # larger files are reported, not sent
DIFF_LIMIT = 4 * 1024 * 1024
REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/~^-]{0,200}$")


def _translate(exc: BoxRequestError) -> SophonError:
    if exc.code == "not_found":
        return NotFound(exc.message)
    if exc.code == "precondition_failed":
        return PreconditionFailed(exc.message)
    err = BadRequest(exc.message)
    err.code = exc.code
    return err


class Workspace:
    def __init__(self, sessions: SessionService) -> None:
        self.sessions = sessions

    async def tree(self, principal: Principal, session_id: str) -> FileTree:
        row = await self.sessions.get_row(principal, session_id)
        async with self.sessions.box(row) as box:
            try:
                got = await box.tree(WORKSPACE)
            except BoxRequestError as exc:
                raise _translate(exc) from exc
        return FileTree(entries=[FileEntry.model_validate(e) for e in got["entries"]],  # type: ignore[attr-defined]
                        truncated=bool(got.get("truncated")))

    async def read(self, principal: Principal, session_id: str, path: str) -> FileContent:
        row = await self.sessions.get_row(principal, session_id)
        async with self.sessions.box(row) as box:
            try:
                got = await box.read_path(WORKSPACE, path, FILE_LIMIT)
            except BoxRequestError as exc:
                raise _translate(exc) from exc
        data: bytes = got["data"]  # type: ignore[assignment]
        content = FileContent(path=path, size=int(got["size"]),  # type: ignore[arg-type]
                              etag=got.get("etag"), truncated=bool(got["truncated"]))  # type: ignore[arg-type]
        if content.truncated:
            return content
        try:
            content.content, content.encoding = data.decode("utf-8"), "utf-8"
            content.binary = "\x00" in content.content
        except UnicodeDecodeError:
            content.binary = True
        if content.binary:
            content.content, content.encoding = base64.b64encode(data).decode(), "base64"
        return content

    async def write(self, principal: Principal, session_id: str, path: str, data: bytes,
                    if_match: str | None, if_none_match: bool) -> dict[str, object]:
        row = await self.sessions.get_row(principal, session_id)
        etag = if_match.strip('"') if if_match and if_match != "*" else None
        async with self.sessions.box(row) as box:
            if etag is None and not if_none_match and if_match != "*":
                try:
                    await box.read_path(WORKSPACE, path, 0)
                    raise PreconditionRequired(
                        f"{path} exists: send If-Match with the ETag you read, so a change "
                        "made since (by the agent, say) is never silently overwritten")
                except BoxRequestError as exc:
                    if exc.code != "not_found":
                        raise _translate(exc) from exc
            try:
                got = await box.write_path(WORKSPACE, path, data, if_match=etag,
                                           if_none_match=if_none_match)
            except BoxRequestError as exc:
                raise _translate(exc) from exc
        await self.sessions.touch(row.id)
        if self.sessions.after_change is not None:
            self.sessions.after_change(row, "save")
        return got

    async def diff(self, principal: Principal, session_id: str, since: str | None) -> str:
        row = await self.sessions.get_row(principal, session_id)
        base = since or "HEAD"
        if not REF.match(base):
            raise BadRequest(f"{base!r} is not a commit or ref")
        # Tracked changes against the base, then untracked files as additions.
        script = (
            'git rev-parse --verify -q "$1^{commit}" >/dev/null '
            '|| { echo "no commit $1 in this repository" >&2; exit 3; }\n'
            'git -c core.quotepath=off diff --no-color --no-ext-diff "$1" --\n'
            "git ls-files --others --exclude-standard -z | "
            "xargs -0 -r -n1 git diff --no-color --no-index /dev/null 2>/dev/null\n"
            "exit 0\n"
        )
        out: list[str] = []
        err: list[str] = []
        code = -1
        async with self.sessions.box(row) as box:
            async for ev in box.exec(["bash", "-c", script, "diff", base], timeout=120,
                                     env=dict(BASE_ENV), cwd=WORKSPACE,
                                     output_cap=DIFF_LIMIT):
                if isinstance(ev, ExecEvent):
                    (out if ev.stream == "stdout" else err).append(ev.data)
                elif isinstance(ev, ExecOutcome):
                    code = ev.exit_code
        if code == 3:
            raise BadRequest("".join(err).strip())
        if code != 0:
            raise BadRequest(f"git diff failed: {''.join(err).strip()[-500:]}")
        return "".join(out)
