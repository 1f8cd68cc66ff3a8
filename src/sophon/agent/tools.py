"""The focused tool surface of the native runtime, each tool executed through the box.

Input schemas follow Claude Code's (names, fields, defaults), so prompts and habits
carry over. A tool never raises for a mistake of the model's: it answers an error
result (``ToolError``) that goes back to the model as ``is_error``.
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sophon.box.box import Box, ExecEvent, ExecOutcome
from sophon.box.bwrap import WORKSPACE
from sophon.box.outcome import Verdict, judge
from sophon.errors import BoxRequestError

OUTPUT_LIMIT = 30_000
READ_LINE_LIMIT = 2000
READ_LINE_CHARS = 2000
FILE_LIMIT = 4 * 1024 * 1024
BASH_DEFAULT_MS = 120_000
BASH_MAX_MS = 600_000
CWD_FILE = "/tmp/.sophon-bash-cwd"
GREP_FILE_LIMIT = 5000


CONTENT_CACHE = 8 * 2**20       # bytes of file contents a turn keeps for Edit
CONTENT_CACHE_FILE = 2**20      # larger files are read again


class ToolError(Exception):
    """A failure to report to the model, not a failure of the turn."""


@dataclass
class ToolContext:
    box: Box
    env: dict[str, str]
    emit: Callable[[Any], Awaitable[Any]]
    read_etags: dict[str, str] = field(default_factory=dict)  # path -> etag last seen
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    output_cap: int = 1024 * 1024
    # The bytes behind an etag this turn read or wrote, so an Edit needs no second read:
    # its write is conditional on that etag, so a change made meanwhile still refuses it.
    contents: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    # Told of a running command's output as it comes (agent/live.py), while a tool runs.
    on_output: Callable[[str, str], Awaitable[None]] | None = None
    # The session's MCP servers for this turn (agent/mcp_servers.py), if it has any.
    mcp: Any = None

    def remember(self, rel: str, etag: str, data: bytes) -> None:
        self.read_etags[rel] = etag
        self.contents.pop(rel, None)
        if len(data) <= CONTENT_CACHE_FILE and \
                sum(len(d) for _, d in self.contents.values()) + len(data) <= CONTENT_CACHE:
            self.contents[rel] = (etag, data)


def _schema(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required,
            "additionalProperties": False}


TOOLS: list[dict[str, Any]] = [
    {"name": "Read", "description": "Reads a file from the workspace. file_path is absolute "
     "(under /workspace) or relative to it. Returns lines numbered from 1 (cat -n style). "
     "offset is the line to start from, limit how many lines (default 2000).",
     "input_schema": _schema({"file_path": {"type": "string"}, "offset": {"type": "number"},
                              "limit": {"type": "number"}}, ["file_path"])},
    {"name": "Write", "description": "Writes a file in the workspace, replacing it if it "
     "exists. An existing file must have been read with Read first.",
     "input_schema": _schema({"file_path": {"type": "string"}, "content": {"type": "string"}},
                             ["file_path", "content"])},
    {"name": "Edit", "description": "Replaces old_string with new_string in a file. The file "
     "must have been read first. old_string must occur exactly once unless replace_all is "
     "true.",
     "input_schema": _schema({"file_path": {"type": "string"},
                              "old_string": {"type": "string"},
                              "new_string": {"type": "string"},
                              "replace_all": {"type": "boolean", "default": False}},
                             ["file_path", "old_string", "new_string"])},
    {"name": "Glob", "description": "Finds files whose path matches a glob pattern (e.g. "
     "'**/*.py', 'src/*.ts'), newest first.",
     "input_schema": _schema({"pattern": {"type": "string"}, "path": {"type": "string"}},
                             ["pattern"])},
    {"name": "Grep", "description": "Searches file contents with a regular expression "
     "(extended syntax). output_mode: files_with_matches (default), content or count. "
     "glob filters the files searched (e.g. '*.py', '*.{ts,tsx}', 'src/**/*.ts').",
     "input_schema": _schema({
         "pattern": {"type": "string"}, "path": {"type": "string"}, "glob": {"type": "string"},
         "output_mode": {"type": "string",
                         "enum": ["content", "files_with_matches", "count"]},
         "-i": {"type": "boolean"}, "-n": {"type": "boolean"}, "-A": {"type": "number"},
         "-B": {"type": "number"}, "-C": {"type": "number"},
         "head_limit": {"type": "number"}}, ["pattern"])},
    {"name": "Bash", "description": "Runs a bash command in the sandbox. The working "
     "directory persists between calls. timeout is in milliseconds (default 120000, at "
     "most 600000).",
     "input_schema": _schema({"command": {"type": "string"}, "timeout": {"type": "number"},
                              "description": {"type": "string"}}, ["command"])},
    {"name": "TaskCreate", "description": "Adds a task to your task list for multi-step "
     "work. Returns its id.",
     "input_schema": _schema({"subject": {"type": "string"}, "description": {"type": "string"},
                              "activeForm": {"type": "string"}}, ["subject", "description"])},
    {"name": "TaskUpdate", "description": "Updates a task: status pending, in_progress or "
     "completed; or its subject or description.",
     "input_schema": _schema({
         "taskId": {"type": "string"},
         "status": {"type": "string", "enum": ["pending", "in_progress", "completed"]},
         "subject": {"type": "string"}, "description": {"type": "string"}}, ["taskId"])},
]
TOOL_NAMES = frozenset(t["name"] for t in TOOLS)


def workspace_path(file_path: Any) -> str:
    """The path relative to the workspace, or a ToolError for one outside it."""
    if not isinstance(file_path, str) or not file_path:
        raise ToolError("file_path must be a non-empty string")
    path = posixpath.normpath(file_path if file_path.startswith("/")
                              else posixpath.join(WORKSPACE, file_path))
    if path == WORKSPACE:
        raise ToolError(f"{file_path} is the workspace directory, not a file")
    if not path.startswith(WORKSPACE + "/"):
        raise ToolError(f"{file_path} is outside the workspace; files live under {WORKSPACE}")
    return path[len(WORKSPACE) + 1:]


def _cut(text: str, limit: int = OUTPUT_LIMIT) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n\n... [{len(text) - limit} characters cut] ...\n\n{text[-half:]}"


async def _read_bytes(ctx: ToolContext, rel: str) -> tuple[bytes, str | None]:
    try:
        got = await ctx.box.read_path(WORKSPACE, rel, FILE_LIMIT)
    except BoxRequestError as exc:
        if exc.code == "not_found":
            raise ToolError(f"File does not exist: {WORKSPACE}/{rel}") from exc
        raise ToolError(exc.message) from exc
    if got.get("truncated"):
        raise ToolError(f"{rel} is larger than {FILE_LIMIT} bytes; use Bash (head, sed) to "
                        "look at parts of it")
    return got["data"], got.get("etag")  # type: ignore[return-value]


# --- the tools ------------------------------------------------------------------


async def read(ctx: ToolContext, inp: dict[str, Any]) -> str:
    rel = workspace_path(inp.get("file_path"))
    data, etag = await _read_bytes(ctx, rel)
    if b"\x00" in data[:8192]:
        raise ToolError(f"{rel} is a binary file")
    text = data.decode("utf-8", errors="replace")
    if etag:
        ctx.remember(rel, etag, data)
    if not text:
        return "(the file exists and is empty)"
    lines = text.splitlines()
    offset = max(1, int(inp.get("offset") or 1))
    limit = max(1, int(inp.get("limit") or READ_LINE_LIMIT))
    shown = lines[offset - 1: offset - 1 + limit]
    if not shown:
        raise ToolError(f"offset {offset} is past the end of the file ({len(lines)} lines)")
    out = [f"{n:>6}\t{line[:READ_LINE_CHARS]}" for n, line in enumerate(shown, offset)]
    return "\n".join(out)


async def _write(ctx: ToolContext, rel: str, data: bytes, etag: str | None) -> None:
    try:
        got = await ctx.box.write_path(WORKSPACE, rel, data, if_match=etag,
                                       if_none_match=etag is None)
    except BoxRequestError as exc:
        if exc.code == "precondition_failed":
            if etag is None:
                raise ToolError(f"{rel} already exists; Read it before writing it") from exc
            raise ToolError(f"{rel} has changed since it was read (by the user or another "
                            "process); Read it again before writing it") from exc
        raise ToolError(exc.message) from exc
    ctx.remember(rel, str(got["etag"]), data)


async def write(ctx: ToolContext, inp: dict[str, Any]) -> str:
    rel = workspace_path(inp.get("file_path"))
    content = inp.get("content")
    if not isinstance(content, str):
        raise ToolError("content must be a string")
    await _write(ctx, rel, content.encode(), ctx.read_etags.get(rel))
    return f"Wrote {len(content.splitlines())} lines to {WORKSPACE}/{rel}"


async def edit(ctx: ToolContext, inp: dict[str, Any]) -> str:
    rel = workspace_path(inp.get("file_path"))
    old, new = inp.get("old_string"), inp.get("new_string")
    if not isinstance(old, str) or not isinstance(new, str):
        raise ToolError("old_string and new_string must be strings")
    if old == new:
        raise ToolError("old_string and new_string are the same; nothing to change")
    if rel not in ctx.read_etags:
        raise ToolError(f"{rel} has not been read yet; Read it before editing it")
    etag, data = ctx.contents.get(rel, ("", b""))
    if etag != ctx.read_etags[rel]:
        data, etag = await _read_bytes(ctx, rel)
    if etag != ctx.read_etags[rel]:
        raise ToolError(f"{rel} has changed since it was read (by the user or another "
                        "process); Read it again before editing it")
    text = data.decode("utf-8", errors="replace")
    count = text.count(old) if old else 0
    if count == 0:
        raise ToolError(f"old_string was not found in {rel}")
    if count > 1 and not inp.get("replace_all"):
        raise ToolError(f"old_string occurs {count} times in {rel}; give more context to "
                        "make it unique, or set replace_all to replace every occurrence")
    text = text.replace(old, new) if inp.get("replace_all") else text.replace(old, new, 1)
    await _write(ctx, rel, text.encode(), etag)
    return f"Edited {WORKSPACE}/{rel} ({count if inp.get('replace_all') else 1} replacement" \
           f"{'s' if inp.get('replace_all') and count > 1 else ''})"


def glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out, i = out + re.escape("["), i + 1
            else:
                out, i = out + "[" + pattern[i + 1:end].replace("!", "^", 1) + "]", end + 1
        elif pattern[i] == "{":
            end = pattern.find("}", i)
            if end == -1:
                out, i = out + re.escape("{"), i + 1
            else:
                alts = pattern[i + 1:end].split(",")
                out, i = out + "(?:" + "|".join(re.escape(a) for a in alts) + ")", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


async def glob(ctx: ToolContext, inp: dict[str, Any]) -> str:
    pattern = inp.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        raise ToolError("pattern must be a non-empty string")
    base = workspace_path(inp["path"]) if inp.get("path") not in (None, "", WORKSPACE) else ""
    try:
        got = await ctx.box.tree(WORKSPACE, base)
    except BoxRequestError as exc:
        raise ToolError(exc.message) from exc
    rx = glob_regex(pattern.removeprefix("./"))
    hits = [e for e in got["entries"] if e["type"] == "file" and rx.match(e["path"])]  # type: ignore[index]
    hits.sort(key=lambda e: -e["mtime"])
    if not hits:
        return "No files found"
    prefix = f"{WORKSPACE}/{base + '/' if base else ''}"
    lines = [prefix + e["path"] for e in hits[:100]]
    if len(hits) > 100:
        lines.append(f"(showing 100 of {len(hits)} files)")
    return "\n".join(lines)


async def _run(ctx: ToolContext, argv: list[str], timeout: float,
               script: str | None = None,
               live: bool = False) -> tuple[int | None, str, str, Verdict | None]:
    out: list[str] = []
    err: list[str] = []
    outcome: ExecOutcome | None = None
    async for ev in ctx.box.exec(argv, timeout=timeout, env=ctx.env, cwd=WORKSPACE,
                                 output_cap=ctx.output_cap, script=script):
        if isinstance(ev, ExecEvent):
            (out if ev.stream == "stdout" else err).append(ev.data)
            if live and ctx.on_output is not None:
                await ctx.on_output(ev.stream, ev.data)
        else:
            outcome = ev
    verdict = judge(outcome, ctx.box.disk_full) if outcome else None
    return (outcome.exit_code if outcome else None), "".join(out), "".join(err), verdict


def _braces(pattern: str) -> list[str]:
    """``*.{ts,tsx}`` as ``*.ts`` and ``*.tsx``: grep's --include has no braces."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    return [alt for part in m.group(1).split(",")
            for alt in _braces(pattern[:m.start()] + part + pattern[m.end():])]


