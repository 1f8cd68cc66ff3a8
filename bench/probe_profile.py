"""Probe: cProfile the live server's event-loop thread over a run of warm executes.

The server is the usual ``sophon serve`` child; a ``sitecustomize`` put on its
PYTHONPATH starts cProfile on SIGUSR1 (sent after the warm-up) and dumps the stats
on SIGUSR2 (sent after the measured calls). Only the main thread is profiled: time
spent in aiosqlite's worker threads shows up as the awaits that wait for them.

    .venv/bin/python bench/probe_profile.py [--calls 300] [--concurrency 1] [--top 35]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import shutil
import signal
import tempfile
import time
from pathlib import Path

import httpx

from common import EXECUTE, SERVER_ENV, LiveServer, execute_body, make_data_dir, wait_for
from common import remove_server_cgroups as _remove_cgroups

SITECUSTOMIZE = '''
import cProfile, os, signal
_out = os.environ.get("SOPHON_PROBE_PROFILE")
if _out and os.environ.get("SOPHON_PROBE_ROLE") == "serve":
    _prof = cProfile.Profile()

    def _start(*_):
        _prof.enable()

    def _dump(*_):
        _prof.disable()
        _prof.dump_stats(_out + ".tmp")
        os.rename(_out + ".tmp", _out)

    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _dump)
'''


class ProfiledServer(LiveServer):
    """A LiveServer whose ``serve`` (not ``users add``) runs under cProfile."""

    def start(self) -> LiveServer:
        self.env["SOPHON_PROBE_ROLE"] = "serve"
        try:
            return super().start()
        finally:
            self.env.pop("SOPHON_PROBE_ROLE")


async def drive(url: str, key: str, calls: int, concurrency: int, pid: int) -> float:
    headers = {"Authorization": f"Bearer {key}"}
    clients = [httpx.AsyncClient(base_url=url, headers=headers, timeout=60)
               for _ in range(concurrency)]
    bodies = [execute_body("true", "bash", thread_id=f"prof-{i}") for i in range(concurrency)]

    async def loop(i: int, n: int) -> None:
        for _ in range(n):
            (await clients[i].post(EXECUTE, json=bodies[i])).raise_for_status()

    try:
        await asyncio.gather(*(loop(i, 5) for i in range(concurrency)))
        os.kill(pid, signal.SIGUSR1)
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        await asyncio.gather(*(loop(i, calls // concurrency) for i in range(concurrency)))
        wall = time.monotonic() - t0
        os.kill(pid, signal.SIGUSR2)
        return wall
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--top", type=int, default=35)
    parser.add_argument("--sort", default="tottime")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="sophon-probe-"))
    (tmp / "sitecustomize.py").write_text(SITECUSTOMIZE)
    prof = tmp / "serve.prof"
    data_dir = make_data_dir()
    env = {**SERVER_ENV, "PYTHONPATH": f"{tmp}:{os.environ.get('PYTHONPATH', '')}",
           "SOPHON_PROBE_PROFILE": str(prof)}
    srv = ProfiledServer(data_dir, env=env)
    cgroups = ""
    try:
        srv.start()
        assert srv.proc is not None
        cgroups = Path(f"/proc/{srv.proc.pid}/cgroup").read_text()
        key = srv.add_user("probe")
        wall = asyncio.run(drive(srv.url, key, args.calls, args.concurrency, srv.proc.pid))
        wait_for(prof.exists, 30, 0.05, "the profile")
        n = args.calls // args.concurrency * args.concurrency
        stats = pstats.Stats(str(prof))
        print(f"{n} executes at concurrency {args.concurrency} in {wall:.2f} s "
              f"({n / wall:.0f}/s); server main thread only")
        stats.sort_stats(args.sort).print_stats(args.top)
    finally:
        srv.stop()
        _remove_cgroups(data_dir, cgroups)
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
