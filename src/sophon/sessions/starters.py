"""What a new session's workspace starts from: nothing, a template, or a git clone.

Everything happens inside the box: templates are written through boxd, and a clone
runs ``git`` in the box against the source mounted read-only at /mnt/source. The
workspace is a git repository with at least one commit when this is done.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

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


# A local clone may read only what any host user may. A root server therefore asks
# the kernel as such a user (uid and gid "nobody", no other groups), so that a path only
# root can see answers exactly as a missing one does; it gives back the real path it
# opened, which is what the staging box then mounts.
_NOBODY = 65534
_OPEN_AS_NOBODY = (
    "import os,sys\n"
    "fd=os.open(sys.argv[1],os.O_RDONLY|os.O_DIRECTORY)\n"
    "os.fchdir(fd)\n"  # needs search permission, as git in the box will
    "sys.stdout.write(os.readlink(f'/proc/self/fd/{fd}'))\n"
)


def _unreadable(url: str, roots: bool) -> BadRequest:
    # One answer for missing, forbidden, not a directory, a symlink loop, a name too
    # long, /proc magic (and, with roots set, outside them): which of them it was would
    # tell the caller about the host.
    where = (" under a directory this server allows clones from (SOPHON_GIT_LOCAL_ROOTS)"
             if roots else
             ": it must exist and be readable by any user of the host (chmod -R o+rX), or "
             "lie under a directory an admin shares with SOPHON_GIT_LOCAL_ROOTS")
    return BadRequest(f"{url} is not a directory that this server's sandboxes can "
                      f"read{where}")


def mount_refused(exc: Exception, url: str, settings: Settings) -> Exception:
    """What to say when the staging box could not start: bwrap could not mount the
    source (the sandbox's uid may not read it after all: a directory only ``nobody``
    may read, or one changed since it was checked) is the user's path, said as any
    unreadable path is; anything else is the box's own failure, as it was."""
    if "Can't find source path" in str(exc):
        return _unreadable(url, bool(settings.git_local_roots))
    return exc


@dataclass(frozen=True)
class LocalSource:
    """A local clone's source: its real path on the host, and whether the server reads it
    on the user's behalf (under an admin's root, where the sandbox may not read)."""

    path: str
    copy: bool = False


def _open_as_self(path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.listdir(fd)  # read permission, and search permission next, as git needs
            os.stat(".", dir_fd=fd)
            return os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return None


async def _real_dir(path: str, python: str) -> str | None:
    """The real path of a directory the sandbox may read; None if there is none."""
    try:
        os.fsencode(path)
    except UnicodeError:
        return None
    if "\x00" in path:
        return None
    if os.geteuid() != 0:
        # Boxes of an unprivileged server run as the server's uid: ask as it.
        return await asyncio.to_thread(_open_as_self, path)
    proc = await asyncio.create_subprocess_exec(
        shutil.which("setpriv") or "setpriv", f"--reuid={_NOBODY}", f"--regid={_NOBODY}",
        "--clear-groups", "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all",
        python, "-I", "-S", "-c", _OPEN_AS_NOBODY, path,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL, cwd="/", env={})
    out, _ = await proc.communicate()
    real = out.decode(errors="replace")
    return real if proc.returncode == 0 and real.startswith("/") else None


def remote_url(starter: EmptyStarter | GitStarter | TemplateStarter
               ) -> tuple[str, int] | None:
    """The host and port of a clone from an http(s) URL; None for any other starter. A
    URL carrying credentials is refused: a token belongs in a connector, where the box
    never holds it."""
    if not isinstance(starter, GitStarter) or not starter.url.lower().startswith(
            ("https://", "http://")):
        return None
    url = urlsplit(starter.url)
    try:
        port = url.port or (443 if url.scheme.lower() == "https" else 80)
    except ValueError:
        raise BadRequest(f"{starter.url[:200]!r} has a port that is not a number") from None
    if url.username is not None or url.password is not None:
        raise BadRequest("the clone URL carries credentials; give the token to a connector "
                         "(POST /v1/connectors) and attach it to the session instead: the "
                         "sandbox then never holds it")
    if not url.hostname:
        raise BadRequest(f"{starter.url[:200]!r} has no host")
    return url.hostname, port


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


async def validate_starter(starter: EmptyStarter | GitStarter | TemplateStarter,
                           settings: Settings) -> LocalSource | None:
    """Refuse a starter that cannot work; for a local clone, where to read it (the real
    path of the user's, symlinks resolved)."""
    if isinstance(starter, TemplateStarter):
        if starter.name not in templates():
            raise BadRequest(f"unknown template {starter.name!r}; "
                             f"available: {', '.join(templates())}")
        return None
    if not isinstance(starter, GitStarter):
        return None
    if remote_url(starter) is not None:
        return None  # cloned in the session's own box, through its egress door
    url = starter.url.removeprefix("file://")
    if not url.startswith("/"):
        raise NetworkDisabled(
            f"{starter.url[:200]!r} is neither an http(s):// URL nor a local path or "
            "file:// URL")
    # The boxes' interpreter: the server's own may live where nobody cannot reach.
    real = await _real_dir(url, settings.box_python)
    return await asyncio.to_thread(_check_rules, url, real, settings)


def _check_rules(url: str, real: str | None, settings: Settings) -> LocalSource:
    roots = [os.path.realpath(r) for r in settings.git_local_roots]
    copy = False
    if real is None and roots:
        # What the sandbox cannot read, the server reads for it, but only where an admin
        # shared it: under a root, as the server sees it.
        real, copy = _open_as_self(url), True
    if real is None or roots and not any(_under(real, r) for r in roots):
        raise _unreadable(url, bool(roots))
    if copy or os.geteuid() != 0:
        # Read with the server's own rights (an unprivileged server's boxes run as its
        # uid; a copy is the server's read), which reach its data; a root server's
        # staging box cannot (see service).
        data = os.path.realpath(settings.data_dir)
        if _under(real, data) or _under(data, real):
            raise BadRequest("the server's data directory cannot be cloned")
    return LocalSource(real, copy)


async def run_or_refuse(box: Box, argv: list[str], env: dict[str, str], refusal: str) -> None:
    """Run a step of preparing a workspace; if it fails, a 400: ``refusal`` and what the
    command said on stderr, its lines joined into one."""
    err: list[str] = []
    outcome = None
    async for ev in box.exec(argv, timeout=600, env=env, cwd=WORKSPACE, output_cap=65536):
        if isinstance(ev, ExecEvent):
            if ev.stream == "stderr":
                err.append(ev.data)
        elif isinstance(ev, ExecOutcome):
            outcome = ev
    if outcome is None or outcome.exit_code != 0:
        lines = [line.strip() for line in "".join(err).splitlines() if line.strip()]
        detail = "; ".join(lines)[-2000:] or f"exit {getattr(outcome, 'exit_code', '?')}"
        raise BadRequest(f"{refusal}: {detail}")


async def _run(box: Box, argv: list[str], env: dict[str, str], what: str) -> None:
    await run_or_refuse(box, argv, env, f"{what} failed")


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
    if isinstance(starter, GitStarter) and remote_url(starter) is not None:
        # Through the session's own door: its network list and its connectors decide,
        # and origin stays, so that pushing back works the same way.
        argv = ["git", "clone", "-q", *(["--branch", starter.ref] if starter.ref else [])]
        await _run(box, [*argv, "--", starter.url, "."], env, "git clone")
        return
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
