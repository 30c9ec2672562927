"""Backoff policies: infinite streams of delays, in seconds, with injected randomness.

Theory of operation
-------------------
A `Backoff` is an immutable policy; `stream()` starts a fresh, infinite iterator of delays. A
consumer (a retry loop, an accrual tracker) keeps its own iterator and starts a new one when it
resets (an endpoint revives, a new request starts). Randomness comes from the `random.Random`
given to the policy, so tests are deterministic with a seeded generator.

Policies (config `backoff.kind`, Linkerd 1 names and keys):

* `constant {ms}` — the same delay forever (`ms` defaults to 0: retry immediately).
* `jittered {minMs, maxMs}` — decorrelated jitter: the first delay is `minMs`; each next delay is
  drawn uniformly from `[minMs, 3 × previous]` and capped at `maxMs`.
* `equal_jittered(start, maximum)` (not a config kind; failure accrual's default, 5 s .. 300 s) —
  the n-th delay (n ≥ 1) is drawn uniformly from `[E/2, E]` with `E = start × 2ⁿ`, capped at
  `maximum`; the first delay is `start`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Backoff",
    "BackoffConfigError",
    "Constant",
    "DecorrelatedJittered",
    "EqualJittered",
    "backoff_from_config",
    "constant",
    "equal_jittered",
    "jittered",
]


class BackoffConfigError(ValueError):
    """A backoff config is invalid; the message names the config path and the fix."""


class Backoff:
    """An immutable delay policy. `stream()` gives a fresh infinite iterator of seconds."""

    def stream(self) -> Iterator[float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Constant(Backoff):
    delay_s: float

    def stream(self) -> Iterator[float]:
        while True:
            yield self.delay_s

    def describe(self) -> dict[str, Any]:
        return {"kind": "constant", "ms": round(self.delay_s * 1000)}


@dataclass(frozen=True)
class DecorrelatedJittered(Backoff):
    start_s: float
    max_s: float
    rng: random.Random = field(compare=False, repr=False)

    def stream(self) -> Iterator[float]:
        prev = self.start_s
        yield min(prev, self.max_s)
        while True:
            hi = min(prev * 3, self.max_s)
            nxt = self.rng.uniform(self.start_s, hi) if hi > self.start_s else self.start_s
            prev = min(nxt, self.max_s)
            yield prev

    def describe(self) -> dict[str, Any]:
        return {"kind": "jittered", "minMs": round(self.start_s * 1000), "maxMs": round(self.max_s * 1000)}


@dataclass(frozen=True)
class EqualJittered(Backoff):
    start_s: float
    max_s: float
    rng: random.Random = field(compare=False, repr=False)

    def stream(self) -> Iterator[float]:
        yield min(self.start_s, self.max_s)
        attempt = 1
        while True:
            exp = self.start_s * (2 ** min(attempt, 62))
            half = exp / 2
            if half >= self.max_s:
                yield self.max_s
            else:
                yield min(self.max_s, half + self.rng.uniform(0, half))
                attempt += 1

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "equalJittered",
            "minMs": round(self.start_s * 1000),
            "maxMs": round(self.max_s * 1000),
        }


def constant(ms: float) -> Constant:
    if ms < 0:
        raise BackoffConfigError(f"constant backoff: ms must be >= 0, got {ms}")
    return Constant(ms / 1000.0)


def jittered(min_ms: float, max_ms: float, rng: random.Random) -> DecorrelatedJittered:
    _check_range("jittered backoff", min_ms, max_ms)
    return DecorrelatedJittered(min_ms / 1000.0, max_ms / 1000.0, rng)


def equal_jittered(min_ms: float, max_ms: float, rng: random.Random) -> EqualJittered:
    _check_range("equal-jittered backoff", min_ms, max_ms)
    return EqualJittered(min_ms / 1000.0, max_ms / 1000.0, rng)


def _check_range(what: str, min_ms: float, max_ms: float) -> None:
    if min_ms <= 0:
        raise BackoffConfigError(f"{what}: minMs must be > 0, got {min_ms}")
    if max_ms < min_ms:
        raise BackoffConfigError(f"{what}: maxMs ({max_ms}) must be >= minMs ({min_ms})")


def backoff_from_config(cfg: Mapping[str, Any], rng: random.Random, where: str = "backoff") -> Backoff:
    """Build a backoff from a Linkerd `backoff` mapping; errors name `where` and the fix."""
    kind = cfg.get("kind")
    if kind == "constant":
        _only_keys(cfg, {"kind", "ms"}, where)
        ms = cfg.get("ms", 0)
        _number(ms, f"{where}.ms")
        if ms < 0:
            raise BackoffConfigError(f"{where}.ms: must be >= 0, got {ms}")
        return Constant(ms / 1000.0)
    if kind == "jittered":
        _only_keys(cfg, {"kind", "minMs", "maxMs"}, where)
        for key in ("minMs", "maxMs"):
            if key not in cfg:
                raise BackoffConfigError(
                    f"{where}.{key}: required for kind 'jittered'; set it in milliseconds"
                )
            _number(cfg[key], f"{where}.{key}")
        min_ms, max_ms = cfg["minMs"], cfg["maxMs"]
        if min_ms <= 0:
            raise BackoffConfigError(f"{where}.minMs: must be > 0, got {min_ms}")
        if max_ms < min_ms:
            raise BackoffConfigError(f"{where}.maxMs: must be >= minMs ({min_ms}), got {max_ms}")
        return DecorrelatedJittered(min_ms / 1000.0, max_ms / 1000.0, rng)
    raise BackoffConfigError(
        f"{where}.kind: unknown backoff kind {kind!r}; expected one of: constant, jittered"
    )


def _only_keys(cfg: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(cfg) - allowed)
    if extra:
        raise BackoffConfigError(
            f"{where}: unknown key {extra[0]!r} for kind {cfg.get('kind')!r}; allowed keys: "
            + ", ".join(sorted(allowed))
        )


def _number(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BackoffConfigError(f"{where}: expected a number, got {value!r}")
