"""Paths and dentry prefixes.

Theory of operation: a :class:`Path` is an immutable tuple of non-empty byte-string labels. Labels are
bytes, not characters: the concrete syntax admits 69 "showable" ASCII characters directly and any other
byte through a ``\\xHH`` escape. Printing ("show") writes a label as plain characters when every byte
is showable, and otherwise escapes *every* byte of that label as lowercase ``\\xhh``; so the printed
form always re-parses to the same bytes.

A :class:`Prefix` is the left-hand side of a dentry: like a path, except that an element may be the
wildcard :data:`ANY` (written ``*``), which matches exactly one label of any value. A literal one-byte
label ``*`` is distinct from the wildcard and prints as ``\\x2a``.

Parsing lives in :mod:`dtab.parser`; ``Path.read``/``Prefix.read`` are conveniences that call it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final, overload

#: The characters a label may contain without escaping (exactly these 69 ASCII characters).
SHOWABLE_CHARS: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_:.#$%-"
SHOWABLE_BYTES: Final = frozenset(SHOWABLE_CHARS.encode("ascii"))


def show_label(label: bytes) -> str:
    """Print one label: plain when all bytes are showable, else every byte as ``\\xhh``."""
    if all(b in SHOWABLE_BYTES for b in label):
        return label.decode("ascii")
    return "".join(f"\\x{b:02x}" for b in label)


def _as_label(label: str | bytes) -> bytes:
    if isinstance(label, str):
        label = label.encode("utf-8")
    elif not isinstance(label, bytes):
        raise TypeError(f"a path label must be bytes or str, not {type(label).__name__}")
    if not label:
        raise ValueError("a path label must not be empty (requirement failed)")
    return label


class Path:
    """An immutable sequence of non-empty byte labels; ordered, hashable; ``str()`` is the show form."""

    __slots__ = ("_labels", "_hash", "_show")

    EMPTY: Path  # set below

    def __init__(self, labels: Iterable[bytes] = ()) -> None:
        labs = tuple(labels)
        for lab in labs:
            if not isinstance(lab, bytes):
                raise TypeError(f"a path label must be bytes, not {type(lab).__name__}: {lab!r}")
            if not lab:
                raise ValueError("a path label must not be empty (requirement failed)")
        self._labels: tuple[bytes, ...] = labs
        self._hash = hash(labs)
        self._show: str | None = None

    @classmethod
    def of(cls, *labels: str | bytes) -> Path:
        """``Path.of("svc", "web")`` == ``/svc/web``; str labels are UTF-8 encoded."""
        return cls(tuple(_as_label(lab) for lab in labels))

    @classmethod
    def read(cls, text: str) -> Path:
        """Parse the concrete syntax (raises :class:`~dtab.errors.DtabSyntaxError`)."""
        from dtab.parser import parse_path

        return parse_path(text)

    # -- sequence protocol ---------------------------------------------------------------------
    @property
    def labels(self) -> tuple[bytes, ...]:
        return self._labels

    def __len__(self) -> int:
        return len(self._labels)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._labels)

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> Path: ...
    def __getitem__(self, i: int | slice) -> bytes | Path:
        if isinstance(i, slice):
            return Path(self._labels[i])
        return self._labels[i]

    def __bool__(self) -> bool:
        return bool(self._labels)

    # -- operations ----------------------------------------------------------------------------
    def startswith(self, prefix: Path) -> bool:
        """Element-wise, byte-exact prefix test."""
        n = len(prefix._labels)
        return n <= len(self._labels) and self._labels[:n] == prefix._labels

    def take(self, n: int) -> Path:
        return Path(self._labels[: max(n, 0)])

    def drop(self, n: int) -> Path:
        return Path(self._labels[max(n, 0) :])

    def __add__(self, other: object) -> Path:
        if not isinstance(other, Path):
            return NotImplemented
        return Path(self._labels + other._labels)

    # -- comparison ----------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Path):
            return NotImplemented
        return self._labels == other._labels

    def __hash__(self) -> int:
        return self._hash

    def __lt__(self, other: Path) -> bool:
        return self._labels < other._labels

    def __le__(self, other: Path) -> bool:
        return self._labels <= other._labels

    def __gt__(self, other: Path) -> bool:
        return self._labels > other._labels

    def __ge__(self, other: Path) -> bool:
        return self._labels >= other._labels

    # -- printing ------------------------------------------------------------------------------
    @property
    def show(self) -> str:
        shown = self._show
        if shown is None:  # computed once: names are printed on every request (l5d-dst-*, metrics)
            shown = self._show = "/" + "/".join(show_label(lab) for lab in self._labels)
        return shown

    def __str__(self) -> str:
        shown = self._show  # the cached show form, without the property's extra call
        return shown if shown is not None else self.show

    def __repr__(self) -> str:
        return f"Path.read({self.show!r})"


Path.EMPTY = Path(())


class _AnyElem:
    """The prefix wildcard ``*`` (a singleton: :data:`ANY`)."""

    __slots__ = ()
    _instance: _AnyElem | None = None

    def __new__(cls) -> _AnyElem:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ANY"

    def __str__(self) -> str:
        return "*"

    def __reduce__(self) -> str:
        return "ANY"


#: The wildcard prefix element: matches any single label.
ANY: Final = _AnyElem()

PrefixElem = bytes | _AnyElem


class Prefix:
    """A dentry prefix: labels and :data:`ANY` wildcards. ``str()`` is the show form."""

    __slots__ = ("_elems", "_hash")

    EMPTY: Prefix  # set below

    def __init__(self, elems: Iterable[PrefixElem] = ()) -> None:
        es = tuple(elems)
        for e in es:
            if e is ANY:
                continue
            if not isinstance(e, bytes):
                raise TypeError(f"a prefix element must be bytes or ANY, not {type(e).__name__}")
            if not e:
                raise ValueError("a prefix label must not be empty (requirement failed)")
        self._elems: tuple[PrefixElem, ...] = es
        self._hash = hash(("Prefix", es))

    @classmethod
    def read(cls, text: str) -> Prefix:
        from dtab.parser import parse_prefix

        return parse_prefix(text)

    @classmethod
    def of(cls, *elems: str | bytes | _AnyElem) -> Prefix:
        """``Prefix.of("a", ANY)``; the str ``"*"`` is a literal label, use :data:`ANY` for a wildcard."""
        return cls(tuple(e if e is ANY else _as_label(e) for e in elems))  # type: ignore[arg-type]

    @classmethod
    def from_path(cls, path: Path) -> Prefix:
        return cls(path.labels)

    @property
    def elems(self) -> tuple[PrefixElem, ...]:
        return self._elems

    def __len__(self) -> int:
        return len(self._elems)

    def __iter__(self) -> Iterator[PrefixElem]:
        return iter(self._elems)

    def matches(self, path: Path) -> bool:
        """True when every element equals the path label at its position (``*`` matches any label)."""
        labels = path.labels
        if len(self._elems) > len(labels):
            return False
        return all(e is ANY or e == lab for e, lab in zip(self._elems, labels, strict=False))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Prefix):
            return NotImplemented
        return self._elems == other._elems

    def __hash__(self) -> int:
        return self._hash

    @property
    def show(self) -> str:
        return "/" + "/".join("*" if e is ANY else show_label(e) for e in self._elems)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return self.show

    def __repr__(self) -> str:
        return f"Prefix.read({self.show!r})"


Prefix.EMPTY = Prefix(())
