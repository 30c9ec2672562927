"""The floor for one trio worker: a bare trio + llhttp forwarder that ``make bench`` measures beside
hostproxy.

It does the least any HTTP/1.1 proxy on this stack must do — read a request, frame it with llhttp
(``httptools``), write it to the upstream over a kept-alive connection, frame the response, write it back —
and nothing else: no routing, no header edits, no pools, balancing, accrual, metrics or errors worth the
name. Its latency at a fixed rate is what the event loop and the parser cost on the machine at hand, so
the benchmark can tell the proxy's own cost from the platform's.

With ``--layers`` it runs instead hostproxy's own HTTP/1.1 layers with nothing between them: the server
(codec, hardening, framing, keep-alive) handing each request straight to one upstream pool (the pool's
reuse and stale checks, the client codec) — hostproxy without routing, l5d headers, balancing, accrual,
retries or metrics. Between the two rows of ``make bench`` lies what the layers cost; above the second,
what the router does.

Run as ``python -m hostproxy.bench_floor [--layers] LISTEN_PORT UPSTREAM_PORT`` (both on 127.0.0.1). Not
for traffic.
"""

from __future__ import annotations

import sys

import httptools
import trio

RECEIVE_SIZE = 65536


class _Framer:
    """Collects one message's bytes; ``done`` once llhttp saw its end."""

    __slots__ = ("done", "parser")

    def __init__(self, response: bool) -> None:
        self.done = False
        self.parser = (httptools.HttpResponseParser if response else httptools.HttpRequestParser)(self)

    def on_message_complete(self) -> None:
        self.done = True


async def _pump(src: trio.SocketStream, dst: trio.SocketStream, response: bool) -> bool:
    """Forward one message from ``src`` to ``dst`` as its bytes arrive; False when ``src`` closed."""
    framer = _Framer(response)
    while not framer.done:
        data = await src.receive_some(RECEIVE_SIZE)
        if not data:
            return False
        framer.parser.feed_data(data)
        await dst.send_all(data)
    return True


async def forward(client: trio.SocketStream, upstream_port: int) -> None:
    """One client connection: each request goes to the upstream on one kept-alive connection."""
    try:
        async with client, await trio.open_tcp_stream("127.0.0.1", upstream_port) as upstream:
            while await _pump(client, upstream, False) and await _pump(upstream, client, True):
                pass
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, httptools.HttpParserError):
        return


async def serve(
    port: int,
    upstream_port: int,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await forward(stream, upstream_port)

    await trio.serve_tcp(handler, port, host="127.0.0.1", task_status=task_status)


async def serve_layers(
    port: int,
    upstream_port: int,
    *,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """hostproxy's HTTP/1.1 server handing every request to one upstream pool, nothing between."""
    from hostproxy.http.message import Request, Response
    from hostproxy.http.server import ConnInfo, Http1Server, ServerParams
    from hostproxy.http.upstream import UpstreamPool

    async with UpstreamPool("127.0.0.1", upstream_port) as pool:

        async def handler(req: Request, _conn: ConnInfo) -> Response:
            return await pool.request(req)

        server = Http1Server(handler, ServerParams(ip="127.0.0.1", port=port, router_label="layers"))
        await server.serve(task_status=task_status)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    layers = args[:1] == ["--layers"]
    ports = args[1:] if layers else args
    if len(ports) != 2 or not all(a.isdigit() for a in ports):
        print("usage: python -m hostproxy.bench_floor [--layers] LISTEN_PORT UPSTREAM_PORT", file=sys.stderr)
        return 2
    trio.run(serve_layers if layers else serve, int(ports[0]), int(ports[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
