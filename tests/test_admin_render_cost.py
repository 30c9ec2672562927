"""Cheap scrapes: the sliced, cached renderers give exactly the straightforward rendering, stay right
as values, the clock and the set of metrics change, and yield to other tasks between slices."""

from __future__ import annotations

import gc
import json
import math
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from test_admin_server import FakeAdminContext

import hostproxy.admin.handlers as handlers
from hostproxy.admin import AdminHandler
from hostproxy.causes import Cause
from hostproxy.http import Body, ConnInfo, Headers, Request, ServerParams
from hostproxy.metrics import MetricsRegistry, PromId, WindowedHistogram
from hostproxy.metrics.histogram import PERCENTILES, bucket_value, percentiles
from hostproxy.metrics.registry import CounterFn, reading
from hostproxy.metrics.render import (
    _fmt,
    _fmt_fast,
    _jnum,
    _num,
    flat_json_slices,
    metrics_json,
    prometheus,
    prometheus_slices,
)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# --- a straightforward reference rendering ---------------------------------------------------------


def ref_percentile(counts: dict[int, int], count: int, lo: float, hi: float, q: float) -> float:
    """Expand the buckets into their values, take the value at rank ceil(q*count), clamp."""
    values = [bucket_value(idx) for idx in sorted(counts) for _ in range(counts[idx])]
    rank = max(1, math.ceil(q * count))
    return float(min(max(values[rank - 1], lo), hi))


def ref_number(x: Any) -> Any:
    if isinstance(x, float) and x.is_integer() and abs(x) < 2**53:
        return int(x)
    return x


def ref_flat(reg: MetricsRegistry, q: str | None = None) -> bytes:
    out: dict[str, Any] = {}
    for m in reg.metrics():
        if q and q not in m.key:
            continue
        if m.kind == "counter":
            out[m.key] = m.obj.value  # type: ignore[union-attr]
        elif m.kind == "gauge":
            v = m.obj.read()  # type: ignore[union-attr]
            if v is not None and math.isfinite(v):
                out[m.key] = ref_number(v)
        else:
            snap = m.obj.hist.snapshot()  # type: ignore[union-attr]
            fields: dict[str, Any] = {"count": snap.count}
            if snap.count:
                fields.update(max=snap.max, min=snap.min, sum=snap.sum, avg=snap.sum / snap.count)
                for name, pq in PERCENTILES:
                    fields[name] = ref_percentile(snap.counts, snap.count, snap.min, snap.max, pq)
            for name, x in fields.items():
                out[f"{m.key}.{name}"] = ref_number(x)
    return json.dumps(dict(sorted(out.items())), separators=(",", ":")).encode()


