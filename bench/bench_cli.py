"""The CLI: how fast it starts, and whether `stream` keeps up with a busy session.

Start-up: `sophon --help` and `sophon claude-code list` (against a live server holding a
few sessions), run in interleaved rounds with `python -c pass` and `python -S -c pass` as
the same-run baselines. `.venv/bin/python bench/bench_cli.py [ROUNDS]` prints just these.
"""

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


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a user's shell: bytecode caches written and used (as for an
    installed package; PYTHONDONTWRITEBYTECODE would recompile sophon on every run) and no
    SOPHON_* from outside."""
    env = {k: v for k, v in os.environ.items()
           if k != "PYTHONDONTWRITEBYTECODE" and not k.startswith("SOPHON_")}
    return {**env, **(extra or {})}


def _run(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)
    return (time.perf_counter() - t0) * 1000


def _interleaved(commands: dict[str, tuple[list[str], dict[str, str]]], n: int,
                 warmup: int = 2) -> dict[str, Samples]:
    """Wall time of each command, ``n`` rounds of one run each in turn (hyperfine-like,
    but interleaved, so the machine's other load weighs on every command alike)."""
    for _ in range(warmup):
        for argv, env in commands.values():
            _run(argv, env)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(n):
        for name, (argv, env) in commands.items():
            times[name].append(_run(argv, env))
    return {name: Samples(ms) for name, ms in times.items()}


def _startup(n: int) -> list[Figure]:
    with live_server() as (srv, key):
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {key}"}) as c:
            for i in range(3):
                c.post("/v1/sessions", json={"name": f"s{i}"}).raise_for_status()
        plain = _child_env()
        user = _child_env({"SOPHON_URL": srv.url, "SOPHON_API_KEY": key})
        got = _interleaved({
            "python -c pass": ([sys.executable, "-c", "pass"], plain),
            "python -S -c pass": ([sys.executable, "-S", "-c", "pass"], plain),
            "sophon --help": ([SOPHON, "--help"], plain),
            "sophon claude-code list": ([SOPHON, "claude-code", "list"], user),
        }, n)
    base = got["python -c pass"]
    details = [f"`{name}`: {samples.describe()}" for name, samples in got.items()]
    command = "bench/bench_cli.py (or bench/run.py --only cli)"
    return [
        Figure(key="cli_help", title="`sophon --help` start-up (p50)", command=command,
               value=got["sophon --help"].p50, unit="ms", baseline=base.p50,
               baseline_label="the same interpreter running `pass`", goal="< 300 ms",
               met=got["sophon --help"].p50 < 300, details=details),
        Figure(key="cli_list", title="`sophon claude-code list` (p50, 3 sessions, live server)",
               command=command, value=got["sophon claude-code list"].p50, unit="ms",
               baseline=base.p50, baseline_label="the same interpreter running `pass`",
               goal="< 300 ms", met=got["sophon claude-code list"].p50 < 300,
               details=["measured in the same rounds as the figure above"]),
    ]


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


if __name__ == "__main__":  # the start-up figures alone: bench/bench_cli.py [ROUNDS]
    for fig in _startup(int(sys.argv[1]) if len(sys.argv) > 1 else 20):
        print(f"{fig.title}: {fig.value:.0f} ms (goal {fig.goal}: "
              f"{'met' if fig.met else 'NOT met'}); baseline {fig.baseline:.0f} ms")
        for line in fig.details:
            print(f"  {line}")
