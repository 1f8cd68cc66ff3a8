"""The scripted model server speaks the Messages API well enough for the official SDK.

One server serves the whole module (starting one costs a thread and a port); each test gives
it a fresh script, which also clears the recorded requests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from sophon.testing import ModelServer, load_script, loads_script, parse_script
from sophon.testing import cli as testing_cli
from sophon.testing.model_server import ScriptSource
from sophon.testing.wire import build_message, stream_events

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def running() -> Iterator[ModelServer]:
    with ModelServer() as srv:
        yield srv


@pytest.fixture
def srv(running: ModelServer) -> ModelServer:
    running.set_script(None)
    return running


def play(srv: ModelServer, script: ScriptSource) -> anthropic.Anthropic:
    srv.set_script(script)
    return anthropic.Anthropic(base_url=srv.url, api_key="test-key", max_retries=0)


def aplay(srv: ModelServer, script: ScriptSource) -> anthropic.AsyncAnthropic:
    srv.set_script(script)
    return anthropic.AsyncAnthropic(base_url=srv.url, api_key="test-key", max_retries=0)


def raw_events(srv: ModelServer, body: dict[str, Any], path: str = "/v1/messages",
               ) -> list[tuple[str, dict[str, Any]]]:
    """The SSE frames exactly as sent, checking each one's framing on the way."""
    response = httpx.post(srv.url + path, json=body, headers={"x-api-key": "k"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith("\n\n")
    frames = []
    for chunk in response.text.split("\n\n")[:-1]:
        event_line, data_line = chunk.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        name, data = event_line.removeprefix("event: "), json.loads(data_line[6:])
        assert data["type"] == name
        frames.append((name, data))
    return frames


def stream_body(**extra: Any) -> dict[str, Any]:
    return {"model": "claude-test", "max_tokens": 64, "messages": HELLO, "stream": True, **extra}


def test_the_event_sequence_is_the_real_apis(srv: ModelServer) -> None:
    srv.set_script([{"content": ["Hello there, how are you today?",
                                 {"type": "tool_use", "name": "bash", "input": {"cmd": "ls"}}],
                     "usage": {"output_tokens": 42}}])
    frames = raw_events(srv, stream_body())
    names = [name for name, _ in frames]
    assert names[:2] == ["message_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") == 2
    start = frames[0][1]["message"]
    assert start["id"].startswith("msg_") and start["type"] == "message"
    assert start["role"] == "assistant" and start["model"] == "claude-test"
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["output_tokens"] == 1 and start["usage"]["input_tokens"] > 0
    text_deltas = [d["delta"] for n, d in frames
                   if n == "content_block_delta" and d["index"] == 0]
    assert len(text_deltas) > 1 and {d["type"] for d in text_deltas} == {"text_delta"}
    tool_start = next(d for n, d in frames if n == "content_block_start" and d["index"] == 1)
    assert tool_start["content_block"]["input"] == {}
    assert tool_start["content_block"]["id"].startswith("toolu_")
    delta = frames[-2][1]
    assert delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    # Cumulative usage, as the real API sends it: input and cache counts, not only output.
    assert delta["usage"] == {"input_tokens": start["usage"]["input_tokens"],
                              "cache_creation_input_tokens": 0,
                              "cache_read_input_tokens": 0, "output_tokens": 42}


def test_streaming_text_arrives_in_pieces(srv: ModelServer) -> None:
    fox = "The quick brown fox jumps over the lazy dog."
    client = play(srv, [fox])
    with client.messages.stream(model="m", max_tokens=64, messages=HELLO) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1
    assert "".join(pieces) == final.content[0].text == fox
    assert final.stop_reason == "end_turn"


async def test_thinking_streams_with_its_signature(srv: ModelServer) -> None:
    client = aplay(srv, [{"content": [
        {"type": "thinking", "thinking": "The user greets me; greet back.", "signature": "c2ln"},
        "Hi!"]}])
    async with client.messages.stream(model="m", max_tokens=64, messages=HELLO) as stream:
        kinds = [event.delta.type async for event in stream
                 if event.type == "content_block_delta" and event.index == 0]
        final = await stream.get_final_message()
    assert kinds.count("thinking_delta") > 1 and kinds[-1] == "signature_delta"
    thinking = final.content[0]
    assert thinking.type == "thinking"
    assert thinking.thinking == "The user greets me; greet back."
    assert thinking.signature == "c2ln"
    assert final.content[1].type == "text" and final.content[1].text == "Hi!"


async def test_made_up_signatures_and_tool_ids_are_filled_in(srv: ModelServer) -> None:
    client = aplay(srv, [{"content": [{"type": "thinking", "thinking": "hmm"},
                                      {"type": "tool_use", "name": "t", "input": {}}]}])
    message = await client.messages.create(model="m", max_tokens=64, messages=HELLO)
    assert message.content[0].type == "thinking" and len(message.content[0].signature) > 20
    assert message.content[1].type == "tool_use" and message.content[1].id.startswith("toolu_")


async def test_tool_input_is_split_and_reassembled(srv: ModelServer) -> None:
    tool_input = {"command": "grep -rn 'needle' src/", "timeout": 30, "env": {"A": "ü"}}
    client = aplay(srv, [{"content": [
        "Searching.", {"type": "tool_use", "name": "bash", "input": tool_input, "id": "toolu_1"}]}])
    async with client.messages.stream(model="m", max_tokens=64, messages=HELLO) as stream:
        partials = [event.delta.partial_json async for event in stream
                    if event.type == "content_block_delta"
                    and event.delta.type == "input_json_delta"]
        final = await stream.get_final_message()
    assert len(partials) >= 3 and all(partials)
    assert json.loads("".join(partials)) == tool_input
    tool = final.content[1]
    assert tool.type == "tool_use" and tool.id == "toolu_1" and tool.name == "bash"
    assert tool.input == tool_input
    assert final.stop_reason == "tool_use"


async def test_raw_stream_reports_usage_and_stop_reason(srv: ModelServer) -> None:
    client = aplay(srv, [{"content": "cut short", "stop_reason": "max_tokens",
                          "usage": {"input_tokens": 100, "output_tokens": 7,
                                    "cache_read_input_tokens": 90,
                                    "cache_creation_input_tokens": 5}}])
    stream = await client.messages.create(model="m", max_tokens=64, messages=HELLO, stream=True)
    events = [event async for event in stream]
    start, delta = events[0], events[-2]
    assert start.type == "message_start" and delta.type == "message_delta"
    assert start.message.usage.input_tokens == 100
    assert start.message.usage.cache_read_input_tokens == 90
    assert start.message.usage.cache_creation_input_tokens == 5
    assert start.message.usage.output_tokens == 1
    assert delta.delta.stop_reason == "max_tokens" and delta.usage.output_tokens == 7
    # message_delta repeats the cumulative input and cache counts (the SDK overwrites with them).
    assert (delta.usage.input_tokens, delta.usage.cache_read_input_tokens,
            delta.usage.cache_creation_input_tokens) == (100, 90, 5)
    assert events[-1].type == "message_stop"


def test_message_delta_usage_is_the_whole_messages_usage() -> None:
    reply = parse_script([{"content": "hi", "usage": {
        "input_tokens": 11, "output_tokens": 3, "cache_read_input_tokens": 4,
        "cache_creation_input_tokens": 2}}]).turns[0].reply
    assert reply is not None
    message = build_message(reply, {"model": "m", "messages": HELLO})
    [delta] = [e for e in stream_events(message) if e["type"] == "message_delta"]
    assert delta["usage"] == message["usage"] == {
        "input_tokens": 11, "cache_creation_input_tokens": 2, "cache_read_input_tokens": 4,
        "output_tokens": 3}


async def test_streamed_final_usage_matches_the_plain_reply(srv: ModelServer) -> None:
    usage = {"input_tokens": 50, "output_tokens": 6, "cache_read_input_tokens": 40,
             "cache_creation_input_tokens": 8}
    client = aplay(srv, [{"content": "same", "usage": usage}] * 2)
    plain = await client.messages.create(model="m", max_tokens=64, messages=HELLO)
    async with client.messages.stream(model="m", max_tokens=64, messages=HELLO) as stream:
        final = await stream.get_final_message()
    assert final.usage.model_dump(include=set(usage)) == \
        plain.usage.model_dump(include=set(usage)) == usage


def test_usage_is_estimated_when_not_given(srv: ModelServer) -> None:
    client = play(srv, ["x" * 40])
    message = client.messages.create(model="m", max_tokens=64, messages=HELLO)
    assert message.usage.output_tokens == 10
    assert message.usage.input_tokens > 0 and message.usage.cache_read_input_tokens == 0


def test_non_streaming_create_returns_the_whole_message(srv: ModelServer) -> None:
    client = play(srv, [{"content": ["Let me look.",
                                     {"type": "tool_use", "name": "read", "input": {"p": "a"}}]}])
    message = client.messages.create(model="claude-x", max_tokens=64, messages=HELLO)
    assert message.id.startswith("msg_") and message.model == "claude-x"
    assert message.role == "assistant" and message.stop_reason == "tool_use"
    assert [block.type for block in message.content] == ["text", "tool_use"]
    assert message.content[1].input == {"p": "a"}
    assert message.stop_sequence is None


def test_count_tokens_does_not_use_a_turn(srv: ModelServer) -> None:
    client = play(srv, ["first"])
    counted = client.messages.count_tokens(model="m", messages=HELLO, system="be brief")
    assert counted.input_tokens > 0
    reply = client.messages.create(model="m", max_tokens=64, messages=HELLO)
    assert reply.content[0].text == "first"


TOOL_LOOP = {"turns": [
    {"content": [{"type": "tool_use", "name": "bash", "input": {"cmd": "cat f"}, "id": "toolu_a"}]},
    {"rules": [
        {"when": {"tool_result_is_error": True}, "reply": "The tool failed."},
        {"when": {"last_tool_result_contains": "secret"}, "reply": "Found the secret."},
    ], "default": "Nothing there."},
]}


def tool_round_trip(client: anthropic.Anthropic, result: str, is_error: bool = False) -> str:
    first = client.messages.create(model="m", max_tokens=64, messages=HELLO)
    messages = [*HELLO, {"role": "assistant", "content": [b.model_dump() for b in first.content]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_a",
                                              "content": [{"type": "text", "text": result}],
                                              "is_error": is_error}]}]
    second = client.messages.create(model="m", max_tokens=64, messages=messages)
    return second.content[0].text


