"""Response heads from upstreams, in both client codecs: the router's head limits (``maxHeadersKB``,
``maxInitialLineKB``) and the field count cap apply to them as to requests, remembered heads cannot
bypass those limits, the reason phrase is RFC 9112's, an unasked ``101`` is refused in words, and a
connection whose response was framed by the close or by both ``Content-Length`` and chunking is
never reused.

Pure: a codec fed bytes (the pool and the daemon are in ``test_upstream_interim_and_limits.py`` and
``test_upstream_edges_adversarial.py``).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from hostproxy.http import codec_fast, codec_h11
from hostproxy.http.codec_base import (
    NEED_DATA,
    CodecLimits,
    Data,
    EndOfMessage,
    Informational,
    ProtocolError,
    ResponseHead,
)

IMPLS = [pytest.param(codec_fast, id="fast"), pytest.param(codec_h11, id="h11")]


def client(impl: ModuleType, limits: CodecLimits | None = None, method: bytes = b"GET") -> Any:
    codec = impl.ClientCodec(limits)
    codec.send_request(method, b"/", [(b"host", b"h")])
    codec.send_end()
    return codec


def head(impl: ModuleType, raw: bytes, limits: CodecLimits | None = None, method: bytes = b"GET") -> Any:
    """The first event of ``raw`` (one piece) as a response to ``method``."""
    codec = client(impl, limits, method)
    codec.receive_data(raw)
    return codec.next_event()


def refusal(impl: ModuleType, raw: bytes, limits: CodecLimits | None = None) -> str:
    with pytest.raises(ProtocolError) as info:
        head(impl, raw, limits)
    assert info.value.status == 502
    return str(info.value)


def fields_block(size: int) -> bytes:
    """A field block (each line ending in CRLF) of exactly ``size`` bytes, in the canonical
    ``name: value`` form, ending with ``Content-Length: 0``."""
    tail = b"Content-Length: 0\r\n"
    pad = size - len(tail) - len(b"X-Pad: \r\n")
    assert pad >= 0
    return b"X-Pad: " + b"p" * pad + b"\r\n" + tail


# == limits ============================================================================================


@pytest.mark.parametrize("impl", IMPLS)
def test_a_status_line_at_max_initial_line_passes_and_one_byte_more_is_refused(impl: ModuleType) -> None:
    limits = CodecLimits(max_initial_line=1024)
    at = b"HTTP/1.1 200 " + b"R" * (1024 - 13)
    assert type(head(impl, at + b"\r\nContent-Length: 0\r\n\r\n", limits)) is ResponseHead
    message = refusal(impl, at + b"R\r\nContent-Length: 0\r\n\r\n", limits)
    assert message == "malformed response: status line exceeds 1024 bytes (maxInitialLineKB)"


@pytest.mark.parametrize("impl", IMPLS)
def test_a_field_block_at_max_headers_passes_and_one_byte_more_is_refused(impl: ModuleType) -> None:
    limits = CodecLimits(max_headers=2048)
    line = b"HTTP/1.1 200 OK\r\n"
    assert type(head(impl, line + fields_block(2048) + b"\r\n", limits)) is ResponseHead
    message = refusal(impl, line + fields_block(2049) + b"\r\n", limits)
    assert message == "malformed response: response headers exceed 2048 bytes (maxHeadersKB)"


@pytest.mark.parametrize("impl", IMPLS)
def test_more_fields_than_the_count_cap_are_refused(impl: ModuleType) -> None:
    """The default cap is the request's: 100 fields (a 1xx head too)."""
    fields = b"".join(b"x%03d: 1\r\n" % i for i in range(99))
    ok = b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 0\r\n\r\n"
    assert len(head(impl, ok).headers) == 100
    too_many = b"HTTP/1.1 200 OK\r\nx-extra: 1\r\n" + fields + b"Content-Length: 0\r\n\r\n"
    assert refusal(impl, too_many) == "malformed response: response has more than 100 header fields"
    interim = b"HTTP/1.1 103 Early Hints\r\n" + b"".join(b"l%03d: 1\r\n" % i for i in range(101)) + b"\r\n"
    assert refusal(impl, interim) == "malformed response: response has more than 100 header fields"
    assert "more than 3 header" in refusal(impl, ok, CodecLimits(max_header_count=3))


