"""The HTTP/1.1 upstream pool honours an upstream's ``Keep-Alive: timeout=N`` (and ``max=0``).

An upstream that closes idle connections sooner than the pool's idle time says so in the response's
``Keep-Alive`` field; the pool stops reusing a connection once it has been idle for N seconds less a
safety margin, so that a request is never written to a connection the upstream is closing (the
keep-alive race: a 502 ``upstream/reset`` that is not resent for a non-idempotent request).

The upstream here is a raw socket server that answers with ``Keep-Alive: timeout=1`` and closes a
connection idle for 1 s; a request it receives on a connection idle that long is not answered (its
timer fired as the request came in), so that the race is reproduced without depending on which of
the two sides the scheduler runs first. Time is trio's ``MockClock`` (moved by hand), shared by the
pool and the upstream: nothing sleeps, and nothing depends on how fast the machine is.
"""

from __future__ import annotations

import contextlib
import functools
import math
import shutil
import subprocess
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from upstreams import running_proxy

from hostproxy.http import Body, Headers, Request, UpstreamPool, UpstreamReset
from hostproxy.http.upstream import PoolParams, PoolState, keep_alive_reuse_window

# -- the upstream -----------------------------------------------------------------------------------


class KeepAliveUpstream:
    """A raw-socket HTTP/1.1 upstream that announces ``Keep-Alive: <keep_alive>`` and closes a
    connection idle for ``idle_close_s`` (a request arriving on one idle that long is not answered:
    the connection closes, as it does when the upstream's idle timer wins the race). Each answer's
    body is the id of the connection it came on (``c1``, ``c2``...)."""

    def __init__(
        self,
        keep_alive: bytes | None = b"timeout=1",
        idle_close_s: float = 1.0,
        answer_within_s: float | None = None,
    ) -> None:
        self.keep_alive = keep_alive
        self.idle_close_s = idle_close_s
        #: A request on a connection idle this long is read and not answered (the connection is
        #: closed with a FIN); ``idle_close_s`` when not given.
        self.answer_within_s = idle_close_s if answer_within_s is None else answer_within_s
        self.accepted = 0
        self.answered = 0
        self.raced = 0  # requests that arrived on a connection past its idle timeout (not answered)
        self.idle_closed = 0
        self.vary = False  # a different head per response (no head the codec remembers twice)
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._connection, listeners)

    def _answer(self, conn_id: int, head: bytes) -> bytes:
        self.answered += 1
        body = b"c%d" % conn_id
        fields = [b"HTTP/1.1 200 OK", b"Content-Length: %d" % len(body), b"Connection: keep-alive"]
        if self.keep_alive is not None:
            fields.append(b"Keep-Alive: " + self.keep_alive)
        if self.vary:
            fields.append(b"X-Answer: %d" % self.answered)
        out = b"\r\n".join(fields) + b"\r\n\r\n"
        return out if head.startswith(b"HEAD ") else out + body

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.accepted += 1
        conn_id = self.accepted
        buf = b""
        last_end = trio.current_time()
        async with stream:
            while True:
                with trio.move_on_after(self.idle_close_s - (trio.current_time() - last_end)):
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    # (1e-6: the mock clock's jumps add floats, a 1 s jump may come out a hair short)
                    if trio.current_time() - last_end >= self.answer_within_s - 1e-6:
                        self.raced += 1
                        return  # idle too long: closed as the request came in, unanswered
                    buf += data
                    while b"\r\n\r\n" in buf:
                        head, buf = buf.split(b"\r\n\r\n", 1)
                        # (the timer starts as the answer goes out: before send_all yields)
                        last_end = trio.current_time()
                        await stream.send_all(self._answer(conn_id, head))
                    continue
                self.idle_closed += 1
                return


@contextlib.asynccontextmanager
async def keep_alive_upstream(**kwargs: object) -> AsyncIterator[KeepAliveUpstream]:
    up = KeepAliveUpstream(**kwargs)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(up.serve)
        yield up
        nursery.cancel_scope.cancel()


