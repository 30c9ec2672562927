"""Trace propagation per attempt, and HPACK never-indexed trailers.

Every attempt of a request (a retry the response classifier allowed, a requeue after a connection
failure; on http and h2 routers) carries a span of its own: the same trace id, parent and sampling
flags, a new span id, and the same ``l5d-reqid`` (the trace id). Linkerd 1 gives each request through
its client stack a new span (``TracePropagator.ClientFilter``, below ``ClassifiedRetries``). The pure
module is tested with seeded rngs; the daemon tests use real curl, real HTTP/1.1 and h2c upstreams on
loopback that record the headers of every attempt, and a refused port for the requeues (whose first
attempt reaches no one: the router's rng is replaced by one that records the ids it draws, so the
span of the attempt that failed is known).

Trailers: a trailer field a peer sent HPACK never-indexed (RFC 7541 §7.1.3) goes on never-indexed,
client→upstream and upstream→client, checked by decoding the HPACK bytes on the wire with raw h2
peers.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import h2.events
import pytest
import trio
from hpack import NeverIndexedHeaderTuple

from hostproxy.h2.server import H2Server, H2ServerParams
from hostproxy.http.message import Body, Headers, Request, Response
from hostproxy.routing.tracectx import (
    DEFAULT,
    FLAG_SAMPLED,
    FLAG_SAMPLING_KNOWN,
    ZIPKIN,
    L5dTrace,
    decode_l5d_trace,
    encode_l5d_trace,
)
from tests.daemonutil import Running, curl, running_daemon
from tests.grpc_fixtures.rawh2 import RawClient, ScriptedUpstream
from tests.test_lifecycle_helpers import write_disco
from tests.upstreams import closed_port, serving

pytestmark = pytest.mark.timeout(120)

Header = tuple[bytes, bytes]
SAMPLED = FLAG_SAMPLING_KNOWN | FLAG_SAMPLED


class RecordingRandom(random.Random):
    """A seeded rng that records the 64-bit draws (the trace and span ids; nothing else in the router
    draws 64 bits)."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.ids: list[int] = []

    def getrandbits(self, k: int) -> int:
        value = super().getrandbits(k)
        if k == 64:
            self.ids.append(value)
        return value


def draws(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.getrandbits(64) for _ in range(n)]


# -- next_attempt, pure --------------------------------------------------------------------------------


def test_default_next_attempt_is_a_sibling_with_a_new_span() -> None:
    received = encode_l5d_trace(0x77, 0x66, 0xABC, SAMPLED)
    first = DEFAULT.forward({b"l5d-ctx-trace": received}, None, random.Random(5))
    sent = [(b"host", b"web"), *first, (b"l5d-ctx-deadline", b"1 0")]
    rng = random.Random(6)
    a, b = draws(6, 2)
    second = DEFAULT.next_attempt(sent, rng)
    third = DEFAULT.next_attempt(second, rng)
    assert second == [
        (b"host", b"web"),
        (b"l5d-ctx-trace", encode_l5d_trace(a, 0x77, 0xABC, SAMPLED)),
        (b"l5d-reqid", b"0000000000000abc"),
        (b"l5d-ctx-deadline", b"1 0"),
    ]
    assert third[1] == (b"l5d-ctx-trace", encode_l5d_trace(b, 0x77, 0xABC, SAMPLED))
    assert third[2] == (b"l5d-reqid", b"0000000000000abc")
    assert sent[1] == first[0]  # (a copy: the first attempt's fields are not changed)


def test_default_next_attempt_of_a_new_trace_is_a_child_of_its_root() -> None:
    (root,) = draws(7, 1)
    first = DEFAULT.new_trace(random.Random(7))
    assert decode_l5d_trace(first[0][1]) == L5dTrace((root, root, root, 0))
    rng = random.Random(8)
    a, b = draws(8, 2)
    second = DEFAULT.next_attempt(first, rng)
    third = DEFAULT.next_attempt(second, rng)
    assert decode_l5d_trace(second[0][1]) == L5dTrace((a, root, root, 0))
    assert decode_l5d_trace(third[0][1]) == L5dTrace((b, root, root, 0))
    assert second[1] == third[1] == (b"l5d-reqid", b"%016x" % root)


