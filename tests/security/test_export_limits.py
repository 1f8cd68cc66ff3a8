"""Export cannot break a session's box, nor grow the server with the export's size.

A log too large for one frame to boxd used to end boxd on every export (the session's
export then answered 503 for good); an export read slowly used to pile up in the
server's memory as fast as the box could make it.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, wait_for

MB = 1024 * 1024


def new_session(http: httpx.Client, **extra: object) -> str:
    r = http.post("/v1/sessions", json={"name": "export", "starter": {"type": "empty"},
                                        **extra})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def sh(http: httpx.Client, session_id: str, command: str, timeout: int = 120) -> list[dict]:
    r = http.post(f"/v1/sessions/{session_id}/exec",
                  json={"command": command, "timeout": timeout})
    assert r.status_code == 200, r.text
    events = [json.loads(line) for line in r.content.splitlines()]
    assert events[-1]["type"] == "exec_end" and events[-1]["exit_code"] == 0, events[-1]
    return events


def members(tarball: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers() if m.isfile()}


# --- part 7: a log larger than a frame -------------------------------------------------


def test_a_log_larger_than_a_frame_exports_every_time(http: httpx.Client) -> None:
    sid = new_session(http)
    # Control: an export of a small log works (and the box is up).
    assert http.get(f"/v1/sessions/{sid}/export").status_code == 200
    last = 0
    for _ in range(10):  # ~10 MB of exec_output events, more than one 8 MiB frame
        last = sh(http, sid, "head -c 1000000 /dev/zero | tr '\\0' x")[-1]["seq"]
    for attempt in range(2):
        r = http.get(f"/v1/sessions/{sid}/export")
        assert r.status_code == 200, (attempt, r.text)
        files = members(r.content)
        log = files["events.jsonl"]
        assert len(log) > 8 * MB
        events = [json.loads(line) for line in log.splitlines()]
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(1, len(seqs) + 1)) and seqs[-1] >= last
        written = sum(len(e["data"]) for e in events if e["type"] == "exec_output")
        assert written == 10 * 1_000_000
        assert json.loads(files["session.json"])["id"] == sid
    # The box is alive and well after it.
    assert sh(http, sid, "echo still here")[-2]["data"] == "still here\n"


# --- part 6: a slow reader holds the export, not the server's memory -------------------


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def compressor(server_pid: int) -> int | None:
    """The export's gzip, somewhere under the server."""
    for pid in descendants(server_pid):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "gzip":
                return pid
        except OSError:
            continue
    return None


def written_by(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class Stall:
    """Whether the export's gzip has stopped: blocked on its full pipe, and nothing
    written since the last look."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.written = -1

    def check(self) -> bool:
        gz = compressor(self.server_pid)
        if gz is None:
            raise AssertionError("the export was made to its end while its reader paused: "
                                 "nothing held it back")
        wrote = written_by(gz)
        blocked = Path(f"/proc/{gz}/wchan").read_text().endswith("pipe_write")
        still = wrote is not None and wrote == self.written and blocked
        self.written = wrote if wrote is not None else -1
        return still


@pytest.fixture
def big_session(http: httpx.Client) -> Iterator[tuple[str, str]]:
    """A session with 240 MB of incompressible files, and the first one's sha256."""
    sid = new_session(http, disk_mb=1024)
    sh(http, sid, "for i in 1 2 3; do head -c 80M /dev/urandom > big$i.bin; done")
    digest = sh(http, sid, "sha256sum big1.bin | cut -d' ' -f1")[-2]["data"].strip()
    yield sid, digest
    http.delete(f"/v1/sessions/{sid}")


def test_a_fast_reader_gets_the_whole_export(http: httpx.Client,
                                             big_session: tuple[str, str]) -> None:
    sid, digest = big_session
    r = http.get(f"/v1/sessions/{sid}/export", timeout=300)
    assert r.status_code == 200
    files = members(r.content)
    assert hashlib.sha256(files["project/big1.bin"]).hexdigest() == digest
    assert all(len(files[f"project/big{i}.bin"]) == 80 * MB for i in (1, 2, 3))


def test_a_slow_reader_holds_the_export_back_not_the_server(
        server: LiveServer, http: httpx.Client, big_session: tuple[str, str]) -> None:
    sid, digest = big_session
    assert server.proc is not None
    pid = server.proc.pid
    # Warm: the export path has run once, so the baseline is not its first imports.
    assert http.get(f"/v1/sessions/{sid}/export", timeout=300).status_code == 200
    baseline = rss(pid)
    # What may be made and not yet read: the sockets' buffers (the kernel's, and they can
    # be large), the window and a little more; not the export's size.
    in_flight = sum(int(Path(f"/proc/sys/net/ipv4/tcp_{d}mem").read_text().split()[2])
                    for d in ("r", "w")) + 16 * MB
    peak = 0
    got = bytearray()
    with http.stream("GET", f"/v1/sessions/{sid}/export", timeout=300) as r:
        assert r.status_code == 200
        chunks = r.iter_raw(64 * 1024)
        for target in (2 * MB, 20 * MB, 40 * MB):
            while len(got) < target:
                got += next(chunks)
            # The reader pauses. The box's gzip must come to a stop (its output waits
            # for the reader), not race ahead into the server's memory.
            stall = Stall(pid)
            wait_for(stall.check, 60, 0.2, "the export to wait for its reader")
            ahead = stall.written - len(got)
            assert ahead < in_flight, f"the box made {ahead} bytes more than was read"
            peak = max(peak, rss(pid) - baseline)
            assert peak < 64 * MB, f"the server grew by {peak / MB:.0f} MB"
        began = time.monotonic()
        for chunk in chunks:
            got += chunk
    files = members(bytes(got))
    assert hashlib.sha256(files["project/big1.bin"]).hexdigest() == digest
    assert len(got) > 240 * MB and time.monotonic() - began < 240


def test_a_reader_that_goes_away_ends_the_export(
        server: LiveServer, http: httpx.Client, big_session: tuple[str, str]) -> None:
    sid, _ = big_session
    assert server.proc is not None
    pid = server.proc.pid
    with http.stream("GET", f"/v1/sessions/{sid}/export", timeout=300) as r:
        assert r.status_code == 200
        chunks = r.iter_raw(64 * 1024)  # held: closing it would close the response
        got = 0
        while got <= 4 * MB:
            got += len(next(chunks))
        assert compressor(pid) is not None  # (control) the export is under way
    # The connection is closed: nobody will read the rest, so the tar is ended rather
    # than left waiting (for the exec's hour-long timeout) with the box held awake.
    wait_for(lambda: compressor(pid) is None, 30, 0.1, "the abandoned export to end")
    # And the session's box still answers.
    assert sh(http, sid, "echo ok")[-2]["data"] == "ok\n"
