"""A burst of one-off executions (issue 16, "Capacity, measured"): N at once, no thread_id.

Each call of the burst needs a box of its own; the pool (2) serves the first few and the
rest start on the request path, all at the same moment, on a machine with few CPUs. The
red-team measured p50 2.3-3.0 s and p99 3.2-4.1 s for 100 on 2 CPUs, every start
competing with every other. With the start-concurrency cap
(``SOPHON_BOX_START_CONCURRENCY``, default twice the CPUs) the starts beyond it wait in
line instead. Two servers, timed in the same run, alternately (burst by burst):

* capped: the defaults;
* uncapped: ``SOPHON_BOX_START_CONCURRENCY=100000`` (what main did before the cap).

Each burst sends N ``print(1)`` executions at once (one connection each) and records
every call's latency and status; the figure is the capped p99 / the uncapped p99 over all
rounds, with the errors (any answer but 200 success) counted: a burst must have none.
Per-user ceilings (SOPHON_USER_MAX_*) are lifted (common.SERVER_ENV): one user sends
the whole burst.

    .venv/bin/python bench/run.py --only burst
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from common import EXECUTE, Figure, LiveServer, Samples, execute_body, live_server

COMMAND = ".venv/bin/python bench/run.py --only burst"
UNCAPPED = {"SOPHON_BOX_START_CONCURRENCY": "100000"}


def _burst(http: httpx.Client, n: int) -> tuple[list[float], list[str], float]:
    """Latencies (ms) of n concurrent one-offs, what those that failed answered, the
    wall time."""
    def one(_: int) -> tuple[float, str | None]:
        t0 = time.perf_counter()
        resp = http.post(EXECUTE, json=execute_body("print(1)", "python"))
        ok = resp.status_code == 200 and resp.json().get("success") is True
        return (time.perf_counter() - t0) * 1e3, None if ok else \
            f"HTTP {resp.status_code}: {resp.text[:160]}"

    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        got = list(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    return [ms for ms, _ in got], [e for _, e in got if e], wall


def _settle(http: httpx.Client) -> None:
    """Between bursts: one call, then a pause for the pool to refill and discards to end."""
    http.post(EXECUTE, json=execute_body("print(1)", "python"))
    time.sleep(2.0)


def _client(srv: LiveServer, key: str, n: int) -> httpx.Client:
    """Room for the whole burst at once (httpx keeps 100 connections at most by default)."""
    return httpx.Client(base_url=srv.url, timeout=300,
                        headers={"Authorization": f"Bearer {key}"},
                        limits=httpx.Limits(max_connections=n + 4,
                                            max_keepalive_connections=n + 4))


def run(n: int = 100, rounds: int = 3) -> list[Figure]:
    results: dict[str, dict[str, list[float]]] = {
        k: {"ms": [], "wall": []} for k in ("capped", "uncapped")}
    failures: dict[str, list[str]] = {"capped": [], "uncapped": []}
    with live_server() as (capped_srv, capped_key), \
            live_server(env=UNCAPPED) as (open_srv, open_key):
        clients = {"capped": _client(capped_srv, capped_key, n),
                   "uncapped": _client(open_srv, open_key, n)}
        try:
            for http in clients.values():
                _settle(http)
            for _ in range(rounds):
                for name, http in clients.items():
                    ms, errors, wall = _burst(http, n)
                    results[name]["ms"] += ms
                    failures[name] += errors
                    results[name]["wall"].append(wall)
                    _settle(http)
        finally:
            for http in clients.values():
                http.close()

    capped, uncapped = (Samples(results[k]["ms"]) for k in ("capped", "uncapped"))
    errors = {k: len(v) for k, v in failures.items()}
    details = [
        f"{rounds} bursts of {n} one-off `print(1)` executions per server, alternately",
        f"capped (default SOPHON_BOX_START_CONCURRENCY): {capped.describe()}; "
        f"errors {errors['capped']}; wall per burst "
        + ", ".join(f"{w:.1f} s" for w in results["capped"]["wall"]),
        f"uncapped: {uncapped.describe()}; errors {errors['uncapped']}; wall per burst "
        + ", ".join(f"{w:.1f} s" for w in results["uncapped"]["wall"]),
        *(f"{k} failed: {e}" for k, v in failures.items() for e in sorted(set(v))[:3]),
    ]
    return [Figure(
        key="burst_p99", title=f"Burst of {n} one-offs: p99, start cap vs none",
        command=COMMAND, value=capped.p99, unit="ms", baseline=uncapped.p99,
        baseline_label="no cap", goal="≤ 1.2× and no errors",
        met=capped.p99 <= 1.2 * uncapped.p99 and errors["capped"] == 0, details=details,
    ), Figure(
        key="burst_p50", title=f"Burst of {n} one-offs: p50, start cap vs none",
        command=COMMAND, value=capped.p50, unit="ms", baseline=uncapped.p50,
        baseline_label="no cap",
    )]
