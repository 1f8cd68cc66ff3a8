"""kill -9 of the server in the middle of work: an execution on a thread, a one-off
execution streaming its output, a session exec streaming its output, and a thread's
background process.

tests/integration/test_box_lifecycle.py and test_session_events.py cover one of each by
the data directory's name; here all at once, checked by what cannot hide: the box uids
(the server gets a uid range no other server on this host uses, so every process in it
is one of its boxes) and the box cgroups. After the restart nothing of the old boxes
runs, what was cut off says so, and new work runs.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LiveServer, wait_for
from tests.security.helpers import (
    box_cgroups,
    box_files,
    client,
    execute,
    execution,
    live_server,
    start_async,
    thread_name,
    unique_sleep,
)

UID_COUNT = 64


@pytest.fixture
def srv() -> Iterator[LiveServer]:
    # A uid range of its own, far from the default one other servers use.
    first = 300_000 + secrets.randbelow(5_000) * 100
    with live_server({"SOPHON_BOX_UID_FIRST": str(first),
                      "SOPHON_BOX_UID_COUNT": str(UID_COUNT)}) as s:
        yield s


def uid_range(srv: LiveServer) -> range:
    first = int(srv.env["SOPHON_BOX_UID_FIRST"])
    return range(first, first + UID_COUNT)


def processes_in(uids: range) -> list[str]:
    """'pid: command' of every live host process whose real or effective uid is in
    the range."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry.name}/status").read_text()
            cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        real, effective = (int(u) for u in fields["Uid"].split()[:2])
        if fields["State"].split()[0] != "Z" and (real in uids or effective in uids):
            argv = cmd.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {argv}")
    return found


def children(d: Path) -> set[str]:
    try:
        return {c.name for c in d.iterdir() if c.is_dir()}
    except FileNotFoundError:
        return set()


def read_until(lines: Iterator[str], needle: str) -> list[str]:
    got = []
    for line in lines:
        got.append(line)
        if needle in line:
            return got
    raise AssertionError(f"the stream ended before {needle!r}: {got}")


def test_nothing_of_a_killed_server_runs_on_and_new_work_does(srv: LiveServer) -> None:
    key = srv.add_user()
    marker_run, marker_bg = unique_sleep(), unique_sleep()
    with client(srv, key) as http:
        r = http.post("/v1/sessions", json={"name": "cut", "starter": {"type": "empty"}})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        bg_thread, run_thread = thread_name("bg"), thread_name("run")
        res = execute(http, f"setsid nohup sleep {marker_bg} >/dev/null 2>&1 & echo ok",
                      thread_id=bg_thread)
        assert res["stdout"] == "ok\n", res
        trace = start_async(http, f"echo started; sleep {marker_run}", thread_id=run_thread,
                            timeout=300)
        assert wait_for(lambda: execution(http, trace)["status"] == "running", 30)
        one_off = {"code": "touch /workspace/one-off-mark; for i in $(seq 1 600); do "
                           "echo tick-$i; sleep 0.1; done", "language": "bash", "timeout": 300}
        session_cmd = {"command": "for i in $(seq 1 600); do echo line-$i; sleep 0.1; done",
                       "timeout": 300}
        cgroups = box_cgroups(srv, "pids")
        with http.stream("POST", "/v1/sandbox/execute", json=one_off,
                         headers={"Accept": "application/x-ndjson"}) as streamed, \
                http.stream("POST", f"/v1/sessions/{sid}/exec", json=session_cmd) as sexec:
            assert streamed.status_code == sexec.status_code == 200
            streamed_trace = streamed.headers["X-Trace-Id"]
            read_until(streamed.iter_lines(), "tick-3")
            exec_id = json.loads(read_until(sexec.iter_lines(), "line-3")[0])["exec_id"]
            # Control: the probes see the boxes: processes in the uid range, box cgroups.
            running = processes_in(uid_range(srv))
            assert any(f"sleep {marker_bg}" in p for p in running), running
            assert any(f"sleep {marker_run}" in p for p in running), running
            assert len(running) >= 8, running
            old_cgroups = children(cgroups)
            assert len(old_cgroups) >= 4, old_cgroups  # 3 threads/one-offs, a session, pool
            srv.kill()

        # Nothing in the boxes' uid range survives the server (--die-with-parent).
        wait_for(lambda: not processes_in(uid_range(srv)), 20, 0.05,
                 "every box process to end with the server")
        srv.start()
        # The old boxes' cgroups are removed at start.
        wait_for(lambda: not old_cgroups & children(cgroups), 20, 0.1,
                 "the old boxes' cgroups to be removed")
        # What was cut off says so (the streamed one-off: see the next test).
        st = execution(http, trace)
        assert (st["status"], st["error"]) == ("failed", "interrupted"), st
        assert streamed_trace != trace
        events = http.get(f"/v1/sessions/{sid}/events",
                          headers={"Accept": "application/json"}).json()["events"]
        ends = [e for e in events if e["type"] == "exec_end" and e.get("exec_id") == exec_id]
        assert [e["error"] for e in ends] == ["interrupted"], ends
        # New work runs: on both threads, a one-off, and in the session.
        assert not any(marker_bg in p for p in processes_in(uid_range(srv)))
        res = execute(http, f"pgrep -fc 'sleep {marker_bg}'; echo again", thread_id=bg_thread)
        assert res["stdout"] == "0\nagain\n", res
        assert execute(http, "echo again", thread_id=run_thread)["stdout"] == "again\n"
        assert execute(http, "echo one-off")["stdout"] == "one-off\n"
        r = http.post(f"/v1/sessions/{sid}/exec", json={"command": "echo after"})
        assert r.status_code == 200 and '"data":"after\\n"' in r.text.replace(" ", ""), r.text


