"""io.l5d.rewrite: pattern matching, substitution, config errors, and binding through dtab.bind."""

from __future__ import annotations

import pytest
import trio

from dtab import Dtab, Path
from dtab.bind import BoundName, bind
from dtab.tree import NEG, Leaf
from namers.rewrite import KIND, PathPattern, RewriteConfigError, RewriteNamer, from_config


def p(s: str) -> Path:
    return Path.read(s)


def test_whole_segment_captures_reorder():
    n = RewriteNamer("/{port}/{ns}/{svc}", "/k8s/{ns}/{port}/{svc}")
    assert n.lookup(p("/http/prod/web")) == Leaf(p("/k8s/prod/http/web"))
    # labels beyond the pattern follow the rewritten path
    assert n.lookup(p("/http/prod/web/v1/x")) == Leaf(p("/k8s/prod/http/web/v1/x"))
    # shorter than the pattern: no match
    assert n.lookup(p("/http/prod")) is NEG
    assert n.lookup(Path.EMPTY) is NEG
    assert n.statistics()["matches"] == 2 and n.statistics()["lookups"] == 4


def test_literals_and_wildcards():
    n = RewriteNamer("/svc/*/{name}", "/#/io.l5d.fs/{name}")
    assert n.lookup(p("/svc/anything/users")) == Leaf(p("/#/io.l5d.fs/users"))
    assert n.lookup(p("/other/anything/users")) is NEG


def test_captures_inside_a_label_are_greedy():
    pat = PathPattern("/{svc}.{ns}")
    assert pat.match(p("/web.prod")) == {"svc": "web", "ns": "prod"}
    assert pat.match(p("/a.b.c")) == {"svc": "a.b", "ns": "c"}
    assert pat.match(p("/nodot")) is None
    assert pat.match(p("/.x")) is None  # captures are never empty
    n = RewriteNamer("/{svc}.{ns}", "/k8s/{ns}/http/{svc}")
    assert n.lookup(p("/web.prod/rest")) == Leaf(p("/k8s/prod/http/web/rest"))


def test_escaped_labels_keep_their_bytes():
    n = RewriteNamer("/{a}/{b}", "/x/{b}/{a}")
    out = n.lookup(Path((b"a b", b"c/d")))
    assert out == Leaf(Path((b"x", b"c/d", b"a b")))
    # a capture that would split an escape cannot form a path: no match rather than an error
    split = RewriteNamer("/{a}x{b}", "/{a}/{b}")
    assert split.lookup(Path((b"\x01",))) is NEG


def test_literal_segments_may_be_escaped():
    n = RewriteNamer("/\\x2a/{x}", "/star/{x}")  # a literal '*' label, not the wildcard
    assert n.lookup(Path((b"*", b"y"))) == Leaf(p("/star/y"))
    assert n.lookup(p("/z/y")) is NEG


@pytest.mark.parametrize(
    ("pattern", "name", "message"),
    [
        (
            "/{a}",
            "/x/{b}",
            "namers[].name '/x/{b}' uses {b}, which the pattern does not capture (it captures {a}); "
            "capture it in namers[].pattern or remove it",
        ),
        ("{a}", "/x", "namers[].pattern '{a}' must start with '/', e.g. '/{ns}/{svc}'"),
        ("/a//b", "/x", "namers[].pattern '/a//b' has an empty segment ('//')"),
        ("/{a}", "/x/", "namers[].name '/x/' has an empty segment ('//' or a trailing '/')"),
        ("/{a}/{a}", "/x", "namers[].pattern '/{a}/{a}' captures {a} twice; give each capture its own name"),
        ("/{a", "/x", "namers[].pattern: segment '{a' has an unbalanced '{' or '}'"),
        ("/{}", "/x", "namers[].pattern: {} is not a variable name; use letters, digits, '_', '.', '-'"),
    ],
)
def test_config_errors(pattern: str, name: str, message: str):
    with pytest.raises(RewriteConfigError) as e:
        RewriteNamer(pattern, name)
    assert str(e.value) == message


def test_name_must_form_a_path():
    with pytest.raises(RewriteConfigError, match=r"^namers\[\]\.name '/a b/\{x\}' does not form a path \("):
        RewriteNamer("/{x}", "/a b/{x}")


def test_from_config_and_registry():
    n = from_config(
        {"kind": KIND, "prefix": "/pns", "pattern": "/{port}/{ns}/{svc}", "name": "/k8s/{ns}/{port}/{svc}"}
    )
    assert n.bound_prefix == p("/#/pns")
    assert n.state_json() == {
        "kind": KIND,
        "prefix": "/#/pns",
        "names": {},
        "pattern": "/{port}/{ns}/{svc}",
        "name": "/k8s/{ns}/{port}/{svc}",
    }
    from hostproxy.config import model, registry

    cfg = model.RewriteNamer(kind=KIND, pattern="/{a}", name="/b/{a}")
    assert from_config(cfg).lookup(p("/z")) == Leaf(p("/b/z"))
    spec = registry.lookup("namer", KIND)
    assert spec is not None and registry.load_factory(spec) is from_config
    with pytest.raises(RewriteConfigError, match=r"^namers\[\]\.name is required for kind io\.l5d\.rewrite"):
        from_config({"pattern": "/{a}"})


def test_binding_through_the_dtab():
    """The rewritten path is looked up again from the top of the dtab, as in Linkerd's servicemesh config."""
    rw = RewriteNamer("/{port}/{ns}/{svc}", "/k8s/{ns}/{port}/{svc}", prefix="/portNsSvcToK8s")
    dtab = Dtab.read(
        "/k8s => /$/inet/127.0.0.1/8080 ;"
        "/k8s/prod => /$/inet/127.0.0.1/9090 ;"
        "/portNsSvc => /#/portNsSvcToK8s ;"
        "/svc => /portNsSvc/http/prod | /$/inet/127.0.0.1/1"
    )
    r = bind(dtab, p("/svc/web"), [(rw.bound_prefix, rw.lookup)])
    assert r.tree == Leaf(BoundName(p("/$/inet/127.0.0.1/9090"), p("/http/web")))
    assert (rw.bound_prefix, p("/http/prod/web")) in r.consulted
    # no match -> Neg -> the dtab alternate applies
    r2 = bind(dtab, p("/svc"), [(rw.bound_prefix, rw.lookup)])
    assert r2.tree == Leaf(BoundName(p("/$/inet/127.0.0.1/1"), Path.EMPTY))


async def test_run_starts_and_stops():
    n = RewriteNamer("/{a}", "/b/{a}")
    async with trio.open_nursery() as nursery:
        await nursery.start(n.run)
        nursery.cancel_scope.cancel()
