"""Binding (spec §5) and delegation explanations (spec §6)."""

from __future__ import annotations

from typing import Any

import pytest

from dtab import (
    EMPTY,
    FAIL,
    NEG,
    PENDING,
    AddrBound,
    Address,
    AddrFailed,
    BindTooLarge,
    BoundName,
    DelegationCycle,
    DepthExceeded,
    Leaf,
    NamerError,
    Path,
    UnknownNamer,
    bind,
    delegate,
    parse_dtab,
    parse_tree,
    show_tree,
)
from dtab.delegate import AltNode, ExceptionNode


def P(text: str) -> Path:
    return Path.read(text)


def leaf(ident: str, residual: str = "/", *addrs: str) -> Any:
    return Leaf(
        BoundName(
            P(ident),
            P(residual),
            AddrBound(tuple(Address(a.split(":")[0], int(a.split(":")[1])) for a in addrs)),
        )
    )


def table_namer(prefix: str, answers: dict[str, Any]) -> tuple[Path, Any]:
    """A namer answering exact residuals; everything else is Neg."""
    pfx = P(prefix)

    def lookup(residual: Path) -> Any:
        a = answers.get(str(residual), NEG)
        if isinstance(a, Exception):
            raise a
        return a

    return pfx, lookup


def test_inet_binds_with_residual() -> None:
    r = bind(parse_dtab("/svc => /$/inet/127.1/8080"), P("/svc/x/y"))
    (b,) = [r.tree.value]
    assert b.id == P("/$/inet/127.1/8080") and b.residual == P("/x/y")
    assert b.addr == AddrBound((Address("127.1", 8080),))
    assert b.weight is None


def test_inet_port_only_and_host_port_preference() -> None:
    assert bind(parse_dtab(""), P("/$/inet/1234/5678")).tree.value.addr == AddrBound((Address("1234", 5678),))
    assert bind(parse_dtab(""), P("/$/fixedinet/80/rest")).tree.value.residual == P("/rest")


def test_system_atoms_and_unknown_namer() -> None:
    assert bind(parse_dtab(""), P("/$/fail/x")).tree == FAIL
    assert bind(parse_dtab(""), P("/$/nil")).tree == EMPTY
    assert bind(parse_dtab(""), P("/$")).tree == NEG
    with pytest.raises(UnknownNamer) as info:
        bind(parse_dtab("/s => /$/inet/host/http"), P("/s"))
    assert info.value.upstream_message == "Unknown namer: inet for path: /$/inet/host/http"
    assert str(info.value).startswith("unknown namer 'inet' for path /$/inet/host/http:")
    with pytest.raises(UnknownNamer) as info:
        bind(parse_dtab(""), P("/$/inet"), interpreter="finagle")
    assert info.value.upstream_class == "ClassNotFoundException" and info.value.upstream_message == "inet"


def test_depth_accounting() -> None:
    d = parse_dtab("/a=>/b;/b=>/c;/c=>/$/inet/1.2.3.4/80")
    with pytest.raises(DepthExceeded) as info:
        bind(d, P("/a"), max_depth=3)
    assert info.value.upstream_message == "Max recursion level: 3 reached in Namer lookup"
    assert str(info.value) == (
        "binding /a exceeded the maximum depth of 3 lookups (last lookup: /$/inet/1.2.3.4/80): "
        "check the dtab for a rewrite cycle, or raise the depth limit"
    )
    assert bind(d, P("/a"), max_depth=4).tree.value.id == P("/$/inet/1.2.3.4/80")
    with pytest.raises(DepthExceeded):
        bind(parse_dtab("/a => /b; /b => /a"), P("/a"))


def fan_out(n: int) -> str:
    """A dtab whose every rule doubles the lookups: 2**n leaves from a few hundred bytes."""
    return "".join(f"/p{i}=>1*/p{i + 1}&1*/p{i + 1};" for i in range(n)) + f"/p{n}=>/$/inet/127.0.0.1/1"


