"""Probe: what limits throughput, and where the CPU of one execute goes.

1. In-process ExecutionService (no HTTP), 16 concurrent loops for a few seconds,
   as is and with the execution-row write (``_save``) replaced by a no-op: the
   rate each reaches, and ``_exec``/``_save`` latency under concurrency.
2. The live server, sequential and then 16-way over HTTP: CPU seconds spent per
   execute by the server process (all its threads), by the boxes (boxd with its
   reaped children, from /proc/<pid>/stat) and by this load generator.

    .venv/bin/python bench/probe_load.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import resource
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench_memory import BOX_HOST_UID
from common import (
    EXECUTE,
    Samples,
    execute_body,
    live_server,
    make_data_dir,
    proc_uid,
    remove_server_cgroups,
)
from probe_warm import wrap_timed
from sophon.box.manager import BoxManager
from sophon.config import load_settings
from sophon.sandbox.models import ExecuteRequest
from sophon.sandbox.service import ExecutionService
from sophon.store.db import make_engine, migrate, sessionmaker
from sophon.users import UserService

CONCURRENCY = 16
TICK = os.sysconf("SC_CLK_TCK")


def one_connection_engine(url: str) -> AsyncEngine:
    """Sophon's engine, but with a pool of one connection: writers queue in the pool
    instead of meeting in SQLite's lock (and its sleeping busy handler)."""
    engine = create_async_engine(url, pool_size=1, max_overflow=0)
    event.listen(engine.sync_engine, "connect", _pragmas)  # the same PRAGMAs as make_engine
    return engine


def _pragmas(conn: Any, _record: Any) -> None:
    cur = conn.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON",
                   "busy_timeout=5000"):
        cur.execute(f"PRAGMA {pragma}")
    cur.close()


async def service_load(data_dir: Path, seconds: float, save: bool,
                       one_connection: bool = False) -> list[str]:
    settings = load_settings(data_dir=data_dir, box_pool_size=0)
    url = settings.resolved_database_url
    engine = one_connection_engine(url) if one_connection else make_engine(url)
    boxes = BoxManager(settings)
    try:
        await migrate(engine)
        db = sessionmaker(engine)
        principal, _ = await UserService(db).create("probe")
        service = ExecutionService(boxes, db)
        stages: dict[str, list[float]] = defaultdict(list)
        wrap_timed(service, "_exec", stages)
        if save:
            wrap_timed(service, "_save", stages)
        else:
            async def no_save(run: object) -> None:
                return None
            service._save = no_save  # type: ignore[method-assign]
        reqs = [ExecuteRequest(code="true", language="bash", thread_id=f"p{i}")
                for i in range(CONCURRENCY)]

        async def one(i: int) -> None:
            run = await service.start(principal, reqs[i], "inline")
            await run.done.wait()
            assert run.result is not None and run.result.success, run.result

        await asyncio.gather(*(one(i) for i in range(CONCURRENCY)))
        for v in stages.values():
            v.clear()
        count = 0

        async def loop(i: int, deadline: float) -> None:
            nonlocal count
            while time.monotonic() < deadline:
                await one(i)
                count += 1

        t0 = time.monotonic()
        await asyncio.gather(*(loop(i, t0 + seconds) for i in range(CONCURRENCY)))
        rate = count / (time.monotonic() - t0)
        await service.close()
    finally:
        await boxes.close()
        await engine.dispose()
    label = "_save disabled" if not save else (
        "with _save, a one-connection pool" if one_connection else "with _save")
    out = [f"in-process service, 16 loops, {label}: {rate:.0f} exec/s"]
    out += [f"  {k} under load: {Samples(v).describe()}" for k, v in stages.items()]
    return out


def cpu_seconds(pid: int, children: bool = False) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3): utime/stime are fields 14/15, cutime/cstime 16/17.
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


def box_cpu(data_dir: Path) -> float:
    """CPU of this server's box processes (box uid, in its ``sophon-<digest>`` cgroups),
    with their reaped children (the workloads boxd waited for)."""
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    total = 0.0
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if (proc_uid(int(p.name)) == BOX_HOST_UID
                        and f"sophon-{digest}/" in (p / "cgroup").read_text()):
                    total += cpu_seconds(int(p.name), children=True)
            except (OSError, ValueError):
                continue
    return total


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def http_load(url: str, key: str, seconds: float, concurrency: int) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    clients = [httpx.AsyncClient(base_url=url, headers=headers, timeout=60)
               for _ in range(concurrency)]
    bodies = [execute_body("true", "bash", thread_id=f"load-{i}") for i in range(concurrency)]
    count = 0

    async def loop(i: int, deadline: float) -> None:
        nonlocal count
        while time.monotonic() < deadline:
            r = await clients[i].post(EXECUTE, json=bodies[i])
            r.raise_for_status()
            count += 1

    try:
        await asyncio.gather(*(clients[i].post(EXECUTE, json=bodies[i])
                               for i in range(concurrency)))
        t0 = time.monotonic()
        await asyncio.gather(*(loop(i, t0 + seconds) for i in range(concurrency)))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    return count


def cpu_per_execute(seconds: float) -> list[str]:
    out = []
    with live_server() as (srv, key):
        assert srv.proc is not None
        pid = srv.proc.pid
        for conc in (1, CONCURRENCY):
            asyncio.run(http_load(srv.url, key, 1.0, conc))  # boxes up, paths warm
            s0, b0, c0, t0 = cpu_seconds(pid), box_cpu(srv.data_dir), self_cpu(), time.monotonic()
            n = asyncio.run(http_load(srv.url, key, seconds, conc))
            wall = time.monotonic() - t0
            s, b, c = cpu_seconds(pid) - s0, box_cpu(srv.data_dir) - b0, self_cpu() - c0
            out.append(
                f"HTTP, concurrency {conc}: {n / wall:.0f} exec/s; CPU per execute: server "
                f"{s / n * 1000:.2f} ms, boxes {b / n * 1000:.2f} ms, load generator "
                f"{c / n * 1000:.2f} ms; machine busy {(s + b + c) / wall:.2f} of "
                f"{len(os.sched_getaffinity(0))} cores")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    lines: list[str] = []
    for save, one in ((True, False), (True, True), (False, False)):
        data_dir = make_data_dir()
        try:
            lines += asyncio.run(service_load(data_dir, args.seconds, save, one))
        finally:
            remove_server_cgroups(data_dir, Path("/proc/self/cgroup").read_text())
            shutil.rmtree(data_dir, ignore_errors=True)
    lines += cpu_per_execute(args.seconds)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
