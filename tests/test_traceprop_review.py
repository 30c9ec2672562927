"""The router's ``tracePropagator``: ``io.l5d.default`` (``l5d-ctx-trace``) and ``io.l5d.zipkin`` (B3).

Expected behaviour follows Linkerd 1 (``LinkerdTracePropagator``, ``ZipkinTracePropagator``,
``TraceInitializer``; ../shared/spec/linkerd1-reference.md §6.1, §6.3, §8) with the differences the
README lists: one span per hop (its parent is the span received), a 128-bit B3 trace id kept whole,
``x-b3-sampled`` written only when a decision came. The pure module is tested with seeded rngs; the
daemon tests use real curl, a real HTTP/1.1 upstream and a real h2c origin on loopback that record
the headers they received.
"""

from __future__ import annotations

import base64
import contextlib
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path as FsPath

import pytest
import trio

from dtab import Dtab
from hostproxy.config import ConfigError, load_config
from hostproxy.daemon import Daemon
from hostproxy.h2.server import H2Server, H2ServerParams
from hostproxy.http import codec_fast
from hostproxy.http.message import Body, Headers, Request, Response
from hostproxy.routing.context import forwarded_headers, forwarded_plain, inbound_scan
from hostproxy.routing.tracectx import (
    DEFAULT,
    FLAG_DEBUG,
    FLAG_SAMPLED,
    FLAG_SAMPLING_KNOWN,
    ZIPKIN,
    decode_l5d_trace,
    encode_l5d_trace,
    propagator_for,
)
from tests.daemonutil import curl, running_daemon
from tests.upstreams import running_upstream

pytestmark = pytest.mark.timeout(90)

Header = tuple[bytes, bytes]


def draws(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.getrandbits(64) for _ in range(n)]


def l5d(span: int, parent: int, trace: int, flags: int = 0) -> bytes:
    return encode_l5d_trace(span, parent, trace, flags)


# -- io.l5d.default, pure ----------------------------------------------------------------------------


def test_default_starts_a_root_trace_when_none_came() -> None:
    """Linkerd sends l5d-ctx-trace on every request (a new trace when none came); l5d-reqid is its id."""
    (s,) = draws(1, 1)
    out = DEFAULT.forward({}, None, random.Random(1))
    assert out == [(b"l5d-ctx-trace", l5d(s, s, s)), (b"l5d-reqid", b"%016x" % s)]
    assert DEFAULT.new_trace(random.Random(1)) == out
    got = decode_l5d_trace(out[0][1])
    assert got is not None and (got.span_id, got.parent_id, got.trace_id, got.flags) == (s, s, s, 0)


def test_default_forwards_a_child_of_the_received_span() -> None:
    received = l5d(0x1111, 0x2222, 0xABCDEF, FLAG_SAMPLING_KNOWN | FLAG_SAMPLED)
    (s,) = draws(2, 1)
    out = DEFAULT.forward({b"l5d-ctx-trace": received}, None, random.Random(2))
    assert out == [
        (b"l5d-ctx-trace", l5d(s, 0x1111, 0xABCDEF, FLAG_SAMPLING_KNOWN | FLAG_SAMPLED)),
        (b"l5d-reqid", b"0000000000abcdef"),
    ]


@pytest.mark.parametrize(
    "value",
    [
        b"not base64!",
        base64.b64encode(bytes(31)),
        base64.b64encode(bytes(40)),
        l5d(0, 5, 9),  # no span id
        l5d(5, 5, 0),  # no trace id
        b"",
    ],
)
def test_default_malformed_trace_starts_a_new_one(value: bytes) -> None:
    (s,) = draws(3, 1)
    out = DEFAULT.forward({b"l5d-ctx-trace": value}, None, random.Random(3))
    assert out == [(b"l5d-ctx-trace", l5d(s, s, s)), (b"l5d-reqid", b"%016x" % s)]


