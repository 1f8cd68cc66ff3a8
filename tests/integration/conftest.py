"""Fixtures the integration tests of the box layer share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sophon.box.manager import BoxManager
from sophon.config import Settings
from tests.integration.postgres_support import postgres_url  # noqa: F401 (a fixture)


@pytest.fixture
async def manager(data_dir: Path) -> AsyncIterator[BoxManager]:
    """A box manager of this process on a fresh data directory, with no pool."""
    mgr = BoxManager(Settings(data_dir=data_dir, box_pool_size=0))
    await mgr.start()
    try:
        yield mgr
    finally:
        await mgr.close()
