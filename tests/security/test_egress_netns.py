"""The egress door against private, link-local and metadata addresses, end to end, without
a packet leaving this machine.

The door decides in the server's network namespace, so the server runs in one this test
makes: loopback, and a dummy interface holding 10.0.0.1 (private), 169.254.169.254 (link-
local, the cloud metadata address) and 198.18.0.1 (a reserved benchmarking range that is
not in the refused set: the control that "nothing wider" is refused). The namespace has
no route anywhere else. Test hosts listen on those addresses inside it and count the
connections they accept; the test drives the API from a thread that joined the namespace
(a socket belongs to the namespace of the thread that made it).

Two servers: one whose admin opened the private addresses (SOPHON_EGRESS_ALLOW_PRIVATE),
where a session listing them reaches them, and one whose admin did not, where they are
refused with ``private_address`` and the hosts accept nothing. In both, names for the
addresses are in the server's own /etc/hosts (a bind mount in a mount namespace of its
own), so the door's check after resolving a name is tested too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.conftest import LiveServer, make_data_dir, wait_for
from tests.security.test_egress_refusals import (
    TestHost,
    assert_reached,
    assert_refused,
    create,
    denials,
    get,
    probe,
    wait_denials,
)

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
PRIVATE, METADATA, BENCH = "10.0.0.1", "169.254.169.254", "198.18.0.1"
NAMES = {"private.sophon-test": PRIVATE, "metadata.sophon-test": METADATA,
         "bench.sophon-test": BENCH}


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Netns:
    """A network namespace, and a thread that lives in it."""

    def __init__(self) -> None:
        self.name = f"sophon-t-{secrets.token_hex(4)}"
        self.path = f"/run/netns/{self.name}"
        _ip("netns", "add", self.name)
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
            # A dummy interface where the kernel has the driver; else the namespace's
            # own loopback holds the addresses (as local, and as unreachable from
            # anywhere else, either way).
            self.dev = "d0"
            try:
                _ip("-n", self.name, "link", "add", "d0", "type", "dummy")
            except subprocess.CalledProcessError:
                self.dev = "lo"
            for addr in (PRIVATE, METADATA, BENCH):
                _ip("-n", self.name, "addr", "add", f"{addr}/32", "dev", self.dev)
            _ip("-n", self.name, "link", "set", self.dev, "up")
        except Exception:
            self.close()
            raise
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=self.name,
                                        initializer=self._join)

    def _join(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the test's namespace")
        finally:
            os.close(fd)

    def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` in the namespace's thread."""
        return self._pool.submit(fn).result()

    def routes(self) -> str:
        return subprocess.run(["ip", "-n", self.name, "route", "show", "table", "all"],
                              check=True, capture_output=True, text=True).stdout

    def close(self) -> None:
        if hasattr(self, "_pool"):
            self._pool.shutdown()
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)


class NetnsServer(LiveServer):
    """``sophon serve`` in the test's network namespace, with its own /etc/hosts."""

    def __init__(self, data_dir: Path, ns: Netns, env: dict[str, str]) -> None:
        super().__init__(data_dir, env)
        self.ns = ns
        self.hosts_file = data_dir / "hosts"
        self.hosts_file.write_text("127.0.0.1 localhost\n::1 localhost\n" + "".join(
            f"{addr} {name}\n" for name, addr in NAMES.items()))
        self.hosts_file.chmod(0o644)

    def start(self) -> NetnsServer:
        serve = [sys.executable, "-m", "sophon.cli", "serve", "--port", str(self.port)]
        script = 'mount --bind "$0" /etc/hosts && exec "$@"'
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net={self.ns.path}", "unshare", "--mount",
                 "--propagation", "private", "sh", "-c", script, str(self.hosts_file),
                 *serve], env=self.env, stdout=log, stderr=subprocess.STDOUT)

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
            return False

        self.ns.run(lambda: wait_for(healthy, 30, 0.05, "the server in the namespace"))
        return self


@pytest.fixture(scope="module")
def ns() -> Iterator[Netns]:
    if shutil.which("ip") is None or shutil.which("nsenter") is None \
            or shutil.which("unshare") is None:
        pytest.skip("needs ip (iproute2), nsenter and unshare (util-linux)")
    n = Netns()
    yield n
    n.close()


class NsHosts:
    def __init__(self, ns: Netns) -> None:
        self.private = ns.run(TestHost("private", PRIVATE).start)
        self.metadata = ns.run(TestHost("metadata", METADATA, 80).start)
        self.bench = ns.run(TestHost("bench", BENCH).start)

    def all(self) -> tuple[TestHost, ...]:
        return (self.private, self.metadata, self.bench)


@pytest.fixture(scope="module")
def hosts(ns: Netns) -> Iterator[NsHosts]:
    h = NsHosts(ns)
    yield h
    for t in h.all():
        t.close()


@contextlib.contextmanager
def server_in(ns: Netns, env: dict[str, str]) -> Iterator[NetnsServer]:
    data = make_data_dir()
    srv = NetnsServer(data, ns, env)
    try:
        yield srv.start()
    finally:
        srv.stop()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="module")
