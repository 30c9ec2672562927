"""The HTTP/2 path's cheaper header handling keeps h2's outcomes.

``hostproxy.h2.fields`` stands in for h2's own header validation and normalisation, which the links
turn off: its results are checked against h2's functions on generated header blocks (plain ones and
ones h2 changes or rejects), and end to end against scripted upstreams (``ScriptedUpstream``, real
h2 over loopback): a malformed response head or trailer section still fails the upstream connection
with h2's reason, and credentials still reach the upstream as HPACK never-indexed fields.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import h2.connection
import h2.events
import h2.exceptions
import h2.utilities
import pytest
import trio
from hpack import NeverIndexedHeaderTuple
from hypothesis import given, settings
from hypothesis import strategies as st

from hostproxy.h2 import H2UpstreamPool
from hostproxy.h2 import fields as h2fields
from hostproxy.http.errors import UpstreamError
from hostproxy.http.message import Body, Headers, Request
from hostproxy.http.upstream import PoolParams
from tests.grpc_fixtures.rawh2 import ScriptedUpstream

pytestmark = pytest.mark.timeout(30)

KINDS = {"request": h2fields.REQUEST, "response": h2fields.RESPONSE, "trailers": h2fields.TRAILERS}


def h2_outbound(fields: list[tuple[bytes, bytes]], flags: Any) -> list[Any]:
    """What h2 itself does to a block it sends (``_build_headers_frames`` with both flags on)."""
    headers = h2.utilities.utf8_encode_headers(fields)
    headers = h2.utilities.normalize_outbound_headers(headers, flags, False)
    return list(h2.utilities.validate_outbound_headers(headers, flags))


def h2_problem(fields: list[tuple[bytes, bytes]], flags: Any) -> str | None:
    try:
        list(h2.utilities.validate_headers(fields, flags))
    except h2.exceptions.ProtocolError as exc:
        return str(exc)
    return None


def outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        result = fn()
    except Exception as exc:  # (h2 raises IndexError for an empty name it sends)
        return (type(exc).__name__, str(exc))
    if isinstance(result, list):
        # The class matters: NeverIndexedHeaderTuple keeps a field out of the HPACK tables.
        return ("ok", [(type(f).__name__, f[0], f[1]) for f in result])
    return ("ok", result)


PLAIN_REQUEST = [
    (b":method", b"GET"),
    (b":scheme", b"http"),
    (b":authority", b"example.com"),
    (b":path", b"/a?b=c"),
    (b"user-agent", b"grpc-go/1.60"),
    (b"l5d-dst-service", b"/svc/example.com"),
    (b"via", b"2 hostproxy"),
]
PLAIN_RESPONSE = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"2")]
PLAIN_TRAILERS = [(b"grpc-status", b"0"), (b"grpc-message", b"")]

names = st.sampled_from(
    [
        b"x-a",
        b"content-type",
        b"X-Upper",
        b"x b",
        b"x:y",
        b"",
        b" x",
        b"x\x7f",
        b"te",
        b"host",
        b"connection",
        b"transfer-encoding",
        b"keep-alive",
        b"upgrade",
        b"proxy-connection",
        b"cookie",
        b"authorization",
        b"proxy-authorization",
        b":method",
        b":scheme",
        b":authority",
        b":path",
        b":status",
        b":protocol",
        b":custom",
    ]
)
values = st.sampled_from(
    [
        b"",
        b"v",
        b"GET",
        b"CONNECT",
        b"/",
        b"trailers",
        b"gzip",
        b"200",
        b"example.com",
        b" lead",
        b"trail ",
        b"\tx",
        b"x\t",
        b"a\x0bb",
        b"\x0cx",
        b"a\r\nb",
        b"a\x00b",
        b"short=1",
        b"a-long-cookie-value-of-more-than-20=1",
    ]
)
field_lists = st.lists(st.tuples(names, values), max_size=8)


def blocks() -> st.SearchStrategy[tuple[str, list[tuple[bytes, bytes]]]]:
    """A kind and a block: a plain one of that kind with random fields inserted, or random fields."""
    plain = {"request": PLAIN_REQUEST, "response": PLAIN_RESPONSE, "trailers": PLAIN_TRAILERS}

    @st.composite
    def build(draw: Any) -> tuple[str, list[tuple[bytes, bytes]]]:
        kind = draw(st.sampled_from(sorted(KINDS)))
        extra = draw(field_lists)
        if draw(st.booleans()):
            base = list(plain[kind])
            for field in extra:
                base.insert(draw(st.integers(0, len(base))), field)
            return kind, base
        return kind, extra

    return build()


@settings(max_examples=600, deadline=None)
@given(blocks())
def test_outbound_blocks_are_what_h2_would_send(block: tuple[str, list[tuple[bytes, bytes]]]) -> None:
    kind, fields = block
    flags = KINDS[kind]
    assert outcome(lambda: h2fields.outbound(list(fields), flags)) == outcome(
        lambda: h2_outbound(list(fields), flags)
    )


@settings(max_examples=600, deadline=None)
@given(blocks())
def test_inbound_problems_are_h2s(block: tuple[str, list[tuple[bytes, bytes]]]) -> None:
    kind, fields = block
    flags = KINDS[kind]
    assert h2fields.problem(list(fields), flags) == h2_problem(list(fields), flags)


# Each a block h2 changes or rejects in one way (beside the plain ones), for both directions.
EDGES = [
    ("request", [*PLAIN_REQUEST, (b"te", b"gzip")]),
    ("request", [*PLAIN_REQUEST, (b"te", b"Trailers")]),
    ("request", [*PLAIN_REQUEST, (b"host", b"other.example")]),
    ("request", [*PLAIN_REQUEST, (b"host", b"example.com")]),
    ("request", [*PLAIN_REQUEST, (b"connection", b"close")]),
    ("request", [*PLAIN_REQUEST, (b"X-Upper", b"1")]),
    ("request", [*PLAIN_REQUEST, (b"x-space", b" 1")]),
    ("request", [*PLAIN_REQUEST, (b"x-space", b"1\t")]),
    ("request", [*PLAIN_REQUEST, (b"x-crlf", b"a\r\nb")]),
    ("request", [(n, b"CONNECT" if n == b":method" else v) for n, v in PLAIN_REQUEST]),
    ("request", [(n, b"" if n == b":path" else v) for n, v in PLAIN_REQUEST]),
    ("request", [f for f in PLAIN_REQUEST if f[0] != b":authority"]),
    ("request", [f for f in PLAIN_REQUEST if f[0] != b":scheme"]),
    ("request", [*PLAIN_REQUEST, (b":path", b"/again")]),
    ("request", [(b"x-first", b"1"), *PLAIN_REQUEST]),
    ("response", [*PLAIN_RESPONSE, (b":path", b"/")]),
    ("response", PLAIN_RESPONSE[1:]),
    ("response", [*PLAIN_RESPONSE, (b"transfer-encoding", b"chunked")]),
    ("trailers", [(b":status", b"200"), *PLAIN_TRAILERS]),
    ("trailers", [*PLAIN_TRAILERS, (b"x:colon", b"1")]),
]


@pytest.mark.parametrize(("kind", "fields"), EDGES)
def test_edge_blocks_get_h2s_outcome(kind: str, fields: list[tuple[bytes, bytes]]) -> None:
    flags = KINDS[kind]
    assert h2fields.problem(list(fields), flags) == h2_problem(list(fields), flags)
    assert outcome(lambda: h2fields.outbound(list(fields), flags)) == outcome(
        lambda: h2_outbound(list(fields), flags)
    )


@pytest.mark.parametrize(
    ("kind", "fields"),
    [("request", PLAIN_REQUEST), ("response", PLAIN_RESPONSE), ("trailers", PLAIN_TRAILERS)],
)
def test_plain_blocks_are_passed_as_they_are(kind: str, fields: list[tuple[bytes, bytes]]) -> None:
    flags = KINDS[kind]
    assert h2fields.problem(fields, flags) is None
    assert h2fields.outbound(fields, flags) is fields  # (no copy: the common case costs one pass)


def test_credentials_are_never_indexed() -> None:
    fields = [
        *PLAIN_REQUEST,
        (b"authorization", b"Bearer abc"),
        (b"cookie", b"a=1"),
        (b"cookie", b"session=0123456789abcdefghij"),
        (b"proxy-authorization", b"Basic eA=="),
    ]
    out = h2fields.outbound(fields, h2fields.REQUEST)
    never = [f[0] for f in out if isinstance(f, NeverIndexedHeaderTuple)]
    assert never == [b"authorization", b"cookie", b"proxy-authorization"]
    assert [tuple(f) for f in out] == fields
    assert fields[-1] == (b"proxy-authorization", b"Basic eA==")  # (the caller's list is not changed)
    assert not isinstance(fields[-1], NeverIndexedHeaderTuple)


# -- end to end ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def upstream(
    script: Callable[[int, h2.connection.H2Connection, trio.SocketStream], Awaitable[None]],
) -> AsyncIterator[tuple[ScriptedUpstream, H2UpstreamPool]]:
    up = ScriptedUpstream(script)
    async with trio.open_nursery() as nursery:
        await nursery.start(up.serve)
        pool = H2UpstreamPool("127.0.0.1", up.port, PoolParams(), nursery=nursery)
        yield up, pool
        await pool.aclose()
        nursery.cancel_scope.cancel()


def answering(
    head: list[tuple[bytes, bytes]],
    trailers: list[tuple[bytes, bytes]] | None = None,
    seen: list[list[Any]] | None = None,
    goaway: list[Any] | None = None,
) -> Callable[[int, h2.connection.H2Connection, trio.SocketStream], Awaitable[None]]:
    """A connection script: answer each request with ``head`` (then ``trailers``), sent unchecked,
    record request heads in ``seen`` and the GOAWAY received in ``goaway``."""

    async def script(i: int, conn: h2.connection.H2Connection, stream: trio.SocketStream) -> None:
        conn.config.validate_outbound_headers = False
        conn.config.normalize_outbound_headers = False
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            for ev in conn.receive_data(data):
                if type(ev) is h2.events.RequestReceived:
                    if seen is not None:
                        seen.append(list(ev.headers))
                    conn.send_headers(ev.stream_id, head, end_stream=trailers is None)
                    if trailers is not None:
                        conn.send_headers(ev.stream_id, trailers, end_stream=True)
                elif type(ev) is h2.events.ConnectionTerminated and goaway is not None:
                    goaway.append(ev)
            out = conn.data_to_send()
            if out:
                await stream.send_all(out)

    return script


def get(extra: list[tuple[bytes, bytes]] | None = None) -> Request:
    return Request("GET", "/x", Headers([(b"host", b"origin"), *(extra or [])]), Body.empty())


async def test_a_malformed_response_head_fails_the_connection_with_h2s_reason() -> None:
    goaway: list[Any] = []
    script = answering([(b":status", b"200"), (b"X-Upper", b"1")], goaway=goaway)
    async with upstream(script) as (_, pool):
        with pytest.raises(UpstreamError) as caught:
            await pool.request(get())
        with trio.fail_after(5):
            while not goaway:
                await trio.sleep(0.01)
    assert "HTTP/2 protocol error from the peer: Received uppercase header name b'X-Upper'." in str(
        caught.value
    )
    assert goaway[0].error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert b"Received uppercase header name" in (goaway[0].additional_data or b"")


async def test_malformed_response_trailers_fail_the_connection_with_h2s_reason() -> None:
    goaway: list[Any] = []
    script = answering([(b":status", b"200")], [(b":status", b"200"), (b"grpc-status", b"0")], goaway=goaway)
    async with upstream(script) as (_, pool):
        with pytest.raises(UpstreamError) as caught:
            resp = await pool.request(get())
            await resp.body.read_all()
        with trio.fail_after(5):
            while not goaway:
                await trio.sleep(0.01)
    assert "Received pseudo-header in trailer" in str(caught.value)
    assert goaway[0].error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR


async def test_a_plain_response_with_trailers_passes() -> None:
    script = answering(
        [(b":status", b"200"), (b"content-type", b"application/grpc")], [(b"grpc-status", b"0")]
    )
    async with upstream(script) as (_, pool):
        resp = await pool.request(get())
        assert resp.status == 200
        assert await resp.body.read_all() == b""
        assert resp.body.trailers is not None and resp.body.trailers.get(b"grpc-status") == b"0"


async def test_credentials_reach_the_upstream_never_indexed() -> None:
    seen: list[list[Any]] = []
    script = answering([(b":status", b"200")], seen=seen)
    async with upstream(script) as (_, pool):
        resp = await pool.request(
            get([(b"authorization", b"Bearer secret"), (b"cookie", b"s=1"), (b"x-plain", b"1")])
        )
        assert resp.status == 200
    fields = {bytes(f[0]): f for f in seen[0]}
    assert isinstance(fields[b"authorization"], NeverIndexedHeaderTuple)
    assert isinstance(fields[b"cookie"], NeverIndexedHeaderTuple)
    assert not isinstance(fields[b"x-plain"], NeverIndexedHeaderTuple)


# -- the HPACK encoder -----------------------------------------------------------------------------

hpack_names = st.sampled_from(
    [b":status", b":path", b"content-type", b"x-a", b"x-b", b"x-long-" + b"n" * 40, b"cookie", b"date"]
)
hpack_values = st.one_of(
    st.sampled_from([b"", b"200", b"/", b"text/plain", b"v1", b"v2"]),
    st.binary(max_size=60),
    st.binary(min_size=200, max_size=400),  # (bigger than a small table: it empties the table)
)
hpack_fields = st.tuples(hpack_names, hpack_values, st.sampled_from(["plain", "never", "sensitive3"]))
hpack_steps = st.lists(
    st.one_of(
        st.tuples(st.just("block"), st.lists(hpack_fields, max_size=12), st.booleans()),
        st.tuples(st.just("size"), st.sampled_from([0, 64, 256, 1024, 4096, 8192]), st.just(False)),
    ),
    max_size=30,
)


@settings(max_examples=400, deadline=None)
@given(hpack_steps)
def test_the_hpack_encoder_writes_what_hpacks_writes(steps: list[tuple[str, Any, bool]]) -> None:
    """Block after block (with table size changes between them), ``hostproxy.h2.hpackenc.Encoder``
    writes the octets ``hpack.Encoder`` writes (but for a size set twice, which it still announces),
    and a decoder reads the fields back."""
    import hpack

    from hostproxy.h2.hpackenc import Encoder

    class Announcing(hpack.Encoder):  # (hpack, announcing a size set twice: see hostproxy.h2.hpackenc)
        def encode(self, headers: Any, huffman: bool = True) -> bytes:
            if self.table_size_changes:
                self.header_table.resized = True
            return super().encode(headers, huffman)

    ours, theirs, decoder = Encoder(), Announcing(), hpack.Decoder()
    decoder.max_header_list_size = 1 << 20
    decoder.max_allowed_table_size = 1 << 16
    for step, arg, huffman in steps:
        if step == "size":
            ours.header_table_size = theirs.header_table_size = arg
            continue
        block: list[Any] = []
        for name, value, how in arg:
            if how == "never":
                block.append(NeverIndexedHeaderTuple(name, value))
            elif how == "sensitive3":
                block.append((name, value, True))
            else:
                block.append((name, value))
        encoded = ours.encode(block, huffman=huffman)
        assert encoded == theirs.encode(block, huffman=huffman)
        assert [tuple(f) for f in decoder.decode(encoded, raw=True)] == [(f[0], f[1]) for f in block]
        assert list(ours.header_table.dynamic_entries) == list(theirs.header_table.dynamic_entries)


async def test_links_compress_with_the_indexed_encoder() -> None:
    """Both sides' connections use it (so a change of h2 that dropped the swap would show here)."""
    from hostproxy.h2.hpackenc import Encoder

    seen: list[list[Any]] = []
    async with upstream(answering([(b":status", b"200")], seen=seen)) as (_, pool):
        for _ in range(3):  # (the second and third are indexed from the table)
            resp = await pool.request(get([(b"x-same", b"1")]))
            assert resp.status == 200
        links = pool._links
        assert links and all(type(link.conn.encoder) is Encoder for link in links)
    assert all(dict(h)[b"x-same"] == b"1" for h in seen) and len(seen) == 3


