"""The HTTP application: routers, the error mapping, and the lifespan of services."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sophon.api import gateway, health, sandbox, sessions
from sophon.config import Settings
from sophon.errors import PayloadTooLarge, SophonError
from sophon.services import Services

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024




class BodyLimit:
    """Refuse request bodies over ``limit`` bytes: by Content-Length up front, and by
    counting for chunked bodies. (A plain ASGI middleware: far cheaper per request than
    Starlette's BaseHTTPMiddleware.)"""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body is larger than {self.limit} bytes"
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                response = JSONResponse(error_body(PayloadTooLarge.code, message), 413)
                await response(scope, receive, send)
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.limit:
                raise PayloadTooLarge(message)
            return msg

        await self.app(scope, counted, send)


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


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await Services.open(settings)
        app.state.services = services
        log.info("sophon ready: data in %s, box limits via %s",
                 settings.data_dir, services.boxes.limits_mode)
        try:
            yield
        finally:
            await services.close()

    app = FastAPI(title="Sophon", version="0.1.0", lifespan=lifespan)

    @app.exception_handler(SophonError)
    async def _sophon_error(_: Request, exc: SophonError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(error_body(exc.code, exc.message), exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body("invalid_request", _describe(exc)), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code)

    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.include_router(health.router)
    app.include_router(sandbox.router)
    app.include_router(sessions.router)
    app.include_router(gateway.router)
    return app
