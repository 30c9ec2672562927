"""A sliding-window, log-linear histogram: O(1) record, bounded memory, percentiles of the last minute.

Theory of operation
-------------------
Values (non-negative numbers, e.g. milliseconds) are rounded down to integers and counted in
log-linear buckets: 0..15 exactly, then 16 sub-buckets per power of two, so any reported
percentile is within 1/16 (about 6%) of the true value and a value up to 2**40 needs at most
~600 buckets. Buckets are sparse (a dict per slice), so an idle or narrow distribution costs little.

Time is cut into `slices` slices of `slice_s` seconds (default 12 × 5 s = the last minute). A record
lands in the slice of `now()`; a slice is cleared when the clock comes back to its position, so a
snapshot merges only the slices of the last window. Percentiles are therefore of the last minute
and appear as soon as anything was recorded. Cumulative `total_count`/`total_sum` never reset (for
Prometheus, whose counters must be monotonic).

Reading is built for scrapes of thousands of histograms: `WindowedHistogram.window()` merges the live
slices without copying when only one is live (the usual case), and `percentiles()` answers every
quantile a renderer needs from one sort of the (few) occupied buckets, with bucket values looked up
in a precomputed table. The results are exactly those of `snapshot()` + `HistogramSnapshot.percentile`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = [
    "PERCENTILES",
    "HistogramSnapshot",
    "WindowedHistogram",
    "bucket_index",
    "bucket_value",
    "percentiles",
]

SUB_BITS = 4
SUB = 1 << SUB_BITS  # 16 sub-buckets per power of two
MAX_VALUE = (1 << 40) - 1

# Suffix in metric keys -> quantile.
PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 0.5),
    ("p90", 0.9),
    ("p95", 0.95),
    ("p99", 0.99),
    ("p9990", 0.999),
    ("p9999", 0.9999),
)


def bucket_index(value: int) -> int:
    """The bucket holding the integer `value` (values above 2**40 share the last bucket)."""
    if value < SUB:
        return max(0, value)
    if value > MAX_VALUE:
        value = MAX_VALUE
    shift = value.bit_length() - (SUB_BITS + 1)
    return shift * SUB + (value >> shift)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The smallest and largest integers of bucket `index`."""
    if index < 2 * SUB:
        return index, index
    shift, top = divmod(index, SUB)
    shift -= 1
    top += SUB
    lo = top << shift
    return lo, lo + (1 << shift) - 1


def bucket_value(index: int) -> int:
    """The value a bucket reports: the middle of its range."""
    lo, hi = bucket_bounds(index)
    return (lo + hi) // 2


# Every bucket's reported value, by index (the last index is that of MAX_VALUE).
_BUCKET_VALUES: tuple[int, ...] = tuple(bucket_value(i) for i in range(bucket_index(MAX_VALUE) + 1))
_QS = tuple(q for _, q in PERCENTILES)


def percentiles(
    counts: dict[int, int], count: int, lo: float, hi: float, qs: tuple[float, ...]
) -> list[float]:
    """The percentiles `qs` (ascending) of a histogram, in one pass over its sorted buckets.

    Each equals `HistogramSnapshot(count, _, lo, hi, counts).percentile(q)`: the value of the first
    bucket whose cumulative count reaches `max(1, ceil(q * count))`, clamped to `[lo, hi]`.
    """
    if count == 0:
        return [0.0] * len(qs)
    out: list[float] = []
    ranks = [max(1, math.ceil(q * count)) for q in qs]
    i, n = 0, len(ranks)
    seen = 0
    values = _BUCKET_VALUES
    for idx in sorted(counts):
        seen += counts[idx]
        while i < n and seen >= ranks[i]:
            v = values[idx] if idx < len(values) else bucket_value(idx)
            out.append(float(min(max(v, lo), hi)))
            i += 1
        if i == n:
            return out
    out.extend(float(hi) for _ in range(n - i))
    return out


class _Slice:
    __slots__ = ("sid", "counts", "count", "sum", "min", "max")

    def __init__(self) -> None:
        self.sid = -1
        self.counts: dict[int, int] = {}
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def reset(self, sid: int) -> None:
        self.sid = sid
        self.counts = {}
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf


