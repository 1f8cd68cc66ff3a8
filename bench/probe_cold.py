"""Probe: where a cold execute's time goes, stage by stage.

Part 1 replays ``BwrapBackend.start`` step by step with Sophon's own objects
(cgroup creation, directory preparation, process spawn, boxd's greeting, the
first exec, and the stop a throw-away box pays), and the DB insert of a new thread.

Part 2 peels the launch chain one layer at a time, each variant timed from spawn
until boxd's ``ready`` frame (or until exit, for ``true``/``pass`` payloads):

    sh (joins cgroups) -> setpriv -> bwrap <Sophon's full argv> -> python3 -I -S boxd.py

    .venv/bin/python bench/probe_cold.py [--calls 30]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import time
import uuid
from collections import defaultdict
from pathlib import Path

from bench_cold import bare_bwrap
from common import (
    BOX_PYTHON,
    EXECUTE,
    Samples,
    check,
    client,
    execute_body,
    live_server,
    make_data_dir,
    remove_server_cgroups,
    sample_ms,
)
from sophon.box.box import Box
from sophon.box.bwrap import BASE_ENV, WORKSPACE, BoxSpec
from sophon.box.manager import BoxManager
from sophon.config import load_settings
from sophon.sandbox.service import RUNNERS
from sophon.store.db import make_engine, migrate, sessionmaker
from sophon.store.tables import Thread
from sophon.users import UserService

BOXD_IMPORTS = ("import base64, codecs, contextlib, ctypes, json, os, selectors, signal, "
                "stat, struct, subprocess, sys, threading, time")


def ms_since(t0: int) -> float:
    return (time.perf_counter_ns() - t0) / 1e6


# --- part 1: Sophon's own start path --------------------------------------------


async def start_stages(calls: int, data_dir: Path) -> list[tuple[str, Samples]]:
    settings = load_settings(data_dir=data_dir, box_pool_size=0)
    boxes = BoxManager(settings)
    backend = boxes.backend
    assert boxes.cgroups is not None, "this probe wants cgroups (run as root)"
    st: dict[str, list[float]] = defaultdict(list)
    env = dict(BASE_ENV)
    cap = settings.limits.output_cap_bytes

    async def first_exec(box: Box) -> None:
        async for _ in box.exec(RUNNERS["bash"], script="true", timeout=60, env=env,
                                cwd=WORKSPACE, output_cap=cap):
            pass

    for i in range(calls + 3):
        box_id = "t" + uuid.uuid4().hex[:31]
        d = boxes.box_dir(box_id)
        spec = BoxSpec(box_id, d / "workspace", d / "home", boxes.limits,
                       settings.limits.tmp_mb * 2**20)
        t_all = t = time.perf_counter_ns()
        backend.prepare_dirs(spec)
        s_dirs = ms_since(t)
        t = time.perf_counter_ns()
        cgroup = await asyncio.to_thread(boxes.cgroups.create, box_id, boxes.limits)
        s_cg = ms_since(t)
        t = time.perf_counter_ns()
        argv = backend.launcher(spec, cgroup.procs_files)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            limit=2**20)
        s_spawn = ms_since(t)
        box = Box(box_id, proc, cgroup)
        t = time.perf_counter_ns()
        await box.wait_ready(15)
        s_ready = ms_since(t)
        s_start = ms_since(t_all)
        t = time.perf_counter_ns()
        await first_exec(box)
        s_first = ms_since(t)
        t = time.perf_counter_ns()
        await first_exec(box)
        s_second = ms_since(t)
        t = time.perf_counter_ns()
        await box.stop()
        s_stop = ms_since(t)
        t = time.perf_counter_ns()
        await asyncio.to_thread(shutil.rmtree, d, True)
        s_rm = ms_since(t)
        if i < 3:
            continue
        for k, v in (("prepare_dirs", s_dirs), ("cgroups.create (to_thread)", s_cg),
                     ("create_subprocess_exec", s_spawn), ("spawn -> boxd ready", s_ready),
                     ("= backend start total", s_start), ("first exec bash `true`", s_first),
                     ("second exec bash `true`", s_second),
                     ("box.stop (kill + cgroup rmdir)", s_stop), ("rmtree box dir", s_rm)):
            st[k].append(v)

    # The service's new-thread lookup + insert (_box_id_for on an unknown thread).
    engine = make_engine(settings.resolved_database_url)
    try:
        await migrate(engine)
        db = sessionmaker(engine)
        principal, _ = await UserService(db).create("probe")
        for i in range(calls + 3):
            t = time.perf_counter_ns()
            async with db() as s:
                s.add(Thread(id="t" + uuid.uuid4().hex[:31], user_id=principal.user_id,
                             name=f"probe-{i}"))
                await s.commit()
            if i >= 3:
                st["db: insert a thread row"].append(ms_since(t))
    finally:
        await engine.dispose()
        await boxes.close()
    return [(f"sophon: {k}", Samples(v)) for k, v in st.items()]


# --- part 2: the launch chain, layer by layer -----------------------------------


def until_ready(argv: list[str]) -> float:
    """Spawn, wait for boxd's first frame, then close its stdin so it exits."""
    t0 = time.perf_counter_ns()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin"})
    assert proc.stdout is not None and proc.stdin is not None
    header = proc.stdout.read(4)
    took = ms_since(t0)
    if len(header) != 4:
        raise RuntimeError(f"no greeting from {argv[-3:]}")
    proc.stdin.close()
    proc.wait()
    return took


