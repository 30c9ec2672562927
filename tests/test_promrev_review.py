"""The Prometheus exposition, checked with Prometheus's own tools.

`promtool check metrics` reads every exposition path of a real daemon that carried real traffic
(HTTP/1.1 and h2 routers, hostile router labels and service names, failures, retries, names bound,
negative, failed and stale), and a real `prometheus` server scrapes those paths: its targets must be up with
no error, every series must arrive with its labels exactly as served, with no duplicate samples.
Also: a request counted a success at its head that fails afterwards must not make the Prometheus
`success_total` counter go down (Prometheus reads any decrease as a counter reset).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import re
import shutil
import socket
import subprocess
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from dtab.path import Path as DtabPath
from hostproxy.causes import Cause
from hostproxy.h2.server import H2Server, H2ServerParams
from hostproxy.http.message import Body, Headers, Request, Response
from hostproxy.metrics import MetricsRegistry, PromId
from hostproxy.metrics.render import prometheus, prometheus_slices
from tests.daemonutil import curl, running_daemon
from tests.upstreams import running_upstream

pytestmark = pytest.mark.timeout(300)

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif(
    PROMTOOL is None or PROMETHEUS is None,
    reason="promtool and prometheus (Debian's prometheus package) are installed by `make test`",
)

TEXT_FORMAT = "text/plain; version=0.0.4"


# -- a small reader of the text format (what the tests compare Prometheus's answers with) -----------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|\})')


def _unescape(v: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], v)


def parse_exposition(
    text: str,
) -> tuple[dict[tuple[str, tuple[tuple[str, str], ...]], float], dict[str, str]]:
    """Samples ``{(name, sorted labels): value}`` and ``{family: type}``; a sample seen twice fails."""
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, fam, kind = line.split(" ")
            assert fam not in types, f"second TYPE line for {fam}"
            types[fam] = kind
            continue
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, line
        labels: list[tuple[str, str]] = []
        body = m.group(2) or ""
        pos = 1
        while pos < len(body):
            lm = _LABEL.match(body, pos)
            assert lm, (line, pos)
            labels.append((lm.group(1), _unescape(lm.group(2))))
            pos = lm.end()
        key = (m.group(1), tuple(sorted(labels)))
        assert key not in samples, f"duplicate sample {key}"
        samples[key] = float(m.group(3))
    return samples, types


# -- a late failure does not take back a Prometheus counter -----------------------------------------


def _prom_value(reg: MetricsRegistry, name: str) -> float:
    text = prometheus(reg)
    assert text == "".join(prometheus_slices(reg))
    samples, _ = parse_exposition(text)
    return sum(v for (n, _), v in samples.items() if n == name)


def test_a_late_failure_does_not_make_the_prometheus_success_counter_go_down() -> None:
    reg = MetricsRegistry(lambda: 0.0)
    stats = reg.router("out").service("/svc/web", bound=True)
    stats.finish(0.01)
    stats.finish(0.01)
    assert _prom_value(reg, "hostproxy_service_success_total") == 2
    stats.late_failure(Cause.UPSTREAM_RESET)  # the body was cut after a head counted a success
    # Linkerd's flat count moves the request to failures...
    flat_success = {m.key: m.obj.value for m in reg.metrics() if m.key.endswith("/success")}
    assert flat_success == {"rt/out/service/svc/web/success": 1}
    # ...but a Prometheus counter that goes down reads as a reset (rate() then shows the whole count
    # again): it holds until a new success makes up for the one taken back.
    assert _prom_value(reg, "hostproxy_service_success_total") == 2
    assert _prom_value(reg, "hostproxy_service_failures_total") == 1
    stats.finish(0.01)
    assert _prom_value(reg, "hostproxy_service_success_total") == 2
    stats.finish(0.01)
    assert _prom_value(reg, "hostproxy_service_success_total") == 3
    flat_success = {m.key: m.obj.value for m in reg.metrics() if m.key.endswith("/success")}
    assert flat_success == {"rt/out/service/svc/web/success": 3}


def test_late_failures_over_an_overflowed_series_never_lower_its_sum() -> None:
    reg = MetricsRegistry(lambda: 0.0, max_label_values=1)
    scope = reg.router("out")
    scope.client("/$/inet/127.0.0.1/1")  # takes the one client label value
    a = scope.client("/$/inet/127.0.0.1/2")  # these two overflow: one series, their sum
    b = scope.client("/$/inet/127.0.0.1/3")
    seen: list[float] = []
    for st in (a, b, a, b):
        st.finish(0.01)
        seen.append(_prom_value(reg, "hostproxy_client_success_total"))
        st.late_failure(Cause.UPSTREAM_GRPC)
        seen.append(_prom_value(reg, "hostproxy_client_success_total"))
    assert seen == [1, 1, 2, 2, 2, 2, 2, 2]


@needs_prometheus
def test_help_texts_and_label_values_are_escaped_as_the_text_format_requires() -> None:
    # HELP text escapes a backslash and a line feed (not a quote); a label value escapes all three.
    reg = MetricsRegistry(lambda: 0.0)
    help_text = 'Requests to C:\\queue "q"\nsecond line'
    for k, v in [("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf), ("big", 2.0**80), ("zero", -0.0)]:
        reg.gauge(f"g/{k}", lambda v=v: v, PromId("hostproxy_test_level", (("k", k + '\n\\"x'),), help_text))
    reg.counter("c", PromId("hostproxy_test_events_total", (), help_text)).value = 2**70
    text = prometheus(reg)
    assert text == "".join(prometheus_slices(reg))
    checked = promtool_check(text.encode())
    assert checked.returncode == 0 and not checked.stdout.strip() and not checked.stderr.strip(), (
        checked.stdout,
        checked.stderr,
    )
    assert '# HELP hostproxy_test_level Requests to C:\\\\queue "q"\\nsecond line\n' in text
    samples, _ = parse_exposition(text)
    assert samples[("hostproxy_test_level", (("k", 'inf\n\\"x'),))] == math.inf
    assert math.isnan(samples[("hostproxy_test_level", (("k", 'nan\n\\"x'),))])
    assert samples[("hostproxy_test_events_total", ())] == 2.0**70


# -- a real daemon, real traffic, promtool and a real Prometheus server ------------------------------

#: A router label with every character the text format must escape or quote (labels refuse spaces,
#: control characters and '/').
HOSTILE_ROUTER = 'o"u\\t{x=y},é中'
#: Names the fs namer binds (file names in its directory) and sends to the HTTP upstream (a file name
#: with a backslash is no name it binds: the h2 router's hosts have one).
HOSTILE_FILES = ['q"uote', "{br=ace}", "eq=ual,comma", "l" * 250]
#: Host headers the h2 router's catch-all dtab binds (the proxy reads a Host as ISO-8859-1).
HOSTILE_H2_HOSTS = ['q"uote', "back\\slash", "{br}", "a%0Ab", "uni\u00e9", "caf\u00c3\u00a9", "h" * 300]
NEG_NAMES = [f"nobody-{i}" for i in range(40)]
JOBS = {"admin": "/admin/metrics/prometheus", "alias": "/metrics", "custom": "/custom/prom"}
PREFIXES = {"admin": "", "alias": "", "custom": "l5d_"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def h2_origin() -> AsyncIterator[int]:
    async def handler(req: Request, _conn: object) -> Response:
        await req.body.read_all()
        status = 503 if req.target.startswith("/fail") else 200
        return Response(status, b"", Headers([(b"content-type", b"text/plain")]), Body.from_bytes(b"ok"))

    server = H2Server(handler, H2ServerParams(ip="127.0.0.1", port=0))
    async with trio.open_nursery() as nursery:
        addrs = await nursery.start(server.serve)
        yield addrs[0][1]
        nursery.cancel_scope.cancel()


def daemon_config(disco: Path, h2_port: int) -> str:
    return f"""
