"""io.l5d.k8s.external: a Service's external load balancer addresses, listed and watched.

The namer runs against the in-repo fake Kubernetes API server (tests/k8s_api: the real list/watch
wire protocol on loopback), which serves ``type: LoadBalancer`` Services with
``status.loadBalancer.ingress``; the daemon test routes real requests to a loopback upstream through
a name this namer binds. Waits are bounded polls of observable state, never timing assertions.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path as FsPath
from typing import Any

import pytest
import trio
from k8s_api.objects import NS, service
from k8s_api.server import FakeKubeApi, open_fake_api

from hostproxy.config import load_config, registry
from namers._dtab import NEG, PENDING, Leaf, Path
from namers.k8s import InClusterConfigError
from namers.k8s.client import ApiServer
from namers.k8s.external import K8sExternalNamer, from_config
from namers.k8s.objects import K8sObjectError, parse_ingress
from tests.daemonutil import curl, running_daemon
from tests.upstreams import running_upstream

KEY = (b"srv", b"http", b"sessions")
PORTS: list[tuple[str, int, int | str | None]] = [("http", 80, 8080), ("admin", 9000, 9990)]
LB_IP = {"ip": "203.0.113.10"}
LB_HOST = {"hostname": "a1b2c3-1234567890.eu-west-1.elb.amazonaws.com", "ip": "203.0.113.99"}


def lb_service(ingress: list[dict[str, Any]] | None, name: str = "sessions", **kw: Any) -> dict[str, Any]:
    return service(name, PORTS, ingress=ingress, **kw)


async def wait_for(pred: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``pred`` until truthy; fail after ``timeout`` seconds (a bound, not a measurement)."""
    with trio.fail_after(timeout):
        while not (v := pred()):
            await trio.sleep(0.01)
        return v


@asynccontextmanager
async def running(api: FakeKubeApi, **kwargs: Any) -> AsyncIterator[K8sExternalNamer]:
    opts: dict[str, Any] = {
        "resync_interval": 30.0,
        "request_timeout": 5.0,
        "backoff_base": 0.02,
        "backoff_max": 0.1,
        "rng": lambda: 0.5,
    }
    opts.update(kwargs)
    namer = K8sExternalNamer(ApiServer("127.0.0.1", api.port), **opts)
    async with trio.open_nursery() as nursery:
        await nursery.start(namer.run)
        yield namer
        nursery.cancel_scope.cancel()


def state(namer: K8sExternalNamer, key: tuple[bytes, ...] = KEY) -> str | None:
    st = namer.table.get(key)
    return st.state if st is not None else None


def hosts(namer: K8sExternalNamer, key: tuple[bytes, ...] = KEY) -> list[tuple[str, int]] | None:
    st = namer.table.get(key)
    if st is None or st.addr is None:
        return None
    return [(a.host, a.port) for a in st.addr]


def name_json(namer: K8sExternalNamer, key: str = "srv/http/sessions") -> dict[str, Any]:
    return namer.state_json()["names"][key]


def lookup(namer: K8sExternalNamer, path: str) -> Any:
    return namer.lookup(Path.read(path))


