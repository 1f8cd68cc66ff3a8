"""The HTTP application: routers, the error mapping, and the lifespan of services."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sophon.api import health, sandbox
from sophon.config import Settings
from sophon.errors import SophonError
from sophon.services import Services

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024


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

    @app.middleware("http")
    async def _limit_body(request: Request, call_next):  # type: ignore[no-untyped-def]
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return JSONResponse(
                error_body("payload_too_large",
                           f"request body is larger than {MAX_BODY_BYTES} bytes"), 413)
        return await call_next(request)

    app.include_router(health.router)
    app.include_router(sandbox.router)
    return app
