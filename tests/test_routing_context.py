"""Context headers: clearContext, per-request dtabs, downstream l5d-* headers, the override policy."""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass

import pytest

from dtab import Alt, Dtab, Leaf, Path, Union, Weighted
from hostproxy.routing.context import (
    AddressOverridePolicy,
    AddressOverrideRefused,
    DtabParseCache,
    HeaderEdits,
    RequestDtabError,
    clear_response_context,
    downstream_headers,
    encode_l5d_err,
    is_loopback_bind,
    is_raw_address_id,
    raw_address_ids,
    read_inbound,
    read_request_dtab,
    strip_inbound,
)

P = Path.read


def H(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(n.encode(), v.encode()) for n, v in pairs]


# -- inbound --------------------------------------------------------------------------------------


def test_clear_context_strips_every_l5d_header_before_reading() -> None:
    hs = H(
        ("host", "web"),
        ("l5d-dtab", "/svc=>/$/inet/10.0.0.1/22"),
        ("l5d-ctx-dtab", "/a=>/b"),
        ("l5d-ctx-trace", "x"),
        ("l5d-ctx-deadline", "1 2"),
        ("l5d-name", "/x"),
        ("l5d-reqid", "0123456789abcdef"),
        ("L5d-Sample", "1"),
        ("dtab-local", "/c=>/d"),
    )
    assert strip_inbound(hs, True) == H(("host", "web"), ("dtab-local", "/c=>/d"))
    inbound = read_inbound(hs, clear_context=True)
    assert inbound.local_dtab == Dtab.EMPTY
    assert inbound.headers == H(("host", "web"), ("dtab-local", "/c=>/d"))


def test_without_clear_context_nothing_is_stripped() -> None:
    hs = H(("l5d-dtab", "/a=>/b"), ("l5d-whatever", "1"))
    assert strip_inbound(hs, False) == hs


def test_request_dtab_is_ctx_then_user_every_value_in_order() -> None:
    hs = H(
        ("l5d-dtab", "/u1=>/x"),
        ("l5d-ctx-dtab", "/c1=>/x;/c2=>/x"),
        ("l5d-dtab", "/u2=>/x"),
        ("l5d-ctx-dtab", "/c3=>/x"),
    )
    d = read_request_dtab(hs)
    assert str(d) == "/c1=>/x;/c2=>/x;/c3=>/x;/u1=>/x;/u2=>/x"


def test_dtab_local_is_ignored_and_forwarded() -> None:
    inbound = read_inbound(H(("dtab-local", "/a=>/b")), clear_context=False)
    assert inbound.local_dtab == Dtab.EMPTY
    assert inbound.headers == H(("dtab-local", "/a=>/b"))


def test_read_inbound_consumes_dtab_and_sample_keeps_other_context() -> None:
    hs = H(
        ("l5d-dtab", "/foo=>/bar"),
        ("l5d-ctx-thing", "t"),
        ("l5d-ctx-trace", "tr"),
        ("l5d-sample", "7"),
        ("accept", "*/*"),
    )
    inbound = read_inbound(hs, clear_context=False)
    assert str(inbound.local_dtab) == "/foo=>/bar"
    assert inbound.sample == 1.0
    assert inbound.headers == H(("l5d-ctx-thing", "t"), ("l5d-ctx-trace", "tr"), ("accept", "*/*"))


def test_bad_request_dtab_names_header_and_shows_caret() -> None:
    hs = H(("l5d-ctx-dtab", "/ok=>/fine"), ("l5d-dtab", "/a=>/b;\n/c=>d"))
    with pytest.raises(RequestDtabError) as ei:
        read_request_dtab(hs)
    err = ei.value
    assert err.status == 400
    assert err.header == "l5d-dtab"
    msg = str(err)
    assert msg.startswith(f"Invalid l5d-dtab header: {err.error.message} at line 2 column 5 (byte 12)\n")
    assert msg.endswith("/c=>d\n    ^\nFix the dentries ('/prefix => /destination', separated by ';').")
    with pytest.raises(RequestDtabError, match=r"^Invalid l5d-ctx-dtab header: "):
        read_request_dtab(H(("l5d-ctx-dtab", "nope")))


def test_parse_cache_is_bounded_and_reuses_parses() -> None:
    cache = DtabParseCache(max_entries=3)
    a1 = cache.parse("/a=>/b")
    assert cache.parse("/a=>/b") is a1
    for i in range(100):
        cache.parse(f"/x{i}=>/y")
    assert len(cache) == 3
    assert cache.statistics() == {"size": 3, "max": 3, "hits": 1, "misses": 101}
    with pytest.raises(RequestDtabError):
        read_request_dtab(H(("l5d-dtab", "/a=>")), cache)
    assert len(cache) == 3


