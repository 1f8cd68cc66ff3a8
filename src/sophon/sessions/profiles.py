"""Base images: named profiles of what a session's sandbox offers.

A box sees the host's /usr read-only, so a profile is available exactly when the
host has its toolchain. An unknown base, or one this host cannot offer, is refused
when the session is created, with the reason.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from sophon.errors import BadRequest

BOX_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class BaseProfile:
    name: str
    description: str
    tools: tuple[str, ...]
    network: bool = False  # no base has network yet: boxes get loopback only

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


def resolve(name: str) -> BaseProfile:
    profile = PROFILES.get(name)
    if profile is None:
        raise BadRequest(f"unknown base {name!r}; choose one of: {', '.join(PROFILES)}")
    missing = profile.missing()
    if missing:
        raise BadRequest(f"base {name!r} needs {', '.join(missing)}, which this host does not "
                         "have; install it or choose another base")
    return profile
