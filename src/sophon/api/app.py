"""The HTTP application: routers, the error mapping, and the lifespan of services."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sophon import metrics
from sophon.api import (
    auth,
    checkpoints,
    cluster,
    connectors,
    files,
    gateway,
    health,
    images,
    keys,
    openapi,
    sandbox,
    sessions,
    static,
    terminal,
    threads,
    volumes,
    webhooks,
)
from sophon.api import metrics as metrics_route
from sophon.asgi import replay
from sophon.cluster.forward import Forwarder
from sophon.config import Settings
from sophon.errors import PayloadTooLarge, SophonError
from sophon.mcp.endpoint import McpEndpoint
from sophon.services import Services

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes on every route, however they arrive.

    A Content-Length over the limit is refused before anything is read. Otherwise (a
    chunked body has no length) the body is read here, counting while it comes, before
    any route parses it: the 413 goes out as soon as the count passes the limit, and no
    more than ``limit`` bytes are ever held. The whole body is then handed to the app as
    one message. (A plain ASGI middleware: far cheaper per request than Starlette's
    BaseHTTPMiddleware.)"""

    def __init__(self, app: ASGIApp, limit: int,
                 exempt: tuple[str, ...] = ("/v1/files/blob/", "/v1/sessions/import")
                 ) -> None:
        self.app = app
        self.limit = limit
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.exempt):
            # The files API's signed uploads take the length they were signed for, and
            # stream it to the box (api/files.py); an import streams its archive to a
            # staging box, whose disk bounds it. Neither holds a body here.
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._refuse(scope, receive, send)
                return
        whole = await self._read(receive)
        if whole is None:
            await self._refuse(scope, receive, send)
            return
        await self.app(scope, replay(whole, receive), send)

    async def _read(self, receive: Receive) -> Message | None:
        """The request's first message, holding the whole body if it came in parts;
        None as soon as the body passes the limit."""
        message = await receive()
        parts: list[bytes] = []
        size = 0
        while message["type"] == "http.request":
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                return None
            if not message.get("more_body", False):
                if not parts:
                    return message
                parts.append(body)
                return {"type": "http.request", "body": b"".join(parts), "more_body": False}
            parts.append(body)
            message = await receive()
        return message  # http.disconnect: the app sees that the client went away

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = error_body(PayloadTooLarge.code,
                          f"the request body is larger than {self.limit} bytes")
        await JSONResponse(body, PayloadTooLarge.status)(scope, receive, send)


class RequestMetrics:
    """Count every request by method, route template (never the raw path: ids would make
    a series each) and status, and time it to the end of its response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            metrics.http_requests.labels(method, template, str(status)).inc()
            metrics.http_seconds.labels(method, template).observe(
                time.perf_counter() - start)


def error_body(code: str, message: str) -> dict[str, str]:
    return {"error": code, "message": message}


def _describe(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "json_invalid":
            msg = "the body is not valid JSON"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid request"


def _methods(routers: tuple[APIRouter, ...], path: str) -> set[str]:
    """The methods of the path's routes; a path that is a route of its own
    (/v1/sessions/import) is not also a value of another's parameter ({session_id})."""
    matches = [route for router in routers for route in router.routes
               if isinstance(route, APIRoute) and route.path_regex.match(path)]
    exact = [route for route in matches if route.path == path]
    return {method for route in exact or matches for method in route.methods}


def create_app(settings: Settings) -> FastAPI:
    mcp = McpEndpoint()  # sessions as tools for other agents, at /mcp

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await Services.open(settings)
        app.state.services = services
        mcp.services = services
        metrics.install_live(lambda: metrics_route.live_gauges(services))
        log.info("sophon ready: data in %s, box limits via %s",
                 settings.data_dir, services.boxes.limits_mode)
        try:
            yield
        finally:
            await mcp.close()
            await services.close()

    app = FastAPI(title="Sophon", version="0.1.0", lifespan=lifespan)

    @app.exception_handler(SophonError)
    async def _sophon_error(_: Request, exc: SophonError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
        if exc.retry_after is not None:
            headers["Retry-After"] = str(exc.retry_after)
        return JSONResponse(error_body(exc.code, exc.message), exc.status,
                            headers=headers or None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body("invalid_request", _describe(exc)), 400)

    routers = (health.router, auth.router, sandbox.router, files.router, sessions.router,
               gateway.router, webhooks.router, volumes.router, images.router,
               metrics_route.router,
               threads.router, connectors.router, keys.router, terminal.router,
               checkpoints.router, cluster.router)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Every method of the path, not only those of the first route that matched it.
            headers["Allow"] = ", ".join(sorted(_methods(routers, request.scope["path"])))
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":  # no route matched at all
            message = (f"there is no {request.method} {request.scope['path']} on this "
                       "server; the API is described at /openapi.json")
        elif exc.status_code == 405:
            message = (f"{request.method} is not allowed on {request.scope['path']}; "
                       f"use {headers['Allow']}")
        return JSONResponse(error_body(code, message), exc.status_code,
                            headers=headers or None)

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        # Logged with its traceback by the server; the client gets the usual shape.
        return JSONResponse(error_body("internal_error", "internal server error"), 500)

    app.add_middleware(Forwarder)  # in a cluster: to the node that runs the session
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(RequestMetrics)  # outermost: it sees the 413s too
    for router in routers:
        app.include_router(router)
    app.router.add_route("/mcp", mcp, methods=["GET", "POST", "DELETE"],
                         include_in_schema=False)
    openapi.install(app, *routers)
    static.install(app, settings)  # the dashboard at `/`, for what no route answers
    return app
