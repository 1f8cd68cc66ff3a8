"""A warm execute right after a one-off (issue 22): the one-off's box is deleted and the
pool refilled in the background, which must not slow the request that comes next.

Rounds, each after a pause long enough for the server's background work to end
(``PAUSE_S``): a one-off execute (untimed), then at once a warm execute on an existing
thread (timed); and, after the same pause, a warm execute (untimed), then at once the
same warm execute (timed, the baseline). Goal: the warm execute after a one-off within
1.2× the baseline at p50.

    .venv/bin/python bench/run.py --only after_oneoff
"""

from __future__ import annotations

import time

from common import (
    EXECUTE,
    Figure,
    Samples,
    check,
    client,
    execute_body,
    live_server,
    time_ms,
)

GOAL_RATIO = 1.2
PAUSE_S = 1.5  # more than a one-off's clean-up and the pool's refill take
COMMAND = ".venv/bin/python bench/run.py --only after_oneoff"


def run(pairs: int = 80, warmup: int = 3, pause: float = PAUSE_S) -> list[Figure]:
    with live_server() as (srv, key), client(srv, key) as http:
        warm = execute_body("true", "bash", thread_id="bench-after")
        oneoff = execute_body("true", "bash")

        def call(body: dict[str, object]) -> None:
            check(http.post(EXECUTE, json=body))

        after, alone = [], []
        for n in range(warmup + pairs):
            time.sleep(pause)
            call(oneoff)
            t = time_ms(lambda: call(warm))
            time.sleep(pause)
            call(warm)
            t_alone = time_ms(lambda: call(warm))
            if n >= warmup:
                after.append(t)
                alone.append(t_alone)
    a, b = Samples(after), Samples(alone)
    return [Figure(
        key="after_oneoff", title="Warm execute right after a one-off",
        command=COMMAND, value=a.p50, unit="ms", baseline=b.p50,
        baseline_label="right after a warm execute", goal=f"≤ {GOAL_RATIO}×",
        met=a.p50 <= GOAL_RATIO * b.p50,
        details=[f"after a one-off: {a.describe()}",
                 f"after a warm execute: {b.describe()}",
                 f"{pairs} rounds of each, alternately, {pause:g} s apart, after "
                 f"{warmup} warm-up rounds"])]


if __name__ == "__main__":
    for fig in run():
        print(fig.title, "\n  " + "\n  ".join(fig.details))
