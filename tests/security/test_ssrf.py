"""SSRF through webhooks: a user names a URL and the server POSTs to it.

An approval webhook (a session's ``approval.webhook``) must go where an execution
webhook may go: public https hosts only, unless an admin lists a ``host:port`` in
SOPHON_WEBHOOK_ALLOW_INSECURE_HOSTS. It is checked when given (a 400 at session create
and at a policy update) and again before each call, the connection goes to the address
that check saw, and whatever goes wrong, the ``approval_decision`` event says one fixed
sentence: never the remote's body, status or connection error, which would let a user
read internal services or scan ports.

The end-to-end tests drive a real server and a scripted model through ``POST /messages``;
an "internal service" on loopback records what reaches it and puts a marker in every
answer. The in-process tests fake DNS to show the check and the connection see the same
address.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import http.server
import ipaddress
import json
import secrets
import shutil
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from standardwebhooks import Webhook

from sophon.agent.policy import NO_VALID_ANSWER, ask_webhook
from sophon.config import Settings
from sophon.errors import BadRequest
from sophon.store.db import make_engine, migrate, sessionmaker
from sophon.testing import ModelServer
from sophon.webhooks import Webhooks
from tests.conftest import LiveServer, free_port, make_data_dir, wait_for

MARKER = "INTERNAL-" + secrets.token_hex(8)  # in every answer of the internal service
APPROVAL_TIMEOUT_S = 1
SLOW_S = 4.0
DENIED = f"Permission to use Bash was denied: {NO_VALID_ANSWER}."
TURN_DEADLINE = 30.0


# --- the internal service -----------------------------------------------------------------

class Internal:
    """A plain-http service on loopback, standing for whatever the server can reach that
    its users must not. Every answer carries MARKER; what reached it is in ``calls``."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.calls: list[dict[str, Any]] = []
        self.release = threading.Event()
        svc = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                svc.calls.append({"path": self.path,
                                  "headers": {k.lower(): v for k, v in self.headers.items()},
                                  "body": body, "to": self.connection.getsockname()[0]})
                status, data, extra = svc.answer(self.path)
                with contextlib.suppress(OSError):  # the slow one's caller has gone
                    self.send_response(status)
                    for name, value in extra.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://{host}:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        ctype = {"content-type": "application/json"}
        if path == "/approve":  # a valid answer, with a reason longer than is shown
            return 200, json.dumps({"approved": True,
                                    "reason": "fine by me " + "r" * 2000}).encode(), ctype
        if path == "/leak-500":  # a valid-looking body, but not a 200
            return 500, json.dumps({"approved": True, "reason": MARKER}).encode(), ctype
        if path == "/leak-json":  # "approved" is not a boolean
            return 200, json.dumps({"approved": "yes", "reason": MARKER}).encode(), ctype
        if path == "/leak-redirect":  # redirects are not followed
            return 302, MARKER.encode(), {"location": f"{self.url}/redirected"}
        if path == "/slow":
            self.release.wait(SLOW_S)
        return 200, f"<html>{MARKER} internal admin page</html>".encode(), {}

    def to(self, path: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["path"] == path]

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def internal() -> Iterator[Internal]:
    svc = Internal()
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def dead_port() -> int:
    """A loopback port nothing listens on."""
    return free_port()


@pytest.fixture(scope="module")
def ms() -> Iterator[ModelServer]:
    with ModelServer() as srv:
        yield srv


def server_env(ms: ModelServer, allow: str) -> dict[str, str]:
    return {"ANTHROPIC_API_KEY": "test-key", "ANTHROPIC_BASE_URL": ms.url,
            "SOPHON_APPROVAL_WEBHOOK_TIMEOUT": str(APPROVAL_TIMEOUT_S),
            "SOPHON_WEBHOOK_ALLOW_INSECURE_HOSTS": allow}


@pytest.fixture(scope="module")
def server(ms: ModelServer, internal: Internal, dead_port: int) -> Iterator[LiveServer]:
    """The admin lists the internal service's port (the control) and a dead port."""
    path = make_data_dir()
    srv = LiveServer(path, env=server_env(
        ms, f"127.0.0.1:{internal.port},127.0.0.1:{dead_port}")).start()
    yield srv
    srv.stop()
    shutil.rmtree(path, ignore_errors=True)


# --- driving sessions -----------------------------------------------------------------------

def create(http: httpx.Client, webhook: str | None) -> httpx.Response:
    approval: dict[str, Any] = {"shell": "ask_once"}
    if webhook is not None:
        approval["webhook"] = webhook
    return http.post("/v1/sessions", json={"name": "ssrf", "approval": approval})