class _Draws:
    """An rng giving fixed 64-bit draws and a fixed ``random()``."""

    def __init__(self, bits: int, uniform: float) -> None:
        self.bits, self.uniform = bits, uniform

    def getrandbits(self, n: int) -> int:
        return self.bits

    def random(self) -> float:
        return self.uniform


@pytest.mark.parametrize(
    ("sample", "uniform", "in_flags", "out_flags"),
    [
        (1.0, 0.99, 0, FLAG_SAMPLING_KNOWN | FLAG_SAMPLED),
        (0.0, 0.0, FLAG_SAMPLING_KNOWN | FLAG_SAMPLED, FLAG_SAMPLING_KNOWN),  # a decision made again
        (0.5, 0.25, 0, FLAG_SAMPLING_KNOWN | FLAG_SAMPLED),
        (0.5, 0.75, FLAG_DEBUG, FLAG_DEBUG | FLAG_SAMPLING_KNOWN),  # other flags kept
        (None, 0.0, FLAG_SAMPLING_KNOWN, FLAG_SAMPLING_KNOWN),  # no l5d-sample: the received decision
    ],
)
def test_l5d_sample_decides_sampling_in_the_forwarded_flags(
    sample: float | None, uniform: float, in_flags: int, out_flags: int
) -> None:
    received = l5d(7, 6, 5, in_flags)
    out = DEFAULT.forward({b"l5d-ctx-trace": received}, sample, _Draws(99, uniform))  # type: ignore[arg-type]
    assert out[0] == (b"l5d-ctx-trace", l5d(99, 7, 5, out_flags))


def test_l5d_sample_is_read_and_decides_through_the_forwarded_headers() -> None:
    kept, _, sample, more = inbound_scan(Headers([(b"host", b"a"), (b"l5d-sample", b"7")]), False)
    assert sample == 1.0 and not more  # clamped; consumed
    out, _ = forwarded_headers(
        b"/svc/a", b"/c", None, Dtab.EMPTY, kept, random.Random(4), l5d=more, sample=sample
    )
    got = decode_l5d_trace(dict(out)[b"l5d-ctx-trace"])
    assert got is not None and got.flags == FLAG_SAMPLING_KNOWN | FLAG_SAMPLED
    assert b"l5d-sample" not in dict(out)


def test_default_forwarded_headers_replace_the_received_trace_and_reqid() -> None:
    received = l5d(0x10, 0x20, 0x30)
    hs = Headers([(b"host", b"a"), (b"l5d-ctx-trace", received), (b"l5d-reqid", b"00000000000000ff")])
    kept, local, sample, more = inbound_scan(hs, False)
    out, _ = forwarded_headers(b"/svc/a", b"/c", None, local, kept, random.Random(5), l5d=more, sample=sample)
    (s,) = draws(5, 1)
    assert out == [
        (b"host", b"a"),
        (b"l5d-dst-service", b"/svc/a"),
        (b"l5d-dst-client", b"/c"),
        (b"l5d-ctx-trace", l5d(s, 0x10, 0x30)),
        (b"l5d-reqid", b"0000000000000030"),
    ]


def test_clear_context_drops_the_received_trace_and_a_new_one_is_sent() -> None:
    hs = Headers([(b"host", b"a"), (b"l5d-ctx-trace", l5d(1, 2, 3)), (b"l5d-sample", b"1")])
    kept, local, sample, more = inbound_scan(hs, True)
    assert kept == [(b"host", b"a")] and sample is None and not more
    out = forwarded_plain(list(kept), ((b"l5d-dst-service", b"/svc/a"),), random.Random(6))
    (s,) = draws(6, 1)
    assert out[-2:] == [(b"l5d-ctx-trace", l5d(s, s, s)), (b"l5d-reqid", b"%016x" % s)]


# -- io.l5d.zipkin, pure -----------------------------------------------------------------------------


