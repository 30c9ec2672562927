"""``H2UpstreamPool`` connection and stream life cycle: what a retiring connection still writes, who
reset a stalled stream, h2's own stream count, the request body's iterator across a resend, and a
pool closed while streams are in flight.

Real sockets on loopback; the upstreams are scripted with the ``h2`` library
(``tests.grpc_fixtures.rawh2.ScriptedUpstream``) so each test controls exactly which frames the
pool sees, and they record every event the pool's frames produce.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import AsyncIterator
from typing import Any

import h2.connection
import h2.events
import h2.settings
import pytest
import trio

from hostproxy.h2 import H2ClientSettings, H2UpstreamPool
from hostproxy.h2.upstream import H2StreamStalled
from hostproxy.http.errors import ProxyInternalError
from hostproxy.http.message import Body, Headers, Request
from hostproxy.http.upstream import PoolParams
from tests.grpc_fixtures.rawh2 import ScriptedUpstream, read_events

pytestmark = pytest.mark.timeout(30)

CANCEL = 0x8
REFUSED_STREAM = 0x7


class GatedSource:
    """A request body: ``first``, then (once the test sets ``gate``) ``rest``, then its end."""

    def __init__(self, first: bytes, rest: bytes) -> None:
        self.first, self.rest = first, rest
        self.gate = trio.Event()
        self.step = 0
        self.trailers: Headers | None = None

    async def read_chunk(self) -> bytes | None:
        self.step += 1
        if self.step == 1:
            return self.first
        if self.step == 2:
            await self.gate.wait()
            return self.rest
        return None

    async def aclose(self) -> None:
        pass


def post(path: str, source: GatedSource) -> Request:
    return Request("POST", path, Headers([(b"host", b"upstream")]), Body(source, None))


def get(path: str) -> Request:
    return Request("GET", path, Headers([(b"host", b"upstream")]), Body.empty())


@contextlib.asynccontextmanager
async def scripted(up: ScriptedUpstream) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(up.serve)
        yield port
        nursery.cancel_scope.cancel()


async def pump(conn: h2.connection.H2Connection, stream: trio.SocketStream, seen: list[Any]) -> bool:
    """Read once into ``seen``; False at the end of the connection."""
    try:
        events = await read_events(conn, stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, h2.exceptions.ProtocolError):
        return False
    seen.extend(events)
    return bool(events)


async def test_a_retiring_connection_writes_its_last_frames_and_goaway_before_closing() -> None:
    """The upstream sends GOAWAY (last stream 1) and answers stream 1 before its request body
    ended; the pool's last frame on the connection, the body's END_STREAM, makes the connection
    retire.  The upstream must receive that END_STREAM and then the pool's GOAWAY, and only then
    the close (stopping the connection at once dropped both)."""
    seen: list[Any] = []
    closed = trio.Event()

    async def script(i: int, conn: h2.connection.H2Connection, stream: trio.SocketStream) -> None:
        try:
            answered = False
            while await pump(conn, stream, seen):
                if not answered and any(type(e) is h2.events.RequestReceived for e in seen):
                    answered = True
                    conn.close_connection(last_stream_id=1)
                    conn.state_machine.state = h2.connection.ConnectionState.SERVER_OPEN
                    conn.send_headers(1, [(b":status", b"200")])
                    conn.send_data(1, b"ok", end_stream=True)
                    await stream.send_all(conn.data_to_send())
        finally:
            closed.set()

    up = ScriptedUpstream(script)
    async with scripted(up) as port, H2UpstreamPool("127.0.0.1", port) as pool:
        source = GatedSource(b"first;", b"last")
        resp = await pool.request(post("/p", source))
        assert resp.status == 200 and await resp.body.read_all() == b"ok"
        source.gate.set()
        with trio.fail_after(10):
            await closed.wait()
    kinds = [type(e) for e in seen]
    assert h2.events.StreamEnded in kinds, kinds
    assert h2.events.ConnectionTerminated in kinds, kinds
    assert kinds.index(h2.events.StreamEnded) < kinds.index(h2.events.ConnectionTerminated), kinds
    body = b"".join(e.data for e in seen if type(e) is h2.events.DataReceived)
    assert body == b"first;last"
    goaway = next(e for e in seen if type(e) is h2.events.ConnectionTerminated)
    assert goaway.error_code == 0


async def test_a_stream_this_side_reset_for_a_stalled_window_is_not_reported_as_the_upstreams_reset() -> None:
    """An upstream that never opens its flow-control window for the request body (initial window
    0) and never answers: after ``stall_timeout_s`` the pool resets the stream itself (CANCEL).
    The error says so (``H2StreamStalled``, not "the upstream reset"), the upstream sees the
    CANCEL, and the stream is off the connection's books."""
    seen: list[Any] = []

    async def script(i: int, conn: h2.connection.H2Connection, stream: trio.SocketStream) -> None:
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        await stream.send_all(conn.data_to_send())
        while await pump(conn, stream, seen):
            pass

    up = ScriptedUpstream(script)
    settings = H2ClientSettings(stall_timeout_s=0.2, ping_interval_s=None)
    async with scripted(up) as port, H2UpstreamPool("127.0.0.1", port, settings=settings) as pool:
        with pytest.raises(H2StreamStalled) as info:
            await pool.request(post("/p", GatedSource(b"x" * 10, b"")))
        assert info.value.cause == "upstream/reset"
        assert str(info.value).startswith("127.0.0.1:"), str(info.value)
        assert "hostproxy reset the stream (CANCEL)" in str(info.value)
        with trio.fail_after(5):
            while not any(type(e) is h2.events.StreamReset for e in seen):
                await trio.sleep(0.01)
        resets = [e.error_code for e in seen if type(e) is h2.events.StreamReset]
        assert resets == [CANCEL]
        stats = pool.statistics()
        assert (stats["in_use"], stats["idle"], stats["resets_sent"]) == (0, 1, 1), stats


