"""Dentries and dtabs, and one rewriting step (``Dtab.lookup``).

Theory of operation: a :class:`Dtab` is an ordered tuple of :class:`Dentry` rules ``prefix => tree``.
``lookup(path)`` considers the dentries from last to first; every dentry whose prefix matches the start
of the path contributes its destination tree with the unmatched rest of the path appended to every leaf
(labels matched by ``*`` are consumed). No match gives ``Neg``; one match gives that tree itself; several
give an ``Alt`` of them, latest first. Order is purely positional, never by specificity. Lookup does not
recurse and never consults namers: binding (:mod:`dtab.bind`) does that.

``a + b`` concatenates: per-request dtabs are appended after the base, so their dentries are tried first.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, overload

from dtab.path import Path, Prefix
from dtab.tree import NEG, Alt, Leaf, NameTree, show_tree, simplified


@dataclass(frozen=True)
class Dentry:
    """One rule ``prefix => dst``; ``str()`` is ``prefix=>dst`` without spaces."""

    prefix: Prefix
    dst: Any  # NameTree[Path]

    NOP: ClassVar[Dentry]  # set below

    @classmethod
    def read(cls, text: str) -> Dentry:
        from dtab.parser import parse_dentry

        return parse_dentry(text)

    def equivalent(self, other: Dentry) -> bool:
        return self.prefix == other.prefix and simplified(self.dst) == simplified(other.dst)

    @property
    def show(self) -> str:
        return f"{self.prefix.show}=>{show_tree(self.dst)}"

    def __str__(self) -> str:
        return self.show


# The dentry that labels the root of a delegation: prefix is the single label "/", dst is ``~``.
Dentry.NOP = Dentry(Prefix((b"/",)), NEG)


def _append_suffix(tree: Any, suffix: Path) -> Any:
    if not suffix:
        return tree
    return tree.map(lambda p: p + suffix)


class Dtab:
    """An ordered, immutable sequence of dentries."""

    __slots__ = ("_dentries", "_hash")

    EMPTY: Dtab  # set below

    def __init__(self, dentries: Iterable[Dentry] = ()) -> None:
        ds = tuple(dentries)
        for d in ds:
            if not isinstance(d, Dentry):
                raise TypeError(f"a Dtab holds Dentry values, not {type(d).__name__}")
        self._dentries: tuple[Dentry, ...] = ds
        self._hash = hash(ds)

    @classmethod
    def read(cls, text: str) -> Dtab:
        from dtab.parser import parse_dtab

        return parse_dtab(text)

    @property
    def dentries(self) -> tuple[Dentry, ...]:
        return self._dentries

    def __len__(self) -> int:
        return len(self._dentries)

    def __iter__(self) -> Iterator[Dentry]:
        return iter(self._dentries)

    @overload
    def __getitem__(self, i: int) -> Dentry: ...
    @overload
    def __getitem__(self, i: slice) -> Dtab: ...
    def __getitem__(self, i: int | slice) -> Dentry | Dtab:
        if isinstance(i, slice):
            return Dtab(self._dentries[i])
        return self._dentries[i]

    def __add__(self, other: object) -> Dtab:
        """Concatenation; a single :class:`Dentry` is appended."""
        if isinstance(other, Dentry):
            return Dtab(self._dentries + (other,))
        if not isinstance(other, Dtab):
            return NotImplemented
        if not other._dentries:
            return self
        if not self._dentries:
            return other
        return Dtab(self._dentries + other._dentries)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Dtab):
            return NotImplemented
        return self._dentries == other._dentries

    def __hash__(self) -> int:
        return self._hash

    def lookup(self, path: Path) -> NameTree:
        """One rewriting step: ``Neg``, the single match's tree, or an ``Alt`` of matches (last first)."""
        matches: list[Any] = []
        for d in reversed(self._dentries):
            if d.prefix.matches(path):
                matches.append(_append_suffix(d.dst, path.drop(len(d.prefix))))
        if not matches:
            return NEG
        if len(matches) == 1:
            return matches[0]  # type: ignore[no-any-return]
        return Alt(tuple(matches))

    def simplified(self) -> Dtab:
        """Every dst simplified; dentries whose dst simplifies to ``Neg`` are dropped."""
        out = []
        for d in self._dentries:
            s = simplified(d.dst)
            if s == NEG:
                continue
            out.append(Dentry(d.prefix, s))
        return Dtab(out)

    def equivalent(self, other: Dtab) -> bool:
        return len(self) == len(other) and all(a.equivalent(b) for a, b in zip(self, other, strict=True))

    @property
    def show(self) -> str:
        return ";".join(d.show for d in self._dentries)

    def __str__(self) -> str:
        return self.show

    def __repr__(self) -> str:
        return f"Dtab.read({self.show!r})"


Dtab.EMPTY = Dtab(())

__all__ = ["Dentry", "Dtab", "Leaf"]
