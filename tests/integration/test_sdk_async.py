"""The SDK's AsyncClient against a live server: everything Client has, typed errors, a turn
with an approval, and an events iterator that resumes after a dropped connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import tarfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sophon.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    ConflictError,
    ConnectionFailed,
    NotFoundError,
    PreconditionFailedError,
)
from sophon.testing import ModelServer
from tests.conftest import LiveServer, free_port
from tests.integration import sdk_support
from tests.integration.sdk_support import LONG, SCRIPTS, Proxy, run, tool

# This module's fixtures (tests/integration/sdk_support.py): one scripted model and one
# server for the module, and a client of each test's own user.
model, server, client = sdk_support.model, sdk_support.server, sdk_support.client
proxy = sdk_support.proxy


# --- AsyncClient ----------------------------------------------------------------------------

async def test_async_client_basics(server: LiveServer, api_key: str) -> None:
    async with AsyncClient(server.url, api_key) as ac:
        s = await ac.create_session("async", template="python", base="python")
        assert (await ac.get_session(s.id)).name == "async"
        assert [x.id for x in await ac.list_sessions()] == [s.id]
        assert (await ac.update_session(s.id, name="renamed")).name == "renamed"

        assert "calc.py" in {e.path for e in (await ac.files(s.id)).entries}
        calc = await ac.read_file(s.id, "calc.py")
        etag = await ac.write_file(s.id, "calc.py", calc.content + "# edited\n",
                                   etag=calc.etag)
        assert etag != calc.etag
        with pytest.raises(PreconditionFailedError):
            await ac.write_file(s.id, "calc.py", "lost", etag=calc.etag)
        assert "+# edited" in await ac.diff(s.id)

        await ac.set_secret(s.id, "TOKEN", "hush-hush")
        ran = [e async for e in ac.exec(s.id, 'echo "hi $TOKEN"')]
        assert [e.type for e in ran][0::len(ran) - 1] == ["exec_start", "exec_end"]
        assert "".join(e.data for e in ran if e.type == "exec_output") == "hi [redacted]\n"

        seen = []
        async with contextlib.aclosing(ac.events(s.id)) as events:
            async for event in events:
                seen.append(event)
                if event.seq == ran[-1].seq:
                    break
        assert seen[0].type == "session_start"
        # The exec's events, in order; the checkpoint of the save before it (taken in the
        # background) may land among them.
        execs = [e for e in seen if e.type.startswith("exec_")]
        assert [e.seq for e in seen] == list(range(1, len(seen) + 1)) and execs[-len(ran):] == ran

        result = await ac.execute("print(6 * 7)")
        assert (result.success, result.stdout) == (True, "42\n")
        usage = await ac.usage(s.id)
        assert usage["totals"]["input_tokens"] == 0 and usage["calls"] == []

        await ac.delete_session(s.id)
        with pytest.raises(NotFoundError) as info:
            await ac.get_session(s.id)
        assert info.value.code == "not_found"


async def test_async_client_errors(server: LiveServer) -> None:
    async with AsyncClient(server.url, "sk-sophon-wrong") as ac:
        with pytest.raises(AuthenticationError) as info:
            await ac.list_sessions()
        assert (info.value.status, info.value.code) == (401, "unauthorized")
    async with AsyncClient(f"http://127.0.0.1:{free_port()}", "sk-sophon-any") as ac:
        with pytest.raises(ConnectionFailed):
            await ac.get_session("ses_x")
        with pytest.raises(ConnectionFailed):
            [e async for e in ac.exec("ses_x", "true")]


async def test_async_turn_with_an_approval(server: LiveServer, api_key: str,
                                           model: ModelServer) -> None:
    model.set_script(SCRIPTS["approval"])
    async with AsyncClient(server.url, api_key) as ac:
        s = await ac.create_session("agent", template="python", base="python")
        await ac.send_message(s.id, "Run the tests.")
        with pytest.raises(ConflictError):
            await ac.send_message(s.id, "Again.")
        texts = []
        async with contextlib.aclosing(ac.events(s.id, after=s.last_seq)) as events:
            async for event in events:
                if event.type == "approval_request":
                    assert [a["approval_id"] for a in await ac.approvals(s.id)] == \
                        [event.approval_id]
                    decision = await ac.decide(s.id, event.approval_id, "allow")
                    assert (decision.type, decision.decision) == ("approval_decision",
                                                                  "allow")
                elif event.type == "assistant":
                    texts.append(event.text)
                elif event.type == "status" and event.status == "idle":
                    break
        assert texts == ["I'll run the tests.", "All 3 tests pass."]
        assert await ac.interrupt(s.id) is False
        assert (await ac.usage(s.id))["totals"]["input_tokens"] > 0


# --- reconnecting with Last-Event-ID ------------------------------------------------------------

async def test_async_events_resume_after_the_last_event_seen(client: Client, proxy: Proxy,
                                                             api_key: str) -> None:
    sid = client.create_session("resume").id
    run(client, sid, "echo before")
    before = client.get_session(sid).last_seq
    reconnects: list[int] = []
    got: list[Any] = []
    async with AsyncClient(proxy.url, api_key) as follower, contextlib.aclosing(
            follower.events(sid, on_reconnect=reconnects.append)) as events:
        async for event in events:
            got.append(event)
            if event.seq == before:
                proxy.cut()
                during = await asyncio.to_thread(run, client, sid, "echo during")
            elif reconnects and event.type == "exec_end":
                break
    streams = proxy.event_streams(sid)
    assert [last for last, _ in streams] == ["0", str(before)] and reconnects == [before]
    assert streams[1][1][0] == before + 1
    assert [e.seq for e in got] == list(range(1, during[-1].seq + 1))


# --- AsyncClient: everything Client has ----------------------------------------------------------

def test_async_client_has_every_method_of_client() -> None:
    public = {n for n in dir(Client) if not n.startswith("_")} - {"close"}
    missing = {n for n in public if not hasattr(AsyncClient, n)}
    assert not missing, missing


async def poll(check: Callable[[], Awaitable[Any]], what: str, deadline: float = 30) -> Any:
    """``wait_for`` for coroutines: the first truthy answer, or fail after ``deadline`` s."""
    end = time.monotonic() + deadline
    for _ in itertools.count():
        if value := await check():
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def running(ac: AsyncClient, trace: str) -> bool:
    return (await ac.get_execution(trace))["status"] == "running"


async def idle(ac: AsyncClient, sid: str) -> bool:
    return (await ac.get_session(sid)).status == "idle"


async def test_async_client_everything_else(server: LiveServer, api_key: str,
                                            model: ModelServer, tmp_path: Path) -> None:
    async with AsyncClient(server.url, api_key) as ac:
        assert (await ac.me())["name"]
        s = await ac.create_session("more", template="python", base="python")
        ran = [e async for e in ac.exec(s.id, "echo hi")]
        log = [e async for e in ac.events(s.id, follow=False)]
        assert [e.seq for e in log] == list(range(1, len(log) + 1)) and log[-len(ran):] == ran
        assert await ac.event_page(s.id, after=1, limit=2) == log[1:3]

        await ac.set_secret(s.id, "ONE", "first-secret")
        await ac.set_secret(s.id, "TWO", "second-secret")
        assert await ac.secrets(s.id) == ["ONE", "TWO"]
        await ac.delete_secret(s.id, "ONE")
        assert await ac.secrets(s.id) == ["TWO"]

        seen: list[int] = []
        size = await ac.export(s.id, tmp_path / "out", progress=seen.append)
        archive = tmp_path / "out" / f"{s.id}.tar.gz"
        assert archive.stat().st_size == size == seen[-1]
        with tarfile.open(archive) as tar:
            assert "project/calc.py" in tar.getnames()
        buffer = io.BytesIO()
        assert await ac.export(s.id, buffer) > 0 and buffer.getvalue()[:2] == b"\x1f\x8b"
        with pytest.raises(NotFoundError):
            await ac.export("ses_nope", tmp_path / "nope.tar.gz")
        assert not (tmp_path / "nope.tar.gz").exists()

        streamed = [e async for e in ac.execute_stream("print('a'); print('b')")]
        assert streamed[0]["type"] == "status" and streamed[-1]["type"] == "result"
        assert "".join(e["data"] for e in streamed if e["type"] == "output") == "a\nb\n"
        assert (await ac.get_execution(streamed[0]["trace_id"]))["stdout"] == "a\nb\n"
        trace = (await ac.start_execution(LONG, timeout=300))["trace_id"]
        await poll(lambda: running(ac, trace), "the execution to run")
        assert await ac.cancel_execution(trace) == "cancelled"
        assert (await ac.get_execution(trace))["status"] == "cancelled"
        assert [e["type"] async for e in ac.execution_output(trace)][-1] == "result"

        # approve and deny, one after the other (ask_once: the shell asks until allowed)
        model.set_script({"turns": [
            {"content": [tool("Bash", command="echo first")]}, {"reply": "denied, fine"},
            {"content": [tool("Bash", command="echo second")]}, {"reply": "done"}]})
        for answer in ("deny", "approve"):
            await ac.send_message(s.id, "go")
            pending = await poll(lambda: ac.approvals(s.id), "an approval request")
            if answer == "deny":
                decision = await ac.deny(s.id, pending[0]["approval_id"], reason="no")
            else:
                decision = await ac.approve(s.id, pending[0]["approval_id"])
            assert decision.decision == ("deny" if answer == "deny" else "allow")
            await poll(lambda: idle(ac, s.id), "the turn to end")
        outputs = [e.content for e in await ac.event_page(s.id, limit=5000)
                   if e.type == "tool_result"]
        assert outputs[0].startswith("Permission to use Bash was denied: no")
        assert outputs[1].strip() == "second"
        assert [x.id for x in await ac.list_sessions(limit=1)] == [s.id]
