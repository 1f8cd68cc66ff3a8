"""Controlling a turn of the native agent over live HTTP, against the scripted model server.

A restart in the middle of a turn, approvals for tools other than Bash (and remembered
ones), interrupts while the model streams or while an approval waits, the gateway
proxy's budget and cache metering, and a PATCH of max_turns: each is driven through the
API and checked in the session's event log and in what the model was sent."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from sophon.agent.history import INTERRUPTED
from sophon.testing import ModelServer
from tests.conftest import LiveServer, wait_for
from tests.integration.test_agent_edges import (
    PROVIDER_KEY,
    client,
    create_session,
    events,
    live_server,
    no_session_errors,
    of_type,
    results_by_id,
    run_turn,
    sdk,
    send,
    sent_results,
    stop_server,
    tool_use,
)

JSON = {"Accept": "application/json"}


class FrameCounter:
    """ASGI wrapper of the model server: counts the body chunks (SSE frames) it has sent
    for /v1/messages, so a test knows a reply is part way through its stream."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sent = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/messages":
            await self.app(scope, receive, send)
            return

        async def counting(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and message.get("body"):
                self.sent += 1

        await self.app(scope, receive, counting)


@pytest.fixture(scope="module")
def ms() -> Iterator[ModelServer]:
    srv = ModelServer()
    srv.app = FrameCounter(srv.app)  # type: ignore[assignment]
    with srv:
        yield srv


@pytest.fixture(scope="module")
def server(ms: ModelServer) -> Iterator[LiveServer]:
    srv = live_server({"ANTHROPIC_API_KEY": PROVIDER_KEY, "ANTHROPIC_BASE_URL": ms.url})
    yield srv
    stop_server(srv)


def status_of(http: httpx.Client, sid: str) -> str:
    return str(http.get(f"/v1/sessions/{sid}").json()["status"])


def wait_status(http: httpx.Client, sid: str, status: str) -> None:
    wait_for(lambda: status_of(http, sid) == status, 20, 0.05, f"status {status}")


def approval_request(http: httpx.Client, sid: str, nth: int = 1) -> dict[str, Any]:
    """The nth approval request, once the session waits for its answer."""
    def asked() -> dict[str, Any] | None:
        reqs = of_type(events(http, sid), "approval_request")
        if len(reqs) >= nth and status_of(http, sid) == "waiting_approval":
            return reqs[nth - 1]
        return None

    req = wait_for(asked, 20, 0.05, "an approval request")
    assert isinstance(req, dict)
    return req


def decide(http: httpx.Client, sid: str, req: dict[str, Any], decision: str,
           remember: bool = False) -> None:
    r = http.post(f"/v1/sessions/{sid}/approvals/{req['approval_id']}",
                  json={"decision": decision, "remember": remember})
    assert r.status_code == 200, r.text


def wait_idle_after(http: httpx.Client, sid: str, users: int) -> list[dict[str, Any]]:
    """The log, once the ``users``-th message's turn has ended (an idle status after it)."""
    def over() -> list[dict[str, Any]] | None:
        evs = events(http, sid)
        at = [i for i, e in enumerate(evs) if e["type"] == "user"]
        if len(at) >= users and any(e["type"] == "status" and e["status"] in ("idle", "error")
                                    for e in evs[at[users - 1] + 1:]):
            return evs
        return None

    evs = wait_for(over, 30, 0.05, "the turn to end")
    assert isinstance(evs, list)
    return evs


def last_status(evs: list[dict[str, Any]]) -> dict[str, Any]:
    return of_type(evs, "status")[-1]


def text(s: str) -> dict[str, Any]:
    return {"type": "text", "text": s}


# --- 1. a restart during a turn ---------------------------------------------------------

@pytest.mark.parametrize(("phase", "how"), [
    ("bash", signal.SIGTERM), ("bash", signal.SIGKILL),
    ("approval", signal.SIGTERM), ("approval", signal.SIGKILL),
], ids=["bash-stop", "bash-crash", "approval-stop", "approval-crash"])
def test_restart_cuts_the_turn_off_and_the_next_message_continues(
        ms: ModelServer, phase: str, how: signal.Signals) -> None:
    call = tool_use("Bash", {"command": "touch started; sleep 30"}, "toolu_cut")
    ms.set_script([
        {"content": ["Starting the long job.", call]},
        {"rules": [{"when": {"tool_result_is_error": True, "last_user_contains": "go on"},
                    "reply": "The job was cut off; starting again."}]},
    ])
    srv = live_server({"ANTHROPIC_API_KEY": PROVIDER_KEY, "ANTHROPIC_BASE_URL": ms.url})
    try:
        with client(srv, srv.add_user()) as http:
            shell = "allow" if phase == "bash" else "ask_once"
            sid = create_session(http, {"shell": shell})
            send(http, sid, "run the long job")
            if phase == "bash":
                wait_for(lambda: any(e["type"] == "file_change" and e["path"] == "started"
                                     for e in events(http, sid)), 20, 0.05, "the command")
            else:
                approval_request(http, sid)
            srv.stop(how)
            srv.start()

            evs = events(http, sid)
            [error] = of_type(evs, "session_error")
            assert error["code"] == "interrupted" and "cut off" in error["message"], error
            assert evs.index(error) < evs.index(last_status(evs))
            assert last_status(evs)["status"] == "idle"
            assert status_of(http, sid) in ("idle", "sleeping")  # sleeping: idle, box stopped
            assert not of_type(evs, "tool_result")
            assert len(ms.requests) == 1

            evs = run_turn(http, sid, "go on")
            no_session_errors(evs[evs.index(of_type(evs, "user")[-1]):])
            assert of_type(evs, "assistant")[-1]["text"] == "The job was cut off; starting again."
            assert len(ms.requests) == 2
            assert ms.requests[1]["messages"] == [
                {"role": "user", "content": [text("run the long job")]},
                {"role": "assistant", "content": [text("Starting the long job."), call]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_cut",
                     "content": INTERRUPTED, "is_error": True},
                    text("go on")]},
            ]
    finally:
        stop_server(srv)


