"""The same server on PostgreSQL (SOPHON_DATABASE_URL): migrations, executions, restarts."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import LiveServer, wait_for
from tests.integration.postgres_support import NEEDS_POSTGRES

pytestmark = NEEDS_POSTGRES


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
