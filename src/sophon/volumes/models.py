"""The volumes API's wire shapes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from sophon.sandbox.models import VOLUME_NAME_PATTERN


class VolumeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=VOLUME_NAME_PATTERN,
                      description="Lowercase letters, digits and '-'; mounted at /data/<name>/")
    size_mb: int | None = Field(None, ge=16, description="Its quota; by default "
                                "SOPHON_BOX_DISK_MB, at most SOPHON_BOX_DISK_MAX_MB")


class VolumeView(BaseModel):
    name: str
    mount_path: str
    size_mb: int
    used_bytes: int | None = None
    created_at: str


class VolumeList(BaseModel):
    volumes: list[VolumeView]
