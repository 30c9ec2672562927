"""``H2UpstreamPool`` opens connections only as needed: requests that arrive while a connection is
being opened wait for that one connect and share its outcome (the connection, or its error).

Real sockets on loopback throughout; where a test needs every request to be waiting while the
connect is in progress, the pool's connector opens a real TCP connection only once the test lets
it (a gate), so the interleaving does not depend on the scheduler.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import h2.connection
import pytest
import trio
import trio.testing
from certs import make_listener_tls, make_pki, serving

from hostproxy.config import model as m
from hostproxy.h2 import H2ClientSettings, H2Server, H2ServerParams, H2UpstreamPool
from hostproxy.http.errors import ConnectError, ProxyInternalError, UpstreamError
from hostproxy.http.message import Body, Headers, Request, Response
from hostproxy.http.upstream import PoolParams
from hostproxy.tls import ClientTls, TlsError
from tests.grpc_fixtures.rawh2 import ScriptedUpstream, read_events

pytestmark = pytest.mark.timeout(60)

N = 20


def get(path: str) -> Request:
    return Request("GET", path, Headers([(b"host", b"upstream")]), Body.empty())


class Upstream:
    """An ``H2Server`` answering ``/<x>`` with ``<x>`` once ``hold_until`` requests are in flight
    at the same time (so every request of a test is provably concurrent on the upstream)."""

    def __init__(self, hold_until: int = 1) -> None:
        self.hold_until = hold_until
        self.arrived = 0
        self.all_arrived = trio.Event()
        self.connection_ids: set[int] = set()
        self.peak_per_connection: dict[int, int] = {}
        self._open: dict[int, int] = {}

    async def handle(self, req: Request, info: Any) -> Response:
        cid = info.connection_id
        self.connection_ids.add(cid)
        self._open[cid] = self._open.get(cid, 0) + 1
        self.peak_per_connection[cid] = max(self.peak_per_connection.get(cid, 0), self._open[cid])
        self.arrived += 1
        if self.arrived >= self.hold_until:
            self.all_arrived.set()
        try:
            await self.all_arrived.wait()
        finally:
            self._open[cid] -= 1
        return Response(200, body=Body.from_bytes(req.target[1:].encode()))


@contextlib.asynccontextmanager
async def upstream_server(app: Upstream, params: H2ServerParams | None = None) -> AsyncIterator[int]:
    server = H2Server(app.handle, params or H2ServerParams())
    async with trio.open_nursery() as nursery:
        [(_, port)] = await nursery.start(server.serve)
        yield port
        nursery.cancel_scope.cancel()


class GatedConnector:
    """A pool connector: records each call, waits for ``release()``, then connects for real (to
    ``ports[i]`` for call ``i``, the last port for later calls; a port of 0 is refused)."""

    def __init__(self, *ports: int) -> None:
        self.ports = ports
        self.calls = 0
        self.called = trio.Event()
        self.gate = trio.Event()

    def release(self) -> None:
        self.gate.set()

    async def __call__(self, host: str, port: int, timeout_s: float) -> trio.SocketStream:
        i = self.calls
        self.calls += 1
        self.called.set()
        await self.gate.wait()
        target = self.ports[min(i, len(self.ports) - 1)]
        endpoint = f"{host}:{port}"
        if target == 0:
            target = closed_port()
        try:
            return await trio.open_tcp_stream(host, target)
        except OSError as exc:
            raise ConnectError(
                f"Unable to establish connection to {endpoint}: {exc.strerror}",
                endpoint=endpoint,
                cause="connect/refused",
            ) from None


def closed_port() -> int:
    """A loopback port with nothing listening (bound, read back, closed)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_requests(
    pool: H2UpstreamPool, n: int, nursery: trio.Nursery, **kw: Any
) -> dict[int, bytes | Exception]:
    """``n`` concurrent requests ``/0`` .. ``/n-1`` started in ``nursery``; returns at once, and the
    results (each one's body, or its ``UpstreamError``) fill in as requests finish."""
    results: dict[int, bytes | Exception] = {}

    async def one(i: int) -> None:
        try:
            resp = await pool.request(get(f"/{i}"), **kw)
            results[i] = await resp.body.read_all(limit=1024)
        except UpstreamError as exc:
            results[i] = exc

    for i in range(n):
        nursery.start_soon(one, i)
    return results


