"""Failure accrual: take failing endpoints out of the balancer, probe them back in.

Theory of operation
-------------------
Each endpoint of a client has a small state machine, written out as one table, `TRANSITIONS`,
mapping `(State, Input) -> (Effect, State)`:

* `ALIVE` — traffic flows. Every response is recorded by the *policy*; when the policy says the
  endpoint has failed too much, the failure arrives as `FAILURE_TRIP` and the endpoint is
  marked `DEAD` (effect `REMOVE`: counted in `removals`, the first backoff delay starts).
* `DEAD` — the balancer skips it until the backoff delay has elapsed (`BACKOFF_ELAPSED`, fed
  lazily whenever the tracker looks at the clock), then it becomes `PROBE_OPEN`.
* `PROBE_OPEN` — exactly one request may go; dispatching it (`REQUEST`) moves to `PROBE_CLOSED`
  (effect `PROBE`, counted in `probes`).
* `PROBE_CLOSED` — waiting for the probe. A success revives the endpoint (`REVIVE`: counted in
  `revivals`, the policy and the backoff stream reset); a failure sends it back to `DEAD` for the
  *next* delay of the backoff stream (`REMOVE_AGAIN`).

Responses of requests that were already in flight when the endpoint died are `IGNORE`d while it is
`DEAD`/`PROBE_OPEN`; any success seen while probing revives it. A pair missing from the table is a
bug and raises `AccrualStateError`.

Policies (config `failureAccrual.kind`, Linkerd 1 names and keys):

* `io.l5d.consecutiveFailures {failures: 5}` (default);
* `io.l5d.successRate {successRate, requests}` — an exponentially weighted success rate over about
  `requests` requests; trips below `successRate` once `requests` responses were seen;
* `io.l5d.successRateWindowed {successRate, window}` — the success rate over the last `window`
  seconds; trips below `successRate` once at least 5 responses are in the window;
* `none` — never trips.

Each takes `backoff` (see `hostproxy.backoff`); the default is equal-jittered 5 s .. 300 s.
All time comes from the injected `now()` (seconds, monotonic).
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from hostproxy.backoff import Backoff, BackoffConfigError, backoff_from_config, equal_jittered
from hostproxy.budget import WindowedAdder

__all__ = [
    "TRANSITIONS",
    "AccrualConfigError",
    "AccrualStateError",
    "ConsecutiveFailures",
    "Effect",
    "EndpointAccrual",
    "FailureAccrual",
    "Input",
    "NoAccrual",
    "Policy",
    "State",
    "SuccessRate",
    "SuccessRateWindowed",
    "accrual_from_config",
    "step",
]


class State(enum.Enum):
    ALIVE = "alive"
    DEAD = "dead"
    PROBE_OPEN = "probe_open"
    PROBE_CLOSED = "probe_closed"


class Input(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"  # a failure the policy tolerates (or any failure outside ALIVE)
    FAILURE_TRIP = "failure_trip"  # a failure after which the policy says: mark dead
    BACKOFF_ELAPSED = "backoff_elapsed"
    REQUEST = "request"  # a request was dispatched to the endpoint


class Effect(enum.Enum):
    NONE = "none"
    IGNORE = "ignore"
    REMOVE = "remove"
    REMOVE_AGAIN = "remove_again"
    OPEN_PROBE = "open_probe"
    PROBE = "probe"
    REVIVE = "revive"


class AccrualStateError(RuntimeError):
    """An input arrived in a state that has no transition for it: a bug in the caller."""


S, In, E = State, Input, Effect
TRANSITIONS: dict[tuple[State, Input], tuple[Effect, State]] = {
    (S.ALIVE, In.SUCCESS): (E.NONE, S.ALIVE),
    (S.ALIVE, In.FAILURE): (E.NONE, S.ALIVE),
    (S.ALIVE, In.FAILURE_TRIP): (E.REMOVE, S.DEAD),
    (S.ALIVE, In.REQUEST): (E.NONE, S.ALIVE),
    (S.DEAD, In.SUCCESS): (E.IGNORE, S.DEAD),
    (S.DEAD, In.FAILURE): (E.IGNORE, S.DEAD),
    (S.DEAD, In.FAILURE_TRIP): (E.IGNORE, S.DEAD),
    (S.DEAD, In.BACKOFF_ELAPSED): (E.OPEN_PROBE, S.PROBE_OPEN),
    (S.PROBE_OPEN, In.SUCCESS): (E.REVIVE, S.ALIVE),
    (S.PROBE_OPEN, In.FAILURE): (E.IGNORE, S.PROBE_OPEN),
    (S.PROBE_OPEN, In.FAILURE_TRIP): (E.IGNORE, S.PROBE_OPEN),
    (S.PROBE_OPEN, In.REQUEST): (E.PROBE, S.PROBE_CLOSED),
    (S.PROBE_CLOSED, In.SUCCESS): (E.REVIVE, S.ALIVE),
    (S.PROBE_CLOSED, In.FAILURE): (E.REMOVE_AGAIN, S.DEAD),
    (S.PROBE_CLOSED, In.FAILURE_TRIP): (E.REMOVE_AGAIN, S.DEAD),
}
del S, In, E

# Inputs that leave an ALIVE endpoint ALIVE with no effect: the per-request case, answered without the
# table lookup (hashing enum pairs costs more than the rest of an update; a tuple, since `in` on it
# compares by identity without hashing). Derived from the table.
_ALIVE_STAYS = tuple(
    inp
    for (state, inp), (effect, nxt) in TRANSITIONS.items()
    if state is State.ALIVE and effect is Effect.NONE and nxt is State.ALIVE
)


def step(state: State, inp: Input) -> tuple[Effect, State]:
    """One transition of the table; a missing pair raises `AccrualStateError`."""
    try:
        return TRANSITIONS[(state, inp)]
    except KeyError:
        raise AccrualStateError(
            f"failure accrual: no transition for input {inp.value!r} in state {state.value!r}"
        ) from None


class AccrualConfigError(ValueError):
    """A failureAccrual config is invalid; the message names the key and the fix."""


# --- policies -------------------------------------------------------------------------------------


class Policy:
    """Decides, response by response, whether an ALIVE endpoint has failed too much."""

    def record_success(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def record_failure(self) -> bool:  # pragma: no cover - abstract
        """Record a failure; True means: mark the endpoint dead now."""
        raise NotImplementedError

    def revived(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class ConsecutiveFailures(Policy):
    def __init__(self, failures: int = 5) -> None:
        self.failures = failures
        self.consecutive = 0

    def record_success(self) -> None:
        self.consecutive = 0

    def record_failure(self) -> bool:
        self.consecutive += 1
        return self.consecutive >= self.failures

    def revived(self) -> None:
        self.consecutive = 0


class SuccessRate(Policy):
    """An exponentially weighted success rate; each response has weight `1 - exp(-1/requests)`, but the
    first (after a start or a revival), which is the rate (Finagle's `Ema` takes its first sample as it
    is: starting from 1.0 instead kept a third of a perfect record in the rate after `requests`
    responses, and an endpoint failing every request was taken out later than Linkerd takes it out)."""

    def __init__(self, success_rate: float, requests: int) -> None:
        self.success_rate = success_rate
        self.requests = requests
        self._keep = math.exp(-1.0 / requests)
        self.rate = 1.0
        self.seen = 0

    def _record(self, x: float) -> None:
        self.rate = x if self.seen == 0 else self.rate * self._keep + x * (1 - self._keep)
        self.seen += 1

    def record_success(self) -> None:
        self._record(1.0)

    def record_failure(self) -> bool:
        self._record(0.0)
        return self.seen >= self.requests and self.rate < self.success_rate

    def revived(self) -> None:
        self.rate = 1.0
        self.seen = 0


class SuccessRateWindowed(Policy):
    """The success rate over the last `window_s` seconds (to a tenth of the window)."""

    MIN_REQUESTS = 5

    def __init__(self, success_rate: float, window_s: float, now: Callable[[], float]) -> None:
        self.success_rate = success_rate
        self.window_s = window_s
        self._now = now
        self._reset()

    def _reset(self) -> None:
        self._ok = WindowedAdder(self.window_s, 10, self._now)
        self._total = WindowedAdder(self.window_s, 10, self._now)

    def rate(self) -> float:
        total = self._total.sum()
        return self._ok.sum() / total if total else 1.0

    def record_success(self) -> None:
        self._ok.add(1)
        self._total.add(1)

    def record_failure(self) -> bool:
        self._total.add(1)
        return self._total.sum() >= self.MIN_REQUESTS and self.rate() < self.success_rate

    def revived(self) -> None:
        self._reset()


class NoAccrual(Policy):
    def record_success(self) -> None:
        pass

    def record_failure(self) -> bool:
        return False

    def revived(self) -> None:
        pass


_ALIVE = State.ALIVE
_NONE = Effect.NONE
assert Input.REQUEST in _ALIVE_STAYS and Input.SUCCESS in _ALIVE_STAYS


# --- per-endpoint tracker -------------------------------------------------------------------------


class EndpointAccrual:
    """The state machine of one endpoint plus its policy and backoff stream."""

    def __init__(self, policy: Policy, backoff: Backoff, now: Callable[[], float]) -> None:
        self.policy = policy
        self._backoff = backoff
        self._stream: Iterator[float] = backoff.stream()
        self._now = now
        self.state = State.ALIVE
        self.dead_until = 0.0
        self.dead_since: float | None = None
        self.removals = 0
        self.probes = 0
        self.revivals = 0
        self.removed_for_s = 0.0
        self.last_delay_s = 0.0

    def _feed(self, inp: Input) -> Effect:
        if self.state is State.ALIVE and inp in _ALIVE_STAYS:
            return Effect.NONE  # the table's answer for every request and response of a healthy endpoint
        effect, nxt = step(self.state, inp)
        now = self._now()
        if effect in (Effect.REMOVE, Effect.REMOVE_AGAIN):
            if effect is Effect.REMOVE:
                self.removals += 1
                self.dead_since = now
            self.last_delay_s = next(self._stream)
            self.dead_until = now + self.last_delay_s
            # Counted when marked dead, for the delay marked (as Finagle's `removed_for_ms`): an
            # endpoint that stays dead through failed probes shows in it during the outage, not after.
            self.removed_for_s += self.last_delay_s
        elif effect is Effect.PROBE:
            self.probes += 1
        elif effect is Effect.REVIVE:
            self.revivals += 1
            self.dead_since = None
            self.policy.revived()
            self._stream = self._backoff.stream()
        self.state = nxt
        return effect

    def _tick(self) -> None:
        if self.state is State.DEAD and self._now() >= self.dead_until:
            self._feed(Input.BACKOFF_ELAPSED)

    def available(self) -> bool:
        """Whether the balancer may send to this endpoint now (ALIVE, or a probe is open)."""
        self._tick()
        return self.state in (State.ALIVE, State.PROBE_OPEN)

    def on_request(self) -> Effect:
        self._tick()
        if self.state is State.DEAD or self.state is State.PROBE_CLOSED:
            # The balancer raced with a state change; the request goes, nothing changes.
            return Effect.IGNORE
        return self._feed(Input.REQUEST)

    def on_response(self, ok: bool) -> Effect:
        self._tick()
        if ok:
            if self.state is State.ALIVE:
                self.policy.record_success()
            return self._feed(Input.SUCCESS)
        if self.state is State.ALIVE:
            return self._feed(Input.FAILURE_TRIP if self.policy.record_failure() else Input.FAILURE)
        return self._feed(Input.FAILURE)

    def snapshot(self) -> dict[str, Any]:
        self._tick()
        out: dict[str, Any] = {"state": self.state.value}
        if self.state is State.DEAD:
            out["retry_in_ms"] = max(0, round((self.dead_until - self._now()) * 1000))
        return out


# --- per-client accrual ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AccrualConfig:
    kind: str
    make_policy: Callable[[Callable[[], float]], Policy]
    backoff: Backoff
    params: Mapping[str, Any]


class FailureAccrual:
    """Failure accrual for every endpoint of one client, keyed by endpoint key.

    The balancer asks `available(key)`; the client calls `on_request(key)` when it dispatches and
    `on_response(key, ok)` with the classifier's verdict. `retain(keys)` drops endpoints that left.
    """

    def __init__(self, config: AccrualConfig, now: Callable[[], float]) -> None:
        self.config = config
        self._now = now
        self._eps: dict[str, EndpointAccrual] = {}
        self.removals = 0
        self.probes = 0
        self.revivals = 0
        self._removed_for_s_gone = 0.0

    def _ep(self, key: str) -> EndpointAccrual:
        ep = self._eps.get(key)
        if ep is None:
            ep = EndpointAccrual(self.config.make_policy(self._now), self.config.backoff, self._now)
            self._eps[key] = ep
        return ep

    # The per-request calls answer a known, ALIVE endpoint without going through its state machine:
    # ALIVE never changes by time (only DEAD does, in `_tick`), and a request or a success leaves it
    # ALIVE with no effect (`_ALIVE_STAYS`); the answers are exactly the machine's.

    def available(self, key: str) -> bool:
        ep = self._eps.get(key)
        return True if ep is None or ep.state is _ALIVE else ep.available()

    def on_request(self, key: str) -> Effect:
        ep = self._eps.get(key)
        if ep is not None and ep.state is _ALIVE:
            return _NONE
        effect = self._ep(key).on_request()
        if effect is Effect.PROBE:
            self.probes += 1
        return effect

    def on_response(self, key: str, ok: bool) -> Effect:
        ep = self._eps.get(key)
        if ok and ep is not None and ep.state is _ALIVE:
            ep.policy.record_success()
            return _NONE
        effect = self._ep(key).on_response(ok)
        if effect is Effect.REMOVE:
            self.removals += 1
        elif effect is Effect.REVIVE:
            self.revivals += 1
        return effect

    def probing(self, key: str) -> bool:
        """Whether ``key``'s probe is out (``PROBE_CLOSED``: the one request is waiting for its answer)."""
        ep = self._eps.get(key)
        return ep is not None and ep.state is State.PROBE_CLOSED

    def eject(self, key: str) -> Effect:
        """Remove ``key`` at once, whatever its policy says (the client's ``failFast``: connecting to it
        failed). It comes back as any removed endpoint does: a probe after its backoff."""
        ep = self._ep(key)
        if ep.state is not State.ALIVE:
            return Effect.NONE
        effect = ep._feed(Input.FAILURE_TRIP)
        if effect is Effect.REMOVE:
            self.removals += 1
        return effect

    def on_interrupted(self, key: str) -> Effect:
        """A request to ``key`` ended without an answer (cancelled: a total timeout, the caller gone).
        It counts for nothing, except that a probe in flight is over: it counts as a failed probe, so
        the endpoint is probed again after its next backoff instead of waiting for an answer forever."""
        ep = self._eps.get(key)
        if ep is None or ep.state is not State.PROBE_CLOSED:
            return Effect.NONE
        return ep.on_response(False)

    def retain(self, keys: Iterable[str]) -> None:
        keep = set(keys)
        for key in [k for k in self._eps if k not in keep]:
            self._removed_for_s_gone += self._eps.pop(key).removed_for_s

    def removed_for_ms(self) -> int:
        """Total time endpoints were marked dead for: each removal and each failed probe adds the
        delay it marks the endpoint dead for, at once (Linkerd's `removed_for_ms`)."""
        return round((self._removed_for_s_gone + sum(e.removed_for_s for e in self._eps.values())) * 1000)

    def statistics(self) -> dict[str, Any]:
        return {
            "removals": self.removals,
            "probes": self.probes,
            "revivals": self.revivals,
            "removed_for_ms": self.removed_for_ms(),
        }

    def state(self) -> dict[str, Any]:
        return {
            "kind": self.config.kind,
            "params": dict(self.config.params),
            "backoff": self.config.backoff.describe(),
            "endpoints": {k: e.snapshot() for k, e in sorted(self._eps.items())},
            **self.statistics(),
        }

    def __repr__(self) -> str:
        dead = sum(1 for e in self._eps.values() if not e.available())
        return f"<FailureAccrual {self.config.kind} endpoints={len(self._eps)} unavailable={dead}>"


