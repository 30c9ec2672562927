"""How TLS connections end: hostproxy sends a ``close_notify`` alert before closing a TLS connection
it accepted (``Connection: close``, keep-alive idle timeout, drain, an error answer, an HTTP/2
GOAWAY) or opened to an upstream (an HTTP/1.1 or HTTP/2 pooled connection closed when idle), so
that a peer checking for truncation sees a clean end; it answers a client's ``close_notify`` with its
own, without counting anything as a failure; it never sends one over a response or request it cut
short; and a client that reads nothing cannot hold the close.

The clients are Python's blocking ``ssl`` sockets with ``suppress_ragged_eofs=False`` (run in a
thread) and ``openssl s_client``; the upstream is a trio ``SSLStream`` server in spec mode."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
import trio
from certs import Pki, hello, make_listener_tls, make_pki, serving

import hostproxy.http.server
import hostproxy.tls.stream
from hostproxy.h2 import H2Server, H2ServerParams
from hostproxy.http import Body, Http1Server, Response
from hostproxy.http.server import ServerParams
from tests.daemonutil import curl, running_daemon

pytestmark = pytest.mark.timeout(90)

CLEAN = "close_notify"
RAGGED = "eof without close_notify"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def client_context(pki: Pki, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.ca_path)
    # OpenSSL 3 with Python's default reads an EOF without close_notify as a clean end: a strict
    # client (Go, Java, curl) does not.
    ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
    ctx.set_alpn_protocols(list(alpn))
    return ctx


def connect(pki: Pki, port: int, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    return client_context(pki, alpn).wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)


def ragged(exc: ssl.SSLError) -> str:
    """What a read that raised ``exc`` says about the connection's end (OpenSSL 3 raises SSLError
    ``UNEXPECTED_EOF_WHILE_READING`` where older ones raised ``SSLEOFError``)."""
    if isinstance(exc, ssl.SSLEOFError) or "EOF" in (exc.reason or ""):
        return RAGGED
    raise exc


def read_to_end(sock: ssl.SSLSocket) -> tuple[bytes, str]:
    """Everything the server sends, and how its connection ended."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ssl.SSLError as exc:
            return data, ragged(exc)
        except (ConnectionResetError, BrokenPipeError):
            return data, "reset"
        if not chunk:
            return data, CLEAN
        data += chunk


def exchange(pki: Pki, port: int, send: bytes) -> tuple[bytes, str]:
    """Send ``send`` on a new TLS connection, then read until the server ends it."""
    with connect(pki, port) as sock:
        sock.sendall(send)
        return read_to_end(sock)


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    with trio.fail_after(40):
        return await trio.to_thread.run_sync(functools.partial(fn, *args))


# -- the HTTP/1.1 server -------------------------------------------------------------------------------


async def test_a_connection_close_response_ends_with_close_notify(pki: Pki) -> None:
    tls = make_listener_tls(pki.server_cert, pki.server_key)
    async with serving(Http1Server(hello), tls) as port:
        data, end = await in_thread(
            exchange, pki, port, b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"hello /a conn=1"), data
    assert end == CLEAN


