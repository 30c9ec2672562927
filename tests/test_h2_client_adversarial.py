"""Adversarial tests of the HTTP/2 client path: ``H2UpstreamPool``/``H2Link`` and how a
``protocol: h2`` router uses its clients (balancer, failure accrual, classifiers, timeouts, idle
connections, endpoint changes).

Everything is real and on loopback: the daemon (``tests.daemonutil.running_daemon``), upstreams
scripted with the ``h2`` library over trio sockets (``Origin`` below: each request's path picks a
script), and a raw prior-knowledge HTTP/2 client (``tests.grpc_fixtures.rawh2.RawClient``) that can
reset streams at exact points.  Pool-level tests drive ``H2UpstreamPool`` against the same origin.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import pytest
import trio

from hostproxy.h2 import H2UpstreamPool
from hostproxy.http.message import Body, Headers, Request
from hostproxy.http.upstream import PoolParams
from tests.daemonutil import curl, running_daemon
from tests.grpc_fixtures.rawh2 import RawClient

pytestmark = pytest.mark.timeout(30)

CANCEL = 0x8
REFUSED_STREAM = 0x7

Send = Callable[[], Awaitable[None]]


class Origin:
    """An h2c upstream on 127.0.0.1 scripted per request path.

    ``scripts`` maps a path to ``async def script(origin, conn, sid, body, send)``; other paths get
    ``200 ok``.  It records every request (path, body), every RST_STREAM it receives, how many
    connections were opened and how many are still open.
    """

    def __init__(
        self,
        scripts: dict[str, Callable[..., Awaitable[None]]] | None = None,
        *,
        max_streams: int | None = None,
        settings_gate: trio.Event | None = None,
    ) -> None:
        self.scripts = scripts or {}
        self.settings_gate = settings_gate  # when set: SETTINGS only once the test sets it
        self.max_streams = max_streams
        self.port = 0
        self.connections = 0
        self.open_connections = 0
        self.requests: list[tuple[str, bytes]] = []
        self.resets: list[tuple[int, int, int]] = []  # (connection, stream, error code)
        self.release = trio.Event()
        self.calls: dict[str, int] = {}

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._conn, listeners, handler_nursery=nursery)

    async def _conn(self, stream: trio.SocketStream) -> None:
        index = self.connections
        self.connections += 1
        self.open_connections += 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        if self.max_streams is not None:
            conn.local_settings = h2.settings.Settings(
                client=False,
                initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams},
            )
        conn.initiate_connection()
        lock = trio.Lock()

        async def send() -> None:
            async with lock:
                data = conn.data_to_send()
                if data:
                    await stream.send_all(data)

        heads: dict[int, str] = {}
        bodies: dict[int, bytearray] = {}
        try:
            if self.settings_gate is not None:
                await self.settings_gate.wait()
            await send()
            async with trio.open_nursery() as nursery:

                def dispatch(sid: int) -> None:
                    path = heads.pop(sid, "/")
                    body = bytes(bodies.pop(sid, b""))
                    self.requests.append((path, body))
                    self.calls[path] = self.calls.get(path, 0) + 1
                    script = self.scripts.get(path, ok_script)
                    nursery.start_soon(self._run, script, conn, sid, body, send)

                while True:
                    try:
                        data = await stream.receive_some(65536)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        break
                    if not data:
                        break
                    try:
                        events = conn.receive_data(data)
                    except h2.exceptions.ProtocolError:
                        break
                    for ev in events:
                        t = type(ev)
                        if t is h2.events.RequestReceived:
                            hd = dict(ev.headers)
                            heads[ev.stream_id] = hd.get(b":path", b"/").decode()
                            bodies[ev.stream_id] = bytearray()
                            if ev.stream_ended is not None:
                                dispatch(ev.stream_id)
                        elif t is h2.events.DataReceived:
                            if ev.stream_id in bodies:
                                bodies[ev.stream_id] += ev.data
                            if ev.flow_controlled_length:
                                with contextlib.suppress(h2.exceptions.ProtocolError):
                                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                        elif t is h2.events.StreamEnded:
                            if ev.stream_id in heads:
                                dispatch(ev.stream_id)
                        elif t is h2.events.StreamReset:
                            self.resets.append((index, ev.stream_id, int(ev.error_code)))
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        await send()
                nursery.cancel_scope.cancel()
        finally:
            self.open_connections -= 1
            with contextlib.suppress(Exception):
                await stream.aclose()

    async def _run(
        self, script: Callable[..., Awaitable[None]], conn: Any, sid: int, body: bytes, send: Send
    ) -> None:
        with contextlib.suppress(
            h2.exceptions.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, OSError
        ):
            await script(self, conn, sid, body, send)


async def ok_script(origin: Origin, conn: Any, sid: int, body: bytes, send: Send) -> None:
    conn.send_headers(sid, [(b":status", b"200")])
    conn.send_data(sid, b"ok", end_stream=True)
    await send()


async def hold_script(origin: Origin, conn: Any, sid: int, body: bytes, send: Send) -> None:
    """The head and a first chunk at once; the rest only when the test sets ``origin.release``."""
    conn.send_headers(sid, [(b":status", b"200")])
    conn.send_data(sid, b"part1;")
    await send()
    await origin.release.wait()
    conn.send_data(sid, b"part2", end_stream=True)
    await send()


async def never_script(origin: Origin, conn: Any, sid: int, body: bytes, send: Send) -> None:
    await trio.sleep_forever()


@contextlib.asynccontextmanager
async def origin_running(origin: Origin) -> AsyncIterator[Origin]:
    async with trio.open_nursery() as nursery:
        await nursery.start(origin.serve)
        yield origin
        nursery.cancel_scope.cancel()


def h2_router(dtab: str, *, client: str = "", service: str = "", namers: str = "") -> str:
    """A daemon config with one h2 router ``h2`` (``client``/``service``: flow mappings)."""
    return f"""
