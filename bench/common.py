"""What every benchmark shares: a live server, timing, statistics and the result record.

The server is the one the test-suite uses (``LiveServer`` from ``tests/conftest.py``):
``sophon serve`` in a child process on a free loopback port, with a fresh data
directory, exactly as a user would run it.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# wait_for is re-exported for the benchmarks.
from tests.conftest import LiveServer, make_data_dir, wait_for  # noqa: E402, F401

# A benchmark times the server a user runs: its own process, not a fork of one with its
# imports done (what the tests use to start a few hundred servers).
LiveServer.forked = False

EXECUTE = "/v1/sandbox/execute"
# Benchmarks time the server, not its per-user ceilings: one user sends all the load.
SERVER_ENV = {"SOPHON_LOG_LEVEL": "warning", "SOPHON_USER_MAX_BOXES": "0",
              "SOPHON_USER_MAX_CONCURRENT_EXECUTIONS": "0"}
BOX_PYTHON = "/usr/bin/python3"  # the interpreter boxd runs under (Settings.box_python)


# --- the server ---------------------------------------------------------------


@contextlib.contextmanager
def live_server(user: str = "bench",
                env: dict[str, str] | None = None) -> Iterator[tuple[LiveServer, str]]:
    """A fresh ``sophon serve`` and an API key for one user; everything removed after."""
    data_dir = make_data_dir()
    srv = LiveServer(data_dir, env={**SERVER_ENV, **(env or {})})
    cgroups = ""
    try:
        srv.start()
        assert srv.proc is not None
        cgroups = Path(f"/proc/{srv.proc.pid}/cgroup").read_text()
        yield srv, srv.add_user(user)
    finally:
        srv.stop()
        remove_server_cgroups(data_dir, cgroups)
        shutil.rmtree(data_dir, ignore_errors=True)


def remove_server_cgroups(data_dir: Path, proc_cgroup: str) -> None:
    """The server leaves its (by now empty) ``sophon-<digest>`` cgroup parents behind;
    a benchmark run makes a few servers, so it tidies up after each one."""
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
              if line.split()[2] in ("cgroup", "cgroup2")]
    paths = {line.split(":", 2)[2].lstrip("/") for line in proc_cgroup.splitlines()}
    for mount in mounts:
        for rel in paths | {p.removesuffix("sophon-server").rstrip("/") for p in paths}:
            with contextlib.suppress(OSError):
                (Path(mount) / rel / f"sophon-{digest}").rmdir()


def client(srv: LiveServer, key: str) -> httpx.Client:
    """A keep-alive client: one TCP connection reused for every call."""
    return httpx.Client(base_url=srv.url, timeout=60,
                        headers={"Authorization": f"Bearer {key}"})


def execute_body(code: str = "true", language: str = "bash",
                 thread_id: str | None = None) -> dict[str, object]:
    body: dict[str, object] = {"code": code, "language": language}
    if thread_id is not None:
        body["thread_id"] = thread_id
    return body


def check(resp: httpx.Response) -> None:
    """A benchmark call that did not succeed is a broken benchmark, not a slow one."""
    if resp.status_code != 200 or not resp.json().get("success"):
        raise RuntimeError(f"execute failed: HTTP {resp.status_code}: {resp.text[:500]}")


# --- timing and statistics ----------------------------------------------------


def time_ms(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - t0) / 1e6


def sample_ms(fn: Callable[[], object], n: int, warmup: int = 0) -> Samples:
    for _ in range(warmup):
        fn()
    return Samples([time_ms(fn) for _ in range(n)])


def sample_pairs_ms(a: Callable[[], object], b: Callable[[], object], n: int,
                    warmup: int = 0) -> tuple[Samples, Samples]:
    """Time ``a`` and ``b`` alternately, so that whatever else the machine is doing
    weighs on both alike and their ratio stays meaningful."""
    for _ in range(warmup):
        a()
        b()
    ta, tb = [], []
    for _ in range(n):
        ta.append(time_ms(a))
        tb.append(time_ms(b))
    return Samples(ta), Samples(tb)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): a value that was actually observed."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Samples:
    ms: list[float]

    @property
    def p50(self) -> float:
        return percentile(self.ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.ms, 99)

    @property
    def mean(self) -> float:
        return sum(self.ms) / len(self.ms)

    def describe(self) -> str:
        return (f"p50 {self.p50:.2f} ms, p99 {self.p99:.2f} ms, mean {self.mean:.2f} ms, "
                f"min {min(self.ms):.2f} ms, max {max(self.ms):.2f} ms (n={len(self.ms)})")


# --- results ------------------------------------------------------------------


@dataclass
class Figure:
    """One measured figure against its same-run baseline; ratio = value / baseline."""

    key: str
    title: str
    command: str
    value: float
    unit: str
    baseline: float
    baseline_label: str
    goal: str | None = None
    met: bool | None = None
    details: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else math.nan


def fmt(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    if unit in ("exec/s", "events/s"):
        return f"{value:,.0f} {unit}"
    if unit in ("s", "KiB", "KB"):
        return f"{value:.1f} {unit}"
    return f"{value:g} {unit}"


# --- the machine ----------------------------------------------------------------


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except OSError:
        return "not found"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) \
        else "?"


def machine() -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = m.group(1) if m else "?"
    mem = "?"
    with contextlib.suppress(OSError):
        m = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        mem = f"{int(m.group(1)) / 2**20:.1f} GiB" if m else "?"
    cgroup = "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1"
    commit = _first_line(["git", "-C", str(ROOT), "describe", "--always", "--dirty"])
    return {
        "sophon": f"git {commit}",
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "server python": f"{platform.python_implementation()} {platform.python_version()}"
                         f" ({sys.executable})",
        "box python": f"{_first_line([BOX_PYTHON, '-V'])} ({BOX_PYTHON})",
        "bubblewrap": _first_line(["bwrap", "--version"]),
        "cgroups": cgroup,
        "running as": "root" if os.geteuid() == 0 else f"uid {os.geteuid()}",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


# --- process memory -------------------------------------------------------------


def smaps_rollup(pid: int) -> dict[str, int]:
    """Rss, Pss, ... of one process, in bytes."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[key.strip()] = int(parts[0]) * 1024
    return out


def proc_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    return -1


def proc_nspid(pid: int) -> list[int]:
    """The pid in each pid namespace, outermost first (``NSpid:`` in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return [int(p) for p in line.split()[1:]]
    return [pid]


def proc_cmdline(pid: int) -> str:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    words = [w.decode(errors="replace") for w in raw]
    if len(words) > 6:  # bwrap's command line is long: its program and its payload tell
        words = [words[0], "…", *words[-3:]]
    return " ".join(words)


# --- an in-process server, for benchmarks that append events directly ----------------


@contextlib.asynccontextmanager
async def inprocess_server() -> AsyncIterator[tuple[Any, str, Any]]:
    """``sophon serve``'s app on a loopback port in this process: (services, url,
    principal-and-key). The benchmark can then use the services (e.g. the event log)
    directly while real HTTP clients connect to ``url``."""
    import asyncio

    import uvicorn

    from conftest import free_port
    from sophon.api.app import create_app
    from sophon.config import Settings

    data = make_data_dir()
    settings = Settings(data_dir=data, port=free_port(), box_pool_size=0, log_level="warning")
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port,
                                           log_level="warning", access_log=False))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to await
            await asyncio.sleep(0.01)
        services = app.state.services
        user = await services.users.create("bench")
        yield services, f"http://127.0.0.1:{settings.port}", user
    finally:
        server.should_exit = True
        await task
        shutil.rmtree(data, ignore_errors=True)
