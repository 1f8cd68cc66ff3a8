"""``sophon.AsyncClient``: the asyncio SDK, for programs (and agents) that drive many
sessions at once. The everyday methods of ``sophon.Client``, awaited (sessions,
messages, approvals, events, exec, files, diff, secrets, execute); export and the
execution-status routes are on ``Client`` only."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx

from sophon.client._common import (
    ServerError,
    SSEParser,
    execute_body,
    raise_for,
    resolve,
    session_body,
    unreachable,
)
from sophon.client.sync import RECONNECT_DELAYS
from sophon.events.types import from_wire
from sophon.sandbox.models import SandboxResult
from sophon.sessions.models import FileContent, FileTree, SessionView


class AsyncClient:
    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 60.0) -> None:
        self.base_url, self._key = resolve(base_url, api_key)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout,
                                       headers={"Authorization": f"Bearer {self._key}"})

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise unreachable(self.base_url, exc) from exc
        raise_for(response)
        return response.json() if response.content else None

    async def create_session(self, name: str, *, base: str = "generic", model: str = "sonnet",
                             system_prompt: str | None = None, template: str | None = None,
                             clone: str | None = None, ref: str | None = None,
                             runtime: str = "native", approval: dict[str, Any] | None = None,
                             max_turns: int | None = None,
                             max_budget_usd: float | None = None) -> SessionView:
        body = session_body(name, base=base, model=model, system_prompt=system_prompt,
                            template=template, clone=clone, ref=ref, runtime=runtime,
                            approval=approval, max_turns=max_turns,
                            max_budget_usd=max_budget_usd)
        return SessionView.model_validate(await self._json("POST", "/v1/sessions", json=body))

    async def list_sessions(self, limit: int = 100) -> list[SessionView]:
        page = await self._json("GET", "/v1/sessions", params={"limit": min(limit, 200)})
        return [SessionView.model_validate(s) for s in page["sessions"]]

    async def get_session(self, session_id: str) -> SessionView:
        return SessionView.model_validate(await self._json("GET", f"/v1/sessions/{session_id}"))

    async def update_session(self, session_id: str, **changes: Any) -> SessionView:
        return SessionView.model_validate(
            await self._json("PATCH", f"/v1/sessions/{session_id}", json=changes))

    async def delete_session(self, session_id: str) -> None:
        await self._json("DELETE", f"/v1/sessions/{session_id}")

    async def send_message(self, session_id: str, content: str, *,
                           queue: bool = False) -> dict[str, Any]:
        return dict(await self._json("POST", f"/v1/sessions/{session_id}/messages",
                                     json={"content": content, "queue": queue}))

    async def interrupt(self, session_id: str) -> bool:
        return bool((await self._json("POST", f"/v1/sessions/{session_id}/interrupt"))
                    ["interrupted"])

    async def approvals(self, session_id: str) -> list[dict[str, Any]]:
        return list((await self._json("GET", f"/v1/sessions/{session_id}/approvals"))
                    ["approvals"])

    async def decide(self, session_id: str, approval_id: str, decision: str, *,
                     remember: bool = False) -> Any:
        return from_wire(await self._json(
            "POST", f"/v1/sessions/{session_id}/approvals/{approval_id}",
            json={"decision": decision, "remember": remember}))

    async def usage(self, session_id: str) -> dict[str, Any]:
        return dict(await self._json("GET", f"/v1/sessions/{session_id}/usage"))

    async def files(self, session_id: str) -> FileTree:
        return FileTree.model_validate(await self._json("GET",
                                                        f"/v1/sessions/{session_id}/files"))

    async def read_file(self, session_id: str, path: str) -> FileContent:
        return FileContent.model_validate(
            await self._json("GET", f"/v1/sessions/{session_id}/files/{quote(path)}"))

    async def write_file(self, session_id: str, path: str, data: bytes | str, *,
                         etag: str | None = None) -> str:
        headers = {"If-Match": f'"{etag}"'} if etag else {}
        content = data.encode() if isinstance(data, str) else data
        got = await self._json("PUT", f"/v1/sessions/{session_id}/files/{quote(path)}",
                               content=content, headers=headers)
        return str(got["etag"])

    async def diff(self, session_id: str, since: str | None = None) -> str:
        params = {"since": since} if since else {}
        return str((await self._json("GET", f"/v1/sessions/{session_id}/diff",
                                     params=params))["diff"])

    async def set_secret(self, session_id: str, name: str, value: str) -> None:
        await self._json("PUT", f"/v1/sessions/{session_id}/secrets/{name}",
                         json={"value": value})

    async def execute(self, code: str, *, language: str = "python", timeout: int = 60,
                      thread_id: str | None = None, env_vars: dict[str, str] | None = None,
                      metadata: dict[str, str] | None = None) -> SandboxResult:
        body = execute_body(code, language, timeout, thread_id, env_vars, metadata)
        return SandboxResult.model_validate(await self._json(
            "POST", "/v1/sandbox/execute", json=body,
            timeout=httpx.Timeout(60, read=timeout + 60)))

    async def exec(self, session_id: str, command: str,
                   timeout: int = 600) -> AsyncIterator[Any]:
        try:
            async with self._http.stream("POST", f"/v1/sessions/{session_id}/exec",
                                         json={"command": command, "timeout": timeout},
                                         timeout=httpx.Timeout(60, read=timeout + 60)) as r:
                if not r.is_success:
                    await r.aread()
                    raise_for(r)
                async for line in r.aiter_lines():
                    if line:
                        yield from_wire(json.loads(line))
        except httpx.TransportError as exc:
            raise unreachable(self.base_url, exc) from exc

    async def events(self, session_id: str, after: int = 0) -> AsyncIterator[Any]:
        """Every event after ``after``, then live ones forever; reconnects by itself."""
        last, failures = after, 0
        while True:
            try:
                async with self._http.stream(
                        "GET", f"/v1/sessions/{session_id}/events",
                        headers={"Last-Event-ID": str(last), "Accept": "text/event-stream"},
                        timeout=httpx.Timeout(60, read=None)) as r:
                    if not r.is_success:
                        await r.aread()
                        raise_for(r)
                    parser = SSEParser()
                    async for line in r.aiter_lines():
                        for data in parser.feed(line):
                            event = from_wire(json.loads(data))
                            if event.seq > last:
                                last, failures = event.seq, 0
                                yield event
            except (httpx.TransportError, httpx.RemoteProtocolError, ServerError):
                pass
            failures += 1
            await asyncio.sleep(RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS)) - 1])
