"""``sophon cluster``: the nodes (servers) on the database of the server the CLI talks
to, for admins."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from sophon.commands.claude_code import client, friendly, table


@friendly
def cluster(as_json: Annotated[bool, typer.Option(
        "--json", help="The server's answer as JSON.")] = False) -> None:
    """The nodes on this server's database: alive or not, their address and load
    (admins only).

    Example: sophon cluster
    """
    found = client().cluster()
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    rows = [[n["id"] + (" *" if n["this"] else ""), n["url"], _state(n),
             str(n["sessions"]), str(n["boxes_awake"]), f"{n['memory_available_mb']:,} MiB",
             n["heartbeat_at"]]
            for n in found["nodes"]]
    typer.echo(table(["NODE", "URL", "STATE", "SESSIONS", "BOXES", "MEMORY FREE",
                      "LAST HEARD"], rows))
    typer.echo(f"* answered ({found['database']})")


def _state(node: dict) -> str:  # type: ignore[type-arg]
    if not node["alive"]:
        return "stopped" if node["stopped_at"] else "silent"
    return "draining" if node["draining"] else "alive"


node_app = typer.Typer(help="Manage one node of a cluster (admins).", no_args_is_help=True)


@node_app.command("drain")
@friendly
def drain(node_id: Annotated[str, typer.Argument(help="The node's id (sophon cluster)")],
          undo: Annotated[bool, typer.Option(
              "--undo", help="Take work on the node again.")] = False) -> None:
    """Drain a node: nothing new goes there; its sessions move on between turns.

    Running turns, execs and executions finish on it first; `sophon cluster` shows how
    many sessions still run there.

    Example: sophon node drain node_3f2a9c0d1e2b4f56
    """
    node = client().drain(node_id, draining=not undo)
    if undo:
        typer.echo(f"{node_id} takes new work again")
    else:
        typer.echo(f"{node_id} is draining: {node['sessions']} session(s) still run there "
                   "and move on between turns; `sophon cluster` shows how it goes")
