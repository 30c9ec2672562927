"""The header path's shortcuts give what the work they skip would give.

* ``codec_fast._fields_out`` writes fields whose lines it made before from its cache: on a few
  thousand mutated field lists (bad bytes in names and values, other types), interleaved so that
  the cache holds lines of valid fields whenever an invalid one comes, it gives the same bytes or
  the same error as the uncached checks, and as the regular-expression reference; every line in the
  cache is a valid field's line.
"""

from __future__ import annotations

import random
import re
from typing import Any

from hostproxy.http import codec_fast
from hostproxy.http.codec_base import LocalProtocolError
from hostproxy.http.codec_fast import ClientCodec, ServerCodec, _fields_out, _fields_out_checked

_TOKEN_RE = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_VALUE_RE = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")


def _reference(headers: list[Any]) -> bytes:
    """What a writer must do: refuse the first field that is not a token name and a value without
    NUL or whitespace other than inner SP/HTAB, else join them."""
    block = b"".join([b"%s: %s\r\n" % nv for nv in headers])
    for name, value in headers:
        if not _TOKEN_RE.fullmatch(name) or not _VALUE_RE.fullmatch(value):
            raise LocalProtocolError(f"Illegal header {name!r}: {value!r}")
    return block + b"\r\n"


def _outcome(fn: Any, headers: list[Any]) -> object:
    try:
        return fn(headers)
    except (LocalProtocolError, TypeError) as exc:
        return (type(exc).__name__, str(exc))


_BASE = [
    (b"host", b"127.0.0.1:4140"),
    (b"user-agent", b"h2load nghttp2/1.52.0"),
    (b"via", b"1.1 hostproxy"),
    (b"l5d-dst-service", b"/svc/users"),
    (b"content-length", b"13"),
    (b"x-empty", b""),
    (b"x-tab", b"a\tb"),
]
_BAD = [b"\r", b"\n", b"\r\n", b"\x00", b" ", b"\t", b"\x0b", b"\x0c", b":", b"(", b"\x7f", b"\x80", b""]


def _mutate(rng: random.Random, field: tuple[bytes, bytes], views: bool = True) -> Any:
    name, value = field
    roll = rng.random()
    if roll < 0.2:
        i = rng.randrange(len(name) + 1)
        name = name[:i] + rng.choice(_BAD) + name[i:]
    elif roll < 0.45:
        i = rng.randrange(len(value) + 1)
        value = value[:i] + rng.choice(_BAD) + value[i:]
    elif roll < 0.5:
        name = name.upper()
    elif roll < 0.53:
        return [name, value]  # not a tuple
    elif roll < 0.56:
        return (bytearray(name), value)  # unhashable
    elif roll < 0.58:
        return (name.decode("latin-1"), value)  # str: not for a bytes block
    elif roll < 0.6:
        return (name, value, b"x")
    elif roll < 0.62 and views:
        return (memoryview(name), value)
    return (name, value)


def test_fields_out_matches_the_uncached_checks_and_the_reference() -> None:
    rng = random.Random(20261201)
    codec_fast._OUT_LINES.clear()
    accepted = refused = 0
    for round_ in range(6000):
        if round_ % 1000 == 999:
            codec_fast._OUT_LINES.clear()
        fields = [_BASE[rng.randrange(len(_BASE))] for _ in range(rng.randrange(0, 7))]
        if rng.random() < 0.6:
            fields = [_mutate(rng, f) if rng.random() < 0.3 else f for f in fields]
        if rng.random() < 0.2:
            fields.append((b"x-id", b"%x" % rng.getrandbits(40)))  # a value seen once
        expected = _outcome(_fields_out_checked, fields)
        for _ in range(2):  # cold, then with every valid line cached
            assert _outcome(_fields_out, fields) == expected, fields
        if all(type(f) is tuple and len(f) == 2 and type(f[0]) is type(f[1]) is bytes for f in fields):
            assert _outcome(_reference, fields) == expected, fields
        if isinstance(expected, bytes):
            accepted += 1
        else:
            refused += 1
    assert accepted > 1000 and refused > 1000
    for (name, value), line in codec_fast._OUT_LINES.items():
        assert type(name) is bytes and type(value) is bytes
        assert _TOKEN_RE.fullmatch(name) and _VALUE_RE.fullmatch(value)
        assert line == b"%s: %s\r\n" % (name, value)


