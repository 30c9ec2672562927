"""The HTTP/2 proxy end to end on loopback: real clients (curl, nghttp, h2load), streaming with
flow control tied end to end, trailers, resets both ways, upstream GOAWAY and PING keepalive."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import h2.events
import pytest
import trio

from hostproxy.h2 import H2ClientSettings, H2Server, H2ServerParams
from hostproxy.h2.link import CANCEL
from hostproxy.http.message import Body, Headers, Request, Response
from tests.grpc_fixtures.h2proxy import H2Proxy, running_h2_proxy
from tests.grpc_fixtures.rawh2 import RawClient, ScriptedUpstream, read_events

pytestmark = pytest.mark.timeout(60)


class Source:
    def __init__(self, app: App, total: int, fail_with: Exception | None = None) -> None:
        self.app, self.left, self.fail_with, self.trailers = app, total, fail_with, None

    async def read_chunk(self) -> bytes | None:
        if self.left <= 0:
            if self.fail_with is not None:
                raise self.fail_with
            return None
        n = min(16384, self.left)
        self.left -= n
        self.app.produced += n
        return b"y" * n

    async def aclose(self) -> None:
        self.app.closed_early += 1


class Boom(Exception):
    error_code = CANCEL


class App:
    """The upstream application (an ``H2Server``)."""

    def __init__(self) -> None:
        self.produced = 0
        self.closed_early = 0
        self.cancelled = trio.Event()
        self.requests: list[Request] = []

    async def handle(self, req: Request, info: object) -> Response:
        self.requests.append(req)
        if req.target == "/echo":
            data = await req.body.read_all(limit=64 << 20)
            return Response(200, body=Body.from_bytes(data, trailers=req.body.trailers))
        if req.target == "/trailers":
            return Response(
                200,
                body=Body.from_bytes(b"body", trailers=Headers([(b"grpc-status", b"0"), (b"x-sum", b"abc")])),
            )
        if req.target.startswith("/big/"):
            return Response(200, body=Body(Source(self, int(req.target[5:])), None))
        if req.target == "/reset-mid-body":
            return Response(200, body=Body(Source(self, 50000, Boom("upstream gave up")), None))
        if req.target == "/hang":
            try:
                await trio.sleep(30)
            except trio.Cancelled:
                self.cancelled.set()
                raise
        return Response(
            200,
            headers=Headers(
                [
                    (b"x-authority", (req.authority or "").encode()),
                    (b"x-host", req.headers.get(b"host") or b""),
                ]
            ),
            body=Body.from_bytes(b"ok"),
        )


@contextlib.asynccontextmanager
async def setup(settings: H2ClientSettings | None = None) -> AsyncIterator[tuple[App, H2Proxy]]:
    app = App()
    upstream = H2Server(app.handle, H2ServerParams())
    async with trio.open_nursery() as nursery:
        [(_, port)] = await nursery.start(upstream.serve)
        async with running_h2_proxy(port, settings=settings) as proxy:
            yield app, proxy
        nursery.cancel_scope.cancel()


async def run(*argv: str) -> trio.CompletedProcess[bytes]:
    with trio.fail_after(30):
        return await trio.run_process(list(argv), capture_stdout=True, capture_stderr=True, check=False)


async def test_curl_prior_knowledge_with_body() -> None:
    async with setup() as (app, proxy):
        r = await run(
            "curl",
            "-sS",
            "--http2-prior-knowledge",
            "-D",
            "-",
            "--data-binary",
            "hello h2",
            f"http://127.0.0.1:{proxy.port}/echo",
        )
        assert r.returncode == 0, r.stderr
        out = r.stdout.decode()
        assert out.startswith("HTTP/2 200")
        assert out.endswith("hello h2")
        r = await run("curl", "-sS", "--http2-prior-knowledge", "-D", "-", f"http://127.0.0.1:{proxy.port}/")
        assert f"x-authority: 127.0.0.1:{proxy.port}" in r.stdout.decode()
        assert f"x-host: 127.0.0.1:{proxy.port}" in r.stdout.decode()
        assert app.requests[-1].http_version == "2"


async def test_nghttp_and_h2load() -> None:
    async with setup() as (_app, proxy):
        r = await run("nghttp", "-n", "-s", f"http://127.0.0.1:{proxy.port}/big/300000")
        assert r.returncode == 0, r.stderr
        r = await run("h2load", "-n", "300", "-c", "3", "-m", "20", f"http://127.0.0.1:{proxy.port}/")
        assert r.returncode == 0, r.stderr
        assert "300 succeeded, 0 failed" in r.stdout.decode()
        stats = proxy.pool.statistics()
        assert stats["connects"] == 1  # every stream shared one upstream connection
        assert stats["streams_total"] >= 301


async def test_trailers_pass_both_ways() -> None:
    async with setup() as (_app, proxy), RawClient.connect(proxy.port) as c:
        await c.start()
        sid = await c.request("/trailers", proxy.port)
        status, body, trailers = await c.response(sid)
        assert (status, body) == (200, b"body")
        assert trailers is not None and dict(trailers) == {b"grpc-status": b"0", b"x-sum": b"abc"}
        sid = await c.request("/echo", proxy.port, method=b"POST", end_stream=False)
        c.conn.send_data(sid, b"abc")
        c.conn.send_headers(sid, [(b"x-req-trailer", b"1")], end_stream=True)
        await c.flush()
        status, body, trailers = await c.response(sid)
        assert (status, body) == (200, b"abc")
        assert trailers is not None and dict(trailers) == {b"x-req-trailer": b"1"}


async def test_request_trailers_right_after_the_head_pass_through() -> None:
    """A request of HEADERS then trailers (END_STREAM), no DATA, in one write: the server has the
    whole stream when it builds the request, and must still pass the trailers on (they used to be
    dropped with an empty body), and the upstream pool must send them (not end the stream at the
    head)."""
    async with setup() as (app, proxy), RawClient.connect(proxy.port) as c:
        await c.start()
        sid = await c.request("/echo", proxy.port, method=b"POST", end_stream=False)
        c.conn.send_headers(sid, [(b"x-req-trailer", b"1")], end_stream=True)
        await c.flush()
        status, body, trailers = await c.response(sid)
        assert (status, body) == (200, b"")
        assert trailers is not None and dict(trailers) == {b"x-req-trailer": b"1"}
        assert app.requests[-1].body.trailers == Headers([(b"x-req-trailer", b"1")])


async def test_slow_reader_slows_the_upstream_writer() -> None:
    total = 20 * 1024 * 1024
    async with setup() as (app, proxy), RawClient.connect(proxy.port) as c:
        await c.start()
        sid = await c.request(f"/big/{total}", proxy.port)
        # Read without acknowledging: the client's window (64 KiB) fills and everything stops.
        got = 0
        with trio.move_on_after(1.0):
            while True:
                for ev in await c.pump(ack=False):
                    if type(ev) is h2.events.DataReceived:
                        got += len(ev.data)
        assert got <= 65535
        # Upstream production is bounded by the windows in between, not by the 20 MiB asked for.
        assert app.produced <= 512 * 1024
        # Acknowledge what was read; the rest arrives.
        c.conn.acknowledge_received_data(got, sid)
        await c.flush()
        c.events.clear()
        status_body = 0
        while True:
            evs = await c.pump(ack=True)
            assert not c.eof
            status_body += sum(len(e.data) for e in evs if type(e) is h2.events.DataReceived)
            if any(type(e) is h2.events.StreamEnded for e in evs):
                break
        assert got + status_body == total


async def test_client_reset_cancels_the_upstream_stream() -> None:
    async with setup() as (app, proxy), RawClient.connect(proxy.port) as c:
        await c.start()
        sid = await c.request("/hang", proxy.port)
        with trio.fail_after(10):
            while not app.requests:
                await trio.sleep(0.01)
        c.conn.reset_stream(sid, error_code=CANCEL)
        await c.flush()
        with trio.fail_after(10):
            await app.cancelled.wait()
        assert proxy.pool.statistics()["resets_sent"] == 1
        # The client keeps its connection.
        sid = await c.request("/", proxy.port)
        assert (await c.response(sid))[:2] == (200, b"ok")


async def test_upstream_reset_mid_body_is_passed_back() -> None:
    async with setup() as (_app, proxy), RawClient.connect(proxy.port) as c:
        await c.start()
        sid = await c.request("/reset-mid-body", proxy.port)
        ev = await c.until(lambda e: type(e) is h2.events.StreamReset and e.stream_id == sid)
        assert ev is not None and ev.error_code == CANCEL
        assert proxy.server.statistics()["upstream_resets_passed"] == 1


async def goaway_script(i: int, conn: h2.connection.H2Connection, stream: trio.SocketStream) -> None:
    """Connection 0: after two requests arrived, GOAWAY(last=first), then answer only the first.
    Later connections: answer everything."""
    pending: list[int] = []
    while True:
        events = await read_events(conn, stream)
        if not events and not pending:
            return
        for ev in events:
            if type(ev) is h2.events.RequestReceived:
                pending.append(ev.stream_id)
        if i == 0 and len(pending) >= 2:
            first = pending[0]
            conn.close_connection(last_stream_id=first)
            conn.state_machine.state = h2.connection.ConnectionState.SERVER_OPEN
            conn.send_headers(first, [(b":status", b"200")])
            conn.send_data(first, b"first", end_stream=True)
            await stream.send_all(conn.data_to_send())
            await trio.sleep(0.2)
            return
        if i > 0:
            for sid in pending:
                conn.send_headers(sid, [(b":status", b"200")])
                conn.send_data(sid, b"again:%d" % i, end_stream=True)
            pending.clear()
            await stream.send_all(conn.data_to_send())


async def test_upstream_goaway_resends_unprocessed_streams_on_a_fresh_connection() -> None:
    up = ScriptedUpstream(goaway_script)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(up.serve)
        async with running_h2_proxy(port) as proxy, RawClient.connect(proxy.port) as c:
            await c.start()
            s1 = await c.request("/a", proxy.port)
            # /a must take the lower upstream stream id (the GOAWAY below keeps only it): the proxy
            # starts its handlers in any order, so send /b only once /a's connection is up.
            with trio.fail_after(10):
                while proxy.pool.statistics()["connects"] < 1:
                    await trio.sleep(0.01)
            s2 = await c.request("/b", proxy.port, method=b"POST", end_stream=False)
            c.conn.send_data(s2, b"payload", end_stream=True)
            await c.flush()
            assert (await c.response(s1))[:2] == (200, b"first")
            assert (await c.response(s2))[:2] == (200, b"again:1")
            stats = proxy.pool.statistics()
            assert (stats["goaways"], stats["resent"], stats["connects"]) == (1, 1, 2)
        nursery.cancel_scope.cancel()


async def silent_script(i: int, conn: h2.connection.H2Connection, stream: trio.SocketStream) -> None:
    """Completes the handshake, then never sends another byte (a half-dead peer)."""
    await read_events(conn, stream)
    while await stream.receive_some(65536):
        pass


async def test_ping_keepalive_fails_a_dead_upstream_connection() -> None:
    up = ScriptedUpstream(silent_script)
    settings = H2ClientSettings(ping_interval_s=0.2, ping_timeout_s=0.3)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(up.serve)
        async with running_h2_proxy(port, settings=settings) as proxy, RawClient.connect(proxy.port) as c:
            await c.start()
            sid = await c.request("/", proxy.port)
            status, body, _ = await c.response(sid)
            assert status == 502
            assert b"failed before a response: no PING ACK within 0.3s" in body
            assert proxy.pool.statistics()["ping_timeouts"] == 1
        nursery.cancel_scope.cancel()


async def test_ping_keeps_a_live_idle_connection() -> None:
    settings = H2ClientSettings(ping_interval_s=0.05, ping_timeout_s=5)
    async with setup(settings) as (_app, proxy), RawClient.connect(proxy.port) as c:
        await c.start()
        sid = await c.request("/", proxy.port)
        assert (await c.response(sid))[0] == 200
        link = proxy.pool._links[0]
        with trio.fail_after(10):
            # (2: no more until the upstream sends something, see MAX_PINGS_WITHOUT_DATA)
            while link.pings_sent < 2:
                await trio.sleep(0.05)
        sid = await c.request("/", proxy.port)
        assert (await c.response(sid))[0] == 200
        stats = proxy.pool.statistics()
        assert (stats["connects"], stats["ping_timeouts"]) == (1, 0)