# --- 2. and 3. approvals for another tool, and remembered answers ------------------------

def write(path: str, content: str, id: str) -> dict[str, Any]:
    return tool_use("Write", {"file_path": path, "content": content}, id)


@pytest.mark.parametrize("decision", ["allow", "deny"])
def test_ask_for_write_waits_and_obeys_the_answer(ms: ModelServer, http: httpx.Client,
                                                 decision: str) -> None:
    ms.set_script([{"content": [write("notes.md", "# hi\n", "toolu_w")]}, "ok"])
    sid = create_session(http, {"shell": "allow", "tools": {"Write": "ask"}})
    send(http, sid, "write the notes")
    req = approval_request(http, sid)
    assert (req["tool"], req["input"]) == ("Write", {"file_path": "notes.md",
                                                     "content": "# hi\n"})
    assert "Write" in req["reason"]
    assert len(ms.requests) == 1 and not of_type(events(http, sid), "tool_result")
    decide(http, sid, req, decision)
    evs = wait_idle_after(http, sid, 1)
    no_session_errors(evs)

    result = results_by_id(evs)["toolu_w"]
    sent = sent_results(ms.requests[1])["toolu_w"]
    file = http.get(f"/v1/sessions/{sid}/files/notes.md")
    if decision == "allow":
        assert result["is_error"] is False and sent["is_error"] is False
        assert file.status_code == 200 and file.json()["content"] == "# hi\n"
    else:
        assert result["is_error"] is True and sent["is_error"] is True
        assert result["content"] == sent["content"] == "Permission to use Write was denied."
        assert file.status_code == 404
    # Without remember, the policy is unchanged: the next Write asks again.
    assert http.get(f"/v1/sessions/{sid}").json()["approval"]["tools"] == {"Write": "ask"}


