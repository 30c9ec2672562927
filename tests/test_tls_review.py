"""TLS defects found by attacking the server and client sides with real peers on loopback."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from certs import Pki, hello, make_listener_tls, make_pki, serving

from hostproxy.config import load_config
from hostproxy.config import model as m
from hostproxy.config.errors import ConfigError
from hostproxy.h2 import H2Server, H2ServerParams
from hostproxy.http import Body, Http1Server, Response
from hostproxy.tls import ClientTls, ServerTls, TlsConfigError
from tests.daemonutil import curl, running_daemon

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


@contextlib.asynccontextmanager
async def raw_tls_upstream(
    pki: Pki, handler: Callable[[trio.SSLStream[trio.SocketStream]], Awaitable[None]]
) -> AsyncIterator[int]:
    """A TLS server on 127.0.0.1 whose connections are handed, after the handshake, to ``handler``
    (which decides how the connection ends)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)

    async def serve(tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, ctx, server_side=True)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await handler(stream)
        await tcp.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        try:
            yield listeners[0].socket.getsockname()[1]
        finally:
            nursery.cancel_scope.cancel()


def client_tls_config(pki: Pki, upstream_port: int) -> str:
    return f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: http
  label: out
  dtab: /svc => /$/inet/127.0.0.1/{upstream_port};
  servers: [{{ip: 127.0.0.1, port: 0}}]
  client:
    failureAccrual: {{kind: none}}
    tls:
      commonName: localhost
      trustCerts: [{pki.ca_path}]
"""


async def read_request(stream: trio.SSLStream[trio.SocketStream]) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return
        data += chunk


@pytest.mark.parametrize("close_notify", [False, True])
async def test_a_close_delimited_body_cut_without_close_notify_is_not_passed_on_as_complete(
    pki: Pki, close_notify: bool
) -> None:
    """An upstream response framed by the connection's end (no content-length, not chunked) whose TLS
    connection was closed without close_notify (a TCP FIN or RST under TLS, which anyone on the path
    can forge) was forwarded as complete: the client received the terminating chunk and exit 0, so a
    truncated body looked whole. Only a close_notify proves the end of such a body; without it the
    response is now aborted (the client sees an incomplete chunked body), as with a body cut short
    of its content-length."""

    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nfirst half, ")
        await trio.sleep(0.05)
        await stream.send_all(b"second half")
        if close_notify:
            await stream.aclose()  # https_compatible=False: sends close_notify

    async with raw_tls_upstream(pki, handler) as port, running_daemon(client_tls_config(pki, port)) as d:
        r = await curl(f"http://127.0.0.1:{d.port('out')}/x", "-H", "Host: web")
    assert r.status == 200, r
    if close_notify:
        assert r.exit_code == 0, r
        assert r.body == b"first half, second half"
    else:
        # curl: 18 (partial file) or 56 (failure receiving data): the chunked body never ended.
        assert r.exit_code in (18, 56), r


async def test_a_connect_cancelled_during_the_handshake_closes_its_socket(pki: Pki) -> None:
    """``ClientTls.connect`` cancelled from outside while the upstream stalled the handshake (a
    request timeout, a client that went away) left its TCP connection open: only the cyclic garbage
    collector closed it, some time later, so an upstream that stalls handshakes accumulated open
    connections from the proxy. The connection is now closed when the connect is cancelled."""
    accepted: list[trio.SocketStream] = []
    got_one = trio.Event()

    async def hold(tcp: trio.SocketStream) -> None:  # accepts TCP, never answers the ClientHello
        accepted.append(tcp)
        got_one.set()
        await trio.sleep_forever()

    client = ClientTls(m.ClientTls(common_name="localhost", trust_certs=(pki.ca_path,)))
    gc.collect()
    gc.disable()  # what the garbage collector would close later must already be closed
    try:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, hold, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            before = len(os.listdir("/proc/self/fd"))
            with trio.CancelScope() as scope:
                nursery.start_soon(_cancel_when, got_one, scope)
                await client.connect("127.0.0.1", port, connect_timeout=60)
            assert scope.cancelled_caught
            with trio.move_on_after(10):  # our side closed it: the ClientHello, then EOF
                while await accepted[0].receive_some(65536):
                    pass
            # The server's side is still open (held by ``hold``); ours is gone.
            assert len(os.listdir("/proc/self/fd")) == before + 1
            nursery.cancel_scope.cancel()
    finally:
        gc.enable()


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    await trio.sleep(0.05)  # let the ClientHello go out: the handshake is under way
    scope.cancel()


@pytest.mark.parametrize("protocol", ["http", "h2"])
def test_check_refuses_require_client_auth_without_ca_cert_path(protocol: str) -> None:
    """``requireClientAuth: true`` without ``caCertPath`` passed ``hostproxy check`` ("OK") and only
    failed at ``hostproxy run``, although it needs no certificate file to be found wrong. ``check`` now
    reports it, on its line, with the fix."""
    text = f"""admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: {protocol}
  dtab: /svc => /$/inet/127.0.0.1/1;
  servers:
  - ip: 127.0.0.1
    port: 0
    tls:
      certPath: /nonexistent/server.pem
      keyPath: /nonexistent/server.key
      requireClientAuth: true
