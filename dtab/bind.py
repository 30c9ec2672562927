"""Binding: resolve a path through the dtab and the namers to a tree of bound names.

Theory of operation: :func:`bind` evaluates ``Leaf(path)`` with the generic binder of spec §5.1 over a
*lookup* function:

* ``lookup(p)`` (the Linkerd ``ConfiguredNamersInterpreter``, spec §5.2): ``dtab.lookup(p)`` unless that
  is structurally ``Neg``; then each configured namer whose prefix starts ``p``, in preference order, is
  asked about the residual (a ``Neg`` answer passes on to the next); then the system namers
  (``system`` override first, then :func:`dtab.system.lookup_system`). With ``interpreter="finagle"``
  (Finagle's ``DefaultInterpreter``) configured namers are ignored and an unknown ``/$/`` kind is
  reported as Finagle does.
* ``bind(tree, depth, weight)``: more than ``max_depth`` lookups along a branch raise
  :class:`DepthExceeded` (checked when a lookup's result is about to be bound, so even a ``Neg`` from
  the (N+1)-th lookup is an error). More than :data:`MAX_LOOKUPS` lookups in all, or lookups that
  cost more than :data:`MAX_DENTRY_WORK` in all (index probes, wildcard dentries tested and matches:
  :meth:`dtab.table.Dtab.matching`), raise :class:`BindTooLarge`, which no union swallows. A path leaf is looked up and its answer bound one level deeper; a
  bound leaf is kept (recording the union weight carried to it); atoms stay. An ``Alt`` takes its first
  non-``Neg`` child (an error aborts, ``Fail`` stops, ``Empty`` is a value). A ``Union`` binds every
  branch with its own weight and simplifies the survivors; if none succeeded it raises the first
  branch error, or is pending.
* Pending (a namer answering :data:`PENDING`): a pending child of an ``Alt`` reached before any value
  makes the ``Alt`` pending; a ``Union`` is pending only when no branch is ok and none failed.

The result never contains ``Alt`` and is simplified. :class:`BindResult` also reports every
``(namer prefix, residual)`` consulted, so a caller can re-bind only when one of those changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from dtab.addr import (
    ADDR_NEG,
    ADDR_PENDING,
    NAMETREE_WEIGHT_KEY,
    Addr,
    AddrBound,
    Address,
    AddrFailed,
    AddrNeg,
    AddrPending,
    BoundName,
)
from dtab.errors import (
    BindError,
    BindTooLarge,
    DelegationCycle,
    DepthExceeded,
    DtabError,
    NamerError,
    UnknownNamer,
)
from dtab.path import Path
from dtab.system import lookup_system
from dtab.table import Dtab
from dtab.tree import FAIL, NEG, Alt, Empty, Fail, Leaf, Neg, Union, Weighted, is_tree, simplified

DEFAULT_MAX_DEPTH: Final = 100
#: Lookups one binding may make in all (every branch of every union and alternative counted). Real
#: dtabs bind in tens; a dtab whose rules each fan out doubles the work at every step.
MAX_LOOKUPS: Final = 1_000
#: What finding the matching dentries may cost one binding in all (:meth:`Dtab.matching`'s cost: index
#: probes, wildcard dentries tested, matches). Real dtabs spend a few per lookup; a per-request dtab of
#: hundreds of wildcard rules that never match, or of rules that all match, spends hundreds.
MAX_DENTRY_WORK: Final = 20_000
#: Larger limits would exhaust Python's recursion limit before the lookup count.
MAX_SUPPORTED_DEPTH: Final = 300


class _PendingType:
    """The "not known yet" answer of a namer, and the tree of a bind that depends on one."""

    __slots__ = ()
    _instance: _PendingType | None = None

    def __new__(cls) -> _PendingType:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "PENDING"

    def __str__(self) -> str:
        return "pending"

    def __reduce__(self) -> str:
        return "PENDING"


PENDING: Final = _PendingType()

#: ``lookup(residual) -> NameTree[Path | BoundName] | PENDING``
NamerLookup = Callable[[Path], Any]
#: ``system(path) -> NameTree | None`` (None: not handled, use the built-in system namers)
SystemLookup = Callable[[Path], Any]


@dataclass(frozen=True)
class BindResult:
    """``tree``: bound tree of :class:`BoundName` leaves, or :data:`PENDING`; ``consulted``: namer queries."""

    tree: Any
    consulted: frozenset[tuple[Path, Path]] = field(default_factory=frozenset)

    @property
    def pending(self) -> bool:
        return self.tree is PENDING


class Interpreter:
    """The lookup function of an interpreter (spec §5.2); shared by binding and delegation."""

    def __init__(
        self,
        dtab: Dtab,
        namers: Iterable[tuple[Path, NamerLookup]] = (),
        *,
        system: SystemLookup | None = None,
        interpreter: str = "linkerd",
    ) -> None:
        if interpreter not in ("linkerd", "finagle"):
            raise ValueError(f"unknown interpreter {interpreter!r}: use 'linkerd' or 'finagle'")
        self.dtab = dtab
        self.finagle = interpreter == "finagle"
        self.namers: tuple[tuple[Path, NamerLookup], ...] = () if self.finagle else tuple(namers)
        for prefix, fn in self.namers:
            if not isinstance(prefix, Path) or not callable(fn):
                raise TypeError("namers must be a sequence of (prefix: Path, lookup: callable) pairs")
        self.system = system
        self.consulted: set[tuple[Path, Path]] = set()
        #: What the dtab lookups so far cost (:meth:`Dtab.matching`).
        self.dentry_work = 0

    def lookup(self, path: Path) -> Any:
        """One lookup: the dtab, else the namers, else the system namers. May return PENDING."""
        t, cost = self.dtab.lookup_counted(path)
        self.dentry_work += cost
        if not isinstance(t, Neg):
            return t
        return self.lookup_namers(path)

    def lookup_namers(self, path: Path) -> Any:
        """Configured namers in order (``Neg`` passes on), then the system namers."""
        for prefix, fn in self.namers:
            if not path.startswith(prefix):
                continue
            residual = path.drop(len(prefix))
            self.consulted.add((prefix, residual))
            try:
                r = fn(residual)
            except DtabError:
                raise
            except Exception as e:  # a namer's own failure, whatever its type
                raise NamerError(_message(e), namer=prefix, path=path) from e
            if r is PENDING:
                return PENDING
            if not is_tree(r):
                raise NamerError(f"namer returned {r!r}, not a name tree or PENDING", namer=prefix, path=path)
            if isinstance(r, Neg):
                continue
            return r
        return self.lookup_global(path)

    def lookup_global(self, path: Path) -> Any:
        if path.labels[:1] == (b"$",) and len(path) >= 2:
            self.consulted.add((path.take(2), path.drop(2)))
        if self.system is not None:
            try:
                r = self.system(path)
            except DtabError:
                raise
            except Exception as e:
                raise NamerError(_message(e), namer=path.take(2), path=path) from e
            if r is not None:
                return r
        return lookup_system(path, finagle=self.finagle)


def _message(e: BaseException) -> str:
    """Java's ``getMessage``: the exception text (its class name when it has none)."""
    text = str(e)
    return text if text else type(e).__name__


