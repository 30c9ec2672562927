"""Adversarial tests of load balancing and failure accrual: the pure balancers and accrual driven with
seeded ``random.Random`` and fake clocks, and the daemon end to end on loopback.

Expected behaviour follows Linkerd 1 / Finagle (../shared/spec/linkerd1-reference.md §5.1-5.2) and the
balancer module's own contract: an endpoint of weight 0 gets traffic only when no other is available;
``failure_accrual/removed_for_ms`` adds, as Finagle's counter does, the delay an endpoint is marked dead
for each time it is marked dead.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import random
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from test_balancer import make as _make

from dtab.addr import AddrBound, Address, AddrNeg
from hostproxy.accrual import Effect, FailureAccrual, accrual_from_config
from hostproxy.balancer import BALANCER_KINDS, EndpointInfo, WeightedChoice
from hostproxy.client import Client
from hostproxy.config.model import ClientParams, ConsecutiveFailuresAccrual
from hostproxy.config.model import RetryBudget as ClientRetryBudget
from hostproxy.diagnose import Snapshot, diagnose
from hostproxy.http.errors import UpstreamError
from hostproxy.http.message import Body, Headers, Request, Response
from hostproxy.metrics import MetricsRegistry
from tests.daemonutil import running_daemon
from tests.test_client_dynamics_adversarial import (
    FS_CLIENT,
    FS_WEB,
    cfg,
    client_state,
    gated_upstream,
    get,
    metrics,
)
from tests.test_lifecycle_helpers import write_disco
from tests.test_wtf_diagnose import server, svc_metrics
from tests.upstreams import closed_port


class Clock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(kind: str, seed: int = 0, available=None, clock=None, **cfg):  # type: ignore[no-untyped-def]
    return _make(kind, seed, available, clock or Clock(), **cfg)


# == weight 0 ======================================================================================


@pytest.mark.parametrize("kind", BALANCER_KINDS)
@pytest.mark.parametrize("seed", range(8))
def test_zero_weight_endpoint_gets_nothing_while_another_weighted_one_is_available(
    kind: str, seed: int
) -> None:
    """a is dead; b (weight 1) is available, so z (weight 0) gets nothing. p2c drew z as the second of
    the pair whenever the first draw was drawn twice (it was drawn again uniformly among the others),
    and took it because a was unavailable: about 12 % of the traffic went to the weight-0 endpoint.
    (aperture: its window holds z with ``minAperture`` 3.)"""
    down = {"a"}
    extra = {"minAperture": 3} if kind == "aperture" else {}
    b = make(kind, seed, lambda k: k not in down, **extra)
    b.update([EndpointInfo("a", 1.0), EndpointInfo("b", 1.0), EndpointInfo("z", 0.0)])
    picks: collections.Counter[str] = collections.Counter()
    for _ in range(500):
        ep = b.pick()
        assert ep is not None
        picks[ep.key] += 1
        b.on_start(ep)
        b.on_finish(ep, 0.01, True)
    assert picks == {"b": 500}, (kind, seed, picks)
    down.add("b")  # no weighted endpoint left available: now z serves
    assert b.pick().key == "z"


@pytest.mark.parametrize("kind", BALANCER_KINDS)
@pytest.mark.parametrize("seed", range(8))
def test_zero_weight_endpoint_never_taken_while_weighted_ones_come_and_go(kind: str, seed: int) -> None:
    """Weighted endpoints go down and up at random (never all at once): the weight-0 one is never taken.
    roundRobin took it now and then: after an endpoint left the turn with its accumulator above 0, the
    others' sum was below 0 and z's 0 came out on top."""
    rng = random.Random(seed)
    down: set[str] = set()
    extra = {"minAperture": 4} if kind == "aperture" else {}
    b = make(kind, seed, lambda k: k not in down, **extra)
    b.update([EndpointInfo("z", 0.0), EndpointInfo("a", 1.0), EndpointInfo("b", 1.0), EndpointInfo("c", 2.0)])
    taken = 0
    for _ in range(2000):
        if rng.random() < 0.1:
            down = {k for k in "abc" if rng.random() < 0.4}
            if len(down) == 3:
                down = set()
        ep = b.pick()
        assert ep is not None and ep.key not in down
        taken += ep.key == "z"
        b.on_start(ep)
        b.on_finish(ep, 0.01, True)
    assert taken == 0, (kind, seed, taken)


def test_pick_other_is_weighted_and_never_returns_the_index_or_a_zero_weight() -> None:
    """The second of a p2c pair, drawn again when the first came out twice: in proportion to the other
    weights (2:1 here, within 5 sd of 30,000 draws), never the same index, never a weight-0 one while
    another has weight; uniform among the others when they all weigh 0."""
    wc = WeightedChoice([1.0, 2.0, 0.0, 1.0], random.Random(3))
    n = 30000
    got = collections.Counter(wc.pick_other(0) for _ in range(n))
    assert set(got) == {1, 3}
    share = got[1] / n  # 2 / 3: sd sqrt(p(1-p)/n) = 0.0027
    assert abs(share - 2 / 3) < 0.014, share
    only = WeightedChoice([5.0, 0.0, 0.0], random.Random(4))
    got = collections.Counter(only.pick_other(0) for _ in range(3000))
    assert set(got) == {1, 2} and min(got.values()) > 1300, got


@pytest.mark.parametrize("kind", [k for k in BALANCER_KINDS if k != "roundRobin"])
def test_endpoints_all_of_weight_0_are_still_balanced_by_load(kind: str) -> None:
    """Every endpoint has weight 0 (``host port * 0`` on every line): they share the traffic, and the
    least loaded kinds still compare their loads. Every loaded endpoint of weight 0 had the same
    infinite load, so a with 50 requests in flight got a third of the new ones, like b and c with one."""
    extra = {"minAperture": 3} if kind == "aperture" else {}
    b = make(kind, 1, **extra)
    b.update([EndpointInfo(k, 0.0) for k in "abc"])
    eps = {e.key: e for e in b.endpoints()}
    for _ in range(50):
        b.on_start(eps["a"])
    b.on_start(eps["b"])
    b.on_start(eps["c"])
    picks: collections.Counter[str] = collections.Counter()
    for _ in range(300):
        ep = b.pick()
        assert ep is not None
        picks[ep.key] += 1
        b.on_start(ep)
        b.on_finish(ep, 0.01, True)
    assert picks["a"] == 0 and picks["b"] > 100 and picks["c"] > 100, picks


# == aperture ======================================================================================


def test_aperture_settles_in_the_load_band_under_steady_load() -> None:
    """30 endpoints, a steady 10 requests in flight (one every ms, 10 ms each), load band 0.5 .. 2: the
    aperture widens until the load per endpoint in it is below highLoad, i.e. to 5 or 6 endpoints
    (Finagle smooths the total load and divides it by the aperture). The load per endpoint was smoothed
    instead, so after each widening it still weighed the loads of the narrower apertures: the
    aperture went on widening to 13 endpoints, each at 0.77, well inside the band's low half."""
    clock = Clock(0.0)
    b = make("aperture", 1, clock=clock, smoothWindowMs=500)
    b.update([EndpointInfo(f"e{i}", 1.0) for i in range(30)])
    inflight: collections.deque[tuple[float, object]] = collections.deque()
    for _ in range(8000):
        clock.t += 0.001
        while inflight and inflight[0][0] <= clock.t:
            b.on_finish(inflight.popleft()[1], 0.01, True)
        ep = b.pick()
        b.on_start(ep)
        inflight.append((clock.t + 0.010, ep))
    st = b.statistics()
    assert st["aperture"] in (5, 6), st
    assert 0.5 < st["smoothed_load"] < 2.0, st
    assert st["contracts"] == 0, st  # it widened to the band and stayed


