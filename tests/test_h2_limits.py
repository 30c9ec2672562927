"""Pure tests of the HTTP/2 hardening accounting and the gRPC error conversion (injected clock)."""

from __future__ import annotations

from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)
from hypothesis import given
from hypothesis import strategies as st

from hostproxy.h2.grpc import encode_grpc_message, grpc_error_response, is_grpc
from hostproxy.h2.limits import (
    FloodGuard,
    FrameHeader,
    FrameScanner,
    H2Limits,
    TokenBucket,
    Verdict,
    check_header_list,
    header_list_size,
)
from hostproxy.http.errors import error_response
from hostproxy.http.message import Body, Headers, Response

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def scan(data: bytes, limits: H2Limits | None = None, *, preface: bool = True) -> list[FrameHeader | Verdict]:
    return list(FrameScanner(limits or H2Limits(), expect_preface=preface).feed(data))


def test_scanner_follows_frame_boundaries_after_the_preface() -> None:
    data = (
        PREFACE
        + SettingsFrame(0).serialize()
        + PingFrame(0, opaque_data=b"12345678").serialize()
        + DataFrame(1, data=b"x" * 100).serialize()
        + RstStreamFrame(1, error_code=8).serialize()
    )
    frames = scan(data)
    assert [(f.type, f.stream_id, f.length) for f in frames if isinstance(f, FrameHeader)] == [
        (0x4, 0, 0),
        (0x6, 0, 8),
        (0x0, 1, 100),
        (0x3, 1, 4),
    ]


@given(st.lists(st.integers(min_value=1, max_value=50), max_size=30))
def test_scanner_is_independent_of_how_bytes_are_split(cuts: list[int]) -> None:
    data = PREFACE + b"".join(DataFrame(2 * i + 1, data=b"z" * (i * 7)).serialize() for i in range(10))
    whole = scan(data)
    scanner = FrameScanner(H2Limits(), expect_preface=True)
    pieces: list[FrameHeader | Verdict] = []
    pos = 0
    for c in cuts:
        pieces.extend(scanner.feed(data[pos : pos + c]))
        pos += c
    pieces.extend(scanner.feed(data[pos:]))
    assert pieces == whole
    assert len(whole) == 10


def test_scanner_caps_continuation_frames() -> None:
    data = HeadersFrame(1, data=b"ab").serialize() + b"".join(
        ContinuationFrame(1, data=b"").serialize() for _ in range(20)
    )
    out = scan(data, H2Limits(max_continuation_frames=16), preface=False)
    assert out[-1] == Verdict(
        "continuation",
        "a header block went on for more than 16 CONTINUATION frames; send headers in fewer, larger frames",
    )
    assert len(out) == 17  # HEADERS + 15 CONTINUATION, then the verdict


