"""The dashboard's files, served by the API server itself at `/`.

Whatever no route answers comes here (the router's fallback, not a catch-all route, so
that a wrong method on an API path stays a 405 and an unknown /v1 path a JSON 404). A GET
or HEAD outside /v1 and /healthz gets the file at that path in the built dashboard, or its
``index.html`` (the app routes on the client). Files under ``assets/`` have content hashes
in their names, so they are cached for a year; ``index.html`` is revalidated every time,
so a new build shows at once. The directory is looked at on each request: building the
dashboard while the server runs is enough.
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import FastAPI
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.types import Receive, Scope, Send

import sophon
from sophon.config import Settings

ASSETS = "assets/"
API_PREFIXES = ("/v1/", "/healthz/")
IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable",
             "X-Content-Type-Options": "nosniff"}
REVALIDATE = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
# The app's page must not be framed by another site (clickjacking with the cookie).
PAGE = {**REVALIDATE, "X-Frame-Options": "DENY",
        "Content-Security-Policy": "frame-ancestors 'none'",
        "Referrer-Policy": "same-origin"}

NOT_BUILT = """<!doctype html>
<html lang="en"><meta charset="utf-8"><title>Sophon: the dashboard is not built</title>
<body style="font:16px system-ui;max-width:44em;margin:4em auto;line-height:1.5">
<h1>The dashboard is not built</h1>
<p>The server is running and its API answers under <code>/v1</code>
(<a href="/docs">API docs</a>), but there is no built dashboard in
<code>{where}</code>.</p>
<p>Build it from the repository with <code>make ui</code>, then reload this page (no restart
needed). A dashboard built elsewhere can be served by pointing <code>SOPHON_UI_DIR</code> at
its directory.</p>
</body></html>
"""


def ui_dir(settings: Settings) -> Path:
    """SOPHON_UI_DIR, or the repository's ui/dist next to the package's source."""
    return settings.ui_dir or Path(sophon.__file__).resolve().parents[2] / "ui" / "dist"


def _is_api(path: str) -> bool:
    return path in ("/v1", "/healthz") or path.startswith(API_PREFIXES)


def _file(root: Path, rel: str) -> Path | None:
    """The regular file at ``rel`` inside ``root``, never one outside it."""
    if not rel or "\x00" in rel or ".." in rel.split("/"):
        return None
    try:
        path = (root / rel).resolve()
        base = root.resolve()
    except (OSError, RuntimeError):
        return None
    return path if path.is_relative_to(base) and path.is_file() else None


def respond(root: Path, path: str) -> Response | None:
    """The answer to a GET of ``path`` (not an API path); None for a 404."""
    index = root / "index.html"
    if not index.is_file():
        return HTMLResponse(NOT_BUILT.replace("{where}", html.escape(str(root))), headers=PAGE)
    rel = path.lstrip("/")
    found = _file(root, rel)
    if found is not None and found != index.resolve():
        return FileResponse(found, headers=IMMUTABLE if rel.startswith(ASSETS) else REVALIDATE)
    if rel.startswith(ASSETS):
        return None  # a missing hashed file: a 404, not the app's page in its place
    return FileResponse(index, headers=PAGE)


def install(app: FastAPI, settings: Settings) -> None:
    """Serve the dashboard for every GET no route answers (outside /v1 and /healthz)."""
    root = ui_dir(settings)
    not_found = app.router.default

    async def fallback(scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["method"] in ("GET", "HEAD")
                and not _is_api(scope["path"])):
            response = respond(root, scope["path"])
            if response is not None:
                await response(scope, receive, send)
                return
        await not_found(scope, receive, send)

    app.router.default = fallback
