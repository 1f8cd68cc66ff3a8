"""Figure 2: a cold execute, end to end over HTTP: a new thread_id on every call.

A new thread needs a box. The server keeps a small pool of started, empty boxes
(``SOPHON_BOX_POOL_SIZE``, default 2) and hands one to each new thread, refilling
the pool in the background; when the pool is empty the box starts on the request
path: cgroup created -> ``sh`` -> ``setpriv`` -> ``bwrap`` (namespaces, mounts) ->
``python3 -I -S boxd.py`` up and greeting. Either way the call also inserts the
thread's row, runs the exec and writes the execution's row. Three variants:

* back-to-back: 40 calls in a row, default settings. The headline: "every call
  needs a new sandbox", as fast as a client can ask; the pool cannot keep up.
* paced: a pause between calls long enough for the pool to refill, so each new
  thread gets a started box (what an occasional new conversation sees).
* pool off (``SOPHON_BOX_POOL_SIZE=0``): every call starts its box on the request
  path; the bare cost of a sandbox start as Sophon does it.

And the one-off execute (no ``thread_id``: a box for one call, deleted after it), with
the default pool, paced like the paced variant (what an occasional one-off call sees;
the headline), and back-to-back (as fast as a client can ask: calls outrun the pool,
which refills one start at a time, and a call that finds it empty starts its own box).

Baseline: the smallest sandbox bubblewrap can make with the *same namespaces* Sophon
asks for (user, pid, net, ipc, uts, cgroup) and a read-only ``/usr``, running
``true``. That is the floor every bwrap-based design pays for a fresh box: kernel
namespace and mount set-up plus two fork/execs. It deliberately leaves out what is
Sophon's own choice (a Python agent in the box, cgroups, the HTTP/DB layer), so the
ratio reads as "what a cold execute costs beyond a bare sandbox". Each variant's
baseline is timed alternately with its calls. The interpreter start
(``python3 -I -S -c pass``) and bwrap + that interpreter are measured as references.

    .venv/bin/python bench/run.py --only cold
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable

from common import (
    BOX_PYTHON,
    EXECUTE,
    Figure,
    Samples,
    check,
    client,
    execute_body,
    live_server,
    sample_ms,
    sample_pairs_ms,
)

GOAL_P50_MS = 50.0
GOAL_ONEOFF_P50_MS = 15.0
NAMESPACES = ["--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc",
              "--unshare-uts", "--unshare-cgroup"]
COMMAND = ".venv/bin/python bench/run.py --only cold"


def bare_bwrap(*payload: str) -> list[str]:
    bwrap = shutil.which("bwrap") or "bwrap"
    argv = [bwrap, *NAMESPACES, "--die-with-parent", "--ro-bind", "/usr", "/usr"]
    for link in ("/bin", "/sbin", "/lib", "/lib64"):
        if os.path.islink(link):
            argv += ["--symlink", os.readlink(link), link]
    argv += ["--proc", "/proc", "--dev", "/dev", *payload]
    return argv


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)


def _variant(calls: int, warmup: int,
             env: dict[str, str] | None = None) -> tuple[Samples, Samples]:
    bwrap_true = bare_bwrap("/usr/bin/true")
    with live_server(env=env) as (srv, key), client(srv, key) as http:
        time.sleep(1.0)  # let the server fill its pool, as it would have long since

        def cold() -> None:
            tid = "cold-" + uuid.uuid4().hex[:12]
            check(http.post(EXECUTE, json=execute_body("true", "bash", thread_id=tid)))

        # Warm-up calls start boxes too; they only warm the server's code paths.
        # Alternating execute and baseline: any other load weighs on both alike.
        return sample_pairs_ms(cold, lambda: _run(bwrap_true), calls, warmup=warmup)


def run(calls: int = 40, warmup: int = 3, paced_calls: int = 20,
        pace: float = 0.4, oneoff_calls: int | None = None) -> list[Figure]:
    py = sample_ms(lambda: _run([BOX_PYTHON, "-I", "-S", "-c", "pass"]), calls, warmup=5)
    bwpy = sample_ms(lambda: _run(bare_bwrap(BOX_PYTHON, "-I", "-S", "-c", "pass")),
                     calls, warmup=5)

    burst, b_burst = _variant(calls, warmup)
    paced, b_paced = _paced_variant(paced_calls, warmup, pace)
    nopool, b_nopool = _variant(calls, warmup, {"SOPHON_BOX_POOL_SIZE": "0"})
    oneoff, b_oneoff, burst_oneoff = _oneoff_variant(oneoff_calls or paced_calls, calls,
                                                     warmup, pace)

    refs = [
        f"reference, `{BOX_PYTHON} -I -S -c pass` (boxd's interpreter): {py.describe()}",
        f"reference, bare bwrap + `{BOX_PYTHON} -I -S -c pass`: {bwpy.describe()}",
    ]
    label = "bare `bwrap` (same namespaces, ro /usr) + `true`, p50"

    def fig(key: str, title: str, s: Samples, b: Samples, extra: list[str]) -> Figure:
        return Figure(
            key=key, title=title, command=COMMAND, value=s.p50, unit="ms",
            baseline=b.p50, baseline_label=label, goal=f"p50 < {GOAL_P50_MS:g} ms",
            met=s.p50 < GOAL_P50_MS,
            details=[f"cold execute: {s.describe()}; {warmup} warm-up calls not counted",
                     f"baseline, timed alternately with the executes: {b.describe()}",
                     *extra])

    return [
        fig("cold", "Cold execute p50, back-to-back new threads (default pool of 2)",
            burst, b_burst, refs),
        fig("cold-paced", f"Cold execute p50, new threads {pace:g} s apart (pool refilled)",
            paced, b_paced, [f"{pace:g} s pause after each call, not timed"]),
        fig("cold-nopool", "Cold execute p50, pool off (box starts on the request path)",
            nopool, b_nopool, ["server started with SOPHON_BOX_POOL_SIZE=0"]),
        Figure(
            key="oneoff", command=COMMAND, value=oneoff.p50, unit="ms",
            title=f"One-off execute p50 (no thread_id, default pool, {pace:g} s apart)",
            baseline=b_oneoff.p50, baseline_label=label,
            goal=f"p50 ≤ {GOAL_ONEOFF_P50_MS:g} ms", met=oneoff.p50 <= GOAL_ONEOFF_P50_MS,
            details=[f"one-off execute: {oneoff.describe()}; {warmup} warm-up calls not "
                     f"counted; {pace:g} s pause after each call, not timed",
                     f"baseline, timed alternately with the executes: {b_oneoff.describe()}",
                     f"one-off execute back-to-back (same server, no pause; the pool of 2 "
                     f"drains at once): {burst_oneoff.describe()}"]),
    ]


def _paced_variant(calls: int, warmup: int, pace: float) -> tuple[Samples, Samples]:
    """Like ``_variant``, with an untimed pause after each execute + baseline pair."""
    with live_server() as (srv, key), client(srv, key) as http:
        time.sleep(1.0)

        def cold() -> None:
            tid = "cold-" + uuid.uuid4().hex[:12]
            check(http.post(EXECUTE, json=execute_body("true", "bash", thread_id=tid)))

        return _paced(cold, calls, warmup, pace)


def _paced(call: Callable[[], None], calls: int, warmup: int,
           pace: float) -> tuple[Samples, Samples]:
    """``call`` and the bare-bwrap baseline alternately, an untimed pause after each pair."""
    bwrap_true = bare_bwrap("/usr/bin/true")
    ta: list[float] = []
    tb: list[float] = []
    for i in range(warmup + calls):
        t0 = time.perf_counter_ns()
        call()
        t1 = time.perf_counter_ns()
        _run(bwrap_true)
        t2 = time.perf_counter_ns()
        if i >= warmup:
            ta.append((t1 - t0) / 1e6)
            tb.append((t2 - t1) / 1e6)
        time.sleep(pace)
    return Samples(ta), Samples(tb)


def _oneoff_variant(calls: int, burst_calls: int, warmup: int,
                    pace: float) -> tuple[Samples, Samples, Samples]:
    """One-off executes (no thread_id) with the default pool: paced, then back-to-back."""
    with live_server() as (srv, key), client(srv, key) as http:
        time.sleep(1.0)

        def oneoff() -> None:
            check(http.post(EXECUTE, json=execute_body("true", "bash")))

        paced, base = _paced(oneoff, calls, warmup, pace)
        time.sleep(1.0)  # the pool refilled, as for the paced calls
        burst = sample_ms(oneoff, burst_calls)
    return paced, base, burst


if __name__ == "__main__":
    for fig in run():
        print(fig.title, "\n  " + "\n  ".join(fig.details))