def test_a_binding_that_fans_out_past_the_lookup_budget_fails_whole() -> None:
    """A dtab whose rules each fan out (a per-request l5d-dtab of ~300 bytes) would take 2**n lookups:
    past ``MAX_LOOKUPS`` it fails with ``BindTooLarge`` — a union never keeps the branches bound before
    the budget ran out (that would route part of the traffic silently)."""
    assert bind(parse_dtab(fan_out(8)), P("/p0")).tree is not None  # 511 lookups: fine
    with pytest.raises(BindTooLarge) as info:
        bind(parse_dtab(fan_out(16)), P("/p0"))
    assert str(info.value) == (
        "binding /p0 needs more than 1000 lookups: the dtab's alternatives or unions fan out at every "
        "step; simplify the dtab (or the l5d-dtab override)"
    )
    # A good branch beside the fan-out: still the whole binding fails, not a union of the good part.
    d = parse_dtab(fan_out(16) + ";/svc=>1*/$/inet/127.0.0.1/2&1*/p0")
    with pytest.raises(BindTooLarge):
        bind(d, P("/svc"))


def test_namers_in_preference_order_and_consulted() -> None:
    n1 = table_namer("/#/fs", {"/other": leaf("/#/fs/other")})
    n2 = table_namer("/#/fs", {"/web": leaf("/#/fs/web", "/", "10.0.0.1:80")})
    r = bind(parse_dtab("/svc => /#/fs"), P("/svc/web"), [n1, n2])
    assert r.tree.value.id == P("/#/fs/web")
    assert r.consulted == frozenset({(P("/#/fs"), P("/web"))})


def test_single_neg_dentry_does_not_shadow_namers_but_two_do() -> None:
    n = table_namer("/#/fs", {"/web": leaf("/#/fs/web")})
    assert bind(parse_dtab("/#/fs => ~"), P("/#/fs/web"), [n]).tree == leaf("/#/fs/web")
    assert bind(parse_dtab("/#/fs => ~; /#/fs => ~"), P("/#/fs/web"), [n]).tree == NEG


def test_namer_exception_is_wrapped() -> None:
    n = table_namer("/#/err", {"/x": RuntimeError("backend down")})
    with pytest.raises(NamerError) as info:
        bind(parse_dtab("/a => /#/err/x | /$/inet/1/2"), P("/a"), [n])
    assert info.value.upstream_message == "backend down"
    assert str(info.value) == "backend down (namer /#/err, looking up /#/err/x)"


def test_alt_and_union_semantics() -> None:
    d = parse_dtab("/a => ~ | $ | /$/inet/1/2; /b => /$/fail | /$/inet/1/2; /c => ! & /x & /$/inet/1/2")
    assert bind(d, P("/a")).tree == EMPTY
    assert bind(d, P("/b")).tree == FAIL
    c = bind(d, P("/c")).tree
    assert isinstance(c, Leaf) and c.value.id == P("/$/inet/1/2")
    assert bind(parse_dtab("/a => ! & !"), P("/a")).tree == NEG  # all-bad union is Neg, never Fail


def test_union_weight_carried_to_leaves() -> None:
    d = parse_dtab("/a => 0.3*/b & 0.7*/$/inet/10.0.0.2/80; /b => /$/inet/10.0.0.1/80")
    t = bind(d, P("/a")).tree
    assert show_tree(t) == "0.30*/$/inet/10.0.0.1/80 & 0.70*/$/inet/10.0.0.2/80"
    first = t.branches[0].tree.value
    assert first.weight == 0.3
    assert first.addr.meta["namer_nametree_weight"] == 0.3


def test_local_dtab_overrides_and_falls_back() -> None:
    base = parse_dtab("/svc => /$/inet/10.0.0.1/80")
    assert bind(base + parse_dtab("/svc => /$/inet/10.0.0.9/80"), P("/svc")).tree.value.id == P(
        "/$/inet/10.0.0.9/80"
    )
    assert bind(base + parse_dtab("/svc => /nowhere"), P("/svc")).tree.value.id == P("/$/inet/10.0.0.1/80")
    assert bind(base + parse_dtab("/svc => !"), P("/svc")).tree == FAIL


