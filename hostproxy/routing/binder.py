"""The binding cache: service name + local dtab -> bound tree, recomputed only when something changed.

Theory of operation. A router owns one :class:`Binder`. ``bind(service, local_dtab)`` answers from a
bounded LRU keyed by ``(local dtab, service name)``; on a miss it delegates once, with
``base dtab ++ local dtab``, through :func:`dtab.bind.bind`, and keeps the bound tree together with the
set of namer names the delegation *consulted* (``(namer prefix, residual)`` pairs). A reverse index maps
each consulted name to the cache keys that depend on it, so:

* ``invalidate(prefix, residual)`` — called by the namer runtime when that name's answer changes —
  drops exactly the entries that consulted that name (or a longer residual under it: a namer watching
  ``/users`` notifies ``/users`` while a delegation asked it for ``/users/v1``), and nothing else;
* ``invalidate_matching(prefixes, match)`` does the same for the residuals ``match`` picks: the router
  drops what looked up one ``/$/inet`` host, however it was spelled;
* ``set_base_dtab(dtab)`` (a dtab file or store reload) drops everything;
* both bump :attr:`Binder.version` and call the ``on_change`` hooks, which is what a caller waiting on a
  *pending* binding (a namer that has not answered yet) waits for, bounded by ``bindingTimeoutMs``.

Steady state, a request therefore costs one dict lookup: no parsing (see
:class:`~hostproxy.routing.context.DtabParseCache`) and no delegation. Errors from binding
(``BindError``: depth exceeded, unknown namer, a namer failure) are cached too, but only until the next
change of any kind, since the error does not say which names it consulted.

Every cache is bounded (entries keyed by request input — Host values, ``l5d-dtab`` texts — would
otherwise grow without bound) and evicts entries idle for ``idleTtlSecs``. A binding whose local dtab
has more than :data:`MAX_CACHED_LOCAL_DENTRIES` dentries is not cached at all (its key would keep the
parsed dtab, ~500 bytes a dentry, alive: 1,000 distinct large overrides would hold hundreds of
megabytes); such a request binds afresh, which the lookup index keeps cheap. Sizes come from the router's
``bindingCache`` (:class:`BindingCacheConfig`): ``trees`` bounds the bind cache, ``paths`` the parse cache
of per-request dtab texts, ``bounds`` and ``clients`` are for the router's per-bound-name stacks and
clients, kept in :class:`ClientCache` instances (a bounded LRU with idle eviction that closes what it
evicts, and never closes an entry in use).

The address-override policy (:class:`~hostproxy.routing.context.AddressOverridePolicy`) is applied here,
because it compares the override's binding with the base dtab's binding of the same service, and both
come from this cache.

Time comes from an injected ``clock`` (seconds, monotonic); nothing here blocks or does I/O.
"""

from __future__ import annotations

import importlib
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from dtab.path import Path
from dtab.table import Dtab
from hostproxy.routing.context import AddressOverridePolicy, AddressOverrideRefused, DtabParseCache

__all__ = [
    "BindOutcome",
    "Binder",
    "BindingCacheConfig",
    "BindingCacheConfigError",
    "BoundedLru",
    "ClientCache",
]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
C = TypeVar("C")

Clock = Callable[[], float]


# -- configuration ---------------------------------------------------------------------------------


class BindingCacheConfigError(ValueError):
    """A ``bindingCache`` key is wrong; the message names the config path and the fix."""


@dataclass(frozen=True, slots=True)
class BindingCacheConfig:
    """A router's ``bindingCache``: ``paths``, ``trees``, ``bounds``, ``clients`` (1000 each) and
    ``idleTtlSecs`` (600)."""

    paths: int = 1000
    trees: int = 1000
    bounds: int = 1000
    clients: int = 1000
    idle_ttl_s: float = 600.0

    _KEYS = ("paths", "trees", "bounds", "clients", "idleTtlSecs")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None, where: str = "bindingCache") -> BindingCacheConfig:
        if cfg is None:
            return cls()
        if not isinstance(cfg, Mapping):
            raise BindingCacheConfigError(f"{where}: expected a mapping, got {cfg!r}")
        values: dict[str, Any] = {}
        for k, v in cfg.items():
            if k not in cls._KEYS:
                raise BindingCacheConfigError(
                    f"{where}.{k}: unknown key; supported keys: {', '.join(cls._KEYS)}"
                )
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise BindingCacheConfigError(f"{where}.{k}: expected a positive integer, got {v!r}")
            values["idle_ttl_s" if k == "idleTtlSecs" else k] = v
        return cls(**values)


