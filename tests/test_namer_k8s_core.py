"""io.l5d.k8s pure cores: object parsing and port resolution, and the list/watch state machine."""

from __future__ import annotations

import json
import re

import pytest
from k8s_api.objects import endpoint_slice, endpoints, service

from namers.k8s.namer import valid_key
from namers.k8s.objects import (
    K8sObjectError,
    parse_endpoints,
    parse_service,
    parse_slices,
    resolve,
)
from namers.k8s.watch import Collection, LineBuffer, LineTooLong, ListWatchCore, status_message

SESSIONS = service("sessions", [("http", 80, "http"), ("admin", 9000, 9990)])


def ips(res):
    return [(e.ip, p) for e, p in res.ready]


def not_ready(res):
    return [(e.ip, p) for e, p in res.not_ready]


# -- objects -------------------------------------------------------------------------------------
def test_named_and_numeric_ports_with_ready_and_not_ready():
    eps = endpoints("sessions", ["10.244.1.17", "10.244.2.23"], ["10.244.2.31"])
    svc, groups = parse_service(SESSIONS), parse_endpoints(eps)
    res = resolve(svc, groups, "http")
    assert ips(res) == [("10.244.1.17", 8080), ("10.244.2.23", 8080)]
    assert not_ready(res) == [("10.244.2.31", 8080)]
    assert res.ready[0][0].meta() == {"nodeName": "worker-2"}
    # numeric port 80 -> ServicePort "http" -> EndpointPort "http" 8080; 9000 -> "admin" 9990
    assert ips(resolve(svc, groups, "80")) == [("10.244.1.17", 8080), ("10.244.2.23", 8080)]
    assert ips(resolve(svc, groups, "9000")) == [("10.244.1.17", 9990), ("10.244.2.23", 9990)]
    assert resolve(svc, groups, "8080") is None  # not a Service port
    assert resolve(svc, groups, "grpc") is None


def test_numeric_port_falls_back_to_numeric_target_port_and_to_named_target():
    # Service port name differs from the EndpointPort names (an older controller / hand-made Endpoints)
    svc = parse_service(service("web", [("web", 80, "http"), ("metrics", 9000, 9100)]))
    groups = parse_endpoints(endpoints("web", ["10.244.1.5"], ports={"http": 8080}))
    assert ips(resolve(svc, groups, "80")) == [("10.244.1.5", 8080)]  # Linkerd 1's targetPort-name lookup
    assert ips(resolve(svc, groups, "9000")) == [("10.244.1.5", 9100)]  # numeric targetPort


@pytest.mark.parametrize("subsets", ["absent", None, [], [{}], [{"ports": [{"name": "http", "port": 8080}]}]])
def test_every_zero_endpoints_shape_is_the_same(subsets):
    obj = endpoints("reports") if subsets == "absent" else endpoints("reports", subsets=subsets)
    res = resolve(parse_service(service("reports", [("http", 80, "http")])), parse_endpoints(obj), "http")
    assert res is not None and res.ready == () and res.not_ready == ()


def test_missing_endpoints_object_is_zero_endpoints():
    assert parse_endpoints(None) == []


@pytest.mark.parametrize(
    ("subsets", "message"),
    [
        ("bogus", "Endpoints srv/sessions: subsets is a str, expected a list"),
        (
            [{"addresses": [{"nodeName": "worker-1"}]}],
            "Endpoints srv/sessions: subsets[0].addresses[0].ip is missing",
        ),
        (
            [{"ports": [{"name": "http", "port": "x"}]}],
            "Endpoints srv/sessions: subsets[0].ports[0].port is 'x', expected a port number 1-65535",
        ),
    ],
)
def test_malformed_endpoints_name_the_field(subsets, message):
    with pytest.raises(
        K8sObjectError,
        match="^" + re.escape(message) + "; check it with 'kubectl get -o json'; other names are unaffected$",
    ):
        parse_endpoints(endpoints("sessions", subsets=subsets))


