"""Pure helpers behind ``hostproxy dtab``: a comment-preserving formatter and a linter for dtab files.

Theory of operation
-------------------
The dtab parser (``dtab.parse_dtab``) turns text into dentries and forgets everything else: comments,
blank lines, where a dentry was written. The formatter and the linter need both, so this module keeps a
second, much smaller view of the same text, the *layout*: where each dentry starts and ends, and which
comments sit around it. The layout scanner (:func:`scan_layout`) is only ever run on text that
``parse_dtab`` has already accepted, so it can be a tokenizer rather than a parser: outside a path, ``;``
ends a dentry and ``#`` starts a comment running to the end of the line; inside a path (from ``/``
through label characters, escapes, ``*`` elements and further ``/``) a ``#`` is part of a label, exactly
as in the parser (``/#/io.l5d.fs`` is a path, ``/a => /b # note`` has a comment).

Formatting (:func:`format_dtab`) prints one dentry per line as ``<prefix> => <dst>;`` and keeps comments:

* a comment on a line of its own stays on its own line, above the dentry that follows it (comments after
  the last dentry stay at the end);
* a comment on the same line as the end of a dentry (after its last token or after its ``;``) stays at
  the end of that dentry's line, after two spaces; several such comments are joined on that line;
* a comment written *inside* a dentry (between its tokens, spread over lines) moves to its own line
  above that dentry, because a dentry is printed on one line;
* one blank line is kept where the source had one or more; leading and trailing blank lines go.

The destination is printed canonically by :func:`format_tree`: ``a | b`` for alternatives, ``a & b`` for
unions, ``W * t`` for a weighted union branch whose weight is not exactly 1, parentheses only where
they are needed to keep a nested node nested (an alternative inside an alternative or a union, a union
inside a union). Unlike Finagle's printer, which rounds weights to two decimals (``0.125`` prints as
``0.13``), weights are printed as the shortest decimal that reads back as the same double, so the
formatted text always parses to a Dtab equal to the original; every dentry ends with ``;`` (one trailing
``;`` is legal). Formatting is idempotent: the output of the formatter formats to itself.

The linter (:func:`lint_dtab`) is described on that function.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dtab import ANY, Alt, Dentry, Dtab, Empty, Fail, Leaf, Neg, Path, Union, Weighted, parse_dtab
from dtab.tree import exact_weight

# Label characters (spec §2.1): the 69 "showable" ASCII characters.
LABEL_CHARS = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_:.#$%-")


# ------------------------------------------------------------------------------------------------
# Layout: where dentries and comments are in the source text.
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comment:
    """A ``#`` comment: its text (from ``#``, trailing whitespace removed) and 1-based position."""

    text: str
    offset: int
    line: int
    column: int


@dataclass
class DentryLayout:
    """Where one dentry is written: ``text[start:end]`` runs from its first to its last token.

    ``leading`` are the comments printed above it (own-line comments before it, then comments written
    between its tokens); ``trailing`` those printed at the end of its line. ``blank_before`` and
    ``leading_blank`` say where the source had a blank line before the dentry line or a comment.
    """

    start: int
    end: int
    line: int
    column: int
    leading: list[Comment] = field(default_factory=list)
    trailing: list[Comment] = field(default_factory=list)
    blank_before: bool = False
    # Per leading comment: whether the source had a blank line before it.
    leading_blank: list[bool] = field(default_factory=list)


@dataclass
class Layout:
    """The layout of a whole dtab text: its dentries in order, and comments after the last one."""

    text: str
    dentries: list[DentryLayout]
    tail: list[Comment]
    tail_blank: list[bool]

    def position(self, offset: int) -> tuple[int, int]:
        """1-based (line, column) of ``offset`` in the text."""
        return line_column(self.text, offset)


#: The text whose line starts were found last, and those offsets: the layout asks the position of
#: every dentry and token of one text, and counting newlines from the start each time was quadratic.
_line_starts: tuple[str, list[int]] | None = None


