"""What a new session's workspace starts from: nothing, a template, or a git clone.

Everything happens inside the box: templates are written through boxd, and a clone
runs ``git`` in the box against the source mounted read-only at /mnt/source. The
workspace is a git repository with at least one commit when this is done.
"""

from __future__ import annotations

import os
from pathlib import Path

from sophon.box.box import Box, ExecEvent, ExecOutcome
from sophon.box.bwrap import WORKSPACE
from sophon.config import Settings
from sophon.errors import BadRequest, NetworkDisabled
from sophon.sessions.models import EmptyStarter, GitStarter, TemplateStarter

TEMPLATES = Path(__file__).with_name("templates")
SOURCE_MOUNT = "/mnt/source"
GIT_IDENTITY = ["-c", "user.name=Sophon", "-c", "user.email=sophon@localhost"]




def templates() -> list[str]:
    return sorted(p.name for p in TEMPLATES.iterdir() if p.is_dir())


def validate_starter(starter: EmptyStarter | GitStarter | TemplateStarter,
                     settings: Settings) -> str | None:
    """Refuse a starter that cannot work; for a local clone, the host path to mount."""
    if isinstance(starter, TemplateStarter):
        if starter.name not in templates():
            raise BadRequest(f"unknown template {starter.name!r}; "
                             f"available: {', '.join(templates())}")
        return None
    if not isinstance(starter, GitStarter):
        return None
    url = starter.url.removeprefix("file://")
    if not url.startswith("/"):
        raise NetworkDisabled(
            "sandboxes on this server have no network, so a clone from a URL cannot work; "
            "clone from a local path or file:// URL instead")
    path = Path(url)
    roots = [r.resolve() for r in settings.git_local_roots]
    if roots:
        real = path.resolve()
        if not any(real == r or r in real.parents for r in roots):
            raise BadRequest(f"{url} is not under a directory this server allows clones "
                             f"from (SOPHON_GIT_LOCAL_ROOTS)")
    if os.geteuid() != 0:
        # Boxes of an unprivileged server run as the server's own uid, which can read
        # its data; a root server clones in a staging box that cannot (see service).
        data = settings.data_dir.resolve()
        real = path.resolve()
        if real == data or data in real.parents or real in data.parents:
            raise BadRequest("the server's data directory cannot be cloned")
    if not path.is_dir():
        raise BadRequest(f"{url} is not a directory on this server")
    return str(path)


async def _run(box: Box, argv: list[str], env: dict[str, str], what: str) -> None:
    err: list[str] = []
    outcome = None
    async for ev in box.exec(argv, timeout=600, env=env, cwd=WORKSPACE, output_cap=65536):
        if isinstance(ev, ExecEvent):
            if ev.stream == "stderr":
                err.append(ev.data)
        elif isinstance(ev, ExecOutcome):
            outcome = ev
    if outcome is None or outcome.exit_code != 0:
        detail = "".join(err).strip()[-2000:] or "no output"
        raise BadRequest(f"{what} failed: {detail}")


# The source belongs to another uid inside a box, which git refuses unless told it is
# safe. Command-line config does not reach the upload-pack of a local clone, so a clone
# gets a global config file of its own.
_CLONE_CONFIG = ("/tmp", ".sophon-clone.gitconfig", b"[safe]\n\tdirectory = *\n")


async def _clone(box: Box, source: str, dest: str, ref: str | None,
                 env: dict[str, str]) -> None:
    await box.write_path(*_CLONE_CONFIG)
    argv = ["git", "clone", "--no-hardlinks", "-q"]
    if ref:
        argv += ["--branch", ref]
    await _run(box, [*argv, "--", source, dest],
               {**env, "GIT_CONFIG_GLOBAL": "/".join(_CLONE_CONFIG[:2])}, "git clone")


async def stage_clone(staging: Box, starter: GitStarter, env: dict[str, str]) -> None:
    """In the staging box: clone the user's path (at SOURCE_MOUNT) to /workspace/repo."""
    await _clone(staging, SOURCE_MOUNT, f"{WORKSPACE}/repo", starter.ref, env)
    # The session's box runs as another uid: it must be able to read the copy.
    await _run(staging, ["chmod", "-R", "a+rX", f"{WORKSPACE}/repo"], env, "chmod")


async def prepare_workspace(box: Box, starter: EmptyStarter | GitStarter | TemplateStarter,
                            env: dict[str, str]) -> None:
    if isinstance(starter, GitStarter):
        # SOURCE_MOUNT holds the staging box's workspace; its clone already has the ref.
        await _clone(box, f"{SOURCE_MOUNT}/repo", ".", None, env)
        await _run(box, ["git", "remote", "remove", "origin"], env, "git remote")
        return
    if isinstance(starter, TemplateStarter):
        root = TEMPLATES / starter.name
        for f in sorted(root.rglob("*")):
            if f.is_file():
                await box.write_path(WORKSPACE, str(f.relative_to(root)), f.read_bytes())
    await _run(box, ["git", "init", "-q", "-b", "main"], env, "git init")
    await _run(box, ["git", "add", "-A"], env, "git add")
    await _run(box, ["git", *GIT_IDENTITY, "commit", "-q", "--allow-empty", "-m",
                     "Initial commit"], env, "git commit")
