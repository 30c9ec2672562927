"""Errors raised by the dtab language.

Theory of operation: every syntax error is a :class:`DtabSyntaxError` that knows the input it was
parsing, the 0-based offset of the offending character (in Python ``str`` indices), its 1-based line and
column, what was expected there and what was found. ``str(err)`` is a multi-line message with the line
and a caret under the position; ``err.upstream_message`` reproduces Finagle's one-line wording
(``"<expected> expected but <found> found at '<display>'"``) for comparison with upstream.

Callers that embed dtab text in a larger file (a YAML block scalar, a dtab file) use
:meth:`DtabSyntaxError.relocated` to map the position into the file's coordinates.
"""

from __future__ import annotations


def utf16_units(text: str) -> str:
    """``text`` with every non-BMP character split into its two UTF-16 surrogates (Java's view)."""
    if all(ord(c) <= 0xFFFF for c in text):
        return text
    out = []
    for c in text:
        o = ord(c)
        if o > 0xFFFF:
            o -= 0x10000
            out.append(chr(0xD800 + (o >> 10)))
            out.append(chr(0xDC00 + (o & 0x3FF)))
        else:
            out.append(c)
    return "".join(out)


def _utf16_index(text: str, offset: int) -> int:
    return offset + sum(1 for c in text[:offset] if ord(c) > 0xFFFF)


class DtabError(Exception):
    """Base class of every error the dtab package raises."""


class DtabSyntaxError(DtabError, ValueError):
    """A dtab, path, prefix, name tree or dentry that does not parse.

    Attributes:
        text: the whole input that was parsed.
        offset: 0-based index into ``text`` of the offending character (``len(text)`` at end of input).
        line, column: 1-based position of ``offset`` in ``text`` (columns count characters); at the
            end of input, the position just after the text's last non-whitespace character.
        shown_offset: the index into ``text`` of that position.
        expected: what the parser wanted there, e.g. ``"'/'"``, ``"label char"``, ``"end of input"``.
        found: what it found: ``"'c'"`` or ``"end of input"``.
        source: optional name of where the text came from (a file name), used in ``str()``.
        line_offset: added to ``line`` when printing (for text embedded in a file).
    """

    def __init__(
        self,
        text: str,
        offset: int,
        expected: str,
        found: str | None = None,
        *,
        hint: str | None = None,
        upstream_offset: int | None = None,
        upstream_expected: str | None = None,
        upstream_class: str = "IllegalArgumentException",
        upstream_text: str | None = None,
    ) -> None:
        self.text = text
        self.offset = offset
        self.expected = expected
        if found is None:
            found = "end of input" if offset >= len(text) else f"'{text[offset]}'"
        self.found = found
        self.hint = hint
        # Finagle marks a different character in one case (a lone '.' weight); the conformance runner
        # compares against this one.
        self.upstream_offset = offset if upstream_offset is None else upstream_offset
        # Finagle's token for what was expected ("simple", "label char", ...); ``expected`` may be a
        # friendlier wording of the same thing.
        self.upstream_expected = expected if upstream_expected is None else upstream_expected
        # The exception class Finagle raises, and its message when it does not follow the usual
        # "<expected> expected but <found> found at ..." pattern (a non-ASCII digit in a weight).
        self.upstream_class = upstream_class
        self.upstream_text = upstream_text
        self.source: str | None = None
        self.line_offset = 0
        self.column_offset = 0
        # At the end of the input the position shown is just after the last thing written, not past
        # the blank lines that end the text (a file's final line break would point at an empty line).
        at = len(text.rstrip()) if offset >= len(text) else offset
        self.shown_offset = at
        before = text[:at]
        self.line = before.count("\n") + 1
        self.column = at - (before.rfind("\n") + 1) + 1
        super().__init__(self._render())

    # -- positions -----------------------------------------------------------------------------
    @property
    def file_line(self) -> int:
        return self.line + self.line_offset

    @property
    def file_column(self) -> int:
        return self.column + (self.column_offset if self.line == 1 else 0)

    def relocated(self, source: str | None, line_offset: int, column_offset: int = 0) -> DtabSyntaxError:
        """Return this error with positions shifted into an enclosing file.

        ``line_offset`` is added to every line; ``column_offset`` to columns of the text's first line
        (the text starts mid-line in the file).
        """
        self.source = source
        self.line_offset = line_offset
        self.column_offset = column_offset
        self.args = (self._render(),)
        return self

    # -- rendering -----------------------------------------------------------------------------
    @property
    def message(self) -> str:
        """One line: what was expected and what was found."""
        msg = f"{self.expected} expected but {self.found} found"
        if self.hint:
            msg += f" ({self.hint})"
        return msg

    @property
    def upstream_message(self) -> str:
        """Finagle's exact wording, for comparison with upstream.

        The character named as found is the one at ``offset``; the bracketed one is at
        ``upstream_offset`` (they differ only for the lone-dot weight quirk).
        """
        if self.upstream_text is not None:
            return self.upstream_text
        # Java strings are UTF-16: a character outside the BMP is two code units, and Finagle
        # brackets (and names) only the first of them.
        text = utf16_units(self.text)
        i = self.upstream_offset_utf16
        if i >= len(text):
            display = text + "[]"
        else:
            display = text[:i] + "[" + text[i] + "]" + text[i + 1 :]
        j = _utf16_index(self.text, self.offset)
        found = "end of input" if j >= len(text) else f"'{text[j]}'"
        return f"{self.upstream_expected} expected but {found} found at '{display}'"

    @property
    def upstream_offset_utf16(self) -> int:
        """``upstream_offset`` counted in UTF-16 code units, as Java counts it."""
        return _utf16_index(self.text, self.upstream_offset)

    def caret_display(self) -> str:
        """The offending line followed by a caret under the offending column."""
        lines = self.text.split("\n")
        src = lines[self.line - 1] if self.line - 1 < len(lines) else ""
        # Tabs keep their width in the caret line so the caret lines up in a terminal.
        pad = "".join("\t" if ch == "\t" else " " for ch in src[: self.column - 1])
        return f"{src}\n{pad}^"

    def _render(self) -> str:
        where = f"{self.file_line}:{self.file_column}"
        if self.source:
            where = f"{self.source}:{where}"
        return f"{where}: {self.message}\n{self.caret_display()}"

    def __str__(self) -> str:
        return self._render()


