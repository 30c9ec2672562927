"""Adversarial tests of the HTTP/2 server side: what a client can make one connection hold, how a
malformed request is refused, and what a client speaking the wrong protocol is told.

Real servers on loopback, real clients (raw frames through the ``h2`` library and hyperframe, curl).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from urllib.parse import unquote_plus

import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest
import trio

from hostproxy.h2 import H2Server, H2ServerParams
from hostproxy.http.message import Body, Headers, Request, Response
from hostproxy.http.server import Http1Server
from tests.daemonutil import curl
from tests.grpc_fixtures.rawh2 import RawClient

pytestmark = pytest.mark.timeout(60)


async def echo_target(req: Request, _info: object) -> Response:
    """An origin whose response carries a header made from the request's target (unique per request)."""
    await req.body.read_all()
    return Response(
        200,
        headers=Headers([(b"x-target", req.target.encode() * 4)]),
        body=Body.from_bytes(b"ok"),
    )


@contextlib.asynccontextmanager
async def serving(
    handler: object, params: H2ServerParams | None = None, *, http1: bool = False
) -> AsyncIterator[int]:
    server: H2Server | Http1Server = (
        Http1Server(handler) if http1 else H2Server(handler, params or H2ServerParams())  # type: ignore[arg-type]
    )
    async with trio.open_nursery() as nursery:
        [(_, port)] = await nursery.start(server.serve)
        yield port
        nursery.cancel_scope.cancel()


# -- HPACK state a client can make the server hold ------------------------------------------------


async def test_a_client_advertising_a_huge_header_table_does_not_make_the_server_keep_its_headers() -> None:
    """A client may advertise SETTINGS_HEADER_TABLE_SIZE up to 4 GiB. The server's encoder keeps each
    distinct field it sends in that table, so without a cap a long-lived connection whose responses
    carry distinct values (request ids, echoes, dates) grows without bound. The client's decoder
    mirrors the server's encoder table exactly, so its size is what the server holds."""
    async with serving(echo_target) as port, RawClient.connect(port) as c:
        huge = 1 << 30
        c.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.HEADER_TABLE_SIZE: huge}
        )
        c.conn.decoder.max_allowed_table_size = huge
        await c.start()
        for i in range(300):
            sid = await c.request(f"/distinct-{i:05d}", port)
            status, body, _ = await c.response(sid)
            assert (status, body) == (200, b"ok")
        table = c.conn.decoder.header_table
        assert table.maxsize <= 4096, table.maxsize
        assert table._current_size <= 4096, table._current_size


# -- a malformed request is an error of its own stream, not of the connection -----------------------


class Held:
    """An origin that holds ``/held`` until released, and answers anything else with what it read."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.held = trio.Event()
        self.trailers: list[object] = []

    async def handle(self, req: Request, _info: object) -> Response:
        if req.target == "/held":
            self.held.set()
            await self.release.wait()
            return Response(200, body=Body.from_bytes(b"held"))
        body = await req.body.read_all()
        self.trailers.append(req.body.trailers)
        return Response(200, body=Body.from_bytes(b"read %d" % len(body)))


def lax(c: RawClient) -> None:
    """Let ``c``'s h2 send what it would refuse to (the malformed requests under test)."""
    c.conn.config.validate_outbound_headers = False
    c.conn.config.normalize_outbound_headers = False


async def send_request(
    c: RawClient,
    port: int,
    extra: list[tuple[bytes, bytes]],
    *,
    path: bytes | None = b"/bad",
    end_stream: bool = True,
) -> int:
    fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", f"127.0.0.1:{port}".encode())]
    if path is not None:
        fields.append((b":path", path))
    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(sid, fields + extra, end_stream=end_stream)
    await c.flush()
    return sid


MALFORMED: dict[str, tuple[list[tuple[bytes, bytes]], bytes | None]] = {
    "uppercase name": ([(b"X-Upper", b"1")], b"/bad"),
    "connection header": ([(b"connection", b"keep-alive")], b"/bad"),
    "transfer-encoding": ([(b"transfer-encoding", b"chunked")], b"/bad"),
    "te other than trailers": ([(b"te", b"gzip")], b"/bad"),
    "missing :path": ([], None),
    # Not origin form: forwarded as it was, an upstream (or the path identifier) read it otherwise.
    ":path in absolute form": ([], b"http://elsewhere/x"),
    ":path * for a POST": ([], b"*"),
    # Bytes a request target may not hold raw (the HTTP/1.1 server refuses them too).
    ":path with an escape character": ([], b"/a\x1b[2Jb"),
    ":path with a space": ([], b"/a b"),
    ":path with DEL": ([], b"/a\x7f"),
    ":path with raw non-ASCII": ([], "/café".encode()),
}


