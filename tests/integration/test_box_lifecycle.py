"""Boxes start on demand, stop when idle, come back over the same files, and never
outlive the server."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, wait_for
from tests.security.helpers import box_files, host_pids

FAST_IDLE = {"SOPHON_THREAD_IDLE_SECONDS": "0.3", "SOPHON_IDLE_CHECK_SECONDS": "0.1"}


def box_processes(data_dir: Path, box_id: str = "") -> list[str]:
    """Host processes (bwrap) whose command line names this server's data directory,
    or one box in it."""
    pattern = str(data_dir / "boxes" / box_id) if box_id else str(data_dir)
    out = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if "pgrep" not in line]


def workspaces_holding(data_dir: Path, filename: str) -> list[Path]:
    """The boxes whose workspace holds ``filename``, looked at from the host: a running
    box's disk is mounted only in its own namespace, seen through its launcher."""
    return [d for d in (data_dir / "boxes").iterdir()
            if (box_files(d) / "workspace" / filename).exists()]


def box_holding(data_dir: Path, filename: str) -> str:
    """The id of the box whose workspace holds ``filename``."""
    (found,) = workspaces_holding(data_dir, filename)
    return found.name


def execute(srv: LiveServer, key: str, code: str, **extra: object) -> dict:
    r = httpx.post(srv.url + "/v1/sandbox/execute", timeout=60,
                   headers={"Authorization": f"Bearer {key}"},
                   json={"code": code, "language": "bash", **extra})
    assert r.status_code in (200, 202), r.text
    return r.json()


@pytest.fixture
def idle_server(data_dir: Path):
    srv = LiveServer(data_dir, env=FAST_IDLE).start()
    yield srv
    srv.stop()


def test_idle_box_stops_and_restarts_over_same_files(idle_server: LiveServer) -> None:
    key = idle_server.add_user()
    execute(idle_server, key, "echo kept > state.txt", thread_id="sleepy")
    box_id = box_holding(idle_server.data_dir, "state.txt")
    wait_for(lambda: not box_processes(idle_server.data_dir, box_id), 10,
             what="the idle box to stop")
    result = execute(idle_server, key, "cat state.txt", thread_id="sleepy")
    assert result["stdout"] == "kept\n"
    assert box_processes(idle_server.data_dir, box_id)


def test_box_with_a_running_process_is_not_idle(idle_server: LiveServer) -> None:
    key = idle_server.add_user()
    execute(idle_server, key, "touch bg.txt; setsid sleep 30 >/dev/null 2>&1 < /dev/null &",
            thread_id="bg")
    box_id = box_holding(idle_server.data_dir, "bg.txt")
    # Many idle checks pass (every 0.1 s, idle after 0.3 s): the box must stay up.
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        assert box_processes(idle_server.data_dir, box_id), "a box with a live process stopped"
        time.sleep(0.1)
    result = execute(idle_server, key, "pgrep -c sleep", thread_id="bg")
    assert result["stdout"].strip() == "1"


def test_nothing_outlives_the_server(own_server: LiveServer) -> None:
    key = own_server.add_user()
    execute(own_server, key, "setsid sleep 300 >/dev/null 2>&1 < /dev/null &", thread_id="a")
    r = httpx.post(own_server.url + "/v1/sandbox/execute", timeout=30,
                   headers={"Authorization": f"Bearer {key}", "Prefer": "respond-async"},
                   json={"code": "sleep 300", "language": "bash", "thread_id": "b"})
    assert r.status_code == 202
    wait_for(lambda: httpx.get(f"{own_server.url}/v1/executions/{r.json()['trace_id']}",
                               headers={"Authorization": f"Bearer {key}"}
                               ).json()["status"] == "running", what="the sleep to run")
    own_server.stop()
    wait_for(lambda: not box_processes(own_server.data_dir), 10,
             what="every box process to end with the server")


def test_kill_9_then_restart_ends_runs_as_failed(own_server: LiveServer) -> None:
    key = own_server.add_user()
    headers = {"Authorization": f"Bearer {key}"}
    r = httpx.post(own_server.url + "/v1/sandbox/execute", timeout=30,
                   headers={**headers, "Prefer": "respond-async"},
                   json={"code": "touch cut.txt; sleep 300", "language": "bash",
                         "thread_id": "cut"})
    trace = r.json()["trace_id"]

    def running() -> bool:
        st = httpx.get(f"{own_server.url}/v1/executions/{trace}", headers=headers).json()
        return st["status"] == "running" and bool(
            workspaces_holding(own_server.data_dir, "cut.txt"))

    wait_for(running, what="the execution to run")
    own_server.kill()
    # --die-with-parent: the sandbox goes with the server, even on SIGKILL.
    wait_for(lambda: not box_processes(own_server.data_dir), 10, what="the box to die")
    own_server.start()
    st = httpx.get(f"{own_server.url}/v1/executions/{trace}", headers=headers).json()
    assert st["status"] == "failed" and st["error"] == "interrupted"
    # The thread is usable again, with its files.
    assert execute(own_server, key, "echo again", thread_id="cut")["stdout"] == "again\n"


def test_fresh_execution_leaves_no_box_behind(server: LiveServer, api_key: str) -> None:
    execute(server, api_key, "echo temp > f.txt")
    wait_for(lambda: not workspaces_holding(server.data_dir, "f.txt"),
             what="the one-off box's files to be removed")


def wakeups(pid: int) -> int:
    """How often the process's threads have gone to sleep and woken since they began."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/status") as f:
            total += sum(int(line.split()[1]) for line in f
                         if line.startswith("voluntary_ctxt_switches"))
    return total


def test_an_idle_box_does_not_wake_up(server: LiveServer, api_key: str) -> None:
    """Hundreds of idle boxes must cost the host nothing: boxd sleeps until asked."""
    execute(server, api_key, "echo hi > quiet.txt", thread_id="quiet")
    box_id = box_holding(server.data_dir, "quiet.txt")
    [bwrap] = host_pids(f"{server.data_dir / 'boxes' / box_id}/workspace ")
    [boxd] = [int(p) for p in Path(f"/proc/{bwrap}/task/{bwrap}/children").read_text().split()]

    def settled() -> int | None:
        # The execute's own threads may still be winding down on a loaded machine (two
        # test files run at once): measure from when boxd has gone quiet.
        first = wakeups(boxd)
        time.sleep(0.3)
        return first if wakeups(boxd) == first else None

    before = wait_for(settled, 10, 0, "boxd to go quiet after the execute")
    time.sleep(2.5)  # the interval measured, not a wait for something to happen
    assert wakeups(boxd) == before, "an idle box's boxd woke up"
