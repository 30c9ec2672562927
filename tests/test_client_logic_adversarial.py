"""Adversarial tests for the client layer's pure decision objects.

Balancers, failure accrual, backoff, classifiers and retry budgets, driven with seeded
`random.Random` and fake clocks (no sleeps, no timing). Expected values follow Linkerd 1 /
Finagle semantics (../shared/spec/linkerd1-reference.md, sections 5.1-5.6).
"""

import collections
import itertools
import math
import random

import pytest
from test_balancer import infos
from test_balancer import make as _make

from hostproxy.accrual import (
    Effect,
    EndpointAccrual,
    FailureAccrual,
    State,
    SuccessRate,
    SuccessRateWindowed,
    accrual_from_config,
)
from hostproxy.backoff import EqualJittered, backoff_from_config, equal_jittered, jittered
from hostproxy.balancer import (
    BALANCER_KINDS,
    ApertureBalancer,
    EndpointInfo,
    EwmaBalancer,
)
from hostproxy.budget import BudgetConfig, RetryBudget
from hostproxy.causes import Cause
from hostproxy.classifier import (
    HTTP_CLASSIFIERS,
    ResponseClass,
    classifier_from_config,
    success_class_header_value,
)

S, F, R = ResponseClass.SUCCESS, ResponseClass.FAILURE, ResponseClass.RETRYABLE_FAILURE


class Clock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(kind, seed=0, available=None, clock=None, **cfg):
    """``test_balancer.make`` on this file's clock (which starts at 100 s)."""
    return _make(kind, seed, available, clock or Clock(), **cfg)


def by_key(b):
    return {e.key: e for e in b.endpoints()}


kinds = pytest.mark.parametrize("kind", BALANCER_KINDS)


# --- balancers: degenerate endpoint sets --------------------------------------------------------


@kinds
def test_single_endpoint_is_always_picked_and_none_when_dead(kind):
    down = set()
    b = make(kind, available=lambda k: k not in down)
    b.update(infos("only"))
    for _ in range(50):
        ep = b.pick()
        assert ep is not None and ep.key == "only"
        b.on_start(ep)
        b.on_finish(ep, 0.01, True)
    down.add("only")
    assert b.pick() is None
    # Linkerd falls back to the whole set when every endpoint is marked dead
    ep = b.pick_ignoring_availability()
    assert ep is not None and ep.key == "only"
    # the fallback does not leak: availability is consulted again afterwards
    assert b.pick() is None


@kinds
def test_all_dead_falls_back_to_the_whole_set(kind):
    down = {"a", "b", "c", "d"}
    extra = {"minAperture": 4} if kind == "aperture" else {}
    b = make(kind, seed=3, available=lambda k: k not in down, **extra)
    b.update(infos("a", "b", "c", "d"))
    assert b.pick() is None
    seen = collections.Counter()
    for _ in range(400):
        ep = b.pick_ignoring_availability()
        assert ep is not None
        seen[ep.key] += 1
        b.on_start(ep)
        b.on_finish(ep, 0.01, True)
    # the fallback spreads over the whole set, not a single endpoint
    assert set(seen) == {"a", "b", "c", "d"}, seen
    assert b.statistics()["available"] == 0 and b.statistics()["busy"] == 4


@kinds
def test_all_dead_fallback_never_returns_a_removed_endpoint(kind):
    b = make(kind, available=lambda k: False)
    b.update(infos("a", "b"))
    b.update(infos("b"))
    for _ in range(50):
        ep = b.pick_ignoring_availability()
        assert ep is not None and ep.key == "b"
    b.update([])
    assert b.pick_ignoring_availability() is None


def _sequential_picks(b, n: int) -> collections.Counter[str]:
    """The endpoints ``b`` picks for ``n`` requests made one at a time (10 ms each)."""
    picks: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        ep = b.pick()
        picks[ep.key] += 1
        b.on_start(ep)
        b.on_finish(ep, 0.01, True)
    return picks


@kinds
@pytest.mark.parametrize("seed", range(12))
def test_zero_weight_endpoint_gets_no_traffic_while_a_weighted_one_is_available(kind, seed):
    b = make(kind, seed=seed)
    b.update([EndpointInfo("zero", 0.0), EndpointInfo("one", 1.0)])
    picks = _sequential_picks(b, 200)
    assert picks["zero"] == 0, (kind, seed, picks, b.state().get("ring"))


