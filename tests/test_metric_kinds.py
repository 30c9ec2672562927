"""What counts up is a counter and what is a level is a gauge, in every renderer: the counters that
another object keeps (a server's accepted connections, a balancer's adds, failure accrual's removals)
were exported as gauges, so Prometheus typed them ``gauge`` without ``_total`` and the metrics tree
showed ``{"gauge": n}`` where Linkerd's shows ``{"counter": n}``. A real daemon, a real upstream, curl.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from hostproxy.metrics.registry import CounterFn, MetricsRegistry
from hostproxy.metrics.render import flat, prometheus
from tests.daemonutil import curl, running_daemon
from tests.test_lifecycle_adversarial import _config, _disco
from tests.upstreams import running_upstream

pytestmark = pytest.mark.timeout(60)


def _types(prom: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", prom, re.MULTILINE))


def _node(tree: dict[str, Any], key: str) -> Any:
    for seg in key.split("/"):
        tree = tree[seg]
    return tree


async def test_kept_counters_are_counters_and_levels_gauges(tmp_path: Path) -> None:
    async with running_upstream() as up, running_daemon(_config(_disco(tmp_path, web=up.port))) as d:
        port = d.port("out")
        r = await curl(f"http://127.0.0.1:{port}/", "-H", "Host: web")
        assert r.status == 200, r
        prom = (await curl(f"{d.admin}/admin/metrics/prometheus")).body.decode()
        types = _types(prom)
        for family in (
            "hostproxy_server_connects_total",
            "hostproxy_client_accrual_removals_total",
            "hostproxy_client_accrual_revivals_total",
            "hostproxy_client_retries_not_open_total",
            "hostproxy_client_requests_total",
        ):
            assert types.get(family) == "counter", (family, types.get(family))
        for family in (
            "hostproxy_server_connections",
            "hostproxy_client_connections",
            "hostproxy_client_endpoints_size",
            "hostproxy_client_balancer_load",
        ):
            assert types.get(family) == "gauge", (family, types.get(family))
        # no family is typed gauge under a counter's name, nor the other way round
        assert not [f for f, t in types.items() if t == "gauge" and f.endswith("_total")], types
        assert not [f for f, t in types.items() if t == "counter" and not f.endswith("_total")], types
        assert re.search(
            rf'^hostproxy_server_connects_total{{router="out",server="127.0.0.1:{port}"}} 1$', prom, re.M
        ), prom
        tree = (await curl(f"{d.admin}/admin/metrics.json?tree=1")).json()
        server = _node(tree, f"rt/out/server/127.0.0.1/{port}")
        assert server["connects"] == {"counter": 1}
        assert set(server["connections"]) == {"gauge"}
        client = _node(tree, "rt/out/client")
        (cid,) = [k for k in client if "web" in str(client[k])] or list(client)
        node = client[cid]
        while "loadbalancer" not in node:  # the client id's path segments nest
            (node,) = [v for v in node.values() if isinstance(v, dict)]
        assert node["loadbalancer"]["adds"] == {"counter": 1}
        assert set(node["loadbalancer"]["size"]) == {"gauge"}
        assert node["failure_accrual"]["removals"] == {"counter": 0}
        assert node["retries"]["not_open"] == {"counter": 0}
        flat_m = (await curl(f"{d.admin}/admin/metrics.json")).json()
        assert flat_m[f"rt/out/server/127.0.0.1/{port}/connects"] == 1


def test_a_kept_counter_reads_its_keeper_and_keeps_its_last_value_when_the_read_fails() -> None:
    reg = MetricsRegistry(lambda: 0.0)
    box = {"n": 3}

    def read() -> float:
        if box["n"] < 0:
            raise RuntimeError("gone")
        return box["n"]

    c = reg.counter_fn("a/adds", read)
    assert isinstance(c, CounterFn) and flat(reg) == {"a/adds": 3}
    box["n"] = 5
    assert flat(reg) == {"a/adds": 5}
    box["n"] = -1  # a broken keeper: the admin page still renders, with the last value
    assert flat(reg) == {"a/adds": 5}
    assert reg.counter_fn("a/adds", lambda: 7) is c and c.value == 7  # registered again: rebound
    reg.counter("b/plain")
    with pytest.raises(ValueError, match="already registered as a counter kept here"):
        reg.counter_fn("b/plain", lambda: 1)
    assert prometheus(reg) == ""  # no PromId: not exported
