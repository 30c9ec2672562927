"""Identifiers: label formation as Linkerd 1.x, chains, and the config registry."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest

from dtab import DtabSyntaxError, Path
from hostproxy.routing.identifiers import (
    HeaderIdentifier,
    HeaderPathIdentifier,
    HeaderTokenIdentifier,
    Identified,
    IdentifierChain,
    IdentifierConfigError,
    MethodAndHostIdentifier,
    PathIdentifier,
    StaticIdentifier,
    Unidentified,
    build_identifiers,
    unknown_destination_message,
)


@dataclass
class Req:
    method: str = "GET"
    target: str = "/"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    http_version: str = "1.1"
    authority: str | None = None


def req(target: str = "/", host: bytes | None = b"web", version: str = "1.1", **hdrs: bytes) -> Req:
    headers = [] if host is None else [(b"host", host)]
    headers += [(k.replace("_", "-").encode(), v) for k, v in hdrs.items()]
    return Req(target=target, headers=headers, http_version=version)


P = Path.read


# -- io.l5d.header.token ----------------------------------------------------------------------------


def test_header_token_is_host_verbatim_with_port_and_case() -> None:
    r = HeaderTokenIdentifier().identify(req(host=b"Web.Example:8080"))
    assert r == Identified(P("/svc/Web.Example:8080"))


def test_header_token_value_is_one_label_even_with_slashes() -> None:
    r = HeaderTokenIdentifier().identify(req(host=b"a/b"))
    assert isinstance(r, Identified)
    assert r.path.labels == (b"svc", b"a/b")
    assert str(r.path) == "/svc/\\x61\\x2f\\x62"


@pytest.mark.parametrize("host", [None, b""])
def test_header_token_absent_or_empty_host(host: bytes | None) -> None:
    assert HeaderTokenIdentifier().identify(req(host=host)) == Unidentified(("Host header is absent",))


def test_header_token_http10_without_host_is_unidentified() -> None:
    assert not HeaderTokenIdentifier().identify(req(host=None, version="1.0")).ok


def test_header_token_custom_header_and_prefix_first_value_wins() -> None:
    ident = HeaderTokenIdentifier(P("/http"), "X-Service")
    r = ident.identify(req(x_service=b"users", **{"x-service": b"other"}))
    assert r == Identified(P("/http/users"))
    assert ident.identify(req()) == Unidentified(("X-Service header is absent",))


def test_h2_header_token_reads_authority_and_uses_last_value() -> None:
    ident = build_identifiers(None, protocol="h2")
    r = Req(target="/x", headers=[], http_version="2", authority="Api:80")
    assert ident.identify(r) == Identified(P("/svc/Api:80"))
    rep = Req(headers=[(b":authority", b"a"), (b":authority", b"b")], http_version="2")
    assert ident.identify(rep) == Identified(P("/svc/b"))
    assert ident.identify(Req(http_version="2")) == Unidentified(("missing header: ':authority'",))


# -- io.l5d.methodAndHost -----------------------------------------------------------------------------


def test_method_and_host_http11_lowercases_host_keeps_port() -> None:
    r = MethodAndHostIdentifier().identify(req("/some/path?x=1", host=b"Web:8080"))
    assert r == Identified(P("/svc/1.1/GET/web:8080"))


def test_method_and_host_http10_ignores_host() -> None:
    assert MethodAndHostIdentifier().identify(req(host=None, version="1.0")) == Identified(P("/svc/1.0/GET"))
    assert MethodAndHostIdentifier().identify(req(host=b"x", version="HTTP/1.0")) == Identified(
        P("/svc/1.0/GET")
    )


def test_method_and_host_http11_without_host() -> None:
    r = MethodAndHostIdentifier().identify(req(host=None))
    assert r == Unidentified(("HTTP/1.1 request missing hostname",))


def test_method_and_host_unknown_version() -> None:
    r = MethodAndHostIdentifier().identify(req(version="2"))
    assert r == Unidentified(("Unknown HTTP version HTTP/2",))


def test_method_and_host_uri_in_dst() -> None:
    ident = MethodAndHostIdentifier(uri_in_dst=True)
    assert ident.identify(req("/users/42?x=1")) == Identified(P("/svc/1.1/GET/web/users/42"))
    assert ident.identify(req("/")) == Identified(P("/svc/1.1/GET/web"))
    assert ident.identify(req("/a", host=None, version="1.0")) == Identified(P("/svc/1.0/GET/a"))


def test_method_and_host_uri_that_is_not_a_path_is_unidentified() -> None:
    r = MethodAndHostIdentifier(uri_in_dst=True).identify(req("/a/b/"))
    assert isinstance(r, Unidentified)
    with pytest.raises(DtabSyntaxError) as ei:
        Path.read("/a/b/")
    assert r.reason == f"request path '/a/b/' is not a valid path: {ei.value.message} at '/a/b/[]'"


# -- io.l5d.path -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "segments", "name"),
    [
        ("/users/42", 1, "/svc/users"),
        ("/users/42?q=1", 2, "/svc/users/42"),
        ("/users/42/", 2, "/svc/users/42"),
        ("/a%20b/c", 1, "/svc/a%20b"),
    ],
)
def test_path_identifier(target: str, segments: int, name: str) -> None:
    assert PathIdentifier(segments=segments).identify(req(target)) == Identified(P(name))


@pytest.mark.parametrize(("target", "segments"), [("/", 1), ("/a", 2), ("/a/", 2), ("", 1)])
def test_path_identifier_not_enough_segments(target: str, segments: int) -> None:
    r = PathIdentifier(segments=segments).identify(req(target))
    assert r == Unidentified(("not enough segments in path",))


def test_path_identifier_empty_segment_cannot_be_a_label() -> None:
    assert PathIdentifier().identify(req("//a")) == Unidentified(("empty segment in path '//a'",))


@pytest.mark.parametrize(
    ("target", "segments", "forwarded"),
    [
        ("/users/42?q=1", 1, "/42?q=1"),
        ("/users", 1, "/"),
        ("/users?q=1", 1, "/?q=1"),
        ("/users/42/", 1, "/42/"),
        ("/a/b/c/d", 2, "/c/d"),
        ("/a/b//c", 1, "/b//c"),
    ],
)
def test_path_identifier_consume_rewrites_target(target: str, segments: int, forwarded: str) -> None:
    r = PathIdentifier(segments=segments, consume=True).identify(req(target))
    assert isinstance(r, Identified)
    assert r.target == forwarded


def test_path_identifier_without_consume_leaves_target() -> None:
    r = PathIdentifier().identify(req("/users/42"))
    assert isinstance(r, Identified) and r.target is None


# -- io.l5d.header, io.l5d.static, io.l5d.header.path ---------------------------------------------------


def test_header_identifier_parses_path() -> None:
    r = HeaderIdentifier().identify(req(l5d_name=b"/users/v2"))
    assert r == Identified(P("/svc/users/v2"))


def test_header_identifier_bad_path_carries_parse_error() -> None:
    r = HeaderIdentifier().identify(req(l5d_name=b"users"))
    assert isinstance(r, Unidentified)
    assert re.fullmatch(r"l5d-name header is not a valid path: .* at '\[u\]sers'", r.reason), r.reason


def test_header_identifier_absent() -> None:
    assert HeaderIdentifier().identify(req()) == Unidentified(("l5d-name header is absent",))


def test_static_identifier() -> None:
    assert StaticIdentifier(P("/svc"), P("/users")).identify(req(host=None)) == Identified(P("/svc/users"))


def test_header_path_grpc_first_segment() -> None:
    ident = HeaderPathIdentifier(segments=1)
    r = ident.identify(Req(target="/pkg.Svc/Method", http_version="2"))
    assert r == Identified(P("/svc/pkg.Svc"))


def test_header_path_whole_path_without_query_and_trailing_slash() -> None:
    r = HeaderPathIdentifier().identify(Req(target="/a/b/?x=1", http_version="2"))
    assert r == Identified(P("/svc/a/b"))


def test_header_path_failures() -> None:
    assert HeaderPathIdentifier().identify(Req(target="/")) == Unidentified(("Missing destination path",))
    r = HeaderPathIdentifier(segments=3).identify(Req(target="/a/b"))
    assert r == Unidentified(("Path must have at least 3 segment(s)",))
    with pytest.raises(ValueError, match=r"^segments must be >= 1, not 0$"):
        HeaderPathIdentifier(segments=0)


# -- chains and messages ----------------------------------------------------------------------------


def test_chain_first_success_wins() -> None:
    chain = IdentifierChain((HeaderIdentifier(), PathIdentifier(), HeaderTokenIdentifier()))
    assert chain.identify(req("/users")) == Identified(P("/svc/users"))
    assert chain.identify(req("/", l5d_name=b"/x")) == Identified(P("/svc/x"))


def test_chain_all_failing_keeps_every_reason() -> None:
    chain = IdentifierChain((HeaderIdentifier(), PathIdentifier(), HeaderTokenIdentifier()))
    r = chain.identify(req("/", host=None))
    assert r == Unidentified(
        ("l5d-name header is absent", "not enough segments in path", "Host header is absent")
    )
    assert r.reason == "l5d-name header is absent; not enough segments in path; Host header is absent"
    assert unknown_destination_message(req("/", host=None), r) == (
        'Unknown destination: Request("GET /") / ' + r.reason
    )


# -- config -------------------------------------------------------------------------------------------


def test_build_default_is_header_token_on_host() -> None:
    ident = build_identifiers(None, dst_prefix=P("/http"))
    assert ident.identify(req(host=b"Web:1")) == Identified(P("/http/Web:1"))


def test_build_list_and_single() -> None:
    ident = build_identifiers(
        [
            {"kind": "io.l5d.path", "segments": 2, "consume": True},
            {"kind": "io.l5d.static", "path": "/fallback"},
        ]
    )
    assert ident.identify(req("/a/b/c")) == Identified(P("/svc/a/b"), target="/c")
    assert ident.identify(req("/a")) == Identified(P("/svc/fallback"))
    one = build_identifiers({"kind": "io.l5d.methodAndHost", "httpUriInDst": True})
    assert one.identify(req("/x")) == Identified(P("/svc/1.1/GET/web/x"))


def test_build_h2_header_path() -> None:
    ident = build_identifiers({"kind": "io.l5d.header.path", "segments": 1}, protocol="h2")
    assert ident.identify(Req(target="/pkg.Svc/M", http_version="2")) == Identified(P("/svc/pkg.Svc"))


def test_build_errors_name_the_key_and_fix() -> None:
    with pytest.raises(
        IdentifierConfigError,
        match=r"^routers\[0\]\.identifier\.kind: unknown http identifier kind 'io\.l5d\.nope'; supported kinds: "
        r"io\.l5d\.header, io\.l5d\.header\.token, io\.l5d\.methodAndHost, io\.l5d\.path, io\.l5d\.static$",
    ):
        build_identifiers({"kind": "io.l5d.nope"}, where="routers[0].identifier")
    with pytest.raises(
        IdentifierConfigError,
        match=r"^identifier\[1\]\.segmnts: unknown key for identifier kind io\.l5d\.path; "
        r"supported keys: consume, kind, segments$",
    ):
        build_identifiers([{"kind": "io.l5d.static", "path": "/a"}, {"kind": "io.l5d.path", "segmnts": 2}])
    with pytest.raises(IdentifierConfigError, match=r"^identifier\.segments: must be >= 1, got 0$"):
        build_identifiers({"kind": "io.l5d.path", "segments": 0})
    with pytest.raises(
        IdentifierConfigError, match=r"^identifier\.path: required \(a path such as /users\)$"
    ):
        build_identifiers({"kind": "io.l5d.static"})
    with pytest.raises(IdentifierConfigError, match=r"^identifier: the identifier list is empty"):
        build_identifiers([])
    with pytest.raises(
        IdentifierConfigError, match=r"^identifier\.consume: expected true or false, got 'yes'$"
    ):
        build_identifiers({"kind": "io.l5d.path", "consume": "yes"})
