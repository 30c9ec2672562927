"""UpstreamPool against real loopback upstreams: reuse, stale connections, errors and causes."""

from __future__ import annotations

import pytest
import trio
from upstreams import closed_port, running_proxy, running_upstream, stalled_port

from hostproxy.http import Body, ConnectError, Headers, Request, RequestTimeout, UpstreamPool, UpstreamReset
from hostproxy.http.sockstream import SockStream
from hostproxy.http.upstream import PoolState, _Conn


def get(target: str, body: Body | None = None, method: str = "GET") -> Request:
    return Request(method, target, Headers([(b"host", b"up")]), body or Body.empty(), authority="up")


async def test_keep_alive_connection_is_reused_when_clean() -> None:
    async with running_upstream() as up, UpstreamPool("127.0.0.1", up.port) as pool:
        for _ in range(3):
            r = await pool.request(get("/len/5"))
            assert await r.body.read_all() == b"yyyyy"
        stats = pool.statistics()
        assert (stats["connects"], stats["reused"], stats["open"], stats["idle"], stats["in_use"]) == (
            1,
            2,
            1,
            1,
            0,
        )
        assert up.connections == 1


async def test_connections_to_addresses_write_requests_together() -> None:
    """A pool's plaintext connections to an IP address let the loop's other tasks run before each
    write (``SockStream.yield_before_send``), so a burst's requests leave together."""
    async with running_upstream() as up, UpstreamPool("127.0.0.1", up.port) as pool:
        r = await pool.request(get("/len/3"))
        assert await r.body.read_all() == b"yyy"
        (conn,) = pool._state.idle
        assert isinstance(conn.stream, SockStream) and conn.stream.yield_before_send


async def test_response_not_read_to_the_end_closes_the_connection() -> None:
    async with running_upstream() as up, UpstreamPool("127.0.0.1", up.port) as pool:
        r = await pool.request(get("/big/1000000"))
        first = await r.body.__anext__()
        assert first
        assert pool.statistics()["in_use"] == 1
        await r.body.aclose()
        assert (pool.statistics()["open"], pool.statistics()["in_use"]) == (0, 0)
        r = await pool.request(get("/"))
        assert await r.body.read_all() == b"ok"
        assert up.connections == 2


async def test_idle_connection_closed_by_upstream_is_detected() -> None:
    async with running_upstream(idle_close_s=0.1) as up, UpstreamPool("127.0.0.1", up.port) as pool:
        assert await (await pool.request(get("/"))).body.read_all() == b"ok"
        with trio.fail_after(10):
            while pool.statistics()["idle"] and not _idle_readable(pool):
                await trio.sleep(0.02)
        assert await (await pool.request(get("/"))).body.read_all() == b"ok"
        assert pool.statistics()["stale_discarded"] == 1
        assert len(up.requests) == 2 and up.connections == 2


def _idle_readable(pool: UpstreamPool) -> bool:
    return all(c.readable_while_idle() for c in pool._state.idle)


async def test_request_failing_before_any_byte_on_a_stale_connection_is_resent_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Let the stale connection past the idle check, so the write itself fails (RST from upstream).
    monkeypatch.setattr(_Conn, "readable_while_idle", lambda self: False)
    async with (
        running_upstream(idle_close_s=0.1, idle_reset=True) as up,
        UpstreamPool("127.0.0.1", up.port) as pool,
    ):
        assert (
            await (await pool.request(get("/count", Body.from_bytes(b"abc"), "POST"))).body.read_all() == b"3"
        )
        await trio.sleep(0.5)  # the upstream resets the idle connection
        r = await pool.request(get("/count", Body.from_bytes(b"abcd"), "POST"))
        assert await r.body.read_all() == b"4"
        assert pool.statistics()["resent"] == 1
        assert [q.target for q in up.requests] == ["/count", "/count"]  # never duplicated


