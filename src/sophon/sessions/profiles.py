"""Bases: what a session's sandbox offers. With images (sophon.images, the default) a
base is its image, built from Debian's packages; without them (SOPHON_IMAGES=host, or a
server that cannot make images) a base is a profile over the host's own /usr, available
exactly when the host has its toolchain. An unknown base, or one this server cannot
offer, is refused when the session is created, with the reason.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from sophon.errors import BadRequest
from sophon.images.definitions import BUILTIN
from sophon.images.store import ImageStore

BOX_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class BaseProfile:
    name: str
    description: str  # on the host's /usr
    tools: tuple[str, ...]

    def missing(self) -> list[str]:
        return [t for t in self.tools if shutil.which(t, path=BOX_PATH) is None]


PROFILES = {
    p.name: p
    for p in (
        BaseProfile("generic", "bash, coreutils, git", ("bash", "git")),
        BaseProfile("python", "python3 with pip, git", ("python3", "git")),
        BaseProfile("node", "node and npm, git", ("node", "npm", "git")),
        BaseProfile("dotnet", "the .NET SDK, git", ("dotnet", "git")),
    )
}


def describe(name: str, images: ImageStore | None) -> tuple[str, str | None]:
    """A base's description and, if this server cannot offer it, why."""
    profile = PROFILES[name]
    if images is not None:
        image = BUILTIN[name]
        return image.description, image.unavailable
    missing = profile.missing()
    return profile.description, (f"this host has no {', '.join(missing)}" if missing
                                 else None)


def resolve(name: str, images: ImageStore | None) -> None:
    """A 400 for a base that is unknown or that this server cannot offer."""
    if name not in PROFILES:
        raise BadRequest(f"unknown base {name!r}; choose one of: {', '.join(PROFILES)}")
    _, reason = describe(name, images)
    if reason is not None:
        raise BadRequest(f"base {name!r} is not available on this server: {reason}; "
                         "choose another base")
