"""Adversarial review of the HTTP/1.1 client side: ``UpstreamPool`` and its use by the client and router.

Misbehaving upstreams on 127.0.0.1 (the scripted raw upstream of ``tests/test_pool_adversarial.py``);
each test states what the proxy must make of one of them. No timed assertions: events order the
steps, and bounded waits are safety nets.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
from certs import make_pki

from hostproxy.client import Client
from hostproxy.config import model as m
from hostproxy.config.model import HostConnectionPool
from hostproxy.http import Body, UpstreamError, UpstreamPool, UpstreamReset
from hostproxy.http import upstream as upstream_mod
from hostproxy.http.sockopts import WRITE_PIECE
from hostproxy.http.sockstream import SockStream
from hostproxy.http.upstream import PoolParams
from hostproxy.tls import ClientTls
from tests.test_pool_adversarial import (
    Peer,
    RawUpstream,
    Source,
    content_length,
    make_client,
    ok,
    req,
    running_raw,
    stats,
)
from tests.test_upstream_edges_adversarial import get, l5d_err, proxied

SAFETY = 10  # seconds: a safety net for every wait, never a timing assertion


def _closes_after_head(path: str) -> object:
    """Answers every request with its path, but closes the connection (a FIN, no byte of a response)
    when it reads a request for ``path``."""

    async def handler(up: RawUpstream, peer: Peer) -> None:
        while (head := await peer.read_head()) is not None:
            if up.record(peer, head) == path:
                return  # (the connection closes: the keep-alive race, or a crashed worker)
            await peer.send(ok(b"ok"))

    return handler


# == a connection closed before any byte of a response ============================================


@pytest.mark.parametrize("reused", [False, True], ids=["fresh", "reused"])
async def test_a_connection_closed_before_any_response_byte_says_so_not_malformed(reused: bool) -> None:
    """The upstream read the request and closed the connection without a byte of a response. That is
    not a malformed response (the codec's words were h11's internal state: "can't handle event type
    ConnectionClosed when role=SERVER and state=SEND_RESPONSE"); the error says the upstream closed the
    connection before it answered and, on a reused connection, how long it had been idle in the pool
    and what to do about an upstream keep-alive timeout shorter than the pool's."""
    async with (
        running_raw(_closes_after_head("/gone")) as up,
        UpstreamPool("127.0.0.1", up.port, PoolParams(idle_timeout_s=30.0)) as pool,
    ):
        if reused:
            assert await (await pool.request(req("/warm"))).body.read_all() == b"ok"
        with pytest.raises(UpstreamReset) as info:
            await pool.request(req("/gone"))
        message = str(info.value)
        assert info.value.cause == "upstream/reset" and not info.value.retryable
        assert "malformed" not in message and "role=" not in message, message
        assert f"127.0.0.1:{up.port} closed the connection before sending a response" in message, message
        if reused:
            assert "it was a reused connection, returned to the pool" in message, message
            assert "client.hostConnectionPool.idleTimeMs (30000 ms)" in message, message
            assert "retryableRead5XX" in message, message
        else:
            assert "idle" not in message, message
        s = stats(pool)
        assert (s["open"], s["in_use"], s["resent"]) == (0, 0, 0)
        assert [line for _, line in up.requests][-1] == "GET /gone HTTP/1.1"


@pytest.mark.parametrize("reused", [False, True], ids=["fresh", "reused"])
async def test_a_connection_reset_before_any_response_byte_says_so_with_the_same_advice(
    reused: bool,
) -> None:
    """The keep-alive race shows as a reset as often as a close (the upstream's kernel resets a
    connection whose socket was closed when the request arrived): the error says the upstream reset
    the connection before it answered and, on a reused connection, gives the same advice as a close."""

    async def resets_at_gone(up: RawUpstream, peer: Peer) -> None:
        while (head := await peer.read_head()) is not None:
            if up.record(peer, head) == "/gone":
                peer.reset()
                return
            await peer.send(ok(b"ok"))

    async with (
        running_raw(resets_at_gone) as up,
        UpstreamPool("127.0.0.1", up.port, PoolParams(idle_timeout_s=30.0)) as pool,
    ):
        if reused:
            assert await (await pool.request(req("/warm"))).body.read_all() == b"ok"
        with pytest.raises(UpstreamReset) as info:
            await pool.request(req("/gone"))
        message = str(info.value)
        assert info.value.cause == "upstream/reset" and not info.value.retryable
        assert f"127.0.0.1:{up.port} reset the connection before sending a response" in message, message
        if reused:
            assert "it was a reused connection, returned to the pool" in message, message
            assert "client.hostConnectionPool.idleTimeMs (30000 ms)" in message, message
        else:
            assert "idle" not in message, message
        s = stats(pool)
        assert (s["open"], s["in_use"], s["resent"]) == (0, 0, 0)


async def test_the_client_gets_the_plain_reason_in_l5d_err(tmp_path: Path) -> None:
    """Through the daemon: 502, cause ``upstream/reset``, and ``l5d-err`` names the close."""

    async def close_at_once(stream: trio.SocketStream, _rest: bytes) -> bool:
        return False

    async with proxied(tmp_path, {b"/gone": close_at_once}) as (up, d, c):
        await c.send(get(b"/gone"))
        with trio.fail_after(SAFETY):
            r = await c.read_response()
        assert r.complete and r.status == 502, r
        err = l5d_err(r)
        assert "closed the connection before sending a response" in err, err
        assert "role=" not in err and "malformed" not in err, err


# == the pool's bookkeeping after each misbehaviour ===============================================

_MISBEHAVING = {
    "early-413-kept-open": b"HTTP/1.1 413 Too Large\r\nContent-Length: 3\r\n\r\nbig",
    "early-413-then-close": b"HTTP/1.1 413 Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig",
    "body-on-head": ok(b"body!"),
    "body-on-204": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nbody!",
    "length-and-chunked": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    "two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "cut-short": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
    "close-kept-open": ok(b"x", b"Connection: close\r\n"),
    "half-close": ok(b"hc"),
    "interim": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nLink: <a>\r\n\r\n" + ok(b"final"),
    "reset": b"",
    "fin": b"",
}


async def _misbehaving(up: RawUpstream, peer: Peer) -> None:
    while (head := await peer.read_head()) is not None:
        name = up.record(peer, head)[1:]
        answer = _MISBEHAVING.get(name)
        if name.startswith("early-"):
            await peer.send(answer or b"")
            if name == "early-413-then-close":
                return
            await trio.sleep_forever()  # reads no more of the body, keeps the connection
        length = content_length(head)
        if length:
            await peer.read_exactly(length)
        if name == "reset":
            peer.reset()
            return
        if name == "fin":
            return
        await peer.send(answer or ok(name.encode()))
        if name == "half-close":
            peer.stream.socket.shutdown(socket.SHUT_WR)
        elif name == "cut-short":
            return
        elif name == "close-kept-open":
            await trio.sleep_forever()


@pytest.mark.parametrize("max_size", [None, 2], ids=["unbounded", "maxSize=2"])
async def test_no_connection_or_slot_is_leaked_by_any_misbehaviour(max_size: int | None) -> None:
    """Each misbehaviour twice, through the client (no requeues), and a clean request after each:
    every exchange ends with no connection in use or opening, the connections open are the idle
    ones, and the client's pool gauges (``connections``, ``pool_size``, ``pool_cached``,
    ``pool_waiters``, ``/client_state.json``) say the same."""
    async with running_raw(_misbehaving) as up, trio.open_nursery() as nursery:
        client = make_client(nursery, up.port, host_connection_pool=HostConnectionPool(max_size=max_size))
        pool = client.endpoints[f"127.0.0.1:{up.port}"].pool
        for _ in range(2):
            for name in [*_MISBEHAVING, "clean"]:
                method, body = ("HEAD" if name == "body-on-head" else "GET"), None
                if name.startswith("early-"):
                    data = b"y" * (1 << 20)
                    method = "POST"
                    body = Body(Source([data[i : i + 65536] for i in range(0, len(data), 65536)]), len(data))
                with trio.fail_after(SAFETY):
                    try:
                        r, _ = await client.request(req("/" + name, body, method))
                        await r.body.read_all()
                    except UpstreamError:
                        pass
                s = stats(pool)
                assert (s["in_use"], s["opening"], s["waiters"], s["open"]) == (0, 0, 0, s["idle"]), (name, s)
                assert client.state_json()["endpoints"][pool.endpoint]["pool"] == s
        totals = _client_pools(client)
        assert totals == {"open": s["open"], "size": s["open"], "idle": s["idle"], "waiters": 0}, totals
        await client.aclose()
        nursery.cancel_scope.cancel()


def _client_pools(client: Client) -> dict[str, int]:
    from hostproxy.client import _Pools

    return _Pools(client).statistics()


# == the timeouts bound the response head, not its body ==========================================


async def test_a_response_body_streaming_past_the_timeouts_is_relayed_whole(tmp_path: Path) -> None:
    """``requestAttemptTimeoutMs`` and ``totalTimeoutMs`` bound the wait for the response head, as in
    Linkerd (whose timeouts end with the response's head): a body still streaming when they run out
    is relayed to its end, not cut. (``socketOptions.readTimeoutMs`` cuts a body that stalls.)"""
    head_sent = trio.Event()
    go_on = trio.Event()

    async def streams(stream: trio.SocketStream, _rest: bytes) -> bool:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst")
        head_sent.set()
        await go_on.wait()
        await stream.send_all(b"-last")
        return True

    client = "    requestAttemptTimeoutMs: 100\n"
    service = "    totalTimeoutMs: 150\n"
    async with proxied(tmp_path, {b"/stream": streams}, client, service) as (up, d, c):
        await c.send(get(b"/stream"))
        with trio.fail_after(SAFETY):
            await head_sent.wait()
        await trio.sleep(0.5)  # both timeouts run out while the body is still coming
        go_on.set()
        with trio.fail_after(SAFETY):
            r = await c.read_response()
        assert r.complete and r.status == 200 and r.body == b"first-last", r


# == an endpoint that is not an HTTP server =======================================================


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n", id="ssh-banner"),
        pytest.param(b"220 mx.example ESMTP ready\r\n", id="smtp-greeting"),
        pytest.param(b"J\x00\x00\x00\n8.0.36\x00\x08\x00\x00\x00", id="mysql-handshake"),
        pytest.param(b"-ERR unknown command 'GET'\r\n", id="redis-error"),
    ],
)
async def test_an_answer_that_cannot_start_a_status_line_fails_at_once(first: bytes) -> None:
    """The endpoint speaks another protocol (a misrouted service: SSH, SMTP, MySQL, Redis) and then
    waits. Its first bytes cannot begin ``HTTP/``: the request fails at once, 502 ``upstream/reset``
    naming what came, rather than waiting (without a timeout, for ever) for the blank line of a head
    that never comes."""

    async def handler(up: RawUpstream, peer: Peer) -> None:
        head = await peer.read_head()
        if head is not None:
            up.record(peer, head)
            await peer.send(first)
            await peer.drain()  # and waits, until the pool closes the connection

    async with running_raw(handler) as up, UpstreamPool("127.0.0.1", up.port) as pool:
        with trio.fail_after(SAFETY), pytest.raises(UpstreamReset) as info:
            await pool.request(req("/x"))
        message = str(info.value)
        assert "HTTP/" in message and repr(first[:5])[2:-1] in message, message
        assert (stats(pool)["open"], stats(pool)["in_use"]) == (0, 0)


