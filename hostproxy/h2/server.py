"""The HTTP/2 server (h2c: prior knowledge or ``Upgrade: h2c``): one task per connection, one task
per stream.

Theory of operation
-------------------
``H2Server`` shares its lifecycle with ``Http1Server`` (:class:`hostproxy.http.listening.ListeningServer`:
listeners, accept loops, ``stop_accepting``, ``drain``, ``idle``, ``statistics``); ``drain`` sends
every connection GOAWAY, so clients open no new streams, and each closes once its streams finish.
Like HTTP/1.1 it caps open connections (``max_connections``), holds accepting back under overload,
answers a new stream 503 ``overload`` past the overload shed mark, drains a connection (GOAWAY
NO_ERROR naming the last stream it answers, streams in progress finish) past the no-keep-alive mark,
and answers what the kernel queued when the listeners close: a connection that starts while the
server drains gets SETTINGS then GOAWAY (last stream 0: whatever it sent was not processed and may
be sent again).  When this side closes a connection it sends FIN (over TLS: ``close_notify``) and
reads until the client closes too (at most ``LINGER_S``), so that unread input does not turn the
close into a reset that would destroy the GOAWAY in flight.  A connection is
an ``H2Link`` (reader + the single writer, see ``hostproxy.h2.link``) plus a nursery of stream
tasks.  Each request stream becomes a ``hostproxy.http.Request`` (``:authority`` →
``Request.authority`` and a ``host`` header, ``:path`` → the target, DATA → a streamed ``Body``
whose chunks are acknowledged to the client only as the handler consumes them, trailers →
``Body.trailers``) and the handler is awaited once for it.  The ``Response`` goes back the same way:
HEADERS, DATA paced by the client's flow-control window, then trailers or END_STREAM.  A response
with an empty body is sent as a single HEADERS frame with END_STREAM (gRPC "trailers-only").

* The server's preface (SETTINGS) waits for the client's first bytes (RFC 9113 §3.4 allows it).
  Prior knowledge starts with the client preface; anything else is read as HTTP/1.1: an
  ``Upgrade: h2c`` request (body up to ``MAX_UPGRADE_BODY``) is answered 101 and becomes stream 1,
  any other request gets an HTTP/1.1 505 saying what this port speaks.
* Requests are validated here (``malformed``), not by h2, which would end the connection: a
  malformed head gets 400, malformed trailers or DATA beyond ``content-length`` reset the stream
  with PROTOCOL_ERROR; other streams of the connection go on (RFC 9113 §8.1.1).
* A client's RST_STREAM cancels the stream task, so the handler's upstream call (and any upstream
  stream) is cancelled with it.  The task keeps counting against
  ``max_concurrent_streams`` until its cancellation finished, so a Rapid Reset cannot run more
  upstream work than the limit.  Streams reset before their response ended are counted by the
  ``FloodGuard``; a client far beyond the budget gets GOAWAY ENHANCE_YOUR_CALM.  Occasional
  cancellations (gRPC) keep the connection.
* An upstream that resets mid-response is passed back as RST_STREAM with the upstream's code. A
  failure this side saw (the upstream connection died) ends a gRPC response with trailers
  (``grpc-status`` 14 UNAVAILABLE, the reason in ``grpc-message`` and ``l5d-err``), any other
  with RST_STREAM INTERNAL_ERROR.
* A proxy-generated error (``Response.error_cause`` set) for a gRPC request is converted by
  ``grpc_error_response`` into a trailers-only response with ``grpc-status``/``grpc-message``.
* Header lists beyond ``max_header_count`` fields or ``max_header_list_bytes`` (32 octets per field
  counted) get 431; too many of those end the connection, as does one ``HARD_LIMIT_FACTOR`` times
  past the size limit (an HPACK bomb: h2 stops decoding it).
* When the client sends GOAWAY, streams it already opened are still answered.
* Session limits (``_session``, one small task per connection): a connection with no stream for
  ``idle_timeout_s`` (``serverSession.idleTimeMs``), or older than ``life_time_s``
  (``serverSession.lifeTimeMs``), or that was handed ``max_requests_per_connection`` streams, is
  drained as above: GOAWAY NO_ERROR naming the last stream it answers (for the request limit, the
  last one counted; later streams are refused with REFUSED_STREAM), streams in progress finish.
  Once a drained connection has no stream left and its GOAWAY is written, the server stops reading
  and closes it, even if the client keeps it open.  ``servers[].timeoutMs`` is the router's (a
  bound on each request, as on HTTP/1.1).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from math import inf
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import h2.utilities
import hyperframe.frame
import structlog
import trio

from hostproxy.h2 import fields as h2fields
from hostproxy.h2.grpc import encode_grpc_message, grpc_error_response, grpc_status_for, is_grpc
from hostproxy.h2.limits import HARD_LIMIT_FACTOR, H2Limits, check_header_list
from hostproxy.h2.link import (
    INTERNAL_ERROR,
    NO_ERROR,
    PROTOCOL_ERROR,
    RECEIVE_SIZE,
    REFUSED_STREAM,
    H2Link,
    InboundBody,
    Stalled,
    StreamGone,
    StreamState,
)
from hostproxy.http.codec import NEED_DATA, Data, EndOfMessage, RequestHead, ServerCodec
from hostproxy.http.codec import ProtocolError as CodecError
from hostproxy.http.errors import (
    RequestBodyError,
    UpstreamError,
    cleared_context_response,
    error_response,
    response_for_exception,
    without_context_fields,
)
from hostproxy.http.hopbyhop import strip_hop_by_hop
from hostproxy.http.listening import ListeningServer, ServerStats
from hostproxy.http.message import Body, Headers, Request, Response, never_indexed_of
from hostproxy.http.proxyheaders import append_via, obfuscated, via_count
from hostproxy.http.server import ConnInfo, Handler, ServerParams, add_arrival_headers

__all__ = ["H2Server", "H2ServerParams", "h2_response_headers"]

log = structlog.get_logger("hostproxy.h2.server")

# After this side closed a connection, how long to wait for the client to close too (see _linger).
LINGER_S = 1.0

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# An ``Upgrade: h2c`` request's body is read in HTTP/1.1 before the switch, so it is held whole.
MAX_UPGRADE_BODY = 64 * 1024
# The upgrade request's fields that describe the HTTP/1.1 connection, not the request.
_UPGRADE_FIELDS = frozenset(
    {
        b"connection",
        b"upgrade",
        b"http2-settings",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"te",
    }
)
_REASONS = {
    400: b"Bad Request",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    505: b"HTTP Version Not Supported",
}

_REQUEST_FIELDS = h2fields.REQUEST
_TRAILER_FIELDS = h2fields.TRAILERS


def grpc_failure_trailers(cause: str, message: str) -> list[tuple[bytes, bytes]]:
    """The trailers that end a gRPC response this side failed after its head went out: the status
    for ``cause`` (as ``grpc_error_response`` chooses it), the reason, and ``l5d-err``."""
    l5d_err = error_response(502, cause, message).headers.get(b"l5d-err") or b""
    return [
        (b"grpc-status", str(grpc_status_for(cause)).encode("ascii")),
        (b"grpc-message", encode_grpc_message(message)),
        (b"l5d-err", l5d_err),
    ]


def malformed(fields: list[tuple[bytes, bytes]], flags: h2.utilities.HeaderValidationFlags) -> str | None:
    """Why a received header list breaks RFC 9113 §8.2-8.3 (h2's own checks: uppercase or illegal
    characters, connection-specific fields, ``te`` other than ``trailers``, pseudo-header rules; and
    a request's ``:path`` in origin form, §8.3.1), or None when it does not."""
    problem = h2fields.problem(fields, flags)
    if problem is not None:
        return problem
    if flags is _REQUEST_FIELDS:
        pseudo = {n: v for n, v in fields if n[:1] == b":"}
        path = pseudo.get(b":path")
        if (
            path is not None
            and path[:1] != b"/"
            and not (path == b"*" and pseudo.get(b":method") == b"OPTIONS")
        ):
            return (
                f":path {path[:200]!r} is not an absolute path (it must start with '/'; '*' only for OPTIONS)"
            )
        if path is not None and not _PATH_OK.fullmatch(path):
            at = next(i for i, b in enumerate(path) if not 0x21 <= b <= 0x7E)
            return (
                f":path holds byte 0x{path[at]:02x} at offset {at}, which a request target may not hold raw "
                "(a control character, space, DEL or non-ASCII byte: percent-encode it, RFC 3986)"
            )
    return None


# A request target's bytes: visible ASCII only (as the HTTP/1.1 server requires; RFC 9112 §3.2, 3986).
_PATH_OK = re.compile(rb"[\x21-\x7e]*")


@dataclass(frozen=True)
class H2ServerParams(ServerParams):
    """An h2 ``servers[]`` entry: the HTTP server parameters plus HTTP/2 settings and flood limits.

    ``max_header_count`` (inherited) caps header fields per request.
    """

    max_concurrent_streams: int = 1000
    initial_stream_window_bytes: int = 65535
    connection_window_bytes: int = 4 * 1024 * 1024
    max_frame_bytes: int = 16384
    max_header_list_bytes: int = 64 * 1024
    header_table_bytes: int = 4096
    max_continuation_frames: int = 16
    reset_burst: int = 200
    reset_rate_per_s: float = 50.0
    ping_burst: int = 20
    ping_rate_per_s: float = 5.0
    settings_burst: int = 20
    settings_rate_per_s: float = 5.0
    max_refused_header_lists: int = 10
    max_outbound_bytes: int = 1024 * 1024
    outbound_stall_timeout_s: float = 30.0
    stall_timeout_s: float = 30.0

    def limits(self) -> H2Limits:
        return H2Limits(
            max_concurrent_streams=self.max_concurrent_streams,
            max_header_list_bytes=self.max_header_list_bytes,
            max_header_count=self.max_header_count,
            max_continuation_frames=self.max_continuation_frames,
            reset_burst=self.reset_burst,
            reset_rate_per_s=self.reset_rate_per_s,
            ping_burst=self.ping_burst,
            ping_rate_per_s=self.ping_rate_per_s,
            settings_burst=self.settings_burst,
            settings_rate_per_s=self.settings_rate_per_s,
            max_refused_header_lists=self.max_refused_header_lists,
        )


def _read_stalled(timeout_s: float) -> RequestBodyError:
    """A request body that stalled for ``socketOptions.readTimeoutMs`` (the client's doing: 400)."""
    return RequestBodyError(f"request body stalled for {timeout_s:g}s (socketOptions.readTimeoutMs)")


@dataclass
class _Stats(ServerStats):
    refused_streams: int = 0
    header_lists_refused: int = 0
    client_resets: int = 0
    upstream_resets_passed: int = 0
    stalled_streams: int = 0
    connection_failures: int = 0
    peak_outbound_bytes: int = 0
    flood_goaways: dict[str, int] = field(default_factory=dict)
    rejected_connections: int = 0
    accept_paused: int = 0


def h2_response_headers(
    response: Response, *, head: bool, clear_context: bool = False
) -> tuple[list[tuple[bytes, bytes]], bool]:
    """The HEADERS block for ``response`` and whether it carries no body (END_STREAM at once): with
    ``Via`` (RFC 9110 §7.6.3; Linkerd's h2 router adds one to responses too), and, for a server with
    ``clear_context``, without ``l5d-*`` fields."""
    headers = strip_hop_by_hop(response.headers, request=False)
    headers.remove(b"host")
    append_via(headers, "2")  # (an h2 router's upstreams speak HTTP/2; its own answers go out so)
    body = response.body
    status = response.status
    no_body = (
        head
        or status in (204, 304)
        or (body.in_memory and body.content_length == 0 and body.trailers is None)
    )
    if not head:
        headers.remove(b"content-length")
        if body.content_length is not None and status not in (204, 304):
            headers.add(b"content-length", str(body.content_length).encode("ascii"))
    out = [(b":status", str(status).encode("ascii"))]
    if clear_context:
        out.extend((n, v) for n, v in headers if not n.startswith(b":") and not n.startswith(b"l5d-"))
    else:
        out.extend((n, v) for n, v in headers if not n.startswith(b":"))
    # Fields an HTTP/2 upstream sent never-indexed reach the client so (RFC 7541 §7.1.3).
    return h2fields.with_never_indexed(out, response.never_indexed), no_body


class H2Server(ListeningServer["_ServerLink"]):
    """Serve HTTP/2 (prior knowledge) on ``params.ip:params.port``, calling ``handler`` per stream.

    The listeners, accept loops, ``stop_accepting``/``drain``/``idle``/``statistics`` are
    :class:`~hostproxy.http.listening.ListeningServer`'s; draining a connection sends it GOAWAY, and
    it closes once its streams finish.
    """

    logger = log
    log_prefix = "h2"
    serves_backlog = True

    params: H2ServerParams
    _stats: _Stats

    def __init__(
        self,
        handler: Handler,
        params: H2ServerParams | None = None,
        *,
        rng: random.Random | None = None,
        overload: Any = None,
    ) -> None:
        super().__init__(rng=rng, overload=overload)
        self.handler = handler
        self.params = params or H2ServerParams()
        self._limits = self.params.limits()
        self._stats = _Stats()

    # -- ListeningServer hooks ---------------------------------------------------------------------

    def _new_connection(self, stream: Any, conn_id: int) -> _ServerLink:
        return _ServerLink(self, stream, conn_id)

    def _connection_closed(self, conn: _ServerLink) -> None:
        stats = self._stats
        stats.peak_outbound_bytes = max(stats.peak_outbound_bytes, conn.peak_outbound)
        if conn.calm_verdict is not None:
            key = conn.calm_verdict.limit
            stats.flood_goaways[key] = stats.flood_goaways.get(key, 0) + 1


class _ServerLink(H2Link):
    side = "server"

    def __init__(self, server: H2Server, stream: trio.SocketStream, conn_id: int) -> None:
        p = server.params
        # Inbound header lists are validated here (``malformed``) rather than by h2, which treats a
        # malformed request as a connection error and so would fail every other stream of the
        # connection with it; RFC 9113 §8.1.1 makes it an error of that stream alone.
        # Cookie crumbs are joined here too (``_build``), after ``check_header_list`` counted each.
        # What h2 would check and normalise in the blocks sent is done by ``H2Link.send_headers``
        # (``hostproxy.h2.fields``, the same outcome for a fraction of the cost).
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        conn = h2.connection.H2Connection(config)
        self._reset_on_body_length(conn)
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: p.max_concurrent_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: p.initial_stream_window_bytes,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: p.max_frame_bytes,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: p.max_header_list_bytes,
                h2.settings.SettingCodes.HEADER_TABLE_SIZE: p.header_table_bytes,
            },
        )
        # Decoded whole up to the hard limit, so that a list merely past the limit gets its 431.
        conn.decoder.max_header_list_size = p.max_header_list_bytes * HARD_LIMIT_FACTOR
        conn.decoder.max_allowed_table_size = p.header_table_bytes
        conn.max_inbound_frame_size = p.max_frame_bytes
        super().__init__(
            stream,
            conn,
            limits=server._limits,
            guard_inbound=True,
            max_outbound_bytes=p.max_outbound_bytes,
            outbound_stall_timeout_s=p.outbound_stall_timeout_s,
            stall_timeout_s=p.stall_timeout_s,
            max_encoder_table_bytes=p.header_table_bytes,
        )
        self.server = server
        self.params = p
        self.timed = p.read_timeout_s is not None
        self.info = ConnInfo.for_stream(stream, p, conn_id)
        #: ``connectionRandom`` labels of ``addForwardedHeader`` (by, for): one pair per connection.
        self.forwarded_labels = (
            (obfuscated(server._rng), obfuscated(server._rng))
            if p.add_forwarded_header is not None
            else ("", "")
        )
        self.tasks = 0
        self.scopes: dict[int, trio.CancelScope] = {}
        #: The request each stream's handler has (told when its client resets the stream).
        self.handled: dict[int, Request] = {}
        self._handlers: trio.Nursery | None = None
        self._draining = False
        self._drain_goaway = False  # start_drain wrote its GOAWAY
        self._prefaced = False
        self.accepted = 0  # streams handed to the handler (``max_requests_per_connection``)
        self.born = self._clock()
        self.idle_since = self.born  # when the last stream task ended (or the connection started)
        # The session task's sleep (see ``_session``): moved earlier when the connection goes idle.
        self._session_sleep: trio.CancelScope | None = None
        self._reading: trio.CancelScope | None = None
        self._quiet = trio.Event()  # set when the session task must look again (see ``_session``)

    def _reset_on_body_length(self, conn: h2.connection.H2Connection) -> None:
        """Make a request whose DATA disagrees with its ``content-length`` an error of its stream.

        h2 raises ``InvalidBodyLengthError`` out of ``receive_data``, which ends the connection with
        every other stream on it. This wraps h2's DATA handler: the stream is reset with
        PROTOCOL_ERROR instead (RFC 9113 §8.1.1), the frame's octets are given back to the
        connection window, and the link sees a local reset (which cancels the stream's task).
        """
        table = conn._frame_dispatch_table
        original = table[hyperframe.frame.DataFrame]

        def receive_data(frame: hyperframe.frame.DataFrame) -> Any:
            try:
                return original(frame)
            except h2.exceptions.InvalidBodyLengthError as exc:
                log.info(
                    "h2.malformed_request",
                    router=self.params.router_label,
                    stream=frame.stream_id,
                    error=f"{exc}: the request's DATA does not match its content-length",
                )
                conn.reset_stream(frame.stream_id, error_code=PROTOCOL_ERROR)
                if frame.flow_controlled_length:
                    conn.increment_flow_control_window(frame.flow_controlled_length)
                reset = h2.events.StreamReset(
                    stream_id=frame.stream_id, error_code=PROTOCOL_ERROR, remote_reset=False
                )
                return [], [reset]

        table[hyperframe.frame.DataFrame] = receive_data

    def malformed_trailers(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        return malformed(headers, _TRAILER_FIELDS)

    def _preface(self, upgrade_settings: bytes | None = None) -> None:
        """Queue the server's connection preface (SETTINGS, then the connection window) once: it must
        be the first frame, even for a connection told to drain before it started serving. With
        ``upgrade_settings`` (an ``Upgrade: h2c`` request's ``HTTP2-Settings``), h2 also takes the
        client's settings from it and opens stream 1 for the upgraded request."""
        if self._prefaced:
            return
        self._prefaced = True
        if upgrade_settings is None:
            self.conn.initiate_connection()
        else:
            self.conn.initiate_upgrade_connection(upgrade_settings)
        extra = self.params.connection_window_bytes - 65535
        if extra > 0:
            self.conn.increment_flow_control_window(extra)
        self.flush()

    async def serve(self) -> None:
        async with trio.open_nursery() as handlers:
            self._handlers = handlers
            handlers.start_soon(self._session)
            with trio.CancelScope() as self._reading:
                await self.run()
            handlers.cancel_scope.cancel()
        await self._linger()

    async def _reader(self) -> None:
        """The server preface waits for the client's first bytes (RFC 9113 §3.4 lets it): an HTTP/1.1
        request is then answered in HTTP/1.1 (``_http1``) rather than with binary frames."""
        if not self._prefaced:
            buf = b""
            while len(buf) < len(PREFACE) and PREFACE.startswith(buf) and not self._prefaced:
                data = await self.receive()
                if not data:
                    return
                buf += data
            if not buf.startswith(PREFACE) and not self._prefaced:
                rest = await self._http1(buf)
                if rest is None:
                    return
                buf = rest
            self._preface()
            self.pushback = buf
        await super()._reader()

    async def _http1(self, buf: bytes) -> bytes | None:
        """The client spoke HTTP/1.x: upgrade an ``Upgrade: h2c`` request (101, then HTTP/2 with the
        request as stream 1; what the client sent after it is returned), answer anything else with
        an HTTP/1.1 error that says what this port speaks, and return None (the connection closes).
        """
        codec = ServerCodec(self.params.codec_limits())
        codec.receive_data(buf)
        head: RequestHead | None = None
        body = bytearray()
        trailers = None
        while True:
            try:
                ev = codec.next_event()
            except CodecError as exc:
                self._answer_http1(exc.status, str(exc))
                return None
            if ev is NEED_DATA:
                data = await self.receive()
                if not data:
                    return None
                codec.receive_data(data)
            elif type(ev) is RequestHead:
                head = ev
                problem = self._h2c_problem(head)
                if problem is not None:
                    self._answer_http1(505, problem)
                    return None
                if codec.they_are_waiting_for_100_continue:
                    self._out += b"HTTP/1.1 100 Continue\r\n\r\n"
                    self._out_event.set()
            elif type(ev) is Data:
                body += ev.data
                if len(body) > MAX_UPGRADE_BODY:
                    self._answer_http1(
                        413,
                        f"the body of an Upgrade: h2c request is limited to {MAX_UPGRADE_BODY} octets; "
                        "send larger requests over HTTP/2 directly (prior knowledge)",
                    )
                    return None
            elif type(ev) is EndOfMessage:
                trailers = ev.trailers
                break
            else:  # the connection closed before a complete request
                return None
        assert head is not None
        settings = next(v for n, v in head.headers if n.lower() == b"http2-settings").strip()
        try:
            # base64url, whose padding RFC 7540 §3.2.1 leaves out (Python's decoder wants it).
            self._preface(settings + b"=" * (-len(settings) % 4))
        except Exception as exc:  # base64, SETTINGS payload or setting value errors
            self._answer_http1(400, f"the HTTP2-Settings header is not a valid SETTINGS payload: {exc}")
            return None
        out = self._out
        preface = bytes(out)
        out[:] = b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n" + preface
        self._out_event.set()
        raw = [
            (b":method", head.method),
            (b":scheme", b"http"),
            (b":path", head.target),
        ]
        for name, value in head.headers:
            name = name.lower()
            if name == b"host":
                raw.insert(2, (b":authority", value))
            elif name not in _UPGRADE_FIELDS:
                raw.append((name, value))
        self._request(1, raw, ended=True)
        s = self.streams.get(1)
        if s is not None:
            if body:
                s.inbound.append((bytes(body), 0))
            if trailers:
                s.trailers = Headers([(n.lower(), v) for n, v in trailers])
        return codec.switched_protocol_data()

    def _h2c_problem(self, head: RequestHead) -> str | None:
        """None for a valid ``Upgrade: h2c`` request, else what to tell an HTTP/1.x client."""
        tokens: dict[bytes, set[bytes]] = {}
        settings = 0
        for name, value in head.headers:
            name = name.lower()
            if name in (b"upgrade", b"connection"):
                tokens.setdefault(name, set()).update(t.strip().lower() for t in value.split(b","))
            elif name == b"http2-settings":
                settings += 1
        wrong = "This port speaks HTTP/2 (an h2 router): an HTTP/1.1 request was sent to it; send HTTP/2"
        if type(self.stream) is not trio.SocketStream:
            return wrong + " over TLS, negotiated with ALPN h2 (curl --http2), or use an http router's port"
        if b"h2c" not in tokens.get(b"upgrade", set()):
            return (
                wrong + " with prior knowledge (curl --http2-prior-knowledge), ask to upgrade "
                "(Upgrade: h2c), or use an http router's port"
            )
        if settings != 1 or not {b"upgrade", b"http2-settings"} <= tokens.get(b"connection", set()):
            return (
                "an Upgrade: h2c request needs exactly one HTTP2-Settings header and "
                "Connection: Upgrade, HTTP2-Settings (RFC 7540 section 3.2)"
            )
        return None

    def _answer_http1(self, status: int, message: str) -> None:
        """Queue an HTTP/1.1 error response (``l5d-err`` and a text body) and close after it."""
        log.info("h2.http1_refused", router=self.params.router_label, status=status, error=message)
        resp = error_response(status, "bad-request", message)
        text = message.encode("utf-8", "replace") + b"\n"
        reason = _REASONS.get(status, b"Bad Request")
        self._out += (
            b"HTTP/1.1 %d %s\r\nl5d-err: %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
            % (status, reason, resp.headers.get(b"l5d-err") or b"", len(text), text)
        )
        self.closing = True
        self._out_event.set()

    def _session_due(self) -> float:
        """When this connection is to be drained for its age (``life_time_s``) or, while it has no
        stream, for being idle (``idle_timeout_s``): ``inf`` when neither applies."""
        p = self.params
        due = inf
        if p.life_time_s is not None:
            due = self.born + p.life_time_s
        if p.idle_timeout_s is not None and not self.tasks:
            due = min(due, self.idle_since + p.idle_timeout_s)
        return due

    async def _session(self) -> None:
        """The connection's session limits, then its end.

        Until the connection drains (for any reason: its age, idleness, ``max_requests_per_connection``,
        the server's drain, the client's GOAWAY), sleep until ``_session_due`` and drain when it has
        passed; a stream ending moves the sleep earlier when the connection goes idle. Once it drains
        with no stream left and its GOAWAY written, stop reading, so that the connection closes (with
        ``_linger``) even when the client keeps it open after the GOAWAY.
        """
        while not self._draining and not self.closing and not self.dead:
            due = self._session_due()
            if due <= self._clock():
                log.debug(
                    "h2.session_limit",
                    router=self.params.router_label,
                    connection=self.info.connection_id,
                    reason="life" if self.tasks else "idle",
                )
                self.start_drain()
                break
            with trio.CancelScope(deadline=due) as self._session_sleep:
                await self._quiet.wait()
            self._session_sleep = None
            if self._quiet.is_set():
                self._quiet = trio.Event()
        while self.tasks:
            await self._quiet.wait()
            self._quiet = trio.Event()
        if not self.closing and not self.dead:
            self._finish()
        await self._writer_done.wait()
        if self._reading is not None:
            self._reading.cancel()

    async def _linger(self) -> None:
        """This side closed (GOAWAY sent, streams done): send FIN (TLS: close_notify), then read and
        drop what the client still sends until it closes too, for at most ``LINGER_S``. Closing with
        unread input makes the kernel answer with a reset, which can destroy the GOAWAY still in
        flight to the client."""
        stream = self.stream
        if self.peer_gone:
            return
        # TLS: close_notify in place of the FIN (a TLS stream cannot half-close its TCP connection).
        send_close_notify = getattr(stream, "send_close_notify", None)
        if type(stream) is not trio.SocketStream and send_close_notify is None:
            return
        with trio.move_on_after(LINGER_S):
            try:
                if send_close_notify is not None:
                    await send_close_notify()
                    stream = stream.transport_stream  # (what follows is discarded undecrypted)
                else:
                    await stream.send_eof()
                while await stream.receive_some(RECEIVE_SIZE):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    # -- events ----------------------------------------------------------------------------------

    def on_other_event(self, ev: Any) -> None:
        if type(ev) is h2.events.RequestReceived:
            self._request(ev.stream_id, ev.headers, ev.stream_ended is not None)

    def start_drain(self, last_stream_id: int | None = None) -> None:
        """Graceful shutdown: GOAWAY (NO_ERROR, last stream = ``last_stream_id``, by default the highest
        one received) so the client opens no new streams here; streams in progress finish, then the
        connection closes (see ``_session``).

        The frame is written directly rather than through h2's ``close_connection``, which would move
        h2's connection state to CLOSED and refuse the responses still owed on open streams.
        """
        if self._draining or self.closing or self.dead:
            return
        self._draining = True
        self._preface()
        frame = hyperframe.frame.GoAwayFrame(stream_id=0)
        frame.last_stream_id = (
            self.conn.highest_inbound_stream_id if last_stream_id is None else last_stream_id
        )
        frame.error_code = NO_ERROR
        self.flush()
        self._out += frame.serialize()
        self._drain_goaway = True
        self._out_event.set()
        if not self.tasks:
            self.closing = True
        self._quiet.set()

    def _finish(self) -> None:
        """Drained with no stream left: close. After ``start_drain``'s GOAWAY nothing more is said
        (another one through h2 would close h2's state machine, making the client's late SETTINGS
        acknowledgement or WINDOW_UPDATE a protocol error); after the client's GOAWAY, ours."""
        if self._drain_goaway:
            self.closing = True
            self._out_event.set()
        else:
            self.goaway(NO_ERROR)

    def on_goaway(self, error_code: int, last_stream_id: int | None) -> None:
        self._draining = True
        if error_code != NO_ERROR or not self.tasks:
            self.closing = True
        self._quiet.set()

    def on_stream_reset(self, s: StreamState, *, remote: bool) -> None:
        scope = self.scopes.get(s.id)
        if scope is not None:
            if remote:
                request = self.handled.get(s.id)
                if request is not None:
                    request.client_reset = True  # (the router counts it as 499, no failure)
            scope.cancel()
        if remote:
            self.server._stats.client_resets += 1
        # Reset by the client, or by this side for the client's faulty frames (a WINDOW_UPDATE that
        # overflows the window, DATA past the content-length, malformed trailers; this side's other
        # resets call no hook): both end a stream whose work had started, so both spend the Rapid
        # Reset budget (resets a client provokes are the MadeYouReset variant, CVE-2025-8671).
        if not s.response_done and self.guard is not None:
            verdict = self.guard.on_early_reset(trio.current_time())
            if verdict is not None:
                self.calm_down(verdict)

    def _request(self, stream_id: int, raw: list[tuple[bytes, bytes]], ended: bool) -> None:
        server = self.server
        stats = server._stats
        s = StreamState(stream_id)
        s.ended = ended
        self.streams[stream_id] = s
        if self._draining or self.closing or self.tasks >= self.limits.max_concurrent_streams:
            stats.refused_streams += 1
            self.reset(s, REFUSED_STREAM)
            self.streams.pop(stream_id, None)
            return
        problem = malformed(raw, _REQUEST_FIELDS)
        if problem is not None:
            # RFC 9113 §8.1.1: a stream error; a response (with the reason) may come first.
            log.info("h2.malformed_request", router=self.params.router_label, stream=stream_id, error=problem)
            resp = error_response(
                400,
                "bad-request",
                f"malformed HTTP/2 request: {problem} (RFC 9113 section 8.2); the stream was refused",
            )
            resp = grpc_error_response(Headers(raw), resp)
            headers, _ = h2_response_headers(resp, head=True, clear_context=bool(self.params.clear_context))
            try:
                self.send_headers(s, headers, end_stream=True)
                if not s.ended:
                    self.reset(s, PROTOCOL_ERROR)
            except StreamGone:
                pass
            self.streams.pop(stream_id, None)
            return
        problem = check_header_list(raw, self.limits)
        if problem is not None:
            stats.header_lists_refused += 1
            resp = grpc_error_response(Headers(raw), error_response(431, "bad-request", problem))
            headers, _ = h2_response_headers(resp, head=True, clear_context=bool(self.params.clear_context))
            try:
                self.send_headers(s, headers, end_stream=True)
            except StreamGone:
                pass
            self.streams.pop(stream_id, None)
            if self.guard is not None:
                verdict = self.guard.on_refused_header_list()
                if verdict is not None:
                    self.calm_down(verdict)
            return
        assert self._handlers is not None
        scope = trio.CancelScope()
        self.scopes[stream_id] = scope
        self.tasks += 1
        self._handlers.start_soon(self._stream_task, s, raw, scope)
        self.accepted += 1
        limit = self.params.max_requests_per_connection
        ov = self.server.overload
        if (limit is not None and self.accepted >= limit) or (ov is not None and not ov.keepalive_allowed):
            # This stream is the last (the request limit, or memory past the overload no-keep-alive
            # mark): GOAWAY names it, so the client sends the next ones elsewhere.
            self.start_drain(stream_id)

    # -- one stream ------------------------------------------------------------------------------

    def _gone(self, s: StreamState, link: H2Link) -> Exception:
        if s.reset_code is not None:
            return StreamGone(f"client reset stream {s.id} (error code {s.reset_code})", s.reset_code)
        return StreamGone(f"client connection closed: {link.death_reason}")

    def _build(self, s: StreamState, raw: list[tuple[bytes, bytes]]) -> Request | Response:
        pseudo: dict[bytes, bytes] = {}
        regular: list[tuple[bytes, bytes]] = []
        cookies: list[bytes] = []
        for n, v in raw:
            if n[:1] == b":":
                pseudo[n] = v
            elif n == b"cookie":
                cookies.append(v)
            else:
                regular.append((n, v))
        # Fields the client sent never-indexed go to the upstream so (RFC 7541 §7.1.3).
        secret = h2fields.never_indexed(raw)
        if cookies:
            # HTTP/2 lets a client split its cookie into crumbs; they are one field again (§8.2.3),
            # never-indexed when any crumb was (``with_never_indexed`` goes by name).
            regular.append((b"cookie", b"; ".join(cookies)))
        method = pseudo.get(b":method", b"GET").decode("ascii", "replace")
        if method == "CONNECT":
            return error_response(405, "bad-request", "CONNECT tunnelling is not supported by this proxy")
        headers = Headers(regular)
        if via_count(headers) > self.params.max_call_depth:
            return error_response(
                400,
                "bad-request",
                f"Maximum number of calls ({self.params.max_call_depth}) has been exceeded. "
                "Please check for proxy loops.",
            )
        authority_b = pseudo.get(b":authority") or headers.get(b"host")
        authority = authority_b.decode("latin-1") if authority_b is not None else None
        out = strip_hop_by_hop(headers)
        if authority_b is not None:
            out.set(b"host", authority_b)
        content_length: int | None = None
        cl = out.get(b"content-length")
        if cl is not None and cl.isdigit():
            content_length = int(cl)
        out.remove(b"content-length")
        append_via(out, "2")
        params = self.params
        if params.add_forwarded_header is not None or params.timestamp_header is not None:
            add_arrival_headers(out, params, self.info, self.forwarded_labels, self.server._rng)
        if s.ended and not s.inbound:
            # Ended already: no DATA, perhaps trailers (HEADERS, then trailers with END_STREAM).
            body = Body.empty() if s.trailers is None else Body.from_bytes(b"", s.trailers)
        else:
            source = InboundBody(
                self,
                s,
                self._gone,
                reset_on_close=False,
                stall_timeout_s=self.params.request_body_timeout_s,
                read_timeout_s=self.params.read_timeout_s,
                stall_error=_read_stalled,
            )
            body = Body(source, content_length)
        return Request(
            method=method,
            target=pseudo.get(b":path", b"/").decode("latin-1"),
            headers=out,
            body=body,
            http_version="2",
            scheme=pseudo.get(b":scheme", b"http").decode("ascii", "replace"),
            authority=authority,
            never_indexed=secret,
        )

    async def _stream_task(
        self, s: StreamState, raw: list[tuple[bytes, bytes]], scope: trio.CancelScope
    ) -> None:
        stats = self.server._stats
        stats.requests_total += 1
        request: Request | None = None
        response: Response | None = None
        counted = False
        try:
            with scope:
                built = self._build(s, raw)
                if isinstance(built, Response):
                    # Refused before routing (a proxy loop, CONNECT): readable by gRPC clients too.
                    if self.params.clear_context:
                        built = await cleared_context_response(built)
                    response = grpc_error_response(Headers(raw), built)
                    await self._respond(s, response, head=False, grpc=False)
                    return
                request = self.handled[s.id] = built
                limit = self.params.max_concurrent_requests
                if limit is not None and stats.requests_in_flight >= limit:
                    stats.rejected_overload += 1
                    response = error_response(
                        503,
                        "overload",
                        f"server {self.params.router_label} is at maxConcurrentRequests={limit}; retry later",
                    )
                elif (ov := self.server.overload) is not None and ov.shed_requests:
                    stats.rejected_overload += 1
                    ov.note_shed()
                    response = error_response(
                        503,
                        "overload",
                        "hostproxy is shedding load: memory is past the overload shed mark; retry later",
                    )
                else:
                    # In flight until its response has been sent whole (below), as on HTTP/1.1: a
                    # long streamed response holds its place under maxConcurrentRequests.
                    stats.requests_in_flight += 1
                    counted = True
                    try:
                        response = await self.server.handler(request, self.info)
                    except StreamGone:
                        return
                    except Exception as exc:
                        if not isinstance(exc, UpstreamError):
                            log.exception(
                                "h2.handler_failed",
                                router=self.params.router_label,
                                target=request.target,
                            )
                        response = response_for_exception(exc)
                if self.params.clear_context:
                    response = await cleared_context_response(response)
                grpc = is_grpc(request.headers)
                if grpc:
                    response = grpc_error_response(request.headers, response)
                await self._respond(s, response, head=request.method == "HEAD", grpc=grpc)
        except StreamGone:
            pass
        finally:
            if counted:
                stats.requests_in_flight -= 1
            with trio.CancelScope(shield=True):
                if response is not None and not response.body.done:
                    await response.body.aclose()
                if request is not None and not request.body.done:
                    await request.body.aclose()
            if s.reset_code is None and not self.dead and not s.ended:
                # The response is complete but the client is still sending: tell it to stop.
                self.reset(s, NO_ERROR)
            self.tasks -= 1
            self.scopes.pop(s.id, None)
            self.handled.pop(s.id, None)
            self.streams.pop(s.id, None)
            ov = self.server.overload
            if ov is not None and not ov.keepalive_allowed and not self._draining:
                # Memory went past the no-keep-alive mark while this stream was in progress: it was
                # answered whole; the connection now drains (GOAWAY), as HTTP/1.1's Connection: close.
                self.start_drain()
            if not self.tasks:
                self.idle_since = self._clock()
                self._quiet.set()
                if self._draining:
                    self._finish()

    async def _respond(self, s: StreamState, response: Response, *, head: bool, grpc: bool) -> None:
        headers, no_body = h2_response_headers(response, head=head)
        if no_body:
            self.send_headers(s, headers, end_stream=True)
            s.response_done = True
            return
        self.send_headers(s, headers, end_stream=False)
        body = response.body
        it = body.__aiter__()
        while True:
            try:
                chunk = await it.__anext__()
            except StopAsyncIteration:
                break
            except Exception as exc:
                code = getattr(exc, "error_code", None)
                cause = str(getattr(exc, "cause", "proxy/internal"))
                log.info(
                    "h2.response_aborted",
                    router=self.params.router_label,
                    stream=s.id,
                    error=str(exc),
                    cause=cause,
                )
                self.server._stats.upstream_resets_passed += 1
                if grpc and code is None:
                    # No RST_STREAM of the upstream's to pass on: this side saw the failure (the
                    # upstream connection died). A gRPC client reads the outcome from trailers; a
                    # bare RST_STREAM INTERNAL_ERROR would read as an opaque INTERNAL.
                    fields = grpc_failure_trailers(cause, str(exc))
                    if self.params.clear_context:
                        # Only the status: the reason names addresses untrusted callers must not see
                        # (as the trailers-only errors of such a server carry no grpc-message).
                        fields = fields[:1]
                    self.send_headers(s, fields, end_stream=True)
                else:
                    self.reset(s, INTERNAL_ERROR if code is None else code)
                s.response_done = True
                return
            try:
                await self.send_data(s, chunk)
            except StreamGone as exc:
                if isinstance(exc, Stalled):
                    self.server._stats.stalled_streams += 1
                raise
        trailers = body.trailers
        fields = [(n, v) for n, v in strip_hop_by_hop(trailers) if n[:1] != b":"] if trailers else []
        if fields and self.params.clear_context:  # (l5d-success-class of a streamed response)
            fields = without_context_fields(fields)
        if fields:
            # The upstream's never-indexed trailer fields reach the client so (RFC 7541 §7.1.3).
            self.send_headers(
                s, h2fields.with_never_indexed(fields, never_indexed_of(trailers)), end_stream=True
            )
        else:
            await self.send_data(s, b"", end_stream=True)
        s.response_done = True
