"""gRPC through hostproxy, adversarially: real grpcio servers and clients on loopback, through the
HTTP/2 proxy (``tests.grpc_fixtures.h2proxy``) and the real daemon (``protocol: h2`` routers)."""

from __future__ import annotations

import functools
import queue
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
import trio

from hostproxy.h2 import H2ClientSettings
from tests.daemonutil import curl, running_daemon
from tests.grpc_fixtures.h2proxy import running_h2_proxy

pytestmark = pytest.mark.timeout(60)

SERVICE = "adv.Svc"


async def call(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))


class Server:
    """``adv.Svc`` on 127.0.0.1:``port``: ``Unary`` (echo, or waits ``delay`` s watching for cancel),
    ``Bidi`` (echo each message; ``abort:<text>`` ends the call INTERNAL ``<text>``), ``Early`` (client streaming; its first ``fail_first`` calls read one
    message and abort UNAVAILABLE, the others answer the concatenation), ``Ticks`` (server streaming:
    the request is a count N, N messages 50 ms apart), ``BigHead`` (answers with an N-octet binary
    header)."""

    def __init__(self, *, delay: float = 0.0, fail_first: int = 0) -> None:
        self.delay = delay
        self.fail_first = fail_first
        self.calls = 0
        self.received: list[int] = []
        self.cancelled = threading.Event()
        self._lock = threading.Lock()

        def unary(req: bytes, ctx: grpc.ServicerContext) -> bytes:
            with self._lock:
                self.calls += 1
            end = time.monotonic() + self.delay
            while time.monotonic() < end:
                if not ctx.is_active():
                    self.cancelled.set()
                    return b""
                time.sleep(0.01)
            return req

        def bidi(reqs: Iterator[bytes], ctx: grpc.ServicerContext) -> Iterator[bytes]:
            for r in reqs:
                if r.startswith(b"abort:"):
                    ctx.abort(grpc.StatusCode.INTERNAL, r[6:].decode())
                yield r

        def ticks(req: bytes, ctx: grpc.ServicerContext) -> Iterator[bytes]:
            for i in range(int(req)):
                yield b"tick-%d" % i
                time.sleep(0.05)

        def big_head(req: bytes, ctx: grpc.ServicerContext) -> bytes:
            ctx.send_initial_metadata((("big-bin", b"\x01" * int(req)),))
            return b"ok"

        def early(reqs: Iterator[bytes], ctx: grpc.ServicerContext) -> bytes:
            with self._lock:
                self.calls += 1
                n = self.calls
            if n <= self.fail_first:
                self.received.append(len(next(reqs)))
                ctx.abort(grpc.StatusCode.UNAVAILABLE, f"attempt {n} fails")
            data = b"".join(reqs)
            self.received.append(len(data))
            return data

        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(unary),
                "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
                "Early": grpc.stream_unary_rpc_method_handler(early),
                "Ticks": grpc.unary_stream_rpc_method_handler(ticks),
                "BigHead": grpc.unary_unary_rpc_method_handler(big_head),
            },
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def __enter__(self) -> Server:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(grace=None).wait(5)


class Client:
    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.unary = self.channel.unary_unary(f"/{SERVICE}/Unary")
        self.bidi = self.channel.stream_stream(f"/{SERVICE}/Bidi")
        self.early = self.channel.stream_unary(f"/{SERVICE}/Early")
        self.ticks = self.channel.unary_stream(f"/{SERVICE}/Ticks")
        self.big_head = self.channel.unary_unary(f"/{SERVICE}/BigHead")

    def close(self) -> None:
        self.channel.close()


def feeder() -> tuple[queue.Queue[bytes | None], Iterator[bytes]]:
    """A request iterator fed from the test: put messages, then None to end the stream."""
    q: queue.Queue[bytes | None] = queue.Queue()

    def gen() -> Iterator[bytes]:
        while (item := q.get()) is not None:
            yield item

    return q, gen()


def daemon_config(port: int, service: str = "") -> str:
    return f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: h2
  label: h2
  identifier: {{kind: io.l5d.header.path, segments: 1}}
  dtab: |
    /svc => /$/inet/127.0.0.1/{port};
{service}
  servers:
  - {{ip: 127.0.0.1, port: 0}}