@kinds
def test_all_zero_weights_spread_uniformly(kind):
    extra = {"minAperture": 3} if kind == "aperture" else {}
    b = make(kind, seed=5, **extra)
    b.update(infos("a", "b", "c", weight=0.0))
    picks = _sequential_picks(b, 3000)
    assert set(picks) == {"a", "b", "c"}
    for k in "abc":
        assert 800 <= picks[k] <= 1200, picks


# --- balancers: endpoint sets changing under load -----------------------------------------------


@kinds
def test_remove_endpoint_with_requests_in_flight_then_finish(kind):
    b = make(kind, seed=1)
    b.update(infos("a", "b", "c"))
    eps = by_key(b)
    for _ in range(3):
        b.on_start(eps["a"])
    b.on_start(eps["b"])
    assert b.statistics()["load"] == 4
    b.update(infos("b", "c"))
    assert b.statistics()["load"] == 1
    for _ in range(3):
        b.on_finish(eps["a"], 0.01, False)
    assert eps["a"].pending == 0
    # a spurious extra finish must not drive a counter negative
    b.on_finish(eps["a"], 0.01, True)
    assert eps["a"].pending == 0
    assert b.statistics()["load"] == 1
    assert eps["b"].pending == 1
    if isinstance(b, ApertureBalancer):
        assert b._outstanding == 1
    for _ in range(100):
        ep = b.pick()
        assert ep.key in {"b", "c"}


@kinds
def test_readded_key_is_a_fresh_endpoint_and_old_finish_does_not_touch_it(kind):
    b = make(kind, seed=2)
    b.update(infos("a", "b"))
    old_a = by_key(b)["a"]
    b.on_start(old_a)
    b.on_start(old_a)
    b.update(infos("b"))
    b.update(infos("a", "b"))
    new_a = by_key(b)["a"]
    assert new_a is not old_a and new_a.pending == 0 and not new_a.removed
    b.on_start(new_a)
    b.on_finish(old_a, 0.01, True)
    b.on_finish(old_a, 0.01, True)
    assert new_a.pending == 1 and old_a.pending == 0
    assert b.statistics()["load"] == 1
    assert b.statistics()["adds"] == 3 and b.statistics()["removes"] == 1
    if isinstance(b, ApertureBalancer):
        assert b._outstanding == 1


@kinds
@pytest.mark.parametrize("seed", range(6))
def test_load_counters_stay_consistent_under_random_churn(kind, seed):
    rng = random.Random(1000 + seed)
    clock = Clock()
    b = make(kind, seed=seed, clock=clock)
    universe = [f"n{i}" for i in range(6)]
    inflight = []  # Endpoint objects with one outstanding request each
    b.update(infos(*universe[:3]))
    for _ in range(1500):
        op = rng.random()
        clock.t += rng.random() * 0.05
        if op < 0.45:
            ep = b.pick()
            if ep is not None:
                b.on_start(ep)
                inflight.append(ep)
        elif op < 0.85 and inflight:
            ep = inflight.pop(rng.randrange(len(inflight)))
            b.on_finish(ep, rng.random() * 0.2, rng.random() < 0.8)
        elif op < 0.95:
            keep = [k for k in universe if rng.random() < 0.6]
            b.update([EndpointInfo(k, rng.choice([0.0, 1.0, 2.0, 5.0])) for k in keep])
        else:
            b.update([])
        nodes = b.endpoints()
        for ep in nodes + inflight:
            assert ep.pending >= 0
        live_ids = {id(e) for e in nodes}
        expected = sum(1 for e in inflight if id(e) in live_ids)
        assert b.statistics()["load"] == expected
        for e in nodes:
            assert e.pending == sum(1 for x in inflight if x is e)
        if isinstance(b, ApertureBalancer):
            assert b._outstanding == expected
            n = len(nodes)
            assert min(b.min_aperture, n) <= b.aperture <= n
        picked = b.pick() if nodes else None
        if nodes:
            assert picked is not None and picked in nodes
    # drain: everything returns to zero
    for ep in inflight:
        b.on_finish(ep, 0.01, True)
    assert b.statistics()["load"] == 0


# --- ewma: clocks that do not move or go backwards ------------------------------------------------


