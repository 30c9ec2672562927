"""Adversarial tests of the HTTP/1.1 upstream pool (``UpstreamPool``) and the client that uses it.

Each test runs a small misbehaving upstream on 127.0.0.1 (``RawUpstream``: raw bytes, scripted per
test) and checks one of the pool's promises:

1. a keep-alive connection is reused only when the exchange was clean;
2. the idle timeout closes idle pooled connections;
3. a connect that times out fails with cause ``connect/timeout`` (``client.connectTimeoutMs``);
4. a connection whose response was not read to its end is closed, not reused;
5. a request that failed on a stale pooled connection before any byte was written is sent again on a
   fresh connection, exactly once;
6. a request whose bytes were (partly) written is never re-sent by the pool.

No test asserts on timing: events order the steps, and the few bounded waits are safety nets.
"""

from __future__ import annotations

import contextlib
import errno
import random
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from upstreams import closed_port, stalled_port

from dtab.addr import AddrBound, Address
from hostproxy.client import Client
from hostproxy.config.model import (
    ClientParams,
    ConsecutiveFailuresAccrual,
    HostConnectionPool,
    RetryBudget,
    Session,
)
from hostproxy.http import (
    Body,
    ConnectError,
    Headers,
    PoolExhausted,
    ProxyInternalError,
    Request,
    UpstreamError,
    UpstreamPool,
    UpstreamReset,
    codec_fast,
    codec_h11,
)
from hostproxy.http import upstream as upstream_mod
from hostproxy.http.upstream import PoolParams, _Conn
from hostproxy.metrics import MetricsRegistry, flat, prometheus

# -- a scripted raw upstream ----------------------------------------------------------------------


class Peer:
    """The upstream's side of one accepted connection, with a read buffer."""

    def __init__(self, stream: trio.SocketStream, index: int) -> None:
        self.stream = stream
        self.index = index
        self.buf = bytearray()
        self.eof = trio.Event()  # set once a read saw the proxy close (or reset) the connection
        self.was_reset = False

    async def _recv(self) -> bytes:
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if data:
            self.buf += data
        else:
            self.eof.set()
        return data

    async def read_head(self) -> bytes | None:
        """The next request head (up to its blank line), or None at EOF."""
        while b"\r\n\r\n" not in self.buf:
            if not await self._recv():
                return None
        end = self.buf.index(b"\r\n\r\n") + 4
        head = bytes(self.buf[:end])
        del self.buf[:end]
        return head

    async def read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not await self._recv():
                raise trio.BrokenResourceError("EOF in the request body")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    async def read_line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not await self._recv():
                raise trio.BrokenResourceError("EOF in a chunk line")
        end = self.buf.index(b"\r\n")
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        return line

    async def drain(self) -> None:
        """Read (and drop) everything until the proxy closes the connection."""
        while await self._recv():
            self.buf.clear()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    def reset(self) -> None:
        """Close with a TCP RST."""
        self.was_reset = True
        sock = self.stream.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


Handler = Callable[["RawUpstream", Peer], Awaitable[None]]