def b3(**kw: str) -> dict[bytes, bytes]:
    return {b"x-b3-" + k.encode(): v.encode() for k, v in kw.items()}


def test_zipkin_forwards_a_child_with_the_received_span_as_parent() -> None:
    (s,) = draws(7, 1)
    got = ZIPKIN.forward(
        b3(
            traceid="463ac35c9f6413ad",
            spanid="a2fb4a1d1a96d312",
            parentspanid="0020000000000001",
            sampled="1",
        ),
        None,
        random.Random(7),
    )
    assert got == [
        (b"x-b3-sampled", b"1"),
        (b"x-b3-traceid", b"463ac35c9f6413ad"),
        (b"x-b3-parentspanid", b"a2fb4a1d1a96d312"),
        (b"x-b3-spanid", b"%016x" % s),
        (b"l5d-reqid", b"463ac35c9f6413ad"),
    ]


def test_zipkin_keeps_a_128_bit_trace_id_and_reqid_is_its_low_64_bits() -> None:
    got = dict(
        ZIPKIN.forward(b3(traceid="463AC35C9F6413AD48485A3953BB6124", spanid="A2FB"), None, random.Random(8))
    )
    assert got[b"x-b3-traceid"] == b"463ac35c9f6413ad48485a3953bb6124"
    assert (
        got[b"x-b3-parentspanid"] == b"000000000000a2fb"
    )  # short ids are zero-padded, as Finagle reads them
    assert got[b"l5d-reqid"] == b"48485a3953bb6124"
    assert b"x-b3-sampled" not in got and b"x-b3-flags" not in got  # no decision came: none is made


@pytest.mark.parametrize(
    "received",
    [
        {},
        b3(traceid="463ac35c9f6413ad"),  # no span id
        b3(spanid="a2fb4a1d1a96d312"),  # no trace id
        b3(traceid="xyz", spanid="a2fb4a1d1a96d312"),
        b3(traceid="463ac35c9f6413ad", spanid="a2fb4a1d1a96d312a"),  # 17 digits
        b3(traceid="463ac35c9f6413ad48485a3953bb61240", spanid="a2fb4a1d1a96d312"),  # 33 digits
        b3(traceid="0000000000000000", spanid="a2fb4a1d1a96d312"),  # zero is not an id
        b3(traceid="463ac35c9f6413ad", spanid="0"),
        b3(traceid="-463ac35c9f6413a", spanid="a2fb4a1d1a96d312"),
        b3(traceid="", spanid=""),
    ],
)
def test_zipkin_missing_or_malformed_ids_start_a_new_trace(received: dict[bytes, bytes]) -> None:
    (s,) = draws(9, 1)
    out = ZIPKIN.forward(received, None, random.Random(9))
    assert out == [
        (b"x-b3-traceid", b"%016x" % s),
        (b"x-b3-spanid", b"%016x" % s),
        (b"l5d-reqid", b"%016x" % s),
    ]
    assert ZIPKIN.new_trace(random.Random(9)) == ZIPKIN.forward({}, None, random.Random(9))


@pytest.mark.parametrize(
    ("sampled", "flags", "expected"),
    [
        ("1", None, [(b"x-b3-sampled", b"1")]),
        ("true", None, [(b"x-b3-sampled", b"1")]),
        ("0", None, [(b"x-b3-sampled", b"0")]),
        ("False", None, [(b"x-b3-sampled", b"0")]),
        ("maybe", None, []),  # not a decision
        (None, "1", [(b"x-b3-sampled", b"1"), (b"x-b3-flags", b"1")]),  # debug: sampled
        ("0", "1", [(b"x-b3-sampled", b"1"), (b"x-b3-flags", b"1")]),
        (None, "0", []),
        (None, "junk", []),
    ],
)
def test_zipkin_sampling_and_debug(sampled: str | None, flags: str | None, expected: list[Header]) -> None:
    kw = {"traceid": "463ac35c9f6413ad", "spanid": "a2fb4a1d1a96d312"}
    if sampled is not None:
        kw["sampled"] = sampled
    if flags is not None:
        kw["flags"] = flags
    out = ZIPKIN.forward(b3(**kw), None, random.Random(10))
    assert [h for h in out if h[0] in (b"x-b3-sampled", b"x-b3-flags")] == expected
    assert out[-1][0] == b"l5d-reqid"


