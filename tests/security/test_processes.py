"""Process isolation: other boxes' processes, boxd itself, and process lifetime."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import httpx
import pytest

from sophon.box.bwrap import BOXD_PATH
from tests.conftest import LiveServer, wait_for
from tests.security.conftest import Run
from tests.security.helpers import (
    cancel,
    client,
    execute,
    execution,
    host_alive,
    host_pids,
    start_async,
    thread_name,
    unique_sleep,
    wait_finished,
    wait_gone,
    wait_host_pids,
)

PEEK_AND_KILL = r"""
import json, os, signal, subprocess
own = subprocess.Popen(["sleep", OWN])
while b"sleep" not in open(f"/proc/{own.pid}/cmdline", "rb").read():
    pass  # until it has exec'd
procs = {}
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                procs[pid] = f.read().replace(b"\0", b" ").decode().strip()
        except OSError:
            pass
ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
pkill = subprocess.run(["pkill", "-KILL", "-f", "sleep " + THEIRS]).returncode
try:
    os.kill(HOST_PID, signal.SIGKILL)
    kill = "sent"
except OSError as exc:
    kill = exc.errno
own.kill()
print(json.dumps({"procs": procs, "ps": ps, "pkill": pkill, "kill": kill}))
"""


def test_cannot_see_or_signal_another_boxs_processes(
    http: httpx.Client, run: Run
) -> None:
    theirs, own = unique_sleep(), unique_sleep()
    trace = start_async(http, f"sleep {theirs}", thread_id=thread_name("victim"), timeout=120)
    try:
        [victim] = wait_host_pids(f"sleep {theirs}")
        code = f"THEIRS, OWN, HOST_PID = {theirs!r}, {own!r}, {victim}\n{PEEK_AND_KILL}"
        res = run(code, language="python", thread_id=thread_name("attacker"))
        assert res["exit_code"] == 0, res
        seen = json.loads(res["stdout"])

        # Control: the box does see its own processes, with both tools.
        assert f"sleep {own}" in seen["procs"].values()
        assert f"sleep {own}" in seen["ps"]
        # Not the other box's.
        assert theirs not in seen["ps"]
        assert not any(theirs in cmd for cmd in seen["procs"].values())
        assert seen["pkill"] == 1, "pkill matched something"  # 1: no process matched
        if str(victim) not in seen["procs"]:  # (a host pid means nothing in the box)
            assert seen["kill"] == errno.ESRCH, seen["kill"]
        # Its pid namespace holds boxd and the exec's own processes, nothing else.
        cmds = sorted(seen["procs"].values())
        assert len(cmds) <= 5, cmds
        for cmd in cmds:
            assert (cmd.endswith(BOXD_PATH) or cmd == f"sleep {own}"
                    or cmd.startswith(("python3 -c import runpy", "ps ", "pkill "))), cmds

        # kill(-1): everything the caller may signal. Outside a pid namespace that would
        # be every process of the boxes' shared host uid, the victim among them.
        run("kill -9 -1", thread_id=thread_name("kill-all"))
        run("kill -9 -1")
        assert host_alive(victim), "another box killed the victim"
        assert execution(http, trace)["status"] == "running"
    finally:
        cancel(http, trace)
    wait_gone(f"sleep {theirs}")


PTRACE_PROBE = r"""
import ctypes, json, os, subprocess
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
libc.syscall.restype = ctypes.c_long
PTRACE_ATTACH, PTRACE_DETACH = 16, 17
SYS_pidfd_open, SYS_pidfd_getfd = 434, 438

def boxd_pid():
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if BOXD_PATH.encode() in argv and b"bwrap" not in argv[0]:
                return int(p)

def attack(pid):
    r = {}
    if libc.ptrace(PTRACE_ATTACH, pid, None, None) == 0:
        r["ptrace"] = "attached"
        os.waitpid(pid, 0x40000000)  # __WALL
        libc.ptrace(PTRACE_DETACH, pid, None, None)
    else:
        r["ptrace"] = ctypes.get_errno()
    for name in ("mem", "environ", "auxv"):
        try:
            with open(f"/proc/{pid}/{name}", "rb") as f:
                if name != "mem":  # (mem opens, but reads only mapped addresses)
                    f.read(1)
            r[name] = "read"
        except OSError as exc:
            r[name] = exc.errno
    try:
        os.listdir(f"/proc/{pid}/fd")
        r["fd"] = "listed"
    except OSError as exc:
        r["fd"] = exc.errno
    pidfd = libc.syscall(SYS_pidfd_open, pid, 0)
    fd = libc.syscall(SYS_pidfd_getfd, pidfd, 0, 0)
    r["pidfd_getfd"] = "stolen" if fd >= 0 else ctypes.get_errno()
    return r

