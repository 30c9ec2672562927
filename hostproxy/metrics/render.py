"""Renderers: `/admin/metrics.json` (flat, `?tree=1`, `?q=`) and the Prometheus text format.

Theory of operation
-------------------
Renderers read a `MetricsRegistry` snapshot and return plain data or text; the admin server only
serialises and serves. Flat form: `{key: number}`, stats expanded to `key.count` and, when the last
minute has data, `.max .min .p50 .p90 .p95 .p99 .p9990 .p9999 .sum .avg`. Tree form: keys split on
`/`, a node holding its own value as `{"counter": n}`, `{"gauge": x}` or `{"stat.count": …}` next to
its children (a child segment spelt like one of those keys is written `/<segment>`). `q` selects keys: in flat form by regular expression search (a plain substring works;
an invalid pattern is used as a literal substring; one that backtracking could take unbounded time over,
`UnsafeQuery`, see `check_query`), in tree form as the path of a subtree (missing:
`NoSuchSubtree`, which the admin answers with 404 `{"error": "No such subtree: …"}`).

Prometheus: only metrics registered with a `PromId` are exported, grouped by family; counters end
in `_total` and never go down (a `HeldCounter` shows the successes a late failure took back until new
ones make up for them), latencies are summaries in seconds with `quantile` labels over the last minute
and cumulative `_sum`/`_count`. Series that share a family and labels (label overflow) are summed.
Label values and HELP texts are escaped as the text format requires (`promtool check metrics` passes).

Scrapes of a busy proxy (tens of thousands of metrics) go through `flat_json_slices` and
`prometheus_slices`, which read and render in one pass, a slice of metrics per step, so that the admin
server can yield to the event loop between steps. Their cost is kept low by doing per scrape only
what changes: the sorted layout (metric order, Prometheus families and label groups) is cached per
registry `version`; each metric's text (quoted JSON key, a stat's eleven `"key.field":` prefixes,
Prometheus series prefixes) is built once and kept in `Metric.render`; numbers are formatted
directly (the same text `json.dumps` writes); histogram percentiles come from one pass over the
buckets. Their output is byte for byte that of `metrics_json(reg)` and `prometheus(reg)`.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from operator import attrgetter
from typing import Any

from hostproxy.metrics.histogram import PERCENTILES, HistogramSnapshot, percentiles
from hostproxy.metrics.registry import (
    Counter,
    CounterFn,
    Gauge,
    HeldCounter,
    Labels,
    Metric,
    MetricsRegistry,
    Stat,
    reading,
)

__all__ = [
    "NoSuchSubtree",
    "UnsafeQuery",
    "check_query",
    "collect",
    "flat",
    "flat_from",
    "flat_json_chunks",
    "flat_json_slices",
    "metrics_json",
    "metrics_json_from",
    "prometheus",
    "prometheus_chunks",
    "prometheus_from",
    "prometheus_slices",
    "tree",
    "tree_from",
]

PROM_QUANTILES = (("0.5", 0.5), ("0.9", 0.9), ("0.95", 0.95), ("0.99", 0.99), ("0.999", 0.999))


class NoSuchSubtree(LookupError):
    def __init__(self, q: str) -> None:
        super().__init__(f"No such subtree: {q}")
        self.q = q


def _num(x: float) -> float | int:
    if isinstance(x, float) and x.is_integer() and abs(x) < 2**53:
        return int(x)
    return x


_sre_parser: Any = importlib.import_module("re._parser")
_REPEATS = frozenset({"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"})
#: The most variable repetitions (``*``, ``+``, ``?``, ``{m,n}``) a ``q`` pattern may have.
MAX_QUERY_REPEATS = 2


class UnsafeQuery(ValueError):
    """A ``q`` regular expression whose matching may take exponential (or high-polynomial) time."""


def check_query(q: str | None) -> None:
    """Raise ``UnsafeQuery`` for a flat-form ``q`` that Python's backtracking ``re`` could take
    unbounded time over (on the event loop): a repetition inside another, an alternation inside a
    repetition, a backreference, or more than ``MAX_QUERY_REPEATS`` variable repetitions. A ``q`` that
    is not a regular expression is a literal substring and always safe."""
    if not q:
        return
    try:
        re.compile(q)
        parsed = _sre_parser.parse(q)
    except (re.error, RecursionError, OverflowError, ValueError):
        return
    variable = 0

    def walk(items: Any, in_repeat: bool) -> str | None:
        nonlocal variable
        for op, av in items:
            name = str(op)
            if name in _REPEATS:
                lo, hi, body = av
                if hi > 1 and in_repeat:
                    return "a repetition inside another repetition"
                if lo != hi:
                    variable += 1
                    if variable > MAX_QUERY_REPEATS:
                        return f"more than {MAX_QUERY_REPEATS} variable repetitions (*, +, ?, {{m,n}})"
                found = walk(body, in_repeat or hi > 1)
            elif name == "BRANCH":
                if in_repeat:
                    return "an alternation inside a repetition"
                found = next((f for b in av[1] if (f := walk(b, in_repeat)) is not None), None)
            elif name == "SUBPATTERN":
                found = walk(av[-1], in_repeat)
            elif name in ("ASSERT", "ASSERT_NOT"):
                found = walk(av[1], in_repeat)
            elif name == "ATOMIC_GROUP":
                found = walk(av, in_repeat)
            elif name in ("GROUPREF", "GROUPREF_EXISTS"):
                return "a backreference"
            else:
                found = None
            if found is not None:
                return found
        return None

    problem = walk(parsed, False)
    if problem is not None:
        raise UnsafeQuery(
            f"q={q[:80]!r} has {problem}, which a regular expression search may take unbounded time "
            "over: use a plain substring (q=server) or a simpler pattern (q=rt/.*/client/.*/requests)"
        )


def _matcher(q: str | None) -> Any:
    if not q:
        return lambda key: True
    try:
        rx = re.compile(q)
    except re.error:
        return lambda key: q in key
    check_query(q)
    return lambda key: rx.search(key) is not None


def collect(metrics: Sequence[Metric]) -> list[tuple[Metric, Any]]:
    """Read the values of ``metrics`` now: counters and gauges as numbers, stats as
    ``(window snapshot, total sum, total count)``. The renderers below work on this snapshot only, so
    the admin server can collect in small slices on the event loop and render the rest elsewhere."""
    out: list[tuple[Metric, Any]] = []
    with reading():
        for m in metrics:
            obj = m.obj
            if isinstance(obj, Counter | CounterFn):
                out.append((m, obj.value))
            elif isinstance(obj, Gauge):
                out.append((m, obj.read()))
            elif isinstance(obj, Stat):
                out.append((m, (obj.hist.snapshot(), obj.hist.total_sum, obj.hist.total_count)))
    return out


def flat(reg: MetricsRegistry, q: str | None = None) -> dict[str, float | int]:
    return flat_from(collect(list(reg.metrics())), q)


def flat_from(items: Iterable[tuple[Metric, Any]], q: str | None = None) -> dict[str, float | int]:
    match = _matcher(q)
    out: dict[str, float | int] = {}
    for m, v in items:
        if not match(m.key):
            continue
        if isinstance(m.obj, Counter | CounterFn):
            out[m.key] = v
        elif isinstance(m.obj, Gauge):
            if v is not None and math.isfinite(v):
                out[m.key] = _num(v)
        elif isinstance(m.obj, Stat):
            for field, x in v[0].summary().items():
                out[f"{m.key}.{field}"] = _num(x)
    return dict(sorted(out.items()))


def flat_json_chunks(
    items: Sequence[tuple[Metric, Any]], q: str | None = None, slice_size: int = 256
) -> Iterator[bytes]:
    """``/admin/metrics.json`` (flat, compact) as byte fragments, one per slice of metrics, so a
    caller can yield to other work between them. Keys come in metric-key order (a stat's fields right
    after its key)."""
    ordered = sorted(items, key=lambda it: it[0].key)
    yield b"{"
    first = True
    for i in range(0, len(ordered), slice_size):
        part = flat_from(ordered[i : i + slice_size], q)
        if not part:
            continue
        text = json.dumps(part, separators=(",", ":"))[1:-1].encode()
        yield text if first else b"," + text
        first = False
    yield b"}"


def tree(reg: MetricsRegistry, q: str | None = None) -> dict[str, Any]:
    return tree_from(collect(list(reg.metrics())), q)


def tree_from(items: Iterable[tuple[Metric, Any]], q: str | None = None) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for m, v in items:
        node = root
        for seg in m.key.split("/"):
            if seg in ("counter", "gauge") or seg.startswith("stat."):
                seg = "/" + seg  # a child named like a node's own value (a segment never holds "/")
            node = node.setdefault(seg, {})
        if isinstance(m.obj, Counter | CounterFn):
            node["counter"] = v
        elif isinstance(m.obj, Gauge):
            if v is not None and math.isfinite(v):
                node["gauge"] = _num(v)
        elif isinstance(m.obj, Stat):
            for field, x in v[0].summary().items():
                node[f"stat.{field}"] = _num(x)
    if q:
        for seg in q.strip("/").split("/"):
            if not isinstance(root, dict) or seg not in root:
                raise NoSuchSubtree(q)
            root = root[seg]
    return root


def metrics_json(
    reg: MetricsRegistry, *, tree_form: bool = False, q: str | None = None, pretty: bool = False
) -> bytes:
    """The body of `/admin/metrics.json`; raises `NoSuchSubtree` for a missing `q` with `tree_form`."""
    return metrics_json_from(collect(list(reg.metrics())), tree_form=tree_form, q=q, pretty=pretty)


def metrics_json_from(
    items: list[tuple[Metric, Any]], *, tree_form: bool = False, q: str | None = None, pretty: bool = False
) -> bytes:
    data = tree_from(items, q) if tree_form else flat_from(items, q)
    if pretty:
        return json.dumps(data, indent=2, sort_keys=True).encode()
    return json.dumps(data, separators=(",", ":")).encode()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    """A ``# HELP`` text as the text format requires: a backslash and a line feed escaped (a quote is
    not: Prometheus refuses ``\\"`` there)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


