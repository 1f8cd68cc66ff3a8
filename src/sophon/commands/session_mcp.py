"""``sophon claude-code mcp list|add|rm``: the MCP servers whose tools a session's agent
gets, changed on a session that exists (``new --mcp`` sets them at the start). The next
turn uses what is set; a turn that runs keeps what it started with."""

from __future__ import annotations

import shlex
from typing import Annotated, Any

import typer

from sophon.commands.claude_code import SessionId, app, client, fail, friendly, table

mcp_app = typer.Typer(help="A session's MCP servers: tools its agent gets, asked about "
                           "before each use.", no_args_is_help=True)
app.add_typer(mcp_app, name="mcp")

Spec = Annotated[str, typer.Argument(
    metavar="NAME=COMMAND|NAME=URL",
    help="A command run in the sandbox (quoted as in a shell), or an http(s) URL the "
         "sandbox reaches through its network rules (its host joins them).")]


def parse_server(spec: str, flag: str = "NAME=COMMAND") -> dict[str, Any]:
    """``docs=python3 srv.py`` or ``search=https://mcp.example.com/mcp`` as the API's
    ``mcp_servers`` item; a malformed one is a usage error (exit 2)."""
    name, sep, rest = spec.partition("=")
    try:
        words = shlex.split(rest)
    except ValueError as exc:
        raise fail(f"{flag} {spec!r}: {exc}", 2) from None
    if not sep or not name.strip() or not words:
        raise fail(f"{flag} takes NAME=COMMAND or NAME=URL, such as 'docs=python3 "
                   f"server.py'; got {spec!r}", 2)
    if len(words) == 1 and words[0].startswith(("http://", "https://")):
        return {"name": name.strip(), "url": words[0]}
    return {"name": name.strip(), "command": words}


def describe(server: dict[str, Any]) -> str:
    if server.get("url"):
        return str(server["url"])
    return shlex.join(server.get("command") or [])


@mcp_app.command("list")
@friendly
def mcp_list(session_id: SessionId) -> None:
    """The session's MCP servers.

    Example: sophon claude-code mcp list ses_0123abcd
    """
    servers = client().get_session(session_id).get("mcp_servers") or []
    if not servers:
        typer.echo("no MCP servers (add one: sophon claude-code mcp add ID NAME=COMMAND)")
        return
    typer.echo(table(["NAME", "KIND", "RUNS"], [
        [s["name"], "url" if s.get("url") else "command", describe(s)] for s in servers]))


@mcp_app.command("add")
@friendly
def mcp_add(session_id: SessionId, spec: Spec) -> None:
    """Give the session's agent an MCP server's tools (from its next turn).

    Example: sophon claude-code mcp add ses_0123abcd 'docs=python3 docs_server.py'

    Example: sophon claude-code mcp add ses_0123abcd search=https://mcp.example.com/mcp
    """
    server = parse_server(spec)
    c = client()
    servers = c.get_session(session_id).get("mcp_servers") or []
    if any(s["name"] == server["name"] for s in servers):
        raise fail(f"this session has an MCP server named {server['name']} already; remove "
                   f"it first (sophon claude-code mcp rm {session_id} {server['name']})")
    c.update_session(session_id, mcp_servers=[*servers, server])
    typer.echo(f"added {server['name']}: its tools are mcp__{server['name']}__*, from the "
               "next turn")


@mcp_app.command("rm")
@friendly
def mcp_rm(session_id: SessionId, name: str) -> None:
    """Take an MCP server from the session (from its next turn).

    Example: sophon claude-code mcp rm ses_0123abcd docs
    """
    c = client()
    servers = c.get_session(session_id).get("mcp_servers") or []
    if not any(s["name"] == name for s in servers):
        raise fail(f"this session has no MCP server named {name}")
    c.update_session(session_id, mcp_servers=[s for s in servers if s["name"] != name])
    typer.echo(f"removed {name}")