def new_session(http: httpx.Client, webhook: str | None = None) -> str:
    r = create(http, webhook)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def events(http: httpx.Client, sid: str) -> list[dict[str, Any]]:
    r = http.get(f"/v1/sessions/{sid}/events", headers={"Accept": "application/json"},
                 params={"after": 0, "limit": 5000})
    assert r.status_code == 200, r.text
    return list(r.json()["events"])


def bash_turn(ms: ModelServer, http: httpx.Client, sid: str) -> list[dict[str, Any]]:
    """One turn in which the model runs ``echo hi`` through Bash (which asks first);
    the session's whole log once the turn is over."""
    ms.set_script([{"content": [{"type": "tool_use", "name": "Bash", "id": "toolu_hi",
                                 "input": {"command": "echo hi"}}]}, "done"])
    r = http.post(f"/v1/sessions/{sid}/messages", json={"content": "say hi"})
    assert r.status_code == 202, r.text

    def over() -> list[dict[str, Any]] | None:
        evs = events(http, sid)
        user = next((i for i, e in enumerate(evs) if e["type"] == "user"), len(evs))
        return evs if any(e["type"] == "status" and e["status"] in ("idle", "error")
                          for e in evs[user:]) else None

    found = wait_for(over, TURN_DEADLINE, 0.05, "the turn to end")
    assert isinstance(found, list)
    return found


