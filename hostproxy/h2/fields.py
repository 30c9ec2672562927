"""Header field checks of HTTP/2 header blocks, with h2's results at a fraction of h2's cost.

Theory of operation
-------------------
h2 validates and normalises every header block it sends and (where configured) receives with a chain
of a dozen generators per field (about 9% of a proxied HTTP/2 request's instructions, four blocks a
request), while the blocks a proxy handles are almost always of the same few plain shapes. The links therefore turn h2's own
checks off (``validate_outbound_headers``, ``normalize_outbound_headers``, and
``validate_inbound_headers`` on the upstream side; the server side never had them, see
``hostproxy.h2.server``) and call these functions instead:

* ``problem(fields, flags)``: why a received block breaks RFC 9113 §8.2-8.3 as h2 checks it, or None.
* ``outbound(fields, flags)``: the block h2 would send for ``fields`` (names lowercased, surrounding
  whitespace and connection-specific fields dropped, ``authorization``, ``proxy-authorization`` and
  short ``cookie`` fields never indexed by HPACK), raising h2's ``ProtocolError`` where h2 would.

Each first tries a fast path: one pass over the fields that accepts only blocks on which h2's
pipeline provably changes nothing and finds nothing (plain lowercase names, no surrounding
whitespace, no ``te``/``host``/connection-specific field, and exactly the pseudo-header set of a
plain request, a response or a trailer section). Anything else goes through h2's own functions,
so every outcome, error message included, is h2's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import h2.exceptions
import h2.utilities
from h2.utilities import HeaderValidationFlags
from hpack import NeverIndexedHeaderTuple

__all__ = ["REQUEST", "RESPONSE", "TRAILERS", "never_indexed", "outbound", "problem", "with_never_indexed"]

# A name of which h2 accepts every character: none of 0x00-0x20, uppercase, ':', 0x7f-0xff.
_PLAIN_NAME = re.compile(rb"[!-9;-@\[-~]+")
# Regular names seen that are plain and not special (below), so that most fields cost one set
# lookup. Bounded, so that names taken from traffic only fill it so far.
_PLAIN_NAMES: set[bytes] = set()
_PLAIN_NAMES_MAX = 4096
# What in a value h2 rejects (NUL, CR, LF) or, at either end, strips when sending (ASCII whitespace;
# SP or HTAB there it rejects when receiving): a block with such a value takes h2's own path.
_CONTROL = re.compile(rb"[\0\n\r]")
_SPACE = frozenset(b" \t\x0b\x0c")
# Regular names h2 looks at (connection-specific ones, ``te``, ``host``): h2's own path.
_SPECIAL = h2.utilities.CONNECTION_HEADERS | {b"te", b"host"}
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path"})
_RESPONSE_PSEUDO = frozenset({b":status"})
_NO_PSEUDO: frozenset[bytes] = frozenset()
_SECURE = frozenset({b"authorization", b"proxy-authorization"})

#: h2's validation flags of the three kinds of block (h2 reads no other flag: ``is_client`` and
#: ``is_push_promise`` change nothing).
REQUEST = HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False
)
RESPONSE = HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=True, is_push_promise=False
)
TRAILERS = HeaderValidationFlags(
    is_client=False, is_trailer=True, is_response_header=False, is_push_promise=False
)


def _plain(fields: Iterable[tuple[bytes, bytes]], flags: HeaderValidationFlags) -> bool:
    """True when h2 would neither change nor reject ``fields`` (False: not known; ask h2)."""
    if flags.is_trailer:
        allowed = _NO_PSEUDO
    elif flags.is_response_header:
        allowed = _RESPONSE_PSEUDO
    else:
        allowed = _REQUEST_PSEUDO
    pseudo: dict[bytes, bytes] = {}
    regular = False
    names = _PLAIN_NAMES
    control = _CONTROL.search
    space = _SPACE
    for field in fields:
        n, v = field[0], field[1]
        if type(n) is not bytes or type(v) is not bytes:
            return False
        if n[:1] == b":":
            if regular or n not in allowed or n in pseudo:
                return False
            pseudo[n] = v
        else:
            regular = True
            if n not in names:
                if _PLAIN_NAME.fullmatch(n) is None or n in _SPECIAL:
                    return False
                if len(names) < _PLAIN_NAMES_MAX:
                    names.add(n)
        if v and (v[0] in space or v[-1] in space or control(v) is not None):
            return False
    if allowed is _REQUEST_PSEUDO:
        # Every one of the four, a method other than CONNECT, a non-empty path.
        return len(pseudo) == 4 and pseudo[b":method"] != b"CONNECT" and bool(pseudo[b":path"])
    return len(pseudo) == len(allowed)


def problem(fields: list[tuple[bytes, bytes]], flags: HeaderValidationFlags) -> str | None:
    """Why h2's inbound validation (``h2.utilities.validate_headers``) rejects ``fields``, or None."""
    if _plain(fields, flags):
        return None
    try:
        for _ in h2.utilities.validate_headers(fields, flags):
            pass
    except h2.exceptions.ProtocolError as exc:
        return str(exc)
    return None


def outbound(fields: list[tuple[bytes, bytes]], flags: HeaderValidationFlags) -> list[tuple[bytes, bytes]]:
    """``fields`` as h2 would send them with ``normalize_outbound_headers`` and
    ``validate_outbound_headers`` on (h2's ``ProtocolError`` where it would raise one)."""
    if _plain(fields, flags):
        out = fields
        for i, (n, v) in enumerate(fields):
            if n in _SECURE or (n == b"cookie" and len(v) < 20):
                if out is fields:
                    out = list(fields)
                out[i] = NeverIndexedHeaderTuple(n, v)
        return out
    headers = h2.utilities.utf8_encode_headers(fields)
    normalized = h2.utilities.normalize_outbound_headers(headers, flags, False)
    return list(h2.utilities.validate_outbound_headers(normalized, flags))


def never_indexed(fields: Iterable[tuple[bytes, bytes]]) -> frozenset[tuple[bytes, bytes]]:
    """The fields of a received block that its sender encoded never-indexed (RFC 7541 §6.2.3): an
    intermediary must send them so too (§7.1.3)."""
    found = [(f[0], f[1]) for f in fields if type(f) is NeverIndexedHeaderTuple]
    return frozenset(found) if found else _NONE


_NONE: frozenset[tuple[bytes, bytes]] = frozenset()


def with_never_indexed(
    fields: list[tuple[bytes, bytes]], pairs: frozenset[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """``fields`` with every one whose name is among ``pairs``' names made ``NeverIndexedHeaderTuple``
    (``fields`` itself when ``pairs`` is empty, the usual case). By name, not by value: a field the
    proxy rewrote (``Via`` with its entry appended, crumbs of a cookie joined) still carries what its
    sender protected."""
    if not pairs:
        return fields
    names = {n for n, _ in pairs}
    return [NeverIndexedHeaderTuple(n, v) if n in names else (n, v) for n, v in fields]