def test_slices_union_dedupe_conditions_and_placeholders():
    a = endpoint_slice(
        "sessions",
        "h7x2k",
        [
            ("10.244.1.17", True, True, False),
            ("10.244.2.31", False, False, False),  # failing readiness
            ("10.244.3.40", False, True, True),  # terminating, still serving: not routed
        ],
    )
    b = endpoint_slice(
        "sessions", "q8m3z", [("10.244.2.23", True, True, False), ("10.244.1.17", True, True, False)]
    )
    placeholder = endpoint_slice("sessions", "zzzzz", None)
    res = resolve(parse_service(SESSIONS), parse_slices([b, placeholder, a]), "http")
    assert ips(res) == [("10.244.1.17", 8080), ("10.244.2.23", 8080)]
    assert not_ready(res) == [("10.244.2.31", 8080), ("10.244.3.40", 8080)]
    assert res.ready[0][0].meta() == {"nodeName": "worker-2", "zone": "zone-b"}
    # nil conditions mean ready
    c = endpoint_slice("sessions", "n1l", [("10.244.0.9", True, True, False)])
    del c["endpoints"][0]["conditions"]
    assert ips(resolve(parse_service(SESSIONS), parse_slices([c]), "http")) == [("10.244.0.9", 8080)]
    # FQDN slices are not used
    fq = endpoint_slice("sessions", "fqdn", [("10.244.0.8", True, True, False)])
    fq["addressType"] = "FQDN"
    assert parse_slices([fq]) == []


def test_udp_ports_do_not_count():
    svc = service("dns", [("dns", 53, 53)])
    svc["spec"]["ports"][0]["protocol"] = "UDP"
    assert resolve(parse_service(svc), [], "dns") is None


def test_valid_key_rejects_what_cannot_be_a_kubernetes_name():
    assert valid_key("srv", "http", "sessions", None)
    assert valid_key("srv", "8080", "sessions", "v1")
    assert not valid_key("srv", "0", "sessions", None)
    assert not valid_key("srv", "70000", "sessions", None)
    assert not valid_key("srv&x=1", "http", "sessions", None)
    assert not valid_key("srv", "http", "a/b", None)
    assert not valid_key("srv", "http", "sessions", "bad/value")
    assert not valid_key("srv", "-http", "sessions", None)


# -- the list/watch core -------------------------------------------------------------------------
COLL = Collection("/api/v1", "endpoints", "srv", "metadata.name=auth")


def lst(rv: str, *items) -> bytes:
    return json.dumps(
        {
            "kind": "EndpointsList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": rv},
            "items": list(items),
        }
    ).encode()


def ev(etype: str, obj) -> bytes:
    return json.dumps({"type": etype, "object": obj}).encode()


def core() -> ListWatchCore:
    return ListWatchCore(COLL, clock=lambda: 1_700_000_000.0)


def test_paths():
    assert COLL.list_path() == "/api/v1/namespaces/srv/endpoints?fieldSelector=metadata.name%3Dauth"
    assert COLL.watch_path("58211407", 300) == (
        "/api/v1/namespaces/srv/endpoints?allowWatchBookmarks=true&fieldSelector=metadata.name%3Dauth"
        "&resourceVersion=58211407&timeoutSeconds=300&watch=true"
    )


