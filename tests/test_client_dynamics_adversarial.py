"""Adversarial tests of clients under a changing endpoint set, and of what they report.

Two levels:

* pure-ish: a real :class:`hostproxy.client.Client` (balancer, failure accrual, metrics registry) over
  stub endpoint pools the test gates, on an injected clock and a seeded rng;
* end to end: the real daemon with the fs namer on loopback, real upstreams, ``/client_state.json``,
  ``/admin/metrics.json`` and the Prometheus view.

Expected behaviour follows Linkerd 1 / Finagle (../shared/spec/linkerd1-reference.md §5, §7.3, §7.4):
an endpoint the namer removed is gone from the client (balancer, accrual, pool, state, metrics), a
re-added endpoint is a fresh one (Finagle builds a new endpoint stack, with a new failure-accrual
module, for an address that comes back), a negative name (``Addr.Neg``) is an empty endpoint set for
the load balancer, a failing namer keeps the last good set, and an expired client's metrics leave
with it while a client made again for the same name reports under its name.
"""

from __future__ import annotations

import collections
import contextlib
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio
import trio.testing

from dtab.addr import AddrBound, Address, AddrFailed, AddrNeg
from hostproxy.balancer import EndpointInfo, RoundRobinBalancer
from hostproxy.client import Client, _Pools
from hostproxy.config.model import ClientParams, ConsecutiveFailuresAccrual, RetryBudget
from hostproxy.http.message import Body, Headers, Request, Response
from hostproxy.metrics import MetricsRegistry, flat
from tests.daemonutil import curl, fs_config, keepalive_gets, running_daemon
from tests.test_lifecycle_helpers import write_atomic, write_disco
from tests.upstreams import running_upstream, serving

FS_WEB = "/#/io.l5d.fs/web"
FS_CLIENT = "#/io.l5d.fs/web"  # as metrics spell it


# == helpers ========================================================================================


class Clock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class GatedPool:
    """Stands in for ``UpstreamPool``: answers ``status_of[port]`` (default 200); a request to a port
    with a gate in ``gates`` waits for it. Records every pool made, its requests and whether it closed."""

    made: list[GatedPool] = []
    gates: dict[int, trio.Event] = {}
    status_of: dict[int, int] = {}

    def __init__(self, host: str, port: int, params: Any, *, nursery: Any = None, **kw: Any) -> None:
        self.host, self.port = host, port
        self.requests = 0
        self.closed = False
        GatedPool.made.append(self)

    @classmethod
    def reset(cls) -> None:
        cls.made, cls.gates, cls.status_of = [], {}, {}

    async def request(self, req: Request) -> Response:
        self.requests += 1
        gate = GatedPool.gates.get(self.port)
        if gate is not None:
            await gate.wait()
        else:
            await trio.lowlevel.checkpoint()
        status = GatedPool.status_of.get(self.port, 200)
        return Response(status, b"", Headers([]), Body.from_bytes(b"x"))

    def statistics(self) -> dict[str, int]:
        return {"open": 0 if self.closed else 1, "idle": 0, "waiters": 0, "opening": 0}

    async def aclose(self) -> None:
        self.closed = True


def a_request() -> Request:
    return Request("GET", "/", Headers([(b"host", b"web")]), Body.empty(), authority="web")


def make_client(nursery: trio.Nursery, clock: Clock, reg: MetricsRegistry, failures: int = 1) -> Client:
    GatedPool.reset()
    params = ClientParams(
        failure_accrual=ConsecutiveFailuresAccrual(kind="io.l5d.consecutiveFailures", failures=failures),
        requeue_budget=RetryBudget(min_retries_per_sec=0, percent_can_retry=0.0),
    )
    return Client(
        "out",
        FS_WEB,
        params,
        reg.router("out"),
        nursery=nursery,
        rng=random.Random(7),
        clock=clock,
        pool_factory=GatedPool,
    )


A = Address("127.0.0.1", 1001)
B = Address("127.0.0.1", 1002)
KA, KB = "127.0.0.1:1001", "127.0.0.1:1002"


