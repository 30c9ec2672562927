"""The HTTP/1.1 server's idle deadlines kept by one timer per server (``IdleTimer``) instead of a
deadline per wait: same closing times, drain behaviour, and no request cut off by a late timer."""

from __future__ import annotations

import os
from math import inf
from typing import Any

import trio
from test_http_server import parse_responses
from upstreams import running_proxy, running_upstream

from hostproxy.http import ServerParams
from hostproxy.http.listening import IdleTimer
from hostproxy.http.server import DRAIN_FIRST_REQUEST_S

GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


async def read_until_close(stream: trio.SocketStream, timeout: float = 10) -> bytes:
    data = b""
    with trio.fail_after(timeout):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return data
            if not chunk:
                return data
            data += chunk


async def read_response(stream: trio.SocketStream) -> bytes:
    data = b""
    with trio.fail_after(10):
        while not parse_ok(data):
            chunk = await stream.receive_some(65536)
            assert chunk, "closed before a whole response"
            data += chunk
    return data


def parse_ok(data: bytes) -> bool:
    try:
        return len(parse_responses(data)) == 1 and data.endswith(b"ok")
    except ValueError:
        return False


async def test_each_idle_connection_closes_on_its_own_deadline() -> None:
    params = ServerParams(idle_timeout_s=0.4)
    async with running_upstream() as up, running_proxy(up.port, params) as proxy:
        closed_after: dict[str, float] = {}

        async def client(name: str, delay: float) -> None:
            await trio.sleep(delay)
            stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
            async with stream:
                await stream.send_all(GET)
                await read_response(stream)
                start = trio.current_time()
                assert await read_until_close(stream) == b""
                closed_after[name] = trio.current_time() - start

        async with trio.open_nursery() as nursery:
            nursery.start_soon(client, "first", 0)
            nursery.start_soon(client, "second", 0.15)
            nursery.start_soon(client, "third", 0.3)
        for name, waited in closed_after.items():
            assert 0.35 <= waited < 1.5, (name, waited)
        timer = proxy.server.idle_timer
        assert timer.waiting == {}
        await wait_for(lambda: not timer._running)


async def test_a_connection_kept_busy_is_not_closed_and_its_deadline_restarts() -> None:
    params = ServerParams(idle_timeout_s=0.3)
    async with running_upstream() as up, running_proxy(up.port, params) as proxy:
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with stream:
            for _ in range(6):  # 0.6 s in all, each wait shorter than the timeout
                await stream.send_all(GET)
                await read_response(stream)
                await trio.sleep(0.1)
            start = trio.current_time()
            assert await read_until_close(stream) == b""
            assert 0.15 <= trio.current_time() - start < 1.5


async def test_a_request_that_arrived_is_served_even_when_the_timer_fires_late() -> None:
    async with running_upstream() as up, running_proxy(up.port) as proxy:
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with stream:
            await stream.send_all(GET)
            await read_response(stream)
            [conn] = proxy.server._conns
            timer = proxy.server.idle_timer
            await wait_for(lambda: conn in timer.waiting)
            # The request's bytes are in the server's socket before the connection task runs again
            # (written without a checkpoint): a deadline that passes now must not cut it off.
            assert os.write(stream.socket.fileno(), GET) == len(GET)
            del timer.waiting[conn]
            conn.idle_expired()
            await read_response(stream)
            # Without bytes pending, the same call closes the idle connection quietly.
            await wait_for(lambda: conn in timer.waiting)
            del timer.waiting[conn]
            conn.idle_expired()
            assert await read_until_close(stream) == b""


async def test_drain_closes_idle_keepalive_at_once_and_gives_a_new_connection_its_first_request() -> None:
    async with running_upstream() as up, running_proxy(up.port) as proxy:
        used = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        fresh = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        slow = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with used, fresh, slow:
            await used.send_all(GET)
            await read_response(used)
            timer = proxy.server.idle_timer
            await wait_for(lambda: len(timer.waiting) == 3)
            start = trio.current_time()
            proxy.server.drain()
            assert await read_until_close(used) == b""
            assert trio.current_time() - start < 0.5
            # A connection that has not sent its first request gets DRAIN_FIRST_REQUEST_S for it.
            await fresh.send_all(GET)
            [(status, headers, _)] = parse_responses(await read_until_close(fresh))
            assert (status, headers["connection"]) == (200, "close")
            assert await read_until_close(slow) == b""
            assert DRAIN_FIRST_REQUEST_S - 0.1 <= trio.current_time() - start < DRAIN_FIRST_REQUEST_S + 1