# == failure accrual: removed_for_ms ================================================================


def test_removed_for_ms_counts_an_endpoint_that_stays_dead() -> None:
    """Marked dead for 10 s, probed and failed twice (20 s, 40 s): Finagle adds each delay to
    ``removed_for_ms`` when it marks the endpoint dead, so the counter shows an outage while it lasts.
    It stayed 0 until a revival that never came."""
    clock = Clock(0.0)
    cfg = {
        "kind": "io.l5d.consecutiveFailures",
        "failures": 1,
        "backoff": {"kind": "constant", "ms": 10000},
    }
    fa = FailureAccrual(accrual_from_config(cfg, random.Random(0)), clock)
    assert fa.on_response("a", ok=False) is Effect.REMOVE
    assert fa.statistics()["removed_for_ms"] == 10000
    for i in range(2):
        clock.t += 10.0
        assert fa.on_request("a") is Effect.PROBE
        assert fa.on_response("a", ok=False) is Effect.REMOVE_AGAIN
        assert fa.statistics()["removed_for_ms"] == 10000 * (i + 2)
    # an endpoint the namer removes keeps its part of the counter (it never goes down)
    fa.retain([])
    assert fa.statistics() == {"removals": 1, "probes": 2, "revivals": 0, "removed_for_ms": 30000}


