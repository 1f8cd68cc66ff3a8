"""Secrets are redacted from events, but never from an event's frame or its ids."""

from __future__ import annotations

from sophon.events.log import REDACTED, redact_event
from sophon.events.types import ExecOutput, ToolResult, from_wire, to_wire


def test_a_short_secret_leaves_the_frame_and_ids_alone() -> None:
    ev = to_wire(ToolResult(tool_use_id="toolu_011", content="count: 1, 11", is_error=False))
    ev["seq"] = 11
    out = redact_event(ev, ["1"])
    assert (out["type"], out["seq"], out["ts"], out["tool_use_id"]) == \
        ("tool_result", 11, ev["ts"], "toolu_011")
    assert out["content"] == f"count: {REDACTED}, {REDACTED}{REDACTED}"
    assert from_wire(out).content == out["content"]  # still a valid event


def test_secrets_inside_fields_are_redacted_but_not_ids() -> None:
    ev = to_wire(ExecOutput(exec_id="exe_1", stream="stdout", data="token=abcdef abc"))
    ev["seq"] = 1
    out = redact_event(ev, ["abcdef", "abc"])
    assert out["data"] == f"token={REDACTED} {REDACTED}"
    assert out["exec_id"] == "exe_1"
