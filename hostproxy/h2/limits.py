"""HTTP/2 hardening accounting: the limits python h2 does not enforce, as pure objects.

Theory of operation
-------------------
The h2 library parses frames and keeps stream state, but it acknowledges every PING and SETTINGS
frame, accepts any number of streams that are opened and reset at once, and does not cap the number
of header fields.  Those limits are ours.  This module decides; the trio connection code
(``hostproxy.h2.link``) performs what it decides (GOAWAY ENHANCE_YOUR_CALM, a 431, a reset).

* ``FrameScanner`` reads the 9-octet frame headers out of the raw byte stream *before* h2 sees the
  bytes, so a flood is noticed before h2 queues one ACK for it.  It also bounds a header block
  (HEADERS/PUSH_PROMISE followed by CONTINUATION frames) by frame count and by octets
  (``HARD_LIMIT_FACTOR`` times the header-list limit: a list merely past the limit gets 431).
* ``TokenBucket`` is a rate limit with a burst: ``take(now)`` spends a token, refilled at
  ``rate`` per second.  Clocks are injected (``now`` is passed in), so tests need no sleeping.
* ``FloodGuard`` holds one connection's buckets: PING, SETTINGS, empty DATA frames and streams
  reset before their response ended (Rapid Reset, CVE-2023-44487), plus the count of header lists
  refused.  Each ``on_*`` method returns ``None`` (fine) or a ``Verdict`` naming the limit that
  was exceeded; the caller then ends the connection.  A client that cancels a few streams now and
  then (gRPC cancellation) never comes near a budget; only a peer far beyond it is cut off.
* ``header_list_size`` counts a header list as RFC 9113 §6.5.2 does (name + value + 32 octets per
  field) and ``check_header_list`` applies the size and the field-count caps.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

__all__ = [
    "ENHANCE_YOUR_CALM",
    "HARD_LIMIT_FACTOR",
    "FrameHeader",
    "FrameScanner",
    "FloodGuard",
    "H2Limits",
    "TokenBucket",
    "Verdict",
    "check_header_list",
    "header_list_size",
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ENHANCE_YOUR_CALM = 0xB
#: A header list past ``max_header_list_bytes`` is refused with 431, on its stream alone; that needs
#: it decoded whole, so the connection ends only for a block this many times past the limit (as
#: received, or decoded: an HPACK bomb), whose decoding would cost too much.
HARD_LIMIT_FACTOR = 4

DATA = 0x0
HEADERS = 0x1
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
CONTINUATION = 0x9
FLAG_ACK = 0x1
FLAG_END_STREAM = 0x1
FLAG_END_HEADERS = 0x4


@dataclass(frozen=True)
class H2Limits:
    """Per-connection limits (server side; the upstream side uses the same accounting)."""

    max_concurrent_streams: int = 1000
    max_header_list_bytes: int = 64 * 1024
    max_header_count: int = 100
    max_continuation_frames: int = 16
    #: Streams reset (by the peer) before their response ended: a burst and a refill rate.
    reset_burst: int = 200
    reset_rate_per_s: float = 50.0
    ping_burst: int = 20
    ping_rate_per_s: float = 5.0
    settings_burst: int = 20
    settings_rate_per_s: float = 5.0
    empty_frame_burst: int = 100
    empty_frame_rate_per_s: float = 20.0
    #: Header lists refused (too large, too many fields) before the connection is ended.
    max_refused_header_lists: int = 10


@dataclass(frozen=True)
class Verdict:
    """A limit was exceeded: ``limit`` names it, ``message`` says what happened and what to do."""

    limit: str
    message: str


@dataclass(frozen=True)
class FrameHeader:
    type: int
    flags: int
    stream_id: int
    length: int


class FrameScanner:
    """Follows frame boundaries in a raw HTTP/2 byte stream (it keeps no payload bytes).

    ``expect_preface`` skips the 24-octet client connection preface first (server side).
    """

    def __init__(self, limits: H2Limits, *, expect_preface: bool) -> None:
        self._limits = limits
        self._preface_left = len(PREFACE) if expect_preface else 0
        self._header_buf = b""
        self._skip = 0  # payload octets of the current frame still to pass over
        self._block_frames = 0  # frames of an open header block (0: none open)
        self._block_bytes = 0

    def feed(self, data: bytes) -> Iterator[FrameHeader | Verdict]:
        """The frame headers that complete in ``data``; a ``Verdict`` ends the iteration."""
        view = memoryview(data)
        pos = 0
        n = len(view)
        if self._preface_left:
            take = min(self._preface_left, n)
            self._preface_left -= take
            pos = take
        while pos < n:
            if self._skip:
                take = min(self._skip, n - pos)
                self._skip -= take
                pos += take
                continue
            need = 9 - len(self._header_buf)
            chunk = bytes(view[pos : pos + need])
            pos += len(chunk)
            self._header_buf += chunk
            if len(self._header_buf) < 9:
                return
            raw, self._header_buf = self._header_buf, b""
            length = int.from_bytes(raw[0:3], "big")
            frame = FrameHeader(raw[3], raw[4], int.from_bytes(raw[5:9], "big") & 0x7FFFFFFF, length)
            self._skip = length
            verdict = self._block(frame)
            if verdict is not None:
                yield verdict
                return
            yield frame

    def _block(self, frame: FrameHeader) -> Verdict | None:
        limits = self._limits
        if frame.type in (HEADERS, PUSH_PROMISE):
            self._block_frames = 0 if frame.flags & FLAG_END_HEADERS else 1
            self._block_bytes = frame.length
        elif frame.type == CONTINUATION and self._block_frames:
            self._block_frames += 1
            self._block_bytes += frame.length
            if frame.flags & FLAG_END_HEADERS:
                self._block_frames = 0
        else:
            return None
        if self._block_frames > limits.max_continuation_frames:
            return Verdict(
                "continuation",
                f"a header block went on for more than {limits.max_continuation_frames} CONTINUATION "
                "frames; send headers in fewer, larger frames",
            )
        hard = limits.max_header_list_bytes * HARD_LIMIT_FACTOR
        if self._block_bytes > hard:
            return Verdict(
                "header-block",
                f"a header block exceeded {hard} octets ({HARD_LIMIT_FACTOR} times maxHeaderListByts)",
            )
        return None


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second of the injected clock."""

    __slots__ = ("burst", "rate", "tokens", "_last")

    def __init__(self, burst: int, rate: float, now: float) -> None:
        self.burst = burst
        self.rate = rate
        self.tokens = float(burst)
        self._last = now

    def take(self, now: float) -> bool:
        """Spend one token; False when none was left (the rate was exceeded)."""
        elapsed = max(0.0, now - self._last)
        self._last = now
        self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class FloodGuard:
    """One connection's flood accounting (see the module docstring)."""

    def __init__(self, limits: H2Limits, now: float) -> None:
        self.limits = limits
        self._resets = TokenBucket(limits.reset_burst, limits.reset_rate_per_s, now)
        self._pings = TokenBucket(limits.ping_burst, limits.ping_rate_per_s, now)
        self._settings = TokenBucket(limits.settings_burst, limits.settings_rate_per_s, now)
        self._empty = TokenBucket(limits.empty_frame_burst, limits.empty_frame_rate_per_s, now)
        self.refused_header_lists = 0
        self.early_resets = 0
        self.tripped: Verdict | None = None

    def _trip(self, verdict: Verdict) -> Verdict:
        if self.tripped is None:
            self.tripped = verdict
        return verdict

    def on_frame(self, frame: FrameHeader, now: float) -> Verdict | None:
        """Account one received frame (from ``FrameScanner``)."""
        lim = self.limits
        if frame.flags & FLAG_ACK and frame.type in (PING, SETTINGS):
            return None
        if frame.type == PING:
            bucket, what, burst, rate = self._pings, "PING frames", lim.ping_burst, lim.ping_rate_per_s
            limit = "ping"
        elif frame.type == SETTINGS:
            bucket, what, burst, rate = (
                self._settings,
                "SETTINGS frames",
                lim.settings_burst,
                lim.settings_rate_per_s,
            )
            limit = "settings"
        elif frame.type == DATA and frame.length == 0 and not frame.flags & FLAG_END_STREAM:
            bucket, what, burst, rate = (
                self._empty,
                "empty DATA frames",
                lim.empty_frame_burst,
                lim.empty_frame_rate_per_s,
            )
            limit = "empty-frames"
        else:
            return None
        if bucket.take(now):
            return None
        return self._trip(Verdict(limit, f"more than {burst} {what} at over {rate:g}/s"))

    def on_early_reset(self, now: float) -> Verdict | None:
        """The peer reset a stream before its response ended (a cancellation, or Rapid Reset)."""
        self.early_resets += 1
        if self._resets.take(now):
            return None
        lim = self.limits
        return self._trip(
            Verdict(
                "rapid-reset",
                f"more than {lim.reset_burst} streams reset before their response ended, at over "
                f"{lim.reset_rate_per_s:g}/s (CVE-2023-44487 Rapid Reset)",
            )
        )

    def on_refused_header_list(self) -> Verdict | None:
        """A stream's header list was refused (431); too many of them end the connection."""
        self.refused_header_lists += 1
        lim = self.limits
        if self.refused_header_lists > lim.max_refused_header_lists:
            return self._trip(
                Verdict(
                    "header-lists",
                    f"more than {lim.max_refused_header_lists} header lists refused on one connection",
                )
            )
        return None


def header_list_size(headers: Iterable[tuple[bytes, bytes]]) -> int:
    """The RFC 9113 §6.5.2 size: name + value + 32 octets for every field."""
    return sum(len(n) + len(v) + 32 for n, v in headers)


def check_header_list(headers: list[tuple[bytes, bytes]], limits: H2Limits) -> str | None:
    """``None`` when the header list (as received: cookie crumbs apart) is within limits, else why it
    is not (for a 431). The size counts every field, each crumb too (RFC 9113 §6.5.2); the field
    count leaves out the pseudo-header fields and counts the crumbs as the one ``cookie`` field they
    make, as HTTP/1.1 counts fields: the same request passes or not over either."""
    count = len(headers)
    if count > limits.max_header_count:
        count = sum(1 for n, _ in headers if n[:1] != b":" and n != b"cookie")
        count += any(n == b"cookie" for n, _ in headers)
        if count > limits.max_header_count:
            return f"request has {count} header fields, more than the limit of {limits.max_header_count}"
    size = header_list_size(headers)
    if size > limits.max_header_list_bytes:
        return (
            f"request header list is {size} octets (32 per field included), more than the limit of "
            f"{limits.max_header_list_bytes}"
        )
    return None
