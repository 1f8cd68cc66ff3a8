"""What a box gets: its base's defaults (SOPHON_BASE_LIMITS over the built-in ones),
what a session asks for within the admin's ceilings, enforced by the box's cgroup; and
the memory budget counting each box's own limit."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import LiveServer, make_data_dir
from tests.integration.session_support import user

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="per-box memory and process limits need a root server "
                              "(cgroups)")

ALLOCATE = ("python3 -c 'b = bytearray({mb} * 2**20); b[::4096] = b\"x\" * len(b[::4096]); "
            "print(\"held\")'")


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    srv = LiveServer(make_data_dir(), env={
        "SOPHON_BASE_LIMITS": json.dumps({"generic": {"memory_mb": 200, "pids": 64}}),
        "SOPHON_BOX_MEMORY_MAX_MB": "1024", "SOPHON_BOX_CPUS_MAX": "2"}).start()
    yield srv
    srv.stop()
    shutil.rmtree(srv.data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with user(server) as client:
        yield client


def new_session(http: httpx.Client, base: str, **extra: object) -> httpx.Response:
    return http.post("/v1/sessions", json={"name": base, "base": base,
                                           "starter": {"type": "empty"}, **extra})


def run(http: httpx.Client, sid: str, command: str) -> tuple[str, dict]:
    r = http.post(f"/v1/sessions/{sid}/exec", json={"command": command})
    assert r.status_code == 200, r.text
    events = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    out = "".join(e["data"] for e in events if e["type"] == "exec_output")
    return out, events[-1]


def test_a_session_gets_its_bases_defaults_enforced(http: httpx.Client) -> None:
    r = new_session(http, "generic")
    assert r.status_code == 201, r.text
    assert r.json()["limits"] == {"memory_mb": 200, "cpus": 1.0, "pids": 64}
    sid = r.json()["id"]
    _, end = run(http, sid, ALLOCATE.format(mb=400))
    assert end["error"] == "memory_limit_exceeded", end
    out, _ = run(http, sid, "for i in $(seq 100); do sleep 5 & done 2>&1 | tail -1; "
                            "kill $(jobs -p) 2>/dev/null; true")
    assert "bash: fork: " in out, out  # the 65th process was refused
    # The built-in python base's own default, which SOPHON_BASE_LIMITS leaves as it is.
    python = new_session(http, "python")
    assert python.json()["limits"]["memory_mb"] == 1024, python.text
    images = {i["name"]: i for i in http.get("/v1/images").json()["images"]}
    if images:  # (a server without images lists none)
        assert images["generic"]["limits"]["memory_mb"] == 200
        assert images["python"]["limits"]["memory_mb"] == 1024


def test_a_session_asks_for_more_within_the_ceiling(http: httpx.Client) -> None:
    r = new_session(http, "generic", limits={"memory_mb": 768, "cpus": 2})
    assert r.status_code == 201, r.text
    assert r.json()["limits"] == {"memory_mb": 768, "cpus": 2.0, "pids": 64}
    out, end = run(http, r.json()["id"], ALLOCATE.format(mb=400))
    assert out == "held\n" and end["exit_code"] == 0, (out, end)
    for limits, setting in (({"memory_mb": 2048}, "SOPHON_BOX_MEMORY_MAX_MB"),
                            ({"cpus": 3}, "SOPHON_BOX_CPUS_MAX"),
                            ({"pids": 100000}, "SOPHON_BOX_PIDS_MAX")):
        refused = new_session(http, "generic", limits=limits)
        assert refused.status_code == 400, refused.text
        assert setting in refused.json()["message"], refused.text
    for bad in ({"memory_mb": "512"}, {"swap_mb": 1}, {"cpus": 0}):
        refused = new_session(http, "generic", limits=bad)
        assert refused.status_code == 400, (bad, refused.text)


def test_the_memory_budget_counts_each_boxs_own_limit() -> None:
    srv = LiveServer(make_data_dir(), env={
        "SOPHON_BOX_MEMORY_BUDGET_MB": "1024", "SOPHON_BOX_POOL_SIZE": "0",
        "SOPHON_BOX_MEMORY_MAX_MB": "1024"}).start()
    try:
        with user(srv) as http:
            small = {"code": "echo ok", "language": "bash"}
            assert http.post("/v1/sandbox/execute", json=small).json()["stdout"] == "ok\n"
            big = new_session(http, "generic", limits={"memory_mb": 768})
            assert big.status_code == 201, big.text
            # 768 MiB of 1024 are held: a box of the default 512 MiB does not fit.
            refused = http.post("/v1/sandbox/execute", json=small)
            assert refused.status_code == 503, refused.text
            assert "SOPHON_BOX_MEMORY_BUDGET_MB" in refused.json()["message"]
            assert "768 MiB" in refused.json()["message"], refused.text
            assert http.delete(f"/v1/sessions/{big.json()['id']}").status_code == 204
            assert http.post("/v1/sandbox/execute", json=small).json()["stdout"] == "ok\n"
    finally:
        srv.stop()
        shutil.rmtree(srv.data_dir, ignore_errors=True)
