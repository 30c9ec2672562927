"""``TlsStream``: a trio ``SSLStream`` with the attributes the servers and pools rely on.

Theory of operation
-------------------
``trio.SSLStream`` cannot be subclassed and has no ``.socket``, while the HTTP servers and pools read
``stream.socket`` for peer addresses and idle polling. :class:`TlsStream` wraps one and forwards the
``trio.abc.Stream`` interface, adding:

* ``socket`` — the transport's socket;
* :meth:`TlsStream.buffered` — bytes received and not handed out yet, which polling the socket
  cannot see (a pool checks it before keeping a connection);
* a lazy handshake on first I/O, bounded by ``handshake_timeout_s``, whose failure is reported once
  through ``on_failure(reason, exc)`` (the server counts it; not for a client that closed without
  sending a byte, a TCP health check) and raised as ``trio.BrokenResourceError`` so the protocol
  code treats it like any dead connection;
* :func:`peer_certificate`, :attr:`TlsStream.alpn`, ``version`` and ``cipher`` for handlers;
* :meth:`TlsStream.forwarded_client_cert`: the ``x-forwarded-client-cert`` value describing the
  peer's certificate (Envoy's element syntax: ``Hash=<sha256 of the DER>;Cert="<url-encoded PEM>";
  Subject="<RFC 4514>";URI=...;DNS=...``), computed once per connection. Values holding ``,;="``
  are quoted (``"`` and ``\\`` escaped), characters outside printable ASCII percent-encoded, so that
  names in a client certificate can neither add fields nor break the header.

Closing: :meth:`TlsStream.aclose` first sends a ``close_notify`` alert (:meth:`TlsStream.send_close_notify`)
when the handshake completed and the connection is sound, so that a peer reading until the end can
tell a whole answer from one cut short by a TCP close; it answers a peer's ``close_notify`` the same
way. The attempt is bounded (:data:`CLOSE_NOTIFY_TIMEOUT_S`: a peer that reads nothing cannot hold the
close) and never waits for the peer's own alert. A connection whose last message was cut short
(:meth:`TlsStream.cut_short`: an upstream failing mid-body, a write cancelled) closes without one, as
it would with a TCP reset: a close_notify would vouch for a message this side did not finish.

A TLS failure after the handshake (TLS 1.3 servers reject a client certificate only after the
client's handshake completed, so the client learns it on its first read) is raised as
:class:`TlsBroken`, a ``trio.BrokenResourceError`` that carries the translated error; upstream code
gets it back with :func:`tls_error_of`.

A plaintext HTTP request sent to a TLS server (first bytes peeked before the handshake: a letter,
which never starts a TLS record) is answered in plaintext with a 400 saying to use https
(:data:`PLAIN_HTTP_ANSWER`), an HTTP/2 preface with a GOAWAY saying so (:data:`PLAIN_H2_ANSWER`),
rather than a connection closed without a word; other failures send OpenSSL's alert.

:func:`failure_reason` names a failed handshake in a few fixed words (bounded metric keys).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from typing import Any

import trio

from hostproxy.http.errors import h2_refusal
from hostproxy.tls.inspect import CertInfo, der_info

__all__ = [
    "CLOSE_NOTIFY_TIMEOUT_S",
    "TlsBroken",
    "TlsStream",
    "failure_reason",
    "peer_certificate",
    "ssl_error_of",
    "tls_error_of",
    "xfcc_value",
]


#: The longest closing a connection spends writing its ``close_notify`` (a peer that stopped reading
#: can leave no room for it); the peer's own alert is never waited for.
CLOSE_NOTIFY_TIMEOUT_S = 1.0


class TlsBroken(trio.BrokenResourceError):
    """The connection failed for a TLS reason; ``error`` is the translated (``UpstreamError``) error."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def tls_error_of(exc: BaseException) -> Exception | None:
    """The translated TLS error behind ``exc`` (a :class:`TlsBroken`), or None."""
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 8:
        if isinstance(cur, TlsBroken):
            return cur.error
        cur = cur.__cause__
        seen += 1
    return None


def ssl_error_of(exc: BaseException) -> ssl.SSLError | ssl.CertificateError | None:
    """The ``ssl`` exception behind a trio ``BrokenResourceError`` (or ``exc`` itself)."""
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 8:
        if isinstance(cur, ssl.SSLError | ssl.CertificateError):
            return cur
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return None