class RawUpstream:
    """Accepts connections on 127.0.0.1 and hands each to ``handler(upstream, peer)``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.peers: list[Peer] = []
        self.requests: list[tuple[int, str]] = []  # (connection index, request line)
        self.port = 0
        self.got_request = trio.Event()  # set (and replaced) at every request head
        self._listeners: list[trio.SocketListener] = []
        self._accepting = trio.CancelScope()
        self._stopped = trio.Event()

    def record(self, peer: Peer, head: bytes) -> str:
        """Note a request head; returns its path."""
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        self.requests.append((peer.index, line))
        self.got_request.set()
        self.got_request = trio.Event()
        return line.split(" ")[1]

    def lines(self) -> list[str]:
        return [line for _, line in self.requests]

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        self._listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = self._listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            with self._accepting:
                await trio.serve_listeners(self._connection, self._listeners, handler_nursery=nursery)
            self._stopped.set()
            await trio.sleep_forever()  # the connections already accepted go on

    async def stop_listening(self) -> None:
        """Stop accepting and close the listening socket (new connections are refused)."""
        self._accepting.cancel()
        await self._stopped.wait()
        for listener in self._listeners:
            await listener.aclose()

    async def _connection(self, stream: trio.SocketStream) -> None:
        peer = Peer(stream, len(self.peers))
        self.peers.append(peer)
        try:
            await self.handler(self, peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            if not peer.was_reset:
                await stream.aclose()


@contextlib.asynccontextmanager
async def running_raw(handler: Handler) -> AsyncIterator[RawUpstream]:
    up = RawUpstream(handler)
    async with trio.open_nursery() as nursery:
        await nursery.start(up.serve)
        try:
            yield up
        finally:
            nursery.cancel_scope.cancel()


def ok(body: bytes, extra_headers: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra_headers, body)


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def answering(special: dict[str, bytes] | None = None, hold: dict[str, trio.Event] | None = None) -> Handler:
    """Answers every request (without a body) with its path, keeping the connection alive; a path in
    ``special`` gets those bytes instead, and one in ``hold`` is answered once its event is set."""

    async def handler(up: RawUpstream, peer: Peer) -> None:
        while (head := await peer.read_head()) is not None:
            path = up.record(peer, head)
            event = (hold or {}).get(path)
            if event is not None:
                await event.wait()
            await peer.send((special or {}).get(path) or ok(path.encode()))

    return handler


echo_path_forever = answering()


# -- the proxy side -------------------------------------------------------------------------------


def req(
    target: str, body: Body | None = None, method: str = "GET", extra: tuple[tuple[bytes, bytes], ...] = ()
) -> Request:
    headers = Headers([(b"host", b"up"), *extra])
    return Request(method, target, headers, body or Body.empty(), authority="up")


class Source:
    """A streamed request body: ``chunks``, then the end (or, with ``stall``, nothing more ever)."""

    def __init__(self, chunks: list[bytes], *, stall: bool = False) -> None:
        self.chunks = list(chunks)
        self.stall = stall
        self.closed = trio.Event()
        self.trailers: Headers | None = None

    async def read_chunk(self) -> bytes | None:
        if self.chunks:
            return self.chunks.pop(0)
        if self.stall:
            await trio.sleep_forever()
        return None

    async def aclose(self) -> None:
        self.closed.set()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def clocked_pool(
    handler: Handler, **params: Any
) -> AsyncIterator[tuple[RawUpstream, UpstreamPool, FakeClock]]:
    """A pool on a clock the test sets (``PoolParams(**params)``) to an upstream running ``handler``."""
    clock = FakeClock()
    async with (
        running_raw(handler) as up,
        UpstreamPool("127.0.0.1", up.port, PoolParams(**params), clock=clock) as pool,
    ):
        yield up, pool, clock


def stats(pool: UpstreamPool) -> dict[str, int]:
    return pool.statistics()


async def wait_eof(peer: Peer, what: str) -> None:
    with trio.move_on_after(10):  # a safety net: the close is expected at once
        await peer.eof.wait()
    assert peer.eof.is_set(), f"{what}: the pool never closed upstream connection #{peer.index}"


def make_client(nursery: trio.Nursery, port: int, **params: Any) -> Client:
    """A client for one endpoint, without requeues (so one request is one attempt)."""
    params.setdefault("requeue_budget", RetryBudget(min_retries_per_sec=0, percent_can_retry=0.0))
    client = Client(
        "out",
        f"/$/inet/127.0.0.1/{port}",
        ClientParams(**params),
        MetricsRegistry(time.monotonic).router("out"),
        nursery=nursery,
    )
    client.update_addr(AddrBound((Address("127.0.0.1", port),)))
    return client


# == 1. reuse only when clean =====================================================================


@pytest.mark.parametrize(
    "response, request_headers",
    [
        pytest.param(ok(b"one", b"Connection: close\r\n"), (), id="response-connection-close"),
        pytest.param(ok(b"one", b"Connection: keep-alive, close\r\n"), (), id="response-close-token"),
        pytest.param(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\none", (), id="http10-response"),
        pytest.param(ok(b"one"), ((b"connection", b"close"),), id="request-connection-close"),
    ],
)
async def test_exchange_that_asks_to_close_is_not_reused(
    response: bytes, request_headers: tuple[tuple[bytes, bytes], ...]
) -> None:
    """The upstream keeps the socket open although the exchange said close: the pool must not
    reuse it, and closes it itself."""
    async with running_raw(answering({"/one": response})) as up, UpstreamPool("127.0.0.1", up.port) as pool:
        r = await pool.request(req("/one", extra=request_headers))
        assert await r.body.read_all() == b"one"
        r = await pool.request(req("/two"))
        assert await r.body.read_all() == b"/two"
        assert up.requests == [(0, "GET /one HTTP/1.1"), (1, "GET /two HTTP/1.1")]
        await wait_eof(up.peers[0], "after an exchange that asked to close")
        s = stats(pool)
        assert (s["connects"], s["reused"], s["open"], s["in_use"]) == (2, 0, 1, 0)


_GARBAGE = ok(b"EVIL!")


@pytest.mark.parametrize(
    "method, first, codec",
    [
        pytest.param("GET", ok(b"first") + _GARBAGE, "fast", id="content-length+response"),
        pytest.param("GET", ok(b"first") + _GARBAGE, "h11", id="content-length+response-h11"),
        pytest.param(
            "GET",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n0\r\n\r\n" + _GARBAGE,
            "fast",
            id="chunked+response",
        ),
        pytest.param("HEAD", ok(b"first"), "fast", id="body-on-HEAD"),
        pytest.param("GET", b"HTTP/1.1 204 No Content\r\n\r\nfirst", "fast", id="body-on-204"),
    ],
)
async def test_bytes_after_a_complete_response_are_not_taken_for_the_next_response(
    monkeypatch: pytest.MonkeyPatch, method: str, first: bytes, codec: str
) -> None:
    """The upstream writes more than the response in the same segment (pipelining garbage, a body
    on HEAD or 204). Those bytes sit in the codec's buffer, not in the socket: the connection is
    not clean and must not be reused, or the next request reads them as its response."""
    if codec == "h11":
        monkeypatch.setattr(upstream_mod, "ClientCodec", codec_h11.ClientCodec)
        monkeypatch.setattr(upstream_mod, "_whole_body", None)
    else:
        monkeypatch.setattr(upstream_mod, "ClientCodec", codec_fast.ClientCodec)
    async with running_raw(answering({"/first": first})) as up, UpstreamPool("127.0.0.1", up.port) as pool:
        r = await pool.request(req("/first", method=method))
        assert await r.body.read_all() == (
            b"" if method == "HEAD" or first.startswith(b"HTTP/1.1 204") else b"first"
        )
        body: bytes | None = None
        error: Exception | None = None
        try:
            r = await pool.request(req("/second"))
            body = await r.body.read_all()
        except UpstreamError as exc:
            error = exc
        assert error is None and body == b"/second", (
            f"the second request got {body!r} / {error!r} instead of its own response "
            f"(pool {stats(pool)}, upstream saw {up.requests})"
        )
        assert up.lines() == [f"{method} /first HTTP/1.1", "GET /second HTTP/1.1"]


async def test_bytes_arriving_on_an_idle_connection_make_it_discarded() -> None:
    """Bytes the upstream writes to an idle connection (an unsolicited response) are seen at
    checkout: the connection is discarded and the request goes to a fresh one."""
    go = trio.Event()
    sent = trio.Event()

    async def handler(up: RawUpstream, peer: Peer) -> None:
        while (head := await peer.read_head()) is not None:
            path = up.record(peer, head)
            await peer.send(ok(path.encode()))
            if peer.index == 0:
                await go.wait()
                await peer.send(_GARBAGE)
                sent.set()

    async with running_raw(handler) as up, UpstreamPool("127.0.0.1", up.port) as pool:
        r = await pool.request(req("/a"))
        assert await r.body.read_all() == b"/a"
        go.set()
        with trio.fail_after(10):
            await sent.wait()
            (conn,) = pool._state.idle
            while not conn.stream.readable_now():  # loopback delivery: a safety net, not a timing
                await trio.sleep(0.01)
        r = await pool.request(req("/b"))
        assert await r.body.read_all() == b"/b"
        assert up.requests == [(0, "GET /a HTTP/1.1"), (1, "GET /b HTTP/1.1")]
        assert stats(pool)["stale_discarded"] == 1
        await wait_eof(up.peers[0], "an idle connection with unsolicited bytes")


async def test_early_response_before_the_request_body_ended_closes_the_connection() -> None:
    """The upstream answers (keep-alive) after the request head, before the streamed body ended:
    the request was not fully sent, so the connection is closed and the body writer stopped."""

    async def handler(up: RawUpstream, peer: Peer) -> None:
        head = await peer.read_head()
        if head is None:
            return
        path = up.record(peer, head)
        if path == "/early":
            await peer.send(ok(b"early"))
            await peer.drain()  # the rest of the chunked body, until the pool closes
            return
        await peer.send(ok(path.encode()))
        await echo_path_forever(up, peer)

    async with running_raw(handler) as up, UpstreamPool("127.0.0.1", up.port) as pool:
        source = Source([b"0123456789"], stall=True)
        r = await pool.request(req("/early", Body(source, None), "POST"))
        assert await r.body.read_all() == b"early"
        with trio.fail_after(10):
            await source.closed.wait()  # the writer gave up the body
        await wait_eof(up.peers[0], "after an early response")
        r = await pool.request(req("/after"))
        assert await r.body.read_all() == b"/after"
        assert up.requests == [(0, "POST /early HTTP/1.1"), (1, "GET /after HTTP/1.1")]
        s = stats(pool)
        assert (s["reused"], s["in_use"], s["open"]) == (0, 0, 1)


@pytest.mark.parametrize("split", [False, True], ids=["one-segment", "segment-each"])
async def test_informational_responses_come_with_the_final_one_and_the_connection_stays_reusable(
    split: bool,
) -> None:
    parts = [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
        ok(b"final"),
    ]

    async def handler(up: RawUpstream, peer: Peer) -> None:
        while (head := await peer.read_head()) is not None:
            path = up.record(peer, head)
            if path != "/hints":
                await peer.send(ok(path.encode()))
            elif split:
                for part in parts:
                    await peer.send(part)
                    await trio.sleep(0)
            else:
                await peer.send(b"".join(parts))

    async with running_raw(handler) as up, UpstreamPool("127.0.0.1", up.port) as pool:
        r = await pool.request(req("/hints"))
        assert r.status == 200 and await r.body.read_all() == b"final"
        assert r.interim is not None and [status for status, _ in r.interim] == [103]  # not the 100
        r = await pool.request(req("/next"))
        assert r.status == 200 and await r.body.read_all() == b"/next"
        assert up.requests == [(0, "GET /hints HTTP/1.1"), (0, "GET /next HTTP/1.1")]
        assert (stats(pool)["connects"], stats(pool)["reused"]) == (1, 1)


# == 4. a response not read to its end ============================================================


@pytest.mark.parametrize(
    "partial, ending",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", "fin", id="length-fin"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", "rst", id="length-rst"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", "fin", id="chunked-fin"
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", "fin", id="head-only-fin"),
    ],
)
async def test_truncated_response_fails_and_the_connection_is_not_reused(partial: bytes, ending: str) -> None:
    """A first, clean exchange makes the connection a pooled one; the second response is cut off."""

    async def handler(up: RawUpstream, peer: Peer) -> None:
        while (head := await peer.read_head()) is not None:
            path = up.record(peer, head)
            if path == "/cut":
                await peer.send(partial)
                if ending == "rst":
                    peer.reset()
                return
            await peer.send(ok(path.encode()))

    async with running_raw(handler) as up, UpstreamPool("127.0.0.1", up.port) as pool:
        assert await (await pool.request(req("/warm"))).body.read_all() == b"/warm"
        with pytest.raises(UpstreamReset) as info:
            r = await pool.request(req("/cut"))
            await r.body.read_all()
        assert info.value.cause == "upstream/reset" and not info.value.retryable
        s = stats(pool)
        assert (s["open"], s["idle"], s["in_use"]) == (0, 0, 0)
        assert await (await pool.request(req("/after"))).body.read_all() == b"/after"
        assert up.requests == [
            (0, "GET /warm HTTP/1.1"),
            (0, "GET /cut HTTP/1.1"),
            (1, "GET /after HTTP/1.1"),
        ]


async def test_body_delimited_by_the_close_is_read_whole_and_the_connection_not_kept() -> None:
    async def handler(up: RawUpstream, peer: Peer) -> None:
        head = await peer.read_head()
        if head is None:
            return
        path = up.record(peer, head)
        if path == "/eof":
            await peer.send(b"HTTP/1.1 200 OK\r\n\r\nuntil")
            await trio.sleep(0)
            await peer.send(b" the end")
            return  # closing ends the body
        await peer.send(ok(path.encode()))
        await echo_path_forever(up, peer)

    async with running_raw(handler) as up, UpstreamPool("127.0.0.1", up.port) as pool:
        r = await pool.request(req("/eof"))
        assert await r.body.read_all() == b"until the end"
        assert await (await pool.request(req("/next"))).body.read_all() == b"/next"
        assert [i for i, _ in up.requests] == [0, 1]
        assert (stats(pool)["open"], stats(pool)["in_use"]) == (1, 0)


async def test_malformed_response_head_fails_and_the_connection_is_discarded() -> None:
    bad = answering({"/bad": b"HTTP/1.1 2OO OK\r\n\r\n"})
    async with running_raw(bad) as up, UpstreamPool("127.0.0.1", up.port) as pool:
        assert await (await pool.request(req("/warm"))).body.read_all() == b"/warm"
        with pytest.raises(UpstreamReset):
            await pool.request(req("/bad"))
        assert (stats(pool)["open"], stats(pool)["in_use"]) == (0, 0)
        await wait_eof(up.peers[0], "after a malformed response")
        assert await (await pool.request(req("/after"))).body.read_all() == b"/after"
        assert up.requests[-1] == (1, "GET /after HTTP/1.1")


async def test_cancelled_request_waiting_for_its_response_discards_the_connection() -> None:
    """A request cancelled while waiting for its response on a reused connection: its late response
    must not be read as the next request's."""
    release = trio.Event()
    async with (
        running_raw(answering(hold={"/slow": release})) as up,
        UpstreamPool("127.0.0.1", up.port) as pool,
    ):
        assert await (await pool.request(req("/warm"))).body.read_all() == b"/warm"
        got_slow = up.got_request
        async with trio.open_nursery() as nursery:

            async def slow() -> None:
                await pool.request(req("/slow"))

            nursery.start_soon(slow)
            with trio.fail_after(10):
                await got_slow.wait()
            nursery.cancel_scope.cancel()
        release.set()
        s = stats(pool)
        assert (s["open"], s["idle"], s["in_use"]) == (0, 0, 0)
        assert await (await pool.request(req("/next"))).body.read_all() == b"/next"
        assert up.requests[-1] == (1, "GET /next HTTP/1.1")


