"""The seccomp filter every box runs under, compiled by libseccomp.

Default-allow with a deny list: the calls below fail with ``EPERM`` inside a box.
They are the kernel's attack surface that a workload never needs (kernel modules,
keyrings, BPF, perf, userfaultfd, raw I/O ports, reboot, swap), or ways to reach
another process or namespace (ptrace attach, pidfd_getfd, process_vm_*, setns,
unshare, new namespaces through clone, mounts, open_by_handle_at).

``ptrace``: ``PTRACE_ATTACH`` and ``PTRACE_SEIZE`` are denied whatever the target;
``PTRACE_TRACEME`` and every request on an existing tracee stay allowed, so a
debugger (gdb ``run``, strace, which falls back from SEIZE to TRACEME) can still
trace a child it starts, but nothing can attach to a process it did not start.

``clone3`` passes its flags in memory, where a filter cannot look, so it fails with
``ENOSYS``: libc then falls back to ``clone``, whose flags are checked (a new
namespace is ``EPERM``, like ``unshare``).

Architectures: the native one, plus its 32-bit compat ABI (ia32 on x86_64, arm on
aarch64) with the same rules, so ``int 0x80`` is no way around the list. Any other
ABI (x32 on x86_64) is refused by killing the process.

libseccomp (the C library, ``libseccomp.so.2``) is used through ctypes: Debian's
python3-seccomp bindings are not importable from a virtualenv. The filter is
compiled once, at server start, to a file of BPF that bwrap loads (``--seccomp``).
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
CMP_EQ = 4  # enum scmp_compare
CMP_MASKED_EQ = 7


def act_errno(err: int) -> int:
    return 0x00050000 | (err & 0xFFFF)


DENIED = (
    "pidfd_getfd", "process_vm_readv", "process_vm_writev",
    "keyctl", "add_key", "request_key",
    "bpf", "perf_event_open", "userfaultfd",
    "mount", "umount2", "pivot_root", "unshare", "setns", "open_by_handle_at",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "iopl", "ioperm",
)
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


def compile_filter(path: Path) -> None:
    """Write the box filter, as BPF, to ``path`` (mode 0644: bwrap runs as the box uid,
    though it only ever reads the descriptor the server opens)."""
    f = _Filter(_library())
    try:
        f.check(f.lib.seccomp_attr_set(f.ctx, ATTR_ACT_BADARCH, ACT_KILL_PROCESS),
                "bad-arch action")
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
        for request in (PTRACE_ATTACH, PTRACE_SEIZE):
            f.rule(eperm, "ptrace", (0, CMP_EQ, request, 0))
        for flag in CLONE_NEW_FLAGS.values():
            f.rule(eperm, "clone", (0, CMP_MASKED_EQ, flag, flag))
        f.rule(act_errno(errno.ENOSYS), "clone3")
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            f.check(f.lib.seccomp_export_bpf(f.ctx, fd), "export")
        finally:
            os.close(fd)
        tmp.chmod(0o644)
        tmp.replace(path)
    finally:
        f.release()
