"""Adversarial config review: values the runtime refuses, hostile YAML, settings accepted but not applied.

Each test here shows a defect found in review: a config that `hostproxy check` passed but the daemon then
refused on every request (or crashed on at startup), YAML that crashed the loader or made it do
unbounded work, and a setting that was accepted and never applied.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hostproxy.config import ConfigError, load_config
from tests.test_lifecycle_helpers import admin_post, config, daemon_proc, get, write_atomic, write_disco
from tests.upstreams import running_upstream

ROUTER = "routers:\n- protocol: http\n  dtab: /svc => /#/io.l5d.fs;\n  servers:\n  - port: 4140\n"
H2_ROUTER = "routers:\n- protocol: h2\n  dtab: /svc => /#/io.l5d.fs;\n  servers:\n  - port: 4142\n"


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(text, source="t.yaml")
    return [i.format() for i in e.value.errors]


def check(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hostproxy", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- values the runtime refuses are config errors --------------------------------------------------------


@pytest.mark.parametrize(
    ("router", "extra", "expected"),
    [
        (
            ROUTER,
            "  client:\n    failureAccrual:\n      kind: io.l5d.consecutiveFailures\n"
            "      backoff: {kind: jittered, minMs: 1000, maxMs: 10}\n",
            "t.yaml:9: routers[0].client.failureAccrual.backoff.maxMs: must be >= minMs (1000), got 10",
        ),
        (
            ROUTER,
            "  client:\n    failureAccrual:\n      kind: io.l5d.consecutiveFailures\n"
            "      backoff: {kind: jittered, minMs: 0, maxMs: 10}\n",
            "t.yaml:9: routers[0].client.failureAccrual.backoff.minMs: must be greater than 0, got 0",
        ),
        (
            ROUTER,
            "  service:\n    retries:\n      backoff:\n        kind: jittered\n        minMs: 500\n"
            "        maxMs: 100\n",
            "t.yaml:11: routers[0].service.retries.backoff.maxMs: must be >= minMs (500), got 100",
        ),
        (
            ROUTER,
            "  client:\n    loadBalancer: {kind: p2c, enableProbation: true}\n",
            "t.yaml:7: routers[0].client.loadBalancer.enableProbation: advisory discovery removal is not "
            "supported; remove the key or set it to false",
        ),
        (
            ROUTER,
            "  client:\n    loadBalancer:\n      kind: aperture\n      lowLoad: 3.0\n      highLoad: 2.0\n",
            "t.yaml:9: routers[0].client.loadBalancer.lowLoad: must be below highLoad (2.0), got 3.0",
        ),
        (
            ROUTER,
            "  client:\n    failureAccrual: {kind: io.l5d.successRateWindowed, successRate: 0.5, "
            "window: 100000}\n",
            "t.yaml:7: routers[0].client.failureAccrual.window: expected a number in [1, 86400], got 100000",
        ),
        (
            ROUTER,
            "  client:\n    requeueBudget: {ttlSecs: 120}\n",
            "t.yaml:7: routers[0].client.requeueBudget.ttlSecs: must be between 1 and 60 (seconds), got 120",
        ),
        (
            ROUTER,
            "  client:\n    kind: io.l5d.static\n    configs:\n    - prefix: /#/io.l5d.fs/web\n"
            "      failureAccrual: {kind: io.l5d.consecutiveFailures, failures: 2000000}\n",
            "t.yaml:10: routers[0].client.configs[0].failureAccrual.failures: expected a number in "
            "[1, 1000000], got 2000000",
        ),
        (
            H2_ROUTER,
            "  service:\n    responseClassifier:\n      kind: io.l5d.h2.grpc.default\n"
            "      successStatusCodes: [0, 99]\n",
            "t.yaml:9: routers[0].service.responseClassifier.successStatusCodes: 99 is not a grpc-status "
            "code; use integers 0..16",
        ),
    ],
    ids=[
        "accrual-backoff-max-below-min",
        "accrual-backoff-min-zero",
        "retry-backoff-max-below-min",
        "enable-probation",
        "aperture-loads",
        "window-too-long",
        "requeue-ttl",
        "static-entry-failures",
        "grpc-status-code",
    ],
)
def test_values_the_runtime_refuses_are_config_errors(router: str, extra: str, expected: str) -> None:
    # These configs passed `hostproxy check` and started the daemon; then every request to a name
    # answered 502 "Internal proxy error" with the builder's exception.
    assert issues(router + extra) == [expected]


async def test_reload_to_a_backoff_the_runtime_refuses_is_rejected_and_traffic_still_flows(
    tmp_path: Path,
) -> None:
    async with running_upstream() as up:
        disco = tmp_path / "disco"
        write_disco(disco, "web", up.port)
        cfg = tmp_path / "hostproxy.yaml"
        cfg.write_text(config(disco))
        async with daemon_proc(cfg) as d:
            port = d.port("out")
            assert (await get(port, "/", host="web")).status == 200
            bad = config(
                disco,
                router_extra="  client:\n    failureAccrual:\n      kind: io.l5d.consecutiveFailures\n"
                "      backoff: {kind: jittered, minMs: 1000, maxMs: 10}",
            )
            write_atomic(cfg, bad)
            line = bad.splitlines().index("      backoff: {kind: jittered, minMs: 1000, maxMs: 10}") + 1
            r = await admin_post(d.admin_port, "/admin/reload")
            assert r.status == 500
            assert (
                f"{cfg}:{line}: routers[0].client.failureAccrual.backoff.maxMs: must be >= minMs (1000), got 10"
                in r.body.decode()
            )
            # The running config stays: a new name (a new client) is still served.
            write_disco(disco, "web2", up.port)
            r = await get(port, "/", host="web2")
            assert (r.outcome, r.status) == ("ok", 200)


def test_run_refuses_to_start_on_overload_marks_admin_regex_and_static_forwarded_label(
    tmp_path: Path,
) -> None:
    # Each of these passed `check` and then crashed the daemon at startup with a traceback.
    cfg = tmp_path / "hostproxy.yaml"
    cfg.write_text(
        "admin:\n"
        "  port: 0\n"
        "  security:\n"
        "    pathWhitelist: ['/admin/(ping']\n"
        "overload:\n"
        "  noKeepalive: 0.95\n"
        "  shed: 0.5\n"
        "routers:\n"
        "- protocol: http\n"
        "  servers:\n"
        "  - port: 0\n"
        "    addForwardedHeader:\n"
        "      by: {kind: static}\n"
    )
    want = [
        f"{cfg}:4: admin.security.pathWhitelist[0]: not a valid regular expression: missing ), "
        "unterminated subpattern at position 7",
        f"{cfg}:6: overload: the memory marks must be in order noKeepalive (0.95) <= shed (0.5) "
        "<= stopAccept (0.95); change the one out of order",
        f"{cfg}:13: routers[0].servers[0].addForwardedHeader.by.label: missing required key 'label' "
        "(a labeler of kind static sends this label, e.g. _proxy1)",
    ]
    proc = check("run", str(cfg))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[0] == "hostproxy: refusing to start: 3 error(s) in the config"
    assert proc.stderr.splitlines()[1:] == want
    proc = check("check", str(cfg))
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[:-1] == want


def test_overload_zero_mark_and_hysteresis_above_the_first_mark() -> None:
    assert issues(ROUTER + "overload: {noKeepalive: 0.0, shed: 0.0, stopAccept: 0.0}\n") == [
        "t.yaml:6: overload.noKeepalive: must be greater than 0 (a fraction up to 1.0)",
        "t.yaml:6: overload.shed: must be greater than 0 (a fraction up to 1.0)",
        "t.yaml:6: overload.stopAccept: must be greater than 0 (a fraction up to 1.0)",
    ]
    assert issues(ROUTER + "overload:\n  hysteresis: 0.9\n") == [
        "t.yaml:7: overload.hysteresis: must be below noKeepalive (0.8), got 0.9"
    ]
