"""``sophon images``: the base images of this server (an admin's command, like ``sophon
users``: it works on the data directory, with or without the server running)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional  # noqa: UP035 - typer needs Optional

import typer

from sophon.commands.claude_code import table

app = typer.Typer(help="Base images: Debian roots every box of a base runs on.",
                  no_args_is_help=True)

DataDir = Annotated[Optional[Path], typer.Option(  # noqa: UP045
    "--data-dir", help="Where Sophon keeps its data [env SOPHON_DATA_DIR].")]
ImagesDir = Annotated[Optional[Path], typer.Option(  # noqa: UP045
    "--images-dir", help="Where images are kept [env SOPHON_IMAGES_DIR; default "
                         "/var/lib/sophon/images].")]


def _store(data_dir: Path | None, images_dir: Path | None):  # type: ignore[no-untyped-def]
    from sophon.box.bwrap import BwrapBackend
    from sophon.config import load_settings
    from sophon.images.store import ImageStore

    overrides: dict[str, object] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if images_dir is not None:
        overrides["images_dir"] = images_dir
    settings = load_settings(**overrides)
    tools = (settings.box_claude_dir, settings.box_node_dir)
    points = BwrapBackend.mount_points_for(tools)
    return settings, ImageStore(settings.images_dir, timeout=settings.image_build_timeout,
                                mount_points=points)


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg="red")
    return typer.Exit(1)


@app.command("list")
def list_(data_dir: DataDir = None, images_dir: ImagesDir = None) -> None:
    """Each base's image: ready (size, when built), not built yet, or unavailable (why).

    Example: sophon images list
    """
    _, store = _store(data_dir, images_dir)
    rows = [[v.name, v.status, v.digest[:12],
             f"{v.size_bytes / 2**20:.0f} MiB" if v.size_bytes else "",
             (v.built_at or "").replace("T", " ").rstrip("Z"), v.reason or v.description]
            for v in store.list()]
    typer.echo(table(["IMAGE", "STATUS", "DIGEST", "SIZE", "BUILT", "WHAT"], rows))


@app.command()
def build(
    names: Annotated[Optional[list[str]], typer.Argument(  # noqa: UP045
        help="Images to build (default: every available one).")] = None,
    data_dir: DataDir = None, images_dir: ImagesDir = None,
) -> None:
    """Build images that are not built yet (each takes a minute or two, once), showing
    mmdebstrap's progress; an image already built is left as it is.

    Example: sophon images build python node
    """
    from sophon.errors import SophonError

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    settings, store = _store(data_dir, images_dir)
    if settings.images == "host" or os.geteuid() != 0:
        # Nothing to build: the server runs every box on the host's /usr (it says why).
        why = "SOPHON_IMAGES=host" if settings.images == "host" else "not root"
        typer.echo(f"images: not built ({why}); boxes use the host's /usr")
        return
    wanted = names or [v.name for v in store.list() if v.status != "unavailable"]

    async def run() -> None:
        for name in wanted:
            definition, _ = await store.ensure(name)
            typer.echo(f"{name}: ready ({definition.digest[:12]})")

    try:
        asyncio.run(run())
    except SophonError as exc:
        raise _fail(exc.message) from None


@app.command()
def rm(name: str, data_dir: DataDir = None, images_dir: ImagesDir = None) -> None:
    """Delete a built image (refused while a box uses it).

    Example: sophon images rm node
    """
    from sophon.box.manager import boxes_on_image
    from sophon.errors import SophonError

    settings, store = _store(data_dir, images_dir)
    try:
        digest = store.definition(name).digest
        store.remove(name, boxes_on_image(settings.boxes_dir, digest))
    except SophonError as exc:
        raise _fail(exc.message) from None
    typer.echo(f"deleted image {name}")
