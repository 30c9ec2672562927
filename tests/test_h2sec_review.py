"""Attacks on the HTTP/2 path's own header code (``hostproxy.h2.fields``, ``hostproxy.h2.hpackenc``):
hostile clients and upstreams over loopback, and the HPACK coder against hpack's decoder.

Real servers on loopback, real peers (raw frames through the ``h2`` library, hpack, hyperframe).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import h2.events
import h2.settings
import hpack
import pytest
import trio

from hostproxy.h2 import H2Server, H2ServerParams
from hostproxy.h2.hpackenc import Encoder
from hostproxy.http.message import Body, Headers, Request, Response
from tests.grpc_fixtures.rawh2 import RawClient

pytestmark = pytest.mark.timeout(60)

HTS = h2.settings.SettingCodes.HEADER_TABLE_SIZE


async def fixed_header(req: Request, _info: object) -> Response:
    """An origin whose every response carries the same field (indexed from the table after the first)."""
    await req.body.read_all()
    return Response(200, headers=Headers([(b"x-fixed", b"same-every-time")]), body=Body.from_bytes(b"ok"))


@contextlib.asynccontextmanager
async def serving(handler: Any, params: H2ServerParams | None = None) -> AsyncIterator[int]:
    server = H2Server(handler, params or H2ServerParams())
    async with trio.open_nursery() as nursery:
        [(_, port)] = await nursery.start(server.serve)
        yield port
        nursery.cancel_scope.cancel()


async def settle_settings(c: RawClient) -> None:
    """Pump until every SETTINGS the client sent is acknowledged."""
    while c.conn.local_settings._settings and any(
        len(v) > 1 for v in c.conn.local_settings._settings.values()
    ):
        await c.pump(ack=True)
        assert not c.eof


# -- HPACK table size changes -----------------------------------------------------------------------


def test_a_table_size_set_twice_to_the_same_value_is_still_announced() -> None:
    """SETTINGS_HEADER_TABLE_SIZE may arrive twice with the same value before the next header block
    (two SETTINGS frames in one read). The second setting changes nothing, but the first still has to
    be announced (RFC 7541 §4.2, §6.3): a decoder that saw no update keeps its old table, so a table
    that grew is read past its end, and one that shrank is refused by the peer's decoder."""
    # Grown: 0, announced; then 4096 twice. The encoder indexes into 4096 octets the decoder lacks.
    ours, decoder = Encoder(), hpack.Decoder()
    decoder.max_allowed_table_size = 4096
    ours.header_table_size = 0
    assert decoder.decode(ours.encode([(b"x-a", b"1")]), raw=True) == [(b"x-a", b"1")]
    ours.header_table_size = 4096
    ours.header_table_size = 4096
    for _ in range(2):
        assert decoder.decode(ours.encode([(b"x-a", b"1")]), raw=True) == [(b"x-a", b"1")]
    assert decoder.header_table_size == ours.header_table_size == 4096
    # Shrunk: 100 twice. The decoder (told 100 in SETTINGS) refuses a block that does not shrink it.
    ours, decoder = Encoder(), hpack.Decoder()
    ours.header_table_size = 100
    ours.header_table_size = 100
    decoder.max_allowed_table_size = 100
    assert decoder.decode(ours.encode([(b"x-a", b"1")]), raw=True) == [(b"x-a", b"1")]
    assert decoder.header_table_size == 100


async def test_a_client_repeating_its_header_table_size_still_reads_the_responses() -> None:
    """End to end: a client that sends SETTINGS_HEADER_TABLE_SIZE twice with the same value (first 0,
    later 4096) keeps reading the server's responses."""
    async with serving(fixed_header) as port, RawClient.connect(port) as c:
        await c.start({HTS: 0})
        await settle_settings(c)
        sid = await c.request("/a", port)
        assert (await c.response(sid))[:2] == (200, b"ok")
        c.conn.update_settings({HTS: 4096})
        c.conn.update_settings({HTS: 4096})
        await c.flush()
        await settle_settings(c)
        for path in ("/b", "/c", "/d"):
            sid = await c.request(path, port)
            assert (await c.response(sid))[:2] == (200, b"ok"), path
        assert c.conn.decoder.header_table_size == 4096


# -- hostile clients through the proxy ----------------------------------------------------------------