async def test_a_path_byte_that_must_be_encoded_is_named_with_its_offset() -> None:
    app = Held()
    async with serving(app.handle) as port, RawClient.connect(port) as c:
        lax(c)
        await c.start()
        sid = await send_request(c, port, [], path=b"/logs/\x1b]0;x\x07")
        bad = await c.until(lambda e: getattr(e, "stream_id", None) == sid, ack=True)
        assert type(bad) is h2.events.ResponseReceived, (bad, c.events)
        err = unquote_plus(dict(bad.headers)[b"l5d-err"].decode())
        assert "byte 0x1b at offset 6" in err and "percent-encode it" in err, err


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_a_malformed_request_fails_its_stream_and_the_connection_keeps_serving(case: str) -> None:
    """RFC 9113 §8.1.1: a malformed request is a stream error. h2 raised it as a connection error,
    so one bad request (from any of the callers a client multiplexes on one connection) failed
    every stream in flight on it with GOAWAY PROTOCOL_ERROR."""
    extra, path = MALFORMED[case]
    app = Held()
    async with serving(app.handle) as port, RawClient.connect(port) as c:
        lax(c)
        await c.start()
        held = await c.request("/held", port)
        await app.held.wait()
        sid = await send_request(c, port, extra, path=path)
        bad = await c.until(lambda e: getattr(e, "stream_id", None) == sid, ack=True)
        assert type(bad) is h2.events.ResponseReceived, (bad, c.events)
        head = dict(bad.headers)
        assert head[b":status"] == b"400"
        assert b"malformed" in head[b"l5d-err"], head
        # The stream in flight is answered, and the connection takes new streams.
        app.release.set()
        assert await c.response(held) == (200, b"held", None)
        nxt = await c.request("/next", port)
        assert await c.response(nxt) == (200, b"read 0", None)
        assert not [e for e in c.events if type(e) is h2.events.ConnectionTerminated]


async def test_request_data_longer_than_its_content_length_resets_only_that_stream() -> None:
    app = Held()
    async with serving(app.handle) as port, RawClient.connect(port) as c:
        lax(c)
        await c.start()
        held = await c.request("/held", port)
        await app.held.wait()
        sid = await send_request(c, port, [(b"content-length", b"3")], end_stream=False)
        c.conn.send_data(sid, b"more than three", end_stream=True)
        await c.flush()
        reset = await c.until(lambda e: type(e) is h2.events.StreamReset and e.stream_id == sid)
        assert reset is not None and reset.error_code == 1, c.events  # PROTOCOL_ERROR
        app.release.set()
        assert await c.response(held) == (200, b"held", None)
        nxt = await c.request("/next", port)
        assert await c.response(nxt) == (200, b"read 0", None)
        assert not [e for e in c.events if type(e) is h2.events.ConnectionTerminated]


async def test_trailers_with_a_pseudo_header_reset_only_that_stream() -> None:
    """Trailers may not carry pseudo-header fields; such a stream is reset, others go on (and the
    field never reaches the handler)."""
    app = Held()
    async with serving(app.handle) as port, RawClient.connect(port) as c:
        lax(c)
        await c.start()
        held = await c.request("/held", port)
        await app.held.wait()
        sid = await send_request(c, port, [], end_stream=False)
        c.conn.send_data(sid, b"abc")
        c.conn.send_headers(sid, [(b":path", b"/smuggled")], end_stream=True)
        await c.flush()
        reset = await c.until(lambda e: type(e) is h2.events.StreamReset and e.stream_id == sid)
        assert reset is not None and reset.error_code == 1, c.events
        app.release.set()
        assert await c.response(held) == (200, b"held", None)
        assert not [e for e in c.events if type(e) is h2.events.ConnectionTerminated]
        assert app.trailers == []


