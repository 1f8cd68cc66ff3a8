"""The native runtime's model call (gateway/messages.py) against the scripted model
server, which speaks the Messages API's wire format: blocks assembled from their deltas,
usage as reported, the SDK's retry rules, and every failure a ModelCallError."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from sophon.gateway.messages import (
    BlockDone,
    Event,
    MessageDone,
    ModelCallError,
    TextDelta,
    stream_message,
)
from sophon.testing import ModelServer

PARAMS = {"model": "claude-sonnet-4-5", "max_tokens": 100,
          "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def model() -> Iterator[ModelServer]:
    with ModelServer() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


async def call(http: httpx.AsyncClient, url: str, retries: int = 2) -> list[Event]:
    return [ev async for ev in stream_message(http, url, "test-key", PARAMS, retries)]


async def test_blocks_come_whole_with_the_text_as_it_streams_and_the_usage(
        model: ModelServer, http: httpx.AsyncClient) -> None:
    model.set_script([{
        "content": [
            {"type": "thinking", "thinking": "the user greets me; answer and look around"},
            "Hello! Let me look at the files in this directory for you.",
            {"type": "tool_use", "id": "toolu_1", "name": "Bash",
             "input": {"command": "ls -la", "description": "list the files, with ü"}},
        ],
        "usage": {"input_tokens": 321, "output_tokens": 45, "cache_read_input_tokens": 7},
    }])
    events = await call(http, model.url)
    texts = [ev.text for ev in events if isinstance(ev, TextDelta)]
    blocks = [ev.block for ev in events if isinstance(ev, BlockDone)]
    assert len(texts) >= 2  # in pieces, as they came
    assert "".join(texts) == "Hello! Let me look at the files in this directory for you."
    thinking, text, tool = blocks
    assert thinking["thinking"] == "the user greets me; answer and look around"
    assert thinking["signature"]  # passed back untouched in the next request
    assert text == {"type": "text", "text": "".join(texts)}
    assert tool == {"type": "tool_use", "id": "toolu_1", "name": "Bash",
                    "input": {"command": "ls -la", "description": "list the files, with ü"}}
    done = events[-1]
    assert isinstance(done, MessageDone) and done.stop_reason == "tool_use"
    assert (done.usage["input_tokens"], done.usage["output_tokens"],
            done.usage["cache_read_input_tokens"]) == (321, 45, 7)
    [sent] = model.requests
    assert sent["stream"] is True and sent["messages"] == PARAMS["messages"]


async def test_an_overloaded_or_rate_limited_provider_is_asked_again(
        model: ModelServer, http: httpx.AsyncClient) -> None:
    model.set_script([{"error": {"status": 529}},
                      {"error": {"status": 429, "headers": {"retry-after": "0"}}},
                      "third time"])
    events = await call(http, model.url)
    assert [ev.block["text"] for ev in events if isinstance(ev, BlockDone)] == ["third time"]
    assert len(model.requests) == 3


@pytest.mark.parametrize("error", [
    {"status": 400, "message": "prompt is too long"},
    {"status": 529, "message": "not this one", "headers": {"x-should-retry": "false"}},
], ids=["client-error", "told-not-to-retry"])
async def test_a_refusal_is_not_retried_and_says_why(
        model: ModelServer, http: httpx.AsyncClient, error: dict[str, Any]) -> None:
    model.set_script([{"error": error}, "never asked"])
    with pytest.raises(ModelCallError) as exc:
        await call(http, model.url)
    assert exc.value.status_code == error["status"]
    assert error["message"] in exc.value.message
    assert len(model.requests) == 1


async def test_retries_end_with_the_last_refusal(
        model: ModelServer, http: httpx.AsyncClient) -> None:
    model.set_script([{"error": {"status": 500, "message": f"down {n}",
                                 "headers": {"retry-after-ms": "1"}}} for n in range(4)])
    with pytest.raises(ModelCallError) as exc:
        await call(http, model.url, retries=2)
    assert (exc.value.status_code, len(model.requests)) == (500, 3)
    assert "down 2" in exc.value.message


async def test_a_stream_that_breaks_is_an_error_after_what_it_sent(
        model: ModelServer, http: httpx.AsyncClient) -> None:
    model.set_script([{"content": ["half a sentence, then"],
                       "stream_error": {"type": "overloaded_error", "message": "it broke"}}])
    seen: list[Event] = []
    with pytest.raises(ModelCallError) as exc:
        async for ev in stream_message(http, model.url, "test-key", PARAMS):
            seen.append(ev)
    assert "it broke" in exc.value.message and exc.value.status_code is None
    assert any(isinstance(ev, TextDelta) for ev in seen)  # what came first was shown
    assert len(model.requests) == 1  # a reply that began is never asked for again


async def test_no_provider_at_the_address_is_an_error_after_the_retries(
        http: httpx.AsyncClient) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    started = time.monotonic()
    with pytest.raises(ModelCallError) as exc:
        await call(http, url, retries=1)
    assert "could not reach the provider" in exc.value.message
    assert time.monotonic() - started < 5  # one back-off of about half a second


@pytest.mark.parametrize("body", [
    b"<html>a proxy's sign-in page</html>",
    b'event: message_start\ndata: {"type": "message_start", "message": \n\n',
    b'data: {"type": "content_block_delta", "delta": {"type": "text_delta"}}\n\n',
], ids=["not-sse", "truncated-json", "delta-without-its-block"])
async def test_a_200_that_is_not_a_messages_stream_is_an_error_that_says_so(
        http: httpx.AsyncClient, body: bytes) -> None:
    class Garbage(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Garbage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ModelCallError) as exc:
            await call(http, f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
    assert ("not a Messages API stream" in exc.value.message
            or "ended before message_stop" in exc.value.message), exc.value.message
