"""The reference HTTP/1.1 codec, on h11 (select it with ``HOSTPROXY_HTTP1_CODEC=h11``).

Theory of operation
-------------------
The trio code never talks to h11 directly: it feeds received bytes to a codec with
``receive_data`` (``b""`` means EOF), pulls our own event types from ``next_event``, and asks the
codec for the bytes of what it wants to send.  A faster parser can later replace the hot path
behind the same interface, with this h11 implementation as the reference it is differential-tested
against.

Events: ``RequestHead`` / ``ResponseHead`` / ``Informational`` (1xx) / ``Data`` / ``EndOfMessage``
(with trailers) / ``ConnectionClosed``, or the ``NEED_DATA`` and ``PAUSED`` sentinels.

The server side adds the hardening h11 0.16 does not do itself.  It keeps its own buffer while a
request head is incomplete and checks the *raw* head before h11 sees it:

* request line longer than ``max_initial_line`` → 414; head longer than ``max_headers`` or more
  than ``max_header_count`` fields → 431;
* bare LF or bare CR as a line terminator, NUL anywhere, obs-fold (a line starting with SP/HT)
  → 400 (h11 accepts bare LF and silently joins obs-folds);
* ``Content-Length`` together with ``Transfer-Encoding`` → 400 (h11 accepts it and keeps both
  headers: the request-smuggling primitive).

h11 itself rejects a ``Transfer-Encoding`` other than ``chunked``, differing duplicate
``Content-Length``, a bad chunk framing and a missing ``Host`` on HTTP/1.1.  Every rejection is a
``ProtocolError`` carrying the status to answer with.

One h11 connection object lives for one request/response cycle.  At the end of a cycle whatever
h11 buffered beyond the message (pipelined requests) is taken back with ``trailing_data`` and goes
through the raw-head checks again, so pipelining never bypasses them.
"""

from __future__ import annotations

import re
from typing import Any, Final

import h11

from hostproxy.http.codec_base import (
    NEED_DATA,
    PAUSED,
    UNASKED_101,
    CodecLimits,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    HeaderList,
    Informational,
    LocalProtocolError,
    ProtocolError,
    RequestHead,
    ResponseHead,
    request_head,
    via_loop_hint,
)

__all__ = ["ClientCodec", "ServerCodec"]

# RFC 9112 §4: reason-phrase = *( HTAB / SP / VCHAR / obs-text ) (h11 lets other control bytes by).
_REASON_RE: Final = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")


def _framing_fields(headers: list[tuple[bytes, bytes]]) -> tuple[bool, bool]:
    """Whether a head has a Transfer-Encoding field, and whether it has a Content-Length field."""
    has_te = has_cl = False
    for name, _ in headers:
        if name == b"transfer-encoding":
            has_te = True
        elif name == b"content-length":
            has_cl = True
    return has_te, has_cl


def _h11_headers(headers: h11._headers.Headers) -> HeaderList:  # type: ignore[name-defined]
    # Iterating h11's Headers yields (lowercased name, value) pairs.
    return list(headers)


