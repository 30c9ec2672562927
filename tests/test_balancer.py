"""Balancers: a conformance suite over every kind, plus kind-specific behaviour."""

import collections
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hostproxy.balancer import (
    BALANCER_KINDS,
    ApertureBalancer,
    BalancerConfigError,
    EndpointInfo,
    EwmaBalancer,
    WeightedChoice,
    balancer_from_config,
)


class Clock:
    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


def infos(*keys, weight=1.0):
    return [EndpointInfo(k, weight) for k in keys]


def make(kind, seed=0, available=None, clock=None, **cfg):
    return balancer_from_config(
        {"kind": kind, **cfg}, rng=random.Random(seed), now=clock or Clock(), available=available
    )


# --- conformance, every kind -------------------------------------------------------------------

kinds = pytest.mark.parametrize("kind", BALANCER_KINDS)


@kinds
def test_empty_set_picks_none(kind):
    b = make(kind)
    assert b.pick() is None
    b.update([])
    assert b.pick() is None


@kinds
def test_never_picks_removed(kind):
    b = make(kind)
    b.update(infos("a", "b", "c"))
    b.update(infos("b", "c"))
    for _ in range(200):
        ep = b.pick()
        assert ep is not None and ep.key in {"b", "c"}
        b.on_start(ep)
        b.on_finish(ep, 0.01, True)
    assert b.statistics()["removes"] == 1


@kinds
def test_never_picks_unavailable_and_none_when_all_unavailable(kind):
    down = {"a", "c"}
    b = make(kind, available=lambda k: k not in down)
    b.update(infos("a", "b", "c", "d"))
    seen = set()
    for _ in range(300):
        ep = b.pick()
        assert ep is not None and ep.key not in down
        seen.add(ep.key)
        b.on_start(ep)
        b.on_finish(ep, 0.01, True)
    assert seen <= {"b", "d"}
    down.update({"b", "d"})
    assert b.pick() is None
    assert b.statistics()["available"] == 0 and b.statistics()["busy"] == 4


@kinds
def test_spreads_load(kind):
    clock = Clock()
    b = make(kind, seed=3, clock=clock)
    b.update(infos(*"abcd"))
    counts = collections.Counter()
    inflight = []
    for i in range(400):
        ep = b.pick()
        counts[ep.key] += 1
        b.on_start(ep)
        inflight.append(ep)
        clock.t += 0.05
        if i % 3 == 2:  # keep some requests outstanding
            e = inflight.pop(0)
            b.on_finish(e, 0.01, True)
    if kind == "aperture":
        # the aperture grows under load, so with requests piling up every endpoint gets some
        assert len(counts) >= 2
    else:
        assert set(counts) == set("abcd")
        assert min(counts.values()) > 400 / 4 * 0.5


@kinds
def test_state_survives_update_for_staying_endpoints(kind):
    b = make(kind)
    b.update(infos("a"))
    ep = b.pick()
    b.on_start(ep)
    b.update([EndpointInfo("a", 2.0, {"zone": "z1"}), EndpointInfo("b")])
    same = next(e for e in b.endpoints() if e.key == "a")
    assert same is ep and same.pending == 1 and same.weight == 2.0
    st_ = b.state()
    assert st_["kind"] == kind
    a_state = next(e for e in st_["endpoints"] if e["key"] == "a")
    assert a_state["load"] == 1 and a_state["status"] == "open" and a_state["meta"] == {"zone": "z1"}
    assert a_state["weight"] == 2.0
    b.on_finish(ep, 0.01, True)
    assert ep.pending == 0


@kinds
def test_finish_after_removal_is_harmless(kind):
    b = make(kind)
    b.update(infos("a", "b"))
    ep = b.pick()
    b.on_start(ep)
    b.update(infos("z"))
    b.on_finish(ep, 0.5, False)
    assert b.pick().key == "z"
    assert b.statistics()["load"] == 0


@kinds
@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(st.sets(st.sampled_from("abcdef")), st.sets(st.sampled_from("abcdef")), st.integers(0, 5)),
        max_size=15,
    )
)
def test_random_updates_and_availability(kind, steps):
    down: set[str] = set()
    b = make(kind, available=lambda k: k not in down)
    for members, unavailable, npicks in steps:
        b.update(infos(*sorted(members)))
        down.clear()
        down.update(unavailable)
        ok = members - unavailable
        for _ in range(npicks):
            ep = b.pick()
            if ok:
                assert ep is not None and ep.key in ok
                b.on_start(ep)
            else:
                assert ep is None
        assert b.statistics()["size"] == len(members)


