"""Every example of docs/SDK.md, run against a live server as a user would run it.

One ``sophon serve`` per module talks to one in-process scripted model server. Each
documented example runs in a fresh interpreter (``python -c``) with ``SOPHON_URL`` and
``SOPHON_API_KEY`` set for a fresh user, exactly as it is printed. An HTML comment line
above a block sets it up: ``<!-- script: NAME -->`` loads ``SCRIPTS[NAME]`` into the model
server first; ``<!-- expect: TEXT -->`` requires TEXT in what the block printed.

The SDK's other promises are tested in test_sdk.py and test_sdk_async.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sophon.client import Client
from sophon.testing import ModelServer
from tests.conftest import LiveServer
from tests.integration import sdk_support
from tests.integration.sdk_support import INHERITED, SCRIPTS

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "SDK.md"
BLOCK_TIMEOUT = 60

# This module's fixtures (tests/integration/sdk_support.py): one scripted model and one
# server for the module.
model, server = sdk_support.model, sdk_support.server


# --- the documented examples -----------------------------------------------------------

@dataclass
class Block:
    number: int
    heading: str
    code: str
    line: int
    script: str | None = None
    expect: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-")
        return f"{self.number:02d}-{slug}"


MARKER = re.compile(r"^<!--\s*(\w+):\s*(.*?)\s*-->$")


def parse_blocks(text: str) -> list[Block]:
    """Every ```python block, with the marker comments directly above its fence."""
    lines = text.splitlines()
    blocks: list[Block] = []
    heading = "top"
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.strip() == "```python":
            end = lines.index("```", i + 1)
            block = Block(len(blocks) + 1, heading, "\n".join(lines[i + 1:end]) + "\n", i + 1)
            j = i - 1
            while j >= 0 and (m := MARKER.match(lines[j].strip())):
                if m.group(1) == "script":
                    block.script = m.group(2)
                elif m.group(1) == "expect":
                    block.expect.insert(0, m.group(2))
                else:
                    raise ValueError(f"SDK.md line {j + 1}: unknown marker {m.group(1)!r}")
                j -= 1
            blocks.append(block)
            i = end
        i += 1
    return blocks


BLOCKS = parse_blocks(DOC.read_text())


def test_the_doc_has_its_examples() -> None:
    assert len(BLOCKS) >= 12
    headings = {b.heading for b in BLOCKS}
    for needed in ("Configure", "Errors", "Sessions", "Run a command", "Files", "Diff",
                   "Secrets", "Talk to the agent", "Read the event log", "Usage", "Export",
                   "Delete", "The execution API", "AsyncClient", "RawClient"):
        assert needed in headings, f"no example under '## {needed}'"
    for block in BLOCKS:
        assert block.script is None or block.script in SCRIPTS, block.id


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_documented_example_runs(block: Block, server: LiveServer, model: ModelServer,
                                 tmp_path: Path) -> None:
    model.set_script(SCRIPTS[block.script] if block.script else None)
    key = server.add_user()
    env = {k: v for k, v in os.environ.items() if k not in INHERITED}
    env.update({"SOPHON_URL": server.url, "SOPHON_API_KEY": key,
                "XDG_CONFIG_HOME": str(tmp_path / "config")})
    try:
        proc = subprocess.run([sys.executable, "-c", block.code], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
        where = f"docs/SDK.md line {block.line}\n--- stdout\n{proc.stdout}\n--- stderr\n" \
                f"{proc.stderr}"
        assert proc.returncode == 0, where
        for text in block.expect:
            assert text in proc.stdout, f"{text!r} not printed; {where}"
        if block.script:
            assert model.requests, f"the example never called the model; {where}"
    finally:
        with Client(server.url, key) as mine:
            for session in list(mine.list_sessions()):
                mine.delete_session(session.id)