# OpenSSL reason codes (ssl.SSLError.reason) by what they mean for the operator.
_NOT_TLS = {
    "HTTP_REQUEST",
    "HTTPS_PROXY_REQUEST",
    "WRONG_VERSION_NUMBER",
    "PACKET_LENGTH_TOO_LONG",
    "RECORD_LENGTH_MISMATCH",
    "UNKNOWN_PROTOCOL",
}
_PROTOCOL = {
    "UNSUPPORTED_PROTOCOL",
    "TLSV1_ALERT_PROTOCOL_VERSION",
    "NO_PROTOCOLS_AVAILABLE",
    "VERSION_TOO_LOW",
    "VERSION_TOO_HIGH",
    "WRONG_SSL_VERSION",
    "UNSUPPORTED_SSL_VERSION",
}
_CIPHER = {
    "NO_SHARED_CIPHER",
    "NO_CIPHERS_AVAILABLE",
    "NO_SUITABLE_SIGNATURE_ALGORITHM",
    "INAPPROPRIATE_FALLBACK",
}
_PEER_REJECTED = {
    "TLSV1_ALERT_UNKNOWN_CA",
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_REVOKED",
    "TLSV1_ALERT_ACCESS_DENIED",
    "TLSV1_ALERT_DECRYPT_ERROR",
}
_NO_CLIENT_CERT = {"PEER_DID_NOT_RETURN_A_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED"}

#: Every reason :func:`failure_reason` can return (server-side handshake failure metrics).
REASONS = (
    "not-tls",
    "protocol-mismatch",
    "no-shared-cipher",
    "no-client-certificate",
    "client-certificate-expired",
    "client-certificate-untrusted",
    "certificate-rejected-by-peer",
    "handshake-failure",
    "eof",
    "timeout",
    "other",
)

_PLAIN_HTTP = {"HTTP_REQUEST", "HTTPS_PROXY_REQUEST"}  # OpenSSL saw "GET ", "POST ", "CONNECT"...

_PLAIN_HTTP_TEXT = (
    b"This port speaks TLS: a plaintext HTTP request was sent to it; use https:// (or the server's "
    b"plaintext port)"
)
#: What a TLS server answers to a plaintext HTTP request (the whole connection's output).
PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\nl5d-err: "
    + _PLAIN_HTTP_TEXT
    + b"\r\nconnection: close\r\ncontent-length: "
    + str(len(_PLAIN_HTTP_TEXT) + 1).encode()
    + b"\r\n\r\n"
    + _PLAIN_HTTP_TEXT
    + b"\n"
)


_PLAIN_H2_TEXT = (
    b"This port speaks TLS: a plaintext HTTP/2 request was sent to it; use TLS (https://, ALPN h2) or "
    b"the server's plaintext port"
)
#: What a TLS server answers to a plaintext HTTP/2 connection preface: GOAWAY PROTOCOL_ERROR (1)
#: whose debug data says why.
PLAIN_H2_ANSWER = h2_refusal(1, _PLAIN_H2_TEXT)


def _is_plain_http(exc: BaseException) -> bool:
    err = ssl_error_of(exc)
    return err is not None and (getattr(err, "reason", None) or "") in _PLAIN_HTTP


def _plain_answer(first: bytes, exc: BaseException) -> bytes | None:
    """The plaintext answer for a connection whose first bytes were ``first`` and whose handshake
    failed with ``exc``, or None when it does not look like plaintext HTTP. A TLS record never starts
    with a letter, while every HTTP/1 method and the HTTP/2 preface (``PRI * HTTP/2.0``) do; OpenSSL
    itself recognizes only GET, POST, HEAD, PUT and CONNECT."""
    if first[:1].isupper():
        return PLAIN_H2_ANSWER if first.startswith(b"PRI ") else PLAIN_HTTP_ANSWER
    return PLAIN_HTTP_ANSWER if _is_plain_http(exc) else None