def host_path(argv: list[str], inside: str) -> str:
    """Where the file bwrap shows at ``inside`` lives on the host, from its binds."""
    for i, a in enumerate(argv[:-2]):
        dest = argv[i + 2]
        if a in ("--ro-bind", "--bind") and (inside == dest or inside.startswith(dest + "/")):
            return argv[i + 1] + inside[len(dest):]
    raise RuntimeError(f"{inside} is not bound from the host")


def chain_variants(calls: int, data_dir: Path) -> list[tuple[str, Samples]]:
    settings = load_settings(data_dir=data_dir, box_pool_size=0)
    boxes = BoxManager(settings)  # installs boxd and the /etc files under runtime/
    backend = boxes.backend
    assert boxes.cgroups is not None
    box_id = "tprobechain"
    d = boxes.box_dir(box_id)
    spec = BoxSpec(box_id, d / "workspace", d / "home", boxes.limits, 64 * 2**20)
    backend.prepare_dirs(spec)
    full = backend.argv(spec)  # ends with: python3 -I -S /opt/sophon/boxd.py
    body = full[:-4]
    boxd_host = host_path(full, full[-1])
    launcher = backend.launcher(spec, [])
    setpriv = launcher[: len(launcher) - len(full)]  # setpriv and its flags (root only)
    no_net = [a for a in body if a != "--unshare-net"]

    def with_cgroup() -> float:
        cg = boxes.cgroups.create(box_id, boxes.limits)  # type: ignore[union-attr]
        try:
            return until_ready(backend.launcher(spec, cg.procs_files))
        finally:
            cg.remove()

    def timed_run(argv: list[str]) -> None:
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin"})

    rows: list[tuple[str, Samples]] = []

    def add(label: str, fn: object) -> None:
        rows.append((label, sample_ms(fn, calls, warmup=3)))  # type: ignore[arg-type]

    def ready_samples(label: str, make: object) -> None:
        for _ in range(3):
            make()  # type: ignore[operator]
        rows.append((label, Samples([make() for _ in range(calls)])))  # type: ignore[operator]

    ready_samples("chain: sh(cgroup join) + setpriv + bwrap(full) + boxd -> ready",
                  with_cgroup)
    ready_samples("chain: setpriv + bwrap(full) + boxd -> ready (no cgroups)",
                  lambda: until_ready([*setpriv, *full]))
    ready_samples("chain: boxd -> ready, no sandbox",
                  lambda: until_ready([BOX_PYTHON, "-I", "-S", boxd_host]))
    add("chain: setpriv + bwrap(full) + python3 -I -S -c pass",
        lambda: timed_run([*setpriv, *body, BOX_PYTHON, "-I", "-S", "-c", "pass"]))
    add("chain: setpriv + bwrap(full) + true",
        lambda: timed_run([*setpriv, *body, "/usr/bin/true"]))
    add("chain: setpriv + bwrap(full) without --unshare-net + true",
        lambda: timed_run([*setpriv, *no_net, "/usr/bin/true"]))
    add("chain: setpriv + bare bwrap + true",
        lambda: timed_run([*setpriv, *bare_bwrap("/usr/bin/true")]))
    add("chain: bare bwrap + true (the benchmark's baseline, as root)",
        lambda: timed_run(bare_bwrap("/usr/bin/true")))
    add("chain: bare bwrap without --unshare-net + true",
        lambda: timed_run([a for a in bare_bwrap("/usr/bin/true") if a != "--unshare-net"]))
    add("host: python3 -I -S -c pass",
        lambda: timed_run([BOX_PYTHON, "-I", "-S", "-c", "pass"]))
    add("host: python3 -I -S -c '<boxd's imports>'",
        lambda: timed_run([BOX_PYTHON, "-I", "-S", "-c", BOXD_IMPORTS]))
    add("host: python3 -I -S -c 'import ctypes'",
        lambda: timed_run([BOX_PYTHON, "-I", "-S", "-c", "import ctypes"]))
    add("host: python3 -I -S -c 'import subprocess'",
        lambda: timed_run([BOX_PYTHON, "-I", "-S", "-c", "import subprocess"]))
    add("host: setpriv ... true", lambda: timed_run([*setpriv, "/usr/bin/true"]))
    add("host: sh -c 'exec true'", lambda: timed_run(["/bin/sh", "-c", "exec true"]))
    return rows


def over_http(calls: int) -> list[tuple[str, Samples]]:
    with live_server() as (srv, key), client(srv, key) as http:
        def cold() -> None:
            tid = "cold-" + uuid.uuid4().hex[:12]
            check(http.post(EXECUTE, json=execute_body("true", "bash", thread_id=tid)))
        return [("http: cold execute", sample_ms(cold, calls, warmup=3))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    rows: list[tuple[str, Samples]] = []
    for part in ("start", "chain"):
        data_dir = make_data_dir()
        try:
            if part == "start":
                rows += asyncio.run(start_stages(args.calls, data_dir))
            else:
                rows += chain_variants(args.calls, data_dir)
        finally:
            remove_server_cgroups(data_dir, Path("/proc/self/cgroup").read_text())
            shutil.rmtree(data_dir, ignore_errors=True)
    rows += over_http(args.calls)
    width = max(len(r[0]) for r in rows)
    print(f"{'stage':<{width}}  {'p50 ms':>8}  {'p99 ms':>8}  {'mean ms':>8}")
    for label, s in rows:
        print(f"{label:<{width}}  {s.p50:8.2f}  {s.p99:8.2f}  {s.mean:8.2f}")


if __name__ == "__main__":
    main()
