"""The router path's shortcuts give what the general forms give: the settled-binding memo of
``HttpRouter.handle``, the Headers scan of ``inbound_scan``, p2c's single-endpoint pick, and the
``*_at`` forms that take a clock reading instead of reading the clock."""

from __future__ import annotations

import itertools
import random
import time
from typing import Any

import pytest
import trio

from dtab import Dtab, Path
from hostproxy import router as router_module
from hostproxy.balancer import EndpointInfo, P2CBalancer
from hostproxy.budget import BudgetConfig, RetryBudget
from hostproxy.config.validate import load_config
from hostproxy.http.message import Headers, Response
from hostproxy.metrics import MetricsRegistry
from hostproxy.metrics.histogram import WindowedHistogram
from hostproxy.router import HttpRouter
from hostproxy.routing.context import DtabParseCache, inbound_scan
from tests.routerstub import conn_for, get_request, stub_router

Header = tuple[bytes, bytes]

HEADER_SETS: list[list[Header]] = [
    [],
    [(b"host", b"web"), (b"accept", b"*/*")],
    [(b"Host", b"web"), (b"X-L5d-Not", b"1"), (b"l5d", b"x")],
    [(b"host", b"web"), (b"l5d-dtab", b"/svc=>/#/io.l5d.fs/b"), (b"L5D-Ctx-Dtab", b"/a=>/b")],
    [(b"l5d-sample", b"0.5"), (b"x", b"y"), (b"l5d-ctx-trace", b"abc")],
    [(b"a", b"1"), (b"b", b"2"), (b"L5D-REQID", b"not-hex")],
]


@pytest.mark.parametrize("pairs", HEADER_SETS)
@pytest.mark.parametrize("clear", [False, True])
def test_inbound_scan_of_headers_is_the_general_scan(pairs: list[Header], clear: bool) -> None:
    headers = Headers(pairs)  # lowercases the names
    general = inbound_scan(list(headers), clear, DtabParseCache())
    fast = inbound_scan(headers, clear, DtabParseCache())
    assert fast == general
    assert fast[0] is not headers.items()  # a list of its own, as the general scan returns


def _pick_sequence(fast: bool, available: list[bool], weight: float, effort: int) -> list[Any]:
    rng = random.Random(7)
    flags = itertools.cycle(available)
    b = P2CBalancer(rng=rng, now=lambda: 0.0, available=lambda k: next(flags), max_effort=effort)
    b.update([EndpointInfo("a:1", weight)])
    out = []
    for _ in range(20):
        ep = b.pick() if fast else b._p2c(b._nodes, b._choice)
        out.append((ep.key if ep is not None else None, rng.random(), b.max_effort_exhausted))
    return out


@pytest.mark.parametrize("available", [[True], [False], [False, True], [True, False, False]])
@pytest.mark.parametrize("weight", [1.0, 0.0, 2.5])
@pytest.mark.parametrize("effort", [1, 2, 5])
def test_single_endpoint_pick_is_p2c(available: list[bool], weight: float, effort: int) -> None:
    assert _pick_sequence(True, available, weight, effort) == _pick_sequence(False, available, weight, effort)


def _slices(h: WindowedHistogram) -> list[tuple[Any, ...]]:
    return [(s.sid, dict(s.counts), s.count, s.sum, s.min, s.max) for s in h._slices]


def test_the_at_forms_record_what_the_plain_forms_record() -> None:
    times = [0.5, 4.9995, 5.0, 5.0004, 12.0, 61.0, 200.25]
    one, other = WindowedHistogram(lambda: t), WindowedHistogram(lambda: 0.0)
    for t in times:
        for v in (0, 3.7, 15.9, 16, 1234.5):
            one.add(v)
            other.add_at(v, t)
        assert _slices(one) == _slices(other)
        assert (one.total_count, one.total_sum) == (other.total_count, other.total_sum)
    clock = [0.0]
    a = RetryBudget(BudgetConfig(), lambda: clock[0])
    b = RetryBudget(BudgetConfig(), lambda: clock[0])
    for t in times:
        clock[0] = t
        a.deposit()
        b.deposit_at(t)
        assert (a.balance(), a.deposits) == (b.balance(), b.deposits)


# -- the router's settled-binding memo -------------------------------------------------------------

CFG = """
routers:
- protocol: http
  label: memo
  dtab: /svc => /$/inet/127.0.0.1/9001;
  servers: [{ip: 127.0.0.1, port: 4140}]
"""