"""


async def test_a_quiet_long_lived_stream_survives_upstream_keepalive_pings() -> None:
    # A watch-style bidi stream that carries nothing for a while. The proxy's keepalive PINGs to the
    # upstream must stay within what gRPC servers allow without data in between (2 "ping strikes"),
    # else grpcio sends GOAWAY ENHANCE_YOUR_CALM "too_many_pings" and the stream dies as UNAVAILABLE
    # (after ~40 s with the default 10 s interval; the short interval here shows it in a second).
    settings = H2ClientSettings(ping_interval_s=0.1, ping_timeout_s=5)
    with Server() as srv:
        async with running_h2_proxy(srv.port, settings=settings) as proxy:
            client = Client(proxy.port)
            try:
                q, requests = feeder()
                responses = client.bidi(requests, timeout=30)
                q.put(b"one")
                assert await call(next, responses) == b"one"
                link = proxy.pool._links[0]
                with trio.fail_after(10):
                    while link.pings_sent < 2:
                        await trio.sleep(0.05)
                await trio.sleep(1.5)  # 15 more ping intervals with nothing on the stream
                q.put(b"two")
                assert await call(next, responses) == b"two"
                q.put(None)
                assert await call(list, responses) == []
                stats = proxy.pool.statistics()
                assert (stats["goaways"], stats["connects"], stats["ping_timeouts"]) == (0, 1, 0)
                # Data from the upstream allows PINGs again: keepalive still runs on a busy link.
                assert await call(client.unary, b"x", timeout=10) == b"x"
                with trio.fail_after(10):
                    while link.pings_sent < 3:
                        await trio.sleep(0.05)
            finally:
                client.close()


async def test_total_timeout_is_deadline_exceeded_and_cancels_the_upstream_call() -> None:
    with Server(delay=20) as srv:
        async with running_daemon(daemon_config(srv.port, "  service: {totalTimeoutMs: 300}")) as d:
            client = Client(d.port("h2"))
            try:
                with pytest.raises(grpc.RpcError) as err:
                    await call(client.unary, b"x", timeout=20)
                assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert (err.value.details() or "").startswith(
                    "exceeded totalTimeoutMs (300 ms) for /svc/adv.Svc"
                )
                assert await call(srv.cancelled.wait, 10)
            finally:
                client.close()
            metrics = (await curl(f"{d.admin}/admin/metrics.json")).json()
            assert isinstance(metrics, dict)
            assert metrics["rt/h2/service/svc/adv.Svc/failures/timeout/request"] == 1


async def test_a_stream_aborted_unavailable_after_its_first_message_is_retried_whole() -> None:
    # The upstream fails the call after reading one message, while the client is still streaming;
    # what was sent fits retryBufferSize, so the retry replays it and then streams the rest, even
    # though the whole body ends up larger than the buffer.
    service = (
        "  service:\n"
        "    responseClassifier: {kind: io.l5d.h2.grpc.retryableStatusCodes, retryableStatusCodes: [14]}\n"
        "    retryBufferSize: {requestBytes: 3000}"
    )
    with Server(fail_first=1) as srv:
        async with running_daemon(daemon_config(srv.port, service)) as d:
            client = Client(d.port("h2"))
            try:
                q, requests = feeder()
                fut = client.early.future(requests, timeout=30)
                q.put(b"A" * 1000)
                with trio.fail_after(10):
                    while not srv.received:
                        await trio.sleep(0.02)
                for chunk in (b"B" * 1000, b"C" * 5000, None):
                    q.put(chunk)
                assert await call(fut.result) == b"A" * 1000 + b"B" * 1000 + b"C" * 5000
                assert srv.received == [1000, 7000]
            finally:
                client.close()


async def test_a_client_deadline_or_cancel_is_not_counted_as_a_hostproxy_failure() -> None:
    # A gRPC client's deadline (or cancel) resets its stream: the upstream sees the cancel, and
    # the router counts the request as 499 (client closed request), not as proxy/internal (which
    # `hostproxy wtf` reports as a hostproxy bug), for the server, the service and the client.
    with Server(delay=20) as srv:
        async with running_daemon(daemon_config(srv.port)) as d:
            client = Client(d.port("h2"))
            try:
                with pytest.raises(grpc.RpcError) as err:
                    await call(client.unary, b"x", timeout=0.5)
                assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert await call(srv.cancelled.wait, 10)
                srv.cancelled.clear()
                # A client stream cancelled mid-body, with retries configured or not alike.
                q, requests = feeder()
                fut = client.early.future(requests, timeout=30)
                q.put(b"A" * 100)
                with trio.fail_after(10):
                    while srv.calls < 2:
                        await trio.sleep(0.02)
                fut.cancel()
                q.put(None)
                with trio.fail_after(10):
                    while True:
                        metrics = (await curl(f"{d.admin}/admin/metrics.json")).json()
                        assert isinstance(metrics, dict)
                        if metrics.get("rt/h2/service/svc/adv.Svc/status/499") == 2:
                            break
                        await trio.sleep(0.05)
            finally:
                client.close()
            internal = {k: v for k, v in metrics.items() if "proxy/internal" in k and v}
            assert internal == {}
            assert metrics.get("rt/h2/service/svc/adv.Svc/failures", 0) == 0
            client_keys = [k for k in metrics if k.startswith("rt/h2/client/") and k.endswith("/status/499")]
            assert [metrics[k] for k in client_keys] == [2]
            wtf = await trio.run_process(
                [sys.executable, "-m", "hostproxy", "wtf", "--admin", d.admin],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            # The calls the clients gave up on are the application's slowness, not hostproxy's fault.
            assert wtf.returncode == 1, wtf.stdout.decode()
            assert "proxy/internal" not in wtf.stdout.decode()
            assert "abandoned [fault: application]" in wtf.stdout.decode(), wtf.stdout.decode()


async def test_an_h2_router_pointed_at_an_http1_port_says_so() -> None:
    # A common misconfiguration: the dtab sends gRPC to an HTTP/1.1 port. Here the port is another
    # hostproxy's HTTP/1.1 router, which answers the HTTP/2 preface with GOAWAY HTTP_1_1_REQUIRED
    # and an explanation: the caller's grpc-message carries it, not a bare "connection closed".
    h1 = "routers:\n- protocol: http\n  label: h1\n  dtab: /svc => /$/inet/127.0.0.1/1;\n  servers: [{ip: 127.0.0.1, port: 0}]\n"
    async with running_daemon(h1) as upstream, running_daemon(daemon_config(upstream.port("h1"))) as d:
        client = Client(d.port("h2"))
        try:
            with pytest.raises(grpc.RpcError) as err:
                await call(client.unary, b"x", timeout=20)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            details = err.value.details() or ""
            assert f"connection to 127.0.0.1:{upstream.port('h1')}" in details
            assert "it sent GOAWAY HTTP_1_1_REQUIRED: This port speaks HTTP/1.1" in details, details
        finally:
            client.close()


async def test_an_upstream_answering_in_http1_is_named_as_not_http2() -> None:
    # An HTTP/1.1 server that does not know the preface answers it with a status line (nginx: 400,
    # Go: 505) and closes: the reason says the upstream is not an HTTP/2 server.
    async def http1_server(stream: trio.SocketStream) -> None:
        with trio.move_on_after(10):
            await stream.receive_some(65536)
            await stream.send_all(
                b"HTTP/1.1 505 HTTP Version Not Supported\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, http1_server, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        async with running_daemon(daemon_config(port)) as d:
            client = Client(d.port("h2"))
            try:
                with pytest.raises(grpc.RpcError) as err:
                    await call(client.unary, b"x", timeout=20)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                details = err.value.details() or ""
                assert "it answered in HTTP/1 ('HTTP/1.1 505 HTTP Version Not Supported')" in details, details
                assert "it is not an HTTP/2 server" in details
            finally:
                client.close()
        nursery.cancel_scope.cancel()


async def test_an_endpoint_failing_grpc_calls_shows_why_in_client_state() -> None:
    # Failure accrual takes out an endpoint whose gRPC answers the classifier calls failures;
    # /client_state.json must say why (lastFailure), whether the grpc-status came trailers-only or
    # in the trailers after messages, as it does for a 5XX.
    service = "  service: {responseClassifier: {kind: io.l5d.h2.grpc.default}}"
    with Server() as srv:
        async with running_daemon(daemon_config(srv.port, service)) as d:
            client = Client(d.port("h2"))
            try:

                async def last_failure() -> dict:  # type: ignore[type-arg]
                    state = (await curl(f"{d.admin}/client_state.json")).json()
                    assert isinstance(state, dict)
                    (client_state,) = state.values()
                    (endpoint,) = client_state["endpoints"].values()
                    return endpoint["lastFailure"]  # type: ignore[no-any-return]

                # Trailers-only: the call fails before any message.
                with pytest.raises(grpc.RpcError) as err:
                    await call(lambda: list(client.bidi(iter(["abort:caf\u00e9 down".encode()]), timeout=10)))
                assert err.value.code() == grpc.StatusCode.INTERNAL
                failure = await last_failure()
                assert failure is not None
                assert (failure["cause"], failure["message"]) == (
                    "upstream/grpc",
                    "answered grpc-status 13: caf\u00e9 down",
                )
                # In the trailers, after a message.
                with pytest.raises(grpc.RpcError):
                    await call(lambda: list(client.bidi(iter([b"one", b"abort:later"]), timeout=10)))
                failure = await last_failure()
                assert (failure["cause"], failure["message"]) == (
                    "upstream/grpc",
                    "answered grpc-status 13: later",
                )
            finally:
                client.close()


async def test_clear_context_hides_the_reason_of_a_stream_failed_midway() -> None:
    # A server with clearContext: true sends untrusted callers no l5d-* field and no proxy error
    # text (which names services and addresses). A gRPC response whose upstream connection dies
    # after its head ends with trailers: grpc-status UNAVAILABLE, without the reason.
    conf = daemon_config(0).replace(
        "  - {ip: 127.0.0.1, port: 0}\n", "  - {ip: 127.0.0.1, port: 0, clearContext: true}\n"
    )
    srv = Server()
    srv.__enter__()
    try:
        conf = conf.replace("/$/inet/127.0.0.1/0;", f"/$/inet/127.0.0.1/{srv.port};")
        async with running_daemon(conf) as d:
            client = Client(d.port("h2"))
            try:
                q, requests = feeder()
                responses = client.bidi(requests, timeout=30)
                q.put(b"one")
                assert await call(next, responses) == b"one"
                await call(lambda: srv.server.stop(grace=None).wait(5))
                with pytest.raises(grpc.RpcError) as err:
                    await call(next, responses)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "127.0.0.1" not in (err.value.details() or "")
                trailing = dict(err.value.trailing_metadata() or ())
                assert not [k for k in trailing if k.startswith("l5d-")], trailing
                q.put(None)
            finally:
                client.close()
    finally:
        srv.__exit__()


async def test_a_stream_cancelled_after_its_head_counts_as_a_reset_sent() -> None:
    # The client cancels a server-streaming call after its first message (its request is sent
    # whole): the proxy resets the upstream stream and the pool's resets_sent (/client_state.json)
    # counts it, as it counts one sent before the head or while the request streams.
    with Server() as srv:
        async with running_h2_proxy(srv.port) as proxy:
            client = Client(proxy.port)
            try:
                responses = client.ticks(b"1000", timeout=30)
                assert await call(next, responses) == b"tick-0"
                responses.cancel()
                with trio.fail_after(10):
                    while proxy.pool.statistics()["resets_sent"] < 1:
                        await trio.sleep(0.02)
                assert await call(client.unary, b"after", timeout=10) == b"after"
                assert proxy.pool.statistics()["resets_sent"] == 1
            finally:
                client.close()


async def test_an_upstream_head_too_large_is_named_as_the_reason() -> None:
    # An upstream answer whose header list is past what the proxy's HTTP/2 client takes fails the
    # connection with a protocol error: the caller's grpc-message says so, not "connection closed".
    with Server() as srv:
        async with running_daemon(daemon_config(srv.port)) as d:
            client = Client(d.port("h2"))
            try:
                assert await call(client.big_head, b"1000", timeout=10) == b"ok"
                with pytest.raises(grpc.RpcError) as err:
                    await call(client.big_head, b"100000", timeout=10)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                details = err.value.details() or ""
                assert (
                    f"connection to 127.0.0.1:{srv.port} failed before a response: HTTP/2 protocol error"
                    in details
                )
                assert "Oversized header block" in details, details
            finally:
                client.close()
