"""``sophon capabilities``, and the check ``claude-code new`` makes with it: the CLI
offers only what the server it talks to can run, and says why not for the rest."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from sophon.commands.claude_code import client, fail, friendly, table


def _mark(thing: dict[str, Any]) -> str:
    return "yes" if thing["available"] else f"no: {thing.get('reason') or 'not offered'}"


@friendly
def capabilities(as_json: Annotated[bool, typer.Option(
        "--json", help="The server's answer as JSON.")] = False) -> None:
    """What this server can run: bases, runtimes, models, network and limits.

    Example: sophon capabilities
    """
    caps = client().capabilities()
    if as_json:
        typer.echo(json.dumps(caps, indent=2))
        return
    typer.echo(table(["BASE", "AVAILABLE", "TOOLS", "NETWORK"],
                     [[b["name"], _mark(b), b["description"], ", ".join(b["network"]) or "-"]
                      for b in caps["bases"]]))
    typer.echo("")
    typer.echo(table(["RUNTIME", "AVAILABLE"],
                     [[r["name"], _mark(r)] for r in caps["runtimes"]]))
    typer.echo("")
    typer.echo("models: " + ", ".join(f"{m['name']} ({m['id']})" for m in caps["models"])
               + ", or any model id")
    limits = caps["limits"]
    cpus = f"{limits['cpus']:g} CPU" + ("" if limits["cpus"] == 1 else "s")
    typer.echo(f"limits a session: {limits['memory_mb']} MiB memory, {cpus}, "
               f"{limits['pids']} processes, {limits['disk_mb']} MiB disk (up to "
               f"{limits['disk_max_mb']} with disk_mb)")
    typer.echo("network: " + ("sessions may ask for hosts off their list"
                              if caps.get("network_ask") else "only the listed hosts")
               + f"; the execution API's threads: {caps['execute_network']}")


def _own_image(c: Any, name: str) -> bool:
    try:
        return any(i["name"] == name and not i.get("builtin", True) for i in c.images())
    except Exception:  # an older server without /v1/images
        return False


def check_offered(c: Any, base: str, runtime: str) -> None:
    """Refuse, as a usage error, a base or runtime the server says it cannot run, naming
    what it can. A server without /v1/capabilities is left to answer for itself."""
    from sophon.client._common import NotFoundError

    try:
        caps = c.capabilities()
    except NotFoundError:
        return
    for kind, value, offered in (("base", base, caps["bases"]),
                                 ("runtime", runtime, caps["runtimes"])):
        found = next((o for o in offered if o["name"] == value), None)
        usable = [o["name"] for o in offered if o["available"]]
        if found is None and kind == "base" and _own_image(c, value):
            continue  # one of the user's images: the server says if it cannot be used
        if found is None:
            raise fail(f"unknown {kind} {value!r}; this server offers: {', '.join(usable)}", 2)
        if not found["available"]:
            raise fail(f"the {value} {kind} is not available on this server "
                       f"({found.get('reason') or 'not offered'}); it offers: "
                       f"{', '.join(usable)} (see `sophon capabilities`)", 2)
