"""All configuration in one place: environment variables prefixed ``SOPHON_``."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    # Root's home is closed to other users, and sandboxes run as an unprivileged
    # host uid that must reach its own files: a root server keeps data in /var/lib.
    if os.geteuid() == 0:
        return Path("/var/lib/sophon")
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "sophon"


class BoxLimits(BaseSettings):
    """Resource limits applied to every box (per box, not per exec)."""

    model_config = SettingsConfigDict(env_prefix="SOPHON_BOX_", extra="ignore")

    memory_mb: int = Field(512, ge=16, description="memory limit (cgroup), MiB")
    cpus: float = Field(1.0, gt=0, description="CPU quota, in cores")
    pids: int = Field(256, ge=8, description="maximum number of processes")
    tmp_mb: int = Field(64, ge=1, description="size of the private /tmp, MiB")
    output_cap_bytes: int = Field(1024 * 1024, ge=1024, description="per stream, per exec")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SOPHON_", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir)
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8765
    log_level: str = "info"

    # The host uid that box processes run as when the server runs as root.
    # Never root: a box's own uid inside its user namespace maps to this one.
    box_host_uid: int = 60000
    box_backend: str = "bwrap"
    box_python: str = "/usr/bin/python3"
    box_pool_size: int = Field(2, ge=0, description="started, empty boxes kept ready")
    thread_idle_seconds: float = 600.0
    idle_check_seconds: float = 15.0
    limits: BoxLimits = Field(default_factory=BoxLimits)

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'sophon.db'}"

    @property
    def boxes_dir(self) -> Path:
        return self.data_dir / "boxes"

    @property
    def runtime_dir(self) -> Path:
        return self.data_dir / "runtime"


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]
