"""HTTP/2 connections to one upstream endpoint: many streams over few connections.

Theory of operation
-------------------
``H2UpstreamPool(host, port, params, *, nursery)`` has the API of ``hostproxy.http.UpstreamPool``:
``request(req)`` returns the ``Response`` at the response HEADERS with the body still streaming.
Every request is a stream on a shared prior-knowledge HTTP/2 connection (an ``H2Link``); a new
connection is opened only when none can take another stream (the peer's MAX_CONCURRENT_STREAMS,
or the current one is draining or dead).

* **One connect at a time, shared.**  A request that finds no connection with room starts a
  connect (a ``_Connect``: a task in the pool's nursery) or, when one is already under way, waits
  for it; every waiter reads the same outcome, so N concurrent first requests open one connection,
  and a failed connect fails all of them at once with its ``UpstreamError`` (the next request
  starts a fresh connect).  A waiter that finds the new connection already filled by the others
  starts or joins the next connect, so connections are opened one by one, only as needed.
* **A connect ends at the peer's SETTINGS.**  A connection is used only once the upstream's first
  SETTINGS frame arrived (TCP or the connector, then the preface, then SETTINGS, all within the
  connect timeout), so its MAX_CONCURRENT_STREAMS is known before streams are put on it.  A peer
  that never sends SETTINGS (not an HTTP/2 server) fails the connect with ``connect/timeout``; one
  that closes first fails it with ``upstream/reset`` (retryable: no request was sent).  A waiter
  with a shorter connect timeout than the connect's stops waiting at its own deadline.

* **Request bodies** are sent by a task in the pool's nursery while the response is read (full
  duplex), paced by the upstream's flow-control window; the client's body is read only as fast as
  the upstream accepts it.  Response DATA is acknowledged only when the caller reads it.
* **Cancellation.**  A caller cancelled while waiting for the response head, or closing the
  response body before its end, resets the upstream stream with CANCEL; a client body that fails
  (the client reset its stream) resets it too.  A stream reset from this side is over: it leaves
  the connection's books at once (``_UpLink.reset``), so its slot is free for the next stream.
* **Stalls.**  A request body the upstream takes no more of (its window stays at zero for
  ``stall_timeout_s``) is reset from this side with CANCEL and reported as ``H2StreamStalled``
  (cause ``upstream/reset``: the upstream stopped taking the request), never as the upstream's reset.
* **GOAWAY** drains the connection: streams up to its last-stream-id continue; streams above it
  were not processed and are sent again on a fresh connection, as are streams refused with
  REFUSED_STREAM before a response.  A request body can be replayed only while what was sent of it
  fits ``retry_buffer_bytes`` (kept as it is sent); otherwise the failure is reported.  The same
  holds when h2 itself refuses a new stream (``TooManyStreamsError``: its count of open streams is
  above the link's), which also retires that connection.
* **Retiring a connection** (drained after GOAWAY, idle too long, pool closed) sends GOAWAY after
  whatever is still queued (a last END_STREAM, WINDOW_UPDATE or RST_STREAM) and closes the socket
  once the writer has flushed (at most ``FLUSH_ON_CLOSE_S``).
* **Keepalive.**  Each connection sends a PING every ``ping_interval_s``; no ACK within
  ``ping_timeout_s`` fails the connection (its streams fail with ``upstream/reset``), so a half-dead
  connection is noticed before requests hang on it.  At most ``MAX_PINGS_WITHOUT_DATA`` (2) PINGs go
  out until the upstream next sends HEADERS, DATA or a connection WINDOW_UPDATE: gRPC servers
  (grpc-core, grpc-go) count each further PING as a "strike" and, after 2, close the connection
  with GOAWAY ENHANCE_YOUR_CALM "too_many_pings", killing a long-lived stream that is merely quiet.
* **Idle connections.**  A connection whose last stream ended is idle from then (``idle_since``);
  a task in the pool's nursery (``_reap``, running while some connection is idle) retires it at
  ``idle_since + idle_timeout_s`` (``prune()`` does the same on demand).
* **Closing.**  ``aclose()`` refuses new requests, retires idle connections now and the others
  after their last stream (in-flight streams finish, as on an HTTP/1.1 pool); cancelling the pool's
  nursery (shutdown, or leaving ``async with``) stops whatever is left.
* **Statistics** have the HTTP/1.1 pool's keys: ``open``, ``idle``, ``in_use`` (streams),
  ``opening`` (1 while a connect is under way) and ``waiters`` (0: nothing waits at a ``maxSize``).
* **TLS.**  With a ``connector`` (see ``hostproxy.http.upstream.Connector``; ALPN ``h2``) connections
  are opened by it; its ``UpstreamError`` (cause ``tls`` for a failed handshake) passes unchanged, and
  a connection that dies of a TLS failure seen after the handshake (a TLS 1.3 server rejecting the
  client certificate) fails its streams with that ``tls`` error rather than ``upstream/reset``.
* **Errors** are ``UpstreamError`` subclasses; a stream reset by the upstream after its head is
  reported to the body's reader as ``H2StreamReset`` carrying the RST_STREAM ``error_code``, which
  the server passes back to its client.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import structlog
import trio

from hostproxy.h2 import fields as h2fields
from hostproxy.h2.limits import H2Limits
from hostproxy.h2.link import (
    CANCEL,
    NO_ERROR,
    REFUSED_STREAM,
    H2Link,
    InboundBody,
    Stalled,
    StreamGone,
    StreamState,
)
from hostproxy.http.errors import (
    ConnectError,
    ProxyInternalError,
    RequestBodyError,
    RequestTimeout,
    UpstreamError,
    UpstreamReset,
)
from hostproxy.http.hopbyhop import strip_hop_by_hop
from hostproxy.http.message import Body, Headers, Request, Response, never_indexed_of
from hostproxy.http.sockopts import configure_connection
from hostproxy.http.upstream import Connector, NurseryOwner, PoolParams, _map_errors

__all__ = ["H2ClientSettings", "H2StreamReset", "H2StreamStalled", "H2UpstreamPool"]

log = structlog.get_logger("hostproxy.h2.upstream")

# How long a retiring connection may take to write what it still has queued (its last END_STREAM,
# WINDOW_UPDATE or RST_STREAM, then GOAWAY) before it is closed anyway.
FLUSH_ON_CLOSE_S = 1.0
#: PINGs sent while the upstream has written no HEADERS, DATA or connection WINDOW_UPDATE since the
#: last one: gRPC servers allow 2 (``GRPC_ARG_HTTP2_MAX_PING_STRIKES``, grpc-go's ``pingStrikes``)
#: and answer the next with GOAWAY "too_many_pings".
MAX_PINGS_WITHOUT_DATA = 2


def _goaway_reason(code: Any, debug: bytes | None) -> str:
    try:
        name = h2.errors.ErrorCodes(int(code)).name
    except ValueError:
        name = f"error code {int(code)}"
    text = (debug or b"")[:200].decode("utf-8", "replace")
    return f"it sent GOAWAY {name}" + (f": {text}" if text else "")


_PEER_WROTE = frozenset(
    {h2.events.ResponseReceived, h2.events.DataReceived, h2.events.TrailersReceived, h2.events.WindowUpdated}
)


#: The received header blocks whose fields are checked (as h2's ``validate_inbound_headers`` would),
#: with h2's validation flags for each.
_CHECKED = {
    h2.events.ResponseReceived: h2fields.RESPONSE,
    h2.events.InformationalResponseReceived: h2fields.RESPONSE,
    h2.events.TrailersReceived: h2fields.TRAILERS,
}


def _status_problem(fields: list[tuple[bytes, bytes]]) -> str | None:
    """Why the ``:status`` of a response head (one h2 found there) is no status code, or None: it is
    three digits (RFC 9110 §15; what the HTTP/1.1 codec reads in a status line). h2 does not look at
    it, and ``int()`` would take ``+200``, ``2_00`` or ``99999``."""
    for n, v in fields:
        if n == b":status":
            if len(v) == 3 and v.isdigit():
                return None
            return f"Response :status {v[:40]!r} is not a three-digit status code (RFC 9110 section 15)"
    return None


@dataclass(frozen=True)
class H2ClientSettings:
    """HTTP/2 settings of upstream connections."""

    initial_stream_window_bytes: int = 65535
    connection_window_bytes: int = 4 * 1024 * 1024
    max_frame_bytes: int = 16384
    max_concurrent_streams: int = 1000
    #: SETTINGS_HEADER_TABLE_SIZE and SETTINGS_MAX_HEADER_LIST_SIZE sent to the upstream (None: not
    #: sent, the protocol's defaults).
    header_table_bytes: int | None = None
    max_header_list_bytes: int | None = None
    ping_interval_s: float | None = 10.0
    ping_timeout_s: float = 5.0
    retry_buffer_bytes: int = 16383
    max_resends: int = 3
    stall_timeout_s: float = 60.0
    max_outbound_bytes: int = 1024 * 1024


class H2StreamReset(UpstreamReset):
    """The upstream reset the stream (``error_code`` from RST_STREAM) or its connection died."""

    def __init__(
        self, message: str, *, endpoint: str, error_code: int | None, retryable: bool = False
    ) -> None:
        super().__init__(message, endpoint=endpoint, retryable=retryable)
        self.error_code = error_code


class H2StreamStalled(H2StreamReset):
    """hostproxy reset the stream (CANCEL): the upstream kept its flow-control window for the request
    body at zero for ``stall_timeout_s`` (it took no more of the body and had not finished answering).
    Still ``upstream/reset``: the upstream stopped taking the request, so it counts against it."""


class _BodyFailed(Exception):
    """The client's request body failed while being sent (the upstream stream was reset)."""