@pytest.mark.parametrize("decision", ["allow", "deny"])
def test_remembered_answer_is_not_asked_again(ms: ModelServer, http: httpx.Client,
                                              decision: str) -> None:
    ms.set_script([
        {"content": [write("a.txt", "a", "toolu_a")]},
        {"content": [write("b.txt", "b", "toolu_b")]},
        "done",
        {"content": [write("c.txt", "c", "toolu_c")]},
        "done again",
    ])
    sid = create_session(http, {"shell": "allow", "tools": {"Write": "ask"}})
    send(http, sid, "write a and b")
    decide(http, sid, approval_request(http, sid), decision, remember=True)
    evs = wait_idle_after(http, sid, 1)
    evs = run_turn(http, sid, "write c")
    no_session_errors(evs)

    # Asked once; the answer held for the rest of the turn and for the next one.
    assert len(of_type(evs, "approval_request")) == 1
    [answer] = of_type(evs, "approval_decision")
    assert (answer["decision"], answer["remember"]) == (decision, True)
    assert http.get(f"/v1/sessions/{sid}").json()["approval"]["tools"] == {"Write": decision}
    results = results_by_id(evs)
    for tid, name in (("toolu_a", "a.txt"), ("toolu_b", "b.txt"), ("toolu_c", "c.txt")):
        found = http.get(f"/v1/sessions/{sid}/files/{name}").status_code
        if decision == "allow":
            assert results[tid]["is_error"] is False and found == 200
        else:
            assert results[tid]["is_error"] is True and found == 404
    if decision == "deny":
        assert results["toolu_a"]["content"] == "Permission to use Write was denied."
        assert results["toolu_c"]["content"] == ("Permission to use Write was denied: "
                                                 "the session's policy denies Write.")


def test_bash_set_to_ask_asks_every_time(ms: ModelServer, http: httpx.Client) -> None:
    # "tools": {"Bash": "ask"} overrides shell's ask_once: an allow is for one call only.
    ms.set_script([{"content": [tool_use("Bash", {"command": "echo one"}, "toolu_1")]},
                   {"content": [tool_use("Bash", {"command": "echo two"}, "toolu_2")]},
                   "done"])
    sid = create_session(http, {"tools": {"Bash": "ask"}})
    send(http, sid, "echo twice")
    decide(http, sid, approval_request(http, sid, 1), "allow")
    decide(http, sid, approval_request(http, sid, 2), "allow")
    evs = wait_idle_after(http, sid, 1)
    no_session_errors(evs)
    assert [r["content"] for r in of_type(evs, "tool_result")] == ["one", "two"]
    assert http.get(f"/v1/sessions/{sid}").json()["approval"] == {
        "shell": "ask_once", "tools": {"Bash": "ask"}, "webhook": None,
        "timeout_seconds": None, "on_timeout": "deny"}


# --- 4. interrupts ----------------------------------------------------------------------

LONG = " ".join(f"word{n:03d}" for n in range(150))  # ~75 streamed deltas


def test_interrupt_while_streaming_keeps_the_partial_text(ms: ModelServer,
                                                          http: httpx.Client) -> None:
    frames = ms.app
    assert isinstance(frames, FrameCounter)
    ms.set_script([{"content": LONG, "chunk_delay_ms": 200}, "Picking up again."])
    sid = create_session(http)
    before = frames.sent
    send(http, sid, "say a lot")
    # message_start, ping, content_block_start, then text deltas: wait for a few.
    wait_for(lambda: frames.sent - before >= 6, 20, 0.02, "the reply to stream")
    started = time.monotonic()
    assert http.post(f"/v1/sessions/{sid}/interrupt").json() == {"interrupted": True}
    assert time.monotonic() - started < 5  # not the ~15 s the whole reply takes
    evs = wait_idle_after(http, sid, 1)
    no_session_errors(evs)

    [kept] = of_type(evs, "assistant")
    assert kept["text"] and LONG.startswith(kept["text"]) and len(kept["text"]) < len(LONG)
    assert (last_status(evs)["status"], last_status(evs)["detail"]) == (
        "idle", "interrupted by the user")
    assert status_of(http, sid) in ("idle", "sleeping")

    # The partial reply is part of the conversation the next turn sends.
    evs = run_turn(http, sid, "go on")
    assert ms.requests[1]["messages"] == [
        {"role": "user", "content": [text("say a lot")]},
        {"role": "assistant", "content": [text(kept["text"])]},
        {"role": "user", "content": [text("go on")]},
    ]