async def send_until(client: Client, key: str, nursery: trio.Nursery, results: list[Any]) -> None:
    """Start requests (each in its own task) until one is in flight to ``key``."""

    async def one() -> None:
        results.append(await client.request(a_request()))

    for _ in range(50):
        if any(p.requests and f"{p.host}:{p.port}" == key for p in GatedPool.made):
            return
        nursery.start_soon(one)
        await trio.testing.wait_all_tasks_blocked()
    raise AssertionError(f"no request went to {key}")


def cfg(disco: Path, *, client: str = "", dtab: str = "/svc => /#/io.l5d.fs;", router_extra: str = "") -> str:
    return fs_config(disco, dtab=dtab) + router_extra + f"  client:\n    kind: io.l5d.global\n{client}\n"


NO_REQUEUE = "    requeueBudget: {minRetriesPerSec: 0, percentCanRetry: 0.0}"
NO_ACCRUAL = "    failureAccrual: {kind: none}"
ROUND_ROBIN = "    loadBalancer: {kind: roundRobin}"


async def metrics(admin: str) -> dict[str, float]:
    return (await curl(f"{admin}/admin/metrics.json")).json()  # type: ignore[return-value]


async def client_state(admin: str) -> dict[str, Any]:
    return (await curl(f"{admin}/client_state.json")).json()  # type: ignore[return-value]


async def get(d: Any, path: str = "/", host: str = "web") -> Any:
    return await curl(f"http://127.0.0.1:{d.port('out')}{path}", "-H", f"Host: {host}")


async def wait_for(pred: Any, timeout: float = 5.0) -> bool:
    """Poll an async predicate until it holds (a safety net for state settling; never a timing assertion)."""
    with trio.move_on_after(timeout):
        while not await pred():
            await trio.sleep(0.02)
        return True
    return False


