"""A session whose workload rewrites many files in a loop cannot fill the server's disk
with file-change events: past a burst, changes are folded into one
``file_changes_coalesced`` event per window, and diffs have a byte budget. (Unbounded,
150 files rewritten every 0.3 s once grew the database by 535 MB in 45 s.)"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from tests.conftest import wait_for

JSON = {"Accept": "application/json"}
FILES = 150
ROUNDS = 33  # every 0.3 s: about 10 s
# Defaults (config.py): a burst of 100 events then 10/s; diffs 1 MiB then 64 KiB/s.
BURST, RATE, DIFF_BURST, DIFF_RATE = 100, 10, 2**20, 64 * 1024
# 100 lines of 40 characters a file, all changed each round: an ~8 KiB diff each time.
FLOOD = f"""python3 - <<'PY'
import time
for r in range({ROUNDS}):
    for i in range(1, {FILES} + 1):
        with open(f"f{{i}}.txt", "w") as f:
            f.writelines(f"round {{r:05}} file {{i:03}} line {{n:03}} xxxxxxxxxxxxxx\\n"
                         for n in range(100))
    time.sleep(0.3)
PY"""


def events(http: httpx.Client, sid: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        r = http.get(f"/v1/sessions/{sid}/events", params={"after": len(out), "limit": 5000},
                     headers=JSON)
        assert r.status_code == 200, r.text
        page = r.json()["events"]
        if not page:
            return out
        out += page


def run(http: httpx.Client, sid: str, command: str) -> None:
    r = http.post(f"/v1/sessions/{sid}/exec", json={"command": command, "timeout": 120},
                  timeout=180)
    assert r.status_code == 200, r.text
    end = json.loads(r.content.splitlines()[-1])
    assert end["type"] == "exec_end" and end["exit_code"] == 0, end


def file_event(http: httpx.Client, sid: str, path: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        return next((e for e in events(http, sid)
                     if e["type"] == "file_change" and e["path"] == path), None)

    found = wait_for(find, 15, 0.1, f"the file_change of {path}")
    assert isinstance(found, dict)
    return found


def test_a_file_rewriting_loop_stores_a_bounded_number_of_events(http: httpx.Client) -> None:
    s = http.post("/v1/sessions", json={"name": "flood"})
    assert s.status_code == 201, s.text
    sid = s.json()["id"]
    # Control: a single edit is a file_change with its diff.
    run(http, sid, "echo hello > one.txt")
    one = file_event(http, sid, "one.txt")
    assert "+hello" in one["diff"] and not one["diff_truncated"]

    before = len(events(http, sid))
    started = time.monotonic()
    run(http, sid, FLOOD)
    # An edit after the loop: once it is logged (alone, or folded into the window that
    # was open when the loop ended, logged when that window ends), so is all the loop did.
    run(http, sid, "echo after > after.txt")

    def settled() -> list[dict[str, Any]] | None:
        got = events(http, sid)
        return got if any(e["type"] == "file_change" and e["path"] == "after.txt" or
                          e["type"] == "file_changes_coalesced" and "after.txt" in e["paths"]
                          for e in got) else None

    got = wait_for(settled, 30, 0.2, "the edit after the loop to be logged")
    assert isinstance(got, list)
    elapsed = time.monotonic() - started
    flood = [e for e in got[before:] if e["type"] in ("file_change",
                                                      "file_changes_coalesced")]
    single = [e for e in flood if e["type"] == "file_change"]
    folded = [e for e in flood if e["type"] == "file_changes_coalesced"]
    stored = sum(len(json.dumps(e)) for e in flood)
    # Unbounded this is ~5,000 events and ~40 MB; bounded, a few hundred and ~2 MB.
    assert len(single) <= BURST + RATE * elapsed, (len(single), elapsed)
    assert len(folded) <= elapsed / 5 + 2, len(folded)
    diffs = sum(len(e["diff"] or "") for e in single)
    assert diffs <= DIFF_BURST + DIFF_RATE * elapsed, diffs
    assert stored <= diffs + 1024 * len(single) + 20 * 1024 * len(folded), stored
    assert stored < 4 * 2**20, stored
    # What was folded is told: how many changes to which files.
    names = {f"f{i}.txt" for i in range(1, FILES + 1)} | {"after.txt"}
    assert sum(e["changes"] for e in folded) > 3 * FILES  # scans see most rounds
    for e in folded:
        assert e["files"] <= len(names) and set(e["paths"]) <= names
        assert len(e["paths"]) == min(100, e["files"])
    # Control: once the flood is over, an edit is a file_change with its diff again.
    run(http, sid, "echo again > again.txt")
    again = file_event(http, sid, "again.txt")
    assert "+again" in again["diff"] and not again["diff_truncated"]