async def answer_all(i: int, conn: h2.connection.H2Connection, stream: trio.SocketStream) -> None:
    """Answers every ended request ``200 ok:<connection>``, except ``/never``."""
    paths: dict[int, bytes] = {}
    while True:
        events = await read_events(conn, stream)
        if not events:
            return
        for ev in events:
            if type(ev) is h2.events.RequestReceived:
                paths[ev.stream_id] = dict(ev.headers)[b":path"]
            if type(ev) is h2.events.StreamEnded and paths.get(ev.stream_id) != b"/never":
                conn.send_headers(ev.stream_id, [(b":status", b"200")])
                conn.send_data(ev.stream_id, b"ok:%d" % i, end_stream=True)
        await stream.send_all(conn.data_to_send())


def limited(max_streams: int) -> Any:
    async def script(i: int, conn: h2.connection.H2Connection, stream: trio.SocketStream) -> None:
        conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams})
        await stream.send_all(conn.data_to_send())
        await answer_all(i, conn, stream)

    return script


async def test_a_stream_h2_counts_but_the_pool_does_not_never_fails_the_next_request() -> None:
    """The upstream allows one stream per connection.  A stream open in h2's state but unknown to
    the pool's books (here opened behind the pool's back) makes ``h2`` refuse the next stream with
    ``TooManyStreamsError``; the request must go on a fresh connection, not fail as an internal
    error."""
    up = ScriptedUpstream(limited(1))
    async with scripted(up) as port, H2UpstreamPool("127.0.0.1", port) as pool:
        resp = await pool.request(get("/first"))
        assert await resp.body.read_all() == b"ok:0"
        [link] = pool._links
        sid = link.conn.get_next_available_stream_id()
        link.conn.send_headers(
            sid, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"u"), (b":path", b"/never")]
        )
        link.flush()
        resp = await pool.request(get("/second"))
        assert resp.status == 200 and await resp.body.read_all() == b"ok:1"
        assert pool.statistics()["connects"] == 2