admin: {{ip: 127.0.0.1, port: 0}}
telemetry:
- kind: io.l5d.prometheus
- kind: io.l5d.prometheus
  path: {JOBS["custom"]}
  prefix: {PREFIXES["custom"]}
namers:
- kind: io.l5d.fs
  rootDir: {disco}
routers:
- protocol: http
  label: {json.dumps(HOSTILE_ROUTER)}
  dtab: |
    /svc => /#/io.l5d.fs;
  service:
    responseClassifier: {{kind: io.l5d.http.retryableRead5XX}}
  servers:
  - {{ip: 127.0.0.1, port: 0}}
- protocol: h2
  label: h2
  dtab: |
    /svc => /$/inet/127.0.0.1/{h2_port};
  service:
    responseClassifier: {{kind: io.l5d.h2.retryableRead5XX}}
  servers:
  - {{ip: 127.0.0.1, port: 0}}
"""


async def drive_traffic(d: Any, disco: Path) -> None:
    http = f"http://127.0.0.1:{d.port(HOSTILE_ROUTER)}"
    for name in ["app", "dead", "broken", *HOSTILE_FILES]:
        for path in ("/", "/status/500", "/status/503"):
            r = await curl(http + path, "-H", f"Host: {name}")
            assert r.status in (200, 500, 502, 503), (name, path, r.status)
    for name in NEG_NAMES:
        r = await curl(http + "/", "-H", f"Host: {name}")
        assert r.status == 502 and (r.l5d_err or "").startswith("Unable to route request!"), r
    # A bound name whose file turns malformed: the namer keeps its last good addresses (stale).
    (disco / HOSTILE_FILES[0]).write_text("this is not an address either\n")
    with trio.fail_after(60):
        while '"stale"' not in (await curl(f"{d.admin}/namer_state/io.l5d.fs.json")).body.decode():
            await trio.sleep(0.2)
    r = await curl(http + "/", "-H", f"Host: {HOSTILE_FILES[0]}")
    assert r.status == 200, r
    h2 = f"http://127.0.0.1:{d.port('h2')}"
    for host in HOSTILE_H2_HOSTS:
        # curl sends the Host's UTF-8 bytes; the proxy reads them as ISO-8859-1 (as Linkerd does).
        for path in ("/", "/fail"):
            r = await curl(h2 + path, "--http2-prior-knowledge", "-H", f"Host: {host}")
            assert r.status in (200, 503), (host, path, r.status)


def promtool_check(body: bytes) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, "check", "metrics"], input=body.decode(), capture_output=True, text=True, timeout=60
    )


async def prom_api(port: int, path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:{port}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    r = await curl(url)
    assert r.status == 200, (url, r.status, r.body[:500])
    answer = r.json()
    assert isinstance(answer, dict) and answer.get("status") == "success", answer
    return answer["data"]


@contextlib.asynccontextmanager
async def running_prometheus(tmp: Path, admin_port: int) -> AsyncIterator[int]:
    """A real Prometheus server on loopback scraping the daemon's three exposition paths every second;
    its storage in ``tmp``; stopped (and waited for) on exit."""
    assert PROMETHEUS is not None
    jobs = "".join(
        f"""
