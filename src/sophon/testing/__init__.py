"""Test and demo helpers that ship with Sophon, chiefly a scripted Messages API server.

Names are loaded on first use, so ``sophon testing --help`` stays quick.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelServer": "model_server", "ScriptPlayer": "model_server",
    "ScriptSource": "model_server", "create_app": "model_server",
    "serve_forever": "model_server", "Condition": "script", "Reply": "script",
    "Rule": "script", "Script": "script", "Turn": "script", "load_script": "script",
    "loads_script": "script", "parse_script": "script",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sophon.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(f"sophon.testing.{module}"), name)
