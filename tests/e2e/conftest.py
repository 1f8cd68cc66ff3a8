"""Fixtures of the CLI tests: one scripted model and one server per test module, and for
each test its own user and its own empty config directory."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture
def key(server: LiveServer) -> str:
    return server.add_user()


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
