"""Frames between the host and boxd, validated on the host side.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON.
Everything boxd sends is untrusted: it is size-checked before it is read and
schema-checked before anything acts on it.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from sophon.errors import BoxProtocolError, PayloadTooLarge

HEADER = struct.Struct(">I")
MAX_FRAME = 8 * 1024 * 1024
# Flow control of a windowed exec (see ``credit``): boxd sends at most ``window``
# characters of output data that the host has not credited back. boxd refuses a smaller
# window, since one output frame must fit.
MIN_WINDOW = 256 * 1024


class _Reply(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, strict=True)
    id: int = Field(ge=0)


class Ready(_Reply):
    kind: Literal["ready"]
    pid: int


class Output(_Reply):
    kind: Literal["out"]
    stream: Literal["stdout", "stderr"]
    data: str


class Change(_Reply):
    """A file in a watched tree was created, modified or deleted."""

    kind: Literal["change"]
    path: str = Field(min_length=1, max_length=4096)
    change: Literal["created", "modified", "deleted"]
    size: int | None = Field(None, ge=0)
    diff: str | None = Field(None, max_length=70_000)
    diff_truncated: bool = False
    binary: bool = False


class Watching(_Reply):
    """A watch has taken its first snapshot: every change from now on is reported."""

    kind: Literal["watching"]


class Done(_Reply):
    kind: Literal["done"]


class Failure(_Reply):
    kind: Literal["error"]
    code: str = Field(max_length=64)
    message: str = Field(max_length=4096)


AnyReply = Ready | Output | Change | Watching | Done | Failure
Reply = Annotated[AnyReply, Field(discriminator="kind")]
_reply_adapter: TypeAdapter[AnyReply] = TypeAdapter(Reply)


class ExecResult(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    exit_code: int
    signal: int | None = None
    timed_out: bool = False
    truncated: bool = False
    duration_ms: int = Field(0, ge=0)


def encode(frame: dict[str, object]) -> bytes:
    """A request as a frame. boxd cannot take a frame over ``MAX_FRAME``, so none is
    built: large payloads go in pieces (``fput``, ``fread`` with an offset)."""
    data = json.dumps(frame, separators=(",", ":")).encode()
    if len(data) > MAX_FRAME:
        raise PayloadTooLarge(
            f"a {frame.get('op', 'request')!r} request to the sandbox would be "
            f"{len(data)} bytes, over the {MAX_FRAME}-byte frame limit; "
            "large data must be sent in pieces")
    return HEADER.pack(len(data)) + data


def credit(target: int, size: int) -> dict[str, object]:
    """The host has taken ``size`` characters of request ``target``'s output: boxd may
    send that much more. It has no id, so boxd answers nothing."""
    return {"op": "credit", "target": target, "size": size}


async def read_reply(reader: asyncio.StreamReader) -> AnyReply | None:
    """Read one frame; None at a clean end of stream."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise BoxProtocolError("boxd closed its output mid-frame") from exc
        return None
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise BoxProtocolError(f"boxd sent a {length}-byte frame (limit {MAX_FRAME})")
    try:
        body = await reader.readexactly(length)
        return _reply_adapter.validate_json(body)
    except asyncio.IncompleteReadError as exc:
        raise BoxProtocolError("boxd closed its output mid-frame") from exc
    except ValidationError as exc:
        raise BoxProtocolError(f"boxd sent an invalid frame: {exc.errors()[0]['msg']}") from exc