admin: {{ip: 127.0.0.1, port: 0}}
{namers}
routers:
- protocol: h2
  label: h2
  dtab: |
    {dtab}
{f"  client: {client}" if client else ""}
{f"  service: {service}" if service else ""}
  servers:
  - {{ip: 127.0.0.1, port: 0}}
"""


def inet(origin: Origin) -> str:
    return f"/svc => /$/inet/127.0.0.1/{origin.port};"


async def client_state(d: Any) -> dict[str, Any]:
    r = await curl(f"{d.admin}/client_state.json", timeout=10)
    assert r.status == 200, r
    state = r.json()
    assert isinstance(state, dict)
    return state


async def endpoint_state(d: Any, origin: Origin) -> dict[str, Any]:
    state = await client_state(d)
    client = state[f"/$/inet/127.0.0.1/{origin.port}"]
    return client["endpoints"][f"127.0.0.1:{origin.port}"]  # type: ignore[no-any-return]


async def metrics(d: Any) -> dict[str, Any]:
    r = await curl(f"{d.admin}/admin/metrics.json", timeout=10)
    assert r.status == 200, r
    return r.json()  # type: ignore[return-value]


async def wait_for(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.01)


async def head_of(c: RawClient, sid: int) -> list[tuple[bytes, bytes]]:
    ev = await c.until(lambda e: type(e) is h2.events.ResponseReceived and e.stream_id == sid)
    assert ev is not None, "the connection ended before the response head"
    return list(ev.headers)


def get(path: str) -> Request:
    return Request("GET", path, Headers([(b"host", b"origin")]), Body.empty())


# -- streams released ------------------------------------------------------------------------------


async def test_response_body_closed_early_releases_the_upstream_stream() -> None:
    """A caller that stops reading a response (closes its body) resets the upstream stream; the
    stream must then leave the connection's books: not in use, the connection idle and able to
    carry the upstream's MAX_CONCURRENT_STREAMS again (here 1), on the same connection."""
    origin = Origin({"/hold": hold_script}, max_streams=1)
    async with origin_running(origin), trio.open_nursery() as nursery:
        pool = H2UpstreamPool("127.0.0.1", origin.port, PoolParams(), nursery=nursery)
        resp = await pool.request(get("/hold"))
        assert resp.status == 200
        assert await resp.body.__anext__() == b"part1;"
        await resp.body.aclose()
        await wait_for(lambda: any(code == CANCEL for _, _, code in origin.resets))
        await trio.sleep(0.05)
        stats = pool.statistics()
        assert stats["in_use"] == 0, stats
        assert stats["idle"] == 1, stats
        # The upstream allows one stream per connection: the next request fits on the same one.
        resp = await pool.request(get("/next"))
        assert resp.status == 200 and await resp.body.read_all() == b"ok"
        assert pool.statistics()["connects"] == 1, pool.statistics()
        await pool.aclose()
        nursery.cancel_scope.cancel()


