"""Checkpoints (issue 21): what one costs per tool call in a large workspace, and what
listing and rewinding cost in a session that has many.

* Cost per tool call: a session whose workspace holds ``files`` files (10,000 in the
  full run) runs a scripted turn of ``calls`` Bash calls, each changing one file, each
  reply 400 ms after the last request (as a model's). From the log: each call's
  tool_use to its tool_result (the tool alone: the baseline) and its tool_result to its
  checkpoint (the checkpoint's own time, taken while the model is asked), p50 of each.
* Listing: ``GET /checkpoints`` of a session with ``checkpoints`` of them (1,000 in the
  full run), against ``GET /v1/sessions/{id}`` of the same session, alternately.
* Rewinding: ``POST /rewind`` (files and conversation) between two of its checkpoints,
  back and forth, against an exec of ``true`` in the same session, alternately.

    .venv/bin/python bench/run.py --only checkpoints
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import httpx

from common import Figure, Samples, client, live_server, sample_pairs_ms
from sophon.testing import ModelServer

COMMAND = ".venv/bin/python bench/run.py --only checkpoints"


def _events(http: httpx.Client, sid: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        page = http.get(f"/v1/sessions/{sid}/events", headers={"Accept": "application/json"},
                        params={"after": out[-1]["seq"] if out else 0, "limit": 5000}
                        ).json()["events"]
        out += page
        if len(page) < 5000:
            return out


def _exec(http: httpx.Client, sid: str, command: str) -> None:
    r = http.post(f"/v1/sessions/{sid}/exec", json={"command": command}, timeout=600)
    r.raise_for_status()
    end = json.loads(r.text.splitlines()[-1])
    assert end["type"] == "exec_end" and end["exit_code"] == 0, r.text[-500:]


def _ts(ev: dict[str, Any]) -> float:
    return datetime.fromisoformat(ev["ts"]).timestamp() * 1000


def _wait(predicate: Any, deadline: float = 600.0) -> Any:
    import time

    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def _per_tool_call(http: httpx.Client, model: ModelServer, files: int,
                   calls: int) -> tuple[Samples, Samples]:
    sid = http.post("/v1/sessions", json={"name": "big", "approval": {"shell": "allow"},
                                          "disk_mb": 1024}).json()["id"]
    # files spread over 100 directories, committed, as a project of that size is.
    _exec(http, sid, f"for d in $(seq 0 99); do mkdir -p src/d$d; done; "
                     f"for i in $(seq 1 {files}); do echo \"line $i\" > src/d$((i % 100))/f$i.txt; "
                     f"done; git add -A && git commit -qm files")
    # Each reply takes 400 ms, as a model's do, so that each call's checkpoint (taken
    # while the model is asked) is done before the next call: tool_use to tool_result is
    # then the tool alone.
    steps = [{"content": [{"type": "tool_use", "name": "Bash",
                           "input": {"command": f"echo change {i} >> src/d{i % 100}/f{i}.txt"}}],
              "delay_ms": 400}
             for i in range(1, calls + 1)]
    model.set_script({"turns": [*steps, "done"]})
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "change files"}
              ).raise_for_status()
    evs = _wait(lambda: (lambda e: e if any(x["type"] == "checkpoint" and x["reason"] ==
                                            "turn_end" for x in e) else None)(
        _events(http, sid)))
    uses = {e["tool_use_id"]: _ts(e) for e in evs if e["type"] == "tool_use"}
    results = {e["tool_use_id"]: _ts(e) for e in evs if e["type"] == "tool_result"}
    cps = {e["tool_use_id"]: _ts(e) for e in evs
           if e["type"] == "checkpoint" and e["reason"] == "tool"}
    tool = [results[t] - uses[t] for t in cps]
    checkpoint = [cps[t] - results[t] for t in cps]
    assert len(cps) == calls, f"{len(cps)} checkpoints for {calls} calls"
    return Samples(checkpoint[1:]), Samples(tool[1:])  # the first fills the index


def _many(http: httpx.Client, count: int, samples: int) -> tuple[Samples, Samples,
                                                                 Samples, Samples]:
    sid = http.post("/v1/sessions", json={"name": "many"}).json()["id"]
    # One exec per checkpoint: each changes a file; the checkpoint follows it.
    for i in range(count):
        _exec(http, sid, f"echo {i} > n.txt")
        _wait(lambda i=i: len(http.get(f"/v1/sessions/{sid}/checkpoints").json()
                              ["checkpoints"]) > i, 60)
    cps = http.get(f"/v1/sessions/{sid}/checkpoints").json()["checkpoints"]
    assert len(cps) >= count, len(cps)
    listing, view = sample_pairs_ms(
        lambda: http.get(f"/v1/sessions/{sid}/checkpoints").raise_for_status(),
        lambda: http.get(f"/v1/sessions/{sid}").raise_for_status(), samples, warmup=2)
    targets = [cps[len(cps) // 3]["id"], cps[2 * len(cps) // 3]["id"]]
    turn = iter(range(10**9))

    def rewind() -> None:
        target = targets[next(turn) % 2]
        http.post(f"/v1/sessions/{sid}/rewind", json={"checkpoint": target},
                  timeout=120).raise_for_status()

    rewinding, execs = sample_pairs_ms(rewind, lambda: _exec(http, sid, "true"), samples,
                                       warmup=1)
    return listing, view, rewinding, execs


def run(files: int = 10_000, calls: int = 20, checkpoints: int = 1000,
        samples: int = 20) -> list[Figure]:
    env = {"ANTHROPIC_API_KEY": "bench-key"}
    with ModelServer() as model, \
            live_server(env={**env, "ANTHROPIC_BASE_URL": model.url}) as (srv, key), \
            client(srv, key) as http:
        http.timeout = httpx.Timeout(120)
        checkpoint, tool = _per_tool_call(http, model, files, calls)
        listing, view, rewinding, execs = _many(http, checkpoints, samples)
    return [
        Figure("checkpoint_per_tool_call_p50",
               f"A checkpoint after a Bash call, {files:,}-file workspace (p50)", COMMAND,
               checkpoint.p50, "ms", tool.p50, "the Bash call itself (p50)",
               details=[f"checkpoint: {checkpoint.describe()}", f"tool: {tool.describe()}"]),
        Figure("checkpoints_list_p50",
               f"GET /checkpoints of a session with {checkpoints:,} (p50)", COMMAND,
               listing.p50, "ms", view.p50, "GET /v1/sessions/{id} (p50)",
               details=[f"list: {listing.describe()}", f"view: {view.describe()}"]),
        Figure("checkpoints_rewind_p50",
               f"POST /rewind in a session with {checkpoints:,} checkpoints (p50)", COMMAND,
               rewinding.p50, "ms", execs.p50, "an exec of `true` in it (p50)",
               details=[f"rewind: {rewinding.describe()}", f"exec: {execs.describe()}"]),
    ]


if __name__ == "__main__":
    for fig in run():
        print(fig.title, f"{fig.value:.2f} ms vs {fig.baseline:.2f} ms", *fig.details, sep="\n  ")