def _fmt(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) < 2**53):
        return str(int(x))
    return repr(float(x))


def prometheus(reg: MetricsRegistry) -> str:
    return prometheus_from(collect([m for m in reg.metrics() if m.prom is not None]))


def prometheus_from(items: Iterable[tuple[Metric, Any]]) -> str:
    return "".join(prometheus_chunks(items))


def prometheus_chunks(items: Iterable[tuple[Metric, Any]]) -> Iterator[str]:
    """The Prometheus exposition as text fragments (one metric family, or part of a large one, each)."""
    counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
    gauges: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
    stats: dict[str, dict[Labels, list[tuple[Stat, Any]]]] = defaultdict(lambda: defaultdict(list))
    helps: dict[str, str] = {}
    for m, value in items:
        if m.prom is None:
            continue
        fam, labels = m.prom.family, m.prom.labels
        helps.setdefault(fam, m.prom.help)
        if isinstance(m.obj, Counter | CounterFn):
            counters[fam][labels] += value + m.obj.held if type(m.obj) is HeldCounter else value
        elif isinstance(m.obj, Gauge):
            if value is not None:
                gauges[fam][labels] += value
        elif isinstance(m.obj, Stat):
            stats[fam][labels].append((m.obj, value))
    lines: list[str] = []

    def flush() -> Iterator[str]:
        if lines:
            yield "\n".join(lines) + "\n"
            lines.clear()

    def head(fam: str, kind: str) -> None:
        if helps.get(fam):
            lines.append(f"# HELP {fam} {_escape_help(helps[fam])}")
        lines.append(f"# TYPE {fam} {kind}")

    for fam in sorted(counters):
        head(fam, "counter")
        for labels, v in sorted(counters[fam].items()):
            lines.append(f"{fam}{_labels(labels)} {_fmt(v)}")
        yield from flush()
    for fam in sorted(gauges):
        head(fam, "gauge")
        for labels, v in sorted(gauges[fam].items()):
            lines.append(f"{fam}{_labels(labels)} {_fmt(v)}")
        yield from flush()
    for fam in sorted(stats):
        head(fam, "summary")
        for labels, group in sorted(stats[fam].items()):
            scale = group[0][0].scale
            snap = HistogramSnapshot.merge(v[0] for _, v in group)
            if snap.count:
                for qs, q in PROM_QUANTILES:
                    lbl = _labels(labels + (("quantile", qs),))
                    lines.append(f"{fam}{lbl} {_fmt(snap.percentile(q) * scale)}")
            total_sum = sum(v[1] for _, v in group) * scale
            total_count = sum(v[2] for _, v in group)
            lines.append(f"{fam}_sum{_labels(labels)} {_fmt(total_sum)}")
            lines.append(f"{fam}_count{_labels(labels)} {_fmt(total_count)}")
            if len(lines) >= 512:
                yield from flush()
        yield from flush()