def test_zipkin_keeps_a_do_not_sample_decision_that_came_without_ids() -> None:
    out = dict(ZIPKIN.forward(b3(sampled="0"), None, random.Random(11)))
    assert out[b"x-b3-sampled"] == b"0" and b"x-b3-parentspanid" not in out


def test_zipkin_forwarded_headers_replace_b3_and_drop_l5d_ctx_trace() -> None:
    hs = Headers(
        [
            (b"host", b"a"),
            (b"X-B3-TraceId", b"463ac35c9f6413ad"),
            (b"x-b3-spanid", b"a2fb4a1d1a96d312"),
            (b"x-b3-parentspanid", b"1111111111111111"),
            (b"x-b3-spanid", b"ffffffffffffffff"),  # only the first value counts
            (b"x-b3-custom", b"kept"),
            (b"b3", b"463ac35c9f6413ad-a2fb4a1d1a96d312-1"),  # not read, passed on (as Linkerd 1)
            (b"l5d-ctx-trace", l5d(1, 2, 3)),
            (b"l5d-reqid", b"00000000000000ff"),
        ]
    )
    kept, local, sample, more = inbound_scan(hs, False, None, ZIPKIN)
    assert more
    out, _ = forwarded_headers(
        b"/svc/a", b"/c", None, local, kept, random.Random(12), l5d=more, sample=sample, propagator=ZIPKIN
    )
    (s,) = draws(12, 1)
    assert out == [
        (b"host", b"a"),
        (b"x-b3-custom", b"kept"),
        (b"b3", b"463ac35c9f6413ad-a2fb4a1d1a96d312-1"),
        (b"l5d-dst-service", b"/svc/a"),
        (b"l5d-dst-client", b"/c"),
        (b"x-b3-traceid", b"463ac35c9f6413ad"),
        (b"x-b3-parentspanid", b"a2fb4a1d1a96d312"),
        (b"x-b3-spanid", b"%016x" % s),
        (b"l5d-reqid", b"463ac35c9f6413ad"),
    ]


def test_zipkin_b3_headers_alone_take_the_general_path_and_clear_context_drops_them() -> None:
    hs = Headers(
        [(b"host", b"a"), (b"x-b3-traceid", b"463ac35c9f6413ad"), (b"x-b3-spanid", b"a2fb4a1d1a96d312")]
    )
    assert inbound_scan(hs, False, None, ZIPKIN)[3] is True  # no l5d-* header, but B3 to read
    assert inbound_scan(hs, False)[3] is False  # the default propagator does not read them
    kept, _, _, more = inbound_scan(hs, True, None, ZIPKIN)
    assert kept == [(b"host", b"a")] and not more
    out = forwarded_plain(list(kept), ((b"l5d-dst-service", b"/svc/a"),), random.Random(13), ZIPKIN)
    (s,) = draws(13, 1)
    assert out[1:] == [
        (b"l5d-dst-service", b"/svc/a"),
        (b"x-b3-traceid", b"%016x" % s),
        (b"x-b3-spanid", b"%016x" % s),
        (b"l5d-reqid", b"%016x" % s),
    ]


def test_propagator_for_knows_the_kinds() -> None:
    assert propagator_for("io.l5d.default") is DEFAULT and propagator_for("io.l5d.zipkin") is ZIPKIN
    with pytest.raises(ValueError, match=r"io.l5d.default, io.l5d.zipkin"):
        propagator_for("io.l5d.b3")


# -- the HTTP/1.1 writer's request-block cache -------------------------------------------------------


