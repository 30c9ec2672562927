"""Interim (1xx) responses and response head limits through the upstream pool, the HTTP/1.1 server and
the daemon's config.

* The pool carries the 1xx heads it did not ask for on the ``Response`` (``interim``, hop-by-hop
  fields stripped; ``100 Continue`` left out), at most ``MAX_INTERIM_RESPONSES`` of them: one more
  is a 502 ``upstream/reset`` and the connection is discarded.
* The server writes them, with ``Via``, just before the final head, to HTTP/1.1 clients only; a
  client waiting for ``100 Continue`` gets it before the interim responses, or its connection closes.
* The router's ``maxHeadersKB`` and ``maxInitialLineKB`` reach the pool's codecs.

Real loopback: the raw upstream of ``tests/test_pool_adversarial.py`` for the pool, the scripted
upstream and the daemon of ``tests/test_upstream_edges_adversarial.py`` for the rest.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from hostproxy.http import PoolParams, UpstreamPool
from hostproxy.http.errors import UpstreamReset
from hostproxy.http.upstream import MAX_INTERIM_RESPONSES
from tests.daemonutil import running_daemon
from tests.test_lifecycle_helpers import write_disco
from tests.test_message_integrity_adversarial import Client
from tests.test_pool_adversarial import Peer, RawUpstream, ok, req, running_raw, stats
from tests.test_upstream_edges_adversarial import (
    SAFETY,
    config,
    daemon_for,
    get,
    head_of,
    l5d_err,
    next_request_in_sync,
    raw_exchange,
    scripted,
)


def answering_with(responses: dict[str, bytes]) -> Any:
    """A raw upstream handler: each request (no body) answered by its path in ``responses``, else
    ``ok(path)``, on the same connection."""

    async def handler(up: RawUpstream, peer: Peer) -> None:
        while (head := await peer.read_head()) is not None:
            path = up.record(peer, head)
            await peer.send(responses.get(path) or ok(path.encode()))

    return handler


# == the pool ===========================================================================================


async def test_the_pool_carries_the_interim_heads_it_did_not_ask_for_on_the_response() -> None:
    interim = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 102 Processing\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nConnection: X-Hop\r\nX-Hop: 1\r\n"
        b"Keep-Alive: timeout=5\r\nTE: trailers\r\n\r\n"
    )
    handler = answering_with({"/hints": interim + ok(b"final", b"X-Final: 1\r\n")})
    async with running_raw(handler) as up, UpstreamPool("127.0.0.1", up.port) as pool:
        r = await pool.request(req("/hints"))
        assert r.status == 200 and await r.body.read_all() == b"final"
        assert r.interim is not None
        assert [(status, h.items()) for status, h in r.interim] == [
            (102, []),
            (103, [(b"link", b"</a.css>; rel=preload")]),
        ]
        assert r.headers.get(b"x-final") == b"1" and r.headers.get(b"link") is None
        r2 = await pool.request(req("/plain"))
        assert r2.interim is None and await r2.body.read_all() == b"/plain"
        assert (stats(pool)["connects"], stats(pool)["reused"]) == (1, 1)


async def test_a_100_continue_alone_leaves_no_interim_on_the_response() -> None:
    handler = answering_with({"/c": b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final")})
    async with running_raw(handler) as up, UpstreamPool("127.0.0.1", up.port) as pool:
        r = await pool.request(req("/c"))
        assert r.interim is None and await r.body.read_all() == b"final"


@pytest.mark.parametrize("count", [MAX_INTERIM_RESPONSES, MAX_INTERIM_RESPONSES + 1])
async def test_interim_responses_past_the_cap_are_a_502_and_the_connection_is_discarded(count: int) -> None:
    """Counted whether forwarded or not (``100 Continue`` too), so that an upstream sending them
    endlessly cannot hold a request without a timeout forever."""
    flood = b"HTTP/1.1 100 Continue\r\n\r\n" * (count - 1) + b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    handler = answering_with({"/flood": flood + ok(b"final")})
    async with running_raw(handler) as up, UpstreamPool("127.0.0.1", up.port) as pool:
        if count <= MAX_INTERIM_RESPONSES:
            r = await pool.request(req("/flood"))
            assert await r.body.read_all() == b"final"
            assert r.interim is not None and [status for status, _ in r.interim] == [103]
            return
        with pytest.raises(UpstreamReset) as info:
            await pool.request(req("/flood"))
        assert info.value.cause == "upstream/reset"
        assert str(info.value) == (
            f"invalid response from 127.0.0.1:{up.port}: more than {MAX_INTERIM_RESPONSES} interim (1xx) "
            "responses before the final response"
        )
        s = stats(pool)
        assert (s["open"], s["idle"], s["in_use"]) == (0, 0, 0)
        assert await (await pool.request(req("/after"))).body.read_all() == b"/after"
        assert [i for i, _ in up.requests] == [0, 1]


@pytest.mark.parametrize(
    "params, response, limit",
    [
        pytest.param(
            PoolParams(),
            ok(b"x", b"X-Big: " + b"b" * (9 * 1024) + b"\r\n"),
            "response headers exceed 8192 bytes (maxHeadersKB)",
            id="headers-default",
        ),
        pytest.param(
            PoolParams(max_headers_kb=16),
            ok(b"x", b"X-Big: " + b"b" * (9 * 1024) + b"\r\n"),
            "",
            id="headers-16",
        ),
        pytest.param(
            PoolParams(),
            b"HTTP/1.1 200 " + b"R" * 5000 + b"\r\nContent-Length: 1\r\n\r\nx",
            "status line exceeds 4096 bytes (maxInitialLineKB)",
            id="line-default",
        ),
        pytest.param(
            PoolParams(max_initial_line_kb=8),
            b"HTTP/1.1 200 " + b"R" * 5000 + b"\r\nContent-Length: 1\r\n\r\nx",
            "",
            id="line-8",
        ),
        pytest.param(
            PoolParams(max_header_count=3),
            ok(b"x", b"A: 1\r\nB: 2\r\nC: 3\r\n"),
            "response has more than 3 header fields",
            id="count-3",
        ),
    ],
)
async def test_the_pool_applies_its_head_limits(params: PoolParams, response: bytes, limit: str) -> None:
    handler = answering_with({"/r": response})
    async with running_raw(handler) as up, UpstreamPool("127.0.0.1", up.port, params) as pool:
        if not limit:
            r = await pool.request(req("/r"))
            assert r.status == 200 and await r.body.read_all() == b"x"
            return
        with pytest.raises(UpstreamReset) as info:
            await pool.request(req("/r"))
        assert info.value.cause == "upstream/reset"
        assert str(info.value) == f"invalid response from 127.0.0.1:{up.port}: malformed response: {limit}"


# == the server and the daemon ========================================================================


async def test_interim_responses_reach_the_client_with_via_and_without_hop_by_hop_fields(
    tmp_path: Path,
) -> None:
    interim = (
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\nConnection: X-Hop\r\nX-Hop: 1\r\n"
        b"TE: trailers\r\n\r\n"
    )
    async with scripted({b"/hints": interim + ok(b"final")}) as up, daemon_for(tmp_path, up) as d:
        raw = await raw_exchange(d.port("out"), get(b"/hints", b"Connection: close\r\n"))
    first, rest = raw.split(b"\r\n\r\n", 1)
    status, fields = head_of(first + b"\r\n\r\n")
    assert status == b"HTTP/1.1 103 ", raw[:300]
    assert sorted(fields) == [(b"link", b"</style.css>; rel=preload"), (b"via", b"1.1 hostproxy")], fields
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n") and rest.endswith(b"\r\n\r\nfinal"), rest


async def test_a_client_waiting_for_100_continue_gets_it_before_the_interim_responses(tmp_path: Path) -> None:
    """The upstream answers 103 at once, then reads the body and answers: the client, which waits for
    ``100 Continue`` before it sends its body, gets 100, then (with the final response) 103."""

    async def answer(stream: trio.SocketStream, rest: bytes) -> bool:
        await stream.send_all(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
        body = rest
        with trio.fail_after(SAFETY):
            while len(body) < 5:
                body += await stream.receive_some(65536)
        await stream.send_all(ok(b"got " + body))
        return True

    async with (
        scripted({b"/up": answer}) as up,
        daemon_for(tmp_path, up) as d,
        Client.open(d.port("out")) as c,
    ):
        await c.send(b"POST /up HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        with trio.fail_after(SAFETY):
            while b"\r\n\r\n" not in c.buf:
                c.buf += await c.stream.receive_some(65536)
        assert c.buf.startswith(b"HTTP/1.1 100 "), c.buf
        c.buf = c.buf.split(b"\r\n\r\n", 1)[1]
        await c.send(b"hello")
        r = await c.read_response(b"POST")
        assert r.complete and r.status == 200 and r.body == b"got hello", r
        assert r.informational == [103], r.informational
        await next_request_in_sync(c)


@contextlib.asynccontextmanager
async def daemon_with_limits(tmp_path: Path, port: int, router_keys: str) -> AsyncIterator[Any]:
    write_disco(tmp_path / "disco", "web", port)
    async with running_daemon(config(tmp_path / "disco") + router_keys) as d:
        yield d


async def test_the_router_head_limits_reach_the_upstream_pool(tmp_path: Path) -> None:
    """``maxHeadersKB: 32`` and ``maxInitialLineKB: 8`` let through the response head the defaults
    refuse (``test_upstream_edges_adversarial.py``): 20 KiB of fields, a 6 KiB status line; 40 KiB of
    fields are still refused, naming the limit."""
    big = b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * (20 * 1024) + b"\r\nContent-Length: 2\r\n\r\nok"
    huge = b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * (40 * 1024) + b"\r\nContent-Length: 2\r\n\r\nok"
    long = b"HTTP/1.1 200 " + b"R" * (6 * 1024) + b"\r\nContent-Length: 2\r\n\r\nok"
    async with (
        scripted({b"/big": big, b"/huge": huge, b"/long": long}) as up,
        daemon_with_limits(tmp_path, up.port, "  maxHeadersKB: 32\n  maxInitialLineKB: 8\n") as d,
        Client.open(d.port("out")) as c,
    ):
        for path in (b"/big", b"/long"):
            await c.send(get(path))
            r = await c.read_response()
            assert r.complete and r.status == 200 and r.body == b"ok", (path, r.status, l5d_err(r))
        await c.send(get(b"/huge"))
        r = await c.read_response()
        assert r.complete and r.status == 502, r.status
        assert "response headers exceed 32768 bytes (maxHeadersKB)" in l5d_err(r), l5d_err(r)
        await next_request_in_sync(c)
