"""boxd runs commands itself and hands file requests to its file helper (agent/, Python),
started on the first one: a box that only runs commands starts no interpreter, a helper
that dies fails only its own requests, and a helper can never answer for a request it
was not given. (That a box's process count leaves the helper out: test_box_lifecycle.)"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import pytest

from sophon.box.box import ExecEvent, ExecOutcome
from sophon.box.protocol import Done
from sophon.errors import BoxRequestError
from tests.unit.boxd_support import ENV, children, poll, running_box


def helpers_of(pid: int) -> list[int]:
    found = []
    for child in children(pid):
        with contextlib.suppress(OSError):
            if b"helper.py" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
    return found


async def test_the_helper_starts_with_the_first_file_request() -> None:
    async with running_box() as box:
        assert isinstance(await box.request("ping"), Done)
        async for _ in box.exec(["true"], timeout=10, env=ENV, cwd="/", output_cap=100):
            pass
        assert helpers_of(box.pid) == []  # commands alone start no interpreter

        assert (await box.write_path("/tmp", "f.txt", b"hello"))["size"] == 5
        [helper] = helpers_of(box.pid)
        assert (await box.read_path("/tmp", "f.txt", 100))["data"] == b"hello"
        assert helpers_of(box.pid) == [helper]  # one helper serves them all


async def test_a_dead_helper_fails_its_requests_and_the_next_one_starts_another() -> None:
    async with running_box() as box:
        watching = box.watch("/tmp", interval=0.05)
        await anext(watching)  # the watch has started, in the helper
        [helper] = helpers_of(box.pid)
        os.kill(helper, signal.SIGKILL)
        with pytest.raises(BoxRequestError, match="file helper stopped"):  # with the helper
            async for _ in watching:
                pass
        await poll(lambda: helper not in helpers_of(box.pid), 10, "the helper to be reaped")
        # The box is fine, and the next file request has a new helper.
        assert isinstance(await box.request("ping"), Done)
        assert (await box.write_path("/tmp", "again.txt", b"x"))["size"] == 1
        assert helpers_of(box.pid) not in ([], [helper])


# A helper that answers each request it is given, after trying to answer for the request
# before it (the host's ids go up by one) and for one boxd never sent at all.
FORGING_HELPER = r"""
import json, struct, sys
def send(obj):
    data = json.dumps(obj).encode()
    sys.stdout.buffer.write(struct.pack(">I", len(data)) + data)
    sys.stdout.buffer.flush()
while True:
    head = sys.stdin.buffer.read(4)
    if len(head) < 4:
        break
    req = json.loads(sys.stdin.buffer.read(struct.unpack(">I", head)[0]))
    rid = req["id"]
    send({"id": rid - 1, "kind": "out", "stream": "stdout", "data": "FORGED"})
    send({"id": rid - 1, "kind": "done", "exit_code": 42})
    send({"id": 10**6, "kind": "done"})
    send({"id": rid, "kind": "done", "size": 0, "etag": "x"})
"""


async def test_a_helper_cannot_answer_for_a_request_it_was_not_given() -> None:
    async with running_box(helper=FORGING_HELPER) as box:
        events = box.exec(["sh", "-c", "sleep 0.5; echo real"], timeout=10, env=ENV,
                          cwd="/", output_cap=1000)
        first = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.1)  # the exec (the lower id) is running
        with contextlib.suppress(BoxRequestError):
            await box.write_path("/tmp", "x", b"")  # the helper's turn to forge
        got = [await first] + [ev async for ev in events]
        out = "".join(ev.data for ev in got if isinstance(ev, ExecEvent))
        [outcome] = [ev for ev in got if isinstance(ev, ExecOutcome)]
        assert out == "real\n" and outcome.exit_code == 0, got
        assert not box.stopped.is_set()