@pytest.mark.parametrize("propagator", [DEFAULT, ZIPKIN])
def test_request_block_with_trailing_trace_fields_is_written_exactly(propagator: object) -> None:
    common = [(b"host", b"svc"), (b"user-agent", b"curl/8"), (b"l5d-dst-service", b"/svc/x")]
    for i in range(3):
        fields = [*common, *propagator.new_trace(random.Random(i))]  # type: ignore[attr-defined]
        block, _ = codec_fast._request_fields_noted(fields)  # type: ignore[misc]
        assert block == codec_fast._fields_out_checked(fields)
    assert tuple(common) in codec_fast._OUT_REQUEST_BLOCKS  # the block before the per-request fields


def test_request_block_with_a_bad_trailing_trace_value_is_still_checked() -> None:
    common = [(b"host", b"svc")]
    assert (
        codec_fast._request_fields_noted([*common, (b"l5d-ctx-trace", b"a\r\nx: 1"), (b"l5d-reqid", b"ab")])
        is None
    )
    bad = [*common, (b"l5d-ctx-trace", b"a b"), (b"l5d-reqid", b"ab")]  # valid, but not one-off plain
    got = codec_fast._request_fields_noted(bad)
    assert got is not None and got[0] == codec_fast._fields_out_checked(bad)


# -- config ------------------------------------------------------------------------------------------

LINKERD = """
routers:
- protocol: http
  tracePropagator:
    kind: io.l5d.zipkin
  dtab: /svc => /$/inet/127.0.0.1/8080;
  servers: [{{port: 4140, clearContext: true}}]
- protocol: h2
  tracePropagator: {{kind: {h2kind}}}
  servers: [{{port: 4142}}]
"""


@pytest.mark.parametrize("h2kind", ["io.l5d.default", "io.l5d.zipkin"])
def test_hostproxy_check_accepts_linkerd_configs_that_set_it(tmp_path: FsPath, h2kind: str) -> None:
    cfg = tmp_path / "linkerd.yaml"
    cfg.write_text(LINKERD.format(h2kind=h2kind))
    proc = subprocess.run(
        [sys.executable, "-m", "hostproxy", "check", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    loaded = load_config(cfg.read_text(), source="x.yaml")
    assert [r.trace_propagator.kind for r in loaded.routers] == ["io.l5d.zipkin", h2kind]
    assert load_config("routers: [{protocol: http, servers: [{}]}]", source="x").routers[
        0
    ].trace_propagator.kind == ("io.l5d.default")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "{kind: io.l5d.jaeger}",
            "x.yaml:4: routers[0].tracePropagator.kind: unknown trace propagator kind 'io.l5d.jaeger'; "
            "valid kinds: io.l5d.default, io.l5d.zipkin",
        ),
        (
            "{kind: io.l5d.zipkn}",
            "x.yaml:4: routers[0].tracePropagator.kind: unknown trace propagator kind 'io.l5d.zipkn'; "
            "did you mean 'io.l5d.zipkin'?; valid kinds: io.l5d.default, io.l5d.zipkin",
        ),
        (
            "{kind: io.l5d.zipkin, sampleRate: 1}",
            "x.yaml:4: routers[0].tracePropagator.sampleRate: unknown key 'sampleRate'",
        ),
        ("io.l5d.zipkin", "x.yaml:4: routers[0].tracePropagator: expected a mapping"),
    ],
)
def test_a_bad_trace_propagator_names_the_path_and_the_kinds(value: str, message: str) -> None:
    text = f"routers:\n- protocol: h2\n  servers: [{{}}]\n  tracePropagator: {value}\n"
    with pytest.raises(ConfigError) as info:
        load_config(text, source="x.yaml")
    assert info.value.errors[0].format().startswith(message), info.value.errors[0].format()


# -- through the daemon --------------------------------------------------------------------------------


