"""The pipes between the host and boxd are out of a workload's reach."""

from __future__ import annotations

import json

import httpx

from tests.conftest import LiveServer

PROBE = r"""
import glob, json, os, struct
results = {}
for pid in sorted(p for p in os.listdir('/proc') if p.isdigit()):
    for fd in ('0', '1', '2'):
        path = f'/proc/{pid}/fd/{fd}'
        try:
            target = os.readlink(path)
        except OSError as exc:
            if pid == '1':  # boxd: what stopped the probe is part of the answer
                results[path] = exc.strerror
            continue
        if not target.startswith('pipe:'):
            continue
        try:
            # A forged "done" frame for request 1, if the host pipe could be opened.
            w = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            body = json.dumps({'id': 1, 'kind': 'done', 'exit_code': 0}).encode()
            os.write(w, struct.pack('>I', len(body)) + body)
            results[path] = 'opened'
        except OSError as exc:
            results[path] = exc.strerror
cmdlines = [open(f).read() for f in glob.glob('/proc/[0-9]*/cmdline')]
print(json.dumps({'opened': [p for p, r in results.items() if r == 'opened'],
                  'tried': sorted(results), 'cmdlines': cmdlines}))
"""


def test_workload_cannot_open_the_host_pipes(http: httpx.Client, server: LiveServer) -> None:
    r = http.post("/v1/sandbox/execute", json={"code": PROBE, "thread_id": "pipes"})
    report = r.json()
    assert report["exit_code"] == 0, report
    # The probe's own stdout holds its forged frame (harmless: that pipe is its own).
    out = report["stdout"]
    found = json.loads(out[out.index('{"opened"'):])
    # Only the workload's own pipes (to boxd) may be reachable, never boxd's stdin/stdout.
    assert not [p for p in found["opened"] if p.startswith("/proc/1/")]
    # boxd (pid 1) was tried, and refused before anything could be opened: its
    # descriptors are not even readable (it is not dumpable).
    assert {"/proc/1/fd/0", "/proc/1/fd/1"} <= set(found["tried"]), found["tried"]
    # The control: the probe does open a pipe where it may (its own output).
    assert found["opened"], found
    # Nothing in the box names the host's data directory.
    assert not [c for c in found["cmdlines"] if str(server.data_dir) in c]
    # The box still works: no forged frame confused the host.
    again = http.post("/v1/sandbox/execute",
                      json={"code": "print('ok')", "thread_id": "pipes"}).json()
    assert again["stdout"] == "ok\n"
