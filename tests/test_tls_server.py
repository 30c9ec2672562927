"""Server TLS on real loopback sockets: curl (TLS, mTLS) against ``Http1Server`` behind a
``TlsListener``, handshake failures counted by reason, slow handshakes that do not block accepts,
ALPN, nghttp against ``H2Server``, and grpcio with TLS credentials through ``H2Server``."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import grpc
import pytest
import trio
from certs import Pki, hello, make_listener_tls, make_pki, serving

from hostproxy.config import model as m
from hostproxy.h2 import H2Server, H2ServerParams, H2UpstreamPool
from hostproxy.http import Http1Server
from hostproxy.http.errors import UpstreamError, response_for_exception
from hostproxy.tls import ClientTls, ServerTls, TlsStream, peer_certificate
from tests.grpc_fixtures import SERVICE, GrpcTestServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


async def run(*argv: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(30):
        return await trio.run_process(list(argv), capture_stdout=True, capture_stderr=True, check=False)


async def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await run("curl", "-sS", "--max-time", "10", *args)


async def wait_for(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(10):
        while not predicate():
            await trio.sleep(0.01)


# -- HTTP/1.1 over TLS with curl ------------------------------------------------------------------------


async def test_curl_https_with_cacert(pki: Pki) -> None:
    tls = make_listener_tls(pki.server_cert, pki.server_key)
    async with serving(Http1Server(hello), tls) as port:
        out = await curl("--cacert", pki.ca_path, f"https://127.0.0.1:{port}/a")
        assert out.returncode == 0, out.stderr
        assert out.stdout == b"hello /a conn=1"
        # A custom name from the certificate's SANs, and keep-alive over one TLS connection.
        out = await curl(
            "--cacert",
            pki.ca_path,
            "--resolve",
            f"proxy.test:{port}:127.0.0.1",
            f"https://proxy.test:{port}/b",
            f"https://proxy.test:{port}/c",
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout == b"hello /b conn=2hello /c conn=2"
    assert tls.statistics()["handshakes"] == 2
    assert tls.statistics()["handshake_failures"] == {}


async def test_curl_rejects_a_name_not_in_the_certificate(pki: Pki) -> None:
    tls = make_listener_tls(pki.server_cert, pki.server_key)
    async with serving(Http1Server(hello), tls) as port:
        out = await curl(
            "--cacert",
            pki.ca_path,
            "--resolve",
            f"other.test:{port}:127.0.0.1",
            f"https://other.test:{port}/",
        )
        assert out.returncode == 60  # peer certificate cannot be authenticated
        assert b"other.test" in out.stderr
        assert out.stdout == b""
        # The server keeps serving other connections.
        out = await curl("--cacert", pki.ca_path, f"https://localhost:{port}/ok")
        assert out.stdout == b"hello /ok conn=2"


async def test_a_client_that_distrusts_the_server_is_counted(pki: Pki, tmp_path: Path) -> None:
    from certs import TestCA

    other_ca = TestCA("some other CA").write(tmp_path, "other-ca")
    tls = make_listener_tls(pki.server_cert, pki.server_key)
    async with serving(Http1Server(hello), tls) as port:
        out = await curl("--cacert", other_ca, f"https://127.0.0.1:{port}/")
        assert out.returncode == 60
        await wait_for(lambda: tls.statistics()["handshake_failures"], "the failure is counted")
        assert tls.statistics()["handshake_failures"] == {"certificate-rejected-by-peer": 1}
        out = await curl("--cacert", pki.ca_path, f"https://127.0.0.1:{port}/ok")
        assert out.stdout == b"hello /ok conn=2"


async def test_curl_mtls_requires_a_client_certificate(pki: Pki) -> None:
    tls = make_listener_tls(pki.server_cert, pki.server_key, ca=pki.ca_path, require_client_auth=True)
    async with serving(Http1Server(hello), tls) as port:
        ok = await curl(
            "--cacert",
            pki.ca_path,
            "--cert",
            pki.client_cert,
            "--key",
            pki.client_key,
            f"https://127.0.0.1:{port}/mtls",
        )
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout == b"hello /mtls conn=1"

        missing = await curl("--cacert", pki.ca_path, f"https://127.0.0.1:{port}/none")
        assert missing.returncode != 0
        assert missing.stdout == b""
        await wait_for(lambda: tls.statistics()["handshake_failures"], "the failure is counted")
        assert tls.statistics()["handshake_failures"] == {"no-client-certificate": 1}


async def test_mtls_rejects_a_client_certificate_from_another_ca(pki: Pki, tmp_path: Path) -> None:
    from certs import TestCA

    rogue = TestCA("rogue CA").issue("intruder", sans=("intruder",), client=True, server=False)
    cert, key = rogue.write(tmp_path, "rogue")
    tls = make_listener_tls(pki.server_cert, pki.server_key, ca=pki.ca_path, require_client_auth=True)
    async with serving(Http1Server(hello), tls) as port:
        out = await curl("--cacert", pki.ca_path, "--cert", cert, "--key", key, f"https://127.0.0.1:{port}/")
        assert out.returncode != 0
        assert out.stdout == b""
        await wait_for(lambda: tls.statistics()["handshake_failures"], "the failure is counted")
        assert tls.statistics()["handshake_failures"] == {"client-certificate-untrusted": 1}


async def test_plaintext_http_to_a_tls_port_is_counted_and_answered(pki: Pki) -> None:
    tls = make_listener_tls(pki.server_cert, pki.server_key)
    async with serving(Http1Server(hello), tls) as port:
        out = await curl("-i", f"http://127.0.0.1:{port}/plain")
        assert out.stdout.startswith(b"HTTP/1.1 400 Bad Request"), out
        await wait_for(lambda: tls.statistics()["handshake_failures"], "the failure is counted")
        assert tls.statistics()["handshake_failures"] == {"not-tls": 1}


async def test_a_stalled_handshake_blocks_neither_accepts_nor_other_clients(pki: Pki) -> None:
    tls = make_listener_tls(pki.server_cert, pki.server_key, handshake_timeout_s=1.0)
    async with serving(Http1Server(hello), tls) as port:
        silent = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
        try:
            # Three connections that never send a ClientHello: others are still served at once.
            out = await curl("--cacert", pki.ca_path, f"https://127.0.0.1:{port}/busy")
            assert out.returncode == 0, out.stderr
            assert out.stdout.startswith(b"hello /busy")
            # The silent ones are closed by the handshake timeout.
            with trio.fail_after(10):
                for s in silent:
                    assert await s.receive_some(10) == b""
            assert tls.statistics()["handshake_failures"] == {"timeout": 3}
        finally:
            for s in silent:
                await s.aclose()


async def test_alpn_http1_router_and_peer_certificate(pki: Pki) -> None:
    """A server of an http router answers ALPN with http/1.1; a raw TLS server sees the client's
    certificate through ``peer_certificate``."""
    tls = make_listener_tls(pki.server_cert, pki.server_key, ca=pki.ca_path, require_client_auth=True)
    seen: list[object] = []
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    from hostproxy.tls import TlsListener

    listener = TlsListener(listeners[0], tls)
    port = listeners[0].socket.getsockname()[1]

    async def one_connection() -> None:
        stream = await listener.accept()
        assert isinstance(stream, TlsStream)
        assert peer_certificate(stream) is None  # before the handshake: nothing yet
        data = await stream.receive_some(100)
        seen.append((data, peer_certificate(stream), stream.alpn, stream.version))
        await stream.send_all(b"pong")
        await stream.aclose()

    client = ClientTls(
        m.ClientTls(
            common_name="localhost",
            trust_certs=(pki.ca_path,),
            client_auth=m.ClientAuth(cert_path=pki.client_cert, key_path=pki.client_key),
        )
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(one_connection)
        stream = await client.connect("127.0.0.1", port, connect_timeout=5, alpn=("h2", "http/1.1"))
        assert stream.alpn == "http/1.1"
        assert peer_certificate(stream).subject == "CN=server.test"  # type: ignore[union-attr]
        await stream.send_all(b"ping")
        assert await stream.receive_some(10) == b"pong"
        await stream.aclose()
    await listener.aclose()
    data, cert, alpn, version = seen[0]  # type: ignore[misc]
    assert data == b"ping"
    assert cert.subject == "CN=client.test"
    assert cert.sans == ("DNS:client.test",)
    assert cert.issuer == "CN=hostproxy test CA"
    assert alpn == "http/1.1"
    assert version in ("TLSv1.2", "TLSv1.3")


async def test_protocols_setting_limits_versions(pki: Pki) -> None:
    tls = make_listener_tls(pki.server_cert, pki.server_key, protocols=["TLSv1.2"])
    async with serving(Http1Server(hello), tls) as port:
        ok = await curl(
            "--cacert", pki.ca_path, "--tlsv1.2", "--tls-max", "1.2", f"https://127.0.0.1:{port}/"
        )
        assert ok.returncode == 0, ok.stderr
        refused = await curl("--cacert", pki.ca_path, "--tlsv1.3", f"https://127.0.0.1:{port}/")
        assert refused.returncode != 0
        await wait_for(lambda: tls.statistics()["handshake_failures"], "the failure is counted")
        assert tls.statistics()["handshake_failures"] == {"protocol-mismatch": 1}


# -- HTTP/2 over TLS: nghttp and grpcio ---------------------------------------------------------------


@pytest.mark.skipif(shutil.which("nghttp") is None, reason="nghttp (nghttp2-client) is not installed")
async def test_nghttp_over_tls_with_alpn_h2(pki: Pki) -> None:
    tls = make_listener_tls(pki.server_cert, pki.server_key, alpn=("h2",))
    server = H2Server(hello, H2ServerParams())
    async with serving(server, tls) as port:
        out = await run("nghttp", "-v", f"https://127.0.0.1:{port}/h2")
        assert out.returncode == 0, out.stderr
        text = out.stdout.decode()
        assert "The negotiated protocol: h2" in text
        assert ":status: 200" in text
        assert "hello /h2 conn=1" in text
    assert tls.statistics()["handshakes"] == 1


@pytest.fixture
def grpc_server():  # type: ignore[no-untyped-def]
    with GrpcTestServer() as srv:
        yield srv


async def call(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))


async def test_grpc_client_with_tls_through_h2_server(pki: Pki, grpc_server: GrpcTestServer) -> None:
    tls = make_listener_tls(
        pki.server_cert, pki.server_key, ca=pki.ca_path, require_client_auth=True, alpn=("h2",)
    )
    async with H2UpstreamPool("127.0.0.1", grpc_server.port) as pool:

        async def forward(request, info):  # type: ignore[no-untyped-def]
            try:
                return await pool.request(request)
            except UpstreamError as exc:
                return response_for_exception(exc)

        async with serving(H2Server(forward, H2ServerParams()), tls) as port:
            ca = Path(pki.ca_path).read_bytes()
            creds = grpc.ssl_channel_credentials(
                root_certificates=ca,
                private_key=Path(pki.client_key).read_bytes(),
                certificate_chain=Path(pki.client_cert).read_bytes(),
            )
            channel = grpc.secure_channel(f"localhost:{port}", creds)
            try:
                unary = channel.unary_unary(f"/{SERVICE}/Unary")
                assert await call(unary, b"over tls", timeout=10) == b"over tls"
                stream = channel.unary_stream(f"/{SERVICE}/ServerStream")
                assert await call(lambda: list(stream(b"20", timeout=10))) == [
                    f"msg-{i}".encode() for i in range(20)
                ]
                with pytest.raises(grpc.RpcError) as err:
                    await call(unary, b"fail-tls", timeout=10)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            finally:
                channel.close()

            # Without a client certificate the channel cannot be used.
            bare = grpc.secure_channel(
                f"localhost:{port}", grpc.ssl_channel_credentials(root_certificates=ca)
            )
            try:
                with pytest.raises(grpc.RpcError) as err:
                    await call(bare.unary_unary(f"/{SERVICE}/Unary"), b"x", timeout=5)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            finally:
                bare.close()
    assert tls.statistics()["handshake_failures"].get("no-client-certificate", 0) >= 1


def test_server_tls_exposes_its_context(pki: Pki) -> None:
    tls = make_listener_tls(pki.server_cert, pki.server_key)
    assert isinstance(tls.context, ssl.SSLContext)
    assert tls.context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert isinstance(tls, ServerTls)
