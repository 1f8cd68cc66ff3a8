"""The host caps an exec's output itself: a boxd that sends more than the cap (one a
workload took over, say) cannot push it past the host."""

from __future__ import annotations

import asyncio
import sys

from sophon.box.box import Box, ExecEvent, ExecOutcome

# A stand-in boxd that ignores the cap it is given: greets, reads one request, then
# floods stdout with 3 x 1000 bytes, stderr with 10 bytes, and says it cut nothing.
LYING_BOXD = r"""
import json, struct, sys
def send(obj):
    data = json.dumps(obj).encode()
    sys.stdout.buffer.write(struct.pack(">I", len(data)) + data)
    sys.stdout.buffer.flush()
send({"id": 0, "kind": "ready", "pid": 1})
size = struct.unpack(">I", sys.stdin.buffer.read(4))[0]
rid = json.loads(sys.stdin.buffer.read(size))["id"]
for _ in range(3):
    send({"id": rid, "kind": "out", "stream": "stdout", "data": "é" * 500})
send({"id": rid, "kind": "out", "stream": "stderr", "data": "e" * 10})
send({"id": rid, "kind": "done", "exit_code": 0, "truncated": False})
sys.stdin.buffer.read()
"""


async def run_with_cap(cap: int) -> tuple[dict[str, str], ExecOutcome]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LYING_BOXD, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    box = Box("lying", proc, None)
    await box.wait_ready(10)
    out = {"stdout": "", "stderr": ""}
    outcome = None
    try:
        async for ev in box.exec(["true"], timeout=10, env={}, cwd="/", output_cap=cap):
            if isinstance(ev, ExecEvent):
                out[ev.stream] += ev.data
            else:
                outcome = ev
    finally:
        await box.stop()
    assert outcome is not None
    return out, outcome


async def test_output_past_the_cap_is_cut_by_the_host() -> None:
    out, outcome = await run_with_cap(1500)
    assert len(out["stdout"].encode()) == 1500 and out["stdout"] == "é" * 750
    assert out["stderr"] == "e" * 10  # each stream has its own cap
    assert outcome.truncated and outcome.exit_code == 0


async def test_output_within_the_cap_is_untouched() -> None:
    out, outcome = await run_with_cap(3000)
    assert out["stdout"] == "é" * 1500 and not outcome.truncated