class GatedUpstream:
    """A raw keep-alive HTTP/1.1 upstream: answers each request head with ``status`` after ``gate`` is
    set (when there is one); counts requests and connections open right now."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.gate: trio.Event | None = None
        self.requests = 0
        self.open = 0
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._conn, listeners)

    async def _conn(self, stream: trio.SocketStream) -> None:
        self.open += 1
        buf = b""
        try:
            async with stream:
                while True:
                    while b"\r\n\r\n" not in buf:
                        data = await stream.receive_some(65536)
                        if not data:
                            return
                        buf += data
                    _, buf = buf.split(b"\r\n\r\n", 1)
                    self.requests += 1
                    gate = self.gate
                    if gate is not None:
                        await gate.wait()
                    body = b"gated"
                    await stream.send_all(
                        b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n%s" % (self.status, len(body), body)
                    )
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return
        finally:
            self.open -= 1


@contextlib.asynccontextmanager
async def gated_upstream(status: int = 200) -> AsyncIterator[GatedUpstream]:
    u = GatedUpstream(status)
    async with trio.open_nursery() as nursery:
        await nursery.start(u.serve)
        yield u
        nursery.cancel_scope.cancel()


def write_lines(disco: Path, name: str, lines: list[str]) -> None:
    disco.mkdir(exist_ok=True)
    write_atomic(disco / name, "".join(line + "\n" for line in lines))


# == 1. an endpoint removed with a request in flight, then re-added ===============================


async def test_in_flight_failure_of_a_removed_endpoint_does_not_follow_it_when_it_comes_back() -> None:
    """B is removed while a request to it is in flight; that request then fails (5xx). The failure
    belongs to the endpoint that left: when the namer adds B back it is a fresh endpoint (Finagle makes
    a new endpoint stack, failure accrual included), alive and picked — not one that comes back dead."""
    clock, reg = Clock(), MetricsRegistry(time.monotonic)
    async with trio.open_nursery() as nursery:
        client = make_client(nursery, clock, reg, failures=1)
        client.update_addr(AddrBound((A, B)))
        GatedPool.gates[1002] = gate = trio.Event()
        GatedPool.status_of[1002] = 503
        results: list[Any] = []
        await send_until(client, KB, nursery, results)
        client.update_addr(AddrBound((A,)))  # B leaves while its request is in flight
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert any(resp.status == 503 for resp, _key in results), "the in-flight request was lost"
        # Nothing about B is left behind in accrual's per-endpoint view.
        assert KB not in client.accrual.state()["endpoints"], client.accrual.state()["endpoints"]
        client.update_addr(AddrBound((A, B)))  # B comes back
        st = client.state_json()["endpoints"][KB]
        assert (st["accrual"], st["status"]) == ("alive", "open"), st
        assert client.balancer.statistics()["available"] == 2
        nursery.cancel_scope.cancel()


class DrainingPool(GatedPool):
    """A ``GatedPool`` whose connection stays open after ``aclose`` while a request is in flight on it
    (as a real pool lets its requests finish)."""

    def __init__(self, host: str, port: int, params: Any, *, nursery: Any = None, **kw: Any) -> None:
        super().__init__(host, port, params, nursery=nursery, **kw)
        self.busy = 0

    async def request(self, req: Request) -> Response:
        self.busy += 1
        try:
            return await super().request(req)
        finally:
            self.busy -= 1

    def statistics(self) -> dict[str, int]:
        return {"open": 1 if self.busy or not self.closed else 0, "idle": 0, "waiters": 0, "opening": 0}


async def test_a_removed_endpoints_connection_counts_until_its_request_ends() -> None:
    """``connections``/``pool_size`` count what is open: B's connection, still carrying a request
    after the namer removed B, counts until that request ends."""
    clock, reg = Clock(), MetricsRegistry(time.monotonic)
    async with trio.open_nursery() as nursery:
        client = make_client(nursery, clock, reg)
        client._pool_factory = DrainingPool
        client.update_addr(AddrBound((A, B)))
        GatedPool.gates[1002] = gate = trio.Event()
        results: list[Any] = []
        await send_until(client, KB, nursery, results)
        pools = _Pools(client)
        assert pools.statistics()["open"] == 2
        client.update_addr(AddrBound((A,)))  # B leaves while its request is in flight
        await trio.testing.wait_all_tasks_blocked()
        assert pools.statistics()["open"] == 2  # B's connection is still open, carrying the request
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert pools.statistics()["open"] == 1
        assert client._retiring == []  # forgotten once it has no connection left
        nursery.cancel_scope.cancel()


async def test_in_flight_failure_of_a_removed_endpoint_e2e(tmp_path: Path) -> None:
    """The same through the daemon and the fs namer: the in-flight request is answered (not lost), the
    removed endpoint's connection is closed once it ends (no leaked pool), and when B is written back
    into the file it is alive and gets traffic again."""
    disco = tmp_path / "disco"
    async with running_upstream() as a, gated_upstream(503) as b:
        write_disco(disco, "web", b.port, a.port)  # round robin: the first request goes to B
        client = (
            f"{NO_REQUEUE}\n{ROUND_ROBIN}\n"
            "    failureAccrual: {kind: io.l5d.consecutiveFailures, failures: 1,"
            " backoff: {kind: constant, ms: 60000}}"
        )
        async with running_daemon(cfg(disco, client=client)) as d:
            b.gate = trio.Event()
            statuses: list[int] = []
            async with trio.open_nursery() as nursery:

                async def first() -> None:
                    statuses.append((await get(d)).status)

                nursery.start_soon(first)

                async def b_has_it() -> bool:
                    return b.requests == 1

                assert await wait_for(b_has_it), "the first request never reached B"
                write_disco(disco, "web", a.port)

                async def only_a() -> bool:
                    st = await client_state(d.admin)
                    return st[FS_WEB]["addresses"] == [f"127.0.0.1:{a.port}"]

                assert await wait_for(only_a, timeout=5), "the client never dropped B"
                b.gate.set()
            assert statuses == [503], statuses  # the in-flight request was answered

            async def b_closed() -> bool:
                return b.open == 0

            assert await wait_for(b_closed), "the removed endpoint's connection was never closed"
            write_disco(disco, "web", b.port, a.port)

            async def both() -> bool:
                st = await client_state(d.admin)
                return len(st[FS_WEB]["addresses"]) == 2

            assert await wait_for(both, timeout=5), "the client never took B back"
            b.gate = None
            ep = (await client_state(d.admin))[FS_WEB]["endpoints"][f"127.0.0.1:{b.port}"]
            assert ep["accrual"] == "alive", ep
            before = b.requests
            for _ in range(4):
                await get(d)
            assert b.requests > before, "the re-added endpoint gets no traffic"


# == 2. a negative name =============================================================================


async def test_a_name_gone_negative_empties_the_client_e2e(tmp_path: Path) -> None:
    """The fs file is deleted: the name is negative. Linkerd's client then has an empty endpoint set
    (Finagle maps ``Addr.Neg`` to no endpoints): ``/client_state.json`` says ``Neg`` with no addresses,
    and the balancer, the per-endpoint state and the pools agree — no endpoint left, no connection
    kept open to an endpoint the namer no longer names."""
    disco = tmp_path / "disco"
    async with running_upstream() as a, running_upstream() as b:
        write_disco(disco, "web", a.port, b.port)
        async with running_daemon(cfg(disco, client=NO_ACCRUAL)) as d:
            for _ in range(2):
                assert (await get(d)).status == 200
            prefix = f"rt/out/client/{FS_CLIENT}"
            assert (await metrics(d.admin))[f"{prefix}/connections"] >= 1
            (disco / "web").unlink()

            async def neg() -> bool:
                return (await client_state(d.admin))[FS_WEB]["state"] == "Neg"

            assert await wait_for(neg, timeout=5), "the client never saw the name go negative"
            assert (await get(d)).status == 502  # nothing routes to it any more
            entry = (await client_state(d.admin))[FS_WEB]
            assert entry["addresses"] == []
            m = await metrics(d.admin)
            got = {
                "endpoints": sorted(entry["endpoints"]),
                "loadbalancer/size": m[f"{prefix}/loadbalancer/size"],
                "connections": m[f"{prefix}/connections"],
            }
            assert got == {"endpoints": [], "loadbalancer/size": 0, "connections": 0}, got


async def test_an_endpoint_back_after_a_negative_name_is_fresh() -> None:
    """B is marked dead, the name goes negative (every endpoint leaves), then the name is bound again
    to A and B: B is a new endpoint (alive, a new pool), as after any removal and re-add."""
    clock, reg = Clock(), MetricsRegistry(time.monotonic)
    async with trio.open_nursery() as nursery:
        client = make_client(nursery, clock, reg, failures=1)
        client.update_addr(AddrBound((A, B)))
        GatedPool.status_of[1002] = 503
        results: list[Any] = []
        await send_until(client, KB, nursery, results)
        await trio.testing.wait_all_tasks_blocked()
        assert client.state_json()["endpoints"][KB]["accrual"] == "dead"
        old_b = next(p for p in GatedPool.made if p.port == 1002)
        client.update_addr(AddrNeg())
        await trio.testing.wait_all_tasks_blocked()
        assert old_b.closed, "the pool of an endpoint of a negative name stays open"
        client.update_addr(AddrBound((A, B)))
        st = client.state_json()["endpoints"][KB]
        assert st["accrual"] == "alive", st
        nursery.cancel_scope.cancel()


async def test_a_negative_then_failing_name_reports_failed_not_its_old_addresses() -> None:
    """Bound, then negative (the file was deleted), then failed with no last good set (a malformed file
    written in its place): the namer has no addresses, so Linkerd's state is ``Failed: <why>`` with an
    empty ``addresses`` — not ``bound`` with the addresses it had before it went negative."""
    clock, reg = Clock(), MetricsRegistry(time.monotonic)
    async with trio.open_nursery() as nursery:
        client = make_client(nursery, clock, reg)
        client.update_addr(AddrBound((A, B)))
        client.update_addr(AddrNeg())
        neg = client.state_json()
        assert (neg["state"], neg["addresses"]) == ("Neg", [])
        client.update_addr(AddrFailed("web:1: 'x' has a host but no port"))
        st = client.state_json()
        assert st["state"].startswith("Failed: "), st
        assert st["addresses"] == []
        nursery.cancel_scope.cancel()


# == 3. counters after an update ====================================================================


async def test_balancer_and_accrual_counters_over_remove_and_readd() -> None:
    """A, B → A → A, B: ``loadbalancer/{size,available,adds,removes,updates}`` count each change once,
    and ``failure_accrual/removals`` is not touched by discovery changes."""
    clock, reg = Clock(), MetricsRegistry(time.monotonic)
    async with trio.open_nursery() as nursery:
        client = make_client(nursery, clock, reg)
        client.update_addr(AddrBound((A, B)))
        client.update_addr(AddrBound((A,)))
        client.update_addr(AddrBound((A,)))  # the same set again (a new object): no change counted
        client.update_addr(AddrBound((A, B)))
        await trio.testing.wait_all_tasks_blocked()
        f = flat(reg)
        p = f"rt/out/client/{FS_CLIENT}"
        got = {k: f[f"{p}/loadbalancer/{k}"] for k in ("size", "available", "adds", "removes")}
        assert got == {"size": 2, "available": 2, "adds": 3, "removes": 1}, got
        assert f[f"{p}/failure_accrual/removals"] == 0
        # The removed B's pool was closed; the re-added B has a new, open one.
        pools_b = [pl for pl in GatedPool.made if pl.port == 1002]
        assert [pl.closed for pl in pools_b] == [True, False]
        assert f[f"{p}/pool_size"] == 2
        nursery.cancel_scope.cancel()


async def test_one_namer_change_is_one_balancer_update_e2e(tmp_path: Path) -> None:
    """``loadbalancer/updates`` counts endpoint-set updates from discovery: the first set, then one per
    namer change. The namer's change reaches the client once (``_namer_changed``); the next requests
    re-bind to an equal address set, which is not another update."""
    disco = tmp_path / "disco"
    async with running_upstream() as a, running_upstream() as b:
        write_disco(disco, "web", a.port, b.port)
        async with running_daemon(cfg(disco, client=NO_ACCRUAL)) as d:
            p = f"rt/out/client/{FS_CLIENT}/loadbalancer"
            for _ in range(3):
                assert (await get(d)).status == 200
            assert (await metrics(d.admin))[f"{p}/updates"] == 1
            write_disco(disco, "web", a.port)

            async def one_left() -> bool:
                return (await metrics(d.admin))[f"{p}/size"] == 1

            assert await wait_for(one_left), "the client never dropped B"
            for _ in range(3):
                assert (await get(d)).status == 200
            m = await metrics(d.admin)
            got = {k: m[f"{p}/{k}"] for k in ("size", "adds", "removes", "updates")}
            assert got == {"size": 1, "adds": 2, "removes": 1, "updates": 2}, got


# == 4. weights =====================================================================================


def test_round_robin_follows_a_weight_change_within_one_cycle() -> None:
    """Weights change 1:1 → 3:1 (same endpoints, the accumulators of the old weights kept): from the
    next cycle on, every 4 consecutive picks are 3 A and 1 B."""
    b = RoundRobinBalancer(rng=random.Random(1), now=Clock())
    b.update([EndpointInfo("a", 1.0), EndpointInfo("b", 1.0)])
    for _ in range(3):  # leave the accumulators mid-cycle
        b.pick()
    b.update([EndpointInfo("a", 3.0), EndpointInfo("b", 1.0)])
    picks = [b.pick().key for _ in range(4 * 10)]  # type: ignore[union-attr]
    counts = collections.Counter(picks)
    assert counts == {"a": 30, "b": 10}, counts
    for i in range(4, 40, 4):  # after the first cycle, each cycle is exact
        assert collections.Counter(picks[i : i + 4]) == {"a": 3, "b": 1}, picks


async def test_fs_weights_and_a_weight_change_reach_the_client_e2e(tmp_path: Path) -> None:
    """``host port * weight`` from the fs file: round robin splits 3:1, and after the file changes the
    weights to 1:3 (same endpoints), the client's state shows the new weights and the split follows."""
    disco = tmp_path / "disco"
    async with running_upstream() as a, running_upstream() as b:
        write_lines(disco, "web", [f"127.0.0.1 {a.port} * 3", f"127.0.0.1 {b.port} * 1"])
        async with running_daemon(cfg(disco, client=f"{NO_ACCRUAL}\n{ROUND_ROBIN}")) as d:
            got = await trio.to_thread.run_sync(
                lambda: keepalive_gets(d.port("out"), ["web"] * 40, reconnect=True)
            )
            assert [g.status for g in got] == [200] * 40
            assert (len(a.requests), len(b.requests)) == (30, 10)
            write_lines(disco, "web", [f"127.0.0.1 {a.port} * 1", f"127.0.0.1 {b.port} * 3"])

            async def reweighted() -> bool:
                eps = (await client_state(d.admin))[FS_WEB]["endpoints"]
                return eps[f"127.0.0.1:{b.port}"]["weight"] == 3.0

            assert await wait_for(reweighted), "the client never saw the new weights"
            eps = (await client_state(d.admin))[FS_WEB]["endpoints"]
            assert eps[f"127.0.0.1:{a.port}"]["weight"] == 1.0
            m = await metrics(d.admin)
            assert m[f"rt/out/client/{FS_CLIENT}/loadbalancer/meanweight"] == 2.0
            a0, b0 = len(a.requests), len(b.requests)
            got = await trio.to_thread.run_sync(
                lambda: keepalive_gets(d.port("out"), ["web"] * 40, reconnect=True)
            )
            assert [g.status for g in got] == [200] * 40
            da, db = len(a.requests) - a0, len(b.requests) - b0
            assert (da + db == 40) and 9 <= da <= 11, (da, db)


