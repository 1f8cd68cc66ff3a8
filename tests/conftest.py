"""Shared fixtures: a real server on a free loopback port with its own data directory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from sophon.testing import ModelServer
from tests.forked_server import ZYGOTE_PROCESS, Forked, forkable

SERVER_START_DEADLINE = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], object], deadline: float = 10.0, interval: float = 0.02,
             what: str = "condition") -> object:
    """Poll until ``predicate`` returns something truthy, or fail after ``deadline`` s."""
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def model_env(model_url: str) -> dict[str, str]:
    """A server's environment for a scripted model (sophon.testing.ModelServer): a
    server with no model refuses every message."""
    return {"ANTHROPIC_API_KEY": "test-key", "ANTHROPIC_BASE_URL": model_url}


def make_data_dir() -> Path:
    # Under /tmp (not pytest's 0700 tmp_path): sandboxes run as an unprivileged host
    # uid that must be able to walk to their own directory.
    path = Path(tempfile.mkdtemp(prefix="sophon-test-", dir="/tmp"))
    path.chmod(0o711)
    return path


class LiveServer:
    """``sophon serve`` in a child process, as a user would run it: forked from a process
    that has made its imports already (tests/forked_server.py), unless ``forked`` is
    off (the benchmarks) or the environment differs in what Python reads at start."""

    forked = True

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The machine's own proxy settings would send the egress door's traffic (to test
        # hosts on 127.0.0.2) through that proxy: a test that wants one names it.
        inherited = {k: v for k, v in os.environ.items()
                     if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
        self.env = {**inherited, "SOPHON_DATA_DIR": str(data_dir), **(env or {})}
        self.proc: subprocess.Popen[bytes] | Forked | None = None
        self.log = data_dir / "server.log"

    def start(self) -> LiveServer:
        args = ["serve", "--port", str(self.port)]
        if self.forked and forkable(self.env):
            self.proc = ZYGOTE_PROCESS.fork(args, self.env, self.log, os.getcwd())
        else:
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen([sys.executable, "-m", "sophon.cli", *args],
                                             env=self.env, stdout=log,
                                             stderr=subprocess.STDOUT)

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
            return False

        wait_for(healthy, SERVER_START_DEADLINE, 0.05, "the server to start")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.unmount_disks()

    def unmount_disks(self) -> None:
        """Box disks a stopped server left mounted (a killed one leaves them all; the
        next start would unmount them, but a test that ends here must not leave loop
        devices behind). Tests of unmounting look before stop() gets here."""
        prefix = str(self.data_dir.resolve()) + "/"
        with open("/proc/self/mounts") as f:
            mounts = [line.split()[1] for line in f]
        for m in mounts:
            if m.startswith(prefix):
                subprocess.run(["umount", "-l", m], capture_output=True, check=False)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> LiveServer:
        self.stop()
        return self.start()

    def add_user(self, name: str | None = None, database_url: str | None = None) -> str:
        """A new user with a fresh API key (written straight to the server's database)."""
        from sophon.store.db import make_engine, sessionmaker
        from sophon.users import UserService

        async def create() -> str:
            engine = make_engine(
                database_url or f"sqlite+aiosqlite:///{self.data_dir / 'sophon.db'}")
            try:
                _, key = await UserService(sessionmaker(engine)).create(
                    name or f"user-{uuid.uuid4().hex[:8]}")
                return key
            finally:
                await engine.dispose()

        return asyncio.run(create())

    def add_key(self, name: str) -> str:
        """Another API key for the user ``name`` (as `sophon users add-key` makes one)."""
        from sophon.store.db import make_engine, sessionmaker
        from sophon.users import UserService

        async def create() -> str:
            engine = make_engine(f"sqlite+aiosqlite:///{self.data_dir / 'sophon.db'}")
            try:
                return await UserService(sessionmaker(engine)).add_key(name)
            finally:
                await engine.dispose()

        return asyncio.run(create())


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = make_data_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    """One server per test module; each test gets its own user (``api_key``), and
    threads and executions are per user, so tests do not see each other."""
    path = make_data_dir()
    srv = LiveServer(path).start()
    yield srv
    srv.stop()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def model() -> Iterator[ModelServer]:
    """One scripted model per test module (each test sets its script)."""
    with ModelServer() as ms:
        yield ms


@contextlib.contextmanager
def serve_with_model(model: ModelServer, **env: str) -> Iterator[LiveServer]:
    """A server whose agent calls ``model`` (and ``env``), on a fresh data directory,
    removed after."""
    path = make_data_dir()
    srv = LiveServer(path, env={**model_env(model.url), **env}).start()
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def own_server(data_dir: Path) -> Iterator[LiveServer]:
    """A server for this test alone, for tests that stop, kill or restart it."""
    srv = LiveServer(data_dir).start()
    yield srv
    srv.stop()


@pytest.fixture
def api_key(server: LiveServer) -> str:
    return server.add_user()


@pytest.fixture
def http(server: LiveServer, api_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60,
                      headers={"Authorization": f"Bearer {api_key}"}) as client:
        yield client
