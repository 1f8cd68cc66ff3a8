"""``sophon claude-code ...``: drive sessions from a terminal. A thin layer on the SDK."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar  # noqa: UP035 - typer needs Optional

import typer

app = typer.Typer(help="Claude coding sessions: create, watch, steer.", no_args_is_help=True)
secrets_app = typer.Typer(help="A session's secrets (injected as environment variables).",
                          no_args_is_help=True)
app.add_typer(secrets_app, name="secrets")

F = TypeVar("F", bound=Callable[..., Any])
SessionId = Annotated[str, typer.Argument(help="The session's id (ses_...).")]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one line on stderr; raise what this returns to exit with ``code``."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def friendly(fn: F) -> F:
    """A user's mistake (bad id, server down, no key, a path that cannot be written) is
    one line on stderr and a non-zero exit, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sophon.client._common import SophonAPIError

        try:
            return fn(*args, **kwargs)
        except SophonAPIError as exc:
            raise fail(exc.message) from None
        except BrokenPipeError:  # `... | head`: the reader has gone, so stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0) from None
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise fail(f"{where}{exc.strerror or exc}") from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def client() -> Any:
    """The SDK's RawClient: plain JSON over the standard library, so commands start fast
    (no httpx, no pydantic)."""
    from sophon.client._common import SophonAPIError
    from sophon.client._raw import RawClient

    try:
        return RawClient()
    except ValueError as exc:  # SOPHON_URL is not a URL
        raise SophonAPIError(str(exc)) from None


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(highlight=False, stderr=stderr)


@app.command()
@friendly
def new(
    name: Annotated[str, typer.Option(help="A name for the session.")],
    base: Annotated[str, typer.Option(
        help="python | node | dotnet | generic (`sophon capabilities`: what this server "
             "runs), or an image of yours (POST /v1/images)")] = "generic",
    model: Annotated[str, typer.Option(help="opus | sonnet | haiku, or a model id")] = "sonnet",
    system_prompt: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Extra instructions, or @FILE to read them from a file.")] = None,
    clone: Annotated[Optional[str], typer.Option(help="Start from a git clone.")] = None,  # noqa: UP045
    ref: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="With --clone: the branch, tag or commit to check out.")] = None,
    template: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Start from a template (python, node).")] = None,
    runtime: Annotated[str, typer.Option(help="native | claude-code")] = "native",
    allow: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        "--allow", metavar="HOST",
        help="A host the sandbox may reach beyond its base's list: name, name:port or "
             "*.domain (ports 80 and 443 unless one is named). Repeat for more.")] = None,
    ask_network: Annotated[bool, typer.Option(
        "--ask-network",
        help="Ask before a connection to a host not on the list (refused otherwise).")]
        = False,
    connector: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        "--connector", metavar="NAME",
        help="Attach one of your connectors (sophon connectors list). Repeat for more.")]
        = None,
    mcp: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        "--mcp", metavar="NAME=COMMAND|NAME=URL",
        help="An MCP server whose tools the agent gets (as mcp__NAME__TOOL, asked about "
             "before each use): a command run in the sandbox, e.g. --mcp 'docs=python3 "
             "docs_server.py', or an http(s) URL. Repeat for more.")] = None,
    memory_mb: Annotated[Optional[int], typer.Option(  # noqa: UP045
        help="The sandbox's memory limit in MiB instead of its base's default (at most "
             "the server's ceiling).")] = None,
    cpus: Annotated[Optional[float], typer.Option(  # noqa: UP045
        help="CPUs instead of the base's default.")] = None,
    pids: Annotated[Optional[int], typer.Option(  # noqa: UP045
        help="Processes at most, instead of the base's default.")] = None,
    disk_mb: Annotated[Optional[int], typer.Option(  # noqa: UP045
        help="The disk quota of the project and home in MiB.")] = None,
) -> None:
    """Create a session and print its id.

    Example: sophon claude-code new --name refactor-api --base node --template node

    Example: sophon claude-code new --name api --allow api.example.com --connector gh

    Example: sophon claude-code new --name docs --base python --mcp 'docs=python3 srv.py'
    """
    if clone and template:
        raise fail("give --clone or --template, not both", 2)
    if ref and not clone:
        raise fail("--ref is for --clone: the branch, tag or commit of the repository", 2)
    if system_prompt and system_prompt.startswith("@"):
        path = Path(system_prompt[1:])
        try:
            system_prompt = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise fail(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}",
                       2) from None
    network = ({"allow": list(dict.fromkeys(allow or [])), "ask": ask_network}
               if allow or ask_network else None)
    from sophon.commands.session_mcp import parse_server

    servers = [parse_server(spec, "--mcp") for spec in mcp or []] or None
    from sophon.commands.capabilities import check_offered

    c = client()
    check_offered(c, base, runtime)
    limits = {k: v for k, v in (("memory_mb", memory_mb), ("cpus", cpus), ("pids", pids))
              if v is not None} or None
    s = c.create_session(name, base=base, model=model, system_prompt=system_prompt,
                         template=template, clone=clone, ref=ref, runtime=runtime,
                         network=network, mcp_servers=servers,
                         connectors=list(dict.fromkeys(connector)) if connector else None,
                         limits=limits, disk_mb=disk_mb)
    typer.echo(s["id"])


