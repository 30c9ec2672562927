"""Types shared by the HTTP/1.1 codec implementations: events, sentinels, errors and limits.

Both implementations (``codec_h11``, the reference on h11, and ``codec_fast``, on llhttp) return
these very objects, so callers compare event types with ``type(event) is Data`` whichever codec is
selected in ``hostproxy.http.codec``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "CodecLimits",
    "END_OF_MESSAGE",
    "ConnectionClosed",
    "Data",
    "EndOfMessage",
    "Event",
    "HeaderList",
    "Informational",
    "LocalProtocolError",
    "ProtocolError",
    "RequestHead",
    "ResponseHead",
    "UNASKED_101",
    "check_raw",
    "request_head",
]


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA: Final = _Sentinel("NEED_DATA")
PAUSED: Final = _Sentinel("PAUSED")

HeaderList = list[tuple[bytes, bytes]]


# The events a codec makes for every message are plain slotted dataclasses, not frozen ones: a
# frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, about three times
# the cost. Nothing assigns to an event's fields; equality, ``repr`` and hashing are a frozen
# dataclass's (``unsafe_hash``: the hash of the fields, as ``frozen`` gave).


@dataclass(slots=True, unsafe_hash=True)
class RequestHead:
    method: bytes
    target: bytes
    headers: HeaderList
    http_version: bytes


@dataclass(slots=True, unsafe_hash=True)
class ResponseHead:
    status: int
    reason: bytes
    headers: HeaderList
    http_version: bytes
    # A memo shared by every event made from the same head bytes (the fast codec's remembered heads),
    # where a consumer may keep what it derives from ``headers`` alone; ``None`` when there is none.
    # Not part of the event's value.
    memo: HeadMemo | None = field(default=None, compare=False, repr=False)


class HeadMemo:
    """What consumers derive from one remembered head's fields (see ``ResponseHead.memo``)."""

    __slots__ = ("stripped",)

    def __init__(self) -> None:
        # The upstream pool's ``strip_response_fields`` result: the kept pairs and the
        # Content-Length value; and the reuse window its Keep-Alive value gives
        # (``keep_alive_reuse_window``; None: no Keep-Alive field, or one that sets no bound).
        self.stripped: tuple[tuple[tuple[bytes, bytes], ...], bytes | None, float | None] | None = None


@dataclass(slots=True, unsafe_hash=True)
class Informational:
    status: int
    headers: HeaderList


@dataclass(slots=True, unsafe_hash=True)
class Data:
    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    """The end of a message (frozen: the codecs share one for the usual end without trailers,
    ``END_OF_MESSAGE``, whose empty list nobody extends)."""

    trailers: HeaderList


END_OF_MESSAGE: Final = EndOfMessage([])


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    pass


Event = RequestHead | ResponseHead | Informational | Data | EndOfMessage | ConnectionClosed | _Sentinel


#: Why a ``101`` is refused when the request proposed no upgrade (both client codecs say it alike).
UNASKED_101: Final = "upstream answered 101 Switching Protocols to a request that did not ask to upgrade"


