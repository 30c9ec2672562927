"""Run one conformance vector (the format of ``dtab-vectors.json``) against this implementation.

Theory of operation: :func:`run_vector` dispatches on ``vector["kind"]`` (and, for ``bind``, on
``mode``), computes our answer, converts it to the vector's canonical JSON form (the ``ast`` section of
the file's ``format`` object) and compares it with ``expected``; any mismatch raises ``AssertionError``
with a unified diff of the two JSON documents. Nothing is skipped or loosened: every field present in
``expected`` is checked.

Parse errors: the position (``upstream_offset``) and Finagle's expected-token must match, and so must
the complete upstream message reconstructed by ``DtabSyntaxError.upstream_message``. The one exception is
the Unicode-digit weight, for which Finagle raises a position-less ``NumberFormatException``: there any
``DtabSyntaxError`` is accepted.

Bind / delegation errors are compared through :data:`UPSTREAM_ERROR_MAP`: the upstream exception class
must map to our error class, and the subject the upstream message names (the depth, the namer and path,
or the namer's own message) must appear in our message.

Stub namers (``namers`` of a bind vector) follow the file's ``stub_namer`` semantics: the entry with the
longest key that prefixes the residual decides; ``bound`` gives a bound leaf with id ``prefix ++ key``
and residual ``residual - key``; ``tree`` a tree of paths to bind further; ``error`` raises.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dtab.addr import AddrBound, Address, BoundName
from dtab.bind import PENDING, bind
from dtab.delegate import delegate
from dtab.errors import (
    BindError,
    DelegationCycle,
    DepthExceeded,
    DtabSyntaxError,
    NamerError,
    UnknownNamer,
    utf16_units,
)
from dtab.parser import parse_dentry, parse_dtab, parse_path, parse_prefix, parse_tree
from dtab.path import Path, Prefix
from dtab.table import Dentry, Dtab
from dtab.tree import EMPTY, FAIL, NEG, Alt, Empty, Fail, Leaf, Neg, Union, eval_tree, show_tree, simplified

_PARSERS: dict[str, Callable[[str], Any]] = {
    "path": parse_path,
    "prefix": parse_prefix,
    "nametree": parse_tree,
    "dentry": parse_dentry,
    "dtab": parse_dtab,
}


# ---------------------------------------------------------------------------------------------
# Canonical JSON forms


def path_ast(p: Path) -> dict[str, Any]:
    return {"show": p.show, "labels_hex": [lab.hex() for lab in p.labels]}


def tree_ast(t: Any, leaf: Callable[[Any], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Canonical AST of a name tree; ``leaf`` converts a leaf value (default: a path leaf)."""
    if isinstance(t, Neg):
        return {"type": "neg"}
    if isinstance(t, Fail):
        return {"type": "fail"}
    if isinstance(t, Empty):
        return {"type": "empty"}
    if isinstance(t, Leaf):
        if leaf is not None:
            return leaf(t.value)
        return {"type": "leaf", "path": str(t.value)}
    if isinstance(t, Alt):
        return {"type": "alt", "trees": [tree_ast(c, leaf) for c in t.trees]}
    if isinstance(t, Union):
        return {
            "type": "union",
            "trees": [{"weight": b.weight, "tree": tree_ast(b.tree, leaf)} for b in t.branches],
        }
    raise TypeError(f"not a name tree: {t!r}")


def dentry_ast(d: Dentry) -> dict[str, Any]:
    return {"prefix": d.prefix.show, "dst": tree_ast(d.dst)}


def value_ast(syntax: str, v: Any) -> Any:
    if syntax == "path":
        return path_ast(v)
    if syntax == "prefix":
        assert isinstance(v, Prefix)
        return v.show
    if syntax == "nametree":
        return tree_ast(v)
    if syntax == "dentry":
        return dentry_ast(v)
    if syntax == "dtab":
        assert isinstance(v, Dtab)
        return [dentry_ast(d) for d in v]
    raise AssertionError(f"unknown syntax {syntax!r} in vector")