class _Binder:
    def __init__(self, interp: Interpreter, max_depth: int, root: Path) -> None:
        self.interp = interp
        self.max_depth = max_depth
        self.root = root
        self.lookups = 0

    def bind(self, tree: Any, depth: int, weight: float | None, last: Path | None) -> Any:
        if depth > self.max_depth:
            raise DepthExceeded(self.max_depth, self.root, last)
        if isinstance(tree, Leaf):
            v = tree.value
            if isinstance(v, Path):
                self.lookups += 1
                if self.lookups > MAX_LOOKUPS:
                    raise BindTooLarge(self.root, MAX_LOOKUPS)
                r = self.interp.lookup(v)
                if self.interp.dentry_work > MAX_DENTRY_WORK:
                    raise BindTooLarge(self.root, MAX_DENTRY_WORK, unit="dentry tests")
                if r is PENDING:
                    return PENDING
                return self.bind(r, depth + 1, weight, v)
            if isinstance(v, BoundName):
                return Leaf(v.with_weight(weight)) if weight is not None else tree
            raise TypeError(f"a name tree leaf must be a Path or BoundName, not {type(v).__name__}")
        if isinstance(tree, (Neg, Fail, Empty)):
            return tree
        if isinstance(tree, Union):
            branches = tree.branches
            if not branches:
                return NEG
            if len(branches) == 1:
                return self.bind(branches[0].tree, depth, branches[0].weight, last)
            oks: list[Weighted] = []
            first_error: BindError | None = None
            for b in branches:
                try:
                    r = self.bind(b.tree, depth, b.weight, last)
                except BindError as e:
                    if isinstance(e, BindTooLarge):
                        raise  # (a union bound only in part would route silently wrong)
                    if first_error is None:
                        first_error = e
                    continue
                if r is PENDING:
                    continue
                oks.append(Weighted(b.weight, r))
            if oks:
                return simplified(Union(tuple(oks)))
            if first_error is not None:
                raise first_error
            return PENDING
        if isinstance(tree, Alt):
            children = tree.trees
            if not children:
                return NEG
            if len(children) == 1:
                return self.bind(children[0], depth, weight, last)
            for child in children:
                r = self.bind(child, depth, weight, last)
                if r is PENDING:
                    return PENDING
                if isinstance(r, Fail):
                    return FAIL
                if isinstance(r, Neg):
                    continue
                return r
            return NEG
        raise TypeError(f"not a name tree: {tree!r}")


def bind(
    dtab: Dtab,
    path: Path,
    namers: Sequence[tuple[Path, NamerLookup]] = (),
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    system: SystemLookup | None = None,
    interpreter: str = "linkerd",
) -> BindResult:
    """Bind ``path`` through ``dtab`` (base ++ per-request), the configured ``namers`` and ``/$/``.

    Raises :class:`DepthExceeded`, :class:`UnknownNamer` or :class:`NamerError` when binding fails.
    """
    if not isinstance(max_depth, int) or not 0 <= max_depth <= MAX_SUPPORTED_DEPTH:
        raise ValueError(f"max_depth must be an integer from 0 to {MAX_SUPPORTED_DEPTH}, not {max_depth!r}")
    interp = Interpreter(dtab, namers, system=system, interpreter=interpreter)
    try:
        tree = _Binder(interp, max_depth, path).bind(Leaf(path), 0, None, None)
    except RecursionError:
        # Deeply nested alternatives inside a rewrite cycle: too deep for Python before the
        # lookup count reached max_depth. Report it as the depth error it is.
        raise DepthExceeded(max_depth, path) from None
    return BindResult(tree, frozenset(interp.consulted))


__all__ = [
    "ADDR_NEG",
    "ADDR_PENDING",
    "Addr",
    "AddrBound",
    "AddrFailed",
    "AddrNeg",
    "AddrPending",
    "Address",
    "BindError",
    "BindResult",
    "BindTooLarge",
    "BoundName",
    "DEFAULT_MAX_DEPTH",
    "MAX_DENTRY_WORK",
    "MAX_LOOKUPS",
    "DelegationCycle",
    "DepthExceeded",
    "Interpreter",
    "NAMETREE_WEIGHT_KEY",
    "NamerError",
    "PENDING",
    "UnknownNamer",
    "bind",
]
