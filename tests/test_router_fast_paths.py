"""The routing layer's per-request shortcuts give exactly what the general forms give."""

from __future__ import annotations

import random

import pytest

from dtab import Dtab, Path
from hostproxy.budget import WindowedAdder
from hostproxy.metrics.histogram import WindowedHistogram, bucket_index
from hostproxy.routing.context import (
    DtabParseCache,
    RequestDtabError,
    downstream_headers,
    forwarded_headers,
    inbound,
    read_inbound,
    read_request_dtab,
    show_bytes,
    strip_inbound,
)
from hostproxy.routing.identifiers import HeaderTokenIdentifier, _header_values

Header = tuple[bytes, bytes]

HEADER_SETS: list[list[Header]] = [
    [],
    [(b"host", b"web"), (b"accept", b"*/*")],
    [(b"host", b"web"), (b"l5d-dtab", b"/svc=>/#/io.l5d.fs/b"), (b"L5D-Ctx-Dtab", b"/a=>/b")],
    [(b"l5d-sample", b"0.5"), (b"l5d-sample", b"nope"), (b"x", b"y"), (b"l5d-ctx-trace", b"abc")],
    [(b"l5d-sample", b"bad"), (b"l5d-reqid", b"0123456789abcdef"), (b"l5d-reqid", b"ffffffffffffffff")],
    [(b"l5d-ctx-deadline", b"1 100"), (b"l5d-ctx-deadline", b"5 50"), (b"l5d-ctx-deadline", b"x")],
    [(b"L5D-REQID", b"not-hex"), (b"l5d-dst-service", b"/forged"), (b"l5d-dst-residual", b"/r")],
    [(b"l5d-dst-client", b"/c"), (b"l5d-name", b"n"), (b"dtab-local", b"/a=>/b"), (b"l5d-err", b"e")],
    [(b"l5d-ctx-trace", b"A" * 44), (b"l5d-ctx-other", b"1"), (b"via", b"1.1 x")],
]


def _reference_inbound(headers: list[Header], clear: bool) -> tuple[list[Header], Dtab, float | None]:
    """read_inbound as it was written before the one-pass form: strip, read dtabs, sample, filter."""
    hs = strip_inbound(headers, clear)
    local = read_request_dtab(hs, None)
    sample = None
    for n, v in hs:
        if n.lower() == b"l5d-sample":
            try:
                sample = min(1.0, max(0.0, float(v.decode("latin-1"))))
            except ValueError:
                sample = None
            break
    keep = {b"l5d-ctx-dtab", b"l5d-dtab", b"l5d-sample"}
    return [(n, v) for n, v in hs if n.lower() not in keep], local, sample


@pytest.mark.parametrize("headers", HEADER_SETS)
@pytest.mark.parametrize("clear", [False, True])
def test_inbound_is_read_inbound_in_one_pass(headers: list[Header], clear: bool) -> None:
    expected = _reference_inbound(headers, clear)
    assert inbound(headers, clear, DtabParseCache()) == expected
    ctx = read_inbound(headers, clear_context=clear)
    assert (ctx.headers, ctx.local_dtab, ctx.sample) == expected


def test_inbound_raises_for_the_first_bad_dtab_as_before() -> None:
    headers = [(b"l5d-dtab", b"/ok=>/fine"), (b"l5d-ctx-dtab", b"/bad=>"), (b"l5d-dtab", b"nope")]
    with pytest.raises(RequestDtabError) as one:
        inbound(headers, False)
    with pytest.raises(RequestDtabError) as other:
        read_request_dtab(headers)
    assert str(one.value) == str(other.value)
    assert one.value.header == "l5d-ctx-dtab"


@pytest.mark.parametrize("headers", HEADER_SETS)
@pytest.mark.parametrize(
    ("client", "residual", "local"),
    [
        (Path.read("/$/inet/127.1/80"), None, Dtab.EMPTY),
        (Path.read("/%/io.l5d.port/#/io.l5d.fs/a"), Path.read("/x/y"), Dtab.read("/a=>/b")),
        (Path.read("/#/io.l5d.fs/a"), Path.EMPTY, Dtab.read("/a=>/b;/c=>/d")),
    ],
)
def test_forwarded_headers_apply_downstream_headers(
    headers: list[Header], client: Path, residual: Path | None, local: Dtab
) -> None:
    service = Path.read("/svc/web")
    kept = _reference_inbound(headers, False)[0]
    edits = downstream_headers(
        service=service,
        client=client,
        residual=residual,
        local_dtab=local,
        headers=kept,
        rng=random.Random(7),
    )
    out, deadline = forwarded_headers(
        show_bytes(service), show_bytes(client), residual, local, kept, random.Random(7)
    )
    assert out == edits.apply(kept)
    assert deadline == edits.value(b"l5d-ctx-deadline")


