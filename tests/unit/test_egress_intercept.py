"""Where a placeholder becomes a credential, a push is checked, and values are masked:
the pure parts of the door's TLS interception, its splice, its upstream proxy and its own
answers."""

from __future__ import annotations

import base64

import pytest

from sophon.egress.intercept import (
    Credential,
    push_refusal,
    pushed_refs,
    rewrite_headers,
    swap_authorization,
)
from sophon.egress.splice import Scrubber
from sophon.egress.upstream import Upstream, UpstreamProxy

GH = Credential(name="gh", type="github", value="ghp_REAL", placeholder="sophon_placeholder_1",
                push=("acme/app:sophon/*",))
HTTP = Credential(name="api", type="http", value="real-key-123", placeholder="sophon_placeholder_2",
                  header="X-Api-Key")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("header, expected", [
    ("Bearer sophon_placeholder_1", "Bearer ghp_REAL"),
    ("token sophon_placeholder_1", "token ghp_REAL"),
    (basic("x-access-token", "sophon_placeholder_1"), basic("x-access-token", "ghp_REAL")),
    # Not this session's placeholder, or not a placeholder: passed on as it is.
    ("Bearer sophon_placeholder_9", "Bearer sophon_placeholder_9"),
    (basic("me", "my-own-password"), basic("me", "my-own-password")),
    ("Basic !!!not-base64", "Basic !!!not-base64"),
    ("Bearer", "Bearer"),
])
def test_the_placeholder_and_only_it_becomes_the_real_value(header: str, expected: str) -> None:
    assert swap_authorization(header, [GH]) == expected


def test_rewritten_headers_drop_the_proxy_hop_and_set_the_connectors() -> None:
    sent = [("Host", "api.example"), ("X-Api-Key", "whatever-the-box-sent"),
            ("Proxy-Authorization", "Basic eDp5"), ("Accept-Encoding", "gzip"),
            ("Connection", "keep-alive"), ("Authorization", "Bearer sophon_placeholder_1")]
    out = rewrite_headers(sent, [GH, HTTP])
    assert ("X-Api-Key", "real-key-123") in out
    assert ("Authorization", "Bearer ghp_REAL") in out
    names = [k.lower() for k, _ in out]
    assert "proxy-authorization" not in names and names.count("x-api-key") == 1
    # answers uncompressed (so values can be masked), one request per connection
    assert ("Accept-Encoding", "identity") in out and ("Connection", "close") in out
    assert "gzip" not in dict(out).values()


def pkt(line: str) -> bytes:
    return f"{len(line) + 4:04x}".encode() + line.encode()


ZERO, ONE = "0" * 40, "1" * 40
PUSH_MAIN = pkt(f"{ZERO} {ONE} refs/heads/main\0 report-status") + b"0000PACK..."
PUSH_OK = pkt(f"{ZERO} {ONE} refs/heads/sophon/fix\0 report-status") + b"0000PACK..."


def test_pushed_refs_are_read_from_the_commands() -> None:
    two = pkt(f"{ZERO} {ONE} refs/heads/a\0caps") + pkt(f"{ONE} {ZERO} refs/tags/v1") + b"0000"
    assert pushed_refs(two) == ["refs/heads/a", "refs/tags/v1"]
    assert pushed_refs(b"garbage") == []


@pytest.mark.parametrize("method, path, query, body, refused", [
    ("POST", "/acme/app.git/git-receive-pack", "", PUSH_OK, None),
    ("POST", "/acme/app.git/git-receive-pack", "", PUSH_MAIN, "refs/heads/main"),
    ("POST", "/ACME/App/git-receive-pack", "", PUSH_MAIN, "refs/heads/main"),  # any case
    ("GET", "/other/repo.git/info/refs", "service=git-receive-pack", b"", "other/repo"),
    ("POST", "/other/repo.git/git-receive-pack", "", PUSH_OK, "other/repo"),
    # Fetches are not pushes.
    ("GET", "/other/repo.git/info/refs", "service=git-upload-pack", b"", None),
    ("POST", "/other/repo.git/git-upload-pack", "", b"", None),
    # A tag is no branch: refused under a branch rule.
    ("POST", "/acme/app.git/git-receive-pack", "",
     pkt(f"{ZERO} {ONE} refs/tags/v1\0caps") + b"0000", "refs/tags/v1"),
])
def test_a_push_is_held_to_the_connectors_rules(method: str, path: str, query: str,
                                                body: bytes, refused: str | None) -> None:
    refusal = push_refusal(method, path, query, body, [GH])
    if refused is None:
        assert refusal is None
    else:
        assert refusal is not None and refusal.rule == "push_not_allowed"
        assert refused.lower() in refusal.message.lower()


def test_without_push_rules_any_push_goes() -> None:
    free = Credential(name="gh", type="github", value="v", placeholder="p")
    assert push_refusal("POST", "/x/y.git/git-receive-pack", "", PUSH_MAIN, [free]) is None


def test_masking_catches_a_value_split_across_reads_and_keeps_lengths() -> None:
    s = Scrubber([b"real-key-123"])
    stream = b'{"headers": {"x-api-key": "real-key-123"}, "again": "real-k' + b'ey-123"}'
    out = b"".join(s.feed(stream[i:i + 7]) for i in range(0, len(stream), 7)) + s.flush()
    assert b"real-key" not in out
    assert len(out) == len(stream)
    assert out.count(b"*" * len("real-key-123")) == 2


def test_the_servers_proxy_from_its_environment() -> None:
    up = Upstream({"HTTPS_PROXY": "http://u:p%40ss@proxy.corp:3128", "http_proxy": "proxy.corp:80",
                   "NO_PROXY": "internal.corp,.svc"})
    assert up.for_host("pypi.org", tls=True) == UpstreamProxy(
        "proxy.corp", 3128, "Basic " + base64.b64encode(b"u:p@ss").decode())
    assert up.for_host("pypi.org", tls=False) == UpstreamProxy("proxy.corp", 80)
    assert up.for_host("internal.corp", tls=True) is None
    assert up.for_host("api.svc", tls=True) is None
    assert Upstream({}).for_host("pypi.org", tls=True) is None
    with pytest.raises(ValueError, match="http://"):
        UpstreamProxy.parse("socks5://proxy:1080")


def test_the_doors_answer_says_why_in_its_status_line_as_one_safe_line() -> None:
    from sophon.egress.door import response

    raw = response(403, "h\u00e9st\r\nx-injected: 1 is not on the list")
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *headers = head.decode("ascii").split("\r\n")
    assert status == ("HTTP/1.1 403 Forbidden (Sophon network door: h?st??x-injected: 1 "
                      "is not on the list)")
    assert not any(h.lower().startswith("x-injected") for h in headers)
    assert body.decode() == "Sophon network door: h\u00e9st\r\nx-injected: 1 is not on the list\n"
    assert len(response(403, "x" * 5000).split(b"\r\n", 1)[0]) <= 420
