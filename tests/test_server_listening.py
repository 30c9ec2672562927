"""The lifecycle both servers share (``hostproxy.http.listening.ListeningServer``).

First against fakes (a listener fed through a channel, connections that wait or fail), so accept
errors, refusals, failures and drain notification are exercised without sockets; then against the real
``Http1Server`` and ``H2Server`` on loopback: binding, the lifecycle log events each protocol names,
statistics keys, and a drain that serves a connection still queued in the kernel backlog.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from typing import Any

import pytest
import structlog
import trio
import trio.testing
from structlog.testing import capture_logs

from hostproxy.h2.server import H2Server, H2ServerParams
from hostproxy.http.listening import ListeningServer, bind_listeners, sockaddr
from hostproxy.http.message import Body, Request, Response
from hostproxy.http.server import ConnInfo, Http1Server, ServerParams

pytestmark = pytest.mark.timeout(30)


# -- fakes --------------------------------------------------------------------------------------------


class FakeSocket:
    def __init__(self, name: tuple[str, int] = ("127.0.0.1", 4242)) -> None:
        self.name = name
        self.closed = False

    def getsockname(self) -> tuple[str, int]:
        return self.name

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        self.closed = True


class FakeStream:
    def __init__(self, label: str) -> None:
        self.label = label
        self.socket = FakeSocket()
        self.aclosed = False

    async def aclose(self) -> None:
        self.aclosed = True


class FakeListener:
    """``accept`` returns (or raises) what was sent into ``feed``, in order."""

    def __init__(self) -> None:
        self.feed, self._items = trio.open_memory_channel[Any](10)
        self.socket = FakeSocket()
        self.aclosed = False

    async def accept(self) -> Any:
        item = await self._items.receive()
        if isinstance(item, BaseException):
            raise item
        return item

    async def aclose(self) -> None:
        self.aclosed = True


class FakeConn:
    def __init__(self, stream: FakeStream, conn_id: int) -> None:
        self.stream = stream
        self.conn_id = conn_id
        self.drains = 0
        self.done = trio.Event()

    async def serve(self) -> None:
        if self.stream.label == "fails":
            raise RuntimeError("connection blew up")
        await self.done.wait()

    def start_drain(self) -> None:
        self.drains += 1


@dataclass(frozen=True)
class FakeParams:
    ip: str = "127.0.0.1"
    port: int = 0
    router_label: str = "fake"


class FakeStats:
    """The lifecycle counters plus a nested dict (``statistics()`` copies those too)."""

    def __init__(self) -> None:
        self.connections = self.connections_total = self.requests_in_flight = self.connection_failures = 0
        self.accept_failures = 0
        self.nested: dict[str, int] = {}


class FakeServer(ListeningServer[FakeConn]):
    logger = structlog.get_logger("tests.fake")
    log_prefix = "fake"

    _stats: FakeStats

    def __init__(self) -> None:
        super().__init__()
        self.params = FakeParams()
        self._stats = FakeStats()
        self.made: list[FakeConn] = []

    def _admit(self, stream: Any) -> bool:
        return stream.label != "refused"

    def _new_connection(self, stream: Any, conn_id: int) -> FakeConn:
        conn = FakeConn(stream, conn_id)
        self.made.append(conn)
        return conn


async def wait_until(predicate: Any, what: str) -> None:
    with trio.fail_after(10):
        while not predicate():
            await trio.sleep(0.01)
    assert predicate(), what


# -- the shared core, against fakes -----------------------------------------------------------------------


async def test_accept_error_is_logged_and_retried_and_a_closed_socket_ends_the_loop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = FakeServer()
    listener = FakeListener()
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(server.serve, [listener])
            assert addresses == [("127.0.0.1", 4242)] == server.addresses
            await listener.feed.send(OSError(errno.EMFILE, "Too many open files"))
            await listener.feed.send(FakeStream("after-error"))
            await wait_until(lambda: len(server.made) == 1, "the loop kept accepting after the error")
            assert server.made[0].conn_id == 1
            server.made[0].done.set()
            # EBADF: the socket was closed under the loop; it ends quietly and serve returns.
            await listener.feed.send(OSError(errno.EBADF, "Bad file descriptor"))
    failed = [e for e in logs if e["event"] == "fake.accept_failed"]
    assert failed == [
        {
            "event": "fake.accept_failed",
            "log_level": "warning",
            "router": "fake",
            "error": "[Errno 24] Too many open files; hostproxy is out of file descriptors: raise "
            "LimitNOFILE= (systemd) or ulimit -n, or lower servers[].maxConnections",
            "failures": 1,
        }
    ]
    assert [e["event"] for e in logs] == ["fake.server.started", "fake.accept_failed"]
    assert listener.aclosed
    stats = server.statistics()
    assert (stats["connections"], stats["connections_total"], stats["connection_failures"]) == (0, 1, 0)
    assert stats["accept_failures"] == 1


async def test_accept_errors_are_counted_each_but_logged_at_most_every_ten_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Out of descriptors, accept fails every retry (ten a second): one log line per 10 s, saying
    how many failed since the last."""
    server = FakeServer()
    listener = FakeListener()
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, [listener])
            for _ in range(150):  # 150 retries of 0.1 s: 15 s of failing
                await listener.feed.send(OSError(errno.EMFILE, "Too many open files"))
            await listener.feed.send(OSError(errno.EBADF, "Bad file descriptor"))
    failed = [e["failures"] for e in logs if e["event"] == "fake.accept_failed"]
    # The first, then those that failed over the next 10 s (a hundred retries, one more when the
    # clock's sum of 0.1 s steps falls just short of 10).
    assert len(failed) == 2 and failed[0] == 1 and failed[1] in (100, 101), failed
    assert server.statistics()["accept_failures"] == 150


