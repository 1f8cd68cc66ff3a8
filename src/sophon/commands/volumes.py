"""``sophon volumes``: named storage mounted at /data/<name>/ in every box of yours."""

from __future__ import annotations

import json
from typing import Annotated, Optional  # noqa: UP035 - typer needs Optional

import typer

from sophon.commands.claude_code import client, friendly

app = typer.Typer(help="Volumes: storage shared by your threads, at /data/<name>/.",
                  no_args_is_help=True)


@app.command()
@friendly
def create(
    name: Annotated[str, typer.Argument(help="Lowercase letters, digits and '-'.")],
    size_mb: Annotated[Optional[int], typer.Option(  # noqa: UP045
        help="Its quota in MiB (default and most: the server's box disk size).")] = None,
) -> None:
    """Make a volume; your boxes mount it from their next execution on.

    Example: sophon volumes create datasets --size-mb 512
    """
    v = client().create_volume(name, size_mb)
    typer.echo(f"{v['name']}  {v['mount_path']}  {v['size_mb']} MiB")


@app.command("list")
@friendly
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """Your volumes, with their size and use.

    Example: sophon volumes list
    """
    volumes = client().list_volumes()
    if as_json:
        typer.echo(json.dumps(volumes, indent=2))
        return
    for v in volumes:
        used = v.get("used_bytes")
        typer.echo(f"{v['name']:<24} {v['mount_path']:<32} {v['size_mb']:>7} MiB"
                   + (f"  {used / 2**20:.1f} MiB used" if used is not None else ""))


@app.command("rm")
@friendly
def rm(
    name: Annotated[str, typer.Argument(help="The volume to delete, with its files.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Delete a volume and every file in it (irreversible).

    Example: sophon volumes rm datasets --yes
    """
    if not yes and not typer.confirm(f"Delete volume {name} and all its files?"):
        raise typer.Exit(1)
    client().delete_volume(name)
    typer.echo(f"deleted {name}")
