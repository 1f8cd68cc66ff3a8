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
    rows = [[n["id"] + (" *" if n["this"] else ""), n["url"],
             "alive" if n["alive"] else ("stopped" if n["stopped_at"] else "silent"),
             str(n["boxes_awake"]), f"{n['memory_available_mb']:,} MiB", n["heartbeat_at"]]
            for n in found["nodes"]]
    typer.echo(table(["NODE", "URL", "STATE", "BOXES", "MEMORY FREE", "LAST HEARD"], rows))
    typer.echo(f"* answered ({found['database']})")
