"""The ``io.l5d.influxdb`` telemeter: ``/admin/metrics/influxdb`` in InfluxDB's line protocol, grouped
and tagged as Linkerd's; read by a strict line-protocol parser, from a registry and from a real daemon."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from hostproxy.metrics.influx import influx_lines, influx_slices, scope_table
from hostproxy.metrics.registry import MetricsRegistry
from hostproxy.metrics.render import collect
from tests.daemonutil import curl, fs_config, running_daemon
from tests.upstreams import running_upstream

Line = tuple[str, dict[str, str], dict[str, float]]

# Line protocol without timestamps: measurement[,tag=value...] field=value[,field=value...]; in names
# and tag values a space, comma, '=' or backslash is escaped with a backslash.
_TOKEN = r"(?:[^\\ ,=]|\\[\\ ,=])+"
_LINE = re.compile(rf"({_TOKEN})((?:,{_TOKEN}={_TOKEN})*) ({_TOKEN}=[-0-9.e+]+(?:,{_TOKEN}=[-0-9.e+]+)*)")


def _unescape(text: str) -> str:
    return re.sub(r"\\([\\ ,=])", r"\1", text)


def _pairs(text: str) -> list[tuple[str, str]]:
    out = []
    for item in re.findall(rf"{_TOKEN}={_TOKEN}|{_TOKEN}=[-0-9.e+]+", text):
        k, v = re.match(rf"({_TOKEN})=(.*)", item).groups()  # type: ignore[union-attr]
        out.append((_unescape(k), _unescape(v)))
    return out


def parse(document: str) -> list[Line]:
    assert document.endswith("\n")
    out: list[Line] = []
    for row in document.splitlines():
        m = _LINE.fullmatch(row)
        assert m is not None, f"not a line-protocol line: {row!r}"
        measurement, tags, fields = m.groups()
        tag_pairs = _pairs(tags)
        field_pairs = _pairs(fields)
        assert [k for k, _ in tag_pairs] == sorted(k for k, _ in tag_pairs), row
        assert [k for k, _ in field_pairs] == sorted(k for k, _ in field_pairs), row
        out.append((_unescape(measurement), dict(tag_pairs), {k: float(v) for k, v in field_pairs}))
    return out


def find(lines: list[Line], measurement: str, **tags: str) -> dict[str, float]:
    found = [f for m, t, f in lines if m == measurement and all(t.get(k) == v for k, v in tags.items())]
    assert len(found) == 1, (measurement, tags, [(m, t) for m, t, _ in lines])
    return found[0]


def test_scopes_become_tags_and_siblings_one_line() -> None:
    t = [1000.0]
    reg = MetricsRegistry(lambda: t[0])
    scope = reg.router("out")
    svc = scope.service("/svc/web, a b", True)  # (a name that needs escaping in a tag value)
    for latency in (0.010, 0.020, 0.030):
        svc.start()
        svc.finish(latency, None, 200)
    client = scope.client("/#/io.l5d.fs/web")
    client.start()
    client.finish(0.005, None, 503)
    server = scope.server("127.0.0.1", 4140)
    server.start()
    server.finish(0.010, None, 200)
    reg.gauge("process/open_fds", lambda: 12)
    reg.gauge("namer/io.l5d.fs/names", lambda: float("nan"))
    reg.counter("retries/total").incr(3)
    lines = parse(influx_lines(collect(list(reg.metrics())), scope_table(reg), "linkerd.local"))
    service = find(lines, "rt:service", rt="out", service="svc/web, a b", host="linkerd.local")
    assert service["requests"] == 3 and service["success"] == 3
    assert service["request_latency_ms_count"] == 3
    assert (
        service["request_latency_ms_min"]
        <= service["request_latency_ms_p50"]
        <= service["request_latency_ms_max"]
    )
    assert {"request_latency_ms_p999", "request_latency_ms_p9999", "request_latency_ms_avg"} <= set(service)
    assert find(lines, "rt:service:status", service="svc/web, a b")["200"] == 3
    failed = find(lines, "rt:client", rt="out", client="#/io.l5d.fs/web")
    assert failed["requests"] == 1
    assert find(lines, "rt:client:status", client="#/io.l5d.fs/web")["503"] == 1
    assert find(lines, "rt:server", rt="out", server="127.0.0.1/4140")["requests"] == 1
    assert find(lines, "process", host="linkerd.local") == {"open_fds": 12}
    assert find(lines, "retries", host="linkerd.local") == {"total": 3}
    # A gauge that is not a number is left out (and its measurement with it).
    assert not [m for m, _, _ in lines if m.startswith("namer")]
    # The sliced form is the same document.
    assert "".join(influx_slices(reg, "linkerd.local", 2)) == influx_lines(
        collect(list(reg.metrics())), scope_table(reg), "linkerd.local"
    )


async def test_a_daemon_serves_it_for_telegraf(tmp_path: Path) -> None:
    disco = tmp_path / "disco"
    disco.mkdir()
    async with running_upstream() as up:
        (disco / "web").write_text(f"127.0.0.1 {up.port}\n")
        cfg = fs_config(disco) + "telemetry:\n- kind: io.l5d.influxdb\n"
        async with running_daemon(cfg) as d:
            for _ in range(4):
                assert (await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")).status == 200
            r = await curl(f"{d.admin}/admin/metrics/influxdb", "-H", "Host: telegraf.local")
            assert r.status == 200
            assert r.header("content-type").startswith("text/plain")  # type: ignore[union-attr]
            lines = parse(r.body.decode())
            assert all(t["host"] == "telegraf.local" for _, t, _ in lines)
            assert find(lines, "rt:service", rt="out", service="svc/web")["requests"] == 4
            assert find(lines, "rt:client", rt="out", client="#/io.l5d.fs/web")["success"] == 4
            port = d.port("out")
            assert find(lines, "rt:server", rt="out", server=f"127.0.0.1/{port}")["requests"] == 4
            assert find(lines, "rt:client:loadbalancer", client="#/io.l5d.fs/web")["size"] == 1


async def test_without_the_telemeter_the_path_is_not_served(tmp_path: Path) -> None:
    disco = tmp_path / "disco"
    disco.mkdir()
    async with running_daemon(fs_config(disco)) as d:
        assert (await curl(f"{d.admin}/admin/metrics/influxdb")).status == 404


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "linkerd.yaml"
    cfg.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "hostproxy", "check", str(cfg)], capture_output=True, text=True, timeout=60
    )


ROUTER = "routers:\n- protocol: http\n  servers: [{port: 4140}]\n"


def test_linkerds_example_loads_and_a_second_server_of_the_path_is_refused(tmp_path: Path) -> None:
    # linkerd/examples/influxdb.yaml
    example = check(
        tmp_path,
        "namers:\n- kind: io.l5d.fs\n  rootDir: linkerd/examples/io.l5d.fs\n\nrouters:\n- protocol: http\n"
        "  dtab: /svc => /#/io.l5d.fs;\n  servers:\n  - port: 4140\n\ntelemetry:\n- kind: io.l5d.influxdb\n",
    )
    assert example.returncode == 0, example.stderr
    twice = check(tmp_path, ROUTER + "telemetry:\n- kind: io.l5d.influxdb\n- kind: io.l5d.influxdb\n")
    assert twice.returncode == 1
    assert (
        "telemetry[1]: /admin/metrics/influxdb, which io.l5d.influxdb serves, is already served by "
        "telemetry[0] (io.l5d.influxdb); keep one of them" in twice.stderr
    ), twice.stderr
    shadowed = check(
        tmp_path,
        ROUTER
        + "telemetry:\n- kind: io.l5d.prometheus\n  path: /admin/metrics/influxdb\n- kind: io.l5d.influxdb\n",
    )
    assert shadowed.returncode == 1
    assert "already served by telemetry[0] (io.l5d.prometheus)" in shadowed.stderr, shadowed.stderr


def test_statsd_is_refused_with_what_to_scrape_instead(tmp_path: Path) -> None:
    proc = check(tmp_path, ROUTER + "telemetry:\n- kind: io.l5d.statsd\n  experimental: true\n")
    assert proc.returncode == 1
    assert (
        "telemetry[0].kind: telemeter kind 'io.l5d.statsd' is a Linkerd telemeter that hostproxy does not support; "
        "Linkerd deprecated it too (it sampled counters, so counts were lost); scrape io.l5d.prometheus or "
        "io.l5d.influxdb instead (a StatsD or Datadog agent can scrape either)" in proc.stderr
    ), proc.stderr
