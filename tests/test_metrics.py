"""Metrics: histogram buckets and window, registry scopes, cardinality caps, renderers, top-N."""

import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hostproxy.causes import ALL_CAUSES, Cause, Level, parse_cause
from hostproxy.metrics import (
    MetricsRegistry,
    NoSuchSubtree,
    TopN,
    WindowedHistogram,
    flat,
    metrics_json,
    prometheus,
    tree,
)
from hostproxy.metrics.histogram import bucket_bounds, bucket_index


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# --- histogram ----------------------------------------------------------------------------------


@given(st.integers(0, 2**40 - 1))
def test_bucket_contains_value_and_is_narrow(v):
    lo, hi = bucket_bounds(bucket_index(v))
    assert lo <= v <= hi
    assert hi - lo <= max(0, lo // 16)


def test_buckets_are_contiguous():
    prev_hi = -1
    for idx in range(bucket_index(2**20) + 1):
        lo, hi = bucket_bounds(idx)
        assert lo == prev_hi + 1
        prev_hi = hi


@given(st.lists(st.integers(0, 100_000), min_size=1, max_size=300), st.sampled_from([0.5, 0.9, 0.99]))
def test_percentiles_within_bucket_error(values, q):
    clock = Clock()
    h = WindowedHistogram(clock)
    for v in values:
        h.add(v)
    snap = h.snapshot()
    exact = sorted(values)[max(0, -(-int(q * 1e6) * len(values) // 1_000_000) - 1)]
    got = snap.percentile(q)
    assert abs(got - exact) <= exact / 16 + 1
    assert snap.count == len(values) and snap.min == min(values) and snap.max == max(values)


def test_window_forgets_after_a_minute_but_totals_do_not():
    clock = Clock()
    h = WindowedHistogram(clock)
    for _ in range(10):
        h.add(100)
    clock.t += 30
    h.add(5)
    assert h.snapshot().count == 11
    clock.t += 35  # the first batch is now more than 60 s old
    snap = h.snapshot()
    assert snap.count == 1 and snap.max == 5
    clock.t += 120
    assert h.snapshot().count == 0
    assert h.total_count == 11 and h.total_sum == 1005


def test_memory_is_bounded():
    clock = Clock()
    h = WindowedHistogram(clock)
    rng = random.Random(0)
    for i in range(20000):
        clock.t += 0.01
        h.add(rng.expovariate(1 / 50) * (1 + i % 7))
    buckets = sum(len(s.counts) for s in h._slices)
    assert buckets < 12 * 200


# --- registry and scopes ------------------------------------------------------------------------


def test_request_stats_keys_and_values():
    clock = Clock()
    reg = MetricsRegistry(clock)
    r = reg.router("outgoing")
    s = r.server("0.0.0.0", 4140)
    s.start()
    assert flat(reg)["rt/outgoing/server/0.0.0.0/4140/pending"] == 1
    s.finish(0.012, None, 200)
    s.start()
    s.finish(0.030, Cause.UPSTREAM_5XX, 503)
    f = flat(reg)
    p = "rt/outgoing/server/0.0.0.0/4140/"
    assert f[p + "requests"] == 2 and f[p + "success"] == 1 and f[p + "failures"] == 1
    assert f[p + "failures/upstream/5xx"] == 1
    assert f[p + "status/200"] == 1 and f[p + "status/5XX"] == 1 and f[p + "status/503"] == 1
    assert f[p + "pending"] == 0
    assert f[p + "request_latency_ms.count"] == 2
    assert f[p + "request_latency_ms.max"] == 30 and f[p + "request_latency_ms.min"] == 12
    assert f[p + "request_latency_ms.sum"] == 42 and f[p + "request_latency_ms.avg"] == 21
    for k in ("p50", "p90", "p95", "p99", "p9990"):
        assert p + "request_latency_ms." + k in f


def test_empty_stat_has_only_count():
    reg = MetricsRegistry(Clock())
    reg.router("r").client("/$/inet/127.1/9030")
    f = flat(reg)
    assert f["rt/r/client/$/inet/127.1/9030/request_latency_ms.count"] == 0
    assert "rt/r/client/$/inet/127.1/9030/request_latency_ms.p50" not in f


def test_scopes_are_cached_and_keys_strip_leading_slash():
    reg = MetricsRegistry(Clock())
    r = reg.router("outgoing")
    assert r.client("/#/io.l5d.fs/web") is r.client("/#/io.l5d.fs/web")
    assert r.service("/svc/web", bound=True).prefix == "rt/outgoing/service/svc/web"
    assert r.client("/#/io.l5d.fs/web").prefix == "rt/outgoing/client/#/io.l5d.fs/web"


def test_unbound_services_share_one_scope_and_feed_top_n():
    clock = Clock()
    reg = MetricsRegistry(clock, unbound_capacity=3)
    r = reg.router("out")
    scopes = {id(r.service(f"/svc/random{i}", bound=False)) for i in range(100)}
    assert len(scopes) == 1
    for i in range(100):
        r.observe_unbound(f"/svc/random{i % 10}", Cause.NAMING_NEG)
    for _ in range(50):
        r.observe_unbound("/svc/typo", Cause.NAMING_NEG)
    assert len(r.unbound_names) == 3
    top = r.unbound_names.table()[0]
    assert top["name"] == "/svc/typo" and top["causes"] == {"naming/neg": 50}
    assert not any(k.startswith("rt/out/service/svc/random") for k in flat(reg))
    assert 'service="unbound"' in prometheus(reg)


def test_service_cap():
    reg = MetricsRegistry(Clock(), max_services=2)
    r = reg.router("out")
    a = r.service("/svc/a", bound=True)
    b = r.service("/svc/b", bound=True)
    c = r.service("/svc/c", bound=True)
    assert a is not b and c.prefix == "rt/out/service/unbound"
    assert r.service("/svc/a", bound=False) is a  # once bound, a name keeps its scope


def test_label_cap_sums_overflow_series():
    reg = MetricsRegistry(Clock(), max_label_values=2)
    r = reg.router("out")
    for i in range(5):
        c = r.client(f"/$/inet/10.0.0.{i}/80")
        c.start()
        c.finish(0.001)
    text = prometheus(reg)
    assert 'hostproxy_client_requests_total{router="out",client="overflow"} 3' in text
    assert 'client="/$/inet/10.0.0.0/80"' in text
    assert reg.label_overflows > 0
    assert len([k for k in flat(reg) if k.endswith("/requests")]) == 5  # json keeps each client


def test_drop_client_keeps_nested_live_clients():
    reg = MetricsRegistry(Clock())
    r = reg.router("out")
    r.client("/#/io.l5d.fs/web")
    r.client("/#/io.l5d.fs/web/v2")
    reg.gauge(r.client_prefix("/#/io.l5d.fs/web") + "/loadbalancer/size", lambda: 3)
    r.drop_client("/#/io.l5d.fs/web")
    keys = flat(reg)
    assert "rt/out/client/#/io.l5d.fs/web/requests" not in keys
    assert "rt/out/client/#/io.l5d.fs/web/loadbalancer/size" not in keys
    assert "rt/out/client/#/io.l5d.fs/web/v2/requests" in keys


_SEGMENTS = st.sampled_from(["a", "a-b", "a.b", "b", "ab", "a0", "a/", "é"])


@given(
    keys=st.lists(st.lists(_SEGMENTS, min_size=1, max_size=4).map("/".join), max_size=30, unique=True),
    prefix=st.lists(_SEGMENTS, min_size=1, max_size=3).map("/".join),
    keep=st.lists(st.lists(_SEGMENTS, min_size=1, max_size=4).map("/".join), max_size=3),
)
def test_remove_prefix_is_the_naive_filter(keys: list[str], prefix: str, keep: list[str]) -> None:
    """Removal by sorted slice drops exactly what a scan of every key would, and keeps the rest."""
    reg = MetricsRegistry(Clock())
    for k in keys:
        reg.counter(k)

    def under(k: str, p: str) -> bool:
        return k == p or k.startswith(p + "/")

    doomed = {k for k in keys if under(k, prefix) and not any(under(k, p) for p in keep)}
    version = reg.version
    assert reg.remove_prefix(prefix, keep=tuple(keep)) == len(doomed)
    assert {m.key for m in reg.metrics()} == set(keys) - doomed
    assert reg.version == (version + 1 if doomed else version)
    for k in keys:  # what was removed can be registered again; what was kept is still the same kind
        reg.counter(k)
    assert len(reg) == len(keys)


def test_kind_conflict_is_an_error():
    reg = MetricsRegistry(Clock())
    reg.counter("a/b")
    with pytest.raises(
        ValueError, match=r"^metric 'a/b' is already registered as a counter, not a gauge; use another key$"
    ):
        reg.gauge("a/b", lambda: 1)


def test_broken_gauge_is_omitted():
    reg = MetricsRegistry(Clock())
    reg.gauge("x/broken", lambda: 1 / 0)
    reg.gauge("x/ok", lambda: 2.5)
    assert flat(reg) == {"x/ok": 2.5}


# --- renderers ----------------------------------------------------------------------------------


def sample_registry():
    reg = MetricsRegistry(Clock())
    r = reg.router("outgoing")
    c = r.client("/#/io.l5d.fs/web")
    c.start()
    c.finish(0.02, Cause.CONNECT_REFUSED)
    r.server("0.0.0.0", 4140).start()
    return reg


def test_tree_form():
    t = tree(sample_registry())
    web = t["rt"]["outgoing"]["client"]["#"]["io.l5d.fs"]["web"]
    assert web["requests"] == {"counter": 1}
    assert web["failures"]["counter"] == 1
    assert web["failures"]["connect"]["refused"] == {"counter": 1}
    assert web["pending"] == {"gauge": 0}
    assert web["request_latency_ms"]["stat.count"] == 1 and web["request_latency_ms"]["stat.p99"] == 20


def test_tree_query_and_missing_subtree():
    reg = sample_registry()
    sub = tree(reg, "rt/outgoing/server")
    assert sub["0.0.0.0"]["4140"]["pending"] == {"gauge": 1}
    with pytest.raises(NoSuchSubtree, match=r"^No such subtree: rt/nope$"):
        tree(reg, "rt/nope")


def test_flat_query_substring_and_regex():
    reg = sample_registry()
    assert set(flat(reg, "failures")) == {
        "rt/outgoing/client/#/io.l5d.fs/web/failures",
        "rt/outgoing/client/#/io.l5d.fs/web/failures/connect/refused",
        "rt/outgoing/server/0.0.0.0/4140/failures",
    }
    assert set(flat(reg, r"server/.*/requests$")) == {"rt/outgoing/server/0.0.0.0/4140/requests"}
    assert flat(reg, "[(") == {}  # an invalid pattern is a literal substring


def test_metrics_json_body():
    reg = sample_registry()
    body = json.loads(metrics_json(reg))
    assert body["rt/outgoing/client/#/io.l5d.fs/web/requests"] == 1
    pretty = metrics_json(reg, tree_form=True, q="rt/outgoing", pretty=True)
    assert b"\n  " in pretty and "client" in json.loads(pretty)


def test_prometheus_format():
    text = prometheus(sample_registry())
    lines = text.splitlines()
    assert "# TYPE hostproxy_client_requests_total counter" in lines
    assert (
        'hostproxy_client_failures_total{router="outgoing",client="/#/io.l5d.fs/web",cause="connect_refused"} 1'
        in lines
    )
    assert "# TYPE hostproxy_client_request_duration_seconds summary" in lines
    assert (
        'hostproxy_client_request_duration_seconds{router="outgoing",client="/#/io.l5d.fs/web",quantile="0.99"} 0.02'
        in lines
    )
    assert (
        'hostproxy_client_request_duration_seconds_count{router="outgoing",client="/#/io.l5d.fs/web"} 1'
        in lines
    )
    for line in lines:
        if not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            assert ":" not in name and name.startswith("hostproxy_")


def test_prometheus_escapes_label_values():
    reg = MetricsRegistry(Clock())
    reg.router("r").client('/$/inet/a"b\\c/80')
    assert 'client="/$/inet/a\\"b\\\\c/80"' in prometheus(reg)


# --- top-N ----------------------------------------------------------------------------------------


def test_top_n_space_saving_guarantee():
    clock = Clock()
    t = TopN(capacity=5, now=clock)
    rng = random.Random(4)
    truth: dict[str, int] = {}
    for _ in range(5000):
        clock.t += 1
        name = "hot" if rng.random() < 0.3 else f"cold{rng.randrange(500)}"
        truth[name] = truth.get(name, 0) + 1
        t.record(name, "naming/neg")
    rows = t.table()
    assert rows[0]["name"] == "hot"
    assert rows[0]["count"] - rows[0]["error"] <= truth["hot"] <= rows[0]["count"]
    assert len(rows) == 5 and t.evictions > 0


def test_top_n_truncates_names_and_rejects_bad_capacity():
    t = TopN(capacity=2, max_name=8)
    t.record("x" * 100)
    assert t.table()[0]["name"] == "x" * 8
    with pytest.raises(ValueError, match=r"^TopN capacity must be >= 1, got 0$"):
        TopN(capacity=0)


def test_top_n_keeps_each_names_last_error_truncated():
    t = TopN(capacity=4, max_error=10)
    t.record("/svc/a", "naming/failed", "first error")
    t.record("/svc/a", "naming/failed", "second, a much longer error")
    t.record("/svc/b", "naming/neg")
    rows = {r["name"]: r for r in t.table()}
    assert rows["/svc/a"]["last_error"] == "second, a "
    assert rows["/svc/b"]["last_error"] is None
    t.record("/svc/a", "naming/neg")  # a record without an error keeps the last one
    assert {r["name"]: r for r in t.table()}["/svc/a"]["last_error"] == "second, a "


# --- causes ---------------------------------------------------------------------------------------


def test_cause_taxonomy():
    assert {c.value for c in ALL_CAUSES} == {
        "identification",
        "naming/neg",
        "naming/failed",
        "naming/stale",
        "connect/refused",
        "connect/timeout",
        "connect/unreachable",
        "tls",
        "upstream/reset",
        "timeout/request",
        "timeout/attempt",
        "upstream/5xx",
        "upstream/grpc",
        "overload",
        "proxy/internal",
    }
    assert Cause.CONNECT_REFUSED.level is Level.CONNECTION
    assert Cause.UPSTREAM_5XX.level is Level.APPLICATION
    assert Cause.NAMING_NEG.level is Level.PROXY
    assert all(isinstance(c.level, Level) for c in ALL_CAUSES)
    assert not Cause.CONNECT_TIMEOUT.written and Cause.UPSTREAM_RESET.written
    assert parse_cause("tls") is Cause.TLS
    with pytest.raises(
        ValueError,
        match=r"^unknown failure cause 'bogus': expected one of identification, naming/neg, .*proxy/internal$",
    ):
        parse_cause("bogus")


def test_client_extras_expose_balancer_accrual_and_budget():
    from hostproxy.accrual import FailureAccrual, accrual_from_config
    from hostproxy.balancer import EndpointInfo, balancer_from_config
    from hostproxy.budget import BudgetConfig, RetryBudget

    clock = Clock()
    rng = random.Random(0)
    acc = FailureAccrual(
        accrual_from_config({"kind": "io.l5d.consecutiveFailures", "failures": 1}, rng), clock
    )
    lb = balancer_from_config(None, rng=rng, now=clock, available=acc.available)
    lb.update([EndpointInfo("10.0.0.1:80"), EndpointInfo("10.0.0.2:80")])
    budget = RetryBudget(BudgetConfig(), clock)
    reg = MetricsRegistry(clock)
    r = reg.router("out")
    r.client_extras("/#/io.l5d.fs/web", balancer=lb, accrual=acc, requeue_budget=budget)
    acc.on_response("10.0.0.1:80", ok=False)
    budget.try_withdraw()
    f = flat(reg)
    p = "rt/out/client/#/io.l5d.fs/web/"
    assert f[p + "loadbalancer/size"] == 2 and f[p + "loadbalancer/available"] == 1
    assert f[p + "failure_accrual/removals"] == 1
    assert f[p + "retries/budget"] == 99
    assert 'hostproxy_client_endpoints_available{router="out",client="/#/io.l5d.fs/web"} 1' in prometheus(reg)


def test_sliced_renderers_match_the_one_pass_ones() -> None:
    # The admin server renders in slices (yielding between them); the result must be the same.
    import json as _json
    import time as _time

    from hostproxy.metrics import MetricsRegistry
    from hostproxy.metrics.render import collect, flat, flat_json_chunks, prometheus, prometheus_chunks

    reg = MetricsRegistry(_time.monotonic)
    scope = reg.router("out")
    for i in range(300):
        c = scope.client(f"/#/io.l5d.fs/s{i}")
        c.start()
        c.finish(0.001 * (i % 7), None, 200)
    items = collect(list(reg.metrics()))
    assert _json.loads(b"".join(flat_json_chunks(items, None, 17))) == flat(reg)
    assert _json.loads(b"".join(flat_json_chunks(items, "s1", 5))) == flat(reg, "s1")
    assert "".join(prometheus_chunks(collect([m for m in reg.metrics() if m.prom]))) == prometheus(reg)
