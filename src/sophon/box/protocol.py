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

from sophon.errors import BoxProtocolError

HEADER = struct.Struct(">I")
MAX_FRAME = 8 * 1024 * 1024


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


class Entry(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    name: str
    type: Literal["file", "dir", "symlink", "other"]
    size: int = Field(ge=0)
    mtime: float
    mode: int = 0


def encode(frame: dict[str, object]) -> bytes:
    data = json.dumps(frame, separators=(",", ":")).encode()
    return HEADER.pack(len(data)) + data


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
