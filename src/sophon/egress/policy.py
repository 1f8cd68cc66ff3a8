"""Who may reach what: host rules, the addresses no box reaches, and the decision.

Pure functions and data, no I/O but name resolution (``resolve``), so every spelling of
an address is checked here and in the unit tests, not in the door's socket code.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field

from sophon.errors import BadRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# The hosts each base reaches with no setting at all (the package registries of its
# toolchain). generic: nothing.
BASE_ALLOW: dict[str, tuple[str, ...]] = {
    "generic": (),
    "python": ("pypi.org", "files.pythonhosted.org"),
    "node": ("registry.npmjs.org",),
    "dotnet": ("api.nuget.org", "www.nuget.org"),
}
# What the execution API's threads reach by default: the registries of every base.
REGISTRIES: tuple[str, ...] = tuple(sorted({h for hosts in BASE_ALLOW.values() for h in hosts}))

# Ports a rule without one allows: a name means its web service, not every port it has.
WEB_PORTS = (80, 443)

_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_NAME = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*")

# The refused set (docs/ARCHITECTURE.md, "The egress door"): exactly these, nothing wider.
_REFUSED_V4 = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12",
    "192.168.0.0/16", "100.64.0.0/10", "224.0.0.0/4", "255.255.255.255/32")]
_REFUSED_V6 = [ipaddress.ip_network(n) for n in (
    "::/128", "::1/128", "fe80::/10", "fc00::/7", "ff00::/8")]
_WHY = {"0.0.0.0/8": "unspecified", "127.0.0.0/8": "loopback", "169.254.0.0/16": "link-local",
        "10.0.0.0/8": "private", "172.16.0.0/12": "private", "192.168.0.0/16": "private",
        "100.64.0.0/10": "shared (carrier-grade NAT)", "224.0.0.0/4": "multicast",
        "255.255.255.255/32": "broadcast", "::/128": "unspecified", "::1/128": "loopback",
        "fe80::/10": "link-local", "fc00::/7": "private (unique local)",
        "ff00::/8": "multicast"}


def refused_kind(ip: IPAddress) -> str | None:
    """Why no box may reach ``ip`` (loopback, private, ...), or None if it may."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for net in _REFUSED_V4 if isinstance(ip, ipaddress.IPv4Address) else _REFUSED_V6:
        if ip in net:
            return _WHY[str(net)]
    return None


def parse_ip(host: str) -> IPAddress | None:
    """The address ``host`` spells, in any form the C library accepts (``127.1``,
    ``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``[::1]``, ``::ffff:127.0.0.1``), or None
    for a name. What a client would connect to is what gets checked."""
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    h = h.rstrip(".")
    try:
        return ipaddress.ip_address(h)
    except ValueError:
        pass
    if re.fullmatch(r"[0-9a-fA-FxX.]+", h) and h[:1].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(h))
        except OSError:
            return None
    return None


def normalize_host(host: str) -> str:
    """Lower case, no trailing dot, an address in its one canonical spelling."""
    ip = parse_ip(host)
    if ip is not None:
        return str(ip)
    return host.strip().lower().rstrip(".")


@dataclass(frozen=True)
class HostRule:
    """``host``, ``host:port``, ``*.domain`` or ``*.domain:port``; an address literal
    matches that address in any spelling."""

    host: str
    port: int | None = None

    @property
    def wildcard(self) -> bool:
        return self.host.startswith("*.")

    def matches(self, host: str, port: int) -> bool:
        if self.port is None and port not in WEB_PORTS:
            return False
        if self.port is not None and port != self.port:
            return False
        return self.names(host)

    def names(self, host: str) -> bool:
        """Whether the rule's host part names ``host`` (any port)."""
        if self.wildcard:
            return host.endswith(self.host[1:])
        return host == self.host

    def covers(self, other: HostRule) -> bool:
        """Whether everything ``other`` allows, this allows too (the ceiling check)."""
        if self.port is not None and other.port != self.port:
            return False
        if self.port is None and other.port not in (None, *WEB_PORTS):
            return False  # a rule without a port means the web ports, here as anywhere
        if not self.wildcard:
            return not other.wildcard and other.host == self.host
        return other.host.endswith(self.host[1:]) and other.host != self.host[2:]

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