@pytest.mark.parametrize("impl", IMPLS)
def test_a_head_that_does_not_end_is_refused_once_past_the_limits(impl: ModuleType) -> None:
    """Fed a piece at a time, as it arrives: refused before it is all buffered, naming the limit."""
    for start, limit in [
        (b"HTTP/1.1 200 OK\r\nX-Fill: ", "maxHeadersKB"),
        (b"HTTP/1.1 200 ", "maxInitialLineKB"),
    ]:
        codec = client(impl)
        codec.receive_data(start)
        assert codec.next_event() is NEED_DATA
        with pytest.raises(ProtocolError) as info:
            for _ in range(1024):
                codec.receive_data(b"f" * 1024)
                assert codec.next_event() is NEED_DATA
        assert info.value.status == 502 and limit in str(info.value), str(info.value)


def test_fast_codec_refuses_an_incomplete_head_as_soon_as_it_is_past_a_limit() -> None:
    codec = client(codec_fast)
    codec.receive_data(b"HTTP/1.1 200 " + b"R" * 4083)
    assert codec.next_event() is NEED_DATA  # 4096 bytes: at the limit
    codec.receive_data(b"R")
    with pytest.raises(ProtocolError, match=r"^malformed response: status line exceeds 4096 bytes"):
        codec.next_event()
    codec = client(codec_fast, CodecLimits(max_headers=1024))
    codec.receive_data(b"HTTP/1.1 200 OK\nX-Fill: " + b"f" * (1024 - 8))
    assert codec.next_event() is NEED_DATA
    codec.receive_data(b"f")
    with pytest.raises(ProtocolError, match=r"^malformed response: response headers exceed 1024 bytes"):
        codec.next_event()


def test_a_remembered_head_obeys_the_limits_of_the_codec_that_looks_it_up() -> None:
    """The fast codec looks whole heads up by their bytes, in a map shared by codecs with limits no
    lower than what every head in it obeys. A codec with lower limits keeps a map of its own, and a
    head accepted under a higher field cap is not shared: none is taken without its checks."""
    codec_fast._RESPONSE_HEADS.clear()
    fields = b"".join(b"x%02d: 1\r\n" % i for i in range(49)) + b"Content-Length: 0\r\n"
    raw = b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n"
    assert len(raw) <= codec_fast._HEAD_CACHED_MAX
    assert type(head(codec_fast, raw)) is ResponseHead
    assert raw in codec_fast._RESPONSE_HEADS  # remembered
    assert type(head(codec_fast, raw)) is ResponseHead  # and taken from the map
    with pytest.raises(ProtocolError, match=r"more than 10 header fields$"):
        head(codec_fast, raw, CodecLimits(max_header_count=10))
    with pytest.raises(ProtocolError, match=r"response headers exceed 256 bytes \(maxHeadersKB\)$"):
        head(codec_fast, raw, CodecLimits(max_headers=256))
    with pytest.raises(ProtocolError, match=r"status line exceeds 8 bytes \(maxInitialLineKB\)$"):
        head(codec_fast, raw, CodecLimits(max_initial_line=8))
    # A codec of its own keeps what it accepted in its own map; the shared one is not touched.
    small = client(codec_fast, CodecLimits(max_headers=512))
    assert small._heads is not codec_fast._RESPONSE_HEADS
    short = b"HTTP/1.1 200 OK\r\nX-Own: 1\r\nContent-Length: 0\r\n\r\n"
    small.receive_data(short)
    assert type(small.next_event()) is ResponseHead
    assert short in small._heads and short not in codec_fast._RESPONSE_HEADS
    # 150 tiny fields fit the size of a remembered head, and a codec allowing 200 accepts them: not
    # shared, so a codec with the default cap (100) still refuses them.
    many = b"HTTP/1.1 200 OK\r\n" + b"".join(b"%c:1\r\n" % (65 + i % 26) for i in range(150)) + b"\r\n"
    assert len(many) <= codec_fast._HEAD_CACHED_MAX
    assert type(head(codec_fast, many, CodecLimits(max_header_count=200))) is ResponseHead
    assert many not in codec_fast._RESPONSE_HEADS
    with pytest.raises(ProtocolError, match=r"more than 100 header fields$"):
        head(codec_fast, many)


