"""HTTP message types shared by the server, the upstream client and the router.

Theory of operation
-------------------
A message is a head (method/target or status, plus ``Headers``) and a ``Body``.  Header names are
stored lowercased as ``bytes`` and values as ``bytes``, in wire order, because that is what h11 gives
us and what HTTP/2 wants; nothing decodes them on the hot path.

A ``Body`` is a single-use async iterator of byte chunks.  It *pulls*: the next chunk is read from
the socket only when the consumer asks for it, so a slow consumer slows the producer (backpressure)
and no body is ever buffered whole.  The source of the chunks is a small ``BodySource`` object
supplied by whoever owns the connection (the server for request bodies, an upstream connection for
response bodies); ``Body.from_bytes`` and ``Body.empty`` cover bodies that are already in memory.
Trailers (chunked encoding only) are available from ``Body.trailers`` once the last chunk was read.
Whoever receives a ``Body`` must either read it to the end or ``aclose()`` it; closing early tells
the owner that the rest will never be read (an upstream connection is then discarded, not reused).

``Headers`` remember one fact about themselves: that they hold no hop-by-hop field (``hop_free``).
Only ``hopbyhop.strip_hop_by_hop`` establishes it, on the headers it returns; every helper that adds
a field whose name is hop-by-hop (``HOP_BY_HOP``, ``Proxy-*``) forgets it, and removing fields or
copying keeps it.  It lets a second strip of the same fields (a response the upstream pool already
stripped, written by the server) be a plain copy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final, Protocol

__all__ = [
    "HOP_BY_HOP",
    "Body",
    "BodySource",
    "ByteStream",
    "Headers",
    "NeverIndexedHeaders",
    "Request",
    "Response",
    "is_hop_by_hop",
    "never_indexed_of",
]


#: Field names that describe one connection (RFC 9110 §7.6.1); so is every ``Proxy-*`` name.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"http2-settings",  # an h2c offer's settings: connection-specific (RFC 9113 §3.1)
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


class Headers:
    """An ordered multi-map of ``(lowercased name, value)`` byte pairs.

    Names given to the helpers may be ``str`` or ``bytes`` in any case; they are lowercased.
    ``hop_free`` is True only when ``strip_hop_by_hop`` made these headers and no helper has added a
    hop-by-hop field since (see the module docstring).
    """

    __slots__ = ("_items", "_hop_free")

    def __init__(self, items: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self._items: list[tuple[bytes, bytes]] = [(_name(n), v) for n, v in items]
        self._hop_free = False

    @classmethod
    def _trusted(cls, items: list[tuple[bytes, bytes]]) -> Headers:
        """Wrap pairs that are already lowercased (from the codec); no copy, no checks."""
        h = _new(cls)
        h._items = items
        h._hop_free = False
        return h

    @classmethod
    def _stripped(cls, items: list[tuple[bytes, bytes]]) -> Headers:
        """Wrap lowercased pairs that hold no hop-by-hop field (``strip_hop_by_hop``'s result, which
        no other code holds); no copy."""
        h = _new(cls)
        h._items = items
        h._hop_free = True
        return h

    @property
    def hop_free(self) -> bool:
        """True when no field is hop-by-hop, known from ``strip_hop_by_hop`` (False: not known)."""
        return self._hop_free

    def get(self, name: str | bytes, default: bytes | None = None) -> bytes | None:
        """The first value of ``name``, or ``default``."""
        key = _NAMES.get(name) or _name(name)
        for n, v in self._items:
            if n == key:
                return v
        return default

    def get_all(self, name: str | bytes) -> list[bytes]:
        key = _NAMES.get(name) or _name(name)
        return [v for n, v in self._items if n == key]

    def set(self, name: str | bytes, value: bytes | str) -> None:
        """Replace every value of ``name`` with one value, kept at the first occurrence's place."""
        key = _NAMES.get(name) or _name(name)
        val = value.encode("latin-1") if isinstance(value, str) else value
        if self._hop_free and is_hop_by_hop(key):
            self._hop_free = False
        items = self._items
        for n, _ in items:
            if n == key:
                break
        else:  # absent (the usual case for a header the proxy sets): appended, to a new list as below
            self._items = [*items, (key, val)]
            return
        out: list[tuple[bytes, bytes]] = []
        placed = False
        for n, v in items:
            if n == key:
                if not placed:
                    out.append((key, val))
                    placed = True
            else:
                out.append((n, v))
        if not placed:
            out.append((key, val))
        self._items = out

    def add(self, name: str | bytes, value: bytes | str) -> None:
        val = value.encode("latin-1") if isinstance(value, str) else value
        key = _NAMES.get(name) or _name(name)
        if self._hop_free and is_hop_by_hop(key):
            self._hop_free = False
        self._items.append((key, val))

    def remove(self, name: str | bytes) -> None:
        key = _NAMES.get(name) or _name(name)
        items = self._items
        for n, _ in items:
            if n == key:  # rebuild only when there is something to remove (the common case: nothing)
                self._items = [(n, v) for n, v in items if n != key]
                return

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str | bytes):
            return False
        key = _NAMES.get(name) or _name(name)
        return any(n == key for n, _ in self._items)

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[bytes, bytes]]:
        return list(self._items)

    def copy(self) -> Headers:
        h = _new(Headers)
        h._items = self._items[:]
        h._hop_free = self._hop_free
        return h

    def append_entry(self, name: bytes, entry: bytes) -> None:
        """Append ``entry`` to the comma-separated list in field ``name`` (lowercase bytes): every
        value of ``name`` and ``entry`` joined into one field at the first one's place, or a new
        field when there is none (``Via``, ``Forwarded``)."""
        if self._hop_free and is_hop_by_hop(name):
            self._hop_free = False
        items = self._items
        for n, _ in items:
            if n == name:
                self.set(name, b", ".join([*self.get_all(name), entry]))
                return
        items.append((name, entry))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


