"""Delegation explanations: the tree ``/delegator.json`` serves (Linkerd's ``DelegateTree``).

Theory of operation: this is its own algorithm, not a trace of :func:`dtab.bind.bind` (spec §6). Every
node carries the ``path`` being looked up at that point and the ``dentry`` that produced it (the root
carries :data:`dtab.table.Dentry.NOP`, omitted from JSON). :func:`delegate` starts from an unresolved
path node and *explains* it:

* an unresolved path ``q`` reached through dentry ``d`` takes one *step*: every dentry matching ``q``
  (last first) contributes its destination converted into nodes labelled ``(q, that dentry)`` (a ``~``
  becomes a ``neg`` node with the empty path); one match gives a ``delegate`` node, several an ``alt``;
  no match asks the namers and then the system namers (``neg``, their answer converted with label
  ``(q, d)``, or an ``exception`` node carrying the namer's error);
* ``alt`` and ``union`` nodes explain **every** child (no short-circuit as in binding); a child whose
  explanation fails becomes an ``exception`` node; namers are consulted only when *no* dentry matches;
* more than :data:`MAX_DEPTH` steps on a branch fails (a top-level cycle fails the whole explanation
  with :class:`~dtab.errors.DelegationCycle`);
* more than :data:`MAX_NODES` steps in all fails the whole explanation with
  :class:`~dtab.errors.DelegationTooLarge`: since every alternative is explained, a dtab whose rules
  each offer two alternatives doubles the tree at every step (300 bytes of dtab give a million
  nodes), and the admin server explains on the event loop. So do lookups that cost more than
  :data:`MAX_WORK` in all (``Dtab.matching``: hundreds of wildcard rules tested, or matched, at
  every step).

The result is then simplified: a ``delegate`` whose child has the same path is replaced by the child
(carrying the delegate's dentry), single-child ``alt``/``union`` become ``delegate``, an ``alt`` child
with the same path is spliced into its parent; ``neg`` branches are kept (the explanation shows them).
A namer answering :data:`~dtab.bind.PENDING` makes the whole explanation pending (``delegate`` returns
``PENDING``; the admin handler waits and retries).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Final

from dtab.addr import BoundName, addr_json
from dtab.bind import PENDING, Interpreter, NamerLookup, SystemLookup
from dtab.errors import BindError, DelegationCycle, DelegationTooLarge
from dtab.path import Path
from dtab.table import Dentry, Dtab
from dtab.tree import Alt, Empty, Fail, Leaf, Neg, Union, show_tree

#: Fixed depth limit of explanations (independent of the binder's ``max_depth``).
MAX_DEPTH: Final = 100
#: Most lookup steps one explanation takes (a step per path node explained).
MAX_NODES: Final = 10_000
#: What finding the matching dentries may cost one explanation in all (``Dtab.matching``'s cost).
MAX_WORK: Final = 50_000

_FAIL_PREFIX = Path((b"$", b"fail"))


@dataclass(frozen=True)
class DelegateNode:
    """Base of explanation nodes: ``path`` looked up here, ``dentry`` that produced it."""

    path: Path
    dentry: Dentry

    type_name: ClassVar[str] = "?"

    def _path_json(self) -> str:
        return str(self.path)

    def _head(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type_name, "path": self._path_json()}
        if not self.dentry.equivalent(Dentry.NOP):
            out["dentry"] = {"prefix": str(self.dentry.prefix), "dst": show_tree(self.dentry.dst)}
        return out

    def to_json(self) -> dict[str, Any]:
        """The node in ``/delegator.json``'s shape (key order as Linkerd emits it)."""
        return self._head()


@dataclass(frozen=True)
class NegNode(DelegateNode):
    type_name: ClassVar[str] = "neg"

    def _path_json(self) -> str:
        return "~" if not self.path else str(self.path)


@dataclass(frozen=True)
class FailNode(DelegateNode):
    type_name: ClassVar[str] = "fail"

    def _path_json(self) -> str:
        return str(self.path) if self.path.startswith(_FAIL_PREFIX) else "!"


@dataclass(frozen=True)
class EmptyNode(DelegateNode):
    type_name: ClassVar[str] = "empty"


@dataclass(frozen=True)
class ExceptionNode(DelegateNode):
    error: BaseException | str = ""

    type_name: ClassVar[str] = "exception"

    @property
    def message(self) -> str:
        e = self.error
        if isinstance(e, BindError):
            return e.upstream_message
        return str(e)

    def to_json(self) -> dict[str, Any]:
        out = self._head()
        out["message"] = self.message
        return out


