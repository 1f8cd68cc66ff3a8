"""The Python SDK: ``Client`` (sync, typed), ``AsyncClient`` (asyncio, typed) and
``RawClient`` (sync, plain JSON, standard library only) over Sophon's REST + SSE API.

``Client`` and ``AsyncClient`` are imported on first use: they bring pydantic (and httpx
for the async one), which the CLI never needs.
"""

from typing import Any

from sophon.client._common import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ConnectionFailed,
    LimitExceededError,
    NotFoundError,
    PreconditionFailedError,
    ServerError,
    SophonAPIError,
)
from sophon.client._raw import RawClient


def __getattr__(name: str) -> Any:
    if name == "Client":
        from sophon.client.sync import Client

        return Client
    if name == "AsyncClient":
        from sophon.client.aio import AsyncClient

        return AsyncClient
    raise AttributeError(f"module 'sophon.client' has no attribute {name!r}")


__all__ = [
    "AsyncClient", "AuthenticationError", "BadRequestError", "Client", "ConflictError",
    "ConnectionFailed", "LimitExceededError", "NotFoundError", "PreconditionFailedError",
    "RawClient", "ServerError", "SophonAPIError",
]
