"""Retry budget: deposits per request, withdrawals per retry, reserve, ttl expiry."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hostproxy.budget import BudgetConfig, BudgetConfigError, RetryBudget, WindowedAdder


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def drain(budget: RetryBudget) -> int:
    n = 0
    while budget.try_withdraw():
        n += 1
    return n


def test_defaults_match_linkerd():
    c = BudgetConfig()
    assert (c.ttl_secs, c.min_retries_per_sec, c.percent_can_retry) == (10, 10, 0.2)


def test_reserve_is_min_retries_times_ttl():
    budget = RetryBudget(BudgetConfig(), Clock())
    assert budget.balance() == 100
    assert drain(budget) == 100
    assert budget.exhausted == 1
    assert budget.balance() == 0


def test_deposits_add_percent_of_requests():
    budget = RetryBudget(BudgetConfig(min_retries_per_sec=0, percent_can_retry=0.2), Clock())
    for _ in range(100):
        budget.deposit()
    assert drain(budget) == 20


def test_withdrawals_expire_after_ttl():
    clock = Clock()
    budget = RetryBudget(BudgetConfig(ttl_secs=10, min_retries_per_sec=1, percent_can_retry=0), clock)
    assert drain(budget) == 10
    clock.t += 5
    assert not budget.try_withdraw()
    clock.t += 5.5
    assert drain(budget) == 10


def test_deposits_expire_after_ttl():
    clock = Clock()
    budget = RetryBudget(BudgetConfig(ttl_secs=2, min_retries_per_sec=0, percent_can_retry=1.0), clock)
    for _ in range(5):
        budget.deposit()
    assert budget.balance() == 5
    clock.t += 2.5
    assert budget.balance() == 0
    assert not budget.try_withdraw()


@given(st.lists(st.tuples(st.sampled_from(["req", "retry", "tick"]), st.floats(0, 3)), max_size=200))
def test_retries_never_exceed_budget_over_any_run(ops):
    clock = Clock()
    cfg = BudgetConfig(ttl_secs=10, min_retries_per_sec=1, percent_can_retry=0.5)
    budget = RetryBudget(cfg, clock)
    reqs = 0
    for op, dt in ops:
        if op == "req":
            budget.deposit()
            reqs += 1
        elif op == "retry":
            budget.try_withdraw()
        else:
            clock.t += dt
        assert budget.balance() >= 0
    # total retries can never exceed the whole reserve plus every deposit (plus reserve refills per ttl)
    elapsed_windows = 1 + int((clock.t - 1000.0) // cfg.ttl_secs) + 1
    assert budget.withdrawals <= reqs * 0.5 + 10 * elapsed_windows


def test_windowed_adder_sums_recent_values():
    clock = Clock()
    w = WindowedAdder(10, 10, clock)
    w.add(3)
    clock.t += 4
    w.add(4)
    assert w.sum() == 7
    clock.t += 6.5
    assert w.sum() == 4
    clock.t += 100
    assert w.sum() == 0


@pytest.mark.parametrize(
    ("cfg", "msg"),
    [
        ({"ttlSecs": 0}, r"^b: ttlSecs must be between 1 and 60, got 0\.0$"),
        ({"percentCanRetry": 2000}, r"^b: percentCanRetry must be between 0 and 1000, got 2000\.0$"),
        ({"minRetriesPerSec": -1}, r"^b: minRetriesPerSec must be >= 0, got -1\.0$"),
        ({"ttl": 3}, r"^b: unknown key 'ttl'; allowed keys: ttlSecs, minRetriesPerSec, percentCanRetry$"),
        ({"ttlSecs": "10"}, r"^b\.ttlSecs: expected a number, got '10'$"),
    ],
)
def test_config_errors(cfg, msg):
    with pytest.raises(BudgetConfigError, match=msg):
        BudgetConfig.from_config(cfg, "b")


def test_from_config_reads_keys():
    c = BudgetConfig.from_config({"ttlSecs": 5, "minRetriesPerSec": 2, "percentCanRetry": 1.5})
    assert (c.ttl_secs, c.min_retries_per_sec, c.percent_can_retry) == (5, 2, 1.5)
