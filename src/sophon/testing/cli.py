"""``sophon testing ...``: tools for trying Sophon without a real model behind it.

The main CLI attaches ``testing_app``; imports stay inside commands so ``--help`` is quick.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

testing_app = typer.Typer(help="Tools for tests and offline demos.", no_args_is_help=True)


@testing_app.callback()
def testing() -> None:
    """Tools for tests and offline demos.

    A callback keeps this a command group even with one command, so ``model-server`` is
    always named, whether the app runs alone or inside ``sophon``.
    """


@testing_app.command("model-server")
def model_server(
    script: Annotated[Path, typer.Option(help="The script to play (YAML or JSON).",
                                         exists=True, dir_okay=False, readable=True)],
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Serve a scripted stand-in for the Anthropic Messages API in the foreground.

    Example: sophon testing model-server --script demo.yaml --port 8765
    Then point a client at it: ANTHROPIC_BASE_URL=http://127.0.0.1:8765 ANTHROPIC_API_KEY=x
    """
    import yaml
    from pydantic import ValidationError

    from sophon.testing.model_server import serve_forever
    from sophon.testing.script import load_script

    try:
        loaded = load_script(script)
    except (ValueError, ValidationError, yaml.YAMLError) as exc:
        typer.secho(f"error: {script}: {exc}", err=True, fg="red")
        raise typer.Exit(1) from None
    typer.echo(f"Scripted model ({len(loaded.turns)} turns) on http://{host}:{port}")
    serve_forever(loaded, host=host, port=port)
