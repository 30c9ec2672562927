"""HTTP/2 servers enforce their connection limits: ``serverSession.idleTimeMs`` and ``lifeTimeMs``,
``maxRequestsPerConnection`` and ``timeoutMs``.

Each limit ends a connection gracefully: GOAWAY (NO_ERROR) naming the last stream the server will
answer, streams in progress finish, streams above it are refused (the client may send them again
elsewhere), and the server closes the connection once its streams are done — even when the client
keeps it open after the GOAWAY. Real ``H2Server`` on loopback, a raw h2 client.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import h2.events
import pytest
import trio

from hostproxy.config import load_config
from hostproxy.daemon import h2_server_params
from hostproxy.h2 import H2Server, H2ServerParams
from hostproxy.h2.link import keep_open_after_goaway
from hostproxy.http.message import Body, Request, Response
from tests.daemonutil import Running, running_daemon
from tests.grpc_fixtures.rawh2 import RawClient, goaway_of

pytestmark = pytest.mark.timeout(60)


class App:
    """Answers ``/`` at once and ``/slow`` after ``slow_s``; counts requests."""

    def __init__(self, slow_s: float = 0.6) -> None:
        self.slow_s = slow_s
        self.requests: list[str] = []

    async def handle(self, req: Request, info: object) -> Response:
        self.requests.append(req.target)
        if req.target == "/slow":
            await trio.sleep(self.slow_s)
        return Response(200, body=Body.from_bytes(b"ok"))


@contextlib.asynccontextmanager
async def serving(params: H2ServerParams, app: App) -> AsyncIterator[tuple[H2Server, int]]:
    server = H2Server(app.handle, params)
    async with trio.open_nursery() as nursery:
        [(_, port)] = await nursery.start(server.serve)
        yield server, port
        nursery.cancel_scope.cancel()


async def closed_by_server(c: RawClient, within_s: float = 5.0) -> bool:
    """Read (without ever closing this side) until the server closes the connection."""
    with trio.move_on_after(within_s):
        while not c.eof:
            await c.pump(ack=True)
    return c.eof


async def test_an_idle_connection_gets_goaway_then_is_closed() -> None:
    app = App()
    async with serving(H2ServerParams(idle_timeout_s=0.3), app) as (server, port):
        async with RawClient.connect(port) as c:
            await c.start()
            sid = await c.request("/", port)
            assert (await c.response(sid))[:2] == (200, b"ok")
            assert await closed_by_server(c)  # this side never closes
            goaway = goaway_of(c)
            assert goaway is not None and goaway.error_code == 0 and goaway.last_stream_id == sid
        with trio.fail_after(5):
            while not server.idle:
                await trio.sleep(0.01)


async def test_a_header_block_that_stalls_is_closed_as_idle() -> None:
    """HEADERS without END_HEADERS, then nothing: no stream started, so the idle timeout closes it."""
    from hyperframe.frame import HeadersFrame

    app = App()
    async with (
        serving(H2ServerParams(idle_timeout_s=0.3), app) as (_server, port),
        RawClient.connect(port) as c,
    ):
        await c.start()
        frame = HeadersFrame(1)
        frame.data = c.header_block([(b":method", b"GET"), (b":scheme", b"http")])  # END_HEADERS unset
        await c.send_raw(frame.serialize())
        assert await closed_by_server(c)
    assert app.requests == []


async def test_a_connection_with_a_stream_in_progress_is_not_idle() -> None:
    """A stream that outlasts the idle timeout is answered on the same connection; the idle time
    counts from its end."""
    app = App(slow_s=0.8)
    async with (
        serving(H2ServerParams(idle_timeout_s=0.3), app) as (_server, port),
        RawClient.connect(port) as c,
    ):
        await c.start()
        sid = await c.request("/slow", port)
        assert (await c.response(sid))[:2] == (200, b"ok")
        assert goaway_of(c) is None
        sid2 = await c.request("/", port)  # just after a stream ended: not idle yet
        assert (await c.response(sid2))[:2] == (200, b"ok")
        assert await closed_by_server(c)
        assert goaway_of(c).last_stream_id == sid2


async def test_an_old_connection_drains_and_its_stream_in_progress_finishes() -> None:
    app = App(slow_s=0.8)
    async with serving(H2ServerParams(life_time_s=0.3), app) as (_server, port), RawClient.connect(port) as c:
        keep_open_after_goaway(c.conn)  # a client that finishes its streams after a GOAWAY
        await c.start()
        sid = await c.request("/slow", port)
        goaway = await c.until(lambda e: type(e) is h2.events.ConnectionTerminated)
        assert goaway.error_code == 0 and goaway.last_stream_id == sid
        assert (await c.response(sid))[:2] == (200, b"ok")  # finished after the GOAWAY
        assert await closed_by_server(c)
    assert app.requests == ["/slow"]


async def test_max_requests_per_connection_answers_that_many_and_refuses_the_rest() -> None:
    app = App()
    async with (
        serving(H2ServerParams(max_requests_per_connection=2), app) as (_server, port),
        RawClient.connect(port) as c,
    ):
        keep_open_after_goaway(c.conn)
        await c.start()
        # Three streams in one write: the server reads them in one batch.
        sids = [c.conn.get_next_available_stream_id()]
        headers = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]
        c.conn.send_headers(sids[0], headers, end_stream=True)
        for _ in range(2):
            sids.append(c.conn.get_next_available_stream_id())
            c.conn.send_headers(sids[-1], headers, end_stream=True)
        await c.flush()
        assert (await c.response(sids[0]))[0] == 200
        assert (await c.response(sids[1]))[0] == 200
        reset = await c.until(lambda e: type(e) is h2.events.StreamReset and e.stream_id == sids[2])
        assert reset is not None and reset.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
        assert await closed_by_server(c)
        goaway = goaway_of(c)
        assert goaway.error_code == 0 and goaway.last_stream_id == sids[1]
    assert app.requests == ["/", "/"]


async def test_without_limits_a_connection_stays_open() -> None:
    app = App()
    async with (
        serving(H2ServerParams(idle_timeout_s=None), app) as (_server, port),
        RawClient.connect(port) as c,
    ):
        await c.start()
        for _ in range(3):
            sid = await c.request("/", port)
            assert (await c.response(sid))[0] == 200
        assert not await closed_by_server(c, within_s=0.5)
        assert goaway_of(c) is None


def test_h2_server_keys_reach_the_server_params() -> None:
    cfg = load_config(
        """