async def overflow_window(c: RawClient, port: int) -> None:
    """A request, then a WINDOW_UPDATE that overflows its stream's send window (h2 resets it)."""
    from hyperframe.frame import WindowUpdateFrame

    sid = await c.request("/held", port)  # held: the server's reset comes before any response
    await c.send_raw(WindowUpdateFrame(sid, window_increment=2**31 - 1).serialize())


async def data_past_content_length(c: RawClient, port: int) -> None:
    sid = await send_request(c, port, [(b"content-length", b"1")], end_stream=False)
    c.conn.send_data(sid, b"too long", end_stream=True)
    await c.flush()


@pytest.mark.parametrize("provoke", [data_past_content_length, overflow_window], ids=lambda f: f.__name__)
async def test_resets_provoked_by_the_client_spend_the_rapid_reset_budget(provoke: object) -> None:
    """MadeYouReset (CVE-2025-8671): instead of resetting streams itself, a client makes the server
    reset them (DATA past the content-length, a WINDOW_UPDATE overflowing the stream's window). Each
    such stream had started its work, so these resets spend the same budget as the client's own;
    past it the connection gets GOAWAY ENHANCE_YOUR_CALM instead of churning requests without end."""
    app = Held()
    params = H2ServerParams(reset_burst=20, reset_rate_per_s=0.001)
    async with serving(app.handle, params) as port, RawClient.connect(port) as c:
        lax(c)
        await c.start()
        for _ in range(200):
            if c.eof or [e for e in c.events if type(e) is h2.events.ConnectionTerminated]:
                break
            try:
                await provoke(c, port)  # type: ignore[operator]
            except (h2.exceptions.ProtocolError, trio.BrokenResourceError, OSError):
                break
            with trio.move_on_after(0.05):
                await c.pump(ack=True)
        ev = None
        with trio.move_on_after(20):  # a bound for the poll, not a timing assertion
            ev = await c.until(lambda e: type(e) is h2.events.ConnectionTerminated)
        assert ev is not None and ev.error_code == 0xB, c.events[-5:]  # ENHANCE_YOUR_CALM
        assert b"Rapid Reset" in (ev.additional_data or b"")


async def test_a_header_list_past_the_limit_gets_431_and_the_connection_keeps_serving() -> None:
    """Documented: header lists past maxHeaderListByts get 431. But hpack's decoder had the same
    limit and raised past it, which h2 made a connection error (GOAWAY ENHANCE_YOUR_CALM): one
    request with a large cookie or token failed every stream in flight on its connection."""
    app = Held()
    async with serving(app.handle) as port, RawClient.connect(port) as c:
        await c.start()
        held = await c.request("/held", port)
        await app.held.wait()
        big = await c.request("/big", port, extra=[(b"x-token", b"t" * 70000)])
        ev = await c.until(lambda e: getattr(e, "stream_id", None) == big)
        assert type(ev) is h2.events.ResponseReceived, c.events
        head = dict(ev.headers)
        assert head[b":status"] == b"431"
        assert b"more+than+the+limit+of+65536" in head[b"l5d-err"], head
        app.release.set()
        assert await c.response(held) == (200, b"held", None)
        assert not [e for e in c.events if type(e) is h2.events.ConnectionTerminated]


async def test_the_header_field_cap_counts_fields_as_http1_does() -> None:
    """At most 100 fields, "as in requests" on HTTP/1.1, where the request line is not a field. The
    h2 server counted the four pseudo-header fields too, so a request with 97 to 100 fields that
    passes over HTTP/1.1 got 431 over HTTP/2."""
    async with serving(echo_target) as port, RawClient.connect(port) as c:
        await c.start()
        sid = await c.request("/fields", port, extra=[(f"x-f{i}".encode(), b"v") for i in range(100)])
        status, body, _ = await c.response(sid)
        assert (status, body) == (200, b"ok")
        sid = await c.request("/fields", port, extra=[(f"x-f{i}".encode(), b"v") for i in range(101)])
        status, _, _ = await c.response(sid)
        assert status == 431


async def cookie_echo(req: Request, _info: object) -> Response:
    cookies = [v for n, v in req.headers.items() if n == b"cookie"]
    return Response(200, body=Body.from_bytes(b"|".join(cookies)))


