"""Property tests: printing round-trips, and the parsers only ever raise DtabSyntaxError."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

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
    parse_dentry,
    parse_dtab,
    parse_path,
    parse_prefix,
    parse_tree,
    show_tree,
    simplified,
)

SHOWABLE = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_:.#$%-"

labels = st.one_of(
    st.text(alphabet=SHOWABLE, min_size=1, max_size=6).map(str.encode),
    st.binary(min_size=1, max_size=4),
)
paths = st.lists(labels, max_size=4).map(lambda ls: Path(tuple(ls)))
prefixes = st.lists(st.one_of(labels, st.just(ANY)), max_size=4).map(lambda es: Prefix(tuple(es)))
weights = st.one_of(st.integers(0, 1000).map(float), st.integers(0, 100000).map(lambda n: n / 100))
atoms = st.sampled_from([NEG, FAIL, EMPTY])


def _extend(children: Any) -> Any:
    return st.one_of(
        st.lists(children, min_size=2, max_size=4).map(lambda ts: Alt(tuple(ts))),
        st.lists(st.builds(Weighted, weights, children), min_size=2, max_size=4).map(
            lambda bs: Union(tuple(bs))
        ),
    )


trees = st.recursive(st.one_of(atoms, paths.map(Leaf)), _extend, max_leaves=12)
dentries = st.builds(Dentry, prefixes, trees)
dtabs = st.lists(dentries, max_size=4).map(lambda ds: Dtab(tuple(ds)))

SETTINGS = settings(max_examples=200, deadline=None)


@SETTINGS
@given(paths)
def test_path_round_trip(p: Path) -> None:
    assert parse_path(str(p)) == p


@SETTINGS
@given(prefixes)
def test_prefix_round_trip(p: Prefix) -> None:
    assert parse_prefix(str(p)) == p


@SETTINGS
@given(trees)
def test_tree_round_trip(t: Any) -> None:
    assert parse_tree(show_tree(t)) == t


@SETTINGS
@given(dentries)
def test_dentry_round_trip(d: Dentry) -> None:
    assert parse_dentry(str(d)) == d


@SETTINGS
@given(dtabs)
def test_dtab_round_trip(d: Dtab) -> None:
    assert parse_dtab(str(d)) == d


@SETTINGS
@given(trees)
def test_simplify_preserves_eval_and_is_idempotent(t: Any) -> None:
    s = simplified(t)
    assert eval_tree(s) == eval_tree(t)
    assert simplified(s) == s


@SETTINGS
@given(dtabs, paths)
def test_lookup_matches_are_rewrites_of_matching_dentries(d: Dtab, p: Path) -> None:
    t = d.lookup(p)
    matching = [e for e in d if e.prefix.matches(p)]
    if not matching:
        assert t == NEG
    elif len(matching) == 1:
        assert t == matching[0].dst.map(lambda q: q + p.drop(len(matching[0].prefix)))
    else:
        assert isinstance(t, Alt) and len(t.trees) == len(matching)


PARSERS = [parse_path, parse_prefix, parse_tree, parse_dentry, parse_dtab]
dtabish = st.text(alphabet="/ab*#$!~&|()=>;.0123456789 \n\t\\xé\u2028\u00a0\u0661", max_size=40)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=30), dtabish), st.sampled_from(PARSERS))
def test_arbitrary_text_parses_or_raises_syntax_error(text: str, parser: Any) -> None:
    try:
        value = parser(text)
    except DtabSyntaxError as e:
        assert 0 <= e.offset <= len(text)
        assert e.line >= 1 and e.column >= 1
        assert e.upstream_message  # always renderable
        str(e)
        return
    # Whatever parsed prints to something that parses to the same value.
    shown = show_tree(value) if parser is parse_tree else str(value)
    again = parser(shown)
    if parser in (parse_tree, parse_dentry, parse_dtab):
        assert str(again) == str(value)
    else:
        assert again == value
