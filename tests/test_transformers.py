"""Transformers: pure tests of each kind, their /%/ id prefixes, and how they compose with binding."""

from __future__ import annotations

from typing import Any

import pytest

from dtab import Dtab, Path
from dtab.bind import PENDING, AddrBound, Address, AddrFailed, AddrNeg, AddrPending, BoundName, bind
from dtab.tree import EMPTY, NEG, Alt, Leaf, Union, Weighted
from namers import transformers as T
from namers.transformers import (
    ConstTransformer,
    DaemonSetTransformer,
    LocalhostTransformer,
    LocalNodeTransformer,
    PortTransformer,
    ReplaceTransformer,
    SpecificHostTransformer,
    TransformerConfigError,
    apply_transformers,
    transforming_lookup,
)


def p(s: str) -> Path:
    return Path.read(s)


def hp(addr: Any) -> list[tuple[str, int, float]]:
    assert isinstance(addr, AddrBound), addr
    return [(a.host, a.port, a.weight) for a in addr.addresses]


def leaf(
    id_: str, *addrs: Address, residual: str = "/", meta: dict[str, Any] | None = None
) -> Leaf[BoundName]:
    r = Path.EMPTY if residual == "/" else p(residual)
    return Leaf(BoundName(p(id_), r, AddrBound(addrs, meta or {})))


USERS = leaf(
    "/#/io.l5d.fs/users",
    Address("10.0.1.5", 8080, 1.0),
    Address("10.0.1.6", 8080, 2.0),
    Address("10.0.2.7", 9090, 1.0),
    residual="/v1",
    meta={"set": "meta"},
)


# -- io.l5d.port ----------------------------------------------------------------------------------------------
def test_port_rewrites_ports_and_prefixes_the_id():
    t = PortTransformer(4141)
    out = t.transform(USERS)
    b = out.value
    assert str(b.id) == "/%/io.l5d.port/4141/#/io.l5d.fs/users"
    assert b.residual == p("/v1")
    # 10.0.1.5 and 10.0.1.6 stay distinct hosts; equal results would collapse
    assert hp(b.addr) == [("10.0.1.5", 4141, 1.0), ("10.0.1.6", 4141, 2.0), ("10.0.2.7", 4141, 1.0)]
    assert dict(b.addr.meta) == {"set": "meta"}


def test_port_collapses_addresses_that_become_equal():
    t = PortTransformer(4141)
    tree = leaf(
        "/#/x", Address("10.0.0.1", 80, 1.0, {"pod": "a"}), Address("10.0.0.1", 81, 3.0, {"pod": "b"})
    )
    b = t.transform(tree).value
    assert hp(b.addr) == [("10.0.0.1", 4141, 3.0)]
    assert dict(b.addr.addresses[0].meta) == {"pod": "a"}


def test_port_keeps_structure_atoms_weights_and_non_bound_addrs():
    t = PortTransformer(1)
    tree = Union(
        (
            Weighted(0.9, leaf("/#/a", Address("10.0.0.1", 80))),
            Weighted(0.1, Leaf(BoundName(p("/#/b"), Path.EMPTY, AddrNeg()))),
        )
    )
    out = t.transform(tree)
    assert [b.weight for b in out.branches] == [0.9, 0.1]
    assert out.branches[0].tree.value.id == p("/%/io.l5d.port/1/#/a")
    assert out.branches[1].tree.value.id == p("/%/io.l5d.port/1/#/b")
    assert out.branches[1].tree.value.addr == AddrNeg()
    assert t.transform(NEG) is NEG and t.transform(EMPTY) is EMPTY
    assert t.transform(PENDING) is PENDING
    failed = Leaf(BoundName(p("/#/c"), Path.EMPTY, AddrFailed("boom")))
    assert t.transform(failed).value.addr == AddrFailed("boom")
    # the union weight recorded on a leaf by binding survives
    weighted = Leaf(BoundName(p("/#/d"), Path.EMPTY, AddrBound((Address("1.2.3.4", 5),)), weight=0.25))
    assert t.transform(weighted).value.weight == 0.25


@pytest.mark.parametrize("bad", [0, 65536, "http", True, None])
def test_port_rejects_bad_ports(bad: Any):
    with pytest.raises(TransformerConfigError, match=r"^io\.l5d\.port: port must be a number 1-65535, got "):
        T.port({"port": bad})


