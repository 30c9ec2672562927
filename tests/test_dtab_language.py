"""Unit tests of the dtab data model, parser, printer, lookup, simplify and eval (spec §1-§4, §7)."""

from __future__ import annotations

import re

import pytest

from dtab import (
    ANY,
    EMPTY,
    FAIL,
    NEG,
    Alt,
    Dentry,
    Dtab,
    DtabSyntaxError,
    Leaf,
    Path,
    Prefix,
    Union,
    Weighted,
    eval_tree,
    format_weight,
    parse_dentry,
    parse_dtab,
    parse_path,
    parse_prefix,
    parse_tree,
    show_tree,
    simplified,
)


def P(text: str) -> Path:
    return Path.read(text)


def L(text: str) -> Leaf[Path]:
    return Leaf(P(text))


# -- Path / Prefix ------------------------------------------------------------------------------


def test_path_basics() -> None:
    p = Path.of("svc", b"web", "v1")
    assert p.labels == (b"svc", b"web", b"v1")
    assert str(p) == p.show == "/svc/web/v1"
    assert len(p) == 3 and list(p) == [b"svc", b"web", b"v1"]
    assert p.take(2) == P("/svc/web") and p.drop(2) == P("/v1")
    assert p.startswith(P("/svc")) and not p.startswith(P("/sv"))
    assert P("/a") + P("/b/c") == P("/a/b/c")
    assert P("/") == Path.EMPTY and str(Path.EMPTY) == "/"
    assert sorted([P("/b"), P("/a/z"), P("/a")]) == [P("/a"), P("/a/z"), P("/b")]
    assert hash(P("/a/b")) == hash(Path((b"a", b"b")))


def test_path_rejects_empty_label() -> None:
    with pytest.raises(ValueError, match="empty"):
        Path((b"a", b""))
    with pytest.raises(ValueError, match="empty"):
        Path.of("")


def test_label_escaping_is_all_or_nothing() -> None:
    assert str(Path((b"a b",))) == r"/\x61\x20\x62"
    assert str(P(r"/\x41\x42")) == "/AB"
    assert str(Path(("é".encode(),))) == r"/\xc3\xa9"
    assert parse_path(str(Path(("é".encode(),)))) == Path(("é".encode(),))


def test_prefix_wildcards() -> None:
    pfx = Prefix.read("/a/*/c")
    assert pfx.elems == (b"a", ANY, b"c") and str(pfx) == "/a/*/c"
    assert pfx.matches(P("/a/b/c/d")) and not pfx.matches(P("/a/b")) and not pfx.matches(P("/a/b/x"))
    assert Prefix.read("/*").matches(P("/x")) and not Prefix.read("/*").matches(P("/"))
    literal = Prefix.read(r"/\x2a")
    assert literal.elems == (b"*",) and str(literal) == r"/\x2a"
    assert not literal.matches(P("/x"))
    assert Prefix.EMPTY.matches(Path.EMPTY)


# -- parsing ------------------------------------------------------------------------------------


def test_tree_precedence_and_nesting() -> None:
    assert parse_tree("/a & /b | /c") == Alt(
        (Union((Weighted(1.0, L("/a")), Weighted(1.0, L("/b")))), L("/c"))
    )
    assert parse_tree("/a | (/b | /c)") == Alt((L("/a"), Alt((L("/b"), L("/c")))))
    assert parse_tree("((/a))") == L("/a")
    assert parse_tree("0.5 * /a") == L("/a")  # §7.3: a lone weighted term loses its weight
    assert parse_tree("! | ~ | $") == Alt((FAIL, NEG, EMPTY))


def test_weights() -> None:
    t = parse_tree("1. * /a & .5*/b & 007.50 * /c & 0 * /d")
    assert isinstance(t, Union)
    assert [b.weight for b in t.branches] == [1.0, 0.5, 7.5, 0.0]