@dataclass(frozen=True)
class DelegatedNode(DelegateNode):
    """``delegate``: one dentry rewrote ``path``; ``child`` explains the result."""

    child: DelegateNode | None = None

    type_name: ClassVar[str] = "delegate"

    def to_json(self) -> dict[str, Any]:
        out = self._head()
        assert self.child is not None
        out["delegate"] = self.child.to_json()
        return out


def _bound_json(b: BoundName) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if b.addr is not None:
        out["addr"] = addr_json(b.addr)
    out["id"] = str(b.id)
    out["path"] = str(b.residual)
    return out


@dataclass(frozen=True)
class LeafNode(DelegateNode):
    """``leaf``: resolved to a bound name."""

    bound: BoundName | None = None

    type_name: ClassVar[str] = "leaf"

    def to_json(self) -> dict[str, Any]:
        out = self._head()
        assert self.bound is not None
        out["bound"] = _bound_json(self.bound)
        return out


@dataclass(frozen=True)
class PathNode(DelegateNode):
    """An unresolved path (only inside the algorithm; never in a finished explanation)."""

    target: Path = Path.EMPTY

    type_name: ClassVar[str] = "path"


@dataclass(frozen=True)
class AltNode(DelegateNode):
    children: tuple[DelegateNode, ...] = ()

    type_name: ClassVar[str] = "alt"

    def to_json(self) -> dict[str, Any]:
        out = self._head()
        out["alt"] = [c.to_json() for c in self.children]
        return out


@dataclass(frozen=True)
class UnionNode(DelegateNode):
    branches: tuple[tuple[float, DelegateNode], ...] = ()

    type_name: ClassVar[str] = "union"

    def to_json(self) -> dict[str, Any]:
        out = self._head()
        out["union"] = [{"weight": w, "tree": n.to_json()} for w, n in self.branches]
        return out


@dataclass(frozen=True)
class TransformationNode(DelegateNode):
    """A transformer rewrote a bound leaf (built by namer plugins that apply transformers)."""

    name: str = ""
    bound: BoundName | None = None
    child: DelegateNode | None = None

    type_name: ClassVar[str] = "transformation"

    def to_json(self) -> dict[str, Any]:
        out = self._head()
        out["name"] = self.name
        assert self.bound is not None and self.child is not None
        out["bound"] = _bound_json(self.bound)
        out["tree"] = self.child.to_json()
        return out


_ATOMS = (NegNode, FailNode, EmptyNode)


class _PendingLookup(Exception):
    pass


def _with_suffix(tree: Any, suffix: Path) -> Any:
    return tree.map(lambda p: p + suffix) if suffix else tree


def _convert(tree: Any, q: Path, d: Dentry) -> DelegateNode:
    """A name tree (dentry dst or namer answer) as nodes labelled ``(q, d)``."""
    if isinstance(tree, Leaf):
        v = tree.value
        if isinstance(v, Path):
            return PathNode(q, d, v)
        if isinstance(v, BoundName):
            return LeafNode(q, d, v)
        raise TypeError(f"a name tree leaf must be a Path or BoundName, not {type(v).__name__}")
    if isinstance(tree, Neg):
        return NegNode(Path.EMPTY, d)
    if isinstance(tree, Fail):
        return FailNode(q, d)
    if isinstance(tree, Empty):
        return EmptyNode(q, d)
    if isinstance(tree, Alt):
        return AltNode(q, d, tuple(_convert(c, q, d) for c in tree.trees))
    if isinstance(tree, Union):
        return UnionNode(q, d, tuple((b.weight, _convert(b.tree, q, d)) for b in tree.branches))
    raise TypeError(f"not a name tree: {tree!r}")