@pytest.mark.parametrize(("success_rate", "requests"), [(0.3, 10), (0.1, 10), (0.5, 100)])
def test_success_rate_takes_out_an_endpoint_failing_every_request_after_requests_responses(
    success_rate: float, requests: int
) -> None:
    """``io.l5d.successRate``: an endpoint failing from its first request is marked dead at the
    ``requests``-th failure, as in Linkerd, whose Ema starts at its first sample (0 here). The rate
    started at 1.0, which still weighed exp(-1) = 0.37 after ``requests`` responses: with successRate
    0.3 the endpoint went on failing to the 13th request, with 0.1 to the 24th."""
    clock = Clock(0.0)
    cfg = {"kind": "io.l5d.successRate", "successRate": success_rate, "requests": requests}
    fa = FailureAccrual(accrual_from_config(cfg, random.Random(0)), clock)
    effects = [fa.on_response("a", ok=False) for _ in range(requests)]
    assert effects[:-1] == [Effect.NONE] * (requests - 1)
    assert effects[-1] is Effect.REMOVE


# == requeues when every endpoint is marked dead (end to end) =======================================


async def test_a_connect_failure_is_not_requeued_once_every_endpoint_is_dead_e2e(tmp_path: Path) -> None:
    """Two endpoints refusing connections, accrual trips on one failure. Finagle requeues a connect
    failure only while the client's status is Open (some endpoint not marked dead) and counts the others
    in ``retries/not_open``. The first request tries A, then B (requeued while B was still alive), then
    stops; the next one, with both dead, is sent once to one of them (the balancer's fallback) and not
    requeued. Each request used to go on to 26 attempts at dead endpoints (a connect timeout each
    when they are unreachable), spending the requeue budget 25 tokens at a time."""
    disco = tmp_path / "disco"
    with closed_port() as pa, closed_port() as pb:
        write_disco(disco, "web", pa, pb)
        client = (
            "    failureAccrual: {kind: io.l5d.consecutiveFailures, failures: 1,"
            " backoff: {kind: constant, ms: 60000}}"
        )
        async with running_daemon(cfg(disco, client=client)) as d:
            first = await get(d)
            st = (await client_state(d.admin))[FS_WEB]
            assert first.status == 502, first.l5d_err
            assert {k: e["accrual"] for k, e in st["endpoints"].items()} == {
                f"127.0.0.1:{pa}": "dead",
                f"127.0.0.1:{pb}": "dead",
            }
            assert st["loadBalancer"]["available"] == 0
            attempts = sum(e["pool"]["connect_failures"] for e in st["endpoints"].values())
            assert attempts == 2, st
            second = await get(d)
            assert second.status == 502, second.l5d_err
            st = (await client_state(d.admin))[FS_WEB]
            attempts = sum(e["pool"]["connect_failures"] for e in st["endpoints"].values())
            assert attempts == 3, st  # sent to a dead endpoint (nothing else to try), once
            m = await metrics(d.admin)
            assert m[f"rt/out/client/{FS_CLIENT}/retries/requeues"] == 1
            assert m[f"rt/out/client/{FS_CLIENT}/retries/not_open"] == 2
            assert m[f"rt/out/client/{FS_CLIENT}/retries/budget"] == 99
            assert m[f"rt/out/client/{FS_CLIENT}/failure_accrual/removals"] == 2


async def test_every_endpoint_dead_still_serves_and_says_so_e2e(tmp_path: Path) -> None:
    """Both endpoints answer 503 until accrual marks them dead (one failure each, 60 s backoff). As
    Finagle's balancers do, requests still go to them (a possibly dead endpoint beats failing every
    request): once the app recovers, they are answered 200 at once, although ``/client_state.json``
    (and the balancer's ``available``) still says both are dead until their probe."""
    disco = tmp_path / "disco"
    async with gated_upstream(503) as a, gated_upstream(503) as b:
        write_disco(disco, "web", a.port, b.port)
        client = (
            "    failureAccrual: {kind: io.l5d.consecutiveFailures, failures: 1,"
            " backoff: {kind: constant, ms: 60000}}"
        )
        async with running_daemon(cfg(disco, client=client)) as d:
            statuses = [(await get(d)).status for _ in range(4)]
            assert statuses == [503] * 4
            assert a.requests >= 1 and b.requests >= 1, (a.requests, b.requests)
            st = (await client_state(d.admin))[FS_WEB]
            assert {e["accrual"] for e in st["endpoints"].values()} == {"dead"}
            assert {e["status"] for e in st["endpoints"].values()} == {"busy"}
            a.status = b.status = 200
            statuses = [(await get(d)).status for _ in range(4)]
            assert statuses == [200] * 4
            st = (await client_state(d.admin))[FS_WEB]
            assert st["loadBalancer"]["available"] == 0
            assert st["failureAccrual"]["removals"] == 2 and st["failureAccrual"]["revivals"] == 0


