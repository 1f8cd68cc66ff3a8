"""The host validates every frame boxd sends: boxd is on the untrusted side."""

from __future__ import annotations

import asyncio
import json
import struct

import pytest

from sophon.box.protocol import MAX_FRAME, Done, Output, credit, encode, read_reply
from sophon.errors import BoxProtocolError, PayloadTooLarge


def reader_with(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


def frame(obj: object) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


async def test_valid_frames_are_parsed() -> None:
    reader = reader_with(frame({"id": 3, "kind": "out", "stream": "stdout", "data": "hi"})
                         + frame({"id": 3, "kind": "done", "exit_code": 0}))
    first = await read_reply(reader)
    assert isinstance(first, Output) and first.data == "hi"
    assert isinstance(await read_reply(reader), Done)
    assert await read_reply(reader) is None


async def test_encode_round_trips() -> None:
    reader = reader_with(encode({"id": 1, "kind": "done"}))
    assert isinstance(await read_reply(reader), Done)


def test_the_host_never_builds_a_frame_boxd_would_refuse() -> None:
    # boxd cannot take a frame over the limit: the host raises instead of sending one.
    assert len(encode({"id": 1, "op": "fwrite", "data": "x" * (MAX_FRAME - 100)})) \
        <= MAX_FRAME + 4
    with pytest.raises(PayloadTooLarge, match="'fwrite' request"):
        encode({"id": 1, "op": "fwrite", "data": "x" * MAX_FRAME})


def test_credit_frames_have_no_id_so_boxd_answers_nothing() -> None:
    body = json.loads(encode(credit(5, 1024))[4:])
    assert body == {"op": "credit", "target": 5, "size": 1024}


async def test_oversized_frame_is_refused_before_reading() -> None:
    reader = reader_with(struct.pack(">I", MAX_FRAME + 1))
    with pytest.raises(BoxProtocolError, match="frame"):
        await read_reply(reader)


@pytest.mark.parametrize("obj", [
    {"id": 1, "kind": "out", "stream": "stdin", "data": "x"},  # not an output stream
    {"id": -1, "kind": "done"},
    {"id": "1", "kind": "done"},
    {"id": 1, "kind": "root-shell"},
    {"id": 1, "kind": "error", "code": "x" * 500, "message": "m"},
    [1, 2, 3],
])
async def test_malformed_frames_are_protocol_errors(obj: object) -> None:
    with pytest.raises(BoxProtocolError):
        await read_reply(reader_with(frame(obj)))


async def test_non_json_and_truncated_frames_are_protocol_errors() -> None:
    with pytest.raises(BoxProtocolError):
        await read_reply(reader_with(struct.pack(">I", 5) + b"nope!"))
    with pytest.raises(BoxProtocolError, match="mid-frame"):
        await read_reply(reader_with(struct.pack(">I", 50) + b"{}"))