async def test_weighted_union_drops_a_branch_that_goes_negative_e2e(tmp_path: Path) -> None:
    """``0.9 * /#/io.l5d.fs/a & 0.1 * /#/io.l5d.fs/b``: when a's file is deleted, binding drops the
    negative branch and every request goes to b (no 502 for a's former share)."""
    disco = tmp_path / "disco"
    async with running_upstream() as a, running_upstream() as b:
        write_disco(disco, "a", a.port)
        write_disco(disco, "b", b.port)
        dtab = "/svc/web => 0.9 * /#/io.l5d.fs/a & 0.1 * /#/io.l5d.fs/b;"
        async with running_daemon(cfg(disco, client=NO_ACCRUAL, dtab=dtab)) as d:
            assert (await get(d)).status == 200
            (disco / "a").unlink()

            async def a_neg() -> bool:
                body = (await curl(f"{d.admin}/namer_state/io.l5d.fs.json")).json()
                return body["names"]["a"]["state"] == "neg"  # type: ignore[index]

            assert await wait_for(a_neg), "the namer never saw a's file go"
            a0 = len(a.requests)
            got = await trio.to_thread.run_sync(
                lambda: keepalive_gets(d.port("out"), ["web"] * 20, reconnect=True)
            )
            assert [g.status for g in got] == [200] * 20
            assert len(a.requests) == a0


