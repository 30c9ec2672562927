"""A changed ``/$/inet`` answer re-binds only the names that consulted that host.

Before, a change of any one host's DNS answer (or its eviction) dropped every router's whole binding
cache, since which hosts a binding consulted was not used: a short-TTL name whose answers rotate made
every router re-delegate every name of every service each time. The binder already records the
``(/$/inet, /<host>/<port>/...)`` lookups a delegation made, as it records a namer's; a host's change
now drops only the bindings that looked that host up, as a namer's change does.

In-process tests drive a router (stub upstream pools that say which address they were made for)
with a resolver whose answers are applied directly; the end-to-end test runs the real daemon against
dnsmasq on loopback and sends requests with curl.
"""

from __future__ import annotations

import random
import time
from pathlib import Path as FsPath
from typing import Any

import trio

from hostproxy.config.validate import load_config
from hostproxy.http.message import Body, Headers, Request, Response
from hostproxy.metrics import MetricsRegistry
from hostproxy.router import HttpRouter
from namers.inet import InetResolver
from tests.daemonutil import curl, running_daemon
from tests.dnsserver import running_dnsmasq
from tests.routerstub import StubPool, conn_for, get_request
from tests.upstreams import running_upstream

CFG = """
routers:
- protocol: http
  label: out
  dtab: |
    /svc/web => /$/inet/web.test/80;
    /svc/api => /$/inet/API.test/80;
    /svc/db => /$/io.buoyant.rinet/80/db.test;
    /svc/fixed => /$/fixedinet/fixed.test/80;
    /svc/flip => /$/inet/flip.test/80;
    /svc/lit => /$/inet/127.0.0.9/80;
  servers: [{ip: 127.0.0.1, port: 4140}]
"""

SERVICES = [b"web", b"api", b"db", b"fixed", b"lit"]


class HostPool(StubPool):
    """Answers with ``x-host: <the address the pool was made for>``."""

    def __init__(self, host: str, port: int, params: Any, **kw: Any) -> None:
        super().__init__(host, port, params, **kw)
        self.host = host

    def answer(self, req: Request) -> Response:
        return Response(200, b"OK", Headers([(b"x-host", self.host.encode())]), Body.from_bytes(b"hi"))


def resolver_with(answers: dict[str, list[str] | None]) -> InetResolver:
    """A resolver (not running: answers are applied by the test) that knows ``answers`` (None: NXDOMAIN)."""
    r = InetResolver((), hosts_file=None, max_hosts=100)
    for host, ips in answers.items():
        set_answer(r, host, ips, notify=False)
    return r


def set_answer(r: InetResolver, host: str, ips: list[str] | None, *, notify: bool = True) -> None:
    """Apply a DNS answer for ``host`` as the resolver's runner does (subscribers told when changed)."""
    r.resolve(host, 80)
    changed = (
        r.table.apply_answer(host, ips, 60.0, 0.0) if ips is not None else r.table.apply_negative(host, 0.0)
    )
    if changed and notify:
        r._notify(host)


async def hosts_of(router: Any, conn: Any) -> dict[bytes, str]:
    out = {}
    for name in SERVICES:
        resp = await router.handle(get_request(name), conn)
        assert resp.status == 200, (name, resp.status)
        out[name] = resp.headers.get(b"x-host").decode()
    return out


def run_with_router(answers: dict[str, list[str] | None], body: Any) -> None:
    async def main() -> None:
        cfg = load_config(CFG, source="test").routers[0]
        resolver = resolver_with(answers)
        async with trio.open_nursery() as nursery:
            router = HttpRouter(
                cfg,
                namers=[],
                resolver=resolver,
                metrics=MetricsRegistry(time.monotonic),
                nursery=nursery,
                rng=random.Random(3),
                pool_factory=HostPool,
            )
            await body(router, resolver, conn_for(cfg))
            nursery.cancel_scope.cancel()

    trio.run(main)


START = {
    "web.test": ["127.0.0.4"],
    "api.test": ["127.0.0.5"],
    "db.test": ["127.0.0.6"],
    "fixed.test": ["127.0.0.7"],
    "flip.test": None,
}


def test_one_hosts_changed_answer_rebinds_only_the_names_that_looked_it_up() -> None:
    async def body(router: Any, resolver: InetResolver, conn: Any) -> None:
        assert await hosts_of(router, conn) == {
            b"web": "127.0.0.4",
            b"api": "127.0.0.5",
            b"db": "127.0.0.6",
            b"fixed": "127.0.0.7",
            b"lit": "127.0.0.9",
        }
        binder = router.binder
        before = binder.delegations
        assert len(binder.cached_bindings()) == len(SERVICES)

        # api.test (written API.test in the dtab) moves: only /svc/api is bound again.
        set_answer(resolver, "api.test", ["127.0.0.15"])
        assert {str(k[1]) for k in binder.cached_bindings()} == {
            "/svc/web",
            "/svc/db",
            "/svc/fixed",
            "/svc/lit",
        }
        assert (await hosts_of(router, conn))[b"api"] == "127.0.0.15"
        assert binder.delegations == before + 1

        # db.test, named by /$/io.buoyant.rinet/<port>/<host>, and fixed.test, by /$/fixedinet.
        set_answer(resolver, "db.test", ["127.0.0.16"])
        set_answer(resolver, "fixed.test", ["127.0.0.17"])
        got = await hosts_of(router, conn)
        assert (got[b"db"], got[b"fixed"]) == ("127.0.0.16", "127.0.0.17")
        assert binder.delegations == before + 3

        # A host no binding looked up changes: nothing is bound again.
        set_answer(resolver, "other.test", ["127.0.0.18"])
        await hosts_of(router, conn)
        assert binder.delegations == before + 3

    run_with_router(START, body)