async def test_a_status_line_trickling_in_byte_by_byte_is_still_awaited() -> None:
    """The early refusal looks at the bytes that came: a head arriving a byte at a time is relayed."""
    answer = ok(b"slow")

    async def handler(up: RawUpstream, peer: Peer) -> None:
        while (head := await peer.read_head()) is not None:
            up.record(peer, head)
            for i in range(len(answer)):
                await peer.send(answer[i : i + 1])
                await trio.sleep(0)

    async with running_raw(handler) as up, UpstreamPool("127.0.0.1", up.port) as pool:
        with trio.fail_after(SAFETY):
            r = await pool.request(req("/x"))
            assert (r.status, await r.body.read_all()) == (200, b"slow")


# == a request written in pieces (writeTimeoutMs) is never resent once a piece left ===============


async def test_a_request_failing_after_its_first_piece_left_is_not_resent_under_write_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under ``socketOptions.writeTimeoutMs`` a request is written in pieces (``WRITE_PIECE``, each
    bounded by the timeout). On a reused connection, the first piece (the head and the start of the
    body) left, then the upstream reset the connection and the next piece's write failed before any
    of its own bytes left. The upstream saw the request (part of it): the pool must report the
    failure, not send the request again on a fresh connection. (A real socket fails; the only thing
    arranged is the order: the reset lands between the two pieces.)"""
    reset_now = trio.Event()

    async def handler(up: RawUpstream, peer: Peer) -> None:
        while (head := await peer.read_head()) is not None:
            path = up.record(peer, head)
            if path == "/upload" and peer.index == 0:
                await reset_now.wait()
                peer.reset()  # read the head, dies before the rest of the body
                return
            await peer.read_exactly(content_length(head))
            await peer.send(ok(path.encode()))

    real_send_all_timed = upstream_mod.send_all_timed

    async def reset_between_pieces(stream: Any, data: bytes, timeout_s: float | None, *rest: Any) -> bool:
        if len(data) <= WRITE_PIECE or reset_now.is_set() or not isinstance(stream, SockStream):
            return await real_send_all_timed(stream, data, timeout_s, *rest)
        if not await real_send_all_timed(stream, data[:WRITE_PIECE], timeout_s, *rest):
            return False
        reset_now.set()
        with trio.fail_after(SAFETY):
            while not stream.readable_now():  # the upstream's RST arrived (loopback: at once)
                await trio.sleep(0.01)
        return await real_send_all_timed(stream, data[WRITE_PIECE:], timeout_s, *rest)

    monkeypatch.setattr(upstream_mod, "send_all_timed", reset_between_pieces)
    params = PoolParams(write_timeout_s=float(SAFETY))
    async with running_raw(handler) as up, UpstreamPool("127.0.0.1", up.port, params) as pool:
        assert await (await pool.request(req("/warm"))).body.read_all() == b"/warm"
        payload = b"x" * (40 * 1024)  # in memory, written with its head: three pieces
        with trio.fail_after(SAFETY), pytest.raises(UpstreamReset) as info:
            r = await pool.request(req("/upload", Body.from_bytes(payload), "POST"))
            await r.body.read_all()
        assert not info.value.retryable
        uploads = up.lines().count("POST /upload HTTP/1.1")
        assert uploads == 1, f"the upstream saw the upload {uploads} times ({stats(pool)}, {up.requests})"
        s = stats(pool)
        assert (s["resent"], s["in_use"], s["open"]) == (0, 0, 0)


# == bytes past a response held by the TLS layer ==================================================


class _TlsRecords:
    """The server side of one TLS connection over memory BIOs (the standard ``ssl`` module): what it
    writes is encrypted record by record and sent when asked, so a test decides which records share
    one TCP send."""

    def __init__(self, stream: trio.SocketStream, ctx: ssl.SSLContext) -> None:
        self.stream = stream
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)

    async def _more(self) -> bool:
        await self.flush()
        data = await self.stream.receive_some(65536)
        if not data:
            return False
        self.incoming.write(data)
        return True

    async def flush(self) -> None:
        if self.outgoing.pending:
            await self.stream.send_all(self.outgoing.read())

    async def handshake(self) -> bool:
        while True:
            try:
                self.obj.do_handshake()
                await self.flush()
                return True
            except ssl.SSLWantReadError:
                if not await self._more():
                    return False

    async def read_head(self, buf: bytearray) -> bytes | None:
        while b"\r\n\r\n" not in buf:
            try:
                data = self.obj.read(65536)
                if not data:
                    return None  # (the peer's close_notify)
                buf += data
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                return None
            if not await self._more():
                return None
        end = buf.index(b"\r\n\r\n") + 4
        head = bytes(buf[:end])
        del buf[:end]
        return head


def _tls_upstream_context(tmp_path: Path) -> tuple[ssl.SSLContext, ClientTls]:
    pki = make_pki(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    return ctx, ClientTls(m.ClientTls(common_name="localhost", trust_certs=(pki.ca_path,)))


@pytest.mark.parametrize("tls_version", ["TLSv1.3", "TLSv1.2"])
async def test_bytes_past_a_response_in_a_later_tls_record_are_never_the_next_response(
    tmp_path: Path, tls_version: str
) -> None:
    """A TLS upstream writes a response and, past its end, a second one nobody asked for, in two TLS
    records of one TCP send. The TLS layer reads both from the socket and hands out the first: the
    second is neither in the codec's buffer nor readable on the socket, but it is not clean either.
    The pooled connection must not be reused, or the next request (maybe another client's) gets
    that response instead of its own."""
    ctx, client_tls = _tls_upstream_context(tmp_path)
    ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, tls_version.replace(".", "_"))
    seen: list[tuple[int, str]] = []
    connections = 0

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal connections
        index, connections = connections, connections + 1
        tls = _TlsRecords(stream, ctx)
        buf = bytearray()
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
            if not await tls.handshake():
                return
            while (head := await tls.read_head(buf)) is not None:
                path = head.split(b" ")[1].decode()
                seen.append((index, path))
                tls.obj.write(ok(path.encode()))
                if path == "/first":
                    tls.obj.write(ok(b"EVIL!"))  # a record of its own, in the same TCP send
                await tls.flush()

    async def connector(host: str, port: int, timeout_s: float) -> object:
        return await client_tls.connect(host, port, connect_timeout=timeout_s, alpn=("http/1.1",))

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, handle, listeners)
        async with UpstreamPool("127.0.0.1", port, connector=connector) as pool:  # type: ignore[arg-type]
            with trio.fail_after(SAFETY):
                r = await pool.request(req("/first"))
                assert await r.body.read_all() == b"/first"
                r = await pool.request(req("/second"))
                second = await r.body.read_all()
                assert second == b"/second", (
                    f"the second request got {second!r} ({pool.statistics()}, {seen})"
                )
                # A clean TLS exchange still leaves its connection for the next request.
                r = await pool.request(req("/third"))
                assert await r.body.read_all() == b"/third"
            assert seen == [(0, "/first"), (1, "/second"), (1, "/third")]
            s = stats(pool)
            assert (s["reused"], s["open"], s["in_use"]) == (1, 1, 0)
        nursery.cancel_scope.cancel()
