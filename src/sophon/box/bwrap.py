"""The bubblewrap backend: each box is a ``bwrap`` sandbox whose first process is boxd.

Layers, outermost first:
1. spawnd (spawnd.py), a small helper the server starts once, forks; its child, still
   with the server's uid, writes its own pid into the box's cgroups, so the limits hold
   from the first instruction of the box;
1b. for a box with a disk image (disk.py), the child makes a mount namespace of its own
   and mounts the image there as root, and makes the image's ``workspace`` and ``home``
   the box's; the host's mount table never holds it;
2. (only when the server runs as root) the child drops to the box's unprivileged host
   uid, with only the groups the box's volumes need, every capability set emptied and
   no_new_privs: a box never runs as host root, even inside its user namespace;
3. the child execs ``bwrap``, which makes new user, pid, mount, ipc, uts, cgroup and
   network namespaces, drops every capability, mounts a minimal read-only system view
   with only the box's own ``workspace`` and ``home`` writable, and loads the seccomp
   filter (seccomp.py) just before it execs boxd;
4. boxd (a static Go program, boxd/), as uid 1000 and pid 1 inside (no bwrap init in
   the box: it would hold the host's pipes where a workload could open them through
   /proc); it starts its file helper (agent/, Python) on the first file request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from sophon.box.agent_fs import AgentFs
from sophon.box.ahead import Ahead, Reserved
from sophon.box.box import Box
from sophon.box.boxd_build import ensure_boxd
from sophon.box.cgroups import CgroupTree, Limits
from sophon.box.disk import MOUNT_OPTIONS, BoxDisk, mount_flags
from sophon.box.etc_fs import EtcFs
from sophon.box.seccomp import SeccompUnavailable, compile_filter
from sophon.box.spawner import HOST_PATH, Launch, Spawner
from sophon.errors import BoxError, BoxRequestError

log = logging.getLogger(__name__)

BOX_UID = 1000
BOX_GID = 1000
WORKSPACE = "/workspace"
HOME = "/home/user"
# A thread's persistent storage, where Baponi code expects it: the box's home
# directory, bound here as well as at HOME (see docs/ARCHITECTURE.md, "Threads").
THREAD_HOME = "/home/baponi"
# Where the Baponi guide's Agent SDK example looks for Claude Code (its ``cli_path``): a
# link in every box to the CLI under /usr (see docs/ARCHITECTURE.md, "Claude Code").
GUIDE_CLI = f"{THREAD_HOME}/.local/bin/claude"
AGENT_DIR = "/opt/sophon/agent"
# boxd starts its file helper (agent/helper.py, beside it) under SOPHON_PYTHON.
BOXD_PATH = f"{AGENT_DIR}/boxd"

# Host paths shown read-only inside every box when they exist.
SYSTEM_DIRS = ("/usr", "/opt/node", "/etc/alternatives", "/etc/ssl", "/etc/ca-certificates")
SYSTEM_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/mime.types",
    "/etc/protocols",
    "/etc/services",
)
SYSTEM_LINKS = {"/bin": "usr/bin", "/sbin": "usr/sbin", "/lib": "usr/lib", "/lib64": "usr/lib64"}
# What a box with an image (sophon.images) sees of it, read-only.
IMAGE_DIRS = ("usr", "etc", "var")

ETC_FILES = {
    "passwd": (
        "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n"
        f"user:x:{BOX_UID}:{BOX_GID}:sandbox user:{HOME}:/bin/bash\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    ),
    "group": f"root:x:0:\nuser:x:{BOX_GID}:\nnogroup:x:65534:\n",
    "hostname": "sandbox\n",
    "hosts": "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost\n",
    "resolv.conf": "",
    # A commit works out of the box, as in a session's first one; the least of git's
    # settings, so the user's own (~/.gitconfig, the repository's, GIT_AUTHOR_*) win.
    "gitconfig": "[user]\n\tname = Sophon\n\temail = sophon@localhost\n",
    # An interactive shell's prompt is the terminal's PS1 (an image's own bash.bashrc
    # would set another); the window size follows the terminal's.
    "bash.bashrc": "shopt -s checkwinsize\n",
}

# What a box trusts for TLS, when the egress door has a CA of its own (egress/ca.py):
# the system bundle with that CA added, at the system's path (for tools that read only
# it) and at TRUST_BUNDLE (named by the variables every exec gets), and the CA alone.
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
TRUST_BUNDLE = "/etc/sophon/ca-bundle.crt"
TRUST_CA = "/etc/sophon/ca.pem"

# The environment every process in a box starts from; execs add their own on top.
BASE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": HOME,
    "USER": "user",
    "LOGNAME": "user",
    "SHELL": "/bin/bash",
    "LANG": "C.UTF-8",
    "TMPDIR": "/tmp",
    "PYTHONUNBUFFERED": "1",
    # /usr is read-only and pip's user scheme writes only under $HOME.
    "PIP_BREAK_SYSTEM_PACKAGES": "1",
    "PIP_NO_INPUT": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
}


@dataclass
class BoxFds:
    """Descriptors one box start hands to bwrap (spawnd's child gets them at the same
    numbers). bwrap reads each to its end and closes it, so nothing in the box holds
    them; the server closes its copies once the box is spawned."""

    seccomp: int | None = None
    data: list[int] = field(default_factory=list)  # in the order of ``data_files``
    # The host's own /etc files a box without an image gets (in the order of
    # SYSTEM_FILES, those that exist); opened at each start, so an update is seen.
    system: list[tuple[str, int]] = field(default_factory=list)
    volumes: list[int] = field(default_factory=list)  # in the order of ``volume_binds``
    # The box's end of the socket boxd hands its door listener back through (the one
    # descriptor bwrap leaves open: boxd closes it once it has sent the listener).
    door: int | None = None
    # The /etc a box without an image binds whole (etc_fs.py); then ``data`` has -1 for
    # the files it holds and ``system`` is empty.
    etc: Path | None = None

    def all(self) -> tuple[int, ...]:
        return (*([] if self.seccomp is None else [self.seccomp]),
                *(fd for fd in self.data if fd >= 0),
                *(fd for _, fd in self.system), *self.volumes,
                *([] if self.door is None else [self.door]))

    def close(self) -> None:
        for fd in self.all():
            os.close(fd)
        self.seccomp, self.data, self.system, self.volumes, self.door = None, [], [], [], None


def open_beneath(root: Path, rel: str) -> int:
    """An O_PATH descriptor of the directory ``rel`` under ``root``, walked one component
    at a time without following a symlink: a workload that made a component a symlink
    (volumes are written by boxes) gets an error, never a bind of what it names. bwrap
    binds the descriptor (/proc/self/fd/N), so nothing can be swapped in after the check.
    Missing directories are made (mkdirat under the checked parent)."""
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(root, flags)
    try:
        for part in [p for p in rel.split("/") if p]:
            if part in (".", ".."):
                raise BoxError(f"{rel!r}: not a plain sub-path")
            try:
                nxt = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:  # a sub-path asked for: made, 0770 in the group
                os.mkdir(part, 0o770, dir_fd=fd)
                nxt = os.open(part, flags, dir_fd=fd)
            except NotADirectoryError:  # the caller's to fix, so a 400 that says what
                if stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
                    raise BoxRequestError("sub_path_is_symlink", (
                        f"sub-path {rel!r} of the volume: {part!r} is a symbolic link "
                        "(links are never followed; name the directory it points to "
                        "instead)")) from None
                raise BoxRequestError("sub_path_not_a_directory", (
                    f"sub-path {rel!r} of the volume: {part!r} is a file, not a "
                    "directory")) from None
            os.close(fd)
            fd = nxt
    except OSError as exc:
        os.close(fd)
        raise BoxError(f"{rel or '/'} is not a directory of the volume") from exc
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_beneath(root: Path, rel: str) -> None:
    """What ``open_beneath`` would refuse, refused now (a request's sub-path, before its
    execution starts)."""
    os.close(open_beneath(root, rel))


@dataclass(frozen=True)
class BoxSpec:
    box_id: str
    workspace: Path
    home: Path
    limits: Limits
    tmp_bytes: int
    extra_ro_binds: tuple[tuple[str, str], ...] = ()  # (host path, box path)
    host_uid: int | None = None  # None: the backend's box uid
    home_aliases: tuple[str, ...] = ()  # more box paths the home directory is bound at
    # Read-write volume mounts: (volume root on the host, sub-path in it, box path).
    volume_binds: tuple[tuple[Path, str, str], ...] = ()
    groups: tuple[int, ...] = ()  # supplementary host groups (the volumes' gids)
    # The box's disk, mounted in the launcher's own mount namespace (None: workspace and
    # home are ready on the host: no quotas, a box from before them, a staging box).
    disk: BoxDisk | None = None
    # The mounted image whose /usr, /etc and /var the box sees (None: the host's /usr,
    # as boxes made before images had; see sophon.images).
    image_root: Path | None = None
    # A user image's build box (box/builds.py): its /usr, /etc and /var are the build's
    # scratch root, which its steps write to.
    image_writable: bool = False


class BwrapBackend:
    """Starts boxes with bubblewrap. One instance per server."""

    name = "bwrap"

    def __init__(
        self,
        runtime_dir: Path,
        cgroups: CgroupTree | None,
        host_uid: int,
        python: str = "/usr/bin/python3",
        door_port: int | None = None,
        claude_cli: Path | None = None,
        tool_dirs: tuple[Path, ...] = (),
    ) -> None:
        self.runtime_dir = runtime_dir
        self.door_port = door_port
        # Linked at GUIDE_CLI in every box while it exists (it may be installed later).
        self.claude_cli = claude_cli
        # The host's tools under /usr (Claude Code, Node's door preload) that an image
        # box gets bound over its image's own /usr at the same paths.
        self.tool_dirs = tool_dirs
        self.cgroups = cgroups
        self.python = python
        self.is_root = os.geteuid() == 0
        self.host_uid = host_uid if self.is_root else os.geteuid()
        self.bwrap = shutil.which("bwrap")
        if self.bwrap is None:
            raise BoxError("bubblewrap (bwrap) is not installed; install the 'bubblewrap' package")
        self.spawner = Spawner()
        self.ahead = Ahead(cgroups, self.spawner) if cgroups is not None else None
        self._install_runtime()
        # A root server keeps a read-only copy of the agent dir that boxes bind
        # (agent_fs.py); otherwise each box gets copies of its files.
        self.agent_fs = AgentFs.mount(runtime_dir / "agent") if self.is_root else None
        if self.agent_fs is not None:  # bound whole: no file of it is copied in
            self.data_files = [(host, inside) for host, inside in self.data_files
                               if not inside.startswith(AGENT_DIR + "/")]
        # And the /etc of a box without an image, the same way (etc_fs.py).
        self.etc_fs = EtcFs(
            {name: runtime_dir / "etc" / name for name in ETC_FILES},
            SYSTEM_FILES, tuple(d for d in SYSTEM_DIRS if d.startswith("/etc/"))
        ) if self.agent_fs is not None else None
        self.seccomp_filter: Path | None = None
        self.seccomp_mode = "off"
        self._install_seccomp()

    def close(self) -> None:
        """After the last box has stopped."""
        if self.agent_fs is not None:
            self.agent_fs.unmount()
            self.agent_fs = None
        if self.etc_fs is not None:
            self.etc_fs.close()

    def check_reachable(self, path: Path) -> None:
        """bwrap runs as the box's host uid, so it must be able to walk to every path it
        binds. Directories the server makes are 0711 (walk, not list); this checks the
        ones above them, which are not ours to change."""
        if not self.is_root:
            return
        for parent in path.resolve().parents:
            if not parent.stat().st_mode & 0o001:
                raise BoxError(
                    f"{parent} is not searchable by other users, so sandboxes cannot reach "
                    f"{path}. Put the data directory elsewhere (e.g. SOPHON_DATA_DIR="
                    "/var/lib/sophon)."
                )

    def _install_runtime(self) -> None:
        """Write boxd and the box's /etc files where bwrap can bind them read-only."""
        self.check_reachable(self.runtime_dir)
        etc = self.runtime_dir / "etc"
        etc.mkdir(parents=True, exist_ok=True)
        for name, text in ETC_FILES.items():
            (etc / name).write_text(text)
        agent = self.runtime_dir / "agent"
        agent.mkdir(exist_ok=True)
        for src in Path(__file__).with_name("agent").glob("*.py"):
            shutil.copyfile(src, agent / src.name)
        compiled = self._compile_agent(agent)
        # Replaced whole: nodes sharing this directory may install at once.
        boxd = agent / "boxd"
        shutil.copyfile(ensure_boxd(), agent / f".boxd.{os.getpid()}")
        os.replace(agent / f".boxd.{os.getpid()}", boxd)
        for p in [self.runtime_dir, etc, agent, *etc.iterdir(), *agent.iterdir(), *compiled]:
            p.chmod(0o755 if p.is_dir() or p == boxd else 0o644)
        # Copied into every box from descriptors (see argv): (host file, path in the box).
        self.trust_files: tuple[str, ...] = ()
        self.data_files = [(etc / name, f"/etc/{name}") for name in ETC_FILES] + [
            (f, f"{AGENT_DIR}/{f.relative_to(agent)}")
            for f in [boxd, *sorted(agent.glob("*.py")), *compiled]]

    def _compile_agent(self, agent: Path) -> list[Path]:
        """boxd's modules compiled by the boxes' interpreter, as ``__pycache__`` files it
        takes without looking at their sources (unchecked hash: the copies a box gets
        have new times). An image whose python is another version looks for another
        file name and compiles the sources itself; so does every box if this fails."""
        script = ("import compileall, py_compile, sys; sys.exit(not compileall.compile_dir("
                  "sys.argv[1], quiet=1, legacy=False, invalidation_mode="
                  "py_compile.PycInvalidationMode.UNCHECKED_HASH))")
        try:
            subprocess.run([self.python, "-I", "-S", "-c", script, str(agent)], check=True,
                           capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("boxd's modules could not be compiled ahead (%s); each box "
                        "compiles them as it starts", exc)
            return []
        # helper.py is run as a script, which is always compiled from its source. Each file
        # is replaced whole (nodes sharing this directory may compile at once); one left
        # from a module that is gone is not copied.
        return sorted(p for p in (agent / "__pycache__").glob("*.pyc")
                      if (agent / f"{p.name.split('.')[0]}.py").is_file()
                      and not p.name.startswith("helper."))

    def trust(self, bundle: bytes, ca: bytes) -> None:
        """Give every box started from now on this bundle and CA (see TRUST_BUNDLE)."""
        trust = self.runtime_dir / "trust"
        trust.mkdir(exist_ok=True)
        trust.chmod(0o755)
        files = [(trust / "ca-bundle.crt", bundle, TRUST_BUNDLE), (trust / "ca.pem", ca, TRUST_CA)]
        if os.path.isfile(SYSTEM_BUNDLE):
            files.append((trust / "ca-bundle.crt", bundle, SYSTEM_BUNDLE))
        for host, data, _ in files:
            host.write_bytes(data)
            host.chmod(0o644)
        self.data_files = [f for f in self.data_files if f[1] not in self.trust_files]
        self.trust_files = tuple(inside for _, _, inside in files)
        self.data_files += [(host, inside) for host, _, inside in files]
        if self.etc_fs is not None:  # the system bundle's path is in the host's /etc/ssl
            self.etc_fs.add({inside: host for host, _, inside in files
                             if inside != SYSTEM_BUNDLE})

    def open_fds(self, spec: BoxSpec | None = None) -> BoxFds:
        """Fresh descriptors for one box start: bwrap reads each to its end (and binds
        each volume's)."""
        fds = BoxFds()
        try:
            if self.seccomp_filter is not None:
                fds.seccomp = os.open(self.seccomp_filter, os.O_RDONLY | os.O_CLOEXEC)
            if spec is not None and self.etc_fs is not None:
                fds.etc = self.etc_fs.current()
            held = self._in_etc_fs() if fds.etc is not None else set()
            for host, inside in self.data_files:
                fds.data.append(-1 if inside in held else
                                os.open(host, os.O_RDONLY | os.O_CLOEXEC))
            if spec is not None and spec.image_root is None and fds.etc is None:
                for f in SYSTEM_FILES:
                    with contextlib.suppress(FileNotFoundError):
                        fds.system.append((f, os.open(f, os.O_RDONLY | os.O_CLOEXEC)))
            for root, rel, _ in spec.volume_binds if spec else ():
                fds.volumes.append(open_beneath(root, rel))
        except BaseException:
            fds.close()
            raise
        return fds

    def _in_etc_fs(self) -> set[str]:
        """The box paths a file of the /etc copy (etc_fs.py) serves: its own, and the
        system bundle's, which is Sophon's bundle (TRUST_BUNDLE) under the image's name."""
        held = self.etc_fs.provides() if self.etc_fs is not None else set()
        return held | ({SYSTEM_BUNDLE} if TRUST_BUNDLE in held else set())

    def _install_seccomp(self) -> None:
        """Compile the box filter once; without libseccomp boxes start unfiltered, and
        the server says so now and in /healthz."""
        path = self.runtime_dir / "seccomp.bpf"
        try:
            compile_filter(path)
        except SeccompUnavailable as exc:
            path.unlink(missing_ok=True)
            log.warning("SECCOMP FILTER OFF: %s. Boxes run without a syscall filter "
                        "(ptrace attach, pidfd_getfd, keyctl, bpf, mount, ... are not "
                        "denied).", exc)
            self.seccomp_mode = f"off: {exc}"
            return
        self.seccomp_filter = path
        self.seccomp_mode = "on"

    def uid_of(self, spec: BoxSpec) -> int:
        return spec.host_uid if self.is_root and spec.host_uid is not None else self.host_uid

    def prepare_dirs(self, spec: BoxSpec) -> None:
        uid = self.uid_of(spec)
        for d in (spec.workspace, spec.home):
            d.mkdir(parents=True, exist_ok=True)
            if self.is_root:
                os.chown(d, uid, uid)
            d.chmod(0o700)

    def argv(self, spec: BoxSpec, fds: BoxFds | None = None) -> list[str]:
        args = [
            self.bwrap or "bwrap",
            "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc",
            "--unshare-uts", "--unshare-cgroup",
            "--uid", str(BOX_UID), "--gid", str(BOX_GID),
            "--hostname", "sandbox",
            "--cap-drop", "ALL",
            "--new-session",
            "--die-with-parent",
            "--as-pid-1",
            "--disable-userns",
            "--clearenv",
        ]
        if fds is not None and fds.seccomp is not None:
            # bwrap loads the filter just before it execs boxd.
            args += ["--seccomp", str(fds.seccomp)]
        # The generated /etc files and boxd are copies made by bwrap from descriptors,
        # not binds of the runtime directory: a bind's source path shows in the box's
        # /proc/self/mountinfo, and that path names the server's data directory. Where
        # the path is on the box's own root (a tmpfs bwrap makes, read-only once it is
        # built) the copy is a plain file there (--file), not a file bound over the path
        # (--ro-bind-data): each mount costs bwrap a pass over the mount table, and a box
        # without an image had some 30 of them (about 4 ms of its start).
        data_fds: list[int | None] = [*fds.data] if fds else [None] * len(self.data_files)
        data = {inside: (host, fd)
                for (host, inside), fd in zip(self.data_files, data_fds, strict=True)}

        vol_fds: list[int | None] = ([*fds.volumes] if fds and fds.volumes
                                     else [None] * len(spec.volume_binds))
        volumes = [a for (root, rel, inside), fd in zip(spec.volume_binds, vol_fds, strict=True)
                   for a in ("--bind", str(root / rel) if fd is None else f"/proc/self/fd/{fd}",
                             inside)]

        etc_bound = fds.etc if fds is not None else None
        held = self._in_etc_fs() if etc_bound is not None else set()

        def copy_in(inside: str, on_root: bool) -> list[str]:
            if inside in held:  # a bind of the server's copy, where bwrap would copy
                assert etc_bound is not None
                rel = TRUST_BUNDLE if inside == SYSTEM_BUNDLE else inside
                return ["--ro-bind", str(etc_bound / rel.removeprefix("/etc/")), inside]
            host, fd = data[inside]
            if fd is None:
                return ["--ro-bind", str(host), inside]
            mode = "0755" if inside == BOXD_PATH else "0644"
            return ["--perms", mode, "--file" if on_root else "--ro-bind-data", str(fd), inside]
        # An image's /etc is its own (a bind); a box without one has /etc on its root.
        etc_on_root = spec.image_root is None
        # A box without an image binds the copy whole; an image's box binds its files
        # over the image's own /etc.
        etc_whole = etc_bound is not None and spec.image_root is None
        if spec.image_root is not None:
            args += self._image_args(spec.image_root, spec.image_writable)
        else:
            if etc_bound is not None:  # before the host's directories bound inside it
                args += ["--ro-bind", str(etc_bound), "/etc"]
            args += self._host_system_args(fds.system if fds is not None else None)
        for name in ETC_FILES:
            if not etc_whole:
                args += copy_in(f"/etc/{name}", etc_on_root)
        if self.claude_cli is not None and self.claude_cli.is_file():
            if spec.home_aliases:
                # A thread's home is its own storage: boxd makes the link there, as the
                # box's user, unless the thread has something of its own at that path.
                args += ["--setenv", "SOPHON_CLAUDE_LINK", str(self.claude_cli)]
            else:  # in the box's own root, which is gone with the box
                args += ["--symlink", str(self.claude_cli), GUIDE_CLI]
        for inside in self.trust_files:  # after /etc/ssl: the bundle covers the system's
            if not (etc_whole and inside.startswith("/etc/sophon/")):
                args += copy_in(inside, False)
        args += [
            "--proc", "/proc",
            "--dev", "/dev",
            "--size", str(spec.tmp_bytes), "--tmpfs", "/dev/shm",
            "--size", str(spec.tmp_bytes), "--tmpfs", "/tmp",
            "--bind", str(spec.workspace), WORKSPACE,
            "--bind", str(spec.home), HOME,
            *[a for alias in spec.home_aliases for a in ("--bind", str(spec.home), alias)],
            *(["--ro-bind", str(self.agent_fs.path), AGENT_DIR] if self.agent_fs is not None
              else [a for _, inside in self.data_files if inside.startswith(AGENT_DIR + "/")
                    for a in copy_in(inside, True)]),
            *[a for host, inside in spec.extra_ro_binds for a in ("--ro-bind", host, inside)],
            *volumes,
            # Everything not mounted writable above is read-only: the root and /dev.
            "--remount-ro", "/dev",
            "--remount-ro", "/",
            "--chdir", WORKSPACE,
        ]
        for key, value in BASE_ENV.items():
            args += ["--setenv", key, value]
        if fds is not None and fds.door is not None and self.door_port is not None:
            args += ["--setenv", "SOPHON_DOOR_FD", str(fds.door),
                     "--setenv", "SOPHON_DOOR_PORT", str(self.door_port)]
        args += ["--setenv", "SOPHON_PYTHON", self.python, BOXD_PATH]
        return args

    @staticmethod
    def _host_system_args(files: list[tuple[str, int]] | None = None) -> list[str]:
        """The host's own /usr and the few /etc files programs need (a box without an
        image); those files copied onto the box's root from ``files`` (path, descriptor)
        when given, else bound."""
        args: list[str] = []
        for d in SYSTEM_DIRS:
            if os.path.isdir(d):
                args += ["--ro-bind", d, d]
        for link, target in SYSTEM_LINKS.items():
            if os.path.islink(link):
                args += ["--symlink", target, link]
            elif os.path.isdir(link):
                args += ["--ro-bind", link, link]
        if files is not None:
            for f, fd in files:
                args += ["--perms", "0644", "--file", str(fd), f]
            return args
        for f in SYSTEM_FILES:
            if os.path.exists(f):
                args += ["--ro-bind", f, f]
        return args

    def _image_args(self, root: Path, writable: bool = False) -> list[str]:
        """An image's /usr, /etc and /var (read-only, from its own filesystem), its
        top-level links, and the host's tools over its mount points for them."""
        args: list[str] = []
        for d in IMAGE_DIRS:  # --remount-ro / later does not reach these binds
            args += ["--bind" if writable else "--ro-bind", str(root / d), f"/{d}"]
        for link in SYSTEM_LINKS:
            target = root / link.lstrip("/")
            if target.is_symlink():
                args += ["--symlink", os.readlink(target), link]
        for tools in self.tool_dirs:
            if tools.is_dir() and (root / str(tools).lstrip("/")).is_dir():
                args += ["--ro-bind", str(tools), str(tools)]
        return args

    def image_mount_points(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return self.mount_points_for(self.tool_dirs)

    @staticmethod
    def mount_points_for(tool_dirs: tuple[Path, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The files and directories an image must have for a box to mount over them
        (its root is read-only: bwrap cannot make them), made when it is built."""
        files = (*(f"/etc/{name}" for name in ETC_FILES), TRUST_BUNDLE, TRUST_CA,
                 SYSTEM_BUNDLE)
        return files, tuple(str(d) for d in tool_dirs if str(d).startswith("/usr/"))

    def launch(self, spec: BoxSpec, procs_files: list[Path],
               fds: BoxFds | None = None) -> Launch:
        """What spawnd's child does before it execs bwrap (see spawnd.py)."""
        uid = self.uid_of(spec)
        launch = Launch(argv=self.argv(spec, fds), env={"PATH": HOST_PATH},
                        pass_fds=fds.all() if fds else (),
                        cgroup_procs=[str(f) for f in procs_files])
        if self.is_root:
            launch.creds = {"uid": uid, "gid": uid, "groups": list(spec.groups)}
        if spec.disk is not None:
            flags, data = mount_flags(MOUNT_OPTIONS)
            launch.mount = {"device": spec.disk.device, "target": str(spec.disk.mountpoint),
                            "flags": flags, "data": data, "uid": uid}
        if self.cgroups is None:
            # Per-process limits only, which a determined workload can spread across
            # processes. The server says so at start-up.
            launch.rlimits = [("RLIMIT_DATA", spec.limits.memory_bytes, spec.limits.memory_bytes),
                              ("RLIMIT_NPROC", spec.limits.pids, spec.limits.pids)]
        return launch

    async def reserve(self, limits: Limits) -> Reserved | None:
        """A cgroup with these limits and a launcher waiting in it (ahead.py), taken
        while the rest of a start is made ready; None when none was made ahead. Give it
        to ``start``, or back with ``unreserve``."""
        return await self.ahead.take(limits) if self.ahead is not None else None

    async def unreserve(self, reserved: Reserved) -> None:
        assert self.ahead is not None
        await self.ahead.drop(*reserved)

    async def start(self, spec: BoxSpec, ready_timeout: float = 15.0,
                    reserved: Reserved | None = None) -> Box:
        try:
            return await self._start(spec, ready_timeout, reserved)
        finally:
            if spec.disk is not None:  # mounted by now, or never to be
                spec.disk.close()

    async def _start(self, spec: BoxSpec, ready_timeout: float,
                     reserved: Reserved | None = None) -> Box:
        if spec.disk is None:  # else the launcher makes them, inside the mounted disk
            self.prepare_dirs(spec)
        cgroup = None
        fds = BoxFds()
        door_channel = None
        try:
            fds = self.open_fds(spec)
            if self.door_port is not None:
                door_channel, box_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
                fds.door = box_end.detach()
            by = None
            if reserved is not None:
                (cgroup, by), reserved = reserved, None
            elif self.ahead is not None and (taken := await self.ahead.take(spec.limits)):
                cgroup, by = taken
            elif self.cgroups is not None:
                cgroup = await asyncio.to_thread(self.cgroups.create, spec.box_id, spec.limits)
            launch = self.launch(spec, cgroup.procs_files if cgroup else [], fds)
            proc = await self.spawner.spawn(launch, limit=2**20, by=by)
        except asyncio.CancelledError:
            # The request went away: its cgroup goes too, with whatever waits in it (a
            # child made ahead that no start will use).
            if reserved is not None:
                await self.unreserve(reserved)
            if cgroup is not None:
                await asyncio.to_thread(cgroup.remove)
            if door_channel is not None:
                door_channel.close()
            raise
        except (OSError, BoxError) as exc:
            if reserved is not None:
                await self.unreserve(reserved)
            if cgroup is not None:
                await asyncio.to_thread(cgroup.remove)
            if door_channel is not None:
                door_channel.close()
            raise BoxError(f"could not start box {spec.box_id}: {exc}") from exc
        finally:
            fds.close()

        box = Box(spec.box_id, proc, cgroup)
        try:
            await box.wait_ready(ready_timeout)
            if door_channel is not None:
                box.door = receive_door(door_channel, spec.box_id)
        finally:
            if door_channel is not None:
                door_channel.close()
        return box


def receive_door(channel: socket.socket, box_id: str) -> socket.socket | None:
    """The listening socket boxd made on the box's own loopback, sent before its
    greeting: the host accepts the box's connections from it (see egress/door.py), so
    which box a connection comes from is known by the socket, never by what it says."""
    channel.setblocking(False)
    try:
        msg, fds, _, _ = socket.recv_fds(channel, 256, 1)
    except BlockingIOError:
        log.warning("box %s has no egress door: boxd sent no listener", box_id)
        return None
    if not fds:
        log.warning("box %s has no egress door: %s", box_id,
                    msg.decode(errors="replace") or "boxd could not make one")
        return None
    listener = socket.socket(fileno=fds[0])
    if listener.type != socket.SOCK_STREAM or listener.family != socket.AF_INET:
        listener.close()  # boxd's word is not trusted: only a TCP listener is used
        log.warning("box %s sent something other than a listener as its door", box_id)
        return None
    listener.setblocking(False)
    return listener
