"""Backoff streams: constant, decorrelated jitter, equal jitter; config parsing."""

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hostproxy.backoff import (
    BackoffConfigError,
    Constant,
    DecorrelatedJittered,
    backoff_from_config,
    constant,
    equal_jittered,
    jittered,
)


def take(backoff, n):
    return list(itertools.islice(backoff.stream(), n))


def test_constant_repeats_forever():
    assert take(constant(250), 5) == [0.25] * 5


@given(st.integers(1, 10_000), st.integers(0, 100_000), st.integers(0, 2**32))
def test_decorrelated_jitter_stays_in_bounds(min_ms, extra, seed):
    max_ms = min_ms + extra
    b = jittered(min_ms, max_ms, random.Random(seed))
    values = take(b, 50)
    assert values[0] == pytest.approx(min_ms / 1000)
    prev = values[0]
    for v in values[1:]:
        assert min_ms / 1000 - 1e-12 <= v <= max_ms / 1000 + 1e-12
        assert v <= prev * 3 + 1e-9
        prev = v


def test_decorrelated_jitter_grows_then_caps():
    values = take(jittered(100, 10_000, random.Random(1)), 200)
    assert max(values) <= 10.0
    assert max(values[100:]) > 1.0  # it does reach well above the start
    assert len(set(values)) > 10  # and it is jittered, not a fixed ladder


@given(st.integers(1, 10_000), st.integers(0, 1_000_000), st.integers(0, 2**32))
def test_equal_jitter_bounds(start_ms, extra, seed):
    max_ms = start_ms + extra
    values = take(equal_jittered(start_ms, max_ms, random.Random(seed)), 80)
    assert values[0] == pytest.approx(start_ms / 1000)
    for n, v in enumerate(values[1:], start=1):
        exp = start_ms / 1000 * 2**n
        assert min(exp / 2, max_ms / 1000) - 1e-9 <= v <= min(exp, max_ms / 1000) + 1e-9


def test_equal_jitter_default_accrual_range_reaches_300s():
    values = take(equal_jittered(5000, 300_000, random.Random(3)), 20)
    assert values[0] == 5.0
    assert values[-1] == 300.0


def test_streams_are_independent():
    b = jittered(10, 1000, random.Random(0))
    s1 = b.stream()
    next(s1), next(s1), next(s1)
    assert next(b.stream()) == pytest.approx(0.01)


def test_from_config():
    rng = random.Random(0)
    assert backoff_from_config({"kind": "constant"}, rng) == Constant(0.0)
    assert backoff_from_config({"kind": "constant", "ms": 100}, rng) == Constant(0.1)
    b = backoff_from_config({"kind": "jittered", "minMs": 10, "maxMs": 100}, rng)
    assert isinstance(b, DecorrelatedJittered) and (b.start_s, b.max_s) == (0.01, 0.1)
    assert b.describe() == {"kind": "jittered", "minMs": 10, "maxMs": 100}


@pytest.mark.parametrize(
    ("cfg", "msg"),
    [
        ({"kind": "expo"}, r"^x\.kind: unknown backoff kind 'expo'; expected one of: constant, jittered$"),
        (
            {"kind": "jittered", "minMs": 10},
            r"^x\.maxMs: required for kind 'jittered'; set it in milliseconds$",
        ),
        ({"kind": "jittered", "minMs": 10, "maxMs": 5}, r"^x\.maxMs: must be >= minMs \(10\), got 5$"),
        ({"kind": "constant", "ms": -1}, r"^x\.ms: must be >= 0, got -1$"),
        ({"kind": "constant", "ms": "1s"}, r"^x\.ms: expected a number, got '1s'$"),
        (
            {"kind": "constant", "minMs": 1},
            r"^x: unknown key 'minMs' for kind 'constant'; allowed keys: kind, ms$",
        ),
    ],
)
def test_config_errors(cfg, msg):
    with pytest.raises(BackoffConfigError, match=msg):
        backoff_from_config(cfg, random.Random(0), "x")
