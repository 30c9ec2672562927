"""Retry budgets: a token bucket whose deposits and withdrawals expire after `ttlSecs`.

Theory of operation
-------------------
Each original request *deposits* `percentCanRetry` tokens; each retry (or requeue) *withdraws* one
token and is allowed only while the balance is at least one. Deposits and withdrawals are kept in a
windowed sum over the last `ttlSecs` (split into `SLICES` time slices so old activity ages out in
O(1) per call), and a constant *reserve* of `minRetriesPerSec × ttlSecs` tokens is added to the
balance. The net effect: over any `ttlSecs` window, retries are limited to `percentCanRetry` of the
requests plus `minRetriesPerSec` per second, which keeps a trickle of retries possible at low
traffic and stops retry storms at high traffic.

Tokens are integers scaled as Finagle's budget scales them: each request deposits `SCALE` (1,000)
and each retry withdraws `SCALE / percentCanRetry` (truncated), so even a tiny percentage adds up
(0.0001 allows one retry per 10,000 requests); with `percentCanRetry` 0 a request deposits nothing and
a retry withdraws 1, from the reserve alone. The reserve is `minRetriesPerSec × ttlSecs` withdrawals.
Linkerd's defaults: `ttlSecs` 10, `minRetriesPerSec` 10, `percentCanRetry` 0.2.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["BudgetConfig", "BudgetConfigError", "RetryBudget", "WindowedAdder"]

SCALE = 1000
_MAX_WITHDRAWAL = 2**31 - 1
SLICES = 10
_EDGE_S = 1e-3


class BudgetConfigError(ValueError):
    """A retry budget config is invalid; the message names the key and the valid range."""


@dataclass(frozen=True)
class BudgetConfig:
    ttl_secs: float = 10.0
    min_retries_per_sec: float = 10.0
    percent_can_retry: float = 0.2

    def __post_init__(self) -> None:
        if not 1 <= self.ttl_secs <= 60:
            raise BudgetConfigError(f"ttlSecs must be between 1 and 60, got {self.ttl_secs}")
        if self.min_retries_per_sec < 0:
            raise BudgetConfigError(f"minRetriesPerSec must be >= 0, got {self.min_retries_per_sec}")
        if not 0 <= self.percent_can_retry <= 1000:
            raise BudgetConfigError(
                f"percentCanRetry must be between 0 and 1000, got {self.percent_can_retry}"
            )

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, where: str = "budget") -> BudgetConfig:
        cfg = dict(cfg or {})
        keys = {
            "ttlSecs": "ttl_secs",
            "minRetriesPerSec": "min_retries_per_sec",
            "percentCanRetry": "percent_can_retry",
        }
        unknown = sorted(set(cfg) - set(keys))
        if unknown:
            raise BudgetConfigError(f"{where}: unknown key {unknown[0]!r}; allowed keys: " + ", ".join(keys))
        kwargs: dict[str, float] = {}
        for key, attr in keys.items():
            if key in cfg:
                value = cfg[key]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise BudgetConfigError(f"{where}.{key}: expected a number, got {value!r}")
                kwargs[attr] = float(value)
        try:
            return cls(**kwargs)
        except BudgetConfigError as e:
            raise BudgetConfigError(f"{where}: {e}") from None


class WindowedAdder:
    """A sum of the values added during the last `window_s` seconds (to a slice's resolution)."""

    __slots__ = ("_now", "_slice_s", "_slots", "_slot_ids", "_n", "_cur", "_lo", "_hi")

    def __init__(self, window_s: float, slices: int, now: Callable[[], float]) -> None:
        self._now = now
        self._n = slices
        self._slice_s = window_s / slices
        self._slots = [0] * slices
        self._slot_ids = [-1] * slices
        # `add` knows times in [_lo, _hi) to fall in slot `_cur` without dividing: the interval of the
        # slot's slice less a margin far wider than the float error of `now // slice_s` (as
        # WindowedHistogram does). Empty until the first add.
        self._cur = 0
        self._lo = self._hi = 0.0

    def add(self, value: int) -> None:
        self.add_at(value, self._now())

    def add_at(self, value: int, now: float) -> None:
        """`add(value)` at the time `now` (read from this adder's clock)."""
        if self._lo <= now < self._hi:
            self._slots[self._cur] += value
            return
        sid = int(now // self._slice_s)
        i = sid % self._n
        if self._slot_ids[i] != sid:
            self._slot_ids[i] = sid
            self._slots[i] = 0
        self._slots[i] += value
        self._cur = i
        self._lo = sid * self._slice_s + _EDGE_S
        self._hi = (sid + 1) * self._slice_s - _EDGE_S

    def sum(self) -> int:
        sid = int(self._now() // self._slice_s)
        oldest = sid - self._n + 1
        return sum(v for v, s in zip(self._slots, self._slot_ids, strict=True) if oldest <= s <= sid)


class RetryBudget:
    """Finagle-style retry budget: `deposit()` per request, `try_withdraw()` per retry."""

    def __init__(self, config: BudgetConfig, now: Callable[[], float]) -> None:
        self.config = config
        percent = config.percent_can_retry
        self._deposit = SCALE if percent else 0
        # As Finagle's Int arithmetic, a withdrawal saturates (a percentCanRetry so small that SCALE /
        # percent overflows, even to infinity, must not fail every request of the service).
        self._withdrawal = int(min(SCALE / percent, _MAX_WITHDRAWAL)) if percent else 1
        self._reserve = int(config.min_retries_per_sec * config.ttl_secs * self._withdrawal)
        self._window = WindowedAdder(config.ttl_secs, SLICES, now)
        self.deposits = 0
        self.withdrawals = 0
        self.exhausted = 0

    def deposit(self) -> None:
        self.deposit_at(self._window._now())

    def deposit_at(self, now: float) -> None:
        """`deposit()` at the time `now`, read from this budget's clock (a caller that has just read
        it passes the reading on instead of a second read)."""
        self.deposits += 1
        amount = self._deposit
        if amount:
            self._window.add_at(amount, now)

    def try_withdraw(self) -> bool:
        """Spend one retry token; False (and count `exhausted`) when the budget is empty."""
        withdrawal = self._withdrawal
        if self._reserve + self._window.sum() >= withdrawal:
            self._window.add(-withdrawal)
            self.withdrawals += 1
            return True
        self.exhausted += 1
        return False

    def balance(self) -> int:
        """Whole retries currently available (Linkerd's `retries/budget` gauge)."""
        return max(0, (self._reserve + self._window.sum()) // self._withdrawal)

    def statistics(self) -> dict[str, Any]:
        return {
            "balance": self.balance(),
            "deposits": self.deposits,
            "withdrawals": self.withdrawals,
            "budget_exhausted": self.exhausted,
            "ttlSecs": self.config.ttl_secs,
            "minRetriesPerSec": self.config.min_retries_per_sec,
            "percentCanRetry": self.config.percent_can_retry,
        }

    def __repr__(self) -> str:
        return f"<RetryBudget balance={self.balance()} exhausted={self.exhausted}>"
