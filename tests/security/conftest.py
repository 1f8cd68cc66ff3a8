"""Fixtures for the security suite: every test attacks a live server through its HTTP API.

``server`` (one per module), ``own_server``, ``api_key`` (a new user per test) and
``http`` come from tests/conftest.py. Tests that need the server started with a special
environment start their own with ``helpers.live_server``.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.security.helpers import execute

Run = Callable[..., dict[str, Any]]


@pytest.fixture
def run(http: httpx.Client) -> Run:
    """``run(code, language=..., timeout=..., thread_id=...)``: the execution's result."""

    def _run(code: str, **kw: Any) -> dict[str, Any]:
        return execute(http, code, **kw)

    return _run


@pytest.fixture
def host_canary() -> Iterator[Path]:
    """A world-writable host directory with a world-readable canary file in it.

    Boxes run as an unprivileged host uid, so permissions would not keep a box out of
    this directory: only its not being reachable from inside the box does. A box that
    can read the canary, or leave a file here, has reached the host's filesystem.
    """
    d = Path(f"/tmp/sophon-sec-canary-{secrets.token_hex(6)}")
    d.mkdir()
    d.chmod(0o777)
    canary = d / "canary.txt"
    canary.write_text(f"host-canary-{secrets.token_hex(8)}\n")
    canary.chmod(0o666)
    yield d
    shutil.rmtree(d, ignore_errors=True)
