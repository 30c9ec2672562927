"""The ``io.l5d.zipkin`` telemeter: spans encoded as Zipkin's Thrift spans and sent with Scribe's ``Log`` to
a collector (thriftpy2's server, ``tests/scribe_collector.py``); sampling; a collector that is away or
busy; and a real daemon recording each forwarded attempt."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
from pathlib import Path

import trio

from hostproxy.routing.tracectx import decode_l5d_trace
from hostproxy.zipkin import SpanRecord, ZipkinExporter
from tests.daemonutil import curl, fs_config, running_daemon
from tests.scribe_collector import running_collector, zipkin_thrift
from tests.upstreams import closed_port, running_upstream


def span(i: int = 1, **kw: object) -> SpanRecord:
    base: dict[str, object] = {
        "trace_id": 0x8000000000000001 + i,
        "span_id": 0x0123456789ABCDEF + i,
        "parent_id": 0x1111,
        "name": "GET",
        "start_us": 1_700_000_000_000_000,
        "end_us": 1_700_000_000_002_500,
        "service_name": "#/io.l5d.fs/web",
        "remote": ("127.0.0.1", 8080),
        "tags": [("namer.path", "/svc/web"), ("http.uri", "/users/7")],
    }
    base.update(kw)
    return SpanRecord(**base)  # type: ignore[arg-type]


def u64(v: int) -> int:
    return v & ((1 << 64) - 1)


async def run_until(exporter: ZipkinExporter, done: object, limit: float = 20) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(exporter.run)
        with trio.fail_after(limit):
            while not done():  # type: ignore[operator]
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()


async def test_spans_reach_a_scribe_collector_as_zipkin_thrift_spans() -> None:
    with running_collector() as collector:
        exporter = ZipkinExporter("127.0.0.1", collector.port, 1.0, flush_s=0.05)
        exporter.record(span(1))
        exporter.record(span(2, parent_id=None, trace_id_high=0x42, debug=True, remote=None))
        await run_until(exporter, lambda: len(collector.entries) == 2)
        first, second = collector.spans()
        assert u64(first.trace_id) == 0x8000000000000002 and u64(first.id) == 0x0123456789ABCDF0
        assert first.parent_id == 0x1111 and first.name == "get"
        assert first.timestamp == 1_700_000_000_000_000 and first.duration == 2500
        assert [(a.value, a.timestamp, a.host.service_name) for a in first.annotations] == [
            ("cs", 1_700_000_000_000_000, "#/io.l5d.fs/web"),
            ("cr", 1_700_000_000_002_500, "#/io.l5d.fs/web"),
        ]
        tags = {b.key: b for b in first.binary_annotations}
        assert tags["namer.path"].value == b"/svc/web"
        assert tags["namer.path"].annotation_type == zipkin_thrift.AnnotationType.STRING
        sa = tags["sa"]
        assert sa.annotation_type == zipkin_thrift.AnnotationType.BOOL and sa.value == b"\x01"
        assert (sa.host.ipv4, sa.host.port) == (0x7F000001, 8080)
        assert second.parent_id is None and second.trace_id_high == 0x42 and second.debug is True
        assert "sa" not in {b.key for b in second.binary_annotations}
        stats = exporter.statistics()
        assert (stats["sent"], stats["dropped"], stats["send_failures"]) == (2, 0, 0)


async def test_a_collector_that_is_away_or_busy_loses_the_batch_and_says_why() -> None:
    # A port held bound but not listening: connections to it are refused, and no other process can
    # take it meanwhile (a port merely closed could be reused by another test's listener).
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        exporter = ZipkinExporter("127.0.0.1", port, 1.0, flush_s=0.05, retry_s=0.05)
        exporter.record(span(1))
        await run_until(exporter, lambda: exporter.send_failures >= 1)
    assert exporter.dropped == 1 and exporter.sent == 0
    assert exporter.last_error is not None
    assert exporter.last_error.startswith(f"cannot reach the Zipkin collector at 127.0.0.1:{port}: ")
    with running_collector() as collector:
        collector.answer = 1  # TRY_LATER
        busy = ZipkinExporter("127.0.0.1", collector.port, 1.0, flush_s=0.05, retry_s=0.05)
        busy.record(span(1))
        await run_until(busy, lambda: busy.send_failures >= 1)
        assert (
            busy.last_error
            == f"the Zipkin collector at 127.0.0.1:{collector.port}: the collector answered TRY_LATER (3 times)"
        )
        # When it takes spans again, the next ones go.
        collector.answer = 0
        busy.record(span(2))
        await run_until(busy, lambda: busy.sent == 1)
        assert [u64(s.id) for s in collector.spans()] == [0x0123456789ABCDEF + 2]


def test_the_queue_is_bounded_and_sampling_follows_a_decision_else_the_trace_id() -> None:
    exporter = ZipkinExporter("127.0.0.1", 9, 0.25, rng=random.Random(7), max_queue=3)
    for i in range(5):
        exporter.record(span(i))
    assert exporter.statistics()["queued"] == 3 and exporter.dropped == 2
    assert exporter.sampled(True, 1) and not exporter.sampled(False, 1)
    ids = [random.Random(i).getrandbits(64) for i in range(4000)]
    picks = [exporter.sampled(None, t) for t in ids]
    assert 800 < sum(picks) < 1200  # about a quarter
    assert picks == [exporter.sampled(None, t) for t in ids]  # every attempt of a trace alike
    assert not ZipkinExporter("127.0.0.1", 9, 0.0).sampled(None, 5)
    assert ZipkinExporter("127.0.0.1", 9, 1.0).sampled(None, 5)


def test_linkerds_zipkin_example_loads(tmp_path: Path) -> None:
    cfg = tmp_path / "linkerd.yaml"
    cfg.write_text(
        "routers:\n- protocol: http\n  servers: [{port: 4140}]\n"
        "telemetry:\n- kind: io.l5d.zipkin\n  host: localhost\n  port: 9410\n  sampleRate: 0.02\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "hostproxy", "check", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


# -- a real daemon -------------------------------------------------------------------------------------


def zipkin_config(disco: Path, port: int, rate: float, extra: str = "") -> str:
    return (
        fs_config(disco)
        + extra
        + f"telemetry:\n- kind: io.l5d.zipkin\n  host: 127.0.0.1\n  port: {port}\n  sampleRate: {rate}\n"
    )


def forwarded_trace(body: bytes) -> tuple[int, int, int]:
    """(trace id, span id, parent id) of the l5d-ctx-trace an upstream's /headers saw."""
    doc = json.loads(body)
    value = next(v for k, v in doc["headers"] if k == "l5d-ctx-trace")
    got = decode_l5d_trace(value.encode())
    assert got is not None
    return got.trace_id, got.span_id, got.parent_id