# -- io.l5d.localhost / io.l5d.specificHost -----------------------------------------------------------------
def test_localhost_keeps_local_ips_only_and_empty_becomes_neg():
    t = LocalhostTransformer(local_ips=["127.0.0.1", "10.0.1.6", "fe80::1%eth0"])
    b = t.transform(USERS).value
    assert str(b.id) == "/%/io.l5d.localhost/#/io.l5d.fs/users"
    assert hp(b.addr) == [("10.0.1.6", 8080, 2.0)]
    named = leaf("/#/x", Address("localhost", 1), Address("web.example", 2), Address("fe80::1", 3))
    assert hp(t.transform(named).value.addr) == [("localhost", 1, 1.0), ("fe80::1", 3, 1.0)]
    none = leaf("/#/y", Address("10.9.9.9", 1))
    assert t.transform(none).value.addr == AddrNeg()


def test_localhost_default_reads_this_hosts_addresses():
    t = T.localhost({})
    assert {str(ip) for ip in t.local_ips} >= {"127.0.0.1", "::1"}


def test_specific_host_keeps_that_hosts_addresses():
    t = SpecificHostTransformer("10.0.2.7")
    b = t.transform(USERS).value
    assert str(b.id) == "/%/io.l5d.specificHost/#/io.l5d.fs/users"
    assert hp(b.addr) == [("10.0.2.7", 9090, 1.0)]
    t2 = T.specific_host({"host": "node-a"}, resolve=lambda h: {"node-a": ["10.0.1.5"]}[h])
    assert hp(t2.transform(USERS).value.addr) == [("10.0.1.5", 8080, 1.0)]


def test_specific_host_errors():
    def fail(host: str) -> list[str]:
        raise OSError("Name or service not known")

    with pytest.raises(
        TransformerConfigError,
        match=r"^io\.l5d\.specificHost: host 'nowhere' does not resolve \(Name or service not known\); give an IP address$",
    ):
        T.specific_host({"host": "nowhere"}, resolve=fail)
    with pytest.raises(TransformerConfigError, match=r"^io\.l5d\.specificHost: host is required"):
        T.specific_host({})


# -- io.l5d.k8s.localnode ---------------------------------------------------------------------------------------
PODS = leaf(
    "/#/io.l5d.k8s/default/http/world-v1",
    Address("10.1.1.5", 7777, 1.0, {"nodeName": "node-1"}),
    Address("10.1.1.9", 7777, 1.0, {"nodeName": "node-1"}),
    Address("10.1.2.5", 7777, 1.0, {"nodeName": "node-2"}),
    Address("10.1.3.5", 7777, 1.0),
)


def test_localnode_by_pod_subnet():
    t = T.localnode({}, env={"POD_IP": "10.1.1.200"})
    b = t.transform(PODS).value
    assert str(b.id) == "/%/io.l5d.k8s.localnode/10.1.1.200/#/io.l5d.k8s/default/http/world-v1"
    assert hp(b.addr) == [("10.1.1.5", 7777, 1.0), ("10.1.1.9", 7777, 1.0)]
    t3 = LocalNodeTransformer(env={"POD_IP": "10.1.4.1"})
    assert t3.transform(PODS).value.addr == AddrNeg()


def test_localnode_by_node_name_with_host_network():
    t = T.localnode({"hostNetwork": True}, env={"NODE_NAME": "node-2"})
    b = t.transform(PODS).value
    assert str(b.id) == "/%/io.l5d.k8s.localnode/node-2/#/io.l5d.k8s/default/http/world-v1"
    assert hp(b.addr) == [("10.1.2.5", 7777, 1.0)]


def test_localnode_needs_its_environment():
    with pytest.raises(
        TransformerConfigError,
        match=r"^io\.l5d\.k8s\.localnode needs the POD_IP environment variable set to this pod's IP \(got ''\)",
    ):
        T.localnode({}, env={})
    with pytest.raises(
        TransformerConfigError,
        match=r"^io\.l5d\.k8s\.localnode with hostNetwork: true needs the NODE_NAME environment variable",
    ):
        T.localnode({"host_network": True}, env={"POD_IP": "10.0.0.1"})


# -- io.l5d.k8s.daemonset -------------------------------------------------------------------------------------------
L5D = AddrBound(
    (
        Address("10.1.1.2", 4141, 1.0, {"nodeName": "node-1"}),
        Address("10.1.2.2", 4141, 1.0, {"nodeName": "node-2"}),
        Address("10.1.9.2", 4141, 1.0, {"nodeName": "node-9"}),
    )
)


class Source:
    def __init__(self, addr: Any) -> None:
        self.addr = addr
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        return self.addr