class _GatedStream:
    """A real socket stream whose write of the chunked body's last chunk waits for ``gate`` (as a
    full send buffer would)."""

    def __init__(self, inner: trio.SocketStream, gate: trio.Event, hit: trio.Event) -> None:
        self.inner = inner
        self.socket = inner.socket
        self.gate = gate
        self.hit = hit

    async def send_all(self, data: bytes) -> None:
        if bytes(data) == b"0\r\n\r\n":
            self.hit.set()
            await self.gate.wait()
        await self.inner.send_all(data)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


class _HeldWriter:
    """An exchange whose request writer is held on the body's last chunk (``gate``) while the
    upstream answers in full once ``finish`` is set; ``hit`` tells the writer reached the gate."""

    def __init__(self) -> None:
        self.gate, self.hit, self.finish = trio.Event(), trio.Event(), trio.Event()

    async def connector(self, host: str, port: int, timeout_s: float) -> Any:
        return _GatedStream(await trio.open_tcp_stream(host, port), self.gate, self.hit)

    async def handler(self, up: RawUpstream, peer: Peer) -> None:
        head = await peer.read_head()
        if head is None:
            return
        up.record(peer, head)
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await self.finish.wait()
        await peer.send(b"0\r\n\r\n")
        await peer.drain()


@contextlib.asynccontextmanager
async def _held_writer_exchange() -> AsyncIterator[tuple[_HeldWriter, UpstreamPool, Any, Any]]:
    """A streamed POST through a pool whose writer is now held on the body's last chunk: the
    exchange, the pool, the response and its connection."""
    held = _HeldWriter()
    async with (
        running_raw(held.handler) as up,
        UpstreamPool("127.0.0.1", up.port, connector=held.connector) as pool,
    ):
        r = await pool.request(req("/up", Body(Source([b"abc"]), None), "POST"))
        with trio.fail_after(10):
            await held.hit.wait()
        yield held, pool, r, r.body._source._conn


