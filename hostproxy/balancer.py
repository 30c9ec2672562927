"""Load balancers: decide which endpoint gets the next request.

Theory of operation
-------------------
A balancer is a synchronous "decide" step: the async client calls `pick()`, then does the I/O
itself, bracketing it with `on_start(ep)` and `on_finish(ep, latency_s, ok)` so the balancer can
track load (outstanding requests) and latency. No balancer opens sockets, sleeps or spawns tasks;
time and randomness are injected (`now()` in monotonic seconds, a `random.Random`).

`update(infos)` replaces the endpoint set. Endpoints are keyed by `EndpointInfo.key`; an endpoint
that stays keeps its `Endpoint` object and with it its load and latency history, only its weight
and metadata are refreshed. A removed endpoint is never picked again; its object stays valid, so
`on_finish` for a request in flight is harmless.

`available(key)` (usually `FailureAccrual.available`) is consulted at pick time: an unavailable
endpoint is never returned. When every endpoint is unavailable (or there are none), `pick()`
returns None and the caller answers with "no endpoints available" or asks `pick_ignoring_availability()`,
which picks as if `available` said yes to every endpoint still in the set.

Weights (from namers, e.g. `host port * weight`) are honoured by every kind: random draws (and ties
between equally loaded endpoints) are proportional to weight, and loads are compared divided by weight
(weight × inverse load). Idle endpoints therefore get their weight's share under `p2c`, `heap`,
`roundRobin` and `aperture`; under `ewma`, whose load is a latency cost, weights act as capacities:
with equal latencies a heavier endpoint takes all the traffic it serves faster, weighted, than a
lighter one, and the lighter one gets traffic once the heavier one's cost or queue grows. (Linkerd
splits traffic between weight classes first and balances inside each, so its shares hold for every
kind.) An endpoint of weight 0 gets traffic only when no other is available; endpoints all of weight
0 share it, balanced by load as endpoints of equal weight are.

Kinds (config `loadBalancer.kind`, Linkerd 1 names, keys and defaults):

* `p2c {maxEffort: 5}` — power of two choices: draw two endpoints, take the less loaded
  (outstanding requests / weight). Up to `maxEffort` draws look for an available pair; after that a
  full scan picks the least loaded available endpoint (counted in `max_effort_exhausted`).
* `ewma {maxEffort: 5, decayTimeMs: 10000}` — p2c whose load is a peak-EWMA latency cost times
  (outstanding + 1); the cost follows latency spikes at once and decays over `decayTimeMs`.
* `aperture {maxEffort: 5, smoothWindowMs: 5000, lowLoad: 0.5, highLoad: 2.0, minAperture: 1}` —
  p2c over the first `aperture` endpoints of a ring shuffled once with the rng; the aperture
  grows while the smoothed load (requests in flight), divided by the aperture, is above `highLoad`
  and shrinks below `lowLoad`.
* `heap` — the least loaded available endpoint (a linear scan; endpoint sets per client are small).
* `roundRobin {maxEffort: 5}` — smooth weighted round robin over the available endpoints.

`WeightedChoice` is the pure weighted draw also used to choose among the branches of a bound union
(`0.9 * /a & 0.1 * /b`): probability `w_i / Σw`, uniform when `Σw == 0`.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "BALANCER_KINDS",
    "ApertureBalancer",
    "Balancer",
    "BalancerConfigError",
    "Endpoint",
    "EndpointInfo",
    "EwmaBalancer",
    "HeapBalancer",
    "P2CBalancer",
    "RoundRobinBalancer",
    "WeightedChoice",
    "balancer_from_config",
]


class BalancerConfigError(ValueError):
    """A loadBalancer config (or endpoint set) is invalid; the message names the key and the fix."""


class WeightedChoice:
    """Draw an index with probability `weights[i] / sum(weights)`; uniform when the sum is 0."""

    __slots__ = ("_cum", "_weights", "_total", "_n", "_rng")

    def __init__(self, weights: Sequence[float], rng: random.Random) -> None:
        for i, w in enumerate(weights):
            if not (w >= 0 and math.isfinite(w)):
                raise BalancerConfigError(f"weight #{i} is {w!r}: weights must be finite and >= 0")
        self._n = len(weights)
        self._weights = list(weights)
        self._cum = list(itertools.accumulate(weights))
        self._total = self._cum[-1] if self._cum else 0.0
        if self._total == math.inf:
            # Finite weights whose sum overflows (two of 1e308): the same proportions, scaled down, or
            # every draw would land past the last finite sum, on the last weight.
            top = max(weights)
            self._weights = [w / top for w in weights]
            self._cum = list(itertools.accumulate(self._weights))
            self._total = self._cum[-1]
        self._rng = rng

    def __len__(self) -> int:
        return self._n

    def pick(self) -> int:
        if self._n == 0:
            raise IndexError("WeightedChoice.pick: no weights to choose from")
        if self._total <= 0:
            return self._rng.randrange(self._n)
        x = self._rng.random() * self._total
        if self._n == 1:
            return 0  # the draw is still made: the shared rng's sequence does not depend on this
        i = bisect.bisect_right(self._cum, x)
        return min(i, self._n - 1)

    def pick_other(self, i: int) -> int:
        """An index other than ``i`` (there must be two weights at least), drawn in proportion to the
        other weights: one of weight 0 only when every other weight is 0 (then uniformly)."""
        n, weights = self._n, self._weights
        rest = self._total - weights[i]
        if rest > 0:
            x = self._rng.random() * rest
            below = self._cum[i] - weights[i]  # the sum of the weights before i
            if x >= below:
                x += weights[i]
            j = min(bisect.bisect_right(self._cum, x), n - 1)
            if j != i and weights[j] > 0:
                return j
            # (rounding put the draw on i or past the end: the last other endpoint of some weight)
            for j in range(n - 1, -1, -1):
                if j != i and weights[j] > 0:
                    return j
        return (i + 1 + self._rng.randrange(n - 1)) % n


@dataclass(frozen=True)
class EndpointInfo:
    """An endpoint as discovery reports it: `key` (e.g. "10.0.0.7:8080"), weight, metadata."""

    key: str
    weight: float = 1.0
    meta: Mapping[str, Any] = field(default_factory=dict)


class Endpoint:
    """A balancer's live view of one endpoint; `pick()` returns these."""

    __slots__ = (
        "key",
        "info",
        "weight",
        "pending",
        "cost",
        "stamp",
        "requests",
        "failures",
        "removed",
        "rr_current",
    )

    def __init__(self, info: EndpointInfo, now: float) -> None:
        self.key = info.key
        self.info = info
        self.weight = info.weight
        self.pending = 0
        self.cost = 0.0  # peak-EWMA latency, seconds (ewma only)
        self.stamp = now
        self.requests = 0
        self.failures = 0
        self.removed = False
        self.rr_current = 0.0  # smooth weighted round robin accumulator

    def __repr__(self) -> str:
        return f"<Endpoint {self.key} weight={self.weight} pending={self.pending}>"


