"""Fixtures of the CLI and dashboard tests: one scripted model and one server per test
module, and for each test its own user and its own empty config directory; for the
dashboard, Debian's Chromium (one per module) and a fresh page per test."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sophon.testing import ModelServer
from tests.conftest import LiveServer, make_data_dir
from tests.e2e.cli_support import cli_env, model_env


@pytest.fixture(scope="module")
def model() -> Iterator[ModelServer]:
    with ModelServer() as ms:
        yield ms


@pytest.fixture(scope="module")
def server(model: ModelServer) -> Iterator[LiveServer]:
    data = make_data_dir()
    srv = LiveServer(data, env=model_env(model)).start()
    yield srv
    srv.stop()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def config_home(tmp_path: Path) -> Path:
    path = tmp_path / "xdg"
    path.mkdir()
    return path


def new_user(server: LiveServer) -> str:
    """``server.add_user`` in a thread of its own: Playwright's sync API keeps an event
    loop running in the test's thread, where ``asyncio.run`` is refused."""
    got: list[str] = []
    worker = threading.Thread(target=lambda: got.append(server.add_user()))
    worker.start()
    worker.join(60)
    assert got, "could not create a user"
    return got[0]


@pytest.fixture
def key(server: LiveServer) -> str:
    return new_user(server)


@pytest.fixture
def env(server: LiveServer, key: str, config_home: Path) -> dict[str, str]:
    """The environment of a user who set SOPHON_URL and SOPHON_API_KEY."""
    return cli_env(config_home, SOPHON_URL=server.url, SOPHON_API_KEY=key)


@pytest.fixture
def own_server(model: ModelServer, data_dir: Path) -> Iterator[LiveServer]:
    """A server for this test alone (it restarts it), on the module's model."""
    srv = LiveServer(data_dir, env=model_env(model)).start()
    yield srv
    srv.stop()


CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
DIST = Path(__file__).resolve().parents[2] / "ui" / "dist" / "index.html"
DEADLINE_MS = 30_000
# The dashboard test modules' pytestmark: they need Chromium and the built dashboard.
NEEDS_DASHBOARD = [
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="Debian's chromium is not installed (scripts/system-deps)"),
    pytest.mark.skipif(not DIST.exists(), reason="the dashboard is not built (make ui)"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context (no cookies) at 1280x800; page errors fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800},
                                  accept_downloads=True)
    context.set_default_timeout(DEADLINE_MS)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where a test's screenshots go: docs/screenshots with SOPHON_UPDATE_SCREENSHOTS=1."""
    if os.environ.get("SOPHON_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return SCREENSHOTS
    return tmp_path
