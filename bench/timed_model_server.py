"""The scripted model server in a process of its own, timing each /v1/messages call.

Run by bench_agent.py: ``python timed_model_server.py PORT``. In the benchmark's own
process the server's thread and the client's would take turns on the GIL, which alone
adds tens of milliseconds per call; a separate process measures Sophon, not that.
``GET /_bench/timings`` answers {"arrived": [...], "finished": [...]} (perf_counter
seconds, comparable across processes: both read CLOCK_MONOTONIC).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import uvicorn

from sophon.testing import ModelServer


class Timing:
    """ASGI middleware: when each /v1/messages request arrived and its reply ended."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.arrived: list[float] = []
        self.finished: list[float] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/_bench/timings":
            if scope["method"] == "DELETE":
                self.arrived.clear()
                self.finished.clear()
            body = json.dumps({"arrived": self.arrived, "finished": self.finished}).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] != "http" or not scope["path"].startswith("/v1/messages"):
            await self.app(scope, receive, send)
            return
        self.arrived.append(time.perf_counter())

        async def timed_send(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self.finished.append(time.perf_counter())

        await self.app(scope, receive, timed_send)


if __name__ == "__main__":
    server = ModelServer()
    uvicorn.run(Timing(server.app), host="127.0.0.1", port=int(sys.argv[1]),
                log_level="warning", access_log=False)
