"""Wire models of the images API."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sophon.images.definitions import BUILTIN
from sophon.images.store import ImageView
from sophon.sandbox.models import check_env

IMAGE_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
IMAGE_NAME = re.compile(IMAGE_NAME_PATTERN.strip("^$"))
# Debian's package names (policy 5.6.1), with an optional "=version".
APT_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]{1,100}(=[A-Za-z0-9.+~:-]{1,100})?")
# A pip requirement or an npm package spec: no option (a leading '-'), no whitespace.
PACKAGE_SPEC = re.compile(r"[^\s-][^\s]{0,199}")


class CreateImage(BaseModel):
    """A user's image: a built-in base and what is added to it. Debian packages come in
    with the base's (from the server's Debian mirror); then pip packages, npm packages
    and the ``run`` steps, in that order, in a build box on the new root (as a box's
    user, through the egress door with the base's hosts and ``allow``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(json_schema_extra={"pattern": IMAGE_NAME_PATTERN})
    base: str = Field(alias="from", description="the built-in image it builds on")
    description: str = Field("", max_length=200)
    apt: list[str] = Field([], max_length=100)
    pip: list[str] = Field([], max_length=100)
    npm: list[str] = Field([], max_length=100)
    run: list[str] = Field([], max_length=50,
                           json_schema_extra={"items": {"type": "string", "maxLength": 10000}})
    env: dict[str, str] = Field({}, description="variables the build steps see (not for "
                                "secrets: the image's definition is shown back)")
    allow: list[str] = Field([], max_length=50, description="hosts the build steps may "
                             "reach beyond the base's own (within the server's ceiling)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not IMAGE_NAME.fullmatch(v):
            raise ValueError("an image's name is 1-63 characters: lower-case letters, "
                             "digits and '-', starting with a letter or digit")
        if v in BUILTIN:
            raise ValueError(f"{v!r} is a built-in image's name; choose another")
        return v

    @field_validator("base")
    @classmethod
    def _base(cls, v: str) -> str:
        if v not in BUILTIN:
            raise ValueError(f"unknown base image {v!r}; an image builds on one of: "
                             f"{', '.join(BUILTIN)}")
        return v

    @field_validator("apt")
    @classmethod
    def _apt(cls, v: list[str]) -> list[str]:
        for name in v:
            if not APT_PACKAGE.fullmatch(name):
                raise ValueError(f"{name!r} is not a Debian package name")
        return v

    @field_validator("pip", "npm")
    @classmethod
    def _packages(cls, v: list[str]) -> list[str]:
        for spec in v:
            if not PACKAGE_SPEC.fullmatch(spec):
                raise ValueError(f"{spec!r} is not a package: no options (a leading '-') "
                                 "and no spaces; set an index with env instead")
        return v

    @field_validator("run")
    @classmethod
    def _run(cls, v: list[str]) -> list[str]:
        for step in v:
            if not step.strip() or len(step) > 10000 or "\x00" in step:
                raise ValueError("a run step is a shell command of 1-10000 characters")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        return check_env(v)


class ImageList(BaseModel):
    images: list[ImageView]