def show_value(syntax: str, v: Any) -> str:
    if syntax == "nametree":
        return show_tree(v)
    return str(v)


# ---------------------------------------------------------------------------------------------
# Comparison helpers


def _dump(x: Any) -> list[str]:
    return json.dumps(x, indent=1, ensure_ascii=False).splitlines()


def assert_same(vid: str, what: str, expected: Any, actual: Any, *, force: bool = False) -> None:
    """Raise AssertionError with a unified diff when ``actual != expected`` (or always with ``force``)."""
    if not force and expected == actual and (type(expected) is bool) == (type(actual) is bool):
        return
    diff = "\n".join(
        difflib.unified_diff(_dump(expected), _dump(actual), "expected", "actual", lineterm="", n=3)
    )
    raise AssertionError(f"{vid}: {what} differs\n{diff}")


def _require(vector: Mapping[str, Any], key: str) -> Any:
    if key not in vector:
        raise AssertionError(f"{vector.get('id', '?')}: vector has no {key!r}")
    return vector[key]


# ---------------------------------------------------------------------------------------------
# Kinds


def _run_parse_ok(v: Mapping[str, Any]) -> None:
    vid, syntax, text, exp = v["id"], _require(v, "syntax"), _require(v, "input"), _require(v, "expected")
    parser = _PARSERS.get(syntax)
    if parser is None:
        raise AssertionError(f"{vid}: unknown syntax {syntax!r}")
    try:
        value = parser(text)
    except DtabSyntaxError as e:
        raise AssertionError(f"{vid}: expected {text!r} to parse as {syntax}, got:\n{e}") from e
    if "value" in exp:
        assert_same(vid, "parsed value", exp["value"], value_ast(syntax, value))
    if "show" in exp:
        assert_same(vid, "show", exp["show"], show_value(syntax, value))
    # The printed form must re-parse to the same value.
    again = parser(show_value(syntax, value))
    if "value" in exp:
        assert_same(vid, "re-parsed value", exp["value"], value_ast(syntax, again))


_UPSTREAM_MSG = re.compile(r"^(?P<expected>.*) expected but (?P<found>.*) found at '(?P<display>.*)'$", re.S)


def _upstream_position(message: str, text: str) -> tuple[str, int] | None:
    """(expected token, offset) encoded in an upstream parse message, or None if it has no position.

    ``text`` and the offset are in UTF-16 code units (Java's string indices).
    """
    m = _UPSTREAM_MSG.match(message)
    if not m:
        return None
    display = m.group("display")
    # display = text[:i] + "[" + text[i] + "]" + text[i+1:], or text + "[]".
    if display == text + "[]":
        return m.group("expected"), len(text)
    for i in range(len(text)):
        if display == text[:i] + "[" + text[i] + "]" + text[i + 1 :]:
            return m.group("expected"), i
    raise AssertionError(f"cannot locate the position in upstream message {message!r}")


def _run_parse_error(v: Mapping[str, Any]) -> None:
    vid, syntax, text, exp = v["id"], _require(v, "syntax"), _require(v, "input"), _require(v, "expected")
    parser = _PARSERS.get(syntax)
    if parser is None:
        raise AssertionError(f"{vid}: unknown syntax {syntax!r}")
    message = _require(exp, "message")
    try:
        value = parser(text)
    except DtabSyntaxError as e:
        err = e
    else:
        raise AssertionError(
            f"{vid}: expected a syntax error ({message}) but {text!r} parsed as {show_value(syntax, value)!r}"
        )
    pos = _upstream_position(message, utf16_units(text))
    if pos is None:
        # Finagle's NumberFormatException for a non-ASCII digit carries no position: any syntax
        # error is acceptable (documented deviation).
        if exp.get("error_class") != "NumberFormatException":
            raise AssertionError(f"{vid}: unrecognised upstream error message {message!r}")
        return
    token, offset = pos
    if err.upstream_offset_utf16 != offset or err.upstream_expected != token:
        raise AssertionError(
            f"{vid}: syntax error differs\n  expected: {token} at offset {offset}\n"
            f"  actual:   {err.upstream_expected} at offset {err.upstream_offset_utf16}\n"
            f"  upstream message: {message}\n  our message:\n{err}"
        )
    assert_same(vid, "upstream message", message, err.upstream_message)
    if exp.get("error_class") not in (None, err.upstream_class):
        raise AssertionError(f"{vid}: error class {exp.get('error_class')} vs ours {err.upstream_class}")


