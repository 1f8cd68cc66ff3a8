"""Execution webhooks through the official client: `execute_webhook(webhook_url=...)`
POSTs the finished execution to a local HTTPS receiver (listed in
SOPHON_WEBHOOK_ALLOW_INSECURE_HOSTS, its self-signed CA given to the server with
SSL_CERT_FILE), signed so that the Standard Webhooks library verifies it."""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import json
import shutil
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from baponi import Baponi
from baponi.exceptions import BaponiError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from standardwebhooks import Webhook, WebhookVerificationError

from tests.conftest import LiveServer, make_data_dir, wait_for


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "receiver.pem", directory / "receiver.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Receiver:
    """An HTTPS server on loopback that records every POST; paths under /fail answer 500,
    under /hang only once ``release`` is set."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert = cert
        self.posts: list[dict[str, Any]] = []
        self.release = threading.Event()
        received, release = self.posts, self.release

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                received.append({"path": self.path, "headers": dict(self.headers.items()),
                                 "body": body})
                if self.path.startswith("/hang"):
                    release.wait(30)
                self.send_response(500 if self.path.startswith("/fail") else 204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def to(self, path: str) -> list[dict[str, Any]]:
        return [p for p in self.posts if p["path"] == path]


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    rec = Receiver(cert, key)
    yield rec
    rec.release.set()
    rec.httpd.shutdown()


def webhook_env(receiver: Receiver) -> dict[str, str]:
    return {"SOPHON_WEBHOOK_ALLOW_INSECURE_HOSTS": f"127.0.0.1:{receiver.port}",
            "SOPHON_WEBHOOK_RETRY_DELAYS": "0.05,0.1,0.1",
            "SSL_CERT_FILE": str(receiver.cert)}


@pytest.fixture(scope="module")
def server(receiver: Receiver) -> Iterator[LiveServer]:
    path = make_data_dir()
    srv = LiveServer(path, env=webhook_env(receiver)).start()
    yield srv
    srv.stop()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def client(server: LiveServer, api_key: str) -> Iterator[Baponi]:
    with Baponi(api_key=api_key, base_url=server.url, max_retries=0) as c:
        yield c


def new_secret(server: LiveServer, api_key: str) -> str:
    resp = httpx.post(server.url + "/v1/webhooks/secret", timeout=10,
                      headers={"Authorization": f"Bearer {api_key}"})
    assert resp.status_code == 200, resp.text
    secret = resp.json()["secret"]
    assert secret.startswith("whsec_")
    return str(secret)


def delivery(client: Baponi, trace_id: str, want: str) -> Any:
    def settled() -> Any:
        st = client.get_execution(trace_id)
        return st if st.webhook_delivery_status == want else None
    return wait_for(settled, 30, 0.05, f"webhook delivery {want}")


def test_result_is_delivered_signed_and_reported(client: Baponi, receiver: Receiver,
                                                 server: LiveServer, api_key: str) -> None:
    secret = new_secret(server, api_key)
    url = receiver.url + "/hook-ok"
    handle = client.execute_webhook("print('hi from a webhook')", webhook_url=url)
    st = delivery(client, handle.trace_id, "delivered")
    assert st.status == "success" and st.webhook_url == url
    posts = receiver.to("/hook-ok")
    assert len(posts) == 1
    post = posts[0]
    payload = Webhook(secret).verify(post["body"], post["headers"])
    assert payload["trace_id"] == handle.trace_id
    assert payload["status"] == "success"
    assert payload["stdout"] == "hi from a webhook\n"
    assert post["headers"]["webhook-id"] == "msg_" + handle.trace_id
    # A forged body does not verify with the user's secret.
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(post["body"].replace(b"hi", b"ho"), post["headers"])
    # Read back from the row too (what a restart would show).
    stored = httpx.get(f"{server.url}/v1/executions/{handle.trace_id}", timeout=10,
                       headers={"Authorization": f"Bearer {api_key}"}).json()
    assert stored["webhook_delivery_status"] == "delivered"


def test_a_failing_receiver_is_retried_then_marked_failed(client: Baponi, receiver: Receiver,
                                                          server: LiveServer,
                                                          api_key: str) -> None:
    new_secret(server, api_key)
    url = receiver.url + "/fail-500"
    handle = client.execute_webhook("print(1)", webhook_url=url)
    st = client.get_execution(handle.trace_id)
    assert st.webhook_delivery_status in ("pending", "failed")
    st = delivery(client, handle.trace_id, "failed")
    assert st.status == "success"
    # One attempt and a retry after each of the three configured delays.
    assert len(receiver.to("/fail-500")) == 4


def test_rotating_the_secret_signs_later_deliveries_with_the_new_one(
        client: Baponi, receiver: Receiver, server: LiveServer, api_key: str) -> None:
    old = new_secret(server, api_key)
    first = client.execute_webhook("print(1)", webhook_url=receiver.url + "/rot-1")
    delivery(client, first.trace_id, "delivered")
    new = new_secret(server, api_key)
    assert new != old
    second = client.execute_webhook("print(2)", webhook_url=receiver.url + "/rot-2")
    delivery(client, second.trace_id, "delivered")
    (one,), (two,) = receiver.to("/rot-1"), receiver.to("/rot-2")
    Webhook(old).verify(one["body"], one["headers"])
    Webhook(new).verify(two["body"], two["headers"])
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(two["body"], two["headers"])


@pytest.mark.parametrize("url", [
    "http://example.com/hook",          # not https
    "https://127.0.0.2:8443/hook",      # loopback, not on the allow-list
    "https://10.1.2.3/hook",            # private
    "https://169.254.169.254/latest",   # link-local (cloud metadata)
    "https://[::1]/hook",               # IPv6 loopback
    "https://[::ffff:192.168.0.1]/x",   # private, IPv4-mapped
    "https://0.0.0.0/hook",             # unspecified
])
def test_unsafe_webhook_urls_are_refused(server: LiveServer, api_key: str, url: str) -> None:
    new_secret(server, api_key)
    resp = httpx.post(server.url + "/v1/sandbox/execute", timeout=10,
                      json={"code": "print(1)", "webhook_url": url},
                      headers={"Authorization": f"Bearer {api_key}",
                               "Prefer": "respond-async"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"] == "invalid_request"
    assert "webhook_url" in resp.json()["message"]


def test_plain_http_is_allowed_only_for_a_listed_host(server: LiveServer, api_key: str,
                                                      receiver: Receiver) -> None:
    """A listed host:port may be http; the same host on another port may not."""
    new_secret(server, api_key)
    headers = {"Authorization": f"Bearer {api_key}", "Prefer": "respond-async"}
    listed = httpx.post(server.url + "/v1/sandbox/execute", timeout=10, headers=headers,
                        json={"code": "print(1)",
                              "webhook_url": f"http://127.0.0.1:{receiver.port}/plain"})
    assert listed.status_code == 202, listed.text
    other = httpx.post(server.url + "/v1/sandbox/execute", timeout=10, headers=headers,
                       json={"code": "print(1)",
                             "webhook_url": f"http://127.0.0.1:{receiver.port + 1}/plain"})
    assert other.status_code == 400


def test_a_webhook_needs_a_signing_secret(client: Baponi, receiver: Receiver) -> None:
    with pytest.raises(BaponiError) as info:
        client.execute_webhook("print(1)", webhook_url=receiver.url + "/no-secret")
    assert "POST /v1/webhooks/secret" in str(info.value)
    assert receiver.to("/no-secret") == []


def test_executions_without_a_webhook_report_none(client: Baponi) -> None:
    handle = client.execute_webhook("print(1)")
    st = handle.wait(poll_interval=0.05, timeout=30)
    assert st.webhook_url is None and st.webhook_delivery_status is None
    body = json.loads(st.model_dump_json())
    assert "webhook_delivery_status" in body


def test_a_delivery_cut_off_by_a_stop_is_failed_after_the_restart(receiver: Receiver,
                                                                  data_dir: Path) -> None:
    """Deliveries are not resumed after a restart; the record does not stay pending."""
    srv = LiveServer(data_dir, env=webhook_env(receiver)).start()
    try:
        key = srv.add_user()
        new_secret(srv, key)
        with Baponi(api_key=key, base_url=srv.url, max_retries=0) as c:
            handle = c.execute_webhook("print(1)", webhook_url=receiver.url + "/hang-restart")
            wait_for(lambda: receiver.to("/hang-restart"), 30, 0.05, "the first attempt")
            assert c.get_execution(handle.trace_id).webhook_delivery_status == "pending"
        srv.restart()
        with Baponi(api_key=key, base_url=srv.url, max_retries=0) as c:
            st = c.get_execution(handle.trace_id)
        assert st.status == "success"
        assert st.webhook_delivery_status == "failed"
    finally:
        srv.stop()