class _Explainer:
    def __init__(self, interp: Interpreter, root: Path) -> None:
        self.interp = interp
        self.dtab = interp.dtab
        self.root = root
        self.steps = 0
        self.work = 0

    def step(self, d: Dentry, q: Path) -> DelegateNode:
        self.steps += 1
        if self.steps > MAX_NODES:
            raise DelegationTooLarge(self.root, MAX_NODES)
        found, cost = self.dtab.matching(q)
        self.work += cost
        if self.work > MAX_WORK:
            raise DelegationTooLarge(self.root, MAX_WORK, unit="dentry tests")
        matches = [_convert(_with_suffix(e.dst, q.drop(len(e.prefix))), q, e) for e in found]
        if not matches:
            try:
                r = self.interp.lookup_namers(q)
            except BindError as err:
                return ExceptionNode(q, d, err)
            if r is PENDING:
                raise _PendingLookup(q)
            if isinstance(r, Neg):
                return NegNode(q, d)
            return _convert(r, q, d)
        if len(matches) == 1:
            return DelegatedNode(q, d, matches[0])
        return AltNode(q, d, tuple(matches))

    def explain(self, node: DelegateNode, depth: int) -> DelegateNode:
        if depth > MAX_DEPTH:
            raise DelegationCycle(self.root, MAX_DEPTH)
        if isinstance(node, PathNode):
            return self.explain(self.step(node.dentry, node.target), depth + 1)
        if isinstance(node, DelegatedNode):
            assert node.child is not None
            return replace(node, child=self.explain(node.child, depth))
        if isinstance(node, AltNode):
            if not node.children:
                return NegNode(node.path, node.dentry)
            if len(node.children) == 1:
                return DelegatedNode(node.path, node.dentry, self.explain(node.children[0], depth))
            return replace(node, children=tuple(self._explain_branch(node, c, depth) for c in node.children))
        if isinstance(node, UnionNode):
            if not node.branches:
                return NegNode(node.path, node.dentry)
            if len(node.branches) == 1:
                return DelegatedNode(node.path, node.dentry, self.explain(node.branches[0][1], depth))
            return replace(
                node, branches=tuple((w, self._explain_branch(node, c, depth)) for w, c in node.branches)
            )
        if isinstance(node, TransformationNode):
            assert node.child is not None
            return replace(node, child=self.explain(node.child, depth))
        return node

    def _explain_branch(self, parent: DelegateNode, child: DelegateNode, depth: int) -> DelegateNode:
        try:
            return self.explain(child, depth)
        except DelegationTooLarge:
            raise
        except BindError as err:
            return ExceptionNode(parent.path, parent.dentry, err)


def simplify(node: DelegateNode) -> DelegateNode:
    """Collapse same-path delegations and splice same-path alternatives (spec §6.3)."""
    if isinstance(node, DelegatedNode):
        assert node.child is not None
        c = simplify(node.child)
        if not isinstance(c, _ATOMS) and c.path == node.path:
            return replace(c, dentry=node.dentry)
        return replace(node, child=c)
    if isinstance(node, AltNode):
        if not node.children:
            return NegNode(node.path, node.dentry)
        if len(node.children) == 1:
            return simplify(DelegatedNode(node.path, node.dentry, node.children[0]))
        out: list[DelegateNode] = []
        for child in node.children:
            s = simplify(child)
            if isinstance(s, AltNode) and s.path == node.path:
                out.extend(s.children)
            else:
                out.append(s)
        return replace(node, children=tuple(out))
    if isinstance(node, UnionNode):
        if not node.branches:
            return NegNode(node.path, node.dentry)
        if len(node.branches) == 1:
            return simplify(DelegatedNode(node.path, node.dentry, node.branches[0][1]))
        return replace(node, branches=tuple((w, simplify(c)) for w, c in node.branches))
    if isinstance(node, TransformationNode):
        assert node.child is not None
        return replace(node, child=simplify(node.child))
    return node


def delegate(
    dtab: Dtab,
    path: Path,
    namers: Sequence[tuple[Path, NamerLookup]] = (),
    *,
    system: SystemLookup | None = None,
    interpreter: str = "linkerd",
) -> Any:
    """Explain how ``path`` resolves through ``dtab`` and the namers.

    Returns the simplified :class:`DelegateNode` tree, or :data:`~dtab.bind.PENDING` when a namer has
    not answered yet. Raises :class:`~dtab.errors.DelegationCycle` when the explanation as a whole
    exceeds :data:`MAX_DEPTH` steps, :class:`~dtab.errors.DelegationTooLarge` when it takes more than
    :data:`MAX_NODES` steps in all.
    """
    interp = Interpreter(dtab, namers, system=system, interpreter=interpreter)
    explainer = _Explainer(interp, path)
    try:
        tree = explainer.explain(PathNode(Path.EMPTY, Dentry.NOP, path), 0)
    except _PendingLookup:
        return PENDING
    except RecursionError:
        raise DelegationCycle(path, MAX_DEPTH) from None
    return simplify(tree)


__all__ = [
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_WORK",
    "AltNode",
    "DelegateNode",
    "DelegatedNode",
    "EmptyNode",
    "ExceptionNode",
    "FailNode",
    "LeafNode",
    "NegNode",
    "PathNode",
    "TransformationNode",
    "UnionNode",
    "delegate",
    "simplify",
]
