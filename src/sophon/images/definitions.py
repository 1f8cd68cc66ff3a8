"""What each built-in image holds, and the digest that names a built image: the same
definition always builds to the same directory, a changed one to a new one."""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass, field

# Bumped when what a build does beyond the definition changes (the finishing steps in
# builder.py), so every image is built again.
BUILD_FORMAT = 1
SUITE = "bookworm"

# boxd, the agent in every box, is a Python program: every image has the interpreter.
BOX_NEEDS = ("python3",)
GENERIC = ("bash", "coreutils", "git", "curl", "wget", "ca-certificates", "less", "procps")


@dataclass(frozen=True)
class ImageDef:
    name: str
    description: str
    packages: tuple[str, ...]
    suite: str = SUITE
    # Why the image cannot be had on this server, if it cannot (it is then listed, never
    # built, and a session of its base is refused with this reason).
    unavailable: str | None = field(default=None, compare=False)
    # A user's image (sophon/images/service.py): the built-in it builds on, and what runs
    # in a build box over that root after its packages are in (pip and npm packages,
    # shell steps, in order), with these variables and the hosts these steps may reach
    # beyond the base's own list.
    base: str | None = None
    pip: tuple[str, ...] = ()
    npm: tuple[str, ...] = ()
    run: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    allow: tuple[str, ...] = ()

    @property
    def steps(self) -> list[str]:
        """The shell commands the build box runs, in order."""
        out = []
        if self.pip:
            out.append("python3 -m pip install --no-cache-dir --break-system-packages "
                       "--root-user-action=ignore " + " ".join(map(shlex.quote, self.pip)))
        if self.npm:
            out.append("npm install --global --prefix /usr/local --no-fund --no-audit "
                       + " ".join(map(shlex.quote, self.npm)))
        return [*out, *self.run]

    @property
    def digest(self) -> str:
        spec: dict[str, object] = {"format": BUILD_FORMAT, "suite": self.suite,
                                   "packages": sorted(set(self.packages) | set(BOX_NEEDS))}
        if self.steps:  # an image without steps is named by its packages alone
            spec.update(steps=self.steps, env=sorted(self.env), allow=sorted(self.allow))
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]


BUILTIN: dict[str, ImageDef] = {d.name: d for d in (
    ImageDef("generic", "bash, coreutils, git, curl, wget, less, procps", GENERIC),
    ImageDef("python", "python3 with pip, venv, pytest and requests, gcc and the headers "
             "for wheels",
             (*GENERIC, "python3-pip", "python3-venv", "python3-pytest", "python3-requests",
              "python3-dev", "gcc", "libc6-dev", "make")),
    ImageDef("node", "Debian's nodejs and npm, with TypeScript (node --test runs tests)",
             (*GENERIC, "nodejs", "npm", "node-typescript")),
    ImageDef("dotnet", "the .NET SDK", (*GENERIC,),
             unavailable="no .NET SDK is in Debian's packages, which is where this server "
                         "builds its images from"),
)}
