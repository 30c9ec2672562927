"""``strip_hop_by_hop`` keeps end-to-end names and plain ``Connection`` values seen before, and
strips in one pass: the same result as the straightforward version (kept here as the reference) on
generated field lists, with and without ``keep_upgrade``, for requests and responses (``TE: trailers``
is kept in requests only), first time and again."""

from __future__ import annotations

import random

from hostproxy.http.hopbyhop import HOP_BY_HOP, strip_hop_by_hop
from hostproxy.http.message import Headers


def _tokens(values: list[bytes]) -> set[bytes]:
    return {t for v in values for t in (p.strip().lower() for p in v.split(b",")) if t}


def _reference(headers: Headers, keep_upgrade: bool, request: bool = True) -> list[tuple[bytes, bytes]]:
    drop = HOP_BY_HOP | _tokens(headers.get_all(b"connection"))
    kept: list[tuple[bytes, bytes]] = []
    te_trailers = False
    for name, value in headers:
        if name in drop or name.startswith(b"proxy-"):
            if request and name == b"te" and b"trailers" in _tokens([value]):
                te_trailers = True
            elif keep_upgrade and name == b"upgrade":
                kept.append((name, value))
            continue
        kept.append((name, value))
    if te_trailers:
        kept.append((b"te", b"trailers"))
    if keep_upgrade:
        kept.append((b"connection", b"upgrade"))
    return kept


_NAMES = [b"host", b"connection", b"keep-alive", b"proxy-authorization", b"proxy-x", b"te", b"trailer"]
_NAMES += [b"transfer-encoding", b"upgrade", b"x-a", b"x-b", b"via", b"content-length", b"proxy"]
_CONNECTION = [b"keep-alive", b"close", b"Keep-Alive, Upgrade", b"upgrade, x-a", b"X-B", b" , ", b"te"]
_CONNECTION += [b"proxy-x", b"x-a,x-b", b""]


def test_matches_the_reference_on_generated_fields() -> None:
    rng = random.Random(20261127)
    for _ in range(20_000):
        items = []
        for _ in range(rng.randrange(0, 7)):
            name = rng.choice(_NAMES)
            if name == b"connection":
                value = rng.choice(_CONNECTION)
            elif name == b"te":
                value = rng.choice([b"trailers", b"gzip, trailers", b"gzip"])
            else:
                value = rng.choice([b"v", b"w"])
            items.append((name, value))
        headers = Headers(items)
        for keep_upgrade in (False, True):
            for request in (True, False):
                expected = _reference(headers, keep_upgrade, request)
                for _ in range(2):
                    out = strip_hop_by_hop(headers, keep_upgrade=keep_upgrade, request=request)
                    assert out.items() == expected, (items, keep_upgrade, request)
                    assert out is not headers and headers.items() == items
