"""One streamed Messages API call, as the native runtime makes it: the reply's text as it
comes, each content block once complete, then how the message ended and its usage.

Spoken with httpx rather than the ``anthropic`` SDK: the SDK's import (its thousands of
typed models) cost about 2.2 s of CPU in every server process that had a provider key,
and a turn needs only this much of it. Retries follow the SDK's rules: a connection
error, 408, 409, 429 or a 5xx, at most ``max_retries`` more times, after the server's
``retry-after`` or an exponential back-off; never once the reply has begun.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from sophon.client._common import SSEParser

ANTHROPIC_VERSION = "2023-06-01"
RETRY_STATUSES = frozenset({408, 409, 429})
MAX_BACKOFF_S = 8.0


class ModelCallError(Exception):
    """The provider refused the call or broke off its reply: ``status_code`` (None for a
    stream that broke after its 200, or no answer at all) and the provider's message."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class BlockDone:
    """A content block as the API takes it back in the next request's history."""

    block: dict[str, Any]


@dataclass(frozen=True)
class MessageDone:
    stop_reason: str | None
    usage: dict[str, int] = field(default_factory=dict)


Event = TextDelta | BlockDone | MessageDone


async def stream_message(http: httpx.AsyncClient, base_url: str, key: str,
                         params: dict[str, Any], max_retries: int = 2) -> AsyncIterator[Event]:
    """POST ``params`` to ``{base_url}/v1/messages`` with ``stream: true``; the events of
    the reply, ending with one MessageDone. ModelCallError if it is refused or breaks."""
    request = http.build_request(
        "POST", f"{base_url.rstrip('/')}/v1/messages", json={**params, "stream": True},
        headers={"x-api-key": key, "anthropic-version": ANTHROPIC_VERSION,
                 "accept": "text/event-stream", "accept-encoding": "identity"})
    for attempt in range(max_retries + 1):
        try:
            response = await http.send(request, stream=True)
        except httpx.TransportError as exc:
            if attempt == max_retries:
                raise ModelCallError(f"could not reach the provider at {base_url}: "
                                     f"{exc!r}") from exc
            await asyncio.sleep(_backoff(attempt, None))
            continue
        try:
            if response.status_code == 200:
                async for event in _reply(response):
                    yield event
                return
            await response.aread()
            if attempt < max_retries and _retryable(response):
                await asyncio.sleep(_backoff(attempt, response.headers))
                continue
            raise ModelCallError(_error_message(response), response.status_code)
        finally:
            await response.aclose()


def _retryable(response: httpx.Response) -> bool:
    told = response.headers.get("x-should-retry")
    if told in ("true", "false"):
        return told == "true"
    return response.status_code in RETRY_STATUSES or response.status_code >= 500


def _backoff(attempt: int, headers: httpx.Headers | None) -> float:
    """Seconds before the next try: the server's word if it gave a sane one."""
    if headers is not None:
        for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
            try:
                wait = float(headers.get(name, "")) / scale
            except ValueError:
                continue
            if 0 <= wait <= 60:
                return wait
    return min(0.5 * 2 ** attempt, MAX_BACKOFF_S) * (1 - 0.25 * random.random())


def _said(error: Any) -> str:
    """The provider's ``{"type", "message"}`` error, as one line."""
    if not isinstance(error, dict):
        return "error"
    return f"{error.get('type', 'error')}: {error.get('message', '')}".rstrip(": ")


def _error_message(response: httpx.Response) -> str:
    try:
        return _said(response.json().get("error"))
    except (ValueError, AttributeError):
        return response.text[:500] or response.reason_phrase


async def _reply(response: httpx.Response) -> AsyncIterator[Event]:
    try:
        async for event in _events(response):
            yield event
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        # A 200 that is not a Messages API stream (a proxy's page, a truncated line).
        raise ModelCallError(f"the provider's reply is not a Messages API stream "
                             f"({type(exc).__name__}: {exc})") from exc


async def _events(response: httpx.Response) -> AsyncIterator[Event]:
    blocks: dict[int, dict[str, Any]] = {}
    partial_json: dict[int, list[str]] = {}
    usage: dict[str, int] = {}
    stop_reason: str | None = None
    async for data in _sse(response):
        kind = data.get("type")
        if kind == "message_start":
            merge_usage(usage, data.get("message", {}).get("usage"))
        elif kind == "content_block_start":
            index = data["index"]
            blocks[index] = dict(data["content_block"])
            if blocks[index].get("type") in ("tool_use", "server_tool_use"):
                partial_json[index] = []
        elif kind == "content_block_delta":
            text = _apply(blocks[data["index"]], partial_json.get(data["index"]),
                          data["delta"])
            if text:
                yield TextDelta(text)
        elif kind == "content_block_stop":
            index = data["index"]
            block = blocks.pop(index)
            pieces = partial_json.pop(index, None)
            if pieces is not None:
                block["input"] = json.loads("".join(pieces)) if any(pieces) else \
                    block.get("input") or {}
            yield BlockDone(block)
        elif kind == "message_delta":
            stop_reason = (data.get("delta") or {}).get("stop_reason", stop_reason)
            merge_usage(usage, data.get("usage"))
        elif kind == "message_stop":
            yield MessageDone(stop_reason, usage)
            return
        elif kind == "error":
            raise ModelCallError(_said(data.get("error")))
    raise ModelCallError("the provider's reply ended before message_stop")


def _apply(block: dict[str, Any], json_pieces: list[str] | None,
           delta: dict[str, Any]) -> str | None:
    """Add a delta to its block; the text to show as it comes, if it is text."""
    kind = delta.get("type")
    if kind == "text_delta":
        block["text"] = block.get("text", "") + delta["text"]
        return str(delta["text"])
    if kind == "input_json_delta" and json_pieces is not None:
        json_pieces.append(delta.get("partial_json", ""))
    elif kind == "thinking_delta":
        block["thinking"] = block.get("thinking", "") + delta["thinking"]
    elif kind == "signature_delta":
        block["signature"] = delta["signature"]
    elif kind == "citations_delta":
        block.setdefault("citations", []).append(delta["citation"])
    return None


def merge_usage(total: dict[str, int], usage: Any) -> None:
    for k, v in (usage or {}).items():
        if isinstance(v, int):
            total[k] = v  # the API reports cumulative figures


async def _sse(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Each server-sent event's JSON data (its ``type`` names the event)."""
    parser = SSEParser()
    async for line in response.aiter_lines():
        for data in parser.feed(line):
            yield json.loads(data)
    for data in parser.feed(""):  # a last event without its blank line
        yield json.loads(data)
