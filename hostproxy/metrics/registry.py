"""The metrics registry: counters, gauges and stats under Linkerd's flat keys, with Prometheus ids.

Theory of operation
-------------------
Every metric has a flat key in Linkerd 1's scheme (`rt/outgoing/client/#/io.l5d.fs/web/requests`)
and, optionally, a Prometheus identity: a family name and a tuple of labels. Registration is the
slow path (get-or-create, done once per scope); recording is the hot path and is an attribute add
on a preallocated object (`Counter.value += 1`, `WindowedHistogram.add`). Gauges are callables read
only when rendering.

Scopes bundle what the request path needs: `RouterScope.server(ip, port)`, `.service(name,
bound=...)` and `.client(id)` each return a cached `RequestStats` (requests, success, failures,
failures by `Cause`, pending, `request_latency_ms`, status codes).

Cardinality is bounded in two ways (field lessons: a stats tree per requested name leaks memory;
user-controlled label values explode Prometheus):

* Service names get their own scope only when the caller says they bound (`bound=True`), up to
  `max_services` per router; any other name shares the `unbound` scope, and
  `RouterScope.observe_unbound(name, cause)` feeds a bounded top-N table for diagnostics.
* Per Prometheus family, each label other than the fixed-vocabulary ones (router, cause, code,
  quantile) accepts at most `max_label_values` distinct values; later values render as `overflow`
  (their series are summed).

Deferred records (the daemon's mode; a registry records at once unless `defer_records()` was
called): the end of a request, `RequestStats.finish_at` in every scope that counted it, is the bulk
of the metrics work (a histogram record, the request, success or failure and status counters).
Deferred, it is one tuple appended to the registry's list, and `flush()` applies the list later,
exactly as the calls would have (each record keeps its own time, so it lands in its own histogram
slice). The daemon flushes when the event loop has been idle for a moment
(`hostproxy.idle.run_when_idle` with the `FLUSH_*` timings: it looks every 50 ms, or down to once a
second while no request ends, and after a second of waiting for an idle loop flushes anyway), so a
burst of requests is answered before its bookkeeping is done. It applies at most `FLUSH_PIECE`
records (64, about 70 µs) per idle moment, the oldest first, so a request that arrives during a
flush waits for one piece at most. `metrics()`, which every reader goes through, flushes first, so
no reader ever sees a record missing.

A list that reaches `MAX_DEFERRED` records (512), because the loop was never idle long enough, has
its oldest `FLUSH_STEP` records (16) applied by the request that filled it: the backlog stays
bounded, and a loop that is never idle pays one record applied per record made, in steps of a few
microseconds rather than in one stall (applying all 512 at once took 0.45 ms, a whole burst's delay,
in `make bench`'s 1,000 req/s run). `pending` changes at once.

Scrapes are cheap (a busy proxy is scraped every few seconds): the registry counts structural
changes in `version` (a metric added or removed) so renderers can keep their sorted layouts and
per-metric text between scrapes, and every `Metric` has a `render` slot for that text. Gauges that
read one field of an object's `statistics()` (balancer, failure accrual, retry budget) share one
call per object within a `reading()` pass instead of one call per field.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from hostproxy.causes import Cause
from hostproxy.metrics.histogram import WindowedHistogram
from hostproxy.metrics.topn import TopN

__all__ = [
    "Counter",
    "CounterFn",
    "Gauge",
    "Metric",
    "MetricsRegistry",
    "PromId",
    "RequestStats",
    "RouterScope",
    "Stat",
    "reading",
]

Labels = tuple[tuple[str, str], ...]


class _HasStatistics(Protocol):
    def statistics(self) -> dict[str, Any]: ...


class _ReadPass:
    """While `active`, readers of one `statistics()` object reuse its result within a pass (`epoch`)."""

    active = False
    epoch = 0


@contextmanager
def reading() -> Iterator[None]:
    """A read pass over gauges, all done without yielding to other tasks: gauges backed by the same
    `statistics()` object call it once. Outside a pass every read calls it afresh."""
    _ReadPass.epoch += 1
    _ReadPass.active = True
    try:
        yield
    finally:
        _ReadPass.active = False


#: The pool gauges also exported to Prometheus, with their help texts (every series costs each scrape
#: of a daemon with many clients: ``pool_size`` and ``pool_cached`` are in the JSON metrics only).
_POOL_HELP = {
    "connections": "Connections open to the client's endpoints",
    "pool_waiters": "Requests waiting for a connection at hostConnectionPool.maxSize",
}


#: The server gauges also exported to Prometheus, with their help texts.
_SERVER_HELP = {
    "connections": "Client connections open to the server",
    "connects": "Client connections the server has accepted",
}
#: The server extras that are levels (gauges); the others count up from the server's start (counters).
_SERVER_GAUGES = frozenset({"connections"})

#: The client extras that count up (counters, as in Linkerd's metrics); the others are levels (gauges).
_CLIENT_COUNTERS = frozenset(
    {
        "loadbalancer/adds",
        "loadbalancer/removes",
        "loadbalancer/updates",
        "loadbalancer/max_effort_exhausted",
        "failure_accrual/removals",
        "failure_accrual/probes",
        "failure_accrual/revivals",
        "retries/requeues",
        "retries/budget_exhausted",
    }
)

#: Where a server's TLS handshake failures by reason go (`…/tls/handshake_failures/<reason>`).
_TLS_FAILURE_PREFIX = "tls/handshake_failures/"


def _stat_reader(obj: _HasStatistics, name: str, shared: list[Any]) -> Callable[[], float]:
    """A gauge function reading `statistics()[name]`; readers of one object share `shared`,
    `[epoch, statistics]`, so a read pass calls `statistics()` once for all of them."""

    def read() -> float:
        if not _ReadPass.active:
            return float(obj.statistics()[name])
        if shared[0] != _ReadPass.epoch:
            shared[1] = obj.statistics()
            shared[0] = _ReadPass.epoch
        return float(shared[1][name])

    return read


#: The most deferred records kept waiting (see the module docstring); at this many, the request that
#: adds one applies the oldest `FLUSH_STEP` first.
MAX_DEFERRED = 512
#: How many of the oldest records a full list applies at once (about 1 µs a record): a loop that is
#: never idle pays its records in these small steps, not in one long stall.
FLUSH_STEP = 16
#: The daemon's flush of deferred records: how often it looks, how long it waits for an idle loop at
#: most, and how seldom it looks while no request ends (records stay far younger than a histogram's
#: window, whatever the load; readers flush first anyway).
FLUSH_EVERY_S = 0.05
FLUSH_AT_MOST_S = 1.0
FLUSH_QUIET_MAX_S = 1.0
#: The most records the daemon's flush applies per idle moment (about 70 µs of work): a request that
#: arrives during a flush waits for this many at most, then the flush waits for the loop to be idle
#: again.
FLUSH_PIECE = 64

UNCAPPED_LABELS = frozenset({"router", "cause", "code", "quantile"})
OVERFLOW = "overflow"
UNBOUND = "unbound"


class Counter:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def incr(self, n: int = 1) -> None:
        self.value += n


class HeldCounter(Counter):
    """A count a later verdict may take back: `RequestStats.success`, where a request counted a
    success at its head that fails afterwards (its body cut, a failing gRPC status in its trailers)
    moves to the failures, as in Linkerd. ``value`` is that count (the flat and tree forms, InfluxDB);
    Prometheus reads ``value + held``: a count taken back is held there until a new one makes up for
    it, so the exported counter never goes down (Prometheus reads any decrease as a counter reset,
    and ``rate()`` then counts the whole value again)."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        super().__init__()
        self.held = 0

    def take_back(self) -> None:
        self.value -= 1
        self.held += 1


