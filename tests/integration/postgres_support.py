"""A real PostgreSQL server for a test (Debian's, run as the postgres user on a free
port of loopback, in a directory of its own, removed after), and nodes on it."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import LiveServer, free_port, make_data_dir

PG_BIN = Path("/usr/lib/postgresql/15/bin")

NEEDS_POSTGRES = pytest.mark.skipif(
    not (PG_BIN / "initdb").exists() or os.geteuid() != 0 or shutil.which("runuser") is None,
    reason="needs PostgreSQL 15 server binaries and root (to run it as the postgres user)",
)


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A PostgreSQL server of its own with one empty database: its SQLAlchemy URL."""
    root = Path(tempfile.mkdtemp(prefix="sophon-pg-", dir="/tmp"))
    shutil.chown(root, "postgres")
    port = free_port()

    def as_postgres(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["runuser", "-u", "postgres", "--", *cmd],
                              capture_output=True, text=True, check=True)

    as_postgres(str(PG_BIN / "initdb"), "-D", str(root / "db"), "-A", "trust", "-U", "sophon")
    as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(root / "db"), "-l", str(root / "log"),
                "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "-w", "start")
    try:
        as_postgres(str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                    "sophon", "sophon")
        yield f"postgresql+asyncpg://sophon@127.0.0.1:{port}/sophon"
    finally:
        as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(root / "db"), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The URL of a new, empty database on a server of its own."""
    pytest.importorskip("asyncpg")
    with postgres() as url:
        yield url


@contextlib.contextmanager
def nodes_on(url: str, names: str, env: dict[str, str]) -> Iterator[list[LiveServer]]:
    """A node (``sophon serve``) per letter of ``names`` on the database at ``url``, all
    sharing one data directory (as a cluster's nodes share their storage); each logs to
    ``server-<name>.log`` there. Stopped and removed after."""
    data = make_data_dir()
    nodes = []
    for name in names:
        srv = LiveServer(data, env={"SOPHON_DATABASE_URL": url, **env})
        srv.log = data / f"server-{name}.log"
        nodes.append(srv)
    try:
        # The first alone (it makes the schema), then the others side by side.
        nodes[0].start()
        with ThreadPoolExecutor(max(1, len(nodes) - 1)) as pool:
            list(pool.map(LiveServer.start, nodes[1:]))
        yield nodes
    finally:
        for srv in nodes:
            srv.stop()
        shutil.rmtree(data, ignore_errors=True)
