"""Probe: where a warm execute's time goes, stage by stage.

Drives Sophon's own objects in-process (no HTTP), then the live server, and
prints a table of p50s from which each layer's cost is the difference:

  box       BoxManager + Box: ``ping`` round trip (frame protocol + a boxd thread),
            ``exec ["true"]``, ``exec bash <script>`` (what the service sends), and
            boxd's own ``duration_ms`` for that exec (spawn -> exit inside the box)
  service   ExecutionService.start -> run.done (sqlite), with ``_box_id_for``,
            ``_exec`` and ``_save`` timed separately by wrapping them; then again
            with ``_save`` (the execution row's write) replaced by a no-op
  (the in-process parts run with the box pool off, so no box starts behind them)
  http      the live server: GET /v1/me (HTTP + auth) and the full warm execute

    .venv/bin/python bench/probe_warm.py [--calls 200]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from common import (
    EXECUTE,
    Samples,
    check,
    client,
    execute_body,
    live_server,
    make_data_dir,
    remove_server_cgroups,
)
from sophon.box.bwrap import BASE_ENV, WORKSPACE
from sophon.box.manager import BoxManager
from sophon.config import load_settings
from sophon.sandbox.models import ExecuteRequest
from sophon.sandbox.service import RUNNERS, ExecutionService
from sophon.store.db import make_engine, migrate, sessionmaker
from sophon.users import UserService


async def asample(fn: Callable[[], Awaitable[object]], n: int, warmup: int = 10) -> Samples:
    for _ in range(warmup):
        await fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await fn()
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return Samples(out)


def wrap_timed(obj: Any, name: str, bucket: dict[str, list[float]]) -> None:
    orig = getattr(obj, name)

    async def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter_ns()
        try:
            return await orig(*args, **kwargs)
        finally:
            bucket[name].append((time.perf_counter_ns() - t0) / 1e6)

    setattr(obj, name, timed)


async def in_process(calls: int, data_dir: Path) -> list[tuple[str, Samples]]:
    rows: list[tuple[str, Samples]] = []
    settings = load_settings(data_dir=data_dir, box_pool_size=0)
    engine = make_engine(settings.resolved_database_url)
    boxes = BoxManager(settings)
    try:
        await migrate(engine)
        await boxes.start()
        box = await boxes.get("tprobewarm")
        cap = settings.limits.output_cap_bytes
        env = dict(BASE_ENV)
        boxd_ms: list[float] = []

        async def exec_(argv: list[str], script: str | None = None) -> None:
            async for ev in box.exec(argv, timeout=60, env=env, cwd=WORKSPACE,
                                     output_cap=cap, script=script):
                if hasattr(ev, "exit_code"):
                    assert ev.exit_code == 0, ev
                    boxd_ms.append(float(ev.duration_ms))

        rows.append(("box: ping round trip (protocol + boxd thread)",
                     await asample(lambda: box.request("ping"), calls)))
        rows.append(("box: exec [\"true\"]", await asample(lambda: exec_(["true"]), calls)))
        boxd_ms.clear()
        rows.append(("box: exec bash <script> `true` (the service's runner)",
                     await asample(lambda: exec_(RUNNERS["bash"], "true"), calls)))
        rows.append(("  of which boxd-reported duration_ms (spawn -> exit in box, 1 ms res.)",
                     Samples(boxd_ms[-calls:])))

        db = sessionmaker(engine)
        principal, _ = await UserService(db).create("probe")
        service = ExecutionService(boxes, db)
        stages: dict[str, list[float]] = defaultdict(list)
        for name in ("_box_id_for", "_exec", "_save"):
            wrap_timed(service, name, stages)
        req = ExecuteRequest(code="true", language="bash", thread_id="probe-warm")

        async def via_service() -> None:
            run = await service.start(principal, req, "inline")
            await run.done.wait()
            assert run.result is not None and run.result.success, run.result

        rows.append(("service: start -> done (no HTTP)", await asample(via_service, calls)))
        for name in ("_box_id_for", "_exec", "_save"):
            rows.append((f"  service.{name}", Samples(stages[name][-calls:])))

        async def no_save(run: object) -> None:
            return None

        service._save = no_save  # type: ignore[method-assign]
        rows.append(("service: start -> done with _save stubbed out",
                     await asample(via_service, calls)))
        await service.close()
    finally:
        await boxes.close()
        await engine.dispose()
    return rows


def host_refs(calls: int) -> list[tuple[str, Samples]]:
    from common import sample_ms

    with tempfile.NamedTemporaryFile("w", suffix=".sh") as f:
        f.write("true\n")
        f.flush()
        bash = sample_ms(lambda: subprocess.run(["bash", f.name], check=True), calls, 10)
    true = sample_ms(lambda: subprocess.run(["true"], check=True), calls, 10)
    return [("host: subprocess.run([\"true\"])", true),
            ("host: subprocess.run([\"bash\", script]) `true`", bash)]


def over_http(calls: int) -> list[tuple[str, Samples]]:
    from common import sample_ms

    with live_server() as (srv, key), client(srv, key) as http:
        body = execute_body("true", "bash", thread_id="probe-warm")
        me = sample_ms(lambda: http.get("/v1/me").raise_for_status(), calls, 20)
        warm = sample_ms(lambda: check(http.post(EXECUTE, json=body)), calls, 20)
    return [("http: GET /v1/me (HTTP + auth)", me), ("http: warm execute", warm)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    rows = host_refs(args.calls)
    data_dir = make_data_dir()
    try:
        rows += asyncio.run(in_process(args.calls, data_dir))
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
