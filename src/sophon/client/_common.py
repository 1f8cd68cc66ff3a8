"""What the clients share: configuration, errors, request shapes, SSE.

Standard library only: the CLI imports this on every run, so it must stay cheap.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8765"
# Waits between reconnections of an events stream (the last one repeats).
RECONNECT_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "sophon" / "config.json"


def load_config() -> dict[str, str]:
    try:
        data = json.loads(config_path().read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}


def save_config(url: str, api_key: str) -> Path:
    """Write the CLI's config (mode 0600: it holds a key)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "api_key": api_key}, f, indent=2)
    path.chmod(0o600)
    return path


def resolve(base_url: str | None, api_key: str | None) -> tuple[str, str]:
    """Arguments first, then SOPHON_URL / SOPHON_API_KEY, then `sophon login`'s file."""
    saved = load_config()
    url = base_url or os.environ.get("SOPHON_URL") or saved.get("url") or DEFAULT_URL
    key = api_key or os.environ.get("SOPHON_API_KEY") or saved.get("api_key")
    if not key:
        raise AuthenticationError(
            "no API key: pass api_key=, set SOPHON_API_KEY, or run `sophon login`", 401,
            "unauthorized")
    return url.rstrip("/"), key


# --- errors ---------------------------------------------------------------------


class SophonAPIError(Exception):
    """An error answer from the server: ``status``, machine ``code``, a sentence."""

    def __init__(self, message: str, status: int = 0, code: str = "error",
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        # Seconds the server said to wait before trying again (Retry-After), if it did.
        self.retry_after = retry_after


class BadRequestError(SophonAPIError):
    pass


class AuthenticationError(SophonAPIError):
    pass


class NotFoundError(SophonAPIError):
    pass


class ConflictError(SophonAPIError):
    pass


class PreconditionFailedError(SophonAPIError):
    pass


class LimitExceededError(SophonAPIError):
    """429: a per-user limit (boxes awake, executions at once, disk, event rate) is
    reached; the message names it and its setting."""


class ServerError(SophonAPIError):
    pass


class ConnectionFailed(SophonAPIError):
    """The server could not be reached at all."""


_BY_STATUS = {400: BadRequestError, 401: AuthenticationError, 404: NotFoundError,
              409: ConflictError, 412: PreconditionFailedError, 428: PreconditionFailedError,
              429: LimitExceededError}


def error_for(status: int, body: bytes, retry_after: str | None = None) -> SophonAPIError:
    """The typed exception for an error answer (the API's ``{error, message}``)."""
    try:
        data = json.loads(body)
        code, message = str(data.get("error", "error")), str(data.get("message", data))
    except (ValueError, AttributeError):
        code = "error"
        message = body.decode("utf-8", "replace").strip() or f"HTTP {status}"
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else SophonAPIError)
    wait = float(retry_after) if retry_after and retry_after.strip().isdigit() else None
    return cls(message, status, code, wait)


def unreachable(url: str, exc: BaseException) -> ConnectionFailed:
    if isinstance(exc, TimeoutError) or "Timeout" in exc.__class__.__name__:
        return ConnectionFailed(f"the Sophon server at {url} did not answer in time "
                                f"({exc.__class__.__name__})")
    return ConnectionFailed(f"cannot reach the Sophon server at {url} ({exc.__class__.__name__})"
                            "; is it running? (sophon serve)")


# --- request shapes ----------------------------------------------------------------


def session_body(name: str, *, base: str, model: str, system_prompt: str | None,
                 template: str | None, clone: str | None, ref: str | None, runtime: str,
                 approval: dict[str, Any] | None, max_turns: int | None,
                 max_budget_usd: float | None, network: dict[str, Any] | None = None,
                 connectors: list[str] | None = None,
                 mcp_servers: list[dict[str, Any]] | None = None,
                 limits: dict[str, Any] | None = None,
                 disk_mb: int | None = None) -> dict[str, Any]:
    """A session's create body. ``network``: {"allow": ["host[:port]", "*.domain"],
    "ask": bool}; ``connectors``: names of the caller's connectors the box uses;
    ``mcp_servers``: [{"name", "command": [...], "env"?}] whose tools the agent gets;
    ``limits``: {"memory_mb", "cpus", "pids"} instead of the base's defaults."""
    if template and clone:
        raise ValueError("give a template or a clone URL, not both")
    starter: dict[str, Any] = {"type": "empty"}
    if template:
        starter = {"type": "template", "name": template}
    elif clone:
        starter = {"type": "git", "url": clone, **({"ref": ref} if ref else {})}
    body: dict[str, Any] = {"name": name, "starter": starter, "base": base, "model": model,
                            "runtime": runtime}
    for key, value in (("system_prompt", system_prompt), ("approval", approval),
                       ("max_turns", max_turns), ("max_budget_usd", max_budget_usd),
                       ("network", network), ("connectors", connectors),
                       ("mcp_servers", mcp_servers), ("limits", limits),
                       ("disk_mb", disk_mb)):
        if value is not None:
            body[key] = value
    return body


def execute_body(code: str, language: str, timeout: int, thread_id: str | None,
                 env_vars: dict[str, str] | None,
                 metadata: dict[str, str] | None, image: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "language": language, "timeout": timeout}
    for key, value in (("thread_id", thread_id), ("env_vars", env_vars),
                       ("metadata", metadata), ("image", image)):
        if value is not None:
            body[key] = value
    return body


def image_body(name: str, base: str, apt: list[str] | None, pip: list[str] | None,
               npm: list[str] | None, run: list[str] | None, env: dict[str, str] | None,
               allow: list[str] | None, description: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "from": base}
    for key, value in (("apt", apt), ("pip", pip), ("npm", npm), ("run", run), ("env", env),
                       ("allow", allow), ("description", description)):
        if value is not None:
            body[key] = value
    return body


# --- server-sent events --------------------------------------------------------------


@dataclass
class SSEParser:
    """Feeds lines, yields each complete event's data (comments and heartbeats skipped)."""

    data: list[str] | None = None

    def feed(self, line: str) -> Iterator[str]:
        if line == "":
            if self.data:
                yield "\n".join(self.data)
            self.data = None
        elif line.startswith(":"):
            return
        else:
            field, _, value = line.partition(":")
            if field == "data":
                self.data = [*(self.data or []), value.removeprefix(" ")]


def split_lines(chunks: Iterator[bytes]) -> Iterator[str]:
    """Lines (without their ending) from a stream of byte chunks, as they complete."""
    rest = b""
    for chunk in chunks:
        rest += chunk
        if b"\n" not in chunk:
            continue
        *lines, rest = rest.split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r").decode("utf-8", "replace")
    if rest:
        yield rest.rstrip(b"\r").decode("utf-8", "replace")