# -- the scrape path: cached layouts and text, numbers formatted directly -----------------------------

#: Keys a ``q`` pattern is matched against per slice (a regex search costs more than reading a metric).
QUERY_SLICE = 200
#: Metrics read and rendered per slice (one event-loop step) by the sliced renderers; at about a
#: microsecond a metric, a slice stays within a few milliseconds.
SLICE_METRICS = 2000

# A stat's flat fields in the sorted order of their keys (`key.avg` < `key.count` < ... < `key.sum`).
_STAT_FIELDS = ("avg", "count", "max", "min", *(name for name, _ in PERCENTILES), "sum")
_FIELD_QS = tuple(q for _, q in PERCENTILES)
_PROM_QS = tuple(q for _, q in PROM_QUANTILES)
_MAX_EXACT = float(2**53)
_INF = math.inf
_NO_KEY = (-1, -1)


class _Text:
    """A metric's flat JSON text: its quoted key (a stat's eleven `"key.field":` prefixes), built on
    first use and kept, since a key never changes; and a stat's last rendered members with the
    `window_key()` they are valid for (an idle stat is not summarised again)."""

    __slots__ = ("json_key", "json_fields", "stat_key", "stat_text", "last", "last_text")

    def __init__(self, m: Metric) -> None:
        quoted = json.dumps(m.key)
        self.json_key = quoted + ":"
        self.json_fields: tuple[str, ...] = ()
        self.stat_key = _NO_KEY
        self.stat_text = ""
        self.last: Any = None  # a counter's or gauge's last value (int or float) and its member text
        self.last_text = ""
        if m.kind == "stat":
            self.json_fields = tuple(f'{quoted[:-1]}.{f}":' for f in _STAT_FIELDS)


