"""The Python SDK: ``Client`` (sync) and ``AsyncClient`` over Sophon's REST + SSE API."""

from sophon.client._common import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ConnectionFailed,
    NotFoundError,
    PreconditionFailedError,
    ServerError,
    SophonAPIError,
)
from sophon.client.sync import Client


def __getattr__(name: str) -> object:
    if name == "AsyncClient":  # imported on first use: the CLI never needs it
        from sophon.client.aio import AsyncClient

        return AsyncClient
    raise AttributeError(f"module 'sophon.client' has no attribute {name!r}")


__all__ = [
    "AsyncClient", "AuthenticationError", "BadRequestError", "Client", "ConflictError",
    "ConnectionFailed", "NotFoundError", "PreconditionFailedError", "ServerError",
    "SophonAPIError",
]
