"""The same server on PostgreSQL (SOPHON_DATABASE_URL): migrations, executions, restarts."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, free_port, wait_for

PG_BIN = Path("/usr/lib/postgresql/15/bin")

pytestmark = pytest.mark.skipif(
    not (PG_BIN / "initdb").exists() or os.geteuid() != 0 or shutil.which("runuser") is None,
    reason="needs PostgreSQL 15 server binaries and root (to run it as the postgres user)",
)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    pytest.importorskip("asyncpg")
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


def test_executions_on_postgres_survive_a_restart(data_dir: Path, postgres_url: str) -> None:
    srv = LiveServer(data_dir, env={"SOPHON_DATABASE_URL": postgres_url}).start()
    try:
        assert not (data_dir / "sophon.db").exists()
        key = srv.add_user(database_url=postgres_url)
        headers = {"Authorization": f"Bearer {key}"}
        r = httpx.post(srv.url + "/v1/sandbox/execute", headers={**headers,
                       "Prefer": "respond-async"}, timeout=30,
                       json={"code": "echo on-postgres", "language": "bash", "thread_id": "pg"})
        trace = r.json()["trace_id"]
        url = f"{srv.url}/v1/executions/{trace}"
        wait_for(lambda: httpx.get(url, headers=headers).json()["status"] == "success",
                 what="the execution to finish")
        srv.restart()
        status = httpx.get(url, headers=headers).json()
        assert status["stdout"] == "on-postgres\n"
    finally:
        srv.stop()