@dataclass(frozen=True)
class HistogramSnapshot:
    count: int
    sum: float
    min: float
    max: float
    counts: dict[int, int]

    def percentile(self, q: float) -> float:
        return percentiles(self.counts, self.count, self.min, self.max, (q,))[0]

    @staticmethod
    def merge(snaps: Iterable[HistogramSnapshot]) -> HistogramSnapshot:
        counts: dict[int, int] = {}
        count, total, lo, hi = 0, 0.0, math.inf, -math.inf
        for s in snaps:
            count += s.count
            total += s.sum
            lo, hi = min(lo, s.min), max(hi, s.max)
            for k, v in s.counts.items():
                counts[k] = counts.get(k, 0) + v
        return HistogramSnapshot(count, total, lo, hi, counts)

    def summary(self) -> dict[str, float]:
        """Linkerd's stat fields: count always; the rest when count > 0."""
        out: dict[str, float] = {"count": self.count}
        if self.count:
            out["max"] = self.max
            out["min"] = self.min
            for (name, _), p in zip(
                PERCENTILES, percentiles(self.counts, self.count, self.min, self.max, _QS), strict=True
            ):
                out[name] = p
            out["sum"] = self.sum
            out["avg"] = self.sum / self.count
        return out


# `add` takes a record whose time lies inside the current slice's interval, at least this far (seconds)
# from either end, to be in that slice without computing `now // slice_s`: the margin is far wider than
# the float error of that division, so the answer is the division's. Records nearer an end divide.
_EDGE_S = 1e-3


class WindowedHistogram:
    __slots__ = ("_now", "_slice_s", "_slices", "_cur", "_lo", "_hi", "total_count", "total_sum")

    def __init__(self, now: Callable[[], float], slices: int = 12, slice_s: float = 5.0) -> None:
        self._now = now
        self._slice_s = slice_s
        self._slices = [_Slice() for _ in range(slices)]
        self._cur = self._slices[0]
        # The times `add` knows to be in `_cur`'s slice without dividing (none yet).
        self._lo = self._hi = 0.0
        self.total_count = 0
        self.total_sum = 0.0

    def _slice_at(self, now: float) -> _Slice:
        """The slice of time `now`, cleared if it last held an older window's records; it becomes
        the current one."""
        sid = int(now // self._slice_s)
        cur = self._cur
        if cur.sid != sid:
            cur = self._slices[sid % len(self._slices)]
            if cur.sid != sid:
                cur.reset(sid)
            self._cur = cur
        self._lo = sid * self._slice_s + _EDGE_S
        self._hi = (sid + 1) * self._slice_s - _EDGE_S
        return cur

    def add(self, value: float) -> None:
        self.add_at(value, self._now())

    def add_at(self, value: float, now: float) -> None:
        """`add(value)` at the time `now`, read from this histogram's clock (a caller recording into
        several histograms reads it once)."""
        cur = self._cur if self._lo <= now < self._hi else self._slice_at(now)
        if value > 0:
            v = value
            iv = int(value)
            idx = (
                iv if iv < SUB else bucket_index(iv)
            )  # small values (most latencies in ms) are their own bucket
        else:
            v = idx = 0
        counts = cur.counts
        try:
            counts[idx] += 1  # the usual case: a bucket seen before in this slice (no call)
        except KeyError:
            counts[idx] = 1
        cur.count += 1
        cur.sum += v
        if v < cur.min:
            cur.min = v
        if v > cur.max:
            cur.max = v
        self.total_count += 1
        self.total_sum += v

    def snapshot(self) -> HistogramSnapshot:
        sid = int(self._now() // self._slice_s)
        oldest = sid - len(self._slices) + 1
        live = [s for s in self._slices if oldest <= s.sid <= sid and s.count]
        return HistogramSnapshot.merge(
            HistogramSnapshot(s.count, s.sum, s.min, s.max, s.counts) for s in live
        )

    def window_key(self) -> tuple[int, int]:
        """A key that changes whenever `window()` may have changed: records so far and the slice of
        now (a window only changes by a record or by the clock moving to the next slice)."""
        return self.total_count, int(self._now() // self._slice_s)

    def window(self) -> tuple[int, float, float, float, dict[int, int]]:
        """`(count, sum, min, max, bucket counts)` of the last window, as `snapshot()` has them.

        Read at once, not kept: with a single live slice the bucket counts are that slice's own
        dict (no copy), which later records change.
        """
        sid = int(self._now() // self._slice_s)
        oldest = sid - len(self._slices) + 1
        live = [s for s in self._slices if s.count and oldest <= s.sid <= sid]
        if len(live) == 1:
            s = live[0]
            return s.count, 0.0 + s.sum, min(math.inf, s.min), max(-math.inf, s.max), s.counts
        snap = HistogramSnapshot.merge(
            HistogramSnapshot(s.count, s.sum, s.min, s.max, s.counts) for s in live
        )
        return snap.count, snap.sum, snap.min, snap.max, snap.counts