"""
    with pytest.raises(ConfigError) as err:
        load_config(text, source="test.yaml")
    (issue,) = err.value.errors
    assert issue.path == "routers[0].servers[0].tls.requireClientAuth"
    assert issue.line == 11
    assert "caCertPath" in issue.message
    # With caCertPath it is fine (the files are not read by the check).
    load_config(text.replace("requireClientAuth", "caCertPath: /nonexistent/ca.pem\n      requireClientAuth"))


async def test_a_cipher_list_of_tls13_suites_is_accepted_and_means_tls13(pki: Pki) -> None:
    """``ciphers`` naming only TLS 1.3 suites (``TLS_AES_128_GCM_SHA256``: valid in Linkerd's Java
    configs) stopped the start with "none of the ciphers ... is known to OpenSSL", which is false:
    OpenSSL knows them, they are just not chosen through its TLS 1.2 cipher list (every TLS 1.3 suite
    is strong and enabled). Such a list now loads and, as in Java, allows no TLS 1.2 suite: TLS 1.3
    only; combined with ``protocols: [TLSv1.2]`` it is refused with the reason."""
    cfg = m.ServerTls(
        cert_path=pki.server_cert,
        key_path=pki.server_key,
        ciphers=("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384"),
    )
    tls = ServerTls(cfg, alpn=("http/1.1",), router="test")
    async with serving(Http1Server(hello), tls) as port:
        for version, ok in ((ssl.TLSVersion.TLSv1_3, True), (ssl.TLSVersion.TLSv1_2, False)):
            ctx = ssl.create_default_context(cafile=pki.ca_path)
            ctx.minimum_version = ctx.maximum_version = version
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            stream = trio.SSLStream(tcp, ctx, server_hostname="localhost")
            if ok:
                await stream.do_handshake()
                assert stream.version() == "TLSv1.3"
                await stream.aclose()
            else:
                with pytest.raises(trio.BrokenResourceError):
                    await stream.do_handshake()
                await tcp.aclose()
    with pytest.raises(TlsConfigError, match=r"^tls\.ciphers: .*TLS 1\.3.*protocols"):
        ServerTls(dataclasses.replace(cfg, protocols=("TLSv1.2",)), alpn=(), router="test")
    with pytest.raises(TlsConfigError, match=r"^tls\.ciphers: none of the ciphers \['NOPE'\]"):
        ServerTls(dataclasses.replace(cfg, ciphers=("NOPE",)), alpn=(), router="test")


async def _plain_exchange(port: int, first: bytes) -> bytes:
    plain = await trio.open_tcp_stream("127.0.0.1", port)
    await plain.send_all(first)
    answer = b""
    with trio.fail_after(10):
        try:
            while chunk := await plain.receive_some(65536):
                answer += chunk
        except trio.BrokenResourceError:
            pass
    await plain.aclose()
    return answer


@pytest.mark.parametrize(
    "method", [b"DELETE /x", b"OPTIONS *", b"PATCH /x", b"CONNECT example.test:443", b"GET /x"]
)
async def test_plaintext_requests_of_every_method_to_a_tls_port_get_the_400(pki: Pki, method: bytes) -> None:
    """README: a plaintext HTTP request sent to a TLS port is answered in plaintext with a 400 that
    says to use https. Only the methods OpenSSL itself recognizes (GET, POST, HEAD, PUT) got it; a
    DELETE, OPTIONS or PATCH was closed without a word (an empty reply), as if the proxy had crashed.
    Every plaintext request now gets the 400 (a TLS record never starts with a letter)."""
    tls = make_listener_tls(pki.server_cert, pki.server_key)
    async with serving(Http1Server(hello), tls) as port:
        answer = await _plain_exchange(port, method + b" HTTP/1.1\r\nhost: t\r\n\r\n")
        # Still a TLS port for TLS clients.
        ok = await ClientTls(m.ClientTls(common_name="localhost", trust_certs=(pki.ca_path,))).connect(
            "127.0.0.1", port, connect_timeout=5
        )
        await ok.aclose()
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
    assert (
        b"\r\nl5d-err: This port speaks TLS: a plaintext HTTP request was sent to it; use https://" in answer
    )
    assert tls.statistics()["handshake_failures"] == {"not-tls": 1}


async def test_plaintext_http2_to_a_tls_port_gets_a_goaway_saying_so(pki: Pki) -> None:
    """An HTTP/2 client without TLS (prior knowledge: ``curl --http2-prior-knowledge http://``, a gRPC
    channel without TLS) sent to a TLS port got the connection closed without a word; it now gets
    HTTP/2's own answer: SETTINGS, then a GOAWAY whose debug data says the port speaks TLS."""
    tls = make_listener_tls(pki.server_cert, pki.server_key, alpn=("h2",))
    async with serving(Http1Server(hello), tls) as port:
        answer = await _plain_exchange(
            port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        )
    assert answer[:9] == b"\x00\x00\x00\x04\x00\x00\x00\x00\x00", answer  # empty SETTINGS
    length = int.from_bytes(answer[9:12], "big")
    assert answer[12:18] == b"\x07\x00\x00\x00\x00\x00", answer  # GOAWAY on stream 0
    payload = answer[18 : 18 + length]
    assert payload[:8] == b"\x00\x00\x00\x00\x00\x00\x00\x01"  # last stream 0, PROTOCOL_ERROR
    assert payload[8:].startswith(b"This port speaks TLS: a plaintext HTTP/2 request was sent to it")
    assert tls.statistics()["handshake_failures"] == {"not-tls": 1}


