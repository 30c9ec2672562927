"""TLS as an operator or an attacker would try it, on loopback with real certificates: client
validation that must refuse (wrong names, wildcards, IP SANs, expired chains) and say which
certificate is wrong; a trust file broken after start; ALPN h2 offered to an HTTP/1.1-only server;
plaintext HTTP and half a ClientHello sent to a TLS port; reloads to an already expired certificate."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest
import trio
from certs import Pki, TestCA, days_from_now, hello, make_listener_tls, make_pki, serving
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from hostproxy.config import model as m
from hostproxy.http import Http1Server
from hostproxy.http.errors import response_for_exception
from hostproxy.tls import ClientTls, ClientTlsCache, TlsError

pytestmark = pytest.mark.timeout(60)

GET = b"GET /x HTTP/1.1\r\nhost: t\r\n\r\n"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def client(ca_path: str, common_name: str = "localhost", **kw: object) -> ClientTls:
    return ClientTls(m.ClientTls(common_name=common_name, trust_certs=(ca_path,), **kw))  # type: ignore[arg-type]


async def fails(c: ClientTls, port: int, **kw: object) -> TlsError:
    with pytest.raises(TlsError) as err:
        await c.connect("127.0.0.1", port, connect_timeout=5, **kw)  # type: ignore[arg-type]
    assert err.value.cause == "tls"
    return err.value


async def read_all(stream: trio.abc.Stream) -> bytes:
    out = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(65536):
            out += chunk
    return out


def expired_copy(ca: TestCA) -> bytes:
    """``ca``'s certificate re-signed with the same key and name, expired two days ago (PEM)."""
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(ca.cert.subject)
        .issuer_name(ca.cert.subject)
        .public_key(ca.cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca._key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return cert.public_bytes(Encoding.PEM)


# -- client validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sans", "common_name"),
    [
        (("*.example.test",), "a.b.example.test"),  # a wildcard covers one label only
        (("*.example.test",), "example.test"),  # ... and never the bare domain
        (("a*.example.test",), "bb.example.test"),  # partial wildcards are not honoured
        (("127.0.0.1",), "127.0.0.2"),  # another IP
        (("localhost",), "127.0.0.1"),  # an IP is checked against IP SANs only
    ],
)
async def test_names_the_certificate_does_not_carry_are_refused(
    pki: Pki, tmp_path: Path, sans: tuple[str, ...], common_name: str
) -> None:
    cert, key = pki.ca.issue("srv.test", sans=sans).write(tmp_path, "srv")
    async with serving(Http1Server(hello), make_listener_tls(cert, key)) as port:
        e = await fails(client(pki.ca_path, common_name), port)
    assert e.reason == "name-mismatch"
    assert f"expects {common_name!r}" in str(e)


async def test_wildcard_one_label_and_ip_san_are_accepted(pki: Pki, tmp_path: Path) -> None:
    cert, key = pki.ca.issue("srv.test", sans=("*.example.test", "127.0.0.1")).write(tmp_path, "srv")
    async with serving(Http1Server(hello), make_listener_tls(cert, key)) as port:
        for name in ("users.example.test", "127.0.0.1"):
            stream = await client(pki.ca_path, name).connect("127.0.0.1", port, connect_timeout=5)
            await stream.aclose()


async def test_disable_validation_stays_with_its_own_clients(pki: Pki, tmp_path: Path) -> None:
    """Two clients in one cache, one with disableValidation: the other still refuses a stranger."""
    stranger = TestCA("stranger CA").issue("evil.test", sans=("localhost",))
    cert, key = stranger.write(tmp_path, "evil")
    cache = ClientTlsCache()
    lax = cache.get(m.ClientTls(disable_validation=True), router="r")
    strict = cache.get(m.ClientTls(common_name="localhost", trust_certs=(pki.ca_path,)), router="r")
    async with serving(Http1Server(hello), make_listener_tls(cert, key)) as port:
        stream = await lax.connect("127.0.0.1", port, connect_timeout=5)
        await stream.aclose()
        e = await fails(strict, port)
    assert e.reason == "unknown-ca"


async def test_an_expired_trusted_ca_is_named_with_its_own_date(pki: Pki, tmp_path: Path) -> None:
    """The server's certificate is valid; the CA certificate we trust has expired: the error names
    the CA file and its date, not the (future) date of the server's certificate."""
    trust = tmp_path / "old-ca.pem"
    trust.write_bytes(expired_copy(pki.ca))
    async with serving(Http1Server(hello), make_listener_tls(pki.server_cert, pki.server_key)) as port:
        e = await fails(client(str(trust)), port)
    assert e.reason == "expired"
    leaf_date = pki.server.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert f"expired on {leaf_date}" not in str(e)
    assert f"the trusted CA certificate CN=hostproxy test CA in {trust} expired on " in str(e)
    assert f"valid until {leaf_date}" in str(e)