def test_scanner_caps_header_block_bytes() -> None:
    data = HeadersFrame(1, data=b"a" * 1000).serialize() + ContinuationFrame(1, data=b"b" * 1000).serialize()
    out = scan(data, H2Limits(max_header_list_bytes=1500 // 4), preface=False)
    assert out[-1] == Verdict(
        "header-block", "a header block exceeded 1500 octets (4 times maxHeaderListByts)"
    )


def test_a_complete_header_block_resets_the_count() -> None:
    one = (
        HeadersFrame(1, data=b"a").serialize()
        + ContinuationFrame(1, data=b"b", flags=["END_HEADERS"]).serialize()
    )
    out = scan(one * 50, H2Limits(max_continuation_frames=1), preface=False)
    assert not any(isinstance(f, Verdict) for f in out)


def test_token_bucket_refills_with_the_injected_clock() -> None:
    b = TokenBucket(burst=3, rate=2.0, now=0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.take(0.5) is True  # one token back after half a second at 2/s
    assert b.take(0.5) is False
    assert [b.take(100.0) for _ in range(4)] == [True, True, True, False]  # never above the burst


def test_guard_ping_and_settings_rates() -> None:
    g = FloodGuard(
        H2Limits(ping_burst=2, ping_rate_per_s=1.0, settings_burst=1, settings_rate_per_s=1.0), 0.0
    )
    ping = FrameHeader(0x6, 0, 0, 8)
    ack = FrameHeader(0x6, 0x1, 0, 8)
    assert g.on_frame(ping, 0.0) is None and g.on_frame(ping, 0.0) is None
    assert g.on_frame(ack, 0.0) is None  # ACKs are answers, not requests: never counted
    assert g.on_frame(ping, 0.0) == Verdict("ping", "more than 2 PING frames at over 1/s")
    settings = FrameHeader(0x4, 0, 0, 6)
    assert g.on_frame(settings, 0.0) is None
    assert g.on_frame(settings, 0.0) == Verdict("settings", "more than 1 SETTINGS frames at over 1/s")
    assert g.tripped == Verdict("ping", "more than 2 PING frames at over 1/s")


def test_guard_empty_data_frames() -> None:
    g = FloodGuard(H2Limits(empty_frame_burst=1, empty_frame_rate_per_s=1.0), 0.0)
    empty = FrameHeader(0x0, 0, 1, 0)
    end = FrameHeader(0x0, 0x1, 1, 0)
    assert g.on_frame(empty, 0.0) is None
    assert g.on_frame(end, 0.0) is None  # an empty DATA with END_STREAM is how bodies end
    assert g.on_frame(empty, 0.0) == Verdict("empty-frames", "more than 1 empty DATA frames at over 1/s")


def test_occasional_cancellations_never_trip_but_rapid_reset_does() -> None:
    limits = H2Limits(reset_burst=10, reset_rate_per_s=2.0)
    g = FloodGuard(limits, 0.0)
    # A gRPC client cancelling one call a second for an hour.
    assert all(g.on_early_reset(float(t)) is None for t in range(3600))
    rapid = FloodGuard(limits, 0.0)
    verdicts = [rapid.on_early_reset(0.001 * i) for i in range(20)]
    assert verdicts[:10] == [None] * 10
    assert verdicts[10] == Verdict(
        "rapid-reset",
        "more than 10 streams reset before their response ended, at over 2/s (CVE-2023-44487 Rapid Reset)",
    )


def test_refused_header_lists_budget() -> None:
    g = FloodGuard(H2Limits(max_refused_header_lists=2), 0.0)
    assert g.on_refused_header_list() is None
    assert g.on_refused_header_list() is None
    assert g.on_refused_header_list() == Verdict(
        "header-lists", "more than 2 header lists refused on one connection"
    )


def test_header_list_size_counts_32_octets_per_field() -> None:
    assert header_list_size([(b"a", b"b"), (b"cookie", b"")]) == (1 + 1 + 32) + (6 + 0 + 32)
    limits = H2Limits(max_header_count=3, max_header_list_bytes=100)
    assert check_header_list([(b"a", b"")] * 3, limits) is None
    assert (
        check_header_list([(b"a", b"")] * 4, limits)
        == "request has 4 header fields, more than the limit of 3"
    )
    fields = [(b"a", b""), (b"b", b""), (b"c", b"d")]  # 33 + 33 + 34 = 100 octets as counted
    assert check_header_list(fields, limits) is None
    assert (
        check_header_list(fields, H2Limits(max_header_count=3, max_header_list_bytes=99))
        == "request header list is 100 octets (32 per field included), more than the limit of 99"
    )


def test_grpc_error_response_is_trailers_only_with_a_readable_status() -> None:
    req = Headers([(b"content-type", b"application/grpc+proto")])
    err = error_response(
        502, "connect/refused", "Unable to establish connection to 10.0.0.1:80: refused 100%", retryable=True
    )
    out = grpc_error_response(req, err)
    assert out.status == 200
    assert out.headers.get(b"grpc-status") == b"14"
    assert (
        out.headers.get(b"grpc-message") == b"Unable to establish connection to 10.0.0.1:80: refused 100%25"
    )
    assert out.headers.get(b"l5d-err") == err.headers.get(b"l5d-err")
    assert out.headers.get(b"l5d-retryable") == b"true"
    assert out.body.in_memory and out.body.content_length == 0
    timeout = grpc_error_response(req, error_response(503, "timeout/request", "too slow"))
    assert timeout.headers.get(b"grpc-status") == b"4"


def test_grpc_conversion_leaves_application_and_plain_responses_alone() -> None:
    grpc_req = Headers([(b"content-type", b"application/grpc")])
    app = Response(503, body=Body.from_bytes(b"app said no"))
    assert grpc_error_response(grpc_req, app) is app
    plain = error_response(502, "connect/refused", "x")
    assert grpc_error_response(Headers([(b"content-type", b"text/plain")]), plain) is plain
    assert is_grpc(grpc_req) and not is_grpc(Headers())


def test_grpc_message_percent_encoding() -> None:
    assert encode_grpc_message("ok plain") == b"ok plain"
    assert encode_grpc_message("50%\nnaïve") == b"50%25%0Ana%C3%AFve"