def decoded(decoder: Any, block: bytes) -> tuple[str, Any]:
    import re

    try:
        fields = decoder.decode(block, raw=True)
    except Exception as exc:  # (a view's address differs between the two)
        return (type(exc).__name__, re.sub(r"0x[0-9a-f]+", "0x", str(exc)))
    return ("ok", [(type(f).__name__, f[0], f[1]) for f in fields])


@settings(max_examples=400, deadline=None)
@given(
    hpack_steps,
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4),
    st.binary(max_size=40),
)
def test_the_hpack_decoder_reads_what_hpack_reads(
    steps: list[tuple[str, Any, bool]], flips: list[tuple[int, int]], garbage: bytes
) -> None:
    """Blocks an encoder wrote (some with octets changed, then a block of random octets): the
    decoder of ``hostproxy.h2.hpackenc`` returns hpack's fields or raises hpack's error, and keeps
    the same table, block after block."""
    import hpack

    from hostproxy.h2.hpackenc import Decoder

    encoder = hpack.Encoder()
    theirs = hpack.Decoder(max_header_list_size=2000)
    ours = hpack.Decoder(max_header_list_size=2000)
    ours.__class__ = Decoder  # (as the links do)
    for d in (theirs, ours):
        d.max_allowed_table_size = 4096
    blocks = []
    for step, arg, huffman in steps:
        if step == "size":
            encoder.header_table_size = arg
            continue
        blocks.append(bytearray(encoder.encode([(n, v) for n, v, _ in arg], huffman=huffman)))
    for at, value in flips:
        if blocks and blocks[-1]:
            blocks[-1][at % len(blocks[-1])] = value
    blocks.append(bytearray(garbage))
    for block in blocks:
        assert decoded(ours, bytes(block)) == decoded(theirs, bytes(block))
        assert list(ours.header_table.dynamic_entries) == list(theirs.header_table.dynamic_entries)
        assert ours.header_table_size == theirs.header_table_size


