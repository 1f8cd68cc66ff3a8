"""boxd killed under a running request: the request ends at once with a clear error,
and the thread's next request gets a fresh box over the same files."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from sophon.box.bwrap import BOXD_PATH
from tests.conftest import LiveServer
from tests.security.helpers import (
    execute,
    execution,
    host_alive,
    thread_name,
    unique_sleep,
    wait_gone,
    wait_host_pids,
)


def cmdline(pid: int) -> list[bytes]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().split(b"\0")


def parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def boxd_above(pid: int) -> int:
    """The boxd (the box's pid 1, seen from the host) that ``pid`` runs under."""
    while pid > 1:
        argv = cmdline(pid)
        if BOXD_PATH.encode() in argv and b"bwrap" not in argv[0]:
            return pid
        pid = parent(pid)
    raise AssertionError("no boxd above the workload")


def test_killing_boxd_ends_the_request_and_the_thread_gets_a_fresh_box(
    server: LiveServer, http: httpx.Client
) -> None:
    thread = thread_name("boxd-death")
    first = execute(http, "echo kept > /workspace/kept.txt; echo gone > /tmp/box-marker",
                    thread_id=thread)
    assert first["success"], first

    marker = unique_sleep()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(http.post, "/v1/sandbox/execute", json={
            "code": f"echo started; sleep {marker}", "language": "bash", "timeout": 120,
            "thread_id": thread})
        [sleeper] = wait_host_pids(f"sleep {marker}")
        boxd = boxd_above(sleeper)
        # Control: the request is running, and stays so while boxd lives.
        assert not pending.done()
        os.kill(boxd, signal.SIGKILL)
        killed_at = time.monotonic()
        resp = pending.result(timeout=30)
        took = time.monotonic() - killed_at
    # A client that tries again at once (while the dead box is still being cleaned up)
    # gets a new box (its own /tmp, a new boxd) over the same files.
    again = execute(http, "cat /workspace/kept.txt; cat /tmp/box-marker 2>&1 || true",
                    thread_id=thread)

    assert took < 5, f"the request took {took:.1f} s to end after boxd died"
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()
    assert result["success"] is False and result["exit_code"] == -1, result
    assert result["error"] == "sandbox_error", result
    assert "the sandbox stopped before the command finished" in result["stderr"], result
    # The whole box died with its pid 1: nothing of it runs on.
    wait_gone(f"sleep {marker}")
    assert not host_alive(boxd)

    # The execution's record says the same.
    status = execution(http, resp.headers["X-Trace-Id"])
    assert status["status"] == "failed" and status["error"] == "sandbox_error", status

    assert again["success"], again
    lines = again["stdout"].splitlines()
    assert lines[0] == "kept", again
    assert "No such file" in lines[1], again  # the old box's /tmp went with it

