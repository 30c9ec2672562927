"""``Headers.hop_free`` and the one-pass response strip give what the full strips give.

Random sequences of ``Headers`` edits (hop-by-hop names among them) on headers that were stripped
or not: ``strip_hop_by_hop`` (which copies headers marked hop-free without a look) gives what it
gives for the same fields unmarked, and a header marked hop-free never holds a hop-by-hop field.
``strip_response_fields`` gives what the pool did before in three steps.
"""

from __future__ import annotations

import random

from hostproxy.http.hopbyhop import HOP_BY_HOP, strip_hop_by_hop, strip_response_fields
from hostproxy.http.message import Headers

_NAMES = [b"host", b"connection", b"keep-alive", b"proxy-authorization", b"proxy-x", b"te", b"trailer"]
_NAMES += [b"transfer-encoding", b"upgrade", b"x-a", b"x-b", b"via", b"content-length", b"proxy"]
_NAMES += [b"Connection", "Upgrade", "x-a", b"TE"]
_VALUES = [b"v", b"keep-alive", b"close", b"x-a", b"trailers", b"upgrade, x-b", b"content-length", b"12"]


def _fresh(h: Headers) -> Headers:
    return Headers._trusted(h.items())


def _random_items(rng: random.Random, n: int) -> list[tuple[bytes, bytes]]:
    out = []
    for _ in range(n):
        name = rng.choice(_NAMES)
        out.append((name.lower() if isinstance(name, bytes) else name.lower().encode(), rng.choice(_VALUES)))
    return out


def test_hop_free_headers_strip_as_unmarked_ones() -> None:
    rng = random.Random(20261204)
    marked = 0
    for _ in range(5000):
        h = Headers._trusted(_random_items(rng, rng.randrange(0, 6)))
        for _ in range(rng.randrange(1, 6)):
            op = rng.randrange(7)
            name = rng.choice(_NAMES)
            value = rng.choice(_VALUES)
            if op == 0:
                h = strip_hop_by_hop(h)
            elif op == 1:
                h.set(name, value)
            elif op == 2:
                h.add(name, value)
            elif op == 3:
                h.remove(name)
            elif op == 4:
                h.append_entry(name.lower() if isinstance(name, bytes) else name.lower().encode(), value)
            elif op == 5:
                h = h.copy()
            else:
                h = strip_hop_by_hop(h, keep_upgrade=rng.random() < 0.5)
            if h.hop_free:
                marked += 1
                assert not any(n in HOP_BY_HOP or n.startswith(b"proxy-") for n, _ in h), h
            expected = strip_hop_by_hop(_fresh(h))
            got = strip_hop_by_hop(h)
            assert got.items() == expected.items(), h
            assert got is not h
            assert got.hop_free == expected.hop_free
    assert marked > 2000


def _old_response_fields(fields: list[tuple[bytes, bytes]]) -> tuple[Headers, bytes | None]:
    headers = strip_hop_by_hop(Headers._trusted(fields), request=False)
    length = headers.get(b"content-length")
    if length is not None and any(n == b"transfer-encoding" for n, _ in fields):
        length = None
    headers.remove(b"content-length")
    return headers, length


def test_strip_response_fields_matches_the_three_steps() -> None:
    rng = random.Random(20261205)
    for _ in range(20_000):
        fields = _random_items(rng, rng.randrange(0, 8))
        if rng.random() < 0.5:
            fields.insert(rng.randrange(len(fields) + 1), (b"content-length", b"%d" % rng.randrange(100)))
        expected_headers, expected_length = _old_response_fields(fields)
        for _ in range(2):
            headers, length, _ = strip_response_fields(fields)
            assert (headers.items(), length) == (expected_headers.items(), expected_length), fields
            assert headers.hop_free == expected_headers.hop_free