def test_wtf_does_not_send_requests_to_zero_other_endpoints_when_all_are_dead() -> None:
    """Both endpoints of a client answer 503 and failure accrual marked both dead. The first finding
    names one; the accrual finding for the other said "requests go to the other 0 endpoint(s)", when the
    requests in fact still go to the dead endpoints (there is no other)."""
    m = {
        **server(20, {"upstream/5xx": 20}),
        **svc_metrics("/svc/users", 20, 0, {"upstream/5xx": 20}, statuses={503: 20}),
        **svc_metrics("/#/io.l5d.fs/users", 20, 0, {"upstream/5xx": 20}, statuses={503: 20}, scope="client"),
    }
    dead = {"weight": 1.0, "pool": {"connect_failures": 0}, "accrual": "dead", "status": "busy"}
    snap = Snapshot(
        metrics=m,
        client_state={
            "/#/io.l5d.fs/users": {
                "state": "bound",
                "endpoints": {"10.0.0.7:8080": dead, "10.0.0.8:8080": dead},
            }
        },
        bindings={"out": {"/svc/users": ["/#/io.l5d.fs/users"]}},
    )
    accrual = [f for f in diagnose(snap).findings if f.severity == "warning"]
    assert [(f.endpoint, f.verdict) for f in accrual] == [
        (
            "10.0.0.8:8080",
            "endpoint 10.0.0.8:8080 of /#/io.l5d.fs/users is marked dead by failure accrual after upstream/5xx"
            " failures; so is every endpoint of /#/io.l5d.fs/users, and requests still go to them",
        )
    ]


async def test_accrual_counters_follow_a_removal_a_failed_probe_and_a_revival_e2e(tmp_path: Path) -> None:
    """One endpoint: two 503s mark it dead (100 ms), the probe after the backoff fails (dead again for
    100 ms), the next probe succeeds. The metrics count one removal, two probes, one revival and 200 ms
    removed; the requests sent while it was dead (nothing else to send to) count for nothing."""
    disco = tmp_path / "disco"
    async with gated_upstream(503) as up:
        write_disco(disco, "web", up.port)
        client = (
            "    failureAccrual: {kind: io.l5d.consecutiveFailures, failures: 2,"
            " backoff: {kind: constant, ms: 100}}"
        )
        async with running_daemon(cfg(disco, client=client)) as d:
            key = f"rt/out/client/{FS_CLIENT}/failure_accrual"

            async def counters() -> tuple[float, ...]:
                m = await metrics(d.admin)
                return tuple(m[f"{key}/{k}"] for k in ("removals", "probes", "revivals", "removed_for_ms"))

            assert [(await get(d)).status for _ in range(2)] == [503, 503]
            assert await counters() == (1, 0, 0, 100)
            await trio.sleep(0.15)  # the backoff elapses: the next request is the probe
            assert (await get(d)).status == 503
            assert await counters() == (1, 1, 0, 200)
            up.status = 200
            await trio.sleep(0.15)
            assert (await get(d)).status == 200
            assert await counters() == (1, 2, 1, 200)
            st = (await client_state(d.admin))[FS_WEB]
            assert [e["accrual"] for e in st["endpoints"].values()] == ["alive"]