class Recorder:
    """An upstream (raw h2, its own checks off) that records each request head as its decoder read it
    (``NeverIndexedHeaderTuple`` for a never-indexed field) and answers with ``head``."""

    def __init__(self, head: list[tuple[bytes, bytes]] | None = None, trailers: Any = None) -> None:
        self.heads: list[list[Any]] = []
        self.head = head or [(b":status", b"200")]
        self.trailers = trailers
        self.goaways: list[Any] = []
        self.conns: list[Any] = []

    async def script(self, i: int, conn: Any, stream: trio.SocketStream) -> None:
        conn.config.validate_outbound_headers = False
        conn.config.normalize_outbound_headers = False
        conn.config.validate_inbound_headers = False
        conn.config.normalize_inbound_headers = False  # (cookie crumbs as they came)
        self.conns.append(conn)
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            for ev in conn.receive_data(data):
                if type(ev) is h2.events.RequestReceived:
                    self.heads.append(list(ev.headers))
                    conn.send_headers(ev.stream_id, self.head, end_stream=self.trailers is None)
                    if self.trailers is not None:
                        conn.send_headers(ev.stream_id, self.trailers, end_stream=True)
                elif type(ev) is h2.events.ConnectionTerminated:
                    self.goaways.append(ev)
            out = conn.data_to_send()
            if out:
                await stream.send_all(out)


@contextlib.asynccontextmanager
async def proxied(rec: Recorder) -> AsyncIterator[int]:
    from tests.grpc_fixtures.h2proxy import running_h2_proxy
    from tests.grpc_fixtures.rawh2 import ScriptedUpstream

    up = ScriptedUpstream(rec.script)
    async with trio.open_nursery() as nursery:
        await nursery.start(up.serve)
        async with running_h2_proxy(up.port) as proxy:
            yield proxy.port
        nursery.cancel_scope.cancel()


def lax(c: RawClient) -> None:
    c.conn.config.validate_outbound_headers = False
    c.conn.config.normalize_outbound_headers = False


async def test_never_indexed_fields_stay_never_indexed_through_the_proxy() -> None:
    """RFC 7541 §7.1.3: an intermediary must not re-encode a field its peer sent never-indexed with a
    representation that would index it (the sender marked it so that no later request sharing the
    compression context can probe it). Fields the client sent never-indexed reach the upstream
    never-indexed, and none of them enters the upstream connection's table."""
    from hpack import NeverIndexedHeaderTuple

    answer = [(b":status", b"200"), NeverIndexedHeaderTuple(b"x-upstream-token", b"t" * 30), (b"x-up", b"1")]
    rec = Recorder(answer)
    async with proxied(rec) as port, RawClient.connect(port) as c:
        lax(c)
        c.conn.config.normalize_inbound_headers = False
        await c.start()
        secret = [
            NeverIndexedHeaderTuple(b"x-api-key", b"k-0123456789abcdef"),
            NeverIndexedHeaderTuple(b"cookie", b"session=" + b"s" * 40),
        ]
        for path in ("/a", "/b"):
            sid = await c.request(path, port, extra=[*secret, (b"x-plain", b"1")])
            assert (await c.response(sid))[0] == 200
        response = next(e for e in c.events if type(e) is h2.events.ResponseReceived)
        client_table = list(c.conn.decoder.header_table.dynamic_entries)
    for head in rec.heads:
        fields = {bytes(f[0]): f for f in head}
        assert isinstance(fields[b"x-api-key"], NeverIndexedHeaderTuple), fields[b"x-api-key"]
        assert isinstance(fields[b"cookie"], NeverIndexedHeaderTuple), fields[b"cookie"]
        assert not isinstance(fields[b"x-plain"], NeverIndexedHeaderTuple)
    upstream_table = list(rec.conns[0].decoder.header_table.dynamic_entries)
    assert (b"x-plain", b"1") in upstream_table
    assert not [f for f in upstream_table if f[0] in (b"x-api-key", b"cookie")], upstream_table
    fields = {bytes(f[0]): f for f in response.headers}
    assert isinstance(fields[b"x-upstream-token"], NeverIndexedHeaderTuple), fields[b"x-upstream-token"]
    assert not isinstance(fields[b"x-up"], NeverIndexedHeaderTuple)
    assert not [f for f in client_table if f[0] == b"x-upstream-token"], client_table


