"""The fake API server speaks the real wire protocol (shapes from shared/spec/k8s/README.md)."""

from __future__ import annotations

import json

import trio
from k8s_api.objects import NS, endpoints, service
from k8s_api.server import open_fake_api

from namers.k8s.client import ApiServer
from namers.k8s.watch import LineBuffer


async def read_events(
    api_server: ApiServer, path: str, n: int
) -> tuple[int, list[tuple[bytes, bytes]], list[dict]]:
    events: list[dict] = []
    async with api_server.watch(path) as resp:
        buf = LineBuffer()
        with trio.fail_after(5):
            while len(events) < n and (data := await resp.next_chunk()) is not None:
                events += [json.loads(line) for line in buf.feed(data)]
        return resp.status, resp.headers, events


async def test_list_shape_and_status_bodies():
    async with open_fake_api(tokens={"good"}) as api:
        api.put("endpoints", endpoints("sessions", ["10.244.1.17"]))
        api.put("endpoints", endpoints("reports", subsets=None))
        unauth = await ApiServer("127.0.0.1", api.port).get("/api/v1/namespaces/srv/endpoints")
        assert unauth.status == 401
        assert json.loads(unauth.body) == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "Unauthorized",
            "reason": "Unauthorized",
            "code": 401,
        }

        class Tok:
            def get(self) -> str:
                return "good"

        srv = ApiServer("127.0.0.1", api.port, token=Tok())  # type: ignore[arg-type]
        r = await srv.get("/api/v1/namespaces/srv/endpoints")
        doc = json.loads(r.body)
        assert (doc["kind"], doc["apiVersion"], doc["metadata"]) == (
            "EndpointsList",
            "v1",
            {"resourceVersion": str(api.rv)},
        )
        assert [i["metadata"]["name"] for i in doc["items"]] == ["reports", "sessions"]
        assert all("kind" not in i and "apiVersion" not in i for i in doc["items"])
        assert doc["items"][0]["subsets"] is None
        r = await srv.get("/api/v1/namespaces/srv/endpoints/auth")
        assert r.status == 404 and json.loads(r.body)["message"] == 'endpoints "auth" not found'
        api.forbid("endpoints", "watch")
        r = await srv.get("/api/v1/namespaces/srv/endpoints?watch=true")
        assert r.status == 403 and json.loads(r.body)["message"] == (
            'endpoints is forbidden: User "system:serviceaccount:srv:hostproxy" cannot watch resource "endpoints" '
            'in API group "" in the namespace "srv"'
        )


async def test_watch_framing_synthetic_added_history_and_expiry():
    async with open_fake_api() as api:
        srv = ApiServer("127.0.0.1", api.port)
        api.put("services", service("sessions", [("http", 80, "http")]))
        rv = api.put("endpoints", endpoints("sessions", ["10.244.1.17"]))
        # no resourceVersion: synthetic ADDED for what exists (legacy /watch/ path too)
        status, headers, events = await read_events(srv, "/api/v1/watch/namespaces/srv/endpoints/sessions", 1)
        assert status == 200
        assert (b"transfer-encoding", b"chunked") in headers and (
            b"content-type",
            b"application/json",
        ) in headers
        assert [
            (e["type"], e["object"]["kind"], e["object"]["metadata"]["resourceVersion"]) for e in events
        ] == [("ADDED", "Endpoints", rv)]
        # from a resourceVersion: only later changes; DELETED carries the last state with a new RV
        api.put("endpoints", endpoints("sessions", ["10.244.1.18"]))
        del_rv = api.delete("endpoints", NS, "sessions")
        _, _, events = await read_events(
            srv, f"/api/v1/namespaces/srv/endpoints?watch=1&resourceVersion={rv}", 2
        )
        assert [e["type"] for e in events] == ["MODIFIED", "DELETED"]
        assert events[1]["object"]["metadata"]["resourceVersion"] == del_rv
        assert events[1]["object"]["subsets"][0]["addresses"][0]["ip"] == "10.244.1.18"
        # a compacted resourceVersion: 200, one ERROR 410 Expired event, clean end
        api.compact()
        _, _, events = await read_events(
            srv, f"/api/v1/namespaces/srv/endpoints?watch=true&resourceVersion={rv}", 5
        )
        assert events == [
            {
                "type": "ERROR",
                "object": {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": f"too old resource version: {rv} ({api.compacted - 1})",
                    "reason": "Expired",
                    "code": 410,
                },
            }
        ]


async def test_label_selector_match_and_unmatch_become_added_and_deleted():
    async with open_fake_api() as api:
        srv = ApiServer("127.0.0.1", api.port)
        rv = api.put(
            "services",
            service("sessions", [("http", 80, "http")], labels={"app": "sessions", "version": "v1"}),
        )
        api.put(
            "services",
            service("sessions", [("http", 80, "http")], labels={"app": "sessions", "version": "v2"}),
        )
        api.put(
            "services",
            service("sessions", [("http", 80, "http")], labels={"app": "sessions", "version": "v1"}),
        )
        path = f"/api/v1/namespaces/srv/services?labelSelector=version%3Dv1&watch=true&resourceVersion={rv}"
        _, _, events = await read_events(srv, path, 2)
        assert [e["type"] for e in events] == ["DELETED", "ADDED"]
