"""The binder over the real delegation (``dtab.bind``): steady state, invalidation, and attempts to
reach a raw address through a per-request dtab on a non-loopback server."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from dtab import NEG, Dtab, Leaf, Path
from dtab.bind import PENDING, BoundName, DepthExceeded
from hostproxy.routing.binder import Binder
from hostproxy.routing.context import (
    AddressOverridePolicy,
    downstream_headers,
    raw_address_ids,
    read_inbound,
)
from hostproxy.routing.identifiers import HeaderTokenIdentifier, Identified

P = Path.read
FS = P("/#/io.l5d.fs")
BASE = "/svc=>/#/io.l5d.fs"
PUBLIC = AddressOverridePolicy.for_server("0.0.0.0", allow_address_overrides=False)
LOOPBACK = AddressOverridePolicy.for_server("127.0.0.1", allow_address_overrides=False)
OPTED_IN = AddressOverridePolicy.for_server("0.0.0.0", allow_address_overrides=True)


@dataclass
class FsNamer:
    """An fs-like namer as a plain callable: known names bind, others are Neg."""

    known: set[bytes] = field(default_factory=lambda: {b"web", b"web-v2", b"users"})
    pending: set[bytes] = field(default_factory=set)
    calls: int = 0

    def __call__(self, residual: Path) -> Any:
        self.calls += 1
        if not residual:
            return NEG
        name = residual[0]
        if name in self.pending:
            return PENDING
        if name not in self.known:
            return NEG
        return Leaf(BoundName(FS + residual.take(1), residual.drop(1)))


def binder(base: str = BASE, namer: FsNamer | None = None) -> tuple[Binder, FsNamer]:
    namer = namer or FsNamer()
    return Binder(Dtab.read(base), [(FS, namer)]), namer


def ids(tree: Any) -> set[str]:
    from hostproxy.routing.context import bound_leaves

    return {str(b.id) for b in bound_leaves(tree)}


def test_real_bind_steady_state_and_invalidation() -> None:
    b, namer = binder()
    o = b.bind(P("/svc/web/extra"))
    assert o.ok and ids(o.tree) == {"/#/io.l5d.fs/web"}
    for _ in range(500):
        assert b.bind(P("/svc/web/extra")).cached
    assert namer.calls == 1
    assert b.invalidate(FS, P("/web")) == 1
    b.bind(P("/svc/web/extra"))
    assert namer.calls == 2


def test_real_bind_pending_then_ready() -> None:
    namer = FsNamer(pending={b"web"})
    b, _ = binder(namer=namer)
    assert b.bind(P("/svc/web")).pending
    namer.pending.clear()
    b.invalidate(FS, P("/web"))
    assert b.bind(P("/svc/web")).ok


def test_real_bind_errors_are_reported() -> None:
    b, _ = binder("/svc/a=>/svc/b;/svc/b=>/svc/a")
    o = b.bind(P("/svc/a"))
    assert isinstance(o.error, DepthExceeded)


SSRF = "169.254.169.254"


@pytest.mark.parametrize(
    "override",
    [
        f"/svc/web=>/$/inet/{SSRF}/80",
        f"/svc/*=>/$/inet/{SSRF}/80",
        f"/*/web=>/$/inet/{SSRF}/80",
        f"/svc=>/$/inet/{SSRF}/80",
        "/svc/web=>/$/inet/22",  # localhost, port 22
        f"/svc/web=>/$/fixedinet/{SSRF}/80",
        f"/svc/web=>/$/io.buoyant.rinet/80/{SSRF}",
        f"/svc/web=>/#/io.l5d.fs/web & /$/inet/{SSRF}/80",
        f"/svc/web=>0.99*/#/io.l5d.fs/web & 0.01*/$/inet/{SSRF}/80",
        f"/svc/web=>/#/io.l5d.fs/missing | /$/inet/{SSRF}/80",
        f"/svc/web=>~ | /$/inet/{SSRF}/80",
        f"/#/io.l5d.fs/web=>/$/inet/{SSRF}/80",
        f"/svc/web=>/\\x24/inet/{SSRF}/80",
        f"/inet=>/$/inet;/svc/web=>/$/io.buoyant.hostportPfx/inet/{SSRF}:80",
        f"/inet=>/$/inet;/svc/web=>/$/io.buoyant.porthostPfx/p/{SSRF}:80;/p=>/$/io.buoyant.rinet",
        "/x=>/$/inet;/svc/web=>/$/io.buoyant.http.domainToPathPfx/x/80.169.254.169",
        f"/a=>/b;/b=>/c;/c=>/$/inet/{SSRF};/svc/web=>/a/80",
    ],
)
def test_raw_address_overrides_refused_on_public_server(override: str) -> None:
    b, _ = binder()
    local = Dtab.read(override)
    o = b.bind(P("/svc/web"), local, policy=PUBLIC)
    assert o.refused is not None, (override, o)
    assert not o.ok
    assert "Set allowAddressOverrides: true" in str(o.refused)
    # where overrides are trusted, the same request binds to the raw address
    for policy in (LOOPBACK, OPTED_IN):
        ok = b.bind(P("/svc/web"), local, policy=policy)
        assert ok.ok and raw_address_ids(ok.tree), (override, policy)


def test_raw_override_through_ctx_header_is_refused_too() -> None:
    b, _ = binder()
    inbound = read_inbound(
        [(b"host", b"web"), (b"l5d-ctx-dtab", f"/svc/web=>/$/inet/{SSRF}/80".encode())],
        clear_context=False,
        cache=b.parse_cache,
    )
    assert b.bind(P("/svc/web"), inbound.local_dtab, policy=PUBLIC).refused is not None


@pytest.mark.parametrize(
    "override",
    [
        "/svc/web=>/#/io.l5d.fs/web-v2",
        "/svc/web=>0.9*/#/io.l5d.fs/web & 0.1*/#/io.l5d.fs/web-v2",
        "/svc/*=>/#/io.l5d.fs/users",
        # an unused alternate: traffic goes to the first, which binds
        f"/svc/web=>/#/io.l5d.fs/web | /$/inet/{SSRF}/80",
    ],
)
def test_namer_overrides_work_everywhere(override: str) -> None:
    b, _ = binder()
    o = b.bind(P("/svc/web"), Dtab.read(override), policy=PUBLIC)
    assert o.ok and not raw_address_ids(o.tree)


def test_base_dtab_raw_addresses_survive_overrides() -> None:
    b, _ = binder(BASE + ";/svc/legacy=>/$/inet/10.0.0.9/8080")
    o = b.bind(P("/svc/legacy"), Dtab.read("/svc/web=>/#/io.l5d.fs/web-v2"), policy=PUBLIC)
    assert o.ok and ids(o.tree) == {"/$/inet/10.0.0.9/8080"}
    # but not a different raw address for it
    o2 = b.bind(P("/svc/legacy"), Dtab.read("/svc/legacy=>/$/inet/10.0.0.9/22"), policy=PUBLIC)
    assert o2.refused is not None and o2.refused.ids == ("/$/inet/10.0.0.9/22",)


def test_clear_context_removes_the_override_before_binding() -> None:
    b, _ = binder()
    inbound = read_inbound(
        [(b"host", b"web"), (b"l5d-dtab", f"/svc/web=>/$/inet/{SSRF}/80".encode())], clear_context=True
    )
    o = b.bind(P("/svc/web"), inbound.local_dtab, policy=PUBLIC)
    assert o.ok and ids(o.tree) == {"/#/io.l5d.fs/web"}


@dataclass
class Req:
    method: str
    target: str
    headers: list[tuple[bytes, bytes]]


def test_request_pipeline_end_to_end() -> None:
    """Headers in, name, binding, headers out: the pieces as the server wires them."""
    b, _ = binder()
    req = Req("GET", "/x", [(b"host", b"web"), (b"l5d-dtab", b"/svc/web=>/#/io.l5d.fs/web-v2")])
    inbound = read_inbound(req.headers, clear_context=False, cache=b.parse_cache)
    req.headers = inbound.headers
    ident = HeaderTokenIdentifier().identify(req)
    assert isinstance(ident, Identified)
    o = b.bind(ident.path, inbound.local_dtab, policy=PUBLIC)
    assert o.ok
    (leaf,) = [t for t in [o.tree] if isinstance(t, Leaf)]
    edits = downstream_headers(
        service=ident.path,
        client=leaf.value.id,
        residual=leaf.value.residual,
        local_dtab=inbound.local_dtab,
        headers=inbound.headers,
        rng=random.Random(0),
    )
    out = dict(edits.apply(inbound.headers))
    assert out[b"l5d-dst-service"] == b"/svc/web"
    assert out[b"l5d-dst-client"] == b"/#/io.l5d.fs/web-v2"
    assert out[b"l5d-ctx-dtab"] == b"/svc/web=>/#/io.l5d.fs/web-v2"
    assert b"l5d-dtab" not in out and b"l5d-dst-residual" not in out