async def test_cookie_crumbs_count_in_the_header_list_size_but_not_in_the_field_count() -> None:
    """HTTP/2 clients split a cookie into crumbs, which h2 joined into one field before the limits
    were checked: each crumb's 32-octet overhead went uncounted (the "HTTP/2 Bomb" uses crumbs), so
    a header list far past maxHeaderListByts passed. The crumbs count in the size now; the field
    count still sees one cookie field, as HTTP/1.1 would (browsers send many crumbs)."""
    async with serving(cookie_echo) as port, RawClient.connect(port) as c:
        await c.start()
        crumbs = [(b"cookie", b"c%d=1" % i) for i in range(150)]
        sid = await c.request("/", port, extra=crumbs)
        status, body, _ = await c.response(sid)
        assert status == 200
        assert body == b"; ".join(v for _, v in crumbs)  # one field again, crumbs in order
        # 2,000 crumbs: about 24 KB joined, 96 KB as the list was sent (32 octets per crumb).
        sid = await c.request("/", port, extra=[(b"cookie", b"k%05d=val" % i) for i in range(2000)])
        status, _, _ = await c.response(sid)
        assert status == 431


# -- gRPC clients read why the proxy refused a call ----------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ([(f"x-field-{i}", "v") for i in range(120)], "header fields, more than the limit"),
        ([("via", ", ".join(["1.1 loop"] * 1001))], "Maximum number of calls"),
    ],
    ids=["too-many-fields", "proxy-loop"],
)
async def test_a_grpc_call_refused_by_the_server_gets_a_grpc_status_with_the_reason(
    metadata: list[tuple[str, str]], reason: str
) -> None:
    """The 431 (header-field limit) and the 400 (Via loop) the server makes before routing went out
    as bare HTTP statuses, which grpcio reports as UNKNOWN/INTERNAL "Received http2 header with
    status: 431" with no reason; every other proxy-made error is a trailers-only grpc-status."""
    import grpc

    from tests.grpc_fixtures import EchoClient, GrpcTestServer
    from tests.grpc_fixtures.h2proxy import running_h2_proxy

    with GrpcTestServer() as upstream:
        async with running_h2_proxy(upstream.port) as proxy:
            client = EchoClient(f"127.0.0.1:{proxy.port}")
            try:
                with pytest.raises(grpc.RpcError) as err:
                    await trio.to_thread.run_sync(lambda: client.unary(b"x", timeout=10, metadata=metadata))
            finally:
                client.close()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert reason in (err.value.details() or ""), err.value.details()


async def test_a_grpc_stream_whose_upstream_connection_dies_ends_unavailable_with_the_reason() -> None:
    """The upstream answered a server-streaming call, sent one message, then its connection closed.
    The proxy knew why (the connection to it failed) but reset the stream with INTERNAL_ERROR,
    which grpcio reports as INTERNAL "Received RST_STREAM with error code 2"; a gRPC client talking
    to that upstream directly would see UNAVAILABLE. The response now ends with trailers carrying
    grpc-status 14 and the reason."""
    import grpc

    from tests.grpc_fixtures.h2proxy import running_h2_proxy
    from tests.grpc_fixtures.rawh2 import ScriptedUpstream, read_events

    async def answer_then_drop(_i: int, conn: h2.connection.H2Connection, stream: trio.SocketStream) -> None:
        while True:
            events = await read_events(conn, stream)
            if not events:
                return
            for ev in events:
                if type(ev) is h2.events.RequestReceived:
                    conn.send_headers(
                        ev.stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")]
                    )
                    conn.send_data(ev.stream_id, b"\x00\x00\x00\x00\x02hi")
                    await stream.send_all(conn.data_to_send())
                    return  # the connection closes mid-response

    upstream = ScriptedUpstream(answer_then_drop)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(upstream.serve)
        async with running_h2_proxy(port) as proxy:
            channel = grpc.insecure_channel(f"127.0.0.1:{proxy.port}")
            messages: list[bytes] = []

            def call() -> grpc.RpcError:
                try:
                    for m in channel.unary_stream("/test.Echo/ServerStream")(b"x", timeout=10):
                        messages.append(m)
                except grpc.RpcError as exc:
                    return exc
                raise AssertionError("the call succeeded")

            try:
                err = await trio.to_thread.run_sync(call)
            finally:
                channel.close()
        nursery.cancel_scope.cancel()
    assert messages == [b"hi"]
    assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
    assert f"connection to 127.0.0.1:{port} failed" in (err.details() or ""), err.details()


