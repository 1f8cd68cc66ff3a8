"""Wire models of the Baponi-compatible execution API."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

MAX_CODE_BYTES = 1024 * 1024
# Names are checked as whole strings (``fullmatch``): with ``re.match`` and ``$``, a
# trailing newline would pass ("abc\n" a different thread from "abc"). The same
# patterns go into the OpenAPI document, where ``^...$`` also means the whole string.
THREAD_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"
ENV_KEY_PATTERN = r"^[A-Z][A-Z0-9_]{0,127}$"
METADATA_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,39}$"
THREAD_ID = re.compile(THREAD_ID_PATTERN.strip("^$"))
ENV_KEY = re.compile(ENV_KEY_PATTERN.strip("^$"))
METADATA_KEY = re.compile(METADATA_KEY_PATTERN.strip("^$"))
VOLUME_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
VOLUME_NAME = re.compile(VOLUME_NAME_PATTERN.strip("^$"))
SUB_PATH_PATTERN = r"^/data/[a-z0-9][a-z0-9-]{0,62}(/.*)?$"


def split_sub_path(path: str) -> tuple[str, str]:
    """``/data/<volume>/<sub>`` as (volume name, sub-path without ``.`` parts); ValueError
    for anything else (``..``, NUL, another directory)."""
    parts = [p for p in path.removeprefix("/data/").split("/") if p not in ("", ".")]
    if not path.startswith("/data/") or not parts or not VOLUME_NAME.fullmatch(parts[0]) \
            or ".." in parts or "\x00" in path or "\\" in path:
        raise ValueError(f"sub_path {path!r} must be /data/<volume>/<path>, without '..'")
    return parts[0], "/".join(parts[1:])


def whole_seconds(v: Any) -> Any:
    """A number of seconds is a JSON integer: not a string ("10"), not a boolean (true
    would otherwise count as 1), not a float. Checked before pydantic's lax coercion."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"must be a whole number of seconds (an integer), not {_kind(v)}")
    return v


def _kind(v: Any) -> str:
    names = {bool: "a boolean", str: "a string", float: "a number with a decimal point",
             type(None): "null", list: "a list", dict: "an object"}
    return names.get(type(v), type(v).__name__)


Seconds = Annotated[int, BeforeValidator(whole_seconds)]


# Variables a caller may not set: they would change how the sandbox itself works.
RESERVED_ENV = frozenset({
    "PATH", "HOME", "TMPDIR", "PWD", "OLDPWD", "SHELL", "USER", "LOGNAME", "LANG",
    "LANGUAGE", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE",
    "BASH_ENV", "ENV", "IFS", "NODE_OPTIONS", "NODE_PATH",
})
RESERVED_ENV_PREFIXES = ("SOPHON_", "LD_", "LC_", "BAPONI_")

Language = Literal["python", "bash", "node"]
Status = Literal["queued", "running", "success", "failed", "timeout", "cancelled", "oom"]
WebhookDelivery = Literal["pending", "delivered", "failed"]
TERMINAL: frozenset[str] = frozenset({"success", "failed", "timeout", "cancelled", "oom"})


def check_env(v: dict[str, str]) -> dict[str, str]:
    """Variables a caller gives a sandbox (an execution's ``env_vars``, an image's build
    ``env``): at most 50, named as shells name them, none the sandbox reserves, 64 KiB
    in all."""
    if len(v) > 50:
        raise ValueError("more than 50 environment variables")
    total = 0
    for key, value in v.items():
        if not ENV_KEY.fullmatch(key):
            raise ValueError(
                f"environment variable {key!r}: names are uppercase letters, digits "
                "and '_', starting with a letter"
            )
        if key in RESERVED_ENV or key.startswith(RESERVED_ENV_PREFIXES):
            raise ValueError(f"environment variable {key!r} is reserved by the sandbox")
        if "\x00" in value or len(value) > 4096:
            raise ValueError(f"environment variable {key!r} has an invalid value")
        total += len(key) + len(value)
    if total > 65536:
        raise ValueError("environment variables exceed 64 KiB in total")
    return v


class ExecuteRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    code: str = Field(min_length=1)
    language: Language = "python"
    timeout: Seconds = Field(60, ge=1, le=3600)
    thread_id: str | None = Field(None, json_schema_extra={"pattern": THREAD_ID_PATTERN})
    metadata: dict[str, str] | None = Field(None, json_schema_extra={
        "maxProperties": 10, "propertyNames": {"pattern": METADATA_KEY_PATTERN}})
    env_vars: dict[str, str] | None = Field(None, json_schema_extra={
        "maxProperties": 50, "propertyNames": {"pattern": ENV_KEY_PATTERN}})
    # POSTed the execution's status when it ends, signed (sophon.webhooks).
    webhook_url: str | None = Field(None, max_length=2048)
    # Narrow the volumes this execution sees to these paths (docs/ARCHITECTURE.md,
    # "Volumes"): only they are mounted, each at its own path.
    sub_paths: list[str] | None = Field(None, max_length=10, json_schema_extra={
        "items": {"type": "string", "maxLength": 1024, "pattern": SUB_PATH_PATTERN}})
    # Sophon's own: the image the box runs on (a built-in one, or one of the caller's
    # from POST /v1/images); a thread keeps the image it was made with.
    image: str | None = Field(None, max_length=63, json_schema_extra={
        "pattern": r"^[a-z0-9][a-z0-9-]{0,62}$"})

    @field_validator("sub_paths")
    @classmethod
    def _sub_paths(cls, v: list[str] | None) -> list[str] | None:
        for path in v or ():
            if len(path) > 1024:
                raise ValueError("a sub_path is longer than 1024 characters")
            split_sub_path(path)
        return v

    @field_validator("code")
    @classmethod
    def _code_size(cls, v: str) -> str:
        if len(v.encode()) > MAX_CODE_BYTES:
            raise ValueError(f"code is larger than {MAX_CODE_BYTES} bytes")
        if "\x00" in v:
            raise ValueError("code contains a NUL byte")
        return v

    @field_validator("thread_id")
    @classmethod
    def _thread(cls, v: str | None) -> str | None:
        if v is not None and not THREAD_ID.fullmatch(v):
            raise ValueError(
                "thread_id must be 1-128 characters: letters, digits, '-' or '_', "
                "starting with a letter or digit"
            )
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        if len(v) > 10:
            raise ValueError("metadata has more than 10 keys")
        for key, value in v.items():
            if not METADATA_KEY.fullmatch(key):
                raise ValueError(f"metadata key {key!r} is not valid")
            if len(value) > 256:
                raise ValueError(f"metadata value for {key!r} is longer than 256 characters")
        return v

    @field_validator("env_vars")
    @classmethod
    def _env(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        return v if v is None else check_env(v)


class SandboxResult(BaseModel):
    success: bool
    stdout: str
    stderr: str
    exit_code: int
    error: str | None = None
    # stdout or stderr was cut at the output cap (Baponi's clients ignore the field).
    output_truncated: bool = False


class ExecutionStatus(BaseModel):
    trace_id: str
    status: Status
    exit_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None
    error: str | None = None
    duration_ms: int = 0
    delivery_mode: str = "inline"
    created_at: str
    completed_at: str | None = None
    output_truncated: bool = False
    thread_id: str | None = None
    metadata: dict[str, str] | None = None
    webhook_url: str | None = None
    # None without a webhook_url.
    webhook_delivery_status: WebhookDelivery | None = None


class Accepted(BaseModel):
    trace_id: str
    status: Status
