"""``codec_fast._fields_out`` checks a field block with byte scans: the same verdicts and messages as
the whole-block regular expressions it replaced (kept here as the reference), on generated fields."""

from __future__ import annotations

import random
import re

from hostproxy.http.codec_base import LocalProtocolError
from hostproxy.http.codec_fast import _fields_out

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_TOKEN_RE = re.compile(_TOKEN)
_VALUE_RE = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")
_NAMES_RE = re.compile(rb"(?:" + _TOKEN + rb"(?: |$))*")
_FIELDS_RE = re.compile(rb"(?:" + _TOKEN + rb": (?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?\r\n)*")


def _reference(headers: list[tuple[bytes, bytes]]) -> bytes:
    block = b"".join([b"%s: %s\r\n" % nv for nv in headers])
    if (
        block.count(b"\n") != len(headers)
        or not _FIELDS_RE.fullmatch(block)
        or not _NAMES_RE.fullmatch(b" ".join([n for n, _ in headers]))
    ):
        for name, value in headers:
            if not _TOKEN_RE.fullmatch(name) or not _VALUE_RE.fullmatch(value):
                raise LocalProtocolError(f"Illegal header {name!r}: {value!r}")
        raise LocalProtocolError(f"Illegal header field in {headers!r}")
    return block + b"\r\n"


def _outcome(fn: object, headers: list[tuple[bytes, bytes]]) -> object:
    try:
        return fn(headers)  # type: ignore[operator]
    except LocalProtocolError as exc:
        return ("error", str(exc))


_PIECES = [b"a", b"Z", b"0", b"-", b"!", b"~", b" ", b"  ", b"\t", b":", b": ", b"\r", b"\n", b"\r\n"]
_PIECES += [b"\x00", b"\x0b", b"\x0c", b"\x1f", b"\x7f", b"\x80", b"\xff", b",", b"/", b'"', b"(", b"@"]


def _piece_string(rng: random.Random, max_len: int) -> bytes:
    return b"".join(rng.choice(_PIECES) for _ in range(rng.randrange(0, max_len)))


def test_verdicts_match_the_reference_on_generated_fields() -> None:
    rng = random.Random(20261125)
    accepted = 0
    for _ in range(30_000):
        headers = []
        for _ in range(rng.randrange(0, 5)):
            name = rng.choice([b"host", b"via", b"x-a", b"content-length"]) if rng.random() < 0.5 else b""
            name += _piece_string(rng, 3) if rng.random() < 0.3 else b""
            value = rng.choice([b"", b"v", b"1.1 hostproxy", b"a b"]) if rng.random() < 0.4 else b""
            value += _piece_string(rng, 5) if rng.random() < 0.6 else b""
            headers.append((name, value))
        expected = _outcome(_reference, headers)
        assert _outcome(_fields_out, headers) == expected, headers
        accepted += isinstance(expected, bytes)
    assert accepted > 3000


def test_typical_blocks() -> None:
    for headers in [
        [],
        [(b"host", b"")],
        [
            (b"server", b"nginx/1.22.1"),
            (b"date", b"Wed, 25 Nov 2026 23:00:00 GMT"),
            (b"via", b"1.1 hostproxy"),
        ],
        [(b"x", b"a\tb"), (b"y", b"a  b")],
        [(b"x", b" a")],
        [(b"x", b"a\t")],
        [(b"x y", b"a")],
        [(b"", b"a")],
        [(b"x", b"a\r\nInjected: yes")],
    ]:
        assert _outcome(_fields_out, headers) == _outcome(_reference, headers)
