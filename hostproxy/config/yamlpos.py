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
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = [
    "MappingNode",
    "Node",
    "ScalarNode",
    "SequenceNode",
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


def compose(text: str) -> Node | None:
    """Parse ``text`` into a positioned node tree (``None`` for an empty document)."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        column = mark.column + 1 if mark else 1
        problem = e.problem or e.context or "invalid YAML"
        context = f" ({e.context})" if e.context and e.problem else ""
        raise YamlSyntaxError(f"not valid YAML or JSON: {problem}{context}", line, column) from None
    except yaml.YAMLError as e:  # e.g. several documents in one file
        raise YamlSyntaxError(f"not valid YAML or JSON: {e}", 1, 1) from None


_constructor = yaml.SafeLoader("")  # used only to resolve scalar tags the way SafeLoader does


def scalar_value(node: ScalarNode) -> object:
    """The Python value of a scalar, with SafeLoader semantics (int, float, bool, None, str, ...)."""
    return _constructor.construct_object(node, deep=True)


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
