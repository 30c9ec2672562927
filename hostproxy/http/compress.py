"""Response compression: Linkerd's ``compressionLevel`` on an HTTP/1.1 router.

Theory of operation
-------------------
Linkerd 1 compressed responses in its HTTP server (Finagle's pipeline): level ``-1`` compressed
textual content types at zlib's level 6, a level from 1 to 9 every content type at that level, 0
nothing. hostproxy does the same to the responses it proxies when the router sets a level (its
default is 0: see the README's *Differences from Linkerd 1*), at the end of the router's ``handle``,
after the response was chosen (retries, classification and failure counting see the upstream's bytes).

A response is compressed when all of these hold, and passes through untouched otherwise:

* the request was HTTP/1.1 (an HTTP/1.0 client cannot get a chunked body) and not ``HEAD``;
* the client accepts ``gzip`` or ``deflate`` (:func:`choose_coding`, over all its ``Accept-Encoding``
  lines: the coding with the higher q-value, gzip on a tie, and gzip for ``*``); ``x-gzip`` counts as
  gzip;
* the status is not 1xx, 204, 206 or 304, and the response is no 101 tunnel;
* neither the request nor the response carries ``Cache-Control: no-transform`` (RFC 9110 §7.7: a
  proxy must not change such a body; RFC 9111 §5.2.1.6: a client sends it to ask intermediaries not
  to transform the content);
* it carries no ``Content-Encoding`` but ``identity`` (in any of its lines), no digest of its bytes
  (``Content-Digest``, ``Repr-Digest``, ``Digest``, ``Content-MD5``: it would no longer match), and a
  body that is not known to be empty;
* at level ``-1``, its ``Content-Type`` is textual: ``text/*`` or one of ``TEXTUAL`` (Finagle's list).

A compressed response gets ``Content-Encoding``, ``Vary: Accept-Encoding`` added (so that caches keep
the two apart), a strong ``ETag`` made weak (the bytes differ from the upstream's), no
``Accept-Ranges`` (its byte ranges would be the upstream's bytes, not these), and no
``Content-Length``: a body already in memory is compressed at once and gets its new length (or stays
chunked when it has trailers, which only a chunked body carries); a streamed one is compressed chunk
by chunk, each chunk flushed (``Z_SYNC_FLUSH``, as Netty's encoder does) so that a stream's events
are not held back, and goes out chunked; its trailers follow.
The responses hostproxy makes itself (``l5d-err`` ones) are not compressed.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from hostproxy.http.message import Body, Headers, Response

__all__ = ["TEXTUAL", "Compression", "choose_coding", "compress_response", "is_textual", "no_transform"]

#: Content types compressed at level -1 besides ``text/*`` (Finagle's ``TextualContentCompressor``).
TEXTUAL = frozenset(
    {
        "image/svg+xml",
        "application/atom+xml",
        "application/javascript",
        "application/json",
        "application/rss+xml",
        "application/x-javascript",
        "application/xhtml+xml",
        "application/xml",
    }
)
_NO_BODY_STATUS = frozenset({204, 206, 304})
#: Digests of the body as the upstream coded it (RFC 9530, RFC 3230, RFC 1864): a response with one is
#: passed through, since compressed it would carry a digest its body no longer matches.
_DIGESTS = (b"content-digest", b"repr-digest", b"digest", b"content-md5")
#: zlib's window bits for each coding: gzip's header and trailer, or zlib's ("deflate" in HTTP).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


@dataclass(frozen=True)
class Compression:
    """A router's ``compressionLevel`` other than 0: ``level`` for zlib, ``textual_only`` for -1."""

    level: int
    textual_only: bool

    @classmethod
    def from_level(cls, level: int) -> Compression | None:
        if level == 0:
            return None
        if level == -1:
            return cls(6, True)
        if 1 <= level <= 9:
            return cls(level, False)
        raise ValueError(f"compressionLevel {level}: use -1 (textual types at level 6), 0 (off) or 1 to 9")


def _q(params: list[str]) -> float:
    for p in params:
        name, _, value = p.partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return 0.0
            return q if 0.0 <= q <= 1.0 else 0.0
    return 1.0


