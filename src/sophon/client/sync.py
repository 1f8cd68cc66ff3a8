"""``sophon.Client``: the synchronous SDK. Every route of the API, typed."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO
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
from sophon.events.types import from_wire
from sophon.sandbox.models import SandboxResult
from sophon.sessions.models import FileContent, FileTree, SessionView

RECONNECT_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)


class Client:
    """Talks to a Sophon server.

    >>> client = Client()  # SOPHON_URL / SOPHON_API_KEY, or `sophon login`'s config
    >>> session = client.create_session("demo", template="python", base="python")
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 60.0) -> None:
        self.base_url, self._key = resolve(base_url, api_key)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout,
                                  headers={"Authorization": f"Bearer {self._key}"})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise unreachable(self.base_url, exc) from exc
        raise_for(response)
        return response

    # --- sessions -------------------------------------------------------------

    def me(self) -> dict[str, str]:
        return dict(self._request("GET", "/v1/me").json())

    def create_session(self, name: str, *, base: str = "generic", model: str = "sonnet",
                       system_prompt: str | None = None, template: str | None = None,
                       clone: str | None = None, ref: str | None = None,
                       runtime: str = "native", approval: dict[str, Any] | None = None,
                       max_turns: int | None = None,
                       max_budget_usd: float | None = None) -> SessionView:
        body = session_body(name, base=base, model=model, system_prompt=system_prompt,
                            template=template, clone=clone, ref=ref, runtime=runtime,
                            approval=approval, max_turns=max_turns,
                            max_budget_usd=max_budget_usd)
        return SessionView.model_validate(self._request("POST", "/v1/sessions",
                                                        json=body).json())

    def list_sessions(self, limit: int | None = None) -> Iterator[SessionView]:
        """Yours, newest first; pages are fetched as you iterate."""
        cursor, seen = None, 0
        while True:
            params: dict[str, Any] = {"limit": 100}
            if cursor:
                params["cursor"] = cursor
            page = self._request("GET", "/v1/sessions", params=params).json()
            for s in page["sessions"]:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield SessionView.model_validate(s)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def get_session(self, session_id: str) -> SessionView:
        return SessionView.model_validate(
            self._request("GET", f"/v1/sessions/{session_id}").json())

    def update_session(self, session_id: str, **changes: Any) -> SessionView:
        return SessionView.model_validate(
            self._request("PATCH", f"/v1/sessions/{session_id}", json=changes).json())

    def delete_session(self, session_id: str) -> None:
        self._request("DELETE", f"/v1/sessions/{session_id}")

    # --- the agent --------------------------------------------------------------

    def send_message(self, session_id: str, content: str, *, queue: bool = False) -> dict[str, Any]:
        return dict(self._request("POST", f"/v1/sessions/{session_id}/messages",
                                  json={"content": content, "queue": queue}).json())

    def interrupt(self, session_id: str) -> bool:
        r = self._request("POST", f"/v1/sessions/{session_id}/interrupt")
        return bool(r.json().get("interrupted"))

    def approvals(self, session_id: str) -> list[dict[str, Any]]:
        return list(self._request("GET", f"/v1/sessions/{session_id}/approvals")
                    .json()["approvals"])

    def decide(self, session_id: str, approval_id: str, decision: str, *,
               remember: bool = False, reason: str | None = None) -> Any:
        body: dict[str, Any] = {"decision": decision, "remember": remember}
        if reason:
            body["reason"] = reason
        return from_wire(self._request(
            "POST", f"/v1/sessions/{session_id}/approvals/{approval_id}", json=body).json())

    def approve(self, session_id: str, approval_id: str, *, remember: bool = False) -> Any:
        return self.decide(session_id, approval_id, "allow", remember=remember)

    def deny(self, session_id: str, approval_id: str, *, reason: str | None = None) -> Any:
        return self.decide(session_id, approval_id, "deny", reason=reason)

    def usage(self, session_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/v1/sessions/{session_id}/usage").json())

    # --- events -------------------------------------------------------------------

    def event_page(self, session_id: str, after: int = 0, limit: int = 500) -> list[Any]:
        r = self._request("GET", f"/v1/sessions/{session_id}/events",
                          params={"after": after, "limit": limit},
                          headers={"Accept": "application/json"})
        return [from_wire(e) for e in r.json()["events"]]

    def events(self, session_id: str, after: int = 0, *, follow: bool = True,
               on_reconnect: Callable[[int], None] | None = None) -> Iterator[Any]:
        """Every event after ``after``, typed; with ``follow``, then live ones forever,
        reconnecting by itself (Last-Event-ID) when the connection drops."""
        last = after
        if not follow:
            while page := self.event_page(session_id, last, 5000):
                yield from page
                last = page[-1].seq
            return
        failures = 0
        while True:
            try:
                with self._http.stream("GET", f"/v1/sessions/{session_id}/events",
                                       headers={"Last-Event-ID": str(last),
                                                "Accept": "text/event-stream"},
                                       timeout=httpx.Timeout(60, read=None)) as r:
                    if not r.is_success:
                        r.read()
                        raise_for(r)
                    parser = SSEParser()
                    for line in r.iter_lines():
                        for data in parser.feed(line):
                            event = from_wire(json.loads(data))
                            if event.seq > last:
                                last = event.seq
                                failures = 0
                                yield event
            except (httpx.TransportError, httpx.RemoteProtocolError, ServerError):
                pass  # dropped, or a proxy's 5xx while the server restarts: try again
            failures += 1
            time.sleep(RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS)) - 1])
            if on_reconnect is not None:
                on_reconnect(last)

    # --- work in the session -----------------------------------------------------

    def exec(self, session_id: str, command: str, timeout: int = 600) -> Iterator[Any]:
        """Run a command in the workspace: exec_start, exec_output..., exec_end."""
        try:
            with self._http.stream("POST", f"/v1/sessions/{session_id}/exec",
                                   json={"command": command, "timeout": timeout},
                                   timeout=httpx.Timeout(60, read=timeout + 60)) as r:
                if not r.is_success:
                    r.read()
                    raise_for(r)
                for line in r.iter_lines():
                    if line:
                        yield from_wire(json.loads(line))
        except httpx.TransportError as exc:
            raise unreachable(self.base_url, exc) from exc

    def files(self, session_id: str) -> FileTree:
        return FileTree.model_validate(
            self._request("GET", f"/v1/sessions/{session_id}/files").json())

    def read_file(self, session_id: str, path: str) -> FileContent:
        return FileContent.model_validate(
            self._request("GET", f"/v1/sessions/{session_id}/files/{quote(path)}").json())

    def write_file(self, session_id: str, path: str, data: bytes | str, *,
                   etag: str | None = None, create_only: bool = False) -> str:
        """Write a file; ``etag`` (from ``read_file``) is required to overwrite one, so a
        change made meanwhile is never lost (PreconditionFailedError). Returns the new ETag."""
        headers = {}
        if etag:
            headers["If-Match"] = f'"{etag}"'
        if create_only:
            headers["If-None-Match"] = "*"
        content = data.encode() if isinstance(data, str) else data
        r = self._request("PUT", f"/v1/sessions/{session_id}/files/{quote(path)}",
                          content=content,
                          headers=headers)
        return str(r.json()["etag"])

    def diff(self, session_id: str, since: str | None = None) -> str:
        params = {"since": since} if since else {}
        return str(self._request("GET", f"/v1/sessions/{session_id}/diff",
                                 params=params).json()["diff"])

    def secrets(self, session_id: str) -> list[str]:
        return list(self._request("GET", f"/v1/sessions/{session_id}/secrets").json()["names"])

    def set_secret(self, session_id: str, name: str, value: str) -> None:
        self._request("PUT", f"/v1/sessions/{session_id}/secrets/{name}", json={"value": value})

    def delete_secret(self, session_id: str, name: str) -> None:
        self._request("DELETE", f"/v1/sessions/{session_id}/secrets/{name}")

    def export(self, session_id: str, dest: str | Path | BinaryIO, *,
               progress: Callable[[int], None] | None = None) -> int:
        """Stream the session's archive (tar.gz) into a file or a directory; returns the
        number of bytes. ``progress`` is called with the bytes received so far."""
        out: BinaryIO
        target: Path | None = None
        if isinstance(dest, str | Path):
            target = Path(dest)
            if target.is_dir() or not target.name.endswith((".tar.gz", ".tgz")):
                target.mkdir(parents=True, exist_ok=True)
                target = target / f"{session_id}.tar.gz"
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".part")
            out = open(partial, "wb")  # noqa: SIM115 - closed below
        else:
            out = dest
        total = 0
        ok = False
        try:
            with self._http.stream("GET", f"/v1/sessions/{session_id}/export",
                                   timeout=httpx.Timeout(60, read=None)) as r:
                if not r.is_success:
                    r.read()
                    raise_for(r)
                for chunk in r.iter_bytes():
                    out.write(chunk)
                    total += len(chunk)
                    if progress is not None:
                        progress(total)
            ok = True
        except httpx.TransportError as exc:
            raise unreachable(self.base_url, exc) from exc
        finally:
            if target is not None:
                out.close()
                # Only a complete archive takes the name; a failed one leaves nothing.
                if ok:
                    partial.replace(target)
                else:
                    partial.unlink(missing_ok=True)
        return total

    # --- the execution API ---------------------------------------------------------

    def execute(self, code: str, *, language: str = "python", timeout: int = 60,
                thread_id: str | None = None, env_vars: dict[str, str] | None = None,
                metadata: dict[str, str] | None = None) -> SandboxResult:
        body = execute_body(code, language, timeout, thread_id, env_vars, metadata)
        r = self._request("POST", "/v1/sandbox/execute", json=body,
                          timeout=httpx.Timeout(60, read=timeout + 60))
        return SandboxResult.model_validate(r.json())

    def execute_stream(self, code: str, *, language: str = "python", timeout: int = 60,
                       thread_id: str | None = None, env_vars: dict[str, str] | None = None,
                       metadata: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
        """The execution's events: status, output (stream, data), keepalive, result."""
        body = execute_body(code, language, timeout, thread_id, env_vars, metadata)
        try:
            with self._http.stream("POST", "/v1/sandbox/execute", json=body,
                                   headers={"Accept": "application/x-ndjson"},
                                   timeout=httpx.Timeout(60, read=timeout + 60)) as r:
                if not r.is_success:
                    r.read()
                    raise_for(r)
                for line in r.iter_lines():
                    if line:
                        yield json.loads(line)
        except httpx.TransportError as exc:
            raise unreachable(self.base_url, exc) from exc

    def get_execution(self, trace_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/v1/executions/{trace_id}").json())

    def cancel_execution(self, trace_id: str) -> str:
        return str(self._request("POST", f"/v1/executions/{trace_id}/cancel").json()["status"])
