"""Sophon's own certificate authority, for the connector hosts the door speaks TLS to.

Made at first start in ``<data>/ca/`` (the key 0600, never leaves the server) and
trusted inside every box through its system bundle. The door terminates TLS only for a
connector's hosts, with a leaf certificate for that host made here on first use; every
other host is a plain tunnel and never sees this CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
LEAF_DAYS = 30


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


class SophonCA:
    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / "ca"
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self.dir.chmod(0o700)
        self.cert_path = self.dir / "ca.pem"
        key_path = self.dir / "ca.key"
        if not (self.cert_path.exists() and key_path.exists()):
            self._make(key_path)
        for f in (self.cert_path, key_path):  # the server's alone, like its other keys
            f.chmod(0o600)
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self._key = key
        self.cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        self.pem = self.cert_path.read_bytes()
        # One key for every leaf: it is as secret as the CA's and lives beside it.
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._contexts: dict[str, ssl.SSLContext] = {}

    def _make(self, key_path: Path) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sophon"),
                          x509.NameAttribute(NameOID.COMMON_NAME,
                                             f"Sophon egress CA {os.urandom(4).hex()}")])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1))
                .not_valid_after(now + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        _write_private(key_path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        _write_private(self.cert_path, cert.public_bytes(serialization.Encoding.PEM))

    def bundle(self) -> bytes:
        """What a box trusts: the host's system bundle and this CA."""
        try:
            system = Path(SYSTEM_BUNDLE).read_bytes()
        except OSError:
            system = b""
        return system.rstrip(b"\n") + b"\n" + self.pem

    def server_context(self, host: str) -> ssl.SSLContext:
        """A TLS server context presenting a certificate for ``host``, signed here."""
        ctx = self._contexts.get(host)
        if ctx is not None:
            return ctx
        now = dt.datetime.now(dt.UTC)
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
                .issuer_name(self.cert.subject).public_key(self._leaf_key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1))
                .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
                .add_extension(x509.SubjectAlternativeName([san]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self._key.public_key()), critical=False)
                .sign(self._key, hashes.SHA256()))
        # ssl loads a chain only from files: written 0600 next to the CA, once per host.
        path = self.dir / f"leaf-{len(self._contexts)}.pem"
        _write_private(path, cert.public_bytes(serialization.Encoding.PEM) +
                       self._leaf_key.private_bytes(serialization.Encoding.PEM,
                                                    serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(path)
        path.unlink()
        self._contexts[host] = ctx
        return ctx


def upstream_context(extra_ca: Path | None) -> ssl.SSLContext:
    """How the door checks the real host behind a connector: the system's trust store,
    plus an extra CA an admin (or a test) names with SOPHON_EGRESS_TRUST_CA."""
    ctx = ssl.create_default_context()
    if extra_ca is not None:
        ctx.load_verify_locations(cafile=str(extra_ca))
    return ctx
