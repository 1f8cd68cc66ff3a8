"""spawnd: the small host process that starts every box's first process for the server.

Run by the server (spawner.py) as ``python -I -S spawnd.py <socket fd> <server pid>``,
standard library only. Why a process of its own: a fork copies the forking process's
page tables and descriptor table, and the server's grow with the boxes it runs (libuv
forks the whole server), so every box start got slower as boxes were added. This process
stays a few megabytes with a handful of descriptors however many boxes run, and it does
the root-side steps of a start in the forked child itself, with no ``sh``, ``unshare``,
``mount`` or ``setpriv`` to exec on the way to bwrap.

Protocol: SOCK_SEQPACKET messages, JSON. The server sends ``{"id", "argv", "env",
"targets", "cgroup_procs", "mount", "creds", "rlimits"}`` with the child's descriptors
(stdin, stdout, stderr, then those bwrap is told about) as SCM_RIGHTS; ``targets`` are the
numbers they get in the child. The reply is ``{"id", "pid"}`` with a pidfd of the child, or
``{"id", "error"}``. When a child ends: ``{"exit": pid, "code": n}`` (-signal if killed).
The child writes what went wrong before its exec to its stderr and exits 127.

A child can also be made ahead, before any box asks for it (see ahead.py):
``{"id", "ahead": [cgroup.procs files]}`` forks one that joins those cgroups and waits.
The reply is ``{"id", "pid"}`` with a pidfd and the server's end of a socket pair whose
other end the child waits on: the server hands a later start straight to that child,
which answers ``1`` and carries it out as a forked child would, so the start pays
neither for joining a cgroup (the kernel's global cgroup lock, and after a quiet moment
an RCU grace period: 5-16 ms measured) nor for a trip through this process. If that
child is gone, the server sends the start here and it forks as usual.

This process dies with the server (PR_SET_PDEATHSIG), and bwrap (``--die-with-parent``)
with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import resource
import select
import signal
import socket
import struct
import sys

MAX_MESSAGE = 1 << 16
MAX_FDS = 64

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CLONE_NEWNS = 0x00020000
MS_REC = 1 << 14
MS_SLAVE = 1 << 19
LINUX_CAPABILITY_VERSION_3 = 0x20080522

libc = ctypes.CDLL(None, use_errno=True)


def check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def join_cgroups(procs_files: list[str]) -> None:
    """Before anything else, so the limits hold from the first instruction."""
    pid = str(os.getpid()).encode()
    for path in procs_files:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, pid)
        finally:
            os.close(fd)


def mount_disk(spec: dict[str, object]) -> None:
    """The box's disk, in a mount namespace of its own: the host's table never holds it.
    "slave": the host's own mounts and unmounts (volumes) still reach it, nothing goes
    the other way. Then its ``workspace`` and ``home``, owned by the box's uid."""
    check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    check(libc.mount(None, b"/", None, MS_REC | MS_SLAVE, None), "making / a slave mount")
    target = str(spec["target"])
    check(libc.mount(str(spec["device"]).encode(), target.encode(), b"ext4",
                     int(str(spec["flags"])), str(spec["data"]).encode()),
          f"mounting {spec['device']} on {target}")
    uid = int(str(spec["uid"]))
    # The disk's contents are the box's: never follow a link it could have left there.
    root = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for name in ("workspace", "home"):
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=root)
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=root)
            try:
                os.fchown(fd, uid, uid)
                os.fchmod(fd, 0o700)
            finally:
                os.close(fd)
    finally:
        os.close(root)


_bounding_set_empty = False


def empty_bounding_set() -> None:
    """No capability can be gained again, by any exec from here on. It leaves what this
    process holds now (the disk's mount still needs it), so a child made ahead does it
    while it waits, off a start's path (41 calls)."""
    global _bounding_set_empty
    if _bounding_set_empty:
        return
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last_cap = int(f.read())
    for cap in range(last_cap + 1):
        check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"dropping capability {cap}")
    _bounding_set_empty = True


def drop_root(creds: dict[str, object]) -> None:
    """To the box's host uid, with no capabilities left anywhere (effective, permitted,
    inheritable, ambient, bounding) and no way to gain any (no_new_privs)."""
    empty_bounding_set()
    check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clearing ambient")
    uid, gid = int(str(creds["uid"])), int(str(creds["gid"]))
    groups = creds["groups"]
    assert isinstance(groups, list)
    os.setgroups([int(g) for g in groups])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    header = struct.pack("Ii", LINUX_CAPABILITY_VERSION_3, 0)
    check(libc.capset(header, bytes(24)), "clearing capabilities")
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "setting no_new_privs")