def opened(ns: Netns, hosts: NsHosts) -> Iterator[NetnsServer]:
    """A server whose admin opened the private and metadata hosts."""
    with server_in(ns, {"SOPHON_EGRESS_ALLOW_PRIVATE": ",".join(
            [hosts.private.addr, hosts.metadata.addr])}) as srv:
        yield srv


@pytest.fixture(scope="module")
def closed(ns: Netns, hosts: NsHosts) -> Iterator[NetnsServer]:
    """A server whose admin opened nothing; its execution API reaches public addresses."""
    with server_in(ns, {"SOPHON_EGRESS_EXECUTE": "public"}) as srv:
        yield srv


def in_ns(srv: NetnsServer, body: Callable[[httpx.Client], T]) -> T:
    """``body(client)`` for a new user of ``srv``, in the namespace."""
    key = srv.add_user()

    def go() -> T:
        with httpx.Client(base_url=srv.url, timeout=120,
                          headers={"Authorization": f"Bearer {key}"}) as http:
            return body(http)

    return srv.ns.run(go)


def counts(hosts: NsHosts) -> dict[str, int]:
    return {h.name: h.connections for h in hosts.all()}


# --- the namespace is what the test says -------------------------------------------------


def test_the_namespace_has_no_route_off_this_machine(ns: Netns) -> None:
    routes = ns.routes()
    assert "default" not in routes, routes
    for line in routes.splitlines():
        # only the routes to the namespace's own addresses
        assert line.split()[0] in ("local", "broadcast", "multicast", "anycast"), line
        assert f"dev {ns.dev}" in line or "dev lo" in line, line
    links = subprocess.run(["ip", "-n", ns.name, "-o", "link"], check=True,
                           capture_output=True, text=True).stdout
    assert {ln.split(":")[1].strip() for ln in links.splitlines()} <= {"lo", "d0"}, links


# --- opened by the admin: reached ---------------------------------------------------------


def test_opened_private_and_metadata_addresses_are_reached(opened: NetnsServer,
                                                          hosts: NsHosts) -> None:
    before = counts(hosts)

    def body(http: httpx.Client) -> None:
        sid = create(http, network={"allow": [
            hosts.private.addr, hosts.metadata.addr,
            f"private.sophon-test:{hosts.private.port}", "metadata.sophon-test:80"]})
        results = probe(http, sid,
                        get(hosts.private.addr, "/direct"),
                        ("CONNECT", hosts.private.addr),
                        get(METADATA, "/latest/meta-data/"),
                        get(f"private.sophon-test:{hosts.private.port}", "/by-name"),
                        get("metadata.sophon-test", "/by-name"),
                        # every other spelling of the opened address is the same address
                        get(f"012.0.0.1:{hosts.private.port}", "/octal"),
                        get(f"167772161:{hosts.private.port}", "/decimal"),
                        get("0xa9.0xfe.0xa9.0xfe:80", "/hex"))
        assert_reached(results[0], hosts.private, "/direct")
        assert_reached(results[1], hosts.private)
        assert_reached(results[2], hosts.metadata, "/latest/meta-data/")
        assert_reached(results[3], hosts.private, "/by-name")
        assert_reached(results[4], hosts.metadata, "/by-name")
        assert_reached(results[5], hosts.private, "/octal")
        assert_reached(results[6], hosts.private, "/decimal")
        assert_reached(results[7], hosts.metadata, "/hex")
        assert denials(http, sid) == []

    in_ns(opened, body)
    after = counts(hosts)
    assert after["private"] == before["private"] + 5
    assert after["metadata"] == before["metadata"] + 3


def test_opened_addresses_still_refuse_other_ports_and_the_server(
        opened: NetnsServer, hosts: NsHosts) -> None:
    """Opening 10.0.0.1 at one port opens that port only; the server's own port on an
    address of this namespace is refused; a session that does not list the opened
    address does not reach it."""
    before = counts(hosts)

    def body(http: httpx.Client) -> None:
        for rule in (f"{PRIVATE}:80", f"{METADATA}:{hosts.private.port}", PRIVATE):
            r = http.post("/v1/sessions", json={"name": "x", "network": {"allow": [rule]}})
            assert r.status_code == 400, (rule, r.text)
        sid = create(http, network={"allow": [hosts.private.addr,
                                              f"private.sophon-test:{opened.port}"]})
        bare = create(http)
        control, *refused = probe(
            http, sid, get(hosts.private.addr),
            get(f"{PRIVATE}:{hosts.metadata.port}"),  # the opened address, another port
            get(f"private.sophon-test:{opened.port}", "/healthz"),  # the server's port
            get(hosts.metadata.addr))  # opened, but not listed by this session
        assert_reached(control, hosts.private)
        assert_refused(refused[0], f"{PRIVATE}:80", "not on this sandbox's network list")
        assert_refused(refused[1], "Sophon server")
        assert_refused(refused[2], hosts.metadata.addr, "not on this sandbox's network list")
        assert [(e["host"], e["port"], e["rule"]) for e in wait_denials(http, sid, 3)] == [
            (PRIVATE, 80, "not_allowed"),
            ("private.sophon-test", opened.port, "sophon_server"),
            (METADATA, 80, "not_allowed")]
        [r] = probe(http, bare, get(hosts.private.addr))
        assert_refused(r, hosts.private.addr, "not on this sandbox's network list")

    in_ns(opened, body)
    after = counts(hosts)
    assert after["private"] == before["private"] + 1  # the control only
    assert after["metadata"] == before["metadata"]