def test_pending_semantics() -> None:
    n = table_namer(
        "/#/n",
        {"/p": PENDING, "/ok": leaf("/#/n/ok"), "/err": RuntimeError("boom"), "/neg": NEG},
    )
    d = parse_dtab("/a => /#/n/p | /#/n/ok; /b => /#/n/neg | /#/n/ok | /#/n/p; /c => /#/n/p & /#/n/ok")
    d += parse_dtab("/d => /#/n/p & /#/n/p; /e => /#/n/p & /#/n/err")
    assert bind(d, P("/a"), [n]).tree is PENDING
    assert bind(d, P("/b"), [n]).tree == leaf("/#/n/ok")
    assert bind(d, P("/c"), [n]).tree.value.id == P("/#/n/ok")
    r = bind(d, P("/d"), [n])
    assert r.pending and r.consulted == frozenset({(P("/#/n"), P("/p"))})
    with pytest.raises(NamerError, match="boom"):
        bind(d, P("/e"), [n])


def test_system_override_is_tried_first() -> None:
    def system(p: Path) -> Any:
        if p.startswith(P("/$/inet")) and len(p) >= 4 and p[2] == b"svc.local":
            return Leaf(BoundName(p.take(4), p.drop(4), AddrFailed("no such host")))
        return None

    r = bind(parse_dtab(""), P("/$/inet/svc.local/80/x"), system=system)
    assert r.tree.value.addr == AddrFailed("no such host")
    assert bind(parse_dtab(""), P("/$/inet/1.2.3.4/80"), system=system).tree.value.addr == AddrBound(
        (Address("1.2.3.4", 80),)
    )


@pytest.mark.parametrize(
    ("path", "rewritten"),
    [
        ("/$/io.buoyant.hostportPfx/pfx/web:8080/x", "/pfx/web/8080/x"),
        ("/$/io.buoyant.porthostPfx/pfx/web:http/x", "/pfx/http/web/x"),
        ("/$/io.buoyant.http.anyMethod/GET/x", "/x"),
        ("/$/io.buoyant.http.anyMethodPfx/pfx/PUT/x", "/pfx/x"),
        ("/$/io.buoyant.http.anyHost/a.b:80/x", "/x"),
        ("/$/io.buoyant.http.anyHostPfx/pfx/a.b/x", "/pfx/x"),
        ("/$/io.buoyant.http.subdomainOf/b.c/a.b.c:80/x", "/a/x"),
        ("/$/io.buoyant.http.subdomainOfPfx/b.c/pfx/a.b.c/x", "/pfx/a/x"),
        ("/$/io.buoyant.http.domainToPath/foo.buoyant.io:8080/x", "/io:8080/buoyant/foo/x"),
        ("/$/io.buoyant.http.domainToPathPfx/pfx/a.b/x", "/pfx/b/a/x"),
        ("/$/io.buoyant.hostportPfx/pfx/web:80:90/x", None),
        ("/$/io.buoyant.hostportPfx/pfx/web:HTTP/x", None),
        ("/$/io.buoyant.http.anyMethod/get/x", None),
        ("/$/io.buoyant.http.subdomainOf/a.b/a.b/x", None),
    ],
)
def test_rewriting_namers(path: str, rewritten: str | None) -> None:
    # An echo namer under /#/echo shows the path the rewriting namer produced.
    echo = (P("/#/echo"), lambda residual: Leaf(BoundName(P("/#/echo"), residual)))
    d = parse_dtab("/pfx => /#/echo/pfx; /x => /#/echo/x; /a => /#/echo/a; /io:8080 => /#/echo/io:8080")
    d += parse_dtab("/b => /#/echo/b")
    t = bind(d, P(path), [echo]).tree
    if rewritten is None:
        assert t == NEG
    else:
        assert t.value.residual == P(rewritten)


