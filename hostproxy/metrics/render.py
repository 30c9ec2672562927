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
from typing import Any

from hostproxy.metrics.histogram import HistogramSnapshot
from hostproxy.metrics.registry import Counter, Gauge, Labels, MetricsRegistry, Stat

__all__ = ["NoSuchSubtree", "flat", "metrics_json", "prometheus", "tree"]

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


def flat(reg: MetricsRegistry, q: str | None = None) -> dict[str, float | int]:
    match = _matcher(q)
    out: dict[str, float | int] = {}
    for m in reg.metrics():
        if not match(m.key):
            continue
        if isinstance(m.obj, Counter):
            out[m.key] = m.obj.value
        elif isinstance(m.obj, Gauge):
            v = m.obj.read()
            if v is not None and math.isfinite(v):
                out[m.key] = _num(v)
        elif isinstance(m.obj, Stat):
            for field, v in m.obj.hist.snapshot().summary().items():
                out[f"{m.key}.{field}"] = _num(v)
    return dict(sorted(out.items()))


def tree(reg: MetricsRegistry, q: str | None = None) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for m in reg.metrics():
        node = root
        for seg in m.key.split("/"):
            node = node.setdefault(seg, {})
        if isinstance(m.obj, Counter):
            node["counter"] = m.obj.value
        elif isinstance(m.obj, Gauge):
            v = m.obj.read()
            if v is not None and math.isfinite(v):
                node["gauge"] = _num(v)
        elif isinstance(m.obj, Stat):
            for field, v in m.obj.hist.snapshot().summary().items():
                node[f"stat.{field}"] = _num(v)
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
    data = tree(reg, q) if tree_form else flat(reg, q)
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
    counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
    gauges: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
    stats: dict[str, dict[Labels, list[Stat]]] = defaultdict(lambda: defaultdict(list))
    helps: dict[str, str] = {}
    for m in reg.metrics():
        if m.prom is None:
            continue
        fam, labels = m.prom.family, m.prom.labels
        helps.setdefault(fam, m.prom.help)
        if isinstance(m.obj, Counter):
            counters[fam][labels] += m.obj.value
        elif isinstance(m.obj, Gauge):
            v = m.obj.read()
            if v is not None:
                gauges[fam][labels] += v
        elif isinstance(m.obj, Stat):
            stats[fam][labels].append(m.obj)
    lines: list[str] = []

    def head(fam: str, kind: str) -> None:
        if helps.get(fam):
            lines.append(f"# HELP {fam} {helps[fam]}")
        lines.append(f"# TYPE {fam} {kind}")

    for fam in sorted(counters):
        head(fam, "counter")
        for labels, v in sorted(counters[fam].items()):
            lines.append(f"{fam}{_labels(labels)} {_fmt(v)}")
    for fam in sorted(gauges):
        head(fam, "gauge")
        for labels, v in sorted(gauges[fam].items()):
            lines.append(f"{fam}{_labels(labels)} {_fmt(v)}")
    for fam in sorted(stats):
        head(fam, "summary")
        for labels, group in sorted(stats[fam].items()):
            scale = group[0].scale
            snap = HistogramSnapshot.merge(s.hist.snapshot() for s in group)
            if snap.count:
                for qs, q in PROM_QUANTILES:
                    lbl = _labels(labels + (("quantile", qs),))
                    lines.append(f"{fam}{lbl} {_fmt(snap.percentile(q) * scale)}")
            total_sum = sum(s.hist.total_sum for s in group) * scale
            total_count = sum(s.hist.total_count for s in group)
            lines.append(f"{fam}_sum{_labels(labels)} {_fmt(total_sum)}")
            lines.append(f"{fam}_count{_labels(labels)} {_fmt(total_count)}")
    return "\n".join(lines) + "\n"
