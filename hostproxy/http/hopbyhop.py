"""Hop-by-hop header removal (RFC 9110 §7.6.1), a pure transform.

Theory of operation
-------------------
A proxy must not forward headers that describe one connection: ``Connection`` and every header it
names, ``Keep-Alive``, ``Proxy-*`` (``Proxy-Authenticate``, ``Proxy-Authorization``,
``Proxy-Connection``), ``TE`` (except its ``trailers`` token), ``Trailer``, ``Transfer-Encoding``
(the sender re-frames the body itself) and ``Upgrade`` — unless the message is a protocol upgrade
being tunnelled, in which case ``Upgrade`` and ``Connection: upgrade`` are kept so the next hop
sees the same request.  ``Content-Length`` is end-to-end but describes the framing; the codecs
re-frame every body and so drop it when ``Transfer-Encoding`` was present.
"""

from __future__ import annotations

from hostproxy.http.message import Headers

__all__ = ["HOP_BY_HOP", "strip_hop_by_hop"]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


def _tokens(values: list[bytes]) -> set[bytes]:
    out: set[bytes] = set()
    for value in values:
        for part in value.split(b","):
            token = part.strip().lower()
            if token:
                out.add(token)
    return out


def _is_hop(name: bytes) -> bool:
    return name in HOP_BY_HOP or name[:6] == b"proxy-"


# Names seen that are end-to-end (not hop-by-hop), so that most fields cost one set lookup. Bounded,
# so that names taken from traffic only fill it so far.
_END_TO_END: set[bytes] = set()
_END_TO_END_MAX = 4096
# ``Connection`` values seen that name only hop-by-hop fields (``keep-alive``, ``close``): no set of
# names to build for them. Bounded likewise.
_PLAIN_CONNECTION: set[bytes] = set()
_PLAIN_CONNECTION_MAX = 256


def strip_hop_by_hop(headers: Headers, *, keep_upgrade: bool = False) -> Headers:
    """A copy of ``headers`` without hop-by-hop fields.

    With ``keep_upgrade``, ``Upgrade`` is kept and ``Connection`` is reduced to ``upgrade``.  A
    ``TE`` header that lists ``trailers`` is reduced to ``TE: trailers``.
    """
    end_to_end = _END_TO_END
    if not keep_upgrade:
        for name, _ in headers:
            if name not in end_to_end:
                if _is_hop(name):
                    break
                if len(end_to_end) < _END_TO_END_MAX:
                    end_to_end.add(name)
        else:
            return headers.copy()  # the common case: nothing hop-by-hop (and no Connection header)
    # One pass keeps the end-to-end fields and notes what the hop-by-hop ones say; the fields that
    # ``Connection`` names beyond the hop-by-hop ones (rare) are dropped from what was kept after.
    kept: list[tuple[bytes, bytes]] = []
    connection: list[bytes] = []
    te_trailers = False
    for field in headers:
        name = field[0]
        if name in end_to_end or not _is_hop(name):
            kept.append(field)
        elif name == b"connection":
            connection.append(field[1])
        elif name == b"te":
            if b"trailers" in _tokens([field[1]]):
                te_trailers = True
        elif keep_upgrade and name == b"upgrade":
            kept.append(field)
    if connection and not (len(connection) == 1 and connection[0] in _PLAIN_CONNECTION):
        named = _tokens(connection) - HOP_BY_HOP
        if named:
            kept = [field for field in kept if field[0] not in named]
        elif len(connection) == 1 and len(_PLAIN_CONNECTION) < _PLAIN_CONNECTION_MAX:
            _PLAIN_CONNECTION.add(connection[0])
    if te_trailers:
        kept.append((b"te", b"trailers"))
    if keep_upgrade:
        kept.append((b"connection", b"upgrade"))
    return Headers._trusted(kept)