def request(method: str = "GET", body: bytes = b"") -> Request:
    return Request(
        method,
        "/",
        Headers([(b"host", b"up")]),
        Body.from_bytes(body) if body else Body.empty(),
        authority="up",
    )


async def answer(pool: UpstreamPool, method: str = "GET", body: bytes = b"") -> str:
    """The id of the upstream connection that answered (``c1``...; empty for HEAD)."""
    response = await pool.request(request(method, body))
    assert response.status == 200
    assert response.headers.get(b"keep-alive") is None  # hop-by-hop: never passed on
    return (await response.body.read_all()).decode()


# -- the pool, against the upstream, on a mock clock -------------------------------------------------


@pytest.mark.parametrize("vary", [False, True], ids=["same-head", "varying-head"])
async def test_connection_idle_past_the_advertised_timeout_is_not_reused(
    mock_clock: trio.testing.MockClock, vary: bool
) -> None:
    async with keep_alive_upstream() as up, UpstreamPool("127.0.0.1", up.port) as pool:
        up.vary = vary
        assert await answer(pool) == "c1"
        mock_clock.jump(0.5)
        assert await answer(pool) == "c1"  # idle 0.5 s: within timeout=1 less the margin
        mock_clock.jump(0.9)
        # Idle 0.9 s: the upstream would still answer, but the margin (0.2 s for a 1 s timeout) has
        # passed: a fresh connection, not one the upstream may be closing as the request arrives.
        assert await answer(pool) == "c2"
        assert (up.accepted, up.raced) == (2, 0)
        assert pool.statistics()["keep_alive_expired"] == 1


