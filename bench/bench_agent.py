"""The agent's own cost: per tool round trip, and the gateway's per streamed call.

The scripted model server runs in this process and answers at once, so everything
measured is Sophon's: from the moment the model server finished a reply (after
``message_stop``) to the moment the agent's next request arrives.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from common import Figure, Samples, live_server, wait_for
from conftest import free_port


class RemoteModel:
    """The timed model server (timed_model_server.py) in its own process."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("timed_model_server.py")),
             str(self.port)])
        wait_for(self._up, 30, 0.05, "the model server to start")
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def _up(self) -> bool:
        try:
            return httpx.get(self.url + "/_bench/timings").status_code == 200
        except httpx.HTTPError:
            return False

    def set_script(self, script: dict[str, Any]) -> None:
        self.http.post("/_sophon/script", json=script).raise_for_status()
        self.http.delete("/_bench/timings").raise_for_status()

    def timings(self) -> tuple[list[float], list[float]]:
        got = self.http.get("/_bench/timings").json()
        return got["arrived"], got["finished"]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _tool_turns(tool: str, n: int) -> list[Any]:
    if tool == "Read":
        call = {"name": "Read", "input": {"file_path": "/workspace/f.txt"}}
        turns = [{"content": [{"type": "tool_use", **call}]} for _ in range(n)]
    elif tool == "Write":
        turns = [{"content": [{"type": "tool_use", "name": "Write",
                               "input": {"file_path": f"w{i}.txt", "content": f"{i}\n"}}]}
                 for i in range(n)]
    else:  # Edit: alternate two strings so every edit changes the file
        turns = [{"content": [{"type": "tool_use", "name": "Read",
                               "input": {"file_path": "/workspace/f.txt"}}]}]
        for i in range(n):
            old, new = ("alpha", "beta") if i % 2 == 0 else ("beta", "alpha")
            turns.append({"content": [{"type": "tool_use", "name": "Edit", "input": {
                "file_path": "/workspace/f.txt", "old_string": old, "new_string": new}}]})
    return [*turns, "done"]


def _round_trips(ms: RemoteModel, http: httpx.Client, tool: str, n: int) -> Samples:
    turns = _tool_turns(tool, n)
    ms.set_script({"turns": turns})
    sid = http.post("/v1/sessions", json={"name": tool}).json()["id"]
    http.put(f"/v1/sessions/{sid}/files/f.txt", content=b"alpha\n" * 20)
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "go"})
    total = len(turns)

    def done() -> bool:
        evs = http.get(f"/v1/sessions/{sid}/events", params={"limit": 5000},
                       headers={"Accept": "application/json"}).json()["events"]
        return any(e["type"] == "status" and e["status"] == "idle" and e["seq"] > 3
                   for e in evs)

    wait_for(done, 120, 0.05, f"the {tool} loop to finish")
    arrived, finished = ms.timings()
    assert len(arrived) == total, (len(arrived), total)
    start = 2 if tool == "Edit" else 1  # the Edit loop begins with one Read
    return Samples([(arrived[i] - finished[i - 1]) * 1000 for i in range(start, total)])


def _streamed_calls(base_url: str, key: str, n: int) -> Samples:
    import anthropic

    client = anthropic.Anthropic(base_url=base_url, api_key=key, max_retries=0)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        with client.messages.stream(model="claude-sonnet-4-5", max_tokens=50,
                                    messages=[{"role": "user", "content": "hi"}]) as s:
            s.get_final_message()
        out.append((time.perf_counter() - t0) * 1000)
    return Samples(out)


def run(n: int = 60) -> list[Figure]:
    figures: list[Figure] = []
    ms = RemoteModel()
    try:
        env = {"ANTHROPIC_API_KEY": "bench", "ANTHROPIC_BASE_URL": ms.url,
               "SOPHON_BOX_POOL_SIZE": "0"}
        with live_server(env=env) as (srv, key):
            http = httpx.Client(base_url=srv.url, timeout=120,
                                headers={"Authorization": f"Bearer {key}"})
            # Baseline: one whole streamed call, SDK straight to the scripted server, which
            # is about what a tool round trip costs an agent that does nothing else.
            ms.set_script({"turns": ["hello there"] * (n + 10)})
            _streamed_calls(ms.url, "x", 5)
            base = _streamed_calls(ms.url, "x", n)
            for tool in ("Read", "Edit", "Write"):
                s = _round_trips(ms, http, tool, n)
                figures.append(Figure(
                    key=f"agent_{tool.lower()}", title=f"Agent overhead per {tool} round trip "
                    "(p50)", command="bench/run.py --only agent", value=s.p50, unit="ms",
                    baseline=base.p50, baseline_label="a whole streamed call, SDK to the "
                    "scripted server (p50)", goal="p50 < 10 ms", met=s.p50 < 10,
                    details=[f"{tool}: {s.describe()}", f"direct call: {base.describe()}"]))
            # The gateway: the same streamed call direct, and through Sophon's /v1/messages.
            sid = http.post("/v1/sessions", json={"name": "gw"}).json()["id"]
            token = http.post(f"/v1/sessions/{sid}/gateway-token").json()["token"]
            ms.set_script({"turns": ["hello there"] * (2 * n + 10)})
            _streamed_calls(ms.url, "x", 5)
            direct = _streamed_calls(ms.url, "x", n)
            via = _streamed_calls(srv.url, token, n)
            figures.append(Figure(
                key="gateway_overhead", title="Streamed call through the gateway (p50)",
                command="bench/run.py --only agent", value=via.p50, unit="ms",
                baseline=direct.p50, baseline_label="the same call straight to the "
                "scripted server (p50)", goal=None, met=None,
                details=[f"via gateway: {via.describe()}", f"direct: {direct.describe()}",
                         f"overhead p50 {via.p50 - direct.p50:.2f} ms (metering included)"]))
    finally:
        ms.close()
    return figures
