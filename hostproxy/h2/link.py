"""One HTTP/2 connection driven by trio: a reader, ONE writer, per-stream queues and flow control.

Theory of operation
-------------------
``H2Link`` wraps an ``h2.connection.H2Connection`` (the sans-IO protocol state) and a trio stream.
It is shared by the server side (``hostproxy.h2.server``) and the upstream side
(``hostproxy.h2.upstream``), which subclass it and handle the events that differ (a request
arrived, a response arrived, the peer sent GOAWAY).

* **One writer.**  Nothing but the writer task touches the socket for writing.  Every mutation of
  the h2 state is synchronous (trio runs one task at a time) and ends with ``flush()``, which moves
  h2's pending bytes into the link's outbound buffer and wakes the writer.  Two tasks writing one
  socket cannot happen.
* **Bounded outbound buffer.**  The reader stops reading from the peer while the outbound buffer
  holds more than ``max_outbound_bytes`` (a peer that does not read cannot make us queue PING or
  SETTINGS ACKs without bound); when the buffer does not drain within ``outbound_stall_timeout_s``
  the connection is dropped.  Stream senders wait for room as well.
* **Flow control tied end to end.**  Received DATA is queued on its stream with its flow-controlled
  length and acknowledged (``acknowledge_received_data``) only when the consumer takes it from the
  ``InboundBody``; so a peer can never have more than a stream window in flight per stream, and a
  slow reader on the far side slows the sender here.  ``send_data`` sends no more than the peer's
  window and waits for WINDOW_UPDATE; a stream stalled on a zero window for ``stall_timeout_s`` is
  reset (``Stalled``), so a peer cannot pin memory by never opening its window.
* **Bounded HPACK state.**  The table that compresses what this side sends is kept to
  ``max_encoder_table_bytes`` whatever larger SETTINGS_HEADER_TABLE_SIZE the peer advertises.
* **Flood accounting.**  Raw bytes pass through ``FrameScanner``/``FloodGuard`` (``limits``) before
  h2 sees them; a ``Verdict`` ends the connection with GOAWAY ENHANCE_YOUR_CALM.

Streams end in three ways: both sides sent END_STREAM, either side reset, or the connection died
(``dead``); ``StreamGone`` carries the reset code to whoever was reading or writing the stream.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any

import h2.connection
import h2.events
import h2.exceptions
import structlog
import trio
from hyperframe.frame import GoAwayFrame

from hostproxy.h2 import fields as h2fields
from hostproxy.h2.hpackenc import Decoder as HpackDecoder
from hostproxy.h2.hpackenc import Encoder as HpackEncoder
from hostproxy.h2.limits import ENHANCE_YOUR_CALM, FloodGuard, FrameScanner, H2Limits, Verdict
from hostproxy.http.errors import RequestBodyError
from hostproxy.http.hopbyhop import allowed_trailers
from hostproxy.http.message import Headers, NeverIndexedHeaders

__all__ = ["H2Link", "InboundBody", "Stalled", "StreamGone", "StreamState", "keep_open_after_goaway"]

log = structlog.get_logger("hostproxy.h2")

RECEIVE_SIZE = 64 * 1024
WRITE_CHUNK = 64 * 1024
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
REFUSED_STREAM = 0x7
CANCEL = 0x8


def keep_open_after_goaway(conn: h2.connection.H2Connection) -> None:
    """Let ``conn`` finish the streams a received GOAWAY left running.

    h2 moves its connection state machine to CLOSED on any received GOAWAY and then refuses every
    further frame (even later frames of the same read), although RFC 9113 §6.8 says streams up to
    the last-stream-id continue.  This wraps h2's GOAWAY handler so that the state machine stays
    open; the link then opens no new stream and closes once the remaining streams are done.
    """
    table = conn._frame_dispatch_table
    original = table[GoAwayFrame]
    open_state = (
        h2.connection.ConnectionState.CLIENT_OPEN
        if conn.config.client_side
        else h2.connection.ConnectionState.SERVER_OPEN
    )

    def receive_goaway(frame: GoAwayFrame) -> Any:
        before = conn.state_machine.state
        result = original(frame)
        if before == open_state:
            conn.state_machine.state = open_state
        return result

    table[GoAwayFrame] = receive_goaway


class StreamGone(Exception):
    """The stream was reset (``code`` is the RST_STREAM error code) or its connection died."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class Stalled(StreamGone):
    """The peer kept the stream's send window at zero for longer than the stall timeout."""


