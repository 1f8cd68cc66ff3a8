"""Test hosts for the egress door, served on 127.0.0.2 (inside a box 127.0.0.1 is the
box's own loopback, so a box reaches these only through the door, and only when the
server opens them with SOPHON_EGRESS_ALLOW_PRIVATE and the box's list names them).

- ``FileServer``: plain HTTP (or HTTPS with a ``TestCA``) answering ``/x`` with a known
  text, and ``/hold/<n>``, which waits until the test releases it (to hold connections
  open through the door), counting how many wait at once.
- ``PackageIndex``: a PEP 503 simple index holding one tiny pure-Python wheel.
- ``NpmRegistry``: ``GET /<name>`` answers a packument, and the tarball it names.
- ``GitServer``: git's smart HTTP, ``git http-backend`` run as CGI over a bare repository
  (pushes allowed), over HTTP or HTTPS.
- ``TestCA``: a CA of the test's own and a certificate for 127.0.0.2 signed by it.

Nothing here listens on anything but 127.0.0.2.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import ipaddress
import json
import shutil
import socket
import ssl
import subprocess
import tarfile
import tempfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

HOST = "127.0.0.2"
FILE_TEXT = "hello from the test host\n"


def free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# --- TLS -------------------------------------------------------------------------------


class TestCA:
    """A CA made for one test run, and a server certificate for 127.0.0.2 it signed.
    ``ca_pem`` is what a client in a box is given to trust (``--cacert``)."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Sophon egress test CA")])
        ca = (x509.CertificateBuilder()
              .subject_name(ca_name).issuer_name(ca_name)
              .public_key(ca_key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(
                  digital_signature=True, key_cert_sign=True, crl_sign=True,
                  content_commitment=False, key_encipherment=False, data_encipherment=False,
                  key_agreement=False, encipher_only=False, decipher_only=False),
                  critical=True)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
                .issuer_name(ca_name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([
                    x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                               critical=True)
                .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        self.ca_pem = ca.public_bytes(serialization.Encoding.PEM)
        self.dir = Path(tempfile.mkdtemp(prefix="sophon-test-ca-"))
        self.cert_file = self.dir / "server.pem"
        self.key_file = self.dir / "server.key"
        self.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.key_file.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# --- the servers -----------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    host: ClassVar[_Host]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def reply(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Host:
    """A threading HTTP server on 127.0.0.2, optionally speaking TLS."""

    handler: type[_Handler]

    def __init__(self, tls: TestCA | None = None) -> None:
        self.port = free_port()
        self.addr = f"{HOST}:{self.port}"
        self.url = f"{'https' if tls else 'http'}://{self.addr}"
        self.hits: list[str] = []
        handler = type("Handler", (self.handler,), {"host": self})
        self.httpd = ThreadingHTTPServer((HOST, self.port), handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.server_context().wrap_socket(self.httpd.socket,
                                                                 server_side=True)
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _FileHandler(_Handler):
    host: ClassVar[FileServer]  # type: ignore[misc]

    def do_GET(self) -> None:
        srv = self.host
        srv.hits.append(self.path)
        if self.path == "/x":
            self.reply(200, FILE_TEXT.encode())
        elif self.path.startswith("/hold/"):
            with srv.lock:
                srv.holding += 1
                srv.most_held = max(srv.most_held, srv.holding)
            try:
                released = srv.release.wait(120)
            finally:
                with srv.lock:
                    srv.holding -= 1
            self.reply(200 if released else 504, b"released\n")
        else:
            self.reply(404, b"no such file\n")


class FileServer(_Host):
    handler = _FileHandler

    def __init__(self, tls: TestCA | None = None) -> None:
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.holding = 0
        self.most_held = 0
        super().__init__(tls)


# PEP 503 index with one wheel.

WHEEL_PROJECT = "sophon-egress-tiny"
WHEEL_MODULE = "sophon_egress_tiny"


def tiny_wheel(module: str = WHEEL_MODULE, version: str = "1.0") -> tuple[str, bytes]:
    """A pure-Python wheel whose module says ``ANSWER = 42``."""
    info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": b"ANSWER = 42\n",
        f"{info}/METADATA": (f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\n"
                             f"Version: {version}\n").encode(),
        f"{info}/WHEEL": (b"Wheel-Version: 1.0\nGenerator: sophon-tests\n"
                          b"Root-Is-Purelib: true\nTag: py3-none-any\n"),
    }
    lines = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
        lines.append(f"{path},sha256={digest.decode()},{len(data)}")
    lines.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(lines) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in files.items():
            z.writestr(path, data)
    return f"{module}-{version}-py3-none-any.whl", buf.getvalue()


class _IndexHandler(_Handler):
    host: ClassVar[PackageIndex]  # type: ignore[misc]

    def do_GET(self) -> None:
        srv = self.host
        srv.hits.append(self.path)
        if self.path.rstrip("/") in ("/simple", "/simple/"):
            self.reply(200, f'<a href="/simple/{WHEEL_PROJECT}/">{WHEEL_PROJECT}</a>'
                       .encode(), "text/html")
        elif self.path.rstrip("/") == f"/simple/{WHEEL_PROJECT}":
            sha = hashlib.sha256(srv.wheel).hexdigest()
            self.reply(200, (f'<!DOCTYPE html><html><body><a href="/files/{srv.wheel_name}'
                             f'#sha256={sha}">{srv.wheel_name}</a></body></html>').encode(),
                       "text/html")
        elif self.path == f"/files/{srv.wheel_name}":
            self.reply(200, srv.wheel, "application/octet-stream")
        else:
            self.reply(404, b"not found\n")


class PackageIndex(_Host):
    handler = _IndexHandler

    def __init__(self) -> None:
        self.wheel_name, self.wheel = tiny_wheel()
        super().__init__()


# npm registry with one package.

NPM_PACKAGE = "sophon-egress-tiny"


def tiny_tarball(name: str = NPM_PACKAGE, version: str = "1.0.0") -> bytes:
    files = {
        "package/package.json": json.dumps({"name": name, "version": version,
                                            "main": "index.js"}).encode(),
        "package/index.js": b"module.exports = { answer: 42 };\n",
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class _NpmHandler(_Handler):
    host: ClassVar[NpmRegistry]  # type: ignore[misc]

    def do_GET(self) -> None:
        srv = self.host
        srv.hits.append(self.path)
        if self.path == f"/{NPM_PACKAGE}":
            self.reply(200, json.dumps(srv.packument()).encode(), "application/json")
        elif self.path == f"/{NPM_PACKAGE}/-/{NPM_PACKAGE}-1.0.0.tgz":
            self.reply(200, srv.tarball, "application/octet-stream")
        else:
            self.reply(404, b'{"error":"not found"}', "application/json")

    def do_POST(self) -> None:  # npm's audit: nothing to report, and nothing here
        self.host.hits.append("POST " + self.path)
        self.reply(404, b'{"error":"not found"}', "application/json")


class NpmRegistry(_Host):
    handler = _NpmHandler

    def __init__(self) -> None:
        self.tarball = tiny_tarball()
        super().__init__()

    def packument(self) -> dict[str, object]:
        integrity = "sha512-" + base64.b64encode(hashlib.sha512(self.tarball).digest()).decode()
        return {
            "name": NPM_PACKAGE,
            "dist-tags": {"latest": "1.0.0"},
            "versions": {"1.0.0": {
                "name": NPM_PACKAGE, "version": "1.0.0", "main": "index.js",
                "dist": {"tarball": f"{self.url}/{NPM_PACKAGE}/-/{NPM_PACKAGE}-1.0.0.tgz",
                         "shasum": hashlib.sha1(self.tarball).hexdigest(),
                         "integrity": integrity}}},
        }


# git's smart HTTP.

GIT_ENV = {"GIT_AUTHOR_NAME": "T", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "T", "GIT_COMMITTER_EMAIL": "t@example.com",
           "PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "GIT_CONFIG_NOSYSTEM": "1"}


def _git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True,
                          capture_output=True, text=True).stdout


class _GitHandler(_Handler):
    host: ClassVar[GitServer]  # type: ignore[misc]

    def do_GET(self) -> None:
        self._cgi()

    def do_POST(self) -> None:
        self._cgi()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _cgi(self) -> None:
        srv = self.host
        srv.hits.append(f"{self.command} {self.path}")
        path, _, query = self.path.partition("?")
        body = self._body() if self.command == "POST" else b""
        env = {"PATH": "/usr/bin:/bin", "GIT_PROJECT_ROOT": str(srv.root),
               "GIT_HTTP_EXPORT_ALL": "1", "REQUEST_METHOD": self.command,
               "PATH_INFO": path, "QUERY_STRING": query, "REMOTE_ADDR": self.client_address[0],
               "CONTENT_TYPE": self.headers.get("Content-Type", ""),
               "CONTENT_LENGTH": str(len(body)), "GATEWAY_INTERFACE": "CGI/1.1",
               "SERVER_PROTOCOL": "HTTP/1.1"}
        for name in ("Content-Encoding", "Git-Protocol"):
            if self.headers.get(name):
                env["HTTP_" + name.upper().replace("-", "_")] = self.headers[name]
        proc = subprocess.run(["git", "http-backend"], input=body, env=env,
                              capture_output=True, check=False)
        head, sep, payload = proc.stdout.partition(b"\r\n\r\n")
        if not sep:
            head, _, payload = proc.stdout.partition(b"\n\n")
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class GitServer(_Host):
    """A bare repository ``repo.git`` with one commit on ``main`` (``README`` saying
    ``first``), served by ``git http-backend``; pushes are allowed."""

    handler = _GitHandler

    def __init__(self, tls: TestCA | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sophon-test-git-"))
        bare = self.root / "repo.git"
        _git("init", "-q", "--bare", "-b", "main", str(bare))
        _git("config", "http.receivepack", "true", cwd=bare)
        work = self.root / "work"
        _git("init", "-q", "-b", "main", str(work))
        (work / "README").write_text("first\n")
        _git("add", "README", cwd=work)
        _git("commit", "-q", "-m", "first", cwd=work)
        _git("push", "-q", str(bare), "main", cwd=work)
        shutil.rmtree(work)
        self.bare = bare
        super().__init__(tls)

    def log(self, ref: str = "main") -> list[str]:
        return _git("log", "--format=%s", ref, cwd=self.bare).splitlines()

    def close(self) -> None:
        super().close()
        shutil.rmtree(self.root, ignore_errors=True)

