"""Hop-by-hop header removal (RFC 9110 §7.6.1), a pure transform.

Theory of operation
-------------------
A proxy must not forward headers that describe one connection: ``Connection`` and every header it
names, ``Keep-Alive``, ``HTTP2-Settings`` (an h2c offer's settings, connection-specific by RFC 9113
§3.1), ``Proxy-*`` (``Proxy-Authenticate``, ``Proxy-Authorization``, ``Proxy-Connection``), ``TE`` (in a request, except its ``trailers`` token: that tells the next hop the
client takes trailers; in a response it means nothing and goes whole), ``Trailer``, ``Transfer-Encoding``
(the sender re-frames the body itself) and ``Upgrade`` — unless the message is a protocol upgrade
being tunnelled, in which case ``Upgrade`` and ``Connection: upgrade`` are kept so the next hop
sees the same request.  ``Content-Length`` is end-to-end but describes the framing; the codecs
re-frame every body and so drop it when ``Transfer-Encoding`` was present.

Trailer sections are filtered as they are read (:func:`allowed_trailers`): a trailer must not carry
a field that frames the message, routes it, modifies the request, authenticates, controls the
response or says how to process the content (RFC 9110 §6.5.1), nor a hop-by-hop one. Some servers
merge trailers into the header section; forwarded, such a field would reach them behind the proxy's
checks (a second ``Host``, ``Content-Length`` or ``Authorization``), so it is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable

from hostproxy.http.message import HOP_BY_HOP, Headers, is_hop_by_hop

__all__ = [
    "FORBIDDEN_TRAILERS",
    "HOP_BY_HOP",
    "allowed_trailers",
    "names_only_hop_by_hop",
    "strip_hop_by_hop",
    "strip_response_fields",
]

#: The fields a trailer section must not carry (see the module docstring), lowercase.
FORBIDDEN_TRAILERS = HOP_BY_HOP | frozenset(
    {
        # framing and routing
        b"content-length",
        b"host",
        # request modifiers: controls and conditionals
        b"cache-control",
        b"expect",
        b"max-forwards",
        b"pragma",
        b"range",
        b"if-match",
        b"if-none-match",
        b"if-modified-since",
        b"if-unmodified-since",
        b"if-range",
        # authentication and state
        b"authorization",
        b"www-authenticate",
        b"cookie",
        b"set-cookie",
        # response control data
        b"age",
        b"date",
        b"expires",
        b"location",
        b"retry-after",
        b"vary",
        # how to process the content
        b"content-encoding",
        b"content-type",
        b"content-range",
    }
)


def allowed_trailers(fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``fields`` (a trailer section, lowercase names) without the forbidden ones; ``fields`` itself
    when it has none (the usual case: ``grpc-status``, checksums)."""
    if not any(name in FORBIDDEN_TRAILERS for name, _ in fields):
        return fields
    return [(name, value) for name, value in fields if name not in FORBIDDEN_TRAILERS]


def _tokens(values: list[bytes]) -> set[bytes]:
    out: set[bytes] = set()
    for value in values:
        for part in value.split(b","):
            token = part.strip().lower()
            if token:
                out.add(token)
    return out


# Names seen that are end-to-end (not hop-by-hop), so that most fields cost one set lookup. Bounded,
# so that names taken from traffic only fill it so far.
_END_TO_END: set[bytes] = set()
_END_TO_END_MAX = 4096
# ``Connection`` values seen that name only hop-by-hop fields (``keep-alive``, ``close``): no set of
# names to build for them. Bounded likewise.
_PLAIN_CONNECTION: set[bytes] = set()
_PLAIN_CONNECTION_MAX = 256


def names_only_hop_by_hop(connection: bytes) -> bool:
    """Whether a ``Connection`` value names no field beyond the hop-by-hop ones (``keep-alive``,
    ``close``...): then stripping removes nothing but the hop-by-hop fields themselves."""
    if connection in _PLAIN_CONNECTION:
        return True
    if _tokens([connection]) - HOP_BY_HOP:
        return False
    if len(_PLAIN_CONNECTION) < _PLAIN_CONNECTION_MAX:
        _PLAIN_CONNECTION.add(connection)
    return True


