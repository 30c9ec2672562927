"""io.l5d.k8s against the fake API server (tests/k8s_api): every failure the 2017 outages taught.

Each test starts a FakeKubeApi on 127.0.0.1 port 0 and a K8sNamer with short timers; waits are
bounded polls of observable state, never timing assertions.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from k8s_api.certs import issue, make_ca, server_context
from k8s_api.objects import NS, endpoint_slice, endpoints, service
from k8s_api.server import FakeKubeApi, open_fake_api

from namers._dtab import NEG, PENDING, Leaf, Path
from namers.k8s import ApiServer, InClusterConfigError, K8sNamer, from_config

KEY = (b"srv", b"http", b"sessions")
SESSIONS_SVC = service("sessions", [("http", 80, "http"), ("admin", 9000, 9990)])


class Clock:
    def __init__(self) -> None:
        self.t = 1_764_064_694.0

    def __call__(self) -> float:
        return self.t


async def wait_for(pred: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``pred`` until truthy; fail after ``timeout`` seconds (a bound, not a measurement)."""
    with trio.fail_after(timeout):
        while True:
            v = pred()
            if v:
                return v
            await trio.sleep(0.01)


@asynccontextmanager
async def running(api_or_server: FakeKubeApi | ApiServer, **kwargs: Any) -> AsyncIterator[K8sNamer]:
    server = (
        api_or_server if isinstance(api_or_server, ApiServer) else ApiServer("127.0.0.1", api_or_server.port)
    )
    opts: dict[str, Any] = {
        "resync_interval": 30.0,
        "request_timeout": 5.0,
        "backoff_base": 0.02,
        "backoff_max": 0.1,
        "rng": lambda: 0.5,
    }
    opts.update(kwargs)
    namer = K8sNamer(server, **opts)
    async with trio.open_nursery() as nursery:
        await nursery.start(namer.run)
        yield namer
        nursery.cancel_scope.cancel()


def state(namer: K8sNamer, key: tuple[bytes, ...] = KEY) -> str | None:
    st = namer.table.get(key)
    return st.state if st is not None else None


def hosts(namer: K8sNamer, key: tuple[bytes, ...] = KEY) -> list[tuple[str, int]] | None:
    st = namer.table.get(key)
    if st is None or st.addr is None:
        return None
    return [(a.host, a.port) for a in st.addr]


def name_json(namer: K8sNamer, key: str = "srv/http/sessions") -> dict[str, Any]:
    return namer.state_json()["names"][key]


def lookup(namer: K8sNamer, path: str) -> Any:
    return namer.lookup(Path.read(path))


async def bound(namer: K8sNamer, path: str, key: tuple[bytes, ...] = KEY) -> list[tuple[str, int]]:
    lookup(namer, path)
    await wait_for(lambda: state(namer, key) == "bound")
    return hosts(namer, key) or []