async def test_a_connection_closed_before_sending_anything_is_no_failed_handshake(pki: Pki) -> None:
    """TCP health checks (a Kubernetes ``tcpSocket`` probe, a load balancer's TCP check) connect to
    the TLS port and close without sending a byte. Each was counted as a failed TLS handshake
    (``handshake_failures/eof``), so ``hostproxy wtf`` reported a CRITICAL "TLS handshakes from
    clients failed" finding on a healthy server that only probes reach. A connection that sent
    nothing attempted no handshake: it is no longer counted; one that closes mid-handshake still is."""
    tls = make_listener_tls(pki.server_cert, pki.server_key)
    async with serving(Http1Server(hello), tls) as port:
        for _ in range(3):
            probe = await trio.open_tcp_stream("127.0.0.1", port)
            await probe.aclose()
        half = await trio.open_tcp_stream("127.0.0.1", port)
        await half.send_all(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, then gone
        await half.aclose()
        ok = await ClientTls(m.ClientTls(common_name="localhost", trust_certs=(pki.ca_path,))).connect(
            "127.0.0.1", port, connect_timeout=5
        )
        await ok.send_all(b"GET /x HTTP/1.1\r\nhost: t\r\n\r\n")
        assert (await ok.receive_some(65536)).startswith(b"HTTP/1.1 200 ")
        await ok.aclose()
        await trio.testing.wait_all_tasks_blocked()
        stats = tls.statistics()
    assert stats["handshake_failures"] == {"eof": 1}
    assert stats["handshakes"] == 1


@contextlib.asynccontextmanager
async def header_recorder(protocol: str) -> AsyncIterator[tuple[int, list[list[tuple[bytes, bytes]]]]]:
    """An upstream (HTTP/1.1 or h2 prior knowledge) that records each request's headers."""
    seen: list[list[tuple[bytes, bytes]]] = []

    async def record(request, info):  # type: ignore[no-untyped-def]
        seen.append(list(request.headers))
        return Response(200, b"OK", body=Body.from_bytes(b"ok"))

    server = H2Server(record, H2ServerParams()) if protocol == "h2" else Http1Server(record)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(server.serve, listeners)
        try:
            yield addresses[0][1], seen
        finally:
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("protocol", ["http", "h2"])
@pytest.mark.parametrize("tls", [True, False])
async def test_an_inbound_x_forwarded_client_cert_is_dropped_without_forward_client_cert(
    pki: Pki, protocol: str, tls: bool
) -> None:
    """``x-forwarded-client-cert`` sent by the caller was forwarded unchanged unless the client had
    ``forwardClientCert: true``: any caller could name a certificate (an identity) of its choice to
    an application that trusts the header because it sits behind the mTLS proxy (Linkerd's #2068,
    fixed by always clearing it, linkerd#2085; Envoy's default is to sanitize it too). Only this
    proxy may say which certificate the caller presented: the header is now always dropped."""
    server_tls = (
        f"\n    tls: {{certPath: {pki.server_cert}, keyPath: {pki.server_key}, caCertPath: {pki.ca_path}, "
        "requireClientAuth: true}"
        if tls
        else ""
    )
    async with header_recorder(protocol) as (port, seen):
        cfg = f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: {protocol}
  label: edge
  dtab: /svc => /$/inet/127.0.0.1/{port};
  servers:
  - ip: 127.0.0.1
    port: 0{server_tls}
"""
        async with running_daemon(cfg) as d:
            scheme = "https://localhost" if tls else "http://127.0.0.1"
            version = ("--http2" if tls else "--http2-prior-knowledge") if protocol == "h2" else "--http1.1"
            r = await curl(
                f"{scheme}:{d.port('edge')}/headers",
                *(pki.curl_mtls() if tls else ()),
                version,
                "-H",
                "Host: web",
                "-H",
                'x-forwarded-client-cert: Hash=0;Subject="CN=admin"',
            )
            assert r.status == 200, r
    (headers,) = seen
    assert headers and [v for n, v in headers if n == b"x-forwarded-client-cert"] == []