def request_fields(port: int, *, path: bytes = b"/bad") -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", f"127.0.0.1:{port}".encode()),
        (b":path", path),
    ]


# Each: how to change a plain request head (a function of its fields) to a malformed one.
HOSTILE_HEADS: dict[str, Any] = {
    "CR LF in a value": lambda f: [*f, (b"x-a", b"1\r\nx-injected: 1")],
    "LF in a value": lambda f: [*f, (b"x-a", b"1\nx-injected: 1")],
    "NUL in a value": lambda f: [*f, (b"x-a", b"1\x00")],
    "CR LF in a name": lambda f: [*f, (b"x-a\r\nx-injected", b"1")],
    "NUL in a name": lambda f: [*f, (b"x-a\x00", b"1")],
    "colon in a name": lambda f: [*f, (b"x-a:b", b"1")],
    "space in a name": lambda f: [*f, (b"x a", b"1")],
    "DEL in a name": lambda f: [*f, (b"x-a\x7f", b"1")],
    "octet 0xff in a name": lambda f: [*f, (b"x-\xff", b"1")],
    "empty name": lambda f: [*f, (b"", b"1")],
    "uppercase name": lambda f: [*f, (b"X-A", b"1")],
    "space around a value": lambda f: [*f, (b"x-a", b" 1")],
    "tab after a value": lambda f: [*f, (b"x-a", b"1\t")],
    "connection": lambda f: [*f, (b"connection", b"close")],
    "keep-alive": lambda f: [*f, (b"keep-alive", b"timeout=5")],
    "upgrade": lambda f: [*f, (b"upgrade", b"websocket")],
    "proxy-connection": lambda f: [*f, (b"proxy-connection", b"keep-alive")],
    "transfer-encoding": lambda f: [*f, (b"transfer-encoding", b"chunked")],
    "te other than trailers": lambda f: [*f, (b"te", b"gzip")],
    "duplicate :path": lambda f: [*f, (b":path", b"/other")],
    "pseudo-header after a regular field": lambda f: [*f[:3], (b"x-a", b"1"), f[3]],
    "unknown pseudo-header": lambda f: [*f, (b":foo", b"1")],
    ":status in a request": lambda f: [*f, (b":status", b"200")],
    ":protocol without CONNECT": lambda f: [*f, (b":protocol", b"websocket")],
    "empty :path": lambda f: [*f[:3], (b":path", b"")],
    "no :method": lambda f: f[1:],
    "host disagreeing with :authority": lambda f: [*f, (b"host", b"elsewhere.example")],
    "two host fields": lambda f: [*f, (b"host", f[2][1]), (b"host", f[2][1])],
}


@pytest.mark.parametrize("case", sorted(HOSTILE_HEADS))
async def test_a_malformed_request_head_never_reaches_the_upstream(case: str) -> None:
    """Through the proxy (server and upstream sides both), a malformed request head fails its own
    stream (400 or a reset) and nothing of it reaches the upstream; the connection keeps serving."""
    rec = Recorder()
    async with proxied(rec) as port, RawClient.connect(port) as c:
        lax(c)
        await c.start()
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, HOSTILE_HEADS[case](request_fields(port)), end_stream=True)
        await c.flush()
        status, _, _ = await c.response(sid)
        assert status in (400, -1), status
        ok = await c.request("/fine", port)
        assert (await c.response(ok))[0] == 200
    assert [dict(h)[b":path"] for h in rec.heads] == [b"/fine"]
    assert not any(n in (b"x-injected", b"x-a") for h in rec.heads for n, _ in h)


