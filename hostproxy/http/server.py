"""The HTTP/1.1 server: trio listeners, one task per connection, the router as a callback.

Theory of operation
-------------------
``Http1Server.serve`` binds (or is given) listeners, reports their addresses through
``task_status.started`` and runs one task per accepted connection in its own nursery.  A connection
task is a loop over request/response cycles (keep-alive, pipelining answered in order) driven by a
``ServerCodec``:

1. read a request head under deadlines: ``idle_timeout_s`` until its first byte, then
   ``request_head_timeout_s`` for the whole head (slow clients get 408 and are cut off); a request
   body that stalls for ``request_body_timeout_s`` between chunks cuts the connection too. With
   ``read_timeout_s`` (``socketOptions.readTimeoutMs``) each read of a head, and of a body, has that
   bound as well (408, 400; a body's wait restarts with each piece of the response the client takes
   meanwhile: ``_Connection._progressed``); with ``write_timeout_s`` a write the client takes nothing
   of cuts the connection. On a plaintext connection the idle deadline is kept by the server's
   :class:`~hostproxy.http.listening.IdleTimer` (one task per server, not a deadline registered per
   wait), which cancels the connection only while it waits and no request byte has arrived;
2. build a ``Request``: absolute-form targets normalised (proxy mode), hop-by-hop headers dropped,
   ``Via`` appended, ``Forwarded`` added when configured; refuse ``CONNECT`` (405), proxy loops
   (400, ``maxCallDepth``) and requests beyond ``maxConcurrentRequests`` (503 at once, no queue);
3. await ``handler(request, conn_info)`` in the connection task itself (no task per request);
4. write the response, re-framed: ``Content-Length`` from ``body.content_length`` or chunked (with
   trailers), no body for ``HEAD``/204/304, ``Via`` naming the version it was received in; a ``101``
   with an ``upgraded`` stream becomes a tunnel, which the timeouts of both sides' ``socketOptions``
   bound too (``_Connection._tunnel``). The upstream's interim (1xx) responses
   (``Response.interim``) go just before it, to HTTP/1.1 clients only.

The request body is pulled from the socket only as the handler (or the upstream writer) reads it,
so bodies stream both ways with backpressure.  ``Expect: 100-continue`` is answered lazily, when the
body is first read.  Malformed requests (see ``codec``) get 400/414/431 and the connection is
closed, because its framing can no longer be trusted. A request that is not HTTP/1.x gets 505; the
HTTP/2 connection preface (a client with prior knowledge) gets frames it can read instead: SETTINGS,
then GOAWAY HTTP_1_1_REQUIRED saying what this port speaks.

Limits and overload: ``max_connections`` caps open connections (beyond it a new connection is
accepted and closed at once, never left waiting in the backlog); ``max_requests_per_connection``
closes a connection after that many requests (``Connection: close`` on the last). An optional
``overload`` object (:class:`hostproxy.overload.OverloadManager`) is read as plain attributes:
``accept_allowed`` (false: stop calling ``accept``), ``keepalive_allowed`` (false: every response
closes its connection) and ``shed_requests`` (true: answer 503 ``overload`` at once).

Lifecycle, the same for every protocol's server, is :class:`hostproxy.http.listening.ListeningServer`'s
(listeners bound with ``SO_REUSEPORT`` or adopted, accept loops, ``stop_accepting``, ``drain``,
``idle``, ``statistics``); connections already queued in the kernel backlog when the listeners close
are accepted first and served, so none is reset. Draining an HTTP/1.1 connection means: idle
keep-alive connections are closed at once, responses in flight get ``Connection: close``, and
connections close after their current response.

I/O: a plaintext connection reads and writes through its own
:class:`~hostproxy.http.sockstream.SockStream` (which takes the accepted socket over), which
yields to other tasks only when it has to wait; a cycle that never waited on the connection
(pipelined requests answered without waiting) checkpoints once at its end, so such a client cannot
starve the others. A response head waits for the send lock only while a ``100 Continue`` is being
written; otherwise nothing can be in its way.

Failures stay inside their connection: an exception from the handler becomes a 502
``proxy/internal`` response (logged with a traceback as ``http.handler_failed``); anything else that
escapes a connection is logged as ``http.connection_failed`` and closes only that connection.

Over TLS a connection ends with a ``close_notify`` (``TlsStream.aclose``; before the lingering close
too, where plaintext sends FIN), except after a response that was not written whole
(``_cut_short``), which must not look complete.
"""

from __future__ import annotations

import random
import select
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from math import inf
from typing import Any, NoReturn

import structlog
import trio

from hostproxy.http.codec import (
    NEED_DATA,
    PAUSED,
    CodecLimits,
    ConnectionClosed,
    Data,
    EndOfMessage,
    ProtocolError,
    RequestHead,
    ServerCodec,
)
from hostproxy.http.errors import (
    RequestBodyError,
    UpstreamError,
    cleared_context_response,
    error_response,
    h2_refusal,
    response_for_exception,
    without_context_fields,
)
from hostproxy.http.hopbyhop import allowed_trailers, names_only_hop_by_hop, strip_hop_by_hop
from hostproxy.http.listening import (
    IdleTimer,
    ListeningServer,
    ServerStats,
    bind_listeners,
    readable,
    sockaddr,
    take_backlog,
)
from hostproxy.http.message import HOP_BY_HOP, Body, Headers, Request, Response, is_hop_by_hop
from hostproxy.http.proxyheaders import (
    VIA_11,
    ForwardedConfig,
    append_forwarded,
    append_via,
    forwarded_element,
    obfuscated,
    split_absolute_form,
    via_count,
    via_field,
)
from hostproxy.http.sockopts import SocketOptions, send_all_timed
from hostproxy.http.sockstream import SockStream, adopt

__all__ = ["ConnInfo", "Handler", "Http1Server", "ServerParams", "bind_listeners"]

log = structlog.get_logger("hostproxy.http.server")

RECEIVE_SIZE = 64 * 1024
# What ``_wrong_version`` sends an HTTP/2 client: an empty SETTINGS frame, and GOAWAY's error code.
HTTP_1_1_REQUIRED = 0xD


