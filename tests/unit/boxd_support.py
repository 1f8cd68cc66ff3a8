"""boxd run as a plain process for the protocol's tests (tests/unit/test_boxd_*.py): in a
mount namespace of its own with a private /tmp, so its script directory leaves nothing on
the host, and without a sandbox: what is tested is the protocol, not the isolation."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import json
import os
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import sophon.box
from sophon.box.box import Box
from sophon.box.boxd_build import ensure_boxd

AGENT = Path(sophon.box.__file__).parent / "agent"
# boxd runs under the interpreter boxes use (stdlib only), never one of a venv, which may
# live under /tmp (a CI clone's does) and so be hidden by the test's own /tmp.
BOX_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
ENV = {"PATH": "/usr/bin:/bin"}
WINDOW = 256 * 1024


@functools.cache
def boxd(helper: str | None = None) -> Path:
    """boxd and its file helper's modules, copied where the tmpfs the test mounts on /tmp
    cannot hide them (the checkout itself may be under /tmp); ``helper``: the source of
    a helper.py to use instead of the real one."""
    copy = Path(tempfile.mkdtemp(prefix="sophon-boxd-", dir="/dev/shm"))
    shutil.copytree(AGENT, copy, dirs_exist_ok=True)
    shutil.copy2(ensure_boxd(), copy / "boxd")
    if helper is not None:
        (copy / "helper.py").write_text(helper)
    atexit.register(shutil.rmtree, copy, True)
    return copy / "boxd"


async def spawn(script: str | None = None, helper: str | None = None,
                ignoring: str = "") -> asyncio.subprocess.Process:
    """``ignoring``: signals (as sh's trap names them) boxd starts with ignored."""
    if script is not None:  # a stand-in boxd
        argv = [sys.executable, "-c", script]
    else:
        argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                (f"trap '' {ignoring}; " if ignoring else "")
                + 'mount -t tmpfs -o size=16m tmpfs /tmp && SOPHON_PYTHON="$1" exec "$0"',
                str(boxd(helper)), BOX_PYTHON]
    return await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)


@contextlib.asynccontextmanager
async def running_box(script: str | None = None, helper: str | None = None,
                      ignoring: str = "") -> AsyncIterator[Box]:
    box = Box("unit", await spawn(script, helper, ignoring), None)
    await box.wait_ready(10)
    try:
        yield box
    finally:
        await box.stop()


def frame(obj: object) -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return struct.pack(">I", len(body)) + body


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


async def poll(predicate, deadline: float = 10.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    end = time.monotonic() + deadline
    while not (value := predicate()):
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
    return value


