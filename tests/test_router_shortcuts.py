"""The routing layer's second round of per-request shortcuts gives exactly what the general forms give:
the LRU's remembered first and last entries, the scan-free forwarded headers, the retry policy's
split start, the single-endpoint p2c draw and the budget's inline deposit."""

from __future__ import annotations

import random
from collections import OrderedDict
from typing import Any

import pytest

from dtab import Dtab, Path
from hostproxy.balancer import EndpointInfo, P2CBalancer
from hostproxy.budget import BudgetConfig, RetryBudget, WindowedAdder
from hostproxy.retry import RetryPolicy
from hostproxy.routing.binder import BoundedLru
from hostproxy.routing.context import forwarded_headers, inbound, inbound_scan, show_bytes

Header = tuple[bytes, bytes]


class _Clock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class _ReferenceLru:
    """BoundedLru as written before it remembered its first and last entries."""

    def __init__(self, max_entries: int, idle_ttl_s: float, clock: _Clock) -> None:
        self.max_entries = max_entries
        self.idle_ttl_s = idle_ttl_s
        self._clock = clock
        self._slots: OrderedDict[Any, list[Any]] = OrderedDict()  # key -> [value, last_used, in_use]
        self.evicted: list[tuple[Any, Any, str]] = []

    def get(self, key: Any) -> Any:
        now = self._clock()
        self.expire(now)
        s = self._slots.get(key)
        if s is None:
            return None
        s[1] = now
        self._slots.move_to_end(key)
        return s[0]

    def put(self, key: Any, value: Any) -> None:
        now = self._clock()
        self.expire(now)
        old = self._slots.pop(key, None)
        if old is not None:
            self.evicted.append((key, old[0], "removed"))
        self._slots[key] = [value, now, 0]
        self._trim(protect=key)

    def pop(self, key: Any) -> Any:
        s = self._slots.pop(key, None)
        if s is None:
            return None
        self.evicted.append((key, s[0], "removed"))
        return s[0]

    def use(self, key: Any) -> Any:
        now = self._clock()
        self.expire(now)
        s = self._slots.get(key)
        if s is not None:
            s[2] += 1
            s[1] = now
            self._slots.move_to_end(key)
            return s[0]
        return None

    def acquire(self, key: Any) -> Any:
        s = self._slots[key]
        s[2] += 1
        s[1] = self._clock()
        self._slots.move_to_end(key)
        return s[0]

    def release(self, key: Any) -> None:
        s = self._slots.get(key)
        if s is None or s[2] == 0:
            raise RuntimeError("not in use")
        s[2] -= 1
        s[1] = self._clock()
        self._slots.move_to_end(key)
        if len(self._slots) > self.max_entries:
            self._trim()

    def expire(self, now: float) -> int:
        cutoff = now - self.idle_ttl_s
        for first in self._slots.values():
            if first[1] > cutoff:
                return 0
            break
        n = scanned = 0
        limit = len(self._slots)
        while self._slots and scanned < limit:
            key, s = next(iter(self._slots.items()))
            if s[1] > cutoff:
                break
            scanned += 1
            if s[2]:
                s[1] = now
                self._slots.move_to_end(key)
                continue
            del self._slots[key]
            self.evicted.append((key, s[0], "idle"))
            n += 1
        return n

    def _trim(self, protect: Any = object()) -> None:
        scanned = 0
        while len(self._slots) > self.max_entries and scanned < len(self._slots):
            key, s = next(iter(self._slots.items()))
            if s[2] or key == protect:
                self._slots.move_to_end(key)
                scanned += 1
                continue
            del self._slots[key]
            self.evicted.append((key, s[0], "capacity"))

    def state(self) -> list[tuple[Any, Any, float, int]]:
        return [(k, s[0], s[1], s[2]) for k, s in self._slots.items()]


def _state(lru: BoundedLru[Any, Any]) -> list[tuple[Any, Any, float, int]]:
    return [(k, s.value, s.last_used, s.in_use) for k, s in lru._slots.items()]


