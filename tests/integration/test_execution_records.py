"""An answered execution is on record: its row is committed before the answer goes out
(rows are written in batches, never after the answer). A one-off execution's box is
deleted after the answer, and still before the server stops."""

from __future__ import annotations

import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.conftest import LiveServer


def test_every_answered_execution_survives_a_kill_right_after(own_server: LiveServer) -> None:
    key = own_server.add_user()
    headers = {"Authorization": f"Bearer {key}"}
    db = f"file:{own_server.data_dir / 'sophon.db'}?mode=ro"

    def on_record(trace_id: str) -> bool:
        with sqlite3.connect(db, uri=True) as con:
            return con.execute("SELECT status FROM executions WHERE trace_id = ?",
                               (trace_id,)).fetchone() == ("success",)

    def execute(i: int) -> tuple[str, str]:
        body: dict[str, object] = {"code": f"echo run-{i}", "language": "bash"}
        if i % 3:
            body["thread_id"] = f"rec-{i % 4}-{i}"  # distinct: no thread_busy
        stream = i % 5 == 0
        with httpx.Client(base_url=own_server.url, headers=headers, timeout=60) as http:
            r = http.post("/v1/sandbox/execute", json=body,
                          headers={"Accept": "application/x-ndjson"} if stream else {})
        assert r.status_code == 200, r.text
        result = json.loads(r.text.splitlines()[-1])["result"] if stream else r.json()
        assert result["success"], result
        # Already committed when the answer arrives: another reader sees it at once.
        assert on_record(r.headers["X-Trace-Id"])
        return r.headers["X-Trace-Id"], result["stdout"]

    # Many at once, so that rows share commits.
    with ThreadPoolExecutor(12) as pool:
        answered = list(pool.map(execute, range(24)))
    own_server.kill()  # at once: nothing gets a chance to write anything more
    own_server.start()
    with httpx.Client(base_url=own_server.url, headers=headers, timeout=30) as http:
        for trace_id, stdout in answered:
            st = http.get(f"/v1/executions/{trace_id}")
            assert st.status_code == 200, (trace_id, st.text)
            assert (st.json()["status"], st.json()["stdout"]) == ("success", stdout)


def test_one_off_boxes_are_gone_when_the_server_stops_right_after(
        own_server: LiveServer) -> None:
    key = own_server.add_user()
    boxes = own_server.data_dir / "boxes"

    def once(i: int) -> None:
        r = httpx.post(own_server.url + "/v1/sandbox/execute", timeout=60,
                       headers={"Authorization": f"Bearer {key}"},
                       json={"code": f"echo {i} > mine.txt; sleep 30 &", "language": "bash"})
        assert r.status_code == 200 and r.json()["success"], r.text

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(once, range(4)))
    own_server.stop()  # a clean stop, as soon as the answers are in
    assert own_server.proc is not None and own_server.proc.returncode is not None
    assert not list(boxes.glob("*/workspace/mine.txt"))
    assert not [d.name for d in boxes.iterdir() if d.name.startswith("x")]
