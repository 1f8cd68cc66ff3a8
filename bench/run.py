"""Run every benchmark and print a markdown summary (the ``make bench`` entry point).

Each figure is measured against a baseline taken in the same run, on the same
machine, and reported as a ratio (sophon / baseline). Each benchmark starts its
own ``sophon serve`` with a fresh data directory, so no figure sees another's boxes.

    .venv/bin/python bench/run.py                       # everything, about 2 minutes
    .venv/bin/python bench/run.py --only warm,cold      # some of it
    .venv/bin/python bench/run.py --quick               # fewer samples, a smoke test
    .venv/bin/python bench/run.py --json out.json       # also write the raw figures
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_after_oneoff  # noqa: E402
import bench_agent  # noqa: E402
import bench_box_start  # noqa: E402
import bench_burst  # noqa: E402
import bench_checkpoints  # noqa: E402
import bench_claude_code  # noqa: E402
import bench_cli  # noqa: E402
import bench_cluster  # noqa: E402
import bench_cold  # noqa: E402
import bench_dashboard  # noqa: E402
import bench_egress  # noqa: E402
import bench_events  # noqa: E402
import bench_images  # noqa: E402
import bench_live  # noqa: E402
import bench_mcp  # noqa: E402
import bench_memory  # noqa: E402
import bench_session_exec  # noqa: E402
import bench_sessions  # noqa: E402
import bench_soak  # noqa: E402
import bench_throughput  # noqa: E402
import bench_warm  # noqa: E402
from common import Figure, fmt, machine  # noqa: E402

BENCHES: dict[str, tuple[Callable[..., list[Figure]], dict[str, object]]] = {
    "warm": (bench_warm.run, {"calls": 60, "warmup": 10}),
    "cold": (bench_cold.run, {"calls": 10, "warmup": 2, "paced_calls": 5}),
    "throughput": (bench_throughput.run, {"seconds": 3.0}),
    "memory": (bench_memory.run, {"settle": 1.0}),
    "events": (bench_events.run, {"replay": 10_000, "samples": 100, "appends": 300}),
    "sessions": (bench_sessions.run, {"sessions": 50}),
    "session_exec": (bench_session_exec.run, {"calls": 40, "warmup": 5}),
    "agent": (bench_agent.run, {"n": 15}),
    "cli": (bench_cli.run, {"n": 5, "seconds": 2.0}),
    "claude_code": (bench_claude_code.run, {"rounds": 3, "repeats": 1}),
    "dashboard": (bench_dashboard.run, {"calls": 20, "warmup": 2}),
    "box_start": (bench_box_start.run, {"boxes": 8, "samples": 3}),
    "burst": (bench_burst.run, {"n": 10, "rounds": 1}),
    "egress": (bench_egress.run, {"n": 8, "rounds": 2, "size_mb": 2, "repeats": 1}),
    "live": (bench_live.run, {"lines": 10, "keys": 20}),
    "mcp": (bench_mcp.run, {"turns": 3}),
    "checkpoints": (bench_checkpoints.run, {"files": 200, "calls": 4, "checkpoints": 10,
                                            "samples": 3}),
    "images": (bench_images.run, {"samples": 5, "cold": False}),
    "after_oneoff": (bench_after_oneoff.run, {"pairs": 3, "warmup": 1, "pause": 0.3}),
    "cluster": (bench_cluster.run, {"commands": 10, "samples": 5, "seconds": 2.0}),
    "soak": (bench_soak.run, {"minutes": 0.5, "sessions": 3, "rate": 4.0, "window": 10.0}),
}


def _verdict(fig: Figure) -> str:
    if fig.met is None:
        return "—"
    return "**yes**" if fig.met else "**NO**"


def _ratio(fig: Figure) -> str:
    return "—" if math.isnan(fig.ratio) else f"{fig.ratio:.2f}×"


def markdown(figures: list[Figure], info: dict[str, str], seconds: float) -> str:
    out = ["## Sophon benchmarks", ""]
    out.append("Machine: " + "; ".join(f"{k} {v}" for k, v in info.items()))
    out += ["", "| Figure | Sophon | Baseline | Ratio | Goal | Met |",
            "|---|---|---|---|---|---|"]
    for f in figures:
        out.append(f"| {f.title} | {fmt(f.value, f.unit)} | {f.baseline_label}: "
                   f"{fmt(f.baseline, f.unit)} | {_ratio(f)} | {f.goal or '—'} | {_verdict(f)} |")
    out.append("")
    for f in figures:
        if not f.details:
            continue
        out += [f"### {f.title}", "", f"`{f.command}`", ""]
        out += [f"- {d}" for d in f.details]
        out.append("")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    out.append(f"_Total benchmark time {seconds:.0f} s; load average at the end {load}; "
               "ratio = sophon / baseline._")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(BENCHES),
                        help=f"comma-separated subset of: {', '.join(BENCHES)}")
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke test)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when a goal is not met")
    args = parser.parse_args(argv)

    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")

    started = time.monotonic()
    info = machine()
    figures: list[Figure] = []
    for name in names:
        fn, quick = BENCHES[name]
        print(f"running {name} ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        figures += fn(**quick) if args.quick else fn()
        print(f"  {name} done in {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)

    print(markdown(figures, info, time.monotonic() - started))
    if args.json:
        args.json.write_text(json.dumps(
            {"machine": info,
             "figures": [{**asdict(f), "ratio": f.ratio} for f in figures]}, indent=2))
    return 1 if args.strict and any(f.met is False for f in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