# Each: a response head, or (head, trailers), that breaks RFC 9113 §8.2-8.3.
HOSTILE_RESPONSES: dict[str, Any] = {
    "uppercase name": [(b":status", b"200"), (b"X-A", b"1")],
    "CR LF in a value": [(b":status", b"200"), (b"x-a", b"1\r\nset-cookie: stolen=1")],
    "NUL in a value": [(b":status", b"200"), (b"x-a", b"\x001")],
    "colon in a name": [(b":status", b"200"), (b"x-a:b", b"1")],
    "empty name": [(b":status", b"200"), (b"", b"1")],
    "space around a value": [(b":status", b"200"), (b"x-a", b"1 ")],
    "connection": [(b":status", b"200"), (b"connection", b"close")],
    "transfer-encoding": [(b":status", b"200"), (b"transfer-encoding", b"chunked")],
    "te": [(b":status", b"200"), (b"te", b"trailers, deflate")],
    "no :status": [(b"x-a", b"1")],
    "duplicate :status": [(b":status", b"200"), (b":status", b"204")],
    "a request pseudo-header": [(b":status", b"200"), (b":path", b"/")],
    "pseudo-header after a regular field": [(b"x-a", b"1"), (b":status", b"200")],
    "pseudo-header in trailers": ([(b":status", b"200")], [(b":status", b"500"), (b"grpc-status", b"0")]),
    "uppercase trailer": ([(b":status", b"200")], [(b"Grpc-Status", b"0")]),
    "CR LF in a trailer": ([(b":status", b"200")], [(b"grpc-message", b"a\r\nx: 1")]),
    "connection trailer": ([(b":status", b"200")], [(b"connection", b"close")]),
    # RFC 9110 §15: a status code is three digits (what the HTTP/1.1 codec reads in a status line).
    "status of letters": [(b":status", b"abc"), (b"x-a", b"1")],
    "empty status": [(b":status", b""), (b"x-a", b"1")],
    "status of five digits": [(b":status", b"99999"), (b"x-a", b"1")],
    "status with an underscore": [(b":status", b"2_00"), (b"x-a", b"1")],
    "status with a sign": [(b":status", b"+200"), (b"x-a", b"1")],
    "status of a non-ASCII octet": [(b":status", b"\xff"), (b"x-a", b"1")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE_RESPONSES))
async def test_a_malformed_response_never_reaches_the_client(case: str) -> None:
    """A hostile upstream's malformed response head or trailers: the client gets a proxy error (or a
    reset once the head went out), never the field; the upstream connection gets GOAWAY."""
    spec = HOSTILE_RESPONSES[case]
    head, trailers = spec if isinstance(spec, tuple) else (spec, None)
    rec = Recorder(head, trailers)
    async with proxied(rec) as port, RawClient.connect(port) as c:
        await c.start()
        sid = await c.request("/a", port)
        status, _, got_trailers = await c.response(sid)
        if trailers is None:
            assert status == 502, status
            [answer] = [e for e in c.events if type(e) is h2.events.ResponseReceived]
            l5d_err = dict(answer.headers)[b"l5d-err"]
            assert b"Internal" not in l5d_err and b"protocol+error" in l5d_err, l5d_err
        else:
            assert status in (200, -1) and got_trailers is None, (status, got_trailers)
        with trio.fail_after(10):
            while not rec.goaways:
                await trio.sleep(0.01)
        seen = [f for e in c.events if hasattr(e, "headers") for f in (e.headers or [])]
    assert rec.goaways[0].error_code == 1  # PROTOCOL_ERROR
    assert not [f for f in seen if f[0].lower() in (b"x-a", b"set-cookie", b"connection", b"te", b"x")]


# -- HPACK decoder attacks on the server ----------------------------------------------------------------


def literal_indexed(name: bytes, value: bytes) -> bytes:
    """A literal field with incremental indexing and a new name, no Huffman coding (RFC 7541 §6.2.1)."""
    from hpack.hpack import encode_integer

    return b"\x40" + bytes(encode_integer(len(name), 7)) + name + bytes(encode_integer(len(value), 7)) + value


def plain_request_block(port: int) -> bytes:
    return hpack.Encoder().encode(request_fields(port, path=b"/x"))


def entries_added(block: bytes) -> int:
    """How many entries ``block`` adds to a fresh table."""
    decoder = hpack.Decoder()
    decoder.decode(block, raw=True)
    return len(decoder.header_table.dynamic_entries)


def one_past_the_table(block: bytes) -> bytes:
    """The one-octet indexed field whose index is the first past the table ``block`` leaves."""
    return bytes([0x80 | (62 + entries_added(block))])