class _Refused(Exception):
    """The upstream did not process the stream (GOAWAY above it, or REFUSED_STREAM): resend it."""


class _UpLink(H2Link):
    side = "upstream"

    def __init__(self, pool: H2UpstreamPool, stream: Any, conn_id: int) -> None:
        st = pool.settings
        # h2's own header checks are off: ``_event`` checks what arrives and ``H2Link.send_headers``
        # what is sent, with h2's outcome for a fraction of its cost (``hostproxy.h2.fields``). A
        # malformed response head or trailer section stays a protocol error of the connection.
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        conn = h2.connection.H2Connection(config)
        initial = {
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: st.initial_stream_window_bytes,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: st.max_frame_bytes,
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: st.max_concurrent_streams,
        }
        if st.header_table_bytes is not None:
            initial[h2.settings.SettingCodes.HEADER_TABLE_SIZE] = st.header_table_bytes
        if st.max_header_list_bytes is not None:
            initial[h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE] = st.max_header_list_bytes
        conn.local_settings = h2.settings.Settings(client=True, initial_values=initial)
        conn.max_inbound_frame_size = st.max_frame_bytes
        super().__init__(
            stream,
            conn,
            limits=H2Limits(),
            guard_inbound=False,
            max_outbound_bytes=st.max_outbound_bytes,
            stall_timeout_s=st.stall_timeout_s,
        )
        self.pool = pool
        self.timed = pool.params.read_timeout_s is not None
        self.id = conn_id
        self.draining = False
        self.goaway_last_id: int | None = None
        self.idle_since = pool._clock()
        self._ping_ack = trio.Event()
        self.pings_sent = 0
        self.pings_without_data = 0  # PINGs sent since the upstream last wrote HEADERS/DATA
        self._stop_scope = trio.CancelScope()
        self.settings_seen = False
        self.handshake = trio.Event()  # set at the peer's first SETTINGS, or when the link dies
        self._retired = trio.Event()  # ``retire()``: close once the writer has flushed

    def start(self) -> None:
        self.conn.initiate_connection()
        extra = self.pool.settings.connection_window_bytes - 65535
        if extra > 0:
            self.conn.increment_flow_control_window(extra)
        self.flush()

    def capacity(self) -> bool:
        return self.capacity_left() > 0

    async def receive(self) -> bytes:
        data = await super().receive()
        if not self.settings_seen and data[:7] == b"HTTP/1.":
            # (No HTTP/2 frame can start so: its length would be past any SETTINGS_MAX_FRAME_SIZE.)
            line = data.split(b"\r\n", 1)[0][:80].decode("latin-1")
            self._die(
                f"it answered in HTTP/1 ({line!r}): it is not an HTTP/2 server; send h2 and gRPC to a "
                "port that speaks HTTP/2 without TLS (prior knowledge), or route this to an HTTP/1.1 "
                "router (protocol: http)"
            )
            return b""
        return data

    def _event(self, ev: Any) -> None:
        t = type(ev)
        kind = _CHECKED.get(t)
        if kind is not None:
            problem = h2fields.problem(ev.headers, kind)
            if problem is None and kind is h2fields.RESPONSE:
                problem = _status_problem(ev.headers)
            if problem is not None:
                self.protocol_error(problem)
                return
        if t in _PEER_WROTE and (t is not h2.events.WindowUpdated or ev.stream_id == 0):
            self.pings_without_data = 0
        elif t is h2.events.ConnectionTerminated and not self.death_reason:
            # What the upstream said when it stopped (a gRPC server's "too_many_pings", an HTTP/1.1
            # port's explanation): the reason given for the streams this connection fails.
            self.death_reason = _goaway_reason(ev.error_code, ev.additional_data)
        super()._event(ev)

    def on_other_event(self, ev: Any) -> None:
        t = type(ev)
        if t is h2.events.ResponseReceived:
            s = self.streams.get(ev.stream_id)
            if s is not None:
                s.head = ev.headers
                if ev.stream_ended is not None:
                    s.ended = True
                s.wake()
                self._settle(s)
        elif t is h2.events.PingAckReceived:
            self._ping_ack.set()

    def on_stream_ended(self, s: StreamState) -> None:
        self._settle(s)

    def on_stream_reset(self, s: StreamState, *, remote: bool) -> None:
        self._settle(s)

    def on_goaway(self, error_code: int, last_stream_id: int | None) -> None:
        self.draining = True
        self.goaway_last_id = last_stream_id if last_stream_id is not None else 0
        self.pool._counters["goaways"] += 1
        log.info(
            "h2.upstream.goaway",
            endpoint=self.pool.endpoint,
            error_code=error_code,
            last_stream_id=last_stream_id,
            streams=len(self.streams),
        )
        for s in list(self.streams.values()):
            if s.id > self.goaway_last_id:
                s.reset_code = REFUSED_STREAM
                s.wake()
                self.streams.pop(s.id, None)
        if not self.streams or error_code != NO_ERROR:
            self.closing = True

    def on_body_cancelled(self, s: StreamState) -> None:
        self.pool._counters["resets_sent"] += 1  # (a response read no further: a caller left)

    def on_settings(self) -> None:
        self.settings_seen = True
        self.handshake.set()

    def on_dead(self) -> None:
        self.handshake.set()
        self.pool._forget(self)

    def capacity_left(self) -> int:
        """Streams this connection can still open (0 when dead, closing or draining).

        Both counts bound it: the link's own books and h2's count of open streams, which also holds
        streams the link already forgot (so h2 never refuses ``send_headers`` with
        ``TooManyStreamsError``)."""
        if self.dead or self.closing or self.draining:
            return 0
        limit = min(
            self.conn.remote_settings.max_concurrent_streams, self.pool.settings.max_concurrent_streams
        )
        n = len(self.streams)
        if n >= limit:
            return 0
        return limit - max(n, self.conn.open_outbound_streams)

    def reset(self, s: StreamState, code: int) -> bool:
        """Reset ``s`` from this side (the caller closed the response body early, the request was
        cancelled, the upstream's window stalled): the stream is over, so it leaves the books."""
        sent = super().reset(s, code)
        self._settle(s)
        return sent

    def _settle(self, s: StreamState) -> None:
        """Forget ``s`` once both directions are finished (or it was reset)."""
        if s.reset_code is None and not (s.ended and s.local_ended):
            return
        self.forget_stream(s.id)

    def forget_stream(self, stream_id: int) -> None:
        """Take a stream off the books.  The last one leaving makes the connection idle (from now:
        the pool's reaper closes it at ``idle_timeout_s``) or, when it is draining, closes it."""
        if self.streams.pop(stream_id, None) is None or self.streams:
            return
        self.idle_since = self.pool._clock()
        if self.draining:
            self.retire()
        else:
            self.pool._became_idle()

    def retire(self) -> None:
        """Close the connection once everything queued is written: GOAWAY (NO_ERROR) goes out after
        the last END_STREAM, WINDOW_UPDATE or RST_STREAM, then the socket closes (``_close_when_flushed``
        bounds the wait by ``FLUSH_ON_CLOSE_S``)."""
        self.draining = True
        self.goaway(NO_ERROR)  # sets ``closing``: the writer ends once the buffer is empty
        self.closing = True
        self._retired.set()

    def stop(self) -> None:
        """Stop at once (shutdown, a failed handshake, a dead peer): what is still queued is dropped."""
        self._stop_scope.cancel()

    async def _close_when_flushed(self) -> None:
        await self._retired.wait()
        with trio.move_on_after(FLUSH_ON_CLOSE_S):
            await self._writer_done.wait()
        self.stop()

    async def serve(self) -> None:
        with self._stop_scope:
            async with trio.open_nursery() as nursery:
                if self.pool.settings.ping_interval_s:
                    nursery.start_soon(self._pinger)
                nursery.start_soon(self._close_when_flushed)
                await self.run()
                nursery.cancel_scope.cancel()
        self._die(self.death_reason or "connection closed")
        with trio.CancelScope(shield=True):
            await self.stream.aclose()

    async def _pinger(self) -> None:
        st = self.pool.settings
        assert st.ping_interval_s
        counter = itertools.count(1)
        while not self.dead:
            await trio.sleep(st.ping_interval_s)
            if self.dead or self.closing:
                return
            if self.pings_without_data >= MAX_PINGS_WITHOUT_DATA:
                continue  # another would be a gRPC server's "too_many_pings"
            self.pings_without_data += 1
            self._ping_ack = trio.Event()
            self.conn.ping(next(counter).to_bytes(8, "big"))
            self.pings_sent += 1
            self.flush()
            with trio.move_on_after(st.ping_timeout_s):
                await self._ping_ack.wait()
                continue
            self.pool._counters["ping_timeouts"] += 1
            log.warning("h2.upstream.ping_timeout", endpoint=self.pool.endpoint, timeout_s=st.ping_timeout_s)
            self._die(f"no PING ACK within {st.ping_timeout_s:g}s")
            self.stop()
            return


