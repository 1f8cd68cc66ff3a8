"""A user cannot ask for more disk than the admin allows: a session's ``disk_mb`` and a
volume's ``size_mb`` above SOPHON_BOX_DISK_MAX_MB are a 400 that names the ceiling, and
nothing is made (a 1 TiB request once made a 1 TiB image, and 3 GB were written to it)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from tests.security.helpers import client, live_server

TIB_MB = 1024 * 1024


def disk_images(data_dir: Path) -> list[str]:
    return sorted(str(p) for p in data_dir.glob("*/*/disk.img"))


def test_disk_mb_and_size_mb_above_the_ceiling_are_refused() -> None:
    env = {"SOPHON_BOX_DISK_MB": "32", "SOPHON_BOX_DISK_MAX_MB": "64",
           "SOPHON_BOX_POOL_SIZE": "0"}
    with live_server(env) as srv, client(srv, srv.add_user()) as http:
        for mb in (TIB_MB, 65):
            r = http.post("/v1/sessions", json={"name": "big", "disk_mb": mb})
            assert r.status_code == 400, r.text
            assert r.json()["error"] == "invalid_request"
            assert "64 MiB" in r.json()["message"]
            assert "SOPHON_BOX_DISK_MAX_MB" in r.json()["message"]
            v = http.post("/v1/volumes", json={"name": "big", "size_mb": mb})
            assert v.status_code == 400, v.text
            assert "64 MiB" in v.json()["message"]
        assert http.get("/v1/sessions").json()["sessions"] == []
        assert http.get("/v1/volumes").json()["volumes"] == []
        assert disk_images(srv.data_dir) == []

        # Control: at the ceiling, both are made, with that size.
        r = http.post("/v1/sessions", json={"name": "ok", "disk_mb": 64})
        assert r.status_code == 201, r.text
        limit = r.json()["disk"]["limit_bytes"]
        if os.geteuid() == 0:  # a disk image (root servers): its size is the quota
            assert 32 * 2**20 < limit <= 64 * 2**20, limit
        v = http.post("/v1/volumes", json={"name": "ok", "size_mb": 64})
        assert v.status_code == 201 and v.json()["size_mb"] == 64, v.text
        # And without a size, the default.
        d = http.post("/v1/volumes", json={"name": "default"})
        assert d.status_code == 201 and d.json()["size_mb"] == 32, d.text


def test_the_ceiling_is_the_default_size_unless_set(http: httpx.Client) -> None:
    r = http.post("/v1/sessions", json={"name": "big", "disk_mb": 2049})
    assert r.status_code == 400, r.text
    assert "2048 MiB" in r.json()["message"]
    # Control: the default itself may be asked for.
    assert http.post("/v1/sessions", json={"name": "ok", "disk_mb": 2048}).status_code == 201