async def wait_for(predicate: Any) -> None:
    with trio.fail_after(5):
        while not predicate():
            await trio.sleep(0.01)


class _Server:
    """What the timer reads from its server."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.draining = False


class _Waiter:
    def __init__(self, name: str, log: list[tuple[str, float]]) -> None:
        self.name = name
        self.log = log

    def idle_expired(self) -> None:
        self.log.append((self.name, trio.current_time()))


async def test_timer_fires_in_deadline_order_and_stops_when_nothing_waits(autojump_clock: Any) -> None:
    log: list[tuple[str, float]] = []
    async with trio.open_nursery() as nursery:
        timer = IdleTimer(_Server(nursery))  # type: ignore[arg-type]
        a, b, c = (_Waiter(n, log) for n in "abc")
        timer.add(c, inf)  # no deadline (no idle timeout): only a drain ends it
        assert not timer._running
        del timer.waiting[c]
        # One idle timeout per server: deadlines are added in order.
        timer.add(a, 10.0)
        timer.add(b, 20.0)
        await trio.sleep(15)
        assert log == [("a", 10.0)]
        del timer.waiting[b]  # b's wait ended before its deadline
        timer.add(b, 40.0)
        await trio.sleep(30)
        assert log == [("a", 10.0), ("b", 40.0)]
        assert timer.waiting == {}
        assert timer._running  # nothing left to time: it sleeps until the next add
        timer.add(a, 50.0)
        await trio.sleep(10)
        assert log[2:] == [("a", 50.0)]
        timer.add(a, 70.0)
        timer.stop()
        assert timer._running  # ends when it runs next
        timer.add(b, 80.0)  # a new wait after stop keeps the timer going
        await trio.sleep(30)
        assert log[3:] == [("a", 70.0), ("b", 80.0)]
        timer.stop()
        await trio.sleep(1)
        assert not timer._running
        timer.add(c, 200.0)  # and one after it ended starts it again
        await trio.sleep(200)
        assert log[5:] == [("c", 200.0)]
        timer.stop()


async def test_drain_brings_deadlines_forward_out_of_order(autojump_clock: Any) -> None:
    log: list[tuple[str, float]] = []
    async with trio.open_nursery() as nursery:
        server = _Server(nursery)
        timer = IdleTimer(server)  # type: ignore[arg-type]
        a, b = (_Waiter(n, log) for n in "ab")
        timer.add(a, 60.0)
        timer.add(b, 61.0)
        await trio.sleep(1)
        server.draining = True
        timer.advance(b, 2.0)
        timer.advance(a, 100.0)  # later: no change
        await trio.sleep(100)
        assert log == [("b", 2.0), ("a", 60.0)]
        timer.stop()


async def test_life_time_asks_to_close_on_the_first_response_past_it() -> None:
    """``serverSession.lifeTimeMs``: a connection older than its life time gets ``Connection: close``
    on its next response, and is closed after it (the server's clock is set by the test)."""
    async with (
        running_upstream() as up,
        running_proxy(up.port, ServerParams(life_time_s=10)) as proxy,
    ):
        server: Any = proxy.server
        now = [server.now()]
        server.now = lambda: now[0]
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with stream:
            await stream.send_all(GET)
            assert b"connection: close" not in (await read_response(stream)).lower()
            now[0] += 11  # past the connection's life time
            await stream.send_all(GET)
            last = await read_until_close(stream)
            head = last.split(b"\r\n\r\n", 1)[0].lower()
            assert head.startswith(b"http/1.1 200") and b"\r\nconnection: close" in head


async def test_life_time_closes_a_connection_waiting_for_a_request() -> None:
    async with (
        running_upstream() as up,
        running_proxy(up.port, ServerParams(idle_timeout_s=60, life_time_s=0.2)) as proxy,
    ):
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with stream:
            # No request: the wait for one ends with the connection's life, long before the idle timeout.
            assert await read_until_close(stream) == b""


def test_server_session_keys_reach_the_server() -> None:
    from hostproxy.config.validate import load_config
    from hostproxy.daemon import server_params

    cfg = load_config(
        """
routers:
- protocol: http
  dtab: /svc => /$/inet/127.0.0.1/1;
  servers:
  - port: 0
    serverSession: {idleTimeMs: 1500, lifeTimeMs: 2500}
  - port: 0
"""
    )
    router = cfg.routers[0]
    one, two = (server_params(router, s, "out", 1.0) for s in router.servers)
    assert (one.idle_timeout_s, one.life_time_s) == (1.5, 2.5)
    assert (two.idle_timeout_s, two.life_time_s) == (60.0, None)  # the defaults the reference shows