class _Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _slice_of(now: float, slice_s: float) -> int:
    return int(now // slice_s)


class _DividingHistogram(WindowedHistogram):
    """The histogram's add as written before it compared times with the slice's interval."""

    __slots__ = ()

    def add(self, value: float) -> None:
        sid = int(self._now() // self._slice_s)
        cur = self._cur
        if cur.sid != sid:
            cur = self._slices[sid % len(self._slices)]
            if cur.sid != sid:
                cur.reset(sid)
            self._cur = cur
        v = value if value > 0 else 0
        idx = int(v) if int(v) < 16 else bucket_index(int(v))
        cur.counts[idx] = cur.counts.get(idx, 0) + 1
        cur.count += 1
        cur.sum += v
        cur.min = min(cur.min, v)
        cur.max = max(cur.max, v)
        self.total_count += 1
        self.total_sum += v


def _state(h: WindowedHistogram) -> list[tuple[object, ...]]:
    return [(s.sid, s.count, s.counts, s.sum, s.min, s.max) for s in h._slices] + [
        (h.total_count, h.total_sum, h._cur.sid)
    ]


@pytest.mark.parametrize("slice_s", [5.0, 1.0, 0.1, 0.0015])
def test_histogram_records_land_where_dividing_puts_them(slice_s: float) -> None:
    clock = _Clock(0.0)
    fast = WindowedHistogram(clock, slices=4, slice_s=slice_s)
    slow = _DividingHistogram(clock, slices=4, slice_s=slice_s)
    rng = random.Random(3)
    times = [rng.uniform(-2 * slice_s, 40 * slice_s) for _ in range(300)]
    times += [k * slice_s + d for k in range(-2, 20) for d in (-1e-9, 0.0, 1e-9, -2e-3, 2e-3)]
    times = sorted(times) + times  # forward, then jumping back and forth
    for t in times:
        clock.t = t
        value = rng.choice([0.0, -1.0, 0.4, 3.0, 17.5, 1e6])
        fast.add(value)
        slow.add(value)
        assert _state(fast) == _state(slow)


def test_windowed_adder_sums_by_the_slice_of_each_add() -> None:
    clock = _Clock(100.0)
    w = WindowedAdder(1.0, 10, clock)
    rng = random.Random(5)
    adds: list[tuple[float, int]] = []
    t = 100.0
    for _ in range(500):
        t += rng.choice([0.0, 1e-4, 0.03, 0.0999, 0.1, 0.35, 1.5])
        clock.t = t
        v = rng.randint(-3, 9)
        w.add(v)
        adds.append((t, v))
        sid = _slice_of(t, 0.1)
        assert w.sum() == sum(x for at, x in adds if sid - 9 <= _slice_of(at, 0.1) <= sid)


class _Req:
    def __init__(self, headers: list[Header], authority: str | None = None) -> None:
        self.headers = headers
        self.method = "GET"
        self.target = "/"
        self.http_version = "1.1"
        self.authority = authority


@pytest.mark.parametrize("header", ["Host", "x-name", ":authority"])
@pytest.mark.parametrize("use_last", [False, True])
@pytest.mark.parametrize(
    "headers",
    [[], [(b"host", b"a"), (b"host", b"b")], [(b"x-name", b"")], [(b"x-name", b"n"), (b"host", b"h")]],
)
def test_header_token_identifier_reads_the_header_as_before(
    header: str, use_last: bool, headers: list[Header]
) -> None:
    req = _Req(headers, authority="auth")
    ident = HeaderTokenIdentifier(header=header, use_last=use_last)
    values = _header_values(req, header)
    value = (values[-1] if use_last else values[0]) if values else b""
    got = ident.identify(req)
    if value:
        assert got.ok and got.path.labels[-1] == value  # type: ignore[union-attr]
    else:
        assert not got.ok


def test_windowed_adder_matches_dividing_adds_when_time_jumps_around() -> None:
    clock = _Clock(0.0)
    fast = WindowedAdder(1.0, 10, clock)
    slots, ids = [0] * 10, [-1] * 10
    rng = random.Random(11)
    for _ in range(2000):
        clock.t = rng.choice([rng.uniform(0, 3), clock.t + rng.choice([0.0, 1e-4, 0.05, -0.05])])
        v = rng.randint(-3, 9)
        fast.add(v)
        sid = int(clock.t // 0.1)
        i = sid % 10
        if ids[i] != sid:
            ids[i], slots[i] = sid, 0
        slots[i] += v
        assert (fast._slots, fast._slot_ids) == (slots, ids)