def test_daemonset_maps_each_pod_to_the_daemonset_pod_on_its_subnet():
    src = Source(L5D)
    t = T.daemonset({"namespace": "default", "port": "incoming", "service": "l5d"}, source=src)
    b = t.transform(PODS).value
    assert str(b.id) == "/%/io.l5d.k8s.daemonset/default/incoming/l5d/#/io.l5d.k8s/default/http/world-v1"
    # two pods on node-1 give one entry; 10.1.3.5 has no daemonset pod on its /24 and is dropped
    assert hp(b.addr) == [("10.1.1.2", 4141, 1.0), ("10.1.2.2", 4141, 1.0)]
    assert dict(b.addr.addresses[0].meta) == {"nodeName": "node-1"}
    assert t.k8s_residual == p("/default/incoming/l5d")
    # the source is read at every transform: a change is seen by the next binding
    src.addr = AddrBound((Address("10.1.3.3", 4141),))
    assert hp(t.transform(PODS).value.addr) == [("10.1.3.3", 4141, 1.0)]


def test_daemonset_by_node_name_with_host_network():
    src = Source(L5D)
    t = DaemonSetTransformer("default", "incoming", "l5d", src, host_network=True)
    b = t.transform(PODS).value
    assert hp(b.addr) == [("10.1.1.2", 4141, 1.0), ("10.1.2.2", 4141, 1.0)]


def test_daemonset_with_no_match_or_no_source_answer():
    t = DaemonSetTransformer("default", "incoming", "l5d", Source(AddrBound((Address("192.168.0.1", 4141),))))
    assert t.transform(PODS).value.addr == AddrNeg()
    assert (
        DaemonSetTransformer("d", "p", "s", Source(AddrPending())).transform(PODS).value.addr == AddrPending()
    )
    assert DaemonSetTransformer("d", "p", "s", Source(PENDING)).transform(PODS).value.addr == AddrPending()
    assert DaemonSetTransformer("d", "p", "s", Source(AddrNeg())).transform(PODS).value.addr == AddrNeg()
    failed = DaemonSetTransformer("d", "p", "s", Source(AddrFailed("connection refused"))).transform(PODS)
    assert failed.value.addr == AddrFailed("daemonset Service d/s port p: connection refused")
    # a destination that is itself not bound is left alone (the source is not even read)
    src = Source(L5D)
    neg_leaf = Leaf(BoundName(p("/#/x"), Path.EMPTY, AddrNeg()))
    assert DaemonSetTransformer("d", "p", "s", src).transform(neg_leaf).value.addr == AddrNeg()
    assert src.calls == 0


def test_daemonset_factory_errors():
    with pytest.raises(
        TransformerConfigError,
        match=r"^io\.l5d\.k8s\.daemonset: no source for the endpoints of Service default/l5d port incoming; ",
    ):
        T.daemonset({"namespace": "default", "service": "l5d", "port": "incoming"})
    with pytest.raises(TransformerConfigError, match=r"^io\.l5d\.k8s\.daemonset: service is required"):
        T.daemonset({"namespace": "default", "port": "incoming"}, source=Source(L5D))


# -- io.l5d.replace / io.l5d.const -----------------------------------------------------------------------------------
def test_replace_binds_the_path_and_replaces_every_leaf_but_neg_stays_neg():
    t = T.replace({"path": "/$/inet/127.0.0.1/4141"})
    tree = Alt((USERS, leaf("/#/io.l5d.fs/other", Address("10.0.0.9", 1))))
    out = t.transform(tree)
    for child in out.trees:
        assert child.value.id == p("/$/inet/127.0.0.1/4141")
        assert hp(child.value.addr) == [("127.0.0.1", 4141, 1.0)]
    assert t.transform(NEG) is NEG
    assert t.transform(PENDING) is PENDING


def test_const_always_binds_its_path():
    t = T.const({"path": "/$/inet/127.0.0.1/4141"})
    for tree in (NEG, USERS, EMPTY):
        out = t.transform(tree)
        assert out.value.id == p("/$/inet/127.0.0.1/4141")


def test_replace_and_const_use_the_injected_system_namer():
    answers: dict[Path, Any] = {}

    def system(path: Path) -> Any:
        return answers.get(path)

    target = p("/$/inet/backend.test/80")
    t = ConstTransformer(target, T.system_binder(system))
    answers[target] = PENDING
    assert t.transform(NEG) is PENDING
    bound = Leaf(BoundName(target, Path.EMPTY, AddrBound((Address("10.0.0.1", 80),))))
    answers[target] = bound
    assert t.transform(NEG) == bound
    r = ReplaceTransformer(target, T.system_binder(system))
    assert r.transform(USERS) == bound


