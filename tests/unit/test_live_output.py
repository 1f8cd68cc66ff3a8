"""A running tool's output as tool_output events: joined under a flood, capped, in order,
and never with a secret split across two events (the log redacts per event)."""

from __future__ import annotations

import asyncio
from typing import Any

from sophon.agent import live
from sophon.agent.live import LiveOutput


class Sink:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.arrived = asyncio.Event()

    async def __call__(self, ev: Any) -> None:
        self.events.append(ev)
        self.arrived.set()


async def test_the_first_piece_goes_at_once_and_a_flood_is_joined() -> None:
    sink = Sink()
    out = LiveOutput(sink, "toolu_1", cap=10**6)
    await out.feed("stdout", "step-1\n")
    assert [e.data for e in sink.events] == ["step-1\n"]  # no wait for the first
    for i in range(1000):
        await out.feed("stdout", f"line {i}\n")
    assert len(sink.events) == 1  # within the interval: held, joined
    await out.close()
    assert len(sink.events) == 2
    assert "".join(e.data for e in sink.events) == "step-1\n" + "".join(
        f"line {i}\n" for i in range(1000))
    assert [e.index for e in sink.events] == [0, 1]
    assert {e.tool_use_id for e in sink.events} == {"toolu_1"}


async def test_a_later_piece_goes_after_the_interval_without_another_feed(
        monkeypatch: Any) -> None:
    monkeypatch.setattr(live, "INTERVAL", 0.05)
    sink = Sink()
    out = LiveOutput(sink, "t", cap=10**6)
    await out.feed("stdout", "a")
    await out.feed("stderr", "b")  # inside the interval: waits for the timer
    assert [e.data for e in sink.events] == ["a"]
    sink.arrived.clear()
    await asyncio.wait_for(sink.arrived.wait(), 5)  # the timer's flush, no feed needed
    assert [(e.stream, e.data) for e in sink.events] == [("stdout", "a"), ("stderr", "b")]
    await out.close()
    assert len(sink.events) == 2


async def test_output_past_the_cap_is_not_sent() -> None:
    sink = Sink()
    out = LiveOutput(sink, "t", cap=10)
    await out.feed("stdout", "0123456")
    await out.feed("stdout", "789abcdef")
    await out.close()
    assert "".join(e.data for e in sink.events) == "0123456789"


async def test_a_secret_is_never_split_across_two_events() -> None:
    sink = Sink()
    out = LiveOutput(sink, "t", cap=10**6, secrets=("hunter2-secret",))
    await out.feed("stdout", "token: hunter")  # could be the start of the secret: held
    assert "".join(e.data for e in sink.events) == "token: "
    out.last = 0.0  # as if the interval had passed
    await out.feed("stdout", "2-secret done\n")
    await out.close()
    pieces = [e.data for e in sink.events]
    assert any("hunter2-secret" in p for p in pieces), pieces  # whole, so the log redacts it
    assert "".join(pieces) == "token: hunter2-secret done\n"
    # A tail that is no secret's start is not held.
    sink2 = Sink()
    other = LiveOutput(sink2, "t", cap=10**6, secrets=("hunter2-secret",))
    await other.feed("stdout", "no secrets here\n")
    assert [e.data for e in sink2.events] == ["no secrets here\n"]