async def run_concurrently(pool: H2UpstreamPool, n: int, **kw: Any) -> dict[int, bytes | Exception]:
    """``start_requests`` and wait for all of them."""
    async with trio.open_nursery() as nursery:
        results = await start_requests(pool, n, nursery, **kw)
    return results


# -- one connection for concurrent first requests ------------------------------------------------


async def test_concurrent_first_requests_share_one_connection() -> None:
    app = Upstream(hold_until=N)
    async with upstream_server(app) as port, H2UpstreamPool("127.0.0.1", port) as pool:
        with trio.fail_after(20):
            results = await run_concurrently(pool, N)
        assert results == {i: str(i).encode() for i in range(N)}
        stats = pool.statistics()
        assert (stats["connects"], stats["open"], stats["streams_total"], stats["resent"]) == (1, 1, N, 0)
        assert len(app.connection_ids) == 1


async def test_requests_arriving_during_the_connect_wait_for_it_and_share_it() -> None:
    app = Upstream(hold_until=N)
    async with upstream_server(app) as port:
        connector = GatedConnector(port)
        async with H2UpstreamPool("127.0.0.1", port, connector=connector) as pool:
            async with trio.open_nursery() as nursery:
                results = await start_requests(pool, N, nursery)
                with trio.fail_after(10):
                    await connector.called.wait()
                await trio.testing.wait_all_tasks_blocked()
                assert connector.calls == 1  # everyone else is waiting for that connect
                connector.release()
            assert results == {i: str(i).encode() for i in range(N)}
            assert connector.calls == 1
            assert pool.statistics()["connects"] == 1
            assert len(app.connection_ids) == 1


async def test_waiters_take_their_streams_in_arrival_order() -> None:
    app = Upstream()
    async with upstream_server(app) as port:
        connector = GatedConnector(port)
        async with H2UpstreamPool("127.0.0.1", port, connector=connector) as pool:
            order: list[int] = []
            real_exchange = pool._exchange

            async def exchange(link: Any, req: Request, *rest: Any) -> Response:
                order.append(int(req.target[1:]))  # the order streams are opened in
                return await real_exchange(link, req, *rest)

            pool._exchange = exchange  # type: ignore[method-assign]
            async with trio.open_nursery() as nursery:
                results: dict[int, bytes | Exception] = {}
                for i in range(N):
                    nursery.start_soon(one_request, pool, i, results)
                    await trio.testing.wait_all_tasks_blocked()  # request i waits before i+1 comes
                connector.release()
            assert results == {i: str(i).encode() for i in range(N)}
            assert order == list(range(N))
            assert pool.statistics()["connects"] == 1


async def one_request(pool: H2UpstreamPool, i: int, results: dict[int, bytes | Exception]) -> None:
    try:
        resp = await pool.request(get(f"/{i}"))
        results[i] = await resp.body.read_all(limit=1024)
    except UpstreamError as exc:
        results[i] = exc


# -- a failed connect fails its waiters --------------------------------------------------------


async def test_a_refused_connect_fails_every_waiter_and_the_next_request_connects_afresh() -> None:
    app = Upstream()
    async with upstream_server(app) as port:
        connector = GatedConnector(0, port)  # the first connect is refused, the next ones work
        async with H2UpstreamPool("127.0.0.1", port, connector=connector) as pool:
            async with trio.open_nursery() as nursery:
                results = await start_requests(pool, N, nursery)
                with trio.fail_after(10):
                    await connector.called.wait()
                await trio.testing.wait_all_tasks_blocked()
                connector.release()
            assert sorted(results) == list(range(N))
            for result in results.values():
                assert isinstance(result, ConnectError)
                assert result.cause == "connect/refused"
                assert result.retryable
                assert str(result).startswith(f"Unable to establish connection to 127.0.0.1:{port}: ")
            assert connector.calls == 1
            stats = pool.statistics()
            assert (stats["connect_failures"], stats["connects"], stats["open"]) == (1, 0, 0)

            with trio.fail_after(10):
                resp = await pool.request(get("/again"))
                assert await resp.body.read_all(limit=1024) == b"again"
            assert connector.calls == 2
            stats = pool.statistics()
            assert (stats["connect_failures"], stats["connects"]) == (1, 1)