async def _glob_files(ctx: ToolContext, base: str, pattern: str) -> list[str]:
    """The files under ``base`` whose path below it matches ``pattern``, for grep."""
    try:
        got = await ctx.box.tree(WORKSPACE, base)
    except BoxRequestError as exc:
        raise ToolError(exc.message) from exc
    rx = glob_regex(pattern.removeprefix("./"))
    prefix = base + "/" if base else ""
    files = [prefix + e["path"] for e in got["entries"]  # type: ignore[index]
             if e["type"] == "file" and rx.match(e["path"])]
    if len(files) > GREP_FILE_LIMIT:
        raise ToolError(f"glob {pattern} matches {len(files)} files (at most "
                        f"{GREP_FILE_LIMIT}); narrow it or give a path")
    return files


async def grep(ctx: ToolContext, inp: dict[str, Any]) -> str:
    pattern = inp.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        raise ToolError("pattern must be a non-empty string")
    mode = inp.get("output_mode") or "files_with_matches"
    if mode not in ("content", "files_with_matches", "count"):
        raise ToolError("output_mode is content, files_with_matches or count")
    # -H: every line names its file, even when path is a single file.
    argv = ["grep", "-r", "-E", "-I", "-H", "--exclude-dir=.git", "--color=never"]
    if inp.get("-i"):
        argv.append("-i")
    if mode == "files_with_matches":
        argv.append("-l")
    elif mode == "count":
        argv.append("-c")
    else:
        if inp.get("-n", True):
            argv.append("-n")
        for flag in ("-A", "-B", "-C"):
            if inp.get(flag) is not None:
                argv += [flag, str(int(inp[flag]))]
    path = workspace_path(inp["path"]) if inp.get("path") not in (None, "", WORKSPACE) else "."
    operands = [path]
    pick = inp.get("glob")
    if pick and not isinstance(pick, str):
        raise ToolError("glob must be a string")
    if pick and "/" in pick:  # a path glob: grep's --include sees base names only
        operands = await _glob_files(ctx, "" if path == "." else path, pick)
        if not operands:
            return "No matches found"
    elif pick:
        argv += [f"--include={alt}" for alt in _braces(pick)]
    argv += ["-e", pattern, "--", *operands]
    code, out, err, _ = await _run(ctx, argv, 60)
    if code == 1:
        return "No matches found"
    if code != 0:
        raise ToolError(err.strip() or f"grep failed (exit {code})")
    lines = [line.removeprefix("./") for line in out.splitlines()]
    if mode == "count":
        lines = [line for line in lines if not line.endswith(":0")]
    limit = inp.get("head_limit")
    if limit:
        lines = lines[: int(limit)]
    return _cut("\n".join(lines)) if lines else "No matches found"