def test_default_sampling_decided_once_per_request() -> None:
    """l5d-sample is drawn for the first attempt; later attempts keep its decision (no new draw)."""
    first = DEFAULT.forward({}, 0.5, random.Random(9))
    flags = decode_l5d_trace(first[0][1]).flags  # type: ignore[union-attr]
    rng = random.Random(10)
    later = first
    for _ in range(20):
        later = DEFAULT.next_attempt(later, rng)
        assert decode_l5d_trace(later[0][1]).flags == flags  # type: ignore[union-attr]


class _Fixed:
    """An rng whose 64-bit draws are given (to check that a span id is never reused)."""

    def __init__(self, *bits: int) -> None:
        self.bits = list(bits)

    def getrandbits(self, n: int) -> int:
        return self.bits.pop(0)


def test_next_attempt_never_reuses_the_previous_span_or_the_parent() -> None:
    sent = [(b"l5d-ctx-trace", encode_l5d_trace(5, 4, 3, 0)), (b"l5d-reqid", b"0000000000000003")]
    out = DEFAULT.next_attempt(sent, _Fixed(5, 4, 9))  # type: ignore[arg-type]
    assert decode_l5d_trace(out[0][1]) == L5dTrace((9, 4, 3, 0))
    b3 = [
        (b"x-b3-traceid", b"%016x" % 3),
        (b"x-b3-parentspanid", b"%016x" % 4),
        (b"x-b3-spanid", b"%016x" % 5),
    ]
    out = ZIPKIN.next_attempt(b3, _Fixed(5, 4, 9))  # type: ignore[arg-type]
    assert out[2] == (b"x-b3-spanid", b"%016x" % 9)


def test_zipkin_next_attempt_keeps_trace_parent_and_sampling() -> None:
    received = {
        b"x-b3-traceid": b"80f198ee56343ba864fe8b2a57d3eff7",
        b"x-b3-spanid": b"e457b5a2e4d86bd1",
        b"x-b3-sampled": b"1",
        b"x-b3-flags": b"1",
    }
    first = ZIPKIN.forward(received, None, random.Random(11))
    rng = random.Random(12)
    (a,) = draws(12, 1)
    second = ZIPKIN.next_attempt(first, rng)
    assert second == [
        (b"x-b3-sampled", b"1"),
        (b"x-b3-flags", b"1"),
        (b"x-b3-traceid", b"80f198ee56343ba864fe8b2a57d3eff7"),
        (b"x-b3-parentspanid", b"e457b5a2e4d86bd1"),
        (b"x-b3-spanid", b"%016x" % a),
        (b"l5d-reqid", b"64fe8b2a57d3eff7"),
    ]


def test_zipkin_next_attempt_of_a_new_trace_is_a_child_of_its_root() -> None:
    (root,) = draws(13, 1)
    first = [(b"x-b3-sampled", b"0"), *ZIPKIN.new_trace(random.Random(13))]
    rng = random.Random(14)
    a, b = draws(14, 2)
    second = ZIPKIN.next_attempt(first, rng)
    third = ZIPKIN.next_attempt(second, rng)
    r = b"%016x" % root
    assert second == [
        (b"x-b3-sampled", b"0"),
        (b"x-b3-traceid", r),
        (b"x-b3-parentspanid", r),
        (b"x-b3-spanid", b"%016x" % a),
        (b"l5d-reqid", r),
    ]
    assert third == [*second[:3], (b"x-b3-spanid", b"%016x" % b), (b"l5d-reqid", r)]


@pytest.mark.parametrize("propagator", [DEFAULT, ZIPKIN])
def test_next_attempt_without_the_propagators_header_changes_nothing(propagator: object) -> None:
    sent = [(b"host", b"web"), (b"l5d-ctx-trace", b"%%%"), (b"l5d-reqid", b"1")]
    assert propagator.next_attempt(sent, random.Random(1)) == sent  # type: ignore[attr-defined]


# -- through the daemon: upstreams that record every attempt ---------------------------------------------


