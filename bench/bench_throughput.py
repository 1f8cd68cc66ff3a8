"""Figure 3: executes per second with 16 threads driven concurrently for ~10 s.

Sixteen distinct thread_ids, each driven by its own client loop (its own
``httpx.AsyncClient``, so its own keep-alive connection) issuing bash ``true``
back to back. Every box is started before the clock starts. The baseline is the
same 16-way concurrency spawning ``true`` directly: 16 threads each looping
``subprocess.run(["true"])``.

The load generator shares the machine's cores with the server; so does the
baseline's, which keeps the comparison fair.

    .venv/bin/python bench/run.py --only throughput
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from common import EXECUTE, Figure, Samples, execute_body, live_server

CONCURRENCY = 16
GOAL_RATE = 300.0  # executes per second at 16-way


def baseline(seconds: float, concurrency: int = CONCURRENCY) -> tuple[float, int]:
    deadline = time.monotonic() + seconds
    lock = threading.Lock()
    done = [0]

    def worker() -> None:
        n = 0
        while time.monotonic() < deadline:
            subprocess.run(["true"], check=True)
            n += 1
        with lock:
            done[0] += n

    t0 = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    elapsed = time.monotonic() - t0
    return done[0] / elapsed, done[0]


async def _load(url: str, key: str, seconds: float,
                concurrency: int) -> tuple[float, int, Samples, int]:
    headers = {"Authorization": f"Bearer {key}"}
    clients = [httpx.AsyncClient(base_url=url, headers=headers, timeout=60)
               for _ in range(concurrency)]
    bodies = [execute_body("true", "bash", thread_id=f"bench-tp-{i}") for i in range(concurrency)]
    latencies: list[float] = []
    failures = 0

    async def one(i: int) -> bool:
        resp = await clients[i].post(EXECUTE, json=bodies[i])
        return resp.status_code == 200 and bool(resp.json().get("success"))

    async def loop(i: int, deadline: float) -> int:
        nonlocal failures
        n = 0
        while time.monotonic() < deadline:
            t0 = time.perf_counter_ns()
            ok = await one(i)
            latencies.append((time.perf_counter_ns() - t0) / 1e6)
            if ok:
                n += 1
            else:
                failures += 1
        return n

    try:
        # Start every box (and warm every connection) before the clock starts.
        for _ in range(3):
            oks = await asyncio.gather(*(one(i) for i in range(concurrency)))
            if not all(oks):
                raise RuntimeError("warm-up executes failed")
        t0 = time.monotonic()
        counts = await asyncio.gather(*(loop(i, t0 + seconds) for i in range(concurrency)))
        elapsed = time.monotonic() - t0
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    total = sum(counts)
    return total / elapsed, total, Samples(latencies), failures


def run(seconds: float = 10.0, concurrency: int = CONCURRENCY) -> list[Figure]:
    # The baseline runs for half the time just before and half just after Sophon's
    # run, so that a change in the machine's other load weighs on both alike.
    before, n_before = baseline(seconds / 2, concurrency)
    with live_server() as (srv, key):
        rate, n, lat, failures = asyncio.run(_load(srv.url, key, seconds, concurrency))
    after, n_after = baseline(seconds / 2, concurrency)
    base_rate, base_n = (before + after) / 2, n_before + n_after
    if failures:
        raise RuntimeError(f"{failures} executes failed under load")
    return [Figure(
        key="throughput",
        title=f"Throughput, {concurrency} concurrent threads (bash `true`)",
        command=".venv/bin/python bench/run.py --only throughput",
        value=rate,
        unit="exec/s",
        baseline=base_rate,
        baseline_label=f'{concurrency} threads looping `subprocess.run(["true"])`',
        goal=f"≥ {GOAL_RATE:g} exec/s" if concurrency == CONCURRENCY else None,
        met=rate >= GOAL_RATE if concurrency == CONCURRENCY else None,
        details=[
            f"sophon: {n} executes in ~{seconds:g} s over {concurrency} connections; "
            f"per-call latency under load: {lat.describe()}",
            f"baseline: {base_n} spawns in ~{seconds:g} s ({before:.0f}/s just before, "
            f"{after:.0f}/s just after)",
        ],
    )]


if __name__ == "__main__":
    for fig in run():
        print(fig.title, f"{fig.value:.0f}", "\n  " + "\n  ".join(fig.details))
