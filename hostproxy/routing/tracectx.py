"""Trace propagation: the router's ``tracePropagator`` (``io.l5d.default`` or ``io.l5d.zipkin``).

Theory of operation. hostproxy propagates trace context (spans are recorded only for an
``io.l5d.zipkin`` telemeter, :mod:`hostproxy.zipkin`, which reads them back with :func:`span_of`): it
reads the trace context a request arrived with and forwards a child of it, so that the spans the applications on either side report join one trace, and every forwarded request
carries ``l5d-reqid`` (the trace id, for correlating logs). Everything here is a pure function of the
received header values and an injected ``random.Random``.

One span per hop. Linkerd 1 makes two spans per request (a server span, child of the received one,
and a client span, child of that) and forwards the client span; its parent is the server span, which
only Linkerd's own tracer ever reports. hostproxy makes one: the forwarded span id is new and its
parent is the span id received, so an application that reports the span it was given is the
caller's child in the trace tree. With nothing (or nothing valid) received, a new trace starts: a
random 64-bit id from the rng is both the trace id and the span id (a root span, as Finagle makes
one), with no parent.

``io.l5d.default`` (:class:`DefaultPropagator`): reads ``l5d-ctx-trace`` (base64 of 32 bytes: span id,
parent id, trace id, flags; 8 bytes each, big-endian; Finagle's ``TraceId.serialize``) and writes the
child the same way, with the received flags; a 128-bit trace id's high 64 bits, which Finagle writes
after the flags (40 bytes), are kept. A value that is not valid base64 of 32 or 40 bytes starts a
new trace (Finagle's deserializer fails and Linkerd starts one). ``l5d-sample`` (a rate, clamped to
[0, 1], read by the server; not a number, ``nan`` included: none) decides whether the trace is sampled: at 1 always, at 0 never, otherwise
with that probability (a draw from the rng); the decision goes into the flags (``SamplingKnown`` and
``Sampled``), which is what the next Finagle/Linkerd hop and hostproxy read. Without it, a decision
received in the flags passes on unchanged.

``io.l5d.zipkin`` (:class:`ZipkinPropagator`): B3 multi-header propagation. Reads ``x-b3-traceid``
(16 or 32 hex digits; a 128-bit id is kept whole, where Linkerd 1 kept its low 64 bits),
``x-b3-spanid`` (16 hex digits), ``x-b3-sampled`` (``1``/``true`` or ``0``/``false``) and
``x-b3-flags`` (``1``: debug); ``x-b3-parentspanid`` is replaced, not read. Hex is read in either
case and written in lowercase; shorter ids are zero-padded, as Finagle reads them. A trace continues
only when both the trace id and the span id are valid and not zero; otherwise a new trace starts, and
the request is forwarded as any other (a bad value never fails a request). A sampling decision is
kept even then (``x-b3-sampled: 0`` alone says "do not trace"); an ``x-b3-sampled`` that is neither
is no decision. Written: ``x-b3-sampled`` (only when a decision was received: with none hostproxy,
having no tracer to decide, leaves it to the next hop, where Linkerd wrote ``0``), ``x-b3-flags: 1``
(only for debug, which also writes ``x-b3-sampled: 1``), ``x-b3-traceid``, ``x-b3-parentspanid``
(not for a new trace), ``x-b3-spanid``. A received ``l5d-ctx-trace`` is dropped and none is written
(as Linkerd's zipkin propagator). The single ``b3`` header is neither read nor written (Linkerd 1
does not know it); it passes through as any other header.

Both write ``l5d-reqid``: the trace id (its low 64 bits, 16 hex digits, for a 128-bit B3 id). The
headers a propagator writes are returned in a fixed order, the per-request ones last and
``l5d-reqid`` the very last, which the HTTP/1.1 writer's request-block cache relies on.

One span per attempt. A request sent more than once (a retry the response classifier allowed, or a
requeue after a connection failure) gets a new span id for every attempt after the first
(:meth:`TracePropagator.next_attempt`): the same trace id, parent and flags (a sampling decision is
made once per request), so the attempts are siblings in the trace, as Linkerd's retries are (its
client filter, which gives each request through the client stack a span of its own, sits below the
classified retries; Finagle's requeues are made below that filter and reused the span of the
attempt they replaced, where here a requeue is an attempt like any other). ``l5d-reqid`` is the
trace id, so it is the same on every attempt: the log lines of all the attempts of one request share
it. An attempt of a request that started a new trace has no received span to be a child of: the
first attempt's span is the trace's root (its id is the trace id) and every later attempt is a child
of that root, so that the trace keeps one root.
"""

from __future__ import annotations

import base64
import binascii
import random
import struct
from collections.abc import Iterable, Mapping
from typing import ClassVar, Final