async def bash(ctx: ToolContext, inp: dict[str, Any]) -> str:
    command = inp.get("command")
    if not isinstance(command, str) or not command.strip():
        raise ToolError("command must be a non-empty string")
    timeout_ms = inp.get("timeout") or BASH_DEFAULT_MS
    if not isinstance(timeout_ms, int | float) or timeout_ms <= 0 or timeout_ms > BASH_MAX_MS:
        raise ToolError(f"timeout is in milliseconds, at most {BASH_MAX_MS}")
    # The working directory a command leaves is where the next one starts.
    script = (f'cd "$(cat {CWD_FILE} 2>/dev/null || echo {WORKSPACE})" 2>/dev/null '
              f"|| cd {WORKSPACE}\n"
              f"trap 'pwd > {CWD_FILE}' EXIT\n{command}\n")
    code, out, err, verdict = await _run(ctx, ["bash", "{script}"],
                                         math.ceil(timeout_ms / 1000), script, live=True)
    text = out + (("\n" if out and not out.endswith("\n") else "") + err if err else "")
    text = _cut(text.rstrip("\n"))
    why = verdict.says(timeout_ms / 1000) if verdict else None
    if why:
        raise ToolError(f"{text}\n{why}".lstrip())
    if code != 0:
        raise ToolError(f"{text}\nExit code {code}".lstrip())
    return text or "(no output)"


