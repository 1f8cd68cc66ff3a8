"""Resource exhaustion: limits hold per box, and the server keeps serving everyone else."""

from __future__ import annotations

import contextlib
import errno
import json
from pathlib import Path

import httpx

from sophon.config import BoxLimits
from tests.conftest import LiveServer, wait_for
from tests.security.conftest import Run
from tests.security.helpers import (
    assert_healthy,
    box_cgroups,
    execution,
    start_async,
    thread_name,
    wait_finished,
)

LIMITS = BoxLimits()


def child_cgroup_where(parent: Path, counter: str) -> Path | None:
    """The box cgroup under ``parent`` whose ``counter`` file reads non-zero."""
    if not parent.is_dir():
        return None
    for d in parent.iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            if d.is_dir() and int((d / counter).read_text().split()[-1]) > 0:
                return d
    return None


def test_fork_bomb_is_contained(server: LiveServer, http: httpx.Client) -> None:
    # The classic bomb in a background subshell, then a busy loop (no fork needed) that keeps
    # the exec running. The exec's own shell forks only once, before the bomb: a fork it tried
    # while the bomb held every pid would fail and end it early.
    trace = start_async(http, "( :(){ :|:& };: ) 2>/dev/null &\nwhile :; do :; done", timeout=5)
    pids_parent = box_cgroups(server, "pids")
    # pids.events counts forks refused at pids.max: the bomb has met the limit.
    cg = wait_for(lambda: child_cgroup_where(pids_parent, "pids.events"), 10, 0.02,
                  "the fork bomb to hit the pids limit")
    assert isinstance(cg, Path)
    assert int((cg / "pids.max").read_text()) == LIMITS.pids
    assert int((cg / "pids.current").read_text()) <= LIMITS.pids
    # While it runs, the server serves the API and other threads.
    assert execution(http, trace)["status"] == "running"
    assert_healthy(server, http)
    assert execution(http, trace)["status"] == "running"
    st = wait_finished(http, trace, 30)
    assert st["status"] == "timeout", st
    # The fresh box is gone, and everything in it.
    wait_for(lambda: not cg.exists(), 15, 0.05, "the fork bomb's cgroup to be removed")
    assert_healthy(server, http)


def test_memory_bomb_is_oom_killed(server: LiveServer, http: httpx.Client, run: Run) -> None:
    thread = thread_name("membomb")
    res = run("""
a = bytearray(2 << 30)
for i in range(0, len(a), 4096):
    a[i] = 1
print("survived")
""", language="python", timeout=60, thread_id=thread)
    assert res["error"] == "memory_limit_exceeded", res
    assert not res["success"] and "survived" not in res["stdout"], res
    # The cgroup did it: the box's memory limit was reached and never exceeded.
    cg = child_cgroup_where(box_cgroups(server, "memory"), "memory.oom_control")
    assert cg is not None
    limit = LIMITS.memory_mb * 2**20
    assert int((cg / "memory.limit_in_bytes").read_text()) == limit
    assert int((cg / "memory.max_usage_in_bytes").read_text()) <= limit
    # The server is fine, and so is the thread's box.
    assert_healthy(server, http)
    after = run("print('thread still works')", language="python", thread_id=thread)
    assert after["stdout"] == "thread still works\n", after


def test_filling_tmp_stops_at_its_size(server: LiveServer, http: httpx.Client, run: Run) -> None:
    thread = thread_name("fill-tmp")
    res = run("""
import json, os
written, err = 0, None
chunk = b"x" * (1 << 20)
fd = os.open("/tmp/fill", os.O_WRONLY | os.O_CREAT)
try:
    while written < (1 << 30):
        written += os.write(fd, chunk)
except OSError as exc:
    err = exc.errno
os.close(fd)
os.unlink("/tmp/fill")
with open("/tmp/after", "w") as f:   # space comes back
    f.write("ok")
print(json.dumps({"written": written, "errno": err}))
""", language="python", timeout=60, thread_id=thread)
    assert res["exit_code"] == 0, res
    out = json.loads(res["stdout"])
    assert out["errno"] == errno.ENOSPC, out
    size = LIMITS.tmp_mb * 2**20
    assert size // 2 < out["written"] <= size, out  # control: it did write up to the limit
    assert_healthy(server, http)
