"""A soak: the server under steady mixed load for minutes, watched for errors, latency
drift and memory growth.

The load, all at once for the whole run: ``sessions`` sessions, each followed by its own
SSE stream; ``rate`` executions a second on the execution API (spread over threads, each
thread one execution at a time); and an agent turn every ``turn_every`` seconds in one of
the sessions (the scripted model asks for a Bash call, then ends the turn).

Reported: errors (any refused request, failed execution, failed turn or dropped stream:
must be 0), the executions' p50/p99 in each window (a minute), and the server's memory
(RSS) once the load has warmed up (the first window's end) against the end (flat within
10 %).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from common import EXECUTE, Figure, live_server, percentile
from sophon.testing import ModelServer

COMMAND = "bench/run.py --only soak"
# Limits high enough for the load: the soak measures the server, not its refusals.
LOAD_ENV = {
    "SOPHON_BOX_POOL_SIZE": "2",
    "SOPHON_USER_MAX_BOXES": "0",
    "SOPHON_USER_MAX_CONCURRENT_EXECUTIONS": "0",
    "SOPHON_USER_MAX_EVENTS_PER_MINUTE": "0",
    "SOPHON_USER_MAX_DISK_MB": "0",
}


@dataclass
class Tally:
    window: float
    started: float = field(default_factory=time.monotonic)
    exec_ms: dict[int, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    executions: int = 0
    turns: int = 0
    events: int = 0

    def exec_done(self, ms: float) -> None:
        self.executions += 1
        minute = int((time.monotonic() - self.started) // self.window)
        self.exec_ms.setdefault(minute, []).append(ms)

    def error(self, what: str) -> None:
        if len(self.errors) < 50:
            self.errors.append(what)
        else:
            self.errors.append("")  # counted, not kept


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _follow(http: httpx.AsyncClient, sid: str, tally: Tally, stop: asyncio.Event) -> None:
    try:
        async with http.stream("GET", f"/v1/sessions/{sid}/events",
                               timeout=httpx.Timeout(30, read=None)) as resp:
            if resp.status_code != 200:
                tally.error(f"stream {sid}: HTTP {resp.status_code}")
                return
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    tally.events += 1
                    if '"type":"session_error"' in line:
                        tally.error(f"session {sid}: {line[:200]}")
                if stop.is_set():
                    return
    except (httpx.HTTPError, asyncio.CancelledError) as exc:
        if not stop.is_set():
            tally.error(f"stream {sid} dropped: {exc!r}")


async def _one_execution(http: httpx.AsyncClient, thread: str, tally: Tally,
                         idle: asyncio.Queue[str]) -> None:
    t0 = time.perf_counter()
    try:
        r = await http.post(EXECUTE, json={"code": "echo soak", "language": "bash",
                                           "timeout": 30, "thread_id": thread})
        if r.status_code != 200 or not r.json().get("success"):
            tally.error(f"execute on {thread}: HTTP {r.status_code} {r.text[:200]}")
        else:
            tally.exec_done((time.perf_counter() - t0) * 1000)
    except httpx.HTTPError as exc:
        tally.error(f"execute on {thread}: {exc!r}")
    finally:
        idle.put_nowait(thread)


async def _executions(http: httpx.AsyncClient, rate: float, tally: Tally,
                      stop: asyncio.Event) -> None:
    idle: asyncio.Queue[str] = asyncio.Queue()
    for i in range(max(4, int(rate))):  # about a second's work per thread
        idle.put_nowait(f"soak-{i}")
    tasks: set[asyncio.Task[None]] = set()
    next_at = time.monotonic()
    while not stop.is_set():
        thread = await idle.get()  # one execution at a time per thread: never a 409
        task = asyncio.create_task(_one_execution(http, thread, tally, idle))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        next_at += 1 / rate
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))  # pacing, not waiting
    await asyncio.gather(*tasks)


async def _status(http: httpx.AsyncClient, sid: str) -> str:
    return str((await http.get(f"/v1/sessions/{sid}")).json().get("status"))


async def _turns(http: httpx.AsyncClient, sids: list[str], every: float, tally: Tally,
                 stop: asyncio.Event) -> None:
    for sid in itertools.cycle(sids):
        if stop.is_set():
            return
        t0 = time.monotonic()
        r = await http.post(f"/v1/sessions/{sid}/messages", json={"content": "echo soak"})
        if r.status_code != 202:
            tally.error(f"message to {sid}: HTTP {r.status_code} {r.text[:200]}")
        else:
            deadline = time.monotonic() + 60
            while await _status(http, sid) not in ("idle", "error"):
                if time.monotonic() > deadline:
                    tally.error(f"turn in {sid} did not end within 60 s")
                    break
                await asyncio.sleep(0.1)  # polling the session's status, with a deadline
            else:
                if await _status(http, sid) == "error":
                    tally.error(f"turn in {sid} ended in error")
                else:
                    tally.turns += 1
        await asyncio.sleep(max(0.0, every - (time.monotonic() - t0)))


async def _soak(url: str, key: str, pid: int, minutes: float, sessions: int, rate: float,
                turn_every: float, window: float) -> tuple[Tally, list[tuple[float, float]]]:
    limits = httpx.Limits(max_connections=sessions + 200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits,
                                 headers={"Authorization": f"Bearer {key}"}) as http:
        sids = []
        for i in range(sessions):
            r = await http.post("/v1/sessions", json={
                "name": f"soak-{i}", "approval": {"shell": "allow"}})
            r.raise_for_status()
            sids.append(r.json()["id"])
        tally = Tally(window)
        stop = asyncio.Event()
        rss: list[tuple[float, float]] = []
        tasks = [asyncio.create_task(_follow(http, sid, tally, stop)) for sid in sids]
        tasks.append(asyncio.create_task(_executions(http, rate, tally, stop)))
        tasks.append(asyncio.create_task(_turns(http, sids, turn_every, tally, stop)))
        end = time.monotonic() + minutes * 60
        while time.monotonic() < end:
            rss.append((time.monotonic() - tally.started, _rss_mib(pid)))
            await asyncio.sleep(min(5.0, max(0.0, end - time.monotonic())))
        rss.append((time.monotonic() - tally.started, _rss_mib(pid)))
        stop.set()
        for t in tasks[:sessions]:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return tally, rss


def run(minutes: float = 10.0, sessions: int = 50, rate: float = 20.0,
        turn_every: float = 3.0, window: float = 60.0) -> list[Figure]:
    turns = int(minutes * 60 / turn_every) + 10
    script = {"turns": [t for _ in range(turns) for t in (
        {"content": [{"type": "tool_use", "name": "Bash",
                      "input": {"command": "echo soak"}}]},
        "done")]}
    with ModelServer(script) as model, live_server(env={
            **LOAD_ENV, "ANTHROPIC_API_KEY": "bench",
            "ANTHROPIC_BASE_URL": model.url}) as (srv, key):
        assert srv.proc is not None
        tally, rss = asyncio.run(_soak(srv.url, key, srv.proc.pid, minutes, sessions, rate,
                                       turn_every, window))

    # Memory once warm (the first window's end) against the end of the run.
    warm = next((m for t, m in rss if t >= window), rss[0][1])
    end_rss = rss[-1][1]
    minutes_seen = sorted(tally.exec_ms)
    per_minute = [f"{m * window:g}–{(m + 1) * window:g} s: "
                  f"p50 {percentile(tally.exec_ms[m], 50):.1f} ms, "
                  f"p99 {percentile(tally.exec_ms[m], 99):.1f} ms "
                  f"(n={len(tally.exec_ms[m])})" for m in minutes_seen]
    # The first window starts every thread's box (cold starts): the baseline is the
    # first warm one.
    first = tally.exec_ms[minutes_seen[min(1, len(minutes_seen) - 1)]]
    last = tally.exec_ms[minutes_seen[-1]]
    load = (f"{sessions} sessions streaming, {rate:g} executions/s, a turn every "
            f"{turn_every:g} s, for {minutes:g} min")
    errors = len(tally.errors)
    details = [load, f"{tally.executions} executions, {tally.turns} turns, "
               f"{tally.events} events streamed, {errors} errors", *per_minute,
               *[f"error: {e}" for e in tally.errors[:10] if e]]
    return [
        Figure(key="soak_errors", title="Soak: errors", command=COMMAND, value=errors,
               unit="errors", baseline=tally.executions + tally.turns,
               baseline_label="requests", goal="0", met=errors == 0, details=details),
        Figure(key="soak_memory", title="Soak: server memory, end vs warm", command=COMMAND,
               value=end_rss, unit="MiB", baseline=warm, baseline_label="after the first "
               "minute", goal="≤ 1.10×", met=end_rss <= warm * 1.10,
               details=["RSS (MiB) each minute: "
                        + ", ".join(f"{m:.0f}" for _, m in rss[::12])]),
        Figure(key="soak_exec_p99", title="Soak: execution p99, last window vs first warm one",
               command=COMMAND, value=percentile(last, 99), unit="ms",
               baseline=percentile(first, 99), baseline_label="second window"),
    ]
