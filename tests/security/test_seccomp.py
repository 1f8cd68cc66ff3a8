"""The seccomp filter: calls a workload never needs fail with EPERM in every box.

Each probe calls the kernel directly (ctypes ``syscall``) with arguments the kernel
refuses early and harmlessly (a bad descriptor, a NULL pointer, unknown flags), so
that without the filter the call fails with some other errno. The controls run the
same probe on the host: without the filter nothing answers EPERM (the probe reaches
the kernel's own checks), and with the server's compiled filter loaded everything
does, even calls that the box's missing capabilities would refuse anyway.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from sophon.box.bwrap import BOXD_PATH
from tests.conftest import LiveServer
from tests.security.conftest import Run
from tests.security.helpers import (
    cancel,
    client,
    execute,
    live_server,
    start_async,
    thread_name,
    unique_sleep,
    wait_host_pids,
)
from tests.security.test_processes import PTRACE_PROBE as BOXD_PROBE

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64",
                                reason="the probes use x86_64 syscall numbers")

HOST_PYTHON = "/usr/bin/python3"

SYSCALL_PROBE = r"""
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NOPE = b"/nonexistent-sophon-probe"
THREAD = 0x00010000  # CLONE_THREAD without CLONE_SIGHAND: refused before anything is made
CALLS = {
    "pidfd_getfd": (438, -1, 0, 0),
    "process_vm_readv": (310, os.getpid(), 0, 0, 0, 0, 0),
    "process_vm_writev": (311, os.getpid(), 0, 0, 0, 0, 0),
    "keyctl": (250, 0xFFFF, 0, 0),
    "add_key": (248, 0, 0, 0, 0, 0),
    "request_key": (249, 0, 0, 0, 0),
    "bpf": (321, 9999, 0, 0),
    "perf_event_open": (298, 0, 0, -1, -1, 0),
    "userfaultfd": (323, 0x7FFFFFFF),
    "mount": (165, 0, NOPE, 0, 0, 0),
    "umount2": (166, NOPE, 0x100),
    "pivot_root": (155, 0, 0),
    "unshare": (272, 0x4000),
    "setns": (308, -1, 0),
    "open_by_handle_at": (304, -1, 0, 0),
    "kexec_load": (246, 0, 100000, 0, 0),
    "init_module": (175, 0, 0, 0),
    "finit_module": (313, -1, 0, 0),
    "delete_module": (176, 0, 0),
    "reboot": (169, 0, 0, 0, 0),
    "swapon": (167, 0, 0),
    "swapoff": (168, 0),
    "iopl": (172, 4),
    "ioperm": (173, 0x10000, 1, 0),
    "ptrace_attach": (101, 16, 0x3FFFFFFF, 0, 0),
    "ptrace_seize": (101, 0x4206, 0x3FFFFFFF, 0, 0),
    "clone3": (435, 0, 0),
    # Added after the red team's pass (io_uring), and from Docker's default profile.
    "io_uring_setup": (425, 1, 0),
    "io_uring_enter": (426, -1, 0, 0, 0, 0, 0),
    "io_uring_register": (427, -1, 0, 0, 0),
    "process_madvise": (440, -1, 0, 0, 0, 0),
    "kcmp": (312, os.getpid(), os.getpid(), 99, 0, 0),
    "fanotify_init": (300, 0xFFFFFFFF, 0),
    "lookup_dcookie": (212, 0, 0, 0),
    "fsopen": (430, 0, 0),
    "fsconfig": (431, -1, 0, 0, 0, 0),
    "fsmount": (432, -1, 0, 0),
    "fspick": (433, -1, 0, 0),
    "move_mount": (429, -1, 0, -1, 0, 0),
    "open_tree": (428, -1, 0, 0),
    "mount_setattr": (442, -1, 0, 0, 0, 0),
    "name_to_handle_at": (303, -1, 0, 0, 0, 0),
    "quotactl": (179, 0, 0, 0, 0),
    "quotactl_fd": (443, -1, 0, 0, 0),
    "acct": (163, 1),                  # a bad pointer: never acct(NULL), which stops it
    "settimeofday": (164, 1, 0),       # bad pointers, refused before any capability check
    "clock_settime": (227, 0, 1),
    "syslog": (103, 10, 0, 0),         # SYSLOG_ACTION_SIZE_BUFFER: reads a number
    "sethostname": (170, 0, 100000),
    "setdomainname": (171, 0, 100000),
    "uselib": (134, 0),
    "ustat": (136, 0, 0),
    "sysfs": (139, 99, 0, 0),
    "_sysctl": (156, 0),
    "nfsservctl": (180, 0, 0, 0),
}
# vhangup hangs up the caller's terminal: only without one (the probe is a new session).
try:
    os.setsid()
