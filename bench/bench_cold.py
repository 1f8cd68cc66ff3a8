"""Figure 2: a cold execute, end to end over HTTP: a new thread_id, so a new box starts.

A call is: HTTP -> thread row inserted -> cgroup created -> ``sh`` -> ``setpriv`` ->
``bwrap`` (namespaces, mounts) -> ``python3 -I -S boxd.py`` up and greeting -> the
exec -> execution row written -> HTTP response.

Baseline: the smallest sandbox bubblewrap can make with the *same namespaces* Sophon
asks for (user, pid, net, ipc, uts, cgroup) and a read-only ``/usr``, running
``true``. That is the floor every bwrap-based design pays for a fresh box: kernel
namespace and mount set-up plus two fork/execs. It deliberately leaves out what is
Sophon's own choice (a Python agent in the box, cgroups, the HTTP/DB layer), so
the ratio reads as "how much a cold execute costs beyond a bare sandbox". The
interpreter start (``python3 -I -S -c pass``) and bwrap + that interpreter are
measured too, as references.

    .venv/bin/python bench/run.py --only cold
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

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
NAMESPACES = ["--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc",
              "--unshare-uts", "--unshare-cgroup"]


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


def run(calls: int = 40, warmup: int = 3) -> list[Figure]:
    bwrap_true = bare_bwrap("/usr/bin/true")
    py = sample_ms(lambda: _run([BOX_PYTHON, "-I", "-S", "-c", "pass"]), calls, warmup=5)
    bwrap_py = bare_bwrap(BOX_PYTHON, "-I", "-S", "-c", "pass")
    bwpy = sample_ms(lambda: _run(bwrap_py), calls, warmup=5)

    with live_server() as (srv, key), client(srv, key) as http:

        def cold() -> None:
            tid = "cold-" + uuid.uuid4().hex[:12]
            check(http.post(EXECUTE, json=execute_body("true", "bash", thread_id=tid)))

        def ephemeral() -> None:
            check(http.post(EXECUTE, json=execute_body("true", "bash")))

        # Warm-up calls start boxes too; they only warm the server's code paths.
        # Alternating execute and baseline: any other load weighs on both alike.
        samples, base = sample_pairs_ms(cold, lambda: _run(bwrap_true), calls, warmup=warmup)
        eph = sample_ms(ephemeral, calls, warmup=warmup)

    return [Figure(
        key="cold",
        title="Cold execute p50 (new thread_id -> new box, bash `true`)",
        command=".venv/bin/python bench/run.py --only cold",
        value=samples.p50,
        unit="ms",
        baseline=base.p50,
        baseline_label="bare `bwrap` (same namespaces, ro /usr) running `true`, p50",
        goal=f"p50 < {GOAL_P50_MS:g} ms",
        met=samples.p50 < GOAL_P50_MS,
        details=_details(samples, base, py, bwpy, eph, warmup),
    )]


def _details(samples: Samples, base: Samples, py: Samples, bwpy: Samples, eph: Samples,
             warmup: int) -> list[str]:
    return [
        f"cold execute: {samples.describe()}; {warmup} warm-up calls not counted",
        f"baseline bare bwrap + `true`, timed alternately with the executes: "
        f"{base.describe()}",
        f"reference, `{BOX_PYTHON} -I -S -c pass` (boxd's interpreter): {py.describe()}",
        f"reference, bare bwrap + `{BOX_PYTHON} -I -S -c pass`: {bwpy.describe()}",
        f"reference, execute without thread_id (throw-away box, teardown included): "
        f"{eph.describe()}",
    ]


if __name__ == "__main__":
    for fig in run():
        print(fig.title, "\n  " + "\n  ".join(fig.details))
