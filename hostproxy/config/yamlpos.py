"""YAML loading that keeps positions.

Theory of operation: the config is parsed with PyYAML's *composer* (``yaml.compose`` with
``SafeLoader``), not its constructor, so we get a tree of ``MappingNode``/``SequenceNode``/``ScalarNode``
where every node carries its start mark (0-based line, column and character index into the text).
Nothing is built from the tree here; the validator walks it and reads scalars with :func:`scalar_value`,
which applies SafeLoader's resolution rules (so ``true`` is a bool, ``4140`` an int, ``0.0.0.0`` a
string). Because the composer keeps every ``(key, value)`` pair of a mapping, duplicate keys are still
visible and are reported by the validator. JSON is a subset of YAML as far as configs go, so JSON input
(text starting with ``{``) goes through the same path.

A dtab usually sits in a block scalar (``dtab: |``). A dtab syntax error has a line and column inside
the *value*; :func:`scalar_position` maps an index in a scalar's value back to the file's line and
column. Literal (``|``) and single-line plain or quoted scalars map exactly; for folded (``>``) and
multi-line plain scalars the folding is replayed (lines stripped and joined with one space), and if
the replay does not reproduce the value (escapes, blank lines) the best available answer is the line
where the scalar's text starts.

The composer is bounded: a document nested more than :data:`MAX_DEPTH` levels deep, an alias that refers
to a node containing it, or aliases that together repeat more than :data:`MAX_ALIASED_NODES` nodes (the
"billion laughs" expansion, where a few lines of anchors stand for millions of entries) are syntax errors
at the offending place, before anything walks the tree. A scalar that its tag cannot turn into a value
(``!!int abc``, an integer of thousands of digits) reads as :class:`Unreadable`, never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml
from yaml.composer import ComposerError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = [
    "MappingNode",
    "Node",
    "ScalarNode",
    "SequenceNode",
    "Unreadable",
    "YamlSyntaxError",
    "compose",
    "scalar_position",
    "scalar_value",
]


class YamlSyntaxError(ValueError):
    """The text is not YAML (or JSON) at all; ``line``/``column`` are 1-based."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


# Real configs nest fewer than 10 levels and hold a few hundred nodes; these bounds are far above that.
MAX_DEPTH = 64
MAX_ALIASED_NODES = 10_000


