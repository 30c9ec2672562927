"""Pure tests of the sans-I/O codec: hardening, limits, pipelining, byte-split independence."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hostproxy.http.codec import (
    NEED_DATA,
    ClientCodec,
    CodecLimits,
    ConnectionClosed,
    Data,
    EndOfMessage,
    ProtocolError,
    RequestHead,
    ResponseHead,
    ServerCodec,
)


def events(codec: ServerCodec, data: bytes) -> list[object]:
    codec.receive_data(data)
    out: list[object] = []
    while True:
        ev = codec.next_event()
        if ev is NEED_DATA:
            return out
        out.append(ev)
        if isinstance(ev, EndOfMessage | ConnectionClosed):
            return out


REJECTED = [
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
        "request has both Content-Length and Transfer-Encoding; send only one",
    ),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        400,
        "malformed request: Only Transfer-Encoding: chunked is supported",
    ),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\n\r\n",
        400,
        "malformed request: Only Transfer-Encoding: chunked is supported",
    ),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        400,
        "malformed request: conflicting Content-Length headers",
    ),
    (
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n",
        400,
        "obsolete line folding (obs-fold) in request header; send each field on one line",
    ),
    (b"GET / HTTP/1.1\nHost: a\n\n", 400, "bare LF in request head; lines must end with CRLF"),
    (b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", 400, "bare CR in request head; lines must end with CRLF"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400, "NUL byte in request head"),
    (b"GET / HTTP/1.1\r\n\r\n", 400, "malformed request: Missing mandatory Host: header"),
    (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, "malformed request: illegal header line"),
]


@pytest.mark.parametrize(("raw", "status", "message"), REJECTED)
def test_rejected_heads(raw: bytes, status: int, message: str) -> None:
    codec = ServerCodec()
    with pytest.raises(ProtocolError) as info:
        events(codec, raw)
    assert info.value.status == status
    assert str(info.value).startswith(message)


def test_limits() -> None:
    limits = CodecLimits(max_initial_line=64, max_headers=128, max_header_count=3)
    with pytest.raises(ProtocolError, match=r"^request line exceeds 64 bytes \(maxInitialLineKB\)$") as e:
        events(ServerCodec(limits), b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n")
    assert e.value.status == 414
    with pytest.raises(ProtocolError, match=r"^request headers exceed 128 bytes \(maxHeadersKB\)$") as e:
        events(ServerCodec(limits), b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"b" * 200 + b"\r\n\r\n")
    assert e.value.status == 431
    with pytest.raises(ProtocolError, match=r"^request headers exceed 128 bytes \(maxHeadersKB\)$"):
        events(ServerCodec(limits), b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"b" * 300)  # incomplete
    with pytest.raises(ProtocolError, match=r"^request has more than 3 header fields$") as e:
        events(ServerCodec(limits), b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 1\r\nC: 1\r\n\r\n")
    assert e.value.status == 431


def test_pipelined_requests_come_out_in_order_and_are_rechecked() -> None:
    codec = ServerCodec()
    raw = (
        b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n"
        b"GET /c HTTP/1.1\nHost: h\n\n"
    )
    evs = events(codec, raw)
    assert isinstance(evs[0], RequestHead) and evs[0].target == b"/a"
    assert evs[1:] == [Data(b"abc"), EndOfMessage([])]
    codec.send_response(200, b"OK", [(b"content-length", b"0")])
    codec.send_end()
    codec.start_next_cycle()
    evs = events(codec, b"")
    assert isinstance(evs[0], RequestHead) and evs[0].target == b"/b"
    codec.send_response(200, b"OK", [(b"content-length", b"0")])
    codec.send_end()
    codec.start_next_cycle()
    with pytest.raises(ProtocolError, match="bare LF"):
        events(codec, b"")


def test_chunked_body_with_trailers() -> None:
    codec = ServerCodec()
    evs = events(
        codec,
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
    )
    assert evs[1:] == [Data(b"abc"), EndOfMessage([(b"x-t", b"1")])]


def test_eof_mid_head_is_a_quiet_close() -> None:
    codec = ServerCodec()
    assert events(codec, b"GET / HT") == []
    assert events(codec, b"") == [ConnectionClosed()]


def test_client_codec_drops_content_length_when_chunked_and_never_reuses_the_connection() -> None:
    """RFC 9112 §6.3: chunked wins, and the message ought to be handled as an error: relayed by its
    chunks, but a hop that believed the Content-Length would frame what follows elsewhere."""
    codec = ClientCodec()
    codec.send_request(b"GET", b"/", [(b"host", b"h")])
    codec.send_end()
    codec.receive_data(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    )
    head = codec.next_event()
    assert isinstance(head, ResponseHead)
    assert head.headers == [(b"transfer-encoding", b"chunked")]
    assert codec.next_event() == Data(b"hi")
    assert codec.next_event() == EndOfMessage([])
    assert not codec.can_reuse


PIPELINE = (
    b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    b"PUT /b HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbody"
    b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n"
)


def _run_split(cuts: list[int]) -> list[object]:
    codec = ServerCodec()
    pieces = [PIPELINE[a:b] for a, b in zip([0, *cuts], [*cuts, len(PIPELINE)], strict=True)]
    out: list[object] = []
    for piece in [*pieces, b""]:
        codec.receive_data(piece)
        while True:
            ev = codec.next_event()
            if ev is NEED_DATA or isinstance(ev, ConnectionClosed):
                break
            if isinstance(ev, Data):
                if out and isinstance(out[-1], Data):
                    out[-1] = Data(out[-1].data + ev.data)
                else:
                    out.append(ev)
                continue
            out.append(ev)
            if isinstance(ev, EndOfMessage):
                codec.send_response(200, b"OK", [(b"content-length", b"0")])
                codec.send_end()
                codec.start_next_cycle()
        if isinstance(ev, ConnectionClosed):
            break
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(PIPELINE) - 1), max_size=8, unique=True))
def test_events_do_not_depend_on_how_bytes_are_split(cuts: list[int]) -> None:
    assert _run_split(sorted(cuts)) == _run_split([])
    heads = [e.target for e in _run_split([]) if isinstance(e, RequestHead)]
    assert heads == [b"/a", b"/b", b"/c"]