def _jnum(x: float) -> str:
    """`json.dumps(_num(x))`, faster: integral floats as integers, other floats as `repr`."""
    if type(x) is float:
        if x.is_integer() and -_MAX_EXACT < x < _MAX_EXACT:
            return str(int(x))
        if x == x and x != _INF and x != -_INF:
            return float.__repr__(x)
    elif type(x) is int:
        return int.__repr__(x)
    return json.dumps(_num(x))


def _stat_members(t: _Text, hist: Any) -> str:
    """A stat's flat JSON members, from its window (cached while `window_key()` stays the same)."""
    key = hist.window_key()
    if key == t.stat_key:
        return t.stat_text
    count, total, lo, hi, counts = hist.window()
    f = t.json_fields
    if count:
        jnum = _jnum
        p50, p90, p95, p99, p999, p9999 = percentiles(counts, count, lo, hi, _FIELD_QS)
        text = (
            f"{f[0]}{jnum(total / count)},{f[1]}{count},{f[2]}{jnum(hi)},{f[3]}{jnum(lo)},"
            f"{f[4]}{jnum(p50)},{f[5]}{jnum(p90)},{f[6]}{jnum(p95)},{f[7]}{jnum(p99)},"
            f"{f[8]}{jnum(p999)},{f[9]}{jnum(p9999)},{f[10]}{jnum(total)}"
        )
    else:
        text = f[1] + _jnum(count)
    t.stat_key, t.stat_text = key, text
    return text


def _flat_slice(metrics: Sequence[Metric]) -> list[str]:
    """The flat JSON members (`"key":value`) of `metrics`, read now, in order."""
    parts: list[str] = []
    append = parts.append
    isfinite = math.isfinite
    with reading():
        for m in metrics:
            t = m.render
            if t is None:
                t = m.render = _Text(m)
            kind = m.kind
            if kind == "counter":
                v = m.obj.value  # type: ignore[union-attr]
                if type(v) is int:
                    if v != t.last or type(t.last) is not int:
                        t.last, t.last_text = v, t.json_key + int.__repr__(v)
                    append(t.last_text)
                else:
                    append(t.json_key + json.dumps(v))
            elif kind == "gauge":
                # Gauge.read() gives floats; equal floats render the same (0.0 and -0.0 both as 0).
                v = m.obj.read()  # type: ignore[union-attr]
                if v is not None and isfinite(v):
                    if v != t.last or type(t.last) is not float:
                        t.last, t.last_text = v, t.json_key + _jnum(v)
                    append(t.last_text)
            else:
                append(_stat_members(t, m.obj.hist))  # type: ignore[union-attr]
    return parts


