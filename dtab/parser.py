"""The dtab parser: paths, prefixes, name trees, dentries and dtabs.

Theory of operation: one hand-written recursive-descent parser over a ``str``, one character of
look-ahead, mirroring Finagle's grammar exactly (spec ``dtab.md`` §2)::

    path      = WS "/" [ label { "/" label } ]           label = { showable | "\\x" hex hex }+
    prefix    = WS "/" [ pelem { "/" pelem } ]           pelem = "*" | label
    tree      = tree1 { WS "|" tree1 }                   (2+ operands -> Alt)
    tree1     = weighted { WS "&" weighted }             (2+ operands -> Union; 1 -> weight dropped)
    weighted  = WS [ number WS "*" WS ] simple
    simple    = WS ( "(" tree WS ")" | path | "!" | "~" | "$" )
    dentry    = prefix WS "=>" tree
    dtab      = WS [ dentry WS { ";" WS dentry WS } [ ";" WS ] ]

and every entry point then requires ``WS <end of input>``. ``WS`` is Java's whitespace set (not
Python's ``str.isspace``) plus ``#`` comments running to the end of the line; a ``#`` glued to a label
is part of the label because whitespace is never skipped inside a path.

Errors are :class:`~dtab.errors.DtabSyntaxError` raised at the same position Finagle reports, with
Finagle's token kept in ``upstream_expected`` (so ``upstream_message`` is byte-for-byte Finagle's) and a
friendlier ``expected`` plus, where it helps, a ``hint``. Deviation: a weight containing a non-ASCII
Unicode digit (which Finagle's lexer accepts and its number conversion then rejects with a
``NumberFormatException`` carrying no position) is reported as an ordinary positioned syntax error, and
so is a weight too large for a double (Finagle reads it as ``Infinity``, then prints it as a word its
own parser rejects, and no weighted choice can split traffic by it).
Parentheses may nest at most :data:`MAX_NESTING` deep (a syntax error, never a ``RecursionError``).
"""

from __future__ import annotations

import math
import unicodedata
from typing import Any, NoReturn

from dtab.errors import DtabSyntaxError
from dtab.path import ANY, SHOWABLE_CHARS, Path, Prefix, PrefixElem
from dtab.table import Dentry, Dtab
from dtab.tree import EMPTY, FAIL, NEG, Alt, Leaf, Union, Weighted

#: Characters for which Java's ``Character.isWhitespace`` is true (spec §2.1).
JAVA_WHITESPACE = frozenset(
    "\t\n\u000b\f\r\u001c\u001d\u001e\u001f "
    "\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2008\u2009\u200a"
    "\u2028\u2029\u205f\u3000"
)
_SHOWABLE = frozenset(SHOWABLE_CHARS)
_HEX = frozenset("0123456789abcdefABCDEF")
_EOI = ""

#: Maximum depth of nested parentheses in a name tree.
MAX_NESTING = 100

# Friendlier wording for Finagle's expectation tokens.
_EXPECTED_WORDS = {
    "label char": "a label character (0-9 A-Z a-z _ : . # $ % - or a \\xHH escape)",
    "hex char": "a hex digit (0-9, a-f, A-F)",
    "simple": "a name ('/path', '!', '~', '$' or '(')",
    "number char": "a digit (a weight has at most one '.')",
    "weight": "a weight (digits with at most one '.')",
    "'='": "'=>'",
    "'>'": "'>' (write '=>' without a space)",
    "'x'": "'x' (escapes are written \\xHH with a lowercase x)",
    "'*'": "'*' after the weight",
}


def is_java_whitespace(ch: str) -> bool:
    return ch in JAVA_WHITESPACE


def _is_java_digit(ch: str) -> bool:
    return len(ch) == 1 and unicodedata.category(ch) == "Nd"