# -- sanity ------------------------------------------------------------------------------------------
async def test_binds_ready_endpoints_and_follows_the_watch():
    async with open_fake_api() as api:
        api.put("services", SESSIONS_SVC)
        api.put("endpoints", endpoints("sessions", ["10.244.1.17", "10.244.2.23"], ["10.244.2.31"]))
        async with running(api) as namer:
            assert lookup(namer, "/srv/http/sessions/x") is PENDING
            assert await bound(namer, "/srv/http/sessions") == [("10.244.1.17", 8080), ("10.244.2.23", 8080)]
            tree = lookup(namer, "/SRV/HTTP/Sessions/rest")  # the key labels are lowercased
            assert isinstance(tree, Leaf)
            assert tree.value.id == Path.read("/#/io.l5d.k8s/srv/http/sessions")
            assert tree.value.residual == Path.read("/rest")
            assert tree.value.addr.addresses[0].meta == {"nodeName": "worker-2"}
            entry = name_json(namer)
            assert entry["condition"] == "endpoints"
            assert [a["ip"] for a in entry["notReady"]] == ["10.244.2.31"]
            # numeric Service port 80 -> targetPort "http" -> 8080
            assert await bound(namer, "/srv/80/sessions", (b"srv", b"80", b"sessions")) == [
                ("10.244.1.17", 8080),
                ("10.244.2.23", 8080),
            ]
            # a change arrives through the watch
            api.put("endpoints", endpoints("sessions", ["10.244.1.17", "10.244.3.11"]))
            await wait_for(lambda: hosts(namer) == [("10.244.1.17", 8080), ("10.244.3.11", 8080)])
            body = namer.state_json()
            assert set(body) >= {"kind", "prefix", "names", "endpoints", "portMappings"}
            ep = body["endpoints"]["srv/sessions"]
            assert ep["state"]["running"] is True
            assert ep["state"]["value"] == {
                "nsName": "srv",
                "serviceName": "sessions",
                "objects": ["sessions"],
            }
            assert ep["watch"]["streaming"] is True and ep["watch"]["lastEventAt"] is not None
            assert ep["watch"]["request"].startswith(
                "GET /api/v1/namespaces/srv/endpoints?allowWatchBookmarks=true"
            )
            assert body["portMappings"]["srv/sessions"]["state"]["value"] == {"80": "http", "9000": 9990}
            assert body["names"]["srv/http/sessions"]["watch"]["streaming"] is True
            assert api.count("/endpoints", watch=False) == 1  # one list, then only the watch


async def test_missing_service_zero_endpoints_and_unavailable_are_three_states():
    async with open_fake_api() as api, running(api) as namer:
        lookup(namer, "/srv/http/sessions")
        await wait_for(lambda: state(namer) == "neg")
        assert lookup(namer, "/srv/http/sessions") is NEG
        assert name_json(namer)["condition"] == "service-missing"
        api.put("services", SESSIONS_SVC)  # exists, no Endpoints object yet
        await wait_for(lambda: state(namer) == "bound")
        assert hosts(namer) == [] and name_json(namer)["condition"] == "no-endpoints"
        api.put("endpoints", endpoints("sessions", ["10.244.1.17"]))
        await wait_for(lambda: hosts(namer) == [("10.244.1.17", 8080)])
        stats = namer.statistics()
        assert stats["conditions"]["endpoints"] == 1
        await api.go_down()
        await wait_for(lambda: state(namer) == "stale")
        assert name_json(namer)["condition"] == "unavailable"
        assert namer.statistics()["conditions"]["unavailable"] == 1


@pytest.mark.parametrize("shape", ["absent", "null", "empty"])
async def test_null_missing_and_empty_subsets_are_zero_endpoints(shape):
    subsets = {"null": None, "empty": []}
    async with open_fake_api() as api:
        api.put("services", SESSIONS_SVC)
        api.put("endpoints", endpoints("sessions", ["10.244.1.17"]))
        async with running(api) as namer:
            assert await bound(namer, "/srv/http/sessions") == [("10.244.1.17", 8080)]
            zero = (
                endpoints("sessions") if shape == "absent" else endpoints("sessions", subsets=subsets[shape])
            )
            api.put("endpoints", zero)  # scaled to zero, through the watch
            await wait_for(lambda: hosts(namer) == [])
            assert state(namer) == "bound" and name_json(namer)["condition"] == "no-endpoints"


async def test_deleted_service_becomes_negative_and_recreated_service_binds_again():
    async with open_fake_api() as api:
        api.put("services", SESSIONS_SVC)
        api.put("endpoints", endpoints("sessions", ["10.244.1.17"]))
        async with running(api) as namer:
            await bound(namer, "/srv/http/sessions")
            api.delete("endpoints", NS, "sessions")
            api.delete("services", NS, "sessions")
            await wait_for(lambda: state(namer) == "neg")
            assert hosts(namer) is None  # never the DELETED object's addresses
            api.put("services", SESSIONS_SVC)
            api.put("endpoints", endpoints("sessions", ["10.244.2.99"]))
            await wait_for(lambda: hosts(namer) == [("10.244.2.99", 8080)])


