"""Symlink races against the files APIs: a workload swaps a directory and a file of its
own for symlinks (to a host directory with a canary in it, and to a directory of the box
outside the files API's root) in a tight loop, while the session files API and the
thread files API (signed URLs) read and write through the racing path many times.

Nothing may come back but the plain file, and nothing may be written anywhere but the
real directory. The controls: the plain file reads (and writes land) between the swaps,
and the swaps do get in the way (some requests are refused), so the race was real.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.conftest import LiveServer, wait_for
from tests.security.helpers import execute, thread_name

RACE_SECONDS = 6.0  # the racer's own deadline
HAMMER_SECONDS = 4.0  # the test's requests stop after this, or at MAX_REQUESTS
MAX_REQUESTS = 3000
WORKERS = 3

# The racer, in the box. It makes, under ROOT:
#   x/             a real directory with canary.txt ("plain"), exchanged with
#   y_host ->      the host directory holding the canary, and with
#   y_box  ->      /tmp/outside, a directory of the box outside the files API's root,
#                  holding its own canary.txt;
#   x/alt_host, x/alt_box: links to both canary files, exchanged with x/canary.txt.
# renameat2(RENAME_EXCHANGE) swaps two names at once: "x" and "x/canary.txt" always
# exist, one moment as what they should be, the next as a symlink.
RACER = r"""
import ctypes, os, sys, time
root, host_dir, plain, outside, seconds = sys.argv[1:6]
libc = ctypes.CDLL(None, use_errno=True)
os.chdir(root)
os.makedirs("/tmp/outside", exist_ok=True)
with open("/tmp/outside/canary.txt", "w") as f:
    f.write(outside)
os.makedirs("x", exist_ok=True)
with open("x/canary.txt", "w") as f:
    f.write(plain)
os.symlink(host_dir, "y_host")
os.symlink("/tmp/outside", "y_box")
os.symlink(host_dir + "/canary.txt", "x/alt_host")
os.symlink("/tmp/outside/canary.txt", "x/alt_box")

def swap(a, b):
    if libc.renameat2(-100, a, -100, b, 2) != 0:   # AT_FDCWD, RENAME_EXCHANGE
        raise OSError(ctypes.get_errno(), "renameat2")

pairs = [(b"x", b"y_host"), (b"x", b"y_box"), (b"x/canary.txt", b"x/alt_host"),
         (b"x/canary.txt", b"x/alt_box")]
open("/tmp/race-started", "w").close()
n, end = 0, time.monotonic() + float(seconds)
while time.monotonic() < end:
    for a, b in pairs:
        swap(a, b)
        swap(a, b)
        n += 2
with open("/tmp/race-done", "w") as f:
    f.write(str(n))