def test_comments_and_hash_labels() -> None:
    # §7.1: '#' glued to a label is part of it; after whitespace it starts a comment to end of line.
    d = parse_dtab("/#/a => /b#c # comment ; /x=>/y\n;/z => /w")
    assert [str(e) for e in d] == ["/#/a=>/b#c", "/z=>/w"]
    assert parse_dtab("# only\n  # comments") == Dtab.EMPTY


def test_java_whitespace_set() -> None:
    # §7.15: \u001c and \u2028 are Java whitespace, \u00a0 and \u0085 are not.
    assert parse_path("\u001c/a\u2028") == P("/a")
    for ch in "\u00a0\u0085\u2007\u202f":
        with pytest.raises(DtabSyntaxError):
            parse_path(f"{ch}/a")


def test_dtab_semicolons() -> None:
    assert len(parse_dtab("/a=>/b;")) == 1
    assert parse_dtab("  ") == Dtab.EMPTY
    for bad in (";", "; /a=>/b", "/a=>/b;;", "/a=>/b; # c\n ;"):
        with pytest.raises(DtabSyntaxError):
            parse_dtab(bad)


def test_syntax_error_message_is_pinned() -> None:
    with pytest.raises(DtabSyntaxError) as info:
        parse_dtab("/a => /b\n/c => /d")
    err = info.value
    assert (err.line, err.column, err.offset) == (2, 1, 9)
    assert str(err) == (
        "2:1: end of input expected but '/' found "
        "(dentries are separated by ';' — a newline is not a separator)\n"
        "/c => /d\n"
        "^"
    )
    assert err.upstream_message == "end of input expected but '/' found at '/a => /b\n[/]c => /d'"


@pytest.mark.parametrize(
    ("syntax", "text", "line", "col", "upstream"),
    [
        ("path", "/foo/bar/", 1, 10, "label char expected but end of input found at '/foo/bar/[]'"),
        ("path", "/foo^bar", 1, 5, "end of input expected but '^' found at '/foo[^]bar'"),
        ("path", r"/\X41", 1, 3, r"'x' expected but 'X' found at '/\[X]41'"),
        ("nametree", "/a &\n  -1 * /b", 2, 3, "simple expected but '-' found at '/a &\n  [-]1 * /b'"),
        ("dentry", "/a = > /b", 1, 5, "'>' expected but ' ' found at '/a =[ ]> /b'"),
        ("dtab", "/a => /b, /c => /d", 1, 9, "end of input expected but ',' found at '/a => /b[,] /c => /d'"),
    ],
)
def test_syntax_error_positions(syntax: str, text: str, line: int, col: int, upstream: str) -> None:
    parser = {"path": parse_path, "nametree": parse_tree, "dentry": parse_dentry, "dtab": parse_dtab}[syntax]
    with pytest.raises(DtabSyntaxError) as info:
        parser(text)
    assert (info.value.line, info.value.column) == (line, col)
    assert info.value.upstream_message == upstream
    assert str(info.value).splitlines()[-1] == " " * (col - 1) + "^"


def test_lone_dot_weight_quirk() -> None:
    with pytest.raises(DtabSyntaxError) as info:
        parse_tree("/foo & . * /bar")
    err = info.value
    assert err.offset == 7 and err.upstream_offset == 8
    assert err.upstream_message == "weight expected but '.' found at '/foo & .[ ]* /bar'"


def test_unicode_digit_weight_is_a_positioned_error() -> None:
    with pytest.raises(DtabSyntaxError) as info:
        parse_tree("/a & 1\u0661 * /b")
    assert info.value.offset == 6
    assert info.value.upstream_class == "NumberFormatException"
    assert info.value.upstream_message == 'For input string: "1\u0661"'


def test_deep_nesting_is_a_syntax_error() -> None:
    with pytest.raises(DtabSyntaxError, match="nested parentheses"):
        parse_tree("(" * 500 + "/a" + ")" * 500)
    assert parse_tree("(" * 50 + "/a" + ")" * 50) == L("/a")