async def test_unknown_port_is_negative():
    async with open_fake_api() as api:
        api.put("services", SESSIONS_SVC)
        api.put("endpoints", endpoints("sessions", ["10.244.1.17"]))
        async with running(api) as namer:
            key = (b"srv", b"grpc", b"sessions")
            lookup(namer, "/srv/grpc/sessions")
            await wait_for(lambda: state(namer, key) == "neg")
            assert name_json(namer, "srv/grpc/sessions")["condition"] == "port-missing"
            # labels that are not Kubernetes names are NEG, never a request
            assert namer.lookup(Path((b"srv", b"http&x=1", b"sessions"))) is NEG
            assert namer.lookup(Path((b"srv", b"http", b"sessions?watch"))) is NEG
            assert (b"srv", b"http&x=1", b"sessions") not in namer.table


# -- re-list on every kind of 410, ERROR, reconnect and the periodic timer ----------------------------
async def test_error_event_inside_a_200_stream_relists():
    async with open_fake_api() as api:
        api.put("services", SESSIONS_SVC)
        api.put("endpoints", endpoints("sessions", ["10.244.1.17"]))
        async with running(api) as namer:
            await bound(namer, "/srv/http/sessions")
            await wait_for(lambda: api.open_watches == 2)
            api.stall()  # this change is missed by the open watch...
            api.put("endpoints", endpoints("sessions", ["10.244.1.17", "10.244.2.23"]))
            api.resume()
            api.error_to_watches(410, "Expired")  # ...and the ERROR event makes the namer re-list
            await wait_for(lambda: hosts(namer) == [("10.244.1.17", 8080), ("10.244.2.23", 8080)])
            # both watches of the target re-list (the Service's may come after the endpoints' change)
            await wait_for(lambda: namer.statistics()["relists"].get("410 in watch") == 2)
            assert state(namer) == "bound"


async def test_error_event_without_code_relists():
    async with open_fake_api() as api:
        api.put("services", SESSIONS_SVC)
        api.put("endpoints", endpoints("sessions", ["10.244.1.17"]))
        async with running(api) as namer:
            await bound(namer, "/srv/http/sessions")
            await wait_for(lambda: api.open_watches == 2)
            lists = api.count("/endpoints", watch=False)
            api.error_to_watches(None, "", "401: The event in requested index is outdated and cleared")
            await wait_for(lambda: api.count("/endpoints", watch=False) == lists + 1)
            # Both watches re-list; the Service's may first wait a backoff (its watch ended at once).
            await wait_for(lambda: sum(namer.statistics()["relists"].values()) >= 2)
            reasons = namer.statistics()["relists"]
            assert reasons == {
                "watch ERROR (no code): 401: The event in requested index is outdated and cleared": 2
            }


@pytest.mark.parametrize(("legacy", "reason"), [(False, "410 in watch"), (True, "410 Gone")])
async def test_rewatch_from_a_compacted_resource_version_relists(legacy, reason):
    async with open_fake_api(legacy_410=legacy) as api:
        api.put("services", SESSIONS_SVC)
        api.put("endpoints", endpoints("sessions", ["10.244.1.17"]))
        async with running(api) as namer:
            await bound(namer, "/srv/http/sessions")
            await wait_for(lambda: api.open_watches == 2)
            api.stall()
            api.put("endpoints", endpoints("sessions", ["10.244.3.11"]))
            api.compact()  # the history behind the namer's resourceVersion is gone
            api.resume()
            api.end_watches()  # a clean end: the namer re-watches from its resourceVersion and gets 410
            await wait_for(lambda: hosts(namer) == [("10.244.3.11", 8080)])
            # both list/watches re-list (the Service's may wait a backoff: its watch ended at once)
            await wait_for(lambda: namer.statistics()["relists"].get(reason) == 2)
            assert state(namer) == "bound"


