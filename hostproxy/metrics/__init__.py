"""Metrics: a registry keyed by Linkerd 1's flat scheme, bounded in cardinality, with renderers.

See `registry` (counters, gauges, stats, request scopes), `histogram` (the sliding-window
histogram), `topn` (the bounded table of unbound names) and `render` (metrics.json, tree, query,
Prometheus text).
"""

from hostproxy.metrics.histogram import HistogramSnapshot, WindowedHistogram
from hostproxy.metrics.registry import (
    Counter,
    Gauge,
    MetricsRegistry,
    PromId,
    RequestStats,
    RouterScope,
    Stat,
)
from hostproxy.metrics.render import NoSuchSubtree, flat, metrics_json, prometheus, tree
from hostproxy.metrics.topn import TopN

__all__ = [
    "Counter",
    "Gauge",
    "HistogramSnapshot",
    "MetricsRegistry",
    "NoSuchSubtree",
    "PromId",
    "RequestStats",
    "RouterScope",
    "Stat",
    "TopN",
    "WindowedHistogram",
    "flat",
    "metrics_json",
    "prometheus",
    "tree",
]
