"""Name trees: the right-hand side of a dentry and the result of binding.

Theory of operation: a name tree is one of

* :class:`Leaf` ``(value)`` — a path (before binding) or a bound name (after);
* :class:`Alt` ``(trees)`` — ordered fail-over, written ``a | b``;
* :class:`Union` ``(branches)`` — weighted union of :class:`Weighted` branches, written ``0.3*a & 0.7*b``;
* three atoms: :data:`NEG` ``~`` (no such name: try the next alternative), :data:`FAIL` ``!`` (stop, do
  not fall back) and :data:`EMPTY` ``$`` (the name exists but has no endpoints).

Nodes are frozen dataclasses compared structurally (weights as floats). Nothing is flattened or
normalised on construction: the parser keeps ``/a | (/b | /c)`` nested, and ``Alt``/``Union`` with zero or
one child are representable (lookups and namers can build them).

:func:`simplified` and :func:`eval_tree` implement the evaluation rules: in an ``Alt`` a ``Neg`` means
"try the next", ``Fail`` means "stop with no value" and ``Empty`` "stop with an empty value"; in a
``Union`` ``Neg`` and ``Fail`` branches vanish, and only an all-bad union is itself ``Neg``.

The printer (``str(tree)``) writes the canonical form: `` | `` and `` & `` with single spaces, weights
other than exactly ``1.0`` as ``W*tree`` with ``W`` formatted like Java's ``%.2f`` (half-up on the
shortest decimal representation of the float), parentheses only where needed to re-parse the same
structure.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any, ClassVar, Generic, TypeVar

T = TypeVar("T")
U = TypeVar("U")


class _Atom:
    """Base of the three atoms; each subclass has exactly one instance."""

    __slots__ = ()
    _symbol = "?"
    _instances: dict[type, _Atom] = {}

    def __new__(cls) -> Any:
        inst = _Atom._instances.get(cls)
        if inst is None:
            inst = super().__new__(cls)
            _Atom._instances[cls] = inst
        return inst

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(self._symbol)

    def __repr__(self) -> str:
        return type(self).__name__.upper()

    def __str__(self) -> str:
        return self._symbol

    def __reduce__(self) -> Any:
        return (type(self), ())

    def map(self, fn: Callable[[Any], Any]) -> Any:
        return self


class Neg(_Atom):
    """``~``: no such name; an ``Alt`` tries its next alternative."""

    __slots__ = ()
    _symbol = "~"


class Fail(_Atom):
    """``!``: stop here; an ``Alt`` does not fall back past it."""

    __slots__ = ()
    _symbol = "!"


class Empty(_Atom):
    """``$``: the name exists but has no endpoints."""

    __slots__ = ()
    _symbol = "$"


NEG: Neg = Neg()
FAIL: Fail = Fail()
EMPTY: Empty = Empty()


@dataclass(frozen=True)
class Leaf(Generic[T]):
    value: T

    def map(self, fn: Callable[[T], U]) -> Leaf[U]:
        return Leaf(fn(self.value))

    def __str__(self) -> str:
        return show_tree(self)


@dataclass(frozen=True)
class Alt:
    trees: tuple[Any, ...]

    def __init__(self, trees: Any = ()) -> None:
        object.__setattr__(self, "trees", tuple(trees))

    def map(self, fn: Callable[[Any], Any]) -> Alt:
        return Alt(tuple(t.map(fn) for t in self.trees))

    def __str__(self) -> str:
        return show_tree(self)


@dataclass(frozen=True)
class Weighted:
    weight: float
    tree: Any

    DEFAULT_WEIGHT: ClassVar[float] = 1.0

    def map(self, fn: Callable[[Any], Any]) -> Weighted:
        return Weighted(self.weight, self.tree.map(fn))


@dataclass(frozen=True)
class Union:
    branches: tuple[Weighted, ...]

    def __init__(self, branches: Any = ()) -> None:
        bs = tuple(branches)
        for b in bs:
            if not isinstance(b, Weighted):
                raise TypeError(f"Union branches must be Weighted, not {type(b).__name__}")
        object.__setattr__(self, "branches", bs)

    @property
    def trees(self) -> tuple[Weighted, ...]:
        return self.branches

    def map(self, fn: Callable[[Any], Any]) -> Union:
        return Union(tuple(b.map(fn) for b in self.branches))

    def __str__(self) -> str:
        return show_tree(self)


#: Any name tree.
NameTree = Leaf[Any] | Alt | Union | Neg | Fail | Empty


def is_tree(x: object) -> bool:
    return isinstance(x, (Leaf, Alt, Union, _Atom))


# ---------------------------------------------------------------------------------------------
# Printing


_FMT_CONTEXT = Context(prec=1000)
_CENT = Decimal("0.01")


def format_weight(w: float) -> str:
    """Java ``String.format("%.2f", w)``: half-up rounding of the shortest decimal form of ``w``."""
    if math.isnan(w):
        return "NaN"
    if math.isinf(w):
        return "Infinity" if w > 0 else "-Infinity"
    d = Decimal(repr(float(w))).quantize(_CENT, rounding=ROUND_HALF_UP, context=_FMT_CONTEXT)
    return format(d, "f")


def _show_value(v: Any) -> str:
    return str(v)


def _unwrap(t: Any) -> Any:
    """One-child Alt/Union print as their child (the weight is lost)."""
    while True:
        if isinstance(t, Alt) and len(t.trees) == 1:
            t = t.trees[0]
        elif isinstance(t, Union) and len(t.branches) == 1:
            t = t.branches[0].tree
        else:
            return t


def exact_weight(w: float) -> str:
    """The shortest plain decimal that the dtab parser reads back as exactly ``w``.

    ``0.125`` stays ``0.125`` (:func:`format_weight` writes ``0.13``), ``1e22`` prints in full, an
    integral weight has no fraction (``3``). An infinite weight (which the parser refuses, but code can
    build) prints as a digit string that overflows again.
    """
    if math.isinf(w) and w > 0:
        return "1" + "0" * 309
    if math.isnan(w) or w < 0:
        raise ValueError(f"weight {w!r} cannot be written in a dtab")
    s = format(Decimal(repr(float(w))), "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s or "0"


def show_tree(tree: Any, weight: Callable[[float], str] = format_weight) -> str:
    """Canonical printed form of a name tree; ``weight`` prints union weights (Finagle's two decimals,
    or :func:`exact_weight` for a form that reads back as the same tree)."""
    t = _unwrap(tree)
    if isinstance(t, Alt):
        return " | ".join(_show_in_alt(c, weight) for c in t.trees)
    if isinstance(t, Union):
        return " & ".join(_show_branch(b, weight) for b in t.branches)
    return _show_simple(t)


def _show_simple(t: Any) -> str:
    if isinstance(t, Leaf):
        return _show_value(t.value)
    if isinstance(t, _Atom):
        return t._symbol
    raise TypeError(f"not a name tree: {t!r}")


def _show_in_alt(child: Any, weight: Callable[[float], str]) -> str:
    c = _unwrap(child)
    if isinstance(c, Alt):
        return "(" + show_tree(c, weight) + ")"
    if isinstance(c, Union):
        return show_tree(c, weight)
    return _show_simple(c)


def _show_branch(b: Weighted, weight: Callable[[float], str]) -> str:
    c = _unwrap(b.tree)
    if isinstance(c, (Alt, Union)):
        body = "(" + show_tree(c, weight) + ")"
    else:
        body = _show_simple(c)
    if b.weight == Weighted.DEFAULT_WEIGHT:
        return body
    return f"{weight(b.weight)}*{body}"


# ---------------------------------------------------------------------------------------------
# Simplification and evaluation


def simplified(tree: Any) -> Any:
    """The evaluation-preserving normal form (no flattening, no de-duplication)."""
    if isinstance(tree, Alt):
        if not tree.trees:
            return NEG
        if len(tree.trees) == 1:
            return simplified(tree.trees[0])
        out: list[Any] = []
        for child in tree.trees:
            s = simplified(child)
            if s is FAIL or isinstance(s, Fail):
                out.append(FAIL)
                break
            if isinstance(s, Neg):
                continue
            out.append(s)
        if not out:
            return NEG
        if len(out) == 1:
            return out[0]
        return Alt(tuple(out))
    if isinstance(tree, Union):
        if not tree.branches:
            return NEG
        if len(tree.branches) == 1:
            return simplified(tree.branches[0].tree)
        kept: list[Weighted] = []
        for b in tree.branches:
            s = simplified(b.tree)
            if isinstance(s, (Fail, Neg)):
                continue
            kept.append(Weighted(b.weight, s))
        if not kept:
            return NEG
        if len(kept) == 1:
            return kept[0].tree
        return Union(tuple(kept))
    return tree


_FAILED = "fail"
_NEGATIVE = "neg"


def _eval(tree: Any) -> Any:
    """Internal evaluation: the strings _FAILED/_NEGATIVE, or a frozenset of leaf values."""
    if isinstance(tree, Fail):
        return _FAILED
    if isinstance(tree, Neg):
        return _NEGATIVE
    if isinstance(tree, Empty):
        return frozenset()
    if isinstance(tree, Leaf):
        return frozenset((tree.value,))
    if isinstance(tree, Alt):
        if not tree.trees:
            return _NEGATIVE
        for child in tree.trees:
            r = _eval(child)
            if r == _NEGATIVE:
                continue
            return r
        return _NEGATIVE
    if isinstance(tree, Union):
        if not tree.branches:
            return _NEGATIVE
        if len(tree.branches) == 1:
            return _eval(tree.branches[0].tree)
        acc: frozenset[Any] | None = None
        for b in tree.branches:
            r = _eval(b.tree)
            if isinstance(r, frozenset):
                acc = r if acc is None else acc | r
        return _NEGATIVE if acc is None else acc
    raise TypeError(f"not a name tree: {tree!r}")


def eval_tree(tree: Any) -> frozenset[Any] | None:
    """The set of leaf values the tree evaluates to, or ``None`` for no value (Neg or Fail)."""
    r = _eval(tree)
    return r if isinstance(r, frozenset) else None


def equivalent(a: Any, b: Any) -> bool:
    """Two trees are equivalent iff their simplified forms are equal."""
    return bool(simplified(a) == simplified(b))
