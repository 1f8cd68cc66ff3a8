"""Nodes on one PostgreSQL (issue 23), each figure against its same-run baseline:

- fan-out: an event appended on node A, received by a stream on node B (LISTEN/NOTIFY
  wakes B, which reads the rows), against the same event received on A itself. A session
  made on A is followed on A and on B; its ``exec``s of ``echo`` append events; latency =
  receipt less the event's own timestamp (one machine, one clock).
- forwarding: ``exec`` of ``true`` in a session run by A, asked of B (which forwards it),
  against the same asked of A, alternating.
- takeover: A runs a session and is killed (SIGKILL); the time until the session's next
  ``exec`` answers through B (B takes it once A's lease has run out), against the same
  after A is killed and started again (a node alone: a restart).
- throughput: 12 clients, each with a session made through the nodes in turn, ``exec``
  of ``true`` for a fixed time, with 1, 2 and 3 nodes on one data directory; the sessions
  each node runs, and total execs per second against one node's.

    .venv/bin/python bench/run.py --only cluster
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections import Counter
from datetime import datetime

import httpx

from common import ROOT, SERVER_ENV, Figure, LiveServer, Samples

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from tests.integration.postgres_support import nodes_on, postgres  # noqa: E402

COMMAND = ".venv/bin/python bench/run.py --only cluster"


class Follower:
    """A session's SSE stream on one node, read in a thread: when each seq arrived,
    and the event's own time."""

    def __init__(self, url: str, key: str, sid: str) -> None:
        self.latency_ms: dict[int, float] = {}
        self._ready = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, args=(url, key, sid), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the stream did not open"

    def _run(self, url: str, key: str, sid: str) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                          timeout=httpx.Timeout(10, read=None)) as http, \
                http.stream("GET", f"/v1/sessions/{sid}/events") as resp:
            self._ready.set()
            for line in resp.iter_lines():
                if self._stop:
                    return
                if not line.startswith("data:"):
                    continue
                now = time.time()
                event = json.loads(line[5:])
                ts = datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()
                self.latency_ms[event["seq"]] = (now - ts) * 1000

    def close(self) -> None:
        self._stop = True


LEASE = 3.0
NODE_ENV = {"SOPHON_NODE_HEARTBEAT_SECONDS": "0.5", "SOPHON_NODE_LEASE_SECONDS": str(LEASE)}


def cluster(url: str, n: int) -> contextlib.AbstractContextManager[list[LiveServer]]:
    """``n`` nodes on the database at ``url``, sharing one data directory."""
    return nodes_on(url, "abc"[:n], {**SERVER_ENV, **NODE_ENV})


def client(srv: LiveServer, key: str) -> httpx.Client:
    return httpx.Client(base_url=srv.url, timeout=60,
                        headers={"Authorization": f"Bearer {key}"})


def exec_ms(http: httpx.Client, sid: str, command: str = "true") -> float:
    start = time.perf_counter()
    r = http.post(f"/v1/sessions/{sid}/exec", json={"command": command})
    elapsed = (time.perf_counter() - start) * 1000
    assert r.status_code == 200 and '"exit_code":0' in r.text.replace(" ", ""), r.text
    return elapsed