# -- a bounded LRU with idle expiry ------------------------------------------------------------------


_NO_KEY = object()


class _Slot(Generic[V]):
    __slots__ = ("value", "last_used", "in_use")

    def __init__(self, value: V, now: float) -> None:
        self.value = value
        self.last_used = now
        self.in_use = 0


class BoundedLru(Generic[K, V]):
    """An LRU map of at most ``max_entries`` whose entries also expire after ``idle_ttl_s`` unused.

    The order of the underlying dict is the order of last use, so expiry only looks at the front and
    costs O(expired). ``on_evict(key, value, reason)`` runs for every entry removed by capacity
    (``"capacity"``), idleness (``"idle"``), :meth:`pop` (``"removed"``) or :meth:`clear` (``"cleared"``).
    Entries marked in use (:meth:`acquire`) are never evicted; while every entry is in use the map may
    exceed its bound, and it shrinks back as they are released.

    The most recently used entry (the dict's last) is remembered with its key: using it again — the
    steady state of a router serving one service — finds its slot without hashing the key and skips
    the ``move_to_end`` that would not move it. Only an identical key object takes that path. The least
    recently used entry's slot (the dict's first, which expiry looks at) is remembered too, since
    reading the first entry of an ``OrderedDict`` hashes its key. Any other change of order or content
    forgets both.

    A caller that has just read the map's clock passes the reading on (:meth:`get_at`, and ``now``
    for :meth:`use` and :meth:`release`) instead of a second read; the router reads it once per
    request for the binding and client caches alike.
    """

    def __init__(
        self,
        max_entries: int,
        *,
        idle_ttl_s: float | None = None,
        clock: Clock = time.monotonic,
        on_evict: Callable[[K, V, str], None] | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, not {max_entries}")
        self.max_entries = max_entries
        self.idle_ttl_s = idle_ttl_s
        self._clock = clock
        self._on_evict = on_evict
        self._slots: OrderedDict[K, _Slot[V]] = OrderedDict()
        # The last entry of ``_slots`` and its slot, when known (``_NO_KEY``: not known).
        self._mru: Any = _NO_KEY
        self._mru_slot: _Slot[V] | None = None
        # The first entry's slot, when known (None: not known).
        self._front: _Slot[V] | None = None
        self.evictions = {"capacity": 0, "idle": 0}

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: object) -> bool:
        return key in self._slots

    def keys(self) -> list[K]:
        return list(self._slots)

    def items(self) -> list[tuple[K, V]]:
        return [(k, s.value) for k, s in self._slots.items()]

    def peek(self, key: K) -> V | None:
        """The value without touching its recency (for admin views)."""
        s = self._slots.get(key)
        return None if s is None else s.value

    def _touch(self, key: K) -> _Slot[V] | None:
        """The slot of ``key`` moved to the end (most recently used), or None when absent."""
        if key is self._mru:
            return self._mru_slot
        s = self._slots.get(key)
        if s is not None:
            self._slots.move_to_end(key)
            self._mru, self._mru_slot = key, s
            if s is self._front:
                self._front = None
        return s

    def get(self, key: K) -> V | None:
        return self.get_at(key, self._clock())

    def get_at(self, key: K, now: float) -> V | None:
        """:meth:`get` at the time ``now``, just read from this map's clock (by a caller that reads
        it for other uses too)."""
        s = self._used_at(key, now)
        return None if s is None else s.value

    def _used_at(self, key: K, now: float) -> _Slot[V] | None:
        """The slot of ``key`` after expiring idle entries at ``now``, moved to the end and marked
        used at ``now``; None when there is no entry."""
        ttl = self.idle_ttl_s
        if ttl is not None:
            first = self._front
            if first is None or first.last_used <= now - ttl:
                self.expire(now)  # (only its first test when the front is known and not idle)
        s = self._mru_slot if key is self._mru else self._touch(key)
        if s is not None:
            s.last_used = now
        return s

    def put(self, key: K, value: V) -> None:
        now = self._clock()
        self.expire(now)
        self._mru, self._front = _NO_KEY, None
        old = self._slots.pop(key, None)
        if old is not None:
            self._evicted(key, old, "removed")
        self._slots[key] = _Slot(value, now)
        self._trim(protect=key)

    def pop(self, key: K) -> V | None:
        self._mru, self._front = _NO_KEY, None
        s = self._slots.pop(key, None)
        if s is None:
            return None
        self._evicted(key, s, "removed")
        return s.value

    def clear(self) -> None:
        self._mru, self._front = _NO_KEY, None
        slots, self._slots = self._slots, OrderedDict()
        for k, s in slots.items():
            self._evicted(k, s, "cleared")

    def use(self, key: K, now: float | None = None) -> _Slot[V] | None:
        """:meth:`get` and :meth:`acquire` in one step: the entry's slot, marked in use, or None when
        there is no entry (nothing is then marked). ``now``: this map's clock, just read (None: read
        it here)."""
        s = self._used_at(key, self._clock() if now is None else now)
        if s is not None:
            s.in_use += 1
        return s

    def acquire(self, key: K) -> V:
        """Mark an entry in use (not evictable) and return it; raises ``KeyError`` if absent."""
        s = self._touch(key)
        if s is None:
            raise KeyError(key)
        s.in_use += 1
        s.last_used = self._clock()
        return s.value

    def release(self, key: K, now: float | None = None) -> None:
        """The end of one :meth:`acquire` (or :meth:`use`) of ``key``, which counts as a use at ``now``
        (this map's clock, just read; None: read it here)."""
        mru = key is self._mru
        s = self._mru_slot if mru else self._slots.get(key)
        if s is None or s.in_use == 0:
            raise RuntimeError(f"release of {key!r}, which is not in use")
        s.in_use -= 1
        s.last_used = self._clock() if now is None else now
        if not mru:  # (the most recently used entry is where ``_touch`` would move it)
            self._touch(key)
        if len(self._slots) > self.max_entries:
            self._trim()

    def in_use(self, key: K) -> int:
        s = self._slots.get(key)
        return 0 if s is None else s.in_use

    def expire(self, now: float | None = None) -> int:
        """Evict entries idle for ``idle_ttl_s``; returns how many. Cheap enough to call on every use."""
        if self.idle_ttl_s is None:
            return 0
        if now is None:
            now = self._clock()
        cutoff = now - self.idle_ttl_s
        first = self._front
        if first is None:
            for first in self._slots.values():
                self._front = first
                break
        if first is not None and first.last_used > cutoff:
            return 0  # the least recently used entry is not idle: none is (the usual case)
        self._mru, self._front = _NO_KEY, None
        n = 0
        scanned = 0
        limit = len(self._slots)
        while self._slots and scanned < limit:
            key, s = next(iter(self._slots.items()))
            if s.last_used > cutoff:
                break
            scanned += 1
            if s.in_use:
                # In use is not idle: count it as used now and look further.
                s.last_used = now
                self._slots.move_to_end(key)
                continue
            del self._slots[key]
            self.evictions["idle"] += 1
            self._evicted(key, s, "idle")
            n += 1
        return n

    def _trim(self, protect: Any = _NO_KEY) -> None:
        """Evict least recently used idle entries down to the bound; never ``protect`` (just added)."""
        self._mru, self._front = _NO_KEY, None
        scanned = 0
        while len(self._slots) > self.max_entries and scanned < len(self._slots):
            key, s = next(iter(self._slots.items()))
            if s.in_use or key == protect:
                self._slots.move_to_end(key)
                scanned += 1
                continue
            del self._slots[key]
            self.evictions["capacity"] += 1
            self._evicted(key, s, "capacity")

    def _evicted(self, key: K, s: _Slot[V], reason: str) -> None:
        if self._on_evict is not None:
            self._on_evict(key, s.value, reason)
            # The callback may have used this map while its order was changing.
            self._mru, self._front = _NO_KEY, None

    def statistics(self) -> dict[str, Any]:
        return {
            "size": len(self._slots),
            "max": self.max_entries,
            "idle_ttl_s": self.idle_ttl_s,
            "in_use": sum(1 for s in self._slots.values() if s.in_use),
            "evicted_capacity": self.evictions["capacity"],
            "evicted_idle": self.evictions["idle"],
        }


