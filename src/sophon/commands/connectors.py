"""``sophon connectors``: credentials the egress door sends for your boxes, which never
hold them. A value is read from a file or from stdin (typed without echo at a terminal),
never from the command line, where it would land in shell history and ``ps``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional  # noqa: UP035 - typer needs Optional

import typer

from sophon.commands.claude_code import SessionId, client, fail, friendly, table

app = typer.Typer(help="Connectors: credentials for GitHub, Anthropic or a host of yours, "
                       "used by your boxes without ever being in them.",
                  no_args_is_help=True)

Name = Annotated[str, typer.Argument(help="The connector's name.")]
TYPES = ("github", "anthropic", "http")


def _read_value(kind: str, value_file: Path | None, no_value: bool) -> str | None:
    """The value from ``value_file``, else typed without echo at a terminal, else the
    first line of stdin; None when there is none (anthropic: the server's own key)."""
    if no_value:
        if value_file is not None:
            raise fail("give --value-file or --no-value, not both", 2)
        return None
    if value_file is not None:
        try:
            value = value_file.read_text().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise fail(f"cannot read {value_file}: {getattr(exc, 'strerror', None) or exc}",
                       2) from None
    elif sys.stdin.isatty():
        hint = " (empty: the server's own key)" if kind == "anthropic" else ""
        value = typer.prompt(f"value{hint}", hide_input=True, default="",
                             show_default=False)
    else:  # piped: `pass show github | sophon connectors add gh --type github`
        value = sys.stdin.readline().rstrip("\r\n")
    return value or None


def _hosts(c: dict[str, Any]) -> str:
    if c["type"] == "github":
        return "github.com, api.github.com"
    if c["type"] == "anthropic":
        return "(the model gateway)"
    return str(c.get("host") or "")


@app.command()
@friendly
def add(
    name: Annotated[str, typer.Argument(help="Lowercase letters, digits and '-'.")],
    type_: Annotated[str, typer.Option("--type", help="github | anthropic | http")],
    host: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="http: the host its header goes to, name[:port].")] = None,
    header: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="http: the header the value is sent in (Authorization, X-Api-Key, ...).")
    ] = None,
    execute: Annotated[bool, typer.Option(
        "--execute", help="The execution API's executions of all your keys get it too.")
    ] = False,
    key: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        "--key", help="Instead of --execute: only the executions made with this API key "
                      "(its id, from `sophon connectors keys`) get it; repeat it for more.")
    ] = None,
    push: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        help="github: where a push may go, owner/repo or owner/repo:branch (a glob such "
             "as feature/*); repeat it for more. Without it: anywhere.")] = None,
    value_file: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--value-file", help="Read the value from this file (else from stdin).")] = None,
    no_value: Annotated[bool, typer.Option(
        "--no-value", help="anthropic: no key of your own; the server's is used.")
    ] = False,
) -> None:
    """Store a connector (its value from --value-file or stdin).

    The value is never taken from the command line, is stored encrypted, and is never
    shown again.

    Example: gh auth token | sophon connectors add gh --type github --push me/app:feature/*
    """
    if type_ not in TYPES:
        raise fail(f"--type is {type_!r}; it is one of {', '.join(TYPES)}", 2)
    value = _read_value(type_, value_file, no_value)
    c = client().create_connector(name, type_, value, host=host, header=header,
                                  execute=execute, keys=key or None, push=push or None)
    runs = _executions(c)
    typer.echo(f"added {c['name']} ({c['type']}: {_hosts(c)}"
               f"{'' if runs == 'none' else '; executions of ' + runs})")


def _executions(c: dict[str, Any]) -> str:
    """Which of the execution API's executions get the connector."""
    if c["execute"]:
        return "all your keys"
    if c.get("keys"):
        return "keys " + ", ".join(c["keys"])
    return "none"


@app.command()
@friendly
def execute(
    name: Name,
    all_keys: Annotated[bool, typer.Option(
        "--all", help="The executions of every one of your API keys.")] = False,
    key: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        "--key", help="Only the executions made with this API key (its id, from "
                      "`sophon connectors keys`); repeat it for more.")] = None,
    off: Annotated[bool, typer.Option("--off", help="No execution gets it.")] = False,
) -> None:
    """Choose which of the execution API's executions get a connector.

    Example: sophon connectors execute claude --key 3f2a... (ids from `sophon connectors keys`)
    """
    if [all_keys, bool(key), off].count(True) != 1:
        raise fail("give one of --all, --key ID (repeatable) or --off", 2)
    c = client().update_connector(name, execute=True if all_keys else False if off else None,
                                  keys=key or None)
    runs = _executions(c)
    typer.echo(f"{c['name']}: " + ("no executions" if runs == "none"
                                   else f"executions of {runs}"))


@app.command("keys")
@friendly
def keys(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array.")] = False,
) -> None:
    """Your API keys (never the keys): the ids `--key` takes.

    Example: sophon connectors keys
    """
    listed = client().keys()
    if as_json:
        typer.echo(json.dumps(listed, indent=2, ensure_ascii=False))
        return
    typer.echo(table(["ID", "KEY", "CREATED", "THIS ONE"],
                     [[k["id"], k["prefix"] + "…", k["created_at"][:19].replace("T", " "),
                       "yes" if k["current"] else ""] for k in listed]))


@app.command("list")
@friendly
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array.")] = False,
) -> None:
    """Your connectors (never their values).

    Example: sophon connectors list
    """
    connectors = client().connectors()
    if as_json:
        typer.echo(json.dumps(connectors, indent=2, ensure_ascii=False))
        return
    rows = [[c["name"], c["type"], _hosts(c), c.get("header") or "",
             "" if _executions(c) == "none" else _executions(c),
             ", ".join(c.get("push") or [])]
            for c in connectors]
    typer.echo(table(["NAME", "TYPE", "HOSTS", "HEADER", "EXECUTIONS", "PUSH"], rows))


@app.command("rm")
@friendly
def rm(name: Name) -> None:
    """Delete a connector and its value (boxes lose it from their next connection on).

    Example: sophon connectors rm gh
    """
    client().delete_connector(name)
    typer.echo(f"deleted {name}")


def _attached(session: dict[str, Any]) -> list[str]:
    return list(session.get("connectors") or [])


@app.command()
@friendly
def attach(name: Name, session_id: SessionId) -> None:
    """Give a session's boxes a connector.

    Example: sophon connectors attach gh ses_0123abcd
    """
    c = client()
    names = _attached(c.get_session(session_id))
    if name in names:
        typer.echo(f"{name} is attached to {session_id} already")
        return
    c.update_session(session_id, connectors=[*names, name])
    typer.echo(f"attached {name} to {session_id}")


@app.command()
@friendly
def detach(name: Name, session_id: SessionId) -> None:
    """Take a connector from a session's boxes.

    Example: sophon connectors detach gh ses_0123abcd
    """
    c = client()
    names = _attached(c.get_session(session_id))
    if name not in names:
        raise fail(f"{name} is not attached to {session_id}")
    c.update_session(session_id, connectors=[n for n in names if n != name])
    typer.echo(f"detached {name} from {session_id}")
