"""Failure accrual: the transition table, policies, the per-client tracker, config."""

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hostproxy.accrual import (
    TRANSITIONS,
    AccrualConfigError,
    AccrualStateError,
    ConsecutiveFailures,
    Effect,
    EndpointAccrual,
    FailureAccrual,
    Input,
    State,
    SuccessRate,
    SuccessRateWindowed,
    accrual_from_config,
    step,
)
from hostproxy.backoff import constant


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize(("state", "inp"), list(itertools.product(State, Input)))
def test_every_pair_is_in_the_table_or_raises(state, inp):
    if (state, inp) in TRANSITIONS:
        effect, nxt = step(state, inp)
        assert isinstance(effect, Effect) and isinstance(nxt, State)
    else:
        with pytest.raises(
            AccrualStateError,
            match=rf"^failure accrual: no transition for input '{inp.value}' in state '{state.value}'$",
        ):
            step(state, inp)


def test_table_lifecycle():
    assert step(State.ALIVE, Input.FAILURE_TRIP) == (Effect.REMOVE, State.DEAD)
    assert step(State.DEAD, Input.BACKOFF_ELAPSED) == (Effect.OPEN_PROBE, State.PROBE_OPEN)
    assert step(State.PROBE_OPEN, Input.REQUEST) == (Effect.PROBE, State.PROBE_CLOSED)
    assert step(State.PROBE_CLOSED, Input.SUCCESS) == (Effect.REVIVE, State.ALIVE)
    assert step(State.PROBE_CLOSED, Input.FAILURE) == (Effect.REMOVE_AGAIN, State.DEAD)


def make(clock, failures=3, delay_ms=1000):
    return FailureAccrual(
        accrual_from_config(
            {
                "kind": "io.l5d.consecutiveFailures",
                "failures": failures,
                "backoff": {"kind": "constant", "ms": delay_ms},
            },
            random.Random(0),
        ),
        clock,
    )


def test_consecutive_failures_remove_then_probe_then_revive():
    clock = Clock()
    fa = make(clock)
    for _ in range(2):
        fa.on_request("a")
        fa.on_response("a", ok=False)
    assert fa.available("a")
    fa.on_response("a", ok=True)  # a success resets the streak
    for _ in range(2):
        fa.on_response("a", ok=False)
    assert fa.available("a")
    assert fa.on_response("a", ok=False) is Effect.REMOVE
    assert not fa.available("a")
    clock.t += 0.999
    assert not fa.available("a")
    clock.t += 0.001
    assert fa.available("a")  # probe open
    assert fa.on_request("a") is Effect.PROBE
    assert not fa.available("a")  # only one probe
    assert fa.on_response("a", ok=False) is Effect.REMOVE_AGAIN
    assert not fa.available("a")
    clock.t += 1
    fa.on_request("a")
    assert fa.on_response("a", ok=True) is Effect.REVIVE
    assert fa.available("a")
    assert fa.statistics() == {"removals": 1, "probes": 2, "revivals": 1, "removed_for_ms": 2000}
    # the policy was reset on revival: one more failure does not remove
    assert fa.on_response("a", ok=False) is Effect.NONE


def test_backoff_stream_advances_while_dead_and_resets_on_revival():
    clock = Clock()
    cfg = accrual_from_config(
        {
            "kind": "io.l5d.consecutiveFailures",
            "failures": 1,
            "backoff": {"kind": "jittered", "minMs": 1000, "maxMs": 100000},
        },
        random.Random(5),
    )
    ep = EndpointAccrual(cfg.make_policy(clock), cfg.backoff, clock)
    ep.on_response(False)
    assert ep.last_delay_s == 1.0
    delays = []
    for _ in range(5):
        clock.t = ep.dead_until
        ep.on_request()
        ep.on_response(False)
        delays.append(ep.last_delay_s)
    assert any(d > 1.0 for d in delays)
    clock.t = ep.dead_until
    ep.on_request()
    ep.on_response(True)
    ep.on_response(False)
    assert ep.last_delay_s == 1.0


def test_in_flight_responses_while_dead_are_ignored():
    clock = Clock()
    fa = make(clock, failures=1)
    fa.on_response("a", ok=False)
    assert fa.on_response("a", ok=True) is Effect.IGNORE
    assert fa.on_response("a", ok=False) is Effect.IGNORE
    assert not fa.available("a")


def test_unknown_endpoints_are_available_and_retain_forgets():
    clock = Clock()
    fa = make(clock, failures=1)
    assert fa.available("zzz")
    fa.on_response("a", ok=False)
    fa.retain(["b"])
    assert fa.available("a")
    assert fa.state()["endpoints"] == {}


