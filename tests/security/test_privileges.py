"""Privileges: the workload stays uid 1000 with no capabilities, whatever it runs."""

from __future__ import annotations

import errno
import json
import os
import stat

from tests.security.conftest import Run

CAP_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def status_fields(text: str) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def test_capabilities_are_all_zero(run: Run) -> None:
    res = run("cat /proc/self/status; echo ===; python3 -c 'print(open(\"/proc/self/status\")"
              ".read())'; echo ===; cat /proc/1/status")
    assert res["exit_code"] == 0, res
    for part in res["stdout"].split("===\n"):
        fields = status_fields(part)
        for cap in CAP_FIELDS:
            assert int(fields[cap], 16) == 0, f"{cap} = {fields[cap]} in {fields['Name']}"
        assert fields["NoNewPrivs"] == "1", fields["Name"]
        assert fields["Uid"].split() == ["1000"] * 4, fields["Uid"]


ESCALATIONS = [
    ["su", "-c", "id -u", "root"],
    ["su", "root", "-s", "/bin/sh", "-c", "id -u"],
    ["sudo", "-n", "id", "-u"],
    ["pkexec", "id", "-u"],
    ["mount", "-t", "tmpfs", "none", "/workspace/mnt"],
    ["mount", "--bind", "/", "/workspace/mnt"],
    ["mount", "-o", "remount,rw", "/usr"],
    ["unshare", "-r", "id", "-u"],
    ["unshare", "-U", "id", "-u"],
    ["unshare", "-m", "id", "-u"],
    ["unshare", "-n", "id", "-u"],
    ["nsenter", "-t", "1", "-a", "id", "-u"],
    ["nsenter", "-t", "1", "-U", "id", "-u"],
    ["setpriv", "--reuid=0", "id", "-u"],
    ["/usr/sbin/chroot", "/", "id", "-u"],
    ["python3", "-c", "import os; os.setuid(0); print(os.getuid())"],
]
OPTIONAL = {"sudo", "pkexec"}  # not installed everywhere; tried when they are


def test_su_sudo_mount_unshare_nsenter_give_nothing(run: Run) -> None:
    res = run(f"""
import json, os, shutil, subprocess
os.makedirs("/workspace/mnt", exist_ok=True)
out = []
for argv in {ESCALATIONS!r}:
    if shutil.which(argv[0]) is None:
        out.append({{"cmd": argv, "missing": True}})
        continue
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=5)
        out.append({{"cmd": argv, "rc": p.returncode, "out": p.stdout, "err": p.stderr}})
    except subprocess.TimeoutExpired:
        out.append({{"cmd": argv, "rc": "timeout", "out": ""}})
print(json.dumps(out))
""", language="python", timeout=60)
    assert res["exit_code"] == 0, res
    for a in json.loads(res["stdout"]):
        if a.get("missing"):
            assert a["cmd"][0] in OPTIONAL, f"{a['cmd'][0]} is not in the box to try"
            continue
        assert a["rc"] != 0, f"succeeded: {a}"
        assert a["out"].strip() != "0", f"became root: {a}"
    final = run("id -u; grep -c /workspace/mnt /proc/self/mounts; ls /workspace/mnt | wc -l")
    assert final["stdout"].split() == ["1000", "0", "0"], final


