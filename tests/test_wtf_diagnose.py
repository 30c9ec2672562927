"""The pure diagnosis on hand-made admin documents: causes, culprits, shares, ordering, windows."""

from __future__ import annotations

from typing import Any

import pytest

from hostproxy.cli_wtf import parse_duration, render_text
from hostproxy.diagnose import (
    Snapshot,
    Thresholds,
    delta_metrics,
    delta_unbound,
    diagnose,
    failing_services,
    format_age,
    leaf_ids,
    scopes,
)

SRV = "rt/out/server/127.0.0.1/4140"


def svc_metrics(
    svc: str,
    requests: int,
    success: int,
    causes: dict[str, int],
    statuses: dict[int, int] | None = None,
    scope: str = "service",
) -> dict[str, float]:
    p = f"rt/out/{scope}/{svc.lstrip('/')}"
    m: dict[str, float] = {
        f"{p}/requests": requests,
        f"{p}/success": success,
        f"{p}/failures": sum(causes.values()),
    }
    for c, n in causes.items():
        m[f"{p}/failures/{c}"] = n
    for code, n in (statuses or {}).items():
        m[f"{p}/status/{code}"] = n
    return m


def server(requests: int, causes: dict[str, int]) -> dict[str, float]:
    m: dict[str, float] = {
        f"{SRV}/requests": requests,
        f"{SRV}/failures": sum(causes.values()),
        f"{SRV}/success": requests - sum(causes.values()),
    }
    for c, n in causes.items():
        m[f"{SRV}/failures/{c}"] = n
    return m


def findings(snap: Snapshot, **kw: Any) -> dict[tuple[str | None, str], Any]:
    return {(f.service, f.cause): f for f in diagnose(snap, **kw).findings}


def test_healthy_traffic_has_no_findings() -> None:
    m = {
        **server(10, {}),
        **svc_metrics("/svc/web", 10, 10, {}),
        **svc_metrics("/#/io.l5d.fs/web", 10, 10, {}, scope="client"),
    }
    report = diagnose(Snapshot(metrics=m))
    assert report.healthy and report.findings == []
    assert report.routers == {"out": {"requests": 10, "failures": 0, "services": 1}}
    assert report.as_json() == {"healthy": True, "findings": [], "routers": report.routers}


def test_application_5xx_is_the_applications_fault() -> None:
    m = {
        **server(100, {"upstream/5xx": 31}),
        **svc_metrics("/svc/web", 100, 69, {"upstream/5xx": 31}, {503: 30, 500: 1, 200: 69}),
        **svc_metrics("/#/io.l5d.fs/web", 100, 69, {"upstream/5xx": 31}, scope="client"),
    }
    cs = {
        "/#/io.l5d.fs/web": {
            "state": "bound",
            "addresses": ["10.0.0.7:8080"],
            "endpoints": {"10.0.0.7:8080": {"weight": 1.0, "pool": {"connect_failures": 0}}},
        }
    }
    snap = Snapshot(metrics=m, client_state=cs, bindings={"out": {"/svc/web": ["/#/io.l5d.fs/web"]}})
    [f] = diagnose(snap).findings
    assert f.as_json() == {
        "severity": "error",
        "router": "out",
        "service": "/svc/web",
        "client": "/#/io.l5d.fs/web",
        "endpoint": "10.0.0.7:8080",
        "cause": "upstream/5xx",
        "share": 0.31,
        "failures": 31,
        "requests": 100,
        "level": "application",
        "fault": "application",
        "verdict": "application returns 5xx for 31% of requests (503×30, 500×1) — hostproxy is passing them through",
        "next_step": "look at the application's logs on 10.0.0.7:8080; the proxy is not the cause",
    }


def test_connect_refused_names_the_endpoint_with_connect_failures() -> None:
    m = {
        **server(20, {"connect/refused": 20}),
        **svc_metrics("/svc/users", 20, 0, {"connect/refused": 20}),
        **svc_metrics("/#/io.l5d.fs/users", 20, 0, {"connect/refused": 20}, scope="client"),
    }
    eps = {
        "10.0.0.7:8080": {"weight": 1.0, "pool": {"connect_failures": 12}, "accrual": "dead"},
        "10.0.0.8:8080": {"weight": 1.0, "pool": {"connect_failures": 8}, "accrual": {"state": "dead"}},
        "10.0.0.9:8080": {"weight": 1.0, "pool": {"connect_failures": 0}, "accrual": "alive"},
    }
    snap = Snapshot(
        metrics=m,
        client_state={"/#/io.l5d.fs/users": {"state": "bound", "endpoints": eps}},
        bindings={"out": {"/svc/users": ["/#/io.l5d.fs/users"]}},
    )
    report = diagnose(snap)
    f = report.findings[0]
    assert f.severity == "critical" and f.share == 1.0 and f.level == "connection"
    assert f.endpoint == "10.0.0.7:8080"
    assert f.verdict == "upstream 10.0.0.7:8080 (and 1 more) refuses connections (app down or wrong port?)"
    # The dead endpoints are already named by this finding; the accrual check adds the other one only.
    extra = [x for x in report.findings if x.cause == "connect/refused" and x is not f]
    assert [(x.endpoint, x.severity) for x in extra] == [("10.0.0.8:8080", "warning")]


