"""GET /v1/capabilities: what this server offers, and why not what it does not."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx

from tests.conftest import LiveServer


def test_the_server_says_which_bases_runtimes_and_models_it_offers(
        server: LiveServer, api_key: str) -> None:
    assert httpx.get(server.url + "/v1/capabilities").status_code == 401
    caps = httpx.get(server.url + "/v1/capabilities",
                     headers={"Authorization": f"Bearer {api_key}"}).json()
    bases = {b["name"]: b for b in caps["bases"]}
    assert set(bases) == {"generic", "python", "node", "dotnet"}
    assert bases["python"]["available"] and bases["python"]["reason"] is None
    assert bases["python"]["network"] == ["pypi.org", "files.pythonhosted.org"]
    assert bases["generic"]["network"] == []
    # What the host lacks is offered as unavailable, with the reason.
    assert not bases["dotnet"]["available"]
    assert ".NET SDK" in bases["dotnet"]["reason"]
    # ... and is what session create refuses (the same test the form relies on).
    for name, base in bases.items():
        r = httpx.post(server.url + "/v1/sessions", json={"name": "c", "base": name},
                       headers={"Authorization": f"Bearer {api_key}"})
        assert (r.status_code == 201) == base["available"], (name, r.text)
    assert {m["name"] for m in caps["models"]} == {"opus", "sonnet", "haiku"}
    assert caps["limits"]["disk_max_mb"] >= caps["limits"]["disk_mb"] > 0
    assert caps["execute_network"] == "registries"
    runtimes = {r["name"]: r for r in caps["runtimes"]}
    assert runtimes["native"]["available"]
    health = httpx.get(server.url + "/healthz").json()["box_claude_code"]
    assert runtimes["claude-code"]["available"] == (not health.startswith("missing"))


def test_without_the_cli_claude_code_is_offered_as_unavailable(data_dir: Path) -> None:
    srv = LiveServer(data_dir, env={"SOPHON_BOX_CLAUDE_DIR": str(data_dir / "none")}).start()
    try:
        key = srv.add_user()
        caps = httpx.get(srv.url + "/v1/capabilities",
                         headers={"Authorization": f"Bearer {key}"}).json()
        runtime = next(r for r in caps["runtimes"] if r["name"] == "claude-code")
        assert runtime["available"] is False and "scripts/box-tools" in runtime["reason"]
    finally:
        srv.stop()


def test_start_up_says_what_the_database_did_in_one_line(data_dir: Path) -> None:
    srv = LiveServer(data_dir).start()
    srv.stop()
    srv.start()  # the second start has nothing to migrate: nothing to say
    srv.stop()
    log = srv.log.read_text()
    assert "Running upgrade" not in log and "Context impl" not in log, log
    assert log.count("database schema created") == 1, log
    assert "database schema upgraded" not in log


def test_without_images_a_base_is_what_the_host_has(data_dir: Path) -> None:
    """SOPHON_IMAGES=host: boxes see the host's /usr, a base is there when the host has its
    toolchain, and a session's view says it has no image."""
    srv = LiveServer(data_dir, env={"SOPHON_IMAGES": "host"}).start()
    try:
        health = httpx.get(srv.url + "/healthz").json()
        assert health["box_images"] == "off: SOPHON_IMAGES=host"
        key = {"Authorization": f"Bearer {srv.add_user()}"}
        bases = {b["name"]: b for b in httpx.get(srv.url + "/v1/capabilities",
                                                 headers=key).json()["bases"]}
        if shutil.which("dotnet") is None:
            assert bases["dotnet"]["reason"] == "this host has no dotnet"
        r = httpx.post(srv.url + "/v1/sessions", json={"name": "h", "base": "python"},
                       headers=key, timeout=60)
        assert r.status_code == 201 and r.json()["image"] is None, r.text
    finally:
        srv.stop()