def test_ewma_frozen_clock_keeps_the_peak():
    clock = Clock()
    b = make("ewma", clock=clock, decayTimeMs=1000)
    assert isinstance(b, EwmaBalancer)
    b.update(infos("a"))
    a = by_key(b)["a"]
    b.on_start(a)
    b.on_finish(a, 0.5, True)
    # with no elapsed time the EWMA weight of the old value is 1: a faster answer changes nothing
    for _ in range(10):
        b.on_start(a)
        b.on_finish(a, 0.1, True)
    assert b.cost(a) == 0.5
    assert b.load(a) == 0.5
    b.on_start(a)
    assert b.load(a) == 1.0  # cost x (outstanding + 1)


def test_ewma_backwards_clock_never_increases_or_nans_the_cost():
    clock = Clock(100.0)
    b = make("ewma", clock=clock, decayTimeMs=10000)
    b.update(infos("a", "b"))
    a = by_key(b)["a"]
    b.on_start(a)
    b.on_finish(a, 1.0, True)
    clock.t = 90.0  # backwards
    assert b.cost(a) == 1.0  # dt is clamped at 0: no growth
    b.on_start(a)
    b.on_finish(a, 0.2, True)
    assert b.cost(a) == 1.0  # w = 1 with dt clamped
    # Finagle's PeakEwma stamps the observation time as is; decay resumes from there
    clock.t = 100.0
    assert b.cost(a) == pytest.approx(math.exp(-1.0))
    for _ in range(20):
        ep = b.pick()
        assert ep is not None
        assert math.isfinite(b.load(ep)) and b.load(ep) >= 0


def test_ewma_negative_and_nan_latencies_are_clamped():
    clock = Clock()
    b = make("ewma", clock=clock)
    b.update(infos("a"))
    a = by_key(b)["a"]
    b.on_start(a)
    b.on_finish(a, -5.0, True)
    assert b.cost(a) == 0.0
    b.on_start(a)
    b.on_finish(a, float("nan"), True)
    assert b.cost(a) == 0.0 and a.pending == 0


# --- aperture --------------------------------------------------------------------------------------


def test_aperture_with_fewer_endpoints_than_min_aperture():
    clock = Clock()
    b = make("aperture", seed=4, clock=clock, minAperture=5)
    assert isinstance(b, ApertureBalancer)
    b.update(infos("a", "b", "c"))
    assert b.aperture == 3
    seen = set()
    for _ in range(300):
        ep = b.pick()
        seen.add(ep.key)
        b.on_start(ep)
        b.on_finish(ep, 0.01, True)
        clock.t += 1
    assert seen == {"a", "b", "c"}
    assert b.aperture == 3 and b.statistics()["contracts"] == 0
    b.update(infos(*"abcdefg"))
    assert b.aperture == 5
    b.update(infos("a", "b"))
    assert b.aperture == 2
    b.update(infos(*"abcdefg"))
    assert b.aperture == 5  # back to minAperture once there are enough endpoints
    b.update([])
    assert b.aperture == 0 and b.pick() is None
    b.update(infos("x"))
    assert b.aperture == 1 and b.pick().key == "x"


def test_aperture_never_exceeds_the_set_under_heavy_load():
    clock = Clock()
    b = make("aperture", seed=9, clock=clock, smoothWindowMs=100)
    b.update(infos("a", "b", "c"))
    for _ in range(500):
        ep = b.pick()
        b.on_start(ep)
        clock.t += 0.01
    assert b.aperture == 3
    assert b.statistics()["expands"] == 2


# --- weighted split ------------------------------------------------------------------------------


def _sequential_share(kind: str, latency_s: dict[str, float] | None = None) -> float:
    """The weight-9 endpoint's share of 20,000 requests made one at a time (weights 9 and 1)."""
    clock = Clock()
    extra = {"minAperture": 2} if kind == "aperture" else {}
    b = make(kind, seed=2024, clock=clock, **extra)
    b.update([EndpointInfo("nine", 9.0), EndpointInfo("one", 1.0)])
    n = 20000
    counts: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        ep = b.pick()
        counts[ep.key] += 1
        b.on_start(ep)
        clock.t += 0.01
        b.on_finish(ep, (latency_s or {}).get(ep.key, 0.01), True)
    return counts["nine"] / n


