"""No request can end boxd, and a windowed exec's output waits for its reader.

These run the real boxd as a plain process (in a mount namespace of its own with a
private /tmp, so its script directory leaves nothing on the host), without a sandbox:
what is tested is the protocol, not the isolation.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sophon.box.box import ExecEvent, ExecOutcome
from sophon.box.protocol import MAX_FRAME, Done, Failure, read_reply
from sophon.errors import BoxProtocolError, BoxRequestError, PayloadTooLarge
from tests.unit.boxd_support import ENV, WINDOW, children, frame, poll, running_box, spawn

# --- frames over the limit, and frames that are not JSON --------------------------------


async def test_the_host_refuses_to_build_a_frame_over_the_limit() -> None:
    async with running_box() as box:
        # Control: a write well inside a frame goes through.
        got = await box.write_path("/tmp", "small.bin", b"x" * (1024 * 1024))
        assert got["size"] == 1024 * 1024
        with pytest.raises(PayloadTooLarge, match="frame limit"):
            await box.write_path("/tmp", "big.bin", b"x" * (7 * 1024 * 1024))
        # Nothing was sent, so boxd is still there to answer.
        assert isinstance(await box.request("ping"), Done)
        assert not box.stopped.is_set()


async def test_boxd_answers_a_frame_over_the_limit_with_an_error_and_lives() -> None:
    # Past the host's own check (a host bug, say): the frame goes to boxd as it is.
    proc = await spawn()
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert (await asyncio.wait_for(read_reply(proc.stdout), 10)).kind == "ready"
        proc.stdin.write(frame({"id": 7, "op": "ping", "pad": "x" * (MAX_FRAME + 10)}))
        proc.stdin.write(frame({"id": 8, "op": "ping"}))
        await proc.stdin.drain()
        first = await asyncio.wait_for(read_reply(proc.stdout), 10)
        assert isinstance(first, Failure) and first.id == 7
        assert first.code == "frame_too_large"
        second = await asyncio.wait_for(read_reply(proc.stdout), 10)
        assert isinstance(second, Done) and second.id == 8

        body = b'{"id":9,"op":"ping", not json'
        proc.stdin.write(struct.pack(">I", len(body)) + body)
        proc.stdin.write(frame({"id": 10, "op": "ping"}))
        await proc.stdin.drain()
        bad = await asyncio.wait_for(read_reply(proc.stdout), 10)
        assert isinstance(bad, Failure) and (bad.id, bad.code) == (9, "invalid_frame")
        good = await asyncio.wait_for(read_reply(proc.stdout), 10)
        assert isinstance(good, Done) and good.id == 10
    finally:
        proc.kill()
        await proc.wait()


async def test_a_reply_over_the_limit_is_an_error_not_a_broken_box() -> None:
    async with running_box() as box:
        async def pieces() -> AsyncIterator[bytes]:
            for _ in range(7):
                yield b"y" * (1024 * 1024)

        # Seven 1 MiB requests: a file larger than any one frame can be written.
        assert await box.put_file("/tmp", "seven.bin", pieces()) == 7 * 1024 * 1024
        # Read whole, it would be a reply over the limit (the host stops a box that sends
        # one): boxd answers with an error instead.
        with pytest.raises(BoxRequestError) as caught:
            await box.read_path("/tmp", "seven.bin", 7 * 1024 * 1024)
        assert caught.value.code == "reply_too_large"
        # Control: in pieces, it reads.
        got = await box.read_path("/tmp", "seven.bin", 1024 * 1024, 6 * 1024 * 1024)
        assert got["data"] == b"y" * (1024 * 1024)
        assert not box.stopped.is_set()


# --- flow control ---------------------------------------------------------------------


async def test_a_windowed_exec_waits_for_its_reader() -> None:
    size = 16 * 1024 * 1024
    async with running_box() as box:
        events = box.exec(["head", "-c", str(size), "/dev/urandom"], timeout=60, env=ENV,
                          cwd="/", output_cap=size, binary=True, window=WINDOW)
        first = await anext(events)
        assert isinstance(first, ExecEvent)
        got = len(base64.b64decode(first.data))

        # The reader pauses: the command must come to a stop, blocked on its full pipe,
        # with no more than the window held on the host.
        def blocked() -> bool:
            kids = children(box.pid)
            return bool(kids) and all(
                Path(f"/proc/{k}/wchan").read_text().endswith("pipe_write") for k in kids)

        await poll(blocked, 20, "the command to wait for the reader")
        (pending,) = box._pending.values()
        assert pending.outstanding <= WINDOW
        assert pending.queue.qsize() * 64 * 1024 < size // 4

        # Read the rest: all of it arrives, and other requests were never held up.
        assert isinstance(await box.request("ping"), Done)
        outcome = None
        async for ev in events:
            if isinstance(ev, ExecEvent):
                got += len(base64.b64decode(ev.data))
            else:
                outcome = ev
        assert isinstance(outcome, ExecOutcome) and outcome.exit_code == 0
        assert got == size and not outcome.truncated


async def test_a_windowed_exec_still_times_out_while_its_reader_waits() -> None:
    async with running_box() as box:
        events = box.exec(["head", "-c", str(1 << 30), "/dev/zero"], timeout=1, env=ENV,
                          cwd="/", output_cap=1 << 31, binary=True, window=WINDOW)
        await anext(events)
        # The reader does not read; the command is killed at its timeout all the same.
        await poll(lambda: not children(box.pid), 20, "the command's timeout")
        outcome = [ev async for ev in events if isinstance(ev, ExecOutcome)]
        assert outcome and outcome[0].timed_out


async def test_leaving_a_windowed_exec_early_cancels_it() -> None:
    async with running_box() as box:
        events = box.exec(["head", "-c", str(1 << 30), "/dev/zero"], timeout=60, env=ENV,
                          cwd="/", output_cap=1 << 31, binary=True, window=WINDOW)
        async for ev in events:
            assert isinstance(ev, ExecEvent)
            break
        await events.aclose()
        # Nobody will read the rest: the command is killed rather than left waiting.
        await poll(lambda: not children(box.pid), 10, "the command to be cancelled")
        await poll(lambda: not box._pending, 10, "the request to end")
        assert isinstance(await box.request("ping"), Done)


# A stand-in boxd that ignores the window it was given and floods its output.
FLOODING_BOXD = r"""
import json, struct, sys
def send(obj):
    data = json.dumps(obj).encode()
    sys.stdout.buffer.write(struct.pack(">I", len(data)) + data)
    sys.stdout.buffer.flush()
send({"id": 0, "kind": "ready", "pid": 1})
size = struct.unpack(">I", sys.stdin.buffer.read(4))[0]
req = json.loads(sys.stdin.buffer.read(size))
for _ in range(4 * req["window"] // 65536):
    send({"id": req["id"], "kind": "out", "stream": "stdout", "data": "QUFB" * 16384})
send({"id": req["id"], "kind": "done", "exit_code": 0})
sys.stdin.buffer.read()
"""


async def test_a_boxd_that_ignores_the_window_is_stopped() -> None:
    async with running_box(FLOODING_BOXD) as box:
        events = box.exec(["true"], timeout=10, env={}, cwd="/", output_cap=1 << 30,
                          binary=True, window=WINDOW)
        await anext(events)
        # The reader pauses and boxd does not wait: the host stops the box rather than
        # hold what passes the window.
        await poll(box.stopped.is_set, 10, "the host to stop the flooding box")
        with pytest.raises(BoxProtocolError, match="window"):
            async for _ in events:
                pass
