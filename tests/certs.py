"""Throwaway certificate authorities and certificates for TLS tests (``cryptography``, EC P-256).

``TestCA("name")`` is a self-signed CA; ``ca.issue("server", sans=[...])`` gives a leaf certificate
with its key, for servers (``serverAuth``), clients (``client=True``: ``clientAuth``) or both.
Validity is set with ``not_before``/``not_after`` (an expired certificate is
``ca.issue(..., not_after=past)``). ``write(directory, name)`` writes PEM files (keys as unencrypted
PKCS#8, the format Linkerd requires) and returns their paths.

SAN strings: ``"127.0.0.1"``/``"::1"`` become IP SANs, anything else a DNS SAN.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

UTC = dt.UTC
DEFAULT_SANS = ("localhost", "127.0.0.1")


def _now() -> dt.datetime:
    return dt.datetime.now(UTC).replace(microsecond=0)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(text: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        return x509.DNSName(text)


@dataclass
class Issued:
    """A certificate and its private key, both PEM."""

    cert: x509.Certificate
    key_pem: bytes

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def not_after(self) -> dt.datetime:
        return self.cert.not_valid_after_utc

    def write(self, directory: Path, name: str, *, chain: Sequence[Issued] = ()) -> tuple[str, str]:
        """Write ``<name>.pem`` (the certificate, then ``chain``) and ``<name>.key`` (PKCS#8)."""
        cert_path = directory / f"{name}.pem"
        key_path = directory / f"{name}.key"
        cert_path.write_bytes(self.cert_pem + b"".join(c.cert_pem for c in chain))
        key_path.write_bytes(self.key_pem)
        return str(cert_path), str(key_path)


class TestCA:
    """A self-signed certificate authority that issues leaf (and intermediate) certificates."""

    __test__ = False  # not a pytest test class

    def __init__(self, name: str = "hostproxy test CA", *, _issued: Issued | None = None) -> None:
        self.name = name
        if _issued is not None:
            self.issued = _issued
            self._key = serialization.load_pem_private_key(_issued.key_pem, None)
            return
        key = _key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        self._key = key
        self.issued = Issued(cert, _key_pem(key))

    @property
    def cert(self) -> x509.Certificate:
        return self.issued.cert

    @property
    def cert_pem(self) -> bytes:
        return self.issued.cert_pem

    def write(self, directory: Path, name: str = "ca") -> str:
        path = directory / f"{name}.pem"
        path.write_bytes(self.cert_pem)
        return str(path)

    def intermediate(self, name: str) -> TestCA:
        """A CA certificate signed by this CA (for chain tests)."""
        key = _key()
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3000))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
            .sign(self._key, hashes.SHA256())  # type: ignore[arg-type]
        )
        return TestCA(name, _issued=Issued(cert, _key_pem(key)))

    def issue(
        self,
        common_name: str,
        *,
        sans: Sequence[str] = DEFAULT_SANS,
        client: bool = False,
        server: bool = True,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> Issued:
        """A leaf certificate for ``common_name`` with ``sans``, valid 1 day ago .. 90 days ahead
        unless ``not_before``/``not_after`` say otherwise."""
        key = _key()
        now = _now()
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(days=1))
            .not_valid_after(not_after or now + dt.timedelta(days=90))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_san(s) for s in sans]), critical=False
            )
        cert = builder.sign(self._key, hashes.SHA256())  # type: ignore[arg-type]
        return Issued(cert, _key_pem(key))


def days_from_now(days: float) -> dt.datetime:
    return _now() + dt.timedelta(days=days)


# -- a ready-made PKI and TLS servers for tests ------------------------------------------------------


@dataclass
class Pki:
    """A CA with a server certificate (SANs ``localhost``, ``127.0.0.1``, ``proxy.test``) and a client
    certificate (``CN=client.test``), all written to ``directory``."""

    directory: Path
    ca: TestCA
    ca_path: str
    server: Issued
    server_cert: str
    server_key: str
    client: Issued
    client_cert: str
    client_key: str

    def curl_mtls(self) -> tuple[str, ...]:
        """curl's arguments to trust the CA and present the client certificate."""
        return ("--cacert", self.ca_path, "--cert", self.client_cert, "--key", self.client_key)


def make_pki(
    directory: Path, *, server_sans: Sequence[str] = ("localhost", "127.0.0.1", "proxy.test")
) -> Pki:
    ca = TestCA("hostproxy test CA")
    server = ca.issue("server.test", sans=server_sans)
    client = ca.issue("client.test", sans=("client.test",), client=True, server=False)
    sc, sk = server.write(directory, "server")
    cc, ck = client.write(directory, "client")
    return Pki(directory, ca, ca.write(directory), server, sc, sk, client, cc, ck)


def make_listener_tls(
    cert: str,
    key: str,
    *,
    ca: str | None = None,
    require_client_auth: bool = False,
    protocols: Sequence[str] | None = None,
    alpn: Sequence[str] = ("http/1.1",),
    handshake_timeout_s: float | None = 10.0,
):  # type: ignore[no-untyped-def]
    from hostproxy.config import model as m
    from hostproxy.tls import ServerTls

    cfg = m.ServerTls(
        cert_path=cert,
        key_path=key,
        ca_cert_path=ca,
        require_client_auth=require_client_auth,
        protocols=tuple(protocols) if protocols else None,
    )
    return ServerTls(cfg, alpn=alpn, router="test", handshake_timeout_s=handshake_timeout_s)


async def hello(request, info):  # type: ignore[no-untyped-def]
    """A trivial handler: ``hello <target> conn=<connection id>``."""
    from hostproxy.http import Body, Response

    return Response(
        200, b"OK", body=Body.from_bytes(f"hello {request.target} conn={info.connection_id}".encode())
    )


@contextlib.asynccontextmanager
async def serving(server, tls) -> AsyncIterator[int]:  # type: ignore[no-untyped-def]
    """Run ``server`` (an ``Http1Server`` or ``H2Server``) on 127.0.0.1:0 behind a ``TlsListener``
    with ``tls``; yields the port and stops the server on exit."""
    import trio

    from hostproxy.tls import TlsListener

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(server.serve, [TlsListener(lst, tls) for lst in listeners])
        try:
            yield addresses[0][1]
        finally:
            nursery.cancel_scope.cancel()