def place_fds(fds: list[int], targets: list[int]) -> None:
    """Give the child's descriptors the numbers bwrap was told, and close every other."""
    high = max([*fds, *targets]) + 1
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, high) for fd in fds]
    for fd in fds:
        os.close(fd)
    for fd, target in zip(moved, targets, strict=True):
        os.dup2(fd, target, inheritable=True)
        os.close(fd)
    # And nothing else, close-on-exec or not (a descriptor the server's event loop left
    # inheritable would otherwise reach the box).
    low = 0
    for keep in sorted(set(targets)):
        if keep > low:  # closerange(n, m <= n) would close all from n up
            os.closerange(low, keep)
        low = keep + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def child(req: dict[str, object], fds: list[int]) -> None:
    """In the forked child: never returns."""
    try:
        # What a box's processes start from is the default for every signal, whatever
        # the server inherited: Python ignores SIGPIPE and SIGXFSZ, and a server started
        # in the background by a shell (`make run &`, nohup) has SIGINT and SIGQUIT
        # ignored, which would leave Ctrl-C dead in every box's terminal.
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGINT,
                    signal.SIGQUIT, signal.SIGHUP, signal.SIGTERM, signal.SIGTSTP,
                    signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        signal.set_wakeup_fd(-1)
        place_fds(fds, [int(t) for t in req["targets"]])  # type: ignore[attr-defined]
        join_cgroups([str(p) for p in req.get("cgroup_procs") or []])  # type: ignore[attr-defined]
        for name, soft, hard in req.get("rlimits") or []:  # type: ignore[attr-defined]
            resource.setrlimit(getattr(resource, name), (soft, hard))
        if req.get("mount"):
            mount_disk(req["mount"])  # type: ignore[arg-type]
        if req.get("creds"):
            drop_root(req["creds"])  # type: ignore[arg-type]
        argv = [str(a) for a in req["argv"]]  # type: ignore[attr-defined]
        env = {str(k): str(v) for k, v in req["env"].items()}  # type: ignore[attr-defined]
        os.execvpe(argv[0], argv, env)  # a bare name is looked up on env's PATH
    except BaseException as exc:  # noqa: BLE001 - whatever it was, the box did not start
        with_msg = f"box launcher: {exc}\n".encode(errors="replace")
        try:
            os.write(2, with_msg)
        finally:
            os._exit(127)


def wait_ahead(sock: socket.socket, procs_files: list[str], spawnd_pid: int) -> None:
    """In a child made ahead: join the cgroups, then wait for the start that takes it
    (or for spawnd to close its socket, or to die). Never returns."""
    try:
        signal.set_wakeup_fd(-1)  # spawnd's pipe is spawnd's
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != spawnd_pid:
            os._exit(0)  # spawnd died before the line above
        os.closerange(3, sock.fileno())  # nothing of spawnd's but this socket
        os.closerange(sock.fileno() + 1, os.sysconf("SC_OPEN_MAX"))
        join_cgroups(procs_files)
        if os.geteuid() == 0:  # a root server's boxes drop root (drop_root)
            empty_bounding_set()
        while True:
            try:
                data, anc, _, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * 4),
                                               socket.MSG_CMSG_CLOEXEC)
                break
            except InterruptedError:
                continue
        if not data:
            os._exit(0)
        sock.send(b"1")  # taken: spawnd forks no other for this start
        sock.close()
        req = json.loads(data)
        req["cgroup_procs"] = []  # joined already
    except BaseException as exc:  # noqa: BLE001 - whatever it was, no box starts here
        os.write(2, f"box launcher (made ahead): {exc}\n".encode(errors="replace"))
        os._exit(127)
    child(req, received_fds(anc))


def send_with_fds(sock: socket.socket, msg: dict[str, object], fds: list[int]) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
    sock.sendmsg([json.dumps(msg).encode()], anc if fds else [])


def received_fds(anc: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, blob in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(blob) - len(blob) % 4
            fds += struct.unpack(f"{usable // 4}i", blob[:usable])
    return fds


class Spawnd:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.children: set[int] = set()

    def send(self, msg: dict[str, object], fds: list[int] = ()) -> None:  # type: ignore[assignment]
        send_with_fds(self.sock, msg, fds)

    def on_request(self) -> bool:
        try:
            data, anc, _, _ = self.sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * 4),
                                                socket.MSG_CMSG_CLOEXEC)
        except InterruptedError:
            return True
        fds = received_fds(anc)
        if not data:
            return False  # the server is gone
        req = json.loads(data)
        if "ahead" in req:
            self.make_ahead(req)
            return True
        try:
            pid = os.fork()
        except OSError as exc:
            self.send({"id": req["id"], "error": str(exc)})
            pid = -1
        if pid == 0:
            child(req, fds)
        for fd in fds:
            os.close(fd)
        if pid > 0:
            self.children.add(pid)
            self.reply_pid(req["id"], pid)
        return True

    def reply_pid(self, rid: object, pid: int) -> None:
        pidfd = os.pidfd_open(pid)
        try:
            self.send({"id": rid, "pid": pid}, [pidfd])
        finally:
            os.close(pidfd)

    def make_ahead(self, req: dict[str, object]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        me = os.getpid()
        try:
            pid = os.fork()
        except OSError as exc:
            ours.close()
            theirs.close()
            self.send({"id": req["id"], "error": str(exc)})
            return
        if pid == 0:
            ours.close()
            wait_ahead(theirs, [str(p) for p in req["ahead"]],  # type: ignore[attr-defined]
                       me)
        theirs.close()
        self.children.add(pid)
        pidfd = os.pidfd_open(pid)
        try:
            self.send({"id": req["id"], "pid": pid}, [pidfd, ours.fileno()])
        finally:
            os.close(pidfd)
            ours.close()

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            self.send({"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def main() -> None:
    sock_fd, server_pid = int(sys.argv[1]), int(sys.argv[2])
    # Whatever else the server's event loop let this process inherit is not for boxes.
    os.closerange(3, sock_fd)
    os.closerange(sock_fd + 1, os.sysconf("SC_OPEN_MAX"))
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != server_pid:
        sys.exit(0)  # the server died before the line above
    os.set_inheritable(sock_fd, False)
    sock = socket.socket(fileno=sock_fd)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Ctrl-C in the server's terminal reaches this process too (one process group): the
    # server stops its boxes and then closes the socket, which ends this process. Its
    # children get the default back before they exec (see child).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    spawnd = Spawnd(sock)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        try:
            ready = poller.poll()
        except InterruptedError:
            continue
        for fd, _ in ready:
            if fd == wake_r:
                while True:
                    try:
                        if not os.read(wake_r, 512):
                            break
                    except BlockingIOError:
                        break
                spawnd.reap()
            elif not spawnd.on_request():
                return


if __name__ == "__main__":
    main()