async def test_the_servers_decoder_keeps_its_limits() -> None:
    """The decoder's class is swapped after the server set its limits on it: they hold."""
    from hostproxy.h2.hpackenc import Decoder
    from hostproxy.h2.server import H2Server, H2ServerParams, _ServerLink

    params = H2ServerParams(max_header_list_bytes=1000, header_table_bytes=512)
    server = H2Server(lambda req, info: None, params)  # type: ignore[arg-type,return-value]
    a, b = trio.socket.socketpair()
    with a, b:
        link = _ServerLink(server, trio.SocketStream(a), 1)
    assert type(link.conn.decoder) is Decoder
    assert link.conn.decoder.max_header_list_size == 1000 * 4
    assert link.conn.decoder.max_allowed_table_size == 512


def test_the_hpack_decoder_reads_indices_past_one_octet() -> None:
    """Index 127 and above take more than one octet (the first is 0xff)."""
    import hpack

    from hostproxy.h2.hpackenc import Decoder

    encoder, theirs, ours = hpack.Encoder(), hpack.Decoder(), hpack.Decoder()
    ours.__class__ = Decoder
    first = encoder.encode([(f"x-{i}".encode(), b"v") for i in range(100)])
    again = encoder.encode([(b"x-0", b"v"), (b"x-60", b"v")])  # (indices 161 and 101)
    assert again[:1] == b"\xff"
    for block in (first, again, b"\xff\x01", b"\xfe"):
        assert decoded(ours, block) == decoded(theirs, block)