@kinds
def test_weights_are_honoured(kind):
    # aperture restricts traffic to a subset by design: open its window over both endpoints
    extra = {"minAperture": 2} if kind == "aperture" else {}
    b = make(kind, seed=7, **extra)
    b.update([EndpointInfo("heavy", 3.0), EndpointInfo("light", 1.0)])
    counts = collections.Counter()
    inflight = collections.deque()
    for _ in range(4000):
        ep = b.pick()
        counts[ep.key] += 1
        b.on_start(ep)
        inflight.append(ep)
        if len(inflight) > 8:
            b.on_finish(inflight.popleft(), 0.01, True)
    share = counts["heavy"] / 4000
    assert 0.6 < share < 0.9, counts


# --- kind specific -------------------------------------------------------------------------------


def test_p2c_prefers_less_loaded():
    b = make("p2c")
    b.update(infos("a", "b"))
    busy = next(e for e in b.endpoints() if e.key == "a")
    for _ in range(5):
        b.on_start(busy)
    assert all(b.pick().key == "b" for _ in range(50))


def test_p2c_max_effort_exhausted_falls_back_to_scan():
    down = {f"n{i}" for i in range(99)}
    b = make("p2c", available=lambda k: k not in down, maxEffort=1)
    b.update(infos(*[f"n{i}" for i in range(100)]))
    picks = {b.pick().key for _ in range(20)}
    assert picks == {"n99"}
    assert b.statistics()["max_effort_exhausted"] > 0


def test_heap_picks_least_loaded():
    b = make("heap")
    b.update(infos("a", "b", "c"))
    eps = {e.key: e for e in b.endpoints()}
    b.on_start(eps["a"])
    b.on_start(eps["b"])
    assert b.pick().key == "c"


def test_round_robin_cycles_in_order_of_weight():
    b = make("roundRobin")
    b.update([EndpointInfo("a", 2.0), EndpointInfo("b", 1.0)])
    seq = [b.pick().key for _ in range(6)]
    assert seq.count("a") == 4 and seq.count("b") == 2
    assert "".join(seq) in {"abaaba", "aabaab"}


def test_ewma_prefers_low_latency_and_decays():
    clock = Clock()
    b = make("ewma", clock=clock, decayTimeMs=1000)
    assert isinstance(b, EwmaBalancer)
    b.update(infos("slow", "fast"))
    eps = {e.key: e for e in b.endpoints()}
    for key, lat in (("slow", 1.0), ("fast", 0.01)):
        b.on_start(eps[key])
        b.on_finish(eps[key], lat, True)
    assert all(b.pick().key == "fast" for _ in range(50))
    assert b.cost(eps["slow"]) == pytest.approx(1.0)
    clock.t += 1.0
    assert b.cost(eps["slow"]) == pytest.approx(1.0 / 2.718281828, rel=1e-3)
    # peak sensitivity: one slow response raises the cost at once
    b.on_start(eps["fast"])
    b.on_finish(eps["fast"], 2.0, True)
    assert b.cost(eps["fast"]) == pytest.approx(2.0)
    slow_state = next(e for e in b.state()["endpoints"] if e["key"] == "slow")
    assert slow_state["ewma_ms"] == pytest.approx(367.879, rel=1e-3)


def test_ewma_penalises_unmeasured_busy_endpoint():
    b = make("ewma")
    b.update(infos("a", "b"))
    eps = {e.key: e for e in b.endpoints()}
    b.on_start(eps["b"])
    b.on_finish(eps["b"], 0.5, True)
    b.on_start(eps["a"])  # in flight, never measured
    assert b.load(eps["a"]) > b.load(eps["b"])


def test_aperture_grows_with_load_and_shrinks_when_idle():
    clock = Clock()
    b = make("aperture", clock=clock, smoothWindowMs=1000)
    assert isinstance(b, ApertureBalancer)
    b.update(infos(*[f"n{i}" for i in range(10)]))
    assert b.aperture == 1
    inflight = []
    for _ in range(60):
        ep = b.pick()
        b.on_start(ep)
        inflight.append(ep)
        clock.t += 0.1
    grown = b.aperture
    assert grown > 1
    assert len({e.key for e in inflight}) > 1
    for ep in inflight:
        b.on_finish(ep, 0.01, True)
    for _ in range(60):
        clock.t += 1
        ep = b.pick()
        b.on_start(ep)
        b.on_finish(ep, 0.01, True)
    assert b.aperture == 1
    assert b.statistics()["expands"] >= grown - 1 and b.statistics()["contracts"] >= grown - 1


