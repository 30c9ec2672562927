"""The server's one-pass request building and the codec shortcuts give what the general steps give.

* ``_Connection._build_request`` (one pass over the fields that also makes the forwarded fields)
  is compared with the steps it replaces (``strip_hop_by_hop``, two removals, ``append_via``), kept
  here as the reference, on random requests with hop-by-hop fields, ``Via``, ``Expect``, absolute
  targets and upgrades among them;
* ``ClientCodec.whole_body`` takes what the ``Data`` and ``EndOfMessage`` events would give, or
  nothing;
* ``_out_line``'s byte scans accept exactly the fields the regular expressions accept.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from hostproxy.http import codec_fast
from hostproxy.http.codec_base import (
    END_OF_MESSAGE,
    NEED_DATA,
    Data,
    EndOfMessage,
    ProtocolError,
    RequestHead,
)
from hostproxy.http.errors import error_response
from hostproxy.http.hopbyhop import strip_hop_by_hop
from hostproxy.http.message import Body, Headers, Request, Response
from hostproxy.http.proxyheaders import (
    ForwardedConfig,
    Labeler,
    append_forwarded,
    append_via,
    forwarded_element,
    split_absolute_form,
    via_count,
)
from hostproxy.http.server import Http1Server, ServerParams, _bad_target, _Connection, _RequestBodySource

_ASCII = {b"GET": "GET", b"1.1": "1.1"}


def _reference(conn: Any, head: RequestHead) -> Request | Response:
    """``_build_request`` as it was: the general steps, field lookups one by one."""
    params = conn.params
    method = _ASCII.get(head.method) or head.method.decode("ascii")
    target = head.target.decode("latin-1")
    items = head.headers
    headers = Headers._trusted(items)
    version = _ASCII.get(head.http_version) or head.http_version.decode("ascii")
    if method == "CONNECT":
        return error_response(
            405, "bad-request", "CONNECT tunnelling is not supported by this proxy", close=True
        )
    host = upgrade_value = cl = te = None
    connection: list[bytes] = []
    has_via = has_expect = False
    for name, value in items:
        if name == b"host":
            if host is None:
                host = value
        elif name == b"content-length":
            if cl is None:
                cl = value
        elif name == b"connection":
            connection.append(value)
        elif name == b"via":
            has_via = True
        elif name == b"expect":
            has_expect = True
        elif name == b"upgrade":
            if upgrade_value is None:
                upgrade_value = value
        elif name == b"transfer-encoding" and te is None:
            te = value
    if has_via and via_count(headers) > params.max_call_depth:
        return error_response(
            400,
            "bad-request",
            f"Maximum number of calls ({params.max_call_depth}) has been exceeded. Please check for proxy loops.",
        )
    scheme = "http"
    absolute = split_absolute_form(target) if target[:1] != "/" else None
    if absolute is None and target[:1] != "/" and not (target == "*" and method == "OPTIONS"):
        return _bad_target(target)
    authority: str | None
    if absolute is not None:
        scheme, authority_s, target = absolute
        headers.set(b"host", authority_s.encode("latin-1"))
        authority = authority_s
    else:
        authority = host.decode("latin-1") if host is not None else None
    upgrade = None
    # (An upgrade to h2c is never passed on: see ``_without_h2c``.)
    if (
        upgrade_value is not None
        and b"upgrade" in b",".join(connection).lower()
        and b"h2c" not in [t.strip().lower() for t in upgrade_value.split(b",")]
    ):
        upgrade = upgrade_value
    content_length: int | None = 0
    if te is not None:
        content_length = None
    elif cl is not None:
        content_length = int(cl)
    out = strip_hop_by_hop(headers, keep_upgrade=upgrade is not None)
    if cl is not None:
        out.remove(b"content-length")
    if has_expect:
        out.remove(b"expect")
    append_via(out, version)
    fwd = params.add_forwarded_header
    if fwd is not None:
        append_forwarded(
            out,
            forwarded_element(
                fwd,
                local=conn.info.local,
                peer=conn.info.peer,
                connection_labels=conn.forwarded_labels,
                router_label=params.router_label,
                rng=conn.server._rng,
            ),
        )
    if content_length == 0:
        assert conn.codec.next_event() is END_OF_MESSAGE
        body = Body.empty()
    else:
        body = Body(_RequestBodySource(conn), content_length)
    return Request(method, target, out, body, version, scheme, authority, upgrade)


class _Info:
    local = ("127.0.0.1", 4140)
    peer = ("127.0.0.1", 50000)


def _connection(data: bytes, params: ServerParams, seed: int) -> tuple[Any, RequestHead]:
    server = Http1Server(lambda r, i: None, params, rng=random.Random(seed))  # type: ignore[arg-type,return-value]
    conn = object.__new__(_Connection)
    conn.server = server
    conn.params = params
    conn.codec = codec_fast.ServerCodec(params.codec_limits())
    conn.info = _Info()
    conn.forwarded_labels = ("_conn-by", "_conn-for")
    conn.codec.receive_data(data)
    head = conn.codec.next_event()
    assert type(head) is RequestHead
    return conn, head


_NAMES = [b"Host", b"Connection", b"Keep-Alive", b"Proxy-Authorization", b"Proxy-X", b"TE", b"Trailer"]
_NAMES += [b"Transfer-Encoding", b"Upgrade", b"X-A", b"X-B", b"Via", b"Content-Length", b"Expect", b"Proxy"]
_NAMES += [b"User-Agent", b"Accept", b"Forwarded", b"x-proxy-y"]
_VALUES = {
    b"Connection": [
        b"keep-alive",
        b"close",
        b"x-a",
        b"Upgrade",
        b"upgrade, x-b",
        b"content-length",
        b"Keep-Alive",
    ],
    b"TE": [b"trailers", b"gzip", b"trailers, deflate"],
    b"Transfer-Encoding": [b"chunked"],
    b"Content-Length": [b"0", b"5"],
    b"Via": [b"1.1 a", b"1.0 b, 1.1 c", b"x, y, z"],
    b"Expect": [b"100-continue", b"x"],
    b"Upgrade": [b"websocket", b"h2c"],
}
_TARGETS = [b"/", b"/a?b", b"*", b"http://svc.example:8080/p?q", b"HTTPS://u@h/", b"http://h"]


def _random_request(rng: random.Random) -> bytes:
    method = rng.choice([b"GET", b"POST", b"HEAD", b"OPTIONS", b"PUT", b"CONNECT"])
    version = rng.choice([b"1.1", b"1.1", b"1.0"])
    lines = [b"%s %s HTTP/%s" % (method, rng.choice(_TARGETS), version)]
    if rng.random() < 0.9:
        lines.append(b"Host: svc")
    for _ in range(rng.randrange(0, 7)):
        name = rng.choice(_NAMES)
        value = rng.choice(_VALUES.get(name, [b"v", b"w x"]))
        lines.append(b"%s: %s" % (name, value))
    return b"\r\n".join(lines) + b"\r\n\r\n" + b"hello" * 3


@pytest.mark.parametrize("forwarded", [False, True])
def test_build_request_is_the_general_steps(forwarded: bool) -> None:
    rng = random.Random(20261205 + forwarded)
    fwd = ForwardedConfig(by=Labeler("requestRandom"), for_=Labeler("ip:port")) if forwarded else None
    params = ServerParams(max_call_depth=3, add_forwarded_header=fwd)
    seen = {"fast": 0, "requests": 0}
    for i in range(6000):
        data = _random_request(rng)
        try:
            conn, head = _connection(data, params, i)
        except ProtocolError:
            continue
        ref_conn, ref_head = _connection(data, params, i)
        got = conn._build_request(head)
        want = _reference(ref_conn, ref_head)
        assert type(got) is type(want), data
        if isinstance(want, Response):
            assert isinstance(got, Response)
            assert (got.status, got.headers.items()) == (want.status, want.headers.items()), data
            continue
        assert isinstance(got, Request)
        seen["requests"] += 1
        if got.headers.hop_free and b"te" not in data.lower():
            seen["fast"] += 1
        for attr in ("method", "target", "http_version", "scheme", "authority", "upgrade"):
            assert getattr(got, attr) == getattr(want, attr), (attr, data)
        assert got.headers.items() == want.headers.items(), data
        assert got.headers.hop_free == want.headers.hop_free, data
        assert got.body.content_length == want.body.content_length, data
        assert (got.body is Body.empty()) == (want.body is Body.empty()), data
        assert conn.codec.request_complete == ref_conn.codec.request_complete, data
    assert seen["requests"] > 1000 and seen["fast"] > 500, seen


def test_server_codec_ends_an_empty_body_at_once() -> None:
    codec = codec_fast.ServerCodec()
    codec.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nExpect: 100-continue\r\n\r\n")
    assert type(codec.next_event()) is RequestHead
    assert codec.they_are_waiting_for_100_continue
    assert codec.next_event() is END_OF_MESSAGE
    assert not codec.they_are_waiting_for_100_continue and codec.request_complete
    assert codec.next_event() is NEED_DATA


def _events_body(codec: codec_fast.ClientCodec) -> bytes | None:
    """What ``next_event`` gives after a head, as one body when it ends without waiting."""
    chunks = []
    while True:
        event = codec.next_event()
        if type(event) is Data:
            chunks.append(event.data)
        elif type(event) is EndOfMessage:
            assert not event.trailers
            return b"".join(chunks)
        else:
            return None


def _client_after_head(response: bytes, method: bytes, eof: bool) -> codec_fast.ClientCodec | None:
    codec = codec_fast.ClientCodec()
    codec.send_request(method, b"/", [(b"host", b"a")])
    codec.send_end()
    codec.receive_data(response)
    if eof:
        codec.receive_data(b"")
    try:
        codec.next_event()
    except ProtocolError:
        return None
    return codec


def test_whole_body_is_the_events() -> None:
    rng = random.Random(7)
    taken = 0
    for _ in range(3000):
        length = rng.choice([0, 1, 5, 100])
        framing = rng.choice([b"Content-Length: %d\r\n" % length, b"Transfer-Encoding: chunked\r\n", b""])
        status = rng.choice([b"200 OK", b"204 No Content", b"304 Not Modified", b"404 Nope"])
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, length + 3)))
        response = b"HTTP/1.1 %s\r\nServer: x\r\n%s\r\n%s" % (status, framing, body)
        method = rng.choice([b"GET", b"HEAD"])
        eof = rng.random() < 0.2
        codec = _client_after_head(response, method, eof)
        if codec is None:
            continue
        ref = _client_after_head(response, method, eof)
        assert ref is not None
        got = codec.whole_body()
        if got is None:
            # Nothing taken: the events are still to come, as for the reference.
            assert codec._buf == ref._buf and codec._their == ref._their
            continue
        taken += 1
        assert got == _events_body(ref), response
        assert (codec._their, codec._remaining, bytes(codec._buf)) == (
            ref._their,
            ref._remaining,
            bytes(ref._buf),
        )
        assert codec.response_complete
    assert taken > 500


def test_out_line_scans_accept_what_the_regexes_accept() -> None:
    rng = random.Random(11)
    alphabet = b" \t\r\n\x00\x0b\x0cAz09-_:;\x7f\x80\xff\x1c\x85\xa0()"
    for _ in range(50000):
        name = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 4)))
        value = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 6)))
        expected = bool(codec_fast._TOKEN_RE.fullmatch(name)) and bool(
            codec_fast._OUT_VALUE_RE.fullmatch(value)
        )
        line = codec_fast._out_line((name, value))
        assert (line is not None) == expected, (name, value)
        if line is not None:
            assert line == b"%s: %s\r\n" % (name, value)