# -- downstream -----------------------------------------------------------------------------------


def _trace(trace_id: int) -> str:
    raw = (1).to_bytes(8, "big") + (2).to_bytes(8, "big") + trace_id.to_bytes(8, "big") + bytes(8)
    return base64.b64encode(raw).decode()


def test_downstream_headers_full_set() -> None:
    inbound = read_inbound(
        H(
            ("l5d-dtab", "/foo=>/bar"),
            ("l5d-ctx-thing", "t"),
            ("l5d-ctx-trace", _trace(0xABC)),
            ("l5d-dst-residual", "/forged"),
            ("l5d-ctx-deadline", "100 900"),
            ("l5d-ctx-deadline", "200 800"),
            ("l5d-ctx-deadline", "garbage"),
        ),
        clear_context=False,
    )
    edits = downstream_headers(
        service=P("/svc/web"),
        client=P("/%/io.l5d.port/4141/#/io.l5d.fs/web"),
        residual=P("/extra"),
        local_dtab=inbound.local_dtab,
        headers=inbound.headers,
        rng=random.Random(1),
    )
    out = edits.apply(inbound.headers)
    # The received trace's child: a new span id, the received span (1) as its parent, the same trace.
    child = (
        random.Random(1).getrandbits(64).to_bytes(8, "big")
        + (1).to_bytes(8, "big")
        + (0xABC).to_bytes(8, "big")
        + bytes(8)
    )
    assert out == [
        (b"l5d-ctx-thing", b"t"),
        (b"l5d-dst-service", b"/svc/web"),
        (b"l5d-dst-client", b"/%/io.l5d.port/4141/#/io.l5d.fs/web"),
        (b"l5d-dst-residual", b"/extra"),
        (b"l5d-ctx-trace", base64.b64encode(child)),
        (b"l5d-reqid", b"0000000000000abc"),
        (b"l5d-ctx-dtab", b"/foo=>/bar"),
        (b"l5d-ctx-deadline", b"200 800"),
    ]


def test_downstream_without_residual_or_dtab_removes_forged_ones() -> None:
    hs = H(("l5d-dst-residual", "/forged"), ("l5d-ctx-dtab", "/x=>/y"), ("l5d-dst-client", "/evil"))
    edits = downstream_headers(
        service=P("/svc/web"),
        client=None,
        residual=Path.EMPTY,
        local_dtab=Dtab.EMPTY,
        headers=[],
        rng=random.Random(7),
    )
    out = edits.apply(hs)
    names = [n for n, _ in out]
    assert b"l5d-dst-residual" not in names
    assert b"l5d-ctx-dtab" not in names
    assert b"l5d-dst-client" not in names
    assert edits.value(b"l5d-reqid") == f"{random.Random(7).getrandbits(64):016x}".encode()


def test_reqid_is_the_forwarded_trace_id_never_a_received_reqid() -> None:
    """As Linkerd's ``LinkerdTracePropagator``: ``l5d-reqid`` is the trace id of the forwarded
    ``l5d-ctx-trace``, the received trace's or a new one; a received ``l5d-reqid`` is replaced."""

    def reqid(hs: list[tuple[bytes, bytes]]) -> bytes | None:
        e = downstream_headers(
            service=P("/s"),
            client=None,
            residual=None,
            local_dtab=Dtab.EMPTY,
            headers=hs,
            rng=random.Random(3),
        )
        return e.value(b"l5d-reqid")

    generated = f"{random.Random(3).getrandbits(64):016x}".encode()
    assert reqid(H(("l5d-ctx-trace", _trace(5)), ("l5d-reqid", "00000000000000ff"))) == b"0000000000000005"
    assert reqid(H(("l5d-ctx-trace", "not base64!"), ("l5d-reqid", "00000000000000ff"))) == generated
    assert reqid(H(("l5d-reqid", "00000000000000ff"))) == generated
    assert reqid(H(("l5d-reqid", "<script>"))) == generated
    assert reqid([]) == generated


def test_header_edits_apply_is_case_insensitive_on_removal() -> None:
    e = HeaderEdits(frozenset({b"l5d-dtab"}), ((b"x", b"1"),))
    assert e.apply([(b"L5D-DTAB", b"a"), (b"x", b"0"), (b"y", b"2")]) == [(b"y", b"2"), (b"x", b"1")]


# -- address-override policy --------------------------------------------------------------------------


@dataclass(frozen=True)
class B:
    id: Path
    residual: Path = Path.EMPTY