def http_config(up_port: int, kind: str, server_extra: str = "") -> str:
    return f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: http
  label: out
  tracePropagator: {{kind: {kind}}}
  dtab: /svc/web => /$/inet/127.0.0.1/{up_port};
  servers:
  - {{ip: 127.0.0.1, port: 0{server_extra}}}
"""


async def test_http_default_sends_a_trace_and_continues_a_received_one() -> None:
    async with running_upstream() as up, running_daemon(http_config(up.port, "io.l5d.default")) as d:
        url = f"http://127.0.0.1:{d.port('out')}/"
        r = await curl(url, "-H", "Host: web", "-H", "l5d-reqid: 00000000000000ff")
        assert r.status == 200, r
        seen = up.requests[-1]
        root = decode_l5d_trace((seen.header("l5d-ctx-trace") or "").encode())
        assert root is not None and root.span_id == root.trace_id == root.parent_id != 0
        assert seen.header("l5d-reqid") == f"{root.trace_id:016x}"  # the received one is replaced
        # The application passes l5d-ctx-* on (as Linkerd asks): the next hop continues the trace.
        sent = l5d(0x77, 0x66, root.trace_id, FLAG_SAMPLING_KNOWN | FLAG_SAMPLED).decode()
        r = await curl(url, "-H", "Host: web", "-H", f"l5d-ctx-trace: {sent}")
        assert r.status == 200, r
        seen = up.requests[-1]
        child = decode_l5d_trace((seen.header("l5d-ctx-trace") or "").encode())
        assert child is not None
        assert (child.parent_id, child.trace_id, child.flags) == (
            0x77,
            root.trace_id,
            FLAG_SAMPLING_KNOWN | FLAG_SAMPLED,
        )
        assert child.span_id not in (0, 0x77, root.span_id)
        assert seen.header("l5d-reqid") == f"{root.trace_id:016x}"
        assert [n for n, _ in seen.headers].count("l5d-ctx-trace") == 1
        # A malformed one does not fail the request: a new trace.
        r = await curl(url, "-H", "Host: web", "-H", "l5d-ctx-trace: %%%", "-H", "l5d-sample: 0")
        assert r.status == 200, r
        fresh = decode_l5d_trace((up.requests[-1].header("l5d-ctx-trace") or "").encode())
        assert fresh is not None and fresh.trace_id not in (0, root.trace_id)
        assert fresh.flags == FLAG_SAMPLING_KNOWN  # l5d-sample: 0 decided "not sampled"
        assert up.requests[-1].header("l5d-sample") is None


async def test_http_zipkin_forwards_b3_children_and_starts_traces() -> None:
    async with running_upstream() as up, running_daemon(http_config(up.port, "io.l5d.zipkin")) as d:
        url = f"http://127.0.0.1:{d.port('out')}/"
        r = await curl(
            url,
            "-H",
            "Host: web",
            "-H",
            "X-B3-TraceId: 80f198ee56343ba864fe8b2a57d3eff7",
            "-H",
            "X-B3-SpanId: e457b5a2e4d86bd1",
            "-H",
            "X-B3-ParentSpanId: 05e3ac9a4f6e3b90",
            "-H",
            "X-B3-Sampled: 1",
            "-H",
            f"l5d-ctx-trace: {l5d(1, 2, 3).decode()}",
        )
        assert r.status == 200, r
        seen = up.requests[-1]
        assert seen.header("x-b3-traceid") == "80f198ee56343ba864fe8b2a57d3eff7"
        assert seen.header("x-b3-parentspanid") == "e457b5a2e4d86bd1"
        span = seen.header("x-b3-spanid") or ""
        assert len(span) == 16 and span not in ("e457b5a2e4d86bd1", "0" * 16)
        assert seen.header("x-b3-sampled") == "1"
        assert seen.header("l5d-reqid") == "64fe8b2a57d3eff7"
        assert seen.header("l5d-ctx-trace") is None  # as Linkerd's zipkin propagator
        assert [n for n, _ in seen.headers].count("x-b3-spanid") == 1
        # Malformed B3 does not fail the request: a new trace, as Linkerd starts one.
        r = await curl(
            url, "-H", "Host: web", "-H", "X-B3-TraceId: not-hex", "-H", "X-B3-SpanId: e457b5a2e4d86bd1"
        )
        assert r.status == 200, r
        seen = up.requests[-1]
        trace = seen.header("x-b3-traceid") or ""
        assert len(trace) == 16 and trace == seen.header("x-b3-spanid") == seen.header("l5d-reqid")
        assert seen.header("x-b3-parentspanid") is None and seen.header("x-b3-sampled") is None


async def test_http_zipkin_clear_context_ignores_received_b3() -> None:
    """As Linkerd's HTTP router, whose clearContext removes the server's trace filter: B3 from an
    untrusted caller is not continued (nor its debug flag honoured); the request starts a new trace."""
    cfg = ", clearContext: true"
    async with running_upstream() as up, running_daemon(http_config(up.port, "io.l5d.zipkin", cfg)) as d:
        r = await curl(
            f"http://127.0.0.1:{d.port('out')}/",
            "-H",
            "Host: web",
            "-H",
            "X-B3-TraceId: 463ac35c9f6413ad",
            "-H",
            "X-B3-SpanId: a2fb4a1d1a96d312",
            "-H",
            "X-B3-Flags: 1",
        )
        assert r.status == 200, r
        seen = up.requests[-1]
        assert seen.header("x-b3-traceid") not in (None, "463ac35c9f6413ad")
        assert seen.header("x-b3-parentspanid") is None and seen.header("x-b3-flags") is None
        assert seen.header("l5d-reqid") == seen.header("x-b3-traceid")
        assert [n for n, _ in seen.headers].count("x-b3-traceid") == 1


@contextlib.asynccontextmanager
async def h2_origin() -> AsyncIterator[tuple[int, list[Request]]]:
    """A real h2c origin that records each request and answers 200."""
    seen: list[Request] = []

    async def handler(req: Request, _conn: object) -> Response:
        await req.body.read_all()
        seen.append(req)
        return Response(200, b"OK", Headers([(b"content-type", b"text/plain")]), Body.from_bytes(b"ok"))

    server = H2Server(handler, H2ServerParams(ip="127.0.0.1", port=0))
    async with trio.open_nursery() as nursery:
        addrs = await nursery.start(server.serve)
        yield addrs[0][1], seen
        nursery.cancel_scope.cancel()


def h2_config(port: int, kind: str) -> str:
    return f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: h2
  label: h2
  tracePropagator: {{kind: {kind}}}
  dtab: /svc/web => /$/inet/127.0.0.1/{port};
  servers:
  - {{ip: 127.0.0.1, port: 0}}
"""