class CounterFn:
    """A counter kept by another object (a server's accepted connections, a balancer's adds), read
    through ``fn`` when rendered: a count that only grows (a reload may start it again from 0), so
    renderers show it as a counter (Prometheus ``counter``, ``{"counter": n}`` in the metrics tree)."""

    __slots__ = ("fn", "_last")

    def __init__(self, fn: Callable[[], float]) -> None:
        self.fn = fn
        self._last = 0

    @property
    def value(self) -> int:
        try:
            value = int(self.fn())
        except Exception:  # a broken reader must not break the admin page: its last value stands
            return self._last
        self._last = value
        return value


class Gauge:
    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], float]) -> None:
        self.fn = fn

    def read(self) -> float | None:
        try:
            return float(self.fn())
        except Exception:  # a broken gauge must not break the admin page
            return None


class Stat:
    """A histogram recorded in the key's unit (milliseconds for `*_ms`); `scale` converts to base units."""

    __slots__ = ("hist", "scale")

    def __init__(self, hist: WindowedHistogram, scale: float) -> None:
        self.hist = hist
        self.scale = scale

    def add(self, value: float) -> None:
        self.hist.add(value)


@dataclass(frozen=True)
class PromId:
    family: str
    labels: Labels
    help: str = ""


@dataclass(eq=False)
class Metric:
    key: str
    kind: str  # "counter" | "gauge" | "stat"
    obj: Counter | CounterFn | Gauge | Stat
    prom: PromId | None
    # Registration order (the order `MetricsRegistry.metrics()` lists metrics in).
    seq: int = 0
    # Renderers' text for this metric (e.g. its quoted JSON key), computed once: keys never change.
    render: Any = field(default=None, repr=False)


