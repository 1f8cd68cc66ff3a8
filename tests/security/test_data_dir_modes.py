"""The data directory's files are the server's alone.

``sophon.db`` holds every execution's output and every session's events, and it was
0644 (its -wal and -shm too, which SQLite makes with the database's mode): a box's uid
that escaped its namespaces, or any local user, could read them. Now the database is
made 0600 before SQLite opens it, and at each start every file directly in the data
directory is repaired to 0600. Directories keep the modes bwrap needs: the data
directory, ``boxes/`` and ``volumes/`` 0711 (walk, never list), ``runtime/`` 0755 (boxd's
code and the generated /etc files, nothing secret; the seccomp filter in it is 0600).

The controls read the files as an unprivileged uid with ``setpriv``: refused at 0600,
read at 0644, so the refusal is the mode's doing.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, make_data_dir
from tests.security.helpers import client, execute, thread_name

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="reading as another uid needs root")

NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
WALKED = {".": 0o711, "boxes": 0o711, "volumes": 0o711}  # box uids walk through these
PUBLIC = {"runtime": 0o755}  # boxd's code, the generated /etc: nothing secret


def read_as_nobody(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NOBODY, "cat", str(path)], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)


@pytest.fixture
def srv() -> Iterator[LiveServer]:
    data_dir = make_data_dir()
    server = LiveServer(data_dir, env={"SOPHON_BOX_POOL_SIZE": "0"})
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def use(server: LiveServer) -> None:
    """What makes the server write its files: an execution (database, WAL), a thread
    and the files API (files.key), a stored secret (secret.key at start)."""
    with client(server, server.add_user()) as http:
        thread = thread_name("modes")
        res = execute(http, "echo secret-output-$((6*7))", thread_id=thread)
        assert res["stdout"] == "secret-output-42\n", res
        http.post("/v1/files/list", json={"id": thread})


def state_files(data_dir: Path) -> list[Path]:
    """Every file of the server's own: the data directory outside what box uids own
    (boxes/<id>/, volumes/<id>/) and outside runtime/."""
    found = []
    for dirpath, dirnames, filenames in os.walk(data_dir):
        rel = Path(dirpath).relative_to(data_dir)
        if rel.parts and rel.parts[0] in ("boxes", "volumes", "runtime"):
            dirnames.clear()
            continue
        found += [Path(dirpath) / f for f in filenames]
    return found


def test_every_file_of_a_fresh_data_dir_is_the_servers_alone(srv: LiveServer) -> None:
    use(srv)
    db = srv.data_dir / "sophon.db"
    files = state_files(srv.data_dir)
    names = {p.name for p in files}
    assert {"sophon.db", "sophon.db-wal", "sophon.db-shm", "secret.key", "files.key"} <= names
    for p in files:
        st = p.lstat()
        assert stat.S_IMODE(st.st_mode) & 0o077 == 0, (p, oct(st.st_mode))
        assert st.st_uid == 0, p
    for rel, mode in {**WALKED, **PUBLIC}.items():
        d = srv.data_dir / rel
        if d.exists():
            assert stat.S_IMODE(d.stat().st_mode) == mode, (rel, oct(d.stat().st_mode))
    runtime = srv.data_dir / "runtime"
    assert stat.S_IMODE((runtime / "seccomp.bpf").stat().st_mode) == 0o600
    for p in runtime.rglob("*"):  # readable, never writable, by others
        assert p.stat().st_uid == 0 and not p.stat().st_mode & 0o022, p
    # An unprivileged uid cannot read the database, its log, or the keys.
    for name in ("sophon.db", "sophon.db-wal", "secret.key", "files.key"):
        done = read_as_nobody(srv.data_dir / name)
        assert done.returncode != 0 and "Permission denied" in done.stderr, (name, done)
    # Control: the same probe reads a file whose mode lets it (and the output is there).
    copy = Path(f"/tmp/sophon-modes-{os.getpid()}.db")
    shutil.copyfile(db, copy)
    try:
        copy.chmod(0o644)
        assert read_as_nobody(copy).returncode == 0
    finally:
        copy.unlink()


def test_a_data_dir_left_readable_by_an_older_server_is_repaired_at_start(
    srv: LiveServer,
) -> None:
    use(srv)
    srv.kill()  # a kill leaves the -wal and -shm behind, as a running server has them
    loose = [p for p in state_files(srv.data_dir) if p.name != "server.log"]
    assert {p.name for p in loose} >= {"sophon.db", "sophon.db-wal", "sophon.db-shm",
                                       "secret.key", "files.key"}
    for p in loose:
        p.chmod(0o644)
    # Control: as an older server left them, another uid reads the executions' output.
    leaked = subprocess.run([*NOBODY, "grep", "-l", "-a", "secret-output-42",
                             str(srv.data_dir / "sophon.db"), str(srv.data_dir / "sophon.db-wal")],
                            capture_output=True, text=True, timeout=30)
    assert leaked.returncode == 0, leaked  # found in the database or its log
    srv.start()
    for p in loose:
        if p.exists():
            assert stat.S_IMODE(p.lstat().st_mode) == 0o600, (p, oct(p.lstat().st_mode))
        done = read_as_nobody(p)
        assert done.returncode != 0, (p, done)
    with client(srv, srv.add_user()) as http:  # and the server works on the repaired files
        assert execute(http, "echo ok")["stdout"] == "ok\n"
    assert httpx.get(srv.url + "/healthz", timeout=10).status_code == 200


def test_the_cli_makes_the_database_the_servers_alone_too(tmp_path: Path) -> None:
    """``sophon users add`` on a new data directory creates the database before any
    server runs."""
    data_dir = tmp_path / "data"
    done = subprocess.run([sys.executable, "-m", "sophon.cli", "users", "add", "alice",
                           "--data-dir", str(data_dir)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    db = data_dir / "sophon.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600, oct(db.stat().st_mode)
    leftovers = [p for p in data_dir.iterdir() if p.is_file()]
    for p in leftovers:
        assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, (p, oct(p.stat().st_mode))
