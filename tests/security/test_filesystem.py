"""Filesystem isolation: what a workload can write, what it can read, where symlinks lead."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

import httpx

from sophon.box.bwrap import BOXD_PATH, ETC_FILES, SYSTEM_DIRS, SYSTEM_FILES, TRUST_BUNDLE
from tests.conftest import LiveServer, wait_for
from tests.security.conftest import Run
from tests.security.helpers import (
    assert_healthy,
    box_dir_holding,
    box_files,
    client,
    execute,
    snapshot,
    start_async,
    thread_name,
    wait_finished,
)

AGENT_DIR = os.path.dirname(BOXD_PATH)  # where boxd (and anything it needs) is mounted

# Python, run in a box after a line setting DIRS: try to create a file in each of the
# directories and print, as JSON, the ones it could write to.
WRITE_PROBE = """
import json, os
writable = []
for d in DIRS:
    p = os.path.join(d, ".sec-write-probe")
    try:
        with open(p, "x") as f:
            f.write("x")
    except OSError:
        continue
    writable.append(d)
    os.unlink(p)
print(json.dumps(writable))
"""


def write_probe(run: Run, dirs: list[str]) -> list[str]:
    res = run(f"DIRS = {dirs!r}\n{WRITE_PROBE}", language="python")
    assert res["exit_code"] == 0, res
    return json.loads(res["stdout"])


# --- writing ----------------------------------------------------------------------------


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_system_paths_and_boxd_are_read_only(run: Run, server: LiveServer) -> None:
    runtime = server.data_dir / "runtime"  # what the server binds read-only into boxes
    before = file_hashes(runtime)
    assert any(name.endswith(os.path.basename(BOXD_PATH)) for name in before)  # control
    marker = f"pwned-{secrets.token_hex(4)}"
    res = run(f"""
boxd_before=$(sha256sum {BOXD_PATH})
for f in /usr/{marker} /usr/bin/{marker} /usr/lib/{marker} /usr/local/{marker} \\
         /etc/ssl/{marker} /etc/alternatives/{marker} {AGENT_DIR}/{marker} \\
         {AGENT_DIR}/__pycache__/{marker}; do
    touch "$f" 2>/dev/null && echo "WROTE $f"
done
for f in $(find {AGENT_DIR} -type f) /etc/passwd /etc/group /etc/hosts /etc/resolv.conf \\
         /etc/ld.so.cache /etc/nsswitch.conf; do
    (echo "{marker}" >> "$f") 2>/dev/null && echo "WROTE $f"
    rm -f "$f" 2>/dev/null && echo "REMOVED $f"
