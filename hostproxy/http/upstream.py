"""Connections to one upstream endpoint and the keep-alive pool that reuses them.

Theory of operation
-------------------
``UpstreamPool(host, port)`` sends requests to one endpoint over HTTP/1.1.  ``request(req)``
checks out a connection (an idle one, or a new one within ``connect_timeout``), writes the request
head, streams the request body, and returns the ``Response`` as soon as its head arrived; the
response body is then pulled from the socket as the caller reads it.

* **Full duplex.**  A request body that is not already in memory (or is, but larger than 64 KiB) is
  written by a task in the pool's nursery while the response is read, so an upstream that answers (or echoes) before the
  request ended never deadlocks against us.  The pool therefore needs a nursery: use it as
  ``async with UpstreamPool(...) as pool`` or pass ``nursery=``.  A response that ends while the
  writer still flushes the request's last bytes reaches its reader at once; the connection is
  checked in once the writer is done (kept only if it finished within 1 s).
* **Reuse only when clean.**  A connection goes back to the idle list only when both the request
  and the response were read/written completely and neither side asked to close.  A response body
  closed before its end, a request body not fully sent, or any error discards the connection.
* **Stale connections.**  An idle connection the upstream closed (or wrote to) while idle is
  readable; ``checkout`` polls for that and discards it.  If writing the request to a reused
  connection still fails before any byte of it left (known for a ``SockStream``, counting under
  ``write_timeout`` the pieces of the write already taken; a TLS or host-name stream cannot tell,
  so its failure is reported), it is sent again on a fresh connection: never
  lost, never duplicated.  Once any byte was written a failure is reported, not retried here (a
  streamed request's head alone may be sent again: an upstream cannot act on part of a head); a
  close before any byte of a response says so (``_closed_before_response``: on a reused connection,
  the keep-alive race and what to do about it).
* **Interim responses.**  1xx heads before the final one are collected on the ``Response``
  (``interim``, hop-by-hop fields stripped) for the server to forward; ``100 Continue`` is not (the
  server answers a client's ``Expect`` itself), and past ``MAX_INTERIM_RESPONSES`` of them the
  request fails (``upstream/reset``). A ``101`` is a tunnel only for a request that asked to
  upgrade.
* **Response heads** are held to the router's ``maxInitialLineKB`` and ``maxHeadersKB`` and to
  ``max_header_count`` fields (``PoolParams``, given to each connection's codec); a response framed
  by the close, or with both ``Content-Length`` and chunking, leaves its connection unpooled.
* **Nothing after the response.**  Bytes an upstream sends beyond the end of a response (a second
  response nobody asked for, a body on a ``HEAD`` or ``204``) would be read as the next request's
  response: a connection holding any is closed, not kept; in the codec's buffer, or in a TLS
  layer's (``TlsStream.buffered``: it reads the socket ahead, so later records of the same read are
  neither in the codec nor readable on the socket).
* **Plain TCP.**  A connection to an IP address is a :class:`~hostproxy.http.sockstream.SockStream`
  (it yields only when it has to wait); a host name is resolved and connected by
  ``trio.open_tcp_stream``.
* **Idle timeout.**  Idle connections older than ``idle_timeout_s`` are discarded at checkout
  and by ``prune()``, which a task in the pool's nursery runs as each idle connection reaches the
  timeout (started when a connection goes idle, ended when none is idle), so a pool with no more
  traffic does not keep its connections open.
* **The upstream's keep-alive timeout.**  A response's ``Keep-Alive: timeout=N`` (noted as its
  hop-by-hop fields are stripped, once per remembered head: nothing more is done for a response
  without one) gives its connection a shorter idle time of its own, N less a safety margin
  (``keep_alive_reuse_window``): past it the connection is closed, at checkout or by the reaper
  (woken early for it), not written to as the upstream closes it (the keep-alive race). ``max=0``
  or ``timeout=0``: the connection is not pooled. It never lengthens ``idle_timeout_s``, and
  ``min_size`` does not keep such connections open (their upstream closes them anyway).
* **Limits** (``client.hostConnectionPool``, ``client.clientSession``).  ``max_size`` bounds the
  connections open or opening; a request that finds none idle and no room waits, within the connect
  timeout, for one to be checked in or closed (then ``connect/timeout``); with ``max_waiters``
  requests already waiting one more is refused at once, unsent (``PoolExhausted``, cause
  ``overload``).  The idle timeout leaves ``min_size`` connections open; a connection older than
  ``life_time_s`` is closed when its exchange ends.
* **Stalled peers** (``client.socketOptions``).  With ``read_timeout_s`` / ``write_timeout_s`` each
  read of the response and each write of the request must complete within it; one that does not
  shuts the connection down (so the other direction, a body writer or a response reader, ends at
  once too) and the exchange fails with ``upstream/reset`` naming the key (``_Conn.stall``). An
  upgraded (101) connection's tunnel keeps them (``_TunnelStream``).
* **Errors.**  ``OSError``, trio's stream errors and parse errors are translated once, by
  ``_map_errors`` at the I/O edge, into ``UpstreamError`` subclasses with a ``cause``
  (``connect/refused``, ``connect/timeout``, ``connect/unreachable``, ``tls``, ``upstream/reset``,
  ``timeout/request``).
* **TLS.**  A pool given a ``connector`` (``(host, port, timeout_s) -> stream``, e.g.
  ``hostproxy.tls.ClientTls.connect``) opens its connections with it instead of plain TCP; the
  connector applies the connect timeout and raises ``UpstreamError`` itself (cause ``tls`` for a
  failed handshake). A TLS failure that surfaces only on the first read (a TLS 1.3 server rejecting
  the client certificate) keeps its ``tls`` cause instead of becoming ``upstream/reset``.

The bookkeeping (which idle connection to use, which to close) is the pure ``PoolState``; the
async code performs what it decides.
"""

from __future__ import annotations

import errno
import math
import os
import re
import select
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

import structlog
import trio

from hostproxy.http.codec import (
    NEED_DATA,
    PAUSED,
    ClientCodec,
    CodecLimits,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Informational,
    LocalProtocolError,
    ProtocolError,
    ResponseHead,
)
from hostproxy.http.codec_base import UNASKED_101
from hostproxy.http.errors import (
    ConnectError,
    PoolExhausted,
    PoolWaitTimeout,
    ProxyInternalError,
    RequestBodyError,
    RequestTimeout,
    UpstreamError,
    UpstreamReset,
    out_of_resources,
)
from hostproxy.http.hopbyhop import allowed_trailers, strip_hop_by_hop, strip_response_fields
from hostproxy.http.message import Body, Headers, Request, Response
from hostproxy.http.sockopts import SocketOptions, configure_connection, raw_socket, send_all_timed
from hostproxy.http.sockstream import SockStream, open_tcp

__all__ = ["Connector", "PoolParams", "PoolState", "UpstreamPool", "keep_alive_reuse_window"]


#: Opens one connection to ``(host, port)`` within ``timeout_s`` seconds; raises ``UpstreamError``.
Connector = Callable[[str, int, float], Awaitable[Any]]

log = structlog.get_logger("hostproxy.http.upstream")