class ClientCache(Generic[K, C]):
    """Clients (or per-bound-name stacks) by key: bounded, idle ones closed after ``idle_ttl_s``.

    ``get(key, factory)`` returns the cached client or makes one with ``factory(key)``. A client being
    used for a request is held with :meth:`acquire` / :meth:`release` so that neither capacity nor
    idleness closes it mid-request. Every client that leaves the cache (capacity, idle,
    :meth:`remove`, :meth:`close_all`) is passed to ``close(key, client)`` exactly once; ``close`` is
    synchronous (an async owner queues the actual close).
    """

    def __init__(
        self,
        max_entries: int = 1000,
        *,
        idle_ttl_s: float = 600.0,
        clock: Clock = time.monotonic,
        close: Callable[[K, C], None] | None = None,
    ) -> None:
        self._close = close
        self._lru: BoundedLru[K, C] = BoundedLru(
            max_entries, idle_ttl_s=idle_ttl_s, clock=clock, on_evict=self._evicted
        )
        self.created = 0
        self.closed = 0
        # Set by ``close_all`` (the router is closing): a request still in flight then releases a
        # client that is gone, which is no error.
        self._all_closed = False

    def _evicted(self, key: K, client: C, reason: str) -> None:
        self.closed += 1
        if self._close is not None:
            self._close(key, client)

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, key: object) -> bool:
        return key in self._lru

    def get(self, key: K, factory: Callable[[K], C]) -> C:
        c = self._lru.get(key)
        if c is None and key not in self._lru:
            c = factory(key)
            self.created += 1
            self._lru.put(key, c)
        return c  # type: ignore[return-value]

    def peek(self, key: K) -> C | None:
        """The client for ``key`` if there is one, without making it or touching its recency."""
        return self._lru.peek(key)

    def acquire(self, key: K, factory: Callable[[K], C], now: float | None = None) -> C:
        """Get (or make) the client and hold it in use until :meth:`release`. ``now``: the cache's
        clock, just read (None: read it here)."""
        s = self._lru.use(key, now)
        if s is not None:
            return s.value
        self.get(key, factory)  # a new entry is never the one its own insertion evicts
        return self._lru.acquire(key)

    def release(self, key: K, now: float | None = None) -> None:
        if self._all_closed and key not in self._lru:
            return  # closed under a request that was still in flight (a drain's grace ran out)
        self._lru.release(key, now)

    def remove(self, key: K) -> None:
        self._lru.pop(key)

    def expire_idle(self) -> int:
        return self._lru.expire()

    def close_all(self) -> None:
        self._all_closed = True
        self._lru.clear()

    def items(self) -> list[tuple[K, C]]:
        return self._lru.items()

    def statistics(self) -> dict[str, Any]:
        st = self._lru.statistics()
        st.update(created=self.created, closed=self.closed)
        return st

    def __repr__(self) -> str:
        return f"<ClientCache size={len(self)} max={self._lru.max_entries} created={self.created} closed={self.closed}>"


