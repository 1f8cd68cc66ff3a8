"""A hard disk quota per box: a workload that fills its disk gets ENOSPC, the host's disk
does not fill, the server keeps answering, and the result says disk_quota_exceeded."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer
from tests.security.helpers import client, execute, live_server

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop mounts need a root server")

QUOTA_MB = 32
FILL = "dd if=/dev/zero of=/workspace/big bs=1M count=200 2>&1; echo dd-exit=$?"


def mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(prefix)]


def used_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def test_a_thread_that_fills_its_disk_gets_enospc_and_nothing_else_suffers() -> None:
    env = {"SOPHON_BOX_DISK_MB": str(QUOTA_MB), "SOPHON_BOX_POOL_SIZE": "0"}
    with live_server(env) as srv, client(srv, srv.add_user()) as http:
        assert execute(http, "echo kept > /workspace/before.txt; echo h > ~/h.txt",
                       thread_id="fill")["exit_code"] == 0
        host_before = used_bytes(srv.data_dir)

        full = execute(http, FILL + "; exit 1", thread_id="fill")
        assert "No space left on device" in full["stdout"], full
        assert full["error"] == "disk_quota_exceeded" and not full["success"]
        # The host's filesystem grew by no more than the quota (plus a little slack for
        # the database and logs), and the server still answers.
        assert used_bytes(srv.data_dir) - host_before < (QUOTA_MB + 8) * 2**20
        health = httpx.get(srv.url + "/healthz")
        assert health.status_code == 200
        assert health.json()["box_disk"] == f"ext4 image per box, {QUOTA_MB} MiB by default"
        [image] = list((srv.data_dir / "boxes").glob("*/disk.img"))
        assert image.stat().st_blocks * 512 <= (QUOTA_MB + 1) * 2**20

        # Files written before are intact; freeing space makes the box usable again,
        # and a failure that is not about disk is not reported as one.
        again = execute(http, "cat /workspace/before.txt ~/h.txt; rm /workspace/big; "
                              "echo more > /workspace/after.txt && cat /workspace/after.txt",
                        thread_id="fill")
        assert again["stdout"] == "kept\nh\nmore\n" and again["exit_code"] == 0
        assert execute(http, "exit 3", thread_id="fill")["error"] is None
        # Control: the same workload on a box whose disk has room succeeds.
        assert execute(http, "dd if=/dev/zero of=/workspace/s bs=1M count=4 2>/dev/null",
                       thread_id="other")["exit_code"] == 0


def test_a_session_has_its_own_quota_and_shows_its_disk_use() -> None:
    with live_server({"SOPHON_BOX_POOL_SIZE": "0"}) as srv, \
            client(srv, srv.add_user()) as http:
        assert http.post("/v1/sessions", json={"name": "tiny", "disk_mb": 8}).status_code == 400
        s = http.post("/v1/sessions", json={"name": "q", "disk_mb": 24}).json()
        disk = s["disk"]
        assert 16 * 2**20 < disk["limit_bytes"] <= 24 * 2**20
        assert 0 < disk["used_bytes"] < 4 * 2**20
        r = http.post(f"/v1/sessions/{s['id']}/exec", json={"command": FILL})
        lines = [json.loads(line) for line in r.content.splitlines()]
        out = "".join(e.get("data", "") for e in lines)
        assert "No space left on device" in out and "dd-exit=1" in out
        r = http.post(f"/v1/sessions/{s['id']}/exec", json={"command": FILL + "; exit 1"})
        end = json.loads(r.content.splitlines()[-1])
        assert end["type"] == "exec_end" and end["error"] == "disk_quota_exceeded"
        disk = http.get(f"/v1/sessions/{s['id']}").json()["disk"]
        assert disk["used_bytes"] > 0.9 * disk["limit_bytes"]


def test_disks_are_unmounted_on_stop_and_after_a_crash(data_dir: Path) -> None:
    srv = LiveServer(data_dir, env={"SOPHON_BOX_POOL_SIZE": "0"}).start()
    try:
        with client(srv, srv.add_user()) as http:
            assert execute(http, "echo x > /workspace/x", thread_id="t")["exit_code"] == 0
            assert len(mounts_under(data_dir)) == 1
            assert srv.proc is not None
            os.kill(srv.proc.pid, signal.SIGKILL)  # a crash: nobody unmounts
            srv.proc.wait(10)
            assert len(mounts_under(data_dir)) == 1
            srv.start()
            assert mounts_under(data_dir) == []  # the new server cleaned up
            assert execute(http, "cat /workspace/x", thread_id="t")["stdout"] == "x\n"
            assert len(mounts_under(data_dir)) == 1
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)  # not srv.stop(), which unmounts leftovers
        srv.proc.wait(15)
        assert mounts_under(data_dir) == []  # a clean stop leaves nothing mounted
    finally:
        srv.stop()
