"""``sophon.AsyncClient``: the asyncio SDK, for programs (and agents) that drive many
sessions at once. The methods of ``sophon.Client``, awaited; ``exec``, ``events``,
``list_sessions``, ``execute_stream`` and ``execution_output`` are async iterators."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import httpx

from sophon.client._common import (
    RECONNECT_DELAYS,
    ConnectionFailed,
    ServerError,
    SSEParser,
    error_for,
    execute_body,
    image_body,
    resolve,
    session_body,
    unreachable,
)
from sophon.client._http import seg
from sophon.client._raw import (
    NDJSON,
    attachment_body,
    connector_body,
    export_target,
    open_archive,
)
from sophon.events.types import from_wire
from sophon.sandbox.models import SandboxResult
from sophon.sessions.models import FileContent, FileTree, SessionView


async def _check(response: httpx.Response) -> None:
    if not response.is_success:
        raise error_for(response.status_code, await response.aread(),
                        response.headers.get("retry-after"))


async def _copy(response: httpx.Response, out: BinaryIO,
                progress: Callable[[int], None] | None) -> int:
    total = 0
    async for chunk in response.aiter_bytes():
        out.write(chunk)
        total += len(chunk)
        if progress is not None:
            progress(total)
    return total


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
        await _check(response)
        return response.json() if response.content else None

    async def _lines(self, method: str, path: str, read: float | None,
                     **kwargs: Any) -> AsyncIterator[str]:
        try:
            async with self._http.stream(method, path, timeout=httpx.Timeout(60, read=read),
                                         **kwargs) as r:
                await _check(r)
                async for line in r.aiter_lines():
                    yield line
        except httpx.TransportError as exc:
            raise unreachable(self.base_url, exc) from exc

    # --- sessions -------------------------------------------------------------

    async def me(self) -> dict[str, str]:
        return dict(await self._json("GET", "/v1/me"))

    async def capabilities(self) -> dict[str, Any]:
        """What this server can run: bases, runtimes, models, network, limits."""
        return dict(await self._json("GET", "/v1/capabilities"))

    async def create_session(self, name: str, *, base: str = "generic", model: str = "sonnet",
                             system_prompt: str | None = None, template: str | None = None,
                             clone: str | None = None, ref: str | None = None,
                             runtime: str = "native", approval: dict[str, Any] | None = None,
                             max_turns: int | None = None,
                             max_budget_usd: float | None = None,
                             network: dict[str, Any] | None = None,
                             connectors: list[str] | None = None,
                             mcp_servers: list[dict[str, Any]] | None = None,
                             limits: dict[str, Any] | None = None,
                             disk_mb: int | None = None) -> SessionView:
        body = session_body(name, base=base, model=model, system_prompt=system_prompt,
                            template=template, clone=clone, ref=ref, runtime=runtime,
                            approval=approval, max_turns=max_turns,
                            max_budget_usd=max_budget_usd, network=network,
                            connectors=connectors, mcp_servers=mcp_servers,
                            limits=limits, disk_mb=disk_mb)
        return SessionView.model_validate(await self._json("POST", "/v1/sessions", json=body))

    async def list_sessions(self, limit: int | None = None, *,
                            page_size: int = 100) -> list[SessionView]:
        """Yours, newest first (every page, or the first ``limit``)."""
        out: list[SessionView] = []
        cursor = None
        while limit is None or len(out) < limit:
            params: dict[str, Any] = {"limit": page_size}
            if cursor:
                params["cursor"] = cursor
            page = await self._json("GET", "/v1/sessions", params=params)
            out += [SessionView.model_validate(s) for s in page["sessions"]]
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return out if limit is None else out[:limit]

    async def get_session(self, session_id: str) -> SessionView:
        return SessionView.model_validate(
            await self._json("GET", f"/v1/sessions/{seg(session_id)}"))

    async def update_session(self, session_id: str, **changes: Any) -> SessionView:
        return SessionView.model_validate(
            await self._json("PATCH", f"/v1/sessions/{seg(session_id)}", json=changes))

    async def delete_session(self, session_id: str) -> None:
        await self._json("DELETE", f"/v1/sessions/{seg(session_id)}")

    # --- the agent --------------------------------------------------------------

    async def send_message(self, session_id: str, content: str, *,
                           queue: bool = False) -> dict[str, Any]:
        return dict(await self._json("POST", f"/v1/sessions/{seg(session_id)}/messages",
                                     json={"content": content, "queue": queue}))

    async def interrupt(self, session_id: str) -> bool:
        return bool((await self._json("POST", f"/v1/sessions/{seg(session_id)}/interrupt"))
                    ["interrupted"])

    async def approvals(self, session_id: str) -> list[dict[str, Any]]:
        return list((await self._json("GET", f"/v1/sessions/{seg(session_id)}/approvals"))
                    ["approvals"])

    async def decide(self, session_id: str, approval_id: str, decision: str, *,
                     remember: bool = False, reason: str | None = None) -> Any:
        body: dict[str, Any] = {"decision": decision, "remember": remember}
        if reason:
            body["reason"] = reason
        return from_wire(await self._json(
            "POST", f"/v1/sessions/{seg(session_id)}/approvals/{seg(approval_id)}", json=body))

    async def approve(self, session_id: str, approval_id: str, *,
                      remember: bool = False) -> Any:
        return await self.decide(session_id, approval_id, "allow", remember=remember)

    async def deny(self, session_id: str, approval_id: str, *, reason: str | None = None,
                   remember: bool = False) -> Any:
        return await self.decide(session_id, approval_id, "deny", reason=reason,
                                 remember=remember)

    async def usage(self, session_id: str) -> dict[str, Any]:
        return dict(await self._json("GET", f"/v1/sessions/{seg(session_id)}/usage"))

    # --- events -------------------------------------------------------------------

    async def event_page(self, session_id: str, after: int = 0,
                         limit: int = 500) -> list[Any]:
        page = await self._json("GET", f"/v1/sessions/{seg(session_id)}/events",
                                params={"after": after, "limit": limit},
                                headers={"Accept": "application/json"})
        return [from_wire(e) for e in page["events"]]

    async def events(self, session_id: str, after: int = 0, *, follow: bool = True,
                     on_reconnect: Callable[[int], None] | None = None) -> AsyncIterator[Any]:
        """Every event after ``after``; with ``follow``, then live ones forever,
        reconnecting by itself (Last-Event-ID) when the connection drops."""
        last = after
        if not follow:
            while page := await self.event_page(session_id, last, 5000):
                for event in page:
                    yield event
                last = page[-1].seq
            return
        failures = 0
        while True:
            try:
                parser = SSEParser()
                async for line in self._lines(
                        "GET", f"/v1/sessions/{seg(session_id)}/events", None,
                        headers={"Last-Event-ID": str(last), "Accept": "text/event-stream"}):
                    for data in parser.feed(line):
                        if json.loads(data)["seq"] > last:
                            event = from_wire(data)
                            last, failures = event.seq, 0
                            yield event
            except (ConnectionFailed, ServerError, httpx.HTTPError):
                pass  # dropped, or a proxy's 5xx while the server restarts: try again
            failures += 1
            await asyncio.sleep(RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS)) - 1])
            if on_reconnect is not None:
                on_reconnect(last)

    # --- work in the session -----------------------------------------------------

    async def exec(self, session_id: str, command: str,
                   timeout: int = 600) -> AsyncIterator[Any]:
        async for line in self._lines("POST", f"/v1/sessions/{seg(session_id)}/exec",
                                      timeout + 60,
                                      json={"command": command, "timeout": timeout}):
            if line:
                yield from_wire(line)

    async def files(self, session_id: str) -> FileTree:
        return FileTree.model_validate(
            await self._json("GET", f"/v1/sessions/{seg(session_id)}/files"))

    async def read_file(self, session_id: str, path: str) -> FileContent:
        return FileContent.model_validate(
            await self._json("GET", f"/v1/sessions/{seg(session_id)}/files/{quote(path)}"))

    async def write_file(self, session_id: str, path: str, data: bytes | str, *,
                         etag: str | None = None, create_only: bool = False) -> str:
        headers = {}
        if etag:
            headers["If-Match"] = f'"{etag}"'
        if create_only:
            headers["If-None-Match"] = "*"
        content = data.encode() if isinstance(data, str) else data
        got = await self._json("PUT", f"/v1/sessions/{seg(session_id)}/files/{quote(path)}",
                               content=content, headers=headers)
        return str(got["etag"])

    async def diff(self, session_id: str, since: str | None = None) -> str:
        params = {"since": since} if since else {}
        return str((await self._json("GET", f"/v1/sessions/{seg(session_id)}/diff",
                                     params=params))["diff"])

    async def checkpoints(self, session_id: str) -> list[dict[str, Any]]:
        return list((await self._json("GET", f"/v1/sessions/{seg(session_id)}/checkpoints"))
                    ["checkpoints"])

    async def rewind(self, session_id: str, checkpoint: str, *, files: bool = True,
                     conversation: bool = True) -> Any:
        return from_wire(await self._json(
            "POST", f"/v1/sessions/{seg(session_id)}/rewind",
            json={"checkpoint": checkpoint, "files": files, "conversation": conversation}))

    async def fork(self, session_id: str, checkpoint: str, *,
                   name: str | None = None) -> SessionView:
        body: dict[str, Any] = {"checkpoint": checkpoint}
        if name:
            body["name"] = name
        return SessionView.model_validate(await self._json(
            "POST", f"/v1/sessions/{seg(session_id)}/fork", json=body))

    async def turn_diff(self, session_id: str, turn: int) -> str:
        return str((await self._json(
            "GET", f"/v1/sessions/{seg(session_id)}/turns/{turn}/diff"))["diff"])

    async def checkpoint_diff(self, session_id: str, base: str | None = None,
                              head: str | None = None) -> str:
        params = {k: v for k, v in (("from", base), ("to", head)) if v}
        return str((await self._json(
            "GET", f"/v1/sessions/{seg(session_id)}/checkpoints/diff", params=params))["diff"])

    async def secrets(self, session_id: str) -> list[str]:
        return list((await self._json("GET", f"/v1/sessions/{seg(session_id)}/secrets"))
                    ["names"])

    async def set_secret(self, session_id: str, name: str, value: str) -> None:
        await self._json("PUT", f"/v1/sessions/{seg(session_id)}/secrets/{seg(name)}",
                         json={"value": value})

    async def delete_secret(self, session_id: str, name: str) -> None:
        await self._json("DELETE", f"/v1/sessions/{seg(session_id)}/secrets/{seg(name)}")

    async def export(self, session_id: str, dest: str | Path | BinaryIO, *,
                     progress: Callable[[int], None] | None = None) -> int:
        """Stream the archive into a file (through ``NAME.part``: a failed export leaves
        nothing), a directory or an open binary file; returns the number of bytes."""
        try:
            async with self._http.stream("GET", f"/v1/sessions/{seg(session_id)}/export",
                                         timeout=httpx.Timeout(60, read=None)) as r:
                await _check(r)
                target = export_target(dest, session_id)
                if not isinstance(target, Path):
                    return await _copy(r, target, progress)
                partial = target.with_name(target.name + ".part")
                try:
                    with open(partial, "wb") as out:  # noqa: ASYNC230 - a local file
                        total = await _copy(r, out, progress)
                    partial.replace(target)
                except BaseException:
                    partial.unlink(missing_ok=True)
                    raise
                return total
        except httpx.TransportError as exc:
            raise unreachable(self.base_url, exc) from exc

    async def import_session(self, archive: str | Path | BinaryIO, *,
                             name: str | None = None) -> SessionView:
        """A new session from an archive of ``export`` (a path or an open binary file),
        sent as it is read; ``name`` replaces the archive's name."""
        with open_archive(archive) as (f, size):
            async def pieces() -> AsyncIterator[bytes]:
                while chunk := await asyncio.to_thread(f.read, 1 << 20):
                    yield chunk

            return SessionView.model_validate(await self._json(
                "POST", "/v1/sessions/import", params={"name": name} if name else None,
                content=pieces(), headers={"Content-Type": "application/gzip",
                                           "Content-Length": str(size)},
                timeout=httpx.Timeout(60, read=None)))

    # --- the execution API ---------------------------------------------------------

    async def execute(self, code: str, *, language: str = "python", timeout: int = 60,
                      thread_id: str | None = None, env_vars: dict[str, str] | None = None,
                      metadata: dict[str, str] | None = None,
                      image: str | None = None) -> SandboxResult:
        body = execute_body(code, language, timeout, thread_id, env_vars, metadata, image)
        return SandboxResult.model_validate(await self._json(
            "POST", "/v1/sandbox/execute", json=body,
            timeout=httpx.Timeout(60, read=timeout + 60)))

    async def execute_stream(self, code: str, *, language: str = "python", timeout: int = 60,
                             thread_id: str | None = None,
                             env_vars: dict[str, str] | None = None,
                             metadata: dict[str, str] | None = None,
                             image: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """The execution's events: status, output (stream, data), keepalive, result."""
        body = execute_body(code, language, timeout, thread_id, env_vars, metadata, image)
        async for line in self._lines("POST", "/v1/sandbox/execute", timeout + 60, json=body,
                                      headers={"Accept": NDJSON}):
            if line:
                yield json.loads(line)

    async def start_execution(self, code: str, *, language: str = "python",
                              timeout: int = 60, thread_id: str | None = None,
                              env_vars: dict[str, str] | None = None,
                              metadata: dict[str, str] | None = None,
                              image: str | None = None) -> dict[str, Any]:
        body = execute_body(code, language, timeout, thread_id, env_vars, metadata, image)
        return dict(await self._json("POST", "/v1/sandbox/execute", json=body,
                                     headers={"Prefer": "respond-async"}))

    async def get_execution(self, trace_id: str) -> dict[str, Any]:
        return dict(await self._json("GET", f"/v1/executions/{seg(trace_id)}"))

    async def cancel_execution(self, trace_id: str) -> str:
        return str((await self._json("POST", f"/v1/executions/{seg(trace_id)}/cancel"))
                   ["status"])

    async def list_threads(self) -> list[dict[str, Any]]:
        return list((await self._json("GET", "/v1/threads"))["threads"])

    async def delete_thread(self, thread_id: str) -> None:
        await self._json("DELETE", f"/v1/threads/{seg(thread_id)}")

    async def images(self) -> list[dict[str, Any]]:
        """The built-in images and yours, each with its status and box defaults."""
        return list((await self._json("GET", "/v1/images"))["images"])

    async def create_image(self, name: str, base: str, *, apt: list[str] | None = None,
                           pip: list[str] | None = None, npm: list[str] | None = None,
                           run: list[str] | None = None, env: dict[str, str] | None = None,
                           allow: list[str] | None = None,
                           description: str | None = None) -> dict[str, Any]:
        """An image of yours on a built-in ``base``; its build starts now (follow it with
        ``image_log``). Sessions name it as ``base``, executions as ``image``."""
        return dict(await self._json("POST", "/v1/images", json=image_body(
            name, base, apt, pip, npm, run, env, allow, description)))

    async def get_image(self, name: str) -> dict[str, Any]:
        return dict(await self._json("GET", f"/v1/images/{seg(name)}"))

    async def image_log(self, name: str, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        """The build's log (``{"type": "image_log", "line", "text"}``), followed while
        it builds, then ``{"type": "image_status", "image": {...}}``, where it ends."""
        parser = SSEParser()
        async for line in self._lines("GET", f"/v1/images/{seg(name)}/log", None,
                                      params={"after": after}):
            for data in parser.feed(line):
                event = json.loads(data)
                yield event
                if event["type"] == "image_status":
                    return

    async def delete_image(self, name: str) -> None:
        await self._json("DELETE", f"/v1/images/{seg(name)}")

    async def create_volume(self, name: str, size_mb: int | None = None) -> dict[str, Any]:
        """A named volume, mounted read-write at /data/<name>/ in your boxes."""
        body: dict[str, Any] = {"name": name}
        if size_mb is not None:
            body["size_mb"] = size_mb
        return dict(await self._json("POST", "/v1/volumes", json=body))

    async def list_volumes(self) -> list[dict[str, Any]]:
        return list((await self._json("GET", "/v1/volumes"))["volumes"])

    async def delete_volume(self, name: str) -> None:
        await self._json("DELETE", f"/v1/volumes/{seg(name)}")

    async def create_connector(self, name: str, type: str, value: str | None = None, *,
                               host: str | None = None, header: str | None = None,
                               execute: bool = False, keys: list[str] | None = None,
                               push: list[str] | None = None) -> dict[str, Any]:
        """A credential the egress door sends for your boxes; never the value back."""
        return dict(await self._json("POST", "/v1/connectors", json=connector_body(
            name, type, value, host, header, execute, push, keys)))

    async def update_connector(self, name: str, *, execute: bool | None = None,
                               keys: list[str] | None = None) -> dict[str, Any]:
        """Which executions get the connector: every key's, some keys', or none."""
        return dict(await self._json("PATCH", f"/v1/connectors/{seg(name)}",
                                     json=attachment_body(execute, keys)))

    async def cluster(self) -> dict[str, Any]:
        """The nodes on this server's database, alive or not, with their load (admins)."""
        return dict(await self._json("GET", "/v1/cluster"))

    async def drain(self, node_id: str, draining: bool = True) -> dict[str, Any]:
        """Drain a node (admins): no new work goes there, and its sessions move on
        between turns; ``draining=False`` undoes it. The node as it now is."""
        return dict(await self._json("POST", f"/v1/cluster/nodes/{node_id}/drain",
                                     json={"draining": draining}))

    async def keys(self) -> list[dict[str, Any]]:
        """Your API keys: id, first characters, and whether this client uses it."""
        return list((await self._json("GET", "/v1/keys"))["keys"])

    async def connectors(self) -> list[dict[str, Any]]:
        return list((await self._json("GET", "/v1/connectors"))["connectors"])

    async def delete_connector(self, name: str) -> None:
        await self._json("DELETE", f"/v1/connectors/{seg(name)}")

    async def rotate_webhook_secret(self) -> str:
        """A new signing secret for your execution webhooks, shown this once."""
        return str((await self._json("POST", "/v1/webhooks/secret"))["secret"])

    async def execution_output(self, trace_id: str,
                               after_seq: int = 0) -> AsyncIterator[dict[str, Any]]:
        async for line in self._lines("GET", f"/v1/executions/{seg(trace_id)}/output", None,
                                      params={"after_seq": after_seq}):
            if line:
                yield json.loads(line)
