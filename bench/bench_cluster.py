"""Two nodes on one PostgreSQL (issue 23): an event appended on node A, received by a
stream on node B (PostgreSQL's LISTEN/NOTIFY wakes B, which reads the rows), against the
same event received by a stream on A itself, in the same run.

A session is made on A; one SSE client follows it on A and one on B. The session's
commands (``exec`` of ``echo``, on A) append its events; each event's latency is its
receipt time less its own timestamp (the appending server's clock: the same machine).
Figure = B's p50 / A's p50.

    .venv/bin/python bench/run.py --only cluster
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from datetime import datetime

import httpx

from common import ROOT, SERVER_ENV, Figure, LiveServer, Samples, make_data_dir

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from tests.integration.postgres_support import postgres  # noqa: E402

COMMAND = ".venv/bin/python bench/run.py --only cluster"


class Follower:
    """A session's SSE stream on one node, read in a thread: when each seq arrived,
    and the event's own time."""

    def __init__(self, url: str, key: str, sid: str) -> None:
        self.latency_ms: dict[int, float] = {}
        self._ready = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, args=(url, key, sid), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the stream did not open"

    def _run(self, url: str, key: str, sid: str) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                          timeout=httpx.Timeout(10, read=None)) as http, \
                http.stream("GET", f"/v1/sessions/{sid}/events") as resp:
            self._ready.set()
            for line in resp.iter_lines():
                if self._stop:
                    return
                if not line.startswith("data:"):
                    continue
                now = time.time()
                event = json.loads(line[5:])
                ts = datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()
                self.latency_ms[event["seq"]] = (now - ts) * 1000

    def close(self) -> None:
        self._stop = True


def run(commands: int = 200) -> list[Figure]:
    env = {**SERVER_ENV}
    with postgres() as url:
        env["SOPHON_DATABASE_URL"] = url
        a = LiveServer(make_data_dir(), env=env).start()
        b = LiveServer(make_data_dir(), env=env).start()
        try:
            key = a.add_user("bench", database_url=url)
            with httpx.Client(base_url=a.url, timeout=60,
                              headers={"Authorization": f"Bearer {key}"}) as http:
                sid = http.post("/v1/sessions", json={"name": "bench"}).json()["id"]
                near, far = Follower(a.url, key, sid), Follower(b.url, key, sid)
                for i in range(commands):
                    http.post(f"/v1/sessions/{sid}/exec", json={"command": f"echo {i}"})
                    time.sleep(0.01)  # one command at a time, as a person or agent types
                last = http.get(f"/v1/sessions/{sid}/events", headers={
                    "Accept": "application/json"}).json()["last_seq"]
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and (
                        len(far.latency_ms) < last or len(near.latency_ms) < last):
                    time.sleep(0.05)
                near.close()
                far.close()
        finally:
            for srv in (a, b):
                srv.stop()
                shutil.rmtree(srv.data_dir, ignore_errors=True)
    seqs = sorted(set(near.latency_ms) & set(far.latency_ms))
    seqs = seqs[len(seqs) // 10:]  # the session's first events (its start) left out
    on_a = Samples([near.latency_ms[s] for s in seqs])
    on_b = Samples([far.latency_ms[s] for s in seqs])
    return [Figure(
        "cluster_event_fanout_p50", "Event appended on node A → received on node B (p50)",
        COMMAND, on_b.p50, "ms", on_a.p50, "received on node A itself (p50)",
        details=[f"on node B: {on_b.describe()}", f"on node A: {on_a.describe()}",
                 f"{len(seqs)} events of {commands} session commands; every event reached "
                 f"both: {len(far.latency_ms) == len(near.latency_ms) == last}"])]


if __name__ == "__main__":
    for fig in run():
        print(fig.title, f"{fig.value:.2f} ms vs {fig.baseline:.2f} ms", *fig.details, sep="\n  ")
