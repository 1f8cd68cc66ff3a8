"""Small ASGI helpers shared by the middlewares (api/app.py, cluster/forward.py)."""

from __future__ import annotations

from starlette.types import Message, Receive


def replay(first: Message, receive: Receive) -> Receive:
    """``receive`` as the app sees it after a middleware read ``first`` from it: that
    message once more, then the rest as they come."""
    pending: Message | None = first

    async def again() -> Message:
        nonlocal pending
        if pending is not None:
            message, pending = pending, None
            return message
        return await receive()

    return again
