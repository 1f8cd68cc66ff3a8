"""``sophon claude-code ...``: drive sessions from a terminal. A thin layer on the SDK."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar  # noqa: UP035 - typer needs Optional

import typer

app = typer.Typer(help="Claude coding sessions: create, watch, steer.", no_args_is_help=True)
secrets_app = typer.Typer(help="A session's secrets (injected as environment variables).",
                          no_args_is_help=True)
app.add_typer(secrets_app, name="secrets")

F = TypeVar("F", bound=Callable[..., Any])
SessionId = Annotated[str, typer.Argument(help="The session's id (ses_...).")]


def friendly(fn: F) -> F:
    """A user's mistake (bad id, server down, no key) is one line on stderr, not a trace."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sophon.client import SophonAPIError

        try:
            return fn(*args, **kwargs)
        except SophonAPIError as exc:
            typer.echo(f"error: {exc.message}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def client() -> Any:
    from sophon.client import Client

    return Client()


def console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


@app.command()
@friendly
def new(
    name: Annotated[str, typer.Option(help="A name for the session.")],
    base: Annotated[str, typer.Option(help="python | node | dotnet | generic")] = "generic",
    model: Annotated[str, typer.Option(help="opus | sonnet | haiku, or a model id")] = "sonnet",
    system_prompt: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Extra instructions, or @FILE to read them from a file.")] = None,
    clone: Annotated[Optional[str], typer.Option(help="Start from a git clone.")] = None,  # noqa: UP045
    template: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Start from a template (python, node).")] = None,
    runtime: Annotated[str, typer.Option(help="native | claude-code")] = "native",
) -> None:
    """Create a session and print its id.

    Example: sophon claude-code new --name refactor-api --base node --template node
    """
    if clone and template:
        typer.echo("error: give --clone or --template, not both", err=True)
        raise typer.Exit(2)
    if system_prompt and system_prompt.startswith("@"):
        path = Path(system_prompt[1:])
        try:
            system_prompt = path.read_text()
        except OSError as exc:
            typer.echo(f"error: cannot read {path}: {exc.strerror}", err=True)
            raise typer.Exit(2) from None
    s = client().create_session(name, base=base, model=model, system_prompt=system_prompt,
                                clone=clone, template=template, runtime=runtime)
    typer.echo(s.id)


@app.command("list")
@friendly
def list_(as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")]
          = False) -> None:
    """List your sessions, newest first.

    Example: sophon claude-code list
    """
    sessions = list(client().list_sessions())
    if as_json:
        for s in sessions:
            typer.echo(s.model_dump_json())
        return
    from rich.table import Table

    table = Table("NAME", "STATUS", "BASE", "MODEL", "TOKENS", "COST", "LAST ACTIVE")
    table.add_column("ID", no_wrap=True, min_width=28)  # ids are for copying: never cut
    for s in sessions:
        table.add_row(s.name, s.status, s.base, s.model,
                      str(s.usage.input_tokens + s.usage.output_tokens),
                      f"${s.usage.cost_usd:.2f}", s.last_activity_at.strftime("%Y-%m-%d %H:%M"),
                      s.id)
    console().print(table)


def _follow(c: Any, session_id: str, after: int, as_json: bool,
            until_turn_ends: bool = False, answer: bool = False) -> None:
    out = console()
    from sophon.commands.render import render

    seen_user = False
    for ev in c.events(session_id, after):
        if as_json:
            typer.echo(ev.model_dump_json())
        else:
            render(out, ev)
        if ev.type == "approval_request" and answer:
            _answer(c, session_id, ev)
        if until_turn_ends:
            seen_user = seen_user or ev.type == "user"
            if seen_user and ev.type == "status" and ev.status == "idle":
                return


def _answer(c: Any, session_id: str, ev: Any) -> None:
    if not sys.stdin.isatty():
        typer.echo(f"  answer with: sophon claude-code approve {session_id} {ev.approval_id}"
                   f"  (or deny)", err=True)
        return
    allow = typer.confirm(f"  allow {ev.tool}?", default=False)
    c.decide(session_id, ev.approval_id, "allow" if allow else "deny")


@app.command()
@friendly
def stream(
    session_id: SessionId,
    as_json: Annotated[bool, typer.Option("--json", help="Raw events, one per line.")] = False,
    from_start: Annotated[bool, typer.Option("--from-start",
                                             help="Replay the whole log first.")] = False,
) -> None:
    """Tail a session's events live (reconnects by itself; Ctrl-C to stop).

    Example: sophon claude-code stream ses_0123abcd --from-start
    """
    c = client()
    after = 0 if from_start else c.get_session(session_id).last_seq
    try:
        _follow(c, session_id, after, as_json)
    except KeyboardInterrupt:
        return


@app.command()
@friendly
def send(
    session_id: SessionId,
    message: Annotated[str, typer.Argument(help="What to ask.")],
    as_json: Annotated[bool, typer.Option("--json", help="Raw events, one per line.")] = False,
    queue: Annotated[bool, typer.Option(help="Queue behind a running turn.")] = False,
) -> None:
    """Send a message and show the turn until it ends; asks y/n for approvals.

    Example: sophon claude-code send ses_0123abcd "add a test for the parser"
    """
    c = client()
    after = c.get_session(session_id).last_seq
    c.send_message(session_id, message, queue=queue)
    _follow(c, session_id, after, as_json, until_turn_ends=True, answer=True)


@app.command("exec")
@friendly
def exec_(
    session_id: SessionId,
    command: Annotated[str, typer.Argument(help="A bash command.")],
    timeout: Annotated[int, typer.Option(help="Seconds before it is killed.")] = 600,
) -> None:
    """Run a command in the session's sandbox; exits with its exit code.

    Example: sophon claude-code exec ses_0123abcd "npm test"
    """
    code = 1
    for ev in client().exec(session_id, command, timeout):
        if ev.type == "exec_output":
            stream = sys.stdout if ev.stream == "stdout" else sys.stderr
            stream.write(ev.data)
            stream.flush()
        elif ev.type == "exec_end":
            code = ev.exit_code if ev.exit_code >= 0 else 1
            if ev.error:
                typer.echo(f"({ev.error})", err=True)
    raise typer.Exit(code)


@app.command()
@friendly
def delete(session_id: SessionId,
           yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False) -> None:
    """Delete a session for good: its sandbox, files and events.

    Example: sophon claude-code delete ses_0123abcd --yes
    """
    c = client()
    s = c.get_session(session_id)
    if not yes and not typer.confirm(f"Delete session {s.name} ({s.id}) and all its files?"):
        raise typer.Exit(1)
    c.delete_session(session_id)
    typer.echo(f"deleted {session_id}")


@app.command()
@friendly
def export(session_id: SessionId,
           out: Annotated[Path, typer.Option(help="A directory or a .tar.gz path.")]
           = Path(".")) -> None:
    """Download the session (project with git history, events, metadata) as a tar.gz.

    Example: sophon claude-code export ses_0123abcd --out ./archive/
    """
    from rich.progress import DownloadColumn, Progress, SpinnerColumn, TransferSpeedColumn

    # A path not ending in .tar.gz is a directory (made if need be): typer drops the
    # trailing "/" of "./archive/", so the name is what tells.
    is_file = out.name.endswith((".tar.gz", ".tgz")) and not out.is_dir()
    target = out if is_file else out / f"{session_id}.tar.gz"
    with Progress(SpinnerColumn(), "[progress.description]{task.description}",
                  DownloadColumn(), TransferSpeedColumn(), transient=True,
                  console=console()) as progress:
        task = progress.add_task(f"exporting {session_id}", total=None)
        size = client().export(session_id, target,
                               progress=lambda n: progress.update(task, completed=n))
    typer.echo(f"{target} ({size:,} bytes)")


@app.command()
@friendly
def approve(session_id: SessionId, approval_id: str,
            remember: Annotated[bool, typer.Option(help="Allow this tool from now on.")]
            = False) -> None:
    """Allow a pending tool call.

    Example: sophon claude-code approve ses_0123abcd apr_4567
    """
    client().decide(session_id, approval_id, "allow", remember=remember)
    typer.echo("allowed")


@app.command()
@friendly
def deny(session_id: SessionId, approval_id: str,
         reason: Annotated[Optional[str], typer.Option(help="Told to the model.")] = None,  # noqa: UP045
         ) -> None:
    """Deny a pending tool call.

    Example: sophon claude-code deny ses_0123abcd apr_4567 --reason "not on main"
    """
    client().decide(session_id, approval_id, "deny", reason=reason)
    typer.echo("denied")


@app.command()
@friendly
def interrupt(session_id: SessionId) -> None:
    """Stop the running turn now.

    Example: sophon claude-code interrupt ses_0123abcd
    """
    stopped = client().interrupt(session_id)
    typer.echo("interrupted" if stopped else "no turn was running")


@app.command()
@friendly
def usage(session_id: SessionId,
          as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Tokens and cost of a session, per model call.

    Example: sophon claude-code usage ses_0123abcd
    """
    u = client().usage(session_id)
    if as_json:
        typer.echo(json.dumps(u))
        return
    t = u["totals"]
    typer.echo(f"{t['input_tokens']:,} tokens in, {t['output_tokens']:,} out, "
               f"${t['cost_usd']:.4f} over {len(u['calls'])} calls")


@secrets_app.command("set")
@friendly
def secrets_set(session_id: SessionId, name: str,
                value: Annotated[Optional[str], typer.Argument(  # noqa: UP045
                    help="The value; omit it to type it without echo.")] = None) -> None:
    """Set a secret (an environment variable in every command and tool run).

    Example: sophon claude-code secrets set ses_0123abcd GITHUB_TOKEN
    """
    if value is None:
        value = typer.prompt(f"{name}", hide_input=True)
    client().set_secret(session_id, name, value)
    typer.echo(f"set {name}")


@secrets_app.command("list")
@friendly
def secrets_list(session_id: SessionId) -> None:
    """List secret names (values are never shown).

    Example: sophon claude-code secrets list ses_0123abcd
    """
    for name in client().secrets(session_id):
        typer.echo(name)


@secrets_app.command("rm")
@friendly
def secrets_rm(session_id: SessionId, name: str) -> None:
    """Remove a secret.

    Example: sophon claude-code secrets rm ses_0123abcd GITHUB_TOKEN
    """
    client().delete_secret(session_id, name)
    typer.echo(f"removed {name}")