target = boxd_pid()
child = subprocess.Popen(["sleep", "60"], stdin=subprocess.PIPE)
control = attack(child.pid)
child.kill()
print(json.dumps({"boxd": target, "attack": attack(target), "control": control}))
"""


def test_cannot_ptrace_or_read_boxd(run: Run) -> None:
    res = run(f"BOXD_PATH = {BOXD_PATH!r}\n{PTRACE_PROBE}", language="python")
    assert res["exit_code"] == 0, res
    found = json.loads(res["stdout"])
    assert found["boxd"], "could not find boxd"
    # Control: the /proc attacks work on a process of the workload's own; ptrace attach
    # and pidfd_getfd are refused by the seccomp filter for every target (that boxd is
    # out of their reach even without the filter is shown in test_seccomp.py).
    control = found["control"]
    assert {control[k] for k in ("mem", "environ", "auxv", "fd")} <= {"read", "listed"}, found
    assert control["ptrace"] == control["pidfd_getfd"] == errno.EPERM, found
    for what, outcome in found["attack"].items():
        assert outcome in (errno.EPERM, errno.EACCES), f"{what} on boxd: {outcome}"


FORGE = r"""
import ctypes, json, os, re, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
rid = int(re.search(r"exec-(\d+)", sys.argv[0]).group(1))   # our request id

def frame(obj):
    data = json.dumps(obj).encode()
    return struct.pack(">I", len(data)) + data

# Whatever process holds the pipe to the server (boxd, or an init in front of it),
# try to take its stdout: pidfd_getfd needs only ptrace rights, not open rights.
chan = None
for pid in sorted(int(p) for p in os.listdir("/proc") if p.isdigit()):
    if pid == os.getpid():
        continue
    pidfd = libc.syscall(434, pid, 0)                # pidfd_open
    if pidfd >= 0:
        fd = libc.syscall(438, pidfd, 1, 0)          # pidfd_getfd(pidfd, 1)
        if fd >= 0 and os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:"):
            if os.fstat(fd).st_ino != os.fstat(1).st_ino:  # not our own stdout
                chan = fd
                break
    try:
        fd = os.open(f"/proc/{pid}/fd/1", os.O_WRONLY)
        if os.fstat(fd).st_ino != os.fstat(1).st_ino:
            chan = fd
            break
    except OSError:
        pass
if chan is not None:
    big = "F" * 60000
    for _ in range(40):                              # 2.4 MB, past the 1 MiB output cap
        os.write(chan, frame({"id": rid, "kind": "out", "stream": "stdout", "data": big}))
    os.write(chan, frame({"id": rid, "kind": "out", "stream": "stdout", "data": "FORGED\n"}))
    os.write(chan, frame({"id": rid, "kind": "done", "exit_code": 0}))
sys.exit(3)
"""


def test_workload_cannot_talk_on_the_servers_channel(run: Run) -> None:
    """The pipes between the server and boxd carry the box's results: a workload that
    could write there would forge them (and its output past the cap), and one that
    could read there would see the next requests."""
    res = run(FORGE, language="python", timeout=30)
    assert "FORGED" not in res["stdout"], "the workload forged boxd's output"
    assert len(res["stdout"]) <= 1024 * 1024, "forged output went past the output cap"
    assert res["exit_code"] == 3 and not res["success"], "the workload forged its result"


def test_background_process_dies_with_a_fresh_box(server: LiveServer, http: httpx.Client) -> None:
    marker = unique_sleep()
    trace = start_async(http, f"""
setsid nohup sleep {marker} >/dev/null 2>&1 &
nohup sleep {marker} >/dev/null 2>&1 &
python3 -c 'import os, subprocess
if os.fork() == 0:
    os.setsid()
    subprocess.Popen(["sleep", "{marker}"], start_new_session=True)' &
while [ ! -e /workspace/release ]; do sleep 0.02; done
""")
    # Control: while the call runs the processes exist, and the host sees them.
    pids = wait_for_count(f"sleep {marker}", 3)
    Path(f"/proc/{pids[0]}/root/workspace/release").touch()
    assert wait_finished(http, trace)["status"] == "success"
    wait_gone(f"sleep {marker}")


def wait_for_count(needle: str, count: int) -> list[int]:
    def enough() -> list[int] | None:
        found = host_pids(needle)
        return found if len(found) >= count else None

    found = wait_for(enough, 15, 0.02, f"{count} host processes matching {needle!r}")
    assert isinstance(found, list)
    return found


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_thread_box_processes_die_with_the_server(how: str, own_server: LiveServer) -> None:
    marker = unique_sleep()
    srv = own_server
    with client(srv, srv.add_user()) as http:
        thread = thread_name("leftover")
        res = execute(http, f"""
setsid nohup sleep {marker} >/dev/null 2>&1 &
nohup sleep {marker} >/dev/null 2>&1 &
echo started
""", thread_id=thread)
        assert res["stdout"] == "started\n", res
        # Control: a thread's box keeps its background processes after the call.
        wait_for_count(f"sleep {marker}", 2)
        if how == "stop":
            srv.stop()
        else:
            srv.kill()
        wait_gone(f"sleep {marker}")