routers:
- protocol: h2
  dtab: /svc => /$/inet/127.0.0.1/1;
  servers:
  - port: 0
    timeoutMs: 1500
    maxRequestsPerConnection: 7
    serverSession: {idleTimeMs: 2500, lifeTimeMs: 9000}
""",
        source="test.yaml",
    )
    router = cfg.routers[0]
    p = h2_server_params(router, router.servers[0], "h2", 1.0)
    assert (p.request_timeout_ms, p.max_requests_per_connection) == (1500, 7)
    assert (p.idle_timeout_s, p.life_time_s) == (2.5, 9.0)


@contextlib.asynccontextmanager
async def h2_router_before(handle: Any, server_keys: str) -> AsyncIterator[tuple[Running, RawClient]]:
    """A daemon with one h2 router (its server given ``server_keys``) in front of an ``H2Server`` calling
    ``handle``, and a raw h2 client connected to it (started)."""
    upstream = H2Server(handle, H2ServerParams())
    async with trio.open_nursery() as nursery:
        [(_, up)] = await nursery.start(upstream.serve)
        yaml = f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: h2
  label: h2
  dtab: /svc => /$/inet/127.0.0.1/{up};
  identifier: {{kind: io.l5d.header.path, segments: 1}}
  servers: [{{ip: 127.0.0.1, port: 0, {server_keys}}}]
"""
        async with running_daemon(yaml) as d, RawClient.connect(d.port("h2")) as c:
            await c.start()
            yield d, c
        nursery.cancel_scope.cancel()


async def test_h2_server_timeout_ms_bounds_the_request() -> None:
    """``servers[].timeoutMs`` on an h2 router: a slow upstream gets 503 timeout/request, as on
    HTTP/1.1."""
    app = App(slow_s=5.0)
    async with h2_router_before(app.handle, "timeoutMs: 300") as (d, c):
        sid = await c.request("/slow", d.port("h2"))
        with trio.fail_after(4):
            status, _body, _ = await c.response(sid)
        assert status == 503
        resp = next(e for e in c.events if type(e) is h2.events.ResponseReceived)
        assert dict(resp.headers)[b"l5d-err"].startswith(b"exceeded")


async def test_h2_request_body_stalled_past_request_body_timeout_gets_400() -> None:
    """``requestBodyTimeoutMs`` on an h2 router: a request stream whose DATA stops gets 400 naming the
    key, the upstream's stream is reset, and the connection keeps serving other streams."""
    bodies: list[bytes | str] = []

    async def upstream_handle(req: Request, info: object) -> Response:
        try:
            bodies.append(await req.body.read_all())
        except Exception as exc:  # the proxy's reset of the upstream stream
            bodies.append(type(exc).__name__)
            raise
        return Response(200, body=Body.from_bytes(b"ok"))

    async with h2_router_before(upstream_handle, "requestBodyTimeoutMs: 300") as (d, c):
        sid = await c.request("/upload", d.port("h2"), end_stream=False, method=b"POST")
        c.conn.send_data(sid, b"part")
        await c.flush()
        with trio.fail_after(5):
            status, body, _ = await c.response(sid)
        assert status == 400
        assert b"requestBodyTimeoutMs" in body
        sid2 = await c.request("/next", d.port("h2"))
        with trio.fail_after(5):
            assert (await c.response(sid2))[:2] == (200, b"ok")
    # The upstream's stream was reset (it never saw the stalled body as complete); then /next.
    assert bodies == ["StreamGone", b""]