_new = object.__new__


class NeverIndexedHeaders(Headers):
    """Fields received in an HTTP/2 header block (a trailer section) of which the sender encoded some
    HPACK never-indexed: ``never_indexed`` holds those ``(name, value)`` pairs, which an intermediary
    must send on never-indexed too (RFC 7541 §7.1.3), as ``Request.never_indexed`` and
    ``Response.never_indexed`` hold a head's. The fields themselves are plain pairs, as in any
    ``Headers``; a copy is a plain ``Headers`` (made, like a rewritten field, by this side)."""

    __slots__ = ("never_indexed",)

    def __init__(
        self, items: Iterable[tuple[bytes, bytes]], never_indexed: frozenset[tuple[bytes, bytes]]
    ) -> None:
        super().__init__(items)
        self.never_indexed = never_indexed


_NO_PAIRS: frozenset[tuple[bytes, bytes]] = frozenset()


def never_indexed_of(headers: Headers | None) -> frozenset[tuple[bytes, bytes]]:
    """The pairs of ``headers`` its sender encoded never-indexed (none unless they are
    ``NeverIndexedHeaders``)."""
    return getattr(headers, "never_indexed", _NO_PAIRS)


def is_hop_by_hop(name: bytes) -> bool:
    """Whether a lowercased field name is hop-by-hop by itself (``HOP_BY_HOP`` or ``Proxy-*``)."""
    return name in HOP_BY_HOP or name[:6] == b"proxy-"


def _name(name: str | bytes) -> bytes:
    key = _NAMES.get(name)
    if key is None:
        key = name.lower().encode("ascii") if isinstance(name, str) else name.lower()
        if len(_NAMES) < _NAMES_MAX:
            _NAMES[name] = key
    return key


# Header names as given to the helpers -> lowercased bytes. The helpers are called with a few dozen
# constant names many times per request; a dict lookup beats lowering each time (the helpers look the
# name up inline and call ``_name`` only on a miss, which saves a call per lookup). Bounded: names taken
# from traffic (a config's header identifier, say) can only fill it so far.
_NAMES: dict[str | bytes, bytes] = {}
_NAMES_MAX = 4096


class BodySource(Protocol):
    """Where a streamed ``Body`` gets its chunks (implemented by connection owners)."""

    async def read_chunk(self) -> bytes | None:
        """The next non-empty chunk, or ``None`` after the last one (then ``trailers`` is final)."""
        ...

    @property
    def trailers(self) -> Headers | None: ...

    async def aclose(self) -> None:
        """The consumer will read no more; release or discard the underlying connection."""
        ...


class ByteStream(Protocol):
    """The subset of ``trio.abc.Stream`` used for tunnels (after a 101 Switching Protocols)."""

    async def send_all(self, data: bytes) -> None: ...

    async def receive_some(self, max_bytes: int | None = None) -> bytes: ...

    async def aclose(self) -> None: ...