@pytest.mark.parametrize("seed", range(40))
def test_lru_with_remembered_ends_behaves_as_before(seed: int) -> None:
    rng = random.Random(seed)
    clock = _Clock()
    evicted: list[tuple[Any, Any, str]] = []
    lru: BoundedLru[Any, Any] = BoundedLru(
        3, idle_ttl_s=10.0, clock=clock, on_evict=lambda k, v, r: evicted.append((k, v, r))
    )
    ref = _ReferenceLru(3, 10.0, clock)
    # Keys are tuples: one canonical object per key (the identical object the fast path wants) and
    # equal copies made afresh.
    canon = [(Dtab.EMPTY, Path.read(f"/svc/{i}")) for i in range(5)]
    held: dict[Any, int] = {}
    for step in range(300):
        i = rng.randrange(5)
        key = canon[i] if rng.random() < 0.7 else (Dtab.EMPTY, Path.read(f"/svc/{i}"))
        op = rng.choice(["get", "get", "put", "use", "use", "release", "release", "pop", "tick", "expire"])
        if op == "get":
            assert lru.get(key) == ref.get(key)
        elif op == "put":
            if not held.get(key):  # a new value for a key in use would drop its use count
                lru.put(key, step)
                ref.put(key, step)
        elif op == "use":
            s = lru.use(key)
            assert (s.value if s is not None else None) == ref.use(key)
            if s is not None:
                held[key] = held.get(key, 0) + 1
        elif op == "release":
            if held.get(key):
                held[key] -= 1
                lru.release(key)
                ref.release(key)
            elif key in lru and lru.in_use(key) == 0:
                with pytest.raises(RuntimeError):
                    lru.release(key)
        elif op == "pop":
            if not held.get(key):
                assert lru.pop(key) == ref.pop(key)
        elif op == "tick":
            clock.t += rng.choice([0.5, 3.0, 11.0])
        else:
            assert lru.expire() == ref.expire(clock())
        assert _state(lru) == ref.state(), step
        assert evicted == ref.evicted, step


def test_lru_acquire_of_an_absent_key_raises_key_error() -> None:
    lru: BoundedLru[str, int] = BoundedLru(2)
    with pytest.raises(KeyError):
        lru.acquire("nope")
    lru.put("a", 1)
    assert lru.acquire("a") == 1
    assert lru.acquire("a") == 1  # again, through the remembered last entry
    assert lru.in_use("a") == 2


HEADERS_WITHOUT_L5D: list[list[Header]] = [
    [],
    [(b"host", b"web"), (b"accept", b"*/*")],
    [(b"host", b"web"), (b"dtab-local", b"/a=>/b"), (b"via", b"1.1 x")],
]
HEADERS_WITH_L5D: list[list[Header]] = [
    [(b"host", b"web"), (b"l5d-dtab", b"/svc=>/#/io.l5d.fs/b"), (b"l5d-sample", b"0.5")],
    [(b"L5D-Ctx-Deadline", b"1 100"), (b"x", b"y")],
    [(b"l5d-ctx-trace", b"A" * 44), (b"l5d-reqid", b"0123456789abcdef")],
    [(b"l5d-dst-service", b"/forged"), (b"l5d-other", b"1")],
]


@pytest.mark.parametrize("headers", HEADERS_WITHOUT_L5D + HEADERS_WITH_L5D)
@pytest.mark.parametrize("clear", [False, True])
def test_inbound_scan_says_whether_an_l5d_header_is_left(headers: list[Header], clear: bool) -> None:
    kept, local, sample, l5d = inbound_scan(headers, clear)
    assert (kept, local, sample) == inbound(headers, clear)
    assert l5d == any(n.lower().startswith(b"l5d-") for n, _ in kept)


@pytest.mark.parametrize("headers", HEADERS_WITHOUT_L5D + HEADERS_WITH_L5D)
@pytest.mark.parametrize(
    ("residual", "local"),
    [
        (None, Dtab.EMPTY),
        (Path.EMPTY, Dtab.EMPTY),
        (Path.read("/x/y"), Dtab.read("/a=>/b")),
        (Path.read("/127.0.0.1:4140"), Dtab.EMPTY),
    ],
)
def test_forwarded_headers_without_a_scan_or_with_a_printed_residual_are_the_same(
    headers: list[Header], residual: Path | None, local: Dtab
) -> None:
    kept, _, _, l5d = inbound_scan(headers, False)
    service, client = show_bytes(Path.read("/svc/web")), show_bytes(Path.read("/$/inet/127.1/80"))
    expected = forwarded_headers(service, client, residual, local, kept, random.Random(3))
    printed = show_bytes(residual) if residual is not None and len(residual) else None
    assert forwarded_headers(service, client, printed, local, kept, random.Random(3), l5d=l5d) == expected
    assert forwarded_headers(service, client, residual, local, kept, random.Random(3), l5d=l5d) == expected


