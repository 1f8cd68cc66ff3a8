"""The CLI: how fast it starts, and whether `stream` keeps up with a busy session."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from common import Figure, Samples, inprocess_server, live_server
from sophon.events.types import User

SOPHON = str(Path(sys.executable).with_name("sophon"))


def _wall_ms(argv: list[str], env: dict[str, str], n: int) -> Samples:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=True)
        out.append((time.perf_counter() - t0) * 1000)
    return Samples(out)


def _startup(n: int) -> list[Figure]:
    env = dict(os.environ)
    base = _wall_ms([sys.executable, "-c", "pass"], env, n)
    figures = []
    help_ = _wall_ms([SOPHON, "--help"], env, n)
    figures.append(Figure(
        key="cli_help", title="`sophon --help` start-up (p50)", command="bench/run.py --only "
        "cli", value=help_.p50, unit="ms", baseline=base.p50,
        baseline_label="the same interpreter running `pass`", goal="< 300 ms",
        met=help_.p50 < 300, details=[f"sophon --help: {help_.describe()}",
                                      f"python -c pass: {base.describe()}"]))
    with live_server() as (srv, key):
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {key}"}) as c:
            for i in range(3):
                c.post("/v1/sessions", json={"name": f"s{i}"})
        env = {**os.environ, "SOPHON_URL": srv.url, "SOPHON_API_KEY": key}
        listing = _wall_ms([SOPHON, "claude-code", "list"], env, n)
    figures.append(Figure(
        key="cli_list", title="`sophon claude-code list` (p50, 3 sessions)",
        command="bench/run.py --only cli", value=listing.p50, unit="ms", baseline=base.p50,
        baseline_label="the same interpreter running `pass`", goal="< 300 ms",
        met=listing.p50 < 300, details=[f"list: {listing.describe()}"]))
    return figures


async def _stream(rate: int, seconds: float) -> Figure:
    """Events appended at ``rate``/s; `sophon claude-code stream --json` prints them; the
    lag is print time minus append time (both CLOCK_MONOTONIC)."""
    async with inprocess_server() as (services, url, (_, key)):
        async with httpx.AsyncClient(base_url=url, headers={
                "Authorization": f"Bearer {key}"}) as http:
            sid = (await http.post("/v1/sessions", json={"name": "flood"})).json()["id"]
        log = services.sessions.events
        env = {**os.environ, "SOPHON_URL": url, "SOPHON_API_KEY": key}
        proc = subprocess.Popen(  # noqa: ASYNC220 - read by a thread, not the loop
            [SOPHON, "claude-code", "stream", sid, "--json"], env=env,
                                stdout=subprocess.PIPE, text=True)
        printed: dict[int, int] = {}

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                printed[json.loads(line)["seq"]] = time.monotonic_ns()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        await asyncio.sleep(1.0)  # the CLI starts and connects
        sent: dict[int, int] = {}
        total = int(rate * seconds)
        t0 = time.monotonic()
        for i in range(total):
            ev = await log.append(sid, User(content=f"event {i}"))
            sent[ev.seq] = time.monotonic_ns()
            ahead = t0 + (i + 1) / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
        achieved = total / (time.monotonic() - t0)
        deadline = time.monotonic() + 10
        while len([s for s in sent if s in printed]) < total and time.monotonic() < deadline:  # noqa: ASYNC110, E501 - a thread fills printed
            await asyncio.sleep(0.05)
        proc.terminate()
        proc.wait(10)
        lags = Samples([(printed[s] - t) / 1e6 for s, t in sent.items() if s in printed])
        missing = total - len(lags.ms)
    return Figure(
        key="cli_stream", title=f"`stream --json` at {rate} events/s: lag p99",
        command="bench/run.py --only cli", value=lags.p99, unit="ms", baseline=1000 / rate,
        baseline_label="the interval between two events", goal="keeps up (no growing lag)",
        met=missing == 0 and lags.p99 < 250,
        details=[f"{total} events appended at {achieved:.0f}/s; {total - missing} printed; "
                 f"lag {lags.describe()}"])


def run(n: int = 15, rate: int = 1000, seconds: float = 5.0) -> list[Figure]:
    return [*_startup(n), asyncio.run(_stream(rate, seconds))]