def line_column(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column (in characters) of ``offset``, lines split at ``\\n`` as the parser does."""
    global _line_starts
    if _line_starts is None or _line_starts[0] is not text:
        _line_starts = (text, [0] + [m.end() for m in re.finditer("\n", text)])
    starts = _line_starts[1]
    line = bisect.bisect_right(starts, offset)
    return line, offset - starts[line - 1] + 1


def _scan_path(text: str, i: int) -> int:
    """Return the offset just after the path or prefix starting with the ``/`` at ``i``."""
    n = len(text)
    i += 1
    while True:
        if i < n and text[i] == "*":
            i += 1
        elif i < n and (text[i] in LABEL_CHARS or text[i] == "\\"):
            while i < n and (text[i] in LABEL_CHARS or text[i] == "\\"):
                i += 4 if text[i] == "\\" else 1  # an escape is always \xHH in accepted text
        else:
            return i  # a lone "/" is the empty path
        if i < n and text[i] == "/":
            i += 1
            continue
        return min(i, n)


def _comment_end(text: str, i: int) -> int:
    nl = text.find("\n", i)
    return len(text) if nl < 0 else nl


def scan_layout(text: str) -> Layout:
    """Find the dentries and comments of ``text``, which must be a dtab that ``parse_dtab`` accepts.

    Events are processed in source order; a comment is *trailing* when it is on the line where the
    previous dentry's last token or its ``;`` was written and no other dentry started since, otherwise
    it is *leading* for the next dentry (or part of the tail).
    """
    n = len(text)
    dentries: list[DentryLayout] = []
    pending: list[Comment] = []
    pending_blank: list[bool] = []
    current: DentryLayout | None = None  # the dentry trailing comments attach to
    content_line = 0  # line of the last token or ';' of `current`
    prev_end = 0  # end of the previous token/comment, for blank-line detection
    seen_any = False

    def make_comment(i: int) -> tuple[Comment, int]:
        end = _comment_end(text, i)
        line, col = line_column(text, i)
        return Comment(text[i:end].rstrip(), i, line, col), end

    def blank_gap(start: int) -> bool:
        return seen_any and text.count("\n", prev_end, start) >= 2

    i = 0
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c == "#":
            comment, end = make_comment(i)
            if current is not None and comment.line == content_line:
                current.trailing.append(comment)
            else:
                pending.append(comment)
                pending_blank.append(blank_gap(i))
            prev_end, seen_any, i = end, True, end
            continue
        if c == ";":
            content_line = line_column(text, i)[0]
            prev_end, seen_any, i = i + 1, True, i + 1
            continue
        # A dentry starts here and runs to the next ';' outside comments (or the end of the text).
        start = i
        blank = blank_gap(start)
        inner: list[Comment] = []
        last_end = i
        while i < n:
            c = text[i]
            if c.isspace():
                i += 1
            elif c == "#":
                comment, i = make_comment(i)
                inner.append(comment)
            elif c == ";":
                break
            elif c == "/":
                i = _scan_path(text, i)
                last_end = i
            else:
                i += 1
                last_end = i
        line, col = line_column(text, start)
        hoisted = [cm for cm in inner if cm.offset < last_end]
        leading = pending + hoisted
        leading_blank = pending_blank + [False] * len(hoisted)
        if hoisted:  # the blank line before the dentry goes above the comments hoisted out of it
            leading_blank[len(pending)], blank = blank, False
        current = DentryLayout(
            start, last_end, line, col, leading=leading, blank_before=blank, leading_blank=leading_blank
        )
        dentries.append(current)
        pending, pending_blank = [], []
        content_line = line_column(text, max(last_end - 1, start))[0]
        gap_start = last_end
        for cm in inner:
            if cm.offset >= last_end:  # after the last token, before the ';' (or the end of the text)
                if cm.line == content_line:
                    current.trailing.append(cm)
                else:
                    pending.append(cm)
                    pending_blank.append(text.count("\n", gap_start, cm.offset) >= 2)
                gap_start = _comment_end(text, cm.offset)
        prev_end, seen_any = i, True
    return Layout(text, dentries, pending, pending_blank)


def render_layout(layout: Layout, dentry_lines: list[str]) -> str:
    """Print ``layout`` with ``dentry_lines[k]`` (already formatted, without ``;``) for dentry ``k``."""
    out: list[str] = []

    def emit(line: str, blank: bool) -> None:
        if blank and out:
            out.append("")
        out.append(line)

    for d, body in zip(layout.dentries, dentry_lines, strict=True):
        for cm, blank in zip(d.leading, d.leading_blank, strict=True):
            emit(cm.text, blank)
        line = body + ";"
        if d.trailing:
            line += "  " + " ".join(cm.text for cm in d.trailing)
        emit(line, d.blank_before)
    for cm, blank in zip(layout.tail, layout.tail_blank, strict=True):
        emit(cm.text, blank)
    return "\n".join(out) + "\n" if out else ""


# ------------------------------------------------------------------------------------------------
# Formatting.
# ------------------------------------------------------------------------------------------------


def format_tree(tree: Any, context: str = "top") -> str:
    """The canonical one-line form of a name tree of paths (see the module docstring).

    ``context`` is where the tree appears: ``"top"``, ``"alt"`` (a child of an alternative) or
    ``"union"`` (a union branch); it decides the parentheses.
    """
    if isinstance(tree, Leaf):
        return str(tree.value)
    if isinstance(tree, (Neg, Fail, Empty)):
        return str(tree)
    if isinstance(tree, Alt):
        if len(tree.trees) == 1:  # the parser never builds these; print the child
            return format_tree(tree.trees[0], context)
        body = " | ".join(format_tree(c, "alt") for c in tree.trees)
        return f"({body})" if context != "top" else body
    if isinstance(tree, Union):
        if len(tree.branches) == 1:
            return format_tree(tree.branches[0].tree, context)
        body = " & ".join(_format_branch(b) for b in tree.branches)
        return f"({body})" if context == "union" else body
    raise TypeError(f"not a name tree: {tree!r}")


def _format_branch(b: Weighted) -> str:
    body = format_tree(b.tree, "union")
    if b.weight == Weighted.DEFAULT_WEIGHT:
        return body
    return f"{exact_weight(b.weight)} * {body}"


def format_dentry(d: Dentry) -> str:
    """``<prefix> => <dst>`` in canonical form (without the ``;``)."""
    return f"{d.prefix} => {format_tree(d.dst)}"


def parse_with_layout(text: str) -> tuple[Dtab, Layout]:
    """Parse ``text`` (raising :class:`dtab.DtabSyntaxError`) and scan its layout."""
    table = parse_dtab(text)
    layout = scan_layout(text)
    if len(layout.dentries) != len(table):
        # Only a disagreement between the scanner and the parser can get here.
        raise AssertionError(
            f"layout scanner found {len(layout.dentries)} dentries where the parser found {len(table)}"
        )
    return table, layout


def format_dtab(text: str) -> str:
    """Format a dtab file: canonical dentries, comments kept (see the module docstring).

    Raises :class:`dtab.DtabSyntaxError` when ``text`` does not parse.
    """
    table, layout = parse_with_layout(text)
    return render_layout(layout, [format_dentry(d) for d in table])


# ------------------------------------------------------------------------------------------------
# Linting.
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LintWarning:
    """One finding: a stable ``code``, a 1-based position in the file and a message saying what to do."""

    code: str
    line: int
    column: int
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "line": self.line, "column": self.column, "message": self.message}


@dataclass(frozen=True)
class _Weight:
    start: int  # offset of the number in the text
    value: float
    union_size: int  # number of terms in the '&' group it belongs to (1: the weight is discarded)
    term: str  # source text of the weighted term, whitespace collapsed


def _dst_tokens(text: str, start: int, end: int) -> list[tuple[str, int, int]]:
    """Tokens of an accepted name tree in ``text[start:end]``: (kind, start, end), comments skipped."""
    out: list[tuple[str, int, int]] = []
    i = start
    while i < end:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":
            i = min(_comment_end(text, i), end)
        elif c == "/":
            j = _scan_path(text, i)
            out.append(("path", i, j))
            i = j
        elif c.isdigit() or c == ".":
            j = i
            while j < end and (text[j].isdigit() or text[j] == "."):
                j += 1
            out.append(("num", i, j))
            i = j
        else:
            out.append((c, i, i + 1))
            i += 1
    return out


def _weights(text: str, start: int, end: int) -> list[_Weight]:
    """Every weight written in the dentry ``text[start:end]``, with the size of its union."""
    toks = _dst_tokens(text, start, end)
    toks = toks[[t[0] for t in toks].index(">") + 1 :]  # the name tree starts after '=>'
    found: list[_Weight] = []
    pos = 0

    def tree() -> None:
        tree1()
        while pos < len(toks) and toks[pos][0] == "|":
            advance()
            tree1()

    def tree1() -> None:
        written: list[tuple[int, int, int, int]] = []  # (num start, num end, term start, term end)
        terms = 1
        num = weighted()
        if num:
            written.append(num)
        while pos < len(toks) and toks[pos][0] == "&":
            advance()
            terms += 1
            num = weighted()
            if num:
                written.append(num)
        for ns, ne, ts, te in written:
            found.append(_Weight(ns, float(text[ns:ne]), terms, " ".join(text[ts:te].split())))

    def weighted() -> tuple[int, int, int, int] | None:
        if toks[pos][0] != "num":
            simple()
            return None
        _, ns, ne = advance()
        advance()  # '*'
        ts = toks[pos][1]
        te = simple()
        return ns, ne, ts, te

    def simple() -> int:
        kind, _, e = advance()
        if kind == "(":
            tree()
            _, _, e = advance()  # ')'
        return e

    def advance() -> tuple[str, int, int]:
        nonlocal pos
        tok = toks[pos]
        pos += 1
        return tok

    tree()
    return found


def _covers(general: tuple[Any, ...], specific: tuple[Any, ...]) -> bool:
    """True when prefix ``general`` matches every path that prefix ``specific`` matches."""
    if len(general) > len(specific):
        return False
    return all(g is ANY or (s is not ANY and g == s) for g, s in zip(general, specific, strict=False))


def _matches_always(prefix: tuple[Any, ...], labels: tuple[bytes, ...]) -> bool:
    """True when ``prefix`` matches ``labels ++ S`` for every suffix ``S``."""
    if len(prefix) > len(labels):
        return False
    return all(e is ANY or e == lab for e, lab in zip(prefix, labels, strict=False))


class _PrefixIndex:
    """The dentries of a table by prefix, for the lint's lookups, latest first: a prefix without
    ``*`` is found by looking up each leading part of the path (a dict), the few with ``*`` are tried
    one by one. Scanning every dentry for every path made ``lint`` quadratic and worse: minutes for a
    few thousand dentries."""

    def __init__(self, dentries: list[Dentry]) -> None:
        self.prefixes = [d.prefix.elems for d in dentries]
        self.exact: dict[tuple[Any, ...], list[int]] = {}
        self.wild: list[int] = []
        for k, prefix in enumerate(self.prefixes):
            if any(e is ANY for e in prefix):
                self.wild.append(k)
            else:
                self.exact.setdefault(tuple(prefix), []).append(k)

    def _lookup(
        self, elems: tuple[Any, ...], test: Callable[[tuple[Any, ...], tuple[Any, ...]], bool]
    ) -> list[int]:
        found = [k for n in range(len(elems) + 1) for k in self.exact.get(tuple(elems[:n]), ())]
        found += [k for k in self.wild if test(self.prefixes[k], elems)]
        found.sort(reverse=True)
        return found

    def always(self, labels: tuple[bytes, ...]) -> list[int]:
        """The dentries whose prefix matches ``labels ++ S`` for every ``S`` (``_matches_always``)."""
        return self._lookup(labels, _matches_always)

    def covering(self, elems: tuple[Any, ...]) -> list[int]:
        """The dentries whose prefix matches every path prefix ``elems`` matches (``_covers``)."""
        return self._lookup(elems, _covers)


def _may_match(prefix: tuple[Any, ...], labels: tuple[bytes, ...]) -> bool:
    """True when ``prefix`` matches ``labels ++ S`` for some suffix ``S``."""
    return all(e is ANY or e == lab for e, lab in zip(prefix, labels, strict=False))


_INET = (b"inet", b"fixedinet")


def _system_outcome(path: Path, table: Dtab) -> str | None:
    """What binding ``path ++ residual`` surely gives, when the dtab cannot rewrite it; else None.

    Only ``/$/`` paths whose outcome does not depend on the residual or on DNS are known:
    ``/$/inet/<host>/<port>`` and ``/$/inet/<port>`` (a bound leaf, whatever the host resolves to),
    ``/$/fail`` (``!``) and ``/$/nil`` (``$``).
    """
    labels = path.labels
    if len(labels) < 2 or labels[0] != b"$":
        return None
    if any(_may_match(d.prefix.elems, labels) for d in table):
        return None  # a dentry could rewrite it before the system namer sees it
    if labels[1] == b"fail":
        return "fail"
    if labels[1] == b"nil":
        return "empty"
    if labels[1] in _INET:
        port = labels[3] if len(labels) >= 4 else labels[2] if len(labels) == 3 else b""
        if port.isdigit() and 0 < int(port) <= 65535:
            return "bound"
    return None


def _never_neg(t: Any, table: Dtab) -> bool:
    """True only when binding ``t`` (with any residual appended) can never give ``~``."""
    if isinstance(t, (Fail, Empty)):
        return True
    if isinstance(t, Leaf):
        return _system_outcome(t.value, table) is not None
    if isinstance(t, Alt):
        return any(_never_neg(c, table) for c in t.trees)
    if isinstance(t, Union):
        return any(_always_value(b.tree, table) for b in t.branches)
    return False


def _never_fail(t: Any, table: Dtab) -> bool:
    if isinstance(t, (Neg, Empty, Union)):
        return not isinstance(t, Union) or len(t.branches) != 1 or _never_fail(t.branches[0].tree, table)
    if isinstance(t, Leaf):
        return _system_outcome(t.value, table) in ("bound", "empty")
    if isinstance(t, Alt):
        return all(_never_fail(c, table) for c in t.trees)
    return False


def _always_value(t: Any, table: Dtab) -> bool:
    """True only when binding ``t`` can give neither ``~`` nor ``!``."""
    if isinstance(t, Empty):
        return True
    if isinstance(t, Leaf):
        return _system_outcome(t.value, table) in ("bound", "empty")
    if isinstance(t, Alt):
        for c in t.trees:
            if _always_value(c, table):
                return True
            if not _never_fail(c, table):
                return False
        return False
    if isinstance(t, Union):
        return any(_always_value(b.tree, table) for b in t.branches)
    return False


def _leaves(t: Any) -> list[Path]:
    if isinstance(t, Leaf):
        return [t.value]
    if isinstance(t, Alt):
        return [p for c in t.trees for p in _leaves(c)]
    if isinstance(t, Union):
        return [p for b in t.branches for p in _leaves(b.tree)]
    return []


_MAX_CHAIN = 32
_MAX_STEPS = 5000


def _find_cycles(table: Dtab) -> dict[frozenset[int], list[tuple[int, tuple[bytes, ...]]]]:
    """Rewrite cycles: chains of dentries that lead from a prefix back to a path it matches.

    From each dentry ``e`` (prefix ``P``), follow the rewrites of ``P ++ S`` for an arbitrary suffix
    ``S``: each leaf ``L`` of the destination gives ``L ++ S``; a dentry whose prefix matches
    ``C ++ S`` whatever ``S`` is rewrites it on. Reaching a path that ``P`` matches again means the
    chain consumed nothing, so it repeats for ever. Matches that depend on ``S`` are not followed (they
    consume labels, so such chains end), which keeps every reported cycle real.
    """
    dentries = list(table)
    index = _PrefixIndex(dentries)
    cycles: dict[frozenset[int], list[tuple[int, tuple[bytes, ...]]]] = {}
    for s, entry in enumerate(dentries):
        start = entry.prefix.elems
        steps = 0
        # (path labels, chain of (dentry index, rewritten path) that led here)
        stack: list[tuple[tuple[bytes, ...], list[tuple[int, tuple[bytes, ...]]]]] = [
            (leaf.labels, [(s, leaf.labels)]) for leaf in reversed(_leaves(entry.dst))
        ]
        seen: set[tuple[bytes, ...]] = set()
        while stack and steps < _MAX_STEPS:
            labels, chain = stack.pop()
            steps += 1
            if _matches_always(start, labels):
                key = frozenset(i for i, _ in chain)
                if key not in cycles:
                    cycles[key] = chain
                continue
            if labels in seen or len(chain) >= _MAX_CHAIN:
                continue
            seen.add(labels)
            for k in index.always(labels):
                rest = labels[len(index.prefixes[k]) :]
                for leaf in reversed(_leaves(dentries[k].dst)):
                    stack.append((leaf.labels + rest, [*chain, (k, leaf.labels + rest)]))
    # A longer cycle that contains a shorter one is the same problem seen from another dentry.
    return {key: chain for key, chain in cycles.items() if not any(other < key for other in cycles)}


def _show_labels(labels: tuple[bytes, ...]) -> str:
    return str(Path(labels))


def lint_dtab(text: str) -> list[LintWarning]:
    """Find dentries that can never be used, rewrite cycles and union weights of 0.

    Raises :class:`dtab.DtabSyntaxError` when ``text`` does not parse. Findings, sorted by position:

    ``shadowed``
        Dentry ``i`` is never used for routing when a *later* dentry ``j`` matches every path that
        ``i`` matches (same prefix, or a more general one: shorter, or ``*`` where ``i`` has a label)
        and ``j``'s destination can never bind to ``~``: lookups try later dentries first and fall
        back to earlier ones only on ``~``. The rule is deliberately conservative, because a leaf
        path is ``~`` whenever nothing binds it (a namer does not know the name, no dentry rewrites
        it). A destination counts as never-``~`` only when it is ``!`` or ``$``; a ``/$/inet/<host>/
        <port>``, ``/$/inet/<port>``, ``/$/fail`` or ``/$/nil`` path that no dentry of the file could
        rewrite; an alternative ``a | b`` with such a child; or a union ``a & b`` with a branch that
        can be neither ``~`` nor ``!`` (a union drops ``~`` and ``!`` branches and is ``~`` when none
        is left). Any other path, e.g. ``/#/io.l5d.fs/web``, may be ``~`` and so never shadows.
        (The file is judged alone: a per-request dtab that rewrites ``/$/inet`` paths is not foreseen.)
    ``cycle``
        A chain of dentries rewrites a prefix back to a path the same prefix matches without consuming
        a label (``/a => /b; /b => /a``, or ``/a => /a/v1``). A name that nothing else binds then loops
        until the recursion limit and the lookup fails, instead of falling back to ``~``. Only chains
        that hold whatever the rest of the path is are followed (see :func:`_find_cycles`).
    ``zero-weight``
        A union branch written with weight 0 gets no traffic (a union sends each branch
        ``weight / sum of weights`` of the requests; when every weight is 0 the split is even).
    ``lone-weight``
        A weight on a term that is not part of a union (``0.5 * /a`` alone) is ignored by the parser.
    """
    table, layout = parse_with_layout(text)
    warnings: list[LintWarning] = []
    dentries = list(table)
    starts = [(d.line, d.column) for d in layout.dentries]

    def where(k: int) -> str:
        return f"line {starts[k][0]}"

    index = _PrefixIndex(dentries)
    for i, d in enumerate(dentries):
        for j in index.covering(d.prefix.elems):
            if j <= i:
                break
            later = dentries[j]
            if _never_neg(later.dst, table):
                same = later.prefix == d.prefix
                how = (
                    "has the same prefix"
                    if same
                    else f"has prefix {later.prefix}, which matches every path {d.prefix} matches,"
                )
                warnings.append(
                    LintWarning(
                        "shadowed",
                        *starts[i],
                        f"dentry '{format_dentry(d)}' is never used: the later dentry '{format_dentry(later)}' "
                        f"({where(j)}) {how} and its destination can never be '~', so lookups never fall "
                        f"back to this one; delete this dentry, or move it after {where(j)} if it should win",
                    )
                )
                break

    for key, chain in _find_cycles(table).items():
        first = min(key)
        shown = " -> ".join([str(dentries[chain[0][0]].prefix)] + [_show_labels(p) for _, p in chain])
        line_numbers = sorted({starts[k][0] for k in key})
        lines = ", ".join(str(n) for n in line_numbers)
        warnings.append(
            LintWarning(
                "cycle",
                *starts[first],
                f"rewrite cycle {shown} (line{'s' if len(line_numbers) > 1 else ''} {lines}) consumes no "
                "label: a name that nothing else binds loops until the recursion limit and fails instead of "
                "falling back; point one of these dentries at a namer (/#/...) or an address (/$/inet/...) "
                "instead",
            )
        )

    for dl in layout.dentries:
        for w in _weights(text, dl.start, dl.end):
            line, col = layout.position(w.start)
            if w.union_size < 2:
                warnings.append(
                    LintWarning(
                        "lone-weight",
                        line,
                        col,
                        f"the weight of '{w.term}' is ignored: a weight only matters between the branches of "
                        "a union 'a & b'; remove the weight, or add the other branches",
                    )
                )
            elif w.value == 0:
                warnings.append(
                    LintWarning(
                        "zero-weight",
                        line,
                        col,
                        f"union branch '{w.term}' has weight 0 and gets no traffic (unless every branch has "
                        "weight 0, when traffic is split evenly); remove the branch, or give it a positive "
                        "weight",
                    )
                )
    warnings.sort(key=lambda w: (w.line, w.column, w.code))
    return warnings
