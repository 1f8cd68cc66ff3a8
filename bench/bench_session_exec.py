"""Figure: what the session layer adds to a command, against the execution API.

Both calls run bash ``true`` in an already running box over one keep-alive HTTP
connection: ``POST /v1/sessions/{id}/exec`` (NDJSON, with exec_start / exec_output /
exec_end written to the session's event log and its secrets in the environment) and
``POST /v1/sandbox/execute`` on a warm thread (the baseline). They are timed
alternately, so other load on the machine weighs on both alike.

    .venv/bin/python bench/run.py --only session_exec
"""

from __future__ import annotations

from common import EXECUTE, Figure, check, client, execute_body, live_server, sample_pairs_ms

GOAL_ADDED_MS = 3.0


def run(calls: int = 200, warmup: int = 20) -> list[Figure]:
    with live_server() as (srv, key), client(srv, key) as http:
        r = http.post("/v1/sessions", json={"name": "bench", "base": "generic"})
        r.raise_for_status()
        exec_url = f"/v1/sessions/{r.json()['id']}/exec"
        body = execute_body("true", "bash", thread_id="bench-session-exec")

        def session_exec() -> None:
            resp = http.post(exec_url, json={"command": "true"})
            resp.raise_for_status()
            if b'"exit_code":0' not in resp.content.replace(b" ", b""):
                raise RuntimeError(f"session exec failed: {resp.text[:300]}")

        def execute() -> None:
            check(http.post(EXECUTE, json=body))

        sess, base = sample_pairs_ms(session_exec, execute, calls, warmup=warmup)

    added = sess.p50 - base.p50
    return [Figure(
        key="session_exec",
        title="Session exec vs warm execute (bash `true`), p50 added by the session layer",
        command=".venv/bin/python bench/run.py --only session_exec",
        value=sess.p50,
        unit="ms",
        baseline=base.p50,
        baseline_label="warm `POST /v1/sandbox/execute` p50",
        goal=f"adds < {GOAL_ADDED_MS:g} ms",
        met=added < GOAL_ADDED_MS,
        details=[
            f"session exec: {sess.describe()}",
            f"warm execute, timed alternately: {base.describe()}",
            f"added by the session layer: {added:.2f} ms at p50, "
            f"{sess.p99 - base.p99:.2f} ms at p99",
        ],
    )]


if __name__ == "__main__":
    for fig in run():
        print(fig.title, "\n  " + "\n  ".join(fig.details))