- job_name: {job}
  metrics_path: {path}
  static_configs:
  - targets: ['127.0.0.1:{admin_port}']
"""
        for job, path in JOBS.items()
    )
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = tmp / "prometheus.yml"
    cfg.write_text(f"global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:{jobs}")
    port = _free_port()
    log = (tmp / "prometheus.log").open("wb")
    proc = await trio.lowlevel.open_process(
        [
            PROMETHEUS,
            f"--config.file={cfg}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with trio.fail_after(60):
            while True:  # ready when its API answers
                r = await curl(f"http://127.0.0.1:{port}/-/ready", timeout=5)
                if r.status == 200:
                    break
                assert proc.poll() is None, (tmp / "prometheus.log").read_text()[-2000:]
                await trio.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        with trio.move_on_after(30):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()


async def scraped_up(port: int) -> dict[str, dict[str, Any]]:
    """Poll until every job's target has been scraped (health not "unknown"); its last answer per job."""
    with trio.fail_after(90):
        while True:
            data = await prom_api(port, "/api/v1/targets")
            targets = {t["labels"]["job"]: t for t in data["activeTargets"]}
            if set(targets) == set(JOBS) and all(t["health"] != "unknown" for t in targets.values()):
                return targets
            await trio.sleep(0.3)


async def all_series(port: int, job: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    data = await prom_api(port, "/api/v1/series", **{"match[]": f'{{job="{job}"}}'})
    out = set()
    for s in data:
        labels = {k: v for k, v in s.items() if k not in ("job", "instance")}
        name = labels.pop("__name__")
        if name == "up" or name.startswith("scrape_"):  # (Prometheus's own series of each scrape)
            continue
        out.add((name, tuple(sorted(labels.items()))))
    return out


@needs_prometheus
async def test_prometheus_scrapes_every_exposition_path_of_a_daemon_that_carried_hostile_traffic(
    tmp_path: Path,
) -> None:
    disco = tmp_path / "disco"
    disco.mkdir()
    async with running_upstream() as up, h2_origin() as h2_port:
        for name in ["app", *HOSTILE_FILES]:
            (disco / name).write_text(f"127.0.0.1 {up.port}\n")
        (disco / "dead").write_text("127.0.0.1 1\n")  # nothing listens: connections refused, retried
        (disco / "broken").write_text("this is not an address\n")  # the namer fails on it
        async with running_daemon(daemon_config(disco, h2_port)) as d:
            await drive_traffic(d, disco)
            # (1) promtool accepts every path, without a lint warning either.
            expositions: dict[str, str] = {}
            for job, path in JOBS.items():
                r = await curl(d.admin + path)
                assert r.status == 200, (path, r.status)
                assert r.header("content-type") == TEXT_FORMAT
                checked = promtool_check(r.body)
                assert (
                    checked.returncode == 0 and not checked.stdout.strip() and not checked.stderr.strip()
                ), (
                    path,
                    checked.stdout[-3000:],
                    checked.stderr[-3000:],
                )
                expositions[job] = r.body.decode()
            plain, types = parse_exposition(expositions["admin"])
            assert parse_exposition(expositions["alias"])[0].keys() == plain.keys()
            prefixed, _ = parse_exposition(expositions["custom"])
            assert {(PREFIXES["custom"] + n, ls) for n, ls in plain} == set(prefixed)
            check_contents(plain, types)

            # (2) a real Prometheus server scrapes them.
            admin_port = int(d.admin.rsplit(":", 1)[1])
            async with running_prometheus(tmp_path / "prom", admin_port) as port:
                targets = await scraped_up(port)
                for job, t in targets.items():
                    assert t["health"] == "up" and t["lastError"] == "", (job, t)
                for job in JOBS:
                    want = set(parse_exposition(expositions[job])[0])
                    # (the daemon's traffic is over: a series missing is one Prometheus dropped)
                    with trio.fail_after(90):
                        while (got := await all_series(port, job)) != want:
                            assert not (got - want), sorted(got - want)[:5]
                            await trio.sleep(0.5)
                # Label values with quotes, backslashes, braces, '=' and non-ASCII arrive exactly.
                quoted = HOSTILE_ROUTER.replace("\\", "\\\\").replace('"', '\\"')  # (PromQL's string escapes)
                q = f'hostproxy_service_requests_total{{job="admin",router="{quoted}",service="unbound"}}'
                result = (await prom_api(port, "/api/v1/query", query=q))["result"]
                assert [r["metric"]["router"] for r in result] == [HOSTILE_ROUTER]
                assert (
                    float(result[0]["value"][1])
                    == plain[
                        (
                            "hostproxy_service_requests_total",
                            (("router", HOSTILE_ROUTER), ("service", "unbound")),
                        )
                    ]
                )
                # No scrape had duplicate or out-of-order samples (Prometheus drops those samples).
                own = (await curl(f"http://127.0.0.1:{port}/metrics")).body.decode()
                for counter in (
                    "prometheus_target_scrapes_sample_duplicate_timestamp_total",
                    "prometheus_target_scrapes_sample_out_of_order_total",
                    "prometheus_target_scrapes_sample_out_of_bounds_total",
                    "prometheus_target_scrapes_exceeded_sample_limit_total",
                ):
                    m = re.search(rf"^{counter} (\S+)$", own, re.M)
                    assert m and float(m.group(1)) == 0, (counter, m and m.group(0))
                up_q = (await prom_api(port, "/api/v1/query", query="up"))["result"]
                assert sorted((r["metric"]["job"], r["value"][1]) for r in up_q) == [
                    (job, "1") for job in sorted(JOBS)
                ]


def check_contents(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], types: dict[str, str]
) -> None:
    """What the exposition says about the traffic: bounded labels, valid summaries, counters named."""
    by_name: dict[str, list[dict[str, str]]] = {}
    for name, labels in samples:
        by_name.setdefault(name, []).append(dict(labels))
    # Counters end in _total; every family has a TYPE (promtool also checks HELP).
    for fam, kind in types.items():
        assert (kind == "counter") == fam.endswith("_total"), (fam, kind)
    # The hostile router label and hostile bound names are label values, exactly.
    routers = {ls["router"] for ls in by_name["hostproxy_service_requests_total"]}
    assert routers == {HOSTILE_ROUTER, "h2"}
    services = {ls["service"] for ls in by_name["hostproxy_service_requests_total"] if ls["router"] != "h2"}
    # Names that never bound (40 of them, the failed 'broken' too) share service="unbound".
    assert "unbound" in services
    assert not any(n in s for s in services for n in NEG_NAMES)
    assert len(services) <= 2 + len(HOSTILE_FILES) + 1, sorted(services)
    bound = {DtabPath.of("svc", name).show for name in ["app", "dead", *HOSTILE_FILES]}
    assert not bound - services, (sorted(bound - services), sorted(services))
    h2_services = {
        ls["service"] for ls in by_name["hostproxy_service_requests_total"] if ls["router"] == "h2"
    }
    assert len(h2_services) == len(HOSTILE_H2_HOSTS), sorted(h2_services)
    assert {DtabPath.of("svc", h).show for h in HOSTILE_H2_HOSTS if h.isascii()} <= h2_services
    # Summaries: five quantiles in order, with _sum and _count, for every series with data.
    for fam, kind in types.items():
        if kind != "summary":
            continue
        series = {tuple(sorted((k, v) for k, v in ls.items() if k != "quantile")) for ls in by_name[fam]}
        for labels in series:
            count = samples[(fam + "_count", labels)]
            assert samples[(fam + "_sum", labels)] >= 0 and count >= 0
            qs = [
                samples.get((fam, tuple(sorted((*labels, ("quantile", q))))))
                for q in ("0.5", "0.9", "0.95", "0.99", "0.999")
            ]
            if count:
                values = [q for q in qs if q is not None]
                assert len(values) == 5 and values == sorted(values), (fam, labels, qs)
                assert all(math.isfinite(q) and q >= 0 for q in values), (fam, labels, qs)
    requests = [v for (n, _), v in samples.items() if n == "hostproxy_service_requests_total"]
    assert sum(requests) >= 3 * (3 + len(HOSTILE_FILES)) + len(NEG_NAMES)