done
[ "$(sha256sum {BOXD_PATH})" = "$boxd_before" ] || echo "BOXD CHANGED"
echo control > /workspace/{marker} && cat /workspace/{marker}
""")
    assert "WROTE" not in res["stdout"], res
    assert "REMOVED" not in res["stdout"], res
    assert "BOXD CHANGED" not in res["stdout"], res
    assert res["stdout"].rstrip().endswith("control"), f"control write failed: {res}"
    # The host's copies are intact.
    assert not Path(f"/usr/{marker}").exists()
    assert file_hashes(runtime) == before


def test_the_file_helper_s_modules_come_compiled_for_the_box_s_python(run: Run) -> None:
    """boxd's file helper's modules are compiled once on the host (box/bwrap.py), not at every box's
    start: the compiled file the box's python looks for is there, for its version, and
    taken without a look at the source (the box's copies have new times)."""
    res = run(f"""
import importlib.util, json
spec = importlib.util.spec_from_file_location("fileserver", "{AGENT_DIR}/fileserver.py")
with open(spec.cached, "rb") as f:
    head = f.read(16)
print(json.dumps({{"magic": head[:4] == importlib.util.MAGIC_NUMBER,
                  "flags": int.from_bytes(head[4:8], "little")}}))
""", language="python")
    assert res["exit_code"] == 0, res
    # flags 1: a hash-based file whose source is not checked
    assert json.loads(res["stdout"]) == {"magic": True, "flags": 1}, res


def test_home_is_writable_and_private_to_the_box(run: Run, server: LiveServer) -> None:
    """The control for the write probes: /workspace, /home/user and /tmp take writes,
    and the two persistent ones land in the box's own directory on the host."""
    thread = thread_name("home")
    token = secrets.token_hex(8)
    assert write_probe(run, ["/workspace", "/home/user", "/tmp"]) == [
        "/workspace", "/home/user", "/tmp"]
    res = run(f"echo {token} > /home/user/h.txt && echo {token} > /workspace/w.txt",
              thread_id=thread)
    assert res["success"], res
    box = box_dir_holding(server, "home/h.txt")
    assert (box / "home" / "h.txt").read_text() == f"{token}\n"
    assert (box / "workspace" / "w.txt").read_text() == f"{token}\n"


def test_only_workspace_home_and_tmp_are_writable(run: Run) -> None:
    # /dev/shm is the one extra allowed: POSIX shared memory (multiprocessing) needs it.
    # /home/baponi: a thread's storage (its home directory again, where Baponi code looks).
    allowed = ["/workspace", "/home/user", "/home/baponi", "/tmp", "/dev/shm"]
    candidates = ["/", "/etc", "/opt", "/opt/sophon", AGENT_DIR, "/home", "/dev", "/dev/pts",
                  "/usr", "/usr/local", "/usr/bin", "/proc", *SYSTEM_DIRS]
    assert write_probe(run, allowed) == allowed  # the probe does see writable places
    writable = write_probe(run, candidates)
    # Any other writable directory anywhere (a full walk, but not of read-only /usr).
    res = run(r"find / \( -path /proc -o -path /usr -o -path /dev/pts \) -prune "
              r"-o -type d -writable -print")
    extra = sorted(
        d for d in res["stdout"].split()
        if not any(d == a or d.startswith(a + "/") for a in allowed)
    )
    assert writable == [] and extra == [], f"writable: {writable}; also found: {extra}"


# --- reading ----------------------------------------------------------------------------


def test_cannot_read_host_shadow_or_sudoers(run: Run) -> None:
    host_shadow = Path("/etc/shadow").read_text()
    assert host_shadow.startswith("root:")  # control: there is a secret to steal
    res = run("""
for f in /etc/shadow /etc/gshadow /etc/sudoers /etc/shadow- /proc/1/root/etc/shadow; do
    cat "$f" 2>/dev/null && echo "READ $f"
done
ls -a /etc
""")
    assert "READ" not in res["stdout"], res
    assert host_shadow.splitlines()[0] not in res["stdout"]
    # /etc in the box holds only what the server puts there.
    expected = (set(ETC_FILES) | {Path(f).name for f in SYSTEM_FILES if f.startswith("/etc/")}
                | {Path(d).name for d in SYSTEM_DIRS if d.startswith("/etc/")} | {".", ".."}
                | {Path(TRUST_BUNDLE).parent.name})  # the egress door's CA bundle
    listed = set(res["stdout"].split())
    assert listed <= expected, f"host /etc entries visible in the box: {listed - expected}"


def test_cannot_list_root_home(run: Run) -> None:
    assert Path("/root").is_dir()  # control: the host has one
    res = run("""
ls -la /root && echo "LISTED /root"
ls -la ~root && echo "LISTED ~root"
ls -la /proc/1/root/root && echo "LISTED /proc/1/root/root"
true
""")
    assert "LISTED" not in res["stdout"], res


def test_server_data_dir_is_not_visible(run: Run, server: LiveServer) -> None:
    data = server.data_dir
    assert (data / "sophon.db").is_file()  # control: it is there on the host
    paths = [data, data / "sophon.db", data / "server.log", data / "boxes", data / "runtime"]
    res = run(f"""
for p in {" ".join(str(p) for p in paths)}; do
    [ -e "$p" ] && echo "EXISTS $p"
    ls "$p" >/dev/null 2>&1 && echo "LISTED $p"
    [ -e "/proc/1/root$p" ] && echo "EXISTS /proc/1/root$p"
done
find / \\( -path /proc -o -path /usr \\) -prune -o -name 'sophon.db*' -print 2>/dev/null
# (the pattern is built at run time so that this script does not match itself)
grep -rlF "$(printf 'SQLite format %d' 3)" / --exclude-dir=proc --exclude-dir=usr 2>/dev/null
true
""", timeout=60)
    assert res["exit_code"] == 0, res
    assert res["stdout"] == "", f"the server's data is visible in the box: {res['stdout']}"


def test_other_threads_files_are_invisible(
    server: LiveServer, http: httpx.Client, run: Run
) -> None:
    thread = thread_name("files")
    token = secrets.token_hex(12)
    files = ["/workspace/secret.txt", "/home/user/secret.txt", "/tmp/secret.txt"]
    writes = " && ".join(f"echo {token} > {f}" for f in files)
    assert run(writes, thread_id=thread)["success"]
    # Control: the thread itself reads its files back, so the probe below would see them.
    cats = "; ".join(f"cat {f}" for f in files)
    assert run(cats, thread_id=thread)["stdout"] == f"{token}\n" * 3
    host_box = box_dir_holding(server, "workspace/secret.txt")

    probe = f"""
{cats}
cat {host_box}/workspace/secret.txt {host_box}/home/secret.txt
ls {server.data_dir}/boxes
T={token[:12]}; T="${{T}}{token[12:]}"  # not spelt out whole: the script must not match
grep -rs "$T" /workspace /home /tmp /opt /etc
find / \\( -path /proc -o -path /usr \\) -prune -o -name secret.txt -print
true
"""
    other_thread = run(probe, thread_id=thread_name("files-b"))
    no_thread = run(probe)
    with client(server, server.add_user(f"bob-{secrets.token_hex(3)}")) as bob:
        same_name_other_user = execute(bob, probe, thread_id=thread)
    for res in (other_thread, no_thread, same_name_other_user):
        assert res["exit_code"] == 0, res
        assert token not in res["stdout"], res
        assert "secret.txt" not in res["stdout"], res


# --- symlinks ---------------------------------------------------------------------------


def test_workspace_symlinks_resolve_inside_the_box(
    run: Run, server: LiveServer, host_canary: Path
) -> None:
    thread = thread_name("links")
    canary = (host_canary / "canary.txt").read_text().strip()
    host_shadow_line = Path("/etc/shadow").read_text().splitlines()[0]
    res = run(f"""
cd /workspace
ln -s / to-root; ln -s /etc/shadow to-shadow; ln -s ../../ up; ln -s ../../../../.. up5
ln -s {server.data_dir} to-data; ln -s {server.data_dir}/sophon.db to-db
ln -s {host_canary} to-canary; ln -s {host_canary}/canary.txt to-canary-file
cat to-shadow to-db to-canary-file up/etc/shadow up5/etc/shadow 2>/dev/null
ls to-data/ to-canary/ 2>/dev/null
echo pwned > to-canary/pwned.txt 2>/dev/null && echo "WROTE canary dir"
echo "root: $(ls to-root/ | tr '\\n' ' ')"
echo "up: $(ls up/ | tr '\\n' ' ')"
""", thread_id=thread)
    out = res["stdout"]
    assert canary not in out, res
    assert host_shadow_line not in out, res
    assert "WROTE" not in out and "canary.txt" not in out, res
    assert "SQLite" not in out, res
    # Following / or ../../ lands on the box's own root, not the host's.
    for line in out.splitlines():
        if line.startswith(("root:", "up:")):
            names = set(line.split(":", 1)[1].split())
            assert "workspace" in names, res
            assert not names & {"root", "var", "work", "boot", "srv"}, res
    assert sorted(p.name for p in host_canary.iterdir()) == ["canary.txt"]
    # Control: the links really exist on the host and name host paths the server can see.
    box = box_dir_holding(server, "workspace/to-canary-file")
    assert os.readlink(box / "workspace" / "to-canary") == str(host_canary)


def test_box_cleanup_does_not_follow_workload_symlinks(
    server: LiveServer, http: httpx.Client, host_canary: Path
) -> None:
    """A fresh box's files are deleted after the call: links planted to host paths must
    be removed, never followed."""
    canary_text = (host_canary / "canary.txt").read_text()
    trace = start_async(http, f"""
ln -s {host_canary} /workspace/link-dir
ln -s {host_canary}/canary.txt /workspace/link-file
ln -s {host_canary} /home/user/link-dir
mkdir -p /workspace/deep/er && ln -s {host_canary} /workspace/deep/er/link
while [ ! -e /workspace/release ]; do sleep 0.02; done
""")

    def planted() -> Path | None:
        for d in (server.data_dir / "boxes").iterdir():
            view = box_files(d)  # a running box's disk is mounted in its namespace
            if os.path.lexists(view / "workspace" / "deep" / "er" / "link"):
                return view
        return None

    box = wait_for(planted, 15, 0.02, "the workload to plant its links")
    assert isinstance(box, Path)
    assert os.readlink(box / "workspace" / "link-dir") == str(host_canary)  # control
    (box / "workspace" / "release").touch()
    assert wait_finished(http, trace)["status"] == "success"
    host_dir = server.data_dir / "boxes" / box.name
    wait_for(lambda: not host_dir.exists(), 15, 0.02, "the fresh box's files to be deleted")
    assert (host_canary / "canary.txt").read_text() == canary_text
    assert sorted(p.name for p in host_canary.iterdir()) == ["canary.txt"]


def test_symlinks_where_boxd_writes_scripts_stay_in_the_box(
    server: LiveServer, http: httpx.Client, run: Run, host_canary: Path
) -> None:
    """boxd writes each script into a private directory under /tmp, which a workload
    (same uid) can swap for a symlink or fill with planted links. The next executions
    must still run, nothing may be written through the links, and never by the server."""
    def host_state() -> set[str]:
        # (boxes/, box-uids/ and spare-disks/, the boxes' own bookkeeping, change with a
        # new thread)
        return snapshot(server.data_dir, lambda p: p.relative_to(server.data_dir).parts[0]
                        in ("boxes", "box-uids", "spare-disks")
                        or p.name.startswith(("sophon.db", "server.log")))

    before = host_state()
    thread = thread_name("boxd-links")
    # Swap boxd's script directory for a link into the workspace, and plant links
    # named like the next scripts that point at a host path.
    res = run(f"""
d=$(ls -d /tmp/.boxd-* | head -n1)
[ -n "$d" ] || exit 9
mkdir -p /workspace/moved
for i in $(seq 1 40); do ln -s {host_canary}/planted-$i /workspace/moved/exec-$i; done
rm -rf "$d" && ln -s /workspace/moved "$d" && echo swapped
""", thread_id=thread)
    assert res["stdout"] == "swapped\n", res
    for _ in range(3):
        again = run("echo still-runs", thread_id=thread)
        assert again["stdout"] == "still-runs\n", again
    # The same, pointing the directory at the host's runtime directory.
    res = run(f"d=$(ls -d /tmp/.boxd-* | head -n1); rm -rf \"$d\" && "
              f"ln -s {server.data_dir}/runtime \"$d\" && echo swapped", thread_id=thread)
    assert res["stdout"] == "swapped\n", res
    assert run("echo still-runs", thread_id=thread)["stdout"] == "still-runs\n"
    assert sorted(p.name for p in host_canary.iterdir()) == ["canary.txt"]
    assert not list((server.data_dir / "runtime").glob("exec-*"))
    assert host_state() == before
    assert_healthy(server, http)