class SilentFirst(ScriptedUpstream):
    """Accepts every connection; the first one never sends a byte (no HTTP/2 preface, so the
    pool's connect cannot complete); later ones answer every request with ``200 again``."""

    def __init__(self) -> None:
        super().__init__(answer_all)
        self.silent_closed = trio.Event()

    async def _conn(self, stream: trio.SocketStream) -> None:
        if self.connections > 0:
            await super()._conn(stream)
            return
        self.connections += 1
        with contextlib.suppress(trio.BrokenResourceError, OSError):
            while await stream.receive_some(65536):
                pass
        self.silent_closed.set()
        await stream.aclose()


async def answer_all(i: int, conn: h2.connection.H2Connection, stream: trio.SocketStream) -> None:
    while True:
        events = await read_events(conn, stream)
        if not events:
            return
        for ev in events:
            if type(ev) is h2.events.RequestReceived:
                conn.send_headers(ev.stream_id, [(b":status", b"200")])
                conn.send_data(ev.stream_id, b"again", end_stream=True)
        await stream.send_all(conn.data_to_send())


async def test_a_connect_the_upstream_never_completes_times_out_for_every_waiter() -> None:
    up = SilentFirst()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(up.serve)
        params = PoolParams(connect_timeout_ms=500)
        async with H2UpstreamPool("127.0.0.1", port, params) as pool:
            with trio.fail_after(20):
                results = await run_concurrently(pool, N)
            assert sorted(results) == list(range(N))
            for result in results.values():
                assert isinstance(result, ConnectError)
                assert result.cause == "connect/timeout"
                assert str(result) == (
                    f"Unable to establish connection to 127.0.0.1:{port}: no HTTP/2 SETTINGS from the "
                    "upstream within connect timeout 500 ms (is it an HTTP/2 server?)"
                )
            assert up.connections == 1  # all of them waited for the one connect
            stats = pool.statistics()
            assert (stats["connect_failures"], stats["connects"], stats["open"]) == (1, 0, 0)
            with trio.fail_after(10):
                await up.silent_closed.wait()  # the half-open connection was closed

            with trio.fail_after(10):
                resp = await pool.request(get("/"))
                assert await resp.body.read_all(limit=1024) == b"again"
            assert up.connections == 2
            stats = pool.statistics()
            assert (stats["connect_failures"], stats["connects"]) == (1, 1)
        nursery.cancel_scope.cancel()


async def test_a_waiter_with_a_shorter_connect_timeout_stops_waiting_on_its_own_deadline() -> None:
    up = SilentFirst()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(up.serve)
        async with H2UpstreamPool("127.0.0.1", port, PoolParams(connect_timeout_ms=30_000)) as pool:
            outcome: dict[str, Any] = {}

            async def patient() -> None:
                try:
                    await pool.request(get("/"))
                except UpstreamError as exc:
                    outcome["patient"] = exc

            async with trio.open_nursery() as inner:
                inner.start_soon(patient)
                with trio.fail_after(10):
                    while up.connections < 1:
                        await trio.sleep(0.01)
                with pytest.raises(ConnectError) as info:
                    with trio.fail_after(10):
                        await pool.request(get("/"), connect_timeout=0.2)
                assert info.value.cause == "connect/timeout"
                assert str(info.value) == (
                    f"Unable to establish connection to 127.0.0.1:{port}: "
                    "no answer within connect timeout 200 ms"
                )
                assert "patient" not in outcome  # the shared connect goes on for the others
                assert up.connections == 1
                await pool.aclose()
            assert isinstance(outcome["patient"], ProxyInternalError)
            assert str(outcome["patient"]) == f"pool for 127.0.0.1:{port} is closed"
        nursery.cancel_scope.cancel()


# -- more connections only when the upstream caps concurrent streams -----------------------------