# Each: the header block (a function of the plain request's block) a hostile client sends.
BAD_BLOCKS: dict[str, Any] = {
    "indexed field 0": lambda b: b + b"\x80",
    "one-octet index past the table": lambda b: b + one_past_the_table(b),
    "one-octet index past the table, one entry more": lambda b: (
        b + literal_indexed(b"x-a", b"1") + one_past_the_table(b + literal_indexed(b"x-a", b"1"))
    ),
    "largest one-octet index": lambda b: b + b"\xfe",
    "multi-octet index past the table": lambda b: b + b"\xff\x80\x01",
    "truncated integer": lambda b: b + b"\xff\x80",
    "huge integer": lambda b: b + b"\xff" + b"\xff" * 20 + b"\x01",
    "table size update after a field": lambda b: b + b"\x20",
    "table size update above the limit": lambda b: b"\x3f\xe2\x1f" + b,  # (4097)
    "truncated string": lambda b: b + b"\x40\x05x-a",
    "Huffman EOS in a string": lambda b: b + b"\x40\x83\xff\xff\xff\x011",
    "Huffman padding of zeros": lambda b: b + b"\x40\x81\x00\x011",
    "Huffman padding longer than 7 bits": lambda b: b + b"\x40\x82\x1f\xff\x011",
}


@pytest.mark.parametrize("case", sorted(BAD_BLOCKS))
async def test_a_broken_header_block_ends_its_connection_and_no_other(case: str) -> None:
    """A header block HPACK cannot decode is a connection error (RFC 7541 §2.3.4, RFC 9113 §4.3):
    GOAWAY, the handler never called; another client on the same server is served."""
    from hyperframe.frame import HeadersFrame

    handled: list[str] = []

    async def handler(req: Request, _info: object) -> Response:
        handled.append(req.target)
        return Response(200, body=Body.from_bytes(b"ok"))

    async with serving(handler) as port:
        async with RawClient.connect(port) as c:
            await c.start()
            block = BAD_BLOCKS[case](plain_request_block(port))
            await c.send_raw(HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]).serialize())
            goaway = await c.until(lambda e: type(e) is h2.events.ConnectionTerminated)
            assert goaway is not None and goaway.error_code != 0, goaway
        async with RawClient.connect(port) as other:
            await other.start()
            sid = await other.request("/other", port)
            assert (await other.response(sid))[:2] == (200, b"ok")
    assert handled == ["/other"]


async def test_an_hpack_bomb_of_one_octet_indices_is_cut_off_at_the_header_list_limit() -> None:
    """A 4 KiB entry in the table, then a block of one-octet references to it (the representation the
    decoder reads in place): each octet inflates to 4 KiB. The decoder stops at its header list
    limit rather than building the whole list; the request never reaches the handler."""
    from hyperframe.frame import ContinuationFrame, HeadersFrame

    handled: list[str] = []

    async def handler(req: Request, _info: object) -> Response:
        handled.append(req.target)
        return Response(200, body=Body.from_bytes(b"ok"))

    async with (
        serving(handler, H2ServerParams(max_header_list_bytes=65536)) as port,
        RawClient.connect(port) as c,
    ):
        await c.start()
        block = plain_request_block(port) + literal_indexed(b"x-big", b"b" * 4000)
        bomb = block + bytes([0x80 | 62]) * 60000  # (the newest entry: about 240 MB were it decoded)
        first, rest = bomb[:16384], bomb[16384:]
        frames = [HeadersFrame(1, first, flags=["END_STREAM"])]
        while rest:
            chunk, rest = rest[:16384], rest[16384:]
            frames.append(ContinuationFrame(1, chunk, flags=[] if rest else ["END_HEADERS"]))
        await c.send_raw(b"".join(f.serialize() for f in frames))
        while not c.eof and not any(type(e) is h2.events.ConnectionTerminated for e in c.events):
            events = await c.pump(ack=True)
            if any(getattr(e, "stream_id", None) == 1 for e in events):
                break
    assert handled == []
    goaway = next(e for e in c.events if type(e) is h2.events.ConnectionTerminated)
    assert b"A header list larger than 262144" in (goaway.additional_data or b""), goaway


# -- the encoder's table against real decoders, table sizes changing mid-connection ---------------------


async def random_fields(req: Request, _info: object) -> Response:
    """An origin answering with the fields the request's ``x-want`` lists (``name=value;...``)."""
    await req.body.read_all()
    want = req.headers.get(b"x-want") or b""
    fields = [tuple(item.split(b"=", 1)) for item in want.split(b";") if item]
    return Response(200, headers=Headers(fields), body=Body.from_bytes(b"ok"))  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(3))
