"""The seccomp filter every box runs under, compiled by libseccomp.

Default-allow with a deny list: the calls below fail with ``EPERM`` inside a box.
They are the kernel's attack surface that a workload never needs (kernel modules,
keyrings, BPF, perf, userfaultfd, raw I/O ports, reboot, swap, mounts old and new,
quotas, process accounting, setting the clock, the kernel log, legacy calls), or ways
to reach another process or namespace (ptrace attach, pidfd_getfd, process_vm_*,
process_madvise, kcmp, setns, unshare, new namespaces through clone, file handles).
docs/ARCHITECTURE.md ("Seccomp") compares the list with Docker's default profile.

``ptrace``: ``PTRACE_ATTACH`` and ``PTRACE_SEIZE`` are denied whatever the target;
``PTRACE_TRACEME`` and every request on an existing tracee stay allowed, so a
debugger (gdb ``run``, strace, which falls back from SEIZE to TRACEME) can still
trace a child it starts, but nothing can attach to a process it did not start.

``ENOSYS``, not ``EPERM``, where a program should behave as on a kernel without the
call: ``clone3`` passes its flags in memory, where a filter cannot look, and ENOSYS
makes libc fall back to ``clone``, whose flags are checked (a new namespace is
``EPERM``, like ``unshare``); ``io_uring_*`` runs other calls from a queue in memory,
out of the filter's sight, and ENOSYS makes libuv, liburing and async runtimes fall
back to ordinary calls, as on a kernel built without io_uring.

Sockets: only ``AF_UNIX``, ``AF_INET`` and ``AF_INET6`` (and ``AF_NETLINK`` for
``NETLINK_ROUTE`` alone, which glibc and libuv use to list the box's own interfaces);
every other family (``AF_VSOCK``, which no network namespace covers, ``AF_PACKET``,
``AF_ALG``, ...) fails with ``EAFNOSUPPORT``, and another netlink protocol with
``EPROTONOSUPPORT``: what a kernel built without them answers, which libraries
(libaudit, OpenSSL's afalg, Bluetooth stacks) take quietly as "not here".

``personality``: ``MMAP_PAGE_ZERO`` and ``READ_IMPLIES_EXEC`` (which weaken memory
protections for what the process runs next) are ``EPERM``; ``ADDR_NO_RANDOMIZE``,
which gdb sets for the program it runs, and the query (``0xffffffff``) stay allowed.

Architectures: the native one, plus its 32-bit compat ABI (ia32 on x86_64, arm on
aarch64) with the same rules, so ``int 0x80`` is no way around the list. ia32's
``socketcall`` multiplexer passes a socket's family in memory, so it is ``ENOSYS``
(libc then uses the direct ``socket`` call, whose family is checked). Any other ABI
(x32 on x86_64) is refused by killing the process.

libseccomp (the C library, ``libseccomp.so.2``) is used through ctypes: Debian's
python3-seccomp bindings are not importable from a virtualenv. The filter is
compiled once, at server start, to a file of BPF (mode 0600: bwrap only ever reads
the descriptor the server opens) that bwrap loads (``--seccomp``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import platform
from pathlib import Path

log = logging.getLogger(__name__)

# Actions (seccomp.h).
ACT_ALLOW = 0x7FFF0000
ACT_KILL_PROCESS = 0x80000000
ATTR_ACT_BADARCH = 2  # enum scmp_filter_attr
# The calls' numbers sorted into a binary tree (libseccomp 2.5): a call is matched in
# about eight comparisons instead of one per rule, which the kernel repeats for every
# call when it builds the filter's cache at each box's start (0.24 ms against 0.08).
ATTR_CTL_OPTIMIZE, OPTIMIZE_BINARY_TREE = 8, 2
CMP_NE, CMP_EQ, CMP_GT, CMP_MASKED_EQ = 1, 4, 6, 7  # enum scmp_compare


def act_errno(err: int) -> int:
    return 0x00050000 | (err & 0xFFFF)


DENIED = (
    # Another process: its memory, its descriptors, comparing its kernel objects.
    "pidfd_getfd", "process_vm_readv", "process_vm_writev", "process_madvise", "kcmp",
    "keyctl", "add_key", "request_key",
    "bpf", "perf_event_open", "userfaultfd", "fanotify_init", "lookup_dcookie",
    # Mounts and namespaces, and the new mount API (a mount by descriptors).
    "mount", "umount", "umount2", "pivot_root", "unshare", "setns",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
    # File handles: name_to_handle_at makes what open_by_handle_at opens.
    "open_by_handle_at", "name_to_handle_at",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "iopl", "ioperm",
    # The host's own settings: quotas, accounting, the clock, the log, the names.
    "quotactl", "quotactl_fd", "acct", "settimeofday", "clock_settime", "clock_settime64",
    "stime", "syslog", "sethostname", "setdomainname", "vhangup",
    # Legacy calls (several gone from today's kernels; the list holds on older ones).
    "uselib", "ustat", "sysfs", "_sysctl", "nfsservctl", "vm86", "vm86old",
)
# ENOSYS, as on a kernel without them: callers fall back (see the module's docstring).
UNIMPLEMENTED = ("clone3", "io_uring_setup", "io_uring_enter", "io_uring_register")
PTRACE_ATTACH = 16
PTRACE_SEIZE = 0x4206
CLONE_NEW_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
NETLINK_ROUTE = 0
# Families each call may create; socketpair makes only AF_UNIX pairs anyway.
SOCKET_FAMILIES = {"socket": (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK),
                   "socketpair": (AF_UNIX, AF_INET, AF_INET6)}
MMAP_PAGE_ZERO = 0x0100000
READ_IMPLIES_EXEC = 0x0400000
PERSONALITY_DENIED = (MMAP_PAGE_ZERO, READ_IMPLIES_EXEC)
# The 32-bit ABI each 64-bit architecture also runs.
COMPAT_ARCHES = {"x86_64": "x86", "aarch64": "arm"}


class _ArgCmp(ctypes.Structure):
    """struct scmp_arg_cmp."""

    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class SeccompUnavailable(Exception):
    pass


def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise SeccompUnavailable(
            f"libseccomp is not installed ({exc}); install the 'libseccomp2' package"
        ) from exc
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.restype = None
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


NR_SCMP_ERROR = -1


class _Filter:
    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self.ctx = lib.seccomp_init(ACT_ALLOW)
        if not self.ctx:
            raise SeccompUnavailable("seccomp_init failed")

    def check(self, rc: int, what: str) -> None:
        if rc < 0:
            raise SeccompUnavailable(f"libseccomp: {what}: {os.strerror(-rc)}")

    def rule(self, action: int, name: str, *cmps: tuple[int, int, int, int]) -> bool:
        nr = self.lib.seccomp_syscall_resolve_name(name.encode())
        if nr == NR_SCMP_ERROR:
            log.debug("seccomp: no syscall %s on this architecture", name)
            return False
        array = (_ArgCmp * max(1, len(cmps)))(*[_ArgCmp(*c) for c in cmps])
        self.check(self.lib.seccomp_rule_add_array(self.ctx, action, nr, len(cmps), array),
                   f"rule for {name}")
        return True

    def release(self) -> None:
        self.lib.seccomp_release(self.ctx)


def _socket_rules(f: _Filter) -> None:
    """Each family a call may not create, one rule each below the highest allowed and
    one for everything above it (a family with high bits set included: the kernel
    would read only the low 32)."""
    no_family = act_errno(errno.EAFNOSUPPORT)
    for call, allowed in SOCKET_FAMILIES.items():
        for family in range(max(allowed)):
            if family not in allowed:
                f.rule(no_family, call, (0, CMP_EQ, family, 0))
        f.rule(no_family, call, (0, CMP_GT, max(allowed), 0))
    f.rule(act_errno(errno.EPROTONOSUPPORT), "socket",
           (0, CMP_EQ, AF_NETLINK, 0), (2, CMP_NE, NETLINK_ROUTE, 0))
    # ia32's multiplexer: the family is in memory, so the whole call goes.
    f.rule(act_errno(errno.ENOSYS), "socketcall")


def _personality_rules(f: _Filter, action: int) -> None:
    """A denied flag set, unless the argument is the query 0xffffffff (all bits set).
    A rule compares an argument once, so "set and not the query" is one rule per other
    bit: the flag set and that bit clear."""
    for flag in PERSONALITY_DENIED:
        for bit in range(32):
            if 1 << bit != flag:
                f.rule(action, "personality", (0, CMP_MASKED_EQ, flag | 1 << bit, flag))


def compile_filter(path: Path) -> None:
    """Write the box filter, as BPF, to ``path``."""
    f = _Filter(_library())
    try:
        f.check(f.lib.seccomp_attr_set(f.ctx, ATTR_ACT_BADARCH, ACT_KILL_PROCESS),
                "bad-arch action")
        if f.lib.seccomp_attr_set(f.ctx, ATTR_CTL_OPTIMIZE, OPTIMIZE_BINARY_TREE) < 0:
            log.debug("seccomp: libseccomp before 2.5 checks the calls one by one")
        compat = COMPAT_ARCHES.get(platform.machine())
        if compat is not None:
            token = f.lib.seccomp_arch_resolve_name(compat.encode())
            rc = f.lib.seccomp_arch_add(f.ctx, token) if token else -errno.EINVAL
            if rc < 0 and rc != -errno.EEXIST:
                log.warning("seccomp: cannot add the %s ABI (%s): its calls will be "
                            "killed", compat, os.strerror(-rc))
        eperm = act_errno(errno.EPERM)
        for name in DENIED:
            f.rule(eperm, name)
        for name in UNIMPLEMENTED:
            f.rule(act_errno(errno.ENOSYS), name)
        for request in (PTRACE_ATTACH, PTRACE_SEIZE):
            f.rule(eperm, "ptrace", (0, CMP_EQ, request, 0))
        for flag in CLONE_NEW_FLAGS.values():
            f.rule(eperm, "clone", (0, CMP_MASKED_EQ, flag, flag))
        _socket_rules(f)
        _personality_rules(f, eperm)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            f.check(f.lib.seccomp_export_bpf(f.ctx, fd), "export")
        finally:
            os.close(fd)
        tmp.chmod(0o600)
        tmp.replace(path)
    finally:
        f.release()