@needs_prometheus
async def test_prometheus_sees_no_counter_reset_when_a_body_fails_after_its_head_was_counted(
    tmp_path: Path,
) -> None:
    release = trio.Event()

    async def cut_after_head(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)  # the request (a GET: its head only)
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello")
            await release.wait()  # then the connection dies five bytes short

    disco = tmp_path / "disco"
    disco.mkdir()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, cut_after_head, 0, host="127.0.0.1")
        )
        (disco / "slow").write_text(f"127.0.0.1 {listeners[0].socket.getsockname()[1]}\n")
        text = f"""
admin: {{ip: 127.0.0.1, port: 0}}
namers:
- {{kind: io.l5d.fs, rootDir: {disco}}}
routers:
- protocol: http
  label: out
  dtab: /svc => /#/io.l5d.fs;
  servers: [{{ip: 127.0.0.1, port: 0}}]
"""
        async with running_daemon(text) as d:
            admin_port = int(d.admin.rsplit(":", 1)[1])
            async with running_prometheus(tmp_path / "prom", admin_port) as port:
                series = '{job="admin",router="out",service="/svc/slow"}'

                async def value(query: str) -> float | None:
                    result = (await prom_api(port, "/api/v1/query", query=query))["result"]
                    return float(result[0]["value"][1]) if result else None

                async def until(query: str, want: float) -> None:
                    with trio.fail_after(90):
                        while await value(query) != want:
                            await trio.sleep(0.3)

                nursery.start_soon(curl, f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: slow")
                # The head went on: a success, and Prometheus has scraped it.
                await until(f"hostproxy_service_success_total{series}", 1)
                release.set()
                failures = '{job="admin",router="out",service="/svc/slow",cause="upstream_reset"}'
                await until(f"hostproxy_service_failures_total{failures}", 1)
                flat = (await curl(f"{d.admin}/admin/metrics.json")).json()
                assert isinstance(flat, dict)
                assert flat["rt/out/service/svc/slow/success"] == 0  # Linkerd's count moved it
                assert flat["rt/out/service/svc/slow/failures/upstream/reset"] == 1
                # Prometheus saw the counter hold: no reset, so rate() shows no spike.
                assert await value(f"hostproxy_service_success_total{series}") == 1
                assert await value(f"resets(hostproxy_service_success_total{series}[10m])") == 0
        nursery.cancel_scope.cancel()