def _run_show(v: Mapping[str, Any]) -> None:
    vid, syntax, text, exp = v["id"], _require(v, "syntax"), _require(v, "input"), _require(v, "expected")
    parser = _PARSERS.get(syntax)
    if parser is None:
        raise AssertionError(f"{vid}: unknown syntax {syntax!r}")
    value = parser(text)
    shown = show_value(syntax, value)
    if "show" in exp:
        assert_same(vid, "show", exp["show"], shown)
    if "reparse_equal" in exp:
        equal = parser(shown) == value
        assert_same(vid, "reparse_equal", exp["reparse_equal"], equal)


def _run_lookup(v: Mapping[str, Any]) -> None:
    vid, exp = v["id"], _require(v, "expected")
    dtab = parse_dtab(_require(v, "dtab"))
    path = parse_path(_require(v, "path"))
    tree = dtab.lookup(path)
    if "tree" in exp:
        assert_same(vid, "lookup tree", exp["tree"], tree_ast(tree))
    if "show" in exp:
        assert_same(vid, "show", exp["show"], show_tree(tree))


def _sorted_eval(values: frozenset[Any] | None) -> list[str] | None:
    if values is None:
        return None
    return sorted(str(x) for x in values)


def _run_eval(v: Mapping[str, Any]) -> None:
    vid, exp = v["id"], _require(v, "expected")
    tree = parse_tree(_require(v, "nametree"))
    if "eval" in exp:
        assert_same(vid, "eval", exp["eval"], _sorted_eval(eval_tree(tree)))
    s = simplified(tree)
    if "simplified" in exp:
        assert_same(vid, "simplified", exp["simplified"], tree_ast(s))
    if "simplified_show" in exp:
        assert_same(vid, "simplified_show", exp["simplified_show"], show_tree(s))
    # eval is preserved by simplification, and simplification is idempotent.
    assert_same(vid, "eval(simplified)", _sorted_eval(eval_tree(tree)), _sorted_eval(eval_tree(s)))
    assert_same(vid, "simplified(simplified)", tree_ast(s), tree_ast(simplified(s)))


# ---------------------------------------------------------------------------------------------
# Bind and delegate


def _parse_hostport(text: str) -> Address:
    host, sep, port = text.rpartition(":")
    if not sep:
        raise AssertionError(f"stub namer address {text!r} is not host:port")
    return Address(host, int(port))


def stub_namer(prefix: Path, entries: Mapping[str, Any]) -> Callable[[Path], Any]:
    """A namer following the vector file's ``stub_namer`` semantics."""
    table = [(parse_path(k), outcome) for k, outcome in entries.items()]

    def lookup(residual: Path) -> Any:
        best: tuple[Path, Any] | None = None
        for key, outcome in table:
            if residual.startswith(key) and (best is None or len(key) > len(best[0])):
                best = (key, outcome)
        if best is None:
            return NEG
        key, outcome = best
        if outcome == "neg":
            return NEG
        if outcome == "fail":
            return FAIL
        if outcome == "empty":
            return EMPTY
        if isinstance(outcome, Mapping):
            if "bound" in outcome:
                addr = AddrBound(tuple(_parse_hostport(a) for a in outcome["bound"]))
                return Leaf(BoundName(prefix + key, residual.drop(len(key)), addr))
            if "tree" in outcome:
                return parse_tree(outcome["tree"])
            if "error" in outcome:
                raise RuntimeError(outcome["error"])
        raise AssertionError(f"unknown stub namer outcome {outcome!r}")

    return lookup