async def test_non_idempotent_request_never_meets_the_keep_alive_race(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The request goes out at the very moment the upstream's timer fires: without the header
    honoured, the pool writes it to the connection being closed (502, not resent: a POST)."""
    async with keep_alive_upstream() as up, UpstreamPool("127.0.0.1", up.port) as pool:
        for i in range(3):
            assert await answer(pool, "POST", b"x" * 10) == f"c{i + 1}"
            mock_clock.jump(1.0)
        assert (up.accepted, up.answered, up.raced) == (3, 3, 0)
        stats = pool.statistics()
        assert (stats["reused"], stats["resent"], stats["keep_alive_expired"]) == (0, 0, 2)


async def test_an_upstream_closing_sooner_than_it_announced_is_named_in_the_error(
    mock_clock: trio.testing.MockClock,
) -> None:
    """``timeout=5`` announced, idle connections closed after 1 s: the race the pool could not
    avoid is reported with what the upstream announced and what to do."""
    async with (
        keep_alive_upstream(keep_alive=b"timeout=5", idle_close_s=100, answer_within_s=1.0) as up,
        UpstreamPool("127.0.0.1", up.port) as pool,
    ):
        assert await answer(pool, "POST", b"x") == "c1"
        mock_clock.jump(1.0)
        with pytest.raises(UpstreamReset) as info:
            await pool.request(request("POST", b"y"))
        message = str(info.value)
        assert (
            "returned to the pool 1000 ms earlier, within the 4000 ms its Keep-Alive field allows" in message
        )
        assert "closes idle connections sooner than it announces" in message
        assert "set client.hostConnectionPool.idleTimeMs below its real keep-alive timeout" in message
        assert (up.raced, pool.statistics()["resent"]) == (1, 0)


async def test_head_responses_carry_the_timeout_too(mock_clock: trio.testing.MockClock) -> None:
    """A response without a body (HEAD, 204, 304) takes another path through the pool."""
    async with keep_alive_upstream() as up, UpstreamPool("127.0.0.1", up.port) as pool:
        assert await answer(pool, "HEAD") == ""
        mock_clock.jump(0.9)
        assert await answer(pool, "HEAD") == ""
        assert (up.accepted, up.raced) == (2, 0)


async def test_without_the_header_the_pool_idle_time_alone_applies(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with (
        keep_alive_upstream(keep_alive=None, idle_close_s=100) as up,
        UpstreamPool("127.0.0.1", up.port) as pool,
    ):
        assert await answer(pool) == "c1"
        mock_clock.jump(20)
        assert await answer(pool) == "c1"
        mock_clock.jump(31)  # past the pool's 30 s idle time
        assert await answer(pool) == "c2"
        assert pool.statistics()["keep_alive_expired"] == 0


async def test_a_longer_timeout_does_not_extend_the_pool_idle_time(
    mock_clock: trio.testing.MockClock,
) -> None:
    params = PoolParams(idle_timeout_s=2.0)
    async with (
        keep_alive_upstream(keep_alive=b"timeout=75", idle_close_s=100) as up,
        UpstreamPool("127.0.0.1", up.port, params) as pool,
    ):
        assert await answer(pool) == "c1"
        mock_clock.jump(1.5)
        assert await answer(pool) == "c1"
        mock_clock.jump(2.5)
        assert await answer(pool) == "c2"  # idleTimeMs (2 s), not the upstream's 75 s
        assert pool.statistics()["keep_alive_expired"] == 0


@pytest.mark.parametrize("header", [b"max=0", b"timeout=0", b"timeout=5, max=0"])
async def test_no_more_requests_allowed_means_the_connection_is_not_pooled(
    mock_clock: trio.testing.MockClock, header: bytes
) -> None:
    async with (
        keep_alive_upstream(keep_alive=header, idle_close_s=100) as up,
        UpstreamPool("127.0.0.1", up.port) as pool,
    ):
        assert await answer(pool) == "c1"
        assert pool.statistics()["idle"] == 0
        assert await answer(pool) == "c2"
        assert pool.statistics()["keep_alive_expired"] == 2


async def test_idle_connection_past_the_timeout_is_closed_without_a_request(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The pool's reaper closes it at its keep-alive deadline, not at the pool's idle time (30 s)."""
    async with (
        keep_alive_upstream(keep_alive=b"timeout=5", idle_close_s=100) as up,
        UpstreamPool("127.0.0.1", up.port) as pool,
    ):
        assert await answer(pool) == "c1"
        assert pool.statistics()["idle"] == 1
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(3.9)
        await trio.testing.wait_all_tasks_blocked()
        assert pool.statistics()["idle"] == 1  # 5 s less 1 s: reusable until 4 s
        mock_clock.jump(0.2)
        await trio.testing.wait_all_tasks_blocked()
        stats = pool.statistics()
        assert (stats["idle"], stats["open"], stats["keep_alive_expired"]) == (0, 0, 1)


async def test_a_keep_alive_deadline_wakes_a_reaper_sleeping_until_the_idle_time(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The reaper sleeping until the pool's idle time (30 s) for a connection checked in without the
    field is woken for the earlier deadline of the same connection, checked in again with it."""
    async with (
        keep_alive_upstream(keep_alive=None, idle_close_s=100) as up,
        UpstreamPool("127.0.0.1", up.port) as pool,
    ):
        assert await answer(pool) == "c1"
        await trio.testing.wait_all_tasks_blocked()  # the reaper sleeps until 30 s from now
        up.keep_alive = b"timeout=5"
        assert await answer(pool) == "c1"
        await trio.testing.wait_all_tasks_blocked()  # (the reaper runs, and sleeps until when?)
        mock_clock.jump(4.1)
        await trio.testing.wait_all_tasks_blocked()
        stats = pool.statistics()
        assert (stats["idle"], stats["open"], stats["keep_alive_expired"]) == (0, 0, 1)


# -- a real Node.js server ----------------------------------------------------------------------------

_NODE_SERVER = """
const http = require("http");
let n = 0;
const server = http.createServer((req, res) => {
  if (req.socket.connId === undefined) req.socket.connId = ++n;
  res.end("c" + req.socket.connId);
});
server.keepAliveTimeout = 1000;  // sends Keep-Alive: timeout=1
server.listen(0, "127.0.0.1", () => console.log(server.address().port));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
async def test_a_node_server_announcing_one_second_gets_a_fresh_connection_after_its_window(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Node.js (``keepAliveTimeout`` 1 s: ``Keep-Alive: timeout=1``). The pool's clock is moved past
    the 0.8 s window while Node's real one barely moves, so Node still holds the connection: the
    pool opens a second one of its own accord."""
    async with trio.open_nursery() as nursery:
        proc = await nursery.start(
            functools.partial(
                trio.run_process, ["node", "-e", _NODE_SERVER], stdout=subprocess.PIPE, check=False
            )
        )
        try:
            assert proc.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(64)
                assert chunk, "node exited"
                line += chunk
            async with UpstreamPool("127.0.0.1", int(line)) as pool:
                assert await answer(pool) == "c1"
                mock_clock.jump(0.5)
                assert await answer(pool) == "c1"
                mock_clock.jump(0.9)
                assert await answer(pool) == "c2"
                assert pool.statistics()["keep_alive_expired"] == 1
        finally:
            proc.kill()


# -- through a proxy, with curl, in real time ---------------------------------------------------------


async def test_through_a_proxy_requests_spaced_past_the_timeout_all_succeed() -> None:
    """curl -> Http1Server -> pool -> upstream (timeout=1, closing idle connections after 1 s):
    requests 0.9 s apart each get a fresh upstream connection, none fails, and the client never
    sees the Keep-Alive field of the upstream. (Sleeping only makes the gaps longer, never shorter.)"""
    async with keep_alive_upstream() as up, running_proxy(up.port) as proxy:
        bodies = []
        for _ in range(3):
            r = await trio.run_process(
                ["curl", "-sS", "-i", f"http://127.0.0.1:{proxy.port}/"], capture_stdout=True
            )
            out = r.stdout.decode()
            assert out.startswith("HTTP/1.1 200 OK"), out
            assert "keep-alive:" not in out.lower().replace("connection: keep-alive", "")
            bodies.append(out.rsplit("\r\n\r\n", 1)[1])
            await trio.sleep(0.9)
        assert bodies == ["c1", "c2", "c3"]
        assert (up.accepted, up.answered, up.raced) == (3, 3, 0)


# -- the pure parts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "window"),
    [
        (b"timeout=5", 4.0),  # Node.js, Apache: 5 s less a 1 s margin
        (b"timeout=5, max=100", 4.0),
        (b"max=100, timeout=5", 4.0),
        (b"Timeout = 5 ,MAX=99", 4.0),
        (b"timeout=75", 74.0),  # nginx
        (b"timeout=1", 0.8),  # short ones keep four fifths
        (b"timeout=2", 1.6),
        (b'timeout="3"', 2.4),
        (b"timeout=5; max=10", 4.0),
        (b'foo="a, timeout=1", timeout=10', 9.0),  # a quoted value is not read as parameters
        (b'foo="a \\" timeout=1", timeout=10', 9.0),
        (b"timeout=10, timeout=3", 2.4),  # the shortest
        (b"timeout=0", 0.0),  # no reuse
        (b"max=0", 0.0),  # no more requests on this connection
        (b"timeout=10, max=0", 0.0),
        (b"max=5", None),
        (b"timeout=", None),
        (b"timeout=abc", None),
        (b"timeout=-3", None),
        (b"timeout=1.5", None),
        (b"timeout=\xff5", None),
        (b"", None),
        (b"garbage", None),
        (b",,,;;=", None),
        (b'"unterminated timeout=1', None),
        (b"timeouts=1, xtimeout=1", None),
        (b"timeout=99999999999999999999999", None),  # no shorter than any pool idle time
    ],
)
def test_keep_alive_values(value: bytes, window: float | None) -> None:
    got = keep_alive_reuse_window(value)
    if window is None:
        assert got is None
    else:
        assert got is not None and math.isclose(got, window)
    assert keep_alive_reuse_window(value) == got  # (remembered values give the same)


class C:
    def __init__(self, name: str) -> None:
        self.name = name
        self.idle_since = 0.0

    def __repr__(self) -> str:
        return self.name


def never_stale(_conn: object) -> bool:
    return False


def test_pool_state_stops_reusing_at_the_keep_alive_deadline() -> None:
    state = PoolState(idle_timeout_s=30, max_idle=10)
    a, b, c = C("a"), C("b"), C("c")
    for _ in (a, b, c):
        state.opened()
    state.checkin(a, 0.0, True, 4.0)  # reusable until 4.0
    state.checkin(b, 1.0, True)  # no keep-alive window: until the pool's 30 s
    state.checkin(c, 2.0, True, 0.8)  # until 2.8
    assert state.next_expiry() == 2.8
    assert state.expired(2.7) == []
    assert state.expired(2.8) == [c]  # not in idle order: c came in last
    assert state.keep_alive_expired == 1
    assert state.next_expiry() == 4.0
    conn, to_close = state.checkout(4.0, never_stale)
    assert (conn, to_close) == (b, [a])
    assert state.keep_alive_expired == 2
    assert state.next_expiry() is None  # nothing idle


def test_pool_state_keep_alive_deadline_ignores_min_size() -> None:
    """``minSize`` keeps connections open against the pool's own idle time, not past the upstream's."""
    state = PoolState(idle_timeout_s=30, max_idle=10, min_size=2)
    a, b = C("a"), C("b")
    state.opened()
    state.opened()
    state.checkin(a, 0.0, True, 1.0)
    state.checkin(b, 0.0, True)
    assert state.next_expiry() == 1.0
    assert state.expired(1.0) == [a]
    assert state.next_expiry() is None  # b: kept by minSize


def test_pool_state_keep_alive_window_longer_than_idle_time_changes_nothing() -> None:
    state = PoolState(idle_timeout_s=10, max_idle=10)
    a = C("a")
    state.opened()
    state.checkin(a, 0.0, True, 74.0)
    assert state.next_expiry() == 10.0
    assert state.expired(10.5) == [a]
    assert state.keep_alive_expired == 0


def test_pool_state_no_window_left_is_not_pooled() -> None:
    state = PoolState(idle_timeout_s=10, max_idle=10)
    a = C("a")
    state.opened()
    assert state.checkin(a, 0.0, True, 0.0) == [a]
    assert (len(state.idle), state.in_use, state.keep_alive_expired) == (0, 0, 1)


def test_pool_state_deadlines_follow_connections_out() -> None:
    """A connection leaving the idle list another way (checked out, over ``max_idle``, stale,
    drained) takes its deadline with it, and a connection checked in again gets its new one."""
    state = PoolState(idle_timeout_s=30, max_idle=2)
    a, b, c, d = C("a"), C("b"), C("c"), C("d")
    for _ in (a, b, c, d):
        state.opened()
    state.checkin(a, 0.0, True, 1.0)
    state.checkin(b, 0.0, True, 2.0)
    assert state.checkin(c, 0.0, True, 3.0) == [a]  # over max_idle
    conn, to_close = state.checkout(0.5, lambda x: x is c)  # c stale
    assert (conn, to_close) == (b, [c])
    assert state.reuse_until == {}
    state.checkin(b, 5.0, True, 2.0)  # idle again: reusable until 7.0, not 2.0
    assert state.expired(6.0) == []
    assert state.checkout(6.0, never_stale) == (b, [])
    state.checkin(b, 6.0, True, 1.0)
    state.checkin(d, 6.0, True, 1.0)
    assert state.drain() == [b, d] and state.reuse_until == {}
