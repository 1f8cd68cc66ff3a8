"""The ``sophon`` command. Heavy imports happen inside commands, so --help is quick.

The client commands talk to the server through the SDK's ``RawClient`` (standard library
only) and print without rich where plain text will do: see bench/bench_cli.py for what
start-up costs."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any, Optional  # noqa: UP035 - typer needs Optional at runtime

import typer

from sophon.commands import (
    archive,
    capabilities,
    checkpoints,
    claude_code,
    cluster,
    connectors,
    images,
    mcp,
    sandbox,
    session_mcp,
    volumes,
)
from sophon.testing.cli import testing_app

app = typer.Typer(help="Sophon: Claude coding sessions in isolated sandboxes.",
                  no_args_is_help=True, add_completion=False)
users_app = typer.Typer(help="Manage users and their API keys.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(claude_code.app, name="claude-code")
app.add_typer(sandbox.app, name="sandbox")
app.add_typer(volumes.app, name="volumes")
app.add_typer(connectors.app, name="connectors")
app.add_typer(images.app, name="images")
app.add_typer(testing_app, name="testing")
app.add_typer(cluster.node_app, name="node")
# Their commands are claude-code's.
assert archive.app is session_mcp.app is checkpoints.app is claude_code.app
app.command()(capabilities.capabilities)
app.command()(cluster.cluster)
app.command()(mcp.mcp)

DataDir = Annotated[Optional[Path], typer.Option(  # noqa: UP045
    "--data-dir", help="Where Sophon keeps its database and sandboxes [env SOPHON_DATA_DIR].")]


def _settings(data_dir: Path | None, **extra: object):  # type: ignore[no-untyped-def]
    from sophon.config import load_settings

    overrides = {k: v for k, v in extra.items() if v is not None}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    return load_settings(**overrides)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg="red")
    raise typer.Exit(1)


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option(help="Address to listen on.")] = None,  # noqa: UP045
    port: Annotated[Optional[int], typer.Option(help="Port to listen on.")] = None,  # noqa: UP045
    data_dir: DataDir = None,
) -> None:
    """Start the server (API and sandboxes) on one port.

    Example: sophon serve --port 8765
    """
    import asyncio
    import logging

    import uvicorn

    from sophon.api.app import create_app
    from sophon.errors import SophonError

    settings = _settings(data_dir, host=host, port=port)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        application = create_app(settings)
    except SophonError as exc:
        _fail(exc.message)
    url = _browser_url(settings)
    # Where this server is, for `sophon users sign-in-link` (run without --url) to use.
    with contextlib.suppress(OSError):
        (settings.data_dir / SERVER_URL_FILE).write_text(url + "\n")
    typer.echo(f"Sophon listening on http://{settings.host}:{settings.port} "
               f"(data: {settings.data_dir})")
    typer.echo(f"Dashboard: {url}/ : sign in with an API key (sophon users add NAME), or "
               "with a one-time link: sophon users sign-in-link NAME")
    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            # Event streams and terminals never end by themselves: end them now, so that
            # they close cleanly within the grace period instead of being cut off.
            services = getattr(application.state, "services", None)
            if services is not None:
                with contextlib.suppress(RuntimeError):  # no loop running: nothing to end
                    loop = asyncio.get_running_loop()
                    loop.call_soon_threadsafe(services.begin_shutdown)

    # The grace period: open connections get a moment at shutdown, then are closed, so
    # that the boxes are stopped and nothing is left behind.
    Server(uvicorn.Config(application, host=settings.host, port=settings.port,
                          log_level=settings.log_level, access_log=False,
                          timeout_graceful_shutdown=2)).run()


@users_app.command("add")
def users_add(name: str, data_dir: DataDir = None) -> None:
    """Create a user and print their new API key (shown once; stored hashed).

    Example: sophon users add alice
    """
    import asyncio

    from sophon.errors import SophonError
    from sophon.store.db import make_engine, migrate, sessionmaker
    from sophon.users import UserService

    settings = _settings(data_dir)

    async def run() -> str:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.resolved_database_url)
        try:
            await migrate(engine)
            _, key = await UserService(sessionmaker(engine)).create(name)
            return key
        finally:
            await engine.dispose()

    try:
        key = asyncio.run(run())
    except SophonError as exc:
        _fail(exc.message)
    typer.echo(key)


SERVER_URL_FILE = "server-url"


def _browser_url(settings: Any) -> str:
    """Where a browser reaches the server: SOPHON_PUBLIC_URL, else its host and port."""
    if settings.public_url:
        return str(settings.public_url).rstrip("/")
    host = settings.host
    host = "127.0.0.1" if host in ("", "0.0.0.0") else "localhost" if host == "::" else host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.port}"


@users_app.command("sign-in-link")
def users_sign_in_link(
    name: str,
    url: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="The server's address as the browser reaches it (default: where the server "
             "that last ran on this data directory listens, or SOPHON_PUBLIC_URL, or "
             "http://HOST:PORT from SOPHON_HOST and SOPHON_PORT).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Print a one-time link that signs NAME in to the dashboard (valid for 15 minutes).

    Example: sophon users sign-in-link alice --url https://sophon.example.com
    """
    import asyncio

    from sophon.errors import SophonError
    from sophon.store.db import make_engine, migrate, sessionmaker
    from sophon.users import UserService

    settings = _settings(data_dir)
    if url is None:
        try:  # the server that last ran on this data directory says where it is
            url = (settings.data_dir / SERVER_URL_FILE).read_text().strip() or None
        except OSError:
            url = None
    url = url or _browser_url(settings)

    async def run() -> str:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.resolved_database_url)
        try:
            await migrate(engine)
            return await UserService(sessionmaker(engine)).create_sign_in_link(name)
        finally:
            await engine.dispose()

    try:
        token = asyncio.run(run())
    except SophonError as exc:
        _fail(exc.message)
    typer.echo(f"{url.rstrip('/')}/v1/auth/link/{token}")


@app.command()
def login(
    url: Annotated[str, typer.Option(help="The server, e.g. http://127.0.0.1:8765")],
    api_key: Annotated[str, typer.Option(help="Your API key (from `sophon users add`).")],
) -> None:
    """Save the server and key for every other command (in a 0600 file).

    Example: sophon login --url http://127.0.0.1:8765 --api-key sk-sophon-...
    """
    from sophon.client._common import SophonAPIError, save_config
    from sophon.client._raw import RawClient

    try:
        with RawClient(url, api_key) as c:
            who = c.me()
    except ValueError as exc:  # not an http(s) URL
        _fail(str(exc))
    except SophonAPIError as exc:
        _fail(exc.message)
    try:
        path = save_config(url, api_key)
    except OSError as exc:
        _fail(f"cannot save the config: {exc.filename}: {exc.strerror}")
    typer.echo(f"logged in to {url} as {who['name']} (saved in {path})")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