@pytest.mark.parametrize(("result", "is_error", "expected"), [
    ("the secret is 42", False, "Found the secret."),
    ("the secret is 42", True, "The tool failed."),
    ("an empty file", False, "Nothing there."),
])
def test_rules_match_the_last_tool_result(srv: ModelServer, result: str, is_error: bool,
                                          expected: str) -> None:
    assert tool_round_trip(play(srv, TOOL_LOOP), result, is_error) == expected


def test_rules_match_user_text_and_system_prompt(srv: ModelServer) -> None:
    rules = {"rules": [
        {"when": {"system_contains": "pirate", "last_user_contains": "hello"}, "reply": "Ahoy!"},
        {"when": {"last_user_contains": "hello"}, "reply": "Hello."},
    ]}
    client = play(srv, [rules, rules])
    pirate = client.messages.create(model="m", max_tokens=9, messages=HELLO,
                                    system=[{"type": "text", "text": "You are a pirate."}])
    plain = client.messages.create(model="m", max_tokens=9, messages=HELLO, system="Be kind.")
    assert (pirate.content[0].text, plain.content[0].text) == ("Ahoy!", "Hello.")


def test_no_matching_rule_and_no_default_is_a_bad_request(srv: ModelServer) -> None:
    client = play(srv, [{"rules": [{"when": {"last_user_contains": "bye"}, "reply": "Bye."}]}])
    with pytest.raises(anthropic.BadRequestError, match="no rule of turn 0"):
        client.messages.create(model="m", max_tokens=9, messages=HELLO)