except OSError:
    pass
try:
    os.close(os.open("/dev/tty", os.O_RDWR))
except OSError:
    CALLS["vhangup"] = (153,)
for name, flag in [("newns", 0x20000), ("newcgroup", 0x02000000), ("newuts", 0x04000000),
                   ("newipc", 0x08000000), ("newuser", 0x10000000), ("newpid", 0x20000000),
                   ("newnet", 0x40000000)]:
    CALLS["clone_" + name] = (56, flag | THREAD, 0, 0, 0, 0)

def load_filter(path):
    data = open(path, "rb").read()
    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]
    prog = Prog(len(data) // 8, data)
    assert libc.prctl(38, 1, 0, 0, 0) == 0                           # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0, ctypes.get_errno()  # filter

if len(sys.argv) > 1:
    load_filter(sys.argv[1])
out = {}
for name, (nr, *args) in CALLS.items():
    args = [ctypes.c_char_p(a) if isinstance(a, bytes) else ctypes.c_long(a) for a in args]
    rc = libc.syscall(ctypes.c_long(nr), *args)
    out[name] = "ok" if rc >= 0 else errno.errorcode[ctypes.get_errno()]
print(json.dumps(out))
"""

# clone3 keeps its flags in memory, out of a filter's sight: it is ENOSYS, so that libc
# falls back to clone, whose flags the filter checks. io_uring too, so that programs
# fall back to ordinary calls as on a kernel without it.
EXPECTED = {"clone3": "ENOSYS", "io_uring_setup": "ENOSYS", "io_uring_enter": "ENOSYS",
            "io_uring_register": "ENOSYS"}
ADDED = ("io_uring_setup", "io_uring_enter", "io_uring_register", "process_madvise", "kcmp",
         "fanotify_init", "lookup_dcookie", "fsopen", "fsconfig", "fsmount", "fspick",
         "move_mount", "open_tree", "mount_setattr", "name_to_handle_at", "quotactl",
         "quotactl_fd", "acct", "settimeofday", "clock_settime", "syslog", "sethostname",
         "setdomainname", "uselib", "ustat", "sysfs", "_sysctl", "nfsservctl", "vhangup")


def host_probe(code: str, *args: str, unprivileged: bool = False) -> Any:
    argv = [HOST_PYTHON, "-c", code, *args]
    if unprivileged:
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd="/",
                          stdin=subprocess.DEVNULL, start_new_session=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def run_json(run: Run, code: str) -> Any:
    res = run(code, language="python", timeout=30)
    assert res["exit_code"] == 0, res
    return json.loads(res["stdout"])


@pytest.mark.skipif(os.geteuid() != 0, reason="the control needs the host's root")
def test_denied_calls_fail_with_eperm_in_a_box(run: Run) -> None:
    # Control: unfiltered, on the host as root, no call answers EPERM.
    host = host_probe(SYSCALL_PROBE)
    assert not [n for n, e in host.items() if e == "EPERM"], host
    boxed = run_json(run, SYSCALL_PROBE)
    assert set(boxed) == set(host)
    for name, outcome in boxed.items():
        assert outcome == EXPECTED.get(name, "EPERM"), f"{name} in a box: {outcome}"


@pytest.mark.skipif(os.geteuid() != 0, reason="the control needs the host's root")
def test_the_servers_filter_is_what_denies_them(server: LiveServer) -> None:
    """Inside a box some of these would fail anyway for want of capabilities: loaded
    into a host root process, the server's own compiled filter denies every one."""
    compiled = server.data_dir / "runtime" / "seccomp.bpf"
    assert compiled.stat().st_size > 0
    filtered = host_probe(SYSCALL_PROBE, str(compiled))
    for name, outcome in filtered.items():
        assert outcome == EXPECTED.get(name, "EPERM"), f"{name} under the filter: {outcome}"
    assert not [n for n, e in host_probe(SYSCALL_PROBE).items() if e == "EPERM"]


@pytest.fixture(scope="module")
def probed(server: LiveServer) -> dict[str, dict[str, str]]:
    """The probe's answers in a box, on the host, and on the host under the filter."""
    with client(server, server.add_user()) as http:
        res = execute(http, SYSCALL_PROBE, language="python", timeout=30)
    assert res["exit_code"] == 0, res
    compiled = str(server.data_dir / "runtime" / "seccomp.bpf")
    return {"box": json.loads(res["stdout"]), "host": host_probe(SYSCALL_PROBE),
            "filtered": host_probe(SYSCALL_PROBE, compiled)}


@pytest.mark.skipif(os.geteuid() != 0, reason="the control needs the host's root")
@pytest.mark.parametrize("call", ADDED)
def test_each_added_call_is_refused(probed: dict[str, dict[str, str]], call: str) -> None:
    """io_uring (ENOSYS) and what Docker's default profile refuses that a box never
    needs (EPERM): in a box, and by the filter itself in a host root process."""
    want = EXPECTED.get(call, "EPERM")
    # Control: unfiltered, as root, the call reaches the kernel's own checks.
    assert probed["host"][call] != want, (call, probed["host"][call])
    assert probed["box"][call] == want, (call, probed["box"][call])
    assert probed["filtered"][call] == want, (call, probed["filtered"][call])


PERSONALITY_PROBE = r"""
import ctypes, errno, json
libc = ctypes.CDLL(None, use_errno=True)
libc.personality.argtypes = [ctypes.c_ulong]
QUERY, ADDR_NO_RANDOMIZE = 0xFFFFFFFF, 0x40000
MMAP_PAGE_ZERO, READ_IMPLIES_EXEC = 0x100000, 0x400000
own = libc.personality(QUERY)
out = {"query": "ok" if own >= 0 else errno.errorcode[ctypes.get_errno()]}
for name, flags in [("addr_no_randomize", ADDR_NO_RANDOMIZE),
                    ("mmap_page_zero", MMAP_PAGE_ZERO),
                    ("read_implies_exec", READ_IMPLIES_EXEC),
                    ("mmap_page_zero_high_bit", MMAP_PAGE_ZERO | 0x80000000),
                    ("read_implies_exec_and_more", READ_IMPLIES_EXEC | ADDR_NO_RANDOMIZE | 8)]:
    rc = libc.personality(own | flags)
    out[name] = "ok" if rc >= 0 else errno.errorcode[ctypes.get_errno()]
    libc.personality(own)
print(json.dumps(out))
"""


def test_personality_flags_that_weaken_memory_protection_are_refused(run: Run) -> None:
    """gdb's ADDR_NO_RANDOMIZE and the query stay; MMAP_PAGE_ZERO and READ_IMPLIES_EXEC
    go, with or without other bits."""
    host = host_probe(PERSONALITY_PROBE)
    assert set(host.values()) == {"ok"}, host  # control: the kernel takes each of them
    boxed = run_json(run, PERSONALITY_PROBE)
    assert boxed["query"] == "ok" and boxed["addr_no_randomize"] == "ok", boxed
    for name in ("mmap_page_zero", "read_implies_exec", "mmap_page_zero_high_bit",
                 "read_implies_exec_and_more"):
        assert boxed[name] == "EPERM", (name, boxed)


ORDINARY = r"""
set -e
cd "$(mktemp -d)"
printf '#include <stdio.h>\nint main(void){puts("c-ok");return 0;}\n' > t.c
gcc -o t t.c && ./t
python3 -c "import asyncio, ssl, sqlite3, subprocess; print('python-ok')"
python3 -m pip --version >/dev/null && echo pip-ok
node -e "require('fs').promises.readFile('t.c').then(() => console.log('node-ok'))"
node -e "const h = require('http'); const s = h.createServer((q, r) => r.end('http-ok'))
  .listen(0, '127.0.0.1', () => h.get('http://127.0.0.1:' + s.address().port,
  r => r.on('data', d => { console.log(String(d)); s.close(); })))"
git init -q repo && cd repo && git -c user.email=a@b -c user.name=a commit -q --allow-empty -m m \
  && git log --format=git-%s
"""


def test_ordinary_workloads_still_run(run: Run) -> None:
    """What the additions must not break: a compiler, python and pip, node's event loop
    (libuv would use io_uring where it can), its http, git."""
    res = run(ORDINARY, timeout=120)
    assert res["exit_code"] == 0, res
    for word in ("c-ok", "python-ok", "pip-ok", "node-ok", "http-ok", "git-m"):
        assert word in res["stdout"].split(), (word, res)


PTRACE_PROBE = r"""
import ctypes, errno, json, os, signal, subprocess
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
TRACEME, PEEKUSER, CONT, ATTACH, DETACH, SEIZE = 0, 3, 7, 16, 17, 0x4206
r = {}
# A debugger's way: the child asks to be traced and stops; its parent traces it.
pid = os.fork()
if pid == 0:
    libc.ptrace(TRACEME, 0, None, None)
    os.kill(os.getpid(), signal.SIGSTOP)
    os._exit(7)
_, status = os.waitpid(pid, 0)
r["traceme_stopped"] = os.WIFSTOPPED(status)
ctypes.set_errno(0)
libc.ptrace(PEEKUSER, pid, None, None)          # a word of the tracee's registers
r["peek"] = errno.errorcode.get(ctypes.get_errno(), "ok")
libc.ptrace(CONT, pid, None, None)
_, status = os.waitpid(pid, 0)
r["traceme_exit"] = os.WEXITSTATUS(status)
# Attaching to a process that did not ask for it: even the prober's own child.
# Its output goes nowhere and it dies in `finally`: a sleeper left holding the prober's
# stdout would turn any failure here into a silent wait for the pipe to close.
child = subprocess.Popen(["sleep", "60"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
try:
    for name, req in (("attach", ATTACH), ("seize", SEIZE)):
        if libc.ptrace(req, child.pid, None, None) == 0:
            r[name] = "attached"
            if req == ATTACH:
                os.waitpid(child.pid, 0x40000000)  # __WALL: until it stops, to detach
            libc.ptrace(DETACH, child.pid, None, None)
        else:
            r[name] = errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
finally:
    child.kill()
    child.wait()
print(json.dumps(r))
"""


def test_ptrace_attach_is_denied_but_a_debugger_can_run_its_child(run: Run) -> None:
    # Control: outside a box (as an unprivileged host user) the prober attaches.
    if os.geteuid() == 0:
        host = host_probe(PTRACE_PROBE, unprivileged=True)
        assert host["attach"] == "attached" and host["seize"] == "attached", host
    boxed = run_json(run, PTRACE_PROBE)
    assert boxed["attach"] == "EPERM" and boxed["seize"] == "EPERM", boxed
    # PTRACE_TRACEME stays: a tracer can run and inspect a child that asked for it.
    assert boxed["traceme_stopped"] and boxed["peek"] == "ok", boxed
    assert boxed["traceme_exit"] == 7, boxed
    tools = [t for t in ("strace", "gdb") if shutil.which(t)]
    if not tools:
        return
    res = run("strace -f -o /dev/null true && echo strace-ok; "
              "gdb -q -batch -ex run --args /bin/true >/dev/null 2>&1 && echo gdb-ok",
              timeout=60)
    for tool in tools:
        assert f"{tool}-ok" in res["stdout"], res


IA32_PROBE = r"""
import ctypes, json, mmap
# push rbx; mov eax,edi; mov ebx,esi; xchg edx,ecx; int 0x80; pop rbx; ret
code = bytes.fromhex("5389f889f387cacd805bc3")
page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(code)
addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
call32 = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_long, ctypes.c_long, ctypes.c_long,
                          ctypes.c_long)(addr)
print(json.dumps({"getpid": call32(20, 0, 0, 0), "keyctl": call32(288, 0xFFFF, 0, 0),
                  "pidfd_getfd": call32(438, -1, 0, 0), "stime": call32(25, 1, 0, 0),
                  "io_uring_setup": call32(425, 1, 0, 0),
                  "socketcall": call32(102, 1, 0, 0),       # SYS_SOCKET, args at 0
                  "socket_vsock": call32(359, 40, 1, 0)}))  # AF_VSOCK, SOCK_STREAM
"""


def test_the_32bit_syscall_abi_is_filtered_too(run: Run) -> None:
    """``int 0x80`` reaches the ia32 syscall table, with other numbers: a filter that
    looked at numbers alone could be walked around that way."""
    host = host_probe(IA32_PROBE)
    if host["getpid"] < 0:
        pytest.skip("this kernel runs no 32-bit syscalls")
    # Control: on the host the same calls reach the kernel's own checks.
    assert host["keyctl"] != -errno.EPERM and host["pidfd_getfd"] == -errno.EBADF, host
    assert host["stime"] == -errno.EFAULT and host["io_uring_setup"] == -errno.EFAULT, host
    assert host["socketcall"] == -errno.EFAULT, host  # the multiplexer is there
    boxed = run_json(run, IA32_PROBE)
    assert boxed["getpid"] > 0, boxed  # the ABI works in a box (it is filtered, not killed)
    assert boxed["keyctl"] == -errno.EPERM, boxed
    assert boxed["pidfd_getfd"] == -errno.EPERM, boxed
    assert boxed["stime"] == -errno.EPERM, boxed
    assert boxed["io_uring_setup"] == -errno.ENOSYS, boxed
    # socketcall hides a socket's family in memory: refused whole, so libc uses the
    # direct call, whose family is checked.
    assert boxed["socketcall"] == -errno.ENOSYS, boxed
    assert boxed["socket_vsock"] == -errno.EAFNOSUPPORT, boxed
    if host["socket_vsock"] != -errno.EAFNOSUPPORT:  # this kernel has vsock
        assert host["socket_vsock"] >= 0, host


FD_PROBE = r"""
import json, os
fds = {}
for fd in os.listdir("/proc/self/fd"):
    try:
        fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        pass  # the descriptor listdir itself used
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
print(json.dumps({"fds": fds, "seccomp": status["Seccomp"].strip(),
                  "filters": status.get("Seccomp_filters", "").strip()}))
"""


def test_no_process_in_a_box_holds_the_filters_descriptor(
    server: LiveServer, http: httpx.Client
) -> None:
    """bwrap reads the filter from a descriptor the server passes down: neither boxd
    nor a workload keeps it."""
    compiled = str(server.data_dir / "runtime" / "seccomp.bpf")
    found = json.loads(execute(http, FD_PROBE, language="python")["stdout"])
    assert set(found["fds"]) == {"0", "1", "2"}, found["fds"]
    assert found["seccomp"] == "2" and found["filters"] == "1", found  # mode 2: a filter
    # From the host: boxd and everything under it, while a workload runs.
    marker = unique_sleep()
    trace = start_async(http, f"sleep {marker}", thread_id=thread_name("fds"), timeout=60)
    try:
        [sleeper] = wait_host_pids(f"sleep {marker}")
        chain = [sleeper]
        while BOXD_PATH not in Path(f"/proc/{chain[-1]}/cmdline").read_text():
            chain.append(int(Path(f"/proc/{chain[-1]}/stat").read_text()
                             .rsplit(")", 1)[1].split()[1]))
        for pid in chain:
            status = Path(f"/proc/{pid}/status").read_text()
            assert "Seccomp:\t2" in status, pid
            targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
            assert compiled not in targets, (pid, targets)
        # Control: the probe reads a process's descriptors and seccomp mode.
        own = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
               if os.path.exists(f"/proc/self/fd/{fd}")]
        assert own and "Seccomp:\t0" in Path("/proc/self/status").read_text()
    finally:
        cancel(http, trace)


