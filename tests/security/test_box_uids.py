"""One host uid per box: an escape from one box's namespaces reaches no other box's files,
and a uid handed to a new box after its former box was deleted finds nothing of it."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer
from tests.security.helpers import box_files, box_launcher, client, execute, live_server

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="per-box uids need a root server")


def thread_box(srv: LiveServer, thread_id: str) -> Path:
    with sqlite3.connect(srv.data_dir / "sophon.db") as db:
        (box_id,) = db.execute("SELECT id FROM threads WHERE name = ?",
                               (thread_id,)).fetchone()
    return srv.data_dir / "boxes" / box_id


def uid_of(box: Path) -> int:
    return int((box / "uid").read_text())


def as_uid(uid: int, command: str, ns_of: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a host command as ``uid``: what a workload that escaped its box could do. With
    ``ns_of``, in that running box's launcher mount namespace, the only place its disk is
    mounted: as if the escape had landed right beside another box's files."""
    pid = box_launcher(ns_of) if ns_of is not None else None
    enter = ["nsenter", "-t", str(pid), "-m", "--"] if pid is not None else []
    return subprocess.run([*enter, "setpriv", f"--reuid={uid}", f"--regid={uid}",
                           "--clear-groups", "sh", "-c", command],
                          capture_output=True, text=True, timeout=30)


def test_an_escaped_workload_cannot_read_another_boxs_files(http: httpx.Client,
                                                            server: LiveServer) -> None:
    for t in ("uid-a", "uid-b"):
        assert execute(http, f"echo secret-of-{t} > /workspace/s.txt; echo x > ~/h.txt",
                       thread_id=t)["exit_code"] == 0
    a, b = thread_box(server, "uid-a"), thread_box(server, "uid-b")
    assert uid_of(a) != uid_of(b)
    for box in (a, b):
        for sub in ("workspace", "home"):
            st = (box_files(box) / sub).stat()
            assert (st.st_uid, st.st_mode & 0o777) == (uid_of(box), 0o700)
        assert (box_files(box) / "workspace" / "s.txt").stat().st_uid == uid_of(box)
    # Control: as its own uid, box a's files are readable ...
    own = as_uid(uid_of(a), f"cat {a}/workspace/s.txt", ns_of=a)
    assert own.stdout == "secret-of-uid-a\n", own.stderr
    # ... as box b's uid they are not, nor is b's home, even from where they are mounted.
    other = as_uid(uid_of(b), f"cat {a}/workspace/s.txt; ls {a}/home", ns_of=a)
    assert "secret-of-uid-a" not in other.stdout
    assert other.stderr.count("Permission denied") == 2, other.stderr


def test_a_reused_uid_finds_nothing_of_its_former_box() -> None:
    env = {"SOPHON_BOX_UID_COUNT": "1", "SOPHON_BOX_POOL_SIZE": "0"}
    with live_server(env) as srv, client(srv, srv.add_user()) as http:
        first = http.post("/v1/sessions", json={"name": "first"}).json()["id"]
        r = http.post(f"/v1/sessions/{first}/exec", json={
            "command": "echo old > /workspace/old.txt; echo old > ~/old.txt; "
                       "echo old > /tmp/old.txt; echo old > /dev/shm/old.txt"})
        assert r.status_code == 200
        boxes = srv.data_dir / "boxes"
        [box] = list(boxes.iterdir())
        uid = uid_of(box)

        # The only uid is taken: a second box cannot start, and says why.
        r = http.post("/v1/sessions", json={"name": "second"})
        assert r.status_code == 503 and "SOPHON_BOX_UID_COUNT" in r.json()["message"]

        old_box = box
        assert http.delete(f"/v1/sessions/{first}").status_code == 204
        assert not old_box.exists()  # its directory and disk image went with it
        second = http.post("/v1/sessions", json={"name": "second"})
        assert second.status_code == 201, second.text
        [box] = list(boxes.iterdir())
        assert uid_of(box) == uid  # the same uid, handed out again
        r = http.post(f"/v1/sessions/{second.json()['id']}/exec", json={
            "command": "ls -A /workspace ~ /tmp /dev/shm"})
        out = "".join(httpx.Response(200, content=line).json().get("data", "")
                      for line in r.content.splitlines())
        assert "old.txt" not in out and ".git" in out, out
        # Nothing the uid owns is named old*: not on the host, not in the new box's disk
        # (seen through its launcher's mount namespace, where that disk is mounted).
        view = box_files(box)
        assert view != box, "the second box should be running"
        owned = subprocess.run(["find", str(srv.data_dir), str(view), "-uid", str(uid),
                                "-name", "old*"], capture_output=True, text=True)
        assert owned.stdout == "" and owned.returncode == 0, owned


def test_a_box_from_before_per_box_uids_gets_its_own() -> None:
    with live_server({"SOPHON_BOX_POOL_SIZE": "0"}) as srv, \
            client(srv, srv.add_user()) as http:
        assert execute(http, "echo kept > /workspace/k.txt", thread_id="legacy")[
            "exit_code"] == 0
        box = thread_box(srv, "legacy")
        srv.stop()
        # As an older server left it: no uid file, files owned by the one shared uid.
        (box / "uid").unlink()
        subprocess.run(["chown", "-R", "60000:60000", str(box / "workspace"),
                        str(box / "home")], check=True)
        srv.start()
        got = execute(http, "cat /workspace/k.txt; echo more >> /workspace/k.txt",
                      thread_id="legacy")
        assert got["stdout"] == "kept\n" and got["exit_code"] == 0
        uid = uid_of(box)
        assert (box_files(box) / "workspace" / "k.txt").stat().st_uid == uid
        assert (box_files(box) / "workspace").stat().st_uid == uid


def proc_status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


CAPS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def test_a_box_on_the_host_is_its_uid_with_no_capability_and_no_server_descriptor(
        http: httpx.Client, server: LiveServer) -> None:
    """What the box launcher leaves a box's outermost process (bwrap, on the host side):
    the box's own uid, no groups, every capability set empty, no_new_privs, and nothing
    open but its stdio pipes: no socket to the launcher, no file of the server's."""
    assert execute(http, "echo hi", thread_id="privs")["exit_code"] == 0
    box = thread_box(server, "privs")
    pid = box_launcher(box)
    assert pid is not None
    st = proc_status(pid)
    uid = uid_of(box)
    assert st["Uid"].split() == [str(uid)] * 4 and st["Gid"].split() == [str(uid)] * 4, st
    assert st["Groups"] == "", st
    assert all(int(st[c], 16) == 0 for c in CAPS), {c: st[c] for c in CAPS}
    assert st["NoNewPrivs"] == "1", st
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        assert not target.startswith(("socket:", "/")) or target.startswith("/dev/null"), (
            fd, target)
    # Control: the launcher that forked it (the same checks, on a root process) fails them.
    parent = proc_status(int(st["PPid"]))
    assert parent["Uid"].split()[0] == "0" and int(parent["CapBnd"], 16) != 0, parent