class _Parser:
    __slots__ = ("text", "size", "idx", "depth")

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise TypeError(f"dtab text must be str, not {type(text).__name__}")
        self.text = text
        self.size = len(text)
        self.idx = 0
        self.depth = 0

    # -- scanning ------------------------------------------------------------------------------
    def peek(self) -> str:
        return self.text[self.idx] if self.idx < self.size else _EOI

    def at_end(self) -> bool:
        return self.idx >= self.size

    def maybe_eat(self, ch: str) -> bool:
        if self.peek() != ch:
            return False
        self.idx += 1
        return True

    def eat(self, ch: str) -> None:
        if self.peek() != ch:
            self.illegal(f"'{ch}'")
        self.idx += 1

    def eat_whitespace(self) -> None:
        in_comment = False
        text, size = self.text, self.size
        i = self.idx
        while i < size:
            c = text[i]
            if c == "#":
                in_comment = True
            elif c == "\n":
                in_comment = False
            elif not in_comment and c not in JAVA_WHITESPACE:
                break
            i += 1
        self.idx = i

    def ensure_end(self) -> None:
        self.eat_whitespace()
        if not self.at_end():
            self.illegal("end of input", hint=self._end_hint())

    # -- errors --------------------------------------------------------------------------------
    def illegal(
        self,
        token: str,
        *,
        hint: str | None = None,
        offset: int | None = None,
        upstream_offset: int | None = None,
    ) -> NoReturn:
        at = self.idx if offset is None else offset
        raise DtabSyntaxError(
            self.text,
            at,
            _EXPECTED_WORDS.get(token, token),
            hint=hint,
            upstream_offset=upstream_offset,
            upstream_expected=token,
        )

    def _end_hint(self) -> str | None:
        c = self.peek()
        before = self.text[: self.idx]
        stripped = before.rstrip("".join(JAVA_WHITESPACE))
        if c == "/" and "\n" in before[len(stripped) :] and "=>" in before:
            return "dentries are separated by ';' — a newline is not a separator"
        if c == "/" and stripped.endswith("/"):
            return "a path has no empty labels: remove the doubled '/'"
        if c == ",":
            return "dentries are separated by ';', not ','"
        if c == "*":
            return "'*' is a wildcard only in a dentry prefix; write \\x2a for a literal star"
        if c and ord(c) > 0x7F and stripped == before and before:
            return "escape non-ASCII bytes as \\xHH (UTF-8 bytes)"
        if c == "/" and stripped != before:
            return "whitespace ends a path; join alternatives with '|' or '&'"
        if c in "~!$(" and c:
            return "join names with '|' (fail-over) or '&' (weighted union)"
        return None

    # -- labels and paths ----------------------------------------------------------------------
    def is_label_char(self, c: str) -> bool:
        return c == "\\" or (c != _EOI and c in _SHOWABLE)

    def parse_hex(self) -> str:
        c = self.peek()
        if c == _EOI or c not in _HEX:
            self.illegal("hex char")
        self.idx += 1
        return c

    def parse_label(self) -> bytes:
        out = bytearray()
        while True:
            c = self.peek()
            if c == "\\":
                self.idx += 1
                self.eat("x")
                hi = self.parse_hex()
                lo = self.parse_hex()
                out.append(int(hi + lo, 16))
            elif c != _EOI and c in _SHOWABLE:
                self.idx += 1
                out.append(ord(c))
            else:
                hint = None
                if c == "/" or c == _EOI or c in JAVA_WHITESPACE:
                    hint = "a path cannot end with '/' or contain an empty label"
                elif c == "*":
                    hint = "'*' is a wildcard only in a dentry prefix; write \\x2a for a literal star"
                elif ord(c) > 0x7F:
                    hint = "escape non-ASCII bytes as \\xHH (UTF-8 bytes)"
                self.illegal("label char", hint=hint)
            if not self.is_label_char(self.peek()):
                return bytes(out)

    def parse_path(self) -> Path:
        self.eat_whitespace()
        self.eat("/")
        if not self.is_label_char(self.peek()):
            return Path.EMPTY
        labels = [self.parse_label()]
        while self.maybe_eat("/"):
            labels.append(self.parse_label())
        return Path(tuple(labels))

    def parse_prefix(self) -> Prefix:
        self.eat_whitespace()
        self.eat("/")
        if not self.is_label_char(self.peek()) and self.peek() != "*":
            return Prefix.EMPTY
        elems: list[PrefixElem] = []
        while True:
            if self.maybe_eat("*"):
                elems.append(ANY)
            else:
                elems.append(self.parse_label())
            if not self.maybe_eat("/"):
                return Prefix(tuple(elems))

    # -- trees ---------------------------------------------------------------------------------
    def parse_tree(self) -> Any:
        trees = [self.parse_tree1()]
        self.eat_whitespace()
        while self.maybe_eat("|"):
            trees.append(self.parse_tree1())
            self.eat_whitespace()
        return Alt(tuple(trees)) if len(trees) > 1 else trees[0]

    def parse_tree1(self) -> Any:
        branches = [self.parse_weighted()]
        self.eat_whitespace()
        while self.maybe_eat("&"):
            branches.append(self.parse_weighted())
            self.eat_whitespace()
        return Union(tuple(branches)) if len(branches) > 1 else branches[0].tree

    def parse_simple(self) -> Any:
        self.eat_whitespace()
        c = self.peek()
        if c == "(":
            if self.depth >= MAX_NESTING:
                self.illegal(
                    f"at most {MAX_NESTING} nested parentheses",
                    hint="simplify the name tree",
                )
            self.idx += 1
            self.depth += 1
            tree = self.parse_tree()
            self.eat_whitespace()
            self.eat(")")
            self.depth -= 1
            return tree
        if c == "/":
            return Leaf(self.parse_path())
        if c == "!":
            self.idx += 1
            return FAIL
        if c == "~":
            self.idx += 1
            return NEG
        if c == "$":
            self.idx += 1
            return EMPTY
        hint = None
        if c == "-":
            hint = "weights cannot be negative"
        elif c == "*":
            hint = "a weight is written 'number * tree'"
        elif c in ";|&)" and c:
            hint = "a name tree term is missing"
        self.illegal("simple", hint=hint)

    def is_number_char(self, c: str) -> bool:
        return c == "." or _is_java_digit(c)

    def parse_number(self) -> float:
        start = self.idx
        seen_dot = False
        while self.is_number_char(self.peek()):
            if self.peek() == ".":
                if seen_dot:
                    self.illegal("number char")
                seen_dot = True
            self.idx += 1
        s = self.text[start : self.idx]
        if s == ".":
            # Finagle reports the lone dot at the character after it; ours points at the dot.
            self.illegal("weight", offset=start, upstream_offset=self.idx)
        for i, ch in enumerate(s):
            if ch != "." and not ("0" <= ch <= "9"):
                raise DtabSyntaxError(
                    self.text,
                    start + i,
                    "an ASCII digit in the weight",
                    hint="weights are written with the digits 0-9",
                    upstream_class="NumberFormatException",
                    upstream_text=f'For input string: "{s}"',
                    upstream_expected="number char",
                )
        w = float(s)
        if w == math.inf:
            # Finagle reads this as Infinity, which prints as "Infinity" (a dtab nobody can read back)
            # and which no weighted choice can use: refused here, where it can be pointed at.
            raise DtabSyntaxError(
                self.text,
                start,
                "a weight that fits a double (below 1.8e308)",
                found=f"a weight of {len(s)} digits",
                hint="weights are relative: write smaller numbers in the same proportion",
                upstream_class="none (Finagle accepts it as Infinity)",
            )
        return w

    def parse_weighted(self) -> Weighted:
        self.eat_whitespace()
        if not self.is_number_char(self.peek()):
            return Weighted(Weighted.DEFAULT_WEIGHT, self.parse_simple())
        w = self.parse_number()
        self.eat_whitespace()
        self.eat("*")
        self.eat_whitespace()
        return Weighted(w, self.parse_simple())

    # -- dentries and dtabs --------------------------------------------------------------------
    def parse_dentry(self) -> Dentry:
        prefix = self.parse_prefix()
        self.eat_whitespace()
        if self.peek() != "=":
            hint = None
            if self.peek() == "*" or (self.idx > 0 and self.text[self.idx - 1] == "*"):
                hint = "'*' must be a whole prefix element, as in /a/*/b"
            elif self.peek() == "-":
                hint = "the arrow is '=>'"
            self.illegal("'='", hint=hint)
        self.idx += 1
        if self.peek() != ">":
            self.illegal("'>'")
        self.idx += 1
        return Dentry(prefix, self.parse_tree())

    def parse_dtab(self) -> Dtab:
        dentries: list[Dentry] = []
        self.eat_whitespace()
        if self.at_end():
            return Dtab.EMPTY
        while True:
            if self.peek() == ";":
                self.illegal("'/'", hint="';' separates dentries: remove the extra ';'")
            dentries.append(self.parse_dentry())
            self.eat_whitespace()
            if not self.maybe_eat(";"):
                break
            self.eat_whitespace()
            if self.at_end():
                break
        return Dtab(tuple(dentries))


def parse_path(text: str) -> Path:
    """Parse a path such as ``/svc/web``."""
    p = _Parser(text)
    v = p.parse_path()
    p.ensure_end()
    return v


def parse_prefix(text: str) -> Prefix:
    """Parse a dentry prefix such as ``/svc/*/web``."""
    p = _Parser(text)
    v = p.parse_prefix()
    p.ensure_end()
    return v


def parse_tree(text: str) -> Any:
    """Parse a name tree such as ``/a | 0.3*/b & 0.7*/c``."""
    p = _Parser(text)
    v = p.parse_tree()
    p.ensure_end()
    return v


def parse_dentry(text: str) -> Dentry:
    """Parse one dentry such as ``/svc => /#/io.l5d.fs``."""
    p = _Parser(text)
    v = p.parse_dentry()
    p.ensure_end()
    return v


def parse_dtab(text: str) -> Dtab:
    """Parse a dtab: dentries separated by ``;`` (one trailing ``;`` allowed; newlines do not separate)."""
    p = _Parser(text)
    v = p.parse_dtab()
    p.ensure_end()
    return v