async def test_the_response_end_reaches_the_reader_while_the_request_writer_still_flushes() -> None:
    """The response is whole while the request's last bytes are still being written: the reader
    gets its end at once, and the connection is checked in once the writer is done."""
    async with _held_writer_exchange() as (held, pool, r, conn):
        assert conn.sender_finished is not None
        held.finish.set()
        with trio.fail_after(10):
            assert await r.body.read_all() == b"first"
        assert not conn.sender_finished.is_set()  # the reader did not wait for the writer
        held.gate.set()
        with trio.fail_after(10):
            await conn.sender_finished.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert (stats(pool)["in_use"], stats(pool)["idle"]) == (0, 1)  # the exchange was clean: kept


async def test_body_read_cancelled_while_the_request_writer_flushes_does_not_leak_the_connection() -> None:
    """The response ends while the request's last bytes are still being written, and the reader is
    cancelled meanwhile. The connection must still be checked in or discarded, not left checked out
    forever."""
    async with _held_writer_exchange() as (held, pool, r, conn):
        assert conn.sender_finished is not None

        async def reader(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
            with trio.CancelScope() as cs:
                task_status.started(cs)
                await r.body.read_all()

        async with trio.open_nursery() as nursery:
            cs = await nursery.start(reader)
            held.finish.set()
            with trio.fail_after(10):  # until the response's end was read: a task waits for the writer
                while conn.sender_finished.statistics().tasks_waiting == 0:
                    await trio.sleep(0.01)
            cs.cancel()
        held.gate.set()
        with trio.fail_after(10):
            await conn.sender_finished.wait()
        await trio.testing.wait_all_tasks_blocked()
        s = stats(pool)
        assert s["in_use"] == 0 and s["open"] == s["idle"], (
            f"the connection was left checked out: {s}, checked_out={conn.checked_out}, closed={conn.closed}"
        )


# == 2. idle timeout ==============================================================================


async def test_expired_idle_connection_is_closed_at_checkout_not_reused() -> None:
    async with clocked_pool(echo_path_forever, idle_timeout_s=30) as (up, pool, clock):
        assert await (await pool.request(req("/a"))).body.read_all() == b"/a"
        clock.now += 30.5
        assert await (await pool.request(req("/b"))).body.read_all() == b"/b"
        assert up.requests == [(0, "GET /a HTTP/1.1"), (1, "GET /b HTTP/1.1")]
        await wait_eof(up.peers[0], "an expired idle connection")
        assert (stats(pool)["open"], stats(pool)["reused"]) == (1, 0)


async def test_prune_closes_expired_idle_connections_but_not_fresh_ones() -> None:
    async with clocked_pool(echo_path_forever, idle_timeout_s=30) as (up, pool, clock):
        assert await (await pool.request(req("/a"))).body.read_all() == b"/a"
        clock.now += 10
        await pool.prune()
        assert (stats(pool)["open"], stats(pool)["idle"]) == (1, 1)
        clock.now += 25
        await pool.prune()
        assert (stats(pool)["open"], stats(pool)["idle"]) == (0, 0)
        await wait_eof(up.peers[0], "prune()")


async def _three_idle_connections(pool: UpstreamPool, up: RawUpstream) -> None:
    async with trio.open_nursery() as nursery:
        for name in ("/x", "/y", "/z"):

            async def one(name: str = name) -> None:
                assert await (await pool.request(req(name))).body.read_all() == name.encode()

            nursery.start_soon(one)
    assert len(up.peers) == 3 and stats(pool)["idle"] == 3


def _held_until_three() -> Handler:
    """Answers each request once three requests arrived (forces three connections)."""
    three = trio.Event()

    async def handler(up: RawUpstream, peer: Peer) -> None:
        while (head := await peer.read_head()) is not None:
            path = up.record(peer, head)
            if len(up.requests) >= 3:
                three.set()
            await three.wait()
            await peer.send(ok(path.encode()))

    return handler


async def test_expired_idle_connections_behind_a_warm_one_are_closed() -> None:
    """A burst opened three connections; then light traffic keeps reusing the warmest one. The two
    others stay idle past the idle timeout: they must be closed (the pool has traffic all along)."""
    async with clocked_pool(_held_until_three(), idle_timeout_s=30) as (up, pool, clock):
        await _three_idle_connections(pool, up)
        for path in ("/a", "/b", "/c"):
            clock.now += 20  # each request finds the warm connection idle 20 s (< 30 s)
            assert await (await pool.request(req(path))).body.read_all() == path.encode()
        # The two other connections have been idle 60 s, twice the idle timeout.
        s = stats(pool)
        assert s["open"] == 1, f"connections idle 60 s with idle_timeout_s=30 are still open: {s}"


async def test_client_idle_time_closes_an_idle_connection_without_further_requests() -> None:
    """``client.hostConnectionPool.idleTimeMs``: a connection left idle is closed once idle that
    long, even when no request comes to trigger a checkout."""
    async with running_raw(echo_path_forever) as up, trio.open_nursery() as nursery:
        client = make_client(nursery, up.port, host_connection_pool=HostConnectionPool(idle_time_ms=100))
        resp, _ = await client.request(req("/a"))
        assert await resp.body.read_all() == b"/a"
        with trio.move_on_after(10):  # a hundred times the idle time: only a safety net
            await up.peers[0].eof.wait()
        pool = client.endpoints[f"127.0.0.1:{up.port}"].pool
        assert up.peers[0].eof.is_set(), (
            f"an idle connection is still open 10 s after idleTimeMs=100 (pool {pool.statistics()})"
        )
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_client_session_idle_time_closes_an_idle_connection_too() -> None:
    """``client.clientSession.idleTimeMs`` bounds a pooled connection's idle time as well: the
    shorter of it and ``hostConnectionPool.idleTimeMs`` applies."""
    async with running_raw(echo_path_forever) as up, trio.open_nursery() as nursery:
        client = make_client(
            nursery,
            up.port,
            host_connection_pool=HostConnectionPool(idle_time_ms=600_000),
            client_session=Session(idle_time_ms=100),
        )
        resp, _ = await client.request(req("/a"))
        assert await resp.body.read_all() == b"/a"
        with trio.move_on_after(10):  # a hundred times the idle time: only a safety net
            await up.peers[0].eof.wait()
        assert up.peers[0].eof.is_set(), "clientSession.idleTimeMs=100 left the idle connection open"
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_idle_reaper_ends_once_nothing_is_idle_and_with_the_pool() -> None:
    """The task that closes idle connections at the timeout runs only while some connection is idle,
    and closing the pool ends it."""
    async with running_raw(echo_path_forever) as up:
        async with UpstreamPool("127.0.0.1", up.port, PoolParams(idle_timeout_s=0.05)) as pool:
            assert pool._reaper is None
            assert await (await pool.request(req("/a"))).body.read_all() == b"/a"
            assert pool._reaper is not None  # one connection idle: the reaper waits for its timeout
            with trio.fail_after(10):
                await up.peers[0].eof.wait()
                while pool._reaper is not None:
                    await trio.sleep(0.01)
            assert stats(pool)["open"] == 0
        async with UpstreamPool("127.0.0.1", up.port, PoolParams(idle_timeout_s=3600)) as pool:
            assert await (await pool.request(req("/b"))).body.read_all() == b"/b"
            reaper = pool._reaper
            assert reaper is not None
        assert reaper.cancel_called and pool._reaper is None


# == pool limits: maxSize, maxWaiters, minSize, lifeTimeMs =========================================


def _slow_until(release: trio.Event) -> Handler:
    """Answers ``/slow`` once ``release`` is set, anything else at once."""
    return answering(hold={"/slow": release})


async def _until(condition: Callable[[], bool], what: str) -> None:
    with trio.fail_after(10):  # a safety net: each condition follows from the step before
        while not condition():
            await trio.sleep(0.005)
    assert condition(), what


async def test_max_size_makes_a_request_wait_for_the_connection_in_use() -> None:
    release = trio.Event()
    async with (
        running_raw(_slow_until(release)) as up,
        UpstreamPool("127.0.0.1", up.port, PoolParams(max_size=1)) as pool,
        trio.open_nursery() as nursery,
    ):
        got: dict[str, bytes] = {}

        async def fetch(path: str) -> None:
            got[path] = await (await pool.request(req(path))).body.read_all()

        nursery.start_soon(fetch, "/slow")
        await _until(lambda: len(up.requests) == 1, "the upstream got /slow")
        nursery.start_soon(fetch, "/next")
        await _until(lambda: pool._waiters == 1, "/next waits for room")
        assert (len(up.peers), stats(pool)["connects"]) == (1, 1)  # no second connection opened
        release.set()
        await _until(lambda: len(got) == 2, "both answered")
        assert got == {"/slow": b"/slow", "/next": b"/next"}
        assert up.requests == [(0, "GET /slow HTTP/1.1"), (0, "GET /next HTTP/1.1")]  # one connection
        assert (stats(pool)["connects"], stats(pool)["reused"], pool._waiters) == (1, 1, 0)


async def test_max_waiters_refuses_one_more_request_at_once_unsent() -> None:
    release = trio.Event()
    async with (
        running_raw(_slow_until(release)) as up,
        UpstreamPool("127.0.0.1", up.port, PoolParams(max_size=1, max_waiters=1)) as pool,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(pool.request, req("/slow"))
        await _until(lambda: len(up.requests) == 1, "the upstream got /slow")
        nursery.start_soon(pool.request, req("/waiting"))
        await _until(lambda: pool._waiters == 1, "one request waits")
        with pytest.raises(PoolExhausted) as info:
            await pool.request(req("/refused"))
        assert info.value.cause == "overload" and info.value.retryable
        assert str(info.value) == (
            f"connection pool for 127.0.0.1:{up.port} is full: 1 connections (maxSize) in use and 1 "
            "requests (maxWaiters) already waiting for one; raise client.hostConnectionPool.maxSize or "
            "maxWaiters, or add endpoints"
        )
        assert [r for _, r in up.requests] == ["GET /slow HTTP/1.1"]
        release.set()
        await _until(lambda: len(up.requests) == 2, "the waiting request went out")
        nursery.cancel_scope.cancel()


async def test_a_request_waiting_at_max_size_is_released_unsent_when_the_pool_closes() -> None:
    """The endpoint left the set while a request waited for a connection: it gets a retryable error at
    once (nothing was sent, so the client may requeue it elsewhere), not a new connection to the
    endpoint that is gone, nor a wait until the connect timeout."""
    release = trio.Event()
    async with (
        running_raw(_slow_until(release)) as up,
        UpstreamPool("127.0.0.1", up.port, PoolParams(max_size=1, connect_timeout_ms=30_000)) as pool,
        trio.open_nursery() as nursery,
    ):
        outcome: dict[str, Any] = {}

        async def waiting() -> None:
            try:
                await pool.request(req("/waiting"))
            except ProxyInternalError as exc:
                outcome["error"] = exc

        nursery.start_soon(pool.request, req("/slow"))
        await _until(lambda: len(up.requests) == 1, "the upstream got /slow")
        nursery.start_soon(waiting)
        await _until(lambda: pool._waiters == 1, "one request waits")
        await pool.aclose()
        await _until(lambda: "error" in outcome, "the waiting request was released")
        assert outcome["error"].retryable and "closed" in str(outcome["error"])
        assert (len(up.peers), stats(pool)["connects"]) == (1, 1)  # no connection opened for it
        release.set()
        nursery.cancel_scope.cancel()


async def test_waiting_for_room_ends_at_the_connect_timeout() -> None:
    release = trio.Event()
    async with (
        running_raw(_slow_until(release)) as up,
        UpstreamPool("127.0.0.1", up.port, PoolParams(max_size=1)) as pool,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(pool.request, req("/slow"))
        await _until(lambda: len(up.requests) == 1, "the upstream got /slow")
        with pytest.raises(ConnectError) as info:
            await pool.request(req("/late"), connect_timeout=0.05)
        assert info.value.cause == "connect/timeout" and info.value.retryable
        assert str(info.value) == (
            f"Unable to get a connection to 127.0.0.1:{up.port}: all 1 connections (maxSize) stayed in "
            "use for the connect timeout, 50 ms; raise client.hostConnectionPool.maxSize or connectTimeoutMs, "
            "or add endpoints"
        )
        assert (pool._waiters, len(up.peers)) == (0, 1)
        release.set()
        nursery.cancel_scope.cancel()


async def test_a_failed_connect_gives_its_place_to_a_waiting_request() -> None:
    fail_first = trio.Event()
    calls: list[float] = []
    async with running_raw(echo_path_forever) as up:

        async def connect(host: str, port: int, timeout_s: float) -> trio.SocketStream:
            calls.append(timeout_s)
            if len(calls) == 1:  # the first connect holds the only place, then fails
                await fail_first.wait()
                raise ConnectError("refused by the test", endpoint=f"{host}:{port}", cause="connect/refused")
            return await trio.open_tcp_stream(host, port)

        results: dict[str, bytes | str] = {}
        async with (
            UpstreamPool("127.0.0.1", up.port, PoolParams(max_size=1), connector=connect) as pool,
            trio.open_nursery() as nursery,
        ):

            async def fetch(path: str) -> None:
                try:
                    results[path] = await (await pool.request(req(path))).body.read_all()
                except ConnectError as e:
                    results[path] = e.cause

            nursery.start_soon(fetch, "/first")
            await _until(lambda: pool._opening == 1, "the first connect started")
            nursery.start_soon(fetch, "/second")
            await _until(lambda: pool._waiters == 1, "the second request waits for room")
            fail_first.set()
            await _until(lambda: len(results) == 2, "both requests ended")
        # Not a wait until the connect timeout: the failed connect's place went to the waiting request.
        assert results == {"/first": "connect/refused", "/second": b"/second"}
        assert (pool._opening, pool._waiters, len(calls)) == (0, 0, 2)


async def test_min_size_connections_outlive_the_idle_timeout() -> None:
    async with clocked_pool(_held_until_three(), idle_timeout_s=30, min_size=2) as (up, pool, clock):
        await _three_idle_connections(pool, up)
        clock.now += 60
        await pool.prune()
        assert (stats(pool)["open"], stats(pool)["idle"]) == (2, 2)
        assert pool._state.next_expiry() is None  # nothing more for the idle timeout to close
        await _until(lambda: sum(p.eof.is_set() for p in up.peers) == 1, "one connection closed")


async def test_life_time_closes_a_connection_when_its_exchange_ends() -> None:
    async with clocked_pool(echo_path_forever, life_time_s=10) as (up, pool, clock):
        assert await (await pool.request(req("/a"))).body.read_all() == b"/a"
        clock.now += 11  # the connection is past its life time
        assert await (await pool.request(req("/b"))).body.read_all() == b"/b"  # reused, then closed
        await wait_eof(up.peers[0], "a connection past clientSession.lifeTimeMs")
        assert await (await pool.request(req("/c"))).body.read_all() == b"/c"
        assert up.requests == [(0, "GET /a HTTP/1.1"), (0, "GET /b HTTP/1.1"), (1, "GET /c HTTP/1.1")]


async def test_client_passes_the_pool_and_session_limits_to_its_pools() -> None:
    async with running_raw(echo_path_forever) as up, trio.open_nursery() as nursery:
        client = make_client(
            nursery,
            up.port,
            host_connection_pool=HostConnectionPool(min_size=1, max_size=4, max_waiters=8),
            client_session=Session(life_time_ms=2500),
        )
        params = client.endpoints[f"127.0.0.1:{up.port}"].pool.params
        assert (params.min_size, params.max_size, params.max_waiters, params.life_time_s) == (1, 4, 8, 2.5)
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_client_metrics_show_its_pools_connections_cached_and_waiters() -> None:
    """``rt/<router>/client/<id>/{connections,pool_size,pool_cached,pool_waiters}``, as Linkerd names
    them, and their Prometheus families: summed over the client's endpoints' pools."""
    release = trio.Event()
    reg = MetricsRegistry(time.monotonic)
    async with running_raw(_slow_until(release)) as up, trio.open_nursery() as nursery:
        client = Client(
            "out",
            f"/$/inet/127.0.0.1/{up.port}",
            ClientParams(host_connection_pool=HostConnectionPool(max_size=1)),
            reg.router("out"),
            nursery=nursery,
        )
        client.update_addr(AddrBound((Address("127.0.0.1", up.port),)))
        key = f"rt/out/client/$/inet/127.0.0.1/{up.port}/"

        def gauges() -> tuple[float, ...]:
            f = flat(reg)
            return tuple(f[key + k] for k in ("connections", "pool_size", "pool_cached", "pool_waiters"))

        assert gauges() == (0, 0, 0, 0)
        resp, _ = await client.request(req("/a"))
        assert await resp.body.read_all() == b"/a"
        assert gauges() == (1, 1, 1, 0)  # one connection, idle

        async def fetch(path: str) -> None:
            r, _ = await client.request(req(path))
            await r.body.read_all()

        nursery.start_soon(fetch, "/slow")
        await _until(lambda: len(up.requests) == 2, "the upstream got /slow")
        nursery.start_soon(fetch, "/waits")
        pool = client.endpoints[f"127.0.0.1:{up.port}"].pool
        await _until(lambda: pool._waiters == 1, "the second request waits at maxSize=1")
        assert gauges() == (1, 1, 0, 1)  # the connection in use, one request waiting for it
        labels = f'{{router="out",client="/$/inet/127.0.0.1/{up.port}"}}'
        text = prometheus(reg)
        assert f"hostproxy_client_pool_waiters{labels} 1" in text
        assert f"hostproxy_client_connections{labels} 1" in text
        release.set()
        await _until(lambda: len(up.requests) == 3, "the waiting request went out")
        await client.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("status, counted_failed", [(503, True), (600, False), (499, False)])
async def test_only_5xx_answers_count_against_an_endpoint(status: int, counted_failed: bool) -> None:
    """What the balancer and failure accrual count as a failed answer: 5XX only (a 6XX status is not
    a server error)."""
    answer = b"HTTP/1.1 %d Odd\r\nContent-Length: 0\r\n\r\n" % status
    async with running_raw(answering({"/a": answer})) as up, trio.open_nursery() as nursery:
        client = make_client(
            nursery,
            up.port,
            failure_accrual=ConsecutiveFailuresAccrual(kind="io.l5d.consecutiveFailures", failures=1),
        )
        resp, key = await client.request(req("/a"))
        assert resp.status == status
        await resp.body.read_all()
        assert client.accrual.available(key) is not counted_failed
        assert client.balancer.endpoints()[0].failures == int(counted_failed)
        await client.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("fail_fast", [True, False])
async def test_fail_fast_ejects_an_endpoint_that_refuses_connections(fail_fast: bool) -> None:
    """``client.failFast``: one refused connect takes the endpoint out at once (default accrual needs
    five failures)."""
    with closed_port() as port:
        async with trio.open_nursery() as nursery:
            client = make_client(nursery, port, fail_fast=fail_fast)
            with pytest.raises(ConnectError) as info:
                await client.request(req("/a"))
            assert info.value.cause == "connect/refused"
            key = f"127.0.0.1:{port}"
            assert client.accrual.available(key) is not fail_fast
            assert client.accrual.statistics()["removals"] == int(fail_fast)
            await client.aclose()
            nursery.cancel_scope.cancel()


async def test_max_idle_closes_the_surplus_connections() -> None:
    async with (
        running_raw(_held_until_three()) as up,
        UpstreamPool("127.0.0.1", up.port, PoolParams(max_idle=1)) as pool,
    ):
        async with trio.open_nursery() as nursery:
            for name in ("/x", "/y", "/z"):

                async def one(name: str = name) -> None:
                    assert await (await pool.request(req(name))).body.read_all() == name.encode()

                nursery.start_soon(one)
        s = stats(pool)
        assert (s["open"], s["idle"], s["in_use"], s["connects"]) == (1, 1, 0, 3)
        closed = 0
        with trio.move_on_after(10):
            while closed < 2:
                closed = sum(p.eof.is_set() for p in up.peers)
                await trio.sleep(0.01)
        assert closed == 2


# == 3. connect timeout ===========================================================================


@pytest.mark.parametrize("timeout_ms", [150, None], ids=["connectTimeoutMs=150", "default-1000"])
async def test_client_connect_timeout_fails_with_cause_connect_timeout(timeout_ms: int | None) -> None:
    with stalled_port() as port:
        async with trio.open_nursery() as nursery:
            extra = {} if timeout_ms is None else {"connect_timeout_ms": timeout_ms}
            client = make_client(nursery, port, **extra)
            with trio.fail_after(30), pytest.raises(ConnectError) as info:
                await client.request(req("/"))
            pool = client.endpoints[f"127.0.0.1:{port}"].pool
            await client.aclose()
            nursery.cancel_scope.cancel()
    assert info.value.cause == "connect/timeout" and info.value.retryable
    expected_ms = timeout_ms or 1000
    assert str(info.value) == (
        f"Unable to establish connection to 127.0.0.1:{port}: no answer within connect timeout {expected_ms} ms"
    )
    s = pool.statistics()
    assert (s["open"], s["in_use"], s["connect_failures"]) == (0, 0, 1)


async def test_connect_timeout_through_a_host_name() -> None:
    with stalled_port() as port:
        async with UpstreamPool("localhost", port, PoolParams(connect_timeout_ms=600)) as pool:
            with trio.fail_after(30), pytest.raises(ConnectError) as info:
                await pool.request(req("/"))
    assert info.value.cause == "connect/timeout", str(info.value)
    assert (pool.statistics()["open"], pool.statistics()["in_use"]) == (0, 0)


async def test_connect_failing_with_etimedout_has_cause_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The kernel's own connect timeout (``ETIMEDOUT``) is a ``connect/timeout`` too."""

    async def timed_out(host: str, port: int) -> None:
        raise OSError(errno.ETIMEDOUT, "Connection timed out")

    monkeypatch.setattr(upstream_mod, "open_tcp", timed_out)
    async with UpstreamPool("127.0.0.1", 9, PoolParams(connect_timeout_ms=5000)) as pool:
        with pytest.raises(ConnectError) as info:
            await pool.request(req("/"))
    assert info.value.cause == "connect/timeout" and info.value.retryable


async def test_connect_timeout_does_not_bound_a_slow_response() -> None:
    """The connect timeout covers the connect alone: an upstream slower to answer than it is fine."""

    async def handler(up: RawUpstream, peer: Peer) -> None:
        head = await peer.read_head()
        if head is None:
            return
        path = up.record(peer, head)
        await trio.sleep(0.5)  # five times the connect timeout
        await peer.send(ok(path.encode()))
        await peer.drain()

    async with (
        running_raw(handler) as up,
        UpstreamPool("127.0.0.1", up.port, PoolParams(connect_timeout_ms=100)) as pool,
    ):
        assert await (await pool.request(req("/slow"))).body.read_all() == b"/slow"
        assert stats(pool)["connect_failures"] == 0


# == 5. stale pooled connections: resend only what was never written ===========================


async def _wait_reset_seen(pool: UpstreamPool) -> None:
    """Until the idle connection's socket shows the upstream's RST (bypassing the pool's check)."""
    (conn,) = pool._state.idle
    with trio.fail_after(10):
        while not conn.stream.readable_now():
            await trio.sleep(0.01)


async def test_streamed_request_on_a_reset_pooled_connection_is_resent_once_with_its_body(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The upstream reset the idle connection and the pool's idle check missed it (a race): the
    head's write fails before any byte left, so the request goes to a fresh connection, body intact."""
    reset_now = trio.Event()

    async def handler(up: RawUpstream, peer: Peer) -> None:
        while (head := await peer.read_head()) is not None:
            path = up.record(peer, head)
            n = content_length(head)
            if b"chunked" in head.lower():
                data = b""
                while True:
                    line = await peer.read_line()
                    size = int(line, 16)
                    chunk = await peer.read_exactly(size + 2)
                    if size == 0:
                        break
                    data += chunk[:-2]
            else:
                data = await peer.read_exactly(n)
            await peer.send(ok(b"%s %d %s" % (path.encode(), len(data), data)))
            if peer.index == 0:
                await reset_now.wait()
                peer.reset()
                return

    monkeypatch.setattr(_Conn, "readable_while_idle", lambda self: False)
    async with running_raw(handler) as up, UpstreamPool("127.0.0.1", up.port) as pool:
        assert await (await pool.request(req("/warm"))).body.read_all() == b"/warm 0 "
        reset_now.set()
        await _wait_reset_seen(pool)
        source = Source([b"hello ", b"world"])
        r = await pool.request(req("/up", Body(source, None), "POST"))
        assert await r.body.read_all() == b"/up 11 hello world"
        assert up.requests == [(0, "GET /warm HTTP/1.1"), (1, "POST /up HTTP/1.1")]
        s = stats(pool)
        assert (s["resent"], s["in_use"], s["open"]) == (1, 0, 1)


async def test_stale_resend_that_cannot_connect_fails_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stale connection's resend finds the upstream gone: a plain, retryable connect error (the
    request never reached anyone), and nothing left checked out."""
    reset_now = trio.Event()

    async def handler(up: RawUpstream, peer: Peer) -> None:
        head = await peer.read_head()
        if head is None:
            return
        up.record(peer, head)
        await peer.send(ok(b"warm"))
        await reset_now.wait()
        peer.reset()

    monkeypatch.setattr(_Conn, "readable_while_idle", lambda self: False)
    async with running_raw(handler) as up, UpstreamPool("127.0.0.1", up.port) as pool:
        assert await (await pool.request(req("/warm"))).body.read_all() == b"warm"
        await up.stop_listening()
        reset_now.set()
        await _wait_reset_seen(pool)
        with pytest.raises(ConnectError) as info:
            await pool.request(req("/lost", Body.from_bytes(b"abc"), "POST"))
        assert info.value.cause == "connect/refused" and info.value.retryable
        assert up.lines() == ["GET /warm HTTP/1.1"]
        s = stats(pool)
        assert (s["open"], s["idle"], s["in_use"], s["resent"]) == (0, 0, 0, 1)


# == 6. never re-send what was (partly) written ===================================================


async def test_in_memory_request_partly_written_on_a_pooled_connection_is_not_resent() -> None:
    """A large in-memory upload on a reused connection: the upstream reads its head, then resets
    without reading the body. Bytes of the request were written, so the pool must fail it, not
    send it again on a fresh connection (the upstream would see it twice)."""

    async def handler(up: RawUpstream, peer: Peer) -> None:
        while (head := await peer.read_head()) is not None:
            path = up.record(peer, head)
            if path == "/upload" and peer.index == 0:
                peer.reset()  # saw the request; dies before reading its body
                return
            n = content_length(head)
            await peer.read_exactly(n)
            await peer.send(ok(b"%d" % n))

    async with running_raw(handler) as up, UpstreamPool("127.0.0.1", up.port) as pool:
        assert await (await pool.request(req("/warm"))).body.read_all() == b"0"
        payload = b"x" * (16 << 20)  # larger than the loopback socket buffers
        error: UpstreamError | None = None
        try:
            r = await pool.request(req("/upload", Body.from_bytes(payload), "POST"))
            await r.body.read_all()
        except UpstreamError as exc:
            error = exc
        uploads = up.lines().count("POST /upload HTTP/1.1")
        assert uploads == 1, (
            f"the upstream saw the upload {uploads} times: the pool re-sent a request it had partly "
            f"written (pool {stats(pool)}, requests {up.requests})"
        )
        assert isinstance(error, UpstreamReset) and not error.retryable
        assert stats(pool)["in_use"] == 0


async def test_streamed_request_reset_after_its_head_was_read_is_not_resent() -> None:
    async def handler(up: RawUpstream, peer: Peer) -> None:
        while (head := await peer.read_head()) is not None:
            path = up.record(peer, head)
            if path == "/upload":
                peer.reset()
                return
            await peer.send(ok(path.encode()))

    async with running_raw(handler) as up, UpstreamPool("127.0.0.1", up.port) as pool:
        assert await (await pool.request(req("/warm"))).body.read_all() == b"/warm"
        source = Source([b"a" * 1000], stall=True)
        with trio.fail_after(10), pytest.raises(UpstreamReset) as info:
            await pool.request(req("/upload", Body(source, None), "POST"))
        assert not info.value.retryable
        assert up.lines() == ["GET /warm HTTP/1.1", "POST /upload HTTP/1.1"]
        with trio.fail_after(10):
            await source.closed.wait()
        s = stats(pool)
        assert (s["resent"], s["in_use"], s["open"]) == (0, 0, 0)


async def test_client_does_not_requeue_a_request_that_reached_the_upstream() -> None:
    """Through the client (which requeues what is retryable): the upstream read the whole request on
    a pooled connection, then closed without answering. One failure, one copy upstream."""

    async def handler(up: RawUpstream, peer: Peer) -> None:
        while (head := await peer.read_head()) is not None:
            path = up.record(peer, head)
            await peer.read_exactly(content_length(head))
            if path == "/once":
                return  # close without an answer
            await peer.send(ok(path.encode()))

    async with running_raw(handler) as up, trio.open_nursery() as nursery:
        # The default requeue budget: a retryable error would be requeued.
        client = make_client(nursery, up.port, requeue_budget=RetryBudget())
        resp, _ = await client.request(req("/warm"))
        assert await resp.body.read_all() == b"/warm"
        with pytest.raises(UpstreamError) as info:
            resp, _ = await client.request(req("/once", Body.from_bytes(b"payload"), "POST"))
            await resp.body.read_all()
        assert info.value.cause == "upstream/reset" and not info.value.retryable
        assert up.lines() == ["GET /warm HTTP/1.1", "POST /once HTTP/1.1"]
        await client.aclose()
        nursery.cancel_scope.cancel()


class _Counted:
    """Streams a pool opens through ``connector``, counted while open (``peak``: most at once)."""

    def __init__(self) -> None:
        self.live = self.peak = 0

    async def connector(self, host: str, port: int, timeout_s: float) -> Any:
        stream = await trio.open_tcp_stream(host, port)
        self.live += 1
        self.peak = max(self.peak, self.live)
        counted = self

        class Stream:
            socket = stream.socket
            send_all = stream.send_all
            receive_some = stream.receive_some

            async def aclose(self) -> None:
                counted.live -= 1
                await stream.aclose()

        return Stream()


async def test_max_size_holds_and_nothing_leaks_under_concurrent_requests_and_cancellations() -> None:
    """60 concurrent requests through ``maxSize=2``, a third of them cancelled while they wait or while
    the upstream answers (delays and cancellations from a seeded rng): never more than 2 connections
    open at once, and afterwards nothing in use, waiting or opening, and every request either answered
    or cancelled."""
    rng = random.Random(7)
    counted = _Counted()

    async def handler(up: RawUpstream, peer: Peer) -> None:
        while (head := await peer.read_head()) is not None:
            path = up.record(peer, head)
            await trio.sleep(int(path.rsplit("/", 1)[1]) / 1000)
            await peer.send(ok(path.encode()))

    answered: list[str] = []
    cancelled: list[str] = []
    async with (
        running_raw(handler) as up,
        UpstreamPool("127.0.0.1", up.port, PoolParams(max_size=2), connector=counted.connector) as pool,
    ):

        async def one(i: int, delay_ms: int, cut_after_s: float | None) -> None:
            path = f"/r{i}/{delay_ms}"
            with trio.move_on_after(cut_after_s if cut_after_s is not None else 30) as scope:
                body = await (await pool.request(req(path), connect_timeout=30)).body.read_all()
                assert body == path.encode()
                answered.append(path)
            if scope.cancelled_caught:
                cancelled.append(path)

        async with trio.open_nursery() as nursery:
            for i in range(60):
                cut = rng.choice([None, None, rng.uniform(0.001, 0.03)])
                nursery.start_soon(one, i, rng.randrange(0, 8), cut)
        await trio.testing.wait_all_tasks_blocked()  # the pool's own tasks (releases) have run
        assert len(answered) + len(cancelled) == 60 and answered and cancelled
        assert counted.peak <= 2, f"{counted.peak} connections open at once with maxSize=2"
        s = stats(pool)
        assert (s["in_use"], s["waiters"], s["opening"]) == (0, 0, 0), s
        assert 0 < s["open"] == s["idle"] == counted.live <= 2, (s, counted.live)
