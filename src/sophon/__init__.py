"""Sophon: Claude coding sessions in isolated sandboxes.

``sophon.Client`` and ``sophon.AsyncClient`` are the SDK (loaded on first use, so the
server and the CLI do not pay for it).
"""

from __future__ import annotations

from typing import Any

__all__ = ["AsyncClient", "Client"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        import sophon.client

        return getattr(sophon.client, name)
    raise AttributeError(f"module 'sophon' has no attribute {name!r}")