def _flat_layout(reg: MetricsRegistry, slice_size: int) -> Iterator[tuple[list[Metric], bool] | None]:
    """Yields None between steps, then the registry's metrics sorted by key and whether rendering them
    in that order, a stat's fields together, gives keys in strictly ascending order (true unless some
    key sorts between a stat's `.avg` and `.sum`, or equals one of them). Cached per version, after
    any deferred records were applied (a record may add a metric: a new status or failure cause)."""
    reg.flush()  # (``metrics()`` does it too, but a cached layout does not call it)
    cached = reg.render_cache.get("flat")
    if cached is not None and cached[0] == reg.version:
        yield cached[1]
        return
    version = reg.version
    ordered = sorted(reg.metrics(), key=attrgetter("key"))
    ok = True
    prev_last = ""
    for i, m in enumerate(ordered):
        if i and i % slice_size == 0:
            yield None
        if m.kind == "stat":
            if i and not prev_last < m.key + ".avg":
                ok = False
                break
            prev_last = m.key + ".sum"
        else:
            if i and not prev_last < m.key:
                ok = False
                break
            prev_last = m.key
    layout = (ordered, ok)
    reg.render_cache["flat"] = (version, layout)
    yield layout


def flat_json_slices(
    reg: MetricsRegistry, q: str | None = None, slice_size: int = SLICE_METRICS
) -> Iterator[bytes]:
    """``/admin/metrics.json`` (flat, compact) as byte fragments whose concatenation is exactly
    ``metrics_json(reg, q=q)``. Each step reads and renders at most ``slice_size`` metrics, so a caller
    can yield to other work between steps; values are read as the steps run."""
    layout = None
    for layout in _flat_layout(reg, slice_size):
        if layout is None:
            yield b""
    assert layout is not None
    ordered, ok = layout
    if q:
        match = _matcher(q)
        kept: list[Metric] = []
        for i in range(0, len(ordered), QUERY_SLICE):
            if i:
                yield b""
            kept.extend(m for m in ordered[i : i + QUERY_SLICE] if match(m.key))
        ordered = kept
    if not ok:
        # Some key sorts inside a stat's fields: read in slices, then sort the whole document.
        items: list[tuple[Metric, Any]] = []
        by_seq = sorted(ordered, key=attrgetter("seq"))
        for i in range(0, len(by_seq), slice_size):
            items.extend(collect(by_seq[i : i + slice_size]))
            yield b""
        yield json.dumps(flat_from(items), separators=(",", ":")).encode()
        return
    first = True
    yield b"{"
    for i in range(0, len(ordered), slice_size):
        parts = _flat_slice(ordered[i : i + slice_size])
        if not parts:
            yield b""
            continue
        text = ",".join(parts).encode()
        yield text if first else b"," + text
        first = False
    yield b"}"


class _PromSeries:
    """One Prometheus series (a family and a label set): the metrics summed into it, the family's
    header lines, and its line prefixes (built on first use) and, for a summary, its last lines with
    the `window_key()`s they are valid for."""

    __slots__ = ("kind", "family", "labels", "head", "metrics", "line", "quantiles", "sums", "key", "text")

    def __init__(self, kind: str, family: str, labels: Labels, head: list[str], metrics: list[Metric]):
        self.kind = kind
        self.family = family
        self.labels = labels
        self.head = head
        self.metrics = metrics
        self.line = ""
        self.quantiles: tuple[str, ...] = ()
        self.sums: tuple[str, str] = ("", "")
        self.key: Any = None
        self.text: list[str] = []

    def prefixes(self) -> None:
        fam, labels = self.family, self.labels
        self.line = f"{fam}{_labels(labels)} "
        if self.kind == "stat":
            self.quantiles = tuple(
                f"{fam}{_labels(labels + (('quantile', qs),))} " for qs, _ in PROM_QUANTILES
            )
            self.sums = (f"{fam}_sum{_labels(labels)} ", f"{fam}_count{_labels(labels)} ")


