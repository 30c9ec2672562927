"""The plugin registry: one entry per kind, lazy factories, implemented vs planned, reference output."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from hostproxy.config import load_config, registry
from hostproxy.config import model as m
from hostproxy.config.reference import render

PLANNED_BY_ISSUES = {
    "namer": ["io.l5d.fs", "io.l5d.dnssrv", "io.l5d.k8s", "io.l5d.k8s.external", "io.l5d.rewrite"],
    "transformer": [
        "io.l5d.k8s.daemonset",
        "io.l5d.k8s.localnode",
        "io.l5d.port",
        "io.l5d.localhost",
        "io.l5d.specificHost",
        "io.l5d.replace",
        "io.l5d.const",
    ],
    "identifier": [
        "io.l5d.header.token",
        "io.l5d.methodAndHost",
        "io.l5d.path",
        "io.l5d.header",
        "io.l5d.static",
        "io.l5d.header.path",
    ],
    "interpreter": ["default", "io.l5d.fs"],
    "balancer": ["p2c", "ewma", "roundRobin", "heap", "aperture"],
    "accrual": ["io.l5d.consecutiveFailures", "io.l5d.successRate", "io.l5d.successRateWindowed", "none"],
    "backoff": ["constant", "jittered"],
    "classifier": [
        "io.l5d.http.nonRetryable5XX",
        "io.l5d.http.retryableRead5XX",
        "io.l5d.http.retryableIdempotent5XX",
        "io.l5d.http.retryableAll5XX",
        "io.l5d.http.allSuccessful",
        "io.l5d.h2.nonRetryable5XX",
        "io.l5d.h2.retryableRead5XX",
        "io.l5d.h2.retryableIdempotent5XX",
        "io.l5d.h2.retryableAll5XX",
        "io.l5d.h2.allSuccessful",
        "io.l5d.h2.grpc.default",
        "io.l5d.h2.grpc.compliant",
        "io.l5d.h2.grpc.alwaysRetryable",
        "io.l5d.h2.grpc.neverRetryable",
        "io.l5d.h2.grpc.retryableStatusCodes",
    ],
    "telemeter": [
        "io.l5d.recentRequests",
        "io.l5d.zipkin",
        "io.l5d.tracelog",
        "io.l5d.influxdb",
        "io.l5d.prometheus",
    ],
    "protocol": ["http", "h2"],
}


def test_every_planned_kind_is_registered_with_a_frozen_config_and_lazy_factory() -> None:
    for category, kinds in PLANNED_BY_ISSUES.items():
        assert registry.kinds(category) == kinds
        for kind in kinds:
            spec = registry.lookup(category, kind)
            assert spec is not None
            assert spec.status in ("implemented", "planned")
            assert dataclasses.is_dataclass(spec.config_type)
            assert spec.config_type.__dataclass_params__.frozen  # type: ignore[attr-defined]
            module, _, attr = spec.factory.partition(":")
            assert module and attr


def test_status_comes_from_the_single_implemented_list() -> None:
    for (category, kind), spec in registry.REGISTRY.items():
        assert (spec.status == "implemented") == ((category, kind) in registry.IMPLEMENTED)
    assert set(registry.IMPLEMENTED) <= set(registry.REGISTRY)


def test_only_dnssrv_and_k8s_external_are_experimental() -> None:
    # as in Linkerd 1, where both namers require `experimental: true`
    assert [s.kind for s in registry.REGISTRY.values() if s.experimental] == [
        "io.l5d.dnssrv",
        "io.l5d.k8s.external",
    ]


def test_duplicate_kind_is_rejected() -> None:
    with pytest.raises(registry.DuplicateKindError, match=r"^namer kind 'io\.l5d\.fs' is registered twice$"):
        registry.register("namer", "io.l5d.fs", m.FsNamer, "namers.fs:from_config", "dup")


def test_bad_registrations_are_rejected() -> None:
    with pytest.raises(TypeError, match=r"^x: FsNamer must derive from BalancerConfig$"):
        registry.PluginSpec("balancer", "x", m.FsNamer, "a:b", "planned", "")
    with pytest.raises(ValueError, match=r"^x: factory must be 'module:attr', got 'nocolon'$"):
        registry.PluginSpec("balancer", "x", m.P2cBalancer, "nocolon", "planned", "")


def test_config_package_does_not_import_trio_or_the_runtime() -> None:
    code = (
        "import sys, hostproxy.config, hostproxy.config.reference, hostproxy.cli_check\n"
        "bad = [m for m in sys.modules if m == 'trio' or m.startswith(('namers.', 'hostproxy.router'))]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_each_plugin_parses_its_keys() -> None:
    text = """\