class _Refused(ComposerError):
    """Valid YAML that the loader refuses (too deep, recursive or exploding aliases)."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader's composer with a depth bound and a bound on what aliases repeat."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._sizes: dict[int, int] = {}  # id(node) -> its node count, aliases expanded
        self._aliased = 0
        self._depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        mark = self.peek_event().start_mark
        if self.check_event(AliasEvent):
            anchor = self.peek_event().anchor
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:
                raise _Refused(
                    None, None, f"alias *{anchor} refers to a node that contains it; write it out", mark
                )
            self._aliased += size
            if self._aliased > MAX_ALIASED_NODES:
                raise _Refused(
                    None,
                    None,
                    f"aliases repeat more than {MAX_ALIASED_NODES} nodes (at *{anchor}); "
                    "write the repeated parts out",
                    mark,
                )
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
        node = super().compose_node(parent, index)
        self._depth -= 1
        children: list[Node] = []
        if isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, SequenceNode):
            children = node.value
        self._sizes[id(node)] = 1 + sum(self._sizes[id(c)] for c in children)
        return node


def compose(text: str) -> Node | None:
    """Parse ``text`` into a positioned node tree (``None`` for an empty document)."""
    try:
        return yaml.compose(text, Loader=_BoundedLoader)
    except _Refused as e:
        mark = e.problem_mark
        assert mark is not None
        raise YamlSyntaxError(
            f"the config cannot be loaded: {e.problem}", mark.line + 1, mark.column + 1
        ) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        if e.context == "expected a single document in the stream" and mark is not None:
            raise YamlSyntaxError(
                "the file holds a second YAML document from here; a config is one document: remove this "
                "'---' and what follows, or merge the two",
                mark.line + 1,
                mark.column + 1,
            ) from None
        line = mark.line + 1 if mark else 1
        column = mark.column + 1 if mark else 1
        problem = e.problem or e.context or "invalid YAML"
        context = f" ({e.context})" if e.context and e.problem else ""
        hint = "; YAML indents with spaces: replace the tab with spaces" if "'\\t'" in problem else ""
        raise YamlSyntaxError(f"not valid YAML or JSON: {problem}{context}{hint}", line, column) from None
    except yaml.reader.ReaderError as e:  # a character YAML does not allow (NUL, other controls)
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        raise YamlSyntaxError(
            f"not valid YAML or JSON: character {_char(e.character)} is not allowed in YAML; remove it",
            line,
            column,
        ) from None
    except yaml.YAMLError as e:  # e.g. several documents in one file
        raise YamlSyntaxError(f"not valid YAML or JSON: {e}", 1, 1) from None


def _char(c: object) -> str:
    code = ord(c) if isinstance(c, str) else int(c)  # type: ignore[call-overload]
    return f"U+{code:04X}"


_constructor = yaml.SafeLoader("")  # used only to resolve scalar tags the way SafeLoader does


@dataclass(frozen=True)
class Unreadable:
    """A scalar whose tag cannot make a value of its text; ``what`` says why, for error messages."""

    what: str


def scalar_value(node: ScalarNode) -> object:
    """The Python value of a scalar, with SafeLoader semantics (int, float, bool, None, str, ...).

    A scalar its tag cannot read (``!!bool maybe``, ``!!python/name:...``, an integer too long for
    ``int()``) is an :class:`Unreadable`. Nothing is cached: the constructor would otherwise keep every
    node (and, through its marks, the whole config text) of every config ever loaded."""
    try:
        return _constructor.construct_object(node, deep=True)
    except Exception as e:  # noqa: BLE001 - any tag or text the constructor cannot read
        return Unreadable(_unreadable(node, e))
    finally:
        _constructor.constructed_objects.clear()
        _constructor.recursive_objects.clear()


def _unreadable(node: ScalarNode, e: Exception) -> str:
    std = node.tag.startswith("tag:yaml.org,2002:")
    tag = "!!" + node.tag.removeprefix("tag:yaml.org,2002:") if std else node.tag
    digits = sum(c.isdigit() for c in node.value)
    if tag == "!!int" and digits > 100:
        return f"an integer of {digits} digits, too large to read"
    text = node.value if len(node.value) <= 40 else node.value[:40] + "..."
    if isinstance(e, yaml.constructor.ConstructorError):
        return f"a value with the unsupported tag {tag} ({text!r})"
    return f"{text!r}, which is not a valid {tag}"


@dataclass(frozen=True)
class Position:
    line: int  # 1-based
    column: int  # 1-based
    exact: bool


def line_of(node: Node) -> int:
    return node.start_mark.line + 1


def scalar_position(node: ScalarNode, source: str, index: int) -> Position:
    """Map ``index`` (a character index into ``node.value``) to a 1-based file position."""
    start = node.start_mark
    fallback = Position(start.line + 1, start.column + 1, False)
    value = node.value
    raw = source[start.index : node.end_mark.index]
    style = node.style
    if style in ("|", ">"):
        lines = raw.split("\n")
        header_line = start.line
        body = lines[1:]
        indent = None
        for ln in body:
            if ln.strip():
                indent = len(ln) - len(ln.lstrip(" "))
                break
        if indent is None:
            return fallback
        # (char, file line 0-based, file col 0-based) for every character of the replayed value
        chars: list[tuple[str, int, int]] = []
        if style == "|":
            for i, ln in enumerate(body):
                row = header_line + 1 + i
                for j, ch in enumerate(ln[indent:]):
                    chars.append((ch, row, indent + j))
                chars.append(("\n", row, len(ln)))
        else:
            first = True
            for i, ln in enumerate(body):
                row = header_line + 1 + i
                stripped = ln[indent:]
                if not stripped.strip():
                    continue
                if not first:
                    chars.append((" ", row, indent - 1 if indent else 0))
                first = False
                for j, ch in enumerate(stripped):
                    chars.append((ch, row, indent + j))
        return _match(chars, value, index, fallback, indent_line=header_line + 2)
    if style in (None, "'", '"'):
        quote = 1 if style else 0
        if "\n" not in raw:
            inner = raw[quote : len(raw) - quote] if quote else raw
            if inner == value:
                return Position(start.line + 1, start.column + 1 + quote + min(index, len(value)), True)
            return fallback
        # a multi-line plain or quoted scalar: replay line folding
        chars = []
        for i, ln in enumerate(raw.split("\n")):
            row = start.line + i
            base = start.column + quote if i == 0 else 0
            text = ln[quote:] if i == 0 else ln
            lead = len(text) - len(text.lstrip(" \t"))
            stripped = text.strip(" \t")
            if i > 0:
                chars.append((" ", row, base + lead))
            for j, ch in enumerate(stripped):
                chars.append((ch, row, base + lead + j))
        return _match(chars, value, index, fallback, indent_line=start.line + 1)
    return fallback


def _match(
    chars: list[tuple[str, int, int]], value: str, index: int, fallback: Position, indent_line: int
) -> Position:
    replay = "".join(c for c, _, _ in chars)
    if not replay.startswith(value.rstrip("\n")) and not value.startswith(replay.rstrip("\n")):
        return Position(indent_line, 1, False) if fallback.exact is False else fallback
    if not chars:
        return fallback
    if index >= len(chars):
        _, row, col = chars[-1]
        return Position(row + 1, col + 2, True)
    _, row, col = chars[index]
    return Position(row + 1, col + 1, True)