async def test_refused_connection_is_closed_at_once_and_never_served() -> None:
    server = FakeServer()
    refused = FakeStream("refused")
    async with trio.open_nursery() as nursery:
        server._start_connection(nursery, refused)
    assert refused.socket.closed  # aborted: the peer sees it closed, not a hang
    assert server.made == []
    assert server.statistics()["connections_total"] == 0


async def test_connection_is_counted_the_moment_it_is_admitted() -> None:
    server = FakeServer()
    async with trio.open_nursery() as nursery:
        server._start_connection(nursery, FakeStream("ok"))
        # No checkpoint yet: the connection task has not started, but the server is not idle.
        assert server.made == []
        assert not server.idle
        assert server.statistics()["connections"] == 1
        await wait_until(lambda: server.made, "the connection task started")
        server.made[0].done.set()
    assert server.idle


async def test_failing_connection_is_counted_logged_and_closed_alone() -> None:
    server = FakeServer()
    bad, good = FakeStream("fails"), FakeStream("ok")
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            server._start_connection(nursery, bad)
            server._start_connection(nursery, good)
            await wait_until(lambda: bad.aclosed, "the failed connection's stream was closed")
            assert server.statistics()["connections"] == 1  # the other one is still open
            [still_open] = server._conns
            assert still_open.stream is good
            still_open.done.set()
    assert good.aclosed
    stats = server.statistics()
    assert (stats["connections"], stats["connections_total"], stats["connection_failures"]) == (0, 2, 1)
    [failed] = [e for e in logs if e["event"] == "fake.connection_failed"]
    assert failed["router"] == "fake" and failed["log_level"] == "error"
    assert failed["exc_info"] is True  # logged with its traceback


async def test_drain_tells_open_and_later_connections_and_serve_returns_when_they_end() -> None:
    server = FakeServer()
    listener = FakeListener()
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, [listener])
            await listener.feed.send(FakeStream("open"))
            await wait_until(lambda: len(server.made) == 1, "accepted")
            # A stream queued for the backlog hand-over starts after the accept loop ends.
            late = FakeStream("late")
            server._backlog.append(late)
            server.drain()
            server.drain()  # a second call logs nothing new and tells the connections again
            await wait_until(lambda: len(server.made) == 2, "the backlog stream was served")
            first, second = server.made
            assert first.drains == 2
            assert second.drains == 1  # started while draining: told at once
            assert server.draining and not server.idle
            assert listener.socket.closed
            first.done.set()
            second.done.set()
    assert server.idle and late.aclosed
    events = [e["event"] for e in logs]
    assert events.count("fake.server.draining") == 1
    assert events.count("fake.server.stopped_accepting") == 2
    [draining] = [e for e in logs if e["event"] == "fake.server.draining"]
    assert draining == {
        "event": "fake.server.draining",
        "log_level": "info",
        "router": "fake",
        "addresses": [("127.0.0.1", 4242)],
        "connections": 1,
        "in_flight": 0,
    }