async def test_clean_end_of_stream_resumes_from_the_resource_version_without_a_list():
    async with open_fake_api() as api:
        api.put("services", SESSIONS_SVC)
        api.put("endpoints", endpoints("sessions", ["10.244.1.17"]))
        async with running(api) as namer:
            await bound(namer, "/srv/http/sessions")
            await wait_for(lambda: api.open_watches == 2)
            api.end_watches()
            api.put("endpoints", endpoints("sessions", ["10.244.1.18"]))  # replayed from history
            await wait_for(lambda: hosts(namer) == [("10.244.1.18", 8080)])
            await wait_for(lambda: api.count("/endpoints", watch=True) == 2)
            assert api.count("/endpoints", watch=False) == 1


async def test_dropped_connection_relists_on_reconnect():
    async with open_fake_api() as api:
        api.put("services", SESSIONS_SVC)
        api.put("endpoints", endpoints("sessions", ["10.244.1.17"]))
        async with running(api) as namer:
            await bound(namer, "/srv/http/sessions")
            await wait_for(lambda: api.open_watches == 2)
            api.drop_connections()
            await wait_for(lambda: api.count("/endpoints", watch=False) == 2)
            # The server counts a list when it is asked for; the namer counts its relist once the list's
            # answer is applied (both watches': services and endpoints), which may come later.
            await wait_for(lambda: namer.statistics()["relists"].get("reconnect") == 2)
            assert state(namer) == "bound"


async def test_silently_stalled_watch_is_caught_by_the_periodic_relist():
    async with open_fake_api() as api:
        api.put("services", SESSIONS_SVC)
        api.put("endpoints", endpoints("sessions", ["10.244.1.17"]))
        async with running(api, resync_interval=0.3) as namer:
            await bound(namer, "/srv/http/sessions")
            await wait_for(lambda: api.open_watches == 2)
            api.stall()  # the watch stays open and says nothing (Monzo, 2017)
            api.put("endpoints", endpoints("sessions", ["10.244.9.9"]))
            await wait_for(lambda: hosts(namer) == [("10.244.9.9", 8080)])
            assert namer.statistics()["relists"]["periodic"] >= 1
            assert state(namer) == "bound"


# -- discovery unavailable -------------------------------------------------------------------------
async def test_api_down_keeps_last_good_endpoints_marked_stale_with_age():
    clock = Clock()
    async with open_fake_api() as api:
        api.put("services", SESSIONS_SVC)
        api.put("endpoints", endpoints("sessions", ["10.244.1.17"]))
        async with running(api, clock=clock) as namer:
            await bound(namer, "/srv/http/sessions")
            await api.go_down()
            # Stale at the first failure; the error to read is a retry's against the closed port. (A
            # retry that reached the listener as it closed is reset rather than refused.)
            await wait_for(
                lambda: (
                    state(namer) == "stale" and "connection refused" in (name_json(namer)["lastError"] or "")
                )
            )
            assert hosts(namer) == [("10.244.1.17", 8080)]  # still routed
            clock.t += 42.0
            entry = name_json(namer)
            assert entry["staleAgeSecs"] == 42.0
            assert re.fullmatch(
                r"discovery unavailable: GET (services|endpoints) in srv \(metadata\.name=sessions\): "
                r"http://127\.0\.0\.1:\d+ GET /api/v1/namespaces/srv/(services|endpoints): connection refused; "
                r"is the API server \(or kubectl proxy\) running\?",
                entry["lastError"],
            ), entry["lastError"]
            assert entry["state"] == "stale" and entry["condition"] == "unavailable"
            assert entry["lastUpdate"] == "2025-11-25 09:58:14 +0000"  # from the injected clock
            assert entry["watch"]["lastError"] is not None and entry["watch"]["streaming"] is False
            assert entry["addrs"] == [
                {"host": "10.244.1.17", "port": 8080, "weight": 1.0, "meta": {"nodeName": "worker-2"}}
            ]
            tree = lookup(namer, "/srv/http/sessions")
            assert [a.host for a in tree.value.addr.addresses] == ["10.244.1.17"]
            api.put("endpoints", endpoints("sessions", ["10.244.2.23"]))
            await api.come_up()
            await wait_for(lambda: state(namer) == "bound" and hosts(namer) == [("10.244.2.23", 8080)])
            assert name_json(namer)["staleAgeSecs"] is None