def test_client_is_found_without_bindings_when_one_client_counted_the_cause() -> None:
    m = {
        **server(4, {"upstream/reset": 2}),
        **svc_metrics("/svc/api", 4, 2, {"upstream/reset": 2}),
        **svc_metrics("/$/inet/10.1.1.1/80", 4, 2, {"upstream/reset": 2}, scope="client"),
        **svc_metrics("/#/io.l5d.fs/other", 9, 9, {}, scope="client"),
    }
    cs = {"/$/inet/10.1.1.1/80": {"state": "bound", "addresses": ["10.1.1.1:80"]}}
    f = findings(Snapshot(metrics=m, client_state=cs))[("/svc/api", "upstream/reset")]
    assert (f.client, f.endpoint, f.severity) == ("/$/inet/10.1.1.1/80", "10.1.1.1:80", "critical")


def test_overload_counted_by_a_client_is_its_full_connection_pool() -> None:
    m = {
        **server(10, {"overload": 4}),
        **svc_metrics("/svc/users", 10, 6, {"overload": 4}),
        **svc_metrics("/#/io.l5d.fs/users", 10, 6, {"overload": 4}, scope="client"),
    }
    snap = Snapshot(
        metrics=m,
        client_state={"/#/io.l5d.fs/users": {"state": "bound", "addresses": ["10.0.0.7:8080"]}},
        bindings={"out": {"/svc/users": ["/#/io.l5d.fs/users"]}},
    )
    f = findings(snap)[("/svc/users", "overload")]
    assert f.verdict == (
        "the connection pools of /#/io.l5d.fs/users were full for 40% of requests of /svc/users: "
        "hostConnectionPool.maxSize connections in use and maxWaiters requests already waiting"
    )
    assert "client.hostConnectionPool.maxSize" in f.next_step
    # Shed by the router (counted by the service, not by its client): maxConcurrentRequests.
    m = {**server(10, {"overload": 4}), **svc_metrics("/svc/users", 10, 6, {"overload": 4})}
    f = findings(Snapshot(metrics=m, bindings=snap.bindings))[("/svc/users", "overload")]
    assert f.verdict == "hostproxy shed 40% of requests for /svc/users (maxConcurrentRequests reached)"


def test_unbound_names_each_get_a_finding_and_router_level_failures_are_kept() -> None:
    m = {
        **server(200, {"naming/neg": 12, "identification": 3}),
        **svc_metrics("unbound", 12, 0, {"naming/neg": 12}),
        **svc_metrics("/svc/web", 185, 185, {}),
    }
    unbound = {
        "out": {
            "names": [
                {"name": "/svc/wbe", "count": 10, "causes": {"naming/neg": 10}},
                {"name": "/svc/users", "count": 2, "causes": {"naming/neg": 2}},
            ]
        }
    }
    found = findings(Snapshot(metrics=m, unbound=unbound))
    assert set(found) == {("/svc/wbe", "naming/neg"), ("/svc/users", "naming/neg"), (None, "identification")}
    typo = found[("/svc/wbe", "naming/neg")]
    assert typo.share == 0.05 and typo.severity == "error" and typo.failures == 10 and typo.requests == 200
    assert typo.verdict == (
        "no route: /svc/wbe is negative in the dtab of router out "
        "(a typo in the Host, or a service that is not deployed?)"
    )
    assert found[("/svc/users", "naming/neg")].severity == "warning"
    ident = found[(None, "identification")]
    assert ident.failures == 3 and ident.fault == "caller" and ident.client is None