def test_interrupt_while_waiting_for_an_approval_ends_the_turn(
        ms: ModelServer, http: httpx.Client) -> None:
    call = tool_use("Bash", {"command": "touch ran"}, "toolu_wait")
    ms.set_script([{"content": [call]}, "Understood."])
    sid = create_session(http)
    send(http, sid, "touch it")
    req = approval_request(http, sid)
    assert http.post(f"/v1/sessions/{sid}/interrupt").json() == {"interrupted": True}
    evs = wait_idle_after(http, sid, 1)
    no_session_errors(evs)
    assert (last_status(evs)["status"], last_status(evs)["detail"]) == (
        "idle", "interrupted by the user")
    assert len(ms.requests) == 1

    # The question is withdrawn: nothing is pending, and a late answer is refused.
    [withdrawn] = of_type(evs, "approval_decision")
    assert withdrawn["approval_id"] == req["approval_id"]
    assert withdrawn["decision"] == "deny" and "interrupted" in withdrawn["reason"]
    assert http.get(f"/v1/sessions/{sid}/approvals").json() == {"approvals": []}
    late = http.post(f"/v1/sessions/{sid}/approvals/{req['approval_id']}",
                     json={"decision": "allow"})
    assert late.status_code == 409
    assert http.get(f"/v1/sessions/{sid}/files/ran").status_code == 404

    evs = run_turn(http, sid, "never mind")
    assert ms.requests[1]["messages"][1:] == [
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_wait",
                                      "content": INTERRUPTED, "is_error": True},
                                     text("never mind")]},
    ]


# --- 5. the gateway proxy: budget and cache tokens -------------------------------------

def cached(read: int, write: int) -> dict[str, int]:
    return {"input_tokens": 1000, "output_tokens": 100, "cache_read_input_tokens": read,
            "cache_creation_input_tokens": write}


def sonnet_cost(u: dict[str, int]) -> float:
    return (u["input_tokens"] * 3 + u["output_tokens"] * 15
            + u["cache_read_input_tokens"] * 0.3
            + u["cache_creation_input_tokens"] * 3.75) / 1e6


def test_gateway_refuses_a_spent_budget_and_meters_cache_tokens(
        ms: ModelServer, server: LiveServer, http: httpx.Client) -> None:
    # Almost all of each call's cost is cache tokens: $2.40 and $3.15, past $5 together.
    first, second = cached(3_000_000, 400_000), cached(3_000_000, 600_000)
    ms.set_script([{"content": "one", "usage": first}, {"content": "two", "usage": second},
                   "never sent"])
    sid = create_session(http, max_budget_usd=5.0)
    token = http.post(f"/v1/sessions/{sid}/gateway-token").json()["token"]
    ask = {"model": "sonnet", "max_tokens": 64,
           "messages": [{"role": "user", "content": "hi"}]}
    with sdk(server, token) as claude:
        message = claude.messages.create(**ask)  # type: ignore[call-overload]
        assert message.usage.cache_read_input_tokens == 3_000_000
        with claude.messages.stream(**ask) as stream:  # type: ignore[call-overload]
            final = stream.get_final_message()
        assert final.usage.cache_creation_input_tokens == 600_000
        with pytest.raises(anthropic.APIStatusError) as exc:
            claude.messages.create(**ask)  # type: ignore[call-overload]
    assert exc.value.status_code == 402
    assert isinstance(exc.value.body, dict)
    assert exc.value.body["error"]["type"] == "billing_error"
    assert "the session's budget of $5.00 is spent" in exc.value.message
    assert "raise max_budget_usd" in exc.value.message
    assert len(ms.requests) == 2  # the refused call never reached the provider
    # The gateway asks for an uncompressed body: it relays the bytes without their
    # content-encoding, and reads the usage from them.
    assert all(h.get("accept-encoding") == "identity" for h in ms.request_headers)

    usage = http.get(f"/v1/sessions/{sid}/usage").json()
    calls = usage["calls"]
    assert [(c["cache_read_tokens"], c["cache_write_tokens"]) for c in calls] == \
        [(3_000_000, 400_000), (3_000_000, 600_000)]
    assert [c["cost_usd"] for c in calls] == [pytest.approx(sonnet_cost(first)),
                                              pytest.approx(sonnet_cost(second))]
    total = sonnet_cost(first) + sonnet_cost(second)
    assert usage["totals"]["cost_usd"] == pytest.approx(total)
    assert calls[-1]["cumulative_cache_read_tokens"] == 6_000_000
    assert calls[-1]["cumulative_cache_write_tokens"] == 1_000_000
    metered = of_type(events(http, sid), "usage")
    assert [(u["cache_read_tokens"], u["cache_write_tokens"]) for u in metered] == \
        [(3_000_000, 400_000), (3_000_000, 600_000)]
    assert http.get(f"/v1/sessions/{sid}").json()["usage"]["cost_usd"] == \
        pytest.approx(total)


