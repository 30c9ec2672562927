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


class DtabError(Exception):
    """Base class of every error the dtab package raises."""


class DtabSyntaxError(DtabError, ValueError):
    """A dtab, path, prefix, name tree or dentry that does not parse.

    Attributes:
        text: the whole input that was parsed.
        offset: 0-based index into ``text`` of the offending character (``len(text)`` at end of input).
        line, column: 1-based position of ``offset`` in ``text`` (columns count characters).
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
        self.source: str | None = None
        self.line_offset = 0
        self.column_offset = 0
        before = text[:offset]
        self.line = before.count("\n") + 1
        self.column = offset - (before.rfind("\n") + 1) + 1
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
        """Finagle's exact wording, for comparison with upstream."""
        i = self.upstream_offset
        if i >= len(self.text):
            display = self.text + "[]"
            found = "end of input"
        else:
            display = self.text[:i] + "[" + self.text[i] + "]" + self.text[i + 1 :]
            found = f"'{self.text[i]}'"
        return f"{self.expected} expected but {found} found at '{display}'"

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