async def test_more_connections_only_as_the_upstreams_stream_limit_requires() -> None:
    app = Upstream(hold_until=N)
    params = H2ServerParams(max_concurrent_streams=5)
    async with upstream_server(app, params) as port, H2UpstreamPool("127.0.0.1", port) as pool:
        with trio.fail_after(20):
            results = await run_concurrently(pool, N)
        assert results == {i: str(i).encode() for i in range(N)}
        stats = pool.statistics()
        # 20 streams held open at once, 5 per connection: exactly 4 connections, nothing refused.
        assert (stats["connects"], stats["resent"], stats["streams_total"]) == (4, 0, N)
        assert len(app.connection_ids) == 4
        assert max(app.peak_per_connection.values()) == 5


class HeldReads:
    """A real TCP stream whose reads wait for ``released`` (the peer's SETTINGS are held back)."""

    def __init__(self, stream: trio.SocketStream, released: trio.Event) -> None:
        self.stream = stream
        self.released = released

    async def send_all(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await self.released.wait()
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.stream.aclose()


async def test_no_stream_goes_on_a_connection_before_the_upstreams_settings_arrive() -> None:
    app = Upstream(hold_until=N)
    params = H2ServerParams(max_concurrent_streams=5)
    released = trio.Event()
    connected = trio.Event()

    async def connector(host: str, port: int, timeout_s: float) -> Any:
        stream = await trio.open_tcp_stream(host, port)
        connected.set()
        return HeldReads(stream, released)

    async with (
        upstream_server(app, params) as port,
        H2UpstreamPool("127.0.0.1", port, connector=connector) as pool,
    ):
        async with trio.open_nursery() as nursery:
            results = await start_requests(pool, N, nursery)
            with trio.fail_after(10):
                await connected.wait()
            await trio.testing.wait_all_tasks_blocked()
            # TCP is up and the preface sent, the upstream's SETTINGS are held back: no stream yet
            stats = pool.statistics()
            assert (stats["streams_total"], stats["open"], stats["connects"]) == (0, 0, 0)
            released.set()
        assert results == {i: str(i).encode() for i in range(N)}
        stats = pool.statistics()
        assert (stats["connects"], stats["resent"], stats["streams_total"]) == (4, 0, N)


async def test_the_pools_own_stream_limit_also_bounds_each_connection() -> None:
    app = Upstream(hold_until=6)
    settings = H2ClientSettings(max_concurrent_streams=3)
    async with upstream_server(app) as port, H2UpstreamPool("127.0.0.1", port, settings=settings) as pool:
        with trio.fail_after(20):
            results = await run_concurrently(pool, 6)
        assert results == {i: str(i).encode() for i in range(6)}
        assert pool.statistics()["connects"] == 2
        assert sorted(app.peak_per_connection.values()) == [3, 3]


# -- TLS: a failure seen only after the TLS handshake keeps its ``tls`` cause ----------------------


async def test_tls13_client_certificate_rejection_fails_every_waiter_with_the_tls_error(
    tmp_path: Path,
) -> None:
    """A TLS 1.3 server checks the client certificate after the client's handshake is done: the
    rejection arrives instead of the HTTP/2 SETTINGS, and every waiter gets the ``tls`` error."""
    pki = make_pki(tmp_path)
    listener_tls = make_listener_tls(
        pki.server_cert, pki.server_key, ca=pki.ca_path, require_client_auth=True, alpn=("h2",)
    )
    ctls = ClientTls(m.ClientTls(common_name="localhost", trust_certs=(pki.ca_path,)))

    async def connector(host: str, port: int, timeout_s: float) -> Any:
        return await ctls.connect(host, port, connect_timeout=timeout_s, alpn=("h2",))

    app = Upstream()
    server = H2Server(app.handle, H2ServerParams())
    async with (
        serving(server, listener_tls) as port,
        H2UpstreamPool("127.0.0.1", port, connector=connector) as pool,
    ):
        with trio.fail_after(20):
            results = await run_concurrently(pool, 5)
    assert sorted(results) == list(range(5))
    for result in results.values():
        assert isinstance(result, TlsError)
        assert (result.cause, result.reason, result.retryable) == ("tls", "client-certificate-required", True)
        assert str(result).startswith(
            f"TLS handshake with 127.0.0.1:{port} failed: the server requires a client certificate"
        )
    stats = pool.statistics()
    assert (stats["connect_failures"], stats["connects"]) == (1, 0)
    assert app.arrived == 0
