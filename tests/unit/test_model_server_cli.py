"""`sophon testing model-server` run by hand, as the docs show, and reached with the SDK."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest

from tests.conftest import free_port, wait_for

SCRIPT = """\
turns:
  - content: Plain hello from the script.
    usage: {input_tokens: 12, output_tokens: 5}
  - content:
      - Streamed hello.
      - {type: tool_use, id: toolu_cli, name: Bash, input: {command: echo hi}}
    usage: {input_tokens: 30, output_tokens: 9, cache_read_input_tokens: 20}
"""
START_DEADLINE = 20.0


@pytest.fixture
def model_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    script = tmp_path / "script.yaml"
    script.write_text(SCRIPT)
    log = tmp_path / "model-server.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "sophon.cli", "testing", "model-server",
                                 "--script", str(script), "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"model server exited early:\n{log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(url + "/_sophon/requests", timeout=1).status_code == 200
            return False

        wait_for(ready, START_DEADLINE, 0.05, "the model server to listen")
        yield url, proc, log
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def test_cli_model_server_answers_the_sdk(
        model_server: tuple[str, subprocess.Popen[bytes], Path]) -> None:
    url, proc, log = model_server
    assert "Scripted model (2 turns) on " + url in log.read_text()
    ask = {"model": "claude-test", "max_tokens": 64,
           "messages": [{"role": "user", "content": "hi"}]}
    with anthropic.Anthropic(base_url=url, api_key="anything", max_retries=0) as claude:
        plain = claude.messages.create(**ask)  # type: ignore[call-overload]
        assert [b.type for b in plain.content] == ["text"]
        assert plain.content[0].text == "Plain hello from the script."
        assert plain.stop_reason == "end_turn"
        assert (plain.usage.input_tokens, plain.usage.output_tokens) == (12, 5)

        with claude.messages.stream(**ask) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text == "Streamed hello."
        assert final.stop_reason == "tool_use"
        tool = final.content[1]
        assert tool.type == "tool_use" and tool.id == "toolu_cli"
        assert (tool.name, tool.input) == ("Bash", {"command": "echo hi"})
        assert (final.usage.input_tokens, final.usage.output_tokens,
                final.usage.cache_read_input_tokens) == (30, 9, 20)

    recorded = httpx.get(url + "/_sophon/requests", timeout=5).json()
    assert recorded["turns_used"] == 2
    assert [bool(r.get("stream")) for r in recorded["requests"]] == [False, True]
    assert all(r["messages"] == ask["messages"] for r in recorded["requests"])

    proc.terminate()
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert proc.wait(10) in (0, -signal.SIGTERM)
    assert "Traceback" not in log.read_text()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/_sophon/requests", timeout=1)