def test_stale_namer_is_a_warning_naming_age_error_and_service() -> None:
    m = {
        **server(5, {}),
        **svc_metrics("/svc/users", 5, 5, {}),
        **svc_metrics("/#/io.l5d.k8s/prod/http/users", 5, 5, {}, scope="client"),
    }
    namers = {
        "/io.l5d.k8s": {
            "kind": "io.l5d.k8s",
            "names": {
                "prod/http/users": {
                    "state": "stale",
                    "addrs": [{"host": "10.0.0.7", "port": 8080}] * 3,
                    "staleAgeSecs": 252.4,
                    "lastError": "API unreachable",
                },
                "prod/http/web": {"state": "bound", "addrs": []},
            },
        }
    }
    cs = {"/#/io.l5d.k8s/prod/http/users": {"state": "bound", "stale": True, "addresses": ["10.0.0.7:8080"]}}
    snap = Snapshot(
        metrics=m,
        client_state=cs,
        namer_state=namers,
        bindings={"out": {"/svc/users": ["/#/io.l5d.k8s/prod/http/users"]}},
    )
    [f] = diagnose(snap).findings
    assert (f.severity, f.cause, f.router, f.service, f.client) == (
        "warning",
        "naming/stale",
        "out",
        "/svc/users",
        "/#/io.l5d.k8s/prod/http/users",
    )
    assert f.verdict == (
        "namer io.l5d.k8s stale for 4m12s on prod/http/users (API unreachable) — "
        "serving last known endpoints (3)"
    )
    assert f.next_step.startswith("fix the namer's backend; /namer_state/io.l5d.k8s.json")


def test_naming_failed_quotes_the_namers_last_error() -> None:
    m = {
        **server(3, {"naming/failed": 3}),
        **svc_metrics("/svc/db", 3, 0, {"naming/failed": 3}),
        **svc_metrics("/#/io.l5d.fs/db", 3, 0, {"naming/failed": 3}, scope="client"),
    }
    namers = {
        "/io.l5d.fs": {
            "kind": "io.l5d.fs",
            "names": {"db": {"state": "failed", "lastError": "db:2: bad port"}},
        }
    }
    snap = Snapshot(metrics=m, namer_state=namers, bindings={"out": {"/svc/db": ["/#/io.l5d.fs/db"]}})
    f = findings(snap)[("/svc/db", "naming/failed")]
    assert f.verdict == "naming /svc/db fails for 100% of requests: namer io.l5d.fs name db (db:2: bad port)"
    assert f.fault == "naming"


def test_file_descriptor_limit() -> None:
    snap = Snapshot(metrics={}, process={"open_fds": 982, "fd_limit": 1024})
    [f] = diagnose(snap).findings
    assert (f.severity, f.verdict) == ("critical", "hostproxy is near its file-descriptor limit (982/1024)")
    assert f.fault == "hostproxy"
    assert diagnose(Snapshot(metrics={}, process={"open_fds": 100, "fd_limit": 1024})).healthy


def test_worst_first_router_filter_and_ignore_threshold() -> None:
    m = {
        **server(1000, {"upstream/5xx": 2, "connect/refused": 600}),
        **svc_metrics("/svc/a", 400, 398, {"upstream/5xx": 2}),
        **svc_metrics("/svc/b", 600, 0, {"connect/refused": 600}),
        "rt/in/server/0.0.0.0/4141/requests": 5,
        "rt/in/server/0.0.0.0/4141/failures/upstream/5xx": 5,
        "rt/in/service/svc/c/requests": 5,
        "rt/in/service/svc/c/failures/upstream/5xx": 5,
    }
    report = diagnose(Snapshot(metrics=m))
    # By severity, then share, then the number of failures.
    assert [(f.router, f.service, f.severity) for f in report.findings] == [
        ("out", "/svc/b", "critical"),
        ("in", "/svc/c", "critical"),
        ("out", "/svc/a", "warning"),
    ]
    assert [f.service for f in diagnose(Snapshot(metrics=m), router="out").findings] == ["/svc/b", "/svc/a"]
    only = diagnose(Snapshot(metrics=m), router="out", thresholds=Thresholds(ignore_share=0.01)).findings
    assert [f.service for f in only] == ["/svc/b"]


def test_delta_metrics_subtracts_counters_and_keeps_gauges() -> None:
    before = {
        "rt/out/service/svc/a/requests": 10,
        "rt/out/service/svc/a/failures/upstream/5xx": 4,
        "rt/out/service/svc/a/request_latency_ms.p99": 80,
        "rt/out/service/svc/a/pending": 3,
        "rt/out/service/svc/a/abandoned": 2,
        "rt/out/client/x/requests": 50,
    }
    after = {
        "rt/out/service/svc/a/requests": 15,
        "rt/out/service/svc/a/failures/upstream/5xx": 4,
        "rt/out/service/svc/a/request_latency_ms.p99": 12,
        "rt/out/service/svc/a/pending": 1,
        "rt/out/service/svc/a/abandoned": 3,
        "rt/out/client/x/requests": 7,
        "rt/out/service/svc/new/status/200": 2,
    }
    assert delta_metrics(before, after) == {
        "rt/out/service/svc/a/requests": 5,
        "rt/out/service/svc/a/failures/upstream/5xx": 0,
        "rt/out/service/svc/a/request_latency_ms.p99": 12,
        "rt/out/service/svc/a/pending": 1,
        "rt/out/service/svc/a/abandoned": 1,
        "rt/out/client/x/requests": 7,  # went down: the client was recreated; counts from zero
        "rt/out/service/svc/new/status/200": 2,
    }


