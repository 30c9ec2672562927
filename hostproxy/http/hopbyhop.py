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


def strip_hop_by_hop(headers: Headers, *, keep_upgrade: bool = False) -> Headers:
    """A copy of ``headers`` without hop-by-hop fields.

    With ``keep_upgrade``, ``Upgrade`` is kept and ``Connection`` is reduced to ``upgrade``.  A
    ``TE`` header that lists ``trailers`` is reduced to ``TE: trailers``.
    """
    if not keep_upgrade:
        for name, _ in headers:
            if name in HOP_BY_HOP or name[:6] == b"proxy-":
                break
        else:
            return headers.copy()  # the common case: nothing hop-by-hop (and no Connection header)
    named = _tokens(headers.get_all(b"connection"))
    # ``Connection: keep-alive`` / ``close`` (the usual) name nothing new: no set to build.
    drop = HOP_BY_HOP if named <= HOP_BY_HOP else HOP_BY_HOP | named
    kept: list[tuple[bytes, bytes]] = []
    te_trailers = False
    for name, value in headers:
        if name in drop or name.startswith(b"proxy-"):
            if name == b"te" and b"trailers" in _tokens([value]):
                te_trailers = True
            elif keep_upgrade and name == b"upgrade":
                kept.append((name, value))
            continue
        kept.append((name, value))
    if te_trailers:
        kept.append((b"te", b"trailers"))
    if keep_upgrade:
        kept.append((b"connection", b"upgrade"))
    return Headers._trusted(kept)
