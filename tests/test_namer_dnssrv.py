"""io.l5d.dnssrv: the pure address and schedule rules, and real SRV lookups against dnsmasq on loopback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path as FsPath
from typing import Any

import pytest
import trio

from dtab import Dtab, Path
from dtab.bind import PENDING, Address, BoundName, NamerError, bind
from dtab.tree import NEG, Leaf
from namers.base import NameTable
from namers.dnssrv import (
    KIND,
    DnsSrvNamer,
    SrvCore,
    SrvFailure,
    SrvFound,
    SrvNegative,
    SrvRecord,
    from_config,
    record_name,
    srv_addresses,
)
from tests.dnsserver import running_dnsmasq


def path(s: str) -> Path:
    return Path.read(s)


# -- pure: names and addresses --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("label", "name"),
    [
        (b"_http._tcp.web.example.org", "_http._tcp.web.example.org"),
        (b"myservice.srv.dc-2.example.org.", "myservice.srv.dc-2.example.org"),
        (b"web", "web"),
        (b"", None),
        (b".", None),
        (b"a..b", None),
        (b"-a.b", None),
        (b"a b", None),
        (b"caf\xc3\xa9.test", None),
        (b"a" * 64 + b".test", None),
        (b"a." * 127 + b"a", None),
    ],
)
def test_record_name(label: bytes, name: str | None):
    assert record_name(label) == name


def test_srv_addresses_weights_and_metadata():
    records = [
        SrvRecord(0, 10, 8080, "a.test"),
        SrvRecord(0, 20, 8081, "b.test"),
        SrvRecord(1, 0, 8082, "c.test"),
    ]
    ips = {"a.test": ["10.0.0.1"], "b.test": ["10.0.0.2", "::2"], "c.test": ["10.0.0.3"]}
    addrs, skipped = srv_addresses(records, ips)
    assert [(a.host, a.port, a.weight) for a in addrs] == [
        ("10.0.0.1", 8080, 10.0),
        ("10.0.0.2", 8081, 20.0),
        ("::2", 8081, 20.0),
        ("10.0.0.3", 8082, 0.1),  # weight 0 beside positive weights: 1/100 of the smallest
    ]
    assert dict(addrs[0].meta) == {"srv_target": "a.test", "srv_priority": 0}
    assert dict(addrs[3].meta) == {"srv_target": "c.test", "srv_priority": 1}
    assert skipped == ()


def test_srv_addresses_all_zero_weights_are_equal_and_unknown_targets_skipped():
    records = [
        SrvRecord(0, 0, 80, "a.test"),
        SrvRecord(0, 0, 80, "gone.test"),
        SrvRecord(0, 0, 81, "a.test"),
        SrvRecord(0, 0, 80, "a.test"),  # duplicate (ip, port) collapses
        SrvRecord(0, 0, 1, "."),
    ]
    addrs, skipped = srv_addresses(records, {"a.test": ["10.0.0.1"]})
    assert [(a.host, a.port, a.weight) for a in addrs] == [("10.0.0.1", 80, 1.0), ("10.0.0.1", 81, 1.0)]
    assert skipped == ("gone.test", ".")


# -- pure: the schedule and the state rules -------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 1_500_000_000.0

    def __call__(self) -> float:
        return self.t


A1 = (Address("10.0.0.1", 80, 1.0),)
A2 = (Address("10.0.0.2", 80, 1.0),)


def make_core(**kw: Any) -> tuple[NameTable, SrvCore]:
    table = NameTable(Clock())
    return table, SrvCore(table, **kw)


def test_core_refresh_interval_schedule():
    table, core = make_core(refresh_interval=5.0)
    key = (b"web.test",)
    table.touch(key)
    assert core.due(0.0) == [key]
    assert core.due(0.0) == []  # in flight
    assert core.next_deadline() is None
    assert core.apply(key, SrvFound(A1, ttl=300), 1.0)
    assert table.get(key).state == "bound" and table.get(key).addr == A1
    assert core.next_deadline() == 6.0  # the interval, not the TTL
    assert core.due(5.9) == [] and core.due(6.0) == [key]
    assert not core.apply(key, SrvFound(A1, ttl=300), 6.5)  # same answer: no change
    assert table.get(key).version == 1
    assert core.due(11.5) == [key]
    assert core.apply(key, SrvFound(A2, ttl=300), 11.5)
    assert table.get(key).addr == A2 and table.get(key).version == 2


def test_core_ttl_schedule_clamped():
    table, core = make_core(refresh_interval=None, ttl_floor=2.0, ttl_ceiling=30.0, negative_ttl=4.0)
    for name in (b"a", b"b", b"c", b"d"):
        table.touch((name,))
    core.due(0.0)
    core.apply((b"a",), SrvFound(A1, ttl=10), 0.0)
    core.apply((b"b",), SrvFound(A1, ttl=0), 0.0)
    core.apply((b"c",), SrvFound(A1, ttl=3600), 0.0)
    core.apply((b"d",), SrvNegative("NXDOMAIN"), 0.0)
    assert core.schedule((b"a",)).next_refresh == 10.0
    assert core.schedule((b"b",)).next_refresh == 2.0
    assert core.schedule((b"c",)).next_refresh == 30.0
    assert core.schedule((b"d",)).next_refresh == 4.0
    assert table.get((b"d",)).state == "neg"


def test_core_failure_keeps_last_good_then_fails_without_one():
    table, core = make_core(refresh_interval=5.0, retry_base=0.5, retry_max=30.0)
    good, never = (b"good",), (b"never",)
    table.touch(good)
    table.touch(never)
    core.due(0.0)
    core.apply(good, SrvFound(A1, ttl=5), 0.0)
    core.apply(never, SrvFailure("timed out"), 0.0)
    assert table.get(never).state == "failed" and table.get(never).last_error == "timed out"
    assert core.schedule(never).next_refresh == 0.5
    core.due(5.0)
    assert core.apply(good, SrvFailure("timed out"), 5.0)
    st = table.get(good)
    assert (st.state, st.addr, st.last_error) == ("stale", A1, "timed out")
    version = st.version
    # backoff doubles but never passes the refresh interval; the same failure again is no change
    assert core.schedule(good).next_refresh == 5.5
    nexts = []
    for now in (6.0, 7.0, 9.0, 13.0, 20.0):
        assert core.due(now) == [good]
        assert not core.apply(good, SrvFailure("timed out"), now)
        nexts.append(core.schedule(good).next_refresh - now)
    assert nexts == [1.0, 2.0, 4.0, 5.0, 5.0]  # doubling, capped by the refresh interval
    assert st.version == version
    # a good answer again clears the failure
    core.due(100.0)
    assert core.apply(good, SrvFound(A2, ttl=5), 100.0)
    assert (st.state, st.addr, st.last_error) == ("bound", A2, None)
    assert core.schedule(good).failures == 0


def test_core_negative_drops_addresses_and_evicted_names_are_forgotten():
    table, core = make_core(refresh_interval=5.0)
    key = (b"web",)
    table.touch(key)
    core.due(0.0)
    core.apply(key, SrvFound(A1, ttl=5), 0.0)
    core.due(5.0)
    assert core.apply(key, SrvNegative("NXDOMAIN"), 5.0)
    assert table.get(key).state == "neg" and table.get(key).addr is None
    table.forget(key)
    assert core.due(100.0) == []
    assert core.schedule(key) is None
    assert not core.apply(key, SrvFound(A1, ttl=5), 100.0)


def test_core_rejects_bad_settings():
    table = NameTable()
    with pytest.raises(ValueError, match=r"^refreshIntervalSeconds must be positive, got 0$"):
        SrvCore(table, refresh_interval=0)
    with pytest.raises(ValueError, match=r"^need 0 < ttl_floor <= ttl_ceiling, got 5 and 1$"):
        SrvCore(table, ttl_floor=5, ttl_ceiling=1)


# -- the namer without a server ------------------------------------------------------------------------------
def test_lookup_pending_then_neg_for_non_dns_labels():
    n = DnsSrvNamer(["127.0.0.1:1"])
    assert n.lookup(path("/_http._tcp.web.test/rest")) is PENDING
    assert n.table.watched() == [(b"_http._tcp.web.test",)]
    assert n.lookup(path("/a..b")) is NEG
    assert n.lookup(path("/x\\x20y")) is NEG
    assert n.table.watched() == [(b"_http._tcp.web.test",)]


def test_from_config():
    n = from_config({"kind": KIND, "dnsHosts": ["127.0.0.1:5353", "::1"], "refreshIntervalSeconds": 7})
    assert n.nameservers == [("127.0.0.1", 5353), ("::1", 53)]
    assert n.core.refresh_interval == 7.0
    assert str(n.bound_prefix) == "/#/io.l5d.dnssrv"
    d = from_config({"kind": KIND, "prefix": "/srv"})
    assert d.nameservers == [] and d.core.refresh_interval == 5.0 and str(d.bound_prefix) == "/#/srv"
    from hostproxy.config import model

    m = from_config(model.DnsSrvNamer(kind=KIND, dns_hosts=("127.0.0.1:53",), refresh_interval_seconds=3))
    assert m.nameservers == [("127.0.0.1", 53)] and m.core.refresh_interval == 3.0
    assert from_config({"dnsHosts": ["dns.example"]}).nameservers == [("dns.example", 53)]  # as in Linkerd
    with pytest.raises(
        ValueError,
        match=(
            r"^namers\[\]\.dnsHosts for kind io\.l5d\.dnssrv: nameserver 'dns example': 'dns example' is "
            r"neither an IP address nor a host name$"
        ),
    ):
        from_config({"dnsHosts": ["dns example"]})
    with pytest.raises(ValueError, match=r"^namers\[\]\.refreshIntervalSeconds must be a positive number"):
        from_config({"refreshIntervalSeconds": 0})


def test_from_config_refresh_from_ttl():
    assert from_config({"kind": KIND, "refreshFromTtl": True}).core.refresh_interval is None
    assert from_config({"kind": KIND, "refreshFromTtl": False}).core.refresh_interval == 5.0
    from hostproxy.config import model

    m = from_config(model.DnsSrvNamer(kind=KIND, refresh_from_ttl=True, refresh_interval_seconds=9))
    assert m.core.refresh_interval is None  # the TTL replaces the interval
    with pytest.raises(
        ValueError,
        match=r"^namers\[\]\.refreshFromTtl must be true or false for kind io\.l5d\.dnssrv, got 'yes'$",
    ):
        from_config({"refreshFromTtl": "yes"})


def test_registry_names_this_factory():
    from hostproxy.config import registry

    spec = registry.lookup("namer", KIND)
    assert spec is not None and registry.load_factory(spec) is from_config


# -- real DNS through dnsmasq ---------------------------------------------------------------------------------
WEB = [
    "srv-host=_http._tcp.web.test,a.test,8080,0,10",
    "srv-host=_http._tcp.web.test,b.test,8081,0,20",
    "host-record=a.test,127.0.0.11",
    "host-record=b.test,127.0.0.12,::12",
]
WEB_ADDRS = {("127.0.0.11", 8080, 10.0), ("127.0.0.12", 8081, 20.0), ("::12", 8081, 20.0)}


async def wait_for(pred: Callable[[], Any], timeout: float = 10.0) -> Any:
    with trio.fail_after(timeout):
        while not (v := pred()):
            await trio.sleep(0.01)
        return v


def namer_for(address: str, **kw: Any) -> DnsSrvNamer:
    kw.setdefault("timeout", 0.3)
    kw.setdefault("refresh_interval", 0.2)
    kw.setdefault("retry_base", 0.1)
    kw.setdefault("retry_max", 0.2)
    return DnsSrvNamer([address], **kw)


def addr_set(n: DnsSrvNamer, name: str) -> set[tuple[str, int, float]]:
    st = n.table.get((name.encode(),))
    return {(a.host, a.port, a.weight) for a in st.addr or ()}


async def test_records_found_bound_with_weights_and_follow_changes(tmp_path: FsPath):
    async with running_dnsmasq(tmp_path, WEB) as dns, trio.open_nursery() as nursery:
        n = namer_for(dns.address)
        changes: list[Any] = []
        n.subscribe(lambda namer, key: changes.append(key))
        await nursery.start(n.run)
        name = "_http._tcp.web.test"
        assert n.lookup(path(f"/{name}/rest")) is PENDING
        await wait_for(lambda: changes)
        leaf = n.lookup(path(f"/{name}/rest"))
        assert leaf == Leaf(BoundName(id=path(f"/#/io.l5d.dnssrv/{name}"), residual=path("/rest")))
        assert {(a.host, a.port, a.weight) for a in leaf.value.addr.addresses} == WEB_ADDRS
        state = n.state_json()["names"][name]
        assert state["state"] == "bound" and state["skippedTargets"] == [] and state["ttlSecs"] == 1.0
        assert {(a["host"], a["port"], a["weight"]) for a in state["addrs"]} == WEB_ADDRS
        # through the binder, with a dtab
        r = bind(Dtab.read("/svc => /#/io.l5d.dnssrv"), path(f"/svc/{name}"), [(n.bound_prefix, n.lookup)])
        assert r.tree.value.id == path(f"/#/io.l5d.dnssrv/{name}")

        await dns.set_records(
            [
                "srv-host=_http._tcp.web.test,c.test,9090,0,5",
                "host-record=c.test,127.0.0.13",
            ]
        )
        await wait_for(lambda: addr_set(n, name) == {("127.0.0.13", 9090, 5.0)})
        assert n.table.get((name.encode(),)).state == "bound"
        nursery.cancel_scope.cancel()


async def test_refresh_from_ttl_follows_the_answers_ttl(tmp_path: FsPath):
    # dnsmasq answers its local records with this TTL; the namer's next lookup is that far away.
    async with running_dnsmasq(tmp_path, WEB, ttl=7) as dns, trio.open_nursery() as nursery:
        n = from_config({"kind": KIND, "dnsHosts": [dns.address], "refreshFromTtl": True})
        await nursery.start(n.run)
        name = "_http._tcp.web.test"
        assert n.lookup(path(f"/{name}")) is PENDING
        await wait_for(lambda: addr_set(n, name) == WEB_ADDRS)
        state = n.state_json()["names"][name]
        assert state["state"] == "bound" and state["ttlSecs"] == 7.0
        sched = n.core.schedule((name.encode(),))
        assert sched.ttl == 7.0
        # Looked up again 7 s after this answer, not after the 5 s default interval.
        assert 6.0 < sched.next_refresh - trio.current_time() <= 7.0
        nursery.cancel_scope.cancel()


async def test_targets_missing_from_additional_section_are_resolved(tmp_path: FsPath):
    records = [
        "srv-host=_http._tcp.web.test,d.test,8080,0,10",
        "srv-host=_http._tcp.web.test,gone.test,8080,0,10",
        "address=/d.test/127.0.0.13",  # dnsmasq does not add these to the additional section
    ]
    async with running_dnsmasq(tmp_path, records) as dns, trio.open_nursery() as nursery:
        n = namer_for(dns.address)
        await nursery.start(n.run)
        name = "_http._tcp.web.test"
        n.lookup(path(f"/{name}"))
        await wait_for(lambda: n.table.get((name.encode(),)).state == "bound")
        assert addr_set(n, name) == {("127.0.0.13", 8080, 10.0)}
        assert n.state_json()["names"][name]["skippedTargets"] == ["gone.test"]
        assert n.statistics()["unknown_srv_hosts_results_total"] >= 1
        nursery.cancel_scope.cancel()


async def test_nxdomain_and_empty_answers_are_negative_so_alternates_apply(tmp_path: FsPath):
    records = [*WEB, "host-record=plain.test,127.0.0.20"]
    async with running_dnsmasq(tmp_path, records) as dns, trio.open_nursery() as nursery:
        n = namer_for(dns.address)
        await nursery.start(n.run)
        n.lookup(path("/_http._tcp.missing.test"))
        n.lookup(path("/plain.test"))  # the name exists, with no SRV records
        await wait_for(lambda: n.table.get((b"_http._tcp.missing.test",)).state == "neg")
        await wait_for(lambda: n.table.get((b"plain.test",)).state == "neg")
        assert n.lookup(path("/_http._tcp.missing.test")) is NEG
        dtab = Dtab.read("/svc => /$/inet/127.0.0.1/9999 | /#/io.l5d.dnssrv")
        r = bind(dtab, path("/svc/_http._tcp.missing.test"), [(n.bound_prefix, n.lookup)])
        assert r.tree.value.id == path("/$/inet/127.0.0.1/9999")
        # a record appearing later is picked up
        await dns.set_records([*records, "srv-host=_http._tcp.missing.test,a.test,7000,0,1"])
        await wait_for(lambda: n.table.get((b"_http._tcp.missing.test",)).state == "bound")
        assert addr_set(n, "_http._tcp.missing.test") == {("127.0.0.11", 7000, 1.0)}
        nursery.cancel_scope.cancel()


async def test_server_down_keeps_last_good_as_stale_and_new_names_fail(tmp_path: FsPath):
    async with running_dnsmasq(tmp_path, WEB) as dns, trio.open_nursery() as nursery:
        n = namer_for(dns.address)
        await nursery.start(n.run)
        name = "_http._tcp.web.test"
        n.lookup(path(f"/{name}"))
        await wait_for(lambda: n.table.get((name.encode(),)).state == "bound")
        dns.stop()
        st = await wait_for(lambda: (s := n.table.get((name.encode(),))).state == "stale" and s)
        assert st.last_error == f"SRV lookup of {name!r} via {dns.address} failed: timed out"
        assert {(a.host, a.port, a.weight) for a in st.addr} == WEB_ADDRS
        leaf = n.lookup(path(f"/{name}"))
        assert {(a.host, a.port) for a in leaf.value.addr.addresses} == {(h, p) for h, p, _ in WEB_ADDRS}
        assert n.state_json()["names"][name]["staleAgeSecs"] is not None
        # a name never answered fails outright: lookups raise at once instead of waiting
        other = "_http._tcp.other.test"
        n.lookup(path(f"/{other}"))
        await wait_for(lambda: n.table.get((other.encode(),)).state == "failed")
        with pytest.raises(NamerError, match=rf"^/#/io\.l5d\.dnssrv/{other}: SRV lookup of '{other}' via "):
            n.lookup(path(f"/{other}"))
        # the server comes back: the stale name recovers by itself
        dns.start()
        await dns.ready()
        await wait_for(lambda: n.table.get((name.encode(),)).state == "bound")
        assert n.statistics()["lookup_failures_total"] >= 2
        nursery.cancel_scope.cancel()


async def test_refused_queries_fail_without_last_good(tmp_path: FsPath):
    """dnsmasq with no upstream answers REFUSED outside its local domain: a failure, never negative."""
    async with running_dnsmasq(tmp_path, WEB) as dns, trio.open_nursery() as nursery:
        n = namer_for(dns.address)
        await nursery.start(n.run)
        name = "_http._tcp.web.elsewhere"
        n.lookup(path(f"/{name}"))
        st = await wait_for(lambda: (s := n.table.get((name.encode(),))).state == "failed" and s)
        assert st.last_error == (
            f"SRV lookup of {name!r} via {dns.address} failed: "
            "no nameserver gave an answer (SERVFAIL, REFUSED or unreachable)"
        )
        alt = Dtab.read("/svc => /#/io.l5d.dnssrv | /$/inet/127.0.0.1/1")
        with pytest.raises(NamerError):  # a failure is not Neg: the alternate is not silently taken
            bind(alt, path(f"/svc/{name}"), [(n.bound_prefix, n.lookup)])
        nursery.cancel_scope.cancel()


async def test_a_dead_first_server_leaves_time_for_the_next(tmp_path: FsPath):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    async with running_dnsmasq(tmp_path, WEB) as dns, trio.open_nursery() as nursery:
        n = DnsSrvNamer([dead, dns.address], timeout=1.0, refresh_interval=0.2)
        await nursery.start(n.run)
        name = "_http._tcp.web.test"
        n.lookup(path(f"/{name}"))
        await wait_for(lambda: n.table.get((name.encode(),)).state == "bound")
        assert addr_set(n, name) == WEB_ADDRS
        nursery.cancel_scope.cancel()