@pytest.mark.parametrize("kind", ["p2c", "heap", "roundRobin", "aperture"])
def test_weighted_split_9_to_1_holds_for_sequential_traffic(kind):
    """Idle endpoints get their weight's share. n = 20000: sd of the share is 0.0021; the bound (0.02)
    is ~9 sd."""
    assert abs(_sequential_share(kind) - 0.9) <= 0.02, kind


def test_ewma_weights_are_capacities_not_shares():
    """``ewma`` compares latency cost / weight (the module docstring): with equal latencies the weight-9
    endpoint takes (nearly) everything; once it is twenty times slower, the weight-1 endpoint does."""
    assert _sequential_share("ewma") > 0.99  # all but a few made before both latencies were measured
    assert _sequential_share("ewma", {"nine": 0.2, "one": 0.01}) < 0.01


def test_round_robin_9_to_1_is_exact_per_cycle():
    b = make("roundRobin")
    b.update([EndpointInfo("nine", 9.0), EndpointInfo("one", 1.0)])
    for _ in range(5):
        cycle = [b.pick().key for _ in range(10)]
        assert cycle.count("nine") == 9 and cycle.count("one") == 1


# --- failure accrual -----------------------------------------------------------------------------


def test_default_accrual_five_failures_then_equal_jittered_probe_cycle():
    clock = Clock(1000.0)
    fa = FailureAccrual(accrual_from_config(None, random.Random(77)), clock)
    expected = EqualJittered(5.0, 300.0, random.Random(77)).stream()
    delays = list(itertools.islice(expected, 4))
    assert delays[0] == 5.0
    for i in range(4):
        fa.on_request("a")
        assert fa.on_response("a", ok=False) is Effect.NONE, i
    fa.on_request("a")
    assert fa.on_response("a", ok=False) is Effect.REMOVE
    assert not fa.available("a")
    ep = fa._eps["a"]
    assert ep.dead_until == 1005.0
    clock.t = 1004.999
    assert not fa.available("a")
    assert fa.state()["endpoints"]["a"] == {"state": "dead", "retry_in_ms": 1}
    clock.t = 1005.0
    assert fa.available("a")
    assert fa.on_request("a") is Effect.PROBE
    assert not fa.available("a")
    # a request dispatched by a racing balancer while the probe is out changes nothing
    assert fa.on_request("a") is Effect.IGNORE
    assert fa.on_response("a", ok=False) is Effect.REMOVE_AGAIN
    assert ep.last_delay_s == delays[1] and 5.0 <= delays[1] <= 10.0
    assert ep.dead_until == pytest.approx(1005.0 + delays[1])
    clock.t = ep.dead_until
    assert fa.on_request("a") is Effect.PROBE
    assert fa.on_response("a", ok=False) is Effect.REMOVE_AGAIN
    assert ep.last_delay_s == delays[2] and 10.0 <= delays[2] <= 20.0
    clock.t = ep.dead_until
    assert fa.on_request("a") is Effect.PROBE
    assert fa.on_response("a", ok=True) is Effect.REVIVE
    assert fa.available("a")
    # removals are not counted again when a probe fails (Finagle's symmetry with revivals)
    assert fa.statistics() == {
        "removals": 1,
        "probes": 3,
        "revivals": 1,
        "removed_for_ms": round((5.0 + delays[1] + delays[2]) * 1000),
    }
    # revival resets both the policy and the backoff stream
    for _ in range(4):
        assert fa.on_response("a", ok=False) is Effect.NONE
    assert fa.on_response("a", ok=False) is Effect.REMOVE
    assert ep.last_delay_s == 5.0
    assert fa.statistics()["removals"] == 2


def _endpoint_accrual(cfg: dict, clock: Clock) -> EndpointAccrual:
    """One endpoint's accrual state machine for the config ``cfg`` (rng seeded 0)."""
    made = accrual_from_config(cfg, random.Random(0))
    return EndpointAccrual(made.make_policy(clock), made.backoff, clock)


def test_probe_is_exactly_one_request():
    clock = Clock()
    ep = _endpoint_accrual(
        {"kind": "io.l5d.consecutiveFailures", "failures": 1, "backoff": {"kind": "constant", "ms": 10}},
        clock,
    )
    assert ep.on_response(False) is Effect.REMOVE
    clock.t += 0.01
    assert ep.available() and ep.state is State.PROBE_OPEN
    assert ep.on_request() is Effect.PROBE
    assert not ep.available()
    for _ in range(5):
        assert ep.on_request() is Effect.IGNORE
    assert ep.probes == 1