#: The weighted load of an idle endpoint of weight 0 (``Balancer._weighted_load``).
_ZERO_WEIGHT_LOAD = 1e250


def _always_available(key: str) -> bool:
    return True


class Balancer:
    """The shared machinery: endpoint set, availability, counters, admin views."""

    kind: ClassVar[str] = "?"

    def __init__(
        self,
        *,
        rng: random.Random,
        now: Callable[[], float],
        available: Callable[[str], bool] | None = None,
        max_effort: int = 5,
    ) -> None:
        if max_effort < 1:
            raise BalancerConfigError(f"maxEffort must be >= 1, got {max_effort}")
        self._rng = rng
        self._now = now
        self._available = available or (lambda key: True)
        self.max_effort = max_effort
        self._nodes: list[Endpoint] = []
        self._by_key: dict[str, Endpoint] = {}
        self._choice = WeightedChoice([], rng)
        self.adds = 0
        self.removes = 0
        self.updates = 0
        self.max_effort_exhausted = 0

    # -- endpoint set --------------------------------------------------------------------------

    def update(self, endpoints: Sequence[EndpointInfo]) -> None:
        seen: dict[str, Endpoint] = {}
        now = self._now()
        for info in endpoints:
            if not (info.weight >= 0 and math.isfinite(info.weight)):
                raise BalancerConfigError(
                    f"endpoint {info.key}: weight {info.weight!r} is invalid; weights must be finite and >= 0"
                )
            if info.key in seen:
                continue
            node = self._by_key.get(info.key)
            if node is None:
                node = Endpoint(info, now)
                self.adds += 1
            else:
                node.info = info
                node.weight = info.weight
            seen[info.key] = node
        for key, node in self._by_key.items():
            if key not in seen:
                node.removed = True
                self.removes += 1
        self._nodes = list(seen.values())
        self._by_key = seen
        self._choice = WeightedChoice([n.weight for n in self._nodes], self._rng)
        self.updates += 1
        self._rebuilt()

    def _rebuilt(self) -> None:
        """Hook for kinds that keep derived structures."""

    def endpoints(self) -> list[Endpoint]:
        return list(self._nodes)

    def is_available(self, ep: Endpoint) -> bool:
        return not ep.removed and self._available(ep.key)

    def any_available(self) -> bool:
        """Whether some endpoint of the set is available (Finagle's balancer status ``Open``)."""
        return any(self.is_available(ep) for ep in self._nodes)

    def pick_ignoring_availability(self) -> Endpoint | None:
        """`pick()` as if `available` said yes to every endpoint (all of them were marked dead)."""
        available, self._available = self._available, _always_available
        try:
            return self.pick()
        finally:
            self._available = available

    # -- load ----------------------------------------------------------------------------------

    def load(self, ep: Endpoint) -> float:
        """The endpoint's load before weighting; kinds override."""
        return float(ep.pending)

    def _weighted_load(self, ep: Endpoint) -> float:
        load = self.load(ep)
        if ep.weight > 0:
            return load / ep.weight
        # Weight 0: above any endpoint of weight (whose load / weight stays far below 1e250), and still
        # ordered by load among endpoints of weight 0 (when all have weight 0 they are balanced by load;
        # one infinity for every loaded one had the balancer draw between them blindly).
        return _ZERO_WEIGHT_LOAD * (1.0 + load)

    def on_start(self, ep: Endpoint) -> None:
        ep.pending += 1
        ep.requests += 1

    def on_finish(self, ep: Endpoint, latency_s: float, ok: bool) -> None:
        ep.pending = max(0, ep.pending - 1)
        if not ok:
            ep.failures += 1

    # -- picking -------------------------------------------------------------------------------

    def pick(self) -> Endpoint | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _p2c(self, nodes: Sequence[Endpoint], choice: WeightedChoice) -> Endpoint | None:
        """Power of two choices over ``nodes``."""
        n = len(nodes)
        if n == 0:
            return None
        if n == 1:
            # The pair is always (a, a): a if it is available, else draw again (each draw is still made:
            # the shared rng's sequence does not depend on the number of endpoints).
            a = nodes[0]
            for _ in range(self.max_effort):
                choice.pick()
                if self.is_available(a):
                    return a
            self.max_effort_exhausted += 1
            return self._least_loaded(nodes)
        for _ in range(self.max_effort):
            ai = choice.pick()
            a = nodes[ai]
            bi = choice.pick()
            if bi == ai:
                # The second of the pair is drawn again among the others, by weight too: an endpoint of
                # weight 0 is not one of the pair while another has weight (it would be taken whenever
                # the first is unavailable).
                bi = choice.pick_other(ai)
            b = nodes[bi]
            ok_a, ok_b = self.is_available(a), self.is_available(b)
            if ok_a and ok_b:
                return a if self._weighted_load(a) <= self._weighted_load(b) else b
            if ok_a:
                return a
            if ok_b:
                return b
        self.max_effort_exhausted += 1
        return self._least_loaded(nodes)

    def _least_loaded(self, nodes: Sequence[Endpoint]) -> Endpoint | None:
        """The available endpoint of least weighted load; a tie is drawn in proportion to weight (all
        idle: each endpoint its weight's share)."""
        tied: list[Endpoint] = []
        best_load = math.inf
        for ep in nodes:
            if not self.is_available(ep):
                continue
            load = self._weighted_load(ep)
            if not tied or load < best_load:
                tied, best_load = [ep], load
            elif load == best_load:
                tied.append(ep)
        if len(tied) <= 1:
            return tied[0] if tied else None
        total = sum(ep.weight for ep in tied)
        if total <= 0:
            return tied[self._rng.randrange(len(tied))]
        x = self._rng.random() * total
        for ep in tied:
            x -= ep.weight
            if x < 0:
                return ep
        return tied[-1]

    # -- admin ---------------------------------------------------------------------------------

    def _endpoint_state(self, ep: Endpoint) -> dict[str, Any]:
        return {
            "key": ep.key,
            "weight": ep.weight,
            "load": ep.pending,
            "status": "open" if self.is_available(ep) else "busy",
            "requests": ep.requests,
            "failures": ep.failures,
            "meta": dict(ep.info.meta),
        }

    def statistics(self) -> dict[str, Any]:
        nodes = self._nodes
        available = sum(1 for ep in nodes if self.is_available(ep))
        return {
            "size": len(nodes),
            "available": available,
            "busy": len(nodes) - available,
            "load": sum(ep.pending for ep in nodes),
            "meanweight": (sum(ep.weight for ep in nodes) / len(nodes)) if nodes else 0.0,
            "adds": self.adds,
            "removes": self.removes,
            "updates": self.updates,
            "max_effort_exhausted": self.max_effort_exhausted,
        }

    def state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "endpoints": [self._endpoint_state(ep) for ep in self._nodes],
            **self.statistics(),
        }

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<{type(self).__name__} size={s['size']} available={s['available']} load={s['load']}>"