# == 5. a failing namer keeps the last good set =====================================================


async def test_a_malformed_file_keeps_the_last_good_endpoints_and_says_stale_e2e(tmp_path: Path) -> None:
    """A malformed line: the namer keeps the last good addresses (``stale``), the client keeps serving
    them and says so in ``/client_state.json`` (``stale`` with its age); a good file clears it."""
    disco = tmp_path / "disco"
    async with running_upstream() as a, running_upstream() as b:
        write_disco(disco, "web", a.port)
        async with running_daemon(cfg(disco, client=NO_ACCRUAL)) as d:
            assert (await get(d)).status == 200
            write_lines(disco, "web", [f"127.0.0.1 {b.port}", "garbage"])

            async def stale() -> bool:
                return bool((await client_state(d.admin))[FS_WEB]["stale"])

            assert await wait_for(stale), "the client never showed the namer's stale state"
            entry = (await client_state(d.admin))[FS_WEB]
            assert (entry["state"], entry["addresses"]) == ("bound", [f"127.0.0.1:{a.port}"])
            assert isinstance(entry["staleAgeSecs"], float | int) and 0 <= entry["staleAgeSecs"] < 60
            for _ in range(3):
                assert (await get(d)).status == 200
            assert len(b.requests) == 0
            write_disco(disco, "web", b.port)

            async def fresh() -> bool:
                e = (await client_state(d.admin))[FS_WEB]
                return not e["stale"] and e["addresses"] == [f"127.0.0.1:{b.port}"]

            assert await wait_for(fresh), "the client never left the stale state"
            assert (await client_state(d.admin))[FS_WEB]["staleAgeSecs"] is None
            assert (await get(d)).status == 200 and len(b.requests) == 1


