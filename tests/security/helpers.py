"""Helpers for the security suite: driving the API, and looking at the host from outside."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from sophon.box.manager import cgroup_name
from tests.conftest import LiveServer, make_data_dir, wait_for

TERMINAL = {"success", "failed", "timeout", "cancelled", "oom"}


# --- servers -------------------------------------------------------------------------


@contextlib.contextmanager
def live_server(env: dict[str, str] | None = None) -> Iterator[LiveServer]:
    """A server of its own, on a fresh data directory, removed afterwards."""
    data_dir = make_data_dir()
    srv = LiveServer(data_dir, env=env)
    try:
        yield srv.start()
    finally:
        srv.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def client(srv: LiveServer, api_key: str) -> httpx.Client:
    return httpx.Client(base_url=srv.url, timeout=120,
                        headers={"Authorization": f"Bearer {api_key}"})


# --- executing -----------------------------------------------------------------------


def _body(code: str, language: str, timeout: int, thread_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "language": language, "timeout": timeout}
    if thread_id is not None:
        body["thread_id"] = thread_id
    return body


def execute(http: httpx.Client, code: str, *, language: str = "bash", timeout: int = 20,
            thread_id: str | None = None) -> dict[str, Any]:
    """Run code inline; returns ``{success, stdout, stderr, exit_code, error}``."""
    resp = http.post("/v1/sandbox/execute", json=_body(code, language, timeout, thread_id))
    assert resp.status_code == 200, resp.text
    return resp.json()


def start_async(http: httpx.Client, code: str, *, language: str = "bash", timeout: int = 20,
                thread_id: str | None = None) -> str:
    """Start an execution with ``Prefer: respond-async``; returns its trace id."""
    resp = http.post("/v1/sandbox/execute", json=_body(code, language, timeout, thread_id),
                     headers={"Prefer": "respond-async"})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["trace_id"])


def execution(http: httpx.Client, trace_id: str) -> dict[str, Any]:
    resp = http.get(f"/v1/executions/{trace_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()


def wait_finished(http: httpx.Client, trace_id: str, deadline: float = 30.0) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        st = execution(http, trace_id)
        return st if st["status"] in TERMINAL else None

    found = wait_for(finished, deadline, 0.05, f"execution {trace_id} to finish")
    assert isinstance(found, dict)
    return found


def cancel(http: httpx.Client, trace_id: str) -> None:
    with contextlib.suppress(httpx.HTTPError):
        http.post(f"/v1/executions/{trace_id}/cancel")


def thread_name(label: str) -> str:
    return f"sec-{label}-{secrets.token_hex(4)}"


def assert_healthy(srv: LiveServer, http: httpx.Client) -> None:
    """The server process is up, answers /healthz and runs code on a new thread."""
    assert srv.proc is not None and srv.proc.poll() is None, "the server process died"
    assert httpx.get(srv.url + "/healthz", timeout=10).status_code == 200
    res = execute(http, "echo still-alive", thread_id=thread_name("health"))
    assert res["success"], res
    assert res["stdout"] == "still-alive\n"


# --- looking at the host -------------------------------------------------------------


def unique_sleep() -> str:
    """A ``sleep`` duration no other process on the host uses: a marker to look for."""
    return f"{4000 + secrets.randbelow(1000)}.{secrets.randbelow(10**6):06d}"


def host_pids(needle: str) -> list[int]:
    """Live host pids whose command line (arguments joined by spaces) contains ``needle``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline and host_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def host_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_host_pids(needle: str, deadline: float = 15.0) -> list[int]:
    found = wait_for(lambda: host_pids(needle), deadline, 0.02,
                     f"a host process matching {needle!r}")
    assert isinstance(found, list)
    return found


def wait_gone(needle: str, deadline: float = 15.0) -> None:
    wait_for(lambda: not host_pids(needle), deadline, 0.05,
             f"every host process matching {needle!r} to be gone")


def box_cgroups(srv: LiveServer, controller: str) -> Path:
    """The server's parent cgroup for ``controller`` (cgroup v1): one child dir per box."""
    assert srv.proc is not None
    own = "/"
    for line in Path(f"/proc/{srv.proc.pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            own = path
    return Path("/sys/fs/cgroup") / controller / own.lstrip("/") / cgroup_name(srv.data_dir)


def box_launcher(box: Path) -> int | None:
    """The pid of the running box's launcher (its outer bwrap): its mount namespace is
    where the box's disk is mounted. None if the box is not running."""
    for pid in host_pids(f"{box}/workspace "):
        if os.path.isdir(f"/proc/{pid}/root{box}"):  # not the box's own pivoted root
            return pid
    return None


def box_files(box: Path) -> Path:
    """Where the host (as root) sees a box's directory with its files in it: through its
    launcher's mount namespace while it runs, since its disk is mounted only there;
    else the box's directory itself (a stopped box's files are in its disk image)."""
    pid = box_launcher(box)
    return Path(f"/proc/{pid}/root{box}") if pid is not None else box


def box_dir_holding(srv: LiveServer, relpath: str) -> Path:
    """The box whose files include ``relpath``, as ``box_files`` sees it (``.name`` is
    the box's id)."""
    for d in (srv.data_dir / "boxes").iterdir():
        view = box_files(d)
        if (view / relpath).exists():
            return view
    raise AssertionError(f"no box holds {relpath}")


def snapshot(root: Path, skip: Callable[[Path], bool] = lambda p: False) -> set[str]:
    """Every path under ``root`` (symlinks not followed), relative, minus skipped ones."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if not skip(p):
                found.add(str(p.relative_to(root)))
    return found