def test_list_then_watch_events_from_the_list_rv():
    c = core()
    assert c.next_request(300)[0] == "list"
    auth = endpoints("auth", ["10.244.1.21"])
    assert c.on_list(200, lst("100", auth))
    kind, path = c.next_request(300)
    assert kind == "watch" and "resourceVersion=100" in path
    c.on_stream_start()
    mod = endpoints("auth", ["10.244.1.21", "10.244.2.40"])
    mod["metadata"]["resourceVersion"] = "105"
    assert c.on_line(ev("MODIFIED", mod))
    assert c.objects["auth"] is not None and c.resource_version == "105"
    assert not c.on_line(
        ev(
            "BOOKMARK",
            {
                "kind": "Endpoints",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": "110", "creationTimestamp": None},
            },
        )
    )
    assert c.resource_version == "110" and "auth" in c.objects  # a bookmark is never state
    gone = endpoints("auth", ["10.244.1.21"])
    gone["metadata"]["resourceVersion"] = "111"
    assert c.on_line(ev("DELETED", gone))
    assert c.objects == {}  # the DELETED object is the last state, never applied
    c.on_stream_end(clean=True)
    assert c.next_request(300) == ("watch", COLL.watch_path("111", 300))  # clean end: resume from the RV


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (
            ev(
                "ERROR",
                {
                    "kind": "Status",
                    "status": "Failure",
                    "message": "too old resource version: 1 (2)",
                    "reason": "Expired",
                    "code": 410,
                },
            ),
            "410 in watch",
        ),
        (
            ev(
                "ERROR",
                {"kind": "Status", "status": "Failure", "message": "too old", "reason": "Gone", "code": 410},
            ),
            "410 in watch",
        ),
        (
            ev(
                "ERROR",
                {"kind": "Status", "message": "401: The event in requested index is outdated and cleared"},
            ),
            "watch ERROR (no code): 401: The event in requested index is outdated and cleared",
        ),
        (b"{not json", "unreadable watch event"),
    ],
)
def test_error_events_and_garbage_relist(line, reason):
    c = core()
    c.on_list(200, lst("100"))
    c.on_stream_start()
    assert not c.on_line(line)
    assert c.wants_relist and c.relist_reason == reason
    assert c.next_request()[0] == "list"
    assert not c.on_list(200, lst("200"))  # same (empty) objects: a relist is not a change
    assert c.relists == {reason: 1} and c.next_request()[0] == "watch"


def test_http_410_relists_without_an_outage_and_broken_stream_relists():
    c = core()
    c.on_list(200, lst("100"))
    assert not c.on_watch_status(410, b'{"kind":"Status","message":"too old","code":410}')
    assert c.error is None and c.next_request()[0] == "list"
    c.on_list(200, lst("101"))
    c.on_stream_start()
    c.on_stream_end(clean=False)
    assert c.relist_reason == "reconnect" and c.error is None


def test_failures_keep_objects_and_say_what_to_do():
    c = core()
    auth = endpoints("auth", ["10.244.1.21"])
    c.on_list(200, lst("100", auth))
    assert c.on_transport_error("connection refused; is the API server (or kubectl proxy) running?")
    assert (
        c.error
        == "GET endpoints in srv (metadata.name=auth): connection refused; is the API server (or kubectl proxy) running?"
    )
    assert "auth" in c.objects and c.synced and c.next_request()[0] == "list"
    forbidden = json.dumps(
        {
            "kind": "Status",
            "message": 'endpoints is forbidden: User "x" cannot list resource "endpoints"',
            "code": 403,
        }
    ).encode()
    c.on_list(403, forbidden)
    assert c.error == (
        'GET endpoints in srv (metadata.name=auth): HTTP 403: endpoints is forbidden: User "x" cannot list resource "endpoints"; '
        "grant the service account get, list and watch on this resource (RBAC)"
    )
    assert c.on_list(200, lst("120", auth)) and c.error is None and c.error_since is None


def test_one_malformed_list_item_is_skipped_not_fatal():
    c = core()
    good = endpoints("auth", ["10.244.1.21"])
    assert c.on_list(200, lst("100", {"metadata": {}}, good, "junk"))
    assert list(c.objects) == ["auth"] and c.malformed == 2 and c.error is None
    assert c.on_list(200, b"<html>") and c.error.startswith(
        "GET endpoints in srv (metadata.name=auth): the list is not JSON"
    )


def test_line_buffer_handles_split_and_coalesced_events():
    b = LineBuffer(max_line=64)
    assert b.feed(b'{"a":') == []
    assert b.feed(b'1}\n{"b":2}\n{"c"') == [b'{"a":1}', b'{"b":2}']
    assert b.feed(b":3}\n") == [b'{"c":3}']
    with pytest.raises(LineTooLong, match=r"^watch event longer than 64 bytes$"):
        b.feed(b"x" * 65)


def test_status_message():
    assert status_message(b'{"kind":"Status","message":"Unauthorized","code":401}') == "Unauthorized"
    assert status_message(b"nope") is None