def _addr_strings(addr: Any) -> list[str]:
    if isinstance(addr, AddrBound):
        return [f"{a.host}:{a.port}" for a in addr.addresses]
    return []


def bound_leaf_ast(b: BoundName) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "leaf",
        "id": str(b.id),
        "residual": str(b.residual),
        "addrs": _addr_strings(b.addr),
    }
    if b.weight is not None:
        out["weight"] = b.weight
    return out


@dataclass(frozen=True)
class ErrorMapping:
    """How one upstream error corresponds to ours."""

    upstream_class: str
    message: re.Pattern[str]  # fullmatch against the upstream message; groups are the subjects
    ours: type[BindError]
    subjects: str  # what the groups name, for the report


#: The ONE table mapping upstream bind/delegation errors to ours. Every named group of ``message``
#: (the subject: depth, namer, path, message) must appear verbatim in ``str()`` of our error.
UPSTREAM_ERROR_MAP: tuple[ErrorMapping, ...] = (
    ErrorMapping(
        "NamerExceededMaxDepthException",
        re.compile(r"Max recursion level: (?P<depth>\d+) reached in Namer lookup"),
        DepthExceeded,
        "depth",
    ),
    ErrorMapping(
        "UnknownNamer",
        re.compile(r"Unknown namer: (?P<namer>.*) for path: (?P<path>.*)", re.S),
        UnknownNamer,
        "namer and path",
    ),
    ErrorMapping("ClassNotFoundException", re.compile(r"(?P<namer>.*)", re.S), UnknownNamer, "namer"),
    ErrorMapping(
        "IllegalArgumentException",
        re.compile(r"Max recursion level reached\."),
        DelegationCycle,
        "(none: the fixed limit)",
    ),
    ErrorMapping("Exception", re.compile(r"(?P<message>.*)", re.S), NamerError, "namer message"),
    ErrorMapping("IllegalArgumentException", re.compile(r"(?P<message>.*)", re.S), NamerError, "message"),
)


def check_error(vid: str, expected: Mapping[str, Any], err: BaseException | None, got: str) -> None:
    cls, message = _require(expected, "class"), _require(expected, "message")
    if err is None:
        raise AssertionError(f"{vid}: expected {cls}: {message}\n  but got a result: {got}")
    for m in UPSTREAM_ERROR_MAP:
        if m.upstream_class != cls:
            continue
        match = m.message.fullmatch(message)
        if match is None:
            continue
        if not isinstance(err, m.ours):
            raise AssertionError(
                f"{vid}: upstream {cls}: {message!r} corresponds to {m.ours.__name__}, "
                f"but we raised {type(err).__name__}: {err}"
            )
        ours = str(err)
        for name, subject in match.groupdict().items():
            if subject not in ours:
                raise AssertionError(
                    f"{vid}: our {type(err).__name__} does not name the {name} {subject!r}\n"
                    f"  upstream: {message}\n  ours:     {ours}"
                )
        return
    raise AssertionError(f"{vid}: no mapping for upstream error {cls}: {message!r} (ours: {err!r})")


def _ordered_equal(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_ordered_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_ordered_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b)


