"""``/admin/metrics/influxdb``: every metric in InfluxDB's line protocol, for Telegraf (Linkerd's
``io.l5d.influxdb`` telemeter).

Theory of operation
-------------------
Linkerd grouped its metrics tree into measurements: the metrics directly under one scope are the
fields of one line, the scope's path joined with ``:`` is the measurement, and the router, server,
service and client scopes become tags instead of parts of the name. So
``rt/out/service/svc/web/requests`` and ``rt/out/service/svc/web/success`` are one line::

    rt:service,host=linkerd.local,rt=out,service=svc/web requests=10,success=9

and a deeper scope (``rt/out/service/svc/web/status/200``) is a measurement of its own,
``rt:service:status`` with field ``200``. A stat (a latency histogram) gives the fields
``NAME_count``, ``_sum``, ``_avg``, ``_min``, ``_max``, ``_p50``, ``_p90``, ``_p95``, ``_p99``,
``_p999`` and ``_p9999`` over its window (only ``NAME_count`` while the window is empty). A metric at
the top of the tree (no scope) is a field of measurement ``root``. Every line carries the tag
``host``: the ``Host`` of the scrape (``none`` without one). Tags and fields are sorted by name.

The scopes come from the registry (:meth:`RouterScope.scopes`), so a service name with ``/`` in it is
one tag value. Where Linkerd wrote names as they were, hostproxy escapes what the line protocol
requires: a measurement keeps ``[a-zA-Z0-9:]`` and has ``_`` for anything else (as Linkerd); in tag
values and field keys a space, comma, ``=`` and ``\\`` are escaped with ``\\``, and a control character
is written as text (``\\n``, ``\\t``, ``\\r``, ``\\xHH``, whose backslash is escaped as any other: no parser
takes it raw, and a ``Host`` may hold a tab); a tag whose value is empty is left out. Values are written as
floats (no ``i`` suffix), as Linkerd's were, so series written by Linkerd keep their field types; a
gauge that is not a finite number is left out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from hostproxy.metrics.registry import Counter, CounterFn, Gauge, Metric, MetricsRegistry, Stat

__all__ = ["influx_lines", "influx_slices", "scope_table"]

_MEASUREMENT_DISALLOWED = re.compile(r"[^a-zA-Z0-9:]")
#: Escapes for tag values and field keys: the line protocol's (space, comma, ``=``, backslash), and
#: control characters as text (``\n``, ``\t``, ``\r``, ``\xHH``, its backslash escaped as any other), since
#: Telegraf's parser takes no newline, tab, CR, vertical tab or form feed in a name or tag value.
_ESCAPES = str.maketrans(
    {
        **{chr(c): f"\\\\x{c:02x}" for c in (*range(0x20), 0x7F)},
        " ": "\\ ",
        ",": "\\,",
        "=": "\\=",
        "\\": "\\\\",
        "\n": "\\\\n",
        "\t": "\\\\t",
        "\r": "\\\\r",
    }
)
#: A stat's window summary key -> its field suffix (Linkerd's names).
_STAT_FIELDS = {
    "count": "count",
    "sum": "sum",
    "avg": "avg",
    "min": "min",
    "max": "max",
    "p50": "p50",
    "p90": "p90",
    "p95": "p95",
    "p99": "p99",
    "p9990": "p999",
    "p9999": "p9999",
}
_BASES = {"rt": ("rt",), "server": ("rt", "server"), "service": ("rt", "service"), "client": ("rt", "client")}

Scope = tuple[tuple[str, ...], tuple[tuple[str, str], ...]]


def scope_table(reg: MetricsRegistry) -> dict[str, Scope]:
    """Key prefix -> (measurement base, tags) for every router scope of ``reg``."""
    table: dict[str, Scope] = {}
    for router in reg.routers().values():
        for prefix, kind, tags in router.scopes():
            table[prefix] = (_BASES[kind], tags)
    return table


def _num(x: float) -> str:
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) < 1e15):
        return str(int(x))
    return repr(float(x))


def _locate(
    key: str, table: dict[str, Scope]
) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...], list[str]]:
    """(measurement parts, tags, field path) of one metric key: the longest scope prefix it is under."""
    end = len(key)
    while True:
        end = key.rfind("/", 0, end)
        if end <= 0:
            break
        found = table.get(key[:end])
        if found is not None:
            base, tags = found
            rest = key[end + 1 :].split("/")
            return (*base, *rest[:-1]), tags, rest[-1:]
    parts = key.split("/")
    return tuple(parts[:-1]) or ("root",), (), parts[-1:]


def _fields(m: Metric, value: Any, name: str) -> Iterator[tuple[str, str]]:
    obj = m.obj
    if isinstance(obj, Counter | CounterFn):
        yield name, _num(value)
    elif isinstance(obj, Gauge):
        if value is not None and math.isfinite(value):
            yield name, _num(value)
    elif isinstance(obj, Stat):
        for field, x in value[0].summary().items():
            suffix = _STAT_FIELDS.get(field)
            if suffix is not None:
                yield f"{name}_{suffix}", _num(x)


Group = dict[tuple[tuple[str, ...], tuple[tuple[str, str], ...]], dict[str, str]]


def group(items: Iterable[tuple[Metric, Any]], table: dict[str, Scope], into: Group) -> None:
    """Add the fields of ``items`` (:func:`~hostproxy.metrics.render.collect`'s) to ``into``."""
    for m, value in items:
        parts, tags, path = _locate(m.key, table)
        fields = into.setdefault((parts, tags), {})
        for name, text in _fields(m, value, path[0]):
            fields[name] = text


def lines(groups: Group, host: str) -> Iterator[str]:
    """One line per measurement and tag set, sorted."""
    host_tag = ("host", host)
    for (parts, tags), fields in sorted(groups.items()):
        if not fields:
            continue
        measurement = _MEASUREMENT_DISALLOWED.sub("_", ":".join(parts))
        # (A tag with an empty value is left out: the line protocol has no empty tag value.)
        tag_text = ",".join(f"{k}={v.translate(_ESCAPES)}" for k, v in sorted((*tags, host_tag)) if v)
        field_text = ",".join(f"{k.translate(_ESCAPES)}={v}" for k, v in sorted(fields.items()))
        yield f"{measurement},{tag_text} {field_text}\n"


def influx_lines(items: Sequence[tuple[Metric, Any]], table: dict[str, Scope], host: str) -> str:
    """The whole document at once (tests, small registries)."""
    groups: Group = {}
    group(items, table, groups)
    return "".join(lines(groups, host))


def influx_slices(reg: MetricsRegistry, host: str, slice_size: int) -> Iterator[str]:
    """The document in steps (``""`` while collecting, then the text a piece at a time), so that the
    admin server can let requests through between them."""
    from hostproxy.metrics.render import collect

    table = scope_table(reg)
    metrics = list(reg.metrics())
    groups: Group = {}
    for i in range(0, len(metrics), slice_size):
        group(collect(metrics[i : i + slice_size]), table, groups)
        yield ""
    text: list[str] = []
    for line in lines(groups, host):
        text.append(line)
        if len(text) >= slice_size:
            yield "".join(text)
            text = []
    if text:
        yield "".join(text)
