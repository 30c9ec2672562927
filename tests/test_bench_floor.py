"""The benchmark's floor forwarder carries requests to a real upstream (nginx is not needed: a trio
server on loopback answers), keeps both connections alive, and refuses bad arguments."""

from __future__ import annotations

import functools
import socket

import pytest
import trio
from upstreams import answer_each_head

from hostproxy import bench_floor


def _answer(head: bytes) -> bytes:
    body = b"got " + head.split(b" ")[1]
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


async def _upstream(stream: trio.SocketStream) -> None:
    await answer_each_head(stream, _answer)


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(
        next(
            line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
    )
    while len(body) < length:
        body += sock.recv(65536)
    return body


@pytest.mark.parametrize("layers", [False, True], ids=["floor", "layers"])
async def test_floor_forwards_requests_on_kept_alive_connections(layers: bool) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, _upstream, 0, host="127.0.0.1"))
        up_port = listeners[0].socket.getsockname()[1]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        await nursery.start(bench_floor.serve_layers if layers else bench_floor.serve, port, up_port)

        def client() -> list[bytes]:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                out = []
                for path in (b"/a", b"/b"):
                    sock.sendall(b"GET " + path + b" HTTP/1.1\r\nhost: x\r\n\r\n")
                    out.append(_read_response(sock))
                return out

        assert await trio.to_thread.run_sync(client) == [b"got /a", b"got /b"]
        nursery.cancel_scope.cancel()


def test_floor_refuses_bad_arguments(capsys) -> None:  # type: ignore[no-untyped-def]
    assert bench_floor.main(["x"]) == 2
    assert bench_floor.main(["--layers", "1"]) == 2
    err = capsys.readouterr().err
    assert "usage: python -m hostproxy.bench_floor [--layers] LISTEN_PORT UPSTREAM_PORT" in err
