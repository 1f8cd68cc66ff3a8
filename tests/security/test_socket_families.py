"""Socket families: a box makes Unix, IPv4 and IPv6 sockets, nothing else.

A box's network namespace holds only loopback, but it covers the IP families alone:
``AF_VSOCK`` reaches the host's (and hypervisor's) vsock ports whatever the namespace,
so a box could bind or probe ports that host processes hold. The seccomp filter
answers ``EAFNOSUPPORT`` (what a kernel built without a family says) for every family
but ``AF_UNIX``, ``AF_INET`` and ``AF_INET6``, for ``socket`` and ``socketpair``;
``AF_NETLINK`` is allowed for ``NETLINK_ROUTE`` alone (``EPROTONOSUPPORT`` for other
protocols), because without it a box cannot list its own interfaces: Node's
``os.networkInterfaces()`` throws (dev servers call it), and ``ip addr``,
``hostname -I`` and Python's ``socket.if_nameindex()`` fail.

Most families are missing from this machine's kernel anyway, so a box's answer alone
cannot show that the filter refuses them: ``test_the_filter_refuses_every_family``
runs the server's compiled filter over every family, on both ABIs, in a small BPF
interpreter.
"""

from __future__ import annotations

import errno
import json
import platform
import socket
import struct
import subprocess
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from tests.security.helpers import client, execute

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64",
                                reason="the probes use x86_64 syscall numbers")

HOST_PYTHON = "/usr/bin/python3"
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_VSOCK = 1, 2, 10, 16, 40
ALLOWED = (AF_UNIX, AF_INET, AF_INET6)
# Linux's numbers (include/linux/socket.h); the sweep below covers every other one.
FAMILIES = {
    "AF_UNSPEC": 0, "AF_AX25": 3, "AF_IPX": 4, "AF_APPLETALK": 5, "AF_NETROM": 6,
    "AF_BRIDGE": 7, "AF_ATMPVC": 8, "AF_X25": 9, "AF_ROSE": 11, "AF_DECnet": 12,
    "AF_NETBEUI": 13, "AF_SECURITY": 14, "AF_KEY": 15, "AF_PACKET": 17, "AF_ASH": 18,
    "AF_ECONET": 19, "AF_ATMSVC": 20, "AF_RDS": 21, "AF_SNA": 22, "AF_IRDA": 23,
    "AF_PPPOX": 24, "AF_WANPIPE": 25, "AF_LLC": 26, "AF_IB": 27, "AF_MPLS": 28,
    "AF_CAN": 29, "AF_TIPC": 30, "AF_BLUETOOTH": 31, "AF_IUCV": 32, "AF_RXRPC": 33,
    "AF_ISDN": 34, "AF_PHONET": 35, "AF_IEEE802154": 36, "AF_CAIF": 37, "AF_ALG": 38,
    "AF_NFC": 39, "AF_VSOCK": AF_VSOCK, "AF_KCM": 41, "AF_QIPCRTR": 42, "AF_SMC": 43,
    "AF_XDP": 44, "AF_MCTP": 45,
}
SWEEP = [f for f in range(64) if f not in (*ALLOWED, AF_NETLINK)]
# Beyond the kernel's table, and values whose low 32 bits (all the kernel reads) name
# an allowed family or vsock: a filter comparing 64 bits must still refuse them.
ODD = [64, 255, 2**31, 2**32 - 1, 2**32 + AF_VSOCK, 2**32 + AF_INET, 2**63]
PROBED = sorted({*ALLOWED, *FAMILIES.values(), *SWEEP})
NETLINK_OTHER = {"NETLINK_USERSOCK": 2, "NETLINK_SOCK_DIAG": 4, "NETLINK_XFRM": 6,
                 "NETLINK_AUDIT": 9, "NETLINK_CONNECTOR": 11, "NETLINK_NETFILTER": 12,
                 "NETLINK_KOBJECT_UEVENT": 15, "NETLINK_GENERIC": 16,
                 "NETLINK_CRYPTO": 21, "NETLINK_SMC": 22}