class _Replay:
    """The request body as sent so far, kept while it fits ``limit`` (so the stream can be resent)."""

    def __init__(self, body: Body, limit: int) -> None:
        self.body = body
        self.limit = limit
        self.sent: list[bytes] = []
        self.size = 0
        self.overflow = False
        self.done = body.done and body.in_memory

    def replayable(self) -> bool:
        return not self.overflow

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        for chunk in list(self.sent):
            yield chunk
        async for chunk in self.body:
            self.size += len(chunk)
            if self.size <= self.limit:
                self.sent.append(chunk)
            else:
                self.overflow = True
                self.sent.clear()
            yield chunk


class _Connect:
    """One connection being opened, and the requests waiting for it in arrival order.

    Exactly one of ``link`` and ``error`` is set once ``finished``.  Waiters are woken one at a
    time, first come first: each wakes the next only after it has taken its stream (which happens
    without a checkpoint), so streams are opened, and scarce slots given, in arrival order.
    """

    __slots__ = ("deadline", "timeout_s", "finished", "waiters", "link", "error", "scope")

    def __init__(self, deadline: float, timeout_s: float) -> None:
        self.deadline = deadline
        self.timeout_s = timeout_s
        self.finished = False
        self.waiters: deque[trio.Event] = deque()
        self.link: _UpLink | None = None
        self.error: UpstreamError | None = None
        self.scope = trio.CancelScope()

    def finish(self) -> None:
        self.finished = True
        self.wake_next()

    def wake_next(self) -> None:
        if self.waiters:
            self.waiters.popleft().set()

    async def wait(self, deadline: float) -> bool:
        """Wait for the outcome until ``deadline``; False when it passed first.  The caller must
        call ``wake_next()`` once it has used a True outcome (or failed with it)."""
        if self.finished and not self.waiters:
            return True
        woken = trio.Event()
        self.waiters.append(woken)
        try:
            with trio.move_on_at(deadline):
                await woken.wait()
        finally:
            if not woken.is_set():
                self.waiters.remove(woken)
        return woken.is_set()