@dataclass(frozen=True)
class ServerParams:
    """One HTTP/1.1 server (Linkerd's ``servers[]`` entry plus the router's HTTP limits)."""

    ip: str = "127.0.0.1"
    port: int = 0
    max_concurrent_requests: int | None = None
    max_headers_kb: int = 8
    max_initial_line_kb: int = 4
    max_header_count: int = 100
    request_head_timeout_s: float = 10.0
    request_body_timeout_s: float | None = None
    idle_timeout_s: float | None = 60.0
    max_connections: int | None = None
    max_requests_per_connection: int | None = None
    #: ``serverSession.lifeTimeMs``: a connection this old (seconds) gets ``Connection: close`` on
    #: its next response, and is closed when it waits for a request past it.
    life_time_s: float | None = None
    #: ``servers[].timeoutMs``: a bound on each request, from when the router forwards it (its router
    #: folds it into the request's deadline, as ``totalTimeoutMs``).
    request_timeout_ms: int | None = None
    max_call_depth: int = 1000
    add_forwarded_header: ForwardedConfig | None = None
    #: ``servers[].timestampHeader``, lowercased: a field added to each request with the time it
    #: arrived, in milliseconds since the epoch (None: none).
    timestamp_header: bytes | None = None
    router_label: str = "http"
    shutdown_grace_s: float = 5.0
    #: ``servers[].clearContext`` and ``servers[].allowAddressOverrides``, read by the router for the
    #: requests of this server (None: the router's own lookup by the server's ip).
    clear_context: bool | None = None
    allow_address_overrides: bool | None = None
    #: Request paths answered even beyond ``max_concurrent_requests`` (the admin server's health
    #: probes: a few bytes each, which stalled clients holding every slot must not fail).
    uncapped_paths: frozenset[str] = frozenset()
    #: The longest writing one response may take (None: no limit); past it the connection is cut off,
    #: so that a client that stops reading does not hold its request slot for ever (the admin server).
    response_write_timeout_s: float | None = None
    #: ``socketOptions`` of the listener and the accepted connections (None: hostproxy's defaults).
    socket_options: SocketOptions | None = None
    #: ``socketOptions.readTimeoutMs`` (seconds): a client that sends nothing for this long in the
    #: middle of a request head is answered 408 and cut off; a request body's stalls are bounded by the
    #: shorter of it and ``request_body_timeout_s`` (only while the connection receives nothing and
    #: the response sends nothing: on h2 ``H2Link.wait_read``, on HTTP/1.1 ``_Connection._progressed``),
    #: an upgraded connection's tunnel ends when the client's side moves no bytes for it, and the
    #: daemon bounds the wait for the next request by it (``idle_timeout_s``).
    read_timeout_s: float | None = None
    #: ``socketOptions.writeTimeoutMs`` (seconds): a write to the client of which no 16 KiB piece
    #: completes within this long (the client stopped reading) cuts the connection off (a tunnel too).
    write_timeout_s: float | None = None

    def codec_limits(self) -> CodecLimits:
        return CodecLimits(
            max_initial_line=self.max_initial_line_kb * 1024,
            max_headers=self.max_headers_kb * 1024,
            max_header_count=self.max_header_count,
        )


@dataclass(frozen=True, slots=True)
class ConnInfo:
    """What a handler may know about the connection a request arrived on."""

    peer: tuple[str, int]
    local: tuple[str, int]
    params: ServerParams
    connection_id: int
    #: The connection's ``hostproxy.tls.TlsStream`` when it arrived over TLS (None: plaintext); its
    #: handshake is complete once a request has been read from it.
    tls: Any = None
    #: The connection's stream (for :meth:`client_gone`); None for a request made up in-process.
    stream: Any = None

    @classmethod
    def for_stream(cls, stream: Any, params: ServerParams, connection_id: int) -> ConnInfo:
        """The info of an accepted connection: addresses from its socket, ``tls`` when ``stream`` is
        a TLS stream (anything but a plain ``trio.SocketStream`` that can show a peer certificate)."""
        sock = stream.socket
        return cls(
            peer=sockaddr(sock.getpeername()),
            local=sockaddr(sock.getsockname()),
            params=params,
            connection_id=connection_id,
            tls=stream
            if type(stream) is not trio.SocketStream and hasattr(stream, "peer_certificate_der")
            else None,
            stream=stream,
        )

    def peer_certificate(self) -> Any:
        """The certificate the TLS client presented (``hostproxy.tls.CertInfo``), or None."""
        if self.tls is None:
            return None
        from hostproxy.tls.stream import peer_certificate

        return peer_certificate(self.tls)

    def client_gone(self) -> bool:
        """Whether the client has closed its connection: its end of stream (or an error) is what
        the socket would read next (a peek; a pipelined request or bytes of a TLS record still to
        read count as not gone). For a caller about to do more work for the request (a retry),
        never on the request path."""
        sock = self.socket
        if sock is None:
            return self._transport_closed()
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True  # reset, or closed here: nothing will reach the client

    def _transport_closed(self) -> bool:
        """``client_gone`` for a stream over a trio socket (TLS): whether the peer closed or reset the
        TCP connection under it (``POLLRDHUP``: a close after a TLS ``close_notify`` counts too)."""
        fileno = getattr(getattr(self.stream, "socket", None), "fileno", None)
        fd = fileno() if fileno is not None else -1
        if fd < 0:
            return fileno is not None  # closed here
        poller = select.poll()
        poller.register(fd, select.POLLRDHUP)
        return any(ev & (select.POLLRDHUP | select.POLLHUP | select.POLLERR) for _, ev in poller.poll(0))

    @property
    def socket(self) -> socket.socket | None:
        """The connection's stdlib socket (a ``SockStream``'s, or the one under a ``TlsStream``), or
        None (no stream, or one over a trio socket)."""
        sock = getattr(self.stream, "socket", None)
        return sock if type(sock) is socket.socket else None


Handler = Callable[[Request, ConnInfo], Awaitable[Response]]


def add_arrival_headers(
    out: Headers, params: ServerParams, info: ConnInfo, labels: tuple[str, str], rng: random.Random
) -> None:
    """What a server adds to each request it receives (HTTP/1.1 and h2 alike): ``Forwarded``
    (``addForwardedHeader``; ``labels``: the connection's ``connectionRandom`` pair) and the arrival time
    in milliseconds since the epoch under ``timestampHeader`` (appended to any value the caller sent)."""
    fwd = params.add_forwarded_header
    if fwd is not None:
        append_forwarded(
            out,
            forwarded_element(
                fwd,
                local=info.local,
                peer=info.peer,
                connection_labels=labels,
                router_label=params.router_label,
                rng=rng,
            ),
        )
    if params.timestamp_header is not None:
        out.add(params.timestamp_header, b"%d" % (time.time_ns() // 1_000_000))


@dataclass
class _Stats(ServerStats):
    rejected_connections: int = 0
    bad_requests: int = 0
    header_timeouts: int = 0
    body_timeouts: int = 0
    #: Connections cut off because a write to the client stalled (``socketOptions.writeTimeoutMs``).
    write_timeouts: int = 0
    #: Upgraded (101) connections ended because a side stalled (``socketOptions`` of the server or
    #: the client: ``_Connection._tunnel``).
    tunnel_timeouts: int = 0
    connection_failures: int = 0
    accept_paused: int = 0
    #: Requests cancelled because their client closed its connection while they waited (``check_client``).
    requests_abandoned: int = 0


#: What ``_build_request``'s pass does with a field, by its name (lowercased, as the codec gives
#: it): keep it, note it (and keep ``Host`` and ``Via``), or drop it (``Content-Length``,
#: ``Expect`` and the hop-by-hop fields; ``Connection``, ``Upgrade`` and ``TE`` noted first).
(
    _K_KEEP,
    _K_HOST,
    _K_CONTENT_LENGTH,
    _K_CONNECTION,
    _K_VIA,
    _K_EXPECT,
    _K_UPGRADE,
    _K_TRANSFER_ENCODING,
    _K_TE,
    _K_HOP,
) = range(10)
_FIELD_KINDS: dict[bytes, int] = {name: _K_HOP for name in HOP_BY_HOP} | {
    b"host": _K_HOST,
    b"content-length": _K_CONTENT_LENGTH,
    b"connection": _K_CONNECTION,
    b"via": _K_VIA,
    b"expect": _K_EXPECT,
    b"upgrade": _K_UPGRADE,
    b"transfer-encoding": _K_TRANSFER_ENCODING,
    b"te": _K_TE,
}
# Bounded: names taken from traffic only fill it so far (others are classified each time).
_FIELD_KINDS_MAX = 4096


def _field_kind(name: bytes) -> int:
    """The kind of a field name not in ``_FIELD_KINDS`` (end-to-end, or a ``Proxy-*`` field),
    remembered while there is room."""
    kind = _K_HOP if is_hop_by_hop(name) else _K_KEEP
    if len(_FIELD_KINDS) < _FIELD_KINDS_MAX:
        _FIELD_KINDS[name] = kind
    return kind


#: Methods and versions as ``str`` without decoding them per request (others are decoded).
_ASCII = {
    m: m.decode("ascii")
    for m in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"CONNECT", b"TRACE")
} | {b"1.1": "1.1", b"1.0": "1.0"}

#: What a failed send or receive on the client connection raises (each becomes ``_ClientGone``).
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)

