"""Users' own images (POST /v1/images): a Debian package and a pip package (from the
egress tests' local index, through the door) on the python base, built in a build box,
followed as a log, used by a session and by an execute-API thread, kept across a
restart, refused for deletion while used; bad definitions and failing builds, which
leave nothing half-built; and two users' same definitions sharing one build."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import uuid
from collections.abc import Iterator

import httpx
import pytest

from sophon.client import Client
from sophon.config import Settings
from sophon.images.definitions import BUILTIN
from sophon.images.store import ImageStore
from tests.conftest import LiveServer, make_data_dir, wait_for
from tests.integration.egress_hosts import (
    HOST,
    NPM_PACKAGE,
    WHEEL_MODULE,
    WHEEL_PROJECT,
    NpmRegistry,
    PackageIndex,
)
from tests.integration.session_support import sh, user

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("mmdebstrap"),
    reason="images need root and mmdebstrap (make test installs them)")

MAX_IMAGES = 5
# Where the "linked" image's step points /etc/ssl: a directory on the host.
LINK_TARGET = f"/tmp/sophon-image-link-{uuid.uuid4().hex[:8]}"
MAX_IMAGE_MB = 600  # the python and node images are about 450 MiB


@pytest.fixture(scope="module")
def index() -> Iterator[PackageIndex]:
    idx = PackageIndex()
    yield idx
    idx.close()


@pytest.fixture(scope="module")
def npm() -> Iterator[NpmRegistry]:
    registry = NpmRegistry()
    yield registry
    registry.close()


@pytest.fixture(scope="module")
def server(index: PackageIndex, npm: NpmRegistry) -> Iterator[LiveServer]:
    srv = LiveServer(make_data_dir(), env={
        "SOPHON_EGRESS_ALLOW_PRIVATE": f"{index.addr},{npm.addr}",
        "SOPHON_USER_MAX_IMAGES": str(MAX_IMAGES),
        "SOPHON_IMAGE_MAX_MB": str(MAX_IMAGE_MB)}).start()
    yield srv
    srv.stop()
    forget_images(srv)
    shutil.rmtree(srv.data_dir, ignore_errors=True)


def forget_images(srv: LiveServer) -> None:
    """The images this module's users made, gone from the machine's image store (their
    digests name this run's index port: no other run has them)."""
    with sqlite3.connect(srv.data_dir / "sophon.db") as db:
        digests = {d for (d,) in db.execute("SELECT digest FROM images")}
    store = ImageStore(Settings().images_dir)
    for digest in digests - {d.digest for d in BUILTIN.values()}:
        store.remove_digest(digest)


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with user(server) as client:
        yield client


def define(index: PackageIndex, name: str = "tools") -> dict:
    return {"name": name, "from": "python", "apt": ["jq"], "pip": [WHEEL_PROJECT],
            "env": {"PIP_INDEX_URL": f"{index.url}/simple"}, "allow": [index.addr],
            "run": ["echo made-by-run > /etc/made-by-run", "chmod u+s /usr/bin/jq"]}


def follow(http: httpx.Client, name: str, after: int = 0) -> tuple[list[str], dict]:
    """The build's log lines (after line ``after``) and the image as it ended."""
    lines, numbers = [], []
    with http.stream("GET", f"/v1/images/{name}/log", params={"after": after},
                     timeout=900) as r:
        assert r.status_code == 200, r.read()
        for raw in r.iter_lines():
            if not raw.startswith("data: "):
                continue
            event = json.loads(raw[6:])
            if event["type"] == "image_log":
                lines.append(event["text"])
                numbers.append(event["line"])
            else:
                assert numbers == sorted(numbers) and (not numbers or numbers[0] > after)
                return lines, event["image"]
    raise AssertionError("the log ended without the image's status")


@pytest.fixture(scope="module")
def tools(http: httpx.Client, index: PackageIndex, npm: NpmRegistry,
          failing: httpx.Client) -> dict:
    r = http.post("/v1/images", json=define(index))
    assert r.status_code == 202, r.text
    # Built meanwhile: a node image with an npm package from the local registry.
    node = http.post("/v1/images", json={
        "name": "node-tools", "from": "node", "npm": [NPM_PACKAGE],
        "env": {"NPM_CONFIG_REGISTRY": f"{npm.url}/"}, "allow": [npm.addr]})
    assert node.status_code == 202, node.text
    assert r.json()["status"] == "building" and r.json()["builtin"] is False
    lines, image = follow(http, "tools")
    assert image["status"] == "ready", (image, lines[-20:])
    assert any(line.startswith("--- step 1 of 3: python3 -m pip install") for line in lines)
    assert any("Successfully installed" in line for line in lines), lines[-30:]
    return image


def test_a_user_image_builds_with_apt_pip_and_run_steps_and_a_session_uses_it(
        http: httpx.Client, tools: dict) -> None:
    assert tools["base"] == "python" and tools["apt"] == ["jq"]
    r = http.post("/v1/sessions", json={"name": "on-tools", "base": "tools",
                                        "starter": {"type": "empty"}})
    assert r.status_code == 201, r.text
    session = r.json()
    assert (session["base"], session["image_name"], session["image"]) == (
        "python", "tools", tools["digest"])
    sid = session["id"]
    out = sh(http, sid, f"jq --version && python3 -c 'import {WHEEL_MODULE}; print(\"ok\")' "
                        "&& cat /etc/made-by-run && python3 -m pytest --version 2>&1 | head -1")
    assert out.startswith("jq-") and "ok\nmade-by-run\npytest " in out, out
    # What the build's uid wrote is root's in the image (as the base's own files: host
    # root, which the box's user namespace does not map), read-only, and no setuid file
    # survives (the run step made one).
    out = sh(http, sid, "stat -c '%u %A' /usr/bin/bash /etc/made-by-run /usr/bin/jq; "
                        "touch /usr/x 2>&1")
    root = out.split()[0]
    assert out.splitlines()[:3] == [f"{root} -rwxr-xr-x", f"{root} -rw-r--r--",
                                    f"{root} -rwxr-xr-x"], out
    assert "Read-only file system" in out, out


def test_a_node_image_has_the_npm_package_installed_globally(
        http: httpx.Client, tools: dict) -> None:
    lines, image = follow(http, "node-tools")
    assert image["status"] == "ready", (image, lines[-20:])
    r = http.post("/v1/sandbox/execute", json={
        "code": "ls /usr/local/lib/node_modules; NODE_PATH=/usr/local/lib/node_modules "
                f"node -e \"console.log(require('{NPM_PACKAGE}').answer)\"",
        "language": "bash", "image": "node-tools"})
    assert r.status_code == 200, r.text
    assert r.json()["stdout"] == f"{NPM_PACKAGE}\n42\n", r.text


def test_an_execute_thread_names_the_image_and_keeps_it(
        http: httpx.Client, tools: dict) -> None:
    run = {"code": f"import {WHEEL_MODULE}, subprocess\n"
                   "print(subprocess.run(['jq', '--version'], capture_output=True, "
                   "text=True).stdout.strip())", "thread_id": "on-tools", "image": "tools"}
    r = http.post("/v1/sandbox/execute", json=run)
    assert r.status_code == 200 and r.json()["success"], r.text
    assert r.json()["stdout"].startswith("jq-")
    again = http.post("/v1/sandbox/execute", json={**run, "code": "print(2)"})
    assert again.status_code == 200 and again.json()["stdout"] == "2\n", again.text
    other = http.post("/v1/sandbox/execute", json={**run, "image": "generic"})
    assert other.status_code == 400, other.text
    assert "keeps the image it was made with" in other.json()["message"]
    # A one-off on the image; with no image, a pooled box (without the pip package).
    probe = f"python3 -c 'import {WHEEL_MODULE}' 2>/dev/null && echo has-it || echo none"
    one = http.post("/v1/sandbox/execute", json={"code": probe, "language": "bash",
                                                 "image": "tools"})
    assert one.json()["stdout"] == "has-it\n", one.text
    plain = http.post("/v1/sandbox/execute", json={"code": probe, "language": "bash"})
    assert plain.json()["stdout"] == "none\n", plain.text


def test_an_image_in_use_is_not_deleted_and_one_not_in_use_is(
        http: httpx.Client, index: PackageIndex, tools: dict, server: LiveServer) -> None:
    r = http.post("/v1/sessions", json={"name": "keeps-it", "base": "tools",
                                        "starter": {"type": "empty"}})
    sid = r.json()["id"]
    refused = http.delete("/v1/images/tools")
    assert refused.status_code == 409, refused.text
    assert sid in refused.json()["message"], refused.text
    assert http.get("/v1/images/tools").json()["status"] == "ready"
    # An image nothing uses goes, with its files (no other user has the same one). Made
    # and followed with the SDK here.
    with Client(server.url, http.headers["Authorization"].removeprefix("Bearer ")) as sdk:
        # (a step naming this run: a digest no other run has; no apt package, so it
        # starts from generic's built files)
        spare_id = uuid.uuid4().hex
        made = sdk.create_image("spare", "generic", run=[f"echo {spare_id} > /etc/spare-id"])
        assert made["status"] == "building", made
        events = list(sdk.image_log("spare"))
        spare = events[-1]["image"]
        assert [e["type"] for e in events[-2:]] == ["image_log", "image_status"]
        assert spare["status"] == "ready", spare
        out = sdk.execute("cat /etc/spare-id; git --version", language="bash",
                          image="spare")
        assert out.stdout.startswith(f"{spare_id}\ngit version"), out
    images_dir = Settings().images_dir
    assert (images_dir / spare["digest"]).is_dir()
    assert http.delete("/v1/images/spare").status_code == 204
    assert http.get("/v1/images/spare").status_code == 404
    # Its files go once the one-off's box on it is gone too.
    wait_for(lambda: not (images_dir / spare["digest"]).exists(), 30, 0.2,
             "the deleted image's files to go")
    # An image with nothing added is the built-in one: deleting it leaves that alone.
    same = http.post("/v1/images", json={"name": "same-as-generic", "from": "generic"})
    assert same.json()["digest"] == BUILTIN["generic"].digest, same.text
    assert same.json()["status"] == "ready", same.text
    assert http.delete("/v1/images/same-as-generic").status_code == 204
    assert http.get("/v1/images/generic").json()["status"] == "ready"


def test_bad_definitions_are_refused_with_the_reason(http: httpx.Client,
                                                     index: PackageIndex) -> None:
    cases = [
        ({"name": "x", "from": "ubuntu"}, "unknown base image"),
        ({"name": "python", "from": "python"}, "built-in image's name"),
        ({"name": "Bad_Name", "from": "python"}, "lower-case"),
        ({"name": "x", "from": "python", "pip": ["-r /etc/passwd"]}, "no options"),
        ({"name": "x", "from": "python", "apt": ["jq; rm -rf /"]}, "not a Debian package"),
        ({"name": "x", "from": "python", "env": {"LD_PRELOAD": "/x.so"}}, "reserved"),
        ({"name": "x", "from": "python", "allow": ["127.0.0.3:80"]}, "127.0.0.3"),
        ({"name": "x", "from": "python", "unknown": 1}, "unknown"),
        ({"name": "x", "from": "dotnet"}, "not available"),
    ]
    for body, said in cases:
        r = http.post("/v1/images", json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"] == "invalid_request" and said in r.json()["message"], \
            (body, r.text)
    assert http.get("/v1/images/x").status_code == 404
    bad = http.post("/v1/sessions", json={"name": "x", "base": "no-such-image",
                                          "starter": {"type": "empty"}})
    assert bad.status_code == 400 and "no-such-image" in bad.json()["message"], bad.text


@pytest.fixture(scope="module")
def failing(server: LiveServer, index: PackageIndex) -> Iterator[httpx.Client]:
    """Another user, with three images whose builds fail (started at once, so that they
    build while the module's other builds do)."""
    with user(server) as http:
        http.post("/v1/images", json={"name": "no-such-package", "from": "generic",
                                      "apt": ["sophon-no-such-package"]})
        # A build box reaches its base's hosts and its own list, nothing else: the index
        # is open on this server, but not on this image's list.
        http.post("/v1/images", json={"name": "bad-step", "from": "generic", "run": [
            "echo about to fail", f"curl -sS --fail-with-body {index.url}/simple/"]})
        http.post("/v1/images", json={"name": "too-big", "from": "generic",
                                      "run": ["head -c 450M /dev/zero > /usr/big"]})
        # A step that points a directory the box mounts into at the host's (the root is
        # finished as root on the host): refused, never followed.
        os.makedirs(LINK_TARGET, exist_ok=True)
        http.post("/v1/images", json={"name": "linked", "from": "generic", "run": [
            f"rm -rf /etc/ssl && ln -s {LINK_TARGET} /etc/ssl"]})
        # Far past the limit: the step's writes stop at the build disk's end, not the host's.
        http.post("/v1/images", json={"name": "far-too-big", "from": "generic",
                                      "run": ["head -c 2000M /dev/zero > /usr/big"]})
        yield http


def test_failing_builds_keep_their_log_and_nothing_half_built_is_used(
        failing: httpx.Client) -> None:
    http = failing
    lines, image = follow(http, "no-such-package")
    assert image["status"] == "failed", image
    assert "sophon-no-such-package" in image["reason"], image
    assert any("sophon-no-such-package" in line for line in lines)
    lines, image = follow(http, "bad-step")
    assert image["status"] == "failed", image
    assert "step 2 (curl" in image["reason"] and "exit code 22" in image["reason"], image
    assert "about to fail" in lines, lines[-10:]
    assert any("not on" in line and HOST in line for line in lines), lines[-4:]
    assert not (Settings().images_dir / image["digest"]).exists()
    _, image = follow(http, "too-big")
    assert image["status"] == "failed", image
    assert f"over this server's limit of {MAX_IMAGE_MB} MiB" in image["reason"], image
    assert not (Settings().images_dir / image["digest"]).exists()
    linked_lines, image = follow(http, "linked")
    assert image["status"] == "failed", image
    # The build box's own mounts under /etc/ssl keep the step from replacing it; were it
    # replaced, the finishing would refuse the link (tests/unit/test_image_finish.py).
    assert ("Device or resource busy" in "\n".join(linked_lines)
            or "the image's /etc/ssl is a symbolic link" in image["reason"]), image
    assert os.listdir(LINK_TARGET) == []  # nothing made through the link
    far_lines, image = follow(http, "far-too-big")
    assert image["status"] == "failed", image
    assert "step 1 (head -c 2000M" in image["reason"], image
    assert (f"the image's space is full: an image may be at most {MAX_IMAGE_MB} MiB"
            in image["reason"]), image
    assert any("No space left on device" in line for line in far_lines), far_lines[-4:]
    assert not (Settings().images_dir / image["digest"]).exists()
    r = http.post("/v1/sessions", json={"name": "x", "base": "bad-step",
                                        "starter": {"type": "empty"}})
    assert r.status_code == 400 and "failed to build" in r.json()["message"], r.text
    # The log can be read again later, from any line.
    again, _ = follow(http, "bad-step", after=len(lines) - 2)
    assert again == lines[-2:]


def test_the_same_definition_is_built_once_for_two_users_and_quotas_hold(
        server: LiveServer, index: PackageIndex, tools: dict) -> None:
    with user(server) as other:
        r = other.post("/v1/images", json=define(index, "mine"))
        assert r.status_code == 202
        assert r.json()["digest"] == tools["digest"] and r.json()["status"] == "ready"
        assert other.get("/v1/images/tools").status_code == 404  # not theirs
        names = [i["name"] for i in other.get("/v1/images").json()["images"]]
        assert names[:3] == ["generic", "python", "node"] and "mine" in names
        assert "tools" not in names
        assert other.post("/v1/images", json=define(index, "mine")).status_code == 409
        for n in range(MAX_IMAGES - 1):  # (builds that fail at once)
            made = other.post("/v1/images", json={"name": f"more-{n}", "from": "generic",
                                                  "apt": ["sophon-no-such-package"]})
            assert made.status_code == 202, made.text
        over = other.post("/v1/images", json={"name": "one-too-many", "from": "generic"})
        assert over.status_code == 429 and "SOPHON_USER_MAX_IMAGES" in over.text


def test_images_survive_a_restart(http: httpx.Client, server: LiveServer,
                                  tools: dict) -> None:
    server.restart()
    assert http.get("/v1/images/tools").json()["status"] == "ready"
    r = http.post("/v1/sessions", json={"name": "after", "base": "tools",
                                        "starter": {"type": "empty"}})
    assert r.status_code == 201, r.text
    assert sh(http, r.json()["id"], "cat /etc/made-by-run") == "made-by-run\n"


def test_images_count_against_the_users_disk(server: LiveServer, index: PackageIndex,
                                             tools: dict) -> None:
    """A user's built images count toward SOPHON_USER_MAX_DISK_MB: an image that takes
    the user past it fails, said with the sizes and the setting, and is not usable; one
    built for it alone is removed, one found built (another server's on the same store)
    stays for those that use it; one two users built at once is removed too."""
    tight = LiveServer(make_data_dir(), env={"SOPHON_USER_MAX_DISK_MB": "50",
                                             "SOPHON_EGRESS_ALLOW_PRIVATE": index.addr}
                       ).start()
    try:
        with user(tight) as c:
            # Found built: the module's `tools` image (hundreds of MiB), same definition.
            r = c.post("/v1/images", json=define(index, "same"))
            assert r.status_code == 202, r.text
            _, same = follow(c, "same")
            assert same["status"] == "failed", same
            assert "SOPHON_USER_MAX_DISK_MB" in same["reason"]
            assert "over the 50 MiB this server allows per user" in same["reason"]
            used = c.post("/v1/sessions", json={"name": "on-it", "base": "same"})
            assert used.status_code == 400 and "failed to build" in used.text
            assert ImageStore(Settings().images_dir).built(tools["digest"])  # still there
            # Built for this user alone (its own step makes it new): refused and removed.
            fresh = c.post("/v1/images", json={
                "name": "fresh", "from": "generic",
                "run": [f"echo {uuid.uuid4().hex} > /etc/mark"]})
            assert fresh.status_code == 202, fresh.text
            _, built = follow(c, "fresh")
            assert built["status"] == "failed" and "MiB" in built["reason"], built
            assert not ImageStore(Settings().images_dir).built(built["digest"])
            # Nothing else of theirs is past the limit: a failed image counts nothing.
            assert c.get("/v1/me").json()["limits"]["disk_mb"]["used"] == 0
            # Two users define one new image at once (one build, shared), each past the
            # limit: both are refused, and the files go (neither keeps them for the other).
            twin = {"name": "twin", "from": "generic",
                    "run": [f"echo {uuid.uuid4().hex} > /etc/mark"]}
            with user(tight) as d:
                assert c.post("/v1/images", json=twin).status_code == 202
                assert d.post("/v1/images", json=twin).status_code == 202
                (_, mine), (_, theirs) = follow(c, "twin"), follow(d, "twin")
            assert mine["digest"] == theirs["digest"]
            assert mine["status"] == theirs["status"] == "failed", (mine, theirs)
            assert not ImageStore(Settings().images_dir).built(mine["digest"])
    finally:
        tight.stop()
        shutil.rmtree(tight.data_dir, ignore_errors=True)