async def test_api_down_at_startup_fails_the_name_and_recovers():
    async with open_fake_api() as api:
        port = api.port
        await api.go_down()
        async with running(ApiServer("127.0.0.1", port)) as namer:
            lookup(namer, "/srv/http/sessions")
            await wait_for(lambda: state(namer) == "failed")
            assert "connection refused" in namer.table.get(KEY).last_error
            api.put("services", SESSIONS_SVC)
            api.put("endpoints", endpoints("sessions", ["10.244.1.17"]))
            await api.come_up()
            await wait_for(lambda: state(namer) == "bound")


async def test_forbidden_is_reported_with_the_fix():
    async with open_fake_api() as api:
        api.put("services", SESSIONS_SVC)
        api.forbid("endpoints", "list")
        async with running(api) as namer:
            lookup(namer, "/srv/http/sessions")
            await wait_for(lambda: state(namer) == "failed")
            assert namer.table.get(KEY).last_error == (
                "discovery unavailable: GET endpoints in srv (metadata.name=sessions): HTTP 403: endpoints is forbidden: "
                'User "system:serviceaccount:srv:hostproxy" cannot list resource "endpoints" in API group "" in the '
                'namespace "srv"; grant the service account get, list and watch on this resource (RBAC)'
            )


async def test_wedged_api_server_is_caught_by_request_timeout_and_resync():
    async with open_fake_api() as api:
        api.put("services", SESSIONS_SVC)
        api.put("endpoints", endpoints("sessions", ["10.244.1.17"]))
        async with running(api, resync_interval=0.3, request_timeout=0.2) as namer:
            await bound(namer, "/srv/http/sessions")
            await wait_for(lambda: api.open_watches == 2)
            api.stall()
            api.hang = True  # open watches say nothing; new requests are never answered
            await wait_for(lambda: state(namer) == "stale")
            assert hosts(namer) == [("10.244.1.17", 8080)]
            assert namer.table.get(KEY).last_error.endswith("no answer within 0.2s")
            api.hang = False
            api.resume()
            await wait_for(lambda: state(namer) == "bound")


async def test_evicted_names_stop_their_watches():
    async with open_fake_api() as api:
        for svc in ("sessions", "auth"):
            api.put("services", service(svc, [("http", 80, "http")]))
            api.put("endpoints", endpoints(svc, ["10.244.1.17"]))
        async with running(api, max_names=1) as namer:
            await bound(namer, "/srv/http/sessions")
            await wait_for(lambda: api.open_watches == 2)
            await bound(namer, "/srv/http/auth", (b"srv", b"http", b"auth"))
            assert KEY not in namer.table
            await wait_for(
                lambda: list(namer.state_json()["endpoints"]) == ["srv/auth"] and api.open_watches == 2
            )
            assert namer.statistics()["targets"] == 1


# -- one bad object, one bad name -------------------------------------------------------------------
async def test_malformed_object_affects_only_its_own_name():
    async with open_fake_api() as api:
        for svc, ip in (("sessions", "10.244.1.17"), ("auth", "10.244.1.21")):
            api.put("services", service(svc, [("http", 80, "http")]))
            api.put("endpoints", endpoints(svc, [ip]))
        bad = endpoints("reports", subsets={"addresses": "nope"})
        api.put("services", service("reports", [("http", 80, "http")]))
        api.put("endpoints", bad)
        async with running(api) as namer:
            auth, reports = (b"srv", b"http", b"auth"), (b"srv", b"http", b"reports")
            await bound(namer, "/srv/http/sessions")
            await bound(namer, "/srv/http/auth", auth)
            lookup(namer, "/srv/http/reports")
            await wait_for(lambda: state(namer, reports) == "failed")
            assert namer.table.get(reports).last_error == (
                "Endpoints srv/reports: subsets is a dict, expected a list; check it with 'kubectl get -o json'; "
                "other names are unaffected"
            )
            # a good name turned malformed keeps its last good addresses
            broken = endpoints("auth", subsets=[{"addresses": [{"nodeName": "worker-1"}]}])
            api.put("endpoints", broken)
            await wait_for(lambda: state(namer, auth) == "stale")
            assert hosts(namer, auth) == [("10.244.1.21", 8080)]
            assert name_json(namer, "srv/http/auth")["condition"] == "malformed"
            assert state(namer) == "bound" and hosts(namer) == [("10.244.1.17", 8080)]