class MetricsRegistry:
    def __init__(
        self,
        now: Callable[[], float],
        *,
        max_label_values: int = 1000,
        max_services: int = 1000,
        unbound_capacity: int = 64,
    ) -> None:
        self._now = now
        self.max_label_values = max_label_values
        self.max_services = max_services
        self.unbound_capacity = unbound_capacity
        self._metrics: dict[str, Metric] = {}
        # The keys in sorted order: a prefix's metrics are one slice of it (a client that goes away
        # is removed without scanning every metric of the daemon).
        self._sorted_keys: list[str] = []
        self._label_values: dict[tuple[str, str], set[str]] = {}
        self._routers: dict[str, RouterScope] = {}
        self.label_overflows = 0
        self._seq = 0
        # Bumped whenever a metric is added or removed; renderers cache layouts per version.
        self.version = 0
        # Renderers' layouts, keyed by renderer name: (version, layout).
        self.render_cache: dict[str, tuple[int, Any]] = {}
        # Request records waiting for `flush()`; None: recorded at once (see the module docstring).
        # Each record is a function and its arguments, applied in order.
        self._deferred: list[tuple[Any, ...]] | None = None
        self.flushes = 0
        # How often a full list applied its oldest records (`_apply_oldest`): the loop was not idle
        # long enough for the daemon's flush.
        self.flush_steps = 0

    # -- deferred records --------------------------------------------------------------------------

    def defer_records(self) -> None:
        """From now on, the ends of requests are recorded by `flush()` (see the module docstring)."""
        if self._deferred is None:
            self._deferred = []

    def flush(self, limit: int | None = None) -> int:
        """Apply the deferred records, in order, or the oldest ``limit`` of them; how many."""
        if not self._deferred:
            return 0
        self.flushes += 1
        return self._apply(limit)

    def _apply_oldest(self) -> None:
        """Apply the oldest `FLUSH_STEP` deferred records, in order (the list reached
        `MAX_DEFERRED`)."""
        self.flush_steps += 1
        self._apply(FLUSH_STEP)

    def _apply(self, limit: int | None) -> int:
        """Apply the oldest ``limit`` deferred records (all when None), in order; how many."""
        pending = self._deferred
        assert pending is not None
        if limit is not None and len(pending) > limit:
            applied = pending[:limit]
            del pending[:limit]
        else:
            applied = pending
            self._deferred = []
        for record in applied:
            record[0](*record[1:])
        return len(applied)

    def add_at(self, add_at: Callable[[float, float], None], value: float, now: float) -> None:
        """``add_at(value, now)`` (a histogram's), deferred when this registry defers records."""
        deferred = self._deferred
        if deferred is None:
            add_at(value, now)
            return
        deferred.append((add_at, value, now))
        if len(deferred) >= MAX_DEFERRED:
            self._apply_oldest()

    @property
    def deferred(self) -> int:
        """Records waiting for `flush()`."""
        return len(self._deferred) if self._deferred else 0

    # -- registration (slow path) ------------------------------------------------------------------

    def _prom(self, prom: PromId | None) -> PromId | None:
        if prom is None:
            return None
        labels = []
        for name, value in prom.labels:
            if name not in UNCAPPED_LABELS:
                seen = self._label_values.setdefault((prom.family, name), set())
                if value not in seen:
                    if len(seen) >= self.max_label_values:
                        value = OVERFLOW
                        self.label_overflows += 1
                    else:
                        seen.add(value)
            labels.append((name, value))
        return PromId(prom.family, tuple(labels), prom.help)

    def _get(self, key: str, kind: str) -> Metric | None:
        m = self._metrics.get(key)
        if m is not None and m.kind != kind:
            raise ValueError(
                f"metric {key!r} is already registered as a {m.kind}, not a {kind}; use another key"
            )
        return m

    def _add(
        self, key: str, kind: str, obj: Counter | CounterFn | Gauge | Stat, prom: PromId | None
    ) -> Metric:
        self._seq += 1
        self.version += 1
        m = self._metrics[key] = Metric(key, kind, obj, self._prom(prom), self._seq)
        bisect.insort(self._sorted_keys, key)
        return m

    def counter(self, key: str, prom: PromId | None = None) -> Counter:
        m = self._get(key, "counter")
        if m is None:
            m = self._add(key, "counter", Counter(), prom)
        assert isinstance(m.obj, Counter)
        return m.obj

    def held_counter(self, key: str, prom: PromId | None = None) -> HeldCounter:
        """A counter whose counts a later verdict may take back (see `HeldCounter`)."""
        m = self._get(key, "counter")
        if m is None:
            m = self._add(key, "counter", HeldCounter(), prom)
        assert isinstance(m.obj, HeldCounter)
        return m.obj

    def counter_fn(self, key: str, fn: Callable[[], float], prom: PromId | None = None) -> CounterFn:
        """A counter another object keeps, read through ``fn`` (registering it again rebinds ``fn``)."""
        m = self._get(key, "counter")
        if m is None:
            m = self._add(key, "counter", CounterFn(fn), prom)
        elif not isinstance(m.obj, CounterFn):
            raise ValueError(f"metric {key!r} is already registered as a counter kept here; use another key")
        else:
            m.obj.fn = fn
        assert isinstance(m.obj, CounterFn)
        return m.obj

    def gauge(self, key: str, fn: Callable[[], float], prom: PromId | None = None) -> Gauge:
        m = self._get(key, "gauge")
        if m is None:
            m = self._add(key, "gauge", Gauge(fn), prom)
        else:
            assert isinstance(m.obj, Gauge)
            m.obj.fn = fn
        assert isinstance(m.obj, Gauge)
        return m.obj

    def stat(self, key: str, prom: PromId | None = None, scale: float = 1.0) -> Stat:
        m = self._get(key, "stat")
        if m is None:
            m = self._add(key, "stat", Stat(WindowedHistogram(self._now), scale), prom)
        assert isinstance(m.obj, Stat)
        return m.obj

    def remove_prefix(self, prefix: str, keep: tuple[str, ...] = ()) -> int:
        """Drop every metric whose key is `prefix` or under `prefix/`, except under a `keep` prefix."""
        keys = self._sorted_keys
        # `prefix` itself, then every key starting with `prefix/` (contiguous: "/" sorts just before "0").
        lo = bisect.bisect_left(keys, prefix)
        hi = bisect.bisect_left(keys, prefix + "0")
        kept: list[str] = []
        doomed: list[str] = []
        for k in keys[lo:hi]:
            under = k == prefix or k.startswith(prefix + "/")
            if under and not any(k == p or k.startswith(p + "/") for p in keep):
                doomed.append(k)
            else:
                kept.append(k)
        if not doomed:
            return 0
        keys[lo:hi] = kept
        for k in doomed:
            del self._metrics[k]
        self.version += 1
        return len(doomed)

    @property
    def clock(self) -> Callable[[], float]:
        """The clock that every histogram of this registry records by."""
        return self._now

    def metrics(self) -> Iterator[Metric]:
        """Every metric, after any deferred records were applied (every reader goes through here)."""
        if self._deferred:
            self.flush()
        return iter(list(self._metrics.values()))

    def __len__(self) -> int:
        return len(self._metrics)

    # -- scopes ------------------------------------------------------------------------------------

    def router(self, label: str) -> RouterScope:
        r = self._routers.get(label)
        if r is None:
            r = self._routers[label] = RouterScope(self, label)
        return r

    def routers(self) -> dict[str, RouterScope]:
        return dict(self._routers)

    def statistics(self) -> dict[str, Any]:
        return {
            "metrics": len(self._metrics),
            "label_overflows": self.label_overflows,
            "deferred_records": self.deferred,
            "flushes": self.flushes,
            "flush_steps": self.flush_steps,
        }


