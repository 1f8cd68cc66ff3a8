"""Many sessions on one machine: creation time, disk per empty session, server memory,
and what sleeping sessions cost (no process)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import Figure, live_server, wait_for


def _du(path: Path) -> int:
    # Allocated bytes, not apparent size: each box's disk image is a sparse file.
    out = subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True,
                         text=True, check=True)
    return int(out.stdout.split()[0])


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _box_processes(data_dir: Path) -> int:
    out = subprocess.run(["pgrep", "-f", str(data_dir / "boxes")], capture_output=True,
                         text=True)
    return len(out.stdout.split())


def _bare_git_init(n: int) -> tuple[float, int]:
    """Baseline: `git init` + an empty first commit straight on the host, n times."""
    root = Path(tempfile.mkdtemp(prefix="sophon-bench-git-"))
    env = {"PATH": "/usr/bin:/bin", "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}
    t0 = time.perf_counter()
    for i in range(n):
        d = root / str(i)
        d.mkdir()
        subprocess.run(["git", "init", "-q", "-b", "main"], cwd=d, env=env, check=True)
        subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "Initial commit"],
                       cwd=d, env=env, check=True)
    seconds = time.perf_counter() - t0
    size = _du(root) // n
    shutil.rmtree(root)
    return seconds, size


def run(sessions: int = 1000, concurrency: int = 8) -> list[Figure]:
    # One user makes every session: the per-user ceilings are lifted.
    env = {"SOPHON_SESSION_IDLE_SECONDS": "2", "SOPHON_IDLE_CHECK_SECONDS": "0.5",
           "SOPHON_BOX_POOL_SIZE": "0", "SOPHON_USER_MAX_BOXES": "0",
           "SOPHON_USER_MAX_DISK_MB": "0", "SOPHON_USER_MAX_EVENTS_PER_MINUTE": "0"}
    with live_server(env=env) as (srv, key):
        import httpx

        assert srv.proc is not None
        rss_before = _rss_mib(srv.proc.pid)
        db_before = _du(srv.data_dir / "sophon.db")

        def create(i: int) -> None:
            with httpx.Client(base_url=srv.url, timeout=120,
                              headers={"Authorization": f"Bearer {key}"}) as c:
                r = c.post("/v1/sessions", json={"name": f"s{i}"})
                if r.status_code != 201:
                    raise RuntimeError(f"create failed: {r.status_code} {r.text[:300]}")

        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(create, range(sessions)))
        seconds = time.perf_counter() - t0
        rss_after = _rss_mib(srv.proc.pid)
        wait_for(lambda: _box_processes(srv.data_dir) == 0, 120, 0.5,
                 "every session's box to go to sleep")
        asleep_rss = _rss_mib(srv.proc.pid)
        boxes = _du(srv.data_dir / "boxes")
        db_growth = max(0, _du(srv.data_dir / "sophon.db") - db_before)
        wal = srv.data_dir / "sophon.db-wal"
        db_growth += _du(wal) if wal.exists() else 0
        per_session = (boxes + db_growth) / sessions
        listed = httpx.get(f"{srv.url}/v1/sessions", params={"limit": 1},
                           headers={"Authorization": f"Bearer {key}"}).json()["sessions"]
        status = listed[0]["status"] if listed else "?"
    base_seconds, base_size = _bare_git_init(min(sessions, 200))
    base_seconds = base_seconds * sessions / min(sessions, 200)
    cmd = f"bench/run.py --only sessions  # {sessions} sessions, {concurrency} at a time"
    return [
        Figure(key="sessions_create", title=f"Create {sessions} empty sessions",
               command=cmd, value=seconds, unit="s", baseline=base_seconds,
               baseline_label=f"bare `git init` + commit ×{sessions}, sequential",
               details=[f"{sessions / seconds:.1f} sessions/s with {concurrency} clients; "
                        f"each starts a sandbox, runs git init and a first commit in it"]),
        Figure(key="sessions_disk", title="Disk per empty session", command=cmd,
               value=per_session / 1024, unit="KiB", baseline=base_size / 1024,
               baseline_label="a bare `git init` + commit directory",
               details=[f"workspaces+homes {boxes / sessions / 1024:.1f} KiB, database "
                        f"{db_growth / sessions / 1024:.1f} KiB per session"]),
        Figure(key="sessions_memory", title=f"Server memory with {sessions} sessions",
               command=cmd, value=asleep_rss, unit="MiB", baseline=rss_before,
               baseline_label="the same server before any session",
               details=[f"RSS {rss_before:.0f} MiB before, {rss_after:.0f} MiB right after "
                        f"creating, {asleep_rss:.0f} MiB once every box slept",
                        f"sleeping sessions: 0 box processes left (checked), listed status "
                        f"'{status}'"]),
    ]