def test_fields_out_cache_is_bounded() -> None:
    codec_fast._OUT_LINES.clear()
    for i in range(codec_fast._OUT_LINES_MAX + 10):
        _fields_out([(b"x-id", b"%d" % i)])
    assert len(codec_fast._OUT_LINES) <= codec_fast._OUT_LINES_MAX
    long = (b"x-long", b"a" * codec_fast._OUT_LINE_CACHED_MAX)
    assert _fields_out([long]) == b"x-long: " + long[1] + b"\r\n\r\n"
    assert long not in codec_fast._OUT_LINES


def test_request_ids_are_not_cached() -> None:
    """The proxy writes a new l5d-reqid on every request: caching its lines would only fill the map
    and empty it (and with it every common line) about every thousand requests."""
    codec_fast._OUT_LINES.clear()
    codec_fast._OUT_NOTED_LINES.clear()
    common = [(b"host", b"svc"), (b"user-agent", b"curl/8")]
    for i in range(codec_fast._OUT_LINES_MAX * 2):
        block = _fields_out([*common, (b"l5d-reqid", b"%016x" % i)])
        assert block == b"host: svc\r\nuser-agent: curl/8\r\nl5d-reqid: %016x\r\n\r\n" % i
    assert set(codec_fast._OUT_LINES) | set(codec_fast._OUT_NOTED_LINES) == set(common)


# -- writers ----------------------------------------------------------------------------------------

_WRITER_FIELDS = [
    (b"host", b"a"),
    (b"Host", b"b"),
    (b"content-length", b"3"),
    (b"Content-Length", b"4"),
    (b"content-length", b"3, 3"),
    (b"transfer-encoding", b"chunked"),
    (b"Transfer-Encoding", b"gzip"),
    (b"connection", b"close"),
    (b"Connection", b"keep-alive, x-a"),
    (b"upgrade", b"websocket"),
    (b"x-a", b"1"),
    (b"via", b"1.1 hostproxy"),
    (b"l5d-reqid", b"00ff00ff00ff00ff"),
    (b"l5d-reqid", b"00ff 00ff"),
    (b"l5d-reqid", b""),
]


def _state(codec: Any) -> tuple[Any, ...]:
    return tuple(getattr(codec, slot) for slot in ("_their", "_our", "_keep_alive", "_proposal", "_length"))


def _send_outcome(fn: Any, *args: Any) -> object:
    try:
        return fn(*args)
    except (LocalProtocolError, TypeError, ValueError) as exc:
        return (type(exc).__name__, str(exc))


def _writer_transcript(fields: list[Any], status: int, method: bytes, version: bytes) -> list[Any]:
    client = ClientCodec()
    out: list[Any] = [_send_outcome(client.send_request, method, b"/p", fields), _state(client)]
    server = ServerCodec()
    server.receive_data(b"%s /p HTTP/%s\r\nHost: a\r\n\r\n" % (method, version))
    server.next_event()
    out += [_send_outcome(server.send_response, status, b"OK", fields), _state(server)]
    return out


def test_writers_match_their_uncached_selves(monkeypatch: Any) -> None:
    """``send_request`` and ``send_response`` with the noted fields (only the writers' fields looked
    at, the block from the cache) give what they give when every field is looked at and checked."""
    rng = random.Random(20261206)
    cases = []
    for _ in range(3000):
        fields = [rng.choice(_WRITER_FIELDS) for _ in range(rng.randrange(0, 5))]
        if rng.random() < 0.4:
            # (Not memoryview names: the writers' loop would call ``lower`` on one the cache skips.)
            fields = [_mutate(rng, f, views=False) if rng.random() < 0.3 else f for f in fields]
        status = rng.choice([200, 204, 304, 404, 101, 1000])
        cases.append(
            (fields, status, rng.choice([b"GET", b"HEAD", b"CONNECT"]), rng.choice([b"1.0", b"1.1"]))
        )
    fast = [_writer_transcript(*case) for case in cases]
    fast_warm = [_writer_transcript(*case) for case in cases]
    monkeypatch.setattr(codec_fast, "_fields_noted", lambda headers: None)
    monkeypatch.setattr(codec_fast, "_response_fields_noted", lambda headers: None)
    monkeypatch.setattr(codec_fast, "_request_fields_noted", lambda headers: None)
    slow = [_writer_transcript(*case) for case in cases]
    assert fast == slow == fast_warm
    assert sum(isinstance(t[0], bytes) for t in slow) > 300
    assert sum(isinstance(t[2], bytes) for t in slow) > 300