namers:
- kind: io.l5d.fs
  rootDir: d
  prefix: /disco
telemetry:
- {kind: io.l5d.recentRequests, sampleRate: 0.1, capacity: 3}
- {kind: io.l5d.prometheus, path: /metrics, prefix: hp_}
routers:
- protocol: http
  identifier: {kind: io.l5d.methodAndHost, httpUriInDst: true}
  interpreter: {kind: io.l5d.fs, dtabFile: x.dtab}
  servers: [{port: 1}]
  client:
    loadBalancer: {kind: aperture, lowLoad: 0.1, highLoad: 3, minAperture: 2, smoothWindowMs: 10}
    failureAccrual:
      kind: io.l5d.consecutiveFailures
      failures: 2
      backoff: {kind: jittered, minMs: 1, maxMs: 2}
  service:
    retries:
      budget: {ttlSecs: 5, minRetriesPerSec: 1, percentCanRetry: 0.5}
      backoff: {kind: constant, ms: 7}
    responseClassifier: {kind: io.l5d.http.allSuccessful}
"""
    cfg = load_config(text, source="t")
    r = cfg.routers[0]
    assert cfg.namers[0] == m.FsNamer(kind="io.l5d.fs", root_dir="d", prefix="/disco")
    assert cfg.telemetry == (
        m.RecentRequestsTelemeter(kind="io.l5d.recentRequests", sample_rate=0.1, capacity=3),
        m.PrometheusTelemeter(kind="io.l5d.prometheus", path="/metrics", prefix="hp_"),
    )
    assert r.identifier == (m.MethodAndHostIdentifier(kind="io.l5d.methodAndHost", http_uri_in_dst=True),)
    assert r.interpreter == m.FsInterpreter(kind="io.l5d.fs", dtab_file="x.dtab")
    cp = r.client.entries[0].params
    assert cp.load_balancer == m.ApertureBalancer(
        kind="aperture", low_load=0.1, high_load=3.0, min_aperture=2, smooth_window_ms=10
    )
    assert cp.failure_accrual == m.ConsecutiveFailuresAccrual(
        kind="io.l5d.consecutiveFailures",
        failures=2,
        backoff=m.JitteredBackoff(kind="jittered", min_ms=1, max_ms=2),
    )
    sp = r.service.entries[0].params
    assert sp.retries == m.Retries(
        budget=m.RetryBudget(ttl_secs=5, min_retries_per_sec=1, percent_can_retry=0.5),
        backoff=m.ConstantBackoff(kind="constant", ms=7),
    )
    assert sp.response_classifier.kind == "io.l5d.http.allSuccessful"


def test_reference_documents_every_key_and_kind() -> None:
    text = render()
    for category in PLANNED_BY_ISSUES:
        for kind in registry.kinds(category):
            assert f"### `{kind}` (" in text
    for needle in [
        "| `allowAddressOverrides` | bool | `false` |",
        "| `shutdownGraceMs` | int | `10000` |",
        "| `port` | int | 4140 (http), 4142 (h2) |",
        "| `rootDir` | string | **required** |",
        "| `idleTtlSecs` | int | `600` |",
        "### `io.l5d.k8s` (implemented)",
        "### `io.l5d.dnssrv` (implemented, experimental: needs `experimental: true`)",
        "### `io.l5d.h2.grpc.default` (implemented, for h2 routers)",
    ]:
        assert needle in text, needle


def test_reference_module_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hostproxy.config.reference"], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("# hostproxy config reference\n")


def test_every_implemented_kind_has_an_importable_factory() -> None:
    # A kind `check` accepts must have a runtime behind it: its factory string resolves.
    for spec in registry.REGISTRY.values():
        if spec.status == "implemented":
            factory = registry.load_factory(spec)
            assert callable(factory), (spec.category, spec.kind, spec.factory)
