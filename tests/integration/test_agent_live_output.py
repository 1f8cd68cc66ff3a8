"""The agent's Bash output as it prints: tool_output events while the command runs,
then its tool_result as ever; a flood makes at most ten events a second; a secret it prints
is redacted in them as in the result."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from sophon.testing import ModelServer
from tests.conftest import LiveServer, wait_for
from tests.integration.test_agent_edges import (
    PROVIDER_KEY,
    create_session,
    events,
    live_server,
    no_session_errors,
    of_type,
    run_turn,
    send,
    stop_server,
    tool_use,
)

GATED = ("echo step-1; while [ ! -e /workspace/go ]; do sleep 0.05; done; "
         "echo step-2 >&2; echo step-3")


@pytest.fixture(scope="module")
def ms() -> Iterator[ModelServer]:
    with ModelServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def server(ms: ModelServer) -> Iterator[LiveServer]:
    srv = live_server({"ANTHROPIC_API_KEY": PROVIDER_KEY, "ANTHROPIC_BASE_URL": ms.url})
    yield srv
    stop_server(srv)


def bash_turn(ms: ModelServer, command: str) -> None:
    ms.set_script([{"content": [tool_use("Bash", {"command": command}, "toolu_live")]},
                   "done"])


def test_output_arrives_while_the_command_runs(ms: ModelServer, http: httpx.Client) -> None:
    sid = create_session(http, {"shell": "allow"})
    bash_turn(ms, GATED)
    send(http, sid, "run it")
    first = wait_for(lambda: of_type(events(http, sid), "tool_output"), 30, 0.05,
                     "the first tool_output")
    assert first[0]["tool_use_id"] == "toolu_live"  # type: ignore[index]
    assert first[0]["data"] == "step-1\n" and first[0]["stream"] == "stdout"  # type: ignore[index]
    # The command is still running: its result has not come.
    assert not of_type(events(http, sid), "tool_result")
    r = http.put(f"/v1/sessions/{sid}/files/go", content=b"")
    assert r.status_code in (200, 201), r.text
    evs = wait_for(lambda: (lambda e: e if of_type(e, "status")[-1:] and of_type(e, "status")
                            [-1]["status"] == "idle" else None)(events(http, sid)), 60, 0.1,
                   "the turn to end")
    assert isinstance(evs, list)
    no_session_errors(evs)
    pieces = of_type(evs, "tool_output")
    assert [p["index"] for p in pieces] == list(range(len(pieces)))
    assert "".join(p["data"] for p in pieces if p["stream"] == "stdout") == "step-1\nstep-3\n"
    assert "".join(p["data"] for p in pieces if p["stream"] == "stderr") == "step-2\n"
    types = [e["type"] for e in evs]
    assert types.index("tool_result") > max(i for i, t in enumerate(types) if t == "tool_output")
    result = of_type(evs, "tool_result")[0]["content"]
    assert "step-1" in result and "step-2" in result and "step-3" in result


def test_a_flood_makes_at_most_ten_events_a_second(ms: ModelServer, http: httpx.Client) -> None:
    sid = create_session(http, {"shell": "allow"})
    bash_turn(ms, "for i in $(seq 1 30000); do echo line $i; done; sleep 0.6; echo end")
    started = time.monotonic()
    evs = run_turn(http, sid, "flood")
    took = time.monotonic() - started
    no_session_errors(evs)
    pieces = of_type(evs, "tool_output")
    text = "".join(p["data"] for p in pieces)
    assert text == "".join(f"line {i}\n" for i in range(1, 30001)) + "end\n"
    # At most ten a second (plus the first and the last), however fast it prints.
    assert 2 <= len(pieces) <= took * 10 + 2, (len(pieces), took)


def test_a_printed_secret_is_redacted_in_the_live_output(ms: ModelServer,
                                                         http: httpx.Client) -> None:
    sid = create_session(http, {"shell": "allow"})
    r = http.put(f"/v1/sessions/{sid}/secrets/API_TOKEN", json={"value": "tok-live-0123456789"})
    assert r.status_code == 204, r.text
    # Printed in two writes, so it would straddle two pieces if they were cut anywhere.
    bash_turn(ms, 'printf "key=%s" "${API_TOKEN:0:7}"; sleep 0.4; '
                  'printf "%s\\n" "${API_TOKEN:7}"; echo after')
    evs = run_turn(http, sid, "leak it")
    no_session_errors(evs)
    pieces = [p["data"] for p in of_type(evs, "tool_output")]
    assert "".join(pieces) == "key=[redacted]\nafter\n", pieces
    assert "tok-live" not in str(evs) and "0123456789" not in str(evs)
