"""boxd's file helper: reads, writes, lists and links files, and watches trees for changes.

boxd (a compiled program, ../boxd/) is each box's first process and runs its commands;
the file work is here, in Python, started by boxd on the first request that needs it
(helper.py), so a box that only runs commands never starts an interpreter. Standard
library only: it must run under any python3 an image offers.

It speaks boxd's frames on stdin/stdout (4-byte big-endian length, then UTF-8 JSON):
boxd forwards it the requests it serves (fread, fwrite, fput, link, tree, watch, rescan,
and a cancel of a watch), and passes on only the frames of those requests. Every request
carries an integer ``id``; requests run concurrently, each on a thread of its own while
it runs (threads are reused), and every reply frame echoes the id: ``change`` and
``watching`` frames while a watch runs, then exactly one ``done`` or ``error``.

It runs as the box's user, like the workloads; it makes itself non-dumpable so that they
cannot ptrace it or read its memory.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import struct
import sys
import threading
import time

import files  # helper.py put this directory on sys.path
import watch
from threads import Workers

HEADER = struct.Struct(">I")
MAX_FRAME = 8 * 1024 * 1024
CHUNK = 64 * 1024
PR_SET_DUMPABLE = 4

_write_lock = threading.Lock()
_out = sys.stdout.buffer


def send(frame: dict[str, object]) -> None:
    data = json.dumps(frame, separators=(",", ":")).encode()
    if len(data) > MAX_FRAME:
        # The host stops a box that sends a frame over the limit: fail the request instead.
        data = json.dumps({"id": frame.get("id"), "kind": "error", "code": "reply_too_large",
                           "message": f"the answer would be {len(data)} bytes, over the "
                                      f"{MAX_FRAME}-byte frame limit"}).encode()
    with _write_lock:
        _out.write(HEADER.pack(len(data)) + data)
        _out.flush()


def read_exact(stream, n: int) -> bytes | None:  # type: ignore[no-untyped-def]
    buf = b""
    while len(buf) < n:
        part = stream.read(n - len(buf))
        if not part:
            return None
        buf += part
    return buf


class RequestError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --- operations -------------------------------------------------------------

def _path_errors(fn):  # type: ignore[no-untyped-def]
    def wrapped(rid: int, req: dict) -> dict:
        mod = files
        try:
            return fn(mod, rid, req)
        except mod.PathError as exc:
            raise RequestError(exc.code, exc.message) from exc
        except FileNotFoundError as exc:
            raise RequestError("not_found", f"{req.get('path')!r} does not exist") from exc
        except NotADirectoryError as exc:
            raise RequestError("not_a_directory", f"{req.get('path')!r}: {exc.strerror}") from exc
        except OSError as exc:
            raise RequestError("io_error", f"{req.get('path')!r}: {exc.strerror}") from exc
    return wrapped


@_path_errors
def op_fread(files, rid: int, req: dict) -> dict:  # type: ignore[no-untyped-def]
    got = files.read(req["root"], req["path"], int(req.get("limit", MAX_FRAME // 2)),
                     int(req.get("offset", 0)))
    got["data"] = base64.b64encode(got["data"]).decode()
    return got


@_path_errors
def op_fwrite(files, rid: int, req: dict) -> dict:  # type: ignore[no-untyped-def]
    return files.write(req["root"], req["path"], base64.b64decode(req["data"]),
                       req.get("if_match"), bool(req.get("if_none_match")))


@_path_errors
def op_fput(files, rid: int, req: dict) -> dict:  # type: ignore[no-untyped-def]
    return files.put(req["root"], req["path"], str(req["upload"]), int(req.get("offset", 0)),
                     base64.b64decode(req.get("data", "")), bool(req.get("final")),
                     bool(req.get("abort")))


@_path_errors
def op_link(files, rid: int, req: dict) -> dict:  # type: ignore[no-untyped-def]
    return files.link(req["root"], req["path"], str(req["target"]))


@_path_errors
def op_tree(files, rid: int, req: dict) -> dict:  # type: ignore[no-untyped-def]
    return files.tree(req["root"], req.get("path", ""))


_watches: dict[int, object] = {}  # watch.Control by request id


def op_watch(rid: int, req: dict) -> dict:
    """Stream file changes under ``root`` as ``change`` frames until cancelled."""
    control = _watches[rid] = watch.Control()
    try:
        watch.run(req["root"], lambda change: send({"id": rid, "kind": "change", **change}),
                  control, float(req.get("interval", 0.25)),
                  ready=lambda: send({"id": rid, "kind": "watching"}))
    finally:
        _watches.pop(rid, None)
    return {"stopped": True}


def op_rescan(rid: int, req: dict) -> dict:
    """Every watch scans now; the answer comes once their changes have been sent (so the
    host has them before it has this)."""
    waiting = [control.rescan() for control in list(_watches.values())]  # type: ignore[attr-defined]
    deadline = time.monotonic() + float(req.get("timeout", 10))
    settled = all(done.wait(max(0.0, deadline - time.monotonic())) for done in waiting)
    return {"watches": len(waiting), "settled": settled}


def op_cancel(rid: int, req: dict) -> dict:
    """boxd sends a cancel here only for a request of the helper's: a watch."""
    control = _watches.get(int(req["target"]))
    if control is None:
        return {"cancelled": False}
    control.set()  # type: ignore[attr-defined]
    return {"cancelled": True}


OPS = {
    "fread": op_fread,
    "fwrite": op_fwrite,
    "fput": op_fput,
    "tree": op_tree,
    "link": op_link,
    "watch": op_watch,
    "rescan": op_rescan,
    "cancel": op_cancel,
}


def answer(req: dict) -> dict | None:
    """Run a request; its final frame (``done`` or ``error``), None for no id."""
    rid = req.get("id")
    if not isinstance(rid, int):
        return None
    op = OPS.get(req.get("op"))
    try:
        if op is None:
            raise RequestError("unknown_op", f"unknown op {req.get('op')!r}")
        result = op(rid, req)
        return {"id": rid, "kind": "done", **result}
    except RequestError as exc:
        return {"id": rid, "kind": "error", "code": exc.code, "message": exc.message}
    except Exception as exc:  # a bug here must not end the helper
        return {"id": rid, "kind": "error", "code": "internal", "message": repr(exc)}


_workers = Workers(answer, send)


def main() -> None:
    """boxd sends only frames it has read whole, within the size limit."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    inp = sys.stdin.buffer
    while True:
        header = read_exact(inp, HEADER.size)
        if header is None:
            break
        (length,) = HEADER.unpack(header)
        body = read_exact(inp, length)
        if body is None:
            break
        try:
            req = json.loads(body)
        except ValueError:
            continue
        if isinstance(req, dict):
            _workers.submit(req)