# While draining, how long a freshly accepted connection has to send its first request.
DRAIN_FIRST_REQUEST_S = 1.0
#: Lingering close (see ``_Connection._linger``): how long at most, the longest pause of the client,
#: and the most bytes read and discarded.
LINGER_S = 10.0
#: How often a request waiting for its answer checks that its client is still connected (seconds).
CLIENT_CHECK_S = 1.0
LINGER_IDLE_S = 2.0
LINGER_BYTES = 64 * 1024 * 1024
LINGER_DRAINING_S = 1.0


class Http1Server(ListeningServer["_Connection"]):
    """Serve HTTP/1.1 on ``params.ip:params.port`` (or given listeners), calling ``handler``.

    The listeners, accept loops, ``stop_accepting``/``drain``/``idle``/``statistics`` are
    :class:`~hostproxy.http.listening.ListeningServer`'s (with the ``max_connections`` cap and the
    overload accept gate); this class serves each connection's request/response cycles.
    """

    logger = log
    log_prefix = "http"

    params: ServerParams
    _stats: _Stats

    def __init__(
        self,
        handler: Handler,
        params: ServerParams | None = None,
        *,
        rng: random.Random | None = None,
        overload: Any = None,
    ) -> None:
        super().__init__(rng=rng, overload=overload)
        self.handler = handler
        self.params = params or ServerParams()
        self._limits = self.params.codec_limits()
        self._stats = _Stats()
        #: Whether the client check runs (see :meth:`check_clients`), and the scope that ends it.
        self.checking_clients = False
        self._check_scope: trio.CancelScope | None = None

    def check_clients(self) -> None:
        """Start the client check (a request went to the handler): every ``CLIENT_CHECK_S``, each
        connection whose request is with the handler checks that its client is still there
        (:meth:`_Connection.check_client`). One task for the server, at no cost per request; it
        ends after a check that found no request with the handler (an idle server does not wake
        for it), or with the server's last connection."""
        nursery = self._nursery
        if nursery is None:
            return
        self.checking_clients = True
        self._check_scope = trio.CancelScope()
        nursery.start_soon(self._check_clients, self._check_scope)

    async def _check_clients(self, scope: trio.CancelScope) -> None:
        try:
            with scope:
                while True:
                    await trio.sleep(CLIENT_CHECK_S)
                    waiting = False
                    for conn in list(self._conns):
                        if conn.dispatching:
                            waiting = True
                            conn.check_client()
                    if not waiting:
                        return
        finally:
            if self._check_scope is scope:
                self.checking_clients = False
                self._check_scope = None

    # -- ListeningServer hooks ---------------------------------------------------------------------

    def _new_connection(self, stream: Any, conn_id: int) -> _Connection:
        return _Connection(self, stream, conn_id)

    def _connection_closed(self, conn: _Connection) -> None:
        if not self._conns and self._check_scope is not None:
            self._check_scope.cancel()  # (the check must not hold the server's nursery open)


def _take_backlog(server: ListeningServer[Any], listener: Any) -> None:
    """Queue on ``server`` every connection the kernel already queued on ``listener`` (see
    :func:`hostproxy.http.listening.take_backlog`); they are served once its accept loop ends."""
    server._backlog.extend(take_backlog(listener))


def _cut_short(stream: Any) -> None:
    """The response being written on ``stream`` was cut short: a TLS connection closes without
    ``close_notify``, which would vouch for it (``TlsStream.cut_short``)."""
    cut = getattr(stream, "cut_short", None)
    if cut is not None:
        cut()