class Recorder:
    """An upstream that records the head of every request and answers ``fail_first`` of them with
    503, the others 200."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.seen: list[Headers] = []

    async def handle(self, req: Request, _conn: object) -> Response:
        await req.body.read_all()
        self.seen.append(Headers(list(req.headers)))
        status = 503 if len(self.seen) <= self.fail_first else 200
        return Response(status, b"", Headers([(b"content-type", b"text/plain")]), Body.from_bytes(b"ok"))


@contextlib.asynccontextmanager
async def h1_recorder(fail_first: int) -> AsyncIterator[tuple[Recorder, int]]:
    rec = Recorder(fail_first)
    async with serving(rec.handle) as port:
        yield rec, port


@contextlib.asynccontextmanager
async def h2_recorder(fail_first: int) -> AsyncIterator[tuple[Recorder, int]]:
    rec = Recorder(fail_first)
    server = H2Server(rec.handle, H2ServerParams(ip="127.0.0.1", port=0))
    async with trio.open_nursery() as nursery:
        addrs = await nursery.start(server.serve)
        yield rec, addrs[0][1]
        nursery.cancel_scope.cancel()


def router_config(disco: Path, protocol: str, kind: str, classifier: str) -> str:
    return f"""
admin: {{ip: 127.0.0.1, port: 0}}
namers:
- kind: io.l5d.fs
  rootDir: {disco}
routers:
- protocol: {protocol}
  label: out
  tracePropagator: {{kind: {kind}}}
  dtab: /svc => /#/io.l5d.fs;
  identifier: {{kind: io.l5d.header.token, header: x-svc}}
  servers:
  - {{ip: 127.0.0.1, port: 0}}
  client:
    kind: io.l5d.global
    loadBalancer: {{kind: roundRobin}}
    failureAccrual: {{kind: none}}
  service:
    kind: io.l5d.global
    responseClassifier: {{kind: {classifier}}}
    retries:
      backoff: {{kind: constant, ms: 0}}
