"""The server never imports the provider's SDK: not at start-up, not in a turn.

``anthropic`` took about 2.5 s of CPU to import (its thousands of typed models): on the
event loop in the first agent turn it stalled every request (an execute took 970 ms);
in a thread at start-up it still doubled each server's start. The native runtime's call
is spoken with httpx (gateway/messages.py). The test opens the server's services in a
fresh interpreter with a provider key, streams one reply through the gateway from the
scripted model server, and watches imports with an audit hook.
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

from sophon.testing import ModelServer
from tests.conftest import make_data_dir

OPEN_SERVICES = r"""
import asyncio, json, sys

imported = set()

def watch(event, args):
    if event == "import" and args[0].partition(".")[0] == "anthropic":
        imported.add(args[0])

sys.addaudithook(watch)

from sophon.config import load_settings
from sophon.gateway.messages import BlockDone, MessageDone
from sophon.services import Services

async def main():
    services = await Services.open(load_settings())
    try:
        events = [ev async for ev in services.gateway.stream({
            "model": "claude-sonnet-4-5", "max_tokens": 100,
            "messages": [{"role": "user", "content": "hi"}]})]
    finally:
        await services.close()
    print(json.dumps({
        "imported": sorted(imported),
        "blocks": [ev.block for ev in events if isinstance(ev, BlockDone)],
        "stop_reason": events[-1].stop_reason if isinstance(events[-1], MessageDone) else None,
    }))

asyncio.run(main())
"""


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = make_data_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_server_with_a_provider_key_streams_a_reply_without_the_sdk(data_dir: Path) -> None:
    with ModelServer() as model:
        model.set_script(["hello from the model"])
        env = {**os.environ, "SOPHON_DATA_DIR": str(data_dir), "SOPHON_BOX_POOL_SIZE": "0",
               "ANTHROPIC_API_KEY": "test-key", "ANTHROPIC_BASE_URL": model.url}
        done = subprocess.run([sys.executable, "-c", OPEN_SERVICES], env=env, cwd="/",
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["blocks"] == [{"type": "text", "text": "hello from the model"}], found
    assert found["stop_reason"] == "end_turn"
    assert found["imported"] == [], found