def test_response_blocks_are_remembered_within_bounds() -> None:
    """``send_response`` looks a response's fields up as a whole: the same block as when each field
    is looked up, only blocks up to the length bound are kept, and the map is emptied when full."""
    codec_fast._OUT_BLOCKS.clear()
    fields = [(b"server", b"nginx"), (b"content-type", b"text/plain"), (b"content-length", b"3")]
    first = codec_fast._response_fields_noted(fields)
    assert first == codec_fast._fields_noted(fields)
    assert codec_fast._response_fields_noted(list(fields)) is first  # the remembered one
    long = [(b"x-long", b"a" * codec_fast._OUT_BLOCK_CACHED_MAX)]
    assert codec_fast._response_fields_noted(long) == codec_fast._fields_noted(long)
    assert tuple(long) not in codec_fast._OUT_BLOCKS
    assert codec_fast._response_fields_noted([[b"x-a", b"1"]]) is None  # unhashable: the checks decide
    codec_fast._OUT_BLOCKS.clear()
    for i in range(codec_fast._OUT_BLOCKS_MAX + 10):
        codec_fast._response_fields_noted([(b"x-n", b"%d" % i)])
        # Each block is new: the map grows by one and is emptied when full, then holds the new block.
        assert len(codec_fast._OUT_BLOCKS) == i % codec_fast._OUT_BLOCKS_MAX + 1
        assert ((b"x-n", b"%d" % i),) in codec_fast._OUT_BLOCKS


def test_request_blocks_leave_the_request_id_out() -> None:
    """``send_request``'s lookup remembers the block of the fields before a last ``l5d-reqid`` and adds
    that field's line to it: the same as ``_fields_noted`` gives, for every request id, with one entry
    for all of them; a request id that is not plain letters and digits, or fields in another order,
    take ``_fields_noted``; the map is bounded."""
    codec_fast._OUT_REQUEST_BLOCKS.clear()
    common = [(b"host", b"svc"), (b"user-agent", b"curl/8"), (b"l5d-dst-service", b"/svc/users")]
    for i in range(300):
        fields = [*common, (b"l5d-reqid", b"%016x" % i)]
        assert codec_fast._request_fields_noted(fields) == codec_fast._fields_noted(fields)
    assert list(codec_fast._OUT_REQUEST_BLOCKS) == [tuple(common)]
    odd = [
        [*common, (b"l5d-reqid", b"a b")],
        [*common, (b"l5d-reqid", b"a\r\nx-injected: 1")],
        [*common, (b"l5d-reqid", b"")],
        [(b"l5d-reqid", b"abc"), *common],
        [(b"bad name", b"1"), (b"l5d-reqid", b"abc")],
        [[b"host", b"svc"], (b"l5d-reqid", b"abc")],
        [*common, ("l5d-reqid", "abc")],
        [],
    ]
    for fields in odd:
        assert codec_fast._request_fields_noted(fields) == codec_fast._fields_noted(fields)
    assert list(codec_fast._OUT_REQUEST_BLOCKS) == [tuple(common)]
    codec_fast._OUT_REQUEST_BLOCKS.clear()
    for i in range(codec_fast._OUT_BLOCKS_MAX + 10):
        codec_fast._request_fields_noted([(b"x-n", b"%d" % i), (b"l5d-reqid", b"abc")])
        assert len(codec_fast._OUT_REQUEST_BLOCKS) == i % codec_fast._OUT_BLOCKS_MAX + 1
        assert ((b"x-n", b"%d" % i),) in codec_fast._OUT_REQUEST_BLOCKS
    assert not codec_fast._ONE_OFF_NAMES & codec_fast._WRITER_NAMES  # the noted fields are the block's