def _strip_addr(node: Any) -> Any:
    """Vectors omit ``addr`` from a leaf's ``bound`` object (address resolution is out of scope)."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "bound" and isinstance(v, dict):
                v = {kk: vv for kk, vv in v.items() if kk != "addr"}
            out[k] = _strip_addr(v)
        return out
    if isinstance(node, list):
        return [_strip_addr(x) for x in node]
    return node


def _run_bind(v: Mapping[str, Any]) -> None:
    vid, exp = v["id"], _require(v, "expected")
    mode = v.get("mode", "bind")
    interpreter = v.get("interpreter", "linkerd")
    if interpreter not in ("linkerd", "finagle"):
        raise AssertionError(f"{vid}: unknown interpreter {interpreter!r}")
    dtab = parse_dtab(_require(v, "dtab"))
    if v.get("local_dtab") is not None:
        dtab = dtab + parse_dtab(v["local_dtab"])
    path = parse_path(_require(v, "path"))
    namers = []
    for n in v.get("namers", []):
        prefix = parse_path(_require(n, "prefix"))
        namers.append((prefix, stub_namer(prefix, _require(n, "entries"))))
    if mode == "bind":
        max_depth = v.get("max_depth", 100)
        try:
            result = bind(dtab, path, namers, max_depth=max_depth, interpreter=interpreter)
        except BindError as e:
            if "error" not in exp:
                raise AssertionError(f"{vid}: unexpected bind error {type(e).__name__}: {e}") from e
            check_error(vid, exp["error"], e, "")
            return
        tree = result.tree
        if tree is PENDING:
            raise AssertionError(f"{vid}: bind is pending")
        shown = show_tree(tree)
        if "error" in exp:
            check_error(vid, exp["error"], None, shown)
        if _contains_alt(tree):
            raise AssertionError(f"{vid}: a bound tree contains an Alt: {shown}")
        if "tree" in exp:
            assert_same(vid, "bound tree", exp["tree"], tree_ast(tree, _bound_leaf))
        if "show" in exp:
            assert_same(vid, "show", exp["show"], shown)
        if "eval" in exp:
            ev = eval_tree(tree)
            ids = None if ev is None else sorted({str(b.id) for b in ev})
            assert_same(vid, "eval", exp["eval"], ids)
    elif mode == "delegate":
        try:
            node = delegate(dtab, path, namers, interpreter=interpreter)
        except BindError as e:
            if "error" not in exp:
                raise AssertionError(f"{vid}: unexpected delegation error {type(e).__name__}: {e}") from e
            check_error(vid, exp["error"], e, "")
            return
        if node is PENDING:
            raise AssertionError(f"{vid}: delegation is pending")
        js = node.to_json()
        if "error" in exp:
            check_error(vid, exp["error"], None, json.dumps(js))
        if "delegate_tree" in exp:
            actual = _strip_addr(js)
            if not _ordered_equal(exp["delegate_tree"], actual):
                assert_same(vid, "delegate tree", exp["delegate_tree"], actual, force=True)
            # The same explanation with addresses must serialise to JSON.
            json.dumps(js)
    else:
        raise AssertionError(f"{vid}: unknown bind mode {mode!r}")


def _bound_leaf(value: Any) -> dict[str, Any]:
    if not isinstance(value, BoundName):
        raise AssertionError(f"bound tree has an unbound leaf {value!r}")
    return bound_leaf_ast(value)


def _contains_alt(tree: Any) -> bool:
    if isinstance(tree, Alt):
        return True
    if isinstance(tree, Union):
        return any(_contains_alt(b.tree) for b in tree.branches)
    return False


def run_vector(vector: dict[str, Any]) -> None:
    """Run one vector; raise AssertionError with a readable diff on any mismatch."""
    kind = _require(vector, "kind")
    if kind == "parse_ok":
        _run_parse_ok(vector)
    elif kind == "parse_error":
        _run_parse_error(vector)
    elif kind == "show":
        _run_show(vector)
    elif kind == "lookup":
        _run_lookup(vector)
    elif kind == "eval":
        _run_eval(vector)
    elif kind == "bind":
        _run_bind(vector)
    else:
        raise AssertionError(f"{vector.get('id', '?')}: unknown vector kind {kind!r}")