def test_aperture_ring_is_stable_across_updates():
    b = make("aperture", seed=11)
    b.update(infos(*"abcdef"))
    ring = b.state()["ring"]
    b.update(infos(*"abcdefg"))
    ring2 = b.state()["ring"]
    assert [k for k in ring2 if k != "g"] == ring


def test_aperture_falls_back_outside_window():
    down = set()
    b = make("aperture", seed=1, available=lambda k: k not in down)
    b.update(infos(*"abc"))
    first = b.state()["ring"][0]
    down.add(first)
    assert b.pick().key != first


# --- weighted choice ----------------------------------------------------------------------------


def test_weighted_choice_statistical_bound():
    # 0.9 * /a & 0.1 * /b: with n draws, the share of /a is within 5 standard deviations of 0.9.
    rng = random.Random(12345)
    wc = WeightedChoice([0.9, 0.1], rng)
    n = 20000
    hits = sum(1 for _ in range(n) if wc.pick() == 0)
    sd = (0.9 * 0.1 / n) ** 0.5
    assert abs(hits / n - 0.9) < 5 * sd


def test_weighted_choice_uniform_when_sum_is_zero():
    wc = WeightedChoice([0.0, 0.0, 0.0], random.Random(1))
    counts = collections.Counter(wc.pick() for _ in range(3000))
    assert set(counts) == {0, 1, 2} and min(counts.values()) > 800


def test_weighted_choice_never_picks_zero_weight_when_others_positive():
    wc = WeightedChoice([0.0, 1.0, 0.0, 2.0], random.Random(2))
    assert {wc.pick() for _ in range(2000)} == {1, 3}


def test_weighted_choice_rejects_bad_weights():
    with pytest.raises(BalancerConfigError, match=r"^weight #1 is -1\.0: weights must be finite and >= 0$"):
        WeightedChoice([1.0, -1.0], random.Random(0))
    with pytest.raises(IndexError, match=r"^WeightedChoice\.pick: no weights to choose from$"):
        WeightedChoice([], random.Random(0)).pick()


# --- config ---------------------------------------------------------------------------------------


def test_config_defaults():
    b = balancer_from_config(None, rng=random.Random(0), now=Clock())
    assert b.kind == "p2c" and b.max_effort == 5
    a = make("aperture")
    assert (a.low_load, a.high_load, a.min_aperture, a.smooth_s) == (0.5, 2.0, 1, 5.0)
    assert make("ewma").tau == 10.0


@pytest.mark.parametrize(
    ("cfg", "msg"),
    [
        (
            {"kind": "leastConn"},
            r"^lb\.kind: unknown load balancer 'leastConn'; expected one of: p2c, ewma, aperture, heap, roundRobin$",
        ),
        (
            {"kind": "p2c", "decayTimeMs": 5},
            r"^lb: unknown key 'decayTimeMs' for kind 'p2c'; allowed keys: enableProbation, kind, maxEffort$",
        ),
        ({"kind": "ewma", "maxEffort": 0}, r"^lb\.maxEffort: expected an integer >= 1, got 0$"),
        ({"kind": "ewma", "decayTimeMs": "10s"}, r"^lb\.decayTimeMs: expected a number, got '10s'$"),
        ({"kind": "aperture", "lowLoad": 3}, r"^lb: lowLoad \(3\) must be >= 0 and below highLoad \(2\.0\)$"),
        (
            {"kind": "p2c", "enableProbation": True},
            r"^lb\.enableProbation: advisory discovery removal is not supported; remove the key or set it to false$",
        ),
    ],
)
def test_config_errors(cfg, msg):
    with pytest.raises(BalancerConfigError, match=msg):
        balancer_from_config(cfg, rng=random.Random(0), now=Clock(), where="lb")


def test_update_rejects_bad_weight():
    b = make("p2c")
    with pytest.raises(
        BalancerConfigError, match=r"^endpoint a: weight -2\.0 is invalid; weights must be finite and >= 0$"
    ):
        b.update([EndpointInfo("a", -2.0)])