"""


async def send(d: Running, protocol: str, *headers: str) -> int:
    args = ["--http2-prior-knowledge"] if protocol == "h2" else []
    for h in ("x-svc: web", *headers):
        args += ["-H", h]
    r = await curl(f"http://127.0.0.1:{d.port('out')}/", *args)
    return r.status


def l5d_of(h: Headers) -> L5dTrace:
    got = decode_l5d_trace(h.get(b"l5d-ctx-trace") or b"")
    assert got is not None, list(h)
    return got


PROTOCOLS = ["http", "h2"]


def classifier_for(protocol: str) -> str:
    return "io.l5d.h2.retryableRead5XX" if protocol == "h2" else "io.l5d.http.retryableRead5XX"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_classifier_retry_carries_a_new_span_default(tmp_path: Path, protocol: str) -> None:
    recorder = h2_recorder if protocol == "h2" else h1_recorder
    async with recorder(2) as (rec, port):
        write_disco(tmp_path / "disco", "web", port)
        cfg = router_config(tmp_path / "disco", protocol, "io.l5d.default", classifier_for(protocol))
        async with running_daemon(cfg) as d:
            sent = encode_l5d_trace(0x77, 0x66, 0xABCDEF, SAMPLED).decode()
            assert await send(d, protocol, f"l5d-ctx-trace: {sent}") == 200
            assert len(rec.seen) == 3  # two retries
            ids = [l5d_of(h) for h in rec.seen]
            assert {(t.parent_id, t.trace_id, t.flags) for t in ids} == {(0x77, 0xABCDEF, SAMPLED)}
            spans = [t.span_id for t in ids]
            assert len(set(spans)) == 3 and not {0, 0x77, 0x66} & set(spans)
            assert {h.get(b"l5d-reqid") for h in rec.seen} == {b"0000000000abcdef"}
            assert all(len(h.get_all(b"l5d-ctx-trace")) == 1 for h in rec.seen)
            # A request that starts a new trace: the first attempt is its root, the retries its children.
            rec.seen.clear()
            rec.fail_first = 1
            assert await send(d, protocol, "l5d-sample: 1") == 200
            root, retry = (l5d_of(h) for h in rec.seen)
            assert root.span_id == root.parent_id == root.trace_id
            assert (retry.parent_id, retry.trace_id) == (root.span_id, root.trace_id)
            assert retry.span_id != root.span_id and root.flags == retry.flags == SAMPLED
            assert {h.get(b"l5d-reqid") for h in rec.seen} == {b"%016x" % root.trace_id}


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_classifier_retry_carries_a_new_span_zipkin(tmp_path: Path, protocol: str) -> None:
    recorder = h2_recorder if protocol == "h2" else h1_recorder
    async with recorder(1) as (rec, port):
        write_disco(tmp_path / "disco", "web", port)
        cfg = router_config(tmp_path / "disco", protocol, "io.l5d.zipkin", classifier_for(protocol))
        async with running_daemon(cfg) as d:
            b3 = (
                "x-b3-traceid: 463ac35c9f6413ad48485a3953bb6124",
                "x-b3-spanid: a2fb4a1d1a96d312",
                "x-b3-parentspanid: 0020000000000001",
                "x-b3-sampled: 1",
            )
            assert await send(d, protocol, *b3) == 200
            first, second = rec.seen
            for h in (first, second):
                assert h.get(b"x-b3-traceid") == b"463ac35c9f6413ad48485a3953bb6124"
                assert h.get_all(b"x-b3-parentspanid") == [b"a2fb4a1d1a96d312"]
                assert h.get(b"x-b3-sampled") == b"1"
                assert h.get(b"l5d-reqid") == b"48485a3953bb6124"
                assert len(h.get_all(b"x-b3-spanid")) == 1
            spans = {first.get(b"x-b3-spanid"), second.get(b"x-b3-spanid")}
            assert len(spans) == 2 and b"a2fb4a1d1a96d312" not in spans
            # A new trace: the retry is a child of the first attempt's (root) span.
            rec.seen.clear()
            rec.fail_first = 1
            assert await send(d, protocol) == 200
            first, second = rec.seen
            root = first.get(b"x-b3-spanid")
            assert root == first.get(b"x-b3-traceid") and first.get(b"x-b3-parentspanid") is None
            assert second.get(b"x-b3-traceid") == second.get(b"x-b3-parentspanid") == root
            assert second.get(b"x-b3-spanid") not in (None, root)
            assert first.get(b"l5d-reqid") == second.get(b"l5d-reqid") == root


async def _requeued(
    d: Running, rec: Recorder, protocol: str, *headers: str
) -> list[tuple[list[int], Headers]]:
    """Send six requests (round robin sends some to the refused endpoint first); each one's 64-bit draws
    (trace and span ids) and the head the live upstream received."""
    rng = RecordingRandom(21)
    d.daemon.routers["out"]._rng = rng
    out: list[tuple[list[int], Headers]] = []
    for _ in range(6):
        before = len(rng.ids)
        assert await send(d, protocol, *headers) == 200
        out.append((rng.ids[before:], rec.seen[-1]))
    assert len(rec.seen) == 6
    metrics = (await curl(f"{d.admin}/admin/metrics.json")).json()
    requeues = sum(v for k, v in metrics.items() if k.endswith("/retries/requeues"))  # type: ignore[union-attr]
    assert requeues == sum(len(ids) - 1 for ids, _ in out) >= 2, (requeues, out)
    return out


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_requeue_after_a_connection_failure_carries_a_new_span(tmp_path: Path, protocol: str) -> None:
    recorder = h2_recorder if protocol == "h2" else h1_recorder
    with closed_port() as dead:
        async with recorder(0) as (rec, port):
            write_disco(tmp_path / "disco", "web", dead, port)
            cfg = router_config(tmp_path / "disco", protocol, "io.l5d.default", classifier_for(protocol))
            async with running_daemon(cfg) as d:
                sent = encode_l5d_trace(0x77, 0x66, 0xABCDEF, SAMPLED).decode()
                for ids, seen in await _requeued(d, rec, protocol, f"l5d-ctx-trace: {sent}"):
                    got = l5d_of(seen)
                    # The last id drawn is the span of the attempt that reached the upstream; a
                    # requeued request drew one per attempt, all different.
                    assert got.span_id == ids[-1] and len(set(ids)) == len(ids)
                    assert (got.parent_id, got.trace_id, got.flags) == (0x77, 0xABCDEF, SAMPLED)
                    assert seen.get(b"l5d-reqid") == b"0000000000abcdef"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_requeue_carries_a_new_b3_span(tmp_path: Path, protocol: str) -> None:
    recorder = h2_recorder if protocol == "h2" else h1_recorder
    with closed_port() as dead:
        async with recorder(0) as (rec, port):
            write_disco(tmp_path / "disco", "web", dead, port)
            cfg = router_config(tmp_path / "disco", protocol, "io.l5d.zipkin", classifier_for(protocol))
            async with running_daemon(cfg) as d:
                for ids, seen in await _requeued(d, rec, protocol):  # new traces
                    root = b"%016x" % ids[0]
                    assert seen.get(b"x-b3-traceid") == seen.get(b"l5d-reqid") == root
                    assert seen.get(b"x-b3-spanid") == b"%016x" % ids[-1]
                    if len(ids) > 1:  # requeued: a child of the first attempt's root span
                        assert seen.get(b"x-b3-parentspanid") == root and len(set(ids)) == len(ids)
                    else:
                        assert seen.get(b"x-b3-parentspanid") is None


# -- HPACK never-indexed trailers through the daemon -----------------------------------------------------


class TrailerOrigin:
    """A raw h2 upstream (its own checks off, so it reads what came on the wire) that records each
    request's head and trailers as its decoder read them (``NeverIndexedHeaderTuple`` for a field
    encoded never-indexed) and answers with a head, one DATA frame and ``trailers``."""

    def __init__(self, trailers: list[tuple[bytes, bytes]], head: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
        self.trailers = trailers
        self.head = [(b":status", b"200"), (b"content-type", b"application/grpc"), *head]
        self.heads: list[list[Any]] = []
        self.request_trailers: list[list[Any]] = []
        self.conns: list[Any] = []

    async def script(self, _i: int, conn: Any, stream: trio.SocketStream) -> None:
        conn.config.validate_outbound_headers = False
        conn.config.normalize_outbound_headers = False
        conn.config.validate_inbound_headers = False
        conn.config.normalize_inbound_headers = False
        self.conns.append(conn)
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            for ev in conn.receive_data(data):
                if type(ev) is h2.events.RequestReceived:
                    self.heads.append(list(ev.headers))
                elif type(ev) is h2.events.DataReceived:
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif type(ev) is h2.events.TrailersReceived:
                    self.request_trailers.append(list(ev.headers))
                if getattr(ev, "stream_ended", None) is not None:
                    sid = ev.stream_id
                    conn.send_headers(sid, self.head)
                    conn.send_data(sid, b"\0\0\0\0\0")
                    conn.send_headers(sid, self.trailers, end_stream=True)
            out = conn.data_to_send()
            if out:
                await stream.send_all(out)


def h2_trailer_config(port: int, classifier: str) -> str:
    return f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: h2
  label: out
  dtab: /svc/web => /$/inet/127.0.0.1/{port};
  servers:
  - {{ip: 127.0.0.1, port: 0}}
  service:
    kind: io.l5d.global
    responseClassifier: {{kind: {classifier}}}
"""