class P2CBalancer(Balancer):
    kind = "p2c"

    def pick(self) -> Endpoint | None:
        return self._p2c(self._nodes, self._choice)


class EwmaBalancer(Balancer):
    """p2c with a peak-EWMA latency cost: load = cost × (outstanding + 1)."""

    kind = "ewma"
    PENALTY = 1e9  # the load of an endpoint with requests in flight and no latency measured yet

    def __init__(self, *, decay_time_ms: float = 10000, **kw: Any) -> None:
        super().__init__(**kw)
        if decay_time_ms <= 0:
            raise BalancerConfigError(f"decayTimeMs must be > 0, got {decay_time_ms}")
        self.tau = decay_time_ms / 1000.0

    def cost(self, ep: Endpoint) -> float:
        """The latency cost decayed to now (an idle endpoint drifts back toward 0)."""
        dt = max(0.0, self._now() - ep.stamp)
        return ep.cost * math.exp(-dt / self.tau)

    def load(self, ep: Endpoint) -> float:
        cost = self.cost(ep)
        if cost == 0.0 and ep.pending:
            return self.PENALTY + ep.pending
        return cost * (ep.pending + 1)

    def on_finish(self, ep: Endpoint, latency_s: float, ok: bool) -> None:
        super().on_finish(ep, latency_s, ok)
        now = self._now()
        rtt = max(0.0, latency_s)
        if rtt > ep.cost:
            ep.cost = rtt
        else:
            w = math.exp(-max(0.0, now - ep.stamp) / self.tau)
            ep.cost = ep.cost * w + rtt * (1 - w)
        ep.stamp = now

    def pick(self) -> Endpoint | None:
        return self._p2c(self._nodes, self._choice)

    def _endpoint_state(self, ep: Endpoint) -> dict[str, Any]:
        out = super()._endpoint_state(ep)
        out["ewma_ms"] = round(self.cost(ep) * 1000, 3)
        return out