def ref_prom_number(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if float(x).is_integer() and abs(x) < 2**53:
        return str(int(x))
    return repr(float(x))


def ref_labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    esc = [(k, v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')) for k, v in labels]
    return "{" + ",".join(f'{k}="{v}"' for k, v in esc) + "}"


def ref_prometheus(reg: MetricsRegistry) -> str:
    series: dict[str, dict[str, dict[Any, list[Any]]]] = {
        k: defaultdict(lambda: defaultdict(list)) for k in ("counter", "gauge", "stat")
    }
    helps: dict[str, str] = {}
    for m in reg.metrics():
        if m.prom is None:
            continue
        helps.setdefault(m.prom.family, m.prom.help)
        series[m.kind][m.prom.family][m.prom.labels].append(m)
    lines: list[str] = []
    for kind, ptype in (("counter", "counter"), ("gauge", "gauge"), ("stat", "summary")):
        for fam in sorted(series[kind]):
            body: list[str] = []
            for labels, ms in sorted(series[kind][fam].items()):
                if kind == "counter":
                    body.append(f"{fam}{ref_labels(labels)} {ref_prom_number(sum(m.obj.value for m in ms))}")
                elif kind == "gauge":
                    vs = [v for v in (m.obj.read() for m in ms) if v is not None]
                    if vs:
                        body.append(f"{fam}{ref_labels(labels)} {ref_prom_number(sum(vs))}")
                else:
                    scale = ms[0].obj.scale
                    snaps = [m.obj.hist.snapshot() for m in ms]
                    counts: dict[int, int] = defaultdict(int)
                    for s in snaps:
                        for k, v in s.counts.items():
                            counts[k] += v
                    count = sum(s.count for s in snaps)
                    if count:
                        lo, hi = min(s.min for s in snaps if s.count), max(s.max for s in snaps if s.count)
                        for qs in ("0.5", "0.9", "0.95", "0.99", "0.999"):
                            p = ref_percentile(counts, count, lo, hi, float(qs))
                            lbl = ref_labels((*labels, ("quantile", qs)))
                            body.append(f"{fam}{lbl} {ref_prom_number(p * scale)}")
                    total = sum(m.obj.hist.total_sum for m in ms) * scale
                    body.append(f"{fam}_sum{ref_labels(labels)} {ref_prom_number(total)}")
                    n = sum(m.obj.hist.total_count for m in ms)
                    body.append(f"{fam}_count{ref_labels(labels)} {ref_prom_number(n)}")
            if body:
                if helps[fam]:
                    lines.append(f"# HELP {fam} {helps[fam]}")
                lines.append(f"# TYPE {fam} {ptype}")
                lines += body
    return "".join(line + "\n" for line in lines)


# --- a registry with varied stats ------------------------------------------------------------------


class Box:
    """A mutable gauge source."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __call__(self) -> Any:
        if isinstance(self.value, Exception):
            raise self.value
        return self.value


def varied_registry(clients: int = 40) -> tuple[MetricsRegistry, Clock, dict[str, Box]]:
    clock = Clock()
    reg = MetricsRegistry(clock, max_label_values=25)  # later clients overflow the client label
    r = reg.router("out")
    boxes: dict[str, Box] = {}
    for i in range(clients):
        c = r.client(f"/#/io.l5d.fs/web-{i}")
        for k in range(i % 4):
            c.start()
            c.finish(0.0013 * (k + 1) * (i + 1), Cause.CONNECT_REFUSED if k == 2 else None, 200 + k)
        box = boxes[f"g{i}"] = Box(float(i) / 3)
        r.client_gauge(f"/#/io.l5d.fs/web-{i}", "weird", box, "A weird gauge")
    srv = r.server("0.0.0.0", 4140)
    srv.start()
    for value, name in [
        (2.0**60, "huge"),
        (-0.0, "negzero"),
        (math.nan, "nan"),
        (math.inf, "inf"),
        (-2.5e-7, "tiny"),
        (ZeroDivisionError("x"), "broken"),
        (3, "int"),
    ]:
        boxes[name] = Box(value)
        reg.gauge(f"misc/{name}", boxes[name], PromId("hostproxy_misc", (("name", name),), "Misc"))
    boxes["dead"] = Box(ZeroDivisionError("x"))
    reg.gauge("misc/dead", boxes["dead"], PromId("hostproxy_dead", (), "All unreadable"))
    reg.counter("misc/float_counter", PromId("hostproxy_float_total", (), "")).incr(0.5)  # type: ignore[arg-type]
    reg.counter("misc/big", PromId("hostproxy_big_total", ())).incr(2**60 + 1)
    reg.counter('misc/ünïcode"quote', PromId("hostproxy_unicode_total", (("k", 'a"b\\c\nd'),), "U"))
    reg.stat("misc/empty_ms", PromId("hostproxy_empty_seconds", (), "Empty"), scale=0.001)
    wide = reg.stat("misc/wide", PromId("hostproxy_wide", (("x", "1"),), "Wide"))
    for v in (0, 1, 7, 15, 16, 17, 1000, 12345.678, 2**41, -4):
        wide.add(v)
    return reg, clock, boxes


def check(reg: MetricsRegistry, slice_size: int = 7) -> None:
    flat = b"".join(flat_json_slices(reg, None, slice_size))
    assert flat == ref_flat(reg) == metrics_json(reg)
    for q in ("web-1", "misc"):
        assert b"".join(flat_json_slices(reg, q, slice_size)) == ref_flat(reg, q) == metrics_json(reg, q=q)
    prom = "".join(prometheus_slices(reg, slice_size))
    assert prom == ref_prometheus(reg) == prometheus(reg)


def test_sliced_renderers_equal_the_reference_rendering() -> None:
    reg, _, _ = varied_registry()
    check(reg)
    check(reg, slice_size=1)
    check(reg, slice_size=100_000)
    text = "".join(prometheus_slices(reg))
    assert 'client="overflow"' in text and "# TYPE hostproxy_dead" not in text
    assert b'"misc/\\u00fcn\\u00efcode\\"quote":0' in b"".join(flat_json_slices(reg))


def test_renderings_follow_changes_between_scrapes() -> None:
    reg, clock, boxes = varied_registry()
    check(reg)
    # New values, records and gauges readings: the cached text must not be served stale.
    r = reg.router("out")
    c = r.client("/#/io.l5d.fs/web-3")
    c.start()
    c.finish(0.5, None, 503)
    boxes["g3"].value = 1e300
    boxes["huge"].value = 7.0
    boxes["broken"].value = 1.25
    reg.counter("misc/big").incr()
    check(reg)
    # The clock moves on: the window slides (some stats lose records, then all of them).
    clock.t += 30
    check(reg)
    clock.t += 61
    check(reg)
    assert json.loads(b"".join(flat_json_slices(reg)))["misc/wide.count"] == 0
    # Metrics come and go.
    r.client("/#/io.l5d.fs/new").start()
    check(reg)
    r.drop_client("/#/io.l5d.fs/web-0")
    check(reg)
    assert b"web-0/" not in b"".join(flat_json_slices(reg))


def test_keys_sorting_inside_a_stats_fields_still_render_like_the_reference() -> None:
    reg = MetricsRegistry(Clock())
    reg.stat("a/x").add(3)
    reg.counter("a/x-y").incr()  # '-' sorts before '.': between `a/x` and `a/x.avg`
    reg.gauge("a/x.count", lambda: 9)  # the same key as one of the stat's fields
    reg.counter("a/w").incr(2)
    flat = b"".join(flat_json_slices(reg, None, 1))
    assert flat == ref_flat(reg) == metrics_json(reg)
    assert flat.index(b'"a/x-y"') < flat.index(b'"a/x.avg"')


def test_a_read_pass_calls_statistics_once_per_object() -> None:
    class Source:
        calls = 0

        def statistics(self) -> dict[str, Any]:
            self.calls += 1
            return {
                k: self.calls
                for k in (
                    "size",
                    "available",
                    "busy",
                    "load",
                    "meanweight",
                    "adds",
                    "removes",
                    "updates",
                    "max_effort_exhausted",
                )
            }

    reg = MetricsRegistry(Clock())
    src = Source()
    reg.router("out").client_extras("/#/io.l5d.fs/web", balancer=src)  # type: ignore[arg-type]
    flat = json.loads(b"".join(flat_json_slices(reg)))
    assert src.calls == 1 and flat["rt/out/client/#/io.l5d.fs/web/loadbalancer/size"] == 1
    assert flat["rt/out/client/#/io.l5d.fs/web/loadbalancer/updates"] == 1
    readers = [m.obj for m in reg.metrics()]
    # size and available are levels (gauges); adds, removes, updates and max_effort_exhausted count up
    assert [type(r).__name__ for r in readers[:2]] == ["Gauge", "Gauge"]
    assert sum(isinstance(r, CounterFn) for r in readers) == 4

    def read(r: Any) -> float:
        return r.value if isinstance(r, CounterFn) else r.read()

    # Outside a read pass every read is fresh; each pass reads once, gauges and kept counters alike.
    assert [read(r) for r in readers[:2]] == [2.0, 3.0]
    with reading():
        assert {read(r) for r in readers} == {4.0}
    assert src.calls == 4


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.lists(st.integers(0, 2**42), min_size=1, max_size=60))
def test_one_pass_percentiles_equal_the_rank_definition(values: list[int]) -> None:
    clock = Clock()
    h = WindowedHistogram(clock)
    for i, v in enumerate(values):
        clock.t += i % 3 * 4.0  # spread the records over several slices
        h.add(v)
    count, total, lo, hi, counts = h.window()
    snap = h.snapshot()
    assert (count, total, lo, hi, counts) == (snap.count, snap.sum, snap.min, snap.max, snap.counts)
    qs = (0.0001, 0.5, 0.9, 0.95, 0.99, 0.999, 0.9999, 1.0)
    expected = [ref_percentile(counts, count, lo, hi, q) for q in qs]
    assert percentiles(counts, count, lo, hi, qs) == expected
    assert [snap.percentile(q) for q in qs] == expected


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**70), 2**70)))
def test_direct_number_formatting_equals_json_and_prometheus_formatting(x: float) -> None:
    assert _jnum(x) == json.dumps(_num(x))
    assert _fmt_fast(x) == _fmt(x)


def test_number_formatting_edges() -> None:
    for x in (0.0, -0.0, 2.0**53, -(2.0**53), 2.0**53 - 1, 1e16, 0.1, 1e-7, math.inf, -math.inf, math.nan, 5):
        assert _jnum(x) == json.dumps(_num(x))
        assert _fmt_fast(x) == _fmt(x)


# --- the admin handler yields between slices -------------------------------------------------------


def _request(target: str) -> Request:
    return Request("GET", target, Headers([(b"host", b"127.0.0.1:9990")]), Body.from_bytes(b""))


def _conn() -> ConnInfo:
    return ConnInfo(
        peer=("127.0.0.1", 40000), local=("127.0.0.1", 9990), params=ServerParams(), connection_id=1
    )


async def _render_beside_a_ticker(handler: AdminHandler, target: str) -> tuple[bytes, int]:
    """Serve `target` while another task counts its own turns; returns the body and the count."""
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await trio.sleep(0)
        start = ticks
        response = await handler(_request(target), _conn())
        body = await response.body.read_all()
        done = True
    assert response.status == 200
    return body, ticks - start


def _big_context(clients: int) -> FakeAdminContext:
    ctx = FakeAdminContext()
    r = ctx.metrics.router("out")
    for i in range(clients):
        c = r.client(f"/#/io.l5d.fs/svc-{i}")
        c.start()
        c.finish(0.002, None, 200)
    return ctx


async def test_scrapes_let_other_tasks_run_between_slices(monkeypatch: Any) -> None:
    monkeypatch.setattr(handlers, "SCRAPE_SLICE", 50)
    ctx = _big_context(100)  # about 900 metrics: at least 18 slices
    handler = AdminHandler(ctx)
    body, ticks = await _render_beside_a_ticker(handler, "/admin/metrics.json")
    assert body == metrics_json(ctx.metrics) and ticks >= len(ctx.metrics) // 50
    body, ticks = await _render_beside_a_ticker(handler, "/admin/metrics/prometheus")
    prom_metrics = sum(1 for m in ctx.metrics.metrics() if m.prom is not None)
    assert body.decode() == prometheus(ctx.metrics) and ticks >= prom_metrics // 50 - 1


async def test_slices_wait_while_other_tasks_have_work(monkeypatch: Any) -> None:
    """A burst of work in other tasks runs to its end before the render's next slice; a loop that
    never idles (the ticker above) still gets one slice per SLICE_WAIT_MAX_S."""
    monkeypatch.setattr(handlers, "SCRAPE_SLICE", 50)
    real = handlers.flat_json_slices
    events: list[str] = []

    def recorded(*args: Any) -> Iterator[bytes]:
        for part in real(*args):
            events.append("slice")
            yield part

    monkeypatch.setattr(handlers, "flat_json_slices", recorded)
    ctx = _big_context(100)
    handler = AdminHandler(ctx)

    async def burst() -> None:
        for _ in range(30):
            events.append("burst")
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(burst)
        response = await handler(_request("/admin/metrics.json"), _conn())
    assert await response.body.read_all() == metrics_json(ctx.metrics)
    first, last = events.index("burst"), len(events) - 1 - events[::-1].index("burst")
    assert events[first : last + 1] == ["burst"] * 30  # no slice in the middle of the burst
    assert events.count("slice") >= len(ctx.metrics) // 50


class SlicedClientsContext(FakeAdminContext):
    """A context that lets the handler build each client's state in its slice."""

    def __init__(self, clients: int) -> None:
        super().__init__()
        self.built = 0
        self.states = {
            f"/#/io.l5d.fs/svc-{i}": {"state": "bound", "n": i, "ü": [i, None]} for i in range(clients)
        }

    def client_state(self) -> dict[str, Any]:
        return self.states

    def client_state_entries(self) -> list[tuple[str, Any]]:
        def build(cid: str) -> Any:
            self.built += 1
            return self.states[cid]

        return [(cid, lambda cid=cid: build(cid)) for cid in self.states]


async def test_client_state_is_built_and_serialised_in_slices(monkeypatch: Any) -> None:
    monkeypatch.setattr(handlers, "CLIENT_STATE_SLICE", 10)
    sliced = SlicedClientsContext(95)
    expected = json.dumps(sliced.states, separators=(",", ":"), ensure_ascii=False).encode()
    body, ticks = await _render_beside_a_ticker(AdminHandler(sliced), "/client_state.json")
    assert body == expected and ticks >= 95 // 10 and sliced.built == 95

    # A context without client_state_entries(): the same document, from client_state().
    plain = FakeAdminContext()
    plain.client_state = lambda: sliced.states  # type: ignore[method-assign]
    body, _ = await _render_beside_a_ticker(AdminHandler(plain), "/client_state.json")
    assert body == expected

    empty = SlicedClientsContext(0)
    body, _ = await _render_beside_a_ticker(AdminHandler(empty), "/client_state.json")
    assert body == b"{}"


async def test_scrape_steps_run_with_the_collector_paused_and_restore_it() -> None:
    seen: list[bool] = []

    def steps() -> Any:
        for i in range(3):
            seen.append(gc.isenabled())
            yield i

    assert gc.isenabled()
    assert await handlers._drain_sliced(steps()) == [0, 1, 2]
    assert seen == [False, False, False] and gc.isenabled()
    gc.disable()
    try:  # a collector the process turned off stays off
        await handlers._drain_sliced(steps())
        assert not gc.isenabled()
    finally:
        gc.enable()
