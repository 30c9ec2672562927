"""Renderers: `/admin/metrics.json` (flat, `?tree=1`, `?q=`) and the Prometheus text format.

Theory of operation
-------------------
Renderers read a `MetricsRegistry` snapshot and return plain data or text; the admin server only
serialises and serves. Flat form: `{key: number}`, stats expanded to `key.count` and, when the last
minute has data, `.max .min .p50 .p90 .p95 .p99 .p9990 .p9999 .sum .avg`. Tree form: keys split on
`/`, a node holding its own value as `{"counter": n}`, `{"gauge": x}` or `{"stat.count": …}` next to
its children. `q` selects keys: in flat form by regular expression search (a plain substring works;
an invalid pattern is used as a literal substring), in tree form as the path of a subtree (missing:
`NoSuchSubtree`, which the admin answers with 404 `{"error": "No such subtree: …"}`).

Prometheus: only metrics registered with a `PromId` are exported, grouped by family; counters end
in `_total`, latencies are summaries in seconds with `quantile` labels over the last minute and
cumulative `_sum`/`_count`. Series that share a family and labels (label overflow) are summed.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from hostproxy.metrics.histogram import HistogramSnapshot
from hostproxy.metrics.registry import Counter, Gauge, Labels, Metric, MetricsRegistry, Stat

__all__ = [
    "NoSuchSubtree",
    "collect",
    "flat",
    "flat_from",
    "flat_json_chunks",
    "metrics_json",
    "metrics_json_from",
    "prometheus",
    "prometheus_chunks",
    "prometheus_from",
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


def _matcher(q: str | None) -> Any:
    if not q:
        return lambda key: True
    try:
        rx = re.compile(q)
    except re.error:
        return lambda key: q in key
    return lambda key: rx.search(key) is not None


def collect(metrics: Sequence[Metric]) -> list[tuple[Metric, Any]]:
    """Read the values of ``metrics`` now: counters and gauges as numbers, stats as
    ``(window snapshot, total sum, total count)``. The renderers below work on this snapshot only, so
    the admin server can collect in small slices on the event loop and render the rest elsewhere."""
    out: list[tuple[Metric, Any]] = []
    for m in metrics:
        obj = m.obj
        if isinstance(obj, Counter):
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
        if isinstance(m.obj, Counter):
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
            node = node.setdefault(seg, {})
        if isinstance(m.obj, Counter):
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
        if isinstance(m.obj, Counter):
            counters[fam][labels] += value
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
            lines.append(f"# HELP {fam} {helps[fam]}")
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
