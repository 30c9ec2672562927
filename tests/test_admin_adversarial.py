"""Adversarial review of the admin server and ``hostproxy wtf``: what an on-call engineer would call wrong.

Real components on loopback (admin server, daemon, curl) unless the unit is pure.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from test_admin_server import FakeAdminContext

from hostproxy.admin import AdminHandler, AdminServer
from hostproxy.diagnose import leaf_ids
from hostproxy.http import Body, ConnInfo, Headers, Request, ServerParams
from tests.daemonutil import curl, running_daemon


def conn(peer: str = "127.0.0.1") -> ConnInfo:
    return ConnInfo(peer=(peer, 40000), local=("127.0.0.1", 9990), params=ServerParams(), connection_id=1)


async def call(
    handler: AdminHandler,
    method: str,
    target: str,
    headers: tuple[tuple[bytes, bytes], ...] = ((b"host", b"127.0.0.1:9990"),),
    peer: str = "127.0.0.1",
) -> tuple[int, bytes]:
    response = await handler(
        Request(method, target, Headers(list(headers)), Body.from_bytes(b"")), conn(peer)
    )
    return response.status, await response.body.read_all()


@contextlib.asynccontextmanager
async def admin_on_loopback(ctx: Any) -> AsyncIterator[str]:
    server = AdminServer(ctx, port=0)
    async with trio.open_nursery() as nursery:
        ip, port = await nursery.start(server.serve)
        try:
            yield f"http://{ip}:{port}"
        finally:
            nursery.cancel_scope.cancel()


# -- the delegator ---------------------------------------------------------------------------------


async def test_exponential_delegation_is_refused_with_400_not_computed_on_the_event_loop() -> None:
    # Each line doubles the explanation (alt branches are all explained): 2**17 nodes from 300 bytes
    # of query string, which any peer may send. It must be refused, not built while routing waits.
    dtab = ";".join(f"/p{i}=>/p{i + 1}|/p{i + 1}" for i in range(17))
    handler = AdminHandler(FakeAdminContext())
    status, body = await call(handler, "GET", f"/delegator.json?path=/p0&dtab={dtab}")
    assert status == 400
    text = body.decode()
    assert text.startswith("Delegation failed: explaining /p0 needs more than 10000 nodes"), text


async def test_small_alt_trees_are_still_explained() -> None:
    dtab = ";".join(f"/p{i}=>/p{i + 1}|/p{i + 1}" for i in range(8))  # 256 leaves: fine
    handler = AdminHandler(FakeAdminContext())
    status, body = await call(handler, "GET", f"/delegator.json?path=/p0&dtab={dtab}")
    assert status == 200
    assert json.loads(body)["type"] == "alt"


def leaves(tree: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") in ("leaf", "transformation"):
                out.append(node)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(tree)
    return out


async def test_delegator_shows_the_routers_interpreter_transformers_as_the_router_binds() -> None:
    upstream_port = 1  # never contacted: the port transformer replaces it
    yaml_text = f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: http
  label: out
  dtab: /svc/web => /$/inet/127.0.0.1/{upstream_port};
  interpreter:
    kind: default
    transformers:
    - kind: io.l5d.port
      port: 4141
  servers:
  - ip: 127.0.0.1
    port: 0
"""
    async with running_daemon(yaml_text) as d:
        await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web", timeout=10)
        clients = (await curl(f"{d.admin}/client_state.json")).json()
        assert isinstance(clients, dict)
        assert list(clients) == ["/%/io.l5d.port/4141/$/inet/127.0.0.1/1"]
        r = await curl(
            f"{d.admin}/delegator.json?namespace=out&path=/svc/web&dtab=/svc/web=>/$/inet/127.0.0.1/1"
        )
        assert r.status == 200, r.body
        tree = r.json()
        found = leaves(tree)
        assert [n["type"] for n in found] == ["transformation", "leaf"]
        transformation, leaf = found
        assert transformation["name"] == "PortTransformer"
        assert transformation["bound"]["id"] == "/$/inet/127.0.0.1/1"
        # the leaf is what the router binds: the client id it uses, the port it connects to
        assert leaf["bound"]["id"] == "/%/io.l5d.port/4141/$/inet/127.0.0.1/1"
        assert [a["port"] for a in leaf["bound"]["addr"]["addrs"]] == [4141]
        # and wtf's bindings (the leaves) name the client the router counts failures under
        assert leaf_ids(tree) == ["/%/io.l5d.port/4141/$/inet/127.0.0.1/1"]


# -- control endpoints -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["attacker.example:9990", "rebind.attacker.example"],
)
async def test_browser_control_request_for_a_foreign_host_name_is_refused_dns_rebinding(host: str) -> None:
    # DNS rebinding: a page at http://attacker.example:9990 re-resolves its name to 127.0.0.1 and
    # POSTs to its own origin. The peer is loopback and Origin matches Host; only the Host gives it away.
    ctx = FakeAdminContext()
    handler = AdminHandler(ctx)
    headers = ((b"host", host.encode()), (b"origin", f"http://{host}".encode()))
    status, body = await call(handler, "POST", "/admin/shutdown", headers=headers)
    assert status == 403
    assert "DNS rebinding" in body.decode()
    assert ctx.shutdowns == 0


@pytest.mark.parametrize("host", ["127.0.0.1:9990", "localhost:9990", "[::1]:9990", "localhost"])
async def test_same_origin_browser_control_request_on_loopback_names_is_allowed(host: str) -> None:
    ctx = FakeAdminContext()
    handler = AdminHandler(ctx)
    headers = ((b"host", host.encode()), (b"origin", f"http://{host}".encode()))
    status, _ = await call(handler, "POST", "/admin/shutdown", headers=headers)
    assert status == 202
    assert ctx.shutdowns == 1


async def test_non_browser_control_request_with_a_host_name_is_allowed() -> None:
    # curl -X POST $(hostname):9990/admin/shutdown on a host whose name maps to 127.0.1.1
    ctx = FakeAdminContext()
    status, _ = await call(
        AdminHandler(ctx), "POST", "/admin/shutdown", headers=((b"host", b"myhost:9990"),), peer="127.0.1.1"
    )
    assert status == 202