async def test_a_protocol_error_gets_one_goaway_that_says_why() -> None:
    """h2 queued a GOAWAY with no debug data before raising, and the link then sent a second one
    with the reason. Clients act on the first GOAWAY (grpc-core reports its debug data and closes),
    so the reason never reached them."""
    from hyperframe.frame import DataFrame, GoAwayFrame, SettingsFrame

    from tests.grpc_fixtures.rawh2 import PREFACE, read_frames_until_closed

    async with serving(echo_target) as port, RawClient.connect(port) as c:
        # DATA on stream 0: a connection error (RFC 9113 §6.1).
        bad = bytearray(DataFrame(1, data=b"x").serialize())
        bad[5:9] = b"\x00\x00\x00\x00"
        await c.send_raw(PREFACE + SettingsFrame(0).serialize() + bytes(bad))
        frames = await read_frames_until_closed(c.stream)
    goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert len(goaways) == 1, goaways
    assert goaways[0].error_code == 1  # PROTOCOL_ERROR
    assert goaways[0].additional_data, goaways[0]


# -- the wrong protocol on a port: a clear answer, and h2c upgrade ----------------------------------


async def echo_request(req: Request, _info: object) -> Response:
    body = await req.body.read_all()
    seen = f"{req.method} {req.target} {req.authority} {body.decode()}"
    return Response(
        200, headers=Headers([(b"content-type", b"text/plain")]), body=Body.from_bytes(seen.encode())
    )


async def test_an_http1_request_on_an_h2_port_is_told_what_the_port_speaks() -> None:
    """The server's SETTINGS went out before the client spoke, so an HTTP/1.1 client read binary
    frames (curl: "Received HTTP/0.9 when not allowed"). The preface now waits for the client's
    first bytes, and an HTTP/1.1 request gets an HTTP/1.1 answer saying what to do."""
    async with serving(echo_request) as port:
        r = await curl(f"http://127.0.0.1:{port}/x", "--http1.1")
        assert r.status == 505, r
        assert "This port speaks HTTP/2" in (r.l5d_err or ""), r
        assert "--http2-prior-knowledge" in r.body.decode(), r


async def test_h2c_upgrade_is_served() -> None:
    """The reference (and the README's router table) say a plaintext h2 server accepts both prior
    knowledge and ``Upgrade: h2c``; the upgrade request was answered with binary frames."""
    async with serving(echo_request) as port:
        r = await curl(f"http://127.0.0.1:{port}/up?q=1", "--http2", "-H", "Host: web")
        assert (r.status, r.body) == (200, b"GET /up?q=1 web "), r
        assert r.exit_code == 0
        r = await curl(f"http://127.0.0.1:{port}/post", "--http2", "-H", "Host: web", "-d", "payload")
        assert (r.status, r.body) == (200, b"POST /post web payload"), r
        body = "z" * 5000
        r = await curl(
            f"http://127.0.0.1:{port}/big",
            "--http2",
            "-H",
            "Host: web",
            "-H",
            "Expect: 100-continue",
            "-d",
            body,
        )
        assert (r.status, r.body) == (200, f"POST /big web {body}".encode()), r


async def test_an_h2_preface_on_an_http1_port_gets_goaway_http_1_1_required() -> None:
    """The HTTP/1.1 codec took ``PRI * HTTP/2.0`` for a request (version 2.0), answered it 400
    "Host header is absent" in HTTP/1.1 text an HTTP/2 client cannot read, then failed on ``SM``.
    An HTTP/2 client now reads GOAWAY HTTP_1_1_REQUIRED whose debug data says what to do."""
    async with serving(echo_request, http1=True) as port, RawClient.connect(port) as c:
        await c.start()
        await c.request("/", port)
        ev = await c.until(lambda e: type(e) is h2.events.ConnectionTerminated)
        assert ev is not None, c.events
        assert ev.error_code == 0xD  # HTTP_1_1_REQUIRED
        assert b"This port speaks HTTP/1.1" in ev.additional_data


