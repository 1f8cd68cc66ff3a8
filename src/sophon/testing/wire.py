"""The Messages API wire format: a scripted reply as a message body or as SSE events.

Kept apart from the HTTP server so the event sequence can be read (and tested) as plain data.
Text and tool input are cut into several deltas on purpose: clients must reassemble them, and
a stand-in that sent each block whole would hide bugs that the real API exposes.
"""

from __future__ import annotations

import base64
import json
import math
import secrets
import string
from collections.abc import Iterator
from typing import Any

from sophon.testing.script import Reply, StreamErrorSpec, TextBlock, ThinkingBlock

_ALPHABET = string.ascii_letters + string.digits
_USAGE_KEYS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
               "output_tokens")


def new_id(prefix: str) -> str:
    """An id shaped like the real ones: ``msg_``, ``toolu_`` or ``req_`` + 24 characters."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(24))


def estimate_tokens(text: str) -> int:
    """About four characters a token, as the docs suggest for English; never zero."""
    return _tokens(len(text))


def count_input_tokens(body: dict[str, Any]) -> int:
    parts = {key: body[key] for key in ("system", "messages", "tools") if key in body}
    return estimate_tokens(json.dumps(parts, ensure_ascii=False))


def build_message(reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
    """The complete message the real API would return, with ids and usage filled in."""
    content: list[dict[str, Any]] = []
    output_chars = 0
    for block in reply.content:
        if isinstance(block, TextBlock):
            content.append({"type": "text", "text": block.text})
            output_chars += len(block.text)
        elif isinstance(block, ThinkingBlock):
            signature = block.signature if block.signature is not None else _fake_signature()
            content.append({"type": "thinking", "thinking": block.thinking,
                            "signature": signature})
            output_chars += len(block.thinking)
        else:
            content.append({"type": "tool_use", "id": block.id or new_id("toolu_"),
                            "name": block.name, "input": block.input})
            output_chars += len(block.name) + len(json.dumps(block.input))
    usage = reply.usage
    input_tokens = usage.input_tokens
    output_tokens = usage.output_tokens
    return {
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": body.get("model", ""),
        "content": content,
        "stop_reason": reply.resolved_stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": count_input_tokens(body) if input_tokens is None else input_tokens,
            "cache_creation_input_tokens": usage.cache_creation_input_tokens or 0,
            "cache_read_input_tokens": usage.cache_read_input_tokens or 0,
            "output_tokens": _tokens(output_chars) if output_tokens is None else output_tokens,
        },
    }


def stream_events(message: dict[str, Any],
                  stream_error: StreamErrorSpec | None = None) -> Iterator[dict[str, Any]]:
    """The SSE event payloads for ``message``, in order; each one's ``type`` is its event name.

    With ``stream_error``, the stream stops at an ``error`` event as described on the spec.
    """
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**usage, "output_tokens": 1}}
    yield {"type": "message_start", "message": start}
    yield {"type": "ping"}
    for index, block in enumerate(message["content"]):
        yield {"type": "content_block_start", "index": index, "content_block": _empty(block)}
        for number, delta in enumerate(_deltas(block)):
            yield {"type": "content_block_delta", "index": index, "delta": delta}
            if stream_error is not None and stream_error.in_block == index and number == 0:
                yield _error_event(stream_error)
                return
        yield {"type": "content_block_stop", "index": index}
    if stream_error is not None:
        yield _error_event(stream_error)
        return
    # The real API's message_delta carries the whole usage so far (input and cache counts
    # too, not only output_tokens): clients and the SDK overwrite, never add.
    yield {"type": "message_delta",
           "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
           "usage": {key: usage[key] for key in _USAGE_KEYS}}
    yield {"type": "message_stop"}


def sse_frame(event: dict[str, Any]) -> bytes:
    data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


def error_body(kind: str, message: str, request_id: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message},
            "request_id": request_id}


def _error_event(spec: StreamErrorSpec) -> dict[str, Any]:
    return {"type": "error", "error": {"type": spec.type, "message": spec.message}}


def _empty(block: dict[str, Any]) -> dict[str, Any]:
    if block["type"] == "text":
        return {"type": "text", "text": ""}
    if block["type"] == "thinking":
        return {"type": "thinking", "thinking": "", "signature": ""}
    return {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}


def _deltas(block: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if block["type"] == "text":
        for piece in _pieces(block["text"], parts=2, longest=16):
            yield {"type": "text_delta", "text": piece}
    elif block["type"] == "thinking":
        for piece in _pieces(block["thinking"], parts=2, longest=16):
            yield {"type": "thinking_delta", "thinking": piece}
        yield {"type": "signature_delta", "signature": block["signature"]}
    else:
        encoded = json.dumps(block["input"], ensure_ascii=False)
        for piece in _pieces(encoded, parts=3, longest=12):
            yield {"type": "input_json_delta", "partial_json": piece}


def _pieces(text: str, *, parts: int, longest: int) -> list[str]:
    """``text`` cut into at least ``parts`` pieces (if long enough) of at most ``longest``."""
    if not text:
        return [""]
    size = max(1, min(longest, math.ceil(len(text) / parts)))
    return [text[i:i + size] for i in range(0, len(text), size)]


def _fake_signature() -> str:
    """Opaque like a real signature; clients must pass it back untouched, never parse it."""
    return base64.b64encode(secrets.token_bytes(96)).decode()


def _tokens(chars: int) -> int:
    return max(1, math.ceil(chars / 4))