async def test_downstream_reset_mid_response_is_not_a_failure_of_the_endpoint() -> None:
    """A caller that resets its stream while the response body streams (a gRPC client cancelling a
    server-streaming call) is the caller's doing: README, failure accrual: "A request cut off
    without an answer (... the caller gone) does not count".  Five such cancels (the default
    consecutiveFailures) must not mark a healthy endpoint dead."""
    origin = Origin({"/hold": hold_script})
    async with origin_running(origin), running_daemon(h2_router(inet(origin))) as d:
        async with RawClient.connect(d.port("h2")) as c:
            await c.start()
            for i in range(5):
                sid = await c.request("/hold", d.port("h2"))
                head = dict(await head_of(c, sid))
                assert head[b":status"] == b"200"
                c.conn.reset_stream(sid, error_code=CANCEL)
                await c.flush()
                await wait_for(lambda i=i: len(origin.resets) > i)
            assert all(code == CANCEL for _, _, code in origin.resets)
        ep = await endpoint_state(d, origin)
        assert ep["accrual"] == "alive", ep
        m = await metrics(d)
        removals = [v for k, v in m.items() if k.endswith("failure_accrual/removals")]
        assert removals in ([], [0]), removals


async def head_then_trailers(origin: Origin, conn: Any, sid: int, body: bytes, send: Send) -> None:
    """A gRPC error after the response head: HEADERS, then trailers with END_STREAM, no DATA,
    written together (as servers that send headers before failing a call do)."""
    conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    conn.send_headers(sid, [(b"grpc-status", b"5"), (b"grpc-message", b"no such thing")], end_stream=True)
    await send()


async def test_trailers_that_arrive_with_the_head_are_passed_on() -> None:
    """Response trailers that follow the head with no DATA between (in the same read) must reach
    the caller: they carry the gRPC status.  Losing them turns NOT_FOUND into a 200 without a
    grpc-status, which gRPC clients report as an internal error."""
    origin = Origin({"/pkg.Svc/Get": head_then_trailers})
    async with origin_running(origin), running_daemon(h2_router(inet(origin))) as d:  # noqa: SIM117
        async with RawClient.connect(d.port("h2")) as c:
            await c.start()
            sid = await c.request(
                "/pkg.Svc/Get", d.port("h2"), method=b"POST", extra=[(b"content-type", b"application/grpc")]
            )
            with trio.fail_after(5):
                status, body, trailers = await c.response(sid)
            head = dict(await head_of(c, sid))
    assert status == 200 and body == b""
    fields = dict(trailers or []) | head
    assert fields.get(b"grpc-status") == b"5", (head, trailers)
    assert fields.get(b"grpc-message") == b"no such thing", (head, trailers)