async def test_a_daemon_records_a_span_per_forwarded_request(tmp_path: Path) -> None:
    disco = tmp_path / "disco"
    disco.mkdir()
    with running_collector() as collector:
        async with running_upstream() as up:
            (disco / "web").write_text(f"127.0.0.1 {up.port}\n")
            async with running_daemon(zipkin_config(disco, collector.port, 1.0)) as d:
                r = await curl(f"http://127.0.0.1:{d.port('out')}/headers?x=1", "-H", "Host: web")
                assert r.status == 200, r.l5d_err
                trace_id, span_id, parent_id = forwarded_trace(r.body)
                with trio.fail_after(20):
                    while not collector.entries:
                        await trio.sleep(0.05)
                (s,) = collector.spans()
                assert (u64(s.trace_id), u64(s.id)) == (trace_id, span_id)
                assert s.parent_id is None or u64(s.parent_id) == parent_id
                assert s.name == "get"
                tags = {b.key: b.value for b in s.binary_annotations}
                assert tags["namer.path"] == b"/svc/web" and tags["dst.id"] == b"/#/io.l5d.fs/web"
                assert tags["http.uri"] == b"/headers?x=1" and tags["http.rsp.status"] == b"200"
                assert tags["router.label"] == b"out" and tags["http.req.host"] == b"web"
                sa = next(b for b in s.binary_annotations if b.key == "sa")
                assert (sa.host.ipv4, sa.host.port & 0xFFFF) == (0x7F000001, up.port)  # (an unsigned i16)
                assert {a.host.service_name for a in s.annotations} == {"#/io.l5d.fs/web"}
                assert s.duration >= 1
                metrics = (await curl(f"{d.admin}/admin/metrics.json")).json()
                assert isinstance(metrics, dict)
                assert metrics["zipkin/sent"] == 1 and metrics["zipkin/dropped"] == 0


