"""The server's own certificate authority, for brokered connectors (broker.py).

A sandbox with a brokered connector talks TLS to the server, not to the connector's host: the
server terminates it with a leaf certificate for that host, signed by this CA, and the sandbox
trusts the CA through a bundle (the host's trust store plus this CA) bound at
`/run/sandboxd/ca.pem`. The CA is EC P-256, made once per data dir (`ca.pem` 0644, `ca.key`
0600) and loaded after; leaves are made on demand, valid for a few days, and cached.

Several processes may share a data dir (a server and `sandboxd run`): the first one to take
the lock makes the pair under temporary names and renames the key, then the certificate, into
place; everyone else reads what is there.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import ssl
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CERT_NAME = "ca.pem"
KEY_NAME = "ca.key"
_CA_DAYS = 3650
_LEAF_DAYS = 7
_LEAF_CACHE = 256


class CertificateAuthority:
    """A loaded CA: signs leaves for host names and hands out server-side TLS contexts."""

    def __init__(self, directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.directory = directory
        self.cert = cert
        self._key = key
        #: One key for every leaf of this process: a leaf is only ever served by us.
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._contexts: OrderedDict[str, ssl.SSLContext] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def load_or_create(cls, directory: Path) -> CertificateAuthority:
        """The CA in `directory`, made there first when it has none (safe against other makers)."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        cert_path, key_path = directory / CERT_NAME, directory / KEY_NAME
        if not cert_path.exists():
            with open(directory / ".lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not cert_path.exists():
                    _make(directory)
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path} is not an EC private key")
        return cls(directory, x509.load_pem_x509_certificate(cert_path.read_bytes()), key)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def bundle(self) -> bytes:
        """What a sandbox trusts: the host's trust store (when it has one) plus this CA."""
        try:
            system = SYSTEM_BUNDLE.read_bytes()
        except OSError:
            system = b""
        if system and not system.endswith(b"\n"):
            system += b"\n"
        return system + self.cert_pem

    def leaf(self, host: str) -> tuple[bytes, bytes]:
        """A fresh leaf for `host` (PEM certificate chain, PEM key): SAN = that DNS name."""
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self.cert.subject)
            .public_key(self._leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=_LEAF_DAYS))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_encipherment=False, content_commitment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        key_pem = self._leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cert.public_bytes(serialization.Encoding.PEM) + self.cert_pem, key_pem

    def server_context(self, host: str) -> ssl.SSLContext:
        """A server-side TLS context presenting `host`'s leaf (cached, least recently used out)."""
        with self._lock:
            ctx = self._contexts.get(host)
            if ctx is not None:
                self._contexts.move_to_end(host)
                return ctx
        chain, key = self.leaf(host)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        # ssl loads a chain only from files: a private, short-lived one in the CA's directory.
        with tempfile.NamedTemporaryFile(dir=self.directory, prefix=".leaf-", suffix=".pem") as f:
            f.write(chain + key)
            f.flush()
            ctx.load_cert_chain(f.name)
        with self._lock:
            self._contexts[host] = ctx
            while len(self._contexts) > _LEAF_CACHE:
                self._contexts.popitem(last=False)
        return ctx


def _make(directory: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sandboxd"),
        x509.NameAttribute(NameOID.COMMON_NAME, "sandboxd connector CA"),
    ])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_encipherment=False, content_commitment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # The key first: a certificate in place always has its key beside it.
    _write(directory / KEY_NAME, key_pem, 0o600)
    _write(directory / CERT_NAME, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