class HeapBalancer(Balancer):
    """The least loaded available endpoint (outstanding / weight); ties broken at random."""

    kind = "heap"

    def pick(self) -> Endpoint | None:
        return self._least_loaded(self._nodes)


class RoundRobinBalancer(Balancer):
    """Smooth weighted round robin over the available endpoints (each gets its weight's share)."""

    kind = "roundRobin"

    def pick(self) -> Endpoint | None:
        total = 0.0
        best: Endpoint | None = None
        live = [ep for ep in self._nodes if self.is_available(ep)]
        if not live:
            return None
        # Endpoints of weight 0 take turns only when no other is available: among others they would
        # still be taken when the others' accumulators went below 0 (after one of them left the turn).
        weighted = [ep for ep in live if ep.weight > 0]
        zero = not weighted
        if weighted:
            live = weighted
        for ep in live:
            w = 1.0 if zero else ep.weight
            ep.rr_current += w
            total += w
            if best is None or ep.rr_current > best.rr_current:
                best = ep
        assert best is not None
        best.rr_current -= total
        return best


class ApertureBalancer(Balancer):
    """p2c inside a window (the aperture) of a shuffled ring; the window follows the load."""

    kind = "aperture"

    def __init__(
        self,
        *,
        smooth_window_ms: float = 5000,
        low_load: float = 0.5,
        high_load: float = 2.0,
        min_aperture: int = 1,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        if smooth_window_ms <= 0:
            raise BalancerConfigError(f"smoothWindowMs must be > 0, got {smooth_window_ms}")
        if not 0 <= low_load < high_load:
            raise BalancerConfigError(f"lowLoad ({low_load}) must be >= 0 and below highLoad ({high_load})")
        if min_aperture < 1:
            raise BalancerConfigError(f"minAperture must be >= 1, got {min_aperture}")
        self.smooth_s = smooth_window_ms / 1000.0
        self.low_load = low_load
        self.high_load = high_load
        self.min_aperture = min_aperture
        self.aperture = min_aperture
        self._ring: list[Endpoint] = []
        self._smoothed = 0.0
        self._smoothed_at = self._now()
        self._outstanding = 0
        self.expands = 0
        self.contracts = 0
        self._window_choice = WeightedChoice([], self._rng)
        self._window: list[Endpoint] = []

    def _rebuilt(self) -> None:
        # Keep the ring order of endpoints that stay; insert new ones at random positions.
        keep = [ep for ep in self._ring if not ep.removed]
        present = {ep.key for ep in keep}
        for ep in self._nodes:
            if ep.key not in present:
                keep.insert(self._rng.randrange(len(keep) + 1), ep)
        # Endpoints of weight 0 go after the others, so the aperture takes them only when it must (a
        # window of weight-0 endpoints alone would send them everything).
        self._ring = [ep for ep in keep if ep.weight > 0] + [ep for ep in keep if not ep.weight > 0]
        self._outstanding = sum(ep.pending for ep in keep)
        self._clamp()
        self._refresh_window()

    def _clamp(self) -> None:
        n = len(self._ring)
        self.aperture = max(min(self.aperture, n), min(self.min_aperture, n))

    def _refresh_window(self) -> None:
        self._window = self._ring[: self.aperture]
        self._window_choice = WeightedChoice([ep.weight for ep in self._window], self._rng)

    def _sample(self) -> None:
        # The total load is smoothed, and divided by the aperture when it is compared (as Finagle's
        # load band does): smoothing the load per endpoint kept, after each widening, the loads per
        # endpoint of the narrower apertures, so the aperture went on widening well past the band.
        now = self._now()
        w = math.exp(-max(0.0, now - self._smoothed_at) / self.smooth_s)
        x = float(self._outstanding)
        self._smoothed = x + (self._smoothed - x) * w
        self._smoothed_at = now

    def load_per_endpoint(self) -> float:
        """The smoothed load over the aperture, per endpoint in it (compared with the load band)."""
        return self._smoothed / max(1, self.aperture)

    def on_start(self, ep: Endpoint) -> None:
        super().on_start(ep)
        if not ep.removed:
            self._outstanding += 1
        self._sample()

    def on_finish(self, ep: Endpoint, latency_s: float, ok: bool) -> None:
        super().on_finish(ep, latency_s, ok)
        if not ep.removed:
            self._outstanding = max(0, self._outstanding - 1)
        self._sample()

    def _adjust(self) -> None:
        n = len(self._ring)
        load = self.load_per_endpoint()
        if load >= self.high_load and self.aperture < n:
            self.aperture += 1
            self.expands += 1
            self._refresh_window()
        elif load <= self.low_load and self.aperture > self.min_aperture:
            self.aperture -= 1
            self.contracts += 1
            self._refresh_window()

    def pick(self) -> Endpoint | None:
        if not self._ring:
            return None
        self._adjust()
        window = self._window
        if any(self.is_available(ep) for ep in window):
            return self._p2c(window, self._window_choice)
        # Nothing available inside the aperture: the least loaded available endpoint beyond it (ties
        # drawn by weight, so the fallback traffic is spread rather than all on the next one).
        return self._least_loaded(self._ring[self.aperture :])

    def statistics(self) -> dict[str, Any]:
        out = super().statistics()
        out.update(
            aperture=self.aperture,
            smoothed_load=round(self.load_per_endpoint(), 4),
            expands=self.expands,
            contracts=self.contracts,
        )
        return out

    def state(self) -> dict[str, Any]:
        out = super().state()
        out["ring"] = [ep.key for ep in self._ring]
        return out


_COMMON = {"kind", "maxEffort", "enableProbation"}
_KEYS: dict[str, tuple[type[Balancer], dict[str, tuple[str, float]]]] = {
    "p2c": (P2CBalancer, {}),
    "ewma": (EwmaBalancer, {"decayTimeMs": ("decay_time_ms", 10000)}),
    "aperture": (
        ApertureBalancer,
        {
            "smoothWindowMs": ("smooth_window_ms", 5000),
            "lowLoad": ("low_load", 0.5),
            "highLoad": ("high_load", 2.0),
            "minAperture": ("min_aperture", 1),
        },
    ),
    "heap": (HeapBalancer, {}),
    "roundRobin": (RoundRobinBalancer, {}),
}
BALANCER_KINDS: tuple[str, ...] = tuple(_KEYS)


def balancer_from_config(
    cfg: Mapping[str, Any] | None,
    *,
    rng: random.Random,
    now: Callable[[], float],
    available: Callable[[str], bool] | None = None,
    where: str = "loadBalancer",
) -> Balancer:
    """Build a balancer from a Linkerd `loadBalancer` mapping (None: `p2c` with its defaults)."""
    cfg = dict(cfg or {"kind": "p2c"})
    kind = cfg.get("kind", "p2c")
    if kind not in _KEYS:
        raise BalancerConfigError(
            f"{where}.kind: unknown load balancer {kind!r}; expected one of: " + ", ".join(BALANCER_KINDS)
        )
    cls, keys = _KEYS[kind]
    allowed = _COMMON | set(keys)
    if kind == "heap":
        allowed -= {"maxEffort"}
    extra = sorted(set(cfg) - allowed)
    if extra:
        raise BalancerConfigError(
            f"{where}: unknown key {extra[0]!r} for kind {kind!r}; allowed keys: "
            + ", ".join(sorted(allowed))
        )
    if cfg.get("enableProbation"):
        raise BalancerConfigError(
            f"{where}.enableProbation: advisory discovery removal is not supported; remove the key or set it to false"
        )
    kwargs: dict[str, Any] = {}
    for key, (attr, default) in keys.items():
        value = cfg.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BalancerConfigError(f"{where}.{key}: expected a number, got {value!r}")
        kwargs[attr] = value
    max_effort = cfg.get("maxEffort", 5)
    if isinstance(max_effort, bool) or not isinstance(max_effort, int) or max_effort < 1:
        raise BalancerConfigError(f"{where}.maxEffort: expected an integer >= 1, got {max_effort!r}")
    if "min_aperture" in kwargs:
        if kwargs["min_aperture"] != int(kwargs["min_aperture"]):
            raise BalancerConfigError(
                f"{where}.minAperture: expected an integer >= 1, got {kwargs['min_aperture']!r}"
            )
        kwargs["min_aperture"] = int(kwargs["min_aperture"])
    try:
        return cls(rng=rng, now=now, available=available, max_effort=max_effort, **kwargs)
    except BalancerConfigError as e:
        raise BalancerConfigError(f"{where}: {e}") from None