# --- not opened: refused ------------------------------------------------------------------


def test_unopened_private_and_metadata_addresses_are_refused(closed: NetnsServer,
                                                            hosts: NsHosts) -> None:
    """The admin opened nothing: a session cannot list the addresses (a 400), a name
    that resolves to one is refused after the door resolves it (403, private_address),
    and the hosts accept nothing; the control, a listed public address in a reserved
    benchmarking range, is reached through the same door."""
    before = counts(hosts)

    def body(http: httpx.Client) -> None:
        for rule in (hosts.private.addr, hosts.metadata.addr, f"[::ffff:{METADATA}]:80",
                     "2852039166:80"):
            r = http.post("/v1/sessions", json={"name": "x", "network": {"allow": [rule]}})
            assert r.status_code == 400, (rule, r.text)
            assert "SOPHON_EGRESS_ALLOW_PRIVATE" in r.json()["message"]
        sid = create(http, network={"allow": [
            hosts.bench.addr, f"private.sophon-test:{hosts.private.port}",
            "metadata.sophon-test", f"metadata.sophon-test:{hosts.private.port}"]})
        control, *refused = probe(
            http, sid, get(hosts.bench.addr, "/bench"),
            get(f"private.sophon-test:{hosts.private.port}"),
            get("metadata.sophon-test", "/latest/meta-data/"),
            ("CONNECT", "metadata.sophon-test:443"),
            ("CONNECT", f"metadata.sophon-test:{hosts.private.port}"))
        assert_reached(control, hosts.bench, "/bench")
        assert_refused(refused[0], PRIVATE, "private address", "SOPHON_EGRESS_ALLOW_PRIVATE")
        for r in refused[1:]:
            assert_refused(r, METADATA, "link-local address", "SOPHON_EGRESS_ALLOW_PRIVATE")
        assert [(e["host"], e["port"], e["rule"]) for e in wait_denials(http, sid, 4)] == [
            ("private.sophon-test", hosts.private.port, "private_address"),
            ("metadata.sophon-test", 80, "private_address"),
            ("metadata.sophon-test", 443, "private_address"),
            ("metadata.sophon-test", hosts.private.port, "private_address")]

    in_ns(closed, body)
    after = counts(hosts)
    assert after["private"] == before["private"]
    assert after["metadata"] == before["metadata"]
    assert after["bench"] == before["bench"] + 1


def test_public_execution_mode_still_refuses_the_refused_set(closed: NetnsServer,
                                                            hosts: NsHosts) -> None:
    """SOPHON_EGRESS_EXECUTE=public reaches any public address (198.18.0.1 is one: a
    reserved range that is not refused), and still none in the refused set, by any
    spelling."""
    before = counts(hosts)
    targets = [f"http://{hosts.bench.addr}/exec",
               f"http://{hosts.private.addr}/", f"http://0xa.0.0.1:{hosts.private.port}/",
               f"http://167772161:{hosts.private.port}/",
               f"http://[::ffff:{PRIVATE}]:{hosts.private.port}/",
               f"http://{METADATA}/latest/meta-data/", "http://0251.0376.0251.0376/",
               "http://metadata.sophon-test/", f"http://[::ffff:{METADATA}]/"]
    # one line per target: the status, then the body on one line
    code = "\n".join(
        f"c=$(curl -sS --max-time 20 -o /tmp/body -w '%{{http_code}}' '{t}'); "
        f"echo \"$c $(tr -d '\\n' < /tmp/body)\"" for t in targets)

    def body(http: httpx.Client) -> dict[str, Any]:
        r = http.post("/v1/sandbox/execute", json={"code": code, "language": "bash",
                                                   "timeout": 60})
        assert r.status_code == 200, r.text
        result = r.json()
        assert isinstance(result, dict)
        return result

    result = in_ns(closed, body)
    lines = result["stdout"].splitlines()
    assert len(lines) == len(targets), result
    assert lines[0] == "200 bench /exec", result
    for target, line in zip(targets[1:], lines[1:], strict=True):
        assert line.startswith("403 Sophon network door: "), (target, line)
        assert "address, which sandboxes may not reach" in line, (target, line)
    after = counts(hosts)
    assert after["private"] == before["private"]
    assert after["metadata"] == before["metadata"]
    assert after["bench"] == before["bench"] + 1


def test_nothing_is_left_behind(ns: Netns) -> None:
    """The namespace's own mounts (the servers' /etc/hosts) never reached the host's."""
    with open("/proc/self/mounts") as f:
        assert not any(line.split()[1] == "/etc/hosts" and "sophon-test" in line
                       for line in f)
    assert Path("/etc/hosts").read_text().count("sophon-test") == 0