async def test_an_expired_intermediate_is_not_blamed_on_the_server_certificate(
    pki: Pki, tmp_path: Path
) -> None:
    inter = pki.ca.intermediate("edge intermediate")
    leaf = inter.issue("srv.test")
    # An expired copy of the intermediate, signed by the root as the real one is.
    now = dt.datetime.now(dt.UTC)
    old_inter = (
        x509.CertificateBuilder()
        .subject_name(inter.cert.subject)
        .issuer_name(pki.ca.cert.subject)
        .public_key(inter.cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(pki.ca._key, hashes.SHA256())  # type: ignore[arg-type]
    )
    cert = tmp_path / "chain.pem"
    cert.write_bytes(leaf.cert_pem + old_inter.public_bytes(Encoding.PEM))
    key = tmp_path / "chain.key"
    key.write_bytes(leaf.key_pem)
    async with serving(Http1Server(hello), make_listener_tls(str(cert), str(key))) as port:
        e = await fails(client(pki.ca_path), port)
    assert e.reason == "expired"
    assert "chains through an intermediate CA certificate that has expired" in str(e)
    assert "expired on" not in str(e)


# -- the router's client context survives a broken trust file -------------------------------------


async def test_a_trust_file_broken_after_start_keeps_the_last_good_context(pki: Pki) -> None:
    """The router's ALPN offer is built with the first context: a trust file replaced by garbage
    later (half-written, wrong file) fails neither connections nor the reload, which keeps it."""
    ctls = ClientTlsCache().get(
        m.ClientTls(common_name="localhost", trust_certs=(pki.ca_path,)), router="r", alpn=("http/1.1",)
    )
    Path(pki.ca_path).write_text("not a certificate\n")
    assert ctls.maybe_reload() is False
    assert ctls.statistics()["reload_failures"] == 1
    async with serving(Http1Server(hello), make_listener_tls(pki.server_cert, pki.server_key)) as port:
        stream = await ctls.connect("127.0.0.1", port, connect_timeout=5, alpn=("http/1.1",))
        assert stream.alpn == "http/1.1"
        await stream.aclose()
        # An offer never built before cannot be made from the broken file: a tls error, not a crash.
        e = await fails(ctls, port, alpn=("h2",))
    assert e.reason == "config"
    assert pki.ca_path in str(e) and "holds no PEM certificate" in str(e)
    assert response_for_exception(e).status == 502


# -- ALPN ------------------------------------------------------------------------------------------


async def test_h2_offered_to_an_http1_only_server_is_a_protocol_mismatch(pki: Pki) -> None:
    """The server does not accept h2 by ALPN: a tls error saying so (HTTP/2 over TLS needs ALPN),
    not an h2 preface sent to an HTTP/1.1 server; HTTP/1.1 clients do not need ALPN."""
    for server_alpn in (("http/1.1",), ()):
        tls = make_listener_tls(pki.server_cert, pki.server_key, alpn=server_alpn)
        async with serving(Http1Server(hello), tls) as port:
            e = await fails(client(pki.ca_path), port, alpn=("h2",))
            assert e.reason == "protocol-mismatch"
            assert "ALPN offered h2 and the server chose no protocol" in str(e)
            assert response_for_exception(e).status == 502
            ok = await client(pki.ca_path).connect("127.0.0.1", port, connect_timeout=5, alpn=("http/1.1",))
            await ok.aclose()


# -- plaintext and stalls on a TLS port ------------------------------------------------------------


@pytest.mark.parametrize("first", [GET, b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\nhi"])
async def test_plaintext_http_to_a_tls_port_gets_a_plaintext_400(pki: Pki, first: bytes) -> None:
    tls = make_listener_tls(pki.server_cert, pki.server_key)
    async with serving(Http1Server(hello), tls) as port:
        plain = await trio.open_tcp_stream("127.0.0.1", port)
        await plain.send_all(first)
        answer = await read_all(plain)
        await plain.aclose()
        # Still a TLS port for TLS clients.
        stream = await client(pki.ca_path).connect("127.0.0.1", port, connect_timeout=5)
        await stream.aclose()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"\r\nl5d-err: This port speaks TLS: a plaintext HTTP request was sent to it; use https://" in head
    assert b"connection: close" in head
    assert body.startswith(b"This port speaks TLS")
    assert tls.statistics()["handshake_failures"] == {"not-tls": 1}


async def test_half_a_client_hello_is_closed_by_the_handshake_timeout(pki: Pki) -> None:
    """Slowloris TLS: the first bytes of a ClientHello, then silence. The connection is closed by the
    handshake timeout (counted as such), and other clients are served meanwhile."""
    tls = make_listener_tls(pki.server_cert, pki.server_key, handshake_timeout_s=0.5)
    async with serving(Http1Server(hello), tls) as port:
        half = await trio.open_tcp_stream("127.0.0.1", port)
        # A TLS record header announcing a 512-byte handshake record, and 10 bytes of it.
        await half.send_all(b"\x16\x03\x01\x02\x00" + b"\x01\x00\x01\xfc\x03\x03" + b"\x00" * 4)
        stream = await client(pki.ca_path).connect("127.0.0.1", port, connect_timeout=5)
        await stream.send_all(GET)
        assert b"hello /x" in await stream.receive_some(65536)
        await stream.aclose()
        assert await read_all(half) == b""
        await half.aclose()
    assert tls.statistics()["handshake_failures"] == {"timeout": 1}


# -- reloads ---------------------------------------------------------------------------------------


async def test_a_reload_to_an_expired_server_certificate_keeps_the_valid_one(
    pki: Pki, tmp_path: Path
) -> None:
    """An old backup restored over the renewed files: refused with the path and date, the valid
    certificate stays in use; the next good pair loads."""
    tls = make_listener_tls(pki.server_cert, pki.server_key)
    stale = pki.ca.issue("stale.test", not_before=days_from_now(-60), not_after=days_from_now(-1))
    Path(pki.server_cert).write_bytes(stale.cert_pem)
    Path(pki.server_key).write_bytes(stale.key_pem)
    assert tls.maybe_reload() is False
    date = stale.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert tls.statistics()["last_reload_error"] == (
        f"tls.certPath: {pki.server_cert} (CN=stale.test) expired on {date}; the certificate in use "
        f"(CN=server.test, valid until {pki.server.not_after.strftime('%Y-%m-%dT%H:%M:%SZ')}) is kept: "
        "install the renewed certificate"
    )
    assert tls.statistics()["generation"] == 1
    async with serving(Http1Server(hello), tls) as port:
        stream = await client(pki.ca_path).connect("127.0.0.1", port, connect_timeout=5)
        await stream.aclose()
        renewed = pki.ca.issue("renewed.test")
        renewed.write(pki.directory, "server")
        assert tls.maybe_reload() is True
        stream = await client(pki.ca_path).connect("127.0.0.1", port, connect_timeout=5)
        assert stream.ssl_stream.getpeercert()["subject"] == ((("commonName", "renewed.test"),),)
        await stream.aclose()


def test_a_reload_to_an_expired_client_certificate_keeps_the_valid_one(pki: Pki) -> None:
    auth = m.ClientAuth(cert_path=pki.client_cert, key_path=pki.client_key)
    ctls = client(pki.ca_path, client_auth=auth)
    stale = pki.ca.issue(
        "stale-client.test",
        client=True,
        server=False,
        not_after=days_from_now(-1),
        not_before=days_from_now(-60),
    )
    stale.write(pki.directory, "client")
    assert ctls.maybe_reload() is False
    error = ctls.statistics()["last_reload_error"]
    assert error.startswith(
        f"client.tls.clientAuth.certPath: {pki.client_cert} (CN=stale-client.test) expired on "
    )
    assert [c.subject for c in ctls.certificates() if c.role == "client"] == ["CN=client.test"]


# -- x-forwarded-client-cert -----------------------------------------------------------------------


def xfcc_fields(value: str) -> list[tuple[str, str]]:
    """Envoy's element syntax: ``key=value`` pairs split on ``;`` outside double quotes."""
    fields, cur, quoted, escaped = [], "", False, False
    for c in value + ";":
        if escaped:
            cur, escaped = cur + c, False
        elif c == "\\":
            cur, escaped = cur + c, True
        elif c == '"':
            cur, quoted = cur + c, not quoted
        elif c == ";" and not quoted:
            fields.append(tuple(cur.split("=", 1)))
            cur = ""
        else:
            cur += c
    return fields  # type: ignore[return-value]


def test_xfcc_names_from_the_certificate_cannot_add_fields_or_headers(pki: Pki) -> None:
    """A client certificate (from a CA the server trusts) whose SANs hold ``;Hash=`` or a CR/LF: the
    value keeps one field each (the certificate's own hash), in printable ASCII only."""
    from hostproxy.tls.stream import xfcc_value

    issued = pki.ca.issue("client.test", sans=(), client=True, server=False)
    cert = (
        x509.CertificateBuilder()
        .subject_name(issued.cert.subject)
        .issuer_name(issued.cert.issuer)
        .public_key(issued.cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(issued.cert.not_valid_before_utc)
        .not_valid_after(issued.cert.not_valid_after_utc)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier("spiffe://mesh/ns;Hash=forged"),
                    x509.DNSName("a.test\r\nx-injected: 1"),
                ]
            ),
            critical=False,
        )
        .sign(pki.ca._key, hashes.SHA256())  # type: ignore[arg-type]
    )
    der = cert.public_bytes(Encoding.DER)
    value = xfcc_value(der)
    assert all(0x20 <= b < 0x7F for b in value), value
    fields = xfcc_fields(value.decode())
    assert [k for k, _ in fields] == ["Hash", "Cert", "Subject", "URI", "DNS"]
    assert fields[0][1] == hashlib.sha256(der).hexdigest()
    assert fields[2][1] == '"CN=client.test"'
    assert fields[3][1] == '"spiffe://mesh/ns;Hash=forged"'
    assert fields[4][1] == "a.test%0D%0Ax-injected: 1"