#: The status a request cancelled because its client left is counted with (nginx's "client closed
#: request"): no failure of anyone's but the client's, and no success either (``abandoned_at``).
CLIENT_CLOSED = 499


class RequestStats:
    """The per-scope request metrics; `start()` and `finish()` are the hot path."""

    __slots__ = (
        "_reg",
        "prefix",
        "scope",
        "labels",
        "requests",
        "success",
        "failures",
        "pending",
        "latency",
        "_now",
        "_hist_add_at",
        "_by_cause",
        "_by_status",
        "_abandoned",
    )

    def __init__(self, reg: MetricsRegistry, prefix: str, scope: str, labels: Labels) -> None:
        self._reg = reg
        self.prefix = prefix
        self.scope = scope
        self.labels = labels
        fam = f"hostproxy_{scope}_"
        self.requests = reg.counter(
            f"{prefix}/requests", PromId(fam + "requests_total", labels, "Requests received")
        )
        self.success = reg.held_counter(
            f"{prefix}/success", PromId(fam + "success_total", labels, "Successful requests")
        )
        self.failures = reg.counter(f"{prefix}/failures")
        self.pending = 0
        reg.gauge(
            f"{prefix}/pending", lambda: self.pending, PromId(fam + "pending", labels, "Requests in flight")
        )
        self.latency = reg.stat(
            f"{prefix}/request_latency_ms",
            PromId(fam + "request_duration_seconds", labels, "Request latency"),
            scale=0.001,
        )
        self._now = reg._now
        self._hist_add_at = self.latency.hist.add_at
        self._by_cause: dict[Cause, Counter] = {}
        self._by_status: dict[int, tuple[Counter, Counter]] = {}
        # `abandoned`: the requests `abandoned_at` counted, registered on first use.
        self._abandoned: Counter | None = None

    def start(self) -> None:
        self.pending += 1

    def finish(self, latency_s: float, cause: Cause | None = None, status: int | None = None) -> None:
        """Count one finished request: success when `cause` is None, else a failure of that cause."""
        self.finish_at(self._now(), latency_s, cause, status)

    def finish_at(self, now: float, latency_s: float, cause: Cause | None, status: int | None) -> None:
        """`finish(latency_s, cause, status)` at the time `now`, read from the registry's clock (a
        request counted in several scopes reads it once); deferred when the registry defers."""
        self.pending -= 1
        deferred = self._reg._deferred
        if deferred is not None:
            deferred.append((self._finish_now, now, latency_s, cause, status))
            if len(deferred) >= MAX_DEFERRED:
                self._reg._apply_oldest()
            return
        self._finish_now(now, latency_s, cause, status)

    def abandoned_at(self, now: float, latency_s: float) -> None:
        """Count one request cancelled because its client left (its connection closed, its h2 stream
        reset): in ``requests``, the latency and ``status/499``, as :data:`CLIENT_CLOSED`, and neither
        as a success nor as a failure. (An upstream that hangs while its callers give up shows no
        success rate of 100%; an upstream's own 499 answer is a response like any other.)"""
        self.pending -= 1
        deferred = self._reg._deferred
        if deferred is not None:
            deferred.append((self._abandoned_now, now, latency_s))
            if len(deferred) >= MAX_DEFERRED:
                self._reg._apply_oldest()
            return
        self._abandoned_now(now, latency_s)

    def _abandoned_now(self, now: float, latency_s: float) -> None:
        self.requests.value += 1
        self._hist_add_at(latency_s * 1000.0, now)
        self.record_status(CLIENT_CLOSED)
        counter = self._abandoned
        if counter is None:
            counter = self._abandoned = self._reg.counter(
                f"{self.prefix}/abandoned",
                PromId(
                    f"hostproxy_{self.scope}_abandoned_total",
                    self.labels,
                    "Requests their clients abandoned before the answer (counted as 499)",
                ),
            )
        counter.value += 1

    def _finish_now(self, now: float, latency_s: float, cause: Cause | None, status: int | None) -> None:
        """Record one finished request (`pending` already counted it out)."""
        self.requests.value += 1
        self._hist_add_at(latency_s * 1000.0, now)
        if cause is None:
            success = self.success
            success.value += 1
            if success.held:  # a new success makes up for one taken back (the exported count holds)
                success.held -= 1
        else:
            self.failures.value += 1
            c = self._by_cause.get(cause)
            if c is None:
                c = self._by_cause[cause] = self._reg.counter(
                    f"{self.prefix}/failures/{cause.value}",
                    PromId(
                        f"hostproxy_{self.scope}_failures_total",
                        self.labels + (("cause", cause.prom_label),),
                        "Failed requests by cause",
                    ),
                )
            c.value += 1
        if status is not None:
            self.record_status(status)

    def late_failure(self, cause: Cause) -> None:
        """A request counted as a success when its response head arrived failed afterwards (the
        upstream reset mid-body): move it from success to failures under ``cause``."""
        if self._reg._deferred:
            self._reg.flush()  # its success may still be a deferred record
        self.success.take_back()
        self.failures.value += 1
        c = self._by_cause.get(cause)
        if c is None:
            c = self._by_cause[cause] = self._reg.counter(
                f"{self.prefix}/failures/{cause.value}",
                PromId(
                    f"hostproxy_{self.scope}_failures_total",
                    self.labels + (("cause", cause.prom_label),),
                    "Failed requests by cause",
                ),
            )
        c.value += 1

    def record_status(self, status: int) -> None:
        pair = self._by_status.get(status)
        if pair is None:
            pair = self._status_counters(status)
        pair[0].value += 1
        pair[1].value += 1

    def _status_counters(self, status: int) -> tuple[Counter, Counter]:
        """The counters of one status (`status/<code>`, `status/<class>`), registered on first use."""
        code = status if 100 <= status <= 599 else 0
        klass = f"{code // 100}XX" if code else "invalid"
        fam = f"hostproxy_{self.scope}_responses_total"
        pair = self._by_status[status] = (
            self._reg.counter(
                f"{self.prefix}/status/{code or 'invalid'}",
                PromId(fam, self.labels + (("code", str(code)),), "Responses by status code"),
            ),
            self._reg.counter(f"{self.prefix}/status/{klass}"),
        )
        return pair