# -- EndpointSlices -------------------------------------------------------------------------------------
async def test_endpoint_slices_union_and_updates():
    async with open_fake_api() as api:
        api.put("services", SESSIONS_SVC)
        api.put(
            "endpointslices",
            endpoint_slice(
                "sessions", "h7x2k", [("10.244.1.17", True, True, False), ("10.244.3.40", False, True, True)]
            ),
        )
        api.put("endpointslices", endpoint_slice("sessions", "q8m3z", [("10.244.2.23", True, True, False)]))
        api.put("endpointslices", endpoint_slice("other", "aaaaa", [("10.244.0.1", True, True, False)]))
        async with running(api, use_endpoint_slices=True) as namer:
            assert await bound(namer, "/srv/http/sessions") == [("10.244.1.17", 8080), ("10.244.2.23", 8080)]
            assert [a["ip"] for a in name_json(namer)["notReady"]] == ["10.244.3.40"]
            assert namer.state_json()["resource"] == "endpointslices"
            api.delete("endpointslices", NS, "sessions-q8m3z")  # one slice gone, the Service stays
            await wait_for(lambda: hosts(namer) == [("10.244.1.17", 8080)])
            api.put("endpointslices", endpoint_slice("sessions", "h7x2k", None))  # placeholder
            await wait_for(lambda: hosts(namer) == [])
            assert state(namer) == "bound"
            assert api.count("labelSelector=kubernetes.io%2Fservice-name%3Dsessions", watch=False) == 1


# -- labelSelector ---------------------------------------------------------------------------------------
async def test_label_selector_adds_a_path_segment():
    async with open_fake_api() as api:
        api.put(
            "services",
            service("sessions", [("http", 80, "http")], labels={"app": "sessions", "version": "v1"}),
        )
        api.put(
            "endpoints", endpoints("sessions", ["10.244.1.17"], labels={"app": "sessions", "version": "v1"})
        )
        async with running(api, label_selector="version") as namer:
            assert lookup(namer, "/srv/http/sessions") is NEG  # no label value segment
            v1 = (b"srv", b"http", b"sessions", b"v1")
            assert await bound(namer, "/srv/http/sessions/v1", v1) == [("10.244.1.17", 8080)]
            v2 = (b"srv", b"http", b"sessions", b"v2")
            lookup(namer, "/srv/http/sessions/v2")
            await wait_for(lambda: state(namer, v2) == "neg")
            assert "srv/sessions:version=v1" in namer.state_json()["endpoints"]


# -- in-cluster: TLS, the service account token and its rotation -------------------------------------
def write(path: str, text: str | bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)
    os.replace(tmp, path)


@pytest.fixture
def pki(tmp_path):
    ca = make_ca()
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    write(str(sa / "ca.crt"), ca.cert)
    write(str(sa / "token"), "token-one\n")
    write(str(sa / "namespace"), "srv")
    return ca, sa, server_context(issue(ca), str(tmp_path))