# -- resolution ----------------------------------------------------------------------------------------
async def test_resolves_the_ingress_addresses_on_the_service_port() -> None:
    async with open_fake_api() as api:
        api.put("services", lb_service([LB_IP, LB_HOST]))
        async with running(api) as namer:
            assert lookup(namer, "/srv/http/sessions/rest") is PENDING
            await wait_for(lambda: state(namer) == "bound")
            # the Service port (80), not the targetPort (8080) nor the nodePort; a hostname wins
            # over the entry's ip and stays a name (the client resolves it when it connects)
            assert hosts(namer) == [
                ("203.0.113.10", 80),
                ("a1b2c3-1234567890.eu-west-1.elb.amazonaws.com", 80),
            ]
            tree = lookup(namer, "/SRV/HTTP/Sessions/rest")  # the key labels are lowercased
            assert isinstance(tree, Leaf)
            assert tree.value.id == Path.read("/#/io.l5d.k8s.external/srv/http/sessions")
            assert tree.value.residual == Path.read("/rest")
            # another port name; a Service port number
            for path, key in [("/srv/admin/sessions", b"admin"), ("/srv/9000/sessions", b"9000")]:
                lookup(namer, path)
                await wait_for(lambda key=key: state(namer, (b"srv", key, b"sessions")) == "bound")
                assert [p for _, p in hosts(namer, (b"srv", key, b"sessions")) or []] == [9000, 9000]
            entry = name_json(namer)
            assert entry["condition"] == "ingress"
            assert entry["ingress"] == [
                {"host": "203.0.113.10", "port": 80},
                {"host": "a1b2c3-1234567890.eu-west-1.elb.amazonaws.com", "port": 80},
            ]
            assert entry["ports"] == {"http": [80]} and "notReady" not in entry
            assert entry["watch"]["request"].startswith("GET /api/v1/namespaces/srv/services?")
            body = namer.state_json()
            assert body["kind"] == "io.l5d.k8s.external" and body["resource"] == "services"
            assert "endpoints" not in body and "portMappings" not in body
            svc = body["services"]["srv/sessions"]
            assert svc["state"]["value"] == {
                "nsName": "srv",
                "serviceName": "sessions",
                "exists": True,
                "ports": {"http": 80, "admin": 9000},
                "ingress": ["203.0.113.10", "a1b2c3-1234567890.eu-west-1.elb.amazonaws.com"],
            }
            assert svc["watch"]["streaming"] is True
            stats = namer.statistics()
            assert stats["targets"] == 1 and stats["conditions"]["ingress"] == 3
            # Services only: one list, then the watch; the endpoints are never asked for
            assert api.count("/services", watch=False) == 1
            assert api.count("/endpoints") == 0 and api.count("/endpointslices") == 0


async def test_service_gaining_and_losing_its_ingress_through_the_watch() -> None:
    async with open_fake_api() as api:
        api.put("services", lb_service([]))  # a LoadBalancer Service not provisioned yet
        async with running(api) as namer:
            lookup(namer, "/srv/http/sessions")
            await wait_for(lambda: state(namer) == "neg")
            assert name_json(namer)["condition"] == "no-ingress"
            await wait_for(lambda: api.open_watches == 1)
            api.put("services", lb_service([LB_IP]))
            await wait_for(lambda: hosts(namer) == [("203.0.113.10", 80)])
            assert state(namer) == "bound"
            api.put("services", lb_service([{"ip": "203.0.113.11"}, {"ip": "203.0.113.12"}]))
            await wait_for(lambda: hosts(namer) == [("203.0.113.11", 80), ("203.0.113.12", 80)])
            api.put("services", lb_service(None))  # back to ClusterIP: no load balancer at all
            await wait_for(lambda: state(namer) == "neg")
            assert name_json(namer)["condition"] == "no-ingress"
            api.put("services", lb_service([LB_IP]))
            await wait_for(lambda: state(namer) == "bound")
            api.delete("services", NS, "sessions")
            await wait_for(lambda: state(namer) == "neg")
            assert name_json(namer)["condition"] == "service-missing"
            api.put("services", lb_service([{"ip": "203.0.113.13"}]))
            await wait_for(lambda: hosts(namer) == [("203.0.113.13", 80)])
            assert api.count("/services", watch=False) == 1  # every change came through the watch


async def test_a_port_the_service_does_not_have_is_negative() -> None:
    async with open_fake_api() as api:
        udp = lb_service([LB_IP])
        udp["spec"]["ports"].append({"name": "dns", "protocol": "UDP", "port": 53, "nodePort": 31999})
        api.put("services", udp)
        async with running(api) as namer:
            for port in ("grpc", "dns", "8080", "31380"):  # unknown, UDP, the targetPort, the nodePort
                key = (b"srv", port.encode(), b"sessions")
                lookup(namer, f"/srv/{port}/sessions")
                await wait_for(lambda key=key: state(namer, key) == "neg")
                assert name_json(namer, f"srv/{port}/sessions")["condition"] == "port-missing"
            # labels that are not Kubernetes names are NEG, never a request
            assert namer.lookup(Path((b"srv", b"http&x=1", b"sessions"))) is NEG
            assert (b"srv", b"http&x=1", b"sessions") not in namer.table