__all__ = [
    "B3_FLAGS",
    "B3_NAMES",
    "B3_PARENTSPANID",
    "B3_PREFIX",
    "B3_SAMPLED",
    "B3_SPANID",
    "B3_TRACEID",
    "CTX_TRACE",
    "DEFAULT",
    "FLAG_DEBUG",
    "FLAG_SAMPLED",
    "FLAG_SAMPLING_KNOWN",
    "KINDS",
    "REQID",
    "ZIPKIN",
    "DefaultPropagator",
    "L5dTrace",
    "TracePropagator",
    "ZipkinPropagator",
    "decode_l5d_trace",
    "encode_l5d_trace",
    "propagator_for",
]

Header = tuple[bytes, bytes]

CTX_TRACE: Final = b"l5d-ctx-trace"
REQID: Final = b"l5d-reqid"
B3_PREFIX: Final = b"x-b3-"
B3_TRACEID: Final = b"x-b3-traceid"
B3_SPANID: Final = b"x-b3-spanid"
B3_PARENTSPANID: Final = b"x-b3-parentspanid"
B3_SAMPLED: Final = b"x-b3-sampled"
B3_FLAGS: Final = b"x-b3-flags"
B3_NAMES: Final = frozenset({B3_TRACEID, B3_SPANID, B3_PARENTSPANID, B3_SAMPLED, B3_FLAGS})

# Finagle's trace flags (``com.twitter.finagle.tracing.Flags``).
FLAG_DEBUG: Final = 1
FLAG_SAMPLING_KNOWN: Final = 2
FLAG_SAMPLED: Final = 4
_MASK64: Final = (1 << 64) - 1

_L5D_TRACE = struct.Struct(">QQQQ")
_L5D_TRACE_128 = struct.Struct(">QQQQQ")


def _new_id(rng: random.Random) -> int:
    """A random non-zero 64-bit id (zero means "no id" in both formats)."""
    return rng.getrandbits(64) or 1


def _new_span(rng: random.Random, *taken: int) -> int:
    """A random non-zero 64-bit id that is none of ``taken`` (an attempt's span id is never its
    parent's nor the previous attempt's)."""
    span = _new_id(rng)
    while span in taken:
        span = _new_id(rng)
    return span


# -- io.l5d.default ------------------------------------------------------------------------------


class L5dTrace(tuple[int, ...]):
    """A decoded ``l5d-ctx-trace``: ``(span_id, parent_id, trace_id, flags)``, and ``trace_id_high``
    last for a 128-bit trace id (Finagle's 40-byte form)."""

    __slots__ = ()

    @property
    def trace_id_high(self) -> int | None:
        return self[4] if len(self) > 4 else None

    @property
    def span_id(self) -> int:
        return self[0]

    @property
    def parent_id(self) -> int:
        return self[1]

    @property
    def trace_id(self) -> int:
        return self[2]

    @property
    def flags(self) -> int:
        return self[3]


