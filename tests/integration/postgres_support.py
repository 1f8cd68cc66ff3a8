"""A real PostgreSQL server for a test (Debian's, run as the postgres user on a free
port of loopback, in a directory of its own, removed after)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port

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
