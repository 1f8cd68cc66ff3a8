"""How the claude-code runtime words a turn that the CLI ended with an error: a budget,
Sophon's (the gateway's 402, which the CLI reports) or the CLI's own, is budget_exceeded
in the gateway's words; anything else is the CLI's error as it said it."""

from __future__ import annotations

from typing import Any

from sophon.agent.claude_code import _Lines


def ended(result: dict[str, Any]) -> _Lines:
    lines = _Lines(None, "ses_x")  # type: ignore[arg-type]  (no event is written here)
    lines.result = {"type": "result", "is_error": True, **result}
    return lines


def test_the_gateways_budget_refusal_is_said_in_its_own_words() -> None:
    said = ("the session's budget of $0.50 is spent ($3.0002 so far; the next call would "
            "cost about $0.0700); raise max_budget_usd to continue")
    lines = ended({"subtype": "success", "result": f"API Error: 402 {said}"})
    assert lines.failure_code() == "budget_exceeded"
    assert lines.result_failure() == said


def test_the_clis_own_budget_stop_is_a_budget_too() -> None:
    lines = ended({"subtype": "error_max_budget_usd"})
    assert lines.failure_code() == "budget_exceeded"
    assert "raise max_budget_usd" in (lines.result_failure() or "")


def test_another_error_is_the_clis_own() -> None:
    lines = ended({"subtype": "success", "result": "API Error: 500 upstream broke"})
    assert lines.failure_code() == "claude_code"
    assert lines.result_failure() == "Claude Code ended with an error: API Error: 500 " \
        "upstream broke"
