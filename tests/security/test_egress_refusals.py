"""The egress door, from inside a session's box: what it refuses, beside a control that
reaches an allowed test host through the same door, so a refusal cannot pass because
nothing works.

Test hosts are on 127.0.0.2 (inside a box 127.0.0.1 is the box's own loopback) and are
opened by the admin's SOPHON_EGRESS_ALLOW_PRIVATE. Each counts the connections it
accepted: a host that must not be reached must have accepted none. Requests are sent
from the box with a raw socket to the door (``$http_proxy``), so what is tested is the
door's answer, not a client's handling of NO_PROXY.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, make_data_dir, wait_for


class _Counting(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], host: TestHost) -> None:
        self.host = host
        super().__init__(addr, _Handler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self.host.lock:
            self.host.connections += 1
        return True


BIG = 1 << 20


class _Handler(BaseHTTPRequestHandler):
    server: _Counting
    protocol_version = "HTTP/1.1"  # keeps a connection open unless told to close

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        host = self.server.host
        with host.lock:
            host.paths.append(self.path)
        body = f"{host.name} {self.path}".encode()
        if self.path == "/big-when-released":  # 1 MiB once the test says so
            host.release.wait(60)
            body = b"x" * BIG
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@dataclass
class TestHost:
    """An HTTP server on a loopback address that answers ``<name> <path>``."""

    __test__ = False
    name: str
    ip: str
    port: int = 0
    connections: int = 0
    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)

    def start(self) -> TestHost:
        self.httpd = _Counting((self.ip, self.port), self)  # 0: a free port
        self.port = int(self.httpd.server_address[1])
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    @property
    def addr(self) -> str:
        return f"{self.ip}:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class Hosts:
    ok: TestHost  # opened by the admin, in the test sessions' lists
    other: TestHost  # opened by the admin, in no list (an unlisted port on 127.0.0.2)
    closed: TestHost  # on 127.0.0.2, not opened by the admin
    lo: TestHost  # on the host's 127.0.0.1: listed by name (localhost), never opened


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    h = Hosts(ok=TestHost("ok", "127.0.0.2").start(),
              other=TestHost("other", "127.0.0.2").start(),
              closed=TestHost("closed", "127.0.0.2").start(),
              lo=TestHost("lo", "127.0.0.1").start())
    yield h
    for t in (h.ok, h.other, h.closed, h.lo):
        t.close()


@pytest.fixture(scope="module")
def server(hosts: Hosts) -> Iterator[LiveServer]:
    data = make_data_dir()
    srv = LiveServer(data)
    # The two test hosts, and the server's own port on 127.0.0.2 and ::1: opened, so a
    # session may list them, to prove the server's port is refused even then.
    srv.env["SOPHON_EGRESS_ALLOW_PRIVATE"] = ",".join(
        [hosts.ok.addr, hosts.other.addr, f"127.0.0.2:{srv.port}", f"[::1]:{srv.port}"])
    srv.start()
    yield srv
    srv.stop()
    shutil.rmtree(data, ignore_errors=True)


# --- driving a box --------------------------------------------------------------------

# Sends each request to the door ($http_proxy) on a socket of its own and prints, per
# request, the door's status, the status through a CONNECT tunnel, and the last body.
PROBE = r"""
import json, os, socket, sys
from urllib.parse import urlsplit
door = urlsplit(os.environ["http_proxy"])
assert door.hostname == "127.0.0.1", door
def status(raw):
    try:
        return int(raw.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None
def read_all(s, upto_head=False):
    buf = b""
    while True:
        if upto_head and b"\r\n\r\n" in buf:
            return buf
        chunk = s.recv(65536)
        if not chunk:
            return buf
        buf += chunk
out = []
for method, target in json.loads(sys.argv[1]):
    s = socket.create_connection((door.hostname, door.port), timeout=20)
    inner = None
    if method == "CONNECT":
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = read_all(s, upto_head=True)
        code = status(head)
        raw = head
        if code == 200:
            s.sendall(b"GET /tunnel HTTP/1.0\r\nHost: tunnel\r\n\r\n")
            raw = head.split(b"\r\n\r\n", 1)[1] + read_all(s)
            inner = status(raw)
        else:
            raw = head + read_all(s)
    else:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        raw = read_all(s)
        code = status(raw)
    s.close()
    body = raw.split(b"\r\n\r\n", 1)[-1].decode("utf-8", "replace")
    out.append({"target": target, "status": code, "inner": inner, "body": body})
print("PROBE " + json.dumps(out))
"""


def create(http: httpx.Client, **body: Any) -> str:
    r = http.post("/v1/sessions", json={"name": "egress", "starter": {"type": "empty"},
                                        "base": "generic", **body})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def sh(http: httpx.Client, sid: str, command: str) -> tuple[int, str]:
    r = http.post(f"/v1/sessions/{sid}/exec", json={"command": command, "timeout": 120},
                  timeout=180)
    assert r.status_code == 200, r.text
    lines = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    out = "".join(ev.get("data", "") for ev in lines if ev["type"] == "exec_output")
    assert lines[-1]["type"] == "exec_end", lines[-1]
    return int(lines[-1]["exit_code"]), out


def probe(http: httpx.Client, sid: str, *requests: tuple[str, str]) -> list[dict[str, Any]]:
    """Each (method, target) sent to the door from inside the session's box."""
    arg = shlex.quote(json.dumps(list(requests)))
    code, out = sh(http, sid, f"python3 - {arg} <<'EOF'\n{PROBE}\nEOF")
    assert code == 0, out
    line = next(ln for ln in out.splitlines() if ln.startswith("PROBE "))
    results = json.loads(line[len("PROBE "):])
    assert isinstance(results, list)
    return results


def get(url_host: str, path: str = "/") -> tuple[str, str]:
    return ("GET", f"http://{url_host}{path}")


def events(http: httpx.Client, sid: str) -> list[dict[str, Any]]:
    r = http.get(f"/v1/sessions/{sid}/events", params={"after": 0, "limit": 5000},
                 headers={"Accept": "application/json"})
    assert r.status_code == 200, r.text
    evs = r.json()["events"]
    assert isinstance(evs, list)
    return evs


def denials(http: httpx.Client, sid: str) -> list[dict[str, Any]]:
    return [e for e in events(http, sid) if e["type"] == "network_denied"]


def wait_denials(http: httpx.Client, sid: str, n: int) -> list[dict[str, Any]]:
    found = wait_for(lambda: (lambda d: d if len(d) >= n else None)(denials(http, sid)),
                     10, 0.1, f"{n} network_denied events")
    assert isinstance(found, list)
    return found


def assert_reached(result: dict[str, Any], host: TestHost, path: str = "/") -> None:
    """The control: the request went through the door and the host answered it."""
    if result["inner"] is not None:  # a CONNECT tunnel
        assert result["status"] == 200 and result["inner"] == 200, result
        assert result["body"] == f"{host.name} /tunnel", result
    else:
        assert result["status"] == 200, result
        assert result["body"] == f"{host.name} {path}", result


def assert_refused(result: dict[str, Any], *words: str) -> None:
    """A 403 from the door whose body names the host and says which rule."""
    assert result["status"] == 403, result
    assert result["inner"] is None, result
    body = result["body"]
    assert body.startswith("Sophon network door:"), body
    for word in words:
        assert word in body, (word, body)


# --- the refusals -----------------------------------------------------------------------


def test_refusals_inside_a_box_each_beside_a_control(server: LiveServer, hosts: Hosts,
                                                     http: httpx.Client) -> None:
    sp = server.port
    sid = create(http, network={"allow": [
        hosts.ok.addr,
        f"127.0.0.2:{sp}", f"[::1]:{sp}", f"localhost:{sp}",  # opened, still the server
        f"localhost:{hosts.lo.port}",  # a name that resolves to loopback, never opened
    ]})
    before = {h.name: h.connections for h in (hosts.ok, hosts.other, hosts.lo)}
    ok = hosts.ok
    octal_other = f"0177.0.0.2:{hosts.other.port}"
    decimal_other = f"2130706434:{hosts.other.port}"
    # (request, the rule, the words the body must have: the host and what the rule says)
    refused: list[tuple[tuple[str, str], str, str, int, tuple[str, ...]]] = [
        # the Sophon server's port, by every route a box has to it
        (get(f"localhost.:{sp}", "/healthz"), "sophon_server", "localhost", sp,
         ("Sophon server",)),
        (get(f"localhost:{sp}", "/healthz"), "sophon_server", "localhost", sp,
         ("Sophon server",)),
        (get(f"127.0.0.2:{sp}", "/healthz"), "sophon_server", "127.0.0.2", sp,
         ("127.0.0.2", "Sophon server")),
        (get(f"[::1]:{sp}", "/healthz"), "sophon_server", "::1", sp,
         ("::1", "Sophon server")),
        (("CONNECT", f"[::1]:{sp}"), "sophon_server", "::1", sp, ("::1", "Sophon server")),
        (get(f"127.0.0.3:{sp}", "/healthz"), "not_allowed", "127.0.0.3", sp,
         (f"127.0.0.3:{sp}", "not on this sandbox's network list")),
        # a listed name that resolves to loopback: refused at the address the door found
        (get(f"localhost.:{hosts.lo.port}"), "private_address", "localhost", hosts.lo.port,
         ("loopback", "SOPHON_EGRESS_ALLOW_PRIVATE")),
        # an unlisted loopback address, at the allowed host's port
        (get(f"127.0.0.3:{ok.port}"), "not_allowed", "127.0.0.3", ok.port,
         (f"127.0.0.3:{ok.port}", "not on this sandbox's network list")),
        # an unlisted port on the allowed address (the admin opened it: that allows nothing)
        (get(hosts.other.addr), "not_allowed", "127.0.0.2", hosts.other.port,
         (hosts.other.addr, "not on this sandbox's network list")),
        # CONNECT to the allowed host at a forbidden port
        (("CONNECT", hosts.other.addr), "not_allowed", "127.0.0.2", hosts.other.port,
         (hosts.other.addr, "not on this sandbox's network list")),
        (("CONNECT", "127.0.0.2:22"), "not_allowed", "127.0.0.2", 22,
         ("127.0.0.2:22", "not on this sandbox's network list")),
        # other spellings of 127.0.0.2 at the unlisted port
        (get(octal_other), "not_allowed", "127.0.0.2", hosts.other.port,
         (hosts.other.addr,)),
        (get(decimal_other), "not_allowed", "127.0.0.2", hosts.other.port,
         (hosts.other.addr,)),
        (("CONNECT", decimal_other), "not_allowed", "127.0.0.2", hosts.other.port,
         (hosts.other.addr,)),
    ]
    controls = [get(ok.addr, "/plain"), ("CONNECT", ok.addr),
                get(f"0177.0.0.2:{ok.port}", "/octal"),  # the allowed host, any spelling
                get(f"2130706434:{ok.port}", "/decimal")]
    results = probe(http, sid, *controls, *(r[0] for r in refused))
    assert_reached(results[0], ok, "/plain")
    assert_reached(results[1], ok)
    assert_reached(results[2], ok, "/octal")
    assert_reached(results[3], ok, "/decimal")
    for (request, _rule, _, _, words), result in zip(refused, results[len(controls):],
                                                   strict=True):
        assert_refused(result, *words)
        assert result["target"] == request[1]
    # The hosts that must not be reached accepted nothing; the allowed one, the controls.
    assert hosts.other.connections == before["other"]
    assert hosts.lo.connections == before["lo"]
    assert hosts.ok.connections == before["ok"] + len(controls)
    # One network_denied event per refusal, with its host, port and rule, in order.
    found = wait_denials(http, sid, len(refused))
    assert [(e["host"], e["port"], e["rule"]) for e in found] == [
        (host, port, rule) for _, rule, host, port, _ in refused]
    for e in found:
        assert e["message"]


def test_the_refusal_names_the_host_that_was_asked_for(server: LiveServer, hosts: Hosts,
                                                       http: httpx.Client) -> None:
    """A refusal decided at the address (a name resolving to loopback) names the name the
    box asked for, so a person reading curl's output knows which of their hosts it was."""
    sid = create(http, network={"allow": [hosts.ok.addr, f"localhost:{hosts.lo.port}"]})
    control, refused = probe(http, sid, get(hosts.ok.addr),
                             get(f"localhost:{hosts.lo.port}"))
    assert_reached(control, hosts.ok)
    assert_refused(refused, "loopback")
    if "localhost" not in refused["body"] or str(hosts.lo.port) not in refused["body"]:
        # BUG (reported to the lead): check_address's message names only the resolved
        # address ("127.0.0.1 is a loopback address ..."), not the host or the port.
        pytest.xfail(f"BUG: the 403 does not name the host asked for: {refused['body']!r}")


def test_a_generic_session_without_a_list_reaches_nothing(server: LiveServer, hosts: Hosts,
                                                          http: httpx.Client) -> None:
    """SOPHON_EGRESS_ALLOW_PRIVATE lifts the refused set for an address; it allows
    nothing by itself: a session whose list does not name it is refused."""
    listed = create(http, network={"allow": [hosts.ok.addr]})
    bare = create(http)
    before = hosts.ok.connections
    [control] = probe(http, listed, get(hosts.ok.addr, "/listed"))
    assert_reached(control, hosts.ok, "/listed")
    results = probe(http, bare, get(hosts.ok.addr), ("CONNECT", hosts.ok.addr))
    for r in results:
        assert_refused(r, hosts.ok.addr, "not on this sandbox's network list")
    assert hosts.ok.connections == before + 1
    found = wait_denials(http, bare, 2)
    assert {(e["host"], e["port"], e["rule"]) for e in found} == {
        ("127.0.0.2", hosts.ok.port, "not_allowed")}
    assert denials(http, listed) == []


def test_a_clients_own_proxy_settings_reach_the_door(server: LiveServer, hosts: Hosts,
                                                     http: httpx.Client) -> None:
    """curl with the environment every exec gets: the allowed host answers, the refused
    one prints the door's reason."""
    sid = create(http, network={"allow": [hosts.ok.addr]})
    code, out = sh(http, sid, f"curl -sS --max-time 20 http://{hosts.ok.addr}/curl")
    assert (code, out) == (0, "ok /curl"), out
    code, out = sh(http, sid, f"curl -sS --max-time 20 -w ' %{{http_code}}' "
                              f"http://{hosts.other.addr}/")
    assert out.endswith(" 403"), out
    assert f"{hosts.other.addr} is not on this sandbox's network list" in out
    # https:// goes through CONNECT (curl's -p tunnel); a refused tunnel is curl's error
    code, out = sh(http, sid, f"curl -sS --max-time 20 -p -w '%{{http_connect}}' "
                              f"http://{hosts.other.addr}/ 2>/tmp/err; echo \" $?\"; "
                              "cat /tmp/err")
    first, _, err = out.partition("\n")
    assert first == "403 56", out  # the door's status, curl's "proxy CONNECT aborted"
    assert "CONNECT tunnel failed, response 403" in err, out
    assert hosts.other.paths == []


# --- what a session may list --------------------------------------------------------


def test_a_list_naming_an_address_the_admin_did_not_open_is_a_400(
        server: LiveServer, hosts: Hosts, http: httpx.Client) -> None:
    create(http, network={"allow": [hosts.ok.addr]})  # control: an opened one is fine
    for rule in (hosts.closed.addr, f"2130706434:{hosts.closed.port}", "127.0.0.2",
                 f"127.0.0.3:{hosts.ok.port}", f"[::1]:{hosts.ok.port}",
                 "169.254.169.254:80", "10.0.0.1:80"):
        r = http.post("/v1/sessions", json={"name": "x", "network": {"allow": [rule]}})
        assert r.status_code == 400, (rule, r.text)
        assert r.json()["error"] == "invalid_request"
        assert "SOPHON_EGRESS_ALLOW_PRIVATE" in r.json()["message"], r.text
    for rule in ("*", "*.com", "http://example.com/", "example.com:0"):
        r = http.post("/v1/sessions", json={"name": "x", "network": {"allow": [rule]}})
        assert r.status_code == 400, (rule, r.text)
    assert hosts.closed.connections == 0
    names = {s["name"] for s in http.get("/v1/sessions").json()["sessions"]}
    assert "x" not in names


def test_patching_the_list_holds_from_the_next_connection(server: LiveServer, hosts: Hosts,
                                                          http: httpx.Client) -> None:
    sid = create(http, network={"allow": [hosts.ok.addr]})
    ok_before, other_before = hosts.ok.connections, hosts.other.connections
    control, refused = probe(http, sid, get(hosts.ok.addr, "/a"), get(hosts.other.addr, "/a"))
    assert_reached(control, hosts.ok, "/a")
    assert_refused(refused, hosts.other.addr)
    assert hosts.other.connections == other_before

    r = http.patch(f"/v1/sessions/{sid}",
                   json={"network": {"allow": [hosts.ok.addr, hosts.other.addr]}})
    assert r.status_code == 200, r.text
    assert r.json()["network"]["allow"] == [hosts.ok.addr, hosts.other.addr]
    both = probe(http, sid, get(hosts.ok.addr, "/b"), get(hosts.other.addr, "/b"))
    assert_reached(both[0], hosts.ok, "/b")
    assert_reached(both[1], hosts.other, "/b")

    r = http.patch(f"/v1/sessions/{sid}", json={"network": {"allow": [hosts.other.addr]}})
    assert r.status_code == 200, r.text
    swapped = probe(http, sid, get(hosts.other.addr, "/c"), get(hosts.ok.addr, "/c"))
    assert_reached(swapped[0], hosts.other, "/c")
    assert_refused(swapped[1], hosts.ok.addr)
    assert hosts.ok.paths.count("/c") == 0
    assert hosts.ok.connections == ok_before + 2

    # A PATCH past what the admin opened is a 400 and changes nothing.
    r = http.patch(f"/v1/sessions/{sid}", json={"network": {"allow": [hosts.closed.addr]}})
    assert r.status_code == 400, r.text
    assert http.get(f"/v1/sessions/{sid}").json()["network"]["allow"] == [hosts.other.addr]
    assert [(e["port"], e["rule"]) for e in wait_denials(http, sid, 2)] == [
        (hosts.other.port, "not_allowed"), (hosts.ok.port, "not_allowed")]


# --- usage ------------------------------------------------------------------------------


def test_usage_counts_traffic_and_refusals(server: LiveServer, hosts: Hosts,
                                           http: httpx.Client) -> None:
    sid = create(http, network={"allow": [hosts.ok.addr]})
    r = http.get(f"/v1/sessions/{sid}/usage")
    assert r.status_code == 200, r.text
    assert r.json()["network"] == {"bytes_out": 0, "bytes_in": 0, "connections": 0,
                                   "denied": 0}
    results = probe(http, sid, get(hosts.ok.addr, "/u1"), ("CONNECT", hosts.ok.addr),
                    get(hosts.other.addr), get(f"127.0.0.3:{hosts.ok.port}"),
                    ("CONNECT", hosts.other.addr))
    assert_reached(results[0], hosts.ok, "/u1")
    assert_reached(results[1], hosts.ok)
    for res in results[2:]:
        assert_refused(res)

    def counted() -> dict[str, int] | None:
        net = http.get(f"/v1/sessions/{sid}/usage").json()["network"]
        return net if net["connections"] >= 2 and net["denied"] >= 3 else None

    net = wait_for(counted, 10, 0.1, "the door's counts in the session's usage")
    assert isinstance(net, dict)
    assert net["connections"] == 2 and net["denied"] == 3, net
    # at least the requests sent and the answers received through the door
    assert net["bytes_out"] >= len("GET /u1 HTTP/1.1\r\n\r\n") + len("GET /tunnel"), net
    assert net["bytes_in"] >= len("ok /u1") + len("ok /tunnel"), net


# Over one CONNECT tunnel: a request, then (once the test has seen the door's counts
# written to the store) a second that brings 1 MiB back.
LONG_TUNNEL = r"""
import os, socket
from urllib.parse import urlsplit
door = urlsplit(os.environ["http_proxy"])
s = socket.create_connection((door.hostname, door.port), timeout=60)
s.sendall(b"CONNECT %(addr)s HTTP/1.1\r\nHost: %(addr)s\r\n\r\n")
def answer():
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, _, rest = buf.partition(b"\r\n\r\n")
    n = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            n = int(v)
    while len(rest) < n:
        rest += s.recv(65536)
    return head.split(b" ")[1], rest
assert answer()[0] == b"200"
s.sendall(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n")
print(answer())
s.sendall(b"GET /big-when-released HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
code, body = answer()
print(code.decode(), len(body))
"""


def stored_usage(server: LiveServer, owner_id: str) -> tuple[int, ...] | None:
    """What the door has written to the store for ``owner_id`` (None: nothing yet)."""
    db = sqlite3.connect(f"file:{server.data_dir / 'sophon.db'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT bytes_out, bytes_in, connections, denied FROM "
                         "network_usage WHERE owner_id = ?", (owner_id,)).fetchone()
    finally:
        db.close()
    return tuple(row) if row else None


def test_usage_counts_a_long_connection_across_flushes(server: LiveServer, hosts: Hosts,
                                                       http: httpx.Client) -> None:
    """A tunnel that outlives a flush of the counts (a long download, a keep-alive
    connection to a registry) is counted in full: the bytes after the flush too."""
    sid = create(http, network={"allow": [hosts.ok.addr]})
    hosts.ok.release.clear()
    script = LONG_TUNNEL % {"addr": hosts.ok.addr}
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(sh, http, sid, f"python3 - <<'EOF'\n{script}\nEOF")
        # the tunnel is open and its first answer counted and written to the store
        wait_for(lambda: "/first" in hosts.ok.paths and stored_usage(server, sid), 15, 0.05,
                 "the door's counts for the open tunnel to be written to the store")
        first = stored_usage(server, sid)
        assert first is not None and first[2] == 1, first
        hosts.ok.release.set()
        code, out = running.result(timeout=120)
    assert code == 0 and out.endswith(f"200 {BIG}\n"), out

    def counted() -> dict[str, int] | None:
        net = http.get(f"/v1/sessions/{sid}/usage").json()["network"]
        return net if net["bytes_in"] >= BIG else None

    try:
        net = wait_for(counted, 10, 0.1, "the 1 MiB in the session's usage")
    except AssertionError:
        net = http.get(f"/v1/sessions/{sid}/usage").json()["network"]
        # BUG (reported to the lead): Egress.flush swaps door.tallies for a new dict,
        # but an open splice keeps adding to the old Tally object, which is never
        # written again: what a connection moves after the first flush is lost.
        pytest.xfail(f"BUG: bytes moved after a flush are not counted: {net}")
    assert isinstance(net, dict)
    assert net["connections"] == 1 and net["denied"] == 0, net


def test_a_session_sees_only_its_own_refusals(server: LiveServer, hosts: Hosts,
                                              http: httpx.Client) -> None:
    a = create(http, network={"allow": [hosts.ok.addr]})
    b = create(http, network={"allow": [hosts.ok.addr]})
    [refused] = probe(http, a, get(hosts.other.addr))
    assert_refused(refused, hosts.other.addr)
    [control] = probe(http, b, get(hosts.ok.addr))
    assert_reached(control, hosts.ok)
    wait_denials(http, a, 1)
    assert denials(http, b) == []
    usage_b = http.get(f"/v1/sessions/{b}/usage").json()["network"]
    assert usage_b["denied"] == 0
