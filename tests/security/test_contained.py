"""The red team's contained kernel-facing cases, each tried from a box for real: host
processes by pid (kill, pidfd_open, pidfd_send_signal, /proc), a sibling box's process
(ptrace, process_vm_readv), user namespaces, mounts and eBPF.

Each probe runs twice: in a box of the ordinary server, and in one of a server whose
seccomp filter is off (libseccomp hidden, as test_seccomp.py does), to show that the
layer under the filter (the pid namespace, --disable-userns, no capabilities) holds on
its own. The controls show each probe working where it should: on the box's own child,
and for the namespace, mount and bpf probes on the host.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sophon.box.bwrap import BOXD_PATH
from tests.conftest import LiveServer
from tests.security.helpers import (
    cancel,
    client,
    execute,
    host_alive,
    host_pids,
    live_server,
    start_async,
    thread_name,
    unique_sleep,
    wait_gone,
    wait_host_pids,
)
from tests.security.test_seccomp import HOST_PYTHON, SITE_WITHOUT_LIBSECCOMP

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64",
                                reason="the probes use x86_64 syscall numbers")


@pytest.fixture(scope="module")
def unfiltered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server whose boxes run without the seccomp filter."""
    site = tmp_path_factory.mktemp("site")
    (site / "sitecustomize.py").write_text(SITE_WITHOUT_LIBSECCOMP)
    path = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    with live_server({"PYTHONPATH": path, "SOPHON_BOX_POOL_SIZE": "1"}) as srv:
        assert httpx.get(srv.url + "/healthz", timeout=10).json()["box_seccomp"] != "on"
        yield srv


@pytest.fixture(params=["filtered", "unfiltered"])
def target(request: pytest.FixtureRequest) -> Iterator[tuple[str, LiveServer, httpx.Client]]:
    """(which, server, a new user's client) for the ordinary and the unfiltered server."""
    srv: LiveServer = request.getfixturevalue(
        "server" if request.param == "filtered" else "unfiltered")
    with client(srv, srv.add_user()) as http:
        yield request.param, srv, http


def run_json(http: httpx.Client, code: str, **kw: Any) -> Any:
    res = execute(http, code, language="python", timeout=60, **kw)
    assert res["exit_code"] == 0, res
    return json.loads(res["stdout"])


# --- processes: the host's and a sibling box's ------------------------------------------

PID_PROBE = r"""
import ctypes, errno, json, os, signal, subprocess
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
PIDFD_OPEN, PIDFD_SEND_SIGNAL, PROCESS_VM_READV = 434, 424, 310
ATTACH, DETACH = 16, 17

class Iov(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

def outcome(rc):
    return "ok" if rc >= 0 else errno.errorcode[ctypes.get_errno()]

def probe(pid, sig=0):  # signal 0: permission and existence, no harm done
    r = {}
    fd = libc.syscall(PIDFD_OPEN, pid, 0)
    r["pidfd_open"] = outcome(fd)
    if fd >= 0:
        r["pidfd_send_signal"] = outcome(libc.syscall(PIDFD_SEND_SIGNAL, fd, sig, None, 0))
        os.close(fd)
    try:
        os.kill(pid, sig)
        r["kill"] = "ok"
    except OSError as exc:
        r["kill"] = errno.errorcode[exc.errno]
    try:
        # A /proc/<pid> directory is a pidfd too (pidfd_send_signal takes it).
        fd = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY)
        r["proc_dir"] = "ok"
        os.close(fd)
    except OSError as exc:
        r["proc_dir"] = errno.errorcode[exc.errno]
    buf = ctypes.create_string_buffer(8)
    local, remote = Iov(ctypes.addressof(buf), 8), Iov(0x10000, 8)
    rc = libc.syscall(PROCESS_VM_READV, pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    r["process_vm_readv"] = outcome(rc)   # EFAULT: allowed, at an unmapped address
    if libc.ptrace(ATTACH, pid, None, None) == 0:
        r["ptrace"] = "ok"
        os.waitpid(pid, 0x40000000)
        libc.ptrace(DETACH, pid, None, None)
        # The attach's SIGSTOP can leave the process group-stopped after the detach, and a
        # stopped process keeps a SIGTERM pending: continue it (seen once in CI: the
        # control's SIGTERM then never ended it).
        os.kill(pid, signal.SIGCONT)
    else:
        r["ptrace"] = errno.errorcode[ctypes.get_errno()]
    return r

own = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
child = subprocess.Popen(["sleep", "60"])
control = probe(child.pid)
fd = libc.syscall(PIDFD_OPEN, child.pid, 0)
control["pidfd_sigterm"] = outcome(libc.syscall(PIDFD_SEND_SIGNAL, fd, signal.SIGTERM, None, 0))
control["died_of"] = -child.wait(timeout=20)
host = {str(pid): probe(pid) for pid in HOST_PIDS if pid not in own}
with open("/proc/1/cmdline", "rb") as f:
    init = f.read().replace(b"\0", b" ").decode().strip()
# The box's init is boxd: the kernel ignores SIGKILL sent to it from inside its namespace.
pid1 = {"kill": "ok"}
try:
    os.kill(1, signal.SIGKILL)
except OSError as exc:
    pid1["kill"] = errno.errorcode[exc.errno]
fd = libc.syscall(PIDFD_OPEN, 1, 0)
pid1["pidfd_send_signal"] = outcome(libc.syscall(PIDFD_SEND_SIGNAL, fd, signal.SIGKILL, None, 0)
                                    if fd >= 0 else fd)
print(json.dumps({"own": own, "control": control, "host": host, "init": init, "pid1": pid1}))
"""


