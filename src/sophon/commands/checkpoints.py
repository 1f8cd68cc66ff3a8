"""``sophon claude-code checkpoints|rewind|fork|review``: a session's checkpoints, going
back to one, a new session from one, and what a turn changed."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Optional  # noqa: UP035 - typer needs Optional

import typer

from sophon.commands.claude_code import SessionId, app, client, fail, friendly, table

CheckpointArg = Annotated[str, typer.Argument(
    help="A checkpoint's id (cp_..., from `sophon claude-code checkpoints ID`).")]
SIGNS = {"added": "+", "modified": "~", "deleted": "-"}


def _files(cp: dict[str, Any], width: int = 60) -> str:
    shown = " ".join(SIGNS.get(f["change"], "~") + f["path"] for f in cp["files"])
    more = cp["files_changed"] - len(cp["files"])
    text = shown + (f" (+{more} more)" if more > 0 else "")
    return text if len(text) <= width else text[:width - 1] + "…"


def _clock(iso: str) -> str:
    from datetime import datetime

    return datetime.fromisoformat(iso).astimezone().strftime("%H:%M:%S")


@app.command()
@friendly
def checkpoints(session_id: SessionId, as_json: Annotated[bool, typer.Option(
        "--json", help="The API's JSON list, oldest first.")] = False) -> None:
    """List a session's checkpoints, oldest first.

    Each says the turn and tool call it was taken after, and the files changed since the
    one before.

    Example: sophon claude-code checkpoints ses_0123abcd
    """
    cps = client().checkpoints(session_id)
    if as_json:
        typer.echo(json.dumps(cps, indent=2, ensure_ascii=False))
        return
    if not cps:
        typer.echo("no checkpoints yet: one is taken after each step that changes files")
        return
    rows = [[c["id"], str(c["turn"]), "" if c["step"] is None else str(c["step"]),
             c["reason"].replace("_", " "), _clock(c["ts"]), _files(c) or "(no change)"]
            for c in cps]
    typer.echo(table(["ID", "TURN", "STEP", "AFTER", "TIME", "FILES"], rows, right={1, 2}))


@app.command()
@friendly
def rewind(session_id: SessionId, checkpoint: CheckpointArg,
           files_only: Annotated[bool, typer.Option(
               "--files-only", help="Restore the files; the conversation goes on.")] = False,
           conversation_only: Annotated[bool, typer.Option(
               "--conversation-only",
               help="Cut the conversation back; the files stay as they are.")] = False,
           ) -> None:
    """Go back to a checkpoint: its files, its conversation, or both.

    The files become exactly what they were then (files added since are removed,
    deleted ones come back); the agent's history is cut back to that point. It prints
    the command that undoes it.

    Example: sophon claude-code rewind ses_0123abcd cp_0123456789abcdef
    """
    if files_only and conversation_only:
        raise fail("give --files-only or --conversation-only, not both", 2)
    event = client().rewind(session_id, checkpoint, files=not conversation_only,
                            conversation=not files_only)
    what = "files" if files_only else "conversation" if conversation_only else \
        "files and conversation"
    typer.echo(f"rewound the {what} to {checkpoint}")
    typer.echo(f"undo with: sophon claude-code rewind {session_id} {event['undo']}",
               err=True)


@app.command()
@friendly
def fork(session_id: SessionId, checkpoint: CheckpointArg,
         name: Annotated[Optional[str], typer.Option(  # noqa: UP045
             help="The new session's name (the old one's, with \"(fork)\").")] = None,
         ) -> None:
    """Start a new session from a checkpoint; prints its id.

    It gets the files, git history, settings, secrets and the conversation up to there.

    Example: sophon claude-code fork ses_0123abcd cp_0123456789abcdef --name try-b
    """
    with _status(f"forking {session_id} at {checkpoint}"):
        s = client().fork(session_id, checkpoint, name=name)
    typer.echo(s["id"])


@app.command()
@friendly
def review(session_id: SessionId,
           turn: Annotated[Optional[int], typer.Option(  # noqa: UP045
               min=1, help="The turn (counted from 1); the last one by default.")] = None,
           base: Annotated[Optional[str], typer.Option(  # noqa: UP045
               "--from", help="Compare checkpoints instead: from this one...")] = None,
           head: Annotated[Optional[str], typer.Option(  # noqa: UP045
               "--to", help="... to this one (the latest by default).")] = None,
           ) -> None:
    """Show what a turn changed, or what changed between two checkpoints, as a diff.

    Example: sophon claude-code review ses_0123abcd --turn 2

    Example: sophon claude-code review ses_0123abcd --from cp_0123456789abcdef
    """
    c = client()
    if base or head:
        if turn is not None:
            raise fail("give --turn, or --from/--to, not both", 2)
        text = c.checkpoint_diff(session_id, base, head)
    else:
        if turn is None:  # the last turn: each ends with a checkpoint
            turn = max((cp["turn"] for cp in c.checkpoints(session_id)), default=0)
            if not turn:
                raise fail("this session has had no turn yet")
        text = c.turn_diff(session_id, turn)
    if not text:
        typer.echo("no changes", err=True)
        return
    _print_diff(text)


def _print_diff(text: str) -> None:
    if not sys.stdout.isatty():
        sys.stdout.write(text)
        return
    colors = {"+": "\x1b[32m", "-": "\x1b[31m", "@": "\x1b[36m"}
    for line in text.splitlines(keepends=True):
        head = line[:3]
        color = "\x1b[1m" if head in ("+++", "---") or line.startswith("diff ") else \
            colors.get(line[:1], "")
        sys.stdout.write(f"{color}{line.rstrip(chr(10))}\x1b[0m\n" if color else line)


def _status(text: str) -> Any:
    from sophon.commands.claude_code import console

    return console(stderr=True).status(text)