async def test_each_retry_is_a_span_of_its_own_and_a_decision_is_followed(tmp_path: Path) -> None:
    disco = tmp_path / "disco"
    disco.mkdir()
    retrying = "  service:\n    responseClassifier: {kind: io.l5d.http.retryableRead5XX}\n"
    with running_collector() as collector:
        async with running_upstream() as up:
            (disco / "web").write_text(f"127.0.0.1 {up.port}\n")
            # sampleRate 0: only requests that carry a decision to sample are recorded.
            async with running_daemon(zipkin_config(disco, collector.port, 0.0, retrying)) as d:
                url = f"http://127.0.0.1:{d.port('out')}"
                unsampled = await curl(f"{url}/status/503", "-H", "Host: web")
                assert unsampled.status == 503
                sampled = await curl(f"{url}/status/503", "-H", "Host: web", "-H", "l5d-sample: 1.0")
                assert sampled.status == 503
                with trio.fail_after(20):
                    while len(collector.entries) < 2:
                        await trio.sleep(0.05)
                await trio.sleep(1.5)  # (one more flush: nothing else is coming)
                spans = collector.spans()
                assert len(spans) >= 2  # the first attempt and its retries, all of one request
                assert len({u64(s.trace_id) for s in spans}) == 1
                assert len({u64(s.id) for s in spans}) == len(spans)
                # A new trace (the request came with none): the first attempt is its root, the
                # retries its children.
                first, *retries = sorted(spans, key=lambda s: s.timestamp)
                assert first.parent_id is None and first.id == first.trace_id
                assert all(s.parent_id == first.id for s in retries)
                for s in spans:
                    tags = {b.key: b.value for b in s.binary_annotations}
                    assert tags["http.rsp.status"] == b"503" and tags["http.uri"] == b"/status/503"
                    assert "error" not in tags  # the application answered: not an attempt that failed


async def test_an_attempt_that_fails_is_a_span_with_its_cause(tmp_path: Path) -> None:
    disco = tmp_path / "disco"
    disco.mkdir()
    with running_collector() as collector, closed_port() as dead:
        (disco / "web").write_text(f"127.0.0.1 {dead}\n")
        async with running_daemon(zipkin_config(disco, collector.port, 1.0)) as d:
            r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")
            assert r.status == 502
            with trio.fail_after(20):
                while not collector.entries:
                    await trio.sleep(0.05)
            s = collector.spans()[0]
            tags = {b.key: b.value for b in s.binary_annotations}
            assert tags["error"] == b"connect/refused" and "http.rsp.status" not in tags


def test_the_span_an_attempt_carries_is_read_from_either_format() -> None:
    from hostproxy.routing.tracectx import encode_l5d_trace, span_of

    ctx = encode_l5d_trace(span_id=5, parent_id=4, trace_id=3, flags=2 | 4)
    assert span_of([(b"l5d-ctx-trace", ctx)]) == (3, 5, 4, None, True, False)
    root = encode_l5d_trace(span_id=3, parent_id=3, trace_id=3, flags=0)
    assert span_of([(b"l5d-ctx-trace", root)]) == (3, 3, None, None, None, False)
    b3 = [
        (b"x-b3-traceid", b"463ac35c9f6413ad48485a3953bb6124"),
        (b"x-b3-spanid", b"a2fb4a1d1a96d312"),
        (b"x-b3-parentspanid", b"0020000000000001"),
        (b"x-b3-sampled", b"0"),
    ]
    assert span_of(b3) == (
        0x48485A3953BB6124,
        0xA2FB4A1D1A96D312,
        0x0020000000000001,
        0x463AC35C9F6413AD,
        False,
        False,
    )
    assert span_of([*b3[:2], (b"x-b3-flags", b"1")]) == (
        0x48485A3953BB6124,
        0xA2FB4A1D1A96D312,
        None,
        0x463AC35C9F6413AD,
        True,
        True,
    )
    assert span_of([(b"x-b3-traceid", b"zz"), (b"x-b3-spanid", b"1")]) is None
    assert span_of([(b"l5d-ctx-trace", b"not base64")]) is None
    assert span_of([]) is None


