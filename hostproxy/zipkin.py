"""Trace export to Zipkin: Linkerd's ``io.l5d.zipkin`` telemeter.

Theory of operation
-------------------
hostproxy propagates trace context on every request (:mod:`hostproxy.routing.tracectx`). With an
``io.l5d.zipkin`` telemeter it also records a span for each attempt it forwards, and sends the spans to
a Zipkin Scribe collector (``host``:``port``, Linkerd's defaults ``localhost:9410``) as Linkerd did:
Scribe's ``Log`` call over a framed Thrift transport (TBinaryProtocol), one ``LogEntry`` per span in
category ``zipkin`` whose message is the span as a Thrift ``zipkinCore`` ``Span``, base64, with a
trailing newline.

Sampling (:meth:`ZipkinExporter.sampled`): a request that carries a decision (the sampled flag of
``l5d-ctx-trace``, ``l5d-sample``, or B3's ``x-b3-sampled``; a debug trace, either format's, is
sampled) is recorded as it says; one without
is recorded with probability ``sampleRate`` (Linkerd's default, 0.001). The decision is hostproxy's
alone: it does not change the trace headers forwarded.

Each span is a client span, as Linkerd's client spans: its ids are the attempt's (the trace id, the
attempt's span id, its parent: the span the request came with), its name the method, annotations
``cs`` (sent) and ``cr`` (response head received, or the attempt failed) from the host whose service
name is the client (the bound name, ``#/io.l5d.fs/web``, lowercase as Zipkin's model wants),
``sa`` the endpoint's address (an IPv6 one in the Endpoint's ``ipv6``), and tags (binary annotations,
strings) ``router.label``, ``namer.path`` (the service), ``dst.id`` (the client), ``http.req.method``,
``http.req.host``, ``http.uri``, ``http.rsp.status`` and, when the attempt failed, ``error`` (the
``l5d-err`` cause; ``cancelled`` for an attempt cut short by the request's ``totalTimeoutMs`` or the
caller leaving; ``request/body`` when the request's body failed). Every value, and the name and
service name, is cut to ``MAX_TAG_CHARS`` characters, so that a queued span stays small.

Spans wait in a bounded queue (``MAX_QUEUE``; the newest are dropped when it is full, counted) and go
out in batches of up to ``BATCH`` every ``FLUSH_S`` from one task, over one connection kept open. A
reply must be a strict Thrift reply to that call (its name and sequence id). A batch that fails on a
connection kept from an earlier batch before any byte of the reply came (the collector restarted, or
closed it while idle) is sent again, once, on a new connection. Otherwise a collector that cannot be
reached, does not answer within ``SEND_TIMEOUT_S``, answers something else, or answers ``TRY_LATER``
to each of ``TRY_LATER_TRIES`` calls of it (as Finagle's Scribe tracer tries 3 times) loses that
batch (counted, the error kept for ``statistics``), and is tried again after ``RETRY_S``; no error ends
the sender. A daemon stopping sends what is queued (:meth:`ZipkinExporter.drain`, bounded by the
daemon) unless the collector is failing. Recording costs one header scan on requests that are not
sampled, and the request path never waits for the collector.
"""

from __future__ import annotations

import base64
import collections
import ipaddress
import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from hostproxy.routing.tracectx import span_of

__all__ = [
    "RESULT_OK",
    "AttemptRecorder",
    "SpanRecord",
    "ZipkinExporter",
    "encode_log_call",
    "encode_span",
    "read_log_reply",
    "sample_trace",
    "scribe_message",
]

log = structlog.get_logger("hostproxy.zipkin")

MAX_QUEUE = 1000
BATCH = 100
FLUSH_S = 1.0
RETRY_S = 5.0
CONNECT_TIMEOUT_S = 5.0
SEND_TIMEOUT_S = 10.0
#: A batch answered TRY_LATER is sent this many times in all, ``TRY_LATER_BACKOFF_S`` times the number
#: of tries so far apart (Finagle's Scribe tracer tries 3 times).
TRY_LATER_TRIES = 3
TRY_LATER_BACKOFF_S = 0.1
MAX_REPLY = 1 << 20  # a Log reply is a few dozen bytes
#: A tag's value is cut to this many characters (a target or host of up to 64 KiB would otherwise make
#: the queue's 1,000 spans tens of megabytes while the collector is away).
MAX_TAG_CHARS = 1024
RESULT_OK = 0
RESULT_TRY_LATER = 1