@app.command("list")
@friendly
def list_(as_json: Annotated[bool, typer.Option(
        "--json", help="One JSON array of the sessions, as the API returns them.")] = False,
          ) -> None:
    """List your sessions, newest first.

    Example: sophon claude-code list
    """
    sessions = list(client().list_sessions())
    if as_json:
        typer.echo(json.dumps(sessions, indent=2, ensure_ascii=False))
        return
    rows = [[_cut(s["name"], 40), s["status"], s["base"], s["model"],
             f"{s['usage']['input_tokens'] + s['usage']['output_tokens']:,}",
             f"${s['usage']['cost_usd']:.2f}", _when(s["last_activity_at"]), s["id"]]
            for s in sessions]
    typer.echo(table(["NAME", "STATUS", "BASE", "MODEL", "TOKENS", "COST", "LAST ACTIVE",
                      "ID"], rows, right={4, 5}))


def table(headers: list[str], rows: list[list[str]], right: Collection[int] = ()) -> str:
    """Columns padded to their widest cell, two spaces apart (plain text: no import of
    rich, which would cost more than the rest of the command)."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join(line(r) for r in [headers, *rows])


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _when(iso: str) -> str:
    from datetime import datetime

    return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")


def _state_line(view: dict[str, Any]) -> str:
    """Where a session stands, said once when a stream attaches (on stderr)."""
    turn = {"running": "a turn is running", "waiting_approval":
            "a turn is waiting for an approval", "error": "its last turn failed",
            "sleeping": "idle, its sandbox asleep"}.get(view["status"], view["status"])
    return (f"session {view['name']} ({view['id']}): {turn}; {view['last_seq']} events so "
            "far; following live (Ctrl-C to stop)")


def _follow(c: Any, session_id: str, after: int, as_json: bool,
            until_turn_ends: bool = False, answer: bool = False,
            live_from: int | None = None) -> str | None:
    """Print events as they come; with ``until_turn_ends``, stop at the status that ends
    the turn after this message and say how it ended: done, failed (an error, or cut off
    by a server restart) or interrupted (by a person).
    With ``answer``, ask about each approval request; one replayed from before
    ``live_from`` (the last seq when the command started) only if it is still pending."""
    out = None if as_json else console()
    if out is not None:
        from sophon.commands.render import render
    write, flush = sys.stdout.write, sys.stdout.flush
    seen_user = cut_off = False
    pending: set[str] | None = None
    drops = 0

    def reconnecting(_: int) -> None:  # on stderr: --json output stays clean
        nonlocal drops
        drops += 1
        typer.echo(f"… lost the connection to the server; reconnecting (attempt {drops})",
                   err=True)

    def connected() -> None:
        nonlocal drops
        if drops:
            typer.echo("… reconnected", err=True)
            drops = 0

    for ev in c.events(session_id, after, on_reconnect=reconnecting, on_connected=connected):
        if out is None:
            write(json.dumps(ev, ensure_ascii=False) + "\n")
            flush()
        else:
            render(out, ev)
        if ev["type"] == "approval_request" and answer:
            if live_from is not None and ev["seq"] <= live_from:
                if pending is None:
                    pending = {a["approval_id"] for a in c.approvals(session_id)}
                if ev["approval_id"] not in pending:
                    continue
            _answer(c, session_id, ev)
        if until_turn_ends:
            seen_user = seen_user or ev["type"] == "user"
            if seen_user and ev["type"] == "session_error" and ev.get("code") == "interrupted":
                cut_off = True
            if seen_user and ev["type"] == "status" and ev["status"] in ("idle", "error"):
                if ev["status"] == "error" or cut_off:
                    return "failed"
                return "interrupted" if ev.get("detail") == INTERRUPTED else "done"
    return None


INTERRUPTED = "interrupted by the user"  # the detail of the status that ends such a turn
SEND_EXIT = {"done": 0, "failed": 1, "interrupted": 3}
# `exec`: Sophon's own failure (no such session, server down), told apart from any exit
# code of the command (docker run's convention).
EXEC_FAILED = 125

ANSWERS = {"y": ("allow", False), "yes": ("allow", False), "n": ("deny", False),
           "no": ("deny", False), "r": ("allow", True), "remember": ("allow", True),
           "a": ("allow", True), "always": ("allow", True)}


def _answer(c: Any, session_id: str, ev: dict[str, Any]) -> None:
    if not sys.stdin.isatty():
        typer.echo(f"  answer with: sophon claude-code approve {session_id} "
                   f"{ev['approval_id']} [--remember]  (or deny)", err=True)
        return
    from sophon.commands.render import network_target

    target = network_target(ev)
    if target is not None:
        question = f"  allow a connection to {target}? [y/n/r = yes and remember the host]"
    else:
        question = f"  allow {ev['tool']}? [y/n/a = yes, and always allow {ev['tool']}]"
    while True:
        reply = typer.prompt(question, default="n", show_default=False).strip().lower()
        if reply in ANSWERS:
            break
        typer.echo("  answer y (allow), n (deny) or a (allow, and always from now on)")
    decision, remember = ANSWERS[reply]
    from sophon.client._common import SophonAPIError

    try:
        c.decide(session_id, ev["approval_id"], decision, remember=remember)
    except SophonAPIError as exc:
        if exc.status not in (404, 409):
            raise
        # answered meanwhile (the dashboard, a webhook, the timeout): carry on
        typer.echo(f"  not answered here: {exc.message}", err=True)


@app.command()
@friendly
def stream(
    session_id: SessionId,
    as_json: Annotated[bool, typer.Option("--json", help="Raw events, one per line.")] = False,
    from_start: Annotated[bool, typer.Option("--from-start",
                                             help="Replay the whole log first.")] = False,
) -> None:
    """Tail a session's events live (reconnects by itself; Ctrl-C to stop). In a
    terminal, asks y/n/remember for approvals that arrive while it runs (a tool call, or
    a connection to a host outside the session's network list).

    Example: sophon claude-code stream ses_0123abcd --from-start
    """
    c = client()
    view = c.get_session(session_id)
    last_seq = view["last_seq"]
    typer.echo(_state_line(view), err=True)
    try:
        _follow(c, session_id, 0 if from_start else last_seq, as_json,
                answer=not as_json and sys.stdin.isatty(), live_from=last_seq)
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
    """Send a message and show the turn until it ends; asks y/n/a for approvals.

    Exit codes: 0 the turn is done; 1 it failed or was cut off (a server restart); 2 a
    usage mistake; 3 it was interrupted; 130 you pressed Ctrl-C, which leaves the turn
    running in the session (follow it with `stream`, stop it with `interrupt`).

    Example: sophon claude-code send ses_0123abcd "add a test for the parser"
    """
    from sophon.client._common import ConflictError

    c = client()
    after = c.get_session(session_id)["last_seq"]
    try:
        c.send_message(session_id, message, queue=queue)
    except ConflictError as exc:
        if exc.code != "turn_in_progress":
            raise
        raise fail("a turn is already running in this session: wait for it (sophon "
                   f"claude-code stream {session_id}), interrupt it, or send with --queue "
                   "to run this message after it") from None
    try:
        ended = _follow(c, session_id, after, as_json, until_turn_ends=True, answer=True)
    except KeyboardInterrupt:
        typer.echo(f"\nleft the turn running in the session: follow it with `sophon "
                   f"claude-code stream {session_id}`, stop it with `sophon claude-code "
                   f"interrupt {session_id}`", err=True)
        raise typer.Exit(130) from None
    raise typer.Exit(SEND_EXIT.get(ended or "failed", 1))


@app.command("exec")
@friendly
def exec_(
    session_id: SessionId,
    command: Annotated[str, typer.Argument(help="A bash command.")],
    timeout: Annotated[int, typer.Option(help="Seconds before it is killed.")] = 600,
) -> None:
    """Run a command in the session's sandbox; exits with its exit code, or 125 when
    Sophon could not run it (no such session, the server unreachable).

    Example: sophon claude-code exec ses_0123abcd "npm test"
    """
    from sophon.client._common import SophonAPIError

    code = 1
    try:
        for ev in client().exec(session_id, command, timeout):
            if ev["type"] == "exec_output":
                stream = sys.stdout if ev["stream"] == "stdout" else sys.stderr
                stream.write(ev["data"])
                stream.flush()
            elif ev["type"] == "exec_end":
                code = ev["exit_code"] if ev["exit_code"] >= 0 else 1
                if ev.get("error"):
                    typer.echo(f"({ev['error']})", err=True)
    except SophonAPIError as exc:
        raise fail(exc.message, EXEC_FAILED) from None
    raise typer.Exit(code)


@app.command()
@friendly
def shell(
    session_id: SessionId,
    attach: Annotated[str | None, typer.Option(
        help="A terminal still running (its id, printed when you left it).")] = None,
) -> None:
    """Open a shell in the session's sandbox, here (a real terminal: Ctrl-C, full-screen
    programs). Exit the shell to leave; a dropped connection leaves it running.

    Example: sophon claude-code shell ses_0123abcd
    """
    from sophon.commands import shell as terminal

    c = client()
    c.get_session(session_id)  # a clear "not found" before the terminal opens
    raise typer.Exit(terminal.run(c.base_url, c._key, session_id, attach))


@app.command()
@friendly
def delete(session_id: SessionId,
           yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False) -> None:
    """Delete a session for good: its sandbox, files and events.

    Example: sophon claude-code delete ses_0123abcd --yes
    """
    c = client()
    s = c.get_session(session_id)
    if not yes and not typer.confirm(f"Delete session {s['name']} ({s['id']}) and all its "
                                     "files?"):
        raise typer.Exit(1)
    c.delete_session(session_id)
    typer.echo(f"deleted {session_id}")


@app.command()
@friendly
def approvals(session_id: SessionId) -> None:
    """List the tool calls and connections waiting for an answer, with how to answer.

    Example: sophon claude-code approvals ses_0123abcd
    """
    from sophon.commands.render import network_target

    pending = client().approvals(session_id)
    if not pending:
        typer.echo("nothing is waiting for an answer")
        return
    rows = []
    for a in pending:
        what = network_target({"tool": a["tool"], "input": a.get("input") or {}})
        if what is None:
            inp = a.get("input") or {}
            what = f"{a['tool']} {inp.get('command') or inp.get('file_path') or ''}".strip()
        rows.append([a["approval_id"], _cut(what, 60), _cut(a.get("reason") or "", 50)])
    typer.echo(table(["APPROVAL", "WAITING TO", "WHY"], rows))
    typer.echo(f"answer with: sophon claude-code approve|deny {session_id} APPROVAL")


@app.command()
@friendly
def approve(session_id: SessionId, approval_id: str,
            remember: Annotated[bool, typer.Option(
                help="Allow this tool (or, for a connection, this host) from now on.")]
            = False) -> None:
    """Allow a pending tool call or network connection.

    Example: sophon claude-code approve ses_0123abcd apr_4567
    """
    client().decide(session_id, approval_id, "allow", remember=remember)
    typer.echo("allowed")


@app.command()
@friendly
def deny(session_id: SessionId, approval_id: str,
         reason: Annotated[Optional[str], typer.Option(help="Told to the model.")] = None,  # noqa: UP045
         ) -> None:
    """Deny a pending tool call or network connection.

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
    """Tokens and cost of a session, per model call, and its network traffic.

    Example: sophon claude-code usage ses_0123abcd
    """
    u = client().usage(session_id)
    if as_json:
        typer.echo(json.dumps(u))
        return
    t = u["totals"]
    typer.echo(f"{t['input_tokens']:,} tokens in, {t['output_tokens']:,} out, "
               f"${t['cost_usd']:.4f} over {len(u['calls'])} calls")
    net = u.get("network")
    if net:
        typer.echo(f"network: {_bytes(net['bytes_out'])} out, {_bytes(net['bytes_in'])} in, "
                   f"{net['connections']:,} connections, {net['denied']:,} refused")


def _bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:.1f} {unit}"


@secrets_app.command("set")
@friendly
def secrets_set(session_id: SessionId, name: str,
                value: Annotated[Optional[str], typer.Argument(  # noqa: UP045
                    help="The value; omit it to type it without echo.")] = None) -> None:
    """Set a secret (an environment variable in every command and tool run).

    Example: sophon claude-code secrets set ses_0123abcd GITHUB_TOKEN
    """
    if value is None:
        if sys.stdin.isatty():
            value = typer.prompt(f"{name}", hide_input=True)
        else:  # piped: `pass show token | sophon claude-code secrets set ID NAME`
            value = sys.stdin.readline().rstrip("\r\n")
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