def test_success_from_an_old_in_flight_request_while_probe_open_revives():
    clock = Clock()
    ep = _endpoint_accrual(
        {"kind": "io.l5d.consecutiveFailures", "failures": 2, "backoff": {"kind": "constant", "ms": 1000}},
        clock,
    )
    ep.on_response(False)
    assert ep.on_response(False) is Effect.REMOVE
    assert ep.on_response(True) is Effect.IGNORE  # dead: in-flight success ignored
    clock.t += 1.0
    assert ep.on_response(False) is Effect.IGNORE  # probe open: in-flight failure ignored
    assert ep.state is State.PROBE_OPEN
    assert ep.on_response(True) is Effect.REVIVE
    assert ep.revivals == 1 and ep.removed_for_s == 1.0


def test_success_rate_ewma_trips_exactly_when_rate_drops_below():
    # keep = exp(-1/3): after k failures from 1.0 the rate is exp(-k/3): 0.717, 0.513, 0.368, 0.264
    p = SuccessRate(0.3, 3)
    p.record_success()  # (the first response is the rate: 1.0)
    assert [p.record_failure() for _ in range(4)] == [False, False, False, True]
    p = SuccessRate(0.5, 3)
    assert [p.record_failure() for _ in range(3)] == [False, False, True]
    # successRate 1.0: any failure after `requests` responses trips; 0.0: never
    p = SuccessRate(1.0, 2)
    p.record_success()
    assert p.record_failure()
    p = SuccessRate(0.0, 1)
    assert not any(p.record_failure() for _ in range(1000))


def test_success_rate_windowed_window_boundary():
    clock = Clock(100.0)
    p = SuccessRateWindowed(0.5, 10, clock)
    for _ in range(4):
        assert not p.record_failure()
    clock.t = 109.999  # same 10 s window (1 s slices): the four failures still count
    assert p.record_failure()
    clock.t = 100.0
    p = SuccessRateWindowed(0.5, 10, clock)
    for _ in range(4):
        p.record_failure()
    clock.t = 110.0  # the slice of t=100 has left the window
    assert not p.record_failure()
    assert p.rate() == 0.0 and p._total.sum() == 1


def test_success_rate_windowed_exact_threshold_is_not_a_trip():
    clock = Clock()
    p = SuccessRateWindowed(0.5, 10, clock)
    for _ in range(5):
        p.record_success()
    results = [p.record_failure() for _ in range(6)]
    # after 5 ok + k failures the rate is 5/(5+k): 0.833, 0.714, 0.625, 0.556, 0.5, 0.4545
    assert results == [False, False, False, False, False, True]


# --- backoff -------------------------------------------------------------------------------------


def take(b, n):
    return list(itertools.islice(b.stream(), n))


def test_accrual_default_backoff_sequence_matches_finagle_equal_jittered():
    """Finagle's Stream `equalJittered(5s, 300s)`: start, then halfExp + U[0, halfExp) with
    halfExp = start * 2**(n-1), capped at maximum."""
    values = take(equal_jittered(5000, 300_000, random.Random(42)), 12)
    assert values[0] == 5.0
    for n in range(1, 7):
        half = 5.0 * 2 ** (n - 1)
        assert half <= values[n] <= min(2 * half, 300.0), (n, values)
    assert values[7:] == [300.0] * 5
    assert values == take(equal_jittered(5000, 300_000, random.Random(42)), 12)


def test_equal_jittered_start_equal_to_max_is_constant():
    assert take(equal_jittered(1000, 1000, random.Random(1)), 6) == [1.0] * 6


def test_decorrelated_jitter_degenerate_and_bounds():
    assert take(jittered(100, 100, random.Random(1)), 5) == [0.1] * 5
    values = take(backoff_from_config({"kind": "jittered", "minMs": 10, "maxMs": 50}, random.Random(8)), 200)
    assert values[0] == 0.01
    prev = values[0]
    for v in values[1:]:
        assert 0.01 <= v <= min(3 * prev, 0.05) + 1e-12
        prev = v


def test_default_retry_backoff_is_constant_zero():
    assert take(backoff_from_config({"kind": "constant"}, random.Random(0)), 3) == [0.0, 0.0, 0.0]


# --- classifier ----------------------------------------------------------------------------------

