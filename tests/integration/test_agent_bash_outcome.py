"""The agent's Bash tool says why a command was killed, as the execution API does: the
model can only fix what it is told (less memory, fewer files), not a bare exit code."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from sophon.testing import ModelServer
from tests.conftest import LiveServer
from tests.integration.test_agent_edges import (
    PROVIDER_KEY,
    create_session,
    live_server,
    stop_server,
)
from tests.integration.test_agent_tools import call

MEMORY_SAYS = "ran out of memory"
DISK_SAYS = "The disk is full"
# More memory than a box may have (SOPHON_BOX_MEMORY_MB, 512 by default), touched page by page.
MEMORY_HOG = ("echo before; python3 -c 'a = bytearray(2 << 30)\n"
              "for i in range(0, len(a), 4096): a[i] = 1'")
FILL = "dd if=/dev/zero of=/workspace/big bs=1M count=64 2>&1"


@pytest.fixture(scope="module")
def ms() -> Iterator[ModelServer]:
    with ModelServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def server(ms: ModelServer) -> Iterator[LiveServer]:
    srv = live_server({"ANTHROPIC_API_KEY": PROVIDER_KEY, "ANTHROPIC_BASE_URL": ms.url,
                       "SOPHON_BOX_POOL_SIZE": "0"})
    yield srv
    stop_server(srv)


def test_bash_says_when_the_memory_limit_killed_the_command(ms: ModelServer,
                                                            http: httpx.Client) -> None:
    sid = create_session(http, {"shell": "allow"})
    got = call(ms, http, sid, [
        ("hog", "Bash", {"command": MEMORY_HOG}),
        # Control: a command that fails for its own reasons is not called a memory kill.
        ("fails", "Bash", {"command": "echo nope; exit 137"}),
    ])
    is_error, text = got["hog"]
    assert is_error and MEMORY_SAYS in text, text
    assert text.startswith("before\n")  # the shell's child was killed, and that is seen
    assert got["fails"] == (True, "nope\nExit code 137")


def test_bash_says_when_the_disk_is_full(ms: ModelServer, http: httpx.Client) -> None:
    sid = create_session(http, {"shell": "allow"}, disk_mb=24)
    got = call(ms, http, sid, [
        ("fill", "Bash", {"command": FILL}),
        ("free", "Bash", {"command": "rm /workspace/big && exit 3"}),
    ])
    is_error, text = got["fill"]
    assert is_error and "No space left on device" in text and DISK_SAYS in text, text
    # Control: once there is room again, a failure is only its exit code.
    assert got["free"] == (True, "Exit code 3")
