"""``RawClient``: every route of the API, synchronous, answers as plain JSON (dicts).

``sophon.Client`` is this with typed answers (pydantic models); it overrides only the
``_as_*`` hooks below. The CLI uses ``RawClient`` itself: it needs only the standard
library, so a command starts without importing httpx or pydantic.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from sophon.client._common import (
    RECONNECT_DELAYS,
    ConnectionFailed,
    ServerError,
    SSEParser,
    execute_body,
    image_body,
    resolve,
    session_body,
)
from sophon.client._http import Http, Response, seg

NDJSON = "application/x-ndjson"


class RawClient:
    """Talks to a Sophon server; each answer is the API's JSON, decoded."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 60.0) -> None:
        self.base_url, self._key = resolve(base_url, api_key)
        self.timeout = timeout
        self._http = Http(self.base_url, {"Authorization": f"Bearer {self._key}"}, timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # How answers are returned: as they are here; ``Client`` makes them typed.
    def _as_session(self, data: dict[str, Any]) -> Any:
        return data

    def _as_event(self, data: dict[str, Any]) -> Any:
        return data

    def _as_tree(self, data: dict[str, Any]) -> Any:
        return data

    def _as_file(self, data: dict[str, Any]) -> Any:
        return data

    def _as_result(self, data: dict[str, Any]) -> Any:
        return data

    def _lines(self, response: Response) -> Iterator[Any]:
        with response:
            for line in response.iter_lines():
                if line:
                    yield json.loads(line)

    # --- sessions -------------------------------------------------------------

    def me(self) -> dict[str, str]:
        return dict(self._http.call("GET", "/v1/me"))

    def capabilities(self) -> dict[str, Any]:
        """What this server can run: bases, runtimes, models, network, limits."""
        return dict(self._http.call("GET", "/v1/capabilities"))

    def create_session(self, name: str, *, base: str = "generic", model: str = "sonnet",
                       system_prompt: str | None = None, template: str | None = None,
                       clone: str | None = None, ref: str | None = None,
                       runtime: str = "native", approval: dict[str, Any] | None = None,
                       max_turns: int | None = None,
                       max_budget_usd: float | None = None,
                       network: dict[str, Any] | None = None,
                       connectors: list[str] | None = None,
                       mcp_servers: list[dict[str, Any]] | None = None,
                       limits: dict[str, Any] | None = None,
                       disk_mb: int | None = None) -> Any:
        """A new session. ``base``: a built-in image or one of yours; ``limits``:
        {"memory_mb", "cpus", "pids"} instead of its defaults (within the server's
        ceilings)."""
        body = session_body(name, base=base, model=model, system_prompt=system_prompt,
                            template=template, clone=clone, ref=ref, runtime=runtime,
                            approval=approval, max_turns=max_turns,
                            max_budget_usd=max_budget_usd, network=network,
                            connectors=connectors, mcp_servers=mcp_servers,
                            limits=limits, disk_mb=disk_mb)
        return self._as_session(self._http.call("POST", "/v1/sessions", json_body=body))

    def list_sessions(self, limit: int | None = None, *, page_size: int = 100) -> Iterator[Any]:
        """Yours, newest first; pages (of ``page_size``) are fetched as you iterate."""
        cursor, seen = None, 0
        while limit is None or seen < limit:
            page = self._http.call("GET", "/v1/sessions",
                                   params={"limit": page_size, "cursor": cursor})
            for s in page["sessions"]:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield self._as_session(s)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def get_session(self, session_id: str) -> Any:
        return self._as_session(self._http.call("GET", f"/v1/sessions/{seg(session_id)}"))

    def update_session(self, session_id: str, **changes: Any) -> Any:
        return self._as_session(self._http.call("PATCH", f"/v1/sessions/{seg(session_id)}",
                                                json_body=changes))

    def delete_session(self, session_id: str) -> None:
        self._http.call("DELETE", f"/v1/sessions/{seg(session_id)}")

    # --- the agent --------------------------------------------------------------

    def send_message(self, session_id: str, content: str, *,
                     queue: bool = False) -> dict[str, Any]:
        return dict(self._http.call("POST", f"/v1/sessions/{seg(session_id)}/messages",
                                    json_body={"content": content, "queue": queue}))

    def interrupt(self, session_id: str) -> bool:
        got = self._http.call("POST", f"/v1/sessions/{seg(session_id)}/interrupt")
        return bool(got.get("interrupted"))

    def approvals(self, session_id: str) -> list[dict[str, Any]]:
        return list(self._http.call("GET", f"/v1/sessions/{seg(session_id)}/approvals")
                    ["approvals"])

    def decide(self, session_id: str, approval_id: str, decision: str, *,
               remember: bool = False, reason: str | None = None) -> Any:
        body: dict[str, Any] = {"decision": decision, "remember": remember}
        if reason:
            body["reason"] = reason
        return self._as_event(self._http.call(
            "POST", f"/v1/sessions/{seg(session_id)}/approvals/{seg(approval_id)}",
            json_body=body))

    def approve(self, session_id: str, approval_id: str, *, remember: bool = False) -> Any:
        return self.decide(session_id, approval_id, "allow", remember=remember)

    def deny(self, session_id: str, approval_id: str, *, reason: str | None = None,
             remember: bool = False) -> Any:
        return self.decide(session_id, approval_id, "deny", reason=reason, remember=remember)

    def usage(self, session_id: str) -> dict[str, Any]:
        return dict(self._http.call("GET", f"/v1/sessions/{seg(session_id)}/usage"))

    # --- events -------------------------------------------------------------------

    def _page(self, session_id: str, after: int, limit: int) -> list[dict[str, Any]]:
        return list(self._http.call("GET", f"/v1/sessions/{seg(session_id)}/events",
                                    params={"after": after, "limit": limit},
                                    headers={"Accept": "application/json"})["events"])

    def event_page(self, session_id: str, after: int = 0, limit: int = 500) -> list[Any]:
        """One page of the log: at most ``limit`` events after ``after``."""
        return [self._as_event(e) for e in self._page(session_id, after, limit)]

    def events(self, session_id: str, after: int = 0, *, follow: bool = True,
               on_reconnect: Callable[[int], None] | None = None,
               on_connected: Callable[[], None] | None = None) -> Iterator[Any]:
        """Every event after ``after``; with ``follow``, then live ones forever,
        reconnecting by itself (Last-Event-ID) when the connection drops:
        ``on_reconnect(last_seq)`` before each attempt, ``on_connected()`` when the
        stream is open (again)."""
        last = after
        if not follow:
            while page := self._page(session_id, last, 5000):
                yield from (self._as_event(e) for e in page)
                last = page[-1]["seq"]
            return
        failures = 0
        while True:
            try:
                with self._http.open("GET", f"/v1/sessions/{seg(session_id)}/events",
                                     headers={"Last-Event-ID": str(last),
                                              "Accept": "text/event-stream"},
                                     read_timeout=None) as r:
                    if on_connected is not None:
                        on_connected()
                    parser = SSEParser()
                    for line in r.iter_lines():
                        for data in parser.feed(line):
                            event = json.loads(data)
                            if event["seq"] > last:
                                last, failures = event["seq"], 0
                                yield self._as_event(event)
            except (ConnectionFailed, ServerError):
                pass  # dropped, or a proxy's 5xx while the server restarts: try again
            failures += 1
            time.sleep(RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS)) - 1])
            if on_reconnect is not None:
                on_reconnect(last)

    # --- work in the session -----------------------------------------------------

    def exec(self, session_id: str, command: str, timeout: int = 600) -> Iterator[Any]:
        """Run a command in the workspace: exec_start, exec_output..., exec_end."""
        r = self._http.open("POST", f"/v1/sessions/{seg(session_id)}/exec",
                            json_body={"command": command, "timeout": timeout},
                            read_timeout=timeout + 60)
        return (self._as_event(e) for e in self._lines(r))

    def files(self, session_id: str) -> Any:
        return self._as_tree(self._http.call("GET", f"/v1/sessions/{seg(session_id)}/files"))

    def read_file(self, session_id: str, path: str) -> Any:
        return self._as_file(self._http.call(
            "GET", f"/v1/sessions/{seg(session_id)}/files/{quote(path)}"))

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
        got = self._http.call("PUT", f"/v1/sessions/{seg(session_id)}/files/{quote(path)}",
                              content=content, headers=headers)
        return str(got["etag"])

    def diff(self, session_id: str, since: str | None = None) -> str:
        return str(self._http.call("GET", f"/v1/sessions/{seg(session_id)}/diff",
                                   params={"since": since})["diff"])

    # --- checkpoints ---------------------------------------------------------------

    def checkpoints(self, session_id: str) -> list[dict[str, Any]]:
        """The session's checkpoints, oldest first (``id``, ``turn``, ``step``,
        ``reason``, ``ts``, ``files``, ...)."""
        return list(self._http.call("GET", f"/v1/sessions/{seg(session_id)}/checkpoints")
                    ["checkpoints"])

    def rewind(self, session_id: str, checkpoint: str, *, files: bool = True,
               conversation: bool = True) -> Any:
        """Back to a checkpoint (its files, the conversation as it was, or both); the
        ``rewind`` event, whose ``undo`` is the checkpoint that undoes it."""
        return self._as_event(self._http.call(
            "POST", f"/v1/sessions/{seg(session_id)}/rewind",
            json_body={"checkpoint": checkpoint, "files": files,
                       "conversation": conversation}))

    def fork(self, session_id: str, checkpoint: str, *, name: str | None = None) -> Any:
        """A new session as this one was at ``checkpoint``."""
        body: dict[str, Any] = {"checkpoint": checkpoint}
        if name:
            body["name"] = name
        return self._as_session(self._http.call(
            "POST", f"/v1/sessions/{seg(session_id)}/fork", json_body=body))

    def turn_diff(self, session_id: str, turn: int) -> str:
        """What turn ``turn`` (counted from 1) changed, as a unified diff."""
        return str(self._http.call("GET", f"/v1/sessions/{seg(session_id)}/turns/{turn}/diff")
                   ["diff"])

    def checkpoint_diff(self, session_id: str, base: str | None = None,
                        head: str | None = None) -> str:
        """What changed from checkpoint ``base`` to ``head`` (the latest by default;
        ``base`` by default the one before ``head``)."""
        params = {k: v for k, v in (("from", base), ("to", head)) if v}
        return str(self._http.call("GET", f"/v1/sessions/{seg(session_id)}/checkpoints/diff",
                                   params=params)["diff"])

    def secrets(self, session_id: str) -> list[str]:
        return list(self._http.call("GET", f"/v1/sessions/{seg(session_id)}/secrets")["names"])

    def set_secret(self, session_id: str, name: str, value: str) -> None:
        self._http.call("PUT", f"/v1/sessions/{seg(session_id)}/secrets/{seg(name)}",
                        json_body={"value": value})

    def delete_secret(self, session_id: str, name: str) -> None:
        self._http.call("DELETE", f"/v1/sessions/{seg(session_id)}/secrets/{seg(name)}")

    def export(self, session_id: str, dest: str | Path | BinaryIO, *,
               progress: Callable[[int], None] | None = None) -> int:
        """Stream the session's archive (tar.gz) into a file or a directory; returns the
        number of bytes. ``progress`` is called with the bytes received so far."""
        with self._http.open("GET", f"/v1/sessions/{seg(session_id)}/export",
                             read_timeout=None) as r:
            return write_archive(r.iter_bytes(), export_target(dest, session_id), progress)

    def import_session(self, archive: str | Path | BinaryIO, *,
                       name: str | None = None) -> Any:
        """A new session from an archive of ``export`` (a path or an open binary file):
        its settings, project with its git history, and events. ``name`` replaces the
        archive's name."""
        with open_archive(archive) as (f, size):
            return self._as_session(self._http.call(
                "POST", "/v1/sessions/import", params={"name": name}, content=f,
                headers={"Content-Type": "application/gzip", "Content-Length": str(size)},
                read_timeout=None))

    # --- the execution API ---------------------------------------------------------

    def execute(self, code: str, *, language: str = "python", timeout: int = 60,
                thread_id: str | None = None, env_vars: dict[str, str] | None = None,
                metadata: dict[str, str] | None = None, image: str | None = None) -> Any:
        body = execute_body(code, language, timeout, thread_id, env_vars, metadata, image)
        return self._as_result(self._http.call("POST", "/v1/sandbox/execute", json_body=body,
                                               read_timeout=timeout + 60))

    def execute_stream(self, code: str, *, language: str = "python", timeout: int = 60,
                       thread_id: str | None = None, env_vars: dict[str, str] | None = None,
                       metadata: dict[str, str] | None = None,
                       image: str | None = None) -> Iterator[dict[str, Any]]:
        """The execution's events: status, output (stream, data), keepalive, result."""
        body = execute_body(code, language, timeout, thread_id, env_vars, metadata, image)
        r = self._http.open("POST", "/v1/sandbox/execute", json_body=body,
                            headers={"Accept": NDJSON}, read_timeout=timeout + 60)
        return self._lines(r)

    def start_execution(self, code: str, *, language: str = "python", timeout: int = 60,
                        thread_id: str | None = None, env_vars: dict[str, str] | None = None,
                        metadata: dict[str, str] | None = None,
                        image: str | None = None) -> dict[str, Any]:
        """Start an execution and return at once: ``{"trace_id": ..., "status": "queued"}``."""
        body = execute_body(code, language, timeout, thread_id, env_vars, metadata, image)
        return dict(self._http.call("POST", "/v1/sandbox/execute", json_body=body,
                                    headers={"Prefer": "respond-async"}))

    def get_execution(self, trace_id: str) -> dict[str, Any]:
        return dict(self._http.call("GET", f"/v1/executions/{seg(trace_id)}"))

    def cancel_execution(self, trace_id: str) -> str:
        return str(self._http.call("POST", f"/v1/executions/{seg(trace_id)}/cancel")["status"])

    def list_threads(self) -> list[dict[str, Any]]:
        """Your threads: ``thread_id``, ``created_at``, ``last_used_at``, ``awake``."""
        return list(self._http.call("GET", "/v1/threads")["threads"])

    def delete_thread(self, thread_id: str) -> None:
        """Delete a thread with its files, for good (a busy one: ThreadBusyError)."""
        self._http.call("DELETE", f"/v1/threads/{seg(thread_id)}")

    def images(self) -> list[dict[str, Any]]:
        """The built-in images and yours, each with its status and box defaults."""
        return list(self._http.call("GET", "/v1/images")["images"])

    def create_image(self, name: str, base: str, *, apt: list[str] | None = None,
                     pip: list[str] | None = None, npm: list[str] | None = None,
                     run: list[str] | None = None, env: dict[str, str] | None = None,
                     allow: list[str] | None = None,
                     description: str | None = None) -> dict[str, Any]:
        """An image of yours on a built-in ``base``; its build starts now (follow it with
        ``image_log``). Sessions name it as ``base``, executions as ``image``."""
        return dict(self._http.call("POST", "/v1/images", json_body=image_body(
            name, base, apt, pip, npm, run, env, allow, description)))

    def get_image(self, name: str) -> dict[str, Any]:
        return dict(self._http.call("GET", f"/v1/images/{seg(name)}"))

    def image_log(self, name: str, after: int = 0) -> Iterator[dict[str, Any]]:
        """The build's log (``{"type": "image_log", "line", "text"}``), followed while
        it builds, then ``{"type": "image_status", "image": {...}}``, where it ends."""
        with self._http.open("GET", f"/v1/images/{seg(name)}/log", params={"after": after},
                             read_timeout=None) as r:
            parser = SSEParser()
            for line in r.iter_lines():
                for data in parser.feed(line):
                    event = json.loads(data)
                    yield event
                    if event["type"] == "image_status":
                        return

    def delete_image(self, name: str) -> None:
        self._http.call("DELETE", f"/v1/images/{seg(name)}")

    def create_volume(self, name: str, size_mb: int | None = None) -> dict[str, Any]:
        """A named volume, mounted read-write at /data/<name>/ in your boxes."""
        body: dict[str, Any] = {"name": name}
        if size_mb is not None:
            body["size_mb"] = size_mb
        return dict(self._http.call("POST", "/v1/volumes", json_body=body))

    def list_volumes(self) -> list[dict[str, Any]]:
        return list(self._http.call("GET", "/v1/volumes")["volumes"])

    def delete_volume(self, name: str) -> None:
        self._http.call("DELETE", f"/v1/volumes/{seg(name)}")

    def create_connector(self, name: str, type: str, value: str | None = None, *,
                         host: str | None = None, header: str | None = None,
                         execute: bool = False, keys: list[str] | None = None,
                         push: list[str] | None = None) -> dict[str, Any]:
        """A credential the egress door sends for your boxes (``type``: github,
        anthropic or http); the answer never holds the value. ``execute``: the execution
        API's executions of all your keys get it too; ``keys``: only those keys'."""
        return dict(self._http.call("POST", "/v1/connectors", json_body=connector_body(
            name, type, value, host, header, execute, push, keys)))

    def update_connector(self, name: str, *, execute: bool | None = None,
                         keys: list[str] | None = None) -> dict[str, Any]:
        """Which executions get the connector: every key's (``execute=True``), some
        keys' (``keys``), or none (``execute=False``)."""
        return dict(self._http.call("PATCH", f"/v1/connectors/{seg(name)}",
                                    json_body=attachment_body(execute, keys)))

    def cluster(self) -> dict[str, Any]:
        """The nodes on this server's database, alive or not, with their load (admins)."""
        return dict(self._http.call("GET", "/v1/cluster"))

    def drain(self, node_id: str, draining: bool = True) -> dict[str, Any]:
        """Drain a node (admins): no new work goes there, and its sessions move on
        between turns; ``draining=False`` undoes it. The node as it now is."""
        return dict(self._http.call("POST", f"/v1/cluster/nodes/{node_id}/drain",
                                    json_body={"draining": draining}))

    def keys(self) -> list[dict[str, Any]]:
        """Your API keys: id, first characters, and whether this client uses it."""
        return list(self._http.call("GET", "/v1/keys")["keys"])

    def connectors(self) -> list[dict[str, Any]]:
        """Your connectors: names, types and hosts, never their values."""
        return list(self._http.call("GET", "/v1/connectors")["connectors"])

    def delete_connector(self, name: str) -> None:
        self._http.call("DELETE", f"/v1/connectors/{seg(name)}")

    def rotate_webhook_secret(self) -> str:
        """A new signing secret for your execution webhooks (``whsec_...``), shown this
        once; deliveries from now on are signed with it."""
        return str(self._http.call("POST", "/v1/webhooks/secret")["secret"])

    def execution_output(self, trace_id: str, after_seq: int = 0) -> Iterator[dict[str, Any]]:
        """An execution's events after ``after_seq``: live while it runs, then its record."""
        r = self._http.open("GET", f"/v1/executions/{seg(trace_id)}/output",
                            params={"after_seq": after_seq}, read_timeout=None)
        return self._lines(r)