def never_indexed_names(fields: list[Any]) -> set[bytes]:
    return {bytes(f[0]) for f in fields if isinstance(f, NeverIndexedHeaderTuple)}


@pytest.mark.parametrize("classifier", ["io.l5d.h2.nonRetryable5XX", "io.l5d.h2.grpc.default"])
async def test_never_indexed_trailer_fields_stay_never_indexed_both_ways(classifier: str) -> None:
    """RFC 7541 §7.1.3 for trailer sections: a field the client's request trailers carried
    never-indexed reaches the upstream so, and one the upstream's response trailers carried so
    reaches the client so (a gRPC classifier, which adds ``l5d-success-class`` to the trailers,
    included); the other fields of the same sections may be indexed, and no never-indexed one
    enters either compression table."""
    origin = TrailerOrigin(
        [
            (b"grpc-status", b"0"),
            NeverIndexedHeaderTuple(b"x-upstream-secret", b"u" * 24),
            (b"x-up-plain", b"1"),
        ]
    )
    up = ScriptedUpstream(origin.script)
    async with trio.open_nursery() as nursery:
        await nursery.start(up.serve)
        async with (
            running_daemon(h2_trailer_config(up.port, classifier)) as d,
            RawClient.connect(d.port("out")) as c,
        ):
            c.conn.config.validate_outbound_headers = False
            c.conn.config.normalize_outbound_headers = False
            c.conn.config.normalize_inbound_headers = False
            await c.start()
            responses = []
            for path in (b"/pkg.Svc/A", b"/pkg.Svc/B"):
                sid = c.conn.get_next_available_stream_id()
                head = [
                    (b":method", b"POST"),
                    (b":scheme", b"http"),
                    (b":authority", b"web"),
                    (b":path", path),
                    (b"content-type", b"application/grpc"),
                    (b"te", b"trailers"),
                ]
                c.conn.send_headers(sid, head)
                c.conn.send_data(sid, b"\0\0\0\0\0")
                trailers = [
                    NeverIndexedHeaderTuple(b"x-client-secret", b"c" * 24),
                    (b"x-client-plain", b"2"),
                ]
                c.conn.send_headers(sid, trailers, end_stream=True)
                await c.flush()
                status, _body, got = await c.response(sid)
                assert status == 200 and got is not None, (status, c.events[-3:])
                responses.append(list(got))
            client_table = list(c.conn.decoder.header_table.dynamic_entries)
        nursery.cancel_scope.cancel()
    assert len(origin.request_trailers) == 2
    for fields in origin.request_trailers:
        assert never_indexed_names(fields) == {b"x-client-secret"}, fields
        assert (b"x-client-plain", b"2") in [(bytes(n), bytes(v)) for n, v in fields]
    for fields in responses:
        assert never_indexed_names(fields) == {b"x-upstream-secret"}, fields
        assert (b"x-up-plain", b"1") in [(bytes(n), bytes(v)) for n, v in fields]
    upstream_table = list(origin.conns[0].decoder.header_table.dynamic_entries)
    assert not [f for f in upstream_table if f[0] == b"x-client-secret"], upstream_table
    assert not [f for f in client_table if f[0] == b"x-upstream-secret"], client_table