async def test_h2_zipkin_and_default_through_the_daemon() -> None:
    async with h2_origin() as (port, seen):
        async with running_daemon(h2_config(port, "io.l5d.zipkin")) as d:
            r = await curl(
                f"http://127.0.0.1:{d.port('h2')}/",
                "--http2-prior-knowledge",
                "-H",
                "Host: web",
                "-H",
                "x-b3-traceid: 463ac35c9f6413ad",
                "-H",
                "x-b3-spanid: a2fb4a1d1a96d312",
                "-H",
                "x-b3-sampled: 0",
            )
            assert r.status == 200, r
            got = seen[-1].headers
            assert got.get(b"x-b3-traceid") == b"463ac35c9f6413ad"
            assert got.get(b"x-b3-parentspanid") == b"a2fb4a1d1a96d312"
            assert got.get(b"x-b3-sampled") == b"0"
            assert got.get(b"x-b3-spanid") not in (None, b"a2fb4a1d1a96d312")
            assert got.get(b"l5d-reqid") == b"463ac35c9f6413ad"
            assert got.get(b"l5d-ctx-trace") is None
        async with running_daemon(h2_config(port, "io.l5d.default")) as d:
            sent = l5d(0x42, 0x41, 0x40).decode()
            r = await curl(
                f"http://127.0.0.1:{d.port('h2')}/",
                "--http2-prior-knowledge",
                "-H",
                "Host: web",
                "-H",
                f"l5d-ctx-trace: {sent}",
                "-H",
                "x-b3-traceid: 463ac35c9f6413ad",
            )
            assert r.status == 200, r
            got = seen[-1].headers
            child = decode_l5d_trace(got.get(b"l5d-ctx-trace") or b"")
            assert child is not None and (child.parent_id, child.trace_id) == (0x42, 0x40)
            assert got.get(b"l5d-reqid") == b"0000000000000040"
            assert got.get(b"x-b3-traceid") == b"463ac35c9f6413ad"  # not the default propagator's: passed on