def test_an_error_reply_is_the_sdks_typed_error(srv: ModelServer) -> None:
    client = play(srv, [{"error": {"status": 529, "type": "overloaded_error",
                                   "message": "Overloaded"}}])
    with pytest.raises(anthropic.InternalServerError) as caught:
        client.messages.create(model="m", max_tokens=9, messages=HELLO)
    assert caught.value.status_code == 529
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    assert caught.value.response.headers["request-id"].startswith("req_")


def test_rate_limit_error_from_the_type_alone(srv: ModelServer) -> None:
    client = play(srv, [{"error": {"type": "rate_limit_error", "message": "slow down"}}])
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model="m", max_tokens=9, messages=HELLO)


def test_sdk_retries_consume_turns(srv: ModelServer) -> None:
    srv.set_script([{"error": {"status": 529, "headers": {"retry-after-ms": "1"}}}, "recovered"])
    client = anthropic.Anthropic(base_url=srv.url, api_key="k", max_retries=1)
    message = client.messages.create(model="m", max_tokens=9, messages=HELLO)
    assert message.content[0].text == "recovered"
    assert len(srv.requests) == 2
    assert srv.request_headers[1]["x-stainless-retry-count"] == "1"


async def test_a_mid_stream_error_event_is_raised(srv: ModelServer) -> None:
    client = aplay(srv, [{"content": "This answer is cut off half way.",
                          "stream_error": {"type": "overloaded_error", "message": "Overloaded"}}])
    received: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        async with client.messages.stream(model="m", max_tokens=64, messages=HELLO) as stream:
            async for text in stream.text_stream:
                received.append(text)
    assert received and "".join(received) != "This answer is cut off half way."
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "overloaded_error"