# == status lines ======================================================================================


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reason", [b"O\x01K", b"OK\x7f", b"\x1b[31mred", b"a\x0bb"])
def test_a_control_byte_in_the_reason_phrase_is_refused(impl: ModuleType, reason: bytes) -> None:
    """RFC 9112 §4: reason-phrase = *( HTAB / SP / VCHAR / obs-text )."""
    message = refusal(impl, b"HTTP/1.1 200 " + reason + b"\r\nContent-Length: 0\r\n\r\n")
    assert message.startswith("malformed response: illegal status line"), message


@pytest.mark.parametrize("impl", IMPLS)
def test_a_reason_of_tabs_spaces_and_obs_text_is_kept(impl: ModuleType) -> None:
    reason = b"Fine\tand \xe9l\xe9gant ~!"
    ev = head(impl, b"HTTP/1.1 200 " + reason + b"\r\nContent-Length: 0\r\n\r\n")
    assert type(ev) is ResponseHead and ev.reason == reason


@pytest.mark.parametrize("impl", IMPLS)
def test_a_101_to_a_request_that_proposed_no_upgrade_is_refused_in_words(impl: ModuleType) -> None:
    message = refusal(
        impl, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    assert message == (
        "malformed response: upstream answered 101 Switching Protocols to a request that did not ask to upgrade"
    )


# == reuse ============================================================================================


def read_all(codec: Any) -> list[Any]:
    out = []
    while True:
        ev = codec.next_event()
        if ev is NEED_DATA:
            codec.receive_data(b"")
            continue
        out.append(ev)
        if type(ev) is EndOfMessage:
            return out


@pytest.mark.parametrize("impl", IMPLS)
def test_a_response_framed_by_the_close_leaves_the_connection_unusable(impl: ModuleType) -> None:
    codec = client(impl)
    codec.receive_data(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the close")
    events = read_all(codec)
    assert type(events[0]) is ResponseHead and Data(b"until the close") in events
    assert not codec.can_reuse


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", id="cl-then-te"),
        pytest.param(b"Transfer-Encoding: chunked\r\nContent-Length: 40\r\n", id="te-then-cl"),
    ],
)
def test_content_length_with_chunked_is_relayed_by_its_chunks_and_never_reused(
    impl: ModuleType, fields: bytes
) -> None:
    codec = client(impl)
    codec.receive_data(b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n7\r\nchunked\r\n0\r\n\r\n")
    events = read_all(codec)
    assert events[0].headers == [(b"transfer-encoding", b"chunked")]
    assert Data(b"chunked") in events
    assert not codec.can_reuse


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "method, raw",
    [
        pytest.param(b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", id="head"),
        pytest.param(b"GET", b"HTTP/1.1 204 No Content\r\n\r\n", id="204"),
        pytest.param(b"GET", b"HTTP/1.1 304 Not Modified\r\n\r\n", id="304"),
        pytest.param(b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", id="length"),
        pytest.param(b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", id="chunked"),
    ],
)
def test_responses_without_a_body_to_frame_by_the_close_keep_the_connection(
    impl: ModuleType, method: bytes, raw: bytes
) -> None:
    codec = client(impl, method=method)
    codec.receive_data(raw)
    events = []
    while type(ev := codec.next_event()) is not EndOfMessage:
        assert ev is not NEED_DATA
        events.append(ev)
    assert codec.can_reuse
    codec.start_next_cycle()


@pytest.mark.parametrize("impl", IMPLS)
def test_interim_heads_come_before_the_final_one_and_the_connection_stays_usable(impl: ModuleType) -> None:
    codec = client(impl)
    codec.receive_data(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    assert codec.next_event() == Informational(103, [(b"link", b"</a.css>; rel=preload")])
    assert codec.next_event() == Informational(102, [])
    assert type(codec.next_event()) is ResponseHead
    assert codec.next_event() == Data(b"ok")
    assert type(codec.next_event()) is EndOfMessage
    assert codec.can_reuse