"""


def racer_command(root: str, host_dir: Path, plain: str, outside: str) -> str:
    return (f"cat > /tmp/race.py <<'EOF'\n{RACER}EOF\n"
            f"setsid nohup python3 /tmp/race.py {root} {host_dir} {plain} {outside} "
            f"{RACE_SECONDS} >/tmp/race.log 2>&1 < /dev/null &\n"
            "while [ ! -e /tmp/race-started ] && [ ! -s /tmp/race.log ]; do :; done\n"
            "cat /tmp/race.log; echo started")


def hammer(url: str, one: Callable[[httpx.Client, int], str]) -> Counter[str]:
    """``one(client, i)`` from a few threads until the deadline or MAX_REQUESTS; the
    count of each outcome it names."""
    end = time.monotonic() + HAMMER_SECONDS
    counter = iter(range(MAX_REQUESTS))

    def worker(_: int) -> Counter[str]:
        got: Counter[str] = Counter()
        with httpx.Client(base_url=url, timeout=30) as c:
            for i in counter:
                if time.monotonic() > end:
                    break
                got[one(c, i)] += 1
        return got

    total: Counter[str] = Counter()
    with ThreadPoolExecutor(WORKERS) as pool:
        for got in pool.map(worker, range(WORKERS)):
            total.update(got)
    return total


def read_outcome(status: int, body: bytes, plain: str, forbidden: list[str]) -> str:
    text = body.decode(errors="replace")
    for secret in forbidden:
        assert secret not in text, f"read through the racing link ({status}): {text[:300]}"
    if status == 200:
        assert plain in text, text[:300]
        return "plain"
    assert status in (400, 404), (status, text[:300])
    return "refused"


def test_session_files_api_never_follows_a_racing_symlink(
    server: LiveServer, http: httpx.Client, api_key: str, host_canary: Path
) -> None:
    canary = (host_canary / "canary.txt").read_text()
    plain, outside = f"plain-{secrets.token_hex(6)}", f"outside-{secrets.token_hex(6)}"
    r = http.post("/v1/sessions", json={"name": "race", "starter": {"type": "empty"}})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]

    def run(command: str) -> str:
        resp = http.post(f"/v1/sessions/{sid}/exec", json={"command": command, "timeout": 30})
        assert resp.status_code == 200, resp.text
        return "".join(json.loads(line).get("data", "") for line in resp.text.splitlines())

    assert run(racer_command("/workspace", host_canary, plain, outside)).endswith("started\n")
    auth = {"Authorization": f"Bearer {api_key}"}
    path = f"/v1/sessions/{sid}/files"

    def one(c: httpx.Client, i: int) -> str:
        if i % 4 == 3:  # a write of a new file in the racing directory
            resp = c.put(f"{path}/x/w-{i}.txt", content=b"w\n",
                         headers={**auth, "If-None-Match": "*"})
            if resp.status_code == 201:
                return "written"
            assert resp.status_code in (400, 404, 409), (resp.status_code, resp.text)
            return "refused"
        resp = c.get(f"{path}/x/canary.txt", headers=auth)
        return read_outcome(resp.status_code, resp.content, plain, [canary, outside])

    got = hammer(server.url, one)
    done = wait_for(lambda: run("cat /tmp/race-done 2>/dev/null"), RACE_SECONDS + 20, 0.2,
                    "the racer to end")
    # Controls: the race ran, the plain file was read and writes landed between the swaps,
    # and the swaps got in the way of some requests.
    assert int(str(done)) > 1000, done
    assert got["plain"] > 0 and got["written"] > 0 and got["refused"] > 0, got
    # Every write that succeeded is in the real directory, nothing outside it.
    listing = run("ls /workspace/x; echo ==; ls -A /tmp/outside")
    inside, beyond = listing.split("==\n")
    assert len([n for n in inside.split() if n.startswith("w-")]) == got["written"], got
    assert beyond.split() == ["canary.txt"], listing
    assert sorted(p.name for p in host_canary.iterdir()) == ["canary.txt"]
    assert (host_canary / "canary.txt").read_text() == canary


def test_thread_files_api_never_follows_a_racing_symlink(
    server: LiveServer, http: httpx.Client, host_canary: Path
) -> None:
    canary = (host_canary / "canary.txt").read_text()
    plain, outside = f"plain-{secrets.token_hex(6)}", f"outside-{secrets.token_hex(6)}"
    thread = thread_name("race")
    res = execute(http, racer_command("/home/baponi", host_canary, plain, outside),
                  thread_id=thread)
    assert res["stdout"].endswith("started\n"), res

    down = http.post("/v1/files/download_url",
                     json={"source": "thread", "id": thread, "path": "x/canary.txt"})
    assert down.status_code == 200, down.text
    get_url = down.json()["url"]

    def one(c: httpx.Client, i: int) -> str:
        if i % 4 == 3:  # an upload of a new file into the racing directory
            grant = c.post("/v1/files/upload_url", headers=http.headers, json={
                "source": "thread", "id": thread, "path": f"x/w-{i}.txt", "content_length": 2})
            assert grant.status_code == 200, grant.text
            resp = c.put(grant.json()["url"], content=b"w\n")
            if resp.status_code == 200:
                return "written"
            assert resp.status_code in (400, 404), (resp.status_code, resp.text)
            return "refused"
        try:
            resp = c.get(get_url)
        except httpx.HTTPError:  # cut mid-stream: nothing more came
            return "refused"
        return read_outcome(resp.status_code, resp.content, plain, [canary, outside])

    got = hammer(server.url, one)

    def racer_done() -> str:
        return str(execute(http, "cat /tmp/race-done 2>/dev/null; true",
                           thread_id=thread)["stdout"])

    done = wait_for(racer_done, RACE_SECONDS + 20, 0.2, "the racer to end")
    assert int(str(done)) > 1000, done
    assert got["plain"] > 0 and got["written"] > 0 and got["refused"] > 0, got
    listing = execute(http, "ls /home/baponi/x; echo ==; ls -A /tmp/outside",
                      thread_id=thread)["stdout"]
    inside, beyond = listing.split("==\n")
    assert len([n for n in inside.split() if n.startswith("w-")]) == got["written"], got
    assert beyond.split() == ["canary.txt"], listing
    assert sorted(p.name for p in host_canary.iterdir()) == ["canary.txt"]
    assert (host_canary / "canary.txt").read_text() == canary