READ = {"GET", "HEAD", "OPTIONS", "TRACE"}
IDEMPOTENT = READ | {"PUT", "DELETE"}
RETRYABLE = {
    "io.l5d.http.nonRetryable5XX": set(),
    "io.l5d.http.retryableRead5XX": READ,
    "io.l5d.http.retryableIdempotent5XX": IDEMPOTENT,
    "io.l5d.http.retryableAll5XX": IDEMPOTENT | {"POST", "PATCH"},
}
METHODS = ["HEAD", "GET", "OPTIONS", "TRACE", "PUT", "DELETE", "POST", "PATCH"]


@pytest.mark.parametrize("kind", sorted(RETRYABLE))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("status", [100, 200, 204, 302, 399, 400, 404, 499])
def test_below_500_is_success(kind, method, status):
    assert HTTP_CLASSIFIERS[kind].classify(method, status, None) is S


@pytest.mark.parametrize("kind", sorted(RETRYABLE))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("status", [500, 501, 503, 599])
def test_5xx_boundaries_by_method(kind, method, status):
    expected = R if method in RETRYABLE[kind] else F
    c = HTTP_CLASSIFIERS[kind]
    assert c.classify(method, status, None) is expected
    assert c.classify(method, status, Cause.UPSTREAM_5XX) is expected
    h2 = HTTP_CLASSIFIERS[kind.replace("io.l5d.http.", "io.l5d.h2.")]
    assert h2.classify(method, status, None) is expected


@pytest.mark.parametrize("kind", sorted(RETRYABLE))
@pytest.mark.parametrize("status", [600, 799, 999])
def test_status_600_and_above_is_not_5xx(kind, status):
    # Linkerd's classifiers match Finagle's Status.ServerError, i.e. 500 <= code < 600.
    assert HTTP_CLASSIFIERS[kind].classify("GET", status, None) is S


def test_success_class_header_for_every_verdict():
    c = classifier_from_config({"kind": "io.l5d.http.retryableRead5XX"})
    assert success_class_header_value(c.classify("GET", 499, None)) == "1.0"
    assert success_class_header_value(c.classify("GET", 500, None)) == "0.0"
    assert success_class_header_value(c.classify("POST", 500, None)) == "0.0"
    assert success_class_header_value(c.classify("GET", None, Cause.CONNECT_REFUSED)) == "0.0"
    every = classifier_from_config({"kind": "io.l5d.http.allSuccessful"})
    assert success_class_header_value(every.classify("POST", 599, None)) == "1.0"
    assert success_class_header_value(every.classify("POST", None, Cause.UPSTREAM_RESET)) == "1.0"


def test_exceptions_are_failures_for_the_default_kind():
    c = classifier_from_config(None)
    for cause in Cause:
        assert c.classify("GET", None, cause) is F, cause


# --- retry budget ----------------------------------------------------------------------------------


def drain(budget):
    n = 0
    while budget.try_withdraw():
        n += 1
        assert n < 10_000_000
    return n


def test_budget_percent_zero_and_no_reserve_allows_nothing():
    budget = RetryBudget(BudgetConfig(min_retries_per_sec=0, percent_can_retry=0), Clock())
    for _ in range(1000):
        budget.deposit()
    assert drain(budget) == 0 and budget.balance() == 0


def test_budget_percent_upper_bound_1000_retries_per_request():
    budget = RetryBudget(BudgetConfig(min_retries_per_sec=0, percent_can_retry=1000), Clock())
    budget.deposit()
    assert budget.balance() == 1000
    assert drain(budget) == 1000


@pytest.mark.parametrize(
    ("percent", "requests", "retries"),
    [
        (0.5, 3, 1),
        (0.5, 4, 2),
        (0.1, 10, 1),
        (0.1, 9, 0),
        (0.3, 10, 3),
        (0.0015, 1000, 1),  # Finagle: withdrawal = int(1000 / 0.0015) = 666666; 1000 deposits of 1000
        (0.0001, 10_000, 1),  # Finagle: withdrawal = 10_000_000; 10000 deposits of 1000
    ],
)
def test_budget_percent_arithmetic(percent, requests, retries):
    budget = RetryBudget(BudgetConfig(min_retries_per_sec=0, percent_can_retry=percent), Clock())
    for _ in range(requests):
        budget.deposit()
    assert drain(budget) == retries