# == 6. clients expiring when idle ==================================================================

IDLE_1S = "  bindingCache: {idleTtlSecs: 1}\n"


async def test_an_expired_client_leaves_state_and_metrics_e2e(tmp_path: Path) -> None:
    """``bindingCache.idleTtlSecs``: a client idle that long is closed when the cache is next used
    (here by a request for another name); its metrics leave ``/admin/metrics.json`` and Prometheus and
    its entry leaves ``/client_state.json``."""
    disco = tmp_path / "disco"
    async with running_upstream() as a, running_upstream() as b:
        write_disco(disco, "web", a.port)
        write_disco(disco, "api", b.port)
        async with running_daemon(cfg(disco, client=NO_ACCRUAL, router_extra=IDLE_1S)) as d:
            assert (await get(d)).status == 200
            assert f"rt/out/client/{FS_CLIENT}/requests" in await metrics(d.admin)
            await trio.sleep(1.3)
            assert (await get(d, host="api")).status == 200

            async def gone() -> bool:
                return FS_WEB not in await client_state(d.admin)

            assert await wait_for(gone), "the idle client was never closed"

            async def metrics_gone() -> bool:
                return not any(k.startswith(f"rt/out/client/{FS_CLIENT}/") for k in await metrics(d.admin))

            assert await wait_for(metrics_gone), "the expired client's metrics stayed"
            prom = (await curl(f"{d.admin}/admin/metrics/prometheus")).body.decode()
            assert FS_WEB not in prom
            assert "/#/io.l5d.fs/api" in prom