def test_delta_unbound() -> None:
    before = {
        "out": {
            "names": [
                {"name": "/svc/a", "count": 5, "causes": {"naming/neg": 5}},
                {"name": "/svc/b", "count": 2, "causes": {"naming/neg": 2}},
            ]
        }
    }
    after = {
        "out": {
            "names": [
                {"name": "/svc/a", "count": 8, "causes": {"naming/neg": 8}},
                {"name": "/svc/b", "count": 2, "causes": {"naming/neg": 2}},
                {"name": "/svc/c", "count": 1, "causes": {"naming/failed": 1}},
            ]
        }
    }
    assert delta_unbound(before, after) == {
        "out": {
            "names": [
                {"name": "/svc/a", "count": 3, "causes": {"naming/neg": 3}},
                {"name": "/svc/c", "count": 1, "causes": {"naming/failed": 1}},
            ]
        }
    }


def test_scopes_leaf_ids_and_failing_services() -> None:
    m = {
        **svc_metrics("/svc/a", 3, 2, {"upstream/5xx": 1}),
        **svc_metrics("/svc/b", 1, 1, {}),
        **svc_metrics("/#/io.l5d.fs/a", 1, 1, {}, scope="client"),
        **svc_metrics("/#/io.l5d.fs/a/v2", 1, 1, {}, scope="client"),
        f"{SRV}/requests": 4,
    }
    assert scopes(m) == {
        "out": {
            "server": ["127.0.0.1/4140"],
            "service": ["/svc/a", "/svc/b"],
            "client": ["/#/io.l5d.fs/a", "/#/io.l5d.fs/a/v2"],
        }
    }
    assert failing_services(m) == [("out", "/svc/a")]
    tree = {
        "type": "delegate",
        "path": "/svc/a",
        "delegate": {
            "type": "union",
            "path": "/x",
            "union": [
                {
                    "weight": 0.9,
                    "tree": {"type": "leaf", "path": "/#/io.l5d.fs/a", "bound": {"id": "/#/io.l5d.fs/a"}},
                },
                {
                    "weight": 0.1,
                    "tree": {
                        "type": "alt",
                        "path": "/y",
                        "alt": [
                            {"type": "neg", "path": "/z"},
                            {
                                "type": "leaf",
                                "path": "/#/io.l5d.fs/a/v2",
                                "bound": {"id": "/#/io.l5d.fs/a/v2"},
                            },
                        ],
                    },
                },
            ],
        },
    }
    assert leaf_ids(tree) == ["/#/io.l5d.fs/a", "/#/io.l5d.fs/a/v2"]
    assert leaf_ids({"type": "neg", "path": "/svc/a"}) == []


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (37.9, "37s"), (252, "4m12s"), (7500, "2h05m"), (273600, "3d04h")]
)
def test_format_age(seconds: float, text: str) -> None:
    assert format_age(seconds) == text


def test_parse_duration() -> None:
    assert [parse_duration(x) for x in ("500ms", "30s", "5m", "1h", "2.5")] == [0.5, 30.0, 300.0, 3600.0, 2.5]
    with pytest.raises(ValueError, match=r"^invalid duration '5 minutes': use a number with ms, s, m or h"):
        parse_duration("5 minutes")


def test_render_text() -> None:
    m = {**server(8, {"upstream/5xx": 2}), **svc_metrics("/svc/web", 8, 6, {"upstream/5xx": 2}, {503: 2})}
    report = diagnose(Snapshot(metrics=m))
    assert render_text(
        report, {"kind": "interval", "seconds": 30.0}, "http://127.0.0.1:9990"
    ).splitlines() == [
        "1 problem — router out: 8 requests, 2 failed (over the last 30s; admin http://127.0.0.1:9990)",
        "",
        "ERROR    upstream/5xx [fault: application]  router out /svc/web  25% of 8 requests",
        "  application returns 5xx for 25% of requests (503×2) — hostproxy is passing them through",
        "  next: look at the application's logs on its endpoints; the proxy is not the cause",
    ]


# -- clients a server turned away ------------------------------------------------------------------