async def test_trailers_right_after_the_head_reach_the_pool_caller() -> None:
    """The same at the pool: ``Response.body.trailers`` after reading the (empty) body."""
    origin = Origin({"/t": head_then_trailers})
    async with origin_running(origin), trio.open_nursery() as nursery:
        pool = H2UpstreamPool("127.0.0.1", origin.port, PoolParams(), nursery=nursery)
        resp = await pool.request(get("/t"))
        assert resp.status == 200
        assert await resp.body.read_all() == b""
        trailers = resp.body.trailers
        assert trailers is not None and trailers.get(b"grpc-status") == b"5", trailers
        await pool.aclose()
        nursery.cancel_scope.cancel()


# -- idle connections ------------------------------------------------------------------------------


async def test_idle_upstream_connection_is_closed_after_client_session_idle_time() -> None:
    """``clientSession.idleTimeMs`` (the pool's idle timeout; 30 s by default): an h2 upstream
    connection that carried no stream for that long is closed.  Nothing runs the h2 pool's
    ``prune()``, so it stays open forever (kept alive by PINGs)."""
    origin = Origin()
    async with (
        origin_running(origin),
        running_daemon(h2_router(inet(origin), client="{clientSession: {idleTimeMs: 200}}")) as d,
        RawClient.connect(d.port("h2")) as c,
    ):
        await c.start()
        sid = await c.request("/", d.port("h2"))
        assert (await c.response(sid))[:2] == (200, b"ok")
        assert origin.open_connections == 1
        with trio.move_on_after(3):
            while origin.open_connections:
                await trio.sleep(0.05)
        assert origin.open_connections == 0, "idle h2 upstream connection still open after 3 s"
        ep = await endpoint_state(d, origin)
        assert ep["pool"]["open"] == 0, ep
        # A later request opens a fresh connection and succeeds.
        sid = await c.request("/", d.port("h2"))
        assert (await c.response(sid))[:2] == (200, b"ok")
        assert origin.connections == 2


# -- classifiers -----------------------------------------------------------------------------------

GRPC_REQ = [(b"content-type", b"application/grpc"), (b"te", b"trailers"), (b"content-length", b"5")]
GRPC_MSG = b"\x00\x00\x00\x00\x00"


async def grpc_call(
    c: RawClient, port: int, path: str, *, extra: list[tuple[bytes, bytes]] = GRPC_REQ
) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    """One unary gRPC call: (head, trailers) of its response (a trailers-only response: both the head)."""
    sid = await c.request(path, port, method=b"POST", end_stream=False, extra=list(extra))
    c.conn.send_data(sid, GRPC_MSG, end_stream=True)
    await c.flush()
    with trio.fail_after(5):
        status, _body, trailers = await c.response(sid)
    head = dict(await head_of(c, sid))
    assert status == 200, (status, head)
    return head, dict(trailers) if trailers is not None else head


async def unavailable_then_ok(origin: Origin, conn: Any, sid: int, body: bytes, send: Send) -> None:
    """The first call answers trailers-only grpc-status 14 UNAVAILABLE; later ones succeed."""
    if origin.calls["/pkg.Svc/Flaky"] == 1:
        conn.send_headers(
            sid,
            [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"14")],
            end_stream=True,
        )
    else:
        conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
        conn.send_data(sid, GRPC_MSG)
        conn.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
    await send()


async def test_grpc_default_classifier_retries_unavailable() -> None:
    """``io.l5d.h2.grpc.default``: grpc-status 14 UNAVAILABLE is a retryable failure, so the call is
    sent again (its 5-byte body has a Content-Length and fits the retry buffer) and succeeds.
    The router classifies with ``grpc_status=None``, so every gRPC answer is judged by its HTTP
    status (200: success) and nothing is ever retried."""
    origin = Origin({"/pkg.Svc/Flaky": unavailable_then_ok})
    async with (
        origin_running(origin),
        running_daemon(
            h2_router(inet(origin), service="{responseClassifier: {kind: io.l5d.h2.grpc.default}}")
        ) as d,
        RawClient.connect(d.port("h2")) as c,
    ):
        await c.start()
        head, trailers = await grpc_call(c, d.port("h2"), "/pkg.Svc/Flaky")
    assert origin.calls["/pkg.Svc/Flaky"] == 2, origin.requests
    assert trailers.get(b"grpc-status") == b"0", (head, trailers)
    assert [body for _, body in origin.requests] == [GRPC_MSG, GRPC_MSG]


