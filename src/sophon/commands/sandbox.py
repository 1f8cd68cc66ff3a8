"""``sophon sandbox exec|threads|webhook-secret``: the execution API from a terminal."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional  # noqa: UP035 - typer needs Optional

import typer

from sophon.commands.claude_code import client, friendly

app = typer.Typer(help="Run code in a raw sandbox (the Baponi-compatible API).",
                  no_args_is_help=True)


@app.command("exec")
@friendly
def exec_(
    code: Annotated[str, typer.Argument(help="The code, or - to read it from stdin.")],
    thread: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="A thread id: files persist between calls.")] = None,
    language: Annotated[str, typer.Option(help="bash | python | node")] = "bash",
    timeout: Annotated[int, typer.Option(help="Seconds (1-3600).")] = 60,
    image: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="The image to run on: a built-in one or yours (a thread keeps the image it "
             "was made with).")] = None,
) -> None:
    """Run code in a sandbox, streaming its output; exits with its exit code.

    Example: sophon sandbox exec --thread t1 --language python "print(6 * 7)"
    """
    if code == "-":
        code = sys.stdin.read()
    exit_code = 1
    for ev in client().execute_stream(code, language=language, timeout=timeout,
                                      thread_id=thread, image=image):
        if ev["type"] == "output":
            out = sys.stdout if ev["stream"] == "stdout" else sys.stderr
            out.write(ev["data"])
            out.flush()
        elif ev["type"] == "result":
            result = ev["result"]
            exit_code = result["exit_code"] if result["exit_code"] >= 0 else 1
            if result.get("error"):
                typer.echo(f"({result['error']})", err=True)
    raise typer.Exit(exit_code)


@app.command("webhook-secret")
@friendly
def webhook_secret() -> None:
    """Make a new signing secret for your execution webhooks and print it (shown once;
    the old one stops signing). Verify deliveries with any Standard Webhooks library.

    Example: sophon sandbox webhook-secret
    """
    typer.echo(client().rotate_webhook_secret())


threads_app = typer.Typer(help="Your threads: persistent sandboxes named by a thread id.",
                          no_args_is_help=True)
app.add_typer(threads_app, name="threads")


@threads_app.command("list")
@friendly
def threads_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """Your threads, with when each was last used and whether its sandbox is awake.

    Example: sophon sandbox threads list
    """
    threads = client().list_threads()
    if as_json:
        typer.echo(json.dumps(threads, indent=2))
        return
    for t in threads:
        typer.echo(f"{t['thread_id']:<32} last used {t['last_used_at']}"
                   + ("  awake" if t["awake"] else ""))


@threads_app.command("rm")
@friendly
def threads_rm(
    thread_id: Annotated[str, typer.Argument(help="The thread to delete, with its files.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Delete a thread: its files, disk and sandbox, for good.

    Example: sophon sandbox threads rm scratch --yes
    """
    if not yes and not typer.confirm(f"Delete thread {thread_id} and all its files?"):
        raise typer.Exit(1)
    client().delete_thread(thread_id)
    typer.echo(f"deleted {thread_id}")