def test_a_host_going_negative_and_coming_back_rebinds_only_its_own_name() -> None:
    """NXDOMAIN, then an answer, then NXDOMAIN again: requests for the name follow each (502 "is
    negative", 200 from the new address, 502 again), and the other names stay bound."""

    async def body(router: Any, resolver: InetResolver, conn: Any) -> None:
        flip = get_request(b"flip")
        await hosts_of(router, conn)
        resp = await router.handle(flip, conn)
        assert resp.status == 502 and b"is+negative" in resp.headers.get(b"l5d-err")
        before = router.binder.delegations

        set_answer(resolver, "flip.test", ["127.0.0.30"])
        resp = await router.handle(get_request(b"flip"), conn)
        assert resp.status == 200 and resp.headers.get(b"x-host") == b"127.0.0.30"
        await hosts_of(router, conn)
        assert router.binder.delegations == before + 1

        set_answer(resolver, "flip.test", None)
        resp = await router.handle(get_request(b"flip"), conn)
        assert resp.status == 502 and b"is+negative" in resp.headers.get(b"l5d-err")
        await hosts_of(router, conn)
        assert router.binder.delegations == before + 2

    run_with_router(START, body)


def test_an_evicted_host_drops_the_bindings_that_looked_it_up() -> None:
    """An evicted host is no longer followed: the bindings that looked it up are dropped (their next
    request looks it up again, which follows it again), and no other."""

    async def body(router: Any, resolver: InetResolver, conn: Any) -> None:
        await hosts_of(router, conn)
        resolver._notify("db.test")  # as an eviction tells the subscribers
        assert "/svc/db" not in {str(k[1]) for k in router.binder.cached_bindings()}
        assert len(router.binder.cached_bindings()) == len(SERVICES) - 1

    run_with_router(START, body)


async def test_requests_follow_an_address_change_and_a_negative_positive_flip_end_to_end(
    tmp_path: FsPath,
) -> None:
    """The real daemon, dnsmasq on loopback, curl. ``moved.test`` moves from 127.0.0.4 to 127.0.0.5;
    ``flip.test`` is unknown (NXDOMAIN: 502, the client is negative), then appears on 127.0.0.6, then
    goes away again. Requests follow each change, and /svc/steady, whose host never changed, is never
    bound again: its cached bound tree is the same object throughout."""
    async with running_upstream(host="127.0.0.4") as a:  # noqa: SIM117 (b and c need a's port)
        async with (
            running_upstream(host="127.0.0.5", port=a.port) as b,
            running_upstream(host="127.0.0.6", port=a.port) as c,
            running_dnsmasq(
                tmp_path, ["host-record=moved.test,127.0.0.4", "host-record=steady.test,127.0.0.4"]
            ) as dns,
        ):
            cfg = f"""
admin: {{ip: 127.0.0.1, port: 0}}
dns: {{nameservers: ["{dns.address}"]}}
routers:
- protocol: http
  label: out
  dtab: |
    /svc/moved => /$/inet/moved.test/{a.port};
    /svc/flip => /$/inet/flip.test/{a.port};
    /svc/steady => /$/inet/steady.test/{a.port};
  servers: [{{ip: 127.0.0.1, port: 0}}]
"""
            async with running_daemon(cfg) as d:
                port = d.port("out")

                async def status(name: str) -> int:
                    return (await curl(f"http://127.0.0.1:{port}/", "-H", f"Host: {name}")).status

                async def until(name: str, server: Any) -> None:
                    """Requests for ``name`` until one reaches ``server`` (bounded)."""
                    with trio.fail_after(20):
                        while True:
                            n = len(server.requests)
                            await status(name)
                            if len(server.requests) > n:
                                return
                            await trio.sleep(0.1)

                async def until_status(name: str, want: int) -> None:
                    with trio.fail_after(20):
                        while await status(name) != want:
                            await trio.sleep(0.1)

                assert await status("moved") == 200
                assert await status("steady") == 200
                assert len(a.requests) == 2
                assert await status("flip") == 502
                binder = d.daemon.routers["out"].binder

                def steady_tree() -> Any:
                    trees = [t for _l, s, t in binder.cached_bindings() if str(s) == "/svc/steady"]
                    assert len(trees) == 1
                    return trees[0]

                steady = steady_tree()
                await dns.set_records(
                    [
                        "host-record=moved.test,127.0.0.5",
                        "host-record=steady.test,127.0.0.4",
                        "host-record=flip.test,127.0.0.6",
                    ]
                )
                await until("moved", b)
                await until("flip", c)
                await dns.set_records(
                    ["host-record=moved.test,127.0.0.5", "host-record=steady.test,127.0.0.4"]
                )
                await until_status("flip", 502)
                n = len(a.requests)
                assert await status("steady") == 200
                assert len(a.requests) == n + 1
                assert steady_tree() is steady  # never dropped, never delegated again
