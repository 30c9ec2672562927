"""The ``io.l5d.fs`` file format: one file per service name, one address per line.

Theory of operation: a pure function from the text of one file to the address set it names. Each
non-blank line that is not a comment is ``host port`` or ``host port * weight`` (tokens separated by
spaces or tabs); ``#`` starts a comment anywhere on a line. The port must be 1-65535 and the weight a
finite number >= 0 (default 1.0). An IPv6 host may be bare (``fd00::7 8080``) or in brackets
(``[fd00::7] 8080``, as Linkerd accepted it); a UTF-8 byte order mark before the first line is
ignored. One malformed line rejects the whole file, as in Linkerd: the caller
keeps serving the last good answer and shows the :class:`FsFormatError`, whose message names the file
and line (``source:line: what is wrong``) and says how to fix it. The same ``host port`` listed twice is
one address (the first line wins). Files larger than :data:`MAX_FILE_SIZE` are rejected by the caller
before parsing (:func:`check_size`), as Linkerd's watcher does.

This module does no I/O; ``hostproxy dtab delegate --namer io.l5d.fs=DIR`` and the watching namer in
:mod:`namers.fs` both use it.
"""

from __future__ import annotations

import ipaddress
import math

from namers._dtab import Address

__all__ = ["MAX_FILE_SIZE", "FsFormatError", "check_size", "parse_addresses"]

#: Largest file accepted, in bytes (Linkerd's ``Watcher.MaxFileSize``).
MAX_FILE_SIZE = 500 * 1024

_FORMAT_HINT = "write each line as 'host port' or 'host port * weight', e.g. '10.0.0.7 8080 * 2.0'"


class FsFormatError(ValueError):
    """A file of the ``io.l5d.fs`` namer that does not parse.

    Attributes:
        source: the file's name as given by the caller.
        line: 1-based line number of the first bad line (0 when the whole file is at fault).
        problem: what is wrong, without position.
    """

    def __init__(self, source: str, line: int, problem: str, hint: str = _FORMAT_HINT) -> None:
        self.source = source
        self.line = line
        self.problem = problem
        self.hint = hint
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {problem}; {hint}")


def check_size(size: int, source: str) -> None:
    """Raise :class:`FsFormatError` when a file of ``size`` bytes is too large to be an address list."""
    if size > MAX_FILE_SIZE:
        raise FsFormatError(
            source,
            0,
            f"file is {size} bytes, larger than the {MAX_FILE_SIZE}-byte limit",
            "split the addresses into several files or remove unused lines",
        )


def _parse_port(token: str, source: str, lineno: int) -> int:
    if not token.isdigit() or not token.isascii():
        raise FsFormatError(source, lineno, f"port {token!r} is not a number")
    port = int(token)
    if not 1 <= port <= 65535:
        raise FsFormatError(source, lineno, f"port {port} is out of range 1-65535")
    return port


def _parse_weight(token: str, source: str, lineno: int) -> float:
    try:
        weight = float(token)
    except ValueError:
        raise FsFormatError(source, lineno, f"weight {token!r} is not a number") from None
    if not math.isfinite(weight) or weight < 0:
        raise FsFormatError(source, lineno, f"weight {token!r} must be a finite number >= 0")
    return weight


def _parse_host(token: str, source: str, lineno: int) -> str:
    """The host of a line: an IPv6 literal may be written in brackets (``[::1] 8080``), as Linkerd
    (Java's ``InetSocketAddress``) accepted it; the brackets are dropped, since the address is
    connected to as an IP."""
    if not (token.startswith("[") or token.endswith("]")):
        return token
    inner = token[1:-1] if token.startswith("[") and token.endswith("]") else ""
    try:
        ipaddress.IPv6Address(inner)
    except ValueError:
        raise FsFormatError(
            source,
            lineno,
            f"host {token!r} is not an IPv6 address in brackets",
            "write it as '[fd00::7] 8080'",
        ) from None
    return inner


def parse_addresses(text: str, source: str) -> tuple[Address, ...]:
    """Parse the text of one ``io.l5d.fs`` file into its addresses, in file order.

    A UTF-8 byte order mark at the start (editors such as Windows Notepad write one) is not part of
    the first host. Raises :class:`FsFormatError` at the first malformed line.
    """
    seen: set[tuple[str, int]] = set()
    out: list[Address] = []
    text = text.removeprefix("\ufeff")
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        tokens = line.split()
        if len(tokens) == 2:
            host, port_s = tokens
            weight = 1.0
        elif len(tokens) == 4 and tokens[2] == "*":
            host, port_s, _, weight_s = tokens
            weight = _parse_weight(weight_s, source, lineno)
        elif len(tokens) == 1:
            raise FsFormatError(source, lineno, f"{line!r} has a host but no port")
        elif len(tokens) >= 3 and tokens[2] == "*":
            raise FsFormatError(source, lineno, f"{line!r} needs exactly one weight after '*'")
        else:
            raise FsFormatError(source, lineno, f"{line!r} is not 'host port [* weight]'")
        port = _parse_port(port_s, source, lineno)
        host = _parse_host(host, source, lineno)
        if (host, port) in seen:
            continue
        seen.add((host, port))
        out.append(Address(host, port, weight))
    return tuple(out)