def test_statistics_are_a_fresh_copy_and_repr_names_the_class() -> None:
    server = FakeServer()
    server._stats.nested["x"] = 1
    stats = server.statistics()
    stats["nested"]["x"] = 99
    stats["connections"] = 7
    assert server._stats.nested == {"x": 1} and server._stats.connections == 0
    assert repr(server) == "<FakeServer fake on [] connections=0 in_flight=0>"


def test_sockaddr_keeps_host_and_port_only() -> None:
    assert sockaddr(("::1", 80, 0, 0)) == ("::1", 80)
    assert sockaddr(("127.0.0.1", 8080)) == ("127.0.0.1", 8080)
    assert sockaddr("/run/hostproxy.sock") == ("/run/hostproxy.sock", 0)


def test_bind_failure_says_which_address_and_what_to_check() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))  # bound without SO_REUSEPORT: nobody can share it
    port = holder.getsockname()[1]
    try:
        with pytest.raises(OSError) as info:
            bind_listeners("127.0.0.1", port)
        assert str(info.value).endswith(
            f"cannot listen on 127.0.0.1:{port}: Address already in use; is another process (not a "
            "hostproxy with SO_REUSEPORT) using the port?"
        )
    finally:
        holder.close()


# -- the real servers ---------------------------------------------------------------------------------------


async def hello(request: Request, info: ConnInfo) -> Response:
    return Response(200, b"OK", body=Body.from_bytes(f"hello {request.target}".encode()))


def make(kind: str, **kw: Any) -> Http1Server | H2Server:
    if kind == "http":
        return Http1Server(hello, ServerParams(router_label="r1"), **kw)
    return H2Server(hello, H2ServerParams(router_label="r1"), **kw)


@pytest.mark.parametrize("kind", ["http", "h2"])
async def test_servers_bind_reuseport_log_their_lifecycle_and_stop_when_drained_idle(kind: str) -> None:
    server = make(kind)
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(server.serve)
            [(ip, port)] = addresses
            assert ip == "127.0.0.1" and port > 0
            sock = server._listeners[0].socket
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            assert server.idle and not server.draining
            server.drain()
            # No connection open: the accept loops end and serve returns by itself.
    assert server.draining and server.idle
    lifecycle = [(e["event"], e["router"], e["addresses"]) for e in logs]
    assert lifecycle == [
        (f"{kind}.server.started", "r1", [(ip, port)]),
        (f"{kind}.server.draining", "r1", [(ip, port)]),
        (f"{kind}.server.stopped_accepting", "r1", [(ip, port)]),
    ]


def test_statistics_keys_of_each_protocol() -> None:
    assert list(make("http").statistics()) == [
        "connections",
        "connections_total",
        "requests_in_flight",
        "requests_total",
        "rejected_overload",
        "accept_failures",
        "rejected_connections",
        "bad_requests",
        "header_timeouts",
        "body_timeouts",
        "write_timeouts",
        "tunnel_timeouts",
        "connection_failures",
        "accept_paused",
        "requests_abandoned",
    ]
    assert list(make("h2").statistics()) == [
        "connections",
        "connections_total",
        "requests_in_flight",
        "requests_total",
        "rejected_overload",
        "accept_failures",
        "refused_streams",
        "header_lists_refused",
        "client_resets",
        "upstream_resets_passed",
        "stalled_streams",
        "connection_failures",
        "peak_outbound_bytes",
        "flood_goaways",
        "rejected_connections",
        "accept_paused",
    ]
    assert repr(make("h2")).startswith("<H2Server r1 on [] connections=0")


class GateClosed:
    """An overload manager that refuses new connections (``accept_allowed`` false)."""

    accept_allowed = False
    keepalive_allowed = True
    shed_requests = False

    def note_shed(self) -> None:  # pragma: no cover - never shedding here
        raise AssertionError("not shedding")