async def test_a_client_made_again_after_expiring_reports_under_its_name_e2e(tmp_path: Path) -> None:
    """The client for ``web`` expired while idle; the next request for ``web`` makes a new client for
    the same name in the same step. That live client must report: ``requests`` (counted afresh),
    ``loadbalancer/size`` and its Prometheus series — the old client's close must not take the new
    one's metrics with it."""
    disco = tmp_path / "disco"
    async with running_upstream() as a:
        write_disco(disco, "web", a.port)
        async with running_daemon(cfg(disco, client=NO_ACCRUAL, router_extra=IDLE_1S)) as d:
            assert (await get(d)).status == 200
            await trio.sleep(1.3)
            assert (await get(d)).status == 200
            await trio.sleep(0.2)  # let the old client's close run
            assert FS_WEB in await client_state(d.admin)
            m = await metrics(d.admin)
            p = f"rt/out/client/{FS_CLIENT}"
            got = {k: m.get(f"{p}/{k}") for k in ("requests", "loadbalancer/size")}
            assert got == {"requests": 1, "loadbalancer/size": 1}, got
            prom = (await curl(f"{d.admin}/admin/metrics/prometheus")).body.decode()
            assert f'client="{FS_WEB}"' in prom


async def test_a_client_streaming_a_response_is_not_expired_as_idle_e2e(tmp_path: Path) -> None:
    """A response body that streams for longer than ``idleTtlSecs`` keeps its client in use: the client
    is not evicted mid-body (its metrics and state stay), and is evicted once idle after the body ends."""
    gate = trio.Event()

    class Slow:
        sent = False

        async def read_chunk(self) -> bytes | None:
            if not self.sent:
                self.sent = True
                return b"first;"
            if gate.is_set():
                return None
            await gate.wait()
            return b"last"

        @property
        def trailers(self) -> None:
            return None

        async def aclose(self) -> None:
            pass

    async def handler(req: Request, info: object) -> Response:
        return Response(200, b"OK", Headers([]), Body(Slow(), None))

    disco = tmp_path / "disco"
    async with serving(handler) as web_port, running_upstream() as b:
        write_disco(disco, "web", web_port)
        write_disco(disco, "api", b.port)
        async with running_daemon(cfg(disco, client=NO_ACCRUAL, router_extra=IDLE_1S)) as d:
            stream = await trio.open_tcp_stream("127.0.0.1", d.port("out"))
            async with stream:
                await stream.send_all(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
                got = b""
                while b"first;" not in got:
                    got += await stream.receive_some(65536)
                await trio.sleep(1.3)  # past idleTtlSecs while the body is still streaming
                assert (await get(d, host="api")).status == 200  # the cache is used: idle clients go
                await trio.sleep(0.2)
                assert FS_WEB in await client_state(d.admin), "the streaming client was evicted"
                assert f"rt/out/client/{FS_CLIENT}/requests" in await metrics(d.admin)
                gate.set()
                while not got.endswith(b"0\r\n\r\n"):
                    got += await stream.receive_some(65536)
                assert b"first;" in got and b"last" in got
            await trio.sleep(1.3)  # now idle past the TTL
            assert (await get(d, host="api")).status == 200

            async def gone() -> bool:
                return FS_WEB not in await client_state(d.admin)

            assert await wait_for(gone), "the client was never evicted once idle"