async def test_a_probe_answered_with_a_long_stream_revives_its_endpoint_e2e(tmp_path: Path) -> None:
    """A 503 marks the only endpoint dead (100 ms); the probe after the backoff is answered 200 with a
    body that keeps streaming (a watch, a server stream). Linkerd judges a response by its head: the
    endpoint is alive again. It stayed ``probe_closed`` (out of the balancer: no traffic when it has
    peers) for as long as that one stream lasted."""
    release = trio.Event()

    async def conn(stream: trio.SocketStream) -> None:
        buf = b""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            async with stream:
                while True:
                    while b"\r\n\r\n" not in buf:
                        data = await stream.receive_some(65536)
                        if not data:
                            return
                        buf += data
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    if head.startswith(b"GET /fail "):
                        await stream.send_all(b"HTTP/1.1 503 X\r\ncontent-length: 2\r\n\r\nno")
                        continue
                    await stream.send_all(
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n"
                    )
                    await release.wait()
                    await stream.send_all(b"0\r\n\r\n")

    disco = tmp_path / "disco"
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, conn, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        write_disco(disco, "web", port)
        client = (
            "    failureAccrual: {kind: io.l5d.consecutiveFailures, failures: 1,"
            " backoff: {kind: constant, ms: 100}}"
        )
        async with running_daemon(cfg(disco, client=client)) as d:
            assert (await get(d, "/fail")).status == 503

            async def accrual() -> str:
                st = (await client_state(d.admin))[FS_WEB]
                return next(iter(st["endpoints"].values()))["accrual"]

            assert await accrual() in ("dead", "probe_open")  # (probe_open once the 100 ms are over)
            await trio.sleep(0.15)  # the backoff elapses: the next request is the probe
            got = trio.Event()

            async def probe() -> None:
                with trio.socket.socket() as s:
                    await s.connect(("127.0.0.1", d.port("out")))
                    await s.send(b"GET /watch HTTP/1.1\r\nHost: web\r\n\r\n")
                    data = b""
                    while b"first" not in data:
                        data += await s.recv(65536)
                    got.set()
                    await release.wait()

            nursery.start_soon(probe)
            with trio.fail_after(10):
                await got.wait()  # the head and a first chunk reached the client; the body goes on
            assert await accrual() == "alive"
            m = await metrics(d.admin)
            assert m[f"rt/out/client/{FS_CLIENT}/failure_accrual/revivals"] == 1
            release.set()
        nursery.cancel_scope.cancel()


class _HeldSource:
    """A streamed body: one chunk, then the end once ``release`` is set, with ``trailers``."""

    def __init__(self, trailers: Headers | None = None) -> None:
        self.release = trio.Event()
        self._sent = False
        self._trailers = trailers

    async def read_chunk(self) -> bytes | None:
        if not self._sent:
            self._sent = True
            return b"first"
        await self.release.wait()
        return None

    @property
    def trailers(self) -> Headers | None:
        return self._trailers

    async def aclose(self) -> None:
        pass


class _StreamingPool:
    """Stands in for an endpoint's pool: 503 first, then a 200 whose body streams (``source``)."""

    source: _HeldSource

    def __init__(self, host: str, port: int, params: Any, **kw: Any) -> None:
        self.requests = 0

    async def request(self, req: Request) -> Response:
        self.requests += 1
        await trio.lowlevel.checkpoint()
        if self.requests == 1:
            return Response(503, b"", Headers([]), Body.from_bytes(b"no"))
        return Response(200, b"OK", Headers([]), Body(_StreamingPool.source, None))

    def statistics(self) -> dict[str, int]:
        return {"open": 1, "idle": 0, "waiters": 0, "opening": 0}

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("grpc", [False, True], ids=["http", "grpc"])
async def test_a_streamed_probe_is_judged_by_its_head_only_when_the_status_decides(grpc: bool) -> None:
    """A probe answered 200 with a streaming body: under an HTTP classifier (no judge: the status
    decides) the endpoint is alive at the head; under a gRPC one the verdict is in the trailers, so the
    probe waits for them (a unary call failing in its trailers would otherwise revive the endpoint and
    reset its backoff on every probe), and a failing grpc-status marks it dead again."""
    clock = Clock(100.0)
    trailers = Headers([(b"grpc-status", b"14")]) if grpc else None
    _StreamingPool.source = _HeldSource(trailers)

    def judge(status: int, head: Any, tr: Any) -> bool:
        return tr is not None and tr.get(b"grpc-status") == b"0"

    params = ClientParams(
        failure_accrual=ConsecutiveFailuresAccrual(kind="io.l5d.consecutiveFailures", failures=1),
        requeue_budget=ClientRetryBudget(min_retries_per_sec=0, percent_can_retry=0.0),
    )
    async with trio.open_nursery() as nursery:
        client = Client(
            "out",
            "/#/io.l5d.fs/web",
            params,
            MetricsRegistry(clock).router("out"),
            nursery=nursery,
            rng=random.Random(1),
            clock=clock,
            pool_factory=_StreamingPool,
        )
        client.update_addr(AddrBound(frozenset({Address("127.0.0.1", 1001)})))
        req = Request("GET", "/", Headers([(b"host", b"web")]), Body.empty(), authority="web")
        resp, key = await client.request(req, judge=judge if grpc else None)
        assert resp.status == 503 and client.accrual.state()["endpoints"][key]["state"] == "dead"
        clock.t += 6.0  # past the first backoff (5 s): the next request is the probe
        resp, _ = await client.request(req, judge=judge if grpc else None)
        assert resp.status == 200
        state = client.accrual.state()["endpoints"][key]["state"]
        assert state == ("probe_closed" if grpc else "alive")
        assert await resp.body.__anext__() == b"first"
        _StreamingPool.source.release.set()
        async for _ in resp.body:
            pass
        state = client.accrual.state()["endpoints"][key]["state"]
        assert state == ("dead" if grpc else "alive")
        nursery.cancel_scope.cancel()