PROBE = r"""
import ctypes, errno, json, os, socket
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
TYPES = (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW, socket.SOCK_SEQPACKET)

def name(rc):
    return "ok" if rc >= 0 else errno.errorcode[ctypes.get_errno()]

def sock(family, type_, proto=0):
    # syscall(2), not socket(2): a family is passed as all 64 bits of the register.
    rc = libc.syscall(ctypes.c_long(41), ctypes.c_ulong(family), ctypes.c_long(type_),
                      ctypes.c_long(proto))
    out = name(rc)
    if rc >= 0:
        os.close(rc)
    return out

def pair(family, type_):
    fds = (ctypes.c_int * 2)()
    rc = libc.syscall(ctypes.c_long(53), ctypes.c_ulong(family), ctypes.c_long(type_),
                      ctypes.c_long(0), fds)
    out = name(rc)
    if rc >= 0:
        os.close(fds[0]); os.close(fds[1])
    return out

families, odd = FAMILIES_ARG
out = {"socket": {}, "socketpair": {}, "netlink": {}}
for f in families + odd:
    # Any type the family takes is enough for the kernel to get past socket().
    out["socket"][str(f)] = sorted({sock(f, t) for t in TYPES})
    out["socketpair"][str(f)] = sorted({pair(f, t) for t in TYPES})
for proto in range(32):
    out["netlink"][str(proto)] = sorted({sock(16, t, proto) for t in (socket.SOCK_RAW,
                                                                      socket.SOCK_DGRAM)})
# vsock, the family that reached the host: bind a port, as a probe of the host's would.
try:
    v = socket.socket(40, socket.SOCK_STREAM)
    v.bind((0xFFFFFFFF, 40000 + os.getpid() % 20000))  # VMADDR_CID_ANY
    v.close()
    out["vsock_bind"] = "bound"
except OSError as exc:
    out["vsock_bind"] = errno.errorcode[exc.errno]
# The controls: what a box needs.
a, b = socket.socketpair()
a.sendall(b"ping")
out["unix_pair"] = b.recv(4).decode()
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.bind(("127.0.0.1", 0)); srv.listen()
c = socket.create_connection(srv.getsockname()); conn, _ = srv.accept()
c.sendall(b"tcp4"); out["inet"] = conn.recv(4).decode()
try:
    s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s6.bind(("::1", 0)); s6.sendto(b"udp6", s6.getsockname()); out["inet6"] = s6.recv(4).decode()
except OSError as exc:  # a host without IPv6 on loopback: the socket itself was made
    out["inet6"] = "made" if exc.errno == errno.EADDRNOTAVAIL else errno.errorcode[exc.errno]
u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); u.close(); out["unix"] = "ok"
print(json.dumps(out))
"""


def probe_code(families: list[int], odd: list[int]) -> str:
    return PROBE.replace("FAMILIES_ARG", repr([families, odd]))


def host_probe(families: list[int], odd: list[int]) -> dict[str, Any]:
    done = subprocess.run([HOST_PYTHON, "-c", probe_code(families, odd)],
                          capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.fixture(scope="module")
def boxed(server: LiveServer) -> dict[str, Any]:
    """The probe's answers in a box (one execution for every family)."""
    with client(server, server.add_user()) as http:
        res = execute(http, probe_code(PROBED, ODD),
                      language="python", timeout=60)
    assert res["exit_code"] == 0, res
    return dict(json.loads(res["stdout"]))


@pytest.fixture(scope="module")
def host() -> dict[str, Any]:
    """The same probe on the host, outside any box (no filter)."""
    return host_probe(PROBED, ODD)


@pytest.fixture(scope="module")
def compiled(server: LiveServer) -> bytes:
    """The filter the server compiled for its boxes."""
    return (server.data_dir / "runtime" / "seccomp.bpf").read_bytes()


@pytest.mark.parametrize("family", sorted(FAMILIES, key=FAMILIES.__getitem__))
def test_each_other_family_is_refused_in_a_box(
    boxed: dict[str, Any], compiled: bytes, family: str,
) -> None:
    """In a box, and by the filter itself on both ABIs (most of these families are
    missing from this kernel, which would answer EAFNOSUPPORT on its own)."""
    number = str(FAMILIES[family])
    assert boxed["socket"][number] == ["EAFNOSUPPORT"], (family, boxed["socket"][number])
    assert boxed["socketpair"][number] == ["EAFNOSUPPORT"], (family, boxed["socketpair"][number])
    for arch, (sock_nr, pair_nr, _) in NUMBERS.items():
        for nr in (sock_nr, pair_nr):
            for type_ in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW):
                got = run_bpf(compiled, arch, nr, (FAMILIES[family], type_, 0))
                assert got == RET_ERRNO | errno.EAFNOSUPPORT, (family, hex(arch), nr, hex(got))