async def _peek(transport: Any) -> bytes | None:
    """The first bytes the client sent, left in the socket: b"" when it closed without sending any,
    None when they cannot be peeked."""
    sock = getattr(transport, "socket", None)
    try:
        if isinstance(sock, socket.socket):
            await trio.lowlevel.wait_readable(sock)
            return sock.recv(16, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        if isinstance(sock, trio.socket.SocketType):
            return await sock.recv(16, socket.MSG_PEEK)
    except OSError:
        pass
    return None


_EXPIRED_CODES = {10, 9}  # X509_V_ERR_CERT_HAS_EXPIRED, X509_V_ERR_CERT_NOT_YET_VALID


def failure_reason(exc: BaseException | None) -> str:
    """A fixed word for why a *server-side* handshake failed (``exc`` is what trio raised)."""
    if exc is None:
        return "timeout"
    err = ssl_error_of(exc)
    if err is None:
        return "eof"
    if isinstance(err, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return "eof"
    reason = getattr(err, "reason", None) or ""
    if isinstance(err, ssl.SSLCertVerificationError):
        return (
            "client-certificate-expired"
            if err.verify_code in _EXPIRED_CODES
            else "client-certificate-untrusted"
        )
    if reason in _NOT_TLS:
        return "not-tls"
    if reason in _PROTOCOL:
        return "protocol-mismatch"
    if reason in _CIPHER:
        return "no-shared-cipher"
    if reason in _NO_CLIENT_CERT:
        return "no-client-certificate"
    if reason in _PEER_REJECTED:
        return "certificate-rejected-by-peer"
    if reason == "SSLV3_ALERT_HANDSHAKE_FAILURE":
        return "handshake-failure"
    if "EOF" in reason:
        return "eof"
    return "other"


class TlsStream(trio.abc.Stream):
    """A TLS connection over a socket stream (see the module docstring)."""

    def __init__(
        self,
        ssl_stream: trio.SSLStream[Any],
        *,
        handshake_timeout_s: float | None = None,
        on_failure: Callable[[str, BaseException | None], None] | None = None,
        on_success: Callable[[TlsStream], None] | None = None,
        translate: Callable[[BaseException], Exception | None] | None = None,
    ) -> None:
        self.ssl_stream = ssl_stream
        self._timeout = handshake_timeout_s
        self._on_failure = on_failure
        self._on_success = on_success
        self._translate = translate
        self._state = "new"  # new | done | failed
        #: The translated TLS error raised after the handshake (TLS 1.3 client-certificate rejection),
        #: kept for code that only sees that the connection died (the h2 upstream link).
        self.tls_failure: Exception | None = None
        #: True once a read returned the end of the connection without the peer's close_notify (the
        #: TCP connection closed under TLS): what came before may have been cut short by anyone able
        #: to close TCP, so a body framed by the connection's end must not be taken as complete.
        self.eof_without_close_notify = False
        #: ``close_notify``: "pending" (not sent yet), "sent", "skipped" (not sendable, or not to be
        #: sent: :meth:`cut_short`).
        self.close_notify = "pending"
        self._xfcc: bytes | None | bool = False  # False: not computed yet
        #: (server side) the start of what the client sent first (b"": nothing, it closed; None: unknown)
        self._first_bytes: bytes | None = None

    # -- attributes --------------------------------------------------------------------------------

    @property
    def transport_stream(self) -> Any:
        return self.ssl_stream.transport_stream

    @property
    def socket(self) -> Any:
        """The socket under the TLS layer (for addresses, polling and aborts)."""
        return self.transport_stream.socket

    @property
    def handshake_done(self) -> bool:
        return self._state == "done"

    @property
    def alpn(self) -> str | None:
        """The protocol chosen by ALPN (``"h2"``, ``"http/1.1"``), None before the handshake or if none."""
        if self._state != "done":
            return None
        return self.ssl_stream.selected_alpn_protocol()  # type: ignore[no-any-return]

    @property
    def version(self) -> str | None:
        return self.ssl_stream.version() if self._state == "done" else None  # type: ignore[no-any-return]

    @property
    def cipher(self) -> str | None:
        if self._state != "done":
            return None
        c = self.ssl_stream.cipher()
        return c[0] if c else None

    def peer_certificate_der(self) -> bytes | None:
        if self._state != "done":
            return None
        return self.ssl_stream.getpeercert(binary_form=True)  # type: ignore[no-any-return]

    def forwarded_client_cert(self) -> bytes | None:
        """The ``x-forwarded-client-cert`` value for the peer's certificate (None: it sent none)."""
        if self._xfcc is False:
            der = self.peer_certificate_der()
            if self._state != "done":
                return None
            self._xfcc = xfcc_value(der) if der else None
        return self._xfcc  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"<TlsStream {self._state} version={self.version} alpn={self.alpn}>"

    # -- handshake ---------------------------------------------------------------------------------

    async def do_handshake(self) -> None:
        """Complete the handshake (once; later calls return at once or re-raise the failure)."""
        if self._state == "done":
            return
        if self._state == "failed":
            raise trio.BrokenResourceError("TLS handshake failed earlier on this connection")
        failure: BaseException | None = None
        timed_out = False
        try:
            if self._timeout is None:
                await self._handshake()
            else:
                with trio.move_on_after(self._timeout) as scope:
                    await self._handshake()
                timed_out = scope.cancelled_caught
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            failure = exc
        if failure is not None or timed_out:
            first = self._state != "failed"
            self._state = "failed"
            if failure is not None and first and self.ssl_stream.server_side:
                answer = _plain_answer(self._first_bytes or b"", failure)
                if answer is not None:
                    await self._answer_plain_http(answer)
                else:
                    await self._send_alert()
            # A client that closed without sending a byte (a TCP health check) attempted no
            # handshake: it is not counted as a failed one.
            silent = failure is not None and self._first_bytes == b""
            if first and self._on_failure is not None and not silent:
                self._on_failure(failure_reason(failure) if failure is not None else "timeout", failure)
            if failure is not None:
                raise failure
            raise trio.BrokenResourceError(f"TLS handshake not finished within {self._timeout:g} s")
        self._state = "done"
        if self._on_success is not None:
            callback, self._on_success = self._on_success, None
            callback(self)

    async def _handshake(self) -> None:
        if self.ssl_stream.server_side:
            # Seen before OpenSSL takes them: what a plaintext client sent (see ``_plain_answer``).
            self._first_bytes = await _peek(self.transport_stream)
        await self.ssl_stream.do_handshake()

    async def _answer_plain_http(self, answer: bytes) -> None:
        """A plaintext HTTP request came to this TLS port: answer it in plaintext (``answer``: a 400
        saying to use https, or an HTTP/2 GOAWAY saying so) instead of closing silently, then close
        our side and read what the client still sends (briefly), so that closing with unread input
        does not reset the answer away."""
        transport = self.transport_stream
        with trio.move_on_after(1):
            try:
                await transport.send_all(answer)
                await transport.send_eof()
                while await transport.receive_some(65536):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError):
                pass

    async def _send_alert(self) -> None:
        """Send the alert OpenSSL queued for a failed handshake (trio drops it), so the peer learns
        why (``unknown ca``, ``certificate required``...) instead of seeing the connection just close."""
        outgoing = getattr(self.ssl_stream, "_outgoing", None)  # trio's MemoryBIO; private
        if outgoing is None:
            return
        try:
            pending = outgoing.read()
        except Exception:
            return
        if not pending:
            return
        with trio.move_on_after(1):
            try:
                await self.transport_stream.send_all(pending)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError):
                pass

    # -- trio.abc.Stream ---------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._state != "done":
            await self.do_handshake()
        try:
            data = bytes(await self.ssl_stream.receive_some(max_bytes))
        except trio.BrokenResourceError as exc:
            self._raise_translated(exc)
            raise
        if not data and _ragged_eof(self.ssl_stream):
            self.eof_without_close_notify = True
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._state != "done":
            await self.do_handshake()
        try:
            await self.ssl_stream.send_all(data)
        except trio.BrokenResourceError as exc:
            self._raise_translated(exc)
            raise

    def buffered(self) -> int:
        """Bytes read from the socket that no ``receive_some`` returned yet: decrypted ones the TLS
        layer holds, and received records not decrypted yet (``trio.SSLStream`` reads the socket
        ahead and hands out one record at a time). A connection between two exchanges that holds any
        is not clean, although its socket polls empty. -1 when it cannot be told (trio's internals
        changed): the caller then treats the connection as not clean."""
        ssl_stream = self.ssl_stream
        ssl_object = getattr(ssl_stream, "_ssl_object", None)
        incoming = getattr(ssl_stream, "_incoming", None)
        try:
            return int(ssl_object.pending()) + int(incoming.pending)  # type: ignore[union-attr]
        except Exception:
            return -1

    async def wait_send_all_might_not_block(self) -> None:
        await self.ssl_stream.wait_send_all_might_not_block()

    def cut_short(self) -> None:
        """What this side was sending on the connection was cut short: it closes without
        ``close_notify`` (which would tell the peer that everything sent was whole)."""
        if self.close_notify == "pending":
            self.close_notify = "skipped"

    async def send_close_notify(self) -> bool:
        """Send ``close_notify`` (once), without waiting for the peer's: True when it was written.
        Nothing is sent before the handshake completed, on a broken connection, or after
        :meth:`cut_short`; the write gives up after :data:`CLOSE_NOTIFY_TIMEOUT_S`. What the peer
        still sends afterwards may no longer be readable through TLS: a caller that drains it (a
        lingering close) reads ``transport_stream`` and discards the bytes."""
        if self.close_notify != "pending":
            return False
        self.close_notify = "skipped"
        ssl_stream = self.ssl_stream
        # trio sends close_notify only outside https-compatible mode (which the servers and pools use
        # for its lenient reading of a peer's unclean close); its one-shot shutdown step is private.
        retry = getattr(ssl_stream, "_retry", None)
        ssl_object = getattr(ssl_stream, "_ssl_object", None)
        outgoing = getattr(ssl_stream, "_outgoing", None)  # trio's MemoryBIO
        state = getattr(getattr(ssl_stream, "_state", None), "name", None)
        if self._state != "done" or state != "OK" or retry is None or ssl_object is None:
            return False
        with trio.move_on_after(CLOSE_NOTIFY_TIMEOUT_S):
            try:
                try:
                    # Queues and sends our alert; not waiting for the peer's (which would be read
                    # next) is what ``ignore_want_read`` means.
                    await retry(ssl_object.unwrap, ignore_want_read=True)
                except trio.BrokenResourceError as exc:
                    # ``unwrap`` calls SSL_shutdown twice, the second time to read the peer's alert;
                    # it fails on application data the peer sent first (a client still sending a
                    # body: APPLICATION_DATA_AFTER_CLOSE_NOTIFY) after the first queued our alert,
                    # which trio then leaves unsent: send it here.
                    pending = outgoing.read() if outgoing is not None and ssl_error_of(exc) else b""
                    if not pending:
                        return False
                    delayed = getattr(ssl_stream, "_delayed_outgoing", None)
                    if delayed:  # (TLS 1.3 session tickets not sent yet go first)
                        ssl_stream._delayed_outgoing = None
                        pending = delayed + pending
                    await self.transport_stream.send_all(pending)
            except (trio.BrokenResourceError, trio.BusyResourceError, trio.ClosedResourceError, OSError):
                return False
            self.close_notify = "sent"
            return True
        return False

    async def aclose(self) -> None:
        """Send ``close_notify`` (see :meth:`send_close_notify`), then close the TCP connection."""
        try:
            if self.close_notify == "pending":
                await self.send_close_notify()
        finally:
            await self.ssl_stream.aclose()

    def _raise_translated(self, exc: BaseException) -> None:
        if self._translate is None or ssl_error_of(exc) is None:
            return
        translated = self._translate(exc)
        if translated is not None:
            self.tls_failure = translated
            raise TlsBroken(translated) from exc