def test_host_and_sibling_pids_are_out_of_reach_from_a_box(
    target: tuple[str, LiveServer, httpx.Client]
) -> None:
    which, srv, http = target
    assert srv.proc is not None
    victim_marker, keep = unique_sleep(), unique_sleep()
    trace = start_async(http, f"sleep {victim_marker}", thread_id=thread_name("victim"),
                        timeout=120)
    thread = thread_name("attacker")
    try:
        [victim] = wait_host_pids(f"sleep {victim_marker}")
        host_pids_ = [srv.proc.pid, os.getpid(), victim]
        # A process of the attacker's box that must outlive its attempt on pid 1 (if boxd
        # died, the kernel would end the box's whole pid namespace with it).
        started = execute(http, f"setsid nohup sleep {keep} >/dev/null 2>&1 & echo ok",
                          thread_id=thread)
        assert started["stdout"] == "ok\n", started
        [kept] = wait_host_pids(f"sleep {keep}")
        found = run_json(http, f"HOST_PIDS = {host_pids_!r}\n{PID_PROBE}", thread_id=thread)

        # Control: the same calls reach the box's own child, and its signal kills it.
        control = found["control"]
        assert control["pidfd_open"] == "ok" and control["kill"] == "ok", found
        assert control["pidfd_send_signal"] == "ok" and control["proc_dir"] == "ok", found
        assert control["pidfd_sigterm"] == "ok" and control["died_of"] == signal.SIGTERM, found
        if which == "unfiltered":  # the filter is what refuses these on one's own child
            assert control["ptrace"] == "ok", found
            assert control["process_vm_readv"] == "EFAULT", found
        else:
            assert control["ptrace"] == control["process_vm_readv"] == "EPERM", found

        # The host's pids (the server, the test, a process of another box) name nothing.
        assert str(srv.proc.pid) in found["host"], f"the server's pid is a box pid: {found}"
        for pid, got in found["host"].items():
            assert got["pidfd_open"] == got["kill"] == "ESRCH", (pid, got)
            assert got["proc_dir"] == "ENOENT", (pid, got)
            # (the filter answers these first, whatever the target)
            expect = "ESRCH" if which == "unfiltered" else "EPERM"
            assert got["ptrace"] == got["process_vm_readv"] == expect, (pid, got)
        # pid 1 in a box is boxd, not the host's init, and signals do not end it.
        assert found["init"].endswith(BOXD_PATH), found
        host_init = Path("/proc/1/cmdline").read_bytes().split(b"\0")[0].decode()
        assert host_init not in found["init"], found
        assert host_alive(victim) and host_alive(kept) and srv.proc.poll() is None
        again = execute(http, f"pgrep -fc 'sleep {keep}'", thread_id=thread)
        assert again["stdout"] == "1\n", again  # the same box, boxd alive
    finally:
        cancel(http, trace)
        for pid in host_pids(f"sleep {keep}"):
            os.kill(pid, signal.SIGKILL)
    wait_gone(f"sleep {victim_marker}")


# --- user namespaces, mounts, eBPF ------------------------------------------------------