def test_every_family_number_but_the_three_is_refused_in_a_box(boxed: dict[str, Any]) -> None:
    for f in SWEEP + ODD:
        assert boxed["socket"][str(f)] == ["EAFNOSUPPORT"], (f, boxed["socket"][str(f)])
        assert boxed["socketpair"][str(f)] == ["EAFNOSUPPORT"], (f, boxed["socketpair"][str(f)])


def test_vsock_is_refused_in_a_box_but_reaches_the_host_kernel_outside(
    boxed: dict[str, Any], host: dict[str, Any],
) -> None:
    """The red team's case: outside a box the same probe makes a vsock socket and binds
    a port; inside, socket() itself fails."""
    if host["socket"][str(AF_VSOCK)] == ["EAFNOSUPPORT"]:
        pytest.skip("this kernel has no vsock: the control cannot run")
    assert "ok" in host["socket"][str(AF_VSOCK)], host["socket"][str(AF_VSOCK)]
    assert host["vsock_bind"] == "bound", host["vsock_bind"]
    assert boxed["socket"][str(AF_VSOCK)] == ["EAFNOSUPPORT"]
    assert boxed["vsock_bind"] == "EAFNOSUPPORT"


def test_families_this_kernel_has_are_reachable_outside_a_box(
    boxed: dict[str, Any], host: dict[str, Any],
) -> None:
    """Control for the sweep: on the host, some refused family gets past socket() (the
    probe is not refused by something else), and in a box none does."""
    reachable = [f for f in SWEEP if host["socket"][str(f)] != ["EAFNOSUPPORT"]]
    assert reachable, "no family beyond the three is available on this host"
    for f in reachable:
        assert boxed["socket"][str(f)] == ["EAFNOSUPPORT"], (f, boxed["socket"][str(f)])


@pytest.mark.parametrize("protocol", sorted(NETLINK_OTHER, key=NETLINK_OTHER.__getitem__))
def test_netlink_other_than_route_is_refused(boxed: dict[str, Any], protocol: str) -> None:
    number = str(NETLINK_OTHER[protocol])
    assert boxed["netlink"][number] == ["EPROTONOSUPPORT"], (protocol, boxed["netlink"][number])


def test_netlink_route_stays_and_the_rest_of_netlink_goes(
    boxed: dict[str, Any], host: dict[str, Any],
) -> None:
    assert boxed["netlink"]["0"] == ["ok"], boxed["netlink"]["0"]
    for proto, outcome in boxed["netlink"].items():
        if proto != "0":
            assert outcome == ["EPROTONOSUPPORT"], (proto, outcome)
    # Control: on the host the same probe makes netlink sockets of other protocols.
    assert host["netlink"]["0"] == ["ok"]
    assert [p for p, o in host["netlink"].items() if p != "0" and "ok" in o], host["netlink"]


def test_unix_inet_and_inet6_sockets_work_in_a_box(boxed: dict[str, Any]) -> None:
    assert boxed["unix_pair"] == "ping" and boxed["unix"] == "ok", boxed
    assert boxed["inet"] == "tcp4", boxed
    assert boxed["inet6"] in ("udp6", "made"), boxed
    for f in ALLOWED:
        assert "ok" in boxed["socket"][str(f)], (f, boxed["socket"][str(f)])
    assert "ok" in boxed["socketpair"][str(AF_UNIX)], boxed["socketpair"][str(AF_UNIX)]