# Thrift's type codes (TBinaryProtocol).
_STOP, _BOOL, _I16, _I32, _I64, _STRING, _STRUCT, _LIST = 0, 2, 6, 8, 10, 11, 12, 15
_CALL, _REPLY, _EXCEPTION = 1, 2, 3
_VERSION_1 = 0x80010000
# A strict TBinaryProtocol message header for a call, as the signed i32 it is written as.
(_CALL_HEADER,) = struct.unpack(">i", struct.pack(">I", _VERSION_1 | _CALL))
# zipkinCore's AnnotationType.
_ANN_BOOL, _ANN_STRING = 0, 6


@dataclass(slots=True)
class SpanRecord:
    """One attempt's span (see the module docstring). Times are microseconds since the epoch."""

    trace_id: int  # the low 64 bits
    span_id: int
    parent_id: int | None
    name: str
    start_us: int
    end_us: int
    service_name: str
    remote: tuple[str, int] | None = None
    tags: list[tuple[str, str]] = field(default_factory=list)
    trace_id_high: int | None = None
    debug: bool = False


class _Writer:
    __slots__ = ("out",)

    def __init__(self) -> None:
        self.out = bytearray()

    def field(self, kind: int, fid: int) -> None:
        self.out += struct.pack(">bh", kind, fid)

    def i16(self, v: int) -> None:
        self.out += struct.pack(">h", v)

    def i32(self, v: int) -> None:
        self.out += struct.pack(">i", v)

    def i64(self, v: int) -> None:
        self.out += struct.pack(">q", v)

    def binary(self, v: bytes) -> None:
        self.out += struct.pack(">i", len(v))
        self.out += v

    def string(self, v: str) -> None:
        self.binary(v.encode("utf-8", "replace"))

    def list_of(self, kind: int, size: int) -> None:
        self.out += struct.pack(">bi", kind, size)

    def stop(self) -> None:
        self.out.append(_STOP)


