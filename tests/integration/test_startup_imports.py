"""The model provider's SDK is imported at start-up, off the event loop.

Imported on first use, ``anthropic`` (about a second) ran inside the first agent turn,
on the event loop: every request waited meanwhile (an execute took 970 ms). Each test
opens the server's services in a fresh interpreter, where nothing has imported the SDK
yet, and watches imports with an audit hook.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_data_dir

OPEN_SERVICES = r"""
import asyncio, json, sys, threading

imports = {}

def watch(event, args):
    if event == "import" and args[0] in ("anthropic", "httpx") and args[0] not in imports:
        imports[args[0]] = threading.current_thread().name

sys.addaudithook(watch)

from sophon.config import load_settings
from sophon.services import Services

async def main():
    before = "anthropic" in sys.modules
    services = await Services.open(load_settings())
    try:
        out = {"before": before, "after_open": "anthropic" in sys.modules,
               "loop_thread": threading.current_thread().name,
               "import_thread": imports.get("anthropic"),
               "client": type(services.gateway._client).__name__}
    finally:
        await services.close()
    print(json.dumps(out))

asyncio.run(main())
"""


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = make_data_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def open_services(data_dir: Path, key: str | None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ANTHROPIC_API_KEY", "SOPHON_ANTHROPIC_API_KEY")}
    env.update(SOPHON_DATA_DIR=str(data_dir), SOPHON_BOX_POOL_SIZE="0")
    if key is not None:
        env["ANTHROPIC_API_KEY"] = key
    done = subprocess.run([sys.executable, "-c", OPEN_SERVICES], env=env, cwd="/",
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_the_sdk_is_imported_at_start_up_off_the_event_loop(data_dir: Path) -> None:
    found = open_services(data_dir, "test-key")
    assert found["before"] is False, found  # control: the interpreter starts without it
    assert found["after_open"] is True, found
    assert found["import_thread"] is not None, found
    assert found["import_thread"] != found["loop_thread"], found
    assert found["client"] == "AsyncAnthropic", found  # the client is ready, too


def test_without_a_provider_key_the_sdk_is_not_imported(data_dir: Path) -> None:
    """A turn without a key ends before the client is needed: no second to pay."""
    found = open_services(data_dir, None)
    assert found["after_open"] is False and found["import_thread"] is None, found