async def test_failed_write_on_a_stream_that_cannot_tell_what_left_is_reported_not_resent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The same stale connection over a stream that does not say how much of a failed write left (a
    # trio stream, as for TLS or a host name): the pool cannot prove nothing was sent, so it reports.
    monkeypatch.setattr(_Conn, "readable_while_idle", lambda self: False)

    async def connect(host: str, port: int, timeout_s: float) -> trio.SocketStream:
        return await trio.open_tcp_stream(host, port)

    async with (
        running_upstream(idle_close_s=0.1, idle_reset=True) as up,
        UpstreamPool("127.0.0.1", up.port, connector=connect) as pool,
    ):
        assert (
            await (await pool.request(get("/count", Body.from_bytes(b"abc"), "POST"))).body.read_all() == b"3"
        )
        await trio.sleep(0.5)  # the upstream resets the idle connection
        with pytest.raises(UpstreamReset) as info:
            await pool.request(get("/count", Body.from_bytes(b"abcd"), "POST"))
        assert not info.value.retryable
        assert pool.statistics()["resent"] == 0
        assert [q.target for q in up.requests] == ["/count"]


async def test_connect_refused() -> None:
    with closed_port() as port:
        async with UpstreamPool("127.0.0.1", port) as pool:
            with pytest.raises(ConnectError) as info:
                await pool.request(get("/"))
    assert info.value.cause == "connect/refused" and info.value.retryable
    assert str(info.value) == f"Unable to establish connection to 127.0.0.1:{port}: Connection refused"
    assert pool.statistics()["connect_failures"] == 1


async def test_connect_timeout() -> None:
    with stalled_port() as port:
        async with UpstreamPool("127.0.0.1", port) as pool:
            with pytest.raises(ConnectError) as info:
                await pool.request(get("/"), connect_timeout=0.2)
        assert info.value.cause == "connect/timeout"
        assert str(info.value) == (
            f"Unable to establish connection to 127.0.0.1:{port}: no answer within connect timeout 200 ms"
        )


async def test_upstream_reset_mid_response() -> None:
    async with running_upstream() as up, UpstreamPool("127.0.0.1", up.port) as pool:
        r = await pool.request(get("/reset"))
        with pytest.raises(UpstreamReset) as info:
            await r.body.read_all()
        assert info.value.cause == "upstream/reset"
        assert pool.statistics()["open"] == 0


async def test_response_timeout() -> None:
    async with running_upstream() as up, UpstreamPool("127.0.0.1", up.port) as pool:
        with pytest.raises(
            RequestTimeout, match=rf"^no response from 127.0.0.1:{up.port} within 0.2s$"
        ) as info:
            await pool.request(get("/slow/3000"), response_timeout=0.2)
        assert info.value.cause == "timeout/request"
        assert pool.statistics()["open"] == 0


async def test_proxy_answers_502_naming_the_endpoint_when_refused() -> None:
    with closed_port() as port:
        async with running_proxy(port) as proxy:
            r = await trio.run_process(
                ["curl", "-sS", "-i", f"http://127.0.0.1:{proxy.port}/"], capture_stdout=True, check=False
            )
    out = r.stdout.decode()
    assert out.startswith("HTTP/1.1 502 Bad Gateway")
    assert f"l5d-err: Unable+to+establish+connection+to+127.0.0.1%3A{port}%3A+Connection+refused" in out
    assert "l5d-retryable: true" in out


def test_pool_state_lifo_expiry_and_max_idle() -> None:
    class C:
        def __init__(self, name: str) -> None:
            self.name = name
            self.idle_since = 0.0

    state = PoolState(idle_timeout_s=10, max_idle=2)
    a, b, c = C("a"), C("b"), C("c")
    for _ in (a, b, c):
        state.opened()
    assert state.checkin(a, 0.0, True) == []
    assert state.checkin(b, 5.0, True) == []
    assert state.checkin(c, 6.0, True) == [a]  # over max_idle: the oldest goes
    conn, to_close = state.checkout(7.0, lambda _: False)
    assert conn is c and to_close == []
    conn, to_close = state.checkout(16.0, lambda _: False)
    assert conn is None and to_close == [b]  # idle 11 s > 10 s
    assert state.in_use == 1
    assert state.checkin(c, 16.0, False) == [c] and state.in_use == 0