async def task_create(ctx: ToolContext, inp: dict[str, Any]) -> str:
    from sophon.events.types import TaskUpdate

    subject = inp.get("subject")
    if not isinstance(subject, str) or not subject:
        raise ToolError("subject must be a non-empty string")
    task_id = str(len(ctx.tasks) + 1)
    task = {"subject": subject, "description": inp.get("description"), "status": "pending"}
    ctx.tasks[task_id] = task
    await ctx.emit(TaskUpdate(task_id=task_id, subject=subject, status="pending",
                              description=task["description"]))
    return f"Task #{task_id} created: {subject}"


async def task_update(ctx: ToolContext, inp: dict[str, Any]) -> str:
    from sophon.events.types import TaskUpdate

    task_id = str(inp.get("taskId", ""))
    task = ctx.tasks.get(task_id)
    if task is None:
        raise ToolError(f"no task #{task_id}; tasks: {', '.join(ctx.tasks) or 'none'}")
    status = inp.get("status", task["status"])
    if status not in ("pending", "in_progress", "completed"):
        raise ToolError("status is pending, in_progress or completed")
    task.update(status=status, subject=inp.get("subject") or task["subject"],
                description=inp.get("description", task["description"]))
    await ctx.emit(TaskUpdate(task_id=task_id, subject=task["subject"], status=status,
                              description=task["description"]))
    return f"Task #{task_id} is {status}"


RUNNERS: dict[str, Callable[[ToolContext, dict[str, Any]], Awaitable[str]]] = {
    "Read": read, "Write": write, "Edit": edit, "Glob": glob, "Grep": grep, "Bash": bash,
    "TaskCreate": task_create, "TaskUpdate": task_update,
}


async def run_tool(ctx: ToolContext, name: str, inp: dict[str, Any]) -> tuple[str, bool]:
    """(content, is_error) for one tool call; never raises for the model's mistakes."""
    runner = RUNNERS.get(name)
    if runner is None:
        return f"unknown tool {name!r}; tools: {', '.join(RUNNERS)}", True
    try:
        return await runner(ctx, inp if isinstance(inp, dict) else {}), False
    except ToolError as exc:
        return str(exc), True
    except (TypeError, ValueError) as exc:
        return f"invalid input for {name}: {exc}", True