async def test_a_malformed_ingress_fails_its_names_only_keeping_the_last_good_addresses() -> None:
    async with open_fake_api() as api:
        api.put("services", lb_service([LB_IP]))
        api.put("services", lb_service([LB_IP], name="reports"))
        async with running(api) as namer:
            lookup(namer, "/srv/http/sessions")
            lookup(namer, "/srv/http/reports")
            reports = (b"srv", b"http", b"reports")
            await wait_for(lambda: state(namer) == "bound" and state(namer, reports) == "bound")
            api.put("services", lb_service([{"ip": "203.0.113.300"}]))
            await wait_for(lambda: state(namer) == "stale")
            assert hosts(namer) == [("203.0.113.10", 80)]
            assert name_json(namer)["condition"] == "malformed"
            assert name_json(namer)["lastError"] == (
                "Service srv/sessions: status.loadBalancer.ingress[0].ip is '203.0.113.300', expected an IP "
                "address; check it with 'kubectl get -o json'; other names are unaffected"
            )
            assert state(namer, reports) == "bound"


def test_parse_ingress_shapes() -> None:
    assert parse_ingress({}) == []
    assert parse_ingress({"status": {"loadBalancer": {}}}) == []
    assert parse_ingress({"status": {"loadBalancer": {"ingress": None}}}) == []
    assert parse_ingress(
        {
            "status": {
                "loadBalancer": {
                    "ingress": [{"ip": "2001:DB8::1"}, {"hostname": "LB.Example.com"}, {"ip": "2001:db8::1"}]
                }
            }
        }
    ) == ["2001:db8::1", "lb.example.com"]
    bad = {
        "metadata": {"name": "web", "namespace": "prod"},
        "status": {"loadBalancer": {"ingress": [{"ipMode": "VIP"}]}},
    }
    with pytest.raises(
        K8sObjectError,
        match=r"^Service prod/web: status\.loadBalancer\.ingress\[0\] has neither hostname nor ip; ",
    ):
        parse_ingress(bad)


async def test_label_selector_adds_a_path_segment() -> None:
    async with open_fake_api() as api:
        api.put("services", lb_service([LB_IP], labels={"app": "sessions", "version": "v2"}))
        async with running(api, label_selector="version") as namer:
            lookup(namer, "/srv/http/sessions/v2/rest")
            key2 = (b"srv", b"http", b"sessions", b"v2")
            await wait_for(lambda: state(namer, key2) == "bound")
            assert hosts(namer, key2) == [("203.0.113.10", 80)]
            lookup(namer, "/srv/http/sessions/v1")
            await wait_for(lambda: state(namer, (b"srv", b"http", b"sessions", b"v1")) == "neg")
            assert name_json(namer, "srv/http/sessions/v1")["condition"] == "service-missing"
            assert api.count("labelSelector=version%3Dv2") >= 1


# -- the list/watch machinery it shares with io.l5d.k8s ------------------------------------------------
@pytest.mark.parametrize(("legacy", "reason"), [(False, "410 in watch"), (True, "410 Gone")])
async def test_rewatch_from_a_compacted_resource_version_relists(legacy: bool, reason: str) -> None:
    async with open_fake_api(legacy_410=legacy) as api:
        api.put("services", lb_service([LB_IP]))
        async with running(api) as namer:
            lookup(namer, "/srv/http/sessions")
            await wait_for(lambda: state(namer) == "bound")
            await wait_for(lambda: api.open_watches == 1)
            api.stall()
            api.put("services", lb_service([{"ip": "203.0.113.20"}]))
            api.compact()  # the history behind the namer's resourceVersion is gone
            api.resume()
            api.end_watches()  # the namer re-watches from its resourceVersion and gets 410 Gone
            await wait_for(lambda: hosts(namer) == [("203.0.113.20", 80)])
            await wait_for(lambda: namer.statistics()["relists"].get(reason) == 1)
            assert api.count("/services", watch=False) == 2
            assert state(namer) == "bound"