class ServerCodec:
    """The server side of one HTTP/1.1 connection."""

    def __init__(self, limits: CodecLimits | None = None) -> None:
        self.limits = limits or CodecLimits()
        self._buf = bytearray()
        self._eof = False
        self._conn: h11.Connection | None = None
        self._max_event = max(
            self.limits.max_initial_line + self.limits.max_headers + 4, self.limits.max_chunk_line
        )
        self.http_version: bytes | None = None

    # -- receiving -------------------------------------------------------------------------------

    @property
    def in_head(self) -> bool:
        """True while no complete request head has been parsed in this cycle."""
        return self._conn is None

    @property
    def has_buffered_data(self) -> bool:
        return bool(self._buf) if self._conn is None else bool(self._conn.trailing_data[0])

    def receive_data(self, data: bytes) -> None:
        if self._conn is None:
            if data:
                self._buf += data
            else:
                self._eof = True
        else:
            try:
                self._conn.receive_data(data)
            except RuntimeError as exc:  # data after EOF
                raise ProtocolError(str(exc)) from None

    def next_event(self) -> Event:
        if self._conn is None:
            return self._next_head()
        try:
            event = self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise ProtocolError(f"malformed request: {exc}", exc.error_status_hint) from None
        if event is h11.NEED_DATA:
            return NEED_DATA
        if event is h11.PAUSED:
            return PAUSED
        if type(event) is h11.Data:
            return Data(bytes(event.data))
        if type(event) is h11.EndOfMessage:
            return EndOfMessage(_h11_headers(event.headers))
        if type(event) is h11.ConnectionClosed:
            return ConnectionClosed()
        raise ProtocolError(f"unexpected event {type(event).__name__}")

    def _next_head(self) -> Event:
        buf = self._buf
        head = request_head(buf, self.limits, self._eof)
        if not isinstance(head, bytes):
            return head  # NEED_DATA or ConnectionClosed
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_event)
        data = bytes(buf)
        buf.clear()
        conn.receive_data(data)
        if self._eof:
            conn.receive_data(b"")
        self._conn = conn
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            # h11 hints 501 for an unsupported Transfer-Encoding; a proxy refuses it as malformed.
            status = 400 if exc.error_status_hint == 501 else exc.error_status_hint
            raise ProtocolError(f"malformed request: {exc}", status) from None
        if type(event) is not h11.Request:  # pragma: no cover - the head is complete by construction
            raise ProtocolError(f"malformed request head (parser returned {event!r})")
        headers = _h11_headers(event.headers)
        has_te, has_cl = _framing_fields(headers)
        if has_te and has_cl:
            raise ProtocolError("request has both Content-Length and Transfer-Encoding; send only one")
        self.http_version = event.http_version
        return RequestHead(event.method, event.target, headers, event.http_version)

    # -- sending ---------------------------------------------------------------------------------

    @property
    def they_are_waiting_for_100_continue(self) -> bool:
        return self._conn is not None and self._conn.they_are_waiting_for_100_continue

    def send_informational(self, status: int, headers: HeaderList) -> bytes:
        return self._send(h11.InformationalResponse, status_code=status, headers=headers)

    def send_response(self, status: int, reason: bytes, headers: HeaderList) -> bytes:
        if self._conn is None:
            # An error before (or instead of) a parseable head: answer on a throwaway state machine
            # that thinks it read a minimal request, so the framing rules still apply.
            self._conn = h11.Connection(h11.SERVER)
            self._conn.receive_data(b"GET / HTTP/1.0\r\n\r\n")
            self._conn.next_event()
            self._conn.next_event()
        return self._send(h11.Response, status_code=status, reason=reason, headers=headers)

    def send_data(self, data: bytes) -> bytes:
        return self._send(h11.Data, data=data)

    def send_end(self, trailers: HeaderList | None = None) -> bytes:
        return self._send(h11.EndOfMessage, headers=trailers or [])

    def _send(self, event_type: type[h11.Event], **fields: Any) -> bytes:
        assert self._conn is not None
        try:
            # Building the event validates it (header names and values, Host): a caller error too.
            out = self._conn.send(event_type(**fields))
        except h11.LocalProtocolError as exc:
            raise LocalProtocolError(str(exc)) from None
        return out or b""

    def send_failed(self) -> None:
        if self._conn is not None:
            self._conn.send_failed()

    @property
    def response_chunked(self) -> bool:
        """True when the response body being sent uses chunked framing (so trailers can be sent)."""
        if self._conn is None:
            return False
        writer = self._conn._writer  # h11 exposes no public accessor for the chosen framing
        return type(writer).__name__ == "ChunkedWriter"

    # -- cycle -----------------------------------------------------------------------------------

    @property
    def can_reuse(self) -> bool:
        """True once both sides finished this cycle and the connection may carry another request."""
        return (
            self._conn is not None and self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE
        )

    @property
    def request_complete(self) -> bool:
        return self._conn is not None and self._conn.their_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED)

    def start_next_cycle(self) -> None:
        """Begin the next request; pipelined bytes h11 already buffered are checked afresh."""
        assert self._conn is not None and self.can_reuse
        rest, closed = self._conn.trailing_data
        self._conn = None
        self._buf = bytearray(rest)
        self._eof = closed
        self.http_version = None

    def switched_protocol_data(self) -> bytes:
        """After a ``101`` was sent: the bytes the client sent beyond the request (tunnel data)."""
        assert self._conn is not None
        return bytes(self._conn.trailing_data[0])


