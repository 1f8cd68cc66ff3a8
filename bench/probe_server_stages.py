"""Probe: stage timings measured *inside* the live server during warm executes over HTTP.

A ``sitecustomize`` on the server's PYTHONPATH wraps, in the ``serve`` process only:

  asgi       the whole ASGI call (outermost, around every middleware): request in ->
             response sent; and from there to the route's body parsing (middleware,
             routing, dependencies: API-key auth), the parse, ExecutionService.start,
             and from start's return to the run task's first step
  _drive     ExecutionService._drive: the run task, from box lookup to done
  _exec      the exec in the box (frame out -> result frame back)
  _save      the execution row's write
  done->resp from run.done being set to the ASGI response being sent

and, for ``--cold``, the box start inside ``_exec``: BoxManager.get,
BwrapBackend.start, prepare_dirs, the cgroup's creation, spawn -> boxd ready;
plus ``_box_id_for`` (the new thread's row).

and dumps the samples on SIGUSR2. The client side measures the same calls, so
"client - asgi" is what the loopback, uvicorn's parsing and the client cost.

    .venv/bin/python bench/probe_server_stages.py [--calls 300]
    .venv/bin/python bench/probe_server_stages.py --cold --pool 0 --calls 40
    .venv/bin/python bench/probe_server_stages.py --cold --pace 0.4 --calls 20
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import tempfile
import time
import uuid
from pathlib import Path

from common import (
    EXECUTE,
    SERVER_ENV,
    LiveServer,
    Samples,
    check,
    client,
    execute_body,
    make_data_dir,
    remove_server_cgroups,
    sample_ms,
    wait_for,
)

SITECUSTOMIZE = '''
import json, os, signal, time
_out = os.environ.get("SOPHON_PROBE_STAGES")
if _out and os.environ.get("SOPHON_PROBE_ROLE") == "serve":
    from collections import defaultdict
    import sophon.api.app as _app
    import sophon.api.sandbox as _api
    import sophon.sandbox.service as _svc

    _t = defaultdict(list)
    _done_at = {}
    _mark = {}

    def _since(name, key):
        if name in _mark:
            _t[key].append((time.perf_counter_ns() - _mark[name]) / 1e6)

    _orig_parse = _api._parse

    async def _parse(request):
        _since("asgi", "asgi->handler")
        t0 = time.perf_counter_ns()
        try:
            return await _orig_parse(request)
        finally:
            _t["parse body"].append((time.perf_counter_ns() - t0) / 1e6)

    _api._parse = _parse

    _orig_start = _svc.ExecutionService.start

    async def _start(self, *a, **k):
        t0 = time.perf_counter_ns()
        try:
            return await _orig_start(self, *a, **k)
        finally:
            _mark["started"] = time.perf_counter_ns()
            _t["service.start"].append((_mark["started"] - t0) / 1e6)

    _svc.ExecutionService.start = _start

    def _wrap(cls, name, key):
        orig = getattr(cls, name)

        async def timed(self, *a, **k):
            t0 = time.perf_counter_ns()
            try:
                return await orig(self, *a, **k)
            finally:
                _t[key].append((time.perf_counter_ns() - t0) / 1e6)

        setattr(cls, name, timed)

    for _n in ("_drive", "_exec", "_save", "_box_id_for"):
        _wrap(_svc.ExecutionService, _n, _n)

    import sophon.box.box as _box
    import sophon.box.bwrap as _bwrap
    import sophon.box.cgroups as _cg
    import sophon.box.manager as _mgr

    _wrap(_mgr.BoxManager, "get", "boxes.get")
    _wrap(_bwrap.BwrapBackend, "start", "backend.start")
    _wrap(_box.Box, "wait_ready", "spawn->ready")

    def _wrap_sync(cls, name, key):
        orig = getattr(cls, name)

        def timed(self, *a, **k):
            t0 = time.perf_counter_ns()
            try:
                return orig(self, *a, **k)
            finally:
                _t[key].append((time.perf_counter_ns() - t0) / 1e6)

        setattr(cls, name, timed)

    _wrap_sync(_cg.CgroupTree, "create", "cgroup create")
    _wrap_sync(_bwrap.BwrapBackend, "prepare_dirs", "prepare_dirs")

    _orig_drive = _svc.ExecutionService._drive

    async def _drive(self, run, key):
        _since("started", "start->_drive")
        await _orig_drive(self, run, key)
        _done_at["last"] = time.perf_counter_ns()

    _svc.ExecutionService._drive = _drive

    _create = _app.create_app

    def create_app(settings):
        inner = _create(settings)

        async def app(scope, receive, send):
            if scope["type"] != "http" or scope["path"] != "/v1/sandbox/execute":
                return await inner(scope, receive, send)
            t0 = _mark["asgi"] = time.perf_counter_ns()

            async def send2(msg):
                if msg["type"] == "http.response.start" and "last" in _done_at:
                    _t["done->resp"].append((time.perf_counter_ns() - _done_at.pop("last")) / 1e6)
                await send(msg)

            await inner(scope, receive, send2)
            _t["asgi"].append((time.perf_counter_ns() - t0) / 1e6)

        return app

    _app.create_app = create_app

    def _dump(*_):
        with open(_out + ".tmp", "w") as f:
            json.dump(_t, f)
        os.rename(_out + ".tmp", _out)

    def _reset(*_):
        _t.clear()

    signal.signal(signal.SIGUSR1, _reset)
    signal.signal(signal.SIGUSR2, _dump)
'''


class ProbedServer(LiveServer):
    """A LiveServer whose ``serve`` (not ``users add``) loads the stage timers."""

    def start(self) -> LiveServer:
        self.env["SOPHON_PROBE_ROLE"] = "serve"
        try:
            return super().start()
        finally:
            self.env.pop("SOPHON_PROBE_ROLE")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--cold", action="store_true",
                        help="a new thread_id on every call (default: one warm thread)")
    parser.add_argument("--pace", type=float, default=0.0,
                        help="seconds to pause after each call (not timed)")
    parser.add_argument("--pool", type=int, default=None,
                        help="SOPHON_BOX_POOL_SIZE for the server (default: its own)")
    parser.add_argument("--pythonpath", default="",
                        help="extra entries for the server's PYTHONPATH (e.g. to try uvloop)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="sophon-probe-"))
    (tmp / "sitecustomize.py").write_text(SITECUSTOMIZE)
    out = tmp / "stages.json"
    data_dir = make_data_dir()
    pythonpath = ":".join(p for p in (str(tmp), args.pythonpath) if p)
    env = {**SERVER_ENV, "PYTHONPATH": pythonpath, "SOPHON_PROBE_STAGES": str(out)}
    if args.pool is not None:
        env["SOPHON_BOX_POOL_SIZE"] = str(args.pool)
    srv = ProbedServer(data_dir, env=env)
    cgroups = ""
    try:
        srv.start()
        assert srv.proc is not None
        cgroups = Path(f"/proc/{srv.proc.pid}/cgroup").read_text()
        key = srv.add_user("probe")
        with client(srv, key) as http:
            def call() -> None:
                tid = f"cold-{uuid.uuid4().hex[:12]}" if args.cold else "probe-stages"
                t0 = time.perf_counter_ns()
                check(http.post(EXECUTE, json=execute_body("true", "bash", thread_id=tid)))
                took.append((time.perf_counter_ns() - t0) / 1e6)
                time.sleep(args.pace)

            took: list[float] = []
            sample_ms(call, 5 if args.cold else 20, 0)
            os.kill(srv.proc.pid, signal.SIGUSR1)
            took.clear()
            sample_ms(call, args.calls, 0)
            seen = Samples(took)
            os.kill(srv.proc.pid, signal.SIGUSR2)
        wait_for(out.exists, 30, 0.05, "the stage timings")
        stages = json.loads(out.read_text())
        rows = [("client: POST /v1/sandbox/execute", seen)]
        rows += [(f"server: {k}", Samples(stages[k]))
                 for k in ("asgi", "asgi->handler", "parse body", "service.start", "start->_drive",
                           "_drive", "_box_id_for", "boxes.get", "backend.start", "prepare_dirs",
                           "cgroup create", "spawn->ready", "_exec", "_save", "done->resp")
                 if stages.get(k)]
        width = max(len(r[0]) for r in rows)
        print(f"{'stage':<{width}}  {'p50 ms':>8}  {'p99 ms':>8}  {'mean ms':>8}")
        for label, s in rows:
            print(f"{label:<{width}}  {s.p50:8.2f}  {s.p99:8.2f}  {s.mean:8.2f}")
    finally:
        srv.stop()
        remove_server_cgroups(data_dir, cgroups)
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