def test_failed_tls_handshakes_on_a_server_are_the_callers_fault_with_the_commonest_reason() -> None:
    m = {
        **server(10, {}),
        f"{SRV}/tls/handshakes": 10,
        f"{SRV}/tls/handshake_failures": 30,
        f"{SRV}/tls/handshake_failures/no-client-certificate": 25,
        f"{SRV}/tls/handshake_failures/not-tls": 5,
        f"{SRV}/tls/handshake_failures/eof": 0,
    }
    (f,) = diagnose(Snapshot(m)).findings
    assert (f.router, f.service, f.cause, f.fault, f.level) == ("out", None, "tls", "caller", "connection")
    assert (f.failures, f.requests, f.severity) == (30, 40, "critical")
    assert f.verdict == (
        "30 TLS handshake(s) from clients failed on server 127.0.0.1:4140 of router out "
        "(no-client-certificate 25, not-tls 5); 10 succeeded"
    )
    assert "requireClientAuth" in f.next_step and "caCertPath" in f.next_step
    assert f.as_json()["fault"] == "caller" and "blame" not in f.as_json()
    text = render_text(diagnose(Snapshot(m)), {"kind": "since_start", "seconds": 60}, "http://a")
    assert "CRITICAL tls [fault: caller]  router out  75% of 40 TLS handshakes\n" in text


def test_connections_over_max_connections_and_malformed_requests_are_findings() -> None:
    m = {
        **server(95, {}),
        f"{SRV}/connects": 40,
        f"{SRV}/rejected_connections": 10,
        f"{SRV}/bad_requests": 5,
        f"{SRV}/header_timeouts": 2,
    }
    got = {f.cause: f for f in diagnose(Snapshot(m)).findings}
    over = got["overload"]
    assert (over.failures, over.requests, over.severity, over.fault) == (10, 50, "error", "hostproxy")
    assert (
        over.verdict
        == "server 127.0.0.1:4140 of router out refused 10 connection(s) at servers[].maxConnections"
    )
    bad = got["identification"]
    assert (bad.failures, bad.requests, bad.severity, bad.fault) == (5, 100, "error", "caller")
    assert bad.verdict.endswith("with 4xx before routing, 2 of them heads not sent in time (408)")


def test_server_counters_at_zero_are_healthy_and_the_interval_window_subtracts_them() -> None:
    before = {**server(5, {}), f"{SRV}/tls/handshake_failures": 3, f"{SRV}/tls/handshake_failures/not-tls": 3}
    after = {**server(9, {}), f"{SRV}/tls/handshake_failures": 3, f"{SRV}/tls/handshake_failures/not-tls": 3}
    assert diagnose(Snapshot(after)).findings  # since start: three failures
    assert diagnose(Snapshot(delta_metrics(before, after))).healthy  # none in the window
    assert diagnose(Snapshot({**server(5, {}), f"{SRV}/bad_requests": 0})).healthy


def test_server_findings_follow_the_router_filter() -> None:
    m = {"rt/other/server/127.0.0.1/81/rejected_connections": 4, "rt/other/server/127.0.0.1/81/connects": 4}
    assert diagnose(Snapshot(m), router="out").healthy
    assert [f.router for f in diagnose(Snapshot(m), router="other").findings] == ["other"]


def test_a_name_whose_naming_failed_is_explained_with_what_the_namer_said() -> None:
    said = "/#/io.l5d.fs/broken: /etc/disco/broken:1: 'garbage' is not 'host port [* weight]'; write each line as ..."
    m = {**server(4, {"naming/failed": 2}), **svc_metrics("unbound", 2, 0, {"naming/failed": 2})}
    unbound = {
        "out": {
            "names": [{"name": "/svc/broken", "count": 2, "causes": {"naming/failed": 2}, "last_error": said}]
        }
    }
    (f,) = diagnose(Snapshot(m, unbound=unbound)).findings
    assert (f.service, f.cause, f.failures) == ("/svc/broken", "naming/failed", 2)
    assert f.verdict == f"naming /svc/broken failed in router out: {said}"
    assert (
        f.next_step
        == "fix what the error names; /namer_state/io.l5d.fs.json shows the namer's view of each name"
    )
    unbound["out"]["names"][0]["last_error"] = (
        "Exceeded 10 seconds binding timeout while resolving name: /svc/broken"
    )
    (f,) = diagnose(Snapshot(m, unbound=unbound)).findings
    assert f.verdict.endswith(
        "failed in router out: Exceeded 10 seconds binding timeout while resolving name: /svc/broken"
    )
    assert f.next_step == "fix what the error names; explain it: /delegator?router=out with path /svc/broken"