@pytest.mark.parametrize(
    ("bound_id", "raw"),
    [
        ("/$/inet/10.0.0.1/80", True),
        ("/$/fixedinet/h/1", True),
        ("/$/io.buoyant.rinet/80/h", True),
        ("/%/io.l5d.port/4141/$/inet/10.0.0.1/80", True),
        ("/#/io.l5d.fs/web", False),
        ("/#/io.l5d.fs/$/inet", True),
        ("/%/io.l5d.localhost/#/io.l5d.fs/web", False),
        ("/$/nil", False),
    ],
)
def test_raw_address_ids(bound_id: str, raw: bool) -> None:
    assert is_raw_address_id(P(bound_id)) is raw


def test_raw_ids_found_in_unions_and_alternates() -> None:
    tree = Alt(
        (
            Union(
                (
                    Weighted(0.9, Leaf(B(P("/#/io.l5d.fs/web")))),
                    Weighted(0.1, Leaf(B(P("/$/inet/1.2.3.4/80")))),
                )
            ),
            Leaf(B(P("/$/io.buoyant.rinet/22/evil"))),
        )
    )
    assert raw_address_ids(tree) == {"/$/inet/1.2.3.4/80", "/$/io.buoyant.rinet/22/evil"}


@pytest.mark.parametrize(
    ("ip", "loopback"),
    [
        (None, True),
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
    ],
)
def test_is_loopback_bind(ip: str | None, loopback: bool) -> None:
    assert is_loopback_bind(ip) is loopback


def test_policy_refuses_raw_addresses_not_in_base_on_public_server() -> None:
    policy = AddressOverridePolicy.for_server("0.0.0.0", allow_address_overrides=False)
    base = Leaf(B(P("/#/io.l5d.fs/web")))
    override = Leaf(B(P("/$/inet/169.254.169.254/80")))
    local = Dtab.read("/svc/web=>/$/inet/169.254.169.254/80")
    with pytest.raises(AddressOverrideRefused) as ei:
        policy.check(P("/svc/web"), local, override, base)
    assert str(ei.value) == (
        "Per-request dtab override refused: it routes /svc/web to the raw address /$/inet/169.254.169.254/80, "
        "which the router's dtab does not. This server listens on 0.0.0.0, where l5d-dtab/l5d-ctx-dtab "
        "overrides may only route to configured namers (/#/...). Set allowAddressOverrides: true on the "
        "server to permit raw-address overrides (only on a trusted network), or set clearContext: true to "
        "ignore overrides. Override: /svc/web=>/$/inet/169.254.169.254/80"
    )
    assert ei.value.status == 400


def test_policy_allows_namer_overrides_base_raw_addresses_loopback_and_opt_in() -> None:
    public = AddressOverridePolicy.for_server("0.0.0.0", allow_address_overrides=False)
    local = Dtab.read("/svc/web=>/#/io.l5d.fs/web-v2")
    # an override into a configured namer
    public.check(P("/svc/web"), local, Leaf(B(P("/#/io.l5d.fs/web-v2"))), Leaf(B(P("/#/io.l5d.fs/web"))))
    # the base dtab itself routes to that raw address
    raw = Leaf(B(P("/$/inet/10.0.0.7/80")))
    public.check(P("/svc/web"), local, raw, raw)
    # loopback servers and explicit opt-in do not refuse
    AddressOverridePolicy.for_server("127.0.0.1", False).check(P("/svc/web"), local, raw, Leaf(B(P("/#/x"))))
    AddressOverridePolicy.for_server("0.0.0.0", True).check(P("/svc/web"), local, raw, Leaf(B(P("/#/x"))))
    # no override at all: nothing to refuse
    public.check(P("/svc/web"), Dtab.EMPTY, raw, Leaf(B(P("/#/x"))))


# -- responses ---------------------------------------------------------------------------------------


def test_clear_response_context() -> None:
    hs = H(("content-type", "text/plain"), ("l5d-err", "Unable+to+route"), ("L5d-Success-Class", "0.0"))
    assert clear_response_context(hs, False) == (hs, False)
    assert clear_response_context(hs, True) == (H(("content-type", "text/plain")), True)
    assert clear_response_context(H(("l5d-success-class", "1.0")), True) == ([], False)


def test_encode_l5d_err_like_java_url_encoder() -> None:
    msg = 'Unknown destination: Request("GET /") / Host header is absent~é✓'
    assert encode_l5d_err(msg) == (
        b"Unknown+destination%3A+Request%28%22GET+%2F%22%29+%2F+Host+header+is+absent%7E%E9%3F"
    )
    assert encode_l5d_err("a b c", max_len=3) == b"a+b"
