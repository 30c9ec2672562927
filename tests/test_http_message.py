"""Pure tests: message types, error responses, hop-by-hop stripping, proxy headers."""

from __future__ import annotations

import random
from urllib.parse import unquote_plus

import pytest

from hostproxy.http.errors import (
    ConnectError,
    UpstreamReset,
    error_response,
    response_for_exception,
)
from hostproxy.http.hopbyhop import strip_hop_by_hop
from hostproxy.http.message import Body, Headers
from hostproxy.http.proxyheaders import (
    ForwardedConfig,
    Labeler,
    append_via,
    forwarded_element,
    split_absolute_form,
    via_count,
)


def test_headers_helpers_lowercase_and_keep_order() -> None:
    h = Headers([(b"Host", b"a"), (b"X-A", b"1"), (b"x-a", b"2")])
    assert h.items() == [(b"host", b"a"), (b"x-a", b"1"), (b"x-a", b"2")]
    assert h.get("X-A") == b"1"
    assert h.get_all(b"x-a") == [b"1", b"2"]
    h.set("x-a", "3")
    assert h.items() == [(b"host", b"a"), (b"x-a", b"3")]
    h.add("Via", b"1.1 x")
    h.remove("HOST")
    assert h.items() == [(b"x-a", b"3"), (b"via", b"1.1 x")]
    assert "via" in h and b"host" not in h
    assert h.get("missing") is None


async def test_body_from_bytes_and_empty() -> None:
    body = Body.from_bytes(b"abc")
    assert body.content_length == 3 and body.in_memory
    assert [c async for c in body] == [b"abc"]
    assert body.done
    empty = Body.empty()
    assert empty.content_length == 0
    assert [c async for c in empty] == []


async def test_body_read_all_limit() -> None:
    with pytest.raises(ValueError, match=r"^body exceeds 2 bytes; stream it instead of read_all\(\)$"):
        await Body.from_bytes(b"abc").read_all(limit=2)


class _Source:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.trailers: Headers | None = None
        self.closed = False

    async def read_chunk(self) -> bytes | None:
        if not self.chunks:
            self.trailers = Headers([(b"x-t", b"1")])
            return None
        return self.chunks.pop(0)

    async def aclose(self) -> None:
        self.closed = True


async def test_streamed_body_trailers_after_end_and_close_early() -> None:
    src = _Source([b"a", b"b"])
    body = Body(src, None)
    assert [c async for c in body] == [b"a", b"b"]
    assert body.trailers == Headers([(b"x-t", b"1")])
    src2 = _Source([b"a", b"b"])
    body2 = Body(src2, None)
    assert await body2.__anext__() == b"a"
    await body2.aclose()
    assert src2.closed
    with pytest.raises(RuntimeError, match="closed before it was read to the end"):
        await body2.__anext__()


