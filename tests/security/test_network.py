"""Network isolation: a box has a loopback of its own and nothing else."""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import LiveServer
from tests.security.conftest import Run

CONNECT_PROBE = r"""
import json, socket
results = {}
for host, port in TARGETS:
    try:
        with socket.create_connection((host, port), timeout=3):
            results[f"{host}:{port}"] = "connected"
    except OSError as exc:
        results[f"{host}:{port}"] = exc.__class__.__name__ + ": " + str(exc)
print(json.dumps(results))
"""


def connect_from_box(run: Run, targets: list[tuple[str, int]]) -> dict[str, str]:
    res = run(f"TARGETS = {targets!r}\n{CONNECT_PROBE}", language="python", timeout=30)
    assert res["exit_code"] == 0, res
    return json.loads(res["stdout"])


@contextlib.contextmanager
def listener(host: str) -> Iterator[socket.socket]:
    """A TCP listener on the host that also notices any connection it did not expect."""
    with socket.socket() as srv:
        srv.bind((host, 0))
        srv.listen(16)
        srv.setblocking(False)
        yield srv


def accepted_any(srv: socket.socket) -> bool:
    try:
        conn, _ = srv.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def host_ipv4_addresses() -> list[str]:
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return [line.split()[3].split("/")[0] for line in out.splitlines()
            if "inet" in line and not line.split()[3].startswith("127.")]


def test_no_tcp_to_the_hosts_loopback(run: Run, server: LiveServer) -> None:
    with listener("127.0.0.1") as srv:
        port = srv.getsockname()[1]
        # Control: on the host, the listener takes connections.
        with socket.create_connection(("127.0.0.1", port), timeout=3):
            pass
        assert accepted_any(srv)
        results = connect_from_box(
            run, [("127.0.0.1", port), ("localhost", port), ("127.0.0.1", server.port)])
        assert not accepted_any(srv), "the box reached the host's loopback"
    for target, outcome in results.items():
        assert outcome != "connected", f"{target} reachable from the box"


def test_no_tcp_to_the_hosts_other_addresses(run: Run) -> None:
    addresses = host_ipv4_addresses()
    if not addresses:
        pytest.skip("the host has no non-loopback IPv4 address")
    with listener("0.0.0.0") as srv:
        port = srv.getsockname()[1]
        with socket.create_connection((addresses[0], port), timeout=3):  # control
            pass
        assert accepted_any(srv)
        results = connect_from_box(run, [(a, port) for a in addresses])
        assert not accepted_any(srv), "the box reached the host"
    assert "connected" not in results.values(), results


def test_no_tcp_to_the_internet(run: Run) -> None:
    results = connect_from_box(run, [("1.1.1.1", 443), ("8.8.8.8", 53), ("1.1.1.1", 80)])
    assert "connected" not in results.values(), results
    res = run("cat /proc/net/dev")
    interfaces = {line.split(":")[0].strip() for line in res["stdout"].splitlines()[2:]}
    assert interfaces == {"lo"}, res["stdout"]


def test_no_dns(run: Run) -> None:
    res = run(r"""
import json, socket
out = {}
for name in ("example.com", "google.com", "localhost"):
    try:
        out[name] = sorted({a[4][0] for a in socket.getaddrinfo(name, 443)})
    except OSError as exc:
        out[name] = str(exc)
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01"
             b"\x00\x01", ("8.8.8.8", 53))
    out["udp"] = "sent: " + repr(s.recvfrom(512))
except OSError as exc:
    out["udp"] = str(exc)
print(json.dumps(out))
""", language="python", timeout=30)
    assert res["exit_code"] == 0, res
    out = json.loads(res["stdout"])
    assert isinstance(out["example.com"], str), f"example.com resolved: {out}"
    assert isinstance(out["google.com"], str), f"google.com resolved: {out}"
    assert not out["udp"].startswith("sent"), out
    assert "127.0.0.1" in out["localhost"]  # control: the resolver itself works


def test_no_abstract_unix_socket_to_the_host(run: Run) -> None:
    """Abstract unix sockets are scoped by network namespace, not by the filesystem."""
    name = f"sophon-sec-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind("\0" + name)
        srv.listen(4)
        srv.setblocking(False)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:  # control
            c.connect("\0" + name)
        assert accepted_any(srv)
        res = run(f"""
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect("\\0{name}")
    print("connected")
except OSError as exc:
    print("refused", exc)
""", language="python")
        assert not accepted_any(srv), "the box reached a host abstract socket"
    assert res["stdout"].startswith("refused"), res