def test_rinet() -> None:
    t = bind(parse_dtab(""), P("/$/io.buoyant.rinet/8080/web.local/x")).tree
    assert t.value.id == P("/$/io.buoyant.rinet/8080/web.local") and t.value.residual == P("/x")
    assert t.value.addr == AddrBound((Address("web.local", 8080),))
    assert bind(parse_dtab(""), P("/$/io.buoyant.rinet/80")).tree == NEG


def test_rewriting_namer_empty_label_is_a_namer_error() -> None:
    with pytest.raises(NamerError, match="requirement failed"):
        bind(parse_dtab(""), P("/$/io.buoyant.http.domainToPath/a..b"))


# -- delegation -------------------------------------------------------------------------------------


SPEC_EXAMPLE = (
    "/beh=>/#/error; /bah/humbug=>/$/inet/127.1/8080; /foo=>/bah | /beh | /$/fail; /foo=>/bar; /boo=>/foo"
)


def test_delegation_json_with_addr() -> None:
    err = table_namer("/#/error", {"/humbug": RuntimeError("error naming /#/error/humbug")})
    js = delegate(parse_dtab(SPEC_EXAMPLE), P("/boo/humbug"), [err]).to_json()
    leaf_node = js["delegate"]["alt"][1]["delegate"]
    assert leaf_node == {
        "type": "leaf",
        "path": "/$/inet/127.1/8080",
        "dentry": {"prefix": "/bah/humbug", "dst": "/$/inet/127.1/8080"},
        "bound": {
            "addr": {"type": "bound", "addrs": [{"ip": "127.0.0.1", "port": 8080, "meta": {}}], "meta": {}},
            "id": "/$/inet/127.1/8080",
            "path": "/",
        },
    }
    assert list(leaf_node) == ["type", "path", "dentry", "bound"]
    assert list(leaf_node["bound"]) == ["addr", "id", "path"]
    assert js["delegate"]["alt"][2]["delegate"]["message"] == "error naming /#/error/humbug"
    assert js["delegate"]["alt"][3] == {
        "type": "fail",
        "path": "/$/fail/humbug",
        "dentry": {"prefix": "/foo", "dst": "/bah | /beh | /$/fail"},
    }


def test_delegation_cycle() -> None:
    with pytest.raises(DelegationCycle) as info:
        delegate(parse_dtab("/a => /b; /b => /a"), P("/a"))
    assert info.value.upstream_message == "Max recursion level reached."
    # Inside an alternative the failure is local to the branch.
    node = delegate(parse_dtab("/a => /b | /$/inet/1/2; /b => /c; /c => /b"), P("/a"))
    assert isinstance(node, AltNode)
    assert isinstance(node.children[0], ExceptionNode)
    assert node.children[0].to_json()["message"] == "Max recursion level reached."


def test_delegation_pending_and_explicit_fail_path() -> None:
    n = table_namer("/#/n", {"/p": PENDING})
    assert delegate(parse_dtab("/a => /#/n/p"), P("/a"), [n]) is PENDING
    js = delegate(parse_dtab("/a => !"), P("/a")).to_json()
    assert js == {
        "type": "delegate",
        "path": "/a",
        "delegate": {"type": "fail", "path": "!", "dentry": {"prefix": "/a", "dst": "!"}},
    }


def test_delegation_tree_namer_answer_is_explained_further() -> None:
    n = table_namer("/#/n", {"/alias": parse_tree("/c | /d")})
    d = parse_dtab("/a => /#/n/alias; /d => /$/inet/1/2")
    js = delegate(d, P("/a"), [n]).to_json()
    inner = js["delegate"]
    assert inner["type"] == "alt" and inner["path"] == "/#/n/alias"
    assert [c["type"] for c in inner["alt"]] == ["neg", "delegate"]


def test_deep_nesting_in_a_cycle_is_a_depth_error_not_a_crash() -> None:
    nested = "/a"
    for _ in range(90):
        nested = f"(/nowhere | {nested})"
    d = parse_dtab(f"/a => {nested}")
    with pytest.raises(DepthExceeded):
        bind(d, P("/a"), max_depth=300)
    with pytest.raises(ValueError, match="max_depth must be an integer from 0 to 300"):
        bind(d, P("/a"), max_depth=10_000)