def _ragged_eof(ssl_stream: trio.SSLStream[Any]) -> bool:
    """After ``receive_some`` returned b"": True when it was an EOF without close_notify. In
    https-compatible mode trio returns b"" for both, but marks the stream broken only for the ragged
    one (a clean close_notify leaves it usable); the state is private, so an unknown shape reads as
    a clean end (the behaviour before this check)."""
    state = getattr(ssl_stream, "_state", None)
    return getattr(state, "name", None) == "BROKEN"


def peer_certificate(stream: Any) -> CertInfo | None:
    """The certificate the peer presented on ``stream`` (a :class:`TlsStream` after its handshake),
    or None (plaintext, no certificate, or handshake not done). ``CertInfo.der`` is not kept; use
    :meth:`TlsStream.peer_certificate_der` for the raw bytes."""
    if not isinstance(stream, TlsStream):
        return None
    der = stream.peer_certificate_der()
    if not der:
        return None
    return der_info(der, role="peer")


def xfcc_value(der: bytes) -> bytes:
    """One ``x-forwarded-client-cert`` element for the DER certificate ``der``."""
    import hashlib
    from urllib.parse import quote

    from hostproxy.tls.inspect import pem_of_der

    info = der_info(der)
    parts = [
        f"Hash={hashlib.sha256(der).hexdigest()}",
        f'Cert="{quote(pem_of_der(der).decode("ascii"), safe="")}"',
        f"Subject={_xfcc_quoted(info.subject)}",
    ]
    for san in info.sans:
        kind, _, value = san.partition(":")
        if kind in ("URI", "DNS"):
            parts.append(f"{kind}={_xfcc_field(value)}")
    return ";".join(parts).encode("ascii")


def _xfcc_printable(value: str) -> str:
    """``value`` with every character outside printable ASCII percent-encoded: a certificate's names
    are the client's words, and a CR/LF in a SAN must never reach the forwarded header block."""
    from urllib.parse import quote

    return "".join(c if " " <= c <= "~" else quote(c, safe="") for c in value)


def _xfcc_quoted(value: str) -> str:
    text = _xfcc_printable(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _xfcc_field(value: str) -> str:
    """A URI/DNS value as Envoy writes it: quoted when it holds ``,;="`` (otherwise a SAN such as
    ``spiffe://a;Hash=...`` would add a field of its own)."""
    text = _xfcc_printable(value)
    return _xfcc_quoted(value) if any(c in text for c in ',;="') else text