async def test_api_down_keeps_the_last_good_addresses_and_says_why() -> None:
    async with open_fake_api() as api:
        api.put("services", lb_service([LB_IP]))
        async with running(api) as namer:
            lookup(namer, "/srv/http/sessions")
            await wait_for(lambda: state(namer) == "bound")
            await api.go_down()
            await wait_for(
                lambda: (
                    state(namer) == "stale" and "connection refused" in (name_json(namer)["lastError"] or "")
                )
            )
            assert hosts(namer) == [("203.0.113.10", 80)]  # still routed
            entry = name_json(namer)
            assert entry["condition"] == "unavailable"
            assert re.fullmatch(
                r"discovery unavailable: GET services in srv \(metadata\.name=sessions\): "
                r"http://127\.0\.0\.1:\d+ GET /api/v1/namespaces/srv/services: connection refused; "
                r"is the API server \(or kubectl proxy\) running\?",
                entry["lastError"],
            ), entry["lastError"]
            assert entry["watch"]["lastError"] is not None and entry["watch"]["streaming"] is False
            watch = namer.state_json()["services"]["srv/sessions"]["watch"]
            assert watch["lastError"] is not None and watch["errorSince"] is not None
            assert namer.statistics()["conditions"]["unavailable"] == 1
            api.put("services", lb_service([{"ip": "203.0.113.21"}]))
            await api.come_up()
            await wait_for(lambda: state(namer) == "bound" and hosts(namer) == [("203.0.113.21", 80)])
            assert name_json(namer)["lastError"] is None


async def test_saved_state_restores_the_ingress_addresses_stale() -> None:
    """namerState.dir: what a daemon saved on the way down serves, stale, after a restart with the
    API server still down."""
    async with open_fake_api() as api:
        api.put("services", lb_service([LB_IP, LB_HOST]))
        async with running(api) as namer:
            lookup(namer, "/srv/http/sessions")
            await wait_for(lambda: state(namer) == "bound")
            saved = namer.export_state()
        port = api.port
    # The same API server, now gone (state saved for another API server is not restored).
    restarted = K8sExternalNamer(ApiServer("127.0.0.1", port))
    assert restarted.import_state(saved) == 1
    assert state(restarted) == "stale"
    assert hosts(restarted) == [("203.0.113.10", 80), ("a1b2c3-1234567890.eu-west-1.elb.amazonaws.com", 80)]


async def test_a_refused_watch_serves_the_listed_ingress_as_degraded() -> None:
    async with open_fake_api() as api:
        api.put("services", lb_service([LB_IP]))
        api.forbid("services", "watch")
        async with running(api) as namer:
            lookup(namer, "/srv/http/sessions")
            await wait_for(lambda: state(namer) == "stale")
            assert hosts(namer) == [("203.0.113.10", 80)]
            assert name_json(namer)["lastError"].startswith("discovery degraded: the watch was refused (")
            api.put("services", lb_service([{"ip": "203.0.113.22"}]))  # arrives with a re-list
            await wait_for(lambda: hosts(namer) == [("203.0.113.22", 80)])


# -- config ----------------------------------------------------------------------------------------------
def test_from_config_defaults_and_keys() -> None:
    n = from_config({}, environ={})
    assert (n.api.describe(), str(n.bound_prefix), n.label_selector) == (
        "http://localhost:8001",
        "/#/io.l5d.k8s.external",
        None,
    )
    n = from_config(
        {
            "host": "127.0.0.1",
            "port": 8002,
            "labelSelector": "version",
            "prefix": "/ext",
            "resyncIntervalSecs": 60,
        },
        environ={},
    )
    assert (n.api.describe(), str(n.bound_prefix), n.label_selector, n.resync_interval) == (
        "http://127.0.0.1:8002",
        "/#/ext",
        "version",
        60.0,
    )


def test_from_config_in_cluster_errors_name_this_namer(tmp_path: FsPath) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    ca = tmp_path / "ca.crt"
    with pytest.raises(
        InClusterConfigError,
        match="^"
        + re.escape(
            f"io.l5d.k8s.external: service account CA certificate {ca} is missing or empty; mount the service "
            "account (automountServiceAccountToken) or set namers[].host"
        )
        + "$",
    ):
        from_config({"serviceAccountDir": str(tmp_path)}, environ=env)
    with pytest.raises(
        ValueError, match=r"^io\.l5d\.k8s\.external labelSelector 'a=b' is not a Kubernetes label key; "
    ):
        from_config({"labelSelector": "a=b"}, environ={})


def test_registered_implemented_and_experimental() -> None:
    spec = registry.lookup("namer", "io.l5d.k8s.external")
    assert spec is not None and spec.status == "implemented" and spec.experimental
    assert registry.load_factory(spec) is from_config
    assert ("namer", "io.l5d.k8s.external") not in registry.UNSUPPORTED
    cfg = load_config(
        "namers:\n- {kind: io.l5d.k8s.external, experimental: true, labelSelector: version}\n"
        "routers:\n- {protocol: http, servers: [{port: 0}]}\n",
        source="t.yaml",
    )
    assert cfg.namers[0].label_selector == "version" and cfg.namers[0].port == 8001


