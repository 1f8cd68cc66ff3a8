"""What the SDK tests share (test_sdk_docs.py, test_sdk.py, test_sdk_async.py): the
scripted model turns, one ``sophon serve`` per module on one in-process scripted model
server, a user's client, and a TCP proxy that can cut connections.

The fixtures are not in a conftest.py, where they would clash with the ``server`` and
``model`` fixtures of other modules in tests/integration: each SDK test module binds them
by name (``server = sdk_support.server``), which is how pytest finds them.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sophon.client import Client
from sophon.testing import ModelServer
from tests.conftest import LiveServer, make_data_dir

# Settings inherited from the environment that would change what the server or a block does.
INHERITED = ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "SOPHON_ANTHROPIC_API_KEY",
             "SOPHON_ANTHROPIC_BASE_URL", "SOPHON_USER_TOKEN_BUDGET", "SOPHON_URL",
             "SOPHON_API_KEY", "XDG_CONFIG_HOME")


def tool(name: str, **input: Any) -> dict[str, Any]:
    return {"type": "tool_use", "name": name, "input": input}


# The scripts a documented block may ask for: kept simple on purpose.
SCRIPTS: dict[str, dict[str, Any]] = {
    # One shell command (the first in a session: it waits for approval), then a text reply.
    "approval": {"turns": [
        {"content": ["I'll run the tests.",
                     tool("Bash", command="python3 -m unittest -q 2>&1")]},
        {"rules": [{"when": {"last_tool_result_contains": "OK"},
                    "reply": "All 3 tests pass."}],
         "default": "The tests did not pass."},
    ]},
    # Text replies only (one per turn; two turns may run at once).
    "text": {"turns": ["Hello!", "Hello!"]},
}

# A Python execution that runs long enough to be cancelled.
LONG = "import time\nprint('started', flush=True)\ntime.sleep(120)\n"


def run(client: Client, sid: str, command: str) -> list[Any]:
    return list(client.exec(sid, command))


# --- fixtures -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def model() -> Iterator[ModelServer]:
    with ModelServer() as ms:
        yield ms


@pytest.fixture(scope="module")
def server(model: ModelServer) -> Iterator[LiveServer]:
    data = make_data_dir()
    srv = LiveServer(data)
    for name in INHERITED:
        srv.env.pop(name, None)
    srv.env.update({"ANTHROPIC_API_KEY": "test-key", "ANTHROPIC_BASE_URL": model.url})
    srv.start()
    yield srv
    srv.stop()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def client(server: LiveServer, api_key: str) -> Iterator[Client]:
    with Client(server.url, api_key) as c:
        yield c


@pytest.fixture
def no_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No SOPHON_URL / SOPHON_API_KEY and an empty config directory."""
    for name in ("SOPHON_URL", "SOPHON_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    return config


# --- a proxy that can cut connections ----------------------------------------------------

class Proxy:
    """A TCP proxy in front of the server that keeps what went through each connection
    and can cut them all, as a network or a load balancer would."""

    def __init__(self, port: int) -> None:
        self._upstream = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.sent: list[bytearray] = []  # what each client sent, by connection
        self.received: list[bytearray] = []  # what the server answered
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._upstream))
            up, down = bytearray(), bytearray()
            with self._lock:
                self.sent.append(up)
                self.received.append(down)
                self._open += [client, server]
            for src, dst, log in ((client, server, up), (server, client, down)):
                threading.Thread(target=self._pump, args=(src, dst, log), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, log: bytearray) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                log += data
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self._lock:
            open_, self._open = self._open, []
        for s in open_:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def event_streams(self, sid: str) -> list[tuple[str | None, list[int]]]:
        """For each events request: its Last-Event-ID, and the ids the server sent back."""
        with self._lock:
            pairs = list(zip(self.sent, self.received, strict=True))
        out = []
        for up, down in pairs:
            head = bytes(up).decode("latin-1")
            if not head.startswith(f"GET /v1/sessions/{sid}/events"):
                continue
            last = re.search(r"(?im)^last-event-id: *(\d+)\r$", head)
            ids = [int(i) for i in re.findall(rb"(?m)^id: (\d+)$", bytes(down))]
            out.append((last.group(1) if last else None, ids))
        return out

    def close(self) -> None:
        self._listener.close()
        self.cut()


@pytest.fixture
def proxy(server: LiveServer) -> Iterator[Proxy]:
    p = Proxy(server.port)
    yield p
    p.close()
