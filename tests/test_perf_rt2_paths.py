"""The router path's third round of shortcuts gives what the general forms give: the forwarded headers
built from a service's remembered l5d-dst-* fields, the LRU forms that take a clock reading, and a
client request that starts at a time its caller read."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
import trio

from dtab import Dtab, Path
from hostproxy.config.validate import load_config
from hostproxy.http.message import Body, Headers, Request, Response
from hostproxy.metrics import MetricsRegistry
from hostproxy.router import HttpRouter
from hostproxy.routing.binder import BoundedLru
from hostproxy.routing.context import CTX_TRACE, REQID, forwarded_headers, inbound_scan
from hostproxy.routing.tracectx import FLAG_SAMPLED, decode_l5d_trace
from tests.routerstub import StubPool, conn_for

Header = tuple[bytes, bytes]

# -- forwarded headers ----------------------------------------------------------------------------


class _Pool(StubPool):
    """Answers at once and records the headers of every request it was sent."""

    seen: list[tuple[int, list[Header]]] = []

    def answer(self, req: Request) -> Response:
        _Pool.seen.append((self.port, req.headers.items()))
        return super().answer(req)


class _Drawn:
    """An rng whose next 64-bit draw is a given value (the l5d-reqid a request was sent with)."""

    def __init__(self, value: int, sampled: bool = False) -> None:
        self.value = value
        self.sampled = sampled

    def getrandbits(self, bits: int) -> int:
        return self.value

    def random(self) -> float:
        """The draw that gave the sampling decision the request was sent with (``l5d-sample``)."""
        return 0.0 if self.sampled else 0.999


def _config(dtab: str) -> Any:
    return load_config(
        f"""
routers:
- protocol: http
  label: fwd
  dtab: {dtab}
  servers: [{{ip: 127.0.0.1, port: 4140}}]