class StreamState:
    """What one link knows about one stream (both directions)."""

    __slots__ = (
        "id",
        "inbound",
        "ended",
        "trailers",
        "reset_code",
        "head",
        "informational",
        "_event",
        "discard",
        "local_ended",
        "response_done",
        "data_frames",
        "stalled",
        "head_sent",
        "sent_at",
    )

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.inbound: deque[tuple[bytes, int]] = deque()
        self.ended = False
        self.trailers: Headers | None = None
        self.reset_code: int | None = None
        self.head: list[tuple[bytes, bytes]] | None = None
        self.informational = 0
        self._event = trio.Event()
        self.discard = False
        self.local_ended = False
        self.response_done = False
        self.data_frames = 0
        self.stalled = False  # this side reset it: the peer's window stayed at zero (``Stalled``)
        self.head_sent = False  # this side sent its head (a request or a response): HEADERS now are trailers
        #: When this side last handed DATA of the stream to the connection (``trio.current_time``):
        #: its exchange is progressing (``H2Link.wait_read``).
        self.sent_at = 0.0

    def wake(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()


class H2Link:
    """The trio side of one HTTP/2 connection (see the module docstring)."""

    side = "h2"

    def __init__(
        self,
        stream: Any,
        conn: h2.connection.H2Connection,
        *,
        limits: H2Limits,
        guard_inbound: bool,
        max_outbound_bytes: int = 1 << 20,
        outbound_stall_timeout_s: float = 30.0,
        stall_timeout_s: float = 30.0,
        max_encoder_table_bytes: int = 4096,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.stream = stream
        self.conn = conn
        # hpack's own output and results, for less work (``hostproxy.h2.hpackenc``): a fresh encoder
        # (nothing was encoded yet), and the decoder made one of the subclass, keeping the limits
        # the side set on it.
        conn.encoder = HpackEncoder()
        conn.decoder.__class__ = HpackDecoder
        keep_open_after_goaway(conn)
        # When received bytes break the protocol, h2 queues a GOAWAY that gives no reason before it
        # raises; ``_reader`` sends one that says why. A peer stops at the first GOAWAY it reads,
        # so h2's would hide the reason: it is left out.
        conn._terminate_connection = lambda _error_code: None  # type: ignore[method-assign,assignment]
        self.limits = limits
        self._clock = clock or trio.current_time
        self.guard = FloodGuard(limits, self._clock()) if guard_inbound else None
        self.scanner = (
            FrameScanner(limits, expect_preface=not conn.config.client_side) if guard_inbound else None
        )
        self.max_outbound_bytes = max_outbound_bytes
        self.outbound_stall_timeout_s = outbound_stall_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.max_encoder_table_bytes = max_encoder_table_bytes
        self.streams: dict[int, StreamState] = {}
        self._out = bytearray()
        self._in_flight = 0
        self._out_event = trio.Event()
        self._drained = trio.Event()
        self._window = trio.Event()
        self.dead = False
        self.closing = False
        self.death_reason = ""
        self.peer_gone = False  # the peer closed or broke the connection (nothing left to read)
        self.peak_outbound = 0
        self.calm_verdict: Verdict | None = None
        self._writer_done = trio.Event()
        self.pushback = b""  # bytes already read from the peer that the reader is to take first
        #: When the peer's last bytes arrived (``trio.current_time``; ``wait_read``), and when this
        #: side last sent DATA of each stream (``StreamState.sent_at``): kept only with a read timeout
        #: (``timed``, set by the side that has one), as each costs a clock read per frame.
        self.timed = False
        self.received_at = 0.0

    # -- output ----------------------------------------------------------------------------------

    @property
    def outbound_bytes(self) -> int:
        return len(self._out) + self._in_flight

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self._out += data
            self.peak_outbound = max(self.peak_outbound, self.outbound_bytes)
            self._out_event.set()

    async def _writer(self) -> None:
        try:
            while True:
                while not self._out:
                    if self.closing or self.dead:
                        return
                    await self._out_event.wait()
                    self._out_event = trio.Event()
                chunk = bytes(self._out[:WRITE_CHUNK])
                del self._out[:WRITE_CHUNK]
                self._in_flight = len(chunk)
                try:
                    await self.stream.send_all(chunk)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    self._die(f"write failed: {exc or type(exc).__name__}")
                    return
                finally:
                    self._in_flight = 0
                self._drained.set()
                self._drained = trio.Event()
        finally:
            self._writer_done.set()

    async def wait_writable(self) -> None:
        """Wait until the outbound buffer has room (a stream sender's backpressure)."""
        while self.outbound_bytes > self.max_outbound_bytes and not self.dead:
            await self._drained.wait()
        if self.dead:
            raise StreamGone(f"connection closed: {self.death_reason}")

    async def _wait_room_to_read(self) -> bool:
        """Before reading more from the peer: False when the peer has not read for too long."""
        if self.outbound_bytes <= self.max_outbound_bytes:
            return True
        with trio.move_on_after(self.outbound_stall_timeout_s):
            while self.outbound_bytes > self.max_outbound_bytes // 2 and not self.dead:
                await self._drained.wait()
            return not self.dead
        self._die(
            f"peer did not read {self.outbound_bytes} queued octets within {self.outbound_stall_timeout_s:g}s"
        )
        return False

    # -- life and death --------------------------------------------------------------------------

    def _die(self, reason: str) -> None:
        if self.dead:
            return
        self.dead = True
        self.death_reason = reason
        self._out_event.set()
        self._drained.set()
        self._window.set()
        for s in self.streams.values():
            s.wake()
        self.on_dead()

    def on_dead(self) -> None:
        """Hook: the connection can carry nothing more."""

    def calm_down(self, verdict: Verdict) -> None:
        """GOAWAY ENHANCE_YOUR_CALM: the peer exceeded ``verdict.limit``."""
        self.calm_verdict = verdict
        log.warning("h2.flood_detected", side=self.side, limit=verdict.limit, detail=verdict.message)
        self.goaway(ENHANCE_YOUR_CALM, verdict.message)

    def goaway(self, code: int, message: str = "") -> None:
        if self.closing or self.dead:
            return
        self.closing = True
        try:
            self.conn.close_connection(error_code=code, additional_data=message.encode("utf-8")[:256] or None)
            self.flush()
        except h2.exceptions.ProtocolError:
            pass
        self._out_event.set()

    async def run(self) -> None:
        """Read until the connection ends; the writer runs beside the reader."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer)
            try:
                await self._reader()
            finally:
                self.closing = True
                self._out_event.set()
                with trio.move_on_after(1.0) as scope:
                    scope.shield = True
                    await self._writer_done.wait()
                self._die(self.death_reason or "connection closed")
                nursery.cancel_scope.cancel()

    async def receive(self) -> bytes:
        """The next bytes from the peer (``pushback`` first); ``b""`` once it closed or broke the
        connection, which is then dead."""
        if self.pushback:
            data, self.pushback = self.pushback, b""
            return data
        try:
            data = await self.stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.peer_gone = True
            self._die(f"read failed: {exc or type(exc).__name__}")
            return b""
        if not data:
            self.peer_gone = True
            self._die("peer closed the connection")
        elif self.timed:
            self.received_at = trio.current_time()
        return data

    async def wait_read(self, s: StreamState, read_s: float) -> bool:
        """Wait for news of stream ``s`` (``s.wait``) under ``socketOptions.readTimeoutMs``; False
        once ``read_s`` passed since the wait began with nothing received on the connection (any
        frame: Finagle's read timeout watches the transport, not a stream) and no DATA of ``s`` sent
        by this side (a request body still being uploaded, a response still being streamed: the
        exchange is progressing, and its peer need not say anything meanwhile)."""
        deadline = trio.current_time() + read_s
        while True:
            with trio.move_on_at(deadline):
                await s.wait()
                return True
            deadline = max(self.received_at, s.sent_at) + read_s
            if deadline <= trio.current_time():
                return False

    async def _reader(self) -> None:
        while not self.dead and not self.closing:
            if not await self._wait_room_to_read():
                return
            data = await self.receive()
            if not data:
                return
            if self.scanner is not None and self.guard is not None:
                now = self._clock()
                for item in self.scanner.feed(data):
                    verdict = item if isinstance(item, Verdict) else self.guard.on_frame(item, now)
                    if verdict is not None:
                        self.calm_down(verdict)
                        return
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                code = getattr(exc, "error_code", PROTOCOL_ERROR)
                self.protocol_error(str(exc), int(code) if code is not None else PROTOCOL_ERROR)
                return
            for ev in events:
                self._event(ev)
                if self.closing or self.dead:
                    break
            self.flush()

    def protocol_error(self, message: str, code: int = PROTOCOL_ERROR) -> None:
        """The peer broke the protocol (``message`` says how): GOAWAY ``code`` with the reason."""
        log.info("h2.protocol_error", side=self.side, error=message)
        if not self.death_reason:  # (why the streams of this connection fail)
            self.death_reason = f"HTTP/2 protocol error from the peer: {message}"
        self.goaway(code, message)

    # -- events ----------------------------------------------------------------------------------

    def _event(self, ev: Any) -> None:
        t = type(ev)
        if t is h2.events.DataReceived:
            s = self.streams.get(ev.stream_id)
            if s is not None and not s.discard and s.reset_code is None:
                s.data_frames += 1
                s.inbound.append((ev.data, ev.flow_controlled_length))
                if ev.stream_ended is not None:
                    s.ended = True
                s.wake()
            else:
                self._ack(ev.stream_id, ev.flow_controlled_length)
                if s is not None and ev.stream_ended is not None:
                    s.ended = True
        elif t is h2.events.StreamEnded:
            s = self.streams.get(ev.stream_id)
            if s is not None and s.reset_code is None:  # (reset: e.g. for its malformed trailers)
                s.ended = True
                s.wake()
                self.on_stream_ended(s)
        elif t is h2.events.TrailersReceived:
            s = self.streams.get(ev.stream_id)
            problem = None if s is None else self.malformed_trailers(ev.headers)
            if s is not None and problem is not None:
                log.info("h2.malformed_trailers", side=self.side, stream=s.id, error=problem)
                self.reset(s, PROTOCOL_ERROR)
                self.on_stream_reset(s, remote=False)
            elif s is not None:
                # Without the fields a trailer section must not carry (``allowed_trailers``), and
                # with those the peer sent never-indexed, to be sent on so (RFC 7541 §7.1.3).
                secret = h2fields.never_indexed(ev.headers)
                fields = allowed_trailers(ev.headers)
                s.trailers = NeverIndexedHeaders(fields, secret) if secret else Headers(fields)
                if ev.stream_ended is not None:
                    s.ended = True
                s.wake()
        elif t is h2.events.StreamReset:
            s = self.streams.get(ev.stream_id)
            if s is not None and s.reset_code is None:
                s.reset_code = int(ev.error_code)
                s.wake()
                self.on_stream_reset(s, remote=ev.remote_reset)
        elif t is h2.events.WindowUpdated or t is h2.events.RemoteSettingsChanged:
            self._window.set()
            self._window = trio.Event()
            if t is h2.events.RemoteSettingsChanged:
                self._cap_encoder_table()
                self.on_settings()
        elif t is h2.events.ConnectionTerminated:
            self.on_goaway(int(ev.error_code), ev.last_stream_id)
        else:
            self.on_other_event(ev)

    def _cap_encoder_table(self) -> None:
        """h2 sizes the HPACK table that compresses what this side sends to whatever the peer's
        SETTINGS_HEADER_TABLE_SIZE says (up to 4 GiB) and keeps every distinct field it sends in it, so
        a peer advertising a huge table would make the connection hold its headers without bound.
        The table is kept to ``max_encoder_table_bytes`` (a smaller size is always allowed: the
        encoder announces it in the next header block)."""
        encoder = self.conn.encoder
        if encoder.header_table_size > self.max_encoder_table_bytes:
            encoder.header_table_size = self.max_encoder_table_bytes

    def malformed_trailers(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        """Hook: why received trailers are malformed (the stream is then reset), or None."""
        return None

    def on_stream_ended(self, s: StreamState) -> None:
        """Hook: the peer finished sending on ``s``."""

    def on_stream_reset(self, s: StreamState, *, remote: bool) -> None:
        """Hook: ``s`` was reset."""

    def on_body_cancelled(self, s: StreamState) -> None:
        """Hook: ``s`` was reset with CANCEL because its reader closed its body early."""

    def on_settings(self) -> None:
        """Hook: the peer changed its settings."""

    def on_goaway(self, error_code: int, last_stream_id: int | None) -> None:
        """Hook: the peer sent GOAWAY."""
        self.closing = True

    def on_other_event(self, ev: Any) -> None:
        """Hook: request/response heads, PING ACKs and anything the link does not handle itself."""

    # -- per-stream operations -------------------------------------------------------------------

    def _ack(self, stream_id: int, size: int) -> None:
        if size <= 0 or self.dead:
            return
        try:
            self.conn.acknowledge_received_data(size, stream_id)
        except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
            return
        self.flush()

    def ack(self, s: StreamState, size: int) -> None:
        self._ack(s.id, size)

    def discard_inbound(self, s: StreamState) -> None:
        """The consumer reads no more of ``s``: acknowledge what is queued and what still arrives."""
        s.discard = True
        while s.inbound:
            _, size = s.inbound.popleft()
            self._ack(s.id, size)

    def reset(self, s: StreamState, code: int) -> bool:
        """Reset ``s`` (idempotent; a no-op once the stream is closed on both sides or reset); True
        when a RST_STREAM was sent."""
        if self.dead or s.reset_code is not None:
            return False
        s.reset_code = code
        s.wake()
        try:
            self.conn.reset_stream(s.id, error_code=code)
        except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
            return False
        self.discard_inbound(s)
        self.flush()
        return True

    def _check(self, s: StreamState) -> None:
        if s.reset_code is not None:
            raise StreamGone(f"stream {s.id} was reset (error code {s.reset_code})", s.reset_code)
        if self.dead:
            raise StreamGone(f"connection closed: {self.death_reason}")

    def send_headers(self, s: StreamState, headers: list[tuple[bytes, bytes]], *, end_stream: bool) -> None:
        """Send a head (the first HEADERS of ``s`` this side sends) or trailers (any later one), as h2
        with its outbound validation and normalisation on would (``hostproxy.h2.fields``)."""
        self._check(s)
        if s.head_sent:
            kind = h2fields.TRAILERS
        else:
            kind = h2fields.REQUEST if self.conn.config.client_side else h2fields.RESPONSE
        headers = h2fields.outbound(headers, kind)
        try:
            self.conn.send_headers(s.id, headers, end_stream=end_stream)
        except h2.exceptions.StreamClosedError as exc:
            raise StreamGone(f"stream {s.id} is closed: {exc}", s.reset_code) from None
        s.head_sent = True
        if end_stream:
            s.local_ended = True
        self.flush()

    async def send_data(self, s: StreamState, data: bytes, *, end_stream: bool = False) -> None:
        """Send ``data`` within the peer's flow-control window; ``Stalled`` after ``stall_timeout_s``
        without any window."""
        view = memoryview(data)
        while True:
            self._check(s)
            await self.wait_writable()
            self._check(s)
            if not view:
                if end_stream:
                    self._end(s)
                return
            try:
                window = self.conn.local_flow_control_window(s.id)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as exc:
                raise StreamGone(f"stream {s.id} is closed: {exc}", s.reset_code) from None
            if window <= 0:
                with trio.move_on_after(self.stall_timeout_s) as scope:
                    await self._window.wait()
                if scope.cancelled_caught:
                    s.stalled = True
                    self.reset(s, CANCEL)
                    raise Stalled(
                        f"stream {s.id}: the peer's flow-control window stayed at zero for "
                        f"{self.stall_timeout_s:g}s",
                        CANCEL,
                    )
                continue
            n = min(window, self.conn.max_outbound_frame_size, len(view))
            last = n == len(view)
            try:
                self.conn.send_data(s.id, bytes(view[:n]), end_stream=end_stream and last)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as exc:
                raise StreamGone(f"stream {s.id} is closed: {exc}", s.reset_code) from None
            if end_stream and last:
                s.local_ended = True
            self.flush()
            if self.timed:
                s.sent_at = trio.current_time()
            view = view[n:]
            if last:
                return

    def _end(self, s: StreamState) -> None:
        try:
            self.conn.end_stream(s.id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as exc:
            raise StreamGone(f"stream {s.id} is closed: {exc}", s.reset_code) from None
        s.local_ended = True
        self.flush()

    def end_stream(self, s: StreamState) -> None:
        self._check(s)
        self._end(s)


class InboundBody:
    """A ``BodySource`` over a stream's received DATA: acknowledges each chunk as it is taken.

    ``gone`` turns a reset or a dead connection into the exception the consumer should see.
    ``reset_on_close`` resets the stream with CANCEL when the consumer closes the body early
    (upstream responses); otherwise the rest is only discarded (server request bodies).
    ``stall_timeout_s`` (server request bodies: ``requestBodyTimeoutMs``) bounds each wait for
    DATA; past it the read fails with a ``RequestBodyError`` (the client's doing: answered 400).
    ``read_timeout_s`` (``socketOptions.readTimeoutMs``) bounds it as ``H2Link.wait_read`` does
    (nothing received on the connection and nothing of this stream sent for that long); past it the
    read fails with ``stall_error(read_timeout_s)``.
    """

    __slots__ = (
        "_link",
        "_s",
        "_gone",
        "_reset_on_close",
        "_stall_timeout_s",
        "_read_timeout_s",
        "_stall_error",
    )

    def __init__(
        self,
        link: H2Link,
        s: StreamState,
        gone: Callable[[StreamState, H2Link], Exception],
        *,
        reset_on_close: bool,
        stall_timeout_s: float | None = None,
        read_timeout_s: float | None = None,
        stall_error: Callable[[float], Exception] | None = None,
    ) -> None:
        self._link = link
        self._s = s
        self._gone = gone
        self._reset_on_close = reset_on_close
        self._stall_timeout_s = stall_timeout_s
        self._read_timeout_s = read_timeout_s
        self._stall_error = stall_error

    async def read_chunk(self) -> bytes | None:
        s = self._s
        link = self._link
        while True:
            if s.inbound:
                data, size = s.inbound.popleft()
                link.ack(s, size)
                if data:
                    return data
                continue
            if s.ended:
                return None
            if s.reset_code is not None or link.dead:
                raise self._gone(s, link)
            timeout = self._stall_timeout_s
            read_s = self._read_timeout_s
            if timeout is None and read_s is None:
                await s.wait()
                continue
            with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
                if read_s is None:
                    await s.wait()
                elif not await link.wait_read(s, read_s):
                    assert self._stall_error is not None
                    raise self._stall_error(read_s)
            if scope.cancelled_caught:
                raise RequestBodyError(f"request body stalled for {timeout:g}s (requestBodyTimeoutMs)")

    @property
    def trailers(self) -> Headers | None:
        return self._s.trailers

    async def aclose(self) -> None:
        s = self._s
        if s.ended and not s.inbound:
            return
        if self._reset_on_close and self._link.reset(s, CANCEL):
            self._link.on_body_cancelled(s)
        self._link.discard_inbound(s)
