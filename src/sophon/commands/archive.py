"""``sophon claude-code export|import``: a session as one archive, and back."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional  # noqa: UP035 - typer needs Optional

import typer

from sophon.commands.claude_code import SessionId, app, client, console, fail, friendly


@app.command()
@friendly
def export(session_id: SessionId,
           out: Annotated[Path, typer.Option(help="A directory or a .tar.gz path.")]
           = Path(".")) -> None:
    """Download the session (project with git history, events, metadata) as a tar.gz.

    Example: sophon claude-code export ses_0123abcd --out ./archive/
    """
    # A path not ending in .tar.gz is a directory (made if need be): typer drops the
    # trailing "/" of "./archive/", so the name is what tells.
    is_file = out.name.endswith((".tar.gz", ".tgz")) and not out.is_dir()
    target = out if is_file else out / f"{session_id}.tar.gz"
    from rich.progress import DownloadColumn, Progress, SpinnerColumn, TransferSpeedColumn

    with Progress(SpinnerColumn(), "[progress.description]{task.description}",
                  DownloadColumn(), TransferSpeedColumn(), transient=True,
                  console=console(stderr=True)) as progress:
        task = progress.add_task(f"exporting {session_id}", total=None)
        try:
            size = client().export(session_id, target,
                                   progress=lambda n: progress.update(task, completed=n))
        except OSError as exc:  # the archive's place: not writable, not a directory, ...
            error = f"cannot write {exc.filename or target}: {exc.strerror or exc}"
        else:
            error = None
    if error is not None:  # said once the progress bar is gone, so it stays on screen
        raise fail(error)
    typer.echo(f"{target} ({size:,} bytes)")


@app.command("import")
@friendly
def import_(archive: Annotated[Path, typer.Argument(
                help="A .tar.gz from `sophon claude-code export`.")],
            name: Annotated[Optional[str], typer.Option(  # noqa: UP045
                help="A name for the new session (the archive's otherwise).")] = None,
            ) -> None:
    """Make a new session from an export; prints its id.

    It gets the export's settings, project (with git history) and events; the
    conversation goes on from there.

    Example: sophon claude-code import ./archive/ses_0123abcd.tar.gz --name restored
    """
    if not archive.is_file():
        raise fail(f"{archive}: no such file", 2)
    with console(stderr=True).status(f"importing {archive.name}"):
        s = client().import_session(archive, name=name)
    typer.echo(s["id"])