class Body:
    """A single-use async iterator of byte chunks, pulled on demand (see module docstring)."""

    # ``done`` and ``in_memory`` are plain attributes rather than properties: the proxy reads them
    # several times per request, and an attribute read is no call. Only this class assigns them.
    __slots__ = ("_source", "_chunk", "content_length", "_trailers", "done", "in_memory", "_closed")

    def __init__(
        self,
        source: BodySource | None,
        content_length: int | None,
        *,
        _chunk: bytes | None = None,
    ) -> None:
        self._source = source
        self._chunk = _chunk
        self.content_length = content_length
        self._trailers: Headers | None = None
        #: True once the last chunk was read (or the body was empty to begin with).
        self.done = source is None and _chunk is None
        #: True when no connection backs this body (reading it never blocks).
        self.in_memory = source is None
        self._closed = False

    @classmethod
    def from_bytes(cls, data: bytes, trailers: Headers | None = None) -> Body:
        body = cls(None, len(data), _chunk=data or None)
        body._trailers = trailers
        return body

    @staticmethod
    def empty() -> Body:
        """The empty body: one shared object. Nothing it does can change what it shows (it is done
        from the start, so reading, ``consume_memory`` and ``aclose`` leave it as it was); nothing
        may assign to its ``content_length``."""
        return _EMPTY

    @classmethod
    def buffered(cls, data: bytes, content_length: int | None, trailers: Headers | None = None) -> Body:
        """An in-memory body that keeps the framing facts of the message it was read from."""
        body = _new(cls)
        body._source = None
        body._chunk = data or None
        body.content_length = content_length
        body._trailers = trailers
        body.done = not data
        body.in_memory = True
        body._closed = False
        return body

    def peek_memory(self) -> bytes:
        """The bytes of an unread in-memory body, without consuming them (for coalesced writes)."""
        assert self._source is None, "peek_memory() is only for in-memory bodies"
        return (self._chunk or b"") if not self.done else b""

    def consume_memory(self) -> None:
        """Mark an in-memory body read (after its bytes were written from ``peek_memory``)."""
        self._chunk = None
        self.done = True

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` was called: what was left unread is gone, and reading again fails."""
        return self._closed

    @property
    def trailers(self) -> Headers | None:
        """Trailer fields, final once the last chunk was read; ``None`` when there were none."""
        if self._source is not None and self.done:
            return self._source.trailers
        return self._trailers

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self.done:
            raise StopAsyncIteration
        if self._closed:
            raise RuntimeError("Body was closed before it was read to the end; it cannot be read again")
        if self._source is None:
            chunk = self._chunk
            self._chunk = None
            self.done = True
            if chunk is None:
                raise StopAsyncIteration
            return chunk
        data = await self._source.read_chunk()
        if data is None:
            self.done = True
            raise StopAsyncIteration
        return data

    async def read_all(self, limit: int = 1 << 20) -> bytes:
        """Read the rest into memory; raises ``ValueError`` beyond ``limit`` bytes (for small bodies)."""
        parts: list[bytes] = []
        size = 0
        async for chunk in self:
            size += len(chunk)
            if size > limit:
                await self.aclose()
                raise ValueError(f"body exceeds {limit} bytes; stream it instead of read_all()")
            parts.append(chunk)
        return b"".join(parts)

    async def aclose(self) -> None:
        """Stop reading: the owner discards what is left.  Idempotent; a no-op once done."""
        if self._closed:
            return
        self._closed = True
        if self._source is not None and not self.done:
            await self._source.aclose()
        self._chunk = None

    def __repr__(self) -> str:
        kind = "memory" if self._source is None else "stream"
        return f"<Body {kind} content_length={self.content_length} done={self.done}>"


_EMPTY: Final = Body(None, 0)


@dataclass(eq=False)
class Request:
    """An HTTP request as the router sees it.

    ``target`` is origin-form (``/path?query``), or ``*`` for ``OPTIONS *``.  An absolute-form target
    (``GET http://users/path``, proxy mode) is normalised by the server to target ``/path``,
    ``authority`` ``users`` and a ``Host: users`` header.  ``authority`` is otherwise the ``Host``
    header (``None`` when absent, e.g. HTTP/1.0).  ``upgrade`` is the requested protocol
    (``b"websocket"``) when the client asked to switch protocols; the ``Upgrade`` and
    ``Connection: upgrade`` headers are then kept so that the upstream sees the request.
    """

    method: str
    target: str
    headers: Headers
    body: Body
    http_version: str = "1.1"
    scheme: str = "http"
    authority: str | None = None
    upgrade: bytes | None = None
    #: The client cancelled this request (reset its h2 stream) while it was being handled: set by the
    #: server before it cancels the handler, which counts it as 499 (client closed request).
    client_reset: bool = False
    #: The fields (name, value) the client sent HPACK never-indexed (an HTTP/2 client marking a
    #: credential); an HTTP/2 upstream gets them so too (RFC 7541 §7.1.3).
    never_indexed: frozenset[tuple[bytes, bytes]] = frozenset()


@dataclass(eq=False)
class Response:
    """An HTTP response.

    ``upgraded`` is set on a ``101 Switching Protocols`` response from an upstream: the raw stream
    to tunnel bytes to and from.  ``error_cause`` is set on responses the proxy generated itself
    (see ``hostproxy.http.errors``), for metrics and logs.  ``interim`` holds the interim (1xx)
    responses an HTTP/1.1 upstream sent before this one, in order (status and fields, hop-by-hop
    fields stripped; ``100 Continue`` is not among them), for the server to write before it; ``None``
    when there were none (the usual case).
    """

    status: int
    reason: bytes = b""
    headers: Headers = field(default_factory=Headers)
    body: Body = field(default_factory=Body.empty)
    http_version: str = "1.1"
    upgraded: ByteStream | None = None
    error_cause: str | None = None
    interim: list[tuple[int, Headers]] | None = None
    #: The fields (name, value) an HTTP/2 upstream sent HPACK never-indexed; an HTTP/2 client gets them
    #: so too (RFC 7541 §7.1.3).
    never_indexed: frozenset[tuple[bytes, bytes]] = frozenset()