RECEIVE_SIZE = 64 * 1024
# The largest in-memory request body written with its head in one write, before the response is read.
_INLINE_BODY_BYTES = 64 * 1024
_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL}
_TIMEDOUT = {errno.ETIMEDOUT}
_BODY_METHODS = {"POST", "PUT", "PATCH"}
_FRAMING = frozenset([b"content-length", b"transfer-encoding"])
#: The codec's call that takes a whole body already received (``codec_fast``'s
#: ``ClientCodec.whole_body``), or None when the selected codec has none (then its events are read).
_whole_body: Callable[[Any], bytes | None] | None = getattr(ClientCodec, "whole_body", None)
#: Response versions as ``str`` without decoding them per response (others are decoded).
_VERSIONS = {b"1.1": "1.1", b"1.0": "1.0"}
#: Most interim (1xx) responses an upstream may send before its final one: past it, 502
#: (``upstream/reset``), so that an upstream sending ``100 Continue`` after ``100 Continue`` cannot hold
#: a request without a timeout forever. Far above what a server sends (one 100, a 103 or two, a 102
#: now and then during a long operation).
MAX_INTERIM_RESPONSES = 32


@dataclass(frozen=True)
class PoolParams:
    """``client.hostConnectionPool`` and the client's timeouts for one endpoint."""

    connect_timeout_ms: int = 1000
    idle_timeout_s: float | None = 30.0
    max_idle: int = 100
    #: ``hostConnectionPool.maxSize``: most connections open (or opening) at once; None: no limit.
    max_size: int | None = None
    #: ``hostConnectionPool.maxWaiters``: most requests waiting for a connection at ``max_size``.
    max_waiters: int | None = None
    #: ``hostConnectionPool.minSize``: idle connections the idle timeout leaves open.
    min_size: int = 0
    #: ``clientSession.lifeTimeMs``: a connection this old (seconds) is closed when its exchange ends.
    life_time_s: float | None = None
    #: The router's ``maxHeadersKB`` and ``maxInitialLineKB``, applied to response heads as to
    #: requests (past them: 502, ``upstream/reset``).
    max_headers_kb: int = 8
    max_initial_line_kb: int = 4
    #: Most fields in a response head (1xx heads included); as many as a request may have.
    max_header_count: int = 100
    #: ``client.socketOptions`` of each new connection (None: hostproxy's defaults).
    socket_options: SocketOptions | None = None
    #: ``client.socketOptions.readTimeoutMs`` / ``.writeTimeoutMs`` (seconds): each read of a response
    #: (head or body), and each write of a request, must complete within it, or the connection is cut
    #: off and the exchange fails with ``upstream/reset``.
    read_timeout_s: float | None = None
    write_timeout_s: float | None = None

    def codec_limits(self) -> CodecLimits:
        """The limits of each connection's ``ClientCodec``."""
        return CodecLimits(
            max_initial_line=self.max_initial_line_kb * 1024,
            max_headers=self.max_headers_kb * 1024,
            max_header_count=self.max_header_count,
        )


def _leaf_oserrors(exc: BaseException) -> Iterator[OSError]:
    """The OSErrors behind ``exc`` (trio.open_tcp_stream wraps them in an ExceptionGroup)."""
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            yield from _leaf_oserrors(sub)
        return
    if isinstance(exc, OSError) and exc.errno is not None:
        yield exc
    cause = exc.__cause__
    if cause is not None and cause is not exc:
        yield from _leaf_oserrors(cause)


def _connect_cause(exc: OSError) -> str:
    errnos = {e.errno for e in _leaf_oserrors(exc)}
    if errnos & _UNREACHABLE:
        return "connect/unreachable"
    if errnos & _TIMEDOUT:
        return "connect/timeout"
    return "connect/refused"


class _map_errors:  # noqa: N801 - used like the function it replaces: ``with _map_errors(ep, phase):``
    """Translate foreign exceptions into ``UpstreamError`` (the only place this happens).

    ``with errors: ...`` translates what escapes the block. The per-request hot path wraps its codec
    and socket calls in ``try: ... except Exception as exc: errors.reraise(exc)`` instead, which
    translates the same way and costs nothing while nothing is raised (entering and leaving a
    context manager is two Python calls).
    """

    __slots__ = ("endpoint", "phase")

    def __init__(self, endpoint: str, phase: str) -> None:
        self.endpoint = endpoint
        self.phase = phase

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: Any, exc: Any, tb: Any) -> Literal[False]:
        if exc is None or isinstance(exc, UpstreamError):
            return False
        self._raise_translated(exc)
        return False

    def reraise(self, exc: Exception) -> NoReturn:
        """Raise what ``exc`` (being handled) becomes at this edge: translated, or itself."""
        if not isinstance(exc, UpstreamError):
            self._raise_translated(exc)
        raise exc

    def _raise_translated(self, exc: BaseException) -> None:
        """Raise the ``UpstreamError`` for ``exc``; return when it is not one this edge translates."""
        endpoint = self.endpoint
        if isinstance(exc, OSError):
            if self.phase == "connect":
                local = out_of_resources({e.errno for e in _leaf_oserrors(exc) if e.errno}, endpoint)
                if local is not None:
                    raise local from exc
                cause = _connect_cause(exc)
                detail = next((os.strerror(e.errno) for e in _leaf_oserrors(exc) if e.errno), str(exc))
                raise ConnectError(
                    f"Unable to establish connection to {endpoint}: {detail}", endpoint=endpoint, cause=cause
                ) from exc
            raise UpstreamReset(f"connection to {endpoint} failed: {exc}", endpoint=endpoint) from exc
        if isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError)):
            tls_error = _tls_error_of(exc)
            if tls_error is not None:
                raise tls_error from exc
            raise UpstreamReset(
                f"connection to {endpoint} was closed or reset: {exc or type(exc).__name__}",
                endpoint=endpoint,
            ) from exc
        if isinstance(exc, ProtocolError):
            raise UpstreamReset(f"invalid response from {endpoint}: {exc}", endpoint=endpoint) from exc
        if isinstance(exc, LocalProtocolError):
            raise ProxyInternalError(f"cannot send request to {endpoint}: {exc}", endpoint=endpoint) from exc


def _was_reset(exc: BaseException) -> bool:
    """Whether ``exc`` (a read's failure) is the peer resetting the connection (``ECONNRESET``),
    raised as it is or as the cause of trio's ``BrokenResourceError``."""
    cur: BaseException | None = exc
    for _ in range(4):
        if isinstance(cur, ConnectionResetError):
            return True
        if cur is None:
            return False
        cur = cur.__cause__ or cur.__context__
    return False


def _tls_error_of(exc: BaseException) -> Exception | None:
    """The translated TLS error carried by ``exc`` (``hostproxy.tls.TlsBroken``), or None."""
    from hostproxy.tls.stream import TlsBroken

    cur: BaseException | None = exc
    for _ in range(8):
        if cur is None:
            return None
        if isinstance(cur, TlsBroken):
            return cur.error
        cur = cur.__cause__
    return None


def _timed_receive(conn: _Conn) -> Callable[[int], Awaitable[bytes]]:
    """``receive_some`` for a connection with a read timeout (``conn.receive``, whose errors are
    already translated)."""

    async def receive_some(_max_bytes: int) -> bytes:
        return await conn.receive()

    return receive_some


class _Stale(Exception):
    """Writing the request to a reused connection failed before any byte left: safe to resend."""


def _holds_unread(stream: Any) -> bool:
    """Whether ``stream`` holds bytes it read from the socket that no read returned yet (a TLS layer
    reads ahead: ``TlsStream.buffered``; -1, unknown, counts as holding some). A plain socket stream
    holds none: everything it read went to the codec."""
    buffered = getattr(stream, "buffered", None)
    return buffered is not None and buffered() != 0