async def failing_call(origin: Origin, conn: Any, sid: int, body: bytes, send: Send) -> None:
    """A streamed answer whose trailers say grpc-status 2 UNKNOWN."""
    conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    conn.send_data(sid, GRPC_MSG)
    conn.send_headers(sid, [(b"grpc-status", b"2"), (b"grpc-message", b"boom")], end_stream=True)
    await send()


async def test_grpc_failure_is_labelled_and_counted_against_the_endpoint() -> None:
    """With ``io.l5d.h2.grpc.neverRetryable`` a grpc-status 2 answer is a failure: Linkerd puts
    ``l5d-success-class: 0.0`` on it (h2: in the trailers when streaming), and failure accrual,
    which uses the response classifier, marks the endpoint dead after 5 of them in a row."""
    origin = Origin({"/pkg.Svc/Fail": failing_call})
    async with (
        origin_running(origin),
        running_daemon(
            h2_router(inet(origin), service="{responseClassifier: {kind: io.l5d.h2.grpc.neverRetryable}}")
        ) as d,
    ):
        async with RawClient.connect(d.port("h2")) as c:
            await c.start()
            for _ in range(5):
                head, trailers = await grpc_call(c, d.port("h2"), "/pkg.Svc/Fail")
                assert trailers.get(b"grpc-status") == b"2"
                assert (trailers | head).get(b"l5d-success-class") == b"0.0", (head, trailers)
        assert origin.calls["/pkg.Svc/Fail"] == 5
        ep = await endpoint_state(d, origin)
        assert ep["accrual"] == "dead", ep


async def status_503_then_ok(origin: Origin, conn: Any, sid: int, body: bytes, send: Send) -> None:
    status = b"503" if origin.calls["/retry"] == 1 else b"200"
    conn.send_headers(sid, [(b":status", status)])
    conn.send_data(sid, b"got:" + body, end_stream=True)
    await send()


async def test_small_streamed_request_fits_the_retry_buffer_and_is_retried() -> None:
    """h2 ``retryBufferSize.requestBytes`` (16383): a stream whose body fits the buffer can be
    retried whether or not it declares a Content-Length (gRPC clients do not).  A 5-byte POST
    without Content-Length answered 503 under ``retryableAll5XX`` is sent again (the router buffers
    only bodies with a known Content-Length, ``buffer_body_for_retry``)."""
    origin = Origin({"/retry": status_503_then_ok})
    async with (
        origin_running(origin),
        running_daemon(
            h2_router(inet(origin), service="{responseClassifier: {kind: io.l5d.http.retryableAll5XX}}")
        ) as d,
        RawClient.connect(d.port("h2")) as c,
    ):
        await c.start()
        sid = await c.request("/retry", d.port("h2"), method=b"POST", end_stream=False)
        c.conn.send_data(sid, b"hello", end_stream=True)
        await c.flush()
        with trio.fail_after(5):
            status, body, _ = await c.response(sid)
    assert (status, body) == (200, b"got:hello"), (status, body, origin.requests)
    assert origin.requests == [("/retry", b"hello"), ("/retry", b"hello")]