def _reset_on_close(stream: Any) -> None:
    """Make closing ``stream``'s socket send a reset (RST) rather than an orderly end (FIN, or a TLS
    ``close_notify``)."""
    _cut_short(stream)
    sock = getattr(stream, "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # already gone: nothing to signal


def _bad_target(target: str) -> Response:
    """400 for a request target that is none of HTTP/1.1's forms (RFC 9112 §3.2): not a path, not an
    absolute http(s) URL, not ``*`` of an OPTIONS. Forwarded, ``other/web`` or ``?x=1`` would be read
    differently by each upstream (a relative path, a path of its own)."""
    shown = target if len(target) <= 64 else target[:64] + "..."
    return error_response(
        400,
        "bad-request",
        f"request target {shown!r} is not a path (starting with '/'), an absolute http(s) URL or '*' (OPTIONS only); "
        "send the path of the resource",
    )


def _without_h2c(upgrade: bytes) -> bytes | None:
    """An ``Upgrade`` value without its ``h2c`` offer; None when nothing else is offered. A request
    offering only ``h2c`` is forwarded as a plain request (its ``Upgrade`` dropped as hop-by-hop), as
    Envoy and nginx do: an upstream that switched would give the client an HTTP/2 connection of its
    own to it, whose requests no longer pass this proxy (the "h2c smuggling" of an access-control
    proxy). Other protocols offered beside it (``websocket, h2c``) are still passed on."""
    tokens = [token.strip() for token in upgrade.split(b",")]
    if not any(token.lower() == b"h2c" for token in tokens):
        return upgrade
    rest = [token for token in tokens if token and token.lower() != b"h2c"]
    return b", ".join(rest) if rest else None


class _TunnelStalled(Exception):
    """A side of a tunnel took or sent nothing for its ``socketOptions`` timeout (see ``_tunnel``)."""


class _ClientGone(Exception):
    """The client closed or reset the connection; nothing more can be sent."""


class _RequestBodySource:
    """Pulls the request body from the client connection as the consumer asks for it."""

    __slots__ = ("_conn", "trailers", "_done")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.trailers: Headers | None = None
        self._done = False

    async def read_chunk(self) -> bytes | None:
        if self._done:
            return None
        conn = self._conn
        codec = conn.codec
        try:
            while True:
                event = codec.next_event()
                if type(event) is Data:
                    if event.data:
                        return event.data
                    continue
                if type(event) is EndOfMessage:
                    self._done = True
                    if event.trailers:
                        self.trailers = Headers._trusted(allowed_trailers(event.trailers))
                    return None
                if event is NEED_DATA:
                    if codec.they_are_waiting_for_100_continue:
                        await conn.send_100_continue()
                    params = conn.params
                    body_s = params.request_body_timeout_s
                    read_s = params.read_timeout_s
                    if body_s is None and read_s is None:
                        data = await conn.receive()
                    else:
                        data = await self._receive_within(conn, body_s, read_s)
                    codec.receive_data(data)
                    continue
                if type(event) is ConnectionClosed or event is PAUSED:
                    raise _ClientGone("client closed the connection before the request body ended")
                raise ProtocolError(f"unexpected {event!r} in request body")
        except (ProtocolError, _ClientGone) as exc:
            # The client's doing: whoever reads the body (the upstream pool, a retry buffer) says so.
            self._done = True
            raise RequestBodyError(str(exc), client_gone=isinstance(exc, _ClientGone)) from exc

    @staticmethod
    async def _receive_within(conn: _Connection, body_s: float | None, read_s: float | None) -> bytes:
        """The client's next bytes of the body, within ``requestBodyTimeoutMs`` (``body_s``: strict)
        and ``socketOptions.readTimeoutMs`` (``read_s``: moved on by each write to the client meanwhile,
        ``_Connection._progressed``); the shorter applies."""
        start = trio.current_time()
        limit = inf if body_s is None else start + body_s
        read_at = inf if read_s is None else start + read_s
        with trio.CancelScope(deadline=min(read_at, limit)) as scope:
            if read_s is None:
                return await conn.receive()
            conn.read_wait, conn.read_wait_limit = scope, limit
            try:
                return await conn.receive()
            finally:
                conn.read_wait = None
        conn.server._stats.body_timeouts += 1
        if read_s is not None and (scope.deadline < limit or scope.deadline == read_at):
            raise _ClientGone(f"request body stalled for {read_s:g}s (socketOptions.readTimeoutMs)")
        raise _ClientGone(f"request body stalled for {body_s:g}s (requestBodyTimeoutMs)")

    async def aclose(self) -> None:
        self._done = True


class _Connection:
    # One per open connection, idle ones included: kept small (slots; the send lock is made on first use).
    __slots__ = (
        "server",
        "params",
        "stream",
        "codec",
        "_send_lock",
        "requests",
        "idle_scope",
        "idle_timer",
        "dispatching",
        "serve_scope",
        "dispatch_scope",
        "info",
        "forwarded_labels",
        "born",
        "linger",
        "linger_scope",
        "read_wait",
        "read_wait_limit",
    )

    def __init__(self, server: Http1Server, stream: Any, conn_id: int) -> None:
        self.server = server
        self.params = server.params
        # A plaintext connection does its I/O through a SockStream that takes its socket over (closed
        # when ``serve`` ends; the emptied trio stream's close does nothing); TLS streams are used as
        # they are.
        self.stream: Any = adopt(stream) if type(stream) is trio.SocketStream else stream
        self.codec = ServerCodec(server._limits)
        self._send_lock: trio.Lock | None = None
        self.requests = 0
        # When it was accepted, for ``life_time_s`` (only then read: no clock read otherwise).
        self.born = server.now() if self.params.life_time_s is not None else 0.0
        # The wait for the next request ends on its idle deadline (or a drain) in one of two ways:
        # a plaintext connection of a serving server waits inside ``serve_scope`` (entered once, for
        # the whole connection), which the server's idle timer cancels only while the connection is
        # waiting and no byte of a request has arrived; any other (TLS) waits in an ``idle_scope``
        # with a deadline, made per wait.
        self.idle_timer: IdleTimer | None = (
            server.idle_timer if type(self.stream) is SockStream and server.idle_timer.available else None
        )
        #: Whether a request is with the handler (its client is checked then: ``check_client``).
        self.dispatching = False
        self.serve_scope: trio.CancelScope | None = None
        #: The scope of the request with the handler on a connection without a ``serve_scope`` (TLS),
        #: which the client check cancels instead.
        self.dispatch_scope: trio.CancelScope | None = None
        self.idle_scope: trio.CancelScope | None = None
        self.info = ConnInfo.for_stream(self.stream, server.params, conn_id)
        fwd = self.params.add_forwarded_header
        self.forwarded_labels = (
            (obfuscated(server._rng), obfuscated(server._rng)) if fwd is not None else ("", "")
        )
        #: The connection closes after a response while the client may still be sending its request
        #: (see :meth:`_linger`).
        self.linger = False
        #: The scope of the lingering close under way, which a drain shortens (see :meth:`start_drain`).
        self.linger_scope: trio.CancelScope | None = None
        #: The scope of a read of the client's bytes under ``read_timeout_s`` in progress (a request
        #: body's, a tunnel's): each write to the client that completes moves its deadline, up to
        #: ``read_wait_limit`` (:meth:`_progressed`).
        self.read_wait: trio.CancelScope | None = None
        self.read_wait_limit = inf

    @property
    def send_lock(self) -> trio.Lock:
        """Orders a response head against a concurrent ``100 Continue`` (made on first use)."""
        lock = self._send_lock
        if lock is None:
            lock = self._send_lock = trio.Lock()
        return lock

    async def send_head(self, data: bytes) -> None:
        """Send a response head (and whatever follows it in ``data``) after any ``100 Continue``
        being written: only ``send_100_continue`` holds the lock across a send, and once the codec
        produced the head it no longer lets one start, so an unheld lock need not be taken."""
        lock = self._send_lock
        if lock is not None and lock.locked():
            async with lock:
                await self.send(data)
        else:
            await self.send(data)

    def start_drain(self) -> None:
        """Drain: a connection waiting for its next request is closed now.

        A connection that has not sent its first request yet (it may have been accepted a moment ago,
        its request already on the way) gets :data:`DRAIN_FIRST_REQUEST_S` to send it instead. A
        lingering close under way ends within :data:`LINGER_DRAINING_S`.
        """
        linger = self.linger_scope
        if linger is not None:
            linger.deadline = min(linger.deadline, trio.current_time() + LINGER_DRAINING_S)
            return
        timer = self.idle_timer
        if timer is not None:
            if self not in timer.waiting:
                return
            if self.requests > 0:
                del timer.waiting[self]
                self.idle_expired()
            else:
                timer.advance(self, trio.current_time() + DRAIN_FIRST_REQUEST_S)
            return
        scope = self.idle_scope
        if scope is None:
            return
        if self.requests > 0:
            scope.cancel()
        else:
            scope.deadline = min(scope.deadline, trio.current_time() + DRAIN_FIRST_REQUEST_S)

    def idle_expired(self) -> None:
        """The idle timer (or a drain) ends this connection's wait for its next request: the
        connection closes quietly, unless the request's first bytes (or the client's close) already
        arrived, in which case it is served as if no deadline had passed. While the socket is not
        readable the task is certainly blocked in that wait (nothing else can wake it), so the
        cancellation ends exactly the wait and never a request being served."""
        scope = self.serve_scope
        if scope is not None and not readable(self.stream.socket):
            scope.cancel()

    def check_client(self) -> None:
        """The server's client check (``Http1Server.check_clients``, every ``CLIENT_CHECK_S``) while
        this connection's request is with the handler. A client that closed its connection waits for
        nothing: the request is cancelled (``serve_scope``; the router counts it as 499 and the
        upstream connection under it is closed), as Linkerd cancels a request whose client went away
        and nginx answers 499. A hung upstream so holds no router slot (``maxConcurrentRequests``),
        connection or memory for a client that gave up."""
        scope = self.serve_scope or self.dispatch_scope
        if scope is not None and self.dispatching and self.info.client_gone():
            self.server._stats.requests_abandoned += 1
            scope.cancel()

    def must_close(self) -> bool:
        """Whether the response being written is this connection's last (drain, overload, limit)."""
        server = self.server
        if server.draining:
            return True
        ov = server.overload
        if ov is not None and not ov.keepalive_allowed:
            return True
        params = self.params
        limit = params.max_requests_per_connection
        if limit is not None and self.requests >= limit:
            return True
        life = params.life_time_s
        return life is not None and self.server.now() - self.born >= life

    # -- I/O helpers -----------------------------------------------------------------------------

    async def receive(self) -> bytes:
        try:
            return await self.stream.receive_some(RECEIVE_SIZE)
        except _STREAM_ERRORS as exc:
            raise _ClientGone(f"client connection failed: {exc}") from None

    async def send(self, data: bytes) -> None:
        if not data:
            return
        params = self.params
        write_s = params.write_timeout_s
        try:
            if params.read_timeout_s is not None:
                # Each piece the client takes is progress for a read of its bytes waiting meanwhile.
                if not await send_all_timed(self.stream, data, write_s, self._progressed):
                    assert write_s is not None
                    self._write_stalled(write_s)
            elif write_s is None:
                await self.stream.send_all(data)
            elif not await send_all_timed(self.stream, data, write_s):
                self._write_stalled(write_s)
        except _STREAM_ERRORS as exc:
            self.codec.send_failed()
            raise _ClientGone(f"client connection failed: {exc}") from None

    def _progressed(self) -> None:
        """Bytes went to the client: a read of its bytes under ``read_timeout_s`` waiting meanwhile
        (``read_wait``: a request body's, a tunnel's) gets ``read_timeout_s`` from now, within its
        ``read_wait_limit`` (``requestBodyTimeoutMs``), as Finagle's read timeout counts any progress
        of the connection (a client that uploads slowly while it takes a streamed response)."""
        scope = self.read_wait
        read_s = self.params.read_timeout_s
        if scope is not None and read_s is not None:
            scope.deadline = min(trio.current_time() + read_s, self.read_wait_limit)

    def _write_stalled(self, write_s: float) -> NoReturn:
        """A write to the client did not complete within ``socketOptions.writeTimeoutMs``: cut the
        connection off (the bytes of a response already sent cannot be taken back)."""
        self.codec.send_failed()
        self.server._stats.write_timeouts += 1
        why = f"the client took no bytes for {write_s:g}s (socketOptions.writeTimeoutMs)"
        log.info("http.write_timeout", router=self.params.router_label, peer=self.info.peer, error=why)
        _reset_on_close(self.stream)
        raise _ClientGone(why)

    async def send_100_continue(self) -> None:
        async with self.send_lock:
            if self.codec.they_are_waiting_for_100_continue:
                await self.send(self.codec.send_informational(100, []))

    # -- the cycle loop --------------------------------------------------------------------------

    async def serve(self) -> None:
        stream = self.stream
        fast = type(stream) is SockStream
        try:
            if self.idle_timer is None:
                await self._serve_cycles(stream, fast)
            else:
                # Cancelled only by ``idle_expired``, i.e. only during the wait for a request.
                with trio.CancelScope() as self.serve_scope:
                    await self._serve_cycles(stream, fast)
            if self.linger:
                await self._linger(fast)
        finally:
            if fast:
                stream.close()

    async def _linger(self, fast: bool) -> None:
        """Close gently after answering a request the client is still sending (an error before its
        body was read, a body past what is drained): closing a socket with unread bytes sends a
        reset, which makes the client's TCP stack discard the response it has not read yet, so a
        client that sends its whole body before reading (Python's ``http.client``, many others)
        saw "connection reset" instead of the 4xx/5xx and its ``l5d-err``. The response is out;
        this half-closes the connection (plaintext: the client sees its end), then reads and
        discards what the client still sends until it closes, pauses for ``LINGER_IDLE_S``, or
        ``LINGER_S`` / ``LINGER_BYTES`` run out (as nginx's lingering close)."""
        stream = self.stream
        try:
            if fast:
                stream.socket.shutdown(socket.SHUT_WR)
            else:
                # TLS: our close_notify says the response is whole, as the FIN does in plaintext, so
                # that a client reading to the end is not kept waiting through the linger; what the
                # client still sends is then discarded as it comes, undecrypted.
                send_close_notify = getattr(stream, "send_close_notify", None)
                if send_close_notify is not None:
                    await send_close_notify()
                    stream = stream.transport_stream
            total = 0
            # A draining server lingers briefly: the drain waits for its connections to end (a
            # drain that starts during the linger shortens it likewise: ``start_drain``).
            with trio.move_on_after(LINGER_DRAINING_S if self.server.draining else LINGER_S) as scope:
                self.linger_scope = scope
                while total < LINGER_BYTES:
                    with trio.move_on_after(LINGER_IDLE_S) as idle:
                        data = await stream.receive_some(RECEIVE_SIZE)
                    if idle.cancelled_caught or not data:
                        return
                    total += len(data)
        except (*_STREAM_ERRORS, OSError):
            return

    async def _serve_cycles(self, stream: Any, fast: bool) -> None:
        server = self.server
        stats = server._stats
        try:
            while True:
                try:
                    head = await self._read_head()
                    if head is None:
                        return
                    if head.http_version[:1] != b"1":
                        await self._wrong_version(head)
                        return
                    admitted = self._admit(head)
                except ProtocolError as exc:
                    stats.bad_requests += 1
                    await self._send_error_and_close(exc.status, "bad-request", str(exc))
                    return
                if isinstance(admitted, Request):
                    # Called from here rather than through a helper coroutine: every level between
                    # this loop and the upstream read is one more frame to resume per request.
                    stats.requests_in_flight += 1
                    self.dispatching = True
                    if not server.checking_clients:
                        server.check_clients()
                    try:
                        if self.serve_scope is not None:
                            keep_alive = await self._dispatch(admitted, head.method)
                        else:
                            # (TLS: the client check cancels this scope; ``serve_scope`` is only for
                            # plaintext connections, whose waits the idle timer ends.)
                            with trio.CancelScope() as self.dispatch_scope:
                                keep_alive = await self._dispatch(admitted, head.method)
                            if self.dispatch_scope.cancelled_caught:
                                return  # the client left (``check_client``): nothing to answer
                    finally:
                        stats.requests_in_flight -= 1
                        self.dispatching = False
                        self.dispatch_scope = None
                else:
                    response, request_body = admitted
                    keep_alive = await self._answer(response, request_body, head.method)
                if not keep_alive:
                    return
                if fast:
                    # A SockStream yields only when it waits: a cycle that never waited (pipelined
                    # requests answered without waiting on this connection) yields here instead.
                    if not stream.waited:
                        await trio.lowlevel.checkpoint()
                    stream.waited = False
        except _ClientGone:
            return

    async def _read_head(self) -> RequestHead | None:
        codec = self.codec
        params = self.params
        deadline: float | None = None
        while True:
            event = codec.next_event()
            if type(event) is RequestHead:
                return event
            if type(event) is ConnectionClosed:
                return None
            if event is not NEED_DATA:
                raise ProtocolError(f"unexpected {event!r} before a request head")
            if codec.has_buffered_data:
                if deadline is None:
                    deadline = trio.current_time() + params.request_head_timeout_s
                read_s = params.read_timeout_s
                # With readTimeoutMs each read of the head has its own bound too.
                stall_at = deadline if read_s is None else min(deadline, trio.current_time() + read_s)
                with trio.move_on_at(stall_at):
                    codec.receive_data(await self.receive())
                    continue
                self.server._stats.bad_requests += 1
                self.server._stats.header_timeouts += 1
                if stall_at < deadline:
                    why = (
                        f"request head stalled: nothing received for {read_s:g}s "
                        "(socketOptions.readTimeoutMs)"
                    )
                else:
                    why = f"request head not received within {params.request_head_timeout_s:g}s"
                await self._send_error_and_close(408, "bad-request", why, linger=False)
                return None
            idle_s = params.idle_timeout_s
            if self.server.draining:
                if self.requests > 0:
                    return None  # draining: an idle keep-alive connection closes instead of waiting
                idle_s = DRAIN_FIRST_REQUEST_S if idle_s is None else min(idle_s, DRAIN_FIRST_REQUEST_S)
            life = params.life_time_s
            if life is not None:  # the wait for a request ends with the connection's life, too
                left = self.born + life - self.server.now()
                if left <= 0:
                    return None
                idle_s = left if idle_s is None else min(idle_s, left)
            timer = self.idle_timer
            if timer is not None:
                # The idle timer ends this wait on its deadline (``idle_expired`` cancels
                # ``serve_scope``): no deadline of its own to register and remove per request.
                timer.add(self, inf if idle_s is None else self.server.now() + idle_s)
                try:
                    # ``receive`` inlined; a SockStream (the timer is only for those): the codec
                    # took all it had, so the bytes are probably not there yet.
                    data = await self.stream.receive_polled(RECEIVE_SIZE)
                except _STREAM_ERRORS as exc:
                    raise _ClientGone(f"client connection failed: {exc}") from None
                finally:
                    timer.waiting.pop(self, None)
                deadline = None
                codec.receive_data(data)
                continue
            self.idle_scope = scope = (
                trio.CancelScope()
                if idle_s is None
                else trio.CancelScope(deadline=trio.current_time() + idle_s)
            )
            try:
                with scope:
                    data = await self.receive()
            finally:
                self.idle_scope = None
            if scope.cancelled_caught:
                return None  # idle keep-alive connection (timed out, or drained): close quietly
            # The head deadline runs from its first bytes: taken when the head turns out incomplete
            # (above), which is this moment plus the parse of what just arrived.
            deadline = None
            codec.receive_data(data)

    async def _wrong_version(self, head: RequestHead) -> None:
        """A request that is not HTTP/1.x. The HTTP/2 connection preface (``PRI * HTTP/2.0``, a
        client with prior knowledge) gets what an HTTP/2 client can read: SETTINGS, then GOAWAY
        HTTP_1_1_REQUIRED whose debug data says what to do; anything else a 505."""
        stats = self.server._stats
        stats.bad_requests += 1
        if head.method == b"PRI" and head.target == b"*" and head.http_version == b"2.0":
            log.info("http.h2_preface_refused", router=self.params.router_label)
            text = (
                b"This port speaks HTTP/1.1 (an http router): an HTTP/2 connection preface (prior "
                b"knowledge) was sent to it; send HTTP/1.1, or use an h2 router's port"
            )
            try:
                await self.send(h2_refusal(HTTP_1_1_REQUIRED, text))
                # Read what the client still sends until it closes (briefly): closing with unread
                # input would reset the connection and could destroy the GOAWAY in flight.
                with trio.move_on_after(1.0):
                    while await self.receive():
                        pass
            except _ClientGone:
                pass
            return
        await self._send_error_and_close(
            505,
            "bad-request",
            f"HTTP/{head.http_version.decode('ascii', 'replace')} is not supported: this port speaks "
            "HTTP/1.1",
        )

    async def _send_error_and_close(
        self, status: int, cause: str, message: str, *, linger: bool = True
    ) -> None:
        response = error_response(status, cause, message, close=True)
        try:
            await self._write_response(response, head_method=b"GET", close=True)
        except _ClientGone:
            return
        # The rest of a refused head, or its body, may still be on the way (not for a head too
        # slow to arrive: a slowloris client is not given more time).
        self.linger = linger

    def _build_request(self, head: RequestHead) -> Request | Response:
        """The request the handler sees, or an error response that answers it directly.

        One pass over the fields reads what the request needs (each the first value, as
        ``Headers.get``) and, for the usual request, makes the forwarded fields too: everything but
        ``Content-Length``, ``Expect`` and the hop-by-hop fields, then ``Via``, exactly as
        ``strip_hop_by_hop``, the two removals and ``append_via`` would. A request where stripping
        does more (a ``Connection`` naming other fields, ``TE``, an upgrade to keep) or an
        absolute-form target takes those general steps instead.
        """
        params = self.params
        method = _ASCII.get(head.method) or head.method.decode("ascii")
        target = head.target.decode("latin-1")
        items = head.headers
        version = _ASCII.get(head.http_version) or head.http_version.decode("ascii")
        if method == "CONNECT":
            return error_response(
                405, "bad-request", "CONNECT tunnelling is not supported by this proxy", close=True
            )
        host = upgrade_value = cl = te = None
        connection: list[bytes] = []
        has_via = has_expect = has_te_field = False
        kept: list[tuple[bytes, bytes]] = []
        keep = kept.append
        kinds = _FIELD_KINDS
        authority: str | None
        for field in items:
            kind = kinds.get(field[0])
            if kind is None:
                kind = _field_kind(field[0])
            if kind == _K_KEEP:
                keep(field)
            elif kind == _K_HOST:
                if host is None:
                    host = field[1]
                keep(field)
            elif kind == _K_CONTENT_LENGTH:
                if cl is None:
                    cl = field[1]
            elif kind == _K_CONNECTION:
                connection.append(field[1])
            elif kind == _K_VIA:
                has_via = True
                keep(field)
            elif kind == _K_EXPECT:
                has_expect = True
            elif kind == _K_UPGRADE:
                if upgrade_value is None:
                    upgrade_value = field[1]
            elif kind == _K_TRANSFER_ENCODING:
                if te is None:
                    te = field[1]
            elif kind == _K_TE:
                has_te_field = True
            # else another hop-by-hop field: not forwarded
        if has_via and via_count(Headers._trusted(items)) > params.max_call_depth:
            return error_response(
                400,
                "bad-request",
                f"Maximum number of calls ({params.max_call_depth}) has been exceeded. "
                "Please check for proxy loops.",
            )
        scheme = "http"
        absolute = split_absolute_form(target) if target[:1] != "/" else None
        if absolute is None and target[:1] != "/" and not (target == "*" and method == "OPTIONS"):
            return _bad_target(target)
        upgrade: bytes | None = None
        if upgrade_value is not None:
            conn_tokens = b",".join(connection).lower()
            if b"upgrade" in conn_tokens:
                upgrade = _without_h2c(upgrade_value)
        content_length: int | None = 0
        if te is not None:
            content_length = None
        elif cl is not None:
            content_length = int(cl)  # h11 validated it
        if (
            absolute is None
            and upgrade is None
            and not has_te_field
            and (not connection or all(map(names_only_hop_by_hop, connection)))
        ):
            # ``kept`` is what the general steps below would give.
            authority = host.decode("latin-1") if host is not None else None
            out = Headers._stripped(kept)
            if has_via:
                append_via(out, version)
            else:
                keep(via_field(version))
        else:
            headers = Headers._trusted(items)
            if absolute is not None:
                scheme, authority_s, target = absolute
                headers.set(b"host", authority_s.encode("latin-1"))
                authority = authority_s
            else:
                authority = host.decode("latin-1") if host is not None else None
            out = strip_hop_by_hop(headers, keep_upgrade=upgrade is not None)
            if upgrade is not None and upgrade is not upgrade_value:
                out.set(b"upgrade", upgrade)  # (without its h2c offer)
            if cl is not None:
                out.remove(b"content-length")
            if has_expect:
                out.remove(b"expect")
            append_via(out, version)
        if params.add_forwarded_header is not None or params.timestamp_header is not None:
            add_arrival_headers(out, params, self.info, self.forwarded_labels, self.server._rng)
        if content_length == 0:
            # Consume the (empty) body's end now: no I/O is needed for it.
            event = self.codec.next_event()
            if type(event) is not EndOfMessage:  # pragma: no cover - h11 guarantees it
                raise ProtocolError(f"expected the end of an empty body, got {event!r}")
            body = Body.empty()
        else:
            body = Body(_RequestBodySource(self), content_length)
        return Request(method, target, out, body, version, scheme, authority, upgrade)

    def _admit(self, head: RequestHead) -> Request | tuple[Response, Body | None]:
        """Count a request and build it (:meth:`_build_request`): the request to dispatch, or the
        response that answers it at once (refused by ``_build_request``, beyond
        ``maxConcurrentRequests``, or shed for overload) with the request body left to drain.
        Raises ``ProtocolError`` for a request that cannot be built."""
        server = self.server
        stats = server._stats
        stats.requests_total += 1
        self.requests += 1
        built = self._build_request(head)
        if not isinstance(built, Request):
            stats.bad_requests += 1  # (a proxy loop, CONNECT, a target of no HTTP/1.1 form)
            return built, None
        limit = self.params.max_concurrent_requests
        if (
            limit is not None
            and stats.requests_in_flight >= limit
            and built.target.split("?", 1)[0] not in self.params.uncapped_paths
        ):
            stats.rejected_overload += 1
            return error_response(
                503,
                "overload",
                f"server {self.params.router_label} is at maxConcurrentRequests={limit}; retry later",
            ), built.body
        ov = server.overload
        if ov is not None and ov.shed_requests:
            stats.rejected_overload += 1
            ov.note_shed()
            return error_response(
                503,
                "overload",
                "hostproxy is shedding load: memory is past the overload shed mark; retry later",
            ), built.body
        return built

    async def _answer(self, response: Response, request_body: Body | None, method: bytes) -> bool:
        """Write a response the proxy made without calling the handler; whether the connection may
        carry another request."""
        # A request refused before its body was framed (no ``request_body``): what it still sends
        # is never read as a body, so the connection closes after the answer, lingering for it.
        close = request_body is None and not self.codec.request_complete
        close = close or "close" in (response.headers.get(b"connection") or b"").decode("latin-1").lower()
        close = close or self.must_close()
        await self._write_response(response, head_method=method, close=close)
        return await self._finish_cycle(request_body, close)

    async def _dispatch(self, request: Request, method: bytes) -> bool:
        try:
            response = await self.server.handler(request, self.info)
        except _ClientGone:
            raise
        except Exception as exc:
            if not isinstance(exc, UpstreamError | RequestBodyError):
                log.exception("http.handler_failed", router=self.params.router_label, target=request.target)
            response = response_for_exception(exc)
        headers = response.headers
        # Headers known free of hop-by-hop fields (a response from the upstream pool) have no
        # ``Connection`` field to look for.
        close = (
            not headers._hop_free and (headers.get(b"connection") or b"").lower().find(b"close") != -1
        ) or self.must_close()
        if response.status == 101:
            if response.upgraded is None or request.upgrade is None:
                await response.body.aclose()
                response = error_response(
                    502, "proxy/internal", "101 Switching Protocols without an upgraded stream"
                )
            else:
                await self._tunnel(response)
                return False
        if response.interim is not None:
            try:
                if await self._write_interim(response):
                    close = True
            except BaseException:
                # The client is gone before the response head: the body (the upstream connection
                # under it) is let go here, as ``_write_response`` would have.
                with trio.CancelScope(shield=True):
                    await response.body.aclose()
                raise
        write_timeout = self.params.response_write_timeout_s
        if write_timeout is None:
            await self._write_response(response, head_method=method, close=close)
        else:
            with trio.move_on_after(write_timeout) as scope:
                await self._write_response(response, head_method=method, close=close)
            if scope.cancelled_caught:
                raise _ClientGone(f"response write took over {write_timeout:g}s")
        if request.body.done:
            # Nothing left to drain (the usual request): no ``_finish_cycle`` coroutine to run.
            return not close and not self.server.draining and self._next_cycle()
        return await self._finish_cycle(request.body, close)

    async def _finish_cycle(self, request_body: Body | None, close: bool) -> bool:
        codec = self.codec
        unread = (request_body is None or not request_body.done) and not codec.request_complete
        if close or self.server.draining:
            # (A client waiting for ``100 Continue`` sends no body: nothing to linger for.)
            self.linger = unread and not codec.they_are_waiting_for_100_continue
            return False
        if unread:
            assert request_body is not None
            # The handler answered without reading the whole request body.  Read and discard a
            # bounded amount so that the connection can be reused; otherwise close it.
            if codec.they_are_waiting_for_100_continue:
                return False
            with trio.move_on_after(1.0):
                drained = 0
                try:
                    # A body its reader closed (an upstream that answered before it took the whole
                    # body: the pool let the rest go) cannot be read on, and the rest of it is still
                    # on the connection: closed before or while draining, the connection closes.
                    while not request_body.closed:
                        try:
                            chunk = await request_body.__anext__()
                        except StopAsyncIteration:
                            break
                        drained += len(chunk)
                        if drained > 256 * 1024:
                            self.linger = True
                            return False
                except RequestBodyError:
                    return False  # malformed or cut short: the connection cannot carry another request
            if not request_body.done:
                self.linger = True
                return False
        return self._next_cycle()

    def _next_cycle(self) -> bool:
        """Ready the codec for the next request when the connection can carry one; whether it can."""
        codec = self.codec
        if not codec.can_reuse:
            return False
        codec.start_next_cycle()
        return True

    async def _write_response(self, response: Response, *, head_method: bytes, close: bool) -> None:
        codec = self.codec
        if self.params.clear_context:
            response = await cleared_context_response(response)
        body = response.body
        try:
            status = response.status
            no_body = head_method == b"HEAD" or status in (204, 304) or status < 200
            fields: list[tuple[bytes, bytes]] | None = None
            src = response.headers
            if src.hop_free and not no_body:
                # Stripped before (a response from the upstream pool) and nothing hop-by-hop added
                # since: the fields as they are, then Via, Content-Length and Connection as below,
                # appended when the fields have neither Via nor Content-Length (the usual case).
                fields = src.items()
                for name, _ in fields:
                    if name == b"via" or name == b"content-length":
                        fields = None
                        break
                else:
                    # Via names the version the response was received in (RFC 9110 §7.6.3).
                    version = response.http_version
                    fields.append(VIA_11 if version == "1.1" else via_field(version))
                    if body.content_length is not None:
                        fields.append((b"content-length", b"%d" % body.content_length))
                    if close:
                        fields.append((b"connection", b"close"))
            if fields is None:
                headers = strip_hop_by_hop(src, request=False)
                append_via(headers, response.http_version)
                # Transfer-Encoding went with the hop-by-hop fields; the codec frames the body itself.
                if not no_body:
                    headers.remove(b"content-length")
                    if body.content_length is not None:
                        headers.add(b"content-length", b"%d" % body.content_length)
                if close:
                    headers.add(b"connection", b"close")
                fields = headers.items()
            if no_body or body.in_memory:
                # The whole response is at hand: head, body and end in one write.
                data = b"" if no_body else body.peek_memory()
                trailers = body.trailers
                out = codec.send_response(status, response.reason, fields)
                if data:
                    out += codec.send_data(data)
                out += codec.send_end(
                    self._sent_fields(trailers) if trailers and codec.response_chunked else None
                )
                lock = self._send_lock
                params = self.params
                if (
                    (lock is not None and lock.locked())
                    or params.write_timeout_s is not None
                    or params.read_timeout_s is not None
                ):
                    await self.send_head(out)
                else:
                    # ``send_head`` and ``send`` inlined (``out`` is never empty: it has the head).
                    try:
                        await self.stream.send_all(out)
                    except _STREAM_ERRORS as exc:
                        codec.send_failed()
                        raise _ClientGone(f"client connection failed: {exc}") from None
                if not no_body and not body.done:  # a done body has nothing to consume
                    body.consume_memory()
                return
            # The head is ordered after a concurrent ``100 Continue`` from the body reader; once the
            # head is out, the codec no longer lets one be sent, so the body needs no ordering.
            await self.send_head(codec.send_response(status, response.reason, fields))
            if not no_body:
                try:
                    async for chunk in body:
                        await self.send(codec.send_data(chunk))
                except _ClientGone:
                    raise
                except Exception as exc:
                    # The upstream failed mid-body: the head is out, so the only honest signal
                    # left is to cut the connection without the end of the message.
                    log.warning(
                        "http.response_aborted",
                        router=self.params.router_label,
                        error=str(exc),
                        cause=getattr(exc, "cause", "proxy/internal"),
                    )
                    codec.send_failed()
                    if not codec.response_chunked and body.content_length is None:
                        # Delimited by the close (an HTTP/1.0 client): an orderly close would end
                        # the body as if it were whole. A reset says it was cut.
                        _reset_on_close(self.stream)
                    raise _ClientGone("response body failed") from None
            trailers = body.trailers if codec.response_chunked else None
            await self.send(codec.send_end(self._sent_fields(trailers) if trailers else None))
        except BaseException:
            # Not written whole (the client gone, the upstream failed mid-body, a write timeout,
            # the server cancelled): the close must not vouch for it.
            _cut_short(self.stream)
            raise
        finally:
            if not body.done:
                with trio.CancelScope(shield=True):
                    await body.aclose()

    def _sent_fields(self, headers: Headers) -> list[tuple[bytes, bytes]]:
        """The fields of a trailer section, an interim or a 101 head to send: without ``l5d-*`` on a
        ``clearContext`` server (a downstream proxy's, the classifier's ``l5d-success-class``)."""
        fields = headers.items()
        return without_context_fields(fields) if self.params.clear_context else fields

    async def _write_interim(self, response: Response) -> bool:
        """Write the interim (1xx) responses the upstream sent before ``response`` (RFC 9110 §15.2: a
        proxy forwards the 1xx it did not ask for), each with ``Via``, just before it; none to an
        HTTP/1.0 client, which must not get any (RFC 9110 §15.2).

        Whether the connection must close after ``response``: when the client was still waiting for
        ``100 Continue`` (its body unsent), as it would without the interim responses, which end that
        wait in the codec's eyes although the client never sent its body."""
        codec = self.codec
        version = codec.http_version
        if version is None or version < b"1.1":
            return False
        waiting = codec.they_are_waiting_for_100_continue
        out = b""
        for status, headers in response.interim or ():
            fields = headers.copy()
            append_via(fields, response.http_version)
            out += codec.send_informational(status, self._sent_fields(fields))
        await self.send_head(out)
        return waiting

    async def _tunnel(self, response: Response) -> None:
        """Send the 101 and copy bytes both ways until either side closes, or a side stalls.

        Each side has its ``socketOptions`` timeouts (the client's here, the upstream's in its
        upgraded stream, ``client.socketOptions``): a write the peer takes no bytes of for
        ``writeTimeoutMs``, or a wait for the peer's bytes with nothing moved either way on its
        connection for ``readTimeoutMs``, ends the tunnel; both connections are closed, and it is
        counted (``tunnel_timeouts``) and logged (``http.tunnel_timeout``)."""
        upstream = response.upgraded
        assert upstream is not None
        codec = self.codec
        headers = strip_hop_by_hop(response.headers, keep_upgrade=True, request=False)
        append_via(headers, response.http_version)
        fields = self._sent_fields(headers)  # (the router's l5d-success-class, a downstream proxy's l5d-*)
        stalls: list[_TunnelStalled] = []  # (the client's side; the upstream's is ``upstream.stalled``)
        try:
            await self.send_head(codec.send_informational(101, fields))
            pending = codec.switched_protocol_data()

            async def pump(
                receive: Callable[[], Awaitable[bytes]],
                send: Callable[[bytes], Awaitable[None]],
                cancel: trio.CancelScope,
                first: bytes = b"",
            ) -> None:
                try:
                    if first:  # what the client sent after its request, before the 101
                        await send(first)
                    while True:
                        data = await receive()
                        if not data:
                            break
                        await send(data)
                except _TunnelStalled as exc:
                    stalls.append(exc)
                except (_ClientGone, UpstreamError, *_STREAM_ERRORS):
                    pass  # a side closed or failed (a stalled upstream: ``upstream.stalled`` says so)
                finally:
                    cancel.cancel()

            async with trio.open_nursery() as nursery:
                cancel = nursery.cancel_scope
                nursery.start_soon(pump, self._tunnel_receive, upstream.send_all, cancel, pending)
                nursery.start_soon(
                    pump, lambda: upstream.receive_some(RECEIVE_SIZE), self._tunnel_send, cancel
                )
        finally:
            with trio.CancelScope(shield=True):
                await upstream.aclose()
        stalled = stalls[0] if stalls else getattr(upstream, "stalled", None)
        if stalled is not None:
            _cut_short(self.stream)
            self.server._stats.tunnel_timeouts += 1
            log.info(
                "http.tunnel_timeout",
                router=self.params.router_label,
                peer=self.info.peer,
                error=str(stalled),
            )

    async def _tunnel_receive(self) -> bytes:
        """The client's next bytes in a tunnel, within ``read_timeout_s`` of the last bytes moved
        either way on its connection (each write to it moves the deadline: :meth:`_progressed`)."""
        read_s = self.params.read_timeout_s
        if read_s is None:
            return await self.receive()
        with trio.move_on_after(read_s) as self.read_wait:
            self.read_wait_limit = inf
            try:
                return await self.receive()
            finally:
                self.read_wait = None
        raise _TunnelStalled(
            f"the client sent nothing and took no bytes for {read_s:g}s on an upgraded (101) connection "
            "(socketOptions.readTimeoutMs)"
        )

    async def _tunnel_send(self, data: bytes) -> None:
        """Write the upstream's bytes to the client in a tunnel (``write_timeout_s`` per piece)."""
        params = self.params
        write_s = params.write_timeout_s
        try:
            if write_s is None and params.read_timeout_s is None:
                await self.stream.send_all(data)
                return
            if await send_all_timed(self.stream, data, write_s, self._progressed):
                return
        except _STREAM_ERRORS as exc:
            raise _ClientGone(f"client connection failed: {exc}") from None
        _reset_on_close(self.stream)
        raise _TunnelStalled(
            f"the client took no bytes for {write_s:g}s on an upgraded (101) connection "
            "(socketOptions.writeTimeoutMs)"
        )