async def test_an_h2_router_records_its_attempts_too() -> None:
    from tests.test_linkerd1_conformance import h2_origin_port

    with running_collector() as collector:
        async with h2_origin_port() as port:
            cfg = f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: h2
  label: h2
  dtab: /svc/web => /$/inet/127.0.0.1/{port};
  servers: [{{ip: 127.0.0.1, port: 0}}]
telemetry:
- kind: io.l5d.zipkin
  host: 127.0.0.1
  port: {collector.port}
  sampleRate: 1.0
"""
            async with running_daemon(cfg) as d:
                url = f"http://127.0.0.1:{d.port('h2')}/grpc.Echo/Say"
                r = await curl(url, "--http2-prior-knowledge", "-H", "Host: web", "-X", "POST", "-d", "x")
                assert r.status == 200
                with trio.fail_after(20):
                    while not collector.entries:
                        await trio.sleep(0.05)
                (s,) = collector.spans()
                assert s.name == "post"
                tags = {b.key: b.value for b in s.binary_annotations}
                assert tags["router.label"] == b"h2" and tags["http.uri"] == b"/grpc.Echo/Say"
                assert tags["dst.id"] == f"/$/inet/127.0.0.1/{port}".encode()
                assert tags["http.rsp.status"] == b"200" and tags["http.req.host"] == b"web"


async def test_a_collector_that_is_away_shows_in_telemetry_json_and_wtf(tmp_path: Path) -> None:
    disco = tmp_path / "disco"
    disco.mkdir()
    with closed_port() as away:
        async with running_upstream() as up:
            (disco / "web").write_text(f"127.0.0.1 {up.port}\n")
            cfg = (
                zipkin_config(disco, away, 1.0)
                + "- kind: io.l5d.tracelog\n  level: DEBUG\n- kind: io.l5d.influxdb\n"
                + "- kind: io.l5d.prometheus\n  path: /prom\n"
            )
            async with running_daemon(cfg) as d:
                assert (await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")).status == 200
                with trio.fail_after(20):
                    while True:
                        doc = (await curl(f"{d.admin}/admin/telemetry.json")).json()
                        assert isinstance(doc, dict)
                        zipkin = doc["telemeters"][0]
                        if zipkin["sendFailures"]:
                            break
                        await trio.sleep(0.1)
                assert zipkin["kind"] == "io.l5d.zipkin" and zipkin["collector"] == f"127.0.0.1:{away}"
                assert zipkin["dropped"] == 1 and zipkin["sent"] == 0
                assert zipkin["lastError"].startswith(
                    f"cannot reach the Zipkin collector at 127.0.0.1:{away}: "
                )
                assert doc["telemeters"][1:] == [
                    {"kind": "io.l5d.tracelog", "sampleRate": 1.0, "level": "DEBUG", "logged": 0},
                    {"kind": "io.l5d.influxdb", "path": "/admin/metrics/influxdb"},
                    {"kind": "io.l5d.prometheus", "path": "/prom", "prefix": ""},
                ]
                proc = await trio.run_process(
                    [sys.executable, "-m", "hostproxy", "wtf", "--admin", d.admin, "--json"],
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
                report = json.loads(proc.stdout)
                (finding,) = [f for f in report["findings"] if f["cause"] == "telemetry/zipkin"]
                assert finding["severity"] == "warning" and finding["fault"] == "hostproxy"
                assert finding["failures"] == 1
                assert f"trace export to 127.0.0.1:{away} lost 1 span(s)" in finding["verdict"]
                assert "cannot reach the Zipkin collector" in finding["verdict"]
                assert "SCRIBE_ENABLED=true" in finding["next_step"]