def _prom_layout(reg: MetricsRegistry, slice_size: int) -> Iterator[list[_PromSeries] | None]:
    """Yields None between steps, then every series in output order: counter, gauge and summary
    families (each sorted by name), each family's series sorted by labels. Cached per version, after
    any deferred records were applied (as ``_flat_layout``)."""
    reg.flush()
    cached = reg.render_cache.get("prometheus")
    if cached is not None and cached[0] == reg.version:
        yield cached[1]
        return
    version = reg.version
    kinds: dict[str, dict[str, dict[Labels, list[Metric]]]] = {"counter": {}, "gauge": {}, "stat": {}}
    helps: dict[str, str] = {}
    for i, m in enumerate(reg.metrics()):
        if i and i % slice_size == 0:
            yield None
        prom = m.prom
        if prom is None:
            continue
        fam = prom.family
        if fam not in helps:
            helps[fam] = prom.help
        kinds[m.kind].setdefault(fam, {}).setdefault(prom.labels, []).append(m)
    series: list[_PromSeries] = []
    for kind, ptype in (("counter", "counter"), ("gauge", "gauge"), ("stat", "summary")):
        families = kinds[kind]
        for fam in sorted(families):
            head = [f"# HELP {fam} {_escape_help(helps[fam])}"] if helps[fam] else []
            head.append(f"# TYPE {fam} {ptype}")
            series.extend(
                _PromSeries(kind, fam, labels, head, ms) for labels, ms in sorted(families[fam].items())
            )
        yield None
    reg.render_cache["prometheus"] = (version, series)
    yield series


def _fmt_fast(x: float) -> str:
    """`_fmt(x)` for the common types without its checks."""
    if type(x) is float:
        if x.is_integer() and -_MAX_EXACT < x < _MAX_EXACT:
            return str(int(x))
        if x != _INF and x != -_INF:
            return float.__repr__(x)
    return _fmt(x)


def _prom_summary(s: _PromSeries, out: list[str]) -> None:
    """A summary series' lines (cached while every member's `window_key()` stays the same)."""
    stats: list[Stat] = [m.obj for m in s.metrics]  # type: ignore[misc]
    if len(stats) == 1:
        key: Any = stats[0].hist.window_key()
    else:
        key = tuple(st.hist.window_key() for st in stats)
    if key == s.key:
        out.extend(s.text)
        return
    fmt = _fmt_fast
    scale = stats[0].scale
    if len(stats) == 1:
        count, _, lo, hi, counts = stats[0].hist.window()
    else:
        snap = HistogramSnapshot.merge(st.hist.snapshot() for st in stats)
        count, lo, hi, counts = snap.count, snap.min, snap.max, snap.counts
    lines: list[str] = []
    if count:
        for line, p in zip(s.quantiles, percentiles(counts, count, lo, hi, _PROM_QS), strict=True):
            lines.append(line + fmt(p * scale))
    lines.append(s.sums[0] + fmt(sum([st.hist.total_sum for st in stats]) * scale))
    lines.append(s.sums[1] + fmt(sum([st.hist.total_count for st in stats])))
    s.key, s.text = key, lines
    out.extend(lines)


def _prom_series_lines(s: _PromSeries, out: list[str]) -> bool:
    """Append the lines of one series to `out`; False when it has none (every gauge unreadable)."""
    if not s.line:
        s.prefixes()
    kind = s.kind
    if kind == "counter":
        total = 0.0
        for m in s.metrics:
            obj = m.obj
            total += obj.value  # type: ignore[union-attr]
            if type(obj) is HeldCounter:  # (never lower than it was: see HeldCounter)
                total += obj.held
        out.append(s.line + _fmt_fast(total))
    elif kind == "gauge":
        value: float | None = None
        for m in s.metrics:
            v = m.obj.read()  # type: ignore[union-attr]
            if v is not None:
                value = (0.0 if value is None else value) + v
        if value is None:
            return False
        out.append(s.line + _fmt_fast(value))
    else:
        _prom_summary(s, out)
    return True


def prometheus_slices(reg: MetricsRegistry, slice_size: int = SLICE_METRICS) -> Iterator[str]:
    """The Prometheus exposition as text fragments whose concatenation is exactly `prometheus(reg)`.
    Each step reads and renders about `slice_size` metrics (whole series; a summary counts as four),
    so a caller can yield to other work between steps."""
    series = None
    for series in _prom_layout(reg, slice_size):
        if series is None:
            yield ""
    assert series is not None
    headed: list[str] | None = None  # the header lines already written (of the current family)
    i, n = 0, len(series)
    while i < n:
        lines: list[str] = []
        done = 0
        with reading():
            while i < n and done < slice_size:
                s = series[i]
                at = len(lines)
                if _prom_series_lines(s, lines) and headed is not s.head:
                    lines[at:at] = s.head
                    headed = s.head
                # A summary (five quantiles from a histogram) costs about what four other lines do.
                done += len(s.metrics) * (4 if s.kind == "stat" else 1)
                i += 1
        yield "\n".join(lines) + "\n" if lines else ""