def _nothing_left(conn: _Conn) -> bool:
    """Whether the write that just failed on ``conn`` provably sent none of its bytes: known for a
    ``SockStream`` (its failing ``send_all`` says so, and under ``write_timeout`` no earlier piece of
    the write was taken); any other stream (TLS, a host name's trio stream) may have sent a part."""
    stream = conn.stream
    return type(stream) is SockStream and stream.sent_before_failure == 0 and conn.pieces_taken == 0


class _Conn:
    """One TCP connection to the upstream and its h11 client state."""

    __slots__ = (
        "stream",
        "codec",
        "endpoint",
        "reused",
        "idle_since",
        "sender_done",
        "broken",
        "closed",
        "sender_scope",
        "checked_out",
        "sender_finished",
        "poller",
        "errors",
        "born",
        "body_failure",
        "read_timeout",
        "write_timeout",
        "stalled",
        "read_scope",
        "pieces_taken",
        "keep_alive_s",
    )

    def __init__(
        self,
        stream: Any,
        endpoint: str,
        born: float = 0.0,
        limits: CodecLimits | None = None,
        params: PoolParams | None = None,
    ) -> None:
        self.born = born  # when it was opened (the pool's clock)
        self.read_timeout = params.read_timeout_s if params is not None else None
        self.write_timeout = params.write_timeout_s if params is not None else None
        #: Why the connection was cut off (a read or write that stalled), which whoever next fails on
        #: it reports instead of the closed connection it sees.
        self.stalled: UpstreamReset | None = None
        #: The scope of a read under ``read_timeout`` in progress; each write of the request that
        #: completes moves its deadline (``send``).
        self.read_scope: trio.CancelScope | None = None
        #: Pieces of the current ``send`` under ``write_timeout`` the peer took (``WRITE_PIECE`` each):
        #: a write that failed after one did had bytes leave, whatever its failing piece says.
        self.pieces_taken = 0
        self.body_failure: RequestBodyError | None = None  # the client's body failed while being sent
        self.stream = stream
        self.codec = ClientCodec(limits)
        self.endpoint = endpoint
        self.reused = False
        self.idle_since = 0.0
        self.sender_done = True
        self.broken = False
        self.closed = False
        self.sender_scope: trio.CancelScope | None = None
        self.checked_out = True
        self.sender_finished: trio.Event | None = None
        self.poller: select.poll | None = None  # made on the first reuse; registered once
        self.errors = _map_errors(endpoint, "exchange")  # stateless: one per connection, reused
        #: How long it may stay idle and still be reused, from the last ``Keep-Alive`` field its
        #: upstream sent (``keep_alive_reuse_window``); None: none sent, the idle timeout applies.
        self.keep_alive_s: float | None = None

    def readable_while_idle(self) -> bool:
        """True when the upstream closed or wrote to this idle connection (it cannot be reused)."""
        try:
            stream = self.stream
            if type(stream) is SockStream:
                return stream.readable_now()  # (its own poll object, also used for reading)
            if _holds_unread(stream):
                return True
            poller = self.poller
            if poller is None:
                poller = self.poller = select.poll()
                poller.register(self.stream.socket.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
            return bool(poller.poll(0))
        except (OSError, ValueError, AttributeError):
            return True

    async def send(self, data: bytes) -> None:
        write_s = self.write_timeout
        taken = True
        try:
            if write_s is None:
                await self.stream.send_all(data)
            else:
                self.pieces_taken = 0
                taken = await send_all_timed(self.stream, data, write_s, self._piece_taken)
        except Exception as exc:
            self.errors.reraise(exc)
        if not taken:
            assert write_s is not None
            raise self.stall(f"took no bytes of the request for {write_s * 1000:g} ms", "writeTimeoutMs")
        if self.read_scope is not None:
            self._progressed()

    def _piece_taken(self) -> None:
        self.pieces_taken += 1

    def _progressed(self) -> None:
        """A write of the request completed while a read of the response waits (``read_scope``, set
        only under ``read_timeout``): the read gets ``read_timeout`` from now (an upstream need not
        answer while it is still taking the request, as it does while a long body is uploaded)."""
        scope = self.read_scope
        assert scope is not None and self.read_timeout is not None
        scope.deadline = max(scope.deadline, trio.current_time() + self.read_timeout)

    async def receive(self) -> bytes:
        read_s = self.read_timeout
        try:
            if read_s is None:
                return await self.stream.receive_some(RECEIVE_SIZE)
            with trio.move_on_after(read_s) as self.read_scope:
                try:
                    return await self.stream.receive_some(RECEIVE_SIZE)
                finally:
                    self.read_scope = None
        except Exception as exc:
            self.errors.reraise(exc)
        raise self.stall(f"sent nothing for {read_s * 1000:g} ms", "readTimeoutMs")

    def stall(self, what: str, key: str) -> UpstreamReset:
        """Cut the connection off after a read or write that stalled (``socketOptions`` timeout): its
        socket is shut down, so the other direction (a request body being written, a response being
        read) fails at once too, and reports this error (``stalled``)."""
        if self.stalled is None:
            self.stalled = UpstreamReset(
                f"upstream {self.endpoint} {what} (client.socketOptions.{key}): connection closed",
                endpoint=self.endpoint,
            )
            sock = raw_socket(self.stream)
            try:
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return self.stalled

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.sender_done:
            # The request is not sent whole: a TLS connection closes without the close_notify that
            # would vouch for it (``TlsStream.cut_short``).
            cut = getattr(self.stream, "cut_short", None)
            if cut is not None:
                cut()
        if self.sender_scope is not None:
            self.sender_scope.cancel()
        with trio.CancelScope(shield=True):
            await self.stream.aclose()


class PoolState:
    """Pure bookkeeping of one endpoint's connections (decide here, do in ``UpstreamPool``).

    Idle connections are kept in check-in order (``idle``), so those past the pool's idle timeout
    are the first ones. A connection whose upstream announced a shorter keep-alive timeout also has
    a deadline of its own in ``reuse_until`` (only such connections have one); ``next_reuse_end`` is
    no later than the earliest of them (it may be earlier: a deadline leaving with its connection
    does not move it), so that a check-in or check-out with none due costs a comparison."""

    def __init__(self, idle_timeout_s: float | None, max_idle: int, min_size: int = 0) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.max_idle = max_idle
        self.min_size = min_size  # connections (idle or in use) the idle timeout leaves open
        self.idle: deque[Any] = deque()
        self.in_use = 0
        #: Idle connections that stop being reused before the idle timeout: when (the pool's clock).
        self.reuse_until: dict[Any, float] = {}
        self.next_reuse_end = math.inf
        #: Connections closed (or not pooled) for the upstream's keep-alive timeout or ``max=0``.
        self.keep_alive_expired = 0

    def checkout(self, now: float, is_stale: Callable[[Any], bool]) -> tuple[Any | None, list[Any]]:
        """The most recently used healthy idle connection (or None) and the ones to close: those
        found stale, and every one past the idle timeout or its keep-alive deadline (not only those
        in the way)."""
        to_close = self.expired(now)
        idle = self.idle
        until = self.reuse_until
        while idle:
            conn = idle.pop()  # LIFO: the warmest connection first
            if until:
                until.pop(conn, None)
            if is_stale(conn):
                to_close.append(conn)
                continue
            self.in_use += 1
            return conn, to_close
        return None, to_close

    def opened(self) -> None:
        self.in_use += 1

    def checkin(self, conn: Any, now: float, reusable: bool, reuse_for: float | None = None) -> list[Any]:
        """Return ``conn``; the connections to close (``conn`` itself if not reusable). ``reuse_for``:
        how long the connection may stay idle and still be reused, as its upstream announced
        (``keep_alive_reuse_window``; None: the idle timeout alone applies); 0 or less: not at all."""
        self.in_use -= 1
        if not reusable:
            return [conn]
        if reuse_for is not None:
            if reuse_for <= 0:
                self.keep_alive_expired += 1
                return [conn]
            timeout = self.idle_timeout_s
            if timeout is None or reuse_for < timeout:  # never past the pool's own idle timeout
                until = self.reuse_until
                end = until[conn] = now + reuse_for
                if end < self.next_reuse_end or len(until) == 1:
                    self.next_reuse_end = end
        conn.idle_since = now
        idle = self.idle
        idle.append(conn)
        to_close = []
        while len(idle) > self.max_idle:
            gone = idle.popleft()
            if self.reuse_until:
                self.reuse_until.pop(gone, None)
            to_close.append(gone)
        return to_close

    def expired(self, now: float) -> list[Any]:
        """The idle connections past their keep-alive deadline, then those past the idle timeout
        (the oldest first) beyond the ``min_size`` connections it leaves open, taken out."""
        idle = self.idle
        gone: list[Any] = []
        if self.reuse_until and now >= self.next_reuse_end:
            gone = self._past_keep_alive(now)
        timeout = self.idle_timeout_s
        if timeout is None:
            return gone
        # In check-in order: the expired connections are the first ones.
        while idle and now - idle[0].idle_since > timeout and len(idle) + self.in_use > self.min_size:
            conn = idle.popleft()
            if self.reuse_until:
                self.reuse_until.pop(conn, None)
            gone.append(conn)
        return gone

    def _past_keep_alive(self, now: float) -> list[Any]:
        """Take out the idle connections whose keep-alive deadline came (whatever ``min_size``: their
        upstream closes them anyway), and move ``next_reuse_end`` to the earliest one left."""
        until = self.reuse_until
        kept: list[Any] = []
        gone: list[Any] = []
        earliest = math.inf
        for conn in self.idle:
            end = until.get(conn)
            if end is None:
                kept.append(conn)
            elif end <= now:
                del until[conn]
                gone.append(conn)
            else:
                kept.append(conn)
                earliest = min(earliest, end)
        if gone:
            self.idle.clear()
            self.idle.extend(kept)
            self.keep_alive_expired += len(gone)
        self.next_reuse_end = earliest
        return gone

    def next_expiry(self) -> float | None:
        """When the next idle connection the idle timeout may close reaches it, or the next keep-alive
        deadline comes if sooner (None: neither will)."""
        at: float | None = None
        idle = self.idle
        if self.idle_timeout_s is not None and idle and len(idle) + self.in_use > self.min_size:
            at = idle[0].idle_since + self.idle_timeout_s
        if self.reuse_until and (at is None or self.next_reuse_end < at):
            at = self.next_reuse_end
        return at

    def drain(self) -> list[Any]:
        out = list(self.idle)
        self.idle.clear()
        self.reuse_until.clear()
        return out


#: Seconds of idleness a connection keeps for each ``Keep-Alive`` value seen (bounded: values come from
#: upstreams, and one sends the same value again and again).
_KEEP_ALIVE_WINDOWS: dict[bytes, float | None] = {}
_KEEP_ALIVE_WINDOWS_MAX = 256
#: A quoted string (RFC 9110 §5.6.4), from its opening quote; and its escapes.
_QUOTED = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_QUOTED_PAIR = re.compile(rb"\\(.)", re.S)
#: Longest ``timeout``/``max`` value read (digits): longer ones (over 31 years) impose nothing.
_KEEP_ALIVE_DIGITS = 9


def keep_alive_reuse_window(value: bytes) -> float | None:
    """How long (seconds) a connection may stay idle and still be reused, from the value of the
    upstream's ``Keep-Alive`` field (``timeout=5, max=100``); None when it sets no bound.

    ``timeout=N`` (the upstream closes a connection idle N seconds) gives N less a safety margin, the
    smaller of 1 s and N/5: the upstream's timer starts when it wrote the response, before the pool
    read it, and the next request takes time to reach it (a round trip, each side's scheduling),
    so a connection reused at N seconds may be closed as the request arrives. 1 s covers round
    trips and pauses far longer than usual, and N/5 leaves a 1 s timeout 0.8 s of reuse. ``max=0``
    (no more requests on this connection) and ``timeout=0`` give 0: not reused. Parameter names are
    matched case-insensitively, with whitespace around them, separated by commas (or semicolons),
    values possibly quoted; a repeated parameter counts with its smallest value; anything else
    (other parameters, values that are not whole numbers, broken quoting) is ignored."""
    window = _KEEP_ALIVE_WINDOWS.get(value, -1.0)
    if window != -1.0:
        return window
    timeout: int | None = None
    requests_left: int | None = None
    for name, val in _keep_alive_params(value):
        if not (val.isdigit() and len(val) <= _KEEP_ALIVE_DIGITS):
            continue
        n = int(val)
        if name == b"timeout":
            timeout = n if timeout is None else min(timeout, n)
        elif name == b"max":
            requests_left = n if requests_left is None else min(requests_left, n)
    if requests_left == 0:
        window = 0.0
    elif timeout is None:
        window = None
    else:
        window = timeout - min(1.0, timeout / 5)
    if len(_KEEP_ALIVE_WINDOWS) < _KEEP_ALIVE_WINDOWS_MAX:
        _KEEP_ALIVE_WINDOWS[value] = window
    return window


def _keep_alive_params(value: bytes) -> Iterator[tuple[bytes, bytes]]:
    """The ``name=value`` parameters of a ``Keep-Alive`` value: lowercased name, unquoted value.
    Separators inside a quoted string separate nothing; an unterminated one ends the value."""
    i, n = 0, len(value)
    while i < n:
        j = i
        while j < n:
            c = value[j]
            if c == 0x2C or c == 0x3B:  # , ;
                break
            if c == 0x22:  # "
                quoted = _QUOTED.match(value, j)
                if quoted is None:
                    return
                j = quoted.end()
                continue
            j += 1
        name, eq, val = value[i:j].partition(b"=")
        i = j + 1
        if not eq:
            continue
        val = val.strip(b" \t")
        if len(val) >= 2 and val[0] == 0x22 and val[-1] == 0x22:
            val = _QUOTED_PAIR.sub(rb"\1", val[1:-1])
        yield name.strip(b" \t").lower(), val


class _ResponseBodySource:
    """Pulls a response body from the upstream connection; releases the connection at the end."""

    __slots__ = ("_pool", "_conn", "trailers", "_done", "_prefetched")

    def __init__(self, pool: UpstreamPool, conn: _Conn, prefetched: list[bytes] | None = None) -> None:
        self._pool = pool
        self._conn = conn
        self.trailers: Headers | None = None
        self._done = False
        self._prefetched = prefetched

    async def read_chunk(self) -> bytes | None:
        if self._prefetched:
            chunk = b"".join(self._prefetched)
            self._prefetched = None
            return chunk
        if self._done:
            return None
        conn = self._conn
        codec = conn.codec
        try:
            while True:
                try:
                    event = codec.next_event()
                except Exception as exc:
                    conn.errors.reraise(exc)
                if type(event) is Data:
                    if event.data:
                        return event.data
                    continue
                if type(event) is EndOfMessage:
                    if getattr(conn.stream, "eof_without_close_notify", False):
                        # A body framed by the connection's end, ended by a TCP close under TLS
                        # (no close_notify): it may be truncated, so it is not passed on as whole.
                        raise UpstreamReset(
                            f"TLS connection to {conn.endpoint} closed without close_notify before "
                            "the response body ended (a body delimited by the connection's end may "
                            "have been truncated)",
                            endpoint=conn.endpoint,
                        )
                    self._done = True
                    if event.trailers:
                        self.trailers = Headers._trusted(allowed_trailers(event.trailers))
                    await self._pool._release(conn)
                    return None
                if event is NEED_DATA:
                    data = await conn.receive()
                    try:
                        codec.receive_data(data)
                    except Exception as exc:
                        conn.errors.reraise(exc)
                    continue
                raise UpstreamReset(
                    f"connection to {conn.endpoint} closed before the response body ended",
                    endpoint=conn.endpoint,
                )
        except BaseException as exc:
            if not self._done:
                self._done = True
                await self._pool._discard(conn)
            stalled = conn.stalled
            if stalled is not None and isinstance(exc, UpstreamError) and exc is not stalled:
                raise stalled from None  # the request's writer cut the connection off
            raise

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            await self._pool._discard(self._conn)


class _TunnelStream:
    """The upstream side of an upgraded (101) connection; replays bytes h11 already buffered.

    ``client.socketOptions`` apply as to an exchange: a write the upstream takes no bytes of for
    ``write_timeout`` (in :data:`~hostproxy.http.sockopts.WRITE_PIECE` pieces), or a wait for its bytes
    with nothing moved either way for ``read_timeout`` (each piece it took moves the deadline, as
    ``_Conn.send`` does), cuts the connection off (``_Conn.stall``); :attr:`stalled` then says why."""

    def __init__(self, pool: UpstreamPool, conn: _Conn, pending: bytes) -> None:
        self._pool = pool
        self._conn = conn
        self._pending = pending

    @property
    def stalled(self) -> UpstreamReset | None:
        """Why a timeout cut the connection off (None: none did)."""
        return self._conn.stalled

    async def send_all(self, data: bytes) -> None:
        conn = self._conn
        write_s = conn.write_timeout
        if write_s is None and conn.read_timeout is None:
            await conn.stream.send_all(data)
            return
        progressed = None if conn.read_timeout is None else self._progressed
        if not await send_all_timed(conn.stream, data, write_s, progressed):
            assert write_s is not None
            raise conn.stall(
                f"took no bytes for {write_s * 1000:g} ms on an upgraded (101) connection", "writeTimeoutMs"
            )

    def _progressed(self) -> None:
        if self._conn.read_scope is not None:
            self._conn._progressed()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        conn = self._conn
        read_s = conn.read_timeout
        if read_s is None:
            return await conn.stream.receive_some(max_bytes or RECEIVE_SIZE)
        with trio.move_on_after(read_s) as conn.read_scope:
            try:
                return await conn.stream.receive_some(max_bytes or RECEIVE_SIZE)
            finally:
                conn.read_scope = None
        raise conn.stall(
            f"sent nothing and took no bytes for {read_s * 1000:g} ms on an upgraded (101) connection",
            "readTimeoutMs",
        )

    async def aclose(self) -> None:
        await self._pool._discard(self._conn)


class NurseryOwner:
    """``async with pool:`` for pools given no nursery: they open their own (for the tasks that write
    request bodies and read connections) and, on exit, close the pool and cancel those tasks."""

    _nursery: trio.Nursery | None
    _own_nursery_cm: Any

    _closed: bool
    _clock: Callable[[], float]
    _reaper: trio.CancelScope | None
    #: When the running reaper wakes next (the pool's clock).
    _reap_at: float = math.inf

    async def aclose(self) -> None:  # pragma: no cover - every pool defines it
        raise NotImplementedError

    async def prune(self) -> None:  # pragma: no cover - every pool defines it
        raise NotImplementedError

    def _next_expiry(self) -> float | None:  # pragma: no cover - every pool defines it
        """When the next idle connection reaches its idle timeout (None: none will)."""
        raise NotImplementedError

    def _start_reaper(self) -> None:
        """A connection went idle: run ``_reap`` in the pool's nursery, unless it runs already (or the
        pool is closed, or has no nursery yet)."""
        if self._reaper is None and not self._closed and self._nursery is not None:
            self._reaper = trio.CancelScope()
            self._nursery.start_soon(self._reap, self._reaper)

    async def _reap(self, scope: trio.CancelScope) -> None:
        """The idle reaper (run in the pool's nursery as ``self._reaper``): close idle connections as
        they reach the idle timeout; ends once none will (the next idle one starts it again)."""
        try:
            with scope:
                while True:
                    expiry = self._next_expiry()
                    if expiry is None or self._closed:
                        return
                    self._reap_at = expiry
                    await trio.sleep(max(expiry - self._clock(), 0.0) + 0.001)
                    await self.prune()
        finally:
            if self._reaper is scope:
                self._reaper = None

    async def __aenter__(self) -> Any:
        if self._nursery is None:
            self._own_nursery_cm = trio.open_nursery()
            self._nursery = await self._own_nursery_cm.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        with trio.CancelScope(shield=True):
            await self.aclose()
        if self._own_nursery_cm is None:
            return None
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()  # stop the pool's tasks still running
        cm, self._own_nursery_cm = self._own_nursery_cm, None
        self._nursery = None
        return bool(await cm.__aexit__(*exc_info))


class UpstreamPool(NurseryOwner):
    """Keep-alive HTTP/1.1 connections to one endpoint (see the module docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        params: PoolParams | None = None,
        *,
        nursery: trio.Nursery | None = None,
        clock: Callable[[], float] | None = None,
        connector: Connector | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.params = params or PoolParams()
        self.endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.errors = _map_errors(self.endpoint, "exchange")  # stateless: made once, reused
        self._nursery = nursery
        self._own_nursery_cm: Any = None
        # The clock: ``clock``, or trio's (``trio.current_time``), whose reading is taken from the
        # run's clock object directly once a request is made (one call where it makes three).
        self._clock = clock or trio.current_time
        self._connector = connector
        params = self.params
        self._limits = params.codec_limits()
        self._state = PoolState(params.idle_timeout_s, params.max_idle, params.min_size)
        self._life_s = params.life_time_s
        self._open = 0
        # ``max_size``: connections being opened count too; requests wait for room in ``_room``.
        self._opening = 0
        self._waiters = 0
        self._room = trio.lowlevel.ParkingLot()
        self._counters = {
            "connects": 0,
            "connect_failures": 0,
            # connects still under way when their request gave up (its deadline, its caller gone):
            # a request timeout spent connecting never reached the application
            "connects_abandoned": 0,
            "reused": 0,
            "stale_discarded": 0,
            "resent": 0,
        }
        self._closed = False
        # The task that closes idle connections at the idle timeout (``_reap``), while one runs.
        self._reaper: trio.CancelScope | None = None

    def statistics(self) -> dict[str, int]:
        idle = len(self._state.idle)
        return {
            "open": self._open,
            "idle": idle,
            "in_use": self._state.in_use,
            "opening": self._opening,
            "waiters": self._waiters,
            **self._counters,
            "keep_alive_expired": self._state.keep_alive_expired,
        }

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<UpstreamPool {self.endpoint} open={s['open']} idle={s['idle']} in_use={s['in_use']}>"

    async def aclose(self) -> None:
        """Close idle connections and refuse new requests (in-flight ones finish)."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        if self._waiters:
            self._room.unpark_all()  # requests waiting at max_size: this endpoint is gone
        for conn in self._state.drain():
            await self._close(conn)

    async def prune(self) -> None:
        """Close idle connections past the idle timeout."""
        for conn in self._state.expired(self._clock()):
            await self._close(conn)

    # -- connections -----------------------------------------------------------------------------

    async def _close(self, conn: _Conn) -> None:
        if not conn.closed:
            self._open -= 1
            if self._waiters:
                self._room.unpark()  # room for one more connection
            await conn.aclose()

    async def _connect(self, timeout_s: float) -> _Conn:
        if self._connector is not None:
            # The connector applies the timeout and raises UpstreamError (connect/*, tls) itself.
            stream = await self._connector(self.host, self.port, timeout_s)
            opts = self.params.socket_options
            if opts is not None and opts.per_connection:
                configure_connection(stream, opts)
            self._counters["connects"] += 1
            self._open += 1
            return _Conn(stream, self.endpoint, self._clock(), self._limits, self.params)
        with _map_errors(self.endpoint, "connect"):
            with trio.move_on_after(timeout_s) as scope:
                # An IP address gets a SockStream; a host name is resolved by trio.
                stream = await open_tcp(self.host, self.port)
                if stream is None:
                    stream = await trio.open_tcp_stream(self.host, self.port)
                else:
                    # A burst's requests go out together: the upstream is woken once, not per request.
                    stream.yield_before_send = True
            if scope.cancelled_caught:
                raise ConnectError(
                    f"Unable to establish connection to {self.endpoint}: "
                    f"no answer within connect timeout {timeout_s * 1000:g} ms",
                    endpoint=self.endpoint,
                    cause="connect/timeout",
                )
        opts = self.params.socket_options
        if opts is not None and opts.per_connection:
            configure_connection(stream, opts)
        self._counters["connects"] += 1
        self._open += 1
        return _Conn(stream, self.endpoint, self._clock(), self._limits, self.params)

    def _checkout(self) -> tuple[_Conn | None, list[_Conn]]:
        """An idle connection to reuse (checked out) or None, and the stale or expired ones the
        caller closes."""
        clock = self._clock
        if clock is trio.current_time:
            clock = self._clock = trio.lowlevel.current_clock().current_time
        conn, to_close = self._state.checkout(clock(), _Conn.readable_while_idle)
        if to_close:
            self._counters["stale_discarded"] += len(to_close)
        if conn is not None:
            conn.checked_out = True
            conn.reused = True
            self._counters["reused"] += 1
        return conn, to_close

    async def _open_checked_out(self, connect_timeout_s: float) -> _Conn:
        """A new connection, checked out; at ``max_size``, an idle connection or room for a new one,
        waited for within the connect timeout."""
        max_size = self.params.max_size
        if max_size is not None and self._open + self._opening >= max_size:
            idle = await self._wait_for_room(max_size, connect_timeout_s)
            if idle is not None:
                return idle
        self._opening += 1
        try:
            conn = await self._connect(connect_timeout_s)
        except BaseException as exc:
            if isinstance(exc, UpstreamError):
                self._counters["connect_failures"] += 1
            elif isinstance(exc, trio.Cancelled):
                self._counters["connects_abandoned"] += 1
            if self._waiters:
                self._room.unpark()  # the place this connect held is free again
            raise
        finally:
            self._opening -= 1
        self._state.opened()
        return conn

    async def _wait_for_room(self, max_size: int, timeout_s: float) -> _Conn | None:
        """Wait, within ``timeout_s``, until a connection is checked in (returned, checked out) or
        one closes (None: the caller opens one). Raises ``PoolExhausted`` when ``max_waiters``
        requests already wait, ``ConnectError`` (``connect/timeout``) when no room came in time."""
        max_waiters = self.params.max_waiters
        if max_waiters is not None and self._waiters >= max_waiters:
            raise PoolExhausted(
                f"connection pool for {self.endpoint} is full: {max_size} connections (maxSize) in use "
                f"and {self._waiters} requests (maxWaiters) already waiting for one; raise "
                "client.hostConnectionPool.maxSize or maxWaiters, or add endpoints",
                endpoint=self.endpoint,
            )
        self._waiters += 1
        try:
            with trio.move_on_after(timeout_s):
                while True:
                    await self._room.park()
                    if self._closed:
                        # Nothing was sent: the client may requeue it on another endpoint.
                        raise ProxyInternalError(
                            f"pool for {self.endpoint} was closed (the endpoint left the set) while "
                            "the request waited for a connection",
                            endpoint=self.endpoint,
                            retryable=True,
                        )
                    conn, to_close = self._checkout()
                    for c in to_close:
                        await self._close(c)
                    if conn is not None:
                        return conn
                    if self._open + self._opening < max_size:
                        return None
        finally:
            self._waiters -= 1
        self._counters["connect_failures"] += 1
        raise PoolWaitTimeout(
            f"Unable to get a connection to {self.endpoint}: all {max_size} connections (maxSize) "
            f"stayed in use for the connect timeout, {timeout_s * 1000:g} ms; raise "
            "client.hostConnectionPool.maxSize or connectTimeoutMs, or add endpoints",
            endpoint=self.endpoint,
        )

    async def _release(self, conn: _Conn) -> None:
        """The response ended: keep the connection if the exchange was clean."""
        if not conn.sender_done and conn.sender_finished is not None:
            if conn.codec.request_sent and self._nursery is not None:
                # Every byte of the request was produced; the writer is flushing the last ones. The
                # response is whole: the reader goes on, and the connection is checked in (or closed)
                # once the writer is done, by a task of the pool's nursery (where the writer runs).
                self._nursery.start_soon(self._release_after_writer, conn)
                return
            if conn.sender_scope is not None:
                conn.sender_scope.cancel()  # the request body is no longer wanted
        for c in self._checked_in(conn):
            await self._close(c)

    async def _release_after_writer(self, conn: _Conn) -> None:
        """``_release`` for a connection whose request writer is still flushing: wait for it (at most
        1 s), then check the connection in, kept only if the writer finished."""
        assert conn.sender_finished is not None
        try:
            with trio.move_on_after(1.0):
                await conn.sender_finished.wait()
        finally:
            if not conn.sender_done and conn.sender_scope is not None:
                conn.sender_scope.cancel()
            with trio.CancelScope(shield=True):
                for c in self._checked_in(conn):
                    await self._close(c)

    def _checked_in(self, conn: _Conn) -> list[_Conn]:
        """Check in a connection whose response ended (kept if the exchange was clean); the
        connections the caller closes."""
        codec = conn.codec
        life_s = self._life_s
        reusable = (
            not self._closed
            and not conn.broken
            and not conn.closed
            and conn.sender_done
            and codec.can_reuse
            and not codec.trailing_data()  # bytes past the response: never the next one's
            and (type(conn.stream) is SockStream or not _holds_unread(conn.stream))  # (read ahead by TLS)
            and (life_s is None or self._clock() - conn.born < life_s)
        )
        if reusable:
            codec.start_next_cycle()
        elif not conn.checked_out:
            return [conn]
        if not conn.checked_out:
            return []
        conn.checked_out = False
        now = self._clock()
        window = conn.keep_alive_s
        if reusable:
            if window is not None:
                self._rearm_reaper(now + window)
            elif self._reaper is None and self._state.idle_timeout_s is not None:
                self._start_reaper()
            if self._waiters:
                self._room.unpark()  # an idle connection for a request waiting at max_size
        return self._state.checkin(conn, now, reusable, window)

    def _rearm_reaper(self, at: float) -> None:
        """Have the idle reaper run by ``at`` (a keep-alive deadline): started if none runs, started
        anew if the one running sleeps past it."""
        reaper = self._reaper
        if reaper is not None and self._reap_at > at:
            reaper.cancel()
            self._reaper = None
        if self._reaper is None:
            self._start_reaper()

    def _next_expiry(self) -> float | None:
        return self._state.next_expiry()

    async def _discard(self, conn: _Conn) -> None:
        await self._checkin(conn, False)

    async def _checkin(self, conn: _Conn, reusable: bool) -> None:
        if not conn.checked_out:
            if not reusable:
                await self._close(conn)
            return
        conn.checked_out = False
        for c in self._state.checkin(conn, self._clock(), reusable):
            await self._close(c)

    # -- the exchange ----------------------------------------------------------------------------

    async def request(
        self,
        req: Request,
        *,
        connect_timeout: float | None = None,
        response_timeout: float | None = None,
    ) -> Response:
        """Send ``req``; returns once the response head arrived, with the body still streaming.

        ``connect_timeout`` (seconds) defaults to ``params.connect_timeout_ms``;
        ``response_timeout`` bounds the wait for the response head (``timeout/request``).
        Raises ``UpstreamError`` subclasses; ``retryable`` tells whether the request was sent.
        """
        if self._closed:
            raise ProxyInternalError(
                f"pool for {self.endpoint} is closed", endpoint=self.endpoint, retryable=True
            )
        timeout = connect_timeout if connect_timeout is not None else self.params.connect_timeout_ms / 1000
        fresh = False
        while True:
            conn: _Conn | None = None
            if not fresh:
                conn, to_close = self._checkout()
                for c in to_close:
                    await self._close(c)
            if conn is None:
                conn = await self._open_checked_out(timeout)
            try:
                await self._send_request(conn, req)
                # Read here rather than in a helper coroutine: every level between the server's
                # loop and this read is one more frame to resume when the response arrives.
                if response_timeout is None:
                    return await self._read_head(conn, req)
                with trio.move_on_after(response_timeout):
                    return await self._read_head(conn, req)
                raise RequestTimeout(
                    f"no response from {self.endpoint} within {response_timeout:g}s", endpoint=self.endpoint
                )
            except _Stale:
                await self._discard(conn)
                self._counters["resent"] += 1
                fresh = True
            except BaseException as exc:
                await self._discard(conn)
                failure = conn.body_failure
                if failure is not None and isinstance(exc, UpstreamError):
                    raise failure from None  # the exchange ended because the client's body failed
                stalled = conn.stalled
                if stalled is not None and isinstance(exc, UpstreamError) and exc is not stalled:
                    raise stalled from None  # the request's writer cut the connection off
                raise

    def _head(self, req: Request) -> list[tuple[bytes, bytes]]:
        """The request's fields without its framing, then the framing of its body, then ``Host`` if
        it has none (one pass over the fields)."""
        items: list[tuple[bytes, bytes]] = []
        has_host = False
        for field in req.headers._items:  # the list itself: no iterator call
            name = field[0]
            if name in _FRAMING:
                continue
            if name == b"host":
                has_host = True
            items.append(field)
        body = req.body
        length = body.content_length
        if length is None:
            items.append((b"transfer-encoding", b"chunked"))
        elif length > 0 or req.method in _BODY_METHODS:
            items.append((b"content-length", b"%d" % length))
        if not has_host:
            items.append((b"host", (req.authority or self.endpoint).encode("latin-1")))
        return items

    async def _send_request(self, conn: _Conn, req: Request) -> None:
        """Write the request: a small in-memory body with its head in one write, others by a task
        in the pool's nursery (so the response is read meanwhile). Raises ``_Stale`` when a reused
        connection failed before any byte of the request left."""
        codec = conn.codec
        errors = self.errors
        try:
            head = codec.send_request(
                req.method.encode("ascii"), req.target.encode("latin-1"), self._head(req)
            )
        except Exception as exc:
            errors.reraise(exc)
        body = req.body
        # A larger in-memory body (one kept for retries) is written by a task, as a streamed one is:
        # an upstream that answers before it read it all is heard at once, not waited on.
        data = body.peek_memory() if body.in_memory else None
        if data is not None and len(data) <= _INLINE_BODY_BYTES:
            # Head, body and end in one write (the common small request); the body is consumed only
            # once the write succeeded, so a stale pooled connection can be retried with it intact.
            trailers = body.trailers if body.content_length is None else None
            try:
                out = (
                    head
                    + (codec.send_data(data) if data else b"")
                    + codec.send_end(trailers.items() if trailers else None)
                )
            except Exception as exc:
                errors.reraise(exc)
            try:
                if conn.write_timeout is None:
                    await conn.stream.send_all(out)
                else:
                    await conn.send(out)
            except Exception as exc:
                try:
                    errors.reraise(exc)
                except UpstreamError:
                    if conn.reused and _nothing_left(conn):
                        raise _Stale() from None
                    raise
            if not body.done:  # a done body (the empty one) has nothing to consume
                body.consume_memory()
            return
        try:
            await conn.send(head)
        except UpstreamError:
            if conn.reused:
                raise _Stale() from None
            raise
        if self._nursery is None:
            raise ProxyInternalError(
                f"UpstreamPool({self.endpoint}) needs a nursery to stream request bodies: use "
                "'async with UpstreamPool(...)' or pass nursery=",
                endpoint=self.endpoint,
            )
        conn.sender_done = False
        conn.sender_scope = trio.CancelScope()
        conn.sender_finished = trio.Event()
        self._nursery.start_soon(self._send_body, conn, body)

    async def _send_body(self, conn: _Conn, body: Body) -> None:
        codec = conn.codec
        assert conn.sender_scope is not None and conn.sender_finished is not None
        try:
            await self._send_body_inner(conn, body, codec)
        finally:
            conn.sender_finished.set()

    async def _send_body_inner(self, conn: _Conn, body: Body, codec: ClientCodec) -> None:
        assert conn.sender_scope is not None
        with conn.sender_scope:
            try:
                async for chunk in body:
                    await conn.send(codec.send_data(chunk))
                trailers = body.trailers
                await conn.send(codec.send_end(trailers.items() if trailers else None))
                conn.sender_done = True
                return
            except UpstreamError:
                # The upstream stopped reading; its response (maybe already sent) is still read.
                conn.broken = True
            except Exception as exc:
                # The client's body failed (client gone or malformed): abort the upstream exchange
                # so that the response reader stops too, and tell it why (``request``).
                log.info("http.upstream.request_body_failed", endpoint=self.endpoint, error=str(exc))
                if isinstance(exc, RequestBodyError):
                    conn.body_failure = exc
                conn.broken = True
                await self._close(conn)
            finally:
                if not conn.sender_done:
                    await body.aclose()
        conn.broken = True

    async def _read_head(self, conn: _Conn, req: Request) -> Response:
        codec = conn.codec
        errors = self.errors
        stream = conn.stream
        # Every read here comes after the codec took all it had: the bytes are probably not there yet.
        receive_some = stream.receive_polled if type(stream) is SockStream else stream.receive_some
        if conn.read_timeout is not None:
            receive_some = _timed_receive(conn)
        interim: list[tuple[int, Headers]] | None = None
        interim_count = 0
        while True:
            try:
                event = codec.next_event()
                if event is NEED_DATA:
                    data = await receive_some(RECEIVE_SIZE)
                    if not data and not codec.trailing_data():
                        raise self._closed_before_response(conn, interim_count)
                    codec.receive_data(data)
                    continue
            except Exception as exc:
                if _was_reset(exc) and not codec.trailing_data():
                    # (The keep-alive race shows as a reset as often as a close: the upstream's
                    # kernel resets a connection whose socket was closed when the request arrived.)
                    raise self._closed_before_response(conn, interim_count, reset=True) from exc
                errors.reraise(exc)
            if type(event) is Informational:
                status = event.status
                if status == 101:
                    if req.upgrade is None or not codec.switched:
                        raise UpstreamReset(
                            f"invalid response from {self.endpoint}: {UNASKED_101}", endpoint=self.endpoint
                        )
                    headers = strip_hop_by_hop(
                        Headers._trusted(event.headers), keep_upgrade=True, request=False
                    )
                    tunnel = _TunnelStream(self, conn, codec.trailing_data())
                    return Response(101, b"Switching Protocols", headers, Body.empty(), upgraded=tunnel)
                interim_count += 1
                if interim_count > MAX_INTERIM_RESPONSES:
                    raise UpstreamReset(
                        f"invalid response from {self.endpoint}: more than {MAX_INTERIM_RESPONSES} interim "
                        "(1xx) responses before the final response",
                        endpoint=self.endpoint,
                    )
                # RFC 9110 §15.2: a proxy forwards the 1xx it did not ask for (103 Early Hints, 102...),
                # with the final response. ``100 Continue`` is not: the server answers the client's
                # ``Expect`` itself, when the request body is first read.
                if status != 100:
                    if interim is None:
                        interim = []
                    interim.append((status, strip_hop_by_hop(Headers._trusted(event.headers), request=False)))
                continue
            if type(event) is ResponseHead:
                response = await self._response(conn, req, event)
                if interim is not None:
                    response.interim = interim
                return response
            if type(event) is ConnectionClosed:
                raise UpstreamReset(
                    f"connection to {self.endpoint} closed before a response arrived", endpoint=self.endpoint
                )
            raise UpstreamReset(f"unexpected {event!r} from {self.endpoint}", endpoint=self.endpoint)

    def _closed_before_response(self, conn: _Conn, interim: int, *, reset: bool = False) -> UpstreamReset:
        """The error for a connection the upstream closed (a FIN; ``reset``: a reset) after the request
        was written and before any byte of its (final) response. On a reused connection this is most
        often the keep-alive race: the upstream closed it as idle while the request was on its way."""
        what = (
            f"upstream {self.endpoint} "
            f"{'reset' if reset else 'closed'} the connection before sending a response"
        )
        if interim:
            what += f" (after {interim} interim 1xx response{'s' if interim > 1 else ''})"
        if conn.reused:
            idle_ms = max(self._clock() - conn.idle_since, 0.0) * 1000
            what += f"; it was a reused connection, returned to the pool {idle_ms:.0f} ms earlier"
            if conn.keep_alive_s is not None:
                # The pool honoured the upstream's announced timeout: the upstream closed sooner.
                what += (
                    f", within the {conn.keep_alive_s * 1000:.0f} ms its Keep-Alive field allows (its "
                    "timeout less a margin): the upstream closes idle connections sooner than it announces, "
                    "so set client.hostConnectionPool.idleTimeMs below its real keep-alive timeout"
                )
            else:
                idle_s = self.params.idle_timeout_s
                pool_idle = f"{idle_s * 1000:.0f} ms" if idle_s is not None else "none"
                what += (
                    ": an upstream whose keep-alive timeout is shorter than the pool's idle time "
                    f"(client.hostConnectionPool.idleTimeMs ({pool_idle})) closes connections the pool "
                    "still holds, so set idleTimeMs below the upstream's keep-alive timeout"
                )
            what += "; the io.l5d.http.retryableRead5XX and retryableIdempotent5XX classifiers retry such failures"
        return UpstreamReset(what, endpoint=self.endpoint)

    def _prefetch_body(self, conn: _Conn, content_length: int | None) -> Body:
        """Take the body bytes that already arrived with the head, without waiting for more.

        A small response usually arrives whole in one read: it is then returned as an in-memory body
        (the message ended: the caller releases the connection, so the server can write head, body
        and end in one send). Otherwise the bytes at hand lead the streamed body. A connection that
        closed before the body ended raises ``UpstreamReset`` (``request`` discards the connection).
        """
        codec = conn.codec
        chunks: list[bytes] = []
        while True:
            try:
                ev = codec.next_event()
            except Exception as exc:
                self.errors.reraise(exc)
            t = type(ev)
            if t is Data:
                if ev.data:  # type: ignore[union-attr]
                    chunks.append(ev.data)  # type: ignore[union-attr]
                continue
            if t is EndOfMessage:
                trailers = Headers._trusted(allowed_trailers(ev.trailers)) if ev.trailers else None  # type: ignore[union-attr]
                return Body.buffered(b"".join(chunks), content_length if not trailers else None, trailers)
            if ev is NEED_DATA or ev is PAUSED:
                return Body(_ResponseBodySource(self, conn, chunks or None), content_length)
            raise UpstreamReset(
                f"connection to {conn.endpoint} closed before the response body ended", endpoint=conn.endpoint
            )

    async def _response(self, conn: _Conn, req: Request, event: ResponseHead) -> Response:
        status = event.status
        no_body = status == 204 or status == 304 or req.method == "HEAD"
        content_length: int | None = None
        # The upstream's Keep-Alive field (hop-by-hop: dropped here) bounds how long the connection
        # may stay idle and be reused; noted as the fields are stripped, so that its absence costs
        # nothing more.
        window: float | None
        if no_body:
            headers, _, keep_alive = strip_response_fields(event.headers, keep_length=True)
            window = keep_alive_reuse_window(keep_alive) if keep_alive is not None else None
        else:
            # Without hop-by-hop fields and Content-Length (the body is re-framed), in one pass; for
            # a head the codec remembers, once (its memo keeps the result, which depends on the
            # fields alone).
            memo = event.memo
            stripped = memo.stripped if memo is not None else None
            if stripped is not None:
                headers, cl, window = Headers._stripped(list(stripped[0])), stripped[1], stripped[2]
            else:
                headers, cl, keep_alive = strip_response_fields(event.headers)
                window = keep_alive_reuse_window(keep_alive) if keep_alive is not None else None
                if memo is not None and headers._hop_free:
                    memo.stripped = (tuple(headers._items), cl, window)
            if cl is not None:
                content_length = int(cl)
        if window is not None:
            conn.keep_alive_s = window  # before the connection may go back to the pool, below
        data = _whole_body(conn.codec) if _whole_body is not None else None
        if data is not None:
            # The whole body was at hand (or there is none): taken in one call, as the events below
            # would give it.
            body = Body.empty() if no_body or content_length == 0 else Body.buffered(data, content_length)
        elif no_body or content_length == 0:
            try:
                end = codec_event = conn.codec.next_event()
            except Exception as exc:
                self.errors.reraise(exc)
            while codec_event is NEED_DATA:  # pragma: no cover - h11 frames an empty body at once
                with self.errors:
                    conn.codec.receive_data(await conn.receive())
                    end = codec_event = conn.codec.next_event()
            if type(end) is not EndOfMessage:
                raise UpstreamReset(f"unexpected {end!r} after an empty body", endpoint=self.endpoint)
            body = Body.empty()
        else:
            body = self._prefetch_body(conn, content_length)
        if body.in_memory:  # the message ended: the connection goes back to the pool now
            if conn.sender_done or conn.sender_finished is None:
                # ``_release`` without its coroutine: no request body writer to wait for.
                for c in self._checked_in(conn):
                    await self._close(c)
            else:
                await self._release(conn)
        version = _VERSIONS.get(event.http_version) or event.http_version.decode("ascii")
        return Response(status, event.reason, headers, body, version)