SETUID_PROBE = r"""
import json, os, subprocess, time
found = subprocess.run(["find", "/usr", "-perm", "/6000", "-type", "f"],
                       capture_output=True, text=True).stdout.split()

def settled(pid):
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f.read().splitlines())
    # Popen returns when the exec closes its CLOEXEC pipe, which the kernel does before it
    # sets the new name and credentials: wait until the new program runs (named, and
    # blocked on its stdin or exited: a zombie keeps its credentials until reaped).
    done = fields["Name"].strip() != "python3" and fields["State"].split()[0] in "SZTt"
    return done, fields

def creds(argv):
    r, w = os.pipe()
    p = subprocess.Popen(argv, stdin=r, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    os.close(r)
    deadline = time.monotonic() + 10
    done, fields = settled(p.pid)
    while not done and time.monotonic() < deadline:
        time.sleep(0.01)
        done, fields = settled(p.pid)
    p.kill()
    p.wait()
    os.close(w)
    return {"name": fields["Name"].strip(), "uid": fields["Uid"].split(),
            "gid": fields["Gid"].split(), "groups": fields["Groups"].split()}

# (a binary the box user may not even execute, like dbus's 4754 helper, gives nothing)
report = {b: creds([b]) for b in found if os.access(b, os.X_OK)}
report["control"] = creds(["sleep", "5"])
print(json.dumps(report))
"""


def test_setuid_binaries_give_nothing(run: Run) -> None:
    res = run(SETUID_PROBE, language="python", timeout=60)
    assert res["exit_code"] == 0, res
    report = json.loads(res["stdout"])
    control = report.pop("control")
    assert control["name"] == "sleep" and control["uid"] == ["1000"] * 4  # the probe works
    # Control: the host does have setuid binaries, and the box sees them.
    assert "/usr/bin/su" in report
    assert os.stat("/usr/bin/su").st_mode & stat.S_ISUID
    for binary, seen in report.items():
        # It did exec (newgrp may already have exec'd its shell: those creds count too).
        assert seen["name"] != "python3", (binary, seen)
        assert seen["uid"] == ["1000"] * 4, f"{binary} changed uid: {seen}"
        assert seen["gid"] == ["1000"] * 4, f"{binary} changed gid: {seen}"
        assert seen["groups"] in ([], ["1000"]), f"{binary} gained groups: {seen}"
    mounts = run("cat /proc/self/mountinfo")["stdout"]
    usr = next(line for line in mounts.splitlines() if line.split()[4] == "/usr")
    assert "nosuid" in usr.split()[5].split(","), usr


def test_mknod_fails(run: Run) -> None:
    res = run(r"""
import errno, json, os, stat
out = {}
for path, mode, dev in [
    ("/tmp/null", stat.S_IFCHR, os.makedev(1, 3)),
    ("/tmp/mem", stat.S_IFCHR, os.makedev(1, 1)),
    ("/workspace/disk", stat.S_IFBLK, os.makedev(8, 0)),
    ("/home/user/kmsg", stat.S_IFCHR, os.makedev(1, 11)),
    ("/dev/shm/vda", stat.S_IFBLK, os.makedev(253, 0)),
    ("/tmp/fifo", stat.S_IFIFO, 0),           # control: an unprivileged kind of node
]:
    try:
        os.mknod(path, mode | 0o666, dev)
        out[path] = "created"
    except OSError as exc:
        out[path] = exc.errno
print(json.dumps(out))
""", language="python")
    assert res["exit_code"] == 0, res
    out = json.loads(res["stdout"])
    assert out.pop("/tmp/fifo") == "created"
    for path, outcome in out.items():
        assert outcome == errno.EPERM, f"mknod {path}: {outcome}"
    cli = run("mknod /tmp/null2 c 1 3 && echo MADE; ls -l /tmp/null2 2>/dev/null; true")
    assert "MADE" not in cli["stdout"], cli


def test_dev_has_only_harmless_devices_and_writable_mounts_are_nodev(run: Run) -> None:
    res = run("ls -l /dev | grep -E '^[bc]'; echo ===; cat /proc/self/mountinfo")
    devices, mountinfo = res["stdout"].split("===\n")
    names = {line.split()[-1] for line in devices.splitlines()}
    assert names <= {"null", "zero", "full", "random", "urandom", "tty"}, names
    for line in mountinfo.splitlines():
        fields = line.split()
        if fields[4] in ("/workspace", "/home/user", "/tmp", "/usr"):
            assert "nodev" in fields[5].split(","), line
