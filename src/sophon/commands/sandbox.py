"""``sophon sandbox exec``: the execution API from a terminal."""

from __future__ import annotations

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
) -> None:
    """Run code in a sandbox, streaming its output; exits with its exit code.

    Example: sophon sandbox exec --thread t1 --language python "print(6 * 7)"
    """
    if code == "-":
        code = sys.stdin.read()
    exit_code = 1
    for ev in client().execute_stream(code, language=language, timeout=timeout,
                                      thread_id=thread):
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
