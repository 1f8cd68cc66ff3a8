"""Sessions on their base's image (built by `make test` into the shared image cache):
what each base offers, nothing of the host's own packages, the same image after a restart,
and a session from before images still on the host's /usr."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import httpx
import pytest

from sophon.config import Settings
from sophon.images.definitions import BUILTIN
from tests.conftest import LiveServer
from tests.integration.session_support import sh, user

IMAGES = Settings().images_dir

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("mmdebstrap"),
    reason="images need root and mmdebstrap (make test installs and builds them)")


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with user(server) as client:
        yield client


def new_session(http: httpx.Client, base: str, template: str | None = None) -> dict:
    starter = {"type": "template", "name": template} if template else {"type": "empty"}
    r = http.post("/v1/sessions", json={"name": base, "base": base, "starter": starter})
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_a_python_session_has_pytest_and_none_of_the_hosts_packages(
        http: httpx.Client) -> None:
    session = new_session(http, "python", template="python")
    assert session["image"] == BUILTIN["python"].digest
    sid = session["id"]
    out = sh(http, sid, "python3 -m pytest -q 2>&1 | tail -1")
    assert " passed" in out and "failed" not in out, out
    listed = sh(http, sid, "pip list 2>/dev/null")
    assert "pytest" in listed
    host_only = [p for p in ("pycups", "dbus-python", "fastapi", "sophon") if p in listed]
    assert not host_only, listed
    assert "bookworm" in sh(http, sid, "cat /etc/os-release")
    # C extensions build (gcc, the headers): one compiled and imported.
    sh(http, sid, "printf '%s\\n' '#include <Python.h>' 'static struct PyModuleDef m = "
                  "{PyModuleDef_HEAD_INIT, \"cext\"};' 'PyMODINIT_FUNC PyInit_cext(void) "
                  "{ return PyModule_Create(&m); }' > cext.c")
    built = sh(http, sid, "gcc -shared -fPIC $(python3-config --includes) cext.c -o "
                          "cext$(python3-config --extension-suffix) 2>&1 && "
                          "python3 -c 'import cext; print(cext.__name__)'")
    assert built == "cext\n", built


def test_a_node_session_runs_npm_test(http: httpx.Client) -> None:
    sid = new_session(http, "node", template="node")["id"]
    out = sh(http, sid, "npm test 2>&1; echo exit=$?")
    assert "# fail 0" in out and out.strip().endswith("exit=0"), out
    assert sh(http, sid, "tsc --version").startswith("Version ")


def test_the_image_root_is_read_only_without_setuid_and_names_no_host_path(
        http: httpx.Client, server: LiveServer) -> None:
    sid = new_session(http, "generic")["id"]
    out = sh(http, sid, "touch /usr/x 2>&1; find /usr /etc /var -xdev -perm /6000 "
                        "-type f 2>/dev/null | head; echo ===; cat /proc/self/mountinfo")
    refused, _, table = out.partition("===\n")
    # The write refused, and no setuid or setgid file found (find prints none).
    assert refused == "touch: cannot touch '/usr/x': Read-only file system\n", out
    assert " /usr /usr " in table and "squashfs" in table, table
    # The server's /etc files over the image's own: binds of its tmpfs copy's files
    # (box/etc_fs.py), named there by their own names.
    for inside, root in (("/etc/passwd", "/passwd"), ("/etc/hosts", "/hosts")):
        lines = {line for line in table.splitlines() if line.split()[4:5] == [inside]}
        assert [line.split()[3] for line in lines] == [root] and all(
            " - tmpfs " in line for line in lines), (inside, lines)
    for secret in (str(server.data_dir), str(IMAGES), str(IMAGES.resolve())):
        assert secret not in table, table
    # What every box has works here too: git, the agent's shell, Claude Code's link.
    assert "git version" in sh(http, sid, "git --version")
    assert sh(http, sid, "readlink /home/baponi/.local/bin/claude || echo none").strip()


def test_a_session_keeps_its_image_across_a_restart_and_an_old_one_keeps_the_host(
        server: LiveServer, http: httpx.Client) -> None:
    sid = new_session(http, "python")["id"]
    older = new_session(http, "python")["id"]
    box = server.data_dir / "boxes" / ("s" + older.removeprefix("ses_"))
    (box / "image").unlink()  # as a session made before images has it
    server.restart()
    assert "No module named pytest" in sh(http, older, "python3 -m pytest --version 2>&1")
    assert http.get(f"/v1/sessions/{older}").json()["image"] is None
    assert "pytest" in sh(http, sid, "python3 -m pytest --version 2>&1")


def test_capabilities_say_which_bases_there_are(http: httpx.Client) -> None:
    bases = {b["name"]: b for b in http.get("/v1/capabilities").json()["bases"]}
    assert all(bases[n]["available"] for n in ("generic", "python", "node"))
    assert bases["dotnet"]["available"] is False
    assert "no .NET SDK is in Debian's packages" in bases["dotnet"]["reason"]
    r = http.post("/v1/sessions", json={"name": "d", "base": "dotnet"})
    assert r.status_code == 400 and "not available on this server" in r.text, r.text