def choose_coding(accept_encoding: bytes | None) -> str | None:
    """The coding to send for an ``Accept-Encoding`` value (its field lines joined with ``,``):
    ``gzip``, ``deflate`` or None."""
    if not accept_encoding:
        return None
    gzip_q = deflate_q = star_q = -1.0
    for item in accept_encoding.decode("latin-1").split(","):
        coding, *params = item.split(";")
        coding = coding.strip().lower()
        q = _q(params)
        if coding in ("gzip", "x-gzip"):
            gzip_q = max(gzip_q, q)
        elif coding == "deflate":
            deflate_q = max(deflate_q, q)
        elif coding == "*":
            star_q = max(star_q, q)
    if gzip_q > 0.0 or deflate_q > 0.0:
        return "gzip" if gzip_q >= deflate_q else "deflate"
    if star_q > 0.0:
        if gzip_q < 0.0:
            return "gzip"
        if deflate_q < 0.0:
            return "deflate"
    return None


def is_textual(content_type: bytes | None) -> bool:
    if not content_type:
        return False
    kind = content_type.split(b";", 1)[0].strip().lower().decode("latin-1")
    return kind.startswith("text/") or kind in TEXTUAL


def no_transform(headers: Headers) -> bool:
    """Whether ``headers`` carry ``Cache-Control: no-transform`` (in any line, any case)."""
    for value in headers.get_all(b"cache-control"):
        for directive in value.split(b","):
            if directive.strip().lower() == b"no-transform":
                return True
    return False


class _Deflating:
    """A ``BodySource`` that compresses another body chunk by chunk (see the module docstring)."""

    __slots__ = ("_body", "_z", "_finished")

    def __init__(self, body: Body, z: zlib._Compress) -> None:
        self._body = body
        self._z = z
        self._finished = False

    async def read_chunk(self) -> bytes | None:
        z = self._z
        while not self._finished:
            try:
                chunk = await self._body.__anext__()
            except StopAsyncIteration:
                self._finished = True
                return z.flush(zlib.Z_FINISH) or None
            out = z.compress(chunk) + z.flush(zlib.Z_SYNC_FLUSH)
            if out:
                return out
        return None

    @property
    def trailers(self) -> Headers | None:
        return self._body.trailers

    async def aclose(self) -> None:
        await self._body.aclose()


def compress_response(
    settings: Compression,
    method: str,
    http_version: str,
    accept_encoding: bytes | None,
    resp: Response,
    *,
    request_no_transform: bool = False,
) -> bool:
    """Compress ``resp`` in place when it and the request allow it (module docstring); whether it did.
    ``request_no_transform``: the request carried ``Cache-Control: no-transform``."""
    if http_version != "1.1" or method == "HEAD" or request_no_transform:
        return False
    status = resp.status
    if status < 200 or status in _NO_BODY_STATUS or resp.upgraded is not None:
        return False
    body = resp.body
    if body.content_length == 0 or (body.in_memory and body.done):
        return False
    coding = choose_coding(accept_encoding)
    if coding is None:
        return False
    headers = resp.headers
    # (Every field line: ``identity`` in one and ``gzip`` in the next is the list ``identity, gzip``.)
    for value in headers.get_all(b"content-encoding"):
        if any(c.strip().lower() not in (b"identity", b"") for c in value.split(b",")):
            return False
    if settings.textual_only and not is_textual(headers.get(b"content-type")):
        return False
    if no_transform(headers):
        return False
    if any(headers.get(name) is not None for name in _DIGESTS):
        return False
    z = zlib.compressobj(settings.level, zlib.DEFLATED, _WBITS[coding])
    if body.in_memory:
        data = body.peek_memory()
        trailers = body.trailers
        body.consume_memory()
        # With trailers the body stays chunked (only a chunked body carries them); else it gets its length.
        compressed = z.compress(data) + z.flush(zlib.Z_FINISH)
        resp.body = Body.buffered(compressed, None if trailers else len(compressed), trailers)
    else:
        resp.body = Body(_Deflating(body, z), None)
    headers.remove(b"content-length")
    # Byte ranges of the upstream's bytes are not ranges of these: a resumed download would splice the
    # identity bytes from an offset onto the compressed ones (nginx drops it too).
    headers.remove(b"accept-ranges")
    headers.set(b"content-encoding", coding.encode("ascii"))
    vary = [v for value in headers.get_all(b"vary") for v in value.split(b",")]
    if not any(v.strip().lower() in (b"accept-encoding", b"*") for v in vary):
        headers.add(b"vary", b"Accept-Encoding")
    etag = headers.get(b"etag")
    if etag is not None and not etag.startswith(b"W/"):
        headers.set(b"etag", b"W/" + etag)
    return True