def test_a_streamed_execution_cut_off_by_kill_9_is_on_record_as_interrupted(
    srv: LiveServer,
) -> None:
    with client(srv, srv.add_user()) as http:
        # Control: an async one, cut off the same way, is on record as interrupted.
        trace = start_async(http, "sleep 300", timeout=300)
        assert wait_for(lambda: execution(http, trace)["status"] == "running", 30)
        body = {"code": "for i in $(seq 1 600); do echo tick-$i; sleep 0.1; done",
                "language": "bash", "timeout": 300}
        with http.stream("POST", "/v1/sandbox/execute", json=body,
                         headers={"Accept": "application/x-ndjson"}) as streamed:
            assert streamed.status_code == 200
            streamed_trace = streamed.headers["X-Trace-Id"]
            read_until(streamed.iter_lines(), "tick-3")
            assert http.get(f"/v1/executions/{streamed_trace}").json()["status"] == "running"
            srv.kill()
        srv.start()
        st = execution(http, trace)
        assert (st["status"], st["error"]) == ("failed", "interrupted"), st
        r = http.get(f"/v1/executions/{streamed_trace}")
        assert r.status_code == 200, r.text
        assert (r.json()["status"], r.json()["error"]) == ("failed", "interrupted"), r.text


def test_a_killed_servers_one_off_and_pool_boxes_are_removed_at_start(
    srv: LiveServer,
) -> None:
    """A one-off execution's box (and the pool's) is deleted when the answer is sent; a
    kill -9 before that leaves its directory, disk image and uid, which nothing owns."""
    key = srv.add_user()
    boxes = srv.data_dir / "boxes"
    with client(srv, key) as http:
        trace = start_async(http, "touch /workspace/one-off-mark; sleep 300", timeout=300)
        assert wait_for(lambda: execution(http, trace)["status"] == "running", 30)
        box = wait_for(lambda: next((d for d in boxes.iterdir() if d.name.startswith("x")
                                     and _marked(d)), None), 20, 0.05, "the one-off's box")
        assert isinstance(box, Path)
        pool_before = {d.name for d in boxes.iterdir()} - {box.name}
        srv.kill()
        srv.start()
        assert execution(http, trace)["error"] == "interrupted"
        # Control: a one-off box is removed after its answer on a running server.
        assert execute(http, "echo done")["stdout"] == "done\n"
        wait_for(lambda: not box.exists(), 30, 0.1, "the killed one-off's box to be removed")
        wait_for(lambda: not pool_before & {d.name for d in boxes.iterdir()}, 30, 0.1,
                 "the killed server's pool boxes to be removed")


def _marked(box: Path) -> bool:
    """The box's workspace has the mark (seen through its launcher's mount namespace)."""
    return (box_files(box) / "workspace" / "one-off-mark").exists()