async def test_the_keepalive_idle_timeout_ends_with_close_notify(pki: Pki) -> None:
    tls = make_listener_tls(pki.server_cert, pki.server_key)
    server = Http1Server(hello, ServerParams(idle_timeout_s=0.2))
    async with serving(server, tls) as port:
        data, end = await in_thread(exchange, pki, port, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert data.endswith(b"hello /a conn=1"), data
    assert b"connection: close" not in data.lower()
    assert end == CLEAN


async def test_a_400_to_a_malformed_request_ends_with_close_notify(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server lingers after the error (reading what the client may still send): our close_notify
    goes first, so the client learns at once that the answer is whole and can close. (The linger is
    made longer than the client's read timeout: a close_notify sent only at its end fails the test.)"""
    monkeypatch.setattr(hostproxy.http.server, "LINGER_S", 600.0)
    monkeypatch.setattr(hostproxy.http.server, "LINGER_IDLE_S", 600.0)
    tls = make_listener_tls(pki.server_cert, pki.server_key)
    server = Http1Server(hello)
    async with serving(server, tls) as port:
        data, end = await in_thread(exchange, pki, port, b"GET /a HTTP/1.1\r\nHost x\r\n\r\n")
        assert server.statistics()["bad_requests"] == 1
    assert data.startswith(b"HTTP/1.1 400 "), data
    assert end == CLEAN


async def test_a_client_still_sending_its_body_gets_the_answer_then_close_notify(pki: Pki) -> None:
    """An answer given before the request body was read (here: 8 MiB the handler ignores) closes
    with a lingering close: close_notify first, then what the client still sends is discarded. Data
    the client sent before our alert must neither keep the alert from going out nor end the linger
    early (a close with unread input resets the connection under the client's upload)."""
    tls = make_listener_tls(pki.server_cert, pki.server_key)
    body = b"a" * (8 * 1024 * 1024)

    def client() -> tuple[bytes, str]:
        with connect(pki, port) as sock:
            sock.sendall(b"POST /big HTTP/1.1\r\nHost: x\r\ncontent-length: %d\r\n\r\n" % len(body))
            sock.sendall(body)  # raises if the server reset the connection
            return read_to_end(sock)

    async with serving(Http1Server(hello), tls) as port:
        data, end = await in_thread(client)
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"hello /big conn=1"), data
    assert end == CLEAN


async def test_a_drained_idle_connection_ends_with_close_notify(pki: Pki) -> None:
    tls = make_listener_tls(pki.server_cert, pki.server_key)
    server = Http1Server(hello)
    async with serving(server, tls) as port:

        def client(answered: Callable[[], None]) -> tuple[bytes, str]:
            with connect(pki, port) as sock:
                sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
                head = b""
                while not head.endswith(b"conn=1"):
                    head += sock.recv(65536)
                answered()
                return read_to_end(sock)

        answered = trio.Event()
        token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            result: list[tuple[bytes, str]] = []

            async def run_client() -> None:
                result.append(
                    await in_thread(client, lambda: trio.from_thread.run_sync(answered.set, trio_token=token))
                )

            nursery.start_soon(run_client)
            await answered.wait()
            server.drain()
    assert result == [(b"", CLEAN)]


async def test_a_response_cut_short_gets_no_close_notify(pki: Pki) -> None:
    """A body delimited by the connection's end (an HTTP/1.0 client) that the upstream cut short
    must not look whole: no close_notify ends it (the connection is reset)."""

    class CutSource:
        trailers = None

        def __init__(self) -> None:
            self.sent = False

        async def read_chunk(self) -> bytes | None:
            if not self.sent:
                self.sent = True
                return b"first half, "
            raise OSError("upstream went away")

        async def aclose(self) -> None:
            pass

    async def cut(request, info):  # type: ignore[no-untyped-def]
        return Response(200, b"OK", body=Body(CutSource(), None))

    tls = make_listener_tls(pki.server_cert, pki.server_key)
    async with serving(Http1Server(cut), tls) as port:
        data, end = await in_thread(exchange, pki, port, b"GET /a HTTP/1.0\r\nHost: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 "), data
    assert end != CLEAN


async def test_a_client_close_notify_is_answered_and_counted_as_no_failure(pki: Pki) -> None:
    tls = make_listener_tls(pki.server_cert, pki.server_key)
    server = Http1Server(hello)
    async with serving(server, tls) as port:

        def client() -> bytes:
            with connect(pki, port) as sock:
                sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
                data = b""
                while not data.endswith(b"conn=1"):
                    data += sock.recv(65536)
                # Sends our close_notify and waits for the server's: raises if the server just
                # closes the TCP connection.
                sock.unwrap().close()
                return data

        data = await in_thread(client)
        with trio.fail_after(10):
            while server.statistics()["connections"]:
                await trio.sleep(0.01)
        stats = server.statistics()
    assert data.endswith(b"hello /a conn=1")
    assert stats["connection_failures"] == 0
    assert stats["bad_requests"] == 0
    assert tls.statistics()["handshake_failures"] == {}
    assert tls.statistics()["handshakes"] == 1


async def test_openssl_s_client_sees_the_close_notify(pki: Pki) -> None:
    tls = make_listener_tls(pki.server_cert, pki.server_key)
    async with serving(Http1Server(hello), tls) as port:
        with trio.fail_after(30):
            out = await trio.run_process(
                [
                    "openssl",
                    "s_client",
                    "-connect",
                    f"127.0.0.1:{port}",
                    "-CAfile",
                    pki.ca_path,
                    "-servername",
                    "localhost",
                    "-quiet",
                    "-msg",
                ],
                stdin=b"GET /s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    text = out.stdout.decode("latin-1") + out.stderr.decode("latin-1")
    assert "hello /s conn=1" in text
    # -msg traces every record: the server's alert (level 1 warning, description 0 close_notify).
    assert "<<< TLS 1.3, Alert" in text or "<<< TLS 1.2, Alert" in text, text
    assert "unexpected eof" not in text.lower(), text


# -- the HTTP/2 server ----------------------------------------------------------------------------------


def h2_idle_exchange(pki: Pki, port: int) -> tuple[list[type], str]:
    """One request over TLS + ALPN h2, then read until the server's GOAWAY close."""
    with connect(pki, port, alpn=("h2",)) as sock:
        assert sock.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(
            1,
            [(":method", "GET"), (":path", "/h2"), (":scheme", "https"), (":authority", "x")],
            end_stream=True,
        )
        sock.sendall(conn.data_to_send())
        seen: list[type] = []
        while True:
            try:
                data = sock.recv(65536)
            except ssl.SSLError as exc:
                return seen, ragged(exc)
            if not data:
                return seen, CLEAN
            for ev in conn.receive_data(data):
                seen.append(type(ev))
            out = conn.data_to_send()
            if out:
                sock.sendall(out)


async def test_an_h2_goaway_close_ends_with_close_notify(pki: Pki) -> None:
    tls = make_listener_tls(pki.server_cert, pki.server_key, alpn=("h2",))
    server = H2Server(hello, H2ServerParams(idle_timeout_s=0.2))
    async with serving(server, tls) as port:
        seen, end = await in_thread(h2_idle_exchange, pki, port)
    assert h2.events.StreamEnded in seen and h2.events.ConnectionTerminated in seen, seen
    assert end == CLEAN


# -- upstream connections -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def keepalive_upstream(
    pki: Pki, ends: list[str], *, answer: bool = True, received: list[bytes] | None = None
) -> AsyncIterator[int]:
    """A TLS HTTP/1.1 server answering every request on a connection (keep-alive; none with
    ``answer`` false), appending what it reads to ``received``, and recording in ``ends`` how each
    connection ended: ``close_notify`` or an EOF without it."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF

    async def serve(tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, ctx, server_side=True)  # spec mode: a ragged EOF raises
        buf = b""
        try:
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    ends.append(CLEAN)
                    break
                buf += chunk
                if received is not None:
                    received.append(chunk)
                while answer and b"\r\n\r\n" in buf:
                    _, buf = buf.split(b"\r\n\r\n", 1)
                    await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        except trio.BrokenResourceError:
            ends.append(RAGGED)
        await tcp.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        try:
            yield listeners[0].socket.getsockname()[1]
        finally:
            nursery.cancel_scope.cancel()


def client_config(pki: Pki, port: int, extra: str = "") -> str:
    return f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: http
  label: out
  dtab: /svc => /$/inet/127.0.0.1/{port};
  servers: [{{ip: 127.0.0.1, port: 0}}]
  client:
    failureAccrual: {{kind: none}}
    {extra}
    tls:
      commonName: localhost
      trustCerts: [{pki.ca_path}]
"""


async def test_a_pooled_tls_upstream_connection_closed_when_idle_gets_close_notify(pki: Pki) -> None:
    ends: list[str] = []
    pool = "hostConnectionPool: {idleTimeMs: 200}"
    async with (
        keepalive_upstream(pki, ends) as port,
        running_daemon(client_config(pki, port, pool)) as d,
    ):
        r = await curl(f"http://127.0.0.1:{d.port('out')}/x", "-H", "Host: web")
        assert r.status == 200 and r.body == b"ok", r
        with trio.fail_after(20):
            while not ends:
                await trio.sleep(0.02)
    assert ends == [CLEAN]


async def test_an_upstream_request_cut_short_gets_no_close_notify(pki: Pki) -> None:
    """The client went away in the middle of its request body: the upstream connection is closed
    without a close_notify, which would vouch for a request that was never sent whole."""
    ends: list[str] = []
    received: list[bytes] = []
    async with (
        keepalive_upstream(pki, ends, answer=False, received=received) as port,
        running_daemon(client_config(pki, port)) as d,
    ):
        with trio.fail_after(20):
            client = await trio.open_tcp_stream("127.0.0.1", d.port("out"))
            await client.send_all(
                b"POST /x HTTP/1.1\r\nHost: web\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"
            )
            while not received:  # the request is on its way to the upstream
                await trio.sleep(0.01)
            await client.aclose()
            while not ends:
                await trio.sleep(0.02)
    assert ends == [RAGGED]


async def test_an_h2_client_close_notify_is_answered(pki: Pki) -> None:
    tls = make_listener_tls(pki.server_cert, pki.server_key, alpn=("h2",))
    server = H2Server(hello)
    async with serving(server, tls) as port:

        def client() -> list[type]:
            with connect(pki, port, alpn=("h2",)) as sock:
                conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
                conn.initiate_connection()
                conn.send_headers(
                    1,
                    [(":method", "GET"), (":path", "/h2"), (":scheme", "https"), (":authority", "x")],
                    end_stream=True,
                )
                sock.sendall(conn.data_to_send())
                seen: list[type] = []
                while h2.events.StreamEnded not in seen:
                    seen += [type(ev) for ev in conn.receive_data(sock.recv(65536))]
                sock.sendall(conn.data_to_send())
                sock.unwrap().close()  # raises unless the server answers with its close_notify
                return seen

        seen = await in_thread(client)
        with trio.fail_after(10):
            while server.statistics()["connections"]:
                await trio.sleep(0.01)
        stats = server.statistics()
    assert h2.events.StreamEnded in seen
    assert stats["connection_failures"] == 0
    assert tls.statistics()["handshake_failures"] == {}


# -- a peer that reads nothing cannot hold the close ------------------------------------------------------


async def test_closing_towards_a_client_that_reads_nothing_does_not_wait_for_it(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The close_notify is written with a bounded wait: with the client's receive buffer and ours
    full, ``aclose`` gives it up and closes the socket rather than wait for the client to read."""
    monkeypatch.setattr(hostproxy.tls.stream, "CLOSE_NOTIFY_TIMEOUT_S", 0.2)
    tls = make_listener_tls(pki.server_cert, pki.server_key)
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    release = threading.Event()

    def client() -> None:
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # (fixed: no autotuning)
        raw.settimeout(20)
        raw.connect(("127.0.0.1", port))
        with client_context(pki).wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"x")  # the server's first read completes the handshake
            release.wait(30)  # reading nothing meanwhile

    async with trio.open_nursery() as nursery:
        nursery.start_soon(in_thread, client)
        stream = tls.wrap(await listener.accept())
        assert await stream.receive_some(1) == b"x"
        raw = stream.socket  # (trio's: its descriptor is non-blocking)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        # Fill every buffer between us and the client, until nothing more moves.
        written = 1
        while written:
            written = 0
            with contextlib.suppress(BlockingIOError):
                while True:
                    written += os.write(raw.fileno(), b"\0" * 4096)
            await trio.sleep(0.05)
        with trio.fail_after(20):
            await stream.aclose()
        assert stream.close_notify == "skipped"
        release.set()
        assert raw.fileno() == -1
    await listener.aclose()


@contextlib.asynccontextmanager
async def h2_tls_upstream(pki: Pki, ends: list[str]) -> AsyncIterator[int]:
    """An HTTP/2 server over TLS (ALPN h2) answering every stream ``200 ok``, recording in ``ends``
    how each connection ended."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
    ctx.set_alpn_protocols(["h2"])

    async def serve(tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, ctx, server_side=True)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        try:
            await stream.send_all(conn.data_to_send())
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    ends.append(CLEAN)
                    break
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        conn.send_headers(ev.stream_id, [(":status", "200")])
                        conn.send_data(ev.stream_id, b"ok", end_stream=True)
                out = conn.data_to_send()
                if out:
                    await stream.send_all(out)
        except trio.BrokenResourceError:
            ends.append(RAGGED)
        await tcp.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        try:
            yield listeners[0].socket.getsockname()[1]
        finally:
            nursery.cancel_scope.cancel()


async def test_a_pooled_h2_tls_upstream_connection_closed_when_idle_gets_close_notify(pki: Pki) -> None:
    ends: list[str] = []
    async with h2_tls_upstream(pki, ends) as port:
        config = f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: h2
  label: h2
  dtab: /svc => /$/inet/127.0.0.1/{port};
  servers: [{{ip: 127.0.0.1, port: 0}}]
  client:
    failureAccrual: {{kind: none}}
    clientSession: {{idleTimeMs: 200}}
    tls:
      commonName: localhost
      trustCerts: [{pki.ca_path}]
"""
        async with running_daemon(config) as d:
            r = await curl(f"http://127.0.0.1:{d.port('h2')}/x", "--http2-prior-knowledge", "-H", "Host: web")
            assert r.status == 200 and r.body == b"ok", r
            with trio.fail_after(20):
                while not ends:
                    await trio.sleep(0.02)
    assert ends == [CLEAN]