async def test_a_field_the_router_rewrote_stays_never_indexed() -> None:
    """A field that came never-indexed and that the proxy rewrites (``Via``, to which it appends its
    own entry, in a request head and in a response head; ``l5d-ctx-trace``, replaced by its child)
    still holds what the sender protected: it goes on never-indexed, as RFC 7541 §7.1.3 asks of the
    value it carries. A field the proxy adds under another name (``l5d-dst-service``) stays
    indexable."""
    origin = TrailerOrigin(
        [(b"grpc-status", b"0")], head=[NeverIndexedHeaderTuple(b"via", b"2 upstream-mesh-a1b2c3")]
    )
    up = ScriptedUpstream(origin.script)
    async with trio.open_nursery() as nursery:
        await nursery.start(up.serve)
        async with (
            running_daemon(h2_trailer_config(up.port, "io.l5d.h2.nonRetryable5XX")) as d,
            RawClient.connect(d.port("out")) as c,
        ):
            c.conn.config.validate_outbound_headers = False
            c.conn.config.normalize_outbound_headers = False
            c.conn.config.normalize_inbound_headers = False
            await c.start()
            heads = []
            for path in (b"/a", b"/b"):
                sid = c.conn.get_next_available_stream_id()
                head = [
                    (b":method", b"GET"),
                    (b":scheme", b"http"),
                    (b":authority", b"web"),
                    (b":path", path),
                    NeverIndexedHeaderTuple(b"via", b"2 edge-secret-9f8e7d"),
                    NeverIndexedHeaderTuple(b"l5d-ctx-trace", encode_l5d_trace(0x77, 0x66, 0xABC, 0)),
                ]
                c.conn.send_headers(sid, head, end_stream=True)
                await c.flush()
                status, _body, _trailers = await c.response(sid)
                assert status == 200
                heads.append(
                    next(
                        e.headers
                        for e in c.events
                        if getattr(e, "stream_id", 0) == sid and type(e) is h2.events.ResponseReceived
                    )
                )
        nursery.cancel_scope.cancel()
    assert len(origin.heads) == 2
    for fields in origin.heads:
        via = [f for f in fields if f[0] == b"via"]
        assert len(via) == 1 and via[0][1].startswith(b"2 edge-secret-9f8e7d, "), via
        assert isinstance(via[0], NeverIndexedHeaderTuple), via
        child = next(f for f in fields if f[0] == b"l5d-ctx-trace")
        assert isinstance(child, NeverIndexedHeaderTuple), child
        assert decode_l5d_trace(child[1]).parent_id == 0x77  # type: ignore[union-attr]
        assert not isinstance(next(f for f in fields if f[0] == b"l5d-dst-service"), NeverIndexedHeaderTuple)
    for fields in heads:
        via = [f for f in fields if f[0] == b"via"]
        assert len(via) == 1 and via[0][1].startswith(b"2 upstream-mesh-a1b2c3, "), via
        assert isinstance(via[0], NeverIndexedHeaderTuple), via
