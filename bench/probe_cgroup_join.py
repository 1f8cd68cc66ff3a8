"""Probe: what joining the box's cgroups costs the sandbox start right after it.

Sophon's launcher is ``sh -c 'echo $$ > <cgroup>/cgroup.procs ...; exec setpriv ...
bwrap ...'``. This times, from spawn to the sandbox's first byte of output
(``echo x`` as the payload, so no Python in the way), the same launcher joining
no cgroup, each controller's cgroup alone, and all of them; each also with a 50 ms
pause between the join and the exec of setpriv/bwrap (the pause is subtracted),
which shows whether the cost is a transient that follows the join; and without
bwrap's --unshare-cgroup or --unshare-net. The time from the first output to the
exit is shown too, to tell start-up from tear-down.

    .venv/bin/python bench/probe_cgroup_join.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from common import make_data_dir, remove_server_cgroups
from sophon.box.bwrap import BoxSpec
from sophon.box.manager import BoxManager
from sophon.config import load_settings

PAUSE = 0.05


def to_first_output(argv: list[str]) -> tuple[float, float]:
    """Milliseconds from spawn to the first byte of output, and from there to exit."""
    t0 = time.perf_counter_ns()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    if not proc.stdout.read(1):
        raise RuntimeError("the sandbox printed nothing")
    t1 = time.perf_counter_ns()
    proc.wait()
    return (t1 - t0) / 1e6, (time.perf_counter_ns() - t1) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    data_dir = make_data_dir()
    try:
        boxes = BoxManager(load_settings(data_dir=data_dir, box_pool_size=0))
        assert boxes.cgroups is not None, "this probe wants cgroups (run as root)"
        d = boxes.box_dir("tprobecg")
        spec = BoxSpec("tprobecg", d / "workspace", d / "home", boxes.limits, 64 * 2**20)
        boxes.backend.prepare_dirs(spec)
        launcher = boxes.backend.launcher(spec, [])
        payload = [*launcher[:-4], "/usr/bin/echo", "x"]  # python3 -I -S boxd -> echo x
        cg = boxes.cgroups.create("tprobecg", boxes.limits)
        variants: dict[str, list[Path]] = {"no cgroup": [], "all": cg.procs_files}
        for f in cg.procs_files:
            hierarchy = f.relative_to("/sys/fs/cgroup").parts[0]  # v1: memory, pids, cpu
            variants[f"{hierarchy} only"] = [f]
        pids = [f for f in cg.procs_files if "pids" in f.parts]
        flags = {"": payload}
        for flag in ("--unshare-cgroup", "--unshare-net"):
            flags[f", bwrap without {flag}"] = [a for a in payload if a != flag]
        times: dict[str, list[tuple[float, float]]] = {}

        def one(label: str, files: list[Path], argv: list[str], pause: float = 0.0) -> None:
            joins = "; ".join(f"echo $$ > {shlex.quote(str(f))}" for f in files) or ":"
            script = joins + (f"; sleep {pause}" if pause else "") + ' && exec "$@"'
            first, rest = to_first_output(["/bin/sh", "-c", script, "sh", *argv])
            times.setdefault(label, []).append((first - pause * 1000, rest))

        try:
            for _ in range(args.rounds):
                for name, files in variants.items():
                    one(name, files, payload)
                    one(f"{name} + 50 ms pause", files, payload, PAUSE)
                for suffix, argv in list(flags.items())[1:]:
                    one(f"no cgroup{suffix}", [], argv)
                    if pids:
                        one(f"pids only{suffix}", pids, argv)
        finally:
            cg.remove()
        print(f"{'launcher joins':<44}  {'to first output':>15}  {'then to exit':>12}  (p50 ms)")
        for label, v in times.items():
            first = statistics.median(t[0] for t in v)
            rest = statistics.median(t[1] for t in v)
            print(f"{label:<44}  {first:15.2f}  {rest:12.2f}")
    finally:
        remove_server_cgroups(data_dir, Path("/proc/self/cgroup").read_text())
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