def fanout(url: str, commands: int) -> Figure:
    with cluster(url, 2) as (a, b):
        key = a.add_user("bench-fanout", database_url=url)
        with client(a, key) as http:
            sid = http.post("/v1/sessions", json={"name": "bench"}).json()["id"]
            near, far = Follower(a.url, key, sid), Follower(b.url, key, sid)
            for i in range(commands):
                http.post(f"/v1/sessions/{sid}/exec", json={"command": f"echo {i}"})
                time.sleep(0.01)  # one command at a time, as a person or agent types
            last = http.get(f"/v1/sessions/{sid}/events", headers={
                "Accept": "application/json"}).json()["last_seq"]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (
                    len(far.latency_ms) < last or len(near.latency_ms) < last):
                time.sleep(0.05)
            near.close()
            far.close()
    seqs = sorted(set(near.latency_ms) & set(far.latency_ms))
    seqs = seqs[len(seqs) // 10:]  # the session's first events (its start) left out
    on_a = Samples([near.latency_ms[s] for s in seqs])
    on_b = Samples([far.latency_ms[s] for s in seqs])
    return Figure(
        "cluster_event_fanout_p50", "Event appended on node A → received on node B (p50)",
        COMMAND, on_b.p50, "ms", on_a.p50, "received on node A itself (p50)",
        details=[f"on node B: {on_b.describe()}", f"on node A: {on_a.describe()}",
                 f"{len(seqs)} events of {commands} session commands; every event reached "
                 f"both: {len(far.latency_ms) == len(near.latency_ms) == last}"])


def forwarding(url: str, samples: int) -> Figure:
    with cluster(url, 2) as (a, b):
        key = a.add_user("bench-forwarding", database_url=url)
        with client(a, key) as on_a, client(b, key) as on_b:
            sid = on_a.post("/v1/sessions", json={"name": "fwd"}).json()["id"]
            for _ in range(5):  # both paths warm (box awake, connections open)
                exec_ms(on_a, sid)
                exec_ms(on_b, sid)
            owner, through = [], []
            for _ in range(samples):
                owner.append(exec_ms(on_a, sid))
                through.append(exec_ms(on_b, sid))
    own, fwd = Samples(owner), Samples(through)
    return Figure(
        "cluster_exec_forwarded_p50", "exec through a node that does not run the session "
        "(p50)", COMMAND, fwd.p50, "ms", own.p50, "the same exec asked of the node that "
        "runs it (p50)", details=[f"through node B: {fwd.describe()}",
                                  f"at node A: {own.describe()}"])


def _answers_in(http: httpx.Client, sid: str, since: float, deadline: float = 60) -> float:
    """Seconds from ``since`` until an exec in the session answers through ``http``."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with contextlib.suppress(httpx.HTTPError):
            r = http.post(f"/v1/sessions/{sid}/exec", json={"command": "true"}, timeout=10)
            if r.status_code == 200:
                return time.monotonic() - since
        time.sleep(0.05)
    raise AssertionError("the session never answered again")


def takeover(url: str) -> Figure:
    with cluster(url, 2) as (a, b):
        key = a.add_user("bench-takeover", database_url=url)
        with client(a, key) as on_a, client(b, key) as on_b:
            sid = on_a.post("/v1/sessions", json={"name": "moving"}).json()["id"]
            exec_ms(on_a, sid)
            killed = time.monotonic()
            a.kill()
            moved = _answers_in(on_b, sid, killed)
            # The same session now runs on B: B killed and started again, alone.
            a.stop()
            killed = time.monotonic()
            b.kill()
            b.start()
            restarted = _answers_in(on_b, sid, killed)
    return Figure(
        "cluster_takeover_s", "Session answering again through node B after its node A "
        f"is killed (lease {LEASE:g} s)", COMMAND, moved, "s", restarted,
        "the same after its node is killed and started again (a node alone)",
        details=[f"taken over by B: {moved:.2f} s (lease {LEASE:g} s, heartbeat "
                 f"{NODE_ENV['SOPHON_NODE_HEARTBEAT_SECONDS']} s)",
                 f"restart of the node: {restarted:.2f} s"])


def _rate(url: str, n: int, clients: int, seconds: float) -> tuple[float, list[int]]:
    """Execs per second of ``clients`` sessions made through ``n`` nodes in turn, and
    how many of them each node runs."""
    with cluster(url, n) as nodes:
        key = nodes[0].add_user(f"bench{n}", database_url=url)
        https = [client(nodes[i % n], key) for i in range(clients)]
        sids = [h.post("/v1/sessions", json={"name": f"t{i}"}).json()["id"]
                for i, h in enumerate(https)]
        for h, sid in zip(https, sids, strict=True):
            exec_ms(h, sid)  # awake
        done = Counter[int]()
        stop = time.monotonic() + seconds

        def work(i: int) -> None:
            while time.monotonic() < stop:
                exec_ms(https[i], sids[i])
                done[i] += 1

        workers = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        for h in https:
            h.close()
        return (sum(done.values()) / seconds,
                sorted(_sessions_per_node(url, sids).values(), reverse=True))


def throughput(url: str, seconds: float, clients: int = 12) -> tuple[Figure, Figure]:
    measured = {n: _rate(url, n, clients, seconds) for n in (1, 2, 3)}
    rates = {n: rate for n, (rate, _) in measured.items()}
    details = [f"{n} node(s): {rate:,.0f} exec/s, sessions per node {spread}"
               for n, (rate, spread) in measured.items()]
    return (Figure("cluster_throughput_2_nodes", "Total exec/s with 2 nodes on this machine",
                   COMMAND, rates[2], "exec/s", rates[1], "1 node", details=details),
            Figure("cluster_throughput_3_nodes", "Total exec/s with 3 nodes on this machine",
                   COMMAND, rates[3], "exec/s", rates[1], "1 node", details=details))


def _sessions_per_node(url: str, sids: list[str]) -> Counter[str]:
    import asyncio

    from sqlalchemy import select

    from sophon.store.db import make_engine, sessionmaker
    from sophon.store.tables import SessionRow

    async def read() -> Counter[str]:
        engine = make_engine(url)
        try:
            async with sessionmaker(engine)() as db:
                rows = await db.scalars(select(SessionRow.node_id)
                                        .where(SessionRow.id.in_(sids)))
                return Counter(str(r) for r in rows)
        finally:
            await engine.dispose()

    return asyncio.run(read())


def run(commands: int = 200, samples: int = 200, seconds: float = 20.0) -> list[Figure]:
    with postgres() as url:
        figures = [fanout(url, commands), forwarding(url, samples), takeover(url)]
    with postgres() as url:  # a fresh database: the sessions above are not counted
        figures += throughput(url, seconds)
    return figures


if __name__ == "__main__":
    for fig in run():
        print(fig.title, f"{fig.value:.2f} ms vs {fig.baseline:.2f} ms", *fig.details, sep="\n  ")
