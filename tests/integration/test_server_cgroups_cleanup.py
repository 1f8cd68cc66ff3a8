"""A server that stops cleanly takes its cgroups with it: runs on fresh data
directories must not pile up ``sophon-<hash>`` groups under the host's hierarchies."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from sophon.box import cgroups
from sophon.box.cgroups import CgroupTree
from sophon.box.manager import cgroup_name
from tests.conftest import LiveServer, make_data_dir


def cgroup_mounts() -> list[Path]:
    mounts = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] in ("cgroup", "cgroup2"):
            mounts.append(Path(parts[1]))
    return mounts


def dirs_named(name: str) -> list[Path]:
    """Every directory called ``name`` anywhere under any cgroup mount."""
    found = []
    for mount in cgroup_mounts():
        for dirpath, dirnames, _ in os.walk(mount):
            found += [Path(dirpath) / d for d in dirnames if d == name]
    return found


@pytest.mark.skipif(os.geteuid() != 0, reason="cgroups are managed only by a root server")
@pytest.mark.parametrize("pool", ["40", "2", "0"], ids=["pool-filling", "pool", "no-pool"])
def test_a_cleanly_stopped_server_leaves_no_cgroups(pool: str) -> None:
    """With a pool of 40 the server is still starting pool boxes when it is stopped:
    the start it cuts short leaves a box cgroup that no box owns."""
    data_dir = make_data_dir()
    name = cgroup_name(data_dir)
    srv = LiveServer(data_dir, env={"SOPHON_BOX_POOL_SIZE": pool})
    try:
        srv.start()
        key = srv.add_user()
        with httpx.Client(base_url=srv.url, timeout=60,
                          headers={"Authorization": f"Bearer {key}"}) as http:
            # A thread's box stays running; a one-off box is deleted after its call,
            # and the pool (if any) starts another in the background meanwhile.
            for body in ({"code": "echo kept", "thread_id": "t"}, {"code": "echo once"}):
                r = http.post("/v1/sandbox/execute", json={**body, "language": "bash"})
                assert r.status_code == 200 and r.json()["success"], r.text
        # Control: the probe finds the server's groups (one per v1 hierarchy) while it runs.
        assert dirs_named(name), f"no {name} cgroup found while the server runs"
        srv.stop()
        assert srv.proc is not None and srv.proc.returncode is not None
        assert dirs_named(name) == []
    finally:
        srv.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def fake_v2_root(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory that looks like the server's own cgroup v2 (files, no kernel)."""
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    monkeypatch.setattr(cgroups, "CGROUP_ROOT", root)
    monkeypatch.setattr(cgroups, "_own_cgroups", lambda: {"": "/"})
    return root


def test_v2_setup_turns_on_the_controllers_in_the_servers_cgroup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = fake_v2_root(tmp_path, monkeypatch)
    tree = CgroupTree.detect("sophon-test")
    assert tree is not None and tree.version == 2
    assert tree.parents == [root / "sophon-test"]
    # Both levels delegate memory, pids and cpu (the kernel's file is cgroup.subtree_control).
    for d in (root, root / "sophon-test"):
        assert (d / "cgroup.subtree_control").read_text().split() == [
            "+cpu", "+memory", "+pids"], d


def test_a_setup_that_fails_half_way_leaves_no_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = fake_v2_root(tmp_path, monkeypatch)
    (root / "cgroup.subtree_control").unlink()
    (root / "cgroup.subtree_control").mkdir()  # writing the controllers fails
    assert CgroupTree.detect("sophon-test") is None
    assert not (root / "sophon-test").exists()
