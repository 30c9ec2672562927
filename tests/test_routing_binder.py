"""The binding cache, its invalidation and bounds, and the client cache.

The cache is tested against a small stand-in delegation (``fake_bind``) with the same contract as
``dtab.bind.bind`` (``.tree``, ``.consulted``, a pending sentinel, ``BindError``), so that what is counted
(namer lookups) is exactly what the cache saved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from dtab import NEG, Alt, Dtab, Leaf, Path, Union, Weighted
from hostproxy.routing.binder import (
    Binder,
    BindingCacheConfig,
    BindingCacheConfigError,
    BoundedLru,
    ClientCache,
)
from hostproxy.routing.context import AddressOverridePolicy, AddressOverrideRefused

P = Path.read
FS = P("/#/io.l5d.fs")


class FakePending:
    def __repr__(self) -> str:
        return "PENDING"


PENDING = FakePending()


class FakeBindError(Exception):
    pass


@dataclass(frozen=True)
class BN:
    id: Path
    residual: Path = Path.EMPTY


@dataclass
class FakeResult:
    tree: Any
    consulted: set[tuple[Path, Path]]


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Namer:
    """A namer as a plain callable: ``residual -> tree``, counting lookups per residual."""

    answers: dict[Path, Any] = field(default_factory=dict)
    default: Callable[[Path], Any] | None = None
    calls: dict[Path, int] = field(default_factory=dict)

    def __call__(self, residual: Path) -> Any:
        self.calls[residual] = self.calls.get(residual, 0) + 1
        key = residual.take(1)
        if key in self.answers:
            return self.answers[key]
        if self.default is not None:
            return self.default(residual)
        return Leaf(BN(FS + key, residual.drop(1)))

    @property
    def total(self) -> int:
        return sum(self.calls.values())


def fake_bind(dtab: Dtab, path: Path, namers: dict[Path, Any], *, max_depth: int, system: Any) -> FakeResult:
    consulted: set[tuple[Path, Path]] = set()

    def lookup(p: Path) -> Any:
        t = dtab.lookup(p)
        if t != NEG:
            return t
        for prefix, fn in namers.items():
            if p.startswith(prefix):
                res = p.drop(len(prefix))
                consulted.add((prefix, res))
                return fn(res)
        if p.labels[:2] == (b"$", b"inet") and len(p) >= 4:
            return Leaf(BN(p.take(4), p.drop(4)))
        return NEG

    def go(t: Any, depth: int) -> Any:
        if depth > max_depth:
            raise FakeBindError(f"Max recursion level: {max_depth} reached in Namer lookup")
        if t is PENDING:
            return PENDING
        if isinstance(t, Leaf):
            return go(lookup(t.value), depth + 1) if isinstance(t.value, Path) else t
        if isinstance(t, Alt):
            for c in t.trees:
                r = go(c, depth)
                if r != NEG:
                    return r
            return NEG
        if isinstance(t, Union):
            bs = [Weighted(b.weight, go(b.tree, depth)) for b in t.branches]
            if any(b.tree is PENDING for b in bs):
                return PENDING
            bs = [b for b in bs if b.tree != NEG]
            return NEG if not bs else bs[0].tree if len(bs) == 1 else Union(tuple(bs))
        return t

    return FakeResult(go(Leaf(path), 0), consulted)


def make_binder(
    base: str = "/svc=>/#/io.l5d.fs", namer: Namer | None = None, **kw: Any
) -> tuple[Binder, Namer]:
    namer = namer or Namer()
    b = Binder(
        Dtab.read(base),
        {FS: namer},
        bind_fn=fake_bind,
        is_pending=lambda t: t is PENDING,
        bind_errors=(FakeBindError,),
        **kw,
    )
    return b, namer


def leaf_ids(tree: Any) -> set[str]:
    if isinstance(tree, Leaf):
        return {str(tree.value.id)}
    if isinstance(tree, Union):
        return set().union(*(leaf_ids(b.tree) for b in tree.branches))
    return set()


# -- steady state -----------------------------------------------------------------------------------


def test_steady_state_does_no_delegation() -> None:
    b, namer = make_binder()
    first = b.bind(P("/svc/web"))
    assert first.ok and not first.cached
    assert leaf_ids(first.tree) == {"/#/io.l5d.fs/web"}
    for _ in range(1000):
        o = b.bind(P("/svc/web"))
        assert o.cached and o.tree == first.tree
    assert namer.total == 1
    assert b.delegations == 1
    assert b.hits == 1000


def test_local_dtab_is_part_of_the_key() -> None:
    b, namer = make_binder()
    v2 = b.parse_local_dtab([(b"l5d-dtab", b"/svc/web=>/#/io.l5d.fs/web-v2")])
    assert leaf_ids(b.bind(P("/svc/web"), v2).tree) == {"/#/io.l5d.fs/web-v2"}
    assert leaf_ids(b.bind(P("/svc/web")).tree) == {"/#/io.l5d.fs/web"}
    # the same header text again: parsed once, bound once
    again = b.parse_local_dtab([(b"l5d-dtab", b"/svc/web=>/#/io.l5d.fs/web-v2")])
    assert again is v2
    assert b.bind(P("/svc/web"), again).cached
    assert namer.total == 2
    assert b.parse_cache.statistics()["hits"] == 1


# -- invalidation -----------------------------------------------------------------------------------


def test_invalidate_drops_exactly_the_entries_that_consulted_the_name() -> None:
    b, namer = make_binder()
    b.bind(P("/svc/web"))
    b.bind(P("/svc/users/v1"))
    b.bind(P("/svc/users/v2"))
    assert namer.total == 3
    assert b.invalidate(FS, P("/web")) == 1
    b.bind(P("/svc/web"))
    b.bind(P("/svc/users/v1"))
    b.bind(P("/svc/users/v2"))
    assert namer.calls == {P("/web"): 2, P("/users/v1"): 1, P("/users/v2"): 1}
    # a namer watching /users notifies /users: both residuals under it are dropped
    assert b.invalidate(FS, P("/users")) == 2
    assert b.invalidate(FS, P("/nothing")) == 0
    assert b.invalidate(P("/#/other"), P("/web")) == 0
    b.bind(P("/svc/web"))
    b.bind(P("/svc/users/v1"))
    assert namer.calls == {P("/web"): 2, P("/users/v1"): 2, P("/users/v2"): 1}


def test_invalidation_follows_the_new_answer() -> None:
    namer = Namer()
    b, _ = make_binder(namer=namer)
    assert leaf_ids(b.bind(P("/svc/web")).tree) == {"/#/io.l5d.fs/web"}
    namer.answers[P("/web")] = NEG
    assert b.bind(P("/svc/web")).tree != NEG  # still cached: no one said it changed
    b.invalidate(FS, P("/web"))
    assert b.bind(P("/svc/web")).tree == NEG


def test_invalidate_namer_drops_all_its_names() -> None:
    b, namer = make_binder()
    b.bind(P("/svc/a"))
    b.bind(P("/svc/b"))
    assert b.invalidate_namer(FS) == 2
    assert b.statistics()["indexed_names"] == 0


def test_set_base_dtab_drops_everything() -> None:
    b, namer = make_binder()
    b.bind(P("/svc/web"))
    v = b.version
    b.set_base_dtab(Dtab.read("/svc=>/#/io.l5d.fs/prod"))
    assert b.version == v + 1
    o = b.bind(P("/svc/web"))
    assert not o.cached
    assert leaf_ids(o.tree) == {"/#/io.l5d.fs/prod"}


# -- pending and change notification -------------------------------------------------------------------


def test_pending_reports_and_on_change_fires() -> None:
    namer = Namer(answers={P("/web"): PENDING})
    b, _ = make_binder(namer=namer)
    seen: list[int] = []
    unsubscribe = b.on_change(seen.append)
    o = b.bind(P("/svc/web"))
    assert o.pending and not o.ok and o.tree is None
    assert b.bind(P("/svc/web")).pending
    assert namer.total == 1  # pending is cached too: waiting requests do not re-delegate
    del namer.answers[P("/web")]
    b.invalidate(FS, P("/web"))
    assert seen == [o.version + 1]
    ready = b.bind(P("/svc/web"))
    assert ready.ok and ready.version == o.version + 1
    unsubscribe()
    b.invalidate(FS, P("/web"))
    assert seen == [o.version + 1]


def test_union_with_one_pending_branch_is_pending() -> None:
    namer = Namer(answers={P("/b"): PENDING})
    b, _ = make_binder("/svc/x=>/#/io.l5d.fs/a & /#/io.l5d.fs/b", namer=namer)
    assert b.bind(P("/svc/x")).pending


# -- errors ------------------------------------------------------------------------------------------


def test_errors_are_cached_until_any_change() -> None:
    b, namer = make_binder("/svc/loop=>/svc/loop", max_depth=5)
    calls = 0

    original = b._bind_fn

    def counting(*a: Any, **k: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(*a, **k)

    b._bind_fn = counting
    o = b.bind(P("/svc/loop"))
    assert isinstance(o.error, FakeBindError) and not o.ok
    assert str(o.error) == "Max recursion level: 5 reached in Namer lookup"
    assert b.bind(P("/svc/loop")).cached
    assert calls == 1
    b.invalidate(FS, P("/unrelated"))
    assert not b.bind(P("/svc/loop")).cached
    assert calls == 2


# -- bounds ------------------------------------------------------------------------------------------


def test_flood_of_distinct_hosts_stays_within_bounds() -> None:
    b, namer = make_binder(config=BindingCacheConfig(paths=50, trees=100))
    for i in range(100_000):
        o = b.bind(Path((b"svc", f"host-{i}.example:80".encode())))
        assert o.ok
    st = b.statistics()
    assert st["trees"]["size"] == 100
    assert st["indexed_names"] == 100
    assert st["trees"]["evicted_capacity"] == 100_000 - 100
    # recent names are still cached, old ones are gone
    assert b.bind(Path((b"svc", b"host-99999.example:80"))).cached
    assert not b.bind(Path((b"svc", b"host-0.example:80"))).cached


def test_flood_of_distinct_dtab_texts_stays_within_bounds() -> None:
    b, _ = make_binder(config=BindingCacheConfig(paths=50, trees=100))
    for i in range(5000):
        d = b.parse_local_dtab([(b"l5d-dtab", f"/svc/web=>/#/io.l5d.fs/v{i}".encode())])
        assert b.bind(P("/svc/web"), d).ok
    assert len(b.parse_cache) == 50
    assert b.statistics()["trees"]["size"] == 100


def test_idle_entries_expire() -> None:
    clock = Clock()
    b, namer = make_binder(clock=clock, config=BindingCacheConfig(idle_ttl_s=600))
    b.bind(P("/svc/a"))
    clock.now += 300
    b.bind(P("/svc/b"))
    clock.now += 301
    assert b.bind(P("/svc/b")).cached
    st = b.statistics()["trees"]
    assert st["size"] == 1 and st["evicted_idle"] == 1
    assert not b.bind(P("/svc/a")).cached
    assert b.statistics()["indexed_names"] == 2


# -- address-override policy through the binder ---------------------------------------------------------

PUBLIC = AddressOverridePolicy.for_server("0.0.0.0", allow_address_overrides=False)


@pytest.mark.parametrize(
    "override",
    [
        "/svc/web=>/$/inet/169.254.169.254/80",
        "/svc/*=>/$/inet/169.254.169.254/80",
        "/svc=>/$/inet/169.254.169.254/80",
        "/svc/web=>/#/io.l5d.fs/web & /$/inet/169.254.169.254/80",
        "/svc/web=>~ | /$/inet/169.254.169.254/80",
        "/evil=>/$/inet/169.254.169.254;/svc/web=>/evil/80",
    ],
)
def test_raw_address_override_refused_on_public_server(override: str) -> None:
    b, _ = make_binder()
    o = b.bind(P("/svc/web"), Dtab.read(override), policy=PUBLIC)
    assert isinstance(o.refused, AddressOverrideRefused) and not o.ok
    assert o.refused.ids == ("/$/inet/169.254.169.254/80",)
    # the same override is fine on loopback or with allowAddressOverrides
    assert b.bind(P("/svc/web"), Dtab.read(override), policy=AddressOverridePolicy.for_server(None, False)).ok
    assert b.bind(P("/svc/web"), Dtab.read(override), policy=AddressOverridePolicy.for_server("::", True)).ok


def test_namer_override_allowed_and_base_raw_address_kept() -> None:
    b, _ = make_binder("/svc=>/#/io.l5d.fs;/svc/legacy=>/$/inet/10.0.0.9/80")
    assert b.bind(P("/svc/web"), Dtab.read("/svc/web=>/#/io.l5d.fs/web-v2"), policy=PUBLIC).ok
    # the override adds a namer branch; the raw address comes from the base dtab
    o = b.bind(
        P("/svc/legacy"), Dtab.read("/svc/legacy=>/#/io.l5d.fs/new & /$/inet/10.0.0.9/80"), policy=PUBLIC
    )
    assert o.ok


def test_override_check_waits_for_pending_base() -> None:
    namer = Namer(answers={P("/web"): PENDING})
    b, _ = make_binder(namer=namer)
    o = b.bind(P("/svc/web"), Dtab.read("/svc/web=>/$/inet/10.0.0.1/80"), policy=PUBLIC)
    assert o.pending


# -- the generic caches --------------------------------------------------------------------------------


def test_bounded_lru_capacity_and_in_use() -> None:
    evicted: list[tuple[str, int, str]] = []
    lru: BoundedLru[str, int] = BoundedLru(2, on_evict=lambda k, v, r: evicted.append((k, v, r)))
    lru.put("a", 1)
    lru.put("b", 2)
    lru.acquire("a")
    lru.put("c", 3)  # "a" is in use, so "b" goes
    assert evicted == [("b", 2, "capacity")]
    lru.put("d", 4)  # "a" in use, "c" goes
    assert sorted(lru.keys()) == ["a", "d"]
    lru.acquire("d")
    lru.put("e", 5)  # all others in use: over the bound until released
    assert len(lru) == 3
    lru.release("a")  # "a" was just used: the least recently used idle entry, "e", goes
    assert sorted(lru.keys()) == ["a", "d"]
    assert evicted[-1] == ("e", 5, "capacity")
    with pytest.raises(RuntimeError, match=r"^release of 'zz', which is not in use$"):
        lru.release("zz")


def test_client_cache_closes_evicted_and_idle_clients_once() -> None:
    clock = Clock()
    closed: list[tuple[str, str]] = []
    cache: ClientCache[str, str] = ClientCache(
        2, idle_ttl_s=600, clock=clock, close=lambda k, c: closed.append((k, c))
    )
    made: list[str] = []

    def factory(k: str) -> str:
        made.append(k)
        return f"client:{k}"

    assert cache.get("a", factory) == "client:a"
    assert cache.get("a", factory) == "client:a"
    cache.get("b", factory)
    cache.get("c", factory)  # capacity: "a" is closed
    assert closed == [("a", "client:a")]
    held = cache.acquire("b", factory)
    assert held == "client:b"
    clock.now += 601
    assert cache.expire_idle() == 1  # "c" idle, "b" in use
    assert closed == [("a", "client:a"), ("c", "client:c")]
    cache.release("b")
    clock.now += 601
    cache.expire_idle()
    assert closed[-1] == ("b", "client:b")
    cache.get("d", factory)
    cache.close_all()
    assert closed[-1] == ("d", "client:d")
    assert made == ["a", "b", "c", "d"]
    assert cache.statistics()["created"] == 4 and cache.statistics()["closed"] == 4
    assert len(cache) == 0


def test_binding_cache_config_from_mapping() -> None:
    c = BindingCacheConfig.from_mapping(
        {"paths": 10, "trees": 20, "bounds": 30, "clients": 40, "idleTtlSecs": 5}
    )
    assert c == BindingCacheConfig(10, 20, 30, 40, 5)
    assert BindingCacheConfig.from_mapping(None) == BindingCacheConfig()
    with pytest.raises(
        BindingCacheConfigError,
        match=r"^routers\[0\]\.bindingCache\.tree: unknown key; supported keys: paths, trees, bounds, clients, idleTtlSecs$",
    ):
        BindingCacheConfig.from_mapping({"tree": 1}, "routers[0].bindingCache")
    with pytest.raises(
        BindingCacheConfigError, match=r"^bindingCache\.paths: expected a positive integer, got 0$"
    ):
        BindingCacheConfig.from_mapping({"paths": 0})


def test_a_client_released_after_the_cache_closed_is_no_error() -> None:
    """A drain whose grace ran out closes the router's clients under requests still in flight; each
    such request, cancelled, then released a client that was gone and logged a traceback
    ("release of ..., which is not in use"). A release after ``close_all`` is now a no-op; a release
    of a client never acquired is still an error."""
    closed: list[str] = []
    cache: ClientCache[str, str] = ClientCache(4, clock=Clock(), close=lambda k, c: closed.append(k))
    cache.acquire("a", lambda k: f"client:{k}")
    with pytest.raises(RuntimeError, match="not in use"):
        cache.release("b")
    cache.close_all()
    assert closed == ["a"]
    cache.release("a")  # the in-flight request ends after the close