async def test_the_request_body_iterator_of_a_refused_attempt_is_closed_before_the_resend() -> None:
    """A stream refused (RST_STREAM REFUSED_STREAM) while its body is still being sent is sent
    again with the same body; the first attempt's iterator over the body is closed by the pool,
    not left for the garbage collector (whose finalizer would close it at any later time)."""
    refused = trio.Event()

    async def script(i: int, conn: h2.connection.H2Connection, stream: trio.SocketStream) -> None:
        # A window of 4 octets: the body's first chunk is only partly sent when stream 1 is
        # refused, so the pool's sender is inside the body iterator (after a chunk) at that moment.
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 4})
        await stream.send_all(conn.data_to_send())
        bodies: dict[int, bytearray] = {}
        while True:
            events = await read_events(conn, stream)
            if not events:
                return
            for ev in events:
                sid = getattr(ev, "stream_id", None)
                if type(ev) is h2.events.RequestReceived and sid != 1:
                    bodies[ev.stream_id] = bytearray()
                elif type(ev) is h2.events.DataReceived and sid == 1 and not refused.is_set():
                    conn.reset_stream(1, error_code=REFUSED_STREAM)
                    refused.set()
                elif type(ev) is h2.events.DataReceived and sid in bodies:
                    bodies[ev.stream_id] += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif type(ev) is h2.events.StreamEnded and sid in bodies:
                    conn.send_headers(ev.stream_id, [(b":status", b"200")])
                    conn.send_data(ev.stream_id, bytes(bodies.pop(ev.stream_id)), end_stream=True)
            await stream.send_all(conn.data_to_send())

    finalized: list[str] = []
    firstiter, finalizer = sys.get_asyncgen_hooks()

    def record(agen: Any) -> None:
        finalized.append(agen.__qualname__)
        if finalizer is not None:
            finalizer(agen)

    up = ScriptedUpstream(script)
    sys.set_asyncgen_hooks(firstiter, record)
    try:
        async with scripted(up) as port, H2UpstreamPool("127.0.0.1", port) as pool:
            source = GatedSource(b"0123456789", b"rest")
            source.gate.set()
            resp = await pool.request(post("/p", source))
            assert resp.status == 200 and await resp.body.read_all() == b"0123456789rest"
            assert refused.is_set() and pool.statistics()["resent"] == 1
            gc.collect()
            await trio.sleep(0)
    finally:
        sys.set_asyncgen_hooks(firstiter, finalizer)
    assert [q for q in finalized if "_Replay" in q] == [], finalized


async def test_a_closed_pool_lets_streams_in_flight_finish_then_closes_their_connection() -> None:
    """``aclose`` refuses new requests at once, closes idle connections, and lets a stream in
    flight finish on its connection, which closes (GOAWAY, then the socket) after it."""
    seen: list[Any] = []
    closed = trio.Event()

    async def script(i: int, conn: h2.connection.H2Connection, stream: trio.SocketStream) -> None:
        try:
            await answer_body_seen(conn, stream, seen)
        finally:
            closed.set()

    up = ScriptedUpstream(script)
    async with scripted(up) as port, trio.open_nursery() as nursery:
        pool = H2UpstreamPool("127.0.0.1", port, PoolParams(), nursery=nursery)
        source = GatedSource(b"part1;", b"part2")
        resp = await pool.request(post("/p", source))
        assert resp.status == 200
        await pool.aclose()
        with pytest.raises(ProxyInternalError, match=r"^pool for 127\.0\.0\.1:\d+ is closed$"):
            await pool.request(get("/new"))
        assert pool.statistics()["in_use"] == 1
        source.gate.set()
        assert await resp.body.read_all() == b"part1;part2"
        with trio.fail_after(10):
            await closed.wait()
        assert [type(e) for e in seen][-1] is h2.events.ConnectionTerminated
        assert pool.statistics()["open"] == 0
        nursery.cancel_scope.cancel()


async def answer_body_seen(
    conn: h2.connection.H2Connection, stream: trio.SocketStream, seen: list[Any]
) -> None:
    """Streams each request's body back as it arrives (head at once), recording every event."""
    while True:
        try:
            events = await read_events(conn, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return
        if not events:
            return
        seen.extend(events)
        for ev in events:
            if type(ev) is h2.events.RequestReceived:
                conn.send_headers(ev.stream_id, [(b":status", b"200")])
            elif type(ev) is h2.events.DataReceived:
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                conn.send_data(ev.stream_id, ev.data)
            elif type(ev) is h2.events.StreamEnded:
                conn.send_data(ev.stream_id, b"", end_stream=True)
        await stream.send_all(conn.data_to_send())
