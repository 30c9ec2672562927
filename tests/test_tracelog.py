"""The ``io.l5d.tracelog`` telemeter: each recorded span of a sampled request as a ``trace.span`` event on
logger ``io.l5d.tracelog`` at its level, read from a real daemon's log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hostproxy.routing.tracectx import decode_l5d_trace
from tests.daemonutil import curl, fs_config
from tests.test_lifecycle_helpers import daemon_proc
from tests.upstreams import running_upstream


def config(tmp_path: Path, port: int, telemeter: str) -> Path:
    disco = tmp_path / "disco"
    disco.mkdir(exist_ok=True)
    (disco / "web").write_text(f"127.0.0.1 {port}\n")
    cfg = tmp_path / "hostproxy.yaml"
    cfg.write_text(fs_config(disco) + "telemetry:\n" + telemeter)
    return cfg


async def test_each_span_of_a_sampled_request_is_logged(tmp_path: Path) -> None:
    async with running_upstream() as up:
        cfg = config(tmp_path, up.port, "- kind: io.l5d.tracelog\n  sampleRate: 1.0\n  level: INFO\n")
        async with daemon_proc(cfg) as d:
            r = await curl(f"http://127.0.0.1:{d.port('out')}/headers", "-H", "Host: web")
            assert r.status == 200, r.l5d_err
            ctx = next(v for k, v in json.loads(r.body)["headers"] if k == "l5d-ctx-trace")
            sent = decode_l5d_trace(ctx.encode())
            assert sent is not None
            ev = await d.wait_event("trace.span")
            assert ev["logger"] == "io.l5d.tracelog" and ev["level"] == "info"
            assert (ev["traceId"], ev["spanId"]) == (f"{sent.trace_id:016x}", f"{sent.span_id:016x}")
            assert ev["name"] == "get" and ev["service"] == "#/io.l5d.fs/web"
            assert ev["endpoint"] == f"127.0.0.1:{up.port}" and ev["durationUs"] >= 1
            assert ev["tags"]["namer.path"] == "/svc/web" and ev["tags"]["http.rsp.status"] == "200"


async def test_the_level_and_the_sampling_decide_what_is_logged(tmp_path: Path) -> None:
    async with running_upstream() as up:
        # sampleRate 0: only a request that asks to be sampled; DEBUG: only once the logger logs DEBUG.
        cfg = config(tmp_path, up.port, "- kind: io.l5d.tracelog\n  sampleRate: 0.0\n  level: DEBUG\n")
        async with daemon_proc(cfg) as d:
            url = f"http://127.0.0.1:{d.port('out')}/"
            assert (await curl(url, "-H", "Host: web", "-H", "l5d-sample: 1")).status == 200
            # The span is logged (or not) before the response is written: nothing was, at DEBUG.
            assert d.events("trace.span") == []
            r = await curl(f"{d.admin}/logging.json?logger=io.l5d.tracelog&level=DEBUG", "-X", "POST")
            assert r.status == 200
            assert (await curl(url, "-H", "Host: web")).status == 200  # no decision: rate 0
            assert (await curl(url + "sampled", "-H", "Host: web", "-H", "l5d-sample: 1")).status == 200
            ev = await d.wait_event("trace.span")
            assert ev["level"] == "debug" and ev["tags"]["http.uri"] == "/sampled"
            assert len(d.events("trace.span")) == 1


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "linkerd.yaml"
    cfg.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "hostproxy", "check", str(cfg)], capture_output=True, text=True, timeout=60
    )


def test_linkerds_example_loads_and_a_bad_level_is_refused(tmp_path: Path) -> None:
    # linkerd/examples/tracelog.yaml
    example = check(
        tmp_path,
        "namers:\n- kind: io.l5d.fs\n  rootDir: linkerd/examples/io.l5d.fs\n\nrouters:\n- protocol: http\n"
        "  dtab: |\n    /svc => /#/io.l5d.fs\n  servers:\n  - port: 4140\n\ntelemetry:\n"
        "- kind: io.l5d.tracelog\n  sampleRate: 0.2\n  level: INFO\n",
    )
    assert example.returncode == 0, example.stderr
    bad = check(
        tmp_path,
        "routers:\n- protocol: http\n  servers: [{port: 4140}]\ntelemetry:\n- kind: io.l5d.tracelog\n  level: LOUD\n",
    )
    assert bad.returncode == 1
    assert (
        "telemetry[0].level: unknown level 'LOUD': use one of ALL, TRACE, DEBUG, INFO, WARNING, ERROR, CRITICAL, "
        "FATAL, OFF" in bad.stderr
    ), bad.stderr