def test_path_config_errors():
    with pytest.raises(
        TransformerConfigError, match=r"^io\.l5d\.replace: path is required and must be a path"
    ):
        T.replace({})
    with pytest.raises(TransformerConfigError, match=r"^io\.l5d\.const: path '/a b' is not a path \("):
        T.const({"path": "/a b"})


# -- composition --------------------------------------------------------------------------------------------------------
def test_transformers_apply_in_order_and_prefixes_stack():
    ts = [PortTransformer(4141), LocalhostTransformer(local_ips=["10.0.1.5"])]
    b = apply_transformers(USERS, ts).value
    assert str(b.id) == "/%/io.l5d.localhost/%/io.l5d.port/4141/#/io.l5d.fs/users"
    assert hp(b.addr) == [("10.0.1.5", 4141, 1.0)]
    assert apply_transformers(PENDING, ts) is PENDING


def test_interpreter_and_namer_level_with_dtab_bind():
    users = AddrBound((Address("10.0.1.5", 8080), Address("10.0.1.6", 8080)))

    def fs_lookup(residual: Path) -> Any:
        if residual.labels[:1] == (b"users",):
            return Leaf(BoundName(p("/#/io.l5d.fs/users"), residual.drop(1), users))
        return NEG

    dtab = Dtab.read("/svc => /#/io.l5d.fs")
    # namer level: the namer's answers are transformed as they are bound
    wrapped = transforming_lookup(fs_lookup, [PortTransformer(4141)])
    r = bind(dtab, p("/svc/users/x"), [(p("/#/io.l5d.fs"), wrapped)])
    assert str(r.tree.value.id) == "/%/io.l5d.port/4141/#/io.l5d.fs/users"
    assert r.tree.value.residual == p("/x")
    # a namer's negative answer still lets alternates apply
    r2 = bind(
        Dtab.read("/svc => /#/io.l5d.fs | /$/inet/127.0.0.1/1"),
        p("/svc/none"),
        [(p("/#/io.l5d.fs"), wrapped)],
    )
    assert str(r2.tree.value.id) == "/$/inet/127.0.0.1/1"
    # interpreter level: the final bound tree is transformed
    r3 = bind(dtab, p("/svc/users"), [(p("/#/io.l5d.fs"), fs_lookup)])
    out = apply_transformers(r3.tree, [PortTransformer(4141)])
    assert str(out.value.id) == "/%/io.l5d.port/4141/#/io.l5d.fs/users"
    assert transforming_lookup(fs_lookup, []) is fs_lookup


def test_registry_factories_build_from_config_dataclasses():
    from hostproxy.config import model, registry

    cases: list[tuple[str, Any, dict[str, Any], type]] = [
        ("io.l5d.port", model.PortTransformer(kind="io.l5d.port", port=4141), {}, PortTransformer),
        ("io.l5d.localhost", model.LocalhostTransformer(kind="io.l5d.localhost"), {}, LocalhostTransformer),
        (
            "io.l5d.specificHost",
            model.SpecificHostTransformer(kind="io.l5d.specificHost", host="127.0.0.1"),
            {},
            SpecificHostTransformer,
        ),
        (
            "io.l5d.k8s.localnode",
            model.LocalNodeTransformer(kind="io.l5d.k8s.localnode", host_network=True),
            {"env": {"NODE_NAME": "n1"}},
            LocalNodeTransformer,
        ),
        (
            "io.l5d.k8s.daemonset",
            model.DaemonSetTransformer(
                kind="io.l5d.k8s.daemonset",
                namespace="default",
                service="l5d",
                port="incoming",
                host_network=True,
            ),
            {"source": Source(L5D)},
            DaemonSetTransformer,
        ),
        (
            "io.l5d.replace",
            model.ReplaceTransformer(kind="io.l5d.replace", path="/$/inet/127.1/1"),
            {},
            ReplaceTransformer,
        ),
        (
            "io.l5d.const",
            model.ConstTransformer(kind="io.l5d.const", path="/$/inet/127.1/1"),
            {},
            ConstTransformer,
        ),
    ]
    for kind, cfg, wiring, cls in cases:
        spec = registry.lookup("transformer", kind)
        assert spec is not None, kind
        t = registry.load_factory(spec)(cfg, **wiring)
        assert isinstance(t, cls) and t.kind == kind
    assert LocalNodeTransformer(host_network=True, env={"NODE_NAME": "n1"}).prefix == p(
        "/%/io.l5d.k8s.localnode/n1"
    )
