"""``codec_fast._fields_in`` splits plain field blocks itself (with a cache of lines seen before):
it must give what llhttp and ``_normalize`` give, the same pairs and framing facts, or the same error,
on generated blocks, whether a line is seen for the first time or again."""

from __future__ import annotations

import random

from hostproxy.http import codec_fast
from hostproxy.http.codec_fast import _FieldError, _FieldParser, _fields_in, _normalize

_PIECES = [b"a", b"Z", b"0", b"7", b"-", b"!", b"~", b" ", b"  ", b"\t", b":", b": ", b"\r", b"\n"]
_PIECES += [b"\r\n", b"\x00", b"\x01", b"\x0b", b"\x1f", b"\x7f", b"\x80", b"\xff", b",", b"/", b'"', b"@"]
_NAMES = [
    b"Host",
    b"host",
    b"Content-Length",
    b"content-length",
    b"Transfer-Encoding",
    b"Connection",
    b"Expect",
    b"Upgrade",
    b"X-A",
    b"Via",
    b"Server",
]
_VALUES = [b"", b"1", b"12", b"012", b"chunked", b"CHUNKED", b"close", b"keep-alive, Upgrade", b"upgrade"]
_VALUES += [b"100-continue", b"x", b"a b", b"1.1 hostproxy", b"99999999999999999999", b"1234567890123456789"]


def _outcome(fn: object) -> object:
    try:
        head = fn()  # type: ignore[operator]
    except _FieldError as exc:
        return ("error", str(exc))
    return (head.headers, head.length, head.chunked, head.close, head.hosts, head.expect_100, head.upgrade)


def _piece_string(rng: random.Random, max_len: int) -> bytes:
    return b"".join(rng.choice(_PIECES) for _ in range(rng.randrange(0, max_len)))


def _line(rng: random.Random) -> bytes:
    name = rng.choice(_NAMES) if rng.random() < 0.9 else b""
    if rng.random() < 0.1:
        name += _piece_string(rng, 3)
    sep = rng.choice([b": ", b":", b":  ", b": \t", b" : ", b""]) if rng.random() < 0.2 else b": "
    value = rng.choice(_VALUES) if rng.random() < 0.9 else b""
    if rng.random() < 0.2:
        value += _piece_string(rng, 4)
    if rng.random() < 0.1:
        value += rng.choice([b" ", b"\t", b" \t"])
    return name + sep + value


def _check(block: bytes) -> object:
    expected = _outcome(lambda: _normalize(_FieldParser().parse(block)))
    got = _outcome(lambda: _fields_in(_FieldParser(), block))
    assert got == expected, block
    # Again, now that its lines are known.
    assert _outcome(lambda: _fields_in(_FieldParser(), block)) == expected, block
    return expected


def test_fields_in_matches_llhttp_on_generated_blocks() -> None:
    rng = random.Random(20261126)
    accepted = 0
    for _ in range(20_000):
        lines = [_line(rng) for _ in range(rng.randrange(0, 6))]
        block = b"".join(line + b"\r\n" for line in lines)
        if rng.random() < 0.05:
            block = block[:-1] if block else b"x"
        accepted += _check(block)[0] != "error"  # type: ignore[index]
    assert accepted > 5000


def test_typical_blocks() -> None:
    for block in [
        b"",
        b"Host: bench\r\nUser-Agent: h2load nghttp2/1.52.0\r\nAccept: */*\r\n",
        b"Server: nginx\r\nContent-Length: 12\r\nConnection: keep-alive\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
        b"Content-Length: 3\r\nContent-Length: 3\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Connection: upgrade\r\nUpgrade: websocket\r\nHost: a\r\n",
        b"A: \tx \t\r\nB:\r\nC: \x80\xff\r\n",
        b"A: x\x7fy\r\n",
        b"A: x\ry\r\n",
        b"A: x\ny\r\n",
        b"a b: c\r\n",
        b"A: x",
    ]:
        _check(block)


def test_the_line_cache_is_bounded() -> None:
    for i in range(codec_fast._FIELD_LINES_MAX + 10):
        _fields_in(_FieldParser(), b"X-Id: %d\r\n" % i)
    assert len(codec_fast._FIELD_LINES) <= codec_fast._FIELD_LINES_MAX
    long = b"X-Long: " + b"a" * (codec_fast._FIELD_LINE_CACHED_MAX + 1)
    _fields_in(_FieldParser(), long + b"\r\n")
    assert long not in codec_fast._FIELD_LINES


def test_request_lines_seen_before_give_the_same_head_and_the_cache_is_bounded() -> None:
    from hostproxy.http.codec_base import RequestHead
    from hostproxy.http.codec_fast import ServerCodec

    request = b"GET /a?b=1 HTTP/1.0\r\nHost: x\r\n\r\n"
    heads = []
    for _ in range(2):
        codec = ServerCodec()
        codec.receive_data(request)
        heads.append(codec.next_event())
    assert heads[0] == heads[1] == RequestHead(b"GET", b"/a?b=1", [(b"host", b"x")], b"1.0")
    for i in range(codec_fast._REQUEST_LINES_MAX + 10):
        codec = ServerCodec()
        codec.receive_data(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
        assert codec.next_event().target == b"/%d" % i  # type: ignore[union-attr]
    assert len(codec_fast._REQUEST_LINES) <= codec_fast._REQUEST_LINES_MAX