KERNEL_PROBE = r"""
import ctypes, errno, json, os, shutil, subprocess
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
CLONE_NEWUSER, CLONE_NEWNS, SIGCHLD = 0x10000000, 0x00020000, 17

def outcome(rc):
    return "ok" if rc >= 0 else errno.errorcode[ctypes.get_errno()]

def in_child(fn):
    # Each attempt in a child of its own, so one that works changes nothing here.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            got = fn()
        except Exception as exc:  # noqa: BLE001 (reported, not raised)
            got = repr(exc)
        os.write(w, json.dumps(got).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.waitpid(pid, 0)
    return json.loads(data)

def raw_clone():
    pid = libc.syscall(56, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)
    if pid == 0:
        os._exit(0)
    if pid > 0:
        os.waitpid(pid, 0)
    return outcome(pid)

def tool(argv):
    if shutil.which(argv[0]) is None:
        return "missing"
    p = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    return "ok" if p.returncode == 0 and p.stdout.strip() == "in" else "failed"

def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(bytes(attr), 128)
    return outcome(libc.syscall(321, cmd, buf, 128))

def u32s(*vals):
    return b"".join(v.to_bytes(4, "little") for v in vals)

PROG = bytes.fromhex("b700000000000000" "9500000000000000")  # r0 = 0; exit
prog = ctypes.create_string_buffer(PROG)
lic = ctypes.create_string_buffer(b"GPL")
def prog_load():
    attr = u32s(1, 2) + ctypes.addressof(prog).to_bytes(8, "little") + \
        ctypes.addressof(lic).to_bytes(8, "little")       # SOCKET_FILTER, 2 insns, "GPL"
    return bpf(5, attr)

def mount_tmpfs():
    os.makedirs(MNT, exist_ok=True)
    rc = libc.mount(b"none", MNT.encode(), b"tmpfs", 0, None)
    got = outcome(rc)
    if rc == 0:
        libc.umount2(MNT.encode(), 2)
    return got

out = {
    "fork": in_child(lambda: "ok"),                      # control: a plain child works
    "unshare_user": in_child(lambda: outcome(libc.unshare(CLONE_NEWUSER))),
    "unshare_user_mount": in_child(lambda: outcome(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS))),
    "clone_newuser": in_child(raw_clone),
    "unshare -U": tool(["unshare", "-U", "echo", "in"]),
    "unshare -r": tool(["unshare", "-r", "echo", "in"]),
    "unshare -Urm": tool(["unshare", "-Urm", "echo", "in"]),
    "bwrap --unshare-user": tool(["bwrap", "--unshare-user", "--ro-bind", "/", "/",
                                  "echo", "in"]),
    "mount_tmpfs": in_child(mount_tmpfs),
    "fsopen_tmpfs": in_child(lambda: outcome(libc.syscall(430, b"tmpfs", 0))),
    "bpf_map_create": bpf(0, u32s(2, 4, 4, 1)),          # an array map of one u32
    "bpf_prog_load": prog_load(),
}
print(json.dumps(out))
"""

NAMESPACE_CALLS = ("unshare_user", "unshare_user_mount", "clone_newuser")
NAMESPACE_TOOLS = ("unshare -U", "unshare -r", "unshare -Urm", "bwrap --unshare-user")


def host_kernel_probe(*, unprivileged: bool, mnt: str) -> dict[str, Any]:
    """The probe on the host: as root in a mount namespace of its own (so a mount it
    makes is nobody else's), or as an unprivileged user."""
    argv = [HOST_PYTHON, "-c", f"MNT = {mnt!r}\n{KERNEL_PROBE}"]
    if unprivileged:
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", *argv]
    else:
        argv = ["unshare", "-m", "--propagation", "private", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/",
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.mark.skipif(os.geteuid() != 0, reason="the controls need the host's root")
def test_user_namespaces_mounts_and_ebpf_are_refused_in_a_box(
    target: tuple[str, LiveServer, httpx.Client], tmp_path: Path
) -> None:
    which, _, http = target
    # Controls: an unprivileged host user makes user namespaces with each of these, and
    # root mounts a tmpfs and loads eBPF: the probes reach what they try.
    tmp_path.chmod(0o777)
    nobody = host_kernel_probe(unprivileged=True, mnt=str(tmp_path / "m"))
    for name in NAMESPACE_CALLS:
        assert nobody[name] == "ok", (name, nobody)
    assert [nobody[t] for t in NAMESPACE_TOOLS] == ["ok"] * 4, nobody
    root = host_kernel_probe(unprivileged=False, mnt=str(tmp_path / "m"))
    assert root["mount_tmpfs"] == root["fsopen_tmpfs"] == "ok", root
    assert root["bpf_map_create"] == root["bpf_prog_load"] == "ok", root

    boxed = run_json(http, f"MNT = '/workspace/m'\n{KERNEL_PROBE}", thread_id=thread_name("ns"))
    assert boxed["fork"] == "ok", boxed
    for name in NAMESPACE_CALLS:
        assert boxed[name] != "ok", (which, name, boxed)
    for name in NAMESPACE_TOOLS:
        assert boxed[name] == "failed", (which, name, boxed)
    assert boxed["mount_tmpfs"] == boxed["fsopen_tmpfs"] == "EPERM", (which, boxed)
    assert boxed["bpf_map_create"] == boxed["bpf_prog_load"] == "EPERM", (which, boxed)
    if which == "filtered":
        assert {boxed[n] for n in NAMESPACE_CALLS} == {"EPERM"}, boxed
    else:  # bwrap's --disable-userns: the box's user namespace may hold no other
        assert {boxed[n] for n in NAMESPACE_CALLS} <= {"ENOSPC", "EPERM"}, boxed
    mounts = execute(http, "grep -c ' /workspace/m ' /proc/self/mounts; true",
                     thread_id=thread_name("ns-after"))
    assert mounts["stdout"].strip() == "0", mounts