def decode_l5d_trace(value: bytes) -> L5dTrace | None:
    """The ids and flags in an ``l5d-ctx-trace`` value, or ``None`` when it is not base64 of 32 bytes
    (or 40: a 128-bit trace id, its high 64 bits last, as Finagle reads and writes it)."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) == 32:
        return L5dTrace(_L5D_TRACE.unpack(raw))
    if len(raw) == 40:
        got = _L5D_TRACE_128.unpack(raw)
        return L5dTrace(got if got[4] else got[:4])  # (a zero high part: a 64-bit id)
    return None


def encode_l5d_trace(
    span_id: int, parent_id: int, trace_id: int, flags: int, trace_id_high: int | None = None
) -> bytes:
    """An ``l5d-ctx-trace`` value (Finagle's ``TraceId.serialize``, base64): 32 bytes, or 40 with a
    128-bit trace id's high 64 bits."""
    if trace_id_high:
        return base64.b64encode(
            _L5D_TRACE_128.pack(span_id, parent_id, trace_id, flags & _MASK64, trace_id_high & _MASK64)
        )
    return base64.b64encode(_L5D_TRACE.pack(span_id, parent_id, trace_id, flags & _MASK64))


def _sampled_flags(flags: int, sampled: bool) -> int:
    if sampled:
        return flags | FLAG_SAMPLING_KNOWN | FLAG_SAMPLED
    return (flags | FLAG_SAMPLING_KNOWN) & ~FLAG_SAMPLED


def _decide(rate: float, rng: random.Random) -> bool:
    """A sampling decision at ``rate`` (in [0, 1]): exact at the ends, a draw from the rng between."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    return rng.random() < rate


class TracePropagator:
    """What a router's ``tracePropagator`` kind reads from a request and writes on the forwarded one."""

    kind: ClassVar[str]
    #: The request headers it reads; all are removed from the forwarded request and replaced.
    names: ClassVar[frozenset[bytes]]
    #: A prefix every one of ``names`` that is not ``l5d-*`` starts with (None: they all are ``l5d-*``).
    prefix: ClassVar[bytes | None]

    def forward(
        self, received: Mapping[bytes, bytes], sample: float | None, rng: random.Random
    ) -> list[Header]:
        """The headers to set on the forwarded request, ``l5d-reqid`` last. ``received`` maps each of
        ``names`` the request had to its first value; ``sample`` is the ``l5d-sample`` rate read."""
        raise NotImplementedError

    def new_trace(self, rng: random.Random) -> list[Header]:
        """``forward({}, None, rng)``: the headers of a new trace (the usual request's, kept quick)."""
        raise NotImplementedError

    def next_attempt(self, headers: Iterable[Header], rng: random.Random) -> list[Header]:
        """The fields of a forwarded request (``headers``, with the trace headers :meth:`forward` or
        :meth:`new_trace` wrote) for its next attempt: a copy in the same order, whose span id is
        new; the trace id, the parent (the first attempt's span, when that was a new trace's root),
        the flags and ``l5d-reqid`` stay. Without the propagator's span header (or with one it did
        not write), a plain copy."""
        raise NotImplementedError


class DefaultPropagator(TracePropagator):
    """``io.l5d.default``: ``l5d-ctx-trace`` and ``l5d-sample``."""

    kind = "io.l5d.default"
    names = frozenset({CTX_TRACE})
    prefix = None

    def forward(
        self, received: Mapping[bytes, bytes], sample: float | None, rng: random.Random
    ) -> list[Header]:
        value = received.get(CTX_TRACE)
        got = decode_l5d_trace(value) if value is not None else None
        span = _new_id(rng)
        high = None
        if got is None or got.span_id == 0 or got.trace_id == 0:
            trace, parent, flags = span, span, 0  # a root: Finagle writes its parent as itself
        else:
            trace, parent, flags, high = got.trace_id, got.span_id, got.flags, got.trace_id_high
        if sample is not None:
            flags = _sampled_flags(flags, _decide(sample, rng))
        return [
            (CTX_TRACE, encode_l5d_trace(span, parent, trace, flags, high)),
            (REQID, b"%016x" % trace),
        ]

    def new_trace(self, rng: random.Random) -> list[Header]:
        span = rng.getrandbits(64) or 1
        return [(CTX_TRACE, base64.b64encode(_L5D_TRACE.pack(span, span, span, 0))), (REQID, b"%016x" % span)]

    def next_attempt(self, headers: Iterable[Header], rng: random.Random) -> list[Header]:
        out = list(headers)
        for i, (name, value) in enumerate(out):
            if name == CTX_TRACE:
                got = decode_l5d_trace(value)
                if got is None:
                    break
                # A root (Finagle writes its parent as itself): the later attempts are its children.
                parent = got.span_id if got.parent_id == got.span_id else got.parent_id
                span = _new_span(rng, got.span_id, parent)
                out[i] = (
                    CTX_TRACE,
                    encode_l5d_trace(span, parent, got.trace_id, got.flags, got.trace_id_high),
                )
                break
        return out


_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


def _hex_id(value: bytes | None, max_digits: int) -> bytes | None:
    """A B3 id as lowercase hex, zero-padded to 16 digits (or 32 past 16), or None when it is not
    1 to ``max_digits`` hex digits or is zero."""
    if value is None:
        return None
    v = value.strip(b" \t")
    if not v or len(v) > max_digits or not _HEX_DIGITS.issuperset(v):
        return None
    if not v.strip(b"0"):
        return None
    return v.lower().rjust(16 if len(v) <= 16 else 32, b"0")


def _id_value(value: bytes | None) -> int:
    """The number a 16-digit B3 id stands for (0 for none or a malformed one)."""
    v = _hex_id(value, 16)
    return int(v, 16) if v is not None else 0


def _b3_sampled(value: bytes | None) -> bool | None:
    if value is None:
        return None
    v = value.strip(b" \t").lower()
    if v in (b"1", b"true"):
        return True
    if v in (b"0", b"false"):
        return False
    return None


class ZipkinPropagator(TracePropagator):
    """``io.l5d.zipkin``: the ``x-b3-*`` headers."""

    kind = "io.l5d.zipkin"
    names = B3_NAMES | {CTX_TRACE}
    prefix = B3_PREFIX

    def forward(
        self, received: Mapping[bytes, bytes], sample: float | None, rng: random.Random
    ) -> list[Header]:
        del sample  # ``l5d-sample`` is the default propagator's; B3 carries its own decision
        trace = _hex_id(received.get(B3_TRACEID), 32)
        parent = _hex_id(received.get(B3_SPANID), 16)
        sampled = _b3_sampled(received.get(B3_SAMPLED))
        flags = received.get(B3_FLAGS)
        debug = flags is not None and flags.strip(b" \t") == b"1"
        span = b"%016x" % _new_id(rng)
        out: list[Header] = []
        if debug or sampled is not None:
            out.append((B3_SAMPLED, b"1" if debug or sampled else b"0"))
        if debug:
            out.append((B3_FLAGS, b"1"))
        if trace is None or parent is None:
            out += [(B3_TRACEID, span), (B3_SPANID, span), (REQID, span)]
        else:
            out += [(B3_TRACEID, trace), (B3_PARENTSPANID, parent), (B3_SPANID, span), (REQID, trace[-16:])]
        return out

    def new_trace(self, rng: random.Random) -> list[Header]:
        span = b"%016x" % (rng.getrandbits(64) or 1)
        return [(B3_TRACEID, span), (B3_SPANID, span), (REQID, span)]

    def next_attempt(self, headers: Iterable[Header], rng: random.Random) -> list[Header]:
        out = list(headers)
        at = -1
        parent: bytes | None = None
        for i, (name, value) in enumerate(out):
            if name == B3_SPANID:
                at = i
            elif name == B3_PARENTSPANID:
                parent = value
        if at < 0:
            return out
        old = out[at][1]
        span = _new_span(rng, _id_value(old), _id_value(parent))
        out[at] = (B3_SPANID, b"%016x" % span)
        if parent is None:  # the first attempt was a new trace's root: the later ones are its children
            out.insert(at, (B3_PARENTSPANID, old))
        return out


DEFAULT: Final = DefaultPropagator()
ZIPKIN: Final = ZipkinPropagator()
KINDS: Final[dict[str, TracePropagator]] = {DEFAULT.kind: DEFAULT, ZIPKIN.kind: ZIPKIN}


def propagator_for(kind: str) -> TracePropagator:
    """The propagator of a ``tracePropagator`` kind (config validation has refused any other)."""
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown tracePropagator kind {kind!r}; valid kinds: {', '.join(KINDS)}") from None


# -- reading an attempt's span (for trace export) -------------------------------------------------


class SpanIds(tuple[int, int, int | None, int | None, bool | None, bool]):
    """The span a forwarded attempt carries: ``(trace_id, span_id, parent_id, trace_id_high,
    sampled, debug)``; ``parent_id`` None for a root span, ``sampled`` None without a decision."""

    __slots__ = ()


def _id_of(value: bytes | None, max_digits: int = 16) -> int | None:
    """A B3 id's value (``_hex_id``'s checks), or None."""
    checked = _hex_id(value, max_digits)
    return int(checked, 16) if checked is not None else None


def span_of(headers: Iterable[Header]) -> SpanIds | None:
    """The span of a forwarded request, from the ``l5d-ctx-trace`` or B3 fields a propagator wrote
    (``l5d-ctx-trace`` first); None when it carries neither in a form that can be read."""
    b3: dict[bytes, bytes] = {}
    for name, value in headers:
        if name == CTX_TRACE:
            got = decode_l5d_trace(value)
            if got is not None and got.span_id and got.trace_id:
                flags = got.flags
                # (Finagle: a debug trace is sampled, whatever its sampling flags say.)
                sampled = (
                    True
                    if flags & FLAG_DEBUG
                    else bool(flags & FLAG_SAMPLED)
                    if flags & FLAG_SAMPLING_KNOWN
                    else None
                )
                parent = got.parent_id if got.parent_id not in (0, got.span_id) else None
                return SpanIds(
                    (got.trace_id, got.span_id, parent, got.trace_id_high, sampled, bool(flags & FLAG_DEBUG))
                )
        elif name in B3_NAMES:
            b3[name] = value.strip()
    trace_hex = _hex_id(b3.get(B3_TRACEID), 32)
    span = _id_of(b3.get(B3_SPANID))
    if trace_hex is None or span is None:
        return None
    trace = int(trace_hex[-16:], 16)
    high = int(trace_hex[:-16], 16) or None if len(trace_hex) > 16 else None
    parent = _id_of(b3.get(B3_PARENTSPANID))
    debug = b3.get(B3_FLAGS) == b"1"
    decision = b3.get(B3_SAMPLED, b"").lower()
    sampled = (
        True if debug or decision in (b"1", b"true") else False if decision in (b"0", b"false") else None
    )
    return SpanIds((trace, span, parent, high, sampled, debug))
