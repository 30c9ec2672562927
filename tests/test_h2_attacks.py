"""HTTP/2 flood attacks against the proxy, crafted frame by frame over raw sockets.

Each test checks that the attacker is cut off (GOAWAY ENHANCE_YOUR_CALM, a reset or a closed
connection), that another client is served during the attack, and that what the proxy queued or
started stays bounded.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import h2.events
import hpack
import pytest
import trio
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from hostproxy.h2 import H2Server, H2ServerParams
from hostproxy.http.message import Body, Headers, Request, Response
from tests.grpc_fixtures.h2proxy import H2Proxy, running_h2_proxy
from tests.grpc_fixtures.rawh2 import PREFACE, RawClient, read_frames_until_closed

pytestmark = pytest.mark.timeout(60)
ENHANCE_YOUR_CALM = 0xB


class Counting:
    """A response body of ``total`` bytes produced on demand; counts what was produced."""

    def __init__(self, app: App, total: int) -> None:
        self.app = app
        self.left = total
        self.trailers = None

    async def read_chunk(self) -> bytes | None:
        if self.left <= 0:
            return None
        n = min(16384, self.left)
        self.left -= n
        self.app.produced += n
        return b"x" * n

    async def aclose(self) -> None:
        self.app.closed_early += 1


class App:
    def __init__(self) -> None:
        self.started = 0
        self.big_started = 0
        self.produced = 0
        self.closed_early = 0

    async def handle(self, req: Request, info: object) -> Response:
        self.started += 1
        if req.target == "/slow":
            await trio.sleep(30)
        if req.target.startswith("/big/"):
            self.big_started += 1
            return Response(200, body=Body(Counting(self, int(req.target[5:])), None))
        return Response(200, headers=Headers([(b"content-type", b"text/plain")]), body=Body.from_bytes(b"ok"))


@contextlib.asynccontextmanager
async def setup(params: H2ServerParams | None = None) -> AsyncIterator[tuple[App, H2Proxy]]:
    app = App()
    upstream = H2Server(app.handle, H2ServerParams())
    async with trio.open_nursery() as nursery:
        [(_, port)] = await nursery.start(upstream.serve)
        async with running_h2_proxy(port, params) as proxy:
            yield app, proxy
        nursery.cancel_scope.cancel()


async def bystander(port: int, rounds: int, results: list[int]) -> None:
    """Another client, served while the attack runs."""
    async with RawClient.connect(port) as c:
        await c.start()
        for _ in range(rounds):
            sid = await c.request("/", port)
            status, body, _ = await c.response(sid)
            results.append(status if body == b"ok" else -status)
            await trio.sleep(0.01)


async def attack_and_watch(proxy: H2Proxy, payloads: list[bytes]) -> tuple[list[Frame], list[int]]:
    """Send ``payloads`` from an attacker while a bystander keeps requesting; returns every frame
    the attacker received before the proxy closed its connection."""
    results: list[int] = []
    async with trio.open_nursery() as nursery, RawClient.connect(proxy.port) as attacker:
        nursery.start_soon(bystander, proxy.port, 20, results)
        await attacker.send_raw(PREFACE + SettingsFrame(0).serialize())
        for p in payloads:
            try:
                await attacker.send_raw(p)
            except (trio.BrokenResourceError, OSError):
                break
        frames = await read_frames_until_closed(attacker.stream)
    return frames, results


def goaway_code(frames: list[Frame]) -> int | None:
    goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
    return goaways[-1].error_code if goaways else None


def statuses(frames: list[Frame]) -> list[int]:
    decoder = hpack.Decoder()
    out = []
    for f in frames:
        if isinstance(f, HeadersFrame):
            out.append(int(dict(decoder.decode(f.data, raw=True))[b":status"]))
    return out


async def test_rapid_reset_gets_enhance_your_calm() -> None:
    params = H2ServerParams(reset_burst=100, reset_rate_per_s=10.0)
    async with setup(params) as (app, proxy):
        attacker = RawClient(None)  # type: ignore[arg-type]
        block = attacker.header_block(
            [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/slow")]
        )
        payloads = []
        for batch in range(10):
            frames = []
            for i in range(500):
                sid = 1 + 2 * (batch * 500 + i)
                frames.append(HeadersFrame(sid, data=block, flags=["END_HEADERS", "END_STREAM"]))
                frames.append(RstStreamFrame(sid, error_code=8))
            payloads.append(attacker.frames(*frames))
        frames, results = await attack_and_watch(proxy, payloads)
        assert goaway_code(frames) == ENHANCE_YOUR_CALM
        assert results == [200] * 20
        stats = proxy.server.statistics()
        assert stats["flood_goaways"] == {"rapid-reset": 1}
        # Upstream work started for at most the budget plus what one read carried.
        assert app.started <= 100 + 1000


async def test_ping_flood_is_cut_off_with_bounded_acks() -> None:
    async with setup(H2ServerParams(ping_burst=20)) as (_app, proxy):
        flood = b"".join(PingFrame(0, opaque_data=i.to_bytes(8, "big")).serialize() for i in range(20000))
        frames, results = await attack_and_watch(proxy, [flood])
        acks = [f for f in frames if isinstance(f, PingFrame) and "ACK" in f.flags]
        assert len(acks) <= 20
        assert goaway_code(frames) == ENHANCE_YOUR_CALM
        assert results == [200] * 20
        assert proxy.server.statistics()["flood_goaways"] == {"ping": 1}


async def test_settings_flood_is_cut_off() -> None:
    async with setup(H2ServerParams(settings_burst=20)) as (_app, proxy):
        flood = b"".join(SettingsFrame(0, settings={0x3: 100 + i % 5}).serialize() for i in range(20000))
        frames, results = await attack_and_watch(proxy, [flood])
        assert goaway_code(frames) == ENHANCE_YOUR_CALM
        acks = [f for f in frames if isinstance(f, SettingsFrame) and "ACK" in f.flags]
        assert len(acks) <= 21
        assert results == [200] * 20
        assert proxy.server.statistics()["flood_goaways"] == {"settings": 1}


async def test_continuation_flood_is_cut_off() -> None:
    async with setup() as (_app, proxy):
        attacker = RawClient(None)  # type: ignore[arg-type]
        block = attacker.header_block(
            [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]
        )
        frames = [HeadersFrame(1, data=block[:5])] + [ContinuationFrame(1, data=b"") for _ in range(5000)]
        received, results = await attack_and_watch(proxy, [attacker.frames(*frames)])
        assert goaway_code(received) == ENHANCE_YOUR_CALM
        assert results == [200] * 20
        assert proxy.server.statistics()["flood_goaways"] == {"continuation": 1}


async def test_empty_data_frames_flood_is_cut_off() -> None:
    async with setup() as (_app, proxy):
        attacker = RawClient(None)  # type: ignore[arg-type]
        block = attacker.header_block(
            [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/slow")]
        )
        frames = [HeadersFrame(1, data=block, flags=["END_HEADERS"])] + [DataFrame(1, data=b"")] * 5000
        received, results = await attack_and_watch(proxy, [attacker.frames(*frames)])
        assert goaway_code(received) == ENHANCE_YOUR_CALM
        assert results == [200] * 20


async def test_header_count_bomb_gets_431_then_goaway() -> None:
    params = H2ServerParams(max_header_count=100, max_refused_header_lists=5)
    async with setup(params) as (app, proxy):
        attacker = RawClient(None)  # type: ignore[arg-type]
        base = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]
        # One dynamic-table entry, then thousands of 1-octet references to it (the "HTTP/2 Bomb").
        first = attacker.header_block(base + [(b"c", b"d")])
        ref = attacker.header_block([(b"c", b"d")])
        assert len(ref) == 1
        frames = [HeadersFrame(1, data=first, flags=["END_HEADERS", "END_STREAM"])]
        for i in range(10):
            block = attacker.header_block(base) + ref * 1500
            frames.append(HeadersFrame(3 + 2 * i, data=block, flags=["END_HEADERS", "END_STREAM"]))
        received, results = await attack_and_watch(proxy, [attacker.frames(*frames)])
        assert goaway_code(received) == ENHANCE_YOUR_CALM
        assert set(statuses(received)[1:]) == {431}
        assert results == [200] * 20
        assert app.started <= 21  # only the small first request (and the bystander's) went upstream
        stats = proxy.server.statistics()
        assert stats["flood_goaways"] == {"header-lists": 1}
        assert stats["header_lists_refused"] == 6


async def test_reader_that_never_reads_is_dropped_with_bounded_buffer() -> None:
    params = H2ServerParams(max_outbound_bytes=256 * 1024, outbound_stall_timeout_s=1.0)
    async with setup(params) as (app, proxy):
        results: list[int] = []
        async with trio.open_nursery() as nursery, RawClient.connect(proxy.port) as greedy:
            # Open every window as wide as possible, ask for 20 huge responses, then never read.
            await greedy.start({0x4: 2**31 - 1})
            await greedy.send_raw(WindowUpdateFrame(0, window_increment=2**31 - 1 - 65535).serialize())
            for _ in range(20):
                await greedy.request("/big/1000000000", proxy.port)
            nursery.start_soon(bystander, proxy.port, 20, results)
            with trio.fail_after(30):
                while proxy.server.statistics()["connections"] > 1 or not results:
                    await trio.sleep(0.05)
        assert results == [200] * 20
        peak = proxy.server.statistics()["peak_outbound_bytes"]
        assert peak <= 256 * 1024 + 2 * 65536
        # The upstream streams were cancelled: production stopped far short of 20 GB, and every big
        # response that reached the upstream was closed early (requests the proxy had not forwarded yet
        # when it dropped the greedy client never started upstream).
        assert app.produced < 200 * 1024 * 1024
        assert app.big_started >= 1
        with trio.fail_after(10):
            while app.closed_early < app.big_started:
                await trio.sleep(0.05)
        assert app.closed_early == app.big_started


async def test_stream_stalled_on_zero_window_is_reset() -> None:
    async with setup(H2ServerParams(stall_timeout_s=0.3)) as (app, proxy):
        async with RawClient.connect(proxy.port) as client:
            await client.start({0x4: 0})  # SETTINGS_INITIAL_WINDOW_SIZE = 0: no DATA may be sent
            sid = await client.request("/big/1000000", proxy.port)
            ev = await client.until(lambda e: type(e) is h2.events.StreamReset and e.stream_id == sid)
            assert ev is not None and ev.error_code == 8  # CANCEL
            assert proxy.server.statistics()["stalled_streams"] == 1
            # The connection still serves other streams.
            client.conn.update_settings({0x4: 65535})
            await client.flush()
            sid2 = await client.request("/", proxy.port)
            status, body, _ = await client.response(sid2)
            assert (status, body) == (200, b"ok")
        assert app.produced < 1000000
