"""Attacks on access log rolling, response compression, admin TLS and the InfluxDB telemeter: each test
is a defect found in them, shown on real files, real sockets and a real daemon where it is end to end."""

from __future__ import annotations

import gzip
from collections.abc import Awaitable, Callable
from pathlib import Path

import h11
import trio

from tests.daemonutil import curl, fs_config, running_daemon

# -- helpers -------------------------------------------------------------------------------------------

Answer = Callable[[trio.SocketStream, bytes], Awaitable[None]]


async def _raw_upstream(answer: Answer, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """A bare upstream: for each connection, read one request head and let ``answer`` write the
    response bytes it wants (whatever framing)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def serve(stream: trio.SocketStream) -> None:
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head:
                data = await stream.receive_some(65536)
                if not data:
                    return
                head += data
            await answer(stream, head)

    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(serve, listeners)


def _disco(tmp_path: Path, port: int) -> Path:
    disco = tmp_path / "disco"
    disco.mkdir(exist_ok=True)
    (disco / "app").write_text(f"127.0.0.1 {port}\n")
    return disco


def _exchange(port: int, request: h11.Request) -> tuple[h11.Response, bytes, list[tuple[bytes, bytes]]]:
    """One request over a raw socket, read with h11: the response head, its body bytes as sent (still
    content-coded) and its trailers (blocking: run it in a thread)."""
    import socket

    conn = h11.Connection(h11.CLIENT)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(conn.send(request))
        s.sendall(conn.send(h11.EndOfMessage()))
        head: h11.Response | None = None
        body = b""
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                data = s.recv(65536)
                assert data, "the proxy closed the connection before the response ended"
                conn.receive_data(data)
            elif isinstance(ev, h11.Response):
                head = ev
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                assert head is not None
                return head, body, list(ev.headers)


# -- response compression ------------------------------------------------------------------------------


async def test_a_small_chunked_response_keeps_its_trailers_when_compressed(tmp_path: Path) -> None:
    """A chunked response small enough to arrive with its head is held in memory; compressed, it was
    given a Content-Length, and its trailers (which only a chunked body can carry) were dropped, while
    the same response uncompressed kept them."""

    async def answer(stream: trio.SocketStream, _head: bytes) -> None:
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
            b"Trailer: x-checksum\r\n\r\n1a\r\nhello, compressible world\n\r\n0\r\nx-checksum: abc\r\n\r\n"
        )

    async with trio.open_nursery() as nursery:
        port = await nursery.start(_raw_upstream, answer)
        text = fs_config(_disco(tmp_path, port)) + "  compressionLevel: -1\n"
        async with running_daemon(text) as d:
            headers = [("Host", "app"), ("TE", "trailers")]
            plain_head, plain, plain_trailers = await trio.to_thread.run_sync(
                _exchange, d.port("out"), h11.Request(method="GET", target="/", headers=headers)
            )
            assert plain == b"hello, compressible world\n"
            assert plain_trailers == [(b"x-checksum", b"abc")]
            head, body, trailers = await trio.to_thread.run_sync(
                _exchange,
                d.port("out"),
                h11.Request(method="GET", target="/", headers=[*headers, ("Accept-Encoding", "gzip")]),
            )
            fields = dict(head.headers)
            assert fields[b"content-encoding"] == b"gzip"
            assert gzip.decompress(body) == b"hello, compressible world\n"
            assert trailers == [(b"x-checksum", b"abc")]
            assert fields.get(b"transfer-encoding") == b"chunked" and b"content-length" not in fields
        nursery.cancel_scope.cancel()


async def test_a_body_content_coded_in_a_second_field_line_is_not_compressed_again(tmp_path: Path) -> None:
    """``Content-Encoding: identity`` then ``Content-Encoding: gzip`` is one list, ``identity, gzip``: the
    body is gzip. Only the first line was read, so the body was gzipped again and labelled with one
    ``gzip``: a client that decoded it got gzip bytes, not the upstream's text."""
    payload = gzip.compress(b"already compressed by the upstream " * 20)

    async def answer(stream: trio.SocketStream, _head: bytes) -> None:
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Encoding: identity\r\n"
            b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload
        )

    async with trio.open_nursery() as nursery:
        port = await nursery.start(_raw_upstream, answer)
        text = fs_config(_disco(tmp_path, port)) + "  compressionLevel: 9\n"
        async with running_daemon(text) as d:
            r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: app", "--compressed")
            assert r.status == 200 and r.exit_code == 0
            assert r.body == b"already compressed by the upstream " * 20
        nursery.cancel_scope.cancel()


async def test_accept_encoding_in_two_field_lines_is_one_list(tmp_path: Path) -> None:
    """``Accept-Encoding: br`` then ``Accept-Encoding: gzip`` accepts gzip (RFC 9110 §5.3: one list);
    only the first line was read."""
    from tests.upstreams import running_upstream

    async with running_upstream() as up:
        text = fs_config(_disco(tmp_path, up.port)) + "  compressionLevel: -1\n"
        async with running_daemon(text) as d:
            head, body, _ = await trio.to_thread.run_sync(
                _exchange,
                d.port("out"),
                h11.Request(
                    method="GET",
                    target="/headers",
                    headers=[("Host", "app"), ("Accept-Encoding", "br"), ("Accept-Encoding", "gzip")],
                ),
            )
            assert head.status_code == 200
            assert dict(head.headers).get(b"content-encoding") == b"gzip"
            assert b'"accept-encoding"' in gzip.decompress(body)
