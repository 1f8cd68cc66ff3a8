"""Figure 1: a warm execute, end to end over HTTP on loopback.

The thread's box is already running, so a call is: HTTP request -> auth (cached) ->
ExecutionService -> one exec frame to boxd -> boxd spawns ``bash <script>`` -> result
frame -> execution row committed -> HTTP response. The baseline is what the same work
costs on the host with no server and no sandbox: ``subprocess.run(["bash", "-c",
"true"])`` in this process, timed alternately with the executes; the goal is a ratio
to it. ``subprocess.run(["true"])`` (the spawn alone), GET /healthz and GET /v1/me on
the same connection are measured too, as the floors of the spawn and the HTTP layer.

    .venv/bin/python bench/run.py --only warm
"""

from __future__ import annotations

import subprocess

from common import (
    EXECUTE,
    Figure,
    check,
    client,
    execute_body,
    live_server,
    sample_ms,
    sample_pairs_ms,
)

GOAL_RATIO = 4.0  # warm execute p50 <= 4 x the host's `bash -c true` p50


def run(calls: int = 300, warmup: int = 30) -> list[Figure]:
    with live_server() as (srv, key), client(srv, key) as http:
        body = execute_body("true", "bash", thread_id="bench-warm")

        def call() -> None:
            check(http.post(EXECUTE, json=body))

        def bare() -> None:
            subprocess.run(["bash", "-c", "true"], check=True)

        # Alternating execute and baseline calls: any other load weighs on both alike.
        warm, base = sample_pairs_ms(call, bare, calls, warmup=warmup)
        spawn = sample_ms(lambda: subprocess.run(["true"], check=True), calls, warmup=20)
        # Reference floors on the same connection: HTTP only, and HTTP + API-key auth.
        health = sample_ms(lambda: http.get("/healthz").raise_for_status(), calls, warmup=20)
        me = sample_ms(lambda: http.get("/v1/me").raise_for_status(), calls, warmup=20)

    return [Figure(
        key="warm",
        title="Warm execute p50 (existing thread, bash `true`, HTTP keep-alive)",
        command=".venv/bin/python bench/run.py --only warm",
        value=warm.p50,
        unit="ms",
        baseline=base.p50,
        baseline_label='host `bash -c true` p50',
        goal=f"p50 ≤ {GOAL_RATIO:g}× baseline",
        met=warm.p50 <= GOAL_RATIO * base.p50,
        details=[
            f"warm execute: {warm.describe()}; {warmup} warm-up calls not counted",
            f"baseline `subprocess.run([\"bash\", \"-c\", \"true\"])`, timed alternately "
            f"with the executes: {base.describe()}",
            f"reference, `subprocess.run([\"true\"])` (the spawn alone): {spawn.describe()}",
            f"reference, GET /healthz (HTTP only): {health.describe()}",
            f"reference, GET /v1/me (HTTP + auth): {me.describe()}",
        ],
    )]


if __name__ == "__main__":
    for fig in run():
        print(fig.title, "\n  " + "\n  ".join(fig.details))