def parse_rule(text: str) -> HostRule:
    """A rule from what a user or an admin wrote; a 400 saying what is wrong."""
    raw = text.strip()
    if "/" in raw or "://" in raw:
        raise BadRequest(f"network rule {text!r}: give a host name (host or host:port), "
                         "not a URL")
    host, port = raw, None
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\](?::(\d{1,5}))?", raw)
    if m:
        host, port = m.group(1), m.group(2)
    elif raw.count(":") == 1:
        host, port = raw.split(":")
    if port is not None:
        if not str(port).isdigit() or not 0 < int(port) < 65536:
            raise BadRequest(f"network rule {text!r}: the port must be a number from 1 to 65535")
        port = int(port)
    if "/" in host or "://" in raw:
        raise BadRequest(f"network rule {text!r}: give a host name (host or host:port), "
                         "not a URL")
    if host in ("*", "") or host.startswith("*") and not host.startswith("*."):
        raise BadRequest(f"network rule {text!r} is too wide: name hosts, or a domain as "
                         "*.example.com")
    ip = parse_ip(host)
    if ip is not None:
        return HostRule(str(ip), port)
    name = host.lower().rstrip(".")
    if not _NAME.fullmatch(name) or len(name) > 253:
        raise BadRequest(f"network rule {text!r} is not a host name")
    if name.startswith("*.") and "." not in name[2:]:
        raise BadRequest(f"network rule {text!r} is too wide: a wildcard needs a domain "
                         "under a top-level one (*.example.com, not *.com)")
    return HostRule(name, port)


def parse_address(text: str) -> tuple[IPAddress, int]:
    """An ``address:port`` of SOPHON_EGRESS_ALLOW_PRIVATE."""
    rule = parse_rule(text)
    ip = parse_ip(rule.host)
    if ip is None or rule.port is None:
        raise BadRequest(f"{text!r}: name an address and a port (127.0.0.2:8080, "
                         "[fd00::1]:443)")
    return ip, rule.port


@dataclass
class Policy:
    """What one box may reach: allow rules (its base's, its settings', its connectors'),
    deny rules that win over them, the private addresses an admin opened, and whether a
    host outside the list is asked about instead of refused."""

    allow: list[HostRule] = field(default_factory=list)
    deny: list[HostRule] = field(default_factory=list)
    private: frozenset[tuple[IPAddress, int]] = frozenset()
    ask: bool = False
    public: bool = False  # every public address (the execution API's "internet" mode)

    def rule_for(self, host: str, port: int) -> HostRule | None:
        return next((r for r in self.allow if r.matches(host, port)), None)

    def denied_by(self, host: str, port: int) -> HostRule | None:
        # A deny rule without a port refuses the host on every port.
        return next((r for r in self.deny if r.matches(host, port) or
                     (r.port is None and r.names(host))), None)


@dataclass(frozen=True)
class Refusal:
    """Why a connection is refused: ``rule`` is machine-readable, ``message`` is what the
    person reading pip's or curl's output sees."""

    rule: str
    message: str


def check_listed(policy: Policy, host: str, port: int) -> Refusal | None:
    """The name-level decision, before any resolution."""
    denied = policy.denied_by(host, port)
    if denied is not None:
        return Refusal("denied", f"{host}:{port} is refused by the server's rule {denied}")
    if policy.rule_for(host, port) is not None or policy.public:
        return None
    # An address the admin opened (SOPHON_EGRESS_ALLOW_PRIVATE) is still only reached by
    # a box whose list names it: opening lifts the refused set, it allows nothing.
    return Refusal("not_allowed", f"{host}:{port} is not on this sandbox's network list; "
                                  "add it to the session's network.allow")


def check_address(policy: Policy, ip: IPAddress, port: int,
                  server_ports: frozenset[int], is_local: bool) -> Refusal | None:
    """The address-level decision, after the door resolved the name itself: what is
    checked here is what it connects to."""
    if is_local and port in server_ports:
        return Refusal("sophon_server", f"{ip}:{port} is the Sophon server itself")
    kind = refused_kind(ip)
    if kind is None:
        return None
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    if (ip, port) in policy.private or (mapped is not None and (mapped, port) in policy.private):
        return None
    return Refusal("private_address", f"{ip} is a {kind} address, which sandboxes may not "
                                      "reach (an admin can open one with "
                                      "SOPHON_EGRESS_ALLOW_PRIVATE)")


def check_ceiling(rules: list[HostRule], ceiling: list[HostRule],
                  private: frozenset[tuple[IPAddress, int]]) -> None:
    """A 400 for a rule a user may not add: past the admin's ceiling, or an address in
    the refused set the admin did not open."""
    for rule in rules:
        ip = parse_ip(rule.host)
        if ip is not None and refused_kind(ip) is not None:
            if rule.port is None or (ip, rule.port) not in private:
                raise BadRequest(f"network rule {rule}: {ip} is a {refused_kind(ip)} "
                                 "address, which sandboxes may not reach unless the "
                                 "admin opens it (SOPHON_EGRESS_ALLOW_PRIVATE)")
            continue
        if ceiling and not any(c.covers(rule) for c in ceiling):
            raise BadRequest(f"network rule {rule} is past what this server allows "
                             f"(SOPHON_EGRESS_CEILING: {', '.join(map(str, ceiling))})")
