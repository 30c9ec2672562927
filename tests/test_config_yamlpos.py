"""Positions of characters inside YAML scalars, mapped back to the file."""

from __future__ import annotations

import pytest

from hostproxy.config.yamlpos import YamlSyntaxError, compose, scalar_position, scalar_value


def value_node(text: str, key: str):
    root = compose(text)
    return next(v for k, v in root.value if k.value == key)


def pos(text: str, key: str, needle: str) -> tuple[int, int, bool]:
    node = value_node(text, key)
    p = scalar_position(node, text, node.value.index(needle))
    return p.line, p.column, p.exact


def test_literal_block() -> None:
    text = "a: 1\nd: |\n  /svc => /x;\n  /y  =>  /z^\n"
    assert pos(text, "d", "^") == (4, 13, True)
    assert pos(text, "d", "/svc") == (3, 3, True)


def test_literal_block_with_comment_after_indicator_and_deeper_indent() -> None:
    text = "r:\n  d: |  # the dtab\n      /a => /b;\n      /c => /d^\n"
    node = next(v for k, v in compose(text).value[0][1].value if k.value == "d")
    p = scalar_position(node, text, node.value.index("^"))
    assert (p.line, p.column, p.exact) == (4, 15, True)


def test_folded_block() -> None:
    text = "d: >-\n  /a => /b;\n  /c => /d^\n"
    assert pos(text, "d", "^") == (3, 11, True)


def test_plain_and_quoted() -> None:
    assert pos("d: /a => /b^\n", "d", "^") == (1, 12, True)
    assert pos('d:  "/a => /b^"\n', "d", "^") == (1, 14, True)
    assert pos("d: '/a => /b^'\n", "d", "^") == (1, 13, True)


def test_multiline_plain_scalar() -> None:
    text = "d: /a => /b;\n  /c => /d^\n"
    assert pos(text, "d", "^") == (2, 11, True)


def test_quoted_with_escape_falls_back_to_the_start_line() -> None:
    text = 'x: 1\nd: "/a\\t=> /b^"\n'
    assert pos(text, "d", "^") == (2, 4, False)


def test_scalar_values_use_safe_loader_rules() -> None:
    root = compose("a: true\nb: 4140\nc: 0.0.0.0\nd: 0.25\ne: ~\nf: '1'\n")
    assert [scalar_value(v) for _, v in root.value] == [True, 4140, "0.0.0.0", 0.25, None, "1"]


def test_syntax_error_has_a_position() -> None:
    with pytest.raises(YamlSyntaxError) as info:
        compose("a: [1,\nb: 2\n")
    assert (info.value.line, info.value.column) == (3, 1)
    assert info.value.message.startswith("not valid YAML or JSON: ")