def _policy(clock: _Clock, requeue: bool) -> RetryPolicy:
    p = RetryPolicy.default(clock)
    if requeue:
        p.requeue_budget = RetryBudget(BudgetConfig(), clock)
    return p


@pytest.mark.parametrize("requeue", [False, True])
def test_begin_and_unretried_count_as_start_and_finish(requeue: bool) -> None:
    clock = _Clock()
    a, b = _policy(clock, requeue), _policy(clock, requeue)
    sink_a: list[int] = []
    sink_b: list[int] = []
    a.per_request_sink, b.per_request_sink = sink_a.append, sink_b.append
    for _ in range(7):
        clock.t += 0.3
        assert a.start("GET", replayable=True).finish() == 0
        b.begin()
        assert b.unretried() == 0
    # A request whose state is made after an attempt failed counts once, as with start.
    clock.t += 0.3
    attempts_a = a.start("GET", replayable=True)
    b.begin()
    attempts_b = b.attempts("GET", replayable=True)
    for at in (attempts_a, attempts_b):
        d = at.decide(503, None, now_ns=0, l5d_retryable=b"true")
        assert d.verdict.name == "RETRY"
    assert attempts_a.finish() == attempts_b.finish() == 1
    assert a.statistics() == b.statistics()
    assert sink_a == sink_b
    assert a.budget.deposits == b.budget.deposits
    if requeue:
        assert a.requeue_budget is not None and b.requeue_budget is not None
        assert a.requeue_budget.statistics() == b.requeue_budget.statistics()


def _reference_single_p2c(bal: P2CBalancer, available: Any) -> Any:
    """Balancer._p2c as written before its single-endpoint branch (n == 1)."""
    nodes, choice = bal._nodes, bal._choice
    for _ in range(bal.max_effort):
        a = nodes[choice.pick()]
        if not a.removed and available(a.key):
            return a
    bal.max_effort_exhausted += 1
    return bal._least_loaded(nodes)


@pytest.mark.parametrize("weight", [1.0, 0.0])
def test_single_endpoint_p2c_draws_as_before(weight: float) -> None:
    ups = [True, True, False, True, False, False, False, False, False, True] * 3
    answers: list[bool] = []

    def available(key: str) -> bool:
        return answers.pop(0) if answers else True

    rng_a, rng_b = random.Random(11), random.Random(11)
    a = P2CBalancer(rng=rng_a, now=lambda: 0.0, available=available)
    b = P2CBalancer(rng=rng_b, now=lambda: 0.0, available=available)
    for bal in (a, b):
        bal.update([EndpointInfo("10.0.0.1:80", weight)])
    for up in ups:
        answers[:] = [up] * 6
        got = a.pick()
        answers[:] = [up] * 6
        want = _reference_single_p2c(b, available)
        assert (got is None) == (want is None)
        assert rng_a.getstate() == rng_b.getstate()
    assert a.max_effort_exhausted == b.max_effort_exhausted > 0


def test_pick_ignoring_availability_picks_a_dead_endpoint_and_restores_the_check() -> None:
    bal = P2CBalancer(rng=random.Random(1), now=lambda: 0.0, available=lambda key: False)
    bal.update([EndpointInfo("a:1"), EndpointInfo("b:1")])
    assert bal.pick() is None
    ep = bal.pick_ignoring_availability()
    assert ep is not None and ep.key in ("a:1", "b:1")
    assert bal.pick() is None


def test_deposit_lands_where_a_window_add_puts_it() -> None:
    clock = _Clock(0.0)
    budget = RetryBudget(BudgetConfig(ttl_secs=10, min_retries_per_sec=0, percent_can_retry=0.2), clock)
    window = WindowedAdder(10, 10, clock)
    rng = random.Random(5)
    for _ in range(2000):
        clock.t += rng.choice([0.0, 0.0004, 0.01, 0.3, 0.9995, 2.5])
        budget.deposit()
        window.add(budget._deposit)
        assert budget._window._slots == window._slots
        assert budget._window._slot_ids == window._slot_ids
        assert budget._window.sum() == window.sum()