def test_native_turn_meters_cache_tokens(ms: ModelServer, http: httpx.Client) -> None:
    spend = cached(20_000, 5_000)
    ms.set_script([{"content": "Cached.", "usage": spend}])
    sid = create_session(http)
    evs = run_turn(http, sid, "use the cache")
    no_session_errors(evs)
    [event] = of_type(evs, "usage")
    assert (event["cache_read_tokens"], event["cache_write_tokens"]) == (20_000, 5_000)
    assert event["cost_usd"] == pytest.approx(sonnet_cost(spend))
    [call] = http.get(f"/v1/sessions/{sid}/usage").json()["calls"]
    assert (call["cache_read_tokens"], call["cache_write_tokens"]) == (20_000, 5_000)
    assert call["cost_usd"] == pytest.approx(sonnet_cost(spend))


# --- 6. PATCH max_turns ---------------------------------------------------------------

def test_patch_max_turns_is_obeyed(ms: ModelServer, http: httpx.Client) -> None:
    ms.set_script([{"content": [tool_use("Glob", {"pattern": "*"}, f"toolu_g{n}")]}
                   for n in range(10)])
    sid = create_session(http, max_turns=8)

    def patch(value: int | None) -> None:
        r = http.patch(f"/v1/sessions/{sid}", json={"max_turns": value})
        assert r.status_code == 200, r.text
        assert r.json()["max_turns"] == value

    def limit_error(evs: list[dict[str, Any]]) -> dict[str, Any]:
        [error] = of_type(evs[evs.index(of_type(evs, "user")[-1]):], "session_error")
        return error

    patch(2)
    evs = run_turn(http, sid, "loop")
    assert len(ms.requests) == 2
    assert limit_error(evs)["code"] == "max_turns"
    assert "max_turns (2)" in limit_error(evs)["message"]

    patch(3)
    evs = run_turn(http, sid, "loop more")
    assert len(ms.requests) == 5 and "max_turns (3)" in limit_error(evs)["message"]

    patch(None)  # no limit: the turn runs until the model ends it (the script runs out)
    evs = run_turn(http, sid, "finish")
    assert len(ms.requests) == 11
    assert of_type(evs, "assistant")[-1]["text"] == "(the script has ended)"
    no_session_errors(evs[evs.index(of_type(evs, "user")[-1]):])


def test_patch_during_a_turn_applies_to_its_next_model_call(ms: ModelServer,
                                                            http: httpx.Client) -> None:
    ms.set_script([{"content": [tool_use("Bash", {"command": "echo hi"}, "toolu_hi")]},
                   {"content": [tool_use("Glob", {"pattern": "*"}, "toolu_g")]}, "done"])
    sid = create_session(http, max_turns=10)
    send(http, sid, "say hi")
    req = approval_request(http, sid)
    r = http.patch(f"/v1/sessions/{sid}", json={"max_turns": 1})
    assert r.status_code == 200, r.text
    decide(http, sid, req, "allow")
    evs = wait_idle_after(http, sid, 1)
    assert results_by_id(evs)["toolu_hi"]["content"] == "hi"
    [error] = of_type(evs, "session_error")
    assert error["code"] == "max_turns" and "max_turns (1)" in error["message"]
    assert len(ms.requests) == 1