class ClientCodec:
    """The client side of one HTTP/1.1 connection to an upstream (h11, reused across cycles).

    Added to h11, as the fast codec does them: the head limits of ``limits`` (h11 bounds only an
    incomplete head; a complete one is measured here in its canonical form, ``name: value`` lines), a
    reason phrase of HTAB, SP, VCHAR and obs-text only, and no reuse of a connection whose response
    was framed by the close or carried both ``Content-Length`` and ``Transfer-Encoding`` (h11 keeps
    both alive).
    """

    def __init__(self, limits: CodecLimits | None = None) -> None:
        self.limits = limits = limits or CodecLimits()
        self._conn = h11.Connection(
            h11.CLIENT, max_incomplete_event_size=limits.max_initial_line + limits.max_headers + 4
        )
        self._method: bytes | None = None
        self._no_reuse = False  # this cycle's response leaves the connection unusable

    def send_request(self, method: bytes, target: bytes, headers: HeaderList) -> bytes:
        self._method = method
        return self._send(h11.Request, method=method, target=target, headers=headers)

    def send_data(self, data: bytes) -> bytes:
        return self._send(h11.Data, data=data)

    def send_end(self, trailers: HeaderList | None = None) -> bytes:
        return self._send(h11.EndOfMessage, headers=trailers or [])

    def _send(self, event_type: type[h11.Event], **fields: Any) -> bytes:
        try:
            out = self._conn.send(event_type(**fields))
        except h11.LocalProtocolError as exc:
            raise LocalProtocolError(str(exc)) from None
        return out or b""

    def send_failed(self) -> None:
        self._conn.send_failed()

    def receive_data(self, data: bytes) -> None:
        try:
            self._conn.receive_data(data)
        except RuntimeError as exc:
            raise ProtocolError(str(exc), 502) from None

    def next_event(self) -> Event:
        try:
            event = self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise ProtocolError(f"malformed response: {self._h11_message(str(exc))}", 502) from None
        if event is h11.NEED_DATA:
            return NEED_DATA
        if event is h11.PAUSED:
            return PAUSED
        t = type(event)
        if t is h11.Data:
            return Data(bytes(event.data))  # type: ignore[union-attr]
        if t is h11.Response:
            headers = _h11_headers(event.headers)  # type: ignore[union-attr]
            self._check_head(event.reason, headers)  # type: ignore[union-attr]
            has_te, has_cl = _framing_fields(headers)
            status = event.status_code  # type: ignore[union-attr]
            method = self._method
            if has_te:
                # RFC 9112 §6.3: Transfer-Encoding overrides Content-Length; never pass both on, and
                # never reuse the connection after such a message.
                if has_cl:
                    headers = [(n, v) for n, v in headers if n != b"content-length"]
                    self._no_reuse = True
            elif not has_cl and not (
                status in (204, 304) or method == b"HEAD" or (method == b"CONNECT" and status < 300)
            ):
                self._no_reuse = True  # framed by the close: the connection ends with the body
            return ResponseHead(status, event.reason, headers, event.http_version)  # type: ignore[union-attr]
        if t is h11.InformationalResponse:
            headers = _h11_headers(event.headers)  # type: ignore[union-attr]
            self._check_head(event.reason, headers)  # type: ignore[union-attr]
            return Informational(event.status_code, headers)  # type: ignore[union-attr]
        if t is h11.EndOfMessage:
            return EndOfMessage(_h11_headers(event.headers))  # type: ignore[union-attr]
        if t is h11.ConnectionClosed:
            return ConnectionClosed()
        raise ProtocolError(f"unexpected event {t.__name__}", 502)

    def _check_head(self, reason: bytes, headers: HeaderList) -> None:
        """Refuse what h11 accepts in a response head and the fast codec does not: a control byte in
        the reason phrase, a head past the limits."""
        limits = self.limits
        if not _REASON_RE.fullmatch(reason):
            raise ProtocolError(f"malformed response: illegal status line: reason {reason!r}", 502)
        if 13 + len(reason) > limits.max_initial_line:  # "HTTP/1.1 200 " + reason
            raise ProtocolError(
                f"malformed response: status line exceeds {limits.max_initial_line} bytes (maxInitialLineKB)",
                502,
            )
        if sum(len(n) + len(v) + 4 for n, v in headers) > limits.max_headers:
            vias = b"\n".join(b"via:" + v for n, v in headers if n.lower() == b"via")
            raise ProtocolError(
                f"malformed response: response headers exceed {limits.max_headers} bytes (maxHeadersKB)"
                + via_loop_hint(vias),
                502,
            )
        if len(headers) > limits.max_header_count:
            raise ProtocolError(
                f"malformed response: response has more than {limits.max_header_count} header fields", 502
            )

    def _h11_message(self, message: str) -> str:
        """h11's words where ours say more (an unasked 101; a head too long to finish)."""
        if "_SWITCH_UPGRADE" in message:
            return UNASKED_101
        if message == "Receive buffer too long":
            return (
                f"response head exceeds {self.limits.max_initial_line + self.limits.max_headers} bytes "
                "(maxInitialLineKB + maxHeadersKB)"
            )
        return message

    @property
    def request_sent(self) -> bool:
        return self._conn.our_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.SWITCHED_PROTOCOL)

    @property
    def response_complete(self) -> bool:
        return self._conn.their_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED)

    @property
    def switched(self) -> bool:
        return self._conn.our_state is h11.SWITCHED_PROTOCOL

    @property
    def can_reuse(self) -> bool:
        return self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE and not self._no_reuse

    def start_next_cycle(self) -> None:
        if self._no_reuse:
            raise LocalProtocolError("not in a reusable state")
        self._conn.start_next_cycle()
        self._method = None

    def trailing_data(self) -> bytes:
        return bytes(self._conn.trailing_data[0])