NEEDS_ROUTE = r"""
set -e
python3 -c "import socket as s
print('gai', s.getaddrinfo('localhost', 80, flags=s.AI_ADDRCONFIG)[0][4][0])"
python3 -c "import socket; print('ifs', [n for _, n in socket.if_nameindex()])"
node -e "require('dns').lookup('localhost', (e, a) => console.log('lookup', e ? e.code : a))"
node -e "console.log('node-ifs', Object.keys(require('os').networkInterfaces()).join(','))"
ip -o link show lo | grep -q LOOPBACK && echo ip-ok
"""


def test_what_lists_the_boxs_interfaces_still_works(http: httpx.Client) -> None:
    """Why NETLINK_ROUTE stays (refusing it broke the last three)."""
    res = execute(http, NEEDS_ROUTE, timeout=60)
    assert res["exit_code"] == 0, res
    lines = res["stdout"].splitlines()
    assert "gai 127.0.0.1" in lines, res
    assert "ifs ['lo']" in lines, res
    assert "lookup 127.0.0.1" in lines, res
    assert "node-ifs lo" in lines, res
    assert "ip-ok" in lines, res


# --- the compiled filter, run over every family --------------------------------------

AUDIT_ARCH_X86_64, AUDIT_ARCH_I386 = 0xC000003E, 0x40000003
# (socket, socketpair, socketcall) on each ABI; x86_64 has no socketcall.
NUMBERS = {AUDIT_ARCH_X86_64: (41, 53, None), AUDIT_ARCH_I386: (359, 360, 102)}
RET_ERRNO, RET_ALLOW = 0x00050000, 0x7FFF0000


def run_bpf(prog: bytes, arch: int, nr: int, args: tuple[int, ...]) -> int:
    """Classic BPF as seccomp runs it, for the handful of instructions libseccomp
    emits, over ``struct seccomp_data`` (nr, arch, ip, args[6])."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(list(args) + [0] * 6)[:6])
    insns = [struct.unpack_from("<HBBI", prog, i) for i in range(0, len(prog), 8)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:                                   # ld [k]
            acc = struct.unpack_from("<I", data, k)[0]
        elif code == 0x54:                                 # and #k
            acc &= k
        elif code == 0x06:                                 # ret #k
            return int(k)
        elif code == 0x05:                                 # ja
            pc += k
        elif code in (0x15, 0x25, 0x35, 0x45):             # jeq, jgt, jge, jset #k
            hit = {0x15: acc == k, 0x25: acc > k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += jt if hit else jf
        else:
            raise AssertionError(f"instruction {code:#x} not known to this interpreter")


def test_the_filter_refuses_every_family(compiled: bytes) -> None:
    prog = compiled
    no_family = RET_ERRNO | errno.EAFNOSUPPORT
    for arch, (sock_nr, pair_nr, socketcall) in NUMBERS.items():
        width = 2**64 if arch == AUDIT_ARCH_X86_64 else 2**32
        for family in [*range(256), *ODD]:
            if family >= width:
                continue
            for nr, allowed in ((sock_nr, ALLOWED + (AF_NETLINK,)), (pair_nr, ALLOWED)):
                want = RET_ALLOW if family in allowed else no_family
                got = run_bpf(prog, arch, nr, (family, socket.SOCK_STREAM, 0))
                assert got == want, (hex(arch), nr, family, hex(got))
        for proto in range(64):
            want = RET_ALLOW if proto == 0 else RET_ERRNO | errno.EPROTONOSUPPORT
            assert run_bpf(prog, arch, sock_nr, (AF_NETLINK, 3, proto)) == want, (arch, proto)
        if socketcall is not None:
            # The multiplexer hides the family in memory: refused whole, as ENOSYS.
            assert run_bpf(prog, arch, socketcall, (1, 0)) == RET_ERRNO | errno.ENOSYS
    # Control: the interpreter runs the filter as the kernel does (allowed calls pass,
    # a denied one is refused) and an unknown ABI is killed.
    assert run_bpf(prog, AUDIT_ARCH_X86_64, 39, ()) == RET_ALLOW            # getpid
    assert run_bpf(prog, AUDIT_ARCH_X86_64, 250, ()) == RET_ERRNO | errno.EPERM  # keyctl
    assert run_bpf(prog, 0xC00000B7, 41, (AF_VSOCK,)) == 0x80000000  # aarch64 here