# linkerd/linkerd linkerd/examples/k8s.yaml as of its last change (kept verbatim)
LINKERD_K8S_EXAMPLE = """\
# Do service discovery lookups against the k8s endpoints API.
namers:
  # This namer resolves to the internal IP of the destination pod.
- kind: io.l5d.k8s
  host: localhost
  port: 8001
  # This namer resolves to the external facing load balancer IP of the service
- kind: io.l5d.k8s.external
  experimental: true
  host: localhost
  port: 8001

routers:
- protocol: http
  dtab: |
    /svc => /#/io.l5d.k8s/foo/http;
  servers:
  - port: 4140
"""


def check(tmp_path: FsPath, text: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "linkerd.yaml"
    cfg.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "hostproxy", "check", str(cfg)], capture_output=True, text=True, timeout=60
    )


def test_check_accepts_linkerds_k8s_example_and_requires_experimental(tmp_path: FsPath) -> None:
    proc = check(tmp_path, LINKERD_K8S_EXAMPLE)
    assert proc.returncode == 0, proc.stderr
    proc = check(tmp_path, LINKERD_K8S_EXAMPLE.replace("  experimental: true\n", ""))
    assert proc.returncode == 1
    assert (
        f"{tmp_path / 'linkerd.yaml'}:8: namers[1].kind: namer 'io.l5d.k8s.external' is experimental; "
        "set experimental: true on it to use it"
    ) in proc.stderr.splitlines()


# -- a real daemon -------------------------------------------------------------------------------------
def daemon_config(api_port: int) -> str:
    return f"""
admin: {{ip: 127.0.0.1, port: 0}}
namers:
- kind: io.l5d.k8s.external
  experimental: true
  host: 127.0.0.1
  port: {api_port}
routers:
- protocol: http
  label: out
  dtab: /svc => /#/io.l5d.k8s.external/default/http | /$/fail;
  bindingTimeoutMs: 2000
  servers: [{{ip: 127.0.0.1, port: 0}}]
"""


async def test_daemon_routes_through_the_load_balancer_address() -> None:
    async with open_fake_api() as api, running_upstream() as app:
        # the "load balancer" is the upstream itself: ingress 127.0.0.1, Service port = its port
        web = service("web", [("http", app.port, 8080)], ns="default", ingress=[{"ip": "127.0.0.1"}])
        api.put("services", web)
        async with running_daemon(daemon_config(api.port)) as d:
            url = f"http://127.0.0.1:{d.port('out')}/hello"
            r = await curl(url, "-H", "Host: web")
            assert r.status == 200, r
            assert len(app.requests) == 1 and app.requests[0].target == "/hello"
            state = (await curl(f"{d.admin}/namer_state/io.l5d.k8s.external.json")).json()
            assert isinstance(state, dict)
            assert state["names"]["default/http/web"]["ingress"] == [{"host": "127.0.0.1", "port": app.port}]
            # an ingress hostname is resolved when the client connects
            api.put(
                "services",
                service("web", [("http", app.port, 8080)], ns="default", ingress=[{"hostname": "localhost"}]),
            )

            async def routed_to_localhost() -> bool:
                st = (await curl(f"{d.admin}/namer_state/io.l5d.k8s.external.json")).json()
                assert isinstance(st, dict)
                return st["names"]["default/http/web"]["ingress"] == [{"host": "localhost", "port": app.port}]

            with trio.fail_after(10):
                while not await routed_to_localhost():
                    await trio.sleep(0.02)
            r = await curl(url, "-H", "Host: web")
            assert r.status == 200, r
            assert len(app.requests) == 2 and app.connections == 2  # a new endpoint, a new connection
            # the load balancer goes away: the name is negative and the dtab's alternate (/$/fail) answers
            api.put("services", service("web", [("http", app.port, 8080)], ns="default", ingress=[]))
            with trio.fail_after(10):
                while (r := await curl(url, "-H", "Host: web")).status == 200:
                    await trio.sleep(0.02)
            seen = len(app.requests)
            r = await curl(url, "-H", "Host: web")
            assert r.status == 502 and len(app.requests) == seen, r
            assert "/$/fail" in (r.l5d_err or ""), r.l5d_err
