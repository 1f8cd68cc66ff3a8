"""Wire models of the Baponi-compatible execution API."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_CODE_BYTES = 1024 * 1024
THREAD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
ENV_KEY = re.compile(r"^[A-Z][A-Z0-9_]{0,127}$")
METADATA_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,39}$")

# Variables a caller may not set: they would change how the sandbox itself works.
RESERVED_ENV = frozenset({
    "PATH", "HOME", "TMPDIR", "PWD", "OLDPWD", "SHELL", "USER", "LOGNAME", "LANG",
    "LANGUAGE", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE",
    "BASH_ENV", "ENV", "IFS", "NODE_OPTIONS", "NODE_PATH",
})
RESERVED_ENV_PREFIXES = ("SOPHON_", "LD_", "LC_", "BAPONI_")

Language = Literal["python", "bash", "node"]
Status = Literal["queued", "running", "success", "failed", "timeout", "cancelled", "oom"]
TERMINAL: frozenset[str] = frozenset({"success", "failed", "timeout", "cancelled", "oom"})


class ExecuteRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    code: str = Field(min_length=1)
    language: Language = "python"
    timeout: int = Field(60, ge=1, le=3600)
    thread_id: str | None = None
    metadata: dict[str, str] | None = None
    env_vars: dict[str, str] | None = None

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
        if v is not None and not THREAD_ID.match(v):
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
            if not METADATA_KEY.match(key):
                raise ValueError(f"metadata key {key!r} is not valid")
            if len(value) > 256:
                raise ValueError(f"metadata value for {key!r} is longer than 256 characters")
        return v

    @field_validator("env_vars")
    @classmethod
    def _env(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        if len(v) > 50:
            raise ValueError("more than 50 environment variables")
        total = 0
        for key, value in v.items():
            if not ENV_KEY.match(key):
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


class SandboxResult(BaseModel):
    success: bool
    stdout: str
    stderr: str
    exit_code: int
    error: str | None = None


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


class Accepted(BaseModel):
    trace_id: str
    status: Status
