"""A hard disk quota per box: a workload that fills its disk gets ENOSPC, the host's disk
does not fill, the server keeps answering, and the result says disk_quota_exceeded."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, wait_for
from tests.security.helpers import box_launcher, client, execute, live_server

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop mounts need a root server")

QUOTA_MB = 32
FILL = "dd if=/dev/zero of=/workspace/big bs=1M count=200 2>&1; echo dd-exit=$?"


def mounts_under(path: Path, table: str = "/proc/self/mounts") -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open(table) as f:
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
        # Stopped, the box's disk is mounted nowhere: its use is the image's allocation.
        srv.stop()
        srv.start()
        asleep = http.get(f"/v1/sessions/{s['id']}").json()
        assert asleep["status"] == "sleeping", asleep
        assert asleep["disk"]["used_bytes"] > 0.8 * asleep["disk"]["limit_bytes"]


def loops_backing(path: Path) -> list[str]:
    """Loop devices attached to a file under ``path`` (a box's disk image)."""
    prefix, found = str(path.resolve()) + "/", []
    for dev in Path("/sys/block").glob("loop*"):
        with contextlib.suppress(OSError):
            if (dev / "loop" / "backing_file").read_text().startswith(prefix):
                found.append(dev.name)
    return found


def test_box_disks_stay_out_of_the_hosts_mount_table(data_dir: Path) -> None:
    """Every new mount namespace (each box start) copies the host's whole mount table, so
    a box's disk is mounted only in a namespace of the box's own: with several boxes
    running the host's table holds none of them, a crash leaves nothing behind, and the
    files are there again on the next start."""
    srv = LiveServer(data_dir, env={"SOPHON_BOX_POOL_SIZE": "0"}).start()
    threads = ("ns-a", "ns-b", "ns-c")
    try:
        with client(srv, srv.add_user()) as http:
            for t in threads:
                assert execute(http, f"echo {t} > /workspace/x",
                               thread_id=t)["exit_code"] == 0
            boxes = sorted((data_dir / "boxes").iterdir())
            assert len(boxes) == 3
            assert mounts_under(data_dir) == []
            # Control: each box's disk is mounted, in its launcher's namespace, and that
            # namespace holds no other box's disk.
            for box in boxes:
                pid = box_launcher(box)
                assert pid is not None
                assert mounts_under(data_dir, f"/proc/{pid}/mounts") == [str(box / "disk")]
            # One loop device per box (and the spare disks', attached ahead).
            assert len(loops_backing(data_dir / "boxes")) == 3

            assert srv.proc is not None
            os.kill(srv.proc.pid, signal.SIGKILL)  # a crash: nobody unmounts anything
            srv.proc.wait(10)
            wait_for(lambda: not loops_backing(data_dir), 15, 0.05,
                     "the crashed boxes' disks to be let go")
            assert mounts_under(data_dir) == []

            srv.start()
            for t in threads:  # the files survived, and a box started again finds them
                assert execute(http, "cat /workspace/x", thread_id=t)["stdout"] == f"{t}\n"
            assert mounts_under(data_dir) == []
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(15)
        assert mounts_under(data_dir) == []
        wait_for(lambda: not loops_backing(data_dir), 15, 0.05,
                 "the stopped boxes' disks to be let go")
    finally:
        srv.stop()


def test_an_older_servers_host_mount_is_cleaned_up_at_start(data_dir: Path) -> None:
    """A disk an older server left mounted on the host (it crashed) is unmounted at
    start-up, and the box then runs over the same files."""
    srv = LiveServer(data_dir, env={"SOPHON_BOX_POOL_SIZE": "0"}).start()
    try:
        with client(srv, srv.add_user()) as http:
            assert execute(http, "echo old > /workspace/x", thread_id="o")["exit_code"] == 0
            srv.stop()
            wait_for(lambda: not loops_backing(data_dir), 15, 0.05, "the disk to be let go")
            [box] = list((data_dir / "boxes").iterdir())
            subprocess.run(["mount", "-o", "loop", str(box / "disk.img"), str(box / "disk")],
                           check=True)
            assert mounts_under(data_dir) == [str(box / "disk")]  # the control
            srv.start()
            assert mounts_under(data_dir) == []
            # The kernel lets the unmounted image's loop device go a moment later (a box
            # of another test's server started meanwhile may hold a copy of the mount for
            # as long as it lives); until the disk can be used the server answers its
            # documented 503, then the box runs over the same files.
            def ran() -> dict[str, Any] | None:
                r = http.post("/v1/sandbox/execute", json={
                    "code": "cat /workspace/x", "language": "bash", "thread_id": "o"})
                if r.status_code == 503:
                    assert "still in use" in r.text, r.text
                    return None
                assert r.status_code == 200, r.text
                return dict(r.json())
            result = wait_for(ran, 30, 0.2, "the box to run over its files")
            assert result["stdout"] == "old\n", result  # type: ignore[index]
    finally:
        srv.stop()


def test_deleted_files_give_their_space_back_to_the_host() -> None:
    with live_server({"SOPHON_BOX_POOL_SIZE": "0"}) as srv, \
            client(srv, srv.add_user()) as http:
        assert execute(http, "head -c 100M /dev/urandom > /workspace/big && sync",
                       thread_id="trim", timeout=60)["exit_code"] == 0
        [image] = list((srv.data_dir / "boxes").glob("*/disk.img"))
        grown = image.stat().st_blocks * 512
        assert grown >= 100 * 2**20  # the control: the writes landed in the image
        assert execute(http, "rm /workspace/big && sync", thread_id="trim")["exit_code"] == 0
        wait_for(lambda: image.stat().st_blocks * 512 < grown - 90 * 2**20, 30, 0.1,
                 "the deleted file's blocks to be punched out of the image")