async def test_in_cluster_tls_with_rotating_token(pki):
    ca, sa, ctx = pki
    async with open_fake_api(ssl_context=ctx, tokens={"token-one"}) as api:
        api.put("services", SESSIONS_SVC)
        api.put("endpoints", endpoints("sessions", ["10.244.1.17"]))
        env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api.port)}
        namer = from_config({"serviceAccountDir": str(sa)}, environ=env)
        assert namer.api.describe() == f"https://127.0.0.1:{api.port}"
        namer.backoff_base, namer.backoff_max = 0.02, 0.1
        async with trio.open_nursery() as nursery:
            await nursery.start(namer.run)
            assert await bound(namer, "/srv/http/sessions") == [("10.244.1.17", 8080)]
            await wait_for(lambda: api.open_watches == 2)
            assert api.auth_failures == 0
            # the kubelet rotates the token; the server stops accepting the old one
            write(str(sa / "token"), "token-two\n")
            api.tokens = {"token-two"}
            api.drop_connections()
            await wait_for(
                lambda: api.count("/services", watch=True) == 2 and api.count("/endpoints", watch=True) == 2
            )
            await wait_for(lambda: api.open_watches == 2)
            assert (api.rejected, state(namer)) == ([], "bound")
            # a token the server rejects: 401, the name goes stale, and a fixed file recovers it
            api.tokens = {"token-three"}
            api.drop_connections()
            await wait_for(lambda: state(namer) == "stale")
            assert (
                "HTTP 401: Unauthorized; the service account token was rejected"
                in namer.table.get(KEY).last_error
            )
            write(str(sa / "token"), "token-three")
            await wait_for(lambda: state(namer) == "bound")
            nursery.cancel_scope.cancel()


async def test_in_cluster_tls_rejects_an_untrusted_server(pki, tmp_path):
    _, sa, _ = pki
    other = server_context(issue(make_ca("someone-else")), str(tmp_path))
    async with open_fake_api(ssl_context=other) as api:
        env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api.port)}
        namer = from_config({"serviceAccountDir": str(sa)}, environ=env)
        namer.backoff_base, namer.backoff_max = 0.02, 0.1
        async with trio.open_nursery() as nursery:
            await nursery.start(namer.run)
            lookup(namer, "/srv/http/sessions")
            await wait_for(lambda: state(namer) == "failed")
            assert "TLS certificate not trusted" in namer.table.get(KEY).last_error
            assert "check the service account ca.crt" in namer.table.get(KEY).last_error
            nursery.cancel_scope.cancel()


# -- config ---------------------------------------------------------------------------------------------
def test_from_config_plain_and_defaults():
    n = from_config(
        {"host": "127.0.0.1", "port": 8002, "labelSelector": "version", "prefix": "/k8s"}, environ={}
    )
    assert (n.api.describe(), n.label_selector, str(n.bound_prefix)) == (
        "http://127.0.0.1:8002",
        "version",
        "/#/k8s",
    )
    assert from_config({}, environ={}).api.describe() == "http://localhost:8001"
    # an explicit host wins over the in-cluster environment
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert (
        from_config({"host": "localhost", "port": 8001}, environ=env).api.describe()
        == "http://localhost:8001"
    )
    assert from_config({"useEndpointSlices": True, "resyncIntervalSecs": 60}, environ={}).use_endpoint_slices


def test_from_config_in_cluster_errors_say_what_is_missing(tmp_path):
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    ca = tmp_path / "ca.crt"
    with pytest.raises(
        InClusterConfigError,
        match="^"
        + re.escape(
            f"io.l5d.k8s: service account CA certificate {ca} is missing or empty; mount the service account "
            "(automountServiceAccountToken) or set namers[].host"
        )
        + "$",
    ):
        from_config({"serviceAccountDir": str(tmp_path)}, environ=env)
    with pytest.raises(
        InClusterConfigError,
        match=r"^io\.l5d\.k8s: KUBERNETES_SERVICE_PORT='https' is not a port number 1-65535$",
    ):
        from_config({"serviceAccountDir": str(tmp_path)}, environ={**env, "KUBERNETES_SERVICE_PORT": "https"})
    with pytest.raises(
        ValueError, match=r"^io\.l5d\.k8s labelSelector 'a=b' is not a Kubernetes label key; "
    ):
        from_config({"labelSelector": "a=b"}, environ={})


def test_registered_kind_points_here():
    from hostproxy.config import registry

    with open(registry.__file__) as f:
        text = f.read()
    assert '"namers.k8s:from_config"' in text
    from namers.k8s import from_config as f

    assert f is from_config