# -- printing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("w", "shown"),
    [
        (0.125, "0.13"),
        (2.675, "2.68"),
        (0.3, "0.30"),
        (1e24, "1000000000000000000000000.00"),
        (0.0, "0.00"),
        (100.0, "100.00"),
        (0.005, "0.01"),
        (0.004999, "0.00"),
    ],
)
def test_weight_format_is_java_half_up(w: float, shown: str) -> None:
    assert format_weight(w) == shown


def test_show_parenthesises_only_where_needed() -> None:
    a_b = Alt((L("/a"), L("/b")))
    u = Union((Weighted(1.0, L("/a")), Weighted(2.0, L("/b"))))
    assert show_tree(Alt((u, L("/c")))) == "/a & 2.00*/b | /c"
    assert show_tree(Union((Weighted(0.5, a_b), Weighted(1.0, u)))) == "0.50*(/a | /b) & (/a & 2.00*/b)"
    assert show_tree(Alt((L("/x"), a_b))) == "/x | (/a | /b)"
    # One-child nodes print as their child (weight lost).
    assert show_tree(Union((Weighted(3.0, L("/a")),))) == "/a"
    assert show_tree(Alt((L("/x"), Alt((a_b,))))) == "/x | (/a | /b)"
    assert str(parse_dentry(" /a/*  =>  ~ ")) == "/a/*=>~"
    assert str(parse_dtab("/a=>/b ; /c=>!")) == "/a=>/b;/c=>!"


# -- lookup -------------------------------------------------------------------------------------


def test_lookup_order_and_residual() -> None:
    d = parse_dtab("/a => /x; /a/b => /y; /a/* => 0.3*/z & 0.7*(/w | ~)")
    t = d.lookup(P("/a/b/c"))
    assert show_tree(t) == "0.30*/z/c & 0.70*(/w/c | ~) | /y/c | /x/b/c"
    assert d.lookup(P("/q")) == NEG
    assert parse_dtab("/a => ~").lookup(P("/a")) == NEG
    assert parse_dtab("/a => ~; /a => ~").lookup(P("/a")) == Alt((NEG, NEG))


def test_dtab_concatenation_and_simplified() -> None:
    a, b = parse_dtab("/a=>/b"), parse_dtab("/c=>/d")
    assert a + b == parse_dtab("/a=>/b;/c=>/d")
    assert a + Dtab.EMPTY is a
    assert a + Dentry.read("/e=>/f") == parse_dtab("/a=>/b;/e=>/f")
    assert parse_dtab("/a => ~ | ~; /b => ! & /c").simplified() == parse_dtab("/b=>/c")


# -- simplify / eval ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tree", "evaluated", "simple"),
    [
        ("~ | $ | /blah", [], "$ | /blah"),
        ("/ok & !", ["/ok"], "/ok"),
        ("! & ! & !", None, "~"),
        ("~ | ! | /a", None, "!"),
        ("0.2*/a & 0.3*/b & 0.5*~", ["/a", "/b"], "0.20*/a & 0.30*/b"),
        ("(/a | /b) | /c", ["/a"], "(/a | /b) | /c"),
    ],
)
def test_simplify_and_eval(tree: str, evaluated: list[str] | None, simple: str) -> None:
    t = parse_tree(tree)
    ev = eval_tree(t)
    assert (None if ev is None else sorted(str(x) for x in ev)) == evaluated
    assert show_tree(simplified(t)) == simple
    assert eval_tree(simplified(t)) == ev


def test_empty_alt_and_union_are_neg() -> None:
    assert simplified(Alt(())) == NEG and eval_tree(Alt(())) is None
    assert simplified(Union(())) == NEG and eval_tree(Union(())) is None
    assert Leaf(P("/a")).map(lambda p: p + P("/b")) == L("/a/b")


def test_parse_error_names_expected_in_words() -> None:
    with pytest.raises(DtabSyntaxError, match=re.escape("a name ('/path', '!', '~', '$' or '(') expected")):
        parse_tree("/a | ")
    with pytest.raises(DtabSyntaxError, match=re.escape("'*' is a wildcard only in a dentry prefix")):
        parse_path("/a/*")
    with pytest.raises(DtabSyntaxError):
        parse_prefix("/a/*b")