def _fresh(error: UpstreamError) -> UpstreamError:
    """A copy of ``error`` for one waiter (one exception object is not raised in many tasks)."""
    cls = type(error)
    copy = cls.__new__(cls, *error.args)
    copy.__dict__.update(error.__dict__)
    return copy


class H2UpstreamPool(NurseryOwner):
    """Multiplexed HTTP/2 connections to one endpoint (see the module docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        params: PoolParams | None = None,
        *,
        nursery: trio.Nursery | None = None,
        clock: Callable[[], float] | None = None,
        settings: H2ClientSettings | None = None,
        connector: Connector | None = None,
    ) -> None:
        self._connector = connector
        self.host = host
        self.port = port
        self.params = params or PoolParams()
        self.settings = settings or H2ClientSettings()
        self.endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._nursery = nursery
        self._own_nursery_cm: Any = None
        self._clock = clock or trio.current_time
        self._links: list[_UpLink] = []
        self._ids = itertools.count(1)
        self._connecting: _Connect | None = None
        self._closed = False
        # The task that closes idle connections at the idle timeout (``_reap``), while one runs.
        self._reaper: trio.CancelScope | None = None
        self._counters = {
            "connects": 0,
            "connect_failures": 0,
            "resent": 0,
            "goaways": 0,
            "ping_timeouts": 0,
            "streams_total": 0,
            "resets_sent": 0,
        }

    def statistics(self) -> dict[str, int]:
        """The HTTP/1.1 pool's keys: ``open`` connections (draining ones included), ``idle`` (no
        stream), ``in_use`` (streams), ``opening`` (a connect under way: 0 or 1) and ``waiters``
        (always 0: an h2 pool has no ``maxSize`` to wait at), then the counters."""
        in_use = sum(len(link.streams) for link in self._links)
        idle = sum(1 for link in self._links if not link.streams)
        return {
            "open": len(self._links),
            "idle": idle,
            "in_use": in_use,
            "opening": 1 if self._connecting is not None else 0,
            "waiters": 0,
            **self._counters,
        }

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<H2UpstreamPool {self.endpoint} open={s['open']} streams={s['in_use']}>"

    async def aclose(self) -> None:
        """Refuse new requests and close every connection once its streams are over (in-flight
        streams finish; an idle connection closes now).  Shutdown stops what is left by cancelling
        the pool's nursery (``async with`` does so after this)."""
        self._closed = True
        if self._connecting is not None:
            self._connecting.scope.cancel()
        if self._reaper is not None:
            self._reaper.cancel()
        for link in list(self._links):
            if link.streams:
                link.draining = True  # ``forget_stream`` retires it after its last stream
            else:
                link.retire()

    async def prune(self) -> None:
        """Close connections that carried no stream for ``idle_timeout_s``."""
        for link in self._expired(self._clock()):
            link.retire()
            self._forget(link)

    def _expired(self, now: float) -> list[_UpLink]:
        timeout = self.params.idle_timeout_s
        if timeout is None:
            return []
        return [
            link
            for link in self._links
            if not link.streams and not link.draining and now - link.idle_since >= timeout
        ]

    def _next_expiry(self) -> float | None:
        """When the next idle connection reaches the idle timeout (None: no connection is idle)."""
        timeout = self.params.idle_timeout_s
        if timeout is None:
            return None
        idle = [link.idle_since for link in self._links if not link.streams and not link.draining]
        return min(idle) + timeout if idle else None

    def _became_idle(self) -> None:
        """A connection has no stream left: make sure the reaper runs."""
        if self.params.idle_timeout_s is not None:
            self._start_reaper()

    def _forget(self, link: _UpLink) -> None:
        if link in self._links:
            self._links.remove(link)

    # -- connections -----------------------------------------------------------------------------

    def _free_link(self) -> _UpLink | None:
        for link in self._links:
            if link.capacity():
                return link
        return None

    async def _checkout(self, timeout_s: float) -> _UpLink:
        """A connection with room for one more stream: an open one, else the one being opened
        (starting that connect when none is under way)."""
        while True:
            link = self._free_link()
            if link is not None:
                return link
            pending = self._connecting
            if pending is None:
                if self._closed:
                    raise ProxyInternalError(
                        f"pool for {self.endpoint} is closed", endpoint=self.endpoint, retryable=True
                    )
                pending = self._start_connect(timeout_s)
            own_deadline = trio.current_time() + timeout_s
            # A waiter at least as patient as the connect needs no timer: the connect ends by then.
            if not await pending.wait(own_deadline if own_deadline < pending.deadline else math.inf):
                raise self._connect_timeout(timeout_s)
            pending.wake_next()  # scheduled only: this task takes its stream before the next runs
            if pending.error is not None:
                raise _fresh(pending.error)
            link = pending.link
            assert link is not None
            if not link.capacity() and not link.streams:
                raise UpstreamReset(
                    f"connection to {self.endpoint} accepted no stream (it sent GOAWAY or "
                    f"MAX_CONCURRENT_STREAMS=0 at once, or it closed): {link.death_reason or 'no room'}",
                    endpoint=self.endpoint,
                    retryable=True,
                )
            # Otherwise it has room (next turn takes it) or the other waiters filled it: the next
            # turn starts or joins the next connect.

    def _start_connect(self, timeout_s: float) -> _Connect:
        if self._nursery is None:
            raise ProxyInternalError(
                f"H2UpstreamPool({self.endpoint}) needs a nursery: use 'async with H2UpstreamPool(...)' "
                "or pass nursery=",
                endpoint=self.endpoint,
                retryable=True,
            )
        pending = _Connect(trio.current_time() + timeout_s, timeout_s)
        self._connecting = pending
        self._nursery.start_soon(self._run_connect, pending)
        return pending

    async def _run_connect(self, pending: _Connect) -> None:
        """Open one connection and publish the outcome to everyone waiting for it."""
        try:
            with pending.scope:
                pending.link = await self._connect(pending.deadline, pending.timeout_s)
        except UpstreamError as exc:
            pending.error = exc
        except Exception as exc:
            log.exception("h2.upstream.connect_crashed", endpoint=self.endpoint)
            pending.error = ProxyInternalError(
                f"opening a connection to {self.endpoint} failed unexpectedly: {exc!r}",
                endpoint=self.endpoint,
                retryable=True,
            )
        finally:
            if pending.link is None and pending.error is None:
                pending.error = ProxyInternalError(
                    f"pool for {self.endpoint} is closed", endpoint=self.endpoint, retryable=True
                )
            if self._connecting is pending:
                self._connecting = None
            pending.finish()

    async def _connect(self, deadline: float, timeout_s: float) -> _UpLink:
        assert self._nursery is not None
        try:
            if self._connector is not None:
                stream = await self._connector(self.host, self.port, timeout_s)
            else:
                stream = await self._open_tcp(deadline, timeout_s)
        except UpstreamError:
            self._counters["connect_failures"] += 1
            raise
        opts = self.params.socket_options
        if opts is not None and opts.per_connection:
            configure_connection(stream, opts)
        link = _UpLink(self, stream, next(self._ids))
        link.start()
        self._nursery.start_soon(link.serve)
        try:
            await self._handshake(link, deadline, timeout_s)
        except BaseException as exc:
            if isinstance(exc, UpstreamError):
                self._counters["connect_failures"] += 1
            link.stop()
            raise
        self._counters["connects"] += 1
        self._links.append(link)
        self._became_idle()  # idle until its first stream (the waiter may have given up)
        return link

    async def _handshake(self, link: _UpLink, deadline: float, timeout_s: float) -> None:
        """Wait for the peer's first SETTINGS (its half of the connection preface)."""
        with trio.move_on_at(deadline):
            await link.handshake.wait()
        if link.dead:
            tls_error = self._tls_error(link)
            if tls_error is not None:
                raise tls_error
            raise UpstreamReset(
                f"connection to {self.endpoint} failed before the HTTP/2 handshake completed: "
                f"{link.death_reason}",
                endpoint=self.endpoint,
                retryable=True,
            )
        if not link.settings_seen:
            raise ConnectError(
                f"Unable to establish connection to {self.endpoint}: no HTTP/2 SETTINGS from the "
                f"upstream within connect timeout {timeout_s * 1000:g} ms (is it an HTTP/2 server?)",
                endpoint=self.endpoint,
                cause="connect/timeout",
            )

    def _connect_timeout(self, timeout_s: float) -> ConnectError:
        return ConnectError(
            f"Unable to establish connection to {self.endpoint}: "
            f"no answer within connect timeout {timeout_s * 1000:g} ms",
            endpoint=self.endpoint,
            cause="connect/timeout",
        )

    async def _open_tcp(self, deadline: float, timeout_s: float) -> Any:
        with _map_errors(self.endpoint, "connect"):
            with trio.move_on_at(deadline) as scope:
                stream = await trio.open_tcp_stream(self.host, self.port)
            if scope.cancelled_caught:
                raise self._connect_timeout(timeout_s)
        return stream

    def _tls_error(self, link: _UpLink) -> UpstreamError | None:
        """The ``tls`` error of a connection that died of a TLS failure seen after the handshake."""
        tls_failure = getattr(link.stream, "tls_failure", None)
        if tls_failure is None:
            return None
        from hostproxy.tls.client import TlsError

        return TlsError(
            str(tls_failure), endpoint=self.endpoint, reason=getattr(tls_failure, "reason", "other")
        )

    # -- the exchange ----------------------------------------------------------------------------

    async def request(
        self,
        req: Request,
        *,
        connect_timeout: float | None = None,
        response_timeout: float | None = None,
    ) -> Response:
        """Send ``req`` on a stream; returns at the response HEADERS with the body streaming."""
        if self._closed:
            raise ProxyInternalError(
                f"pool for {self.endpoint} is closed", endpoint=self.endpoint, retryable=True
            )
        timeout = connect_timeout if connect_timeout is not None else self.params.connect_timeout_ms / 1000
        replay = _Replay(req.body, self.settings.retry_buffer_bytes)
        attempts = 0
        while True:
            link = await self._checkout(timeout)
            try:
                return await self._exchange(link, req, replay, response_timeout)
            except _Refused:
                attempts += 1
                if attempts > self.settings.max_resends or not replay.replayable():
                    raise UpstreamReset(
                        f"{self.endpoint} refused the stream (GOAWAY or REFUSED_STREAM) and it cannot be "
                        f"sent again ({'body larger than the retry buffer' if not replay.replayable() else 'too many attempts'})",
                        endpoint=self.endpoint,
                        retryable=False,
                    ) from None
                self._counters["resent"] += 1

    def _head(self, req: Request) -> list[tuple[bytes, bytes]]:
        headers = strip_hop_by_hop(req.headers)
        authority = req.authority or (headers.get(b"host") or b"").decode("latin-1") or self.endpoint
        headers.remove(b"host")
        headers.remove(b"content-length")
        out = [
            (b":method", req.method.encode("ascii")),
            (b":scheme", req.scheme.encode("ascii")),
            (b":authority", authority.encode("latin-1")),
            (b":path", req.target.encode("latin-1")),
        ]
        if req.body.content_length is not None and (
            req.body.content_length > 0 or req.method in ("POST", "PUT")
        ):
            out.append((b"content-length", str(req.body.content_length).encode("ascii")))
        out.extend((n, v) for n, v in headers if n[:1] != b":")
        # Fields the client sent never-indexed reach the upstream so (RFC 7541 §7.1.3).
        return h2fields.with_never_indexed(out, req.never_indexed)

    def _stalled(self, s: StreamState, link: H2Link) -> H2StreamStalled:
        key = (
            " (client.socketOptions.writeTimeoutMs)"
            if self.params.write_timeout_s == link.stall_timeout_s
            else ""
        )
        return H2StreamStalled(
            f"{self.endpoint} kept its flow-control window for the request body of stream {s.id} at "
            f"zero for {link.stall_timeout_s:g}s{key}: hostproxy reset the stream (CANCEL)",
            endpoint=self.endpoint,
            error_code=s.reset_code,
        )

    def _read_stalled(self, s: StreamState, read_s: float) -> H2StreamStalled:
        """Stream ``s`` got nothing (head or DATA) for ``client.socketOptions.readTimeoutMs``: it is
        reset with CANCEL by whoever ends it (the caller, or the body's consumer closing it)."""
        return H2StreamStalled(
            f"upstream {self.endpoint} sent nothing on stream {s.id} for {read_s * 1000:g} ms "
            "(client.socketOptions.readTimeoutMs): hostproxy reset the stream (CANCEL)",
            endpoint=self.endpoint,
            error_code=None,
        )

    def _gone(self, s: StreamState, link: H2Link) -> Exception:
        if s.stalled:
            return self._stalled(s, link)
        if s.reset_code is not None:
            return H2StreamReset(
                f"{self.endpoint} reset stream {s.id} (error code {s.reset_code})",
                endpoint=self.endpoint,
                error_code=s.reset_code,
            )
        return H2StreamReset(
            f"connection to {self.endpoint} failed: {link.death_reason}",
            endpoint=self.endpoint,
            error_code=None,
        )

    async def _exchange(
        self, link: _UpLink, req: Request, replay: _Replay, response_timeout: float | None
    ) -> Response:
        sid = link.conn.get_next_available_stream_id()
        s = StreamState(sid)
        link.streams[sid] = s
        self._counters["streams_total"] += 1
        body = req.body
        empty = (
            body.in_memory
            and (body.content_length == 0 or body.done)
            and not replay.sent
            and not body.trailers  # trailers with no DATA still need a HEADERS frame of their own
        )
        sender_done = trio.Event()
        sender_scope = trio.CancelScope()
        body_failed: list[RequestBodyError] = []  # the client's body failed while being sent
        try:
            link.send_headers(s, self._head(req), end_stream=empty)
        except h2.exceptions.TooManyStreamsError:
            # h2 counts more open streams than the link's books (``capacity_left`` should prevent
            # it): nothing was sent, so the stream is refused and goes on another connection.
            link.forget_stream(sid)
            link.draining = True  # its books are wrong: no new stream; it closes after the others
            if not link.streams:
                link.retire()
            raise _Refused() from None
        except StreamGone as exc:
            link.forget_stream(sid)
            raise H2StreamReset(
                f"cannot open a stream to {self.endpoint}: {exc}",
                endpoint=self.endpoint,
                error_code=exc.code,
                retryable=True,
            ) from None
        if empty:
            sender_done.set()
        else:
            assert self._nursery is not None
            self._nursery.start_soon(self._send_body, link, s, replay, sender_scope, sender_done, body_failed)
        try:
            if response_timeout is None:
                await self._wait_head(link, s)
            else:
                with trio.move_on_after(response_timeout):
                    await self._wait_head(link, s)
                if s.head is None:
                    raise RequestTimeout(
                        f"no response from {self.endpoint} within {response_timeout:g}s",
                        endpoint=self.endpoint,
                    )
        except BaseException:
            sender_scope.cancel()
            if s.reset_code is None:
                self._counters["resets_sent"] += 1
                link.reset(s, CANCEL)
            link._settle(s)
            with trio.CancelScope(shield=True):
                await sender_done.wait()
            if body_failed:
                # The stream was reset because the client's body failed: the client's doing, not
                # the upstream's (answered 400, never counted against the endpoint).
                raise body_failed[0] from None
            raise
        return self._response(link, s, req)

    async def _wait_head(self, link: _UpLink, s: StreamState) -> None:
        read_s = self.params.read_timeout_s
        while s.head is None:
            if s.stalled:
                raise self._stalled(s, link)
            if s.reset_code is not None:
                if s.reset_code == REFUSED_STREAM:
                    raise _Refused()
                raise H2StreamReset(
                    f"{self.endpoint} reset stream {s.id} before responding (error code {s.reset_code})",
                    endpoint=self.endpoint,
                    error_code=s.reset_code,
                )
            if link.dead:
                tls_error = self._tls_error(link)
                if tls_error is not None:
                    raise tls_error
                raise H2StreamReset(
                    f"connection to {self.endpoint} failed before a response: {link.death_reason}",
                    endpoint=self.endpoint,
                    error_code=None,
                )
            if read_s is None:
                await s.wait()
            elif not await link.wait_read(s, read_s):
                raise self._read_stalled(s, read_s)
            # Interim (1xx) heads are not forwarded: ResponseReceived carries the final one.

    def _response(self, link: _UpLink, s: StreamState, req: Request) -> Response:
        assert s.head is not None
        status = 502
        regular: list[tuple[bytes, bytes]] = []
        for n, v in s.head:
            if n == b":status":
                status = int(v)
            elif n[:1] != b":":
                regular.append((n, v))
        headers = strip_hop_by_hop(Headers(regular), request=False)
        content_length: int | None = None
        cl = headers.get(b"content-length")
        if req.method != "HEAD":
            if cl is not None and cl.isdigit():
                content_length = int(cl)
            headers.remove(b"content-length")
        if s.ended and not s.inbound:
            # Ended already: no DATA, perhaps trailers (a gRPC error right after the head).
            body = Body.empty() if s.trailers is None else Body.from_bytes(b"", s.trailers)
        else:
            read_s = self.params.read_timeout_s
            if read_s is None:
                body = Body(InboundBody(link, s, self._gone, reset_on_close=True), content_length)
            else:
                source = InboundBody(
                    link,
                    s,
                    self._gone,
                    reset_on_close=True,
                    read_timeout_s=read_s,
                    stall_error=lambda t: self._read_stalled(s, t),
                )
                body = Body(source, content_length)
        return Response(
            status, b"", headers, body, http_version="2", never_indexed=h2fields.never_indexed(s.head)
        )

    async def _send_body(
        self,
        link: _UpLink,
        s: StreamState,
        replay: _Replay,
        scope: trio.CancelScope,
        done: trio.Event,
        failed: list[RequestBodyError],
    ) -> None:
        try:
            # ``aclosing``: a stream refused mid-body leaves this generator suspended; it is closed
            # here, not whenever it is garbage collected, before the resend iterates the body again.
            with scope:
                async with contextlib.aclosing(replay.chunks()) as it:
                    await self._send_chunks(link, s, it, failed)
                trailers = replay.body.trailers
                if trailers is not None and len(trailers):
                    # The client's never-indexed trailer fields reach the upstream so (RFC 7541 §7.1.3).
                    fields = [(n, v) for n, v in trailers if n[:1] != b":"]
                    link.send_headers(
                        s, h2fields.with_never_indexed(fields, never_indexed_of(trailers)), end_stream=True
                    )
                else:
                    await link.send_data(s, b"", end_stream=True)
                link._settle(s)
        except StreamGone as exc:
            # The upstream reset the stream, the connection died, or (``Stalled``) the upstream's
            # window stayed shut and this side reset it: the response side reports each.
            if isinstance(exc, Stalled):
                self._counters["resets_sent"] += 1
        except _BodyFailed:
            pass  # reset already; the exchange reports the client's failure
        finally:
            done.set()

    async def _send_chunks(
        self, link: _UpLink, s: StreamState, it: AsyncIterator[bytes], failed: list[RequestBodyError]
    ) -> None:
        """Send the request body's chunks; ``_BodyFailed`` when the client's body fails (the stream
        is reset then)."""
        while True:
            try:
                chunk = await it.__anext__()
            except StopAsyncIteration:
                return
            except Exception as exc:
                # The client's body failed (it reset its stream, or its connection died).
                log.info("h2.upstream.request_body_failed", endpoint=self.endpoint, error=str(exc))
                if isinstance(exc, RequestBodyError):
                    failed.append(exc)
                self._counters["resets_sent"] += 1
                link.reset(s, CANCEL)
                raise _BodyFailed() from None
            await link.send_data(s, chunk)