async def _router_run(body: Any) -> None:
    cfg = load_config(CFG, source="test").routers[0]
    conn = conn_for(cfg)
    metrics = MetricsRegistry(time.monotonic)
    async with trio.open_nursery() as nursery:
        router = stub_router(cfg, nursery, metrics=metrics)

        async def send() -> Response:
            return await router.handle(get_request(), conn)

        await body(router, send, metrics)
        nursery.cancel_scope.cancel()


def _count(metrics: MetricsRegistry, key: str) -> Any:
    return {m.key: m for m in metrics.metrics()}[key].obj.value  # type: ignore[union-attr]


WEB = Path.read("/svc/web")


def test_a_settled_binding_is_remembered_and_dropped_when_the_binding_changes() -> None:
    async def body(router: HttpRouter, send: Any, metrics: MetricsRegistry) -> None:
        for _ in range(3):
            assert (await send()).headers.get(b"x-port") == b"9001"
        settled = router._settled[WEB]
        assert settled.client_id == "/$/inet/127.0.0.1/9001"
        assert (await send()).headers.get(b"x-port") == b"9001"
        assert router._settled[WEB] is settled  # the same binding: remembered, not made again
        router.set_dtab(Dtab.read("/svc => /$/inet/127.0.0.1/9002"))
        assert (await send()).headers.get(b"x-port") == b"9002"
        assert (await send()).headers.get(b"x-port") == b"9002"
        assert router._settled[WEB].client_id == "/$/inet/127.0.0.1/9002"
        prefix = "rt/memo/service/svc/web"
        assert _count(metrics, f"{prefix}/requests") == 6
        assert _count(metrics, "rt/memo/client/$/inet/127.0.0.1/9001/requests") == 4
        assert _count(metrics, "rt/memo/client/$/inet/127.0.0.1/9002/requests") == 2
        assert _count(metrics, "rt/memo/server/127.0.0.1/4140/requests") == 6

    trio.run(_router_run, body)


def test_a_union_is_never_settled_each_request_draws_a_branch() -> None:
    async def body(router: HttpRouter, send: Any, metrics: MetricsRegistry) -> None:
        router.set_dtab(Dtab.read("/svc => 1 * /$/inet/127.0.0.1/9001 & 1 * /$/inet/127.0.0.1/9002"))
        ports = {(await send()).headers.get(b"x-port") for _ in range(40)}
        assert ports == {b"9001", b"9002"}
        assert WEB not in router._settled

    trio.run(_router_run, body)


def test_each_service_keeps_its_settled_binding_when_requests_interleave() -> None:
    async def body(router: HttpRouter, send: Any, metrics: MetricsRegistry) -> None:
        router.set_dtab(Dtab.read("/svc/web => /$/inet/127.0.0.1/9001; /svc/api => /$/inet/127.0.0.1/9002"))
        conn = conn_for(load_config(CFG, source="test").routers[0])
        for _ in range(2):
            for host, port in ((b"web", b"9001"), (b"api", b"9002")):
                assert (await router.handle(get_request(host), conn)).headers.get(b"x-port") == port
        memo = dict(router._settled)
        assert {str(k): v.client_id for k, v in memo.items()} == {
            "/svc/web": "/$/inet/127.0.0.1/9001",
            "/svc/api": "/$/inet/127.0.0.1/9002",
        }
        for _ in range(3):
            for host, port in ((b"web", b"9001"), (b"api", b"9002")):
                assert (await router.handle(get_request(host), conn)).headers.get(b"x-port") == port
        assert all(router._settled[k] is v for k, v in memo.items())  # found, not made again
        assert _count(metrics, "rt/memo/service/svc/api/requests") == 5
        assert _count(metrics, "rt/memo/client/$/inet/127.0.0.1/9001/requests") == 5

    trio.run(_router_run, body)


def test_the_settled_memo_is_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(router_module, "_SETTLED_MAX", 3)

    async def body(router: HttpRouter, send: Any, metrics: MetricsRegistry) -> None:
        router.set_dtab(Dtab.read("/svc => /$/inet/127.0.0.1/9001"))
        conn = conn_for(load_config(CFG, source="test").routers[0])
        for i in range(7):
            for _ in range(2):  # (a service settles on its second request, once it has an entry)
                assert (await router.handle(get_request(b"s%d" % i), conn)).status == 200
            # Full at three: emptied before the fourth, so it holds 1, 2, 3, 1, 2, 3, 1 bindings.
            assert Path.read(f"/svc/s{i}") in router._settled
            assert len(router._settled) == i % 3 + 1

    trio.run(_router_run, body)