@pytest.mark.parametrize(
    "kind",
    [
        "io.l5d.h2.nonRetryable5XX",
        "io.l5d.h2.retryableRead5XX",
        "io.l5d.h2.retryableIdempotent5XX",
        "io.l5d.h2.retryableAll5XX",
        "io.l5d.h2.allSuccessful",
        "io.l5d.h2.grpc.compliant",
    ],
)
def test_linkerd_h2_classifier_kinds_load(kind: str) -> None:
    """Linkerd 1's h2 classifiers (``io.l5d.h2.*``: the five HTTP ones under h2 names, and
    ``io.l5d.h2.grpc.compliant``) are valid ``responseClassifier`` kinds of an h2 router; the
    classifier module even builds the first five, but the config registry rejects them."""
    from hostproxy.classifier import classifier_from_config
    from hostproxy.config import load_config

    text = h2_router("/svc => /$/inet/127.0.0.1/1;", service=f"{{responseClassifier: {{kind: {kind}}}}}")
    cfg = load_config(text, source="test.yaml")
    assert cfg.routers[0].kind == "h2"
    assert classifier_from_config({"kind": kind}).kind == kind


# -- timeouts --------------------------------------------------------------------------------------


async def test_attempt_timeout_is_503_and_cancels_the_upstream_stream() -> None:
    """``requestAttemptTimeoutMs`` on an h2 client: 503 with ``l5d-err`` (cause timeout/attempt),
    the upstream stream reset with CANCEL, and no stream left in use on the connection."""
    origin = Origin({"/never": never_script})
    async with (
        origin_running(origin),
        running_daemon(h2_router(inet(origin), client="{requestAttemptTimeoutMs: 300}")) as d,
    ):
        async with RawClient.connect(d.port("h2")) as c:
            await c.start()
            sid = await c.request("/never", d.port("h2"))
            with trio.fail_after(5):
                status, body, _ = await c.response(sid)
            head = dict(await head_of(c, sid))
            assert status == 503, (status, body)
            assert b"l5d-err" in head and b"requestAttemptTimeoutMs" in body, (head, body)
            await wait_for(lambda: [code for _, _, code in origin.resets] == [CANCEL])
            ep = await endpoint_state(d, origin)
            assert ep["pool"]["in_use"] == 0 and ep["pool"]["open"] == 1, ep
        m = await metrics(d)
        assert any(k.endswith("failures/timeout/attempt") and v == 1 for k, v in m.items()), {
            k: v for k, v in m.items() if "failures" in k
        }


async def test_total_timeout_is_503_not_counted_against_the_endpoint() -> None:
    """``totalTimeoutMs`` on an h2 service: 503, the upstream stream reset, and (a request cut off
    without an answer) no failure counted by accrual: five of them leave the endpoint alive."""
    origin = Origin({"/never": never_script})
    async with (
        origin_running(origin),
        running_daemon(h2_router(inet(origin), service="{totalTimeoutMs: 200}")) as d,
    ):
        async with RawClient.connect(d.port("h2")) as c:
            await c.start()
            for i in range(5):
                sid = await c.request("/never", d.port("h2"))
                with trio.fail_after(5):
                    status, body, _ = await c.response(sid)
                assert status == 503 and b"totalTimeoutMs" in body, (status, body)
                await wait_for(lambda i=i: len(origin.resets) > i)
        ep = await endpoint_state(d, origin)
        assert ep["accrual"] == "alive" and ep["pool"]["in_use"] == 0, ep


# -- endpoint set changes --------------------------------------------------------------------------


