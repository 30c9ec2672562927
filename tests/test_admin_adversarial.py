"""Adversarial review of the admin server and ``hostproxy wtf``: what an on-call engineer would call wrong.

Each test names a defect found in review: a delegation explanation that is exponential in the dtab
and ran on the event loop, a delegator that ignored the router's interpreter transformers (so that
it, and ``wtf``'s blame, disagreed with how the router routes), control endpoints reachable through
DNS rebinding, and ``wtf`` reporting "healthy" for a router that does not exist, giving up entirely
when one optional document fails, and blaming the wrong client when the failing service was past the
delegation cap, and a metrics flag that is not a boolean (``?tree=maybe``) quietly giving the flat form.
Real components on loopback (admin server, daemon, curl) unless the unit is pure.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from test_admin_server import FakeAdminContext

from dtab import parse_dtab
from hostproxy import cli_wtf
from hostproxy.admin import AdminHandler, AdminServer
from hostproxy.causes import Cause
from hostproxy.diagnose import Snapshot, diagnose, leaf_ids
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


# -- query parameters --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("tree=maybe", "Invalid tree='maybe': use tree=1 (or true, yes, on) or tree=0 (or false, no, off)"),
        (
            "pretty=2&tree=1",
            "Invalid pretty='2': use pretty=1 (or true, yes, on) or pretty=0 (or false, no, off)",
        ),
    ],
)
async def test_metrics_json_flag_that_is_not_a_boolean_is_a_precise_400(query: str, message: str) -> None:
    status, body = await call(AdminHandler(FakeAdminContext()), "GET", f"/admin/metrics.json?{query}")
    assert (status, body.decode()) == (400, message + "\n")


@pytest.mark.parametrize("query", ["tree=TRUE", "tree=on", "tree=1&pretty=off", "tree=yes&pretty="])
async def test_metrics_json_boolean_flags_in_any_spelling_give_the_tree(query: str) -> None:
    status, body = await call(AdminHandler(FakeAdminContext()), "GET", f"/admin/metrics.json?{query}")
    assert status == 200
    assert json.loads(body)["rt"]["outgoing"]["server"]["127.0.0.1"]["4140"]["requests"] == {"counter": 7}


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


# -- wtf ---------------------------------------------------------------------------------------------


class FailingContext(FakeAdminContext):
    """A daemon whose router ``out`` fails /svc/web with refused connections."""

    def __init__(self) -> None:
        super().__init__()
        self.dtabs = {"out": self.dtabs["outgoing"]}
        rt = self.metrics.router("out")
        srv = rt.server("127.0.0.1", 4140)
        svc = rt.service("/svc/web", True)
        cl = rt.client("/$/inet/127.1/9999")
        for stats in (srv, svc, cl):
            for i in range(4):
                stats.start()
                stats.finish(0.001, Cause.CONNECT_REFUSED if i < 3 else None)

    def namer_states(self) -> dict[str, dict[str, Any]]:
        self._maybe_fail("namer_states")
        return super().namer_states()


async def run_wtf(admin: str, *extra: str) -> tuple[int, str, str]:
    """The real CLI in a subprocess (the admin server's log lines stay out of its output)."""
    proc = await trio.run_process(
        [sys.executable, "-m", "hostproxy", "wtf", "--admin", admin, "--timeout", "10", *extra],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


async def test_wtf_for_a_router_that_does_not_exist_is_a_usage_error_not_healthy() -> None:
    async with admin_on_loopback(FailingContext()) as admin:
        code, out, err = await run_wtf(admin, "--router", "otu")
    assert code == 2
    assert out == ""
    assert err == "hostproxy wtf: --router otu: no such router; the routers are: out\n"
    async with admin_on_loopback(FailingContext()) as admin:
        code, out, _ = await run_wtf(admin, "--json", "--router", "otu")
    assert code == 2
    assert json.loads(out) == {
        "healthy": False,
        "window": None,
        "findings": [],
        "routers": {},
        "error": "--router otu: no such router; the routers are: out",
    }


async def test_wtf_still_diagnoses_when_an_optional_document_fails() -> None:
    ctx = FailingContext()
    ctx.raise_in = "namer_states"  # /admin/namer_state.json answers 500
    async with admin_on_loopback(ctx) as admin:
        code, out, _ = await run_wtf(admin, "--json")
    assert code == 1
    doc = json.loads(out)
    assert [(f["service"], f["cause"], f["client"]) for f in doc["findings"]] == [
        ("/svc/web", "connect/refused", "/$/inet/127.1/9999")
    ]
    assert "error" not in doc
    (note,) = doc["unreadable"]
    assert note.startswith(f"{admin}/admin/namer_state.json answered 500: ")


async def test_wtf_text_report_names_the_unreadable_document() -> None:
    ctx = FailingContext()
    ctx.raise_in = "namer_states"
    async with admin_on_loopback(ctx) as admin:
        code, out, _ = await run_wtf(admin)
    assert code == 1
    assert "connect/refused" in out
    assert f"not read: {admin}/admin/namer_state.json answered 500" in out


class ManyServicesContext(FakeAdminContext):
    """More healthy services than wtf delegates, sorting before the one failing service, and a client
    of another service with more refused connections than the failing service's own client."""

    def __init__(self) -> None:
        super().__init__()
        dtab = "/svc/zz => /$/inet/127.1/2;" + "".join(
            f"/svc/a{i:03d} => /$/inet/127.1/{3000 + i};" for i in range(cli_wtf.MAX_DELEGATIONS + 6)
        )
        self.dtabs = {"out": parse_dtab(dtab)}
        rt = self.metrics.router("out")
        for i in range(cli_wtf.MAX_DELEGATIONS + 6):
            s = rt.service(f"/svc/a{i:03d}", True)
            s.start()
            s.finish(0.001)
        zz = rt.service("/svc/zz", True)
        own = rt.client("/$/inet/127.1/2")
        for stats in (zz, own):
            stats.start()
            stats.finish(0.001, Cause.CONNECT_REFUSED)
        # a client no service delegates to any more, with more failures of the same cause
        stale = rt.client("/$/inet/127.1/7777")
        for _ in range(5):
            stale.start()
            stale.finish(0.001, Cause.CONNECT_REFUSED)


async def test_wtf_delegates_failing_services_first_and_blames_their_own_client() -> None:
    async with admin_on_loopback(ManyServicesContext()) as admin:
        code, out, _ = await run_wtf(admin, "--json")
    assert code == 1
    doc = json.loads(out)
    found = {(f["service"], f["cause"]): f["client"] for f in doc["findings"]}
    assert found[("/svc/zz", "connect/refused")] == "/$/inet/127.1/2"


def test_diagnose_survives_odd_namer_and_client_documents() -> None:
    # a namer in error (names as a list, an error string), a client entry that is not an object
    metrics = {
        "rt/out/server/127.0.0.1/4140/requests": 2,
        "rt/out/server/127.0.0.1/4140/failures": 1,
        "rt/out/server/127.0.0.1/4140/failures/naming/failed": 1,
        "rt/out/service/svc/web/requests": 2,
        "rt/out/service/svc/web/failures/naming/failed": 1,
        'rt/out/client/#/io.l5d.fs/we"b\\x/requests': 2,
        'rt/out/client/#/io.l5d.fs/we"b\\x/failures/naming/failed': 1,
    }
    snap = Snapshot(
        metrics=metrics,
        client_state={'/#/io.l5d.fs/we"b\\x': "closed"},
        namer_state={"/io.l5d.fs": {"kind": "io.l5d.fs", "names": ["web"], "error": "boom"}},
        bindings={"out": {"/svc/web": ['/#/io.l5d.fs/we"b\\x']}},
    )
    report = diagnose(snap)
    assert [(f.service, f.cause, f.client) for f in report.findings] == [
        ("/svc/web", "naming/failed", '/#/io.l5d.fs/we"b\\x')
    ]
