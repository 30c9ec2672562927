"""The llhttp-based codec on its own: hardening (including where llhttp alone is lenient), framing
on both sides, the deliberate differences from h11, and how the implementation is selected."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_http_codec import REJECTED

from hostproxy.http.codec_base import (
    NEED_DATA,
    PAUSED,
    CodecLimits,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Informational,
    LocalProtocolError,
    ProtocolError,
    RequestHead,
    ResponseHead,
)
from hostproxy.http.codec_fast import ClientCodec, ServerCodec


def server_events(codec: ServerCodec, data: bytes) -> list[object]:
    codec.receive_data(data)
    out: list[object] = []
    while True:
        ev = codec.next_event()
        if ev is NEED_DATA or ev is PAUSED:
            return out
        out.append(ev)
        if isinstance(ev, EndOfMessage | ConnectionClosed):
            return out


def refused(data: bytes, limits: CodecLimits | None = None) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        server_events(ServerCodec(limits), data)
    return info.value


@pytest.mark.parametrize(("raw", "status", "message"), REJECTED)
def test_reference_rejections_hold(raw: bytes, status: int, message: str) -> None:
    exc = refused(raw)
    assert exc.status == status
    assert str(exc).startswith(message)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        # llhttp would take these; the h11 grammar of the request line does not.
        (
            b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            "malformed request: illegal request line: b'GET  / HTTP/1.1'",
        ),
        (b"GET /\r\nHost: a\r\n\r\n", "malformed request: illegal request line: b'GET /'"),
        (
            b"GET /\xe9 HTTP/1.1\r\nHost: a\r\n\r\n",
            "malformed request: illegal request line: b'GET /\\xe9 HTTP/1.1'",
        ),
        # llhttp accepts any coding ending in chunked (and two TE fields, with its leniency on).
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "malformed request: Only Transfer-Encoding: chunked is supported",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "malformed request: multiple Transfer-Encoding headers",
        ),
        (b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", "malformed request: Found multiple Host: headers"),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n",
            "malformed request: bad Content-Length (Invalid character in Content-Length)",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x1\r\n",
            "malformed request: illegal chunk header: b'0x1\\r\\n'",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\nx\r\n",
            "malformed request: illegal chunk header: b'1\\nx\\r\\n'",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxy\r\n",
            "malformed request: malformed chunk footer: b'y\\r' (expected b'\\r\\n')",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\r\n b\r\n\r\n",
            "obsolete line folding (obs-fold) in trailer field; send each field on one line",
        ),
    ],
)
def test_rules_llhttp_alone_would_not_enforce(raw: bytes, message: str) -> None:
    exc = refused(raw)
    assert (exc.status, str(exc)) == (400, message)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
            "malformed request: illegal header line (Invalid header value char)",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n",
            "malformed request: illegal header line (Invalid header value char)",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            "malformed request: conflicting Content-Length headers (duplicates are refused)",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\n\r\n",
            "malformed request: bare LF in trailer section; lines must end with CRLF",
        ),
    ],
)
def test_deliberately_stricter_than_h11(raw: bytes, message: str) -> None:
    exc = refused(raw)
    assert (exc.status, str(exc)) == (400, message)


def test_limits_and_their_statuses() -> None:
    limits = CodecLimits(max_initial_line=64, max_headers=128, max_header_count=3, max_chunk_line=40)
    exc = refused(b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n", limits)
    assert (exc.status, str(exc)) == (414, "request line exceeds 64 bytes (maxInitialLineKB)")
    exc = refused(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"b" * 200 + b"\r\n\r\n", limits)
    assert (exc.status, str(exc)) == (431, "request headers exceed 128 bytes (maxHeadersKB)")
    exc = refused(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 1\r\nC: 1\r\n\r\n", limits)
    assert (exc.status, str(exc)) == (431, "request has more than 3 header fields")
    exc = refused(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1;" + b"e" * 300, limits)
    assert (exc.status, str(exc)) == (431, "malformed request: Receive buffer too long")


def test_fields_are_normalised_like_h11() -> None:
    codec = ServerCodec()
    [head, end] = server_events(
        codec,
        b"\r\nPURGEX /x HTTP/1.1\r\nHOST: a\r\nX-Pad:\t a  b \t\r\nContent-Length: 0\r\n\r\n",
    )
    # A method llhttp does not know is fine: the request line is matched here, not by llhttp.
    assert head == RequestHead(
        b"PURGEX", b"/x", [(b"host", b"a"), (b"x-pad", b"a  b"), (b"content-length", b"0")], b"1.1"
    )
    assert end == EndOfMessage([])
    [head, *_] = server_events(
        ServerCodec(), b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n"
    )
    assert isinstance(head, RequestHead) and head.headers[1] == (b"transfer-encoding", b"chunked")


def test_pipelined_requests_wait_for_the_next_cycle() -> None:
    codec = ServerCodec()
    raw = (
        b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"
        b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n"
        b"GET /c HTTP/1.1\nHost: h\n\n"
    )
    evs = server_events(codec, raw)
    assert evs[1:] == [Data(b"abc"), EndOfMessage([(b"x-t", b"1")])]
    assert codec.next_event() is PAUSED and codec.has_buffered_data and codec.request_complete
    out = codec.send_response(200, b"OK", [])
    assert out == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert codec.response_chunked
    assert codec.send_data(b"hi") == b"2\r\nhi\r\n"
    assert codec.send_end([(b"x-s", b"2")]) == b"0\r\nx-s: 2\r\n\r\n"
    codec.start_next_cycle()
    [head, _] = server_events(codec, b"")
    assert isinstance(head, RequestHead) and head.target == b"/b"
    codec.send_response(204, b"No Content", [])
    codec.send_end()
    codec.start_next_cycle()
    with pytest.raises(ProtocolError, match=r"^bare LF in request head; lines must end with CRLF$"):
        server_events(codec, b"")


def test_expect_100_continue_and_http10_framing() -> None:
    codec = ServerCodec()
    [head] = server_events(
        codec, b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    )
    assert isinstance(head, RequestHead)
    assert codec.they_are_waiting_for_100_continue
    assert codec.send_informational(100, []) == b"HTTP/1.1 100 \r\n\r\n"
    assert not codec.they_are_waiting_for_100_continue
    assert server_events(codec, b"ok") == [Data(b"ok"), EndOfMessage([])]
    # An HTTP/1.0 client gets no chunked framing: the body runs to the close.
    codec = ServerCodec()
    server_events(codec, b"GET / HTTP/1.0\r\n\r\n")
    assert (
        codec.send_response(200, b"OK", [(b"x", b"1")])
        == b"HTTP/1.1 200 OK\r\nx: 1\r\nConnection: close\r\n\r\n"
    )
    assert codec.send_data(b"abc") == b"abc"
    with pytest.raises(LocalProtocolError, match=r"^can't send trailers to HTTP/1.0 client$"):
        codec.send_end([(b"x", b"1")])
    assert not codec.can_reuse


def test_upgrade_hands_over_the_bytes_after_the_request() -> None:
    codec = ServerCodec()
    [head, end] = server_events(
        codec, b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x00"
    )
    assert isinstance(head, RequestHead) and end == EndOfMessage([])
    assert codec.next_event() is PAUSED and not codec.request_complete
    out = codec.send_informational(101, [(b"upgrade", b"websocket"), (b"connection", b"upgrade")])
    assert out == b"HTTP/1.1 101 \r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
    assert codec.switched_protocol_data() == b"\x81\x00"
    plain = ServerCodec()
    server_events(plain, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    with pytest.raises(
        LocalProtocolError, match=r"^Received server _SWITCH_UPGRADE event without a pending proposal$"
    ):
        plain.send_informational(101, [])


def test_header_injection_is_refused_when_sending() -> None:
    codec = ServerCodec()
    server_events(codec, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    with pytest.raises(LocalProtocolError, match=r"^Illegal header b'x': b'a\\r\\nSet-Cookie: y'$"):
        codec.send_response(200, b"OK", [(b"x", b"a\r\nSet-Cookie: y")])
    client = ClientCodec()
    with pytest.raises(LocalProtocolError, match=r"^Illegal target characters in b'/a b'$"):
        client.send_request(b"GET", b"/a b", [(b"host", b"h")])


def client_events(client: ClientCodec, data: bytes) -> list[object]:
    client.receive_data(data)
    out: list[object] = []
    while True:
        ev = client.next_event()
        if ev is NEED_DATA or ev is PAUSED:
            return out
        out.append(ev)
        if isinstance(ev, EndOfMessage | ConnectionClosed):
            return out


def request(
    client: ClientCodec, method: bytes = b"GET", headers: list[tuple[bytes, bytes]] | None = None
) -> bytes:
    return client.send_request(method, b"/", [(b"host", b"h"), *(headers or [])]) + client.send_end()


def test_client_framing_head_1xx_and_keep_alive() -> None:
    client = ClientCodec()
    assert request(client, b"HEAD") == b"HEAD / HTTP/1.1\r\nhost: h\r\n\r\n"
    assert client.request_sent
    evs = client_events(
        client,
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nGET",
    )
    assert evs == [
        Informational(103, [(b"link", b"</a>")]),
        ResponseHead(200, b"OK", [(b"content-length", b"5")], b"1.1"),
        EndOfMessage([]),
    ]
    # The 5 bytes of a HEAD response's Content-Length are not read as a body.
    assert client.can_reuse and client.trailing_data() == b"GET"


def test_client_eof_delimited_body_and_lenient_upstream_heads() -> None:
    client = ClientCodec()
    request(client)
    # Bare LF line ends and an obs-fold from an upstream are read as h11 reads them.
    evs = client_events(client, b"HTTP/1.0 200 OK\nX-A: 1\n  2\n\nbody")
    assert evs == [ResponseHead(200, b"OK", [(b"x-a", b"1 2")], b"1.0"), Data(b"body")]
    assert client_events(client, b"") == [EndOfMessage([])]
    assert client.next_event() == ConnectionClosed()
    assert not client.can_reuse


def test_client_upgrade_and_bad_responses() -> None:
    client = ClientCodec()
    request(client, headers=[(b"connection", b"upgrade"), (b"upgrade", b"x")])
    assert not client.request_sent  # waiting to learn whether the server switches
    evs = client_events(client, b"HTTP/1.1 101 Switching\r\nUpgrade: x\r\n\r\ntunnel")
    assert evs == [Informational(101, [(b"upgrade", b"x")])]
    assert client.switched and client.trailing_data() == b"tunnel"
    for raw, message in [
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "malformed response: Only Transfer-Encoding: chunked is supported",
        ),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "malformed response: illegal status line: b'HTTP/1.1 2000 OK'"),
        (
            b"HTTP/1.1 101 OK\r\n\r\n",
            "malformed response: upstream answered 101 Switching Protocols to a request that did not ask "
            "to upgrade",
        ),
        (b"\r\nHTTP/1.1 200 OK\r\n\r\n", "malformed response: no response line received"),
    ]:
        client = ClientCodec()
        request(client)
        with pytest.raises(ProtocolError) as info:
            client_events(client, raw)
        assert (info.value.status, str(info.value)) == (502, message)


@pytest.mark.parametrize(
    ("value", "expected"), [("h11", "codec_h11"), ("", "codec_fast"), ("fast", "codec_fast")]
)
def test_environment_selects_the_implementation(value: str, expected: str) -> None:
    code = (
        "from hostproxy.http import codec; print(codec.ServerCodec.__module__, codec.ClientCodec.__module__)"
    )
    env = {"HOSTPROXY_HTTP1_CODEC": value, "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == [f"hostproxy.http.{expected}"] * 2


def test_unknown_codec_name_is_an_error() -> None:
    env = {"HOSTPROXY_HTTP1_CODEC": "picohttp", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", "import hostproxy.http.codec"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "HOSTPROXY_HTTP1_CODEC='picohttp' is not a codec: use 'fast' (the default) or 'h11'" in out.stderr