async def test_http_drain_serves_a_connection_still_queued_in_the_kernel_backlog() -> None:
    server = make("http", overload=GateClosed())
    assert isinstance(server, Http1Server)
    async with trio.open_nursery() as nursery:
        [(ip, port)] = await nursery.start(server.serve)
        await wait_until(lambda: server.statistics()["accept_paused"] == 1, "accepting paused")
        client = trio.socket.socket()
        with client:
            await client.connect((ip, port))
            await client.send(b"GET /queued HTTP/1.1\r\nHost: x\r\n\r\n")
            assert server.statistics()["connections_total"] == 0  # still in the kernel's queue
            server.drain()
            reply = b""
            with trio.fail_after(10):
                while chunk := await client.recv(65536):
                    reply += chunk
        # drain() ends serve once the queued connection is answered and closed.
    assert reply.startswith(b"HTTP/1.1 200 "), reply
    assert b"\r\nconnection: close\r\n" in reply.lower()
    assert reply.endswith(b"hello /queued")
    assert server.statistics()["connections_total"] == 1 and server.idle


async def test_h2_holds_accepting_back_under_overload() -> None:
    server = make("h2", overload=GateClosed())
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        await wait_until(lambda: server.statistics()["accept_paused"] == 1, "accepting paused")
        nursery.cancel_scope.cancel()


async def test_h2_connection_that_starts_while_draining_gets_settings_then_goaway() -> None:
    """The server preface comes first even for a connection told to drain before it served anything
    (one accepted just as the server began draining)."""
    import h2.config
    import h2.connection
    import h2.events

    server = make("h2")
    server.drain()
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    events: list[Any] = []
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        sock = trio.socket.socket()
        with sock:
            await sock.connect(listeners[0].socket.getsockname())
            stream = await listeners[0].accept()
            server._start_connection(nursery, stream)  # as the accept loop does
            await sock.send(client.data_to_send())
            with trio.fail_after(10):
                while not any(isinstance(e, h2.events.ConnectionTerminated) for e in events):
                    chunk = await sock.recv(65536)
                    assert chunk, events
                    events.extend(client.receive_data(chunk))
    await listeners[0].aclose()
    assert isinstance(events[0], h2.events.RemoteSettingsChanged), events
    goaway = next(e for e in events if isinstance(e, h2.events.ConnectionTerminated))
    assert goaway.error_code == 0 and goaway.last_stream_id == 0
    assert server.idle


async def test_h2_drain_answers_a_connection_still_queued_in_the_kernel_backlog() -> None:
    """A client queued when an h2 server drains gets SETTINGS and GOAWAY (NO_ERROR, last stream 0: its
    request was not processed and may be sent again elsewhere), then an orderly close — not a reset."""
    import h2.config
    import h2.connection
    import h2.events

    server = make("h2", overload=GateClosed())
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    sid = client.get_next_available_stream_id()
    client.send_headers(
        sid,
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", b"/q")],
        end_stream=True,
    )
    events: list[Any] = []
    async with trio.open_nursery() as nursery:
        [(ip, port)] = await nursery.start(server.serve)
        await wait_until(lambda: server.statistics()["accept_paused"] == 1, "accepting paused")
        sock = trio.socket.socket()
        with sock:
            await sock.connect((ip, port))
            await sock.send(client.data_to_send())
            assert server.statistics()["connections_total"] == 0  # still in the kernel's queue
            server.drain()
            with trio.fail_after(10):
                while chunk := await sock.recv(65536):  # a reset would raise here
                    events.extend(client.receive_data(chunk))
                    if any(isinstance(e, h2.events.ConnectionTerminated) for e in events):
                        sock.shutdown(socket.SHUT_WR)  # the client closes its side on GOAWAY
    assert isinstance(events[0], h2.events.RemoteSettingsChanged), events
    goaway = next(e for e in events if isinstance(e, h2.events.ConnectionTerminated))
    assert goaway.error_code == 0 and goaway.last_stream_id == 0
    assert server.statistics()["connections_total"] == 1 and server.idle