def test_state_for_admin():
    clock = Clock()
    fa = make(clock, failures=1, delay_ms=1500)
    fa.on_response("a", ok=False)
    fa.on_response("b", ok=True)
    clock.t += 0.5
    st_ = fa.state()
    assert st_["kind"] == "io.l5d.consecutiveFailures"
    assert st_["backoff"] == {"kind": "constant", "ms": 1500}
    assert st_["endpoints"] == {"a": {"state": "dead", "retry_in_ms": 1000}, "b": {"state": "alive"}}


def test_success_rate_policy():
    p = SuccessRate(0.8, 10)
    assert not p.record_failure()  # the rate is 0 (the first response is the rate), but 1 < 10 seen
    for _ in range(20):
        p.record_success()
    # the first failure still weighs exp(-2) after 20 successes: 0.865; each failure weighs
    # 1 - exp(-1/10): 0.782, 0.708 ...
    assert [p.record_failure() for _ in range(4)] == [True, True, True, True]
    p = SuccessRate(0.8, 10)
    for _ in range(21):
        p.record_success()
    # from a perfect record: 0.905, 0.819, 0.741 ...
    assert [p.record_failure() for _ in range(4)] == [False, False, True, True]
    p.revived()
    assert p.rate == 1.0 and p.seen == 0


def test_success_rate_needs_enough_requests():
    p = SuccessRate(0.99, 10)
    assert [p.record_failure() for _ in range(10)][-2:] == [False, True]


def test_success_rate_windowed_policy():
    clock = Clock()
    p = SuccessRateWindowed(0.5, 10, clock)
    for _ in range(4):
        assert not p.record_failure()  # fewer than 5 requests in the window
    assert p.record_failure()
    clock.t += 11
    assert not p.record_failure()  # the window forgot the old failures
    for _ in range(10):
        p.record_success()
    assert not p.record_failure()


def test_none_never_trips():
    clock = Clock()
    fa = FailureAccrual(accrual_from_config({"kind": "none"}, random.Random(0)), clock)
    for _ in range(1000):
        fa.on_response("a", ok=False)
    assert fa.available("a")


def test_default_is_five_failures_equal_jittered():
    cfg = accrual_from_config(None, random.Random(0))
    assert cfg.kind == "io.l5d.consecutiveFailures" and cfg.params == {"failures": 5}
    assert cfg.backoff.describe() == {"kind": "equalJittered", "minMs": 5000, "maxMs": 300000}


@pytest.mark.parametrize(
    ("cfg", "msg"),
    [
        (
            {"kind": "io.l5d.nope"},
            r"^fa\.kind: unknown failure accrual kind 'io\.l5d\.nope'; expected one of: io\.l5d\.consecutiveFailures, io\.l5d\.successRate, io\.l5d\.successRateWindowed, none$",
        ),
        (
            {"kind": "io.l5d.successRate", "successRate": 0.9},
            r"^fa\.requests: required for kind 'io\.l5d\.successRate'$",
        ),
        (
            {"kind": "io.l5d.successRate", "successRate": 2, "requests": 5},
            r"^fa\.successRate: expected a number in \[0, 1\], got 2$",
        ),
        (
            {"kind": "io.l5d.consecutiveFailures", "window": 5},
            r"^fa: unknown key 'window' for kind 'io\.l5d\.consecutiveFailures'; allowed keys: backoff, failures, kind$",
        ),
        (
            {"kind": "none", "backoff": {"kind": "jittered"}},
            r"^fa\.backoff\.minMs: required for kind 'jittered'; set it in milliseconds$",
        ),
    ],
)
def test_config_errors(cfg, msg):
    with pytest.raises(AccrualConfigError, match=msg):
        accrual_from_config(cfg, random.Random(0), "fa")


ops = st.lists(st.sampled_from(["req", "ok", "fail", "tick"]), max_size=300)


@given(ops, st.integers(1, 6))
def test_random_runs_keep_invariants(seq, failures):
    clock = Clock()
    ep = EndpointAccrual(ConsecutiveFailures(failures), constant(1000), clock)
    for op in seq:
        before = ep.state
        if op == "req":
            effect = ep.on_request()
            if before is State.PROBE_OPEN:
                assert effect is Effect.PROBE and ep.state is State.PROBE_CLOSED
        elif op == "ok":
            ep.on_response(True)
            if before in (State.PROBE_OPEN, State.PROBE_CLOSED):
                assert ep.state is State.ALIVE
        elif op == "fail":
            ep.on_response(False)
            if before is State.PROBE_CLOSED:
                assert ep.state is State.DEAD
        else:
            clock.t += 0.6
        assert ep.revivals <= ep.removals
        assert ep.removals - ep.revivals in (0, 1)
        assert (ep.state is State.ALIVE) == (ep.removals == ep.revivals)
        # a dead endpoint is unavailable exactly until its deadline
        avail = ep.available()
        if ep.state is State.DEAD:
            assert not avail
            assert clock.t < ep.dead_until
