"""``ClientTls.connect`` against real TLS servers on loopback: success (ALPN, SNI, mTLS) and each
failure translated once into a ``TlsError`` (cause ``tls``) whose message says why and what to do;
TCP failures stay ``connect/*``; config errors name the key and the fix."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import trio
from certs import Pki, TestCA, days_from_now, hello, make_listener_tls, make_pki, serving

from hostproxy.config import model as m
from hostproxy.http import Http1Server
from hostproxy.http.errors import ConnectError, response_for_exception
from hostproxy.tls import ClientTls, ClientTlsCache, TlsConfigError, TlsError, peer_certificate, tls_error_of

pytestmark = pytest.mark.timeout(60)

GET = b"GET /x HTTP/1.1\r\nhost: t\r\n\r\n"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def client(pki: Pki, **kw: object) -> ClientTls:
    cfg = m.ClientTls(common_name=kw.pop("common_name", "localhost"), trust_certs=(pki.ca_path,))  # type: ignore[arg-type]
    return ClientTls(dataclasses.replace(cfg, **kw))  # type: ignore[arg-type]


def with_client_cert(pki: Pki, **kw: object) -> ClientTls:
    return client(pki, client_auth=m.ClientAuth(cert_path=pki.client_cert, key_path=pki.client_key), **kw)


async def get(stream: trio.abc.Stream) -> bytes:
    await stream.send_all(GET)
    with trio.fail_after(10):
        return await stream.receive_some(65536)


async def fails(c: ClientTls, port: int, **kw: object) -> TlsError:
    with pytest.raises(TlsError) as err:
        await c.connect("127.0.0.1", port, connect_timeout=5, **kw)  # type: ignore[arg-type]
    e = err.value
    assert e.cause == "tls"
    assert e.retryable is True
    assert e.endpoint == f"127.0.0.1:{port}"
    return e


# -- success ---------------------------------------------------------------------------------------


async def test_connect_verifies_and_speaks_http(pki: Pki) -> None:
    tls = make_listener_tls(pki.server_cert, pki.server_key)
    async with serving(Http1Server(hello), tls) as port:
        c = client(pki, common_name="proxy.test")  # SNI + verification by a custom SAN
        stream = await c.connect("127.0.0.1", port, connect_timeout=5, alpn=("http/1.1",))
        try:
            assert stream.handshake_done
            assert stream.alpn == "http/1.1"
            assert stream.socket.getpeername()[1] == port
            assert peer_certificate(stream).sans == ("DNS:localhost", "IP:127.0.0.1", "DNS:proxy.test")  # type: ignore[union-attr]
            reply = await get(stream)
            assert reply.startswith(b"HTTP/1.1 200 ")
            assert reply.endswith(b"hello /x conn=1")
        finally:
            await stream.aclose()
    assert c.statistics()["handshakes"] == 1


async def test_mtls_connect(pki: Pki) -> None:
    tls = make_listener_tls(pki.server_cert, pki.server_key, ca=pki.ca_path, require_client_auth=True)
    async with serving(Http1Server(hello), tls) as port:
        stream = await with_client_cert(pki).connect("127.0.0.1", port, connect_timeout=5)
        try:
            assert (await get(stream)).endswith(b"hello /x conn=1")
        finally:
            await stream.aclose()


async def test_disable_validation_accepts_any_certificate(pki: Pki, tmp_path: Path) -> None:
    rogue = TestCA("rogue").issue("whatever", sans=("whatever",))
    cert, key = rogue.write(tmp_path, "rogue")
    async with serving(Http1Server(hello), make_listener_tls(cert, key)) as port:
        c = ClientTls(m.ClientTls(disable_validation=True))
        stream = await c.connect("127.0.0.1", port, connect_timeout=5)
        try:
            assert (await get(stream)).endswith(b"conn=1")
        finally:
            await stream.aclose()


# -- each failure, with its reason and message ----------------------------------------------------


async def test_unknown_ca(pki: Pki, tmp_path: Path) -> None:
    other = TestCA("other CA")
    stranger = other.issue("stranger.test")
    cert, key = stranger.write(tmp_path, "stranger")
    async with serving(Http1Server(hello), make_listener_tls(cert, key)) as port:
        e = await fails(client(pki), port)
    assert e.reason == "unknown-ca"
    assert str(e) == (
        f"TLS handshake with 127.0.0.1:{port} failed: the server certificate (CN=stranger.test) is issued by "
        f"'CN=other CA', which is not a trusted CA (trusted: CN=hostproxy test CA from {pki.ca_path}); add "
        f"that CA to client.tls.trustCertsBundle (or trustCerts), or check that 127.0.0.1:{port} is the "
        "server you meant"
    )


async def test_name_mismatch_lists_expected_and_presented_names(pki: Pki) -> None:
    async with serving(Http1Server(hello), make_listener_tls(pki.server_cert, pki.server_key)) as port:
        e = await fails(client(pki, common_name="users.test"), port)
    assert e.reason == "name-mismatch"
    assert str(e) == (
        f"TLS handshake with 127.0.0.1:{port} failed: the server certificate names DNS:localhost, "
        "IP:127.0.0.1, DNS:proxy.test but client.tls.commonName expects 'users.test'; set commonName to one "
        "of those names (or fix the static client prefix that supplies it), or reissue the server "
        "certificate with 'users.test' as a subjectAltName"
    )


async def test_certificate_without_sans(pki: Pki, tmp_path: Path) -> None:
    """Linkerd #1861: a certificate with only a CN. Its CN is still checked when it has no SAN at all
    (old example certificates), and a mismatch says the certificate has no subjectAltName."""
    bare = pki.ca.issue("users.test", sans=())
    cert, key = bare.write(tmp_path, "bare")
    async with serving(Http1Server(hello), make_listener_tls(cert, key)) as port:
        stream = await client(pki, common_name="users.test").connect("127.0.0.1", port, connect_timeout=5)
        await stream.aclose()
        e = await fails(client(pki, common_name="orders.test"), port)
    assert e.reason == "name-mismatch"
    assert str(e).startswith(
        f"TLS handshake with 127.0.0.1:{port} failed: the server certificate names only its subject "
        "CN=users.test (it has no subjectAltName) but client.tls.commonName expects 'orders.test'; "
    )


async def test_expired_server_certificate_gives_the_date(pki: Pki, tmp_path: Path) -> None:
    old = pki.ca.issue("old.test", not_before=days_from_now(-30), not_after=days_from_now(-2))
    cert, key = old.write(tmp_path, "old")
    async with serving(Http1Server(hello), make_listener_tls(cert, key)) as port:
        e = await fails(client(pki), port)
    assert e.reason == "expired"
    date = old.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert str(e) == (
        f"TLS handshake with 127.0.0.1:{port} failed: the server certificate (CN=old.test) expired on {date}; "
        "renew it on the server (hostproxy re-reads renewed certificate files without a restart)"
    )


async def test_missing_client_certificate_tls12_fails_in_connect(pki: Pki) -> None:
    tls = make_listener_tls(pki.server_cert, pki.server_key, ca=pki.ca_path, require_client_auth=True)
    async with serving(Http1Server(hello), tls) as port:
        e = await fails(client(pki, protocols=("TLSv1.2",)), port)
    assert e.reason == "handshake-failure"
    assert str(e) == (
        f"TLS handshake with 127.0.0.1:{port} failed: the server aborted the handshake (handshake_failure "
        "alert): it may require a client certificate (none is configured: set client.tls.clientAuth) or "
        "share no cipher suite with this client; check the server's ciphers and requireClientAuth"
    )


async def test_missing_client_certificate_tls13_fails_on_first_read(pki: Pki) -> None:
    """TLS 1.3 servers check the client certificate after the client's handshake is done: the first
    read fails with the same kind of error, carried by a BrokenResourceError."""
    tls = make_listener_tls(pki.server_cert, pki.server_key, ca=pki.ca_path, require_client_auth=True)
    async with serving(Http1Server(hello), tls) as port:
        c = client(pki)
        stream = await c.connect("127.0.0.1", port, connect_timeout=5)
        try:
            assert stream.version == "TLSv1.3"
            with pytest.raises(trio.BrokenResourceError) as err:
                await get(stream)
        finally:
            await stream.aclose()
    e = tls_error_of(err.value)
    assert isinstance(e, TlsError)
    assert e.reason == "client-certificate-required"
    assert str(e) == (
        f"TLS handshake with 127.0.0.1:{port} failed: the server requires a client certificate and none was "
        "sent; set client.tls.clientAuth (certPath, keyPath) to a certificate issued by a CA the server "
        "trusts (its caCertPath)"
    )
    assert c.statistics()["failures"] == {"client-certificate-required": 1}


async def test_client_certificate_from_an_unknown_ca_is_rejected(pki: Pki, tmp_path: Path) -> None:
    rogue = TestCA("rogue CA").issue("intruder", sans=("intruder",), client=True, server=False)
    cert, key = rogue.write(tmp_path, "intruder")
    tls = make_listener_tls(pki.server_cert, pki.server_key, ca=pki.ca_path, require_client_auth=True)
    c = client(pki, protocols=("TLSv1.2",), client_auth=m.ClientAuth(cert_path=cert, key_path=key))
    async with serving(Http1Server(hello), tls) as port:
        e = await fails(c, port)
    assert e.reason == "client-certificate-rejected"
    date = rogue.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert str(e) == (
        f"TLS handshake with 127.0.0.1:{port} failed: the server rejected our client certificate {cert} "
        f"(CN=intruder, notAfter {date}): its issuer is not a CA the server trusts; issue the client "
        "certificate from a CA in the server's caCertPath, or renew it"
    )


async def test_protocol_mismatch(pki: Pki) -> None:
    tls = make_listener_tls(pki.server_cert, pki.server_key, protocols=["TLSv1.3"])
    async with serving(Http1Server(hello), tls) as port:
        e = await fails(client(pki, protocols=("TLSv1.2",)), port)
    assert e.reason == "protocol-mismatch"
    assert re.fullmatch(
        rf"TLS handshake with 127\.0\.0\.1:{port} failed: no TLS version in common \([A-Z0-9_]+\); this "
        r"client allows TLSv1\.2 \(client\.tls\.protocols\): align it with the server's protocols",
        str(e),
    )


async def test_plaintext_server(pki: Pki) -> None:
    server = Http1Server(hello)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(server.serve, listeners)
        port = addresses[0][1]
        e = await fails(client(pki), port)
        nursery.cancel_scope.cancel()
    assert e.reason == "not-tls"
    assert re.fullmatch(
        rf"TLS handshake with 127\.0\.0\.1:{port} failed: the server did not answer in TLS \([A-Z_]+\); "
        rf"127\.0\.0\.1:{port} is probably a plaintext port: point the client at the TLS port or remove "
        r"client\.tls",
        str(e),
    )


async def test_silent_server_times_out_as_tls(pki: Pki) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    with pytest.raises(TlsError) as err:
        await client(pki).connect("127.0.0.1", port, connect_timeout=0.3)
    await listeners[0].aclose()
    assert err.value.reason == "timeout"
    assert str(err.value) == (
        f"TLS handshake with 127.0.0.1:{port} failed: no answer within connect timeout 300 ms; the endpoint "
        "may not speak TLS on this port, or it is overloaded"
    )


async def test_refused_is_a_connect_error_not_tls(pki: Pki) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()
    with pytest.raises(ConnectError) as err:
        await client(pki).connect("127.0.0.1", port, connect_timeout=5)
    assert not isinstance(err.value, TlsError)
    assert err.value.cause == "connect/refused"
    assert str(err.value) == f"Unable to establish connection to 127.0.0.1:{port}: Connection refused"


async def test_tls_error_becomes_a_502_with_l5d_err(pki: Pki) -> None:
    async with serving(Http1Server(hello), make_listener_tls(pki.server_cert, pki.server_key)) as port:
        e = await fails(client(pki, common_name="users.test"), port)
    resp = response_for_exception(e)
    assert resp.status == 502
    assert resp.error_cause == "tls"
    assert resp.headers.get("l5d-retryable") == b"true"
    assert b"expects+%27users.test%27" in resp.headers.get("l5d-err")  # type: ignore[operator]


# -- configuration errors ------------------------------------------------------------------------------


def test_config_errors_name_the_key_and_the_fix(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(
        TlsConfigError,
        match=r"^client\.tls\.commonName is required unless disableValidation "
        r"is true: it is the name the server certificate must carry$",
    ):
        ClientTls(m.ClientTls(trust_certs=(pki.ca_path,)))
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(
        TlsConfigError,
        match=rf"^client\.tls\.trustCerts: cannot read {re.escape(missing)}: "
        r"No such file or directory; check the path and that hostproxy may read it$",
    ):
        ClientTls(m.ClientTls(common_name="x", trust_certs=(missing,)))
    with pytest.raises(
        TlsConfigError,
        match=r"^client\.tls\.protocols: TLSv1\.1 is insecure and not "
        r"supported; use TLSv1\.2 and/or TLSv1\.3$",
    ):
        ClientTls(m.ClientTls(common_name="x", trust_certs=(pki.ca_path,), protocols=("TLSv1.1",)))
    # A key that belongs to another certificate.
    with pytest.raises(
        TlsConfigError,
        match=rf"^client\.tls\.clientAuth: the key {re.escape(pki.server_key)} "
        rf"does not belong to the certificate {re.escape(pki.client_cert)}; install the key",
    ):
        ClientTls(
            m.ClientTls(
                common_name="x",
                trust_certs=(pki.ca_path,),
                client_auth=m.ClientAuth(cert_path=pki.client_cert, key_path=pki.server_key),
            )
        )
    with pytest.raises(TlsConfigError, match=r"^tls\.requireClientAuth: true needs tls\.caCertPath"):
        make_listener_tls(pki.server_cert, pki.server_key, require_client_auth=True)
    not_pem = tmp_path / "garbage.pem"
    not_pem.write_text("hello")
    with pytest.raises(
        TlsConfigError, match=r"^client\.tls\.trustCerts: .*garbage\.pem holds no PEM certificate"
    ):
        ClientTls(m.ClientTls(common_name="x", trust_certs=(str(not_pem),)))


def test_cache_shares_one_client_tls_per_config(pki: Pki) -> None:
    cache = ClientTlsCache()
    a = cache.get(m.ClientTls(common_name="a", trust_certs=(pki.ca_path,)), router="out")
    assert cache.get(m.ClientTls(common_name="a", trust_certs=(pki.ca_path,)), router="out") is a
    b = cache.get(m.ClientTls(common_name="b", trust_certs=(pki.ca_path,)), router="out")
    assert b is not a
    assert list(cache) == [a, b]