# ---------------------------------------------------------------------------------------------
# Binding and delegation errors
#
# Each carries ``upstream_class`` and ``upstream_message``: the Finagle/Linkerd exception class and
# message for the same failure (what ``/delegator.json`` shows in an ``exception`` node), while
# ``str(err)`` says what went wrong, where, and what to do.


class BindError(DtabError):
    """Binding a path failed (the whole bind, not a single negative branch)."""

    upstream_class = "Exception"

    def __init__(self, message: str, *, upstream_message: str | None = None) -> None:
        super().__init__(message)
        self.upstream_message = message if upstream_message is None else upstream_message


class DepthExceeded(BindError):
    """More than ``max_depth`` lookups along one branch: usually a rewrite cycle in the dtab."""

    upstream_class = "NamerExceededMaxDepthException"

    def __init__(self, max_depth: int, path: object, last: object | None = None) -> None:
        self.max_depth = max_depth
        self.path = path
        self.last = last
        where = f" (last lookup: {last})" if last is not None and last != path else ""
        super().__init__(
            f"binding {path} exceeded the maximum depth of {max_depth} lookups{where}: "
            "check the dtab for a rewrite cycle, or raise the depth limit",
            upstream_message=f"Max recursion level: {max_depth} reached in Namer lookup",
        )


class UnknownNamer(BindError):
    """A ``/$/<kind>/...`` path names a system namer that does not exist."""

    upstream_class = "UnknownNamer"

    def __init__(self, kind: str, path: object, *, finagle: bool = False) -> None:
        self.kind = kind
        self.path = path
        if finagle:
            self.upstream_class = "ClassNotFoundException"
            upstream = kind
        else:
            upstream = f"Unknown namer: {kind} for path: {path}"
        super().__init__(
            f"unknown namer {kind!r} for path {path}: '/$/' paths name a system namer "
            "(inet, fixedinet, nil, fail, io.buoyant.rinet, io.buoyant.*); for /$/inet the port "
            "must be an integer",
            upstream_message=upstream,
        )


class NamerError(BindError):
    """A namer's lookup failed; ``message`` is the namer's own message."""

    upstream_class = "Exception"

    def __init__(self, message: str, *, namer: object | None = None, path: object | None = None) -> None:
        self.namer = namer
        self.path = path
        self.message = message
        parts = []
        if namer is not None:
            parts.append(f"namer {namer}")
        if path is not None:
            parts.append(f"looking up {path}")
        where = f" ({', '.join(parts)})" if parts else ""
        super().__init__(f"{message}{where}", upstream_message=message)


class DelegationTooLarge(BindError):
    """A delegation explanation has more nodes than its fixed limit (alternatives or unions that
    fan out at every step make it exponential in the dtab's length)."""

    def __init__(self, path: object, limit: int, unit: str = "nodes") -> None:
        self.path = path
        self.limit = limit
        self.unit = unit
        why = (
            "the dtab's alternatives or unions fan out at every step"
            if unit == "nodes"
            else "its lookups test too many wildcard dentries or match too many dentries"
        )
        super().__init__(
            f"explaining {path} needs more than {limit} {unit}: {why}; explain a more specific path or a "
            "smaller dtab"
        )


class BindTooLarge(BindError):
    """Binding needed more lookups, or more dentry tests, than its fixed budget: alternatives or unions
    that fan out at every step make it exponential in the dtab's length, and hundreds of wildcard rules
    make every lookup slow (a per-request ``l5d-dtab`` of a few kilobytes could otherwise hold the event
    loop for seconds)."""

    def __init__(self, path: object, limit: int, unit: str = "lookups") -> None:
        self.path = path
        self.limit = limit
        self.unit = unit
        why = (
            "the dtab's alternatives or unions fan out at every step"
            if unit == "lookups"
            else "its lookups test too many wildcard dentries or match too many dentries"
        )
        super().__init__(
            f"binding {path} needs more than {limit} {unit}: {why}; simplify the dtab (or the l5d-dtab override)"
        )


class DelegationCycle(BindError):
    """A delegation explanation went deeper than its fixed limit (a rewrite cycle)."""

    upstream_class = "IllegalArgumentException"

    def __init__(self, path: object, limit: int = 100) -> None:
        self.path = path
        self.limit = limit
        super().__init__(
            f"explaining {path} exceeded {limit} rewrite steps (Max recursion level reached.): "
            "the dtab has a rewrite cycle",
            upstream_message="Max recursion level reached.",
        )