async def test_stream_in_flight_finishes_when_its_endpoint_leaves_the_set(tmp_path: Path) -> None:
    """An endpoint removed by the namer while a response streams from it: as with HTTP/1.1 pools
    ("in-flight ones finish"), the stream in flight completes; only new requests go elsewhere.
    ``H2UpstreamPool.aclose`` GOAWAYs and stops every connection at once, cutting it."""
    a = Origin({"/hold": hold_script})
    b = Origin()
    disco = tmp_path / "disco"
    disco.mkdir()
    namers = f"namers:\n- kind: io.l5d.fs\n  rootDir: {disco}\n"
    async with origin_running(a), origin_running(b):
        (disco / "web").write_text(f"127.0.0.1 {a.port}\n")
        async with running_daemon(h2_router("/svc => /#/io.l5d.fs/web;", namers=namers)) as d:  # noqa: SIM117
            async with RawClient.connect(d.port("h2")) as c:
                await c.start()
                sid = await c.request("/hold", d.port("h2"))
                assert dict(await head_of(c, sid))[b":status"] == b"200"
                await c.until(lambda e: type(e) is h2.events.DataReceived and e.stream_id == sid)
                (disco / "web").write_text(f"127.0.0.1 {b.port}\n")

                async def only_b() -> bool:
                    st = await client_state(d)
                    return list(st["/#/io.l5d.fs/web"]["endpoints"]) == [f"127.0.0.1:{b.port}"]

                with trio.fail_after(5):
                    while not await only_b():
                        await trio.sleep(0.05)
                await trio.sleep(0.2)
                a.release.set()
                with trio.fail_after(5):
                    status, body, _ = await c.response(sid)
                assert (status, body) == (200, b"part1;part2"), (status, body, a.resets)
                sid = await c.request("/", d.port("h2"))
                assert (await c.response(sid))[:2] == (200, b"ok")
                assert b.requests == [("/", b"")]


# -- resends and metrics ---------------------------------------------------------------------------


async def refuse_first(origin: Origin, conn: Any, sid: int, body: bytes, send: Send) -> None:
    """The first stream is refused (RST_STREAM REFUSED_STREAM: not processed); later ones answered
    with the body they carried."""
    if origin.calls["/post"] == 1:
        conn.reset_stream(sid, error_code=REFUSED_STREAM)
    else:
        conn.send_headers(sid, [(b":status", b"200")])
        conn.send_data(sid, b"got:" + body, end_stream=True)
    await send()


async def test_refused_stream_is_sent_again_once_with_its_body() -> None:
    """REFUSED_STREAM before a response: the request (body included) is sent again on the pool's
    own, once, and the caller sees one answer; nothing is counted against the endpoint."""
    origin = Origin({"/post": refuse_first})
    async with origin_running(origin), running_daemon(h2_router(inet(origin))) as d:
        async with RawClient.connect(d.port("h2")) as c:
            await c.start()
            sid = await c.request("/post", d.port("h2"), method=b"POST", end_stream=False)
            c.conn.send_data(sid, b"payload", end_stream=True)
            await c.flush()
            with trio.fail_after(5):
                status, body, _ = await c.response(sid)
        assert (status, body) == (200, b"got:payload")
        assert origin.requests == [("/post", b"payload"), ("/post", b"payload")]
        ep = await endpoint_state(d, origin)
        assert ep["pool"]["resent"] == 1 and ep["pool"]["connects"] == 1, ep
        assert ep["accrual"] == "alive", ep


async def test_pool_size_counts_the_connection_being_opened() -> None:
    """README, Clients: ``pool_size`` is the connections "open or opening", summed over the
    client's endpoints.  While an h2 connect waits for the upstream's SETTINGS, the h2 client's
    pool_size must be 1 (the h2 pool reports no ``opening``, so it reads 0)."""
    gate = trio.Event()
    origin = Origin(settings_gate=gate)
    async with (
        origin_running(origin),
        running_daemon(h2_router(inet(origin), client="{connectTimeoutMs: 5000}")) as d,
    ):
        async with RawClient.connect(d.port("h2")) as c:
            await c.start()
            sid = await c.request("/", d.port("h2"))
            await wait_for(lambda: origin.connections == 1)
            m = await metrics(d)
            sizes = {k: v for k, v in m.items() if k.endswith("/pool_size") and str(origin.port) in k}
            gate.set()
            with trio.fail_after(5):
                assert (await c.response(sid))[:2] == (200, b"ok")
        assert list(sizes.values()) == [1], sizes
