"""Sessions as MCP tools (issue 20): what `claude_code_send` adds over doing the same by
hand, for one scripted turn (one model call, a short answer).

* Sophon: `claude_code_send` through the official MCP client over /mcp (one client
  session, kept open), which returns the turn's outcome.
* Baseline, alternately in the same run: `POST /v1/sessions/{id}/messages`, then the
  session's SSE stream followed until the status that ends the turn.

    .venv/bin/python bench/run.py --only mcp
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from common import Figure, Samples, live_server
from sophon.testing import ModelServer

COMMAND = ".venv/bin/python bench/run.py --only mcp"


async def _by_hand(http: httpx.AsyncClient, sid: str) -> float:
    started = time.perf_counter()
    last = (await http.get(f"/v1/sessions/{sid}")).json()["last_seq"]
    r = await http.post(f"/v1/sessions/{sid}/messages", json={"content": "hello"})
    r.raise_for_status()
    seen_user = False
    async with http.stream("GET", f"/v1/sessions/{sid}/events",
                           headers={"Accept": "text/event-stream",
                                    "Last-Event-ID": str(last)}) as stream:
        async for line in stream.aiter_lines():
            if not line.startswith("data:"):
                continue
            ev = json.loads(line[5:])
            seen_user = seen_user or ev["type"] == "user"
            if seen_user and ev["type"] == "status" and ev["status"] in ("idle", "error"):
                break
    return (time.perf_counter() - started) * 1000


async def _measure(url: str, key: str, turns: int) -> tuple[Samples, Samples]:
    from mcp import ClientSession
    from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client

    mcp_http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    async with httpx.AsyncClient(base_url=url, timeout=60,
                                 headers={"Authorization": f"Bearer {key}"}) as http, \
            streamable_http_client(url + "/mcp", http_client=mcp_http) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        mine = (await http.post("/v1/sessions", json={"name": "by-hand"})).json()["id"]
        res = await session.call_tool("claude_code_start", {"name": "over-mcp"})
        theirs = res.structured_content["session_id"]
        sent, manual = [], []
        for i in range(turns + 2):  # the first two of each warm up
            started = time.perf_counter()
            out = await session.call_tool("claude_code_send",
                                          {"session_id": theirs, "message": "hello"})
            took = (time.perf_counter() - started) * 1000
            assert out.structured_content["status"] == "done", out
            hand = await _by_hand(http, mine)
            if i >= 2:
                sent.append(took)
                manual.append(hand)
        return Samples(sent), Samples(manual)


def run(turns: int = 30) -> list[Figure]:
    with ModelServer() as model, live_server(env={"ANTHROPIC_API_KEY": "bench-key",
                                                  "ANTHROPIC_BASE_URL": model.url}) as (srv, key):
        model.set_script({"turns": ["ok"] * (2 * turns + 8)})
        sent, manual = asyncio.run(_measure(srv.url, key, turns))
    return [Figure(
        "mcp_send_p50", "claude_code_send over /mcp, one scripted turn (p50)", COMMAND,
        sent.p50, "ms", manual.p50, "POST /messages + the SSE stream to the turn's end (p50)",
        details=[f"claude_code_send: {sent.describe()}",
                 f"by hand: {manual.describe()}",
                 f"overhead at p50: {sent.p50 - manual.p50:+.2f} ms"])]


if __name__ == "__main__":
    for fig in run():
        print(fig.title, f"{fig.value:.2f} ms vs {fig.baseline:.2f} ms", *fig.details, sep="\n  ")