class _ClosingPool:
    """An endpoint pool whose request waits for ``gate``, then finds the pool closed (the request was
    never written: retryable), as when the endpoint left the set meanwhile."""

    gate: trio.Event

    def __init__(self, host: str, port: int, params: Any, **kw: Any) -> None:
        self.endpoint = f"{host}:{port}"

    async def request(self, req: Request) -> Response:
        await _ClosingPool.gate.wait()
        raise UpstreamError(f"pool for {self.endpoint} is closed", endpoint=self.endpoint, retryable=True)

    def statistics(self) -> dict[str, int]:
        return {"open": 0, "idle": 0, "waiters": 0, "opening": 0}

    async def aclose(self) -> None:
        pass


async def test_a_request_whose_name_went_negative_meanwhile_says_so() -> None:
    """The name goes negative while a request waits in its endpoint's pool, which then finds itself
    closed (nothing was sent: requeued). With no endpoint left there is no status to ask (the
    requeue is not refused as "not open"): the next pick says the name is negative."""
    _ClosingPool.gate = trio.Event()
    params = ClientParams(
        failure_accrual=ConsecutiveFailuresAccrual(kind="io.l5d.consecutiveFailures", failures=1)
    )
    clock = Clock(100.0)
    async with trio.open_nursery() as nursery:
        client = Client(
            "out",
            "/#/io.l5d.fs/web",
            params,
            MetricsRegistry(clock).router("out"),
            nursery=nursery,
            rng=random.Random(1),
            clock=clock,
            pool_factory=_ClosingPool,
        )
        client.update_addr(AddrBound(frozenset({Address("127.0.0.1", 1001)})))
        req = Request("GET", "/", Headers([(b"host", b"web")]), Body.empty(), authority="web")
        errors: list[Exception] = []

        async def one() -> None:
            try:
                await client.request(req)
            except UpstreamError as e:
                errors.append(e)

        nursery.start_soon(one)
        await trio.testing.wait_all_tasks_blocked()
        client.update_addr(AddrNeg())
        _ClosingPool.gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert [(type(e).__name__, str(e)) for e in errors] == [
            ("NoEndpoints", "client /#/io.l5d.fs/web is negative: no endpoints available")
        ]
        assert client.not_open == 0
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("kind", BALANCER_KINDS)
def test_weighted_shares_hold_under_concurrent_load(kind: str) -> None:
    """Weights 1, 2, 3; a request every ms, each lasting an exponential 20 ms (about 20 in flight):
    every kind gives each endpoint its weight's share of 20,000 requests (within 0.03: under sequential
    traffic the sd of a share is about 0.0035, and here loads make the draws depend on each other)."""
    clock = Clock(0.0)
    rng = random.Random(5)
    extra = {"minAperture": 3} if kind == "aperture" else {}
    b = make(kind, 1, clock=clock, **extra)
    b.update([EndpointInfo("w1", 1.0), EndpointInfo("w2", 2.0), EndpointInfo("w3", 3.0)])
    inflight: list[tuple[float, int, Any]] = []
    picks: collections.Counter[str] = collections.Counter()
    for i in range(20000):
        clock.t += 0.001
        while inflight and inflight[0][0] <= clock.t:
            b.on_finish(heapq.heappop(inflight)[2], 0.02, True)
        ep = b.pick()
        assert ep is not None
        picks[ep.key] += 1
        b.on_start(ep)
        heapq.heappush(inflight, (clock.t + rng.expovariate(50.0), i, ep))
    shares = {k: v / 20000 for k, v in picks.items()}
    for key, want in (("w1", 1 / 6), ("w2", 2 / 6), ("w3", 3 / 6)):
        assert abs(shares[key] - want) < 0.03, (kind, shares)
