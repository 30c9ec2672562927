"""The fast codec's remembered heads give what parsing the head again gives.

* ``ServerCodec`` and ``ClientCodec`` remember a head they parsed and accepted (its bytes -> the
  parsed start line and fields): on a set of request and response heads (valid ones and ones each
  check refuses), a codec reading each head a first and a second time (from the map) makes the same
  events, errors and states as one that remembers nothing;
* every event gets a header list of its own (a consumer that edits one changes no later event);
* the maps are bounded in count and head length;
* the upstream pool keeps its stripped response fields in the head's memo, and a response made
  from the memo is what stripping gives.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from upstreams import answer_each_head

from hostproxy.http import Headers, Request, UpstreamPool, codec_fast
from hostproxy.http.codec_base import NEED_DATA, ProtocolError
from hostproxy.http.codec_fast import ClientCodec, ServerCodec
from hostproxy.http.message import Body

_REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: t\r\n\r\n",
    b"GET / HTTP/1.1\r\nhost: a\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.1\r\nUser-Agent: t\r\n\r\n",  # no Host
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",  # two
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"PUT /p HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Ctl: a\x01b\r\n\r\n",
    b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 2000 + b"\r\n\r\n",  # past the length bound
]

_RESPONSES = [
    b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\nuntil-eof",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Fold: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nBad Name: x\r\n\r\n",
    b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Big: " + b"b" * 2000 + b"\r\n\r\n",
]


def _state(codec: Any) -> tuple[Any, ...]:
    slots = ("_their", "_our", "_keep_alive", "_proposal", "_framing", "_remaining", "http_version")
    state = tuple(getattr(codec, slot, None) for slot in slots)
    return state + ((codec._waiting_100, codec._method) if isinstance(codec, ServerCodec) else ())


def _events(codec: Any) -> list[Any]:
    out: list[Any] = []
    for _ in range(8):
        try:
            event = codec.next_event()
        except ProtocolError as exc:
            out.append(("error", type(exc).__name__, str(exc), exc.status))
            break
        out.append((event, _state(codec)))
        if event is NEED_DATA or type(event).__name__ in ("EndOfMessage", "ConnectionClosed"):
            break
    return out


def _request_transcript(raw: bytes) -> list[Any]:
    codec = ServerCodec()
    codec.receive_data(raw)
    return _events(codec)


def _response_transcript(raw: bytes, method: bytes) -> list[Any]:
    codec = ClientCodec()
    headers = [(b"host", b"a")]
    if method == b"GET" and b"101" in raw:
        headers += [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]
    codec.send_request(method, b"/", headers)
    codec.send_end(None)
    codec.receive_data(raw)
    return _events(codec)


def _all_transcripts() -> list[Any]:
    out = [_request_transcript(raw) for raw in _REQUESTS]
    out += [_response_transcript(raw, method) for raw in _RESPONSES for method in (b"GET", b"HEAD")]
    return out


def test_remembered_heads_give_what_parsing_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    codec_fast._REQUEST_HEADS.clear()
    codec_fast._RESPONSE_HEADS.clear()
    first = _all_transcripts()  # parsed, and remembered
    assert len(codec_fast._REQUEST_HEADS) >= 8 and len(codec_fast._RESPONSE_HEADS) >= 6
    again = _all_transcripts()  # from the maps
    monkeypatch.setattr(codec_fast, "_HEAD_CACHED_MAX", -1)
    codec_fast._REQUEST_HEADS.clear()
    codec_fast._RESPONSE_HEADS.clear()
    uncached = _all_transcripts()
    assert not codec_fast._REQUEST_HEADS and not codec_fast._RESPONSE_HEADS
    assert first == again == uncached
    assert sum(1 for t in uncached if t[-1][0] == "error") >= 10  # the refusals are among them


def test_every_event_has_its_own_header_list() -> None:
    codec_fast._REQUEST_HEADS.clear()
    codec_fast._RESPONSE_HEADS.clear()
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: t\r\n\r\n"
    heads = []
    for _ in range(3):
        codec = ServerCodec()
        codec.receive_data(raw)
        heads.append(codec.next_event())
        heads[-1].headers.append((b"x-added", b"by a consumer"))
    assert [h.headers for h in heads] == [
        [(b"host", b"a"), (b"user-agent", b"t"), (b"x-added", b"by a consumer")]
    ] * 3
    responses = []
    for _ in range(3):
        client = ClientCodec()
        client.send_request(b"GET", b"/", [(b"host", b"a")])
        client.send_end(None)
        client.receive_data(b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 0\r\n\r\n")
        responses.append(client.next_event())
        responses[-1].headers.clear()
    assert [r.headers for r in responses] == [[]] * 3
    assert responses[0].memo is responses[1].memo is responses[2].memo is not None
    client = ClientCodec()
    client.send_request(b"GET", b"/", [(b"host", b"a")])
    client.send_end(None)
    client.receive_data(b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 0\r\n\r\n")
    assert client.next_event().headers == [(b"server", b"s"), (b"content-length", b"0")]


def test_the_head_maps_are_bounded() -> None:
    codec_fast._REQUEST_HEADS.clear()
    for i in range(codec_fast._HEADS_MAX + 10):
        codec = ServerCodec()
        codec.receive_data(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i)
        codec.next_event()
        # Each head is new: the map grows by one and is emptied when full, then holds the new head.
        assert len(codec_fast._REQUEST_HEADS) == i % codec_fast._HEADS_MAX + 1
        assert b"GET /%d HTTP/1.1\r\nHost: a\r\n" % i in codec_fast._REQUEST_HEADS
    codec_fast._RESPONSE_HEADS.clear()
    for i in range(codec_fast._HEADS_MAX + 10):
        client = ClientCodec()
        client.send_request(b"GET", b"/", [(b"host", b"a")])
        client.send_end(None)
        client.receive_data(b"HTTP/1.1 200 OK\r\nX-N: %d\r\nContent-Length: 0\r\n\r\n" % i)
        client.next_event()
        assert len(codec_fast._RESPONSE_HEADS) == i % codec_fast._HEADS_MAX + 1
        assert b"HTTP/1.1 200 OK\r\nX-N: %d\r\nContent-Length: 0\r\n\r\n" % i in codec_fast._RESPONSE_HEADS
    long = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * codec_fast._HEAD_CACHED_MAX + b"\r\n"
    codec = ServerCodec()
    codec.receive_data(long + b"\r\n")
    codec.next_event()
    assert long not in codec_fast._REQUEST_HEADS


_HOPPY = (
    b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
    b"X-Kept: yes\r\nContent-Length: 2\r\n\r\nok"
)


async def _serve_fixed(listener: trio.SocketListener, served: list[int]) -> None:
    def answer(_head: bytes) -> bytes:
        served.append(1)
        return _HOPPY

    await answer_each_head(await listener.accept(), answer)


async def test_the_pool_strips_a_remembered_head_once() -> None:
    """The pool's stripped fields for a head the codec remembers come from the head's memo: the same
    fields as stripping gives (hop-by-hop ones and those ``Connection`` names gone), in a list each
    response owns."""
    codec_fast._RESPONSE_HEADS.clear()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    served: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve_fixed, listeners[0], served)
        async with UpstreamPool("127.0.0.1", port) as pool:
            responses = []
            for _ in range(3):
                req = Request("GET", "/", Headers([(b"host", b"up")]), Body.empty(), authority="up")
                resp = await pool.request(req)
                assert await resp.body.read_all() == b"ok"
                responses.append(resp)
            (memo,) = [known[4] for known in codec_fast._RESPONSE_HEADS.values()]
            assert memo.stripped == (((b"x-kept", b"yes"),), b"2", 4.0)  # 4.0: Keep-Alive timeout=5
            for resp in responses:
                assert resp.headers.items() == [(b"x-kept", b"yes")]
                assert resp.headers.hop_free
                assert resp.body.content_length == 2
            responses[0].headers.set(b"x-kept", b"edited")
            assert responses[1].headers.items() == [(b"x-kept", b"yes")]
            assert memo.stripped == (((b"x-kept", b"yes"),), b"2", 4.0)  # 4.0: Keep-Alive timeout=5
        nursery.cancel_scope.cancel()
    assert len(served) == 3