def _signed64(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def _endpoint(w: _Writer, service_name: str, address: tuple[str, int] | None) -> None:
    """A ``zipkinCore.Endpoint``: ``ipv4`` (0 when not IPv4), ``port``, ``service_name`` (lowercase, as
    Zipkin's model requires) and, for an IPv6 address, ``4: optional binary ipv6`` (16 bytes)."""
    ipv4, port, ipv6 = 0, 0, None
    if address is not None:
        try:
            ip = ipaddress.ip_address(address[0])
        except ValueError:
            ip = None
        if isinstance(ip, ipaddress.IPv4Address):
            ipv4 = int(ip)
        elif isinstance(ip, ipaddress.IPv6Address):
            ipv6 = ip.packed
        port = address[1] & 0xFFFF
    w.field(_I32, 1)
    w.i32(ipv4 - (1 << 32) if ipv4 >= 1 << 31 else ipv4)
    w.field(_I16, 2)
    w.i16(port - (1 << 16) if port >= 1 << 15 else port)
    w.field(_STRING, 3)
    w.string(service_name.lower())
    if ipv6 is not None:
        w.field(_STRING, 4)
        w.binary(ipv6)
    w.stop()


def encode_span(rec: SpanRecord) -> bytes:
    """The span as a Thrift ``zipkinCore.Span`` (TBinaryProtocol)."""
    w = _Writer()
    w.field(_I64, 1)
    w.i64(_signed64(rec.trace_id))
    w.field(_STRING, 3)
    w.string(rec.name.lower())
    w.field(_I64, 4)
    w.i64(_signed64(rec.span_id))
    if rec.parent_id is not None:
        w.field(_I64, 5)
        w.i64(_signed64(rec.parent_id))
    w.field(_LIST, 6)
    w.list_of(_STRUCT, 2)
    for ts, event in ((rec.start_us, "cs"), (rec.end_us, "cr")):
        w.field(_I64, 1)
        w.i64(ts)
        w.field(_STRING, 2)
        w.string(event)
        w.field(_STRUCT, 3)
        _endpoint(w, rec.service_name, None)
        w.stop()
    binaries: list[tuple[str, bytes, int, str, tuple[str, int] | None]] = [
        (k, v.encode("utf-8", "replace"), _ANN_STRING, rec.service_name, None) for k, v in rec.tags
    ]
    if rec.remote is not None:
        binaries.append(("sa", b"\x01", _ANN_BOOL, "", rec.remote))
    w.field(_LIST, 8)
    w.list_of(_STRUCT, len(binaries))
    for tag, raw, kind, service, address in binaries:
        w.field(_STRING, 1)
        w.string(tag)
        w.field(_STRING, 2)
        w.binary(raw)
        w.field(_I32, 3)
        w.i32(kind)
        w.field(_STRUCT, 4)
        _endpoint(w, service, address)
        w.stop()
    if rec.debug:
        w.field(_BOOL, 9)
        w.out.append(1)
    w.field(_I64, 10)
    w.i64(rec.start_us)
    w.field(_I64, 11)
    w.i64(max(1, rec.end_us - rec.start_us))
    if rec.trace_id_high:
        w.field(_I64, 12)
        w.i64(_signed64(rec.trace_id_high))
    w.stop()
    return bytes(w.out)


def scribe_message(rec: SpanRecord) -> str:
    """A ``LogEntry`` message: the Thrift span, base64, and a newline (as Finagle's Scribe tracer)."""
    return base64.b64encode(encode_span(rec)).decode("ascii") + "\n"


def encode_log_call(messages: list[str], seqid: int, category: str = "zipkin") -> bytes:
    """A framed ``scribe.Log(messages)`` call."""
    w = _Writer()
    w.i32(_CALL_HEADER)
    w.string("Log")
    w.i32(seqid)
    w.field(_LIST, 1)
    w.list_of(_STRUCT, len(messages))
    for message in messages:
        w.field(_STRING, 1)
        w.string(category)
        w.field(_STRING, 2)
        w.string(message)
        w.stop()
    w.stop()
    return struct.pack(">i", len(w.out)) + bytes(w.out)


class ScribeError(Exception):
    """The collector's answer could not be read, or was not a result."""


class _ConnectionLost(ScribeError):
    """The connection failed before any byte of the reply came (it may have been gone already)."""


def read_log_reply(frame: bytes, seqid: int | None = None) -> int:
    """The ``ResultCode`` of a framed ``Log`` reply's payload (without its length prefix). ``seqid``: the
    call's sequence id, which the reply must carry (a reply to another call means the connection is out
    of step: what became of this call is unknown)."""
    try:
        (version,) = struct.unpack_from(">i", frame, 0)
        if version & 0xFFFF0000 != _VERSION_1:
            raise ScribeError(
                f"the collector's answer is not a Thrift message (it starts with {frame[:8]!r})"
            )
        kind = version & 0xFF
        (name_len,) = struct.unpack_from(">i", frame, 4)
        if not 0 <= name_len <= len(frame) - 12:
            raise ScribeError(f"the collector's reply has a method name of length {name_len}")
        name = frame[8 : 8 + name_len]
        (got_seqid,) = struct.unpack_from(">i", frame, 8 + name_len)
        pos = 12 + name_len
        if kind == _EXCEPTION:
            raise ScribeError("the collector answered with an exception")
        if kind != _REPLY:
            raise ScribeError(f"the collector answered a message of type {kind}, not a reply")
        if name != b"Log":
            raise ScribeError(f"the collector answered a call of {name.decode('latin-1')!r}, not 'Log'")
        if seqid is not None and got_seqid != seqid:
            raise ScribeError(
                f"the collector's reply has sequence id {got_seqid}, not the call's {seqid} (out of step)"
            )
        ftype, fid = struct.unpack_from(">bh", frame, pos)
        if ftype != _I32 or fid != 0:
            raise ScribeError("the collector's reply holds no result code")
        (code,) = struct.unpack_from(">i", frame, pos + 3)
        return int(code)
    except struct.error:
        raise ScribeError("the collector's reply is cut short") from None


def sample_trace(decision: bool | None, trace_id: int, rate: float, salt: int) -> bool:
    """A request's sampling: its own ``decision`` when it carries one, else ``rate`` decided by a hash
    of ``trace_id`` with ``salt`` (a sink's random value), so every attempt of a trace is alike."""
    if decision is not None:
        return decision
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    mixed = ((trace_id ^ salt) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    return (mixed >> 11) / float(1 << 53) < rate


class ZipkinExporter:
    """The spans of one ``io.l5d.zipkin`` telemeter: sampling, the queue and the sender task."""

    def __init__(
        self,
        host: str,
        port: int,
        sample_rate: float,
        *,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
        max_queue: int = MAX_QUEUE,
        batch: int = BATCH,
        flush_s: float | None = None,
        retry_s: float | None = None,
        send_timeout_s: float | None = None,
        try_later_backoff_s: float = TRY_LATER_BACKOFF_S,
    ) -> None:
        """``flush_s``, ``retry_s``, ``send_timeout_s``: None for ``FLUSH_S``, ``RETRY_S`` and
        ``SEND_TIMEOUT_S`` (read when the exporter is made)."""
        self.host, self.port = host, port
        self.sample_rate = sample_rate
        self._salt = (rng or random.Random()).getrandbits(64)
        self.wall_clock = wall_clock
        self._queue: collections.deque[SpanRecord] = collections.deque()
        self.max_queue, self.batch = max_queue, batch
        self.flush_s = FLUSH_S if flush_s is None else flush_s
        self.retry_s = RETRY_S if retry_s is None else retry_s
        self.send_timeout_s = SEND_TIMEOUT_S if send_timeout_s is None else send_timeout_s
        self.try_later_backoff_s = try_later_backoff_s
        self._stream: trio.abc.Stream | None = None
        self._wakeup = trio.Event()
        self._draining = False
        self._drained = trio.Event()
        self._retrying = False
        self._seqid = 0
        self.recorded = 0
        self.sent = 0
        self.dropped = 0
        self.send_failures = 0
        self.last_error: str | None = None

    def sampled(self, decision: bool | None, trace_id: int) -> bool:
        """Whether a request is recorded: its own decision when it carries one, else by the rate, the
        same for every attempt of a trace (a hash of its id with this exporter's random salt)."""
        return sample_trace(decision, trace_id, self.sample_rate, self._salt)

    def now_us(self) -> int:
        return int(self.wall_clock() * 1e6)

    def record(self, rec: SpanRecord) -> None:
        """Queue a span (dropped, and counted, when the queue is full); never blocks."""
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            return
        self._queue.append(rec)
        self.recorded += 1
        if len(self._queue) >= self.batch:
            self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send queued spans until cancelled (one connection, opened again after a failure). No error
        ends it: a batch that fails for any reason is dropped, counted and logged, and the next one is
        tried ``retry_s`` later."""
        task_status.started()
        try:
            while True:
                with trio.move_on_after(self.flush_s):
                    await self._wakeup.wait()
                self._wakeup = trio.Event()
                while self._queue:
                    batch = [self._queue.popleft() for _ in range(min(self.batch, len(self._queue)))]
                    try:
                        await self._deliver(batch)
                        self.sent += len(batch)
                    except Exception as e:  # (anything: the sender must outlive it, and the daemon too)
                        self.send_failures += 1
                        self.dropped += len(batch)
                        self.last_error = _describe(e, self.host, self.port)
                        expected = isinstance(
                            e, (OSError, trio.TooSlowError, trio.BrokenResourceError, ScribeError)
                        )
                        log.warning(
                            "zipkin.send_failed",
                            error=self.last_error,
                            spans=len(batch),
                            exc_info=not expected,
                        )
                        await self._drop_stream()
                        if self._draining:
                            self._drained.set()  # (a daemon stopping does not wait for the retry)
                        self._retrying = True
                        try:
                            await trio.sleep(self.retry_s)
                        finally:
                            self._retrying = False
                        break
                if self._draining and not self._queue:
                    self._drained.set()
        finally:
            await self._drop_stream()

    async def drain(self) -> None:
        """For a daemon stopping: send what is queued now, without waiting for the next flush. Returns
        when the queue is empty or a batch failed (at once while the collector is failing); the caller
        bounds the wait."""
        if self._retrying:
            return
        self._draining = True
        self._drained = trio.Event()
        self._wakeup.set()
        await self._drained.wait()

    async def _deliver(self, batch: list[SpanRecord]) -> None:
        """Send a batch; on a connection kept from an earlier batch that turns out to be gone (the
        collector restarted, or closed it while idle) before any reply byte came, once more on a new
        connection. (A collector that took the batch and closed without answering gets it twice;
        Zipkin keeps one copy of a span reported twice.)"""
        calls = [scribe_message(r) for r in batch]
        for attempt in range(TRY_LATER_TRIES):
            if attempt:
                await trio.sleep(self.try_later_backoff_s * attempt)
            if await self._send_once(calls) != RESULT_TRY_LATER:
                return
        raise ScribeError(f"the collector answered TRY_LATER ({TRY_LATER_TRIES} times)")

    async def _send_once(self, calls: list[str]) -> int:
        """One ``Log`` call of the batch (see :meth:`_deliver`): OK or TRY_LATER."""
        if self._stream is not None:
            try:
                return await self._send(self._stream, calls)
            except _ConnectionLost:
                await self._drop_stream()
        with trio.fail_after(CONNECT_TIMEOUT_S):
            self._stream = await trio.open_tcp_stream(self.host, self.port)
        return await self._send(self._stream, calls)

    async def _drop_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await _close(stream)

    async def _send(self, stream: trio.abc.Stream, messages: list[str]) -> int:
        self._seqid = seqid = (self._seqid + 1) & 0x7FFFFFFF
        with trio.fail_after(self.send_timeout_s):
            try:
                await stream.send_all(encode_log_call(messages, seqid))
                header = await stream.receive_some(4)
            except (OSError, trio.BrokenResourceError) as e:
                raise _ConnectionLost(f"the connection failed: {e}") from e
            if not header:
                raise _ConnectionLost("the collector closed the connection")
            header += await _read_exactly(stream, 4 - len(header))
            (size,) = struct.unpack(">i", header)
            if not 0 < size <= MAX_REPLY:
                raise ScribeError(f"the collector's reply frame has length {size}")
            code = read_log_reply(await _read_exactly(stream, size), seqid)
        if code not in (RESULT_OK, RESULT_TRY_LATER):
            raise ScribeError(f"the collector answered result code {code}")
        return code

    def statistics(self) -> dict[str, Any]:
        return {
            "collector": f"{self.host}:{self.port}",
            "sample_rate": self.sample_rate,
            "queued": len(self._queue),
            "recorded": self.recorded,
            "sent": self.sent,
            "dropped": self.dropped,
            "send_failures": self.send_failures,
            "last_error": self.last_error,
        }


class AttemptRecorder:
    """What a router's clients call for each attempt they forward (``Client.spans``): a span for each
    exporter that samples the request (see the module docstring)."""

    def __init__(self, exporters: list[ZipkinExporter], router: str) -> None:
        self.exporters = exporters
        self.router = router
        self.now_us = exporters[0].now_us

    def attempt(
        self, req: Any, client_id: str, endpoint: str, sent_us: int, status: int | None, cause: str | None
    ) -> None:
        ids = span_of(req.headers)
        if ids is None:
            return
        trace_id, span_id, parent_id, trace_high, decision, debug = ids
        recorders = [e for e in self.exporters if e.sampled(decision, trace_id)]
        if not recorders:
            return
        headers = req.headers
        tags = [
            ("router.label", self.router),
            ("namer.path", _text(headers.get(b"l5d-dst-service"))),
            ("dst.id", client_id),
            ("http.req.method", req.method),
            ("http.req.host", req.authority or _text(headers.get(b"host"))),
            ("http.uri", req.target),
        ]
        if status is not None:
            tags.append(("http.rsp.status", str(status)))
        if cause is not None:
            tags.append(("error", cause))
        end_us = self.now_us()
        record = SpanRecord(
            trace_id=trace_id,
            span_id=span_id,
            parent_id=parent_id,
            name=req.method[:MAX_TAG_CHARS],
            start_us=sent_us,
            end_us=max(end_us, sent_us),
            service_name=client_id.lstrip("/")[:MAX_TAG_CHARS],
            remote=_address(endpoint),
            tags=[(k, v[:MAX_TAG_CHARS]) for k, v in tags if v],
            trace_id_high=trace_high,
            debug=debug,
        )
        for e in recorders:
            e.record(record)


def _text(value: bytes | None) -> str:
    return value.decode("latin-1") if value else ""


def _address(endpoint: str) -> tuple[str, int] | None:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _describe(e: BaseException, host: str, port: int) -> str:
    if isinstance(e, trio.TooSlowError):
        return f"the Zipkin collector at {host}:{port} did not answer in time"
    if isinstance(e, OSError):
        return f"cannot reach the Zipkin collector at {host}:{port}: {e.strerror or e}"
    if isinstance(e, ScribeError):
        return f"the Zipkin collector at {host}:{port}: {e}"
    return f"the Zipkin collector at {host}:{port}: {type(e).__name__}: {e}"


async def _read_exactly(stream: trio.abc.Stream, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        if not chunk:
            raise ScribeError("the collector closed the connection")
        data += chunk
    return bytes(data)


async def _close(stream: trio.abc.Stream) -> None:
    with trio.move_on_after(1) as scope:
        scope.shield = True
        try:
            await stream.aclose()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