""",
        source="test",
    ).routers[0]


REQUEST_HEADERS: list[list[Header]] = [
    [(b"host", b"web")],
    [(b"host", b"web"), (b"accept", b"*/*"), (b"x-b3", b"1")],
    [(b"host", b"web"), (b"l5d-sample", b"0.5")],  # consumed: none left to forward
    [(b"host", b"web"), (b"l5d-dtab", b"/x => /y")],  # a local dtab: the general form
    [(b"host", b"web"), (b"l5d-reqid", b"0123456789abcdef"), (b"l5d-ctx-trace", b"zz")],
]


@pytest.mark.parametrize(
    ("dtab", "clients"),
    [
        ("/svc => /$/inet/127.0.0.1/9001;", {"/$/inet/127.0.0.1/9001": 9001}),
        ("/svc => /$/inet/127.0.0.1/9001/extra/res;", {"/$/inet/127.0.0.1/9001": 9001}),
        (
            "/svc => 1 * /$/inet/127.0.0.1/9001 & 1 * /$/inet/127.0.0.1/9002;",
            {"/$/inet/127.0.0.1/9001": 9001, "/$/inet/127.0.0.1/9002": 9002},
        ),
    ],
)
def test_forwarded_headers_are_those_of_the_general_form(dtab: str, clients: dict[str, int]) -> None:
    cfg = _config(dtab)
    conn = conn_for(cfg)
    by_port = {port: cid.encode() for cid, port in clients.items()}
    residual = Path.read("/extra/res/web" if "extra" in dtab else "/web")  # what is left of /svc/web
    _Pool.seen = []
    sent: list[list[Header]] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            router = HttpRouter(
                cfg,
                namers=[],
                resolver=None,
                metrics=MetricsRegistry(time.monotonic),
                nursery=nursery,
                rng=random.Random(5),
                pool_factory=_Pool,
            )
            for _ in range(6):
                for pairs in REQUEST_HEADERS:
                    sent.append(pairs)
                    req = Request("GET", "/", Headers(pairs), Body.empty(), authority="web")
                    assert (await router.handle(req, conn)).status == 200
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert len(_Pool.seen) == len(sent)
    reqids = set()
    for (port, got), pairs in zip(_Pool.seen, sent, strict=True):
        reqid = dict(got)[REQID]
        if (REQID, reqid) not in pairs:
            reqids.add(reqid)
        kept, local, sample, _ = inbound_scan(Headers(pairs), False)
        trace = decode_l5d_trace(dict(got)[CTX_TRACE])
        assert trace is not None
        expected, _ = forwarded_headers(
            b"/svc/web",
            by_port[port],
            residual,
            local,
            kept,
            _Drawn(trace.span_id, bool(trace.flags & FLAG_SAMPLED)),  # type: ignore[arg-type]
            sample=sample,
        )
        assert got == expected
    assert len(reqids) == len(sent)  # a new trace for each request: none came with a valid one
    assert {port for port, _ in _Pool.seen} == set(clients.values())


# -- LRU forms that take a clock reading ----------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


def _state(lru: BoundedLru[Any, Any]) -> list[tuple[Any, Any, float, int]]:
    return [(k, s.value, s.last_used, s.in_use) for k, s in lru._slots.items()]


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("ttl", [None, 10.0])
def test_lru_forms_with_a_reading_are_the_plain_forms(seed: int, ttl: float | None) -> None:
    rng = random.Random(seed)
    clock = _Clock()
    out_a: list[Any] = []
    out_b: list[Any] = []
    a: BoundedLru[Any, Any] = BoundedLru(3, idle_ttl_s=ttl, clock=clock, on_evict=lambda *e: out_a.append(e))
    b: BoundedLru[Any, Any] = BoundedLru(3, idle_ttl_s=ttl, clock=clock, on_evict=lambda *e: out_b.append(e))
    canon = [(Dtab.EMPTY, Path.read(f"/svc/{i}")) for i in range(5)]
    held: dict[Any, int] = {}
    for step in range(300):
        i = rng.randrange(5)
        key = canon[i] if rng.random() < 0.7 else (Dtab.EMPTY, Path.read(f"/svc/{i}"))
        op = rng.choice(["get", "get", "put", "use", "use", "release", "release", "tick"])
        if op == "get":
            assert a.get(key) == b.get_at(key, clock())
        elif op == "put":
            if not held.get(key):
                a.put(key, step)
                b.put(key, step)
        elif op == "use":
            sa, sb = a.use(key), b.use(key, clock())
            assert (sa and sa.value) == (sb and sb.value)
            if sa is not None:
                held[key] = held.get(key, 0) + 1
        elif op == "release":
            if held.get(key):
                held[key] -= 1
                a.release(key)
                b.release(key, clock())
            elif key in a and a.in_use(key) == 0:
                with pytest.raises(RuntimeError):
                    a.release(key)
                with pytest.raises(RuntimeError):
                    b.release(key, clock())
        else:
            clock.t += rng.choice([0.5, 3.0, 11.0])
        assert _state(a) == _state(b), step
        assert out_a == out_b, step


# -- a client request started at a reading --------------------------------------------------------


def test_a_request_at_a_reading_is_a_request_that_reads_it() -> None:
    cfg = _config("/svc => /$/inet/127.0.0.1/9001;")
    conn = conn_for(cfg)
    clock = _Clock()

    def state(router: HttpRouter) -> Any:
        (client,) = [c for _, c in router.clients.items()]
        (ep,) = client.balancer.endpoints()
        budget = client.requeue_budget
        return (client.last_used, budget.deposits, budget.balance(), ep.pending, ep.requests, ep.failures)

    async def run(with_reading: bool) -> Any:
        async with trio.open_nursery() as nursery:
            router = HttpRouter(
                cfg,
                namers=[],
                resolver=None,
                metrics=MetricsRegistry(clock),
                nursery=nursery,
                rng=random.Random(5),
                clock=clock,
                pool_factory=_Pool,
            )
            req = Request("GET", "/", Headers([(b"host", b"web")]), Body.empty(), authority="web")
            await router.handle(req, conn)  # makes the client
            (client,) = [c for _, c in router.clients.items()]
            states = []
            for _ in range(3):
                clock.t += 7.0
                resp, key = await (client.request(req, clock()) if with_reading else client.request(req))
                assert key == "127.0.0.1:9001" and resp.status == 200
                states.append(state(router))
            nursery.cancel_scope.cancel()
            return states

    clock.t = 50.0
    plain = trio.run(run, False)
    clock.t = 50.0
    assert trio.run(run, True) == plain