def connector_body(name: str, type: str, value: str | None, host: str | None,
                   header: str | None, execute: bool, push: list[str] | None,
                   keys: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "type": type, "execute": execute}
    for key, given in (("value", value), ("host", host), ("header", header),
                       ("push", push), ("keys", keys)):
        if given is not None:
            body[key] = given
    return body


def attachment_body(execute: bool | None, keys: list[str] | None) -> dict[str, Any]:
    return {k: v for k, v in (("execute", execute), ("keys", keys)) if v is not None}


@contextlib.contextmanager
def open_archive(archive: str | Path | BinaryIO) -> Iterator[tuple[BinaryIO, int]]:
    """An archive to send, and its size from where it is read."""
    if isinstance(archive, str | Path):
        with open(archive, "rb") as f:
            yield f, os.fstat(f.fileno()).st_size
        return
    start = archive.tell()
    size = archive.seek(0, os.SEEK_END) - start
    archive.seek(start)
    yield archive, size


def export_target(dest: str | Path | BinaryIO, session_id: str) -> Path | BinaryIO:
    """A directory (made if need be) or a path ending in .tar.gz; or an open file."""
    if not isinstance(dest, str | Path):
        return dest
    target = Path(dest)
    if target.is_dir() or not target.name.endswith((".tar.gz", ".tgz")):
        target.mkdir(parents=True, exist_ok=True)
        target = target / f"{session_id}.tar.gz"
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def write_archive(chunks: Iterator[bytes], target: Path | BinaryIO,
                  progress: Callable[[int], None] | None) -> int:
    """Write the chunks; into a file, through ``NAME.part`` so that only a complete
    archive ever takes the name (a failed one leaves nothing)."""
    if not isinstance(target, Path):
        return _copy(chunks, target, progress)
    partial = target.with_name(target.name + ".part")
    try:
        with open(partial, "wb") as out:
            total = _copy(chunks, out, progress)
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return total


def _copy(chunks: Iterator[bytes], out: BinaryIO,
          progress: Callable[[int], None] | None) -> int:
    total = 0
    for chunk in chunks:
        out.write(chunk)
        total += len(chunk)
        if progress is not None:
            progress(total)
    return total