def test_the_readme_says_what_the_propagators_do() -> None:
    text = (FsPath(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("## Routers, headers and errors") : text.index("## Config reference")]
    for needle in ("tracePropagator", "io.l5d.zipkin", "x-b3-traceid", "l5d-ctx-trace", "clearContext"):
        assert needle in section, needle
    assert "`tracePropagator`, `compressionLevel`" not in text  # no longer among the refused keys


async def test_h2_clear_context_starts_a_new_trace_too() -> None:
    """hostproxy's h2 router drops received B3 under clearContext, as its http router (Linkerd's h2
    router kept reading them: the README says so)."""
    async with h2_origin() as (port, seen):
        cfg = h2_config(port, "io.l5d.zipkin").replace(
            "  - {ip: 127.0.0.1, port: 0}", "  - {ip: 127.0.0.1, port: 0, clearContext: true}"
        )
        async with running_daemon(cfg) as d:
            r = await curl(
                f"http://127.0.0.1:{d.port('h2')}/",
                "--http2-prior-knowledge",
                "-H",
                "Host: web",
                "-H",
                "x-b3-traceid: 463ac35c9f6413ad",
                "-H",
                "x-b3-spanid: a2fb4a1d1a96d312",
                "-H",
                "x-b3-sampled: 1",
            )
            assert r.status == 200, r
            got = seen[-1].headers
            assert got.get(b"x-b3-traceid") not in (None, b"463ac35c9f6413ad")
            assert got.get(b"x-b3-sampled") is None and got.get(b"x-b3-parentspanid") is None


async def test_a_reload_that_changes_the_propagator_takes_effect(tmp_path: FsPath) -> None:
    async with running_upstream() as up:
        path = tmp_path / "hostproxy.yaml"
        path.write_text(http_config(up.port, "io.l5d.default"))
        daemon = Daemon(load_config(path.read_text(), source=str(path)), config_path=str(path))
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            try:
                url = f"http://127.0.0.1:{daemon.addresses['out'][0][1]}/"
                b3_in = ("-H", "x-b3-traceid: 463ac35c9f6413ad", "-H", "x-b3-spanid: a2fb4a1d1a96d312")
                assert (await curl(url, "-H", "Host: web", *b3_in)).status == 200
                assert up.requests[-1].header("l5d-ctx-trace") is not None
                assert up.requests[-1].header("x-b3-spanid") == "a2fb4a1d1a96d312"  # passed through
                path.write_text(http_config(up.port, "io.l5d.zipkin"))
                ok, message = await daemon.reload()
                assert ok, message
                url = f"http://127.0.0.1:{daemon.addresses['out'][0][1]}/"
                assert (await curl(url, "-H", "Host: web", *b3_in)).status == 200
                seen = up.requests[-1]
                assert seen.header("l5d-ctx-trace") is None
                assert seen.header("x-b3-parentspanid") == "a2fb4a1d1a96d312"
            finally:
                daemon.request_shutdown()