class ProtocolError(Exception):
    """The peer broke HTTP/1.1.  ``status`` is what a server should answer (400, 414, 431)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class LocalProtocolError(Exception):
    """We asked the codec to send something HTTP/1.1 does not allow (a bug in the caller)."""


@dataclass(frozen=True)
class CodecLimits:
    max_initial_line: int = 4 * 1024
    max_headers: int = 8 * 1024
    max_header_count: int = 100
    max_chunk_line: int = 16 * 1024


def check_raw(head: bytes, what: str, field: str) -> None:
    """Refuse bare CR or LF, NUL and obs-fold in a head (``what``) or its fields (``field``): 400."""
    crlf = head.count(b"\r\n")
    if head.count(b"\n") != crlf:
        raise ProtocolError(f"bare LF in {what}; lines must end with CRLF")
    if head.count(b"\r") != crlf:
        raise ProtocolError(f"bare CR in {what}; lines must end with CRLF")
    if b"\x00" in head:
        raise ProtocolError(f"NUL byte in {what}")
    if b"\r\n " in head or b"\r\n\t" in head:
        raise ProtocolError(f"obsolete line folding (obs-fold) in {field}; send each field on one line")


#: A head past its size limit whose ``Via`` names this many proxies is called a likely proxy loop.
LOOP_HOPS = 100


def via_loop_hint(head: bytes) -> str:
    """What to add to the message of a head (request or response, or a part of one) past its size
    limit when its ``Via`` names :data:`LOOP_HOPS` proxies or more: a proxy loop (a dtab that routes
    back to this proxy) grows ``Via`` at every hop, in requests and in responses, and hits the 8 KB
    limit (about 500 hops) before ``maxCallDepth`` (1000) can catch it. Empty otherwise."""
    hops = 0
    for line in head.split(b"\n"):
        if line[:4].lower() == b"via:":
            hops += line.count(b",") + 1
    if hops < LOOP_HOPS:
        return ""
    return f"; its Via names {hops} proxies: a proxy loop? Check for a route that sends requests back to this proxy"


def _headers_too_large(head: bytes, limits: CodecLimits) -> ProtocolError:
    """431 for a request head past ``max_headers`` (with :func:`via_loop_hint`)."""
    message = f"request headers exceed {limits.max_headers} bytes (maxHeadersKB)" + via_loop_hint(head)
    return ProtocolError(message, 431)


def request_head(buf: bytearray, limits: CodecLimits, eof: bool) -> bytes | Event:
    """The next request head in ``buf``: the request line and fields up to the last field's CRLF
    (the blank line after it stays in ``buf``, as does the head: the caller takes them), or
    ``NEED_DATA`` / ``ConnectionClosed`` while it is incomplete. Empty lines before it are dropped
    (RFC 9112 §2.2). Both codecs frame request heads with it, so they refuse alike: a request line
    past ``max_initial_line`` (414), fields past ``max_headers`` or ``max_header_count`` (431), bare
    CR/LF, NUL and obs-fold (400) — checked on a partial head too, before it is complete."""
    while buf[:2] == b"\r\n":
        del buf[:2]
    if not buf:
        return ConnectionClosed() if eof else NEED_DATA
    end = buf.find(b"\r\n\r\n")
    if end == -1:
        head = bytes(buf)
        line_end = head.find(b"\r\n")
        if (line_end == -1 and len(head) > limits.max_initial_line) or line_end > limits.max_initial_line:
            raise ProtocolError(
                f"request line exceeds {limits.max_initial_line} bytes (maxInitialLineKB)", 414
            )
        if len(head) > limits.max_initial_line + limits.max_headers:
            raise _headers_too_large(head, limits)
        # A trailing CR may be the first half of a CRLF still in flight.
        check_raw(head[:-1] if head.endswith(b"\r") else head, "request head", "request header")
        return ConnectionClosed() if eof else NEED_DATA  # a partial head and then EOF: nothing to answer
    head = bytes(buf[: end + 2])
    line_end = head.find(b"\r\n")
    if line_end > limits.max_initial_line:
        raise ProtocolError(f"request line exceeds {limits.max_initial_line} bytes (maxInitialLineKB)", 414)
    if len(head) - line_end - 2 > limits.max_headers:
        raise _headers_too_large(head, limits)
    crlf = head.count(b"\r\n")
    if crlf - 1 > limits.max_header_count:
        raise ProtocolError(f"request has more than {limits.max_header_count} header fields", 431)
    # ``check_raw`` inline, with the CRLF count at hand; it runs only to name what is wrong. The
    # searches are ``find`` rather than ``in``: CPython's ``in`` on bytes first tries its operand as an
    # integer, and makes (then drops) a TypeError for every bytes operand, which costs about twice
    # the search (the request path uses ``find`` for its byte searches for the same reason).
    if (
        head.count(b"\n") != crlf
        or head.count(b"\r") != crlf
        or head.find(b"\x00") != -1
        or head.find(b"\r\n ") != -1
        or head.find(b"\r\n\t") != -1
    ):
        check_raw(head, "request head", "request header")
    return head