# -- the binder ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BindOutcome:
    """The binding of one (service, local dtab).

    Exactly one of: ``tree`` (a bound name tree, possibly ``Neg``/``Fail``/``Empty``), ``pending``
    (some namer has not answered: wait for :attr:`Binder.version` to change, then bind again),
    ``error`` (the ``BindError``), ``refused`` (the address-override policy said no; answer 400).
    """

    service: Path
    local_dtab: Dtab
    tree: Any = None
    pending: bool = False
    error: Exception | None = None
    refused: AddressOverrideRefused | None = None
    version: int = 0
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.tree is not None and not self.pending and self.error is None and self.refused is None


@dataclass(slots=True)
class _Entry:
    tree: Any
    pending: bool
    error: Exception | None
    consulted: frozenset[tuple[Path, Path]]
    error_generation: int
    raw_ids: frozenset[str] | None = None  # computed lazily for the override policy
    # The outcome of a cache hit that needs no override check, reused while the version stays.
    hit: BindOutcome | None = None


_Key = tuple[Dtab, Path]

#: Largest local dtab (in dentries) whose bindings the binder caches.
MAX_CACHED_LOCAL_DENTRIES = 16


class Binder:
    """Per-router binding cache (see the module docstring).

    ``namers`` is what :func:`dtab.bind.bind` takes: ``(prefix, lookup)`` pairs in preference order,
    ``lookup(residual)`` returning a name tree, ``NEG`` or ``PENDING``. ``bind_fn(dtab, path, namers,
    max_depth=..., system=...)`` defaults to :func:`dtab.bind.bind` and must return an object with
    ``.tree`` and ``.consulted``, ``tree`` being the pending sentinel (``is_pending(tree)``) while a namer
    has not answered; it raises one of ``bind_errors`` (default ``BindError``) when binding fails.
    """

    def __init__(
        self,
        base_dtab: Dtab,
        namers: Any,
        *,
        config: BindingCacheConfig | None = None,
        clock: Clock = time.monotonic,
        max_depth: int = 100,
        system: Any = None,
        bind_fn: Callable[..., Any] | None = None,
        is_pending: Callable[[Any], bool] | None = None,
        bind_errors: tuple[type[BaseException], ...] | None = None,
    ) -> None:
        self.config = config or BindingCacheConfig()
        self._base = base_dtab
        self._namers = namers
        self._max_depth = max_depth
        self._system = system
        if bind_fn is None or is_pending is None or bind_errors is None:
            # ``dtab`` re-exports the function ``bind``, which shadows the module of the same name.
            _bind_mod = importlib.import_module("dtab.bind")

            bind_fn = bind_fn or _bind_mod.bind
            if is_pending is None:
                pending_sentinel = _bind_mod.PENDING
                is_pending = lambda t: t is pending_sentinel  # noqa: E731
            bind_errors = bind_errors or (_bind_mod.BindError,)
        self._bind_fn = bind_fn
        self._is_pending = is_pending
        self._bind_errors = bind_errors
        self._clock = clock
        self._trees: BoundedLru[_Key, _Entry] = BoundedLru(
            self.config.trees, idle_ttl_s=self.config.idle_ttl_s, clock=clock, on_evict=self._unindex
        )
        self._by_name: dict[Path, dict[Path, set[_Key]]] = {}
        # The key of the last lookup: the same (local dtab, service) objects again use the same key
        # object, which the cache finds without hashing when it is still the most recent.
        self._last_key: _Key = (Dtab.EMPTY, Path.EMPTY)
        self.parse_cache = DtabParseCache(self.config.paths)
        self.version = 0
        self._error_generation = 0
        self._hooks: list[Callable[[int], None]] = []
        self.delegations = 0
        self.hits = 0
        self.invalidations = 0

    # -- observers ---------------------------------------------------------------------------------
    @property
    def base_dtab(self) -> Dtab:
        return self._base

    def on_change(self, hook: Callable[[int], None]) -> Callable[[], None]:
        """Call ``hook(new_version)`` after every change; returns a function that unsubscribes."""
        self._hooks.append(hook)

        def unsubscribe() -> None:
            if hook in self._hooks:
                self._hooks.remove(hook)

        return unsubscribe

    def _changed(self) -> None:
        self.version += 1
        for hook in list(self._hooks):
            hook(self.version)

    # -- changes -----------------------------------------------------------------------------------
    def set_base_dtab(self, dtab: Dtab) -> None:
        """A new base dtab (file or store reload): every cached binding is dropped."""
        self._base = dtab
        self._trees.clear()
        self._by_name.clear()
        self._error_generation += 1
        self._changed()

    def invalidate(
        self, namer_prefix: Path, residual: Path, canonical: Callable[[Path], Path] | None = None
    ) -> int:
        """The namer at ``namer_prefix`` changed its answer for ``residual``: drop what consulted it.

        Drops the bindings that consulted ``(namer_prefix, r)`` for ``r == residual`` or ``r`` under it
        (a namer that watches ``/users`` notifies ``/users``; a delegation may have asked it for
        ``/users/v1``), and nothing else. Cached errors are dropped too (see the module docstring).
        ``canonical``: how the namer spells a residual it was asked for (the k8s namer lowercases its
        key: a binding that asked for ``/default/http/World`` concerns ``/default/http/world``).
        Returns how many bindings were dropped.
        """
        by_residual = self._by_name.get(namer_prefix)
        keys: set[_Key] = set()
        if by_residual:
            if canonical is None:
                hit = [r for r in by_residual if r.startswith(residual)]
            else:
                hit = [r for r in by_residual if r.startswith(residual) or canonical(r).startswith(residual)]
            for r in hit:
                keys |= by_residual.pop(r)
            if not by_residual:
                del self._by_name[namer_prefix]
        return self._drop(keys)

    def invalidate_matching(self, prefixes: Iterable[Path], match: Callable[[Path, Path], bool]) -> int:
        """Drop the bindings that consulted ``(prefix, residual)`` for one of ``prefixes`` and a
        residual for which ``match(prefix, residual)`` is true, and nothing else: one change (one
        :attr:`version`) however many prefixes. For what is not a namer's name, as a ``/$/inet`` host
        (its residuals ``/<host>/<port>/…``, or ``/<port>/<host>/…`` under ``/$/io.buoyant.rinet``,
        its spelling in any case). Returns how many bindings were dropped."""
        keys: set[_Key] = set()
        for prefix in prefixes:
            by_residual = self._by_name.get(prefix)
            if not by_residual:
                continue
            for r in [r for r in by_residual if match(prefix, r)]:
                keys |= by_residual.pop(r)
            if not by_residual:
                del self._by_name[prefix]
        return self._drop(keys)

    def invalidate_namer(self, namer_prefix: Path) -> int:
        """Every name of one namer changed (a namer restarted, its backend reconnected)."""
        keys: set[_Key] = set()
        for ks in self._by_name.pop(namer_prefix, {}).values():
            keys |= ks
        return self._drop(keys)

    def _drop(self, keys: set[_Key]) -> int:
        for key in keys:
            self._trees.pop(key)
        self._error_generation += 1
        self.invalidations += 1
        self._changed()
        return len(keys)

    def _index(self, key: _Key, entry: _Entry) -> None:
        for prefix, residual in entry.consulted:
            self._by_name.setdefault(prefix, {}).setdefault(residual, set()).add(key)

    def _unindex(self, key: _Key, entry: _Entry, reason: str) -> None:
        for prefix, residual in entry.consulted:
            by_residual = self._by_name.get(prefix)
            if by_residual is None:
                continue
            keys = by_residual.get(residual)
            if keys is None:
                continue
            keys.discard(key)
            if not keys:
                del by_residual[residual]
                if not by_residual:
                    del self._by_name[prefix]

    # -- binding -----------------------------------------------------------------------------------
    def _entry(self, local_dtab: Dtab, service: Path, now: float | None) -> tuple[_Entry, bool]:
        key = self._last_key
        if key[1] is not service or key[0] is not local_dtab:
            if len(local_dtab) > MAX_CACHED_LOCAL_DENTRIES:
                return self._delegate(local_dtab, service), False
            key = self._last_key = (local_dtab, service)
        e = self._trees.get(key) if now is None else self._trees.get_at(key, now)
        if e is not None and (e.error is None or e.error_generation == self._error_generation):
            self.hits += 1
            return e, True
        e = self._delegate(local_dtab, service)
        self._trees.put(key, e)
        self._index(key, e)
        return e, False

    def _delegate(self, local_dtab: Dtab, service: Path) -> _Entry:
        """Bind ``service`` under ``base ++ local_dtab`` (uncached)."""
        self.delegations += 1
        dtab = self._base + local_dtab
        try:
            r = self._bind_fn(dtab, service, self._namers, max_depth=self._max_depth, system=self._system)
        except self._bind_errors as err:
            return _Entry(None, False, err, frozenset(), self._error_generation)  # type: ignore[arg-type]
        consulted = frozenset(r.consulted)
        return _Entry(r.tree, self._is_pending(r.tree), None, consulted, self._error_generation)

    def bind(
        self,
        service: Path,
        local_dtab: Dtab = Dtab.EMPTY,
        *,
        policy: AddressOverridePolicy | None = None,
        now: float | None = None,
    ) -> BindOutcome:
        """The bound tree for ``service`` under ``base ++ local_dtab``, from cache when unchanged.
        ``now``: the binder's clock, just read by the caller (None: read here)."""
        e, cached = self._entry(local_dtab, service, now)
        if (
            e.error is None
            and not e.pending
            and (policy is None or not policy.refuse_raw_addresses or len(local_dtab) == 0)
        ):
            if not cached:
                return BindOutcome(service, local_dtab, tree=e.tree, version=self.version)
            hit = e.hit
            if hit is None or hit.version != self.version:
                hit = e.hit = BindOutcome(service, local_dtab, tree=e.tree, version=self.version, cached=True)
            return hit
        common = {"service": service, "local_dtab": local_dtab, "version": self.version, "cached": cached}
        if e.error is not None:
            return BindOutcome(error=e.error, **common)  # type: ignore[arg-type]
        if e.pending:
            return BindOutcome(pending=True, **common)  # type: ignore[arg-type]
        if policy is not None and policy.refuse_raw_addresses and len(local_dtab) > 0:
            refused = self._check_override(service, local_dtab, e, policy)
            if refused == "pending":
                return BindOutcome(pending=True, **common)  # type: ignore[arg-type]
            if isinstance(refused, AddressOverrideRefused):
                return BindOutcome(refused=refused, **common)  # type: ignore[arg-type]
        return BindOutcome(tree=e.tree, **common)  # type: ignore[arg-type]

    def _check_override(
        self, service: Path, local_dtab: Dtab, e: _Entry, policy: AddressOverridePolicy
    ) -> AddressOverrideRefused | str | None:
        from hostproxy.routing.context import raw_address_ids

        if e.raw_ids is None:
            e.raw_ids = raw_address_ids(e.tree)
        if not e.raw_ids:
            return None
        base, _ = self._entry(Dtab.EMPTY, service, None)
        if base.pending:
            return "pending"
        if base.raw_ids is None:
            base.raw_ids = raw_address_ids(base.tree) if base.error is None else frozenset()
        added = e.raw_ids - base.raw_ids
        if not added:
            return None
        return AddressOverrideRefused(service, local_dtab, added, policy.server)

    def parse_local_dtab(self, headers: Iterable[tuple[bytes, bytes]]) -> Dtab:
        """``read_request_dtab`` through this router's bounded parse cache."""
        from hostproxy.routing.context import read_request_dtab

        return read_request_dtab(headers, self.parse_cache)

    # -- observability -----------------------------------------------------------------------------
    def cached_bindings(self) -> list[tuple[Dtab, Path, Any]]:
        """``(local dtab, service, tree or None)`` for every cached binding (admin views)."""
        return [(k[0], k[1], e.tree) for k, e in self._trees.items()]

    def statistics(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "trees": self._trees.statistics(),
            "parse_cache": self.parse_cache.statistics(),
            "indexed_names": sum(len(v) for v in self._by_name.values()),
            "delegations": self.delegations,
            "hits": self.hits,
            "invalidations": self.invalidations,
        }

    def __repr__(self) -> str:
        return (
            f"<Binder version={self.version} cached={len(self._trees)}/{self._trees.max_entries} "
            f"delegations={self.delegations} hits={self.hits}>"
        )