ACCRUAL_KINDS = ("io.l5d.consecutiveFailures", "io.l5d.successRate", "io.l5d.successRateWindowed", "none")


def accrual_from_config(
    cfg: Mapping[str, Any] | None, rng: random.Random, where: str = "failureAccrual"
) -> AccrualConfig:
    """Build an `AccrualConfig` from a Linkerd `failureAccrual` mapping (None: the default)."""
    cfg = dict(cfg or {"kind": "io.l5d.consecutiveFailures"})
    kind = cfg.get("kind")
    if "backoff" in cfg:
        if not isinstance(cfg["backoff"], Mapping):
            raise AccrualConfigError(
                f"{where}.backoff: expected a mapping with a 'kind', got {cfg['backoff']!r}"
            )
        try:
            backoff = backoff_from_config(cfg["backoff"], rng, f"{where}.backoff")
        except BackoffConfigError as e:
            raise AccrualConfigError(str(e)) from None
    else:
        backoff = equal_jittered(5000, 300000, rng)

    def number(key: str, default: float | None, lo: float, hi: float) -> float:
        if key not in cfg:
            if default is None:
                raise AccrualConfigError(f"{where}.{key}: required for kind {kind!r}")
            return default
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            raise AccrualConfigError(f"{where}.{key}: expected a number in [{lo}, {hi}], got {v!r}")
        return float(v)

    def only(*keys: str) -> None:
        allowed = {"kind", "backoff", *keys}
        extra = sorted(set(cfg) - allowed)
        if extra:
            raise AccrualConfigError(
                f"{where}: unknown key {extra[0]!r} for kind {kind!r}; allowed keys: "
                + ", ".join(sorted(allowed))
            )

    if kind == "io.l5d.consecutiveFailures":
        only("failures")
        failures = int(number("failures", 5, 1, 1_000_000))
        return AccrualConfig(kind, lambda now: ConsecutiveFailures(failures), backoff, {"failures": failures})
    if kind == "io.l5d.successRate":
        only("successRate", "requests")
        sr = number("successRate", None, 0, 1)
        requests = int(number("requests", None, 1, 1_000_000))
        return AccrualConfig(
            kind, lambda now: SuccessRate(sr, requests), backoff, {"successRate": sr, "requests": requests}
        )
    if kind == "io.l5d.successRateWindowed":
        only("successRate", "window")
        sr = number("successRate", None, 0, 1)
        window = number("window", None, 1, 86400)
        return AccrualConfig(
            kind,
            lambda now: SuccessRateWindowed(sr, window, now),
            backoff,
            {"successRate": sr, "window": window},
        )
    if kind == "none":
        only()
        return AccrualConfig(kind, lambda now: NoAccrual(), backoff, {})
    raise AccrualConfigError(
        f"{where}.kind: unknown failure accrual kind {kind!r}; expected one of: " + ", ".join(ACCRUAL_KINDS)
    )