async def test_responses_decode_as_sent_while_the_client_changes_its_table_size(seed: int) -> None:
    """A long run of responses whose fields repeat, are evicted and come back, through a small and
    changing table (the client's SETTINGS_HEADER_TABLE_SIZE, sometimes repeated, between requests):
    the client's hpack decoder reads every response's fields as the origin gave them. An index the
    server's encoder kept for an entry the client's table no longer holds would read as another
    field, or fail the connection."""
    import random

    rnd = random.Random(seed)
    names = [b"x-%d" % i for i in range(8)]
    params = H2ServerParams(settings_burst=1000)  # (the SETTINGS here are no flood)
    async with serving(random_fields, params) as port, RawClient.connect(port) as c:
        await c.start({HTS: 256})
        await settle_settings(c)
        for i in range(150):
            if rnd.random() < 0.15:
                size = rnd.choice([0, 40, 64, 100, 256, 1024, 4096])
                for _ in range(rnd.choice([1, 1, 2])):
                    c.conn.update_settings({HTS: size})
                await c.flush()
                await settle_settings(c)
            want = [
                (rnd.choice(names), b"v" * rnd.choice([0, 1, 5, 20, 60])) for _ in range(rnd.randint(1, 5))
            ]
            extra = [(b"x-want", b";".join(n + b"=" + v for n, v in want))]
            sid = await c.request(f"/{i}", port, extra=extra)
            assert (await c.response(sid))[:2] == (200, b"ok"), i
            [head] = [e for e in c.events if type(e) is h2.events.ResponseReceived and e.stream_id == sid]
            got = [(n, v) for n, v in head.headers if n.startswith(b"x-") and n != b"x-want"]
            assert got == want, (i, got, want)
            c.events.clear()


async def varied_answer(req: Request, _info: object) -> Response:
    """An origin echoing the request's ``x-*`` fields and adding one that differs per request."""
    await req.body.read_all()
    echoed = [(n, v) for n, v in req.headers if n.startswith(b"x-")]
    return Response(
        200, headers=Headers([*echoed, (b"x-target", req.target.encode())]), body=Body.from_bytes(b"ok")
    )


@pytest.mark.parametrize("table", ["0", "64", "4096"])
async def test_h2load_through_the_proxy_with_small_header_tables(table: str) -> None:
    """nghttp2's client (h2load) as a normal client through the proxy, both directions of HPACK
    at a small table size: its decoder (and the origin-facing link's peer) reads every block."""
    from tests.grpc_fixtures.h2proxy import running_h2_proxy

    upstream = H2Server(varied_answer, H2ServerParams(header_table_bytes=int(table)))
    async with trio.open_nursery() as nursery:
        [(_, port)] = await nursery.start(upstream.serve)
        params = H2ServerParams(header_table_bytes=int(table))
        async with running_h2_proxy(port, params=params) as proxy:
            uris = [f"http://127.0.0.1:{proxy.port}/p{i}" for i in range(7)]
            with trio.fail_after(60):
                done = await trio.run_process(
                    [
                        "h2load", "-n", "300", "-c", "2", "-m", "4",
                        f"--header-table-size={table}", f"--encoder-header-table-size={table}",
                        "-H", "x-a: " + "a" * 30, "-H", "x-b: " + "b" * 50, "-H", "authorization: Bearer t",
                        *uris,
                    ],
                    capture_stdout=True, capture_stderr=True, check=False,
                )  # fmt: skip
        nursery.cancel_scope.cancel()
    out = done.stdout.decode()
    assert "300 succeeded, 0 failed, 0 errored" in out and "300 2xx" in out, out


# Each: the response header block (a function of a plain response's block) a hostile upstream sends.
BAD_RESPONSE_BLOCKS: dict[str, Any] = {
    "indexed field 0": lambda b: b + b"\x80",
    "one-octet index past the table": lambda b: b + one_past_the_table(b),
    "largest one-octet index": lambda b: b + b"\xfe",
    "table size update after a field": lambda b: b + b"\x20",
    "table size update above the limit": lambda b: b"\x3f\xe2\x1f" + b,
    "truncated string": lambda b: b + b"\x40\x05x-a",
    "Huffman EOS in a string": lambda b: b + b"\x40\x83\xff\xff\xff\x011",
    "an index bomb": lambda b: b + literal_indexed(b"x-big", b"b" * 4000) + bytes([0x80 | 62]) * 16000,
}