def test_a_stream_error_after_all_blocks_replaces_message_delta(srv: ModelServer) -> None:
    srv.set_script([{"content": "whole", "stream_error": {"type": "api_error", "in_block": 5}}])
    names = [name for name, _ in raw_events(srv, stream_body())]
    assert names[-2:] == ["content_block_stop", "error"]


def test_a_stream_error_reply_to_a_plain_request_is_an_http_error(srv: ModelServer) -> None:
    client = play(srv, [{"content": "x", "stream_error": {"type": "overloaded_error"}}])
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(model="m", max_tokens=9, messages=HELLO)
    assert caught.value.status_code == 529


def test_the_beta_query_string_is_ignored(srv: ModelServer) -> None:
    client = play(srv, ["beta one", "beta two"])
    message = client.beta.messages.create(model="m", max_tokens=9, messages=HELLO,
                                          betas=["interleaved-thinking-2025-05-14"])
    assert message.content[0].text == "beta one"
    assert srv.request_headers[0]["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert [n for n, _ in raw_events(srv, stream_body(), "/v1/messages?beta=true")][-1] \
        == "message_stop"


def test_requests_are_recorded_in_order(srv: ModelServer) -> None:
    client = play(srv, ["one", "two"])
    tools = [{"name": "bash", "description": "Run a command.",
              "input_schema": {"type": "object", "properties": {"cmd": {"type": "string"}}}}]
    client.messages.create(model="m", max_tokens=9, messages=HELLO, system="sys prompt",
                           tools=tools)
    with client.messages.stream(model="m", max_tokens=9,
                                messages=[{"role": "user", "content": "again"}]) as stream:
        stream.until_done()
    first, second = srv.requests
    assert first["system"] == "sys prompt" and first["tools"] == tools
    assert first["messages"] == HELLO and "stream" not in first
    assert second["messages"][0]["content"] == "again" and second["stream"] is True
    headers = srv.request_headers[0]  # SDK versions differ in which auth header they send
    assert (headers.get("x-api-key") == "test-key"
            or headers.get("authorization") == "Bearer test-key")
    recorded = httpx.get(srv.url + "/_sophon/requests").json()
    assert recorded == {"requests": [first, second], "turns_used": 2}


def test_the_script_ends_politely(srv: ModelServer) -> None:
    client = play(srv, ["only turn"])
    texts = [client.messages.create(model="m", max_tokens=9, messages=HELLO).content[0].text
             for _ in range(3)]
    assert texts == ["only turn", "(the script has ended)", "(the script has ended)"]
    assert len(srv.requests) == 3


def test_invalid_requests_are_rejected_like_the_real_api(srv: ModelServer) -> None:
    client = play(srv, ["unused"])
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        client.messages.create(model="m", max_tokens=0, messages=HELLO)
    response = httpx.post(srv.url + "/v1/messages", json={"model": "m", "messages": HELLO},
                          headers={"authorization": "Bearer anything"})
    assert response.status_code == 400
    assert response.json()["error"] == {"type": "invalid_request_error",
                                        "message": "max_tokens: Field required"}
    unauthenticated = httpx.post(srv.url + "/v1/messages", json=stream_body())
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["error"]["type"] == "authentication_error"
    assert srv.requests == []


def test_delay_ms_pauses_before_answering(srv: ModelServer) -> None:
    client = play(srv, [{"content": "late", "delay_ms": 150}])
    started = time.monotonic()
    client.messages.create(model="m", max_tokens=9, messages=HELLO)
    assert time.monotonic() - started >= 0.15


def test_the_script_can_be_replaced_over_http(srv: ModelServer) -> None:
    play(srv, ["old"]).messages.create(model="m", max_tokens=9, messages=HELLO)
    response = httpx.post(srv.url + "/_sophon/script", content="turns:\n  - new\n",
                          headers={"content-type": "application/yaml"})
    assert response.json() == {"turns": 1} and srv.requests == []
    client = anthropic.Anthropic(base_url=srv.url, api_key="k", max_retries=0)
    assert client.messages.create(model="m", max_tokens=9, messages=HELLO).content[0].text == "new"
    bad = httpx.post(srv.url + "/_sophon/script", json={"turns": [{"reply": "a", "rules": []}]})
    assert bad.status_code == 400


YAML_SCRIPT = """\
turns:
  - content:
      - type: thinking
        thinking: I should look at the file.
      - I'll read it.
      - type: tool_use
        name: read_file
        input: {path: README.md}
  - rules:
      - when: {last_tool_result_contains: Sophon}
        reply: It is the Sophon README.
    default:
      content: [I could not read it.]
      stop_reason: end_turn
  - Goodbye.
"""


def test_yaml_scripts_load_with_shorthands(tmp_path: Path) -> None:
    path = tmp_path / "demo.yaml"
    path.write_text(YAML_SCRIPT)
    script = load_script(path)
    assert len(script.turns) == 3
    first = script.turns[0].reply
    assert first is not None and first.resolved_stop_reason == "tool_use"
    assert [block.type for block in first.content] == ["thinking", "text", "tool_use"]
    (tmp_path / "demo.json").write_text(json.dumps(script.model_dump(exclude_none=True)))
    assert load_script(tmp_path / "demo.json") == script
    with ModelServer(path) as srv:
        client = anthropic.Anthropic(base_url=srv.url, api_key="k", max_retries=0)
        message = client.messages.create(model="m", max_tokens=9, messages=HELLO)
        assert message.content[2].input == {"path": "README.md"}


@pytest.mark.parametrize("text", [
    "turns: [{content: hi, stop_reasn: end_turn}]",  # misspelt key
    "turns: [{reply: hi, rules: []}]",  # both kinds of turn
    "turns: [{content: [{type: image, source: x}]}]",  # unknown block type
    "turns: [{error: {status: 529}, stream_error: {}}]",  # two ways to fail
])
def test_bad_scripts_fail_to_load(text: str) -> None:
    with pytest.raises(ValidationError):
        loads_script(text)


def test_cli_refuses_a_bad_script(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("turns: [{nonsense: 1}]")
    result = CliRunner().invoke(testing_cli.testing_app, ["model-server", "--script", str(path)])
    assert result.exit_code == 1


def test_system_role_messages_are_accepted_as_claude_code_sends_them() -> None:
    with ModelServer(["fine"]) as srv:
        key = {"x-api-key": "test"}
        r = httpx.post(srv.url + "/v1/messages", headers=key, json={
            "model": "claude-test", "max_tokens": 8,
            "messages": [*HELLO, {"role": "system", "content": "context"}]})
        assert r.status_code == 200, r.text
        bad = httpx.post(srv.url + "/v1/messages", headers=key, json={
            "model": "claude-test", "max_tokens": 8,
            "messages": [{"role": "tool", "content": "x"}]})
        assert bad.status_code == 400 and "messages.0.role" in bad.text