class RouterScope:
    """Scopes of one router: `rt/<label>/{server,service,client}/...`."""

    def __init__(self, reg: MetricsRegistry, label: str) -> None:
        self._reg = reg
        self.label = label
        self._servers: dict[tuple[str, int], RequestStats] = {}
        self._services: dict[str, RequestStats] = {}
        self._clients: dict[str, RequestStats] = {}
        self._unbound: RequestStats | None = None
        self.unbound_names = TopN(reg.unbound_capacity, reg._now)

    def scopes(self) -> list[tuple[str, str, tuple[tuple[str, str], ...]]]:
        """``(key prefix, kind, tags)`` of this router and of each of its servers, services and clients,
        as Linkerd's InfluxDB telemeter tags them: ``rt``, plus ``server`` (``ip/port``), ``service``
        or ``client`` (the name without its leading ``/``)."""
        rt = (("rt", self.label),)
        out: list[tuple[str, str, tuple[tuple[str, str], ...]]] = [(f"rt/{self.label}", "rt", rt)]
        for ip, port in list(self._servers):
            out.append((f"rt/{self.label}/server/{ip}/{port}", "server", (*rt, ("server", f"{ip}/{port}"))))
        services = list(self._services) + ([UNBOUND] if self._unbound is not None else [])
        for name in services:
            bare = name.lstrip("/")
            out.append((f"rt/{self.label}/service/{bare}", "service", (*rt, ("service", bare))))
        for client_id in list(self._clients):
            bare = client_id.lstrip("/")
            out.append((f"rt/{self.label}/client/{bare}", "client", (*rt, ("client", bare))))
        return out

    def server(self, ip: str, port: int) -> RequestStats:
        key = (ip, port)
        s = self._servers.get(key)
        if s is None:
            s = self._servers[key] = RequestStats(
                self._reg,
                f"rt/{self.label}/server/{ip}/{port}",
                "server",
                (("router", self.label), ("server", f"{ip}:{port}")),
            )
        return s

    def server_extras(self, ip: str, port: int, obj: _HasStatistics, keys: Sequence[str]) -> None:
        """Expose a server's connection and TLS counters (``obj.statistics()[key]`` for each of
        ``keys``) as gauges under its scope, `rt/<router>/server/<ip>/<port>/<key>`, read when rendered.
        Registering the same server again rebinds its gauges to the new ``obj`` (a reload)."""
        prefix = f"rt/{self.label}/server/{ip}/{port}"
        labels = (("router", self.label), ("server", f"{ip}:{port}"))
        shared: list[Any] = [-1, None]
        for key in keys:
            gauge = key in _SERVER_GAUGES
            prom = None
            if key in _SERVER_HELP:
                family = f"hostproxy_server_{key.replace('/', '_')}" + ("" if gauge else "_total")
                prom = PromId(family, labels, _SERVER_HELP[key])
            elif key.startswith(_TLS_FAILURE_PREFIX):
                reason = key[len(_TLS_FAILURE_PREFIX) :]
                prom = PromId(
                    "hostproxy_server_tls_handshake_failures_total",
                    (*labels, ("reason", reason)),
                    "TLS handshakes with clients that failed, by reason",
                )
            if gauge:
                self._reg.gauge(f"{prefix}/{key}", _stat_reader(obj, key, shared), prom)
            else:
                self._reg.counter_fn(f"{prefix}/{key}", _stat_reader(obj, key, shared), prom)

    def drop_server_extras(self, ip: str, port: int, keys: Sequence[str]) -> None:
        """Forget a server's extras (the server went away; its request stats stay)."""
        prefix = f"rt/{self.label}/server/{ip}/{port}"
        for key in keys:
            self._reg.remove_prefix(f"{prefix}/{key}")

    def service(self, name: str, bound: bool) -> RequestStats:
        """Stats for a service name; only bound names (up to `max_services`) get their own scope."""
        s = self._services.get(name)
        if s is not None:
            return s
        if bound and len(self._services) < self._reg.max_services:
            s = self._services[name] = RequestStats(
                self._reg,
                f"rt/{self.label}/service/{name.lstrip('/')}",
                "service",
                (("router", self.label), ("service", name)),
            )
            return s
        if self._unbound is None:
            self._unbound = RequestStats(
                self._reg,
                f"rt/{self.label}/service/{UNBOUND}",
                "service",
                (("router", self.label), ("service", UNBOUND)),
            )
        return self._unbound

    def observe_unbound(self, name: str, cause: Cause | None, error: str | None = None) -> None:
        """Note a request for a name that did not bind, in the bounded top-N table, with what the
        binding said (``error``) when it failed."""
        self.unbound_names.record(name, cause.value if cause is not None else None, error)

    def client(self, client_id: str) -> RequestStats:
        c = self._clients.get(client_id)
        if c is None:
            c = self._clients[client_id] = RequestStats(
                self._reg,
                f"rt/{self.label}/client/{client_id.lstrip('/')}",
                "client",
                (("router", self.label), ("client", client_id)),
            )
        return c

    def client_prefix(self, client_id: str) -> str:
        """The key prefix under which client-level extras (loadbalancer/…, failure_accrual/…) go."""
        return f"rt/{self.label}/client/{client_id.lstrip('/')}"

    def client_extras(
        self,
        client_id: str,
        *,
        balancer: _HasStatistics | None = None,
        accrual: _HasStatistics | None = None,
        requeue_budget: _HasStatistics | None = None,
        pools: _HasStatistics | None = None,
    ) -> None:
        """Expose a client's balancer, failure accrual, requeue budget and connection pools as gauges
        under its scope.

        Keys follow Linkerd: `loadbalancer/{size,available,busy,load,meanweight,adds,removes,updates,
        max_effort_exhausted}`, `failure_accrual/{removals,probes,revivals,removed_for_ms}`,
        `retries/requeues` (requests sent again after a connection failure), `retries/budget` and
        `retries/budget_exhausted` (of the requeue budget), and (``pools``: its endpoints' pools summed)
        `connections`, `pool_size`, `pool_cached` and `pool_waiters`. Values are read only when rendering.
        """
        prefix = self.client_prefix(client_id)
        labels = (("router", self.label), ("client", client_id))
        groups: list[tuple[str, _HasStatistics | None, tuple[tuple[str, str], ...]]] = [
            (
                "loadbalancer",
                balancer,
                (
                    ("size", "size"),
                    ("available", "available"),
                    ("busy", "busy"),
                    ("load", "load"),
                    ("meanweight", "meanweight"),
                    ("adds", "adds"),
                    ("removes", "removes"),
                    ("updates", "updates"),
                    ("max_effort_exhausted", "max_effort_exhausted"),
                ),
            ),
            (
                "failure_accrual",
                accrual,
                (
                    ("removals", "removals"),
                    ("probes", "probes"),
                    ("revivals", "revivals"),
                    ("removed_for_ms", "removed_for_ms"),
                ),
            ),
            (
                "retries",
                requeue_budget,
                (
                    ("requeues", "withdrawals"),
                    ("budget", "balance"),
                    ("budget_exhausted", "budget_exhausted"),
                ),
            ),
            (
                "",  # at the client's own level, as Linkerd has them
                pools,
                (
                    ("connections", "open"),
                    ("pool_size", "size"),
                    ("pool_cached", "idle"),
                    ("pool_waiters", "waiters"),
                ),
            ),
        ]
        for group, obj, fields in groups:
            if obj is None:
                continue
            shared: list[Any] = [-1, None]
            for key, stat in fields:
                prom = None
                if group == "loadbalancer" and key in ("size", "available", "load"):
                    prom = PromId(
                        f"hostproxy_client_endpoints_{key}"
                        if key != "load"
                        else "hostproxy_client_balancer_load",
                        labels,
                        f"Balancer {key}",
                    )
                elif group == "failure_accrual" and key in ("removals", "revivals"):
                    prom = PromId(f"hostproxy_client_accrual_{key}_total", labels, f"Failure accrual {key}")
                elif not group and key in _POOL_HELP:
                    prom = PromId(f"hostproxy_client_{key}", labels, _POOL_HELP[key])
                path = f"{prefix}/{group}/{key}" if group else f"{prefix}/{key}"
                if f"{group}/{key}" in _CLIENT_COUNTERS:
                    self._reg.counter_fn(path, _stat_reader(obj, stat, shared), prom)
                else:
                    self._reg.gauge(path, _stat_reader(obj, stat, shared), prom)

    def client_counter(self, client_id: str, name: str, fn: Callable[[], float], help_text: str) -> None:
        """One more counter under a client's scope (`rt/<router>/client/<id>/<name>`), kept by another
        object and read when rendered (Prometheus `hostproxy_client_<name>_total`)."""
        labels = (("router", self.label), ("client", client_id))
        family = "hostproxy_client_" + name.replace("/", "_") + "_total"
        self._reg.counter_fn(f"{self.client_prefix(client_id)}/{name}", fn, PromId(family, labels, help_text))

    def client_gauge(self, client_id: str, name: str, fn: Callable[[], float], help_text: str) -> None:
        """One more gauge under a client's scope (`rt/<router>/client/<id>/<name>`), read when rendered."""
        labels = (("router", self.label), ("client", client_id))
        family = "hostproxy_client_" + name.replace("/", "_")
        self._reg.gauge(f"{self.client_prefix(client_id)}/{name}", fn, PromId(family, labels, help_text))

    def drop_client(self, client_id: str) -> None:
        """Forget a client that went away (its metrics disappear from every renderer)."""
        if self._clients.pop(client_id, None) is not None:
            prefix = self.client_prefix(client_id)
            # Linkerd's flat keys nest /a/b inside /a: keep the metrics of other live clients.
            stem = client_id.lstrip("/") + "/"
            nested = tuple(self.client_prefix(c) for c in self._clients if c.lstrip("/").startswith(stem))
            self._reg.remove_prefix(prefix, keep=nested)

    def service_names(self) -> list[str]:
        return sorted(self._services)
