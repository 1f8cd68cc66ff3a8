"""What a new session's workspace starts from: nothing, a template, or a git clone.

Everything happens inside the box: templates are written through boxd, and a clone
runs ``git`` in the box against the source mounted read-only at /mnt/source. The
workspace is a git repository with at least one commit when this is done.
"""

from __future__ import annotations

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
    url = starter.url
    if url.startswith("file://"):
        url = url.removeprefix("file://")
    if not url.startswith("/"):
        raise NetworkDisabled(
            "sandboxes on this server have no network, so a clone from a URL cannot work; "
            "clone from a local path under SOPHON_GIT_LOCAL_ROOTS instead")
    path = Path(url).resolve()
    roots = [r.resolve() for r in settings.git_local_roots]
    data = settings.data_dir.resolve()
    if not any(path == r or r in path.parents for r in roots):
        raise BadRequest(
            f"{url} is not under a directory allowed for local clones "
            "(SOPHON_GIT_LOCAL_ROOTS, a ':'-separated list; empty by default)")
    if path == data or data in path.parents or path in data.parents:
        raise BadRequest("the server's data directory cannot be cloned")
    if not path.is_dir():
        raise BadRequest(f"{url} is not a directory")
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


async def prepare_workspace(box: Box, starter: EmptyStarter | GitStarter | TemplateStarter,
                            env: dict[str, str]) -> None:
    if isinstance(starter, GitStarter):
        # The source belongs to another uid in here, which git refuses unless told it is
        # safe. Command-line config does not reach the upload-pack of a local clone, so
        # the clone gets a global config file of its own.
        await box.write_path("/tmp", ".sophon-clone.gitconfig",
                             b"[safe]\n\tdirectory = *\n")
        clone_env = {**env, "GIT_CONFIG_GLOBAL": "/tmp/.sophon-clone.gitconfig"}
        argv = ["git", "clone", "--no-hardlinks", "-q"]
        if starter.ref:
            argv += ["--branch", starter.ref]
        await _run(box, [*argv, "--", SOURCE_MOUNT, "."], clone_env, "git clone")
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