async def test_an_http1_port_refuses_another_http_version_with_505() -> None:
    async with serving(echo_request, http1=True) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET / HTTP/3.0\r\nhost: web\r\n\r\n")
            out = b""
            while b"\r\n\r\n" not in out:
                data = await stream.receive_some(4096)
                if not data:
                    break
                out += data
        assert out.startswith(b"HTTP/1.1 505"), out


async def test_max_concurrent_requests_counts_a_stream_until_its_response_ends() -> None:
    """``maxConcurrentRequests`` on an h2 server counted a stream only until its response head was
    returned, so any number of long streamed responses passed the cap (HTTP/1.1 counts them to their
    end). Now a stream holds its place until its response was sent whole."""
    from tests.test_retry_adversarial import HeldBody

    bodies: list[HeldBody] = []

    async def handle(req: Request, conn: object) -> Response:
        if req.target == "/stream":
            bodies.append(HeldBody())
            return Response(200, b"", Headers([]), Body(bodies[-1], None))
        return Response(200, b"", Headers([]), Body.from_bytes(b"quick"))

    server = H2Server(handle, H2ServerParams(ip="127.0.0.1", port=0, max_concurrent_requests=1))
    async with trio.open_nursery() as nursery:
        (addr,) = await nursery.start(server.serve)
        url = f"http://127.0.0.1:{addr[1]}"
        streamed: list[object] = []

        async def stream() -> None:
            streamed.append(await curl(f"{url}/stream", "--http2-prior-knowledge", timeout=30))

        nursery.start_soon(stream)
        with trio.fail_after(30):
            while not bodies:
                await trio.sleep(0.01)
        during = await curl(f"{url}/quick", "--http2-prior-knowledge")
        assert server.statistics()["requests_in_flight"] == 1
        bodies[0].release.set()
        with trio.fail_after(30):
            while not streamed:
                await trio.sleep(0.01)
        after = await curl(f"{url}/quick", "--http2-prior-knowledge")
        assert server.statistics()["requests_in_flight"] == 0
        nursery.cancel_scope.cancel()
    assert during.status == 503 and "maxConcurrentRequests=1" in (during.l5d_err or "")
    assert [(r.status, r.body) for r in streamed] == [(200, b"end")]  # type: ignore[attr-defined]
    assert (after.status, after.body) == (200, b"quick")


async def test_trailers_lose_the_fields_a_trailer_section_must_not_carry_both_ways() -> None:
    """As on HTTP/1.1: h2 trailers are read without framing, routing, authentication and other
    fields of the header section (RFC 9110 §6.5.1), from the client and from the upstream; gRPC's
    ``grpc-status`` and other trailers pass."""
    from tests.daemonutil import running_daemon
    from tests.test_h2_daemon_e2e import h2_config

    received: list[list[tuple[bytes, bytes]]] = []

    async def origin(req: Request, conn: object) -> Response:
        await req.body.read_all()
        received.append(list(req.body.trailers.items()) if req.body.trailers else [])
        trailers = Headers([(b"grpc-status", b"0"), (b"set-cookie", b"s=stolen"), (b"location", b"/evil")])
        return Response(200, b"", Headers([]), Body.from_bytes(b"ok", trailers))

    server = H2Server(origin, H2ServerParams(ip="127.0.0.1", port=0))
    async with trio.open_nursery() as nursery:
        (addr,) = await nursery.start(server.serve)
        async with running_daemon(h2_config(f"/svc => /$/inet/127.0.0.1/{addr[1]};")) as d:
            port = d.port("h2")
            async with RawClient.connect(port) as client:
                await client.start()
                sid = await client.request("/x", port, end_stream=False, method=b"POST")
                client.conn.send_data(sid, b"hello")
                client.conn.send_headers(
                    sid,
                    [(b"x-checksum", b"abc"), (b"authorization", b"Bearer stolen"), (b"host", b"evil")],
                    end_stream=True,
                )
                await client.flush()
                status, body, trailers = await client.response(sid)
        nursery.cancel_scope.cancel()
    assert (status, body) == (200, b"ok")
    assert received == [[(b"x-checksum", b"abc")]]
    assert trailers is not None and dict(trailers) == {b"grpc-status": b"0"}