def test_healthz_says_the_filter_is_on(server: LiveServer) -> None:
    assert httpx.get(server.url + "/healthz", timeout=10).json()["box_seccomp"] == "on"


SITE_WITHOUT_LIBSECCOMP = """
import ctypes.util
_find = ctypes.util.find_library
ctypes.util.find_library = lambda name: (
    "libseccomp-not-installed.so.2" if name == "seccomp" else _find(name))
"""


def test_without_libseccomp_the_server_starts_and_says_the_filter_is_off(
    tmp_path: Path,
) -> None:
    """A host without libseccomp (simulated: the library cannot be found) still runs
    boxes, unfiltered, and says so at start-up and in /healthz."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE_WITHOUT_LIBSECCOMP)
    path = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    with live_server({"PYTHONPATH": path, "SOPHON_BOX_POOL_SIZE": "0"}) as srv:
        health = httpx.get(srv.url + "/healthz", timeout=10).json()
        assert health["box_seccomp"].startswith("off: libseccomp is not installed"), health
        assert "SECCOMP FILTER OFF" in srv.log.read_text()
        with client(srv, srv.add_user()) as http:
            found = json.loads(execute(http, FD_PROBE, language="python")["stdout"])
            assert found["seccomp"] == "0", found
            # The layer under the filter still holds: boxd is non-dumpable, so ptrace and
            # pidfd_getfd fail on it while they work on the workload's own child.
            res = execute(http, f"BOXD_PATH = {BOXD_PATH!r}\n{BOXD_PROBE}",
                          language="python")
        assert res["exit_code"] == 0, res
        probed = json.loads(res["stdout"])
        assert probed["control"]["ptrace"] == "attached", probed
        assert probed["control"]["pidfd_getfd"] == "stolen", probed
        assert probed["attack"]["ptrace"] == errno.EPERM, probed
        assert probed["attack"]["pidfd_getfd"] == errno.EPERM, probed
