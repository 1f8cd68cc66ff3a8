"""The event log: append-to-receipt latency over SSE, append rate, replay rate.

The server runs in this process (uvicorn on a loopback port), so the benchmark can
append through the real ``EventLog`` and time the moment each of the SSE clients,
connected over HTTP like any other, receives the event.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import time
from datetime import UTC, datetime

import httpx

from common import Figure, Samples, inprocess_server
from sophon.config import Settings
from sophon.events.types import User
from sophon.store.tables import EventRow

SUBSCRIBERS = 10


async def _serve(n_replay: int, samples: int, appends: int) -> list[Figure]:
    async with inprocess_server() as (services, base, (principal, key)):
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120) as http:
            r = await http.post("/v1/sessions", json={"name": "bench"})
            session_id = r.json()["id"]
            figures = [await _fanout(http, services, session_id, samples)]
            figures.append(await _append_rate(services, session_id, appends))
            figures.append(await _replay(http, services, n_replay))
        return figures


SUBSCRIBER_SCRIPT = r"""
import json, sys, threading, time, httpx
url, key, session, after, count, n = sys.argv[1:7]
after, count, n = int(after), int(count), int(n)
arrivals = {}
lock = threading.Lock()
ready = threading.Barrier(n + 1)

def follow():
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                      timeout=120) as c, c.stream("GET", f"/v1/sessions/{session}/events",
                                                  params={"after": after}) as r:
        ready.wait()
        got = 0
        for line in r.iter_lines():
            if line.startswith("id: "):
                t = time.monotonic_ns()
                with lock:
                    arrivals.setdefault(int(line[4:]), []).append(t)
                got += 1
                if got == count:
                    return

threads = [threading.Thread(target=follow) for _ in range(n)]
for t in threads:
    t.start()
ready.wait()
print("ready", flush=True)
for t in threads:
    t.join()
print(json.dumps(arrivals), flush=True)
"""


async def _fanout(http: httpx.AsyncClient, services, session_id: str,  # type: ignore[no-untyped-def]
                  samples: int) -> Figure:
    """The subscribers run in another process, as real clients would, so that their
    own work does not share the server's event loop. Both sides read CLOCK_MONOTONIC."""
    log = services.sessions.events
    after = await log.last_seq(session_id)
    key = http.headers["Authorization"].removeprefix("Bearer ")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SUBSCRIBER_SCRIPT, str(http.base_url), key, session_id,
        str(after), str(samples), str(SUBSCRIBERS), stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    assert (await proc.stdout.readline()).strip() == b"ready"
    await asyncio.sleep(0.2)  # let every stream go live
    sent: dict[int, int] = {}
    for i in range(samples):
        t0 = time.monotonic_ns()
        ev = await log.append(session_id, User(content=f"message {i}"))
        sent[ev.seq] = t0
        await asyncio.sleep(0.005)  # a lively session, not a flood
    arrivals = json.loads(await proc.stdout.readline())
    await proc.wait()
    lat = Samples([(t - sent[int(seq)]) / 1e6 for seq, ts in arrivals.items() for t in ts])
    # Baseline: the store alone (insert + commit of the same row, no fan-out).
    base = Samples(await asyncio.to_thread(_sqlite_commits, services.settings, samples))
    return Figure(
        key="events_fanout", title=f"Event append → receipt by {SUBSCRIBERS} SSE clients "
        "(p99)", command="bench/run.py --only events", value=lat.p99, unit="ms",
        baseline=base.p99, baseline_label="bare SQLite insert+commit (p99)",
        goal="p99 < 10 ms", met=lat.p99 < 10,
        details=[f"append→receipt: {lat.describe()}", f"bare commit: {base.describe()}"])


def _sqlite_commits(settings: Settings, n: int) -> list[float]:
    db = sqlite3.connect(settings.data_dir / "baseline.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("DROP TABLE IF EXISTS e")
    db.execute("CREATE TABLE e (s TEXT, seq INT, type TEXT, ts TEXT, data TEXT, "
               "PRIMARY KEY (s, seq))")
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        db.execute("INSERT INTO e VALUES (?,?,?,?,?)", ("s", i, "user", "t", '{"x":1}'))
        db.commit()
        out.append((time.perf_counter() - t0) * 1000)
    db.close()
    return out


async def _append_rate(services, session_id: str, n: int) -> Figure:  # type: ignore[no-untyped-def]
    log = services.sessions.events
    t0 = time.perf_counter()
    for i in range(n):
        await log.append(session_id, User(content=f"rate {i}"))
    rate = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    await asyncio.to_thread(_sqlite_commits, services.settings, n)
    base = n / (time.perf_counter() - t0)
    return Figure(
        key="events_append_rate", title="Sustained event append rate (one session)",
        command="bench/run.py --only events", value=rate, unit="events/s", baseline=base,
        baseline_label="bare SQLite insert+commit loop", goal=None, met=None,
        details=[f"{n} appends, each committed before it is published"])


async def _replay(http: httpx.AsyncClient, services, n: int) -> Figure:  # type: ignore[no-untyped-def]
    r = await http.post("/v1/sessions", json={"name": "replay"})
    session_id = r.json()["id"]
    start = await services.sessions.events.last_seq(session_id)
    now = datetime.now(UTC)
    rows = [EventRow(session_id=session_id, seq=start + i, type="user", ts=now,
                     data=json.dumps({"type": "user", "seq": start + i,
                                      "ts": now.isoformat(), "content": f"m{i}"}))
            for i in range(1, n + 1)]
    async with services.db() as db:
        db.add_all(rows)
        await db.commit()
    services.sessions.events._last.pop(session_id, None)  # the bulk load bypassed append
    t0 = time.perf_counter()
    got = 0
    async with http.stream("GET", f"/v1/sessions/{session_id}/events") as resp:
        async for line in resp.aiter_lines():
            if line.startswith("id: "):
                got += 1
                if got == n + start:
                    break
    rate = got / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    db = sqlite3.connect(services.settings.data_dir / "sophon.db")
    count = len(db.execute("SELECT data FROM events WHERE session_id = ? ORDER BY seq",
                           (session_id,)).fetchall())
    db.close()
    base = count / (time.perf_counter() - t0)
    return Figure(
        key="events_replay", title=f"SSE replay of a {n:,}-event session",
        command="bench/run.py --only events", value=rate, unit="events/s", baseline=base,
        baseline_label="bare SQLite SELECT of the same rows", goal=None, met=None,
        details=[f"{got} events over one SSE connection"])


def run(replay: int = 100_000, samples: int = 300, appends: int = 2000) -> list[Figure]:
    return asyncio.run(_serve(replay, samples, appends))