def decision_and_result(evs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    [decision] = [e for e in evs if e["type"] == "approval_decision"]
    [result] = [e for e in evs if e["type"] == "tool_result"]
    return decision, result


def loopback_name() -> str:
    """A name this machine resolves to a loopback address (its own host name, usually)."""
    name = socket.gethostname()
    try:
        addrs = {info[4][0] for info in socket.getaddrinfo(name, 443)}
    except OSError:
        addrs = set()
    if not addrs or not all(ipaddress.ip_address(a).is_loopback for a in addrs):
        pytest.skip(f"this machine's host name {name!r} does not resolve to loopback; "
                    "test_a_name_that_resolves_to_loopback_later_is_refused covers it")
    return name


# --- refused when given -----------------------------------------------------------------------

FORBIDDEN = {
    "loopback": "https://127.0.0.1:{unlisted}/hook",
    "loopback-http": "http://127.0.0.1:{unlisted}/hook",
    "localhost": "https://localhost:{unlisted}/hook",
    "localhost-dot": "https://localhost.:{unlisted}/hook",
    "short-form": "https://127.1:{unlisted}/hook",
    "decimal": "https://2130706433:{unlisted}/hook",
    "hex": "https://0x7f.1:{unlisted}/hook",
    "unspecified": "https://0.0.0.0:{unlisted}/hook",
    "ipv6-loopback": "https://[::1]:{unlisted}/hook",
    "ipv6-unspecified": "https://[::]:{unlisted}/hook",
    "ipv4-mapped": "https://[::ffff:127.0.0.1]:{unlisted}/hook",
    "own-port": "http://127.0.0.1:{own}/v1/sessions",
    "own-port-https": "https://127.0.0.1:{own}/v1/sessions",
    "private": "https://10.0.0.1/hook",
    "link-local-metadata": "https://169.254.169.254/latest/meta-data/",
    "name-to-loopback": "https://{loopback_name}:{unlisted}/hook",
    # The admin listed 127.0.0.1:<port>; the same port under another name is not listed.
    "listed-port-other-name": "http://localhost:{listed}/approve",
}


def forbidden(key: str, srv: LiveServer, internal: Internal) -> str:
    template = FORBIDDEN[key]
    return template.format(
        unlisted=free_port(), own=srv.port, listed=internal.port,
        loopback_name=loopback_name() if "{loopback_name}" in template else "")


def refused(r: httpx.Response) -> None:
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == "invalid_request"
    assert "approval.webhook" in body["message"]
    assert MARKER not in r.text


@pytest.mark.parametrize("key", FORBIDDEN)
def test_a_forbidden_webhook_is_refused_at_session_create(
        key: str, server: LiveServer, internal: Internal, http: httpx.Client) -> None:
    before = len(internal.calls)
    refused(create(http, forbidden(key, server, internal)))
    assert len(internal.calls) == before
    assert http.get("/v1/sessions").json()["sessions"] == []  # nothing was made


@pytest.mark.parametrize("key", FORBIDDEN)
def test_a_forbidden_webhook_is_refused_at_policy_update(
        key: str, server: LiveServer, internal: Internal, http: httpx.Client) -> None:
    sid = new_session(http)
    r = http.patch(f"/v1/sessions/{sid}", json={"approval": {
        "shell": "ask_once", "webhook": forbidden(key, server, internal)}})
    refused(r)
    assert http.get(f"/v1/sessions/{sid}").json()["approval"]["webhook"] is None


def test_the_listed_webhook_is_accepted_at_create_and_update(
        internal: Internal, http: httpx.Client) -> None:
    """Control: the same requests with the listed host:port succeed."""
    sid = new_session(http, internal.url + "/approve")
    r = http.patch(f"/v1/sessions/{sid}", json={"approval": {
        "shell": "ask_once", "webhook": internal.url + "/other"}})
    assert r.status_code == 200, r.text
    assert r.json()["approval"]["webhook"] == internal.url + "/other"


# --- at call time -------------------------------------------------------------------------------

def test_a_webhook_allowed_when_given_is_refused_at_call_time(
        ms: ModelServer, internal: Internal, data_dir: Path) -> None:
    """The check runs again before each call: a session made while the admin listed the
    internal service's port cannot reach it once the listing is gone."""
    srv = LiveServer(data_dir, env=server_env(ms, f"127.0.0.1:{internal.port}")).start()
    try:
        key = srv.add_user()
        with httpx.Client(base_url=srv.url, timeout=60,
                          headers={"Authorization": f"Bearer {key}"}) as http:
            sid = new_session(http, internal.url + "/call-time")
            srv.env["SOPHON_WEBHOOK_ALLOW_INSECURE_HOSTS"] = ""
            srv.restart()
            evs = bash_turn(ms, http, sid)
        decision, result = decision_and_result(evs)
        assert (decision["decision"], decision["by"], decision["reason"]) == \
            ("deny", "webhook", NO_VALID_ANSWER)
        assert result["is_error"] is True and result["content"] == DENIED
        assert internal.to("/call-time") == []
    finally:
        srv.stop()


@pytest.mark.parametrize("path", ["/leak-text", "/leak-500", "/leak-json", "/leak-redirect",
                                  "/slow", "dead-port"])
def test_a_failed_webhook_never_echoes_the_remote(
        path: str, ms: ModelServer, internal: Internal, dead_port: int,
        http: httpx.Client) -> None:
    """A listed webhook that answers anything but a valid answer in time (a page, an
    error status, a redirect, bad JSON, nothing at all, a closed port) is a deny whose
    reason is the same sentence every time, and nothing it sent shows."""
    url = f"http://127.0.0.1:{dead_port}/hook" if path == "dead-port" else internal.url + path
    sid = new_session(http, url)
    evs = bash_turn(ms, http, sid)
    decision, result = decision_and_result(evs)
    assert (decision["decision"], decision["by"], decision["reason"]) == \
        ("deny", "webhook", NO_VALID_ANSWER)
    assert result["is_error"] is True and result["content"] == DENIED
    assert MARKER not in json.dumps(evs)
    if path != "dead-port":  # the probe did reach the service: the silence is the fix
        assert internal.to(path)
    assert internal.to("/redirected") == []


def test_an_allowed_webhook_is_asked_signed_and_its_reason_shown(
        ms: ModelServer, server: LiveServer, api_key: str, internal: Internal,
        http: httpx.Client) -> None:
    """Control: a listed webhook gets the call, signed with the user's webhook secret
    (Standard Webhooks), and its answer decides; its reason is shown, cut at 500."""
    r = http.post("/v1/webhooks/secret")
    assert r.status_code == 200, r.text
    secret = r.json()["secret"]
    sid = new_session(http, internal.url + "/approve")
    before = len(internal.to("/approve"))
    evs = bash_turn(ms, http, sid)
    decision, result = decision_and_result(evs)
    assert decision["decision"] == "allow" and decision["by"] == "webhook"
    assert decision["reason"] == ("fine by me " + "r" * 2000)[:500]
    assert result["is_error"] is False and result["content"].strip() == "hi"
    [call] = internal.to("/approve")[before:]
    payload = Webhook(secret).verify(call["body"], call["headers"])
    assert payload == {"session_id": sid, "tool": "Bash", "input": {"command": "echo hi"}}
    [request] = [e for e in evs if e["type"] == "approval_request"]
    assert call["headers"]["webhook-id"] == "msg_" + request["approval_id"]


# --- in process: the check and the connection see one address ------------------------------

class FakeDNS:
    """``socket.getaddrinfo`` with answers of our own for some names; each name's answers
    are used in turn (the last one repeats), and every lookup of them is counted."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.lookups: dict[str, int] = {}
        self.real = socket.getaddrinfo

    def __call__(self, host: Any, port: Any, *args: Any, **kw: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in self.answers:
            return self.real(host, port, *args, **kw)
        n = self.lookups.get(name, 0)
        self.lookups[name] = n + 1
        ip = self.answers[name][min(n, len(self.answers[name]) - 1)]
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (ip, int(port or 0)))]


def settings_for(tmp_path: Path, allow: list[str]) -> Settings:
    return Settings(data_dir=tmp_path, webhook_allow_insecure_hosts=allow,
                    webhook_retry_delays=[], webhook_timeout_seconds=5)


async def with_webhooks(tmp_path: Path, allow: list[str],
                        body: Callable[[Webhooks], Any]) -> Any:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'sophon.db'}")
    try:
        await migrate(engine)
        return await body(Webhooks(settings_for(tmp_path, allow), sessionmaker(engine)))
    finally:
        await engine.dispose()


def test_a_name_that_resolves_to_loopback_later_is_refused(
        tmp_path: Path, internal: Internal, monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: the name is public when the session is made, loopback when the
    webhook is called. The call is refused before it connects, with the fixed sentence."""
    name = "rebind.example"
    dns = FakeDNS({name: ["93.184.216.34", "127.0.0.1"]})
    monkeypatch.setattr(socket, "getaddrinfo", dns)
    url = f"https://{name}:{internal.port}/rebind"

    async def body(hooks: Webhooks) -> Any:
        await hooks.check(url, "approval.webhook")  # what session create does: accepted
        return await ask_webhook(hooks, url, "apr_test", "ses_test", "usr_test", "Bash",
                                 {"command": "id"}, 2)

    verdict = asyncio.run(with_webhooks(tmp_path, [], body))
    assert (verdict.allowed, verdict.reason) == (False, NO_VALID_ANSWER)
    assert dns.lookups[name] == 2
    assert internal.to("/rebind") == []

    # And refused when given, once it resolves to loopback.
    async def given(hooks: Webhooks) -> None:
        with pytest.raises(BadRequest, match="approval.webhook"):
            await hooks.check(url, "approval.webhook")

    asyncio.run(with_webhooks(tmp_path, [], given))


def tls_receiver(directory: Path, dns_name: str, host: str) -> tuple[Internal, Path]:
    """An Internal on ``host`` serving TLS with a certificate for ``dns_name`` only."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    svc = Internal(host)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)
    svc.httpd.socket = ctx.wrap_socket(svc.httpd.socket, server_side=True)
    return svc, cert_path


def test_the_connection_goes_to_the_checked_address(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The name is resolved once, by the check, and the connection goes to that address:
    a second lookup (which would answer an address where nothing listens) never happens.
    The request still names the host: in ``Host`` and in TLS, where the certificate is
    verified for the name."""
    svc, ca = tls_receiver(tmp_path, "hook.test", "127.0.0.2")
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        dns = FakeDNS({"hook.test": ["127.0.0.2", "127.0.0.3"],
                       "other.test": ["127.0.0.2", "127.0.0.3"]})
        monkeypatch.setattr(socket, "getaddrinfo", dns)
        allow = [f"hook.test:{svc.port}", f"other.test:{svc.port}"]

        async def body(hooks: Webhooks) -> Any:
            reply = await hooks.send(f"https://hook.test:{svc.port}/pinned?x=1", "msg_1",
                                     b"{}", None, read_limit=1 << 16)
            with pytest.raises(httpx.ConnectError, match="(?i)certificate|hostname"):
                await hooks.send(f"https://other.test:{svc.port}/wrong-name", "msg_2",
                                 b"{}", None)
            return reply

        reply = asyncio.run(with_webhooks(tmp_path, allow, body))
        assert reply.status == 200 and MARKER.encode() in reply.body
        assert dns.lookups == {"hook.test": 1, "other.test": 1}
        [call] = svc.to("/pinned?x=1")
        assert call["to"] == "127.0.0.2"
        assert call["headers"]["host"] == f"hook.test:{svc.port}"
        assert "webhook-signature" not in call["headers"]  # no secret: id and time only
        assert call["headers"]["webhook-id"] == "msg_1"
        assert svc.to("/wrong-name") == []
    finally:
        svc.close()