def test_budget_fractional_min_retries_per_sec():
    budget = RetryBudget(BudgetConfig(ttl_secs=3, min_retries_per_sec=0.5, percent_can_retry=0), Clock())
    assert budget.balance() == 1
    assert drain(budget) == 1


def test_budget_min_retries_refills_only_after_ttl():
    clock = Clock(1000.0)
    budget = RetryBudget(BudgetConfig(ttl_secs=10, min_retries_per_sec=1, percent_can_retry=0), clock)
    assert drain(budget) == 10
    clock.t = 1009.999
    assert not budget.try_withdraw()
    clock.t = 1010.0
    assert drain(budget) == 10
    assert budget.exhausted == 3  # one per drain, plus the refused try at 1009.999


def test_budget_deposit_expires_at_ttl_boundary():
    clock = Clock(1000.0)
    budget = RetryBudget(BudgetConfig(ttl_secs=10, min_retries_per_sec=0, percent_can_retry=1), clock)
    budget.deposit()
    clock.t = 1009.999
    assert budget.balance() == 1
    clock.t = 1010.0
    assert budget.balance() == 0
    assert not budget.try_withdraw()


def test_budget_default_allows_reserve_plus_20_percent():
    budget = RetryBudget(BudgetConfig(), Clock())
    for _ in range(100):
        budget.deposit()
    assert drain(budget) == 100 + 20


def test_aperture_spreads_fallback_traffic_beyond_a_window_with_nothing_available():
    """minAperture 1: the window holds one endpoint; when it is dead, the others share its traffic
    (the least loaded of them, ties drawn by weight) instead of all of it going to one."""
    dead: set[str] = set()
    b = make("aperture", seed=3, available=lambda key: key not in dead, smoothWindowMs=100)
    b.update(infos("a", "b", "c", "d"))
    assert b.aperture == 1
    dead.add(b.state()["ring"][0])
    picks = _sequential_picks(b, 300)
    assert set(picks) == set("abcd") - dead and min(picks.values()) > 50, picks


def test_an_interrupted_request_counts_only_when_it_was_the_probe():
    """``FailureAccrual.on_interrupted``: a request cancelled without an answer (a total timeout, the
    caller gone) changes nothing, unless it was the probe in flight: then the endpoint is removed
    again and probed after its next backoff, instead of waiting for that probe forever."""
    clock = Clock()
    fa = FailureAccrual(
        accrual_from_config(
            {"kind": "io.l5d.consecutiveFailures", "failures": 1, "backoff": {"kind": "constant", "ms": 10}},
            random.Random(0),
        ),
        clock,
    )
    assert fa.on_interrupted("a") is Effect.NONE  # unknown, alive
    fa.on_request("a")
    assert fa.on_interrupted("a") is Effect.NONE and fa.available("a")  # alive: not a failure
    assert fa.on_response("a", ok=False) is Effect.REMOVE
    assert fa.on_interrupted("a") is Effect.NONE  # dead: nothing in flight counts
    clock.t += 0.01
    assert fa.available("a") and fa.on_request("a") is Effect.PROBE
    assert not fa.available("a")  # the probe is in flight
    assert fa.on_interrupted("a") is Effect.REMOVE_AGAIN
    assert not fa.available("a")
    clock.t += 0.01
    assert fa.available("a") and fa.on_request("a") is Effect.PROBE  # probed again
    assert fa.statistics()["probes"] == 2


def test_eject_removes_an_alive_endpoint_whatever_its_policy_and_it_comes_back_by_probe():
    """``FailureAccrual.eject`` (the client's ``failFast``): out at once even under ``none``, then the
    usual backoff and probe."""
    clock = Clock()
    fa = FailureAccrual(
        accrual_from_config({"kind": "none", "backoff": {"kind": "constant", "ms": 10}}, random.Random(0)),
        clock,
    )
    assert fa.on_response("a", ok=False) is Effect.NONE and fa.available("a")  # ``none`` never removes
    assert fa.eject("a") is Effect.REMOVE and not fa.available("a")
    assert fa.eject("a") is Effect.NONE  # already out
    assert fa.statistics()["removals"] == 1
    clock.t += 0.01
    assert fa.available("a") and fa.on_request("a") is Effect.PROBE
    assert fa.on_response("a", ok=True) is Effect.REVIVE and fa.available("a")
