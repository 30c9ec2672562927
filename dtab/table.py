"""Dentries and dtabs, and one rewriting step (``Dtab.lookup``).

Theory of operation: a :class:`Dtab` is an ordered tuple of :class:`Dentry` rules ``prefix => tree``.
``lookup(path)`` considers the dentries from last to first; every dentry whose prefix matches the start
of the path contributes its destination tree with the unmatched rest of the path appended to every leaf
(labels matched by ``*`` are consumed). No match gives ``Neg``; one match gives that tree itself; several
give an ``Alt`` of them, latest first. Order is purely positional, never by specificity. Lookup does not
recurse and never consults namers: binding (:mod:`dtab.bind`) does that.

``a + b`` concatenates: per-request dtabs are appended after the base, so their dentries are tried first.

Finding the matching dentries does not scan the dtab: on its first lookup a dtab puts its prefixes in a
trie (a ``*`` element is an edge of its own), and a lookup walks the path's labels down it, following at
each node the edge of the next label and the ``*`` edge, collecting the dentries whose prefix ends at a
node reached. So a lookup costs the trie nodes it visits and the matches it finds, not the dentries
that cannot match: a base dtab of thousands of ``/svc/<name>`` rules, or a per-request ``l5d-dtab``
padded with rules that never match, costs no more per lookup than a short one. :meth:`Dtab.matching`
reports that cost, which binding and delegation count against their budgets (a request's dtab can still
make every lookup visit or match hundreds of entries: wildcard rules that branch at every element, or
rules that all match).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, overload

from dtab.path import ANY, Path, Prefix
from dtab.tree import NEG, Alt, Leaf, NameTree, exact_weight, show_tree, simplified


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

    @property
    def show_exact(self) -> str:
        """:attr:`show` with every weight as written (Finagle's printer rounds to two decimals, so
        ``0.004*/a & 0.006*/b`` would read back as ``0.00*/a & 0.01*/b``)."""
        return f"{self.prefix.show}=>{show_tree(self.dst, exact_weight)}"

    def __str__(self) -> str:
        return self.show


# The dentry that labels the root of a delegation: prefix is the single label "/", dst is ``~``.
Dentry.NOP = Dentry(Prefix((b"/",)), NEG)


def _append_suffix(tree: Any, suffix: Path) -> Any:
    if not suffix:
        return tree
    return tree.map(lambda p: p + suffix)


class _Node:
    """A node of a dtab's prefix trie: the dentries whose prefix ends here, and where to go next."""

    __slots__ = ("children", "wild", "ends")

    def __init__(self) -> None:
        self.children: dict[bytes, _Node] = {}
        self.wild: _Node | None = None
        self.ends: list[int] = []


class _Index:
    """A dtab's dentries in a trie of their prefixes (see the module docstring)."""

    __slots__ = ("root",)

    def __init__(self, dentries: tuple[Dentry, ...]) -> None:
        root = _Node()
        for i, d in enumerate(dentries):
            node = root
            for e in d.prefix.elems:
                if e is ANY:
                    nxt = node.wild
                    if nxt is None:
                        nxt = node.wild = _Node()
                else:
                    nxt = node.children.get(e)  # type: ignore[arg-type]
                    if nxt is None:
                        nxt = node.children[e] = _Node()  # type: ignore[index]
                node = nxt
            node.ends.append(i)
        self.root = root

    def matching(self, path: Path, dentries: tuple[Dentry, ...]) -> tuple[list[Dentry], int]:
        root = self.root
        found = list(root.ends)
        cost = 1
        frontier = [root]
        for label in path.labels:
            nxt: list[_Node] = []
            for node in frontier:
                child = node.children.get(label)
                if child is not None:
                    nxt.append(child)
                if node.wild is not None:
                    nxt.append(node.wild)
            if not nxt:
                break
            cost += len(nxt)
            for node in nxt:
                found.extend(node.ends)
            frontier = nxt
        if len(found) > 1:
            found.sort(reverse=True)
        return [dentries[i] for i in found], cost + len(found)


class Dtab:
    """An ordered, immutable sequence of dentries."""

    __slots__ = ("_dentries", "_hash", "_index", "_parts")

    EMPTY: Dtab  # set below

    def __init__(self, dentries: Iterable[Dentry] = ()) -> None:
        ds = tuple(dentries)
        for d in ds:
            if not isinstance(d, Dentry):
                raise TypeError(f"a Dtab holds Dentry values, not {type(d).__name__}")
        self._dentries: tuple[Dentry, ...] = ds
        self._hash = hash(ds)
        self._index: _Index | None = None
        # ``a + b`` remembers ``(a, b)``: lookups ask each part's own index (a base dtab's, built once)
        # instead of indexing the concatenation made for every request with a per-request dtab.
        self._parts: tuple[Dtab, Dtab] | None = None

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
        joined = Dtab(self._dentries + other._dentries)
        joined._parts = (self, other)
        return joined

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Dtab):
            return NotImplemented
        return self._dentries == other._dentries

    def __hash__(self) -> int:
        return self._hash

    def matching(self, path: Path) -> tuple[list[Dentry], int]:
        """The dentries whose prefix matches ``path``, last first, and the cost of finding them: the
        index probes, wildcard dentries tested and matches found (see the module docstring)."""
        parts = self._parts
        if parts is not None:
            later, cost = parts[1].matching(path)
            earlier, cost_earlier = parts[0].matching(path)
            return later + earlier if earlier else later, cost + cost_earlier
        index = self._index
        if index is None:
            index = self._index = _Index(self._dentries)
        return index.matching(path, self._dentries)

    def lookup(self, path: Path) -> NameTree:
        """One rewriting step: ``Neg``, the single match's tree, or an ``Alt`` of matches (last first)."""
        return self.lookup_counted(path)[0]

    def lookup_counted(self, path: Path) -> tuple[NameTree, int]:
        """:meth:`lookup` and the cost of finding the matches (:meth:`matching`)."""
        found, cost = self.matching(path)
        matches = [_append_suffix(d.dst, path.drop(len(d.prefix))) for d in found]
        if not matches:
            return NEG, cost
        if len(matches) == 1:
            return matches[0], cost
        return Alt(tuple(matches)), cost

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