@pytest.mark.parametrize("case", sorted(BAD_RESPONSE_BLOCKS))
async def test_a_broken_response_header_block_fails_its_upstream_connection(case: str) -> None:
    """A hostile upstream's undecodable response block: 502 to the client (no field of it passed),
    and the next request is served on a new connection."""
    from hyperframe.frame import ContinuationFrame, HeadersFrame

    from tests.grpc_fixtures.h2proxy import running_h2_proxy
    from tests.grpc_fixtures.rawh2 import ScriptedUpstream

    async def script(i: int, conn: Any, stream: trio.SocketStream) -> None:
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            for ev in conn.receive_data(data):
                if type(ev) is h2.events.RequestReceived:
                    if i == 0:
                        block = BAD_RESPONSE_BLOCKS[case](hpack.Encoder().encode([(b":status", b"200")]))
                        frames = [HeadersFrame(ev.stream_id, block[:16384], flags=["END_STREAM"])]
                        rest = block[16384:]
                        while rest:
                            frames.append(ContinuationFrame(ev.stream_id, rest[:16384]))
                            rest = rest[16384:]
                        frames[-1].flags.add("END_HEADERS")
                        await stream.send_all(conn.data_to_send() + b"".join(f.serialize() for f in frames))
                        continue
                    conn.send_headers(
                        ev.stream_id, [(b":status", b"200"), (b"x-fine", b"1")], end_stream=True
                    )
            out = conn.data_to_send()
            if out:
                await stream.send_all(out)

    up = ScriptedUpstream(script)
    async with trio.open_nursery() as nursery:
        await nursery.start(up.serve)
        async with running_h2_proxy(up.port) as proxy, RawClient.connect(proxy.port) as c:
            await c.start()
            sid = await c.request("/a", proxy.port)
            assert (await c.response(sid))[0] == 502
            sid = await c.request("/b", proxy.port)
            assert (await c.response(sid))[0] == 200
        nursery.cancel_scope.cancel()
    heads = [e.headers for e in c.events if type(e) is h2.events.ResponseReceived]
    assert not [f for h in heads for f in h if f[0] in (b"x-a", b"x-big")]
    assert up.connections == 2


async def target_echo(req: Request, _info: object) -> Response:
    await req.body.read_all()
    return Response(
        200, headers=Headers([(b"x-target", req.target.encode() * 4)]), body=Body.from_bytes(b"ok")
    )


async def test_an_h2c_upgrade_offering_a_huge_header_table_does_not_make_the_server_keep_its_headers() -> (
    None
):
    """The table that compresses responses is kept to ``headerTableBytes`` whatever larger
    SETTINGS_HEADER_TABLE_SIZE the client offers; an ``Upgrade: h2c`` request carries its settings in
    ``HTTP2-Settings``, which h2 applies without the settings event the cap waits for. The client's
    decoder mirrors the server's encoder table exactly, so its size is what the server holds."""
    import h2.config
    import h2.connection

    huge = 1 << 30
    async with serving(target_echo) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            conn = h2.connection.H2Connection(
                h2.config.H2Configuration(client_side=True, header_encoding=None)
            )
            conn.local_settings = h2.settings.Settings(client=True, initial_values={HTS: huge})
            conn.decoder.max_allowed_table_size = huge
            offer = conn.initiate_upgrade_connection()
            assert offer is not None
            await stream.send_all(
                b"GET /up HTTP/1.1\r\nHost: web\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                b"HTTP2-Settings: " + offer + b"\r\n\r\n"
            )
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += await stream.receive_some(65536)
            head, rest = buf.split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 101"), head
            await stream.send_all(conn.data_to_send())
            pending = rest
            done = 0
            next_sid = 3
            with trio.fail_after(30):
                while done < 300:
                    data = pending or await stream.receive_some(65536)
                    pending = b""
                    assert data, "the server closed the connection"
                    for ev in conn.receive_data(data):
                        if type(ev) is h2.events.StreamEnded:
                            done += 1
                            if next_sid < 600:
                                conn.send_headers(
                                    next_sid,
                                    [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"web"),
                                     (b":path", f"/distinct-{next_sid:05d}".encode())],
                                    end_stream=True,
                                )  # fmt: skip
                                next_sid += 2
                        elif type(ev) is h2.events.DataReceived:
                            conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    await stream.send_all(conn.data_to_send())
            table = conn.decoder.header_table
            assert table._current_size <= 4096 and table.maxsize <= 4096, (table.maxsize, table._current_size)