def strip_hop_by_hop(headers: Headers, *, keep_upgrade: bool = False, request: bool = True) -> Headers:
    """A copy of ``headers`` without hop-by-hop fields.

    With ``keep_upgrade``, ``Upgrade`` is kept and ``Connection`` is reduced to ``upgrade``.  In a
    request, a ``TE`` header that lists ``trailers`` is reduced to ``TE: trailers``; in a response
    (``request=False``), ``TE`` goes whole.

    A copy without any hop-by-hop field (neither ``keep_upgrade`` nor ``TE: trailers``) is marked
    ``hop_free`` (see ``message``); headers so marked are copied without a look at their names,
    since they hold nothing to strip.
    """
    end_to_end = _END_TO_END
    if not keep_upgrade:
        if headers._hop_free:
            return headers.copy()  # stripped before, and nothing hop-by-hop added since
        for name, _ in headers:
            if name not in end_to_end:
                if is_hop_by_hop(name):
                    break
                if len(end_to_end) < _END_TO_END_MAX:
                    end_to_end.add(name)
        else:
            # The common case: nothing hop-by-hop (and no Connection header).
            return Headers._stripped(headers.items())
    return _strip(headers, keep_upgrade, False, request)[0]


def strip_response_fields(
    fields: list[tuple[bytes, bytes]], *, keep_length: bool = False
) -> tuple[Headers, bytes | None, bytes | None]:
    """What the upstream pool makes of a response's fields (lowercased names, from the codec), in
    one pass: ``strip_hop_by_hop(Headers._trusted(fields))`` without its ``Content-Length``
    fields, and the first of those (the body's declared length), or ``None`` when there was none
    or ``fields`` had a ``Transfer-Encoding`` field (which overrides it); and the value of the
    ``Keep-Alive`` field (several joined by commas), or ``None`` when there was none. With
    ``keep_length`` (a response without a body: its ``Content-Length`` describes another
    response), ``Content-Length`` is kept and the length is ``None``."""
    return _strip(fields, False, not keep_length, False)


def _strip(
    fields: Iterable[tuple[bytes, bytes]], keep_upgrade: bool, length_apart: bool, keep_te: bool
) -> tuple[Headers, bytes | None, bytes | None]:
    """``strip_hop_by_hop``'s work: the stripped headers; with ``length_apart``, also without
    ``Content-Length`` and with its first value (``None`` with a ``Transfer-Encoding`` field); with
    ``keep_te`` (requests), ``TE: trailers`` when a ``TE`` field lists ``trailers``; and the
    ``Keep-Alive`` value dropped (``None``: none), noted as the hop-by-hop fields go by."""
    # One pass keeps the end-to-end fields and notes what the hop-by-hop ones say; the fields that
    # ``Connection`` names beyond the hop-by-hop ones (rare) are dropped from what was kept after.
    end_to_end = _END_TO_END
    kept: list[tuple[bytes, bytes]] = []
    connection: list[bytes] = []
    te_trailers = chunked = False
    length: bytes | None = None
    keep_alive: bytes | None = None
    for field in fields:
        name = field[0]
        if name not in end_to_end:
            if is_hop_by_hop(name):
                if name == b"connection":
                    connection.append(field[1])
                elif name == b"te":
                    if keep_te and b"trailers" in _tokens([field[1]]):
                        te_trailers = True
                elif keep_upgrade and name == b"upgrade":
                    kept.append(field)
                elif name == b"transfer-encoding":
                    chunked = True
                elif name == b"keep-alive":
                    keep_alive = field[1] if keep_alive is None else keep_alive + b", " + field[1]
                continue
            if len(end_to_end) < _END_TO_END_MAX:
                end_to_end.add(name)
        if length_apart and name == b"content-length":
            if length is None:
                length = field[1]
        else:
            kept.append(field)
    if connection and not (len(connection) == 1 and connection[0] in _PLAIN_CONNECTION):
        named = _tokens(connection) - HOP_BY_HOP
        if named:
            kept = [field for field in kept if field[0] not in named]
            if b"content-length" in named:
                length = None
        elif len(connection) == 1 and len(_PLAIN_CONNECTION) < _PLAIN_CONNECTION_MAX:
            _PLAIN_CONNECTION.add(connection[0])
    if te_trailers:
        kept.append((b"te", b"trailers"))
    if keep_upgrade:
        kept.append((b"connection", b"upgrade"))
    if keep_upgrade or te_trailers:  # a hop-by-hop field kept: not hop-free
        return Headers._trusted(kept), None if chunked else length, keep_alive
    return Headers._stripped(kept), None if chunked else length, keep_alive