async def test_error_response_encodes_and_caps() -> None:
    r = error_response(502, "connect/refused", "Unable to establish connection to 10.0.0.1:80.")
    assert r.status == 502 and r.reason == b"Bad Gateway" and r.error_cause == "connect/refused"
    err = r.headers.get(b"l5d-err")
    assert err == b"Unable+to+establish+connection+to+10.0.0.1%3A80."
    assert r.headers.get(b"content-type") == b"text/plain; charset=utf-8"
    assert await r.body.read_all() == b"Unable to establish connection to 10.0.0.1:80."
    capped = error_response(400, "bad-request", "é" * 100, max_header_bytes=10, max_body_bytes=7)
    value = capped.headers.get(b"l5d-err")
    assert value is not None and len(value) <= 10 and b"%" not in value[-2:]
    assert unquote_plus(value.decode(), encoding="iso-8859-1") == "é" * (len(value) // 3)
    assert capped.body.content_length == 7


def test_response_for_exception_by_cause() -> None:
    r = response_for_exception(ConnectError("refused", endpoint="h:1", cause="connect/refused"))
    assert (r.status, r.error_cause, r.headers.get(b"l5d-retryable")) == (502, "connect/refused", b"true")
    r = response_for_exception(UpstreamReset("reset", endpoint="h:1"))
    assert (r.status, r.error_cause, r.headers.get(b"l5d-retryable")) == (502, "upstream/reset", b"false")
    r = response_for_exception(KeyError("boom"))
    assert (r.status, r.error_cause) == (502, "proxy/internal")
    assert r.headers.get(b"l5d-err") == b"Internal+proxy+error%3A+KeyError%3A+%27boom%27"


def test_strip_hop_by_hop() -> None:
    h = Headers(
        [
            (b"host", b"a"),
            (b"connection", b"keep-alive, X-Secret"),
            (b"x-secret", b"s"),
            (b"keep-alive", b"timeout=5"),
            (b"proxy-authorization", b"basic x"),
            (b"proxy-foo", b"y"),
            (b"te", b"gzip, trailers"),
            (b"trailer", b"x-t"),
            (b"transfer-encoding", b"chunked"),
            (b"upgrade", b"websocket"),
            (b"x-keep", b"k"),
        ]
    )
    assert strip_hop_by_hop(h).items() == [(b"host", b"a"), (b"x-keep", b"k"), (b"te", b"trailers")]
    kept = strip_hop_by_hop(h, keep_upgrade=True).items()
    assert (b"upgrade", b"websocket") in kept and kept[-1] == (b"connection", b"upgrade")
    assert (b"te", b"gzip") not in kept


def test_strip_hop_by_hop_without_any_returns_a_copy() -> None:
    h = Headers([(b"host", b"a"), (b"x-keep", b"k")])
    out = strip_hop_by_hop(h)
    assert out.items() == h.items() and out is not h
    out.add(b"via", b"1.1 x")
    assert b"via" not in h
    # keep_upgrade always states the upgrade, even with nothing to strip.
    assert strip_hop_by_hop(h, keep_upgrade=True).items()[-1] == (b"connection", b"upgrade")


def test_header_name_cache_is_bounded_and_lowercases() -> None:
    from hostproxy.http import message

    h = Headers([(b"x-a", b"1")])
    assert h.get("X-A") == b"1" and h.get(b"X-a") == b"1"
    for i in range(message._NAMES_MAX + 100):
        h.get(f"X-Name-{i}")
    assert len(message._NAMES) <= message._NAMES_MAX
    assert h.get("X-A") == b"1"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("http://users/path?q=1", ("http", "users", "/path?q=1")),
        ("http://users", ("http", "users", "/")),
        ("http://users?x", ("http", "users", "/?x")),
        ("HTTP://Users:8080/a#frag", ("http", "Users:8080", "/a")),
        ("https://u:p@host/x", ("https", "host", "/x")),
        ("/origin", None),
        ("*", None),
    ],
)
def test_split_absolute_form(target: str, expected: tuple[str, str, str] | None) -> None:
    assert split_absolute_form(target) == expected


def test_via_count_and_append() -> None:
    h = Headers([(b"via", b"1.1 a, 1.0 b"), (b"via", b"1.1 c")])
    assert via_count(h) == 3
    append_via(h, "1.1")
    assert h.get_all(b"via") == [b"1.1 a, 1.0 b, 1.1 c, 1.1 hostproxy"]
    assert via_count(h) == 4
    empty = Headers()
    append_via(empty, "1.0")
    assert empty.items() == [(b"via", b"1.0 hostproxy")]


def test_forwarded_labelers() -> None:
    rng = random.Random(7)
    cfg = ForwardedConfig(by=Labeler("ip:port"), for_=Labeler("ip"))
    el = forwarded_element(
        cfg,
        local=("10.0.0.1", 4140),
        peer=("::1", 5555),
        connection_labels=("_c1", "_c2"),
        router_label="out",
        rng=rng,
    )
    assert el == b'by="10.0.0.1:4140";for="[::1]"'
    cfg = ForwardedConfig(by=Labeler("router"), for_=Labeler("connectionRandom"))
    el = forwarded_element(
        cfg,
        local=("1.2.3.4", 1),
        peer=("5.6.7.8", 2),
        connection_labels=("_c1", "_c2"),
        router_label="out",
        rng=rng,
    )
    assert el == b"by=out;for=_c2"
    a = forwarded_element(
        ForwardedConfig(),
        local=("1.2.3.4", 1),
        peer=("5.6.7.8", 2),
        connection_labels=("", ""),
        router_label="r",
        rng=random.Random(1),
    )
    b = forwarded_element(
        ForwardedConfig(),
        local=("1.2.3.4", 1),
        peer=("5.6.7.8", 2),
        connection_labels=("", ""),
        router_label="r",
        rng=random.Random(1),
    )
    assert a == b and a.startswith(b"by=_") and b";for=_" in a
    static = forwarded_element(
        ForwardedConfig(by=Labeler("static", "my proxy"), for_=Labeler("static", "edge")),
        local=("1.2.3.4", 1),
        peer=("5.6.7.8", 2),
        connection_labels=("", ""),
        router_label="r",
        rng=rng,
    )
    assert static == b'by="my proxy";for=edge'


def test_labeler_validation_messages() -> None:
    with pytest.raises(
        ValueError, match=r"^unknown Forwarded labeler kind 'nope'; expected one of ip, ip:port, "
    ):
        Labeler("nope")
    with pytest.raises(ValueError, match=r"^Forwarded labeler kind 'static' needs a non-empty 'label'$"):
        Labeler("static")
