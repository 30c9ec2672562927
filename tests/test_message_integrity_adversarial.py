"""Adversarial end-to-end tests of HTTP/1.1 message integrity through the real daemon.

A raw socket client writes exact bytes to the daemon's router and parses what comes back with h11; a raw
scripted upstream (a trio listener written here) records the exact bytes it receives and answers with
exact bytes. Nothing may be dropped, duplicated, reordered or corrupted in either direction.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import pytest
import trio

from tests.daemonutil import curl, fs_config, running_daemon
from tests.test_lifecycle_helpers import write_disco
from tests.upstreams import closed_port

SAFETY = 15  # seconds: a safety net for every wait, never a timing assertion


async def read_through_head(stream: trio.SocketStream) -> bytes | None:
    """Bytes read until the first request head is complete (with whatever followed it); None at EOF."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        if not data:
            return None
        buf += data
    return buf


async def recorded_heads(up: RawUpstream, stream: trio.SocketStream) -> AsyncIterator[bytes]:
    """The target of each request head (bodiless requests) read from ``stream``, as it arrives; each is
    recorded in ``up.requests`` first."""
    buf = b""
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return
        buf += data
        while b"\r\n\r\n" in buf:
            head, buf = buf.split(b"\r\n\r\n", 1)
            target = head.split(b" ")[1]
            up.requests.append(UpRequest(head.split(b" ")[0], target, [], b"", []))
            yield target


async def next_event(conn: h11.Connection, stream: trio.SocketStream) -> Any:
    """The next h11 event of ``conn``, reading from ``stream`` as it needs; None once the peer closed."""
    while True:
        ev = conn.next_event()
        if ev is not h11.NEED_DATA:
            return ev
        data = await stream.receive_some(65536)
        conn.receive_data(data)
        if not data:
            return None


# -- raw scripted upstream ---------------------------------------------------------------------------


@dataclass
class UpRequest:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    trailers: list[tuple[bytes, bytes]]

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None


Responder = Callable[[UpRequest], bytes]
ConnHandler = Callable[["RawUpstream", trio.SocketStream], Awaitable[None]]


@dataclass
class RawUpstream:
    """Parses requests with h11 (server side) and answers each with ``responder(request)`` raw bytes;
    or runs ``conn_handler`` for each connection instead. Records raw bytes and parsed requests."""

    responder: Responder | None = None
    conn_handler: ConnHandler | None = None
    port: int = 0
    raw: list[bytearray] = field(default_factory=list)
    requests: list[UpRequest] = field(default_factory=list)
    connections: int = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._conn, listeners)

    async def _conn(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        rec = bytearray()
        self.raw.append(rec)
        try:
            if self.conn_handler is not None:
                await self.conn_handler(self, stream)
                return
            await self._h11_loop(stream, rec)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()

    async def _h11_loop(self, stream: trio.SocketStream, rec: bytearray) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            req: h11.Request | None = None
            body = bytearray()
            trailers: list[tuple[bytes, bytes]] = []
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    if req is not None and conn.they_are_waiting_for_100_continue:
                        await stream.send_all(
                            conn.send(h11.InformationalResponse(status_code=100, headers=[]))
                        )
                    data = await stream.receive_some(65536)
                    rec += data
                    conn.receive_data(data)
                    if not data and req is None:
                        return
                    continue
                if isinstance(ev, h11.Request):
                    req = ev
                elif isinstance(ev, h11.Data):
                    body += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    trailers = list(ev.headers)
                    break
                else:
                    return
            assert req is not None and self.responder is not None
            r = UpRequest(req.method, req.target, list(req.headers), bytes(body), trailers)
            self.requests.append(r)
            await stream.send_all(self.responder(r))
            # Reset the parser for the next request regardless of what we wrote (raw bytes).
            leftover, _ = conn.trailing_data
            conn = h11.Connection(h11.SERVER)
            if leftover:
                conn.receive_data(bytes(leftover))


@contextlib.asynccontextmanager
async def raw_upstream(
    responder: Responder | None = None, conn_handler: ConnHandler | None = None
) -> AsyncIterator[RawUpstream]:
    up = RawUpstream(responder, conn_handler)
    async with trio.open_nursery() as nursery:
        await nursery.start(up.serve)
        yield up
        nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def proxy(tmp_path: Path, up: RawUpstream) -> AsyncIterator[int]:
    write_disco(tmp_path / "disco", "web", up.port)
    async with running_daemon(fs_config(tmp_path / "disco")) as d:
        yield d.port("out")


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra) + body


def digest_responder(r: UpRequest) -> bytes:
    """Answer with method, target, body length and sha256 of the body (and trailers)."""
    tr = b";".join(n + b"=" + v for n, v in r.trailers)
    return ok(
        b"%s %s %d %s %s" % (r.method, r.target, len(r.body), hashlib.sha256(r.body).hexdigest().encode(), tr)
    )


# -- raw client ---------------------------------------------------------------------------------------


@dataclass
class Resp:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    trailers: list[tuple[bytes, bytes]]
    complete: bool
    informational: list[int]
    error: str = ""

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None


class Client:
    """A raw connection to the proxy; ``read_response(method)`` parses one response with h11."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""
        self.eof = False
        self.error = ""

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, port: int) -> AsyncIterator[Client]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            yield cls(stream)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _more(self) -> bytes:
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            data = b""
        if not data:
            self.eof = True
        return data

    async def read_response(self, method: bytes = b"GET", version: bytes = b"1.1") -> Resp:
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "web")]))
        if self.buf:  # (receive_data(b"") would mean EOF to h11)
            conn.receive_data(self.buf)
        self.buf = b""
        status, headers, body, trailers, info = 0, [], bytearray(), [], []
        complete = False
        with trio.fail_after(SAFETY):
            while True:
                try:
                    ev = conn.next_event()
                except h11.RemoteProtocolError as e:
                    self.error = repr(e)
                    break
                if ev is h11.NEED_DATA:
                    if self.eof:
                        break
                    conn.receive_data(await self._more())
                    continue
                if ev is h11.PAUSED:
                    break
                if isinstance(ev, h11.InformationalResponse):
                    info.append(ev.status_code)
                elif isinstance(ev, h11.Response):
                    status, headers = ev.status_code, list(ev.headers)
                elif isinstance(ev, h11.Data):
                    body += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    trailers = list(ev.headers)
                    complete = True
                    break
                elif isinstance(ev, h11.ConnectionClosed):
                    break
        if complete:
            leftover, closed = conn.trailing_data
            self.buf = bytes(leftover)
        return Resp(status, headers, bytes(body), trailers, complete, info, self.error)

    async def read_until_eof(self) -> bytes:
        out = bytearray(self.buf)
        self.buf = b""
        with trio.fail_after(SAFETY):
            while not self.eof:
                out += await self._more()
        return bytes(out)


def get(path: bytes = b"/", extra: bytes = b"") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: web\r\n%s\r\n" % (path, extra)


def post_cl(path: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: web\r\nContent-Length: %d\r\n%s\r\n" % (path, len(body), extra) + body


def expect_digest(resp: Resp, method: bytes, path: bytes, body: bytes, trailers: bytes = b"") -> None:
    assert resp.complete and resp.status == 200, resp
    want = b"%s %s %d %s %s" % (method, path, len(body), hashlib.sha256(body).hexdigest().encode(), trailers)
    assert resp.body == want


# -- 1. request bodies reach the upstream byte for byte ------------------------------------------------


async def test_one_mib_content_length_body_in_odd_pieces_with_pauses(tmp_path: Path) -> None:
    body = os.urandom(1 << 20)
    async with raw_upstream(digest_responder) as up, proxy(tmp_path, up) as port, Client.open(port) as c:
        data = post_cl(b"/up", body)
        i, n = 0, 0
        sizes = [1, 7, 4093, 13, 65537, 999, 3]
        while i < len(data):
            step = sizes[n % len(sizes)]
            await c.send(data[i : i + step])
            i += step
            n += 1
            if n % 50 == 0:
                await trio.sleep(0.005)
        expect_digest(await c.read_response(b"POST"), b"POST", b"/up", body)
        # The same connection goes on working.
        await c.send(get(b"/after"))
        expect_digest(await c.read_response(), b"GET", b"/after", b"")
        assert len(up.requests) == 2 and up.requests[0].body == body


def chunked(body: bytes, sizes: list[int], ext: bool = True, trailers: bytes = b"") -> bytes:
    out = bytearray()
    i, n = 0, 0
    while i < len(body):
        piece = body[i : i + sizes[n % len(sizes)]]
        e = b';name="v a l";x=1' if ext and n % 2 == 0 else b""
        out += b"%x%s\r\n" % (len(piece), e) + piece + b"\r\n"
        i += len(piece)
        n += 1
    out += b"0\r\n" + trailers + b"\r\n"
    return bytes(out)


async def test_chunked_body_with_extensions_and_trailers(tmp_path: Path) -> None:
    body = os.urandom(300_001)
    wire = chunked(body, [1, 4096, 17, 70000], trailers=b"X-Sum: abc\r\n")
    head = b"POST /c HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
    async with raw_upstream(digest_responder) as up, proxy(tmp_path, up) as port, Client.open(port) as c:
        data = head + wire
        for i in range(0, len(data), 5003):
            await c.send(data[i : i + 5003])
        resp = await c.read_response(b"POST")
        assert resp.complete and resp.status == 200, resp
        assert up.requests[0].body == body
        expect_digest(resp, b"POST", b"/c", body, b"x-sum=abc")


async def test_zero_length_chunked_body_then_keepalive(tmp_path: Path) -> None:
    async with raw_upstream(digest_responder) as up, proxy(tmp_path, up) as port, Client.open(port) as c:
        await c.send(b"POST /z HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        expect_digest(await c.read_response(b"POST"), b"POST", b"/z", b"")
        await c.send(post_cl(b"/next", b"hello"))
        expect_digest(await c.read_response(b"POST"), b"POST", b"/next", b"hello")
        assert [r.body for r in up.requests] == [b"", b"hello"]


async def test_large_response_body_intact(tmp_path: Path) -> None:
    payload = os.urandom((1 << 20) + 13)

    def responder(r: UpRequest) -> bytes:
        if r.target == b"/cl":
            return ok(payload)
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(payload, [3, 65536, 1001])

    async with raw_upstream(responder) as up, proxy(tmp_path, up) as port, Client.open(port) as c:
        for path in (b"/cl", b"/ch", b"/cl"):
            await c.send(get(path))
            resp = await c.read_response()
            assert resp.complete and resp.status == 200
            assert hashlib.sha256(resp.body).digest() == hashlib.sha256(payload).digest(), len(resp.body)


# -- 2. pipelining ---------------------------------------------------------------------------------------


async def test_pipelined_requests_answered_once_in_order(tmp_path: Path) -> None:
    bodies = [b"", b"first body", os.urandom(70_000)]
    async with raw_upstream(digest_responder) as up, proxy(tmp_path, up) as port, Client.open(port) as c:
        await c.send(
            get(b"/p0")
            + post_cl(b"/p1", bodies[1])
            + b"POST /p2 HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunked(bodies[2], [4000])
            + get(b"/p3")
        )
        expect_digest(await c.read_response(), b"GET", b"/p0", b"")
        expect_digest(await c.read_response(b"POST"), b"POST", b"/p1", bodies[1])
        expect_digest(await c.read_response(b"POST"), b"POST", b"/p2", bodies[2])
        expect_digest(await c.read_response(), b"GET", b"/p3", b"")
        # Nothing more: no duplicate answer arrives after a further request.
        await c.send(get(b"/p4"))
        expect_digest(await c.read_response(), b"GET", b"/p4", b"")
        assert [r.target for r in up.requests] == [b"/p0", b"/p1", b"/p2", b"/p3", b"/p4"]


async def test_pipelined_head_then_get(tmp_path: Path) -> None:
    def responder(r: UpRequest) -> bytes:
        if r.method == b"HEAD":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        return ok(b"body of " + r.target)

    async with raw_upstream(responder) as up, proxy(tmp_path, up) as port, Client.open(port) as c:
        await c.send(b"HEAD /h HTTP/1.1\r\nHost: web\r\n\r\n" + get(b"/g"))
        head = await c.read_response(b"HEAD")
        assert head.complete and head.status == 200 and head.body == b""
        assert head.header(b"content-length") == b"1000"
        g = await c.read_response()
        assert g.complete and g.status == 200 and g.body == b"body of /g", g
        assert len(up.requests) == 2


# -- 3. Expect, bodiless statuses, conflicting upstream framing --------------------------------------


async def test_expect_100_continue(tmp_path: Path) -> None:
    body = os.urandom(10_000)
    async with raw_upstream(digest_responder) as up, proxy(tmp_path, up) as port, Client.open(port) as c:
        await c.send(post_cl(b"/e", b"", b"Expect: 100-continue\r\n").replace(b"Length: 0", b"Length: 10000"))
        # Wait (bounded) for the interim 100 before sending the body, as a strict client does.
        with trio.fail_after(SAFETY):
            while b"\r\n\r\n" not in c.buf:
                more = await c._more()
                assert more, "connection closed before 100 Continue"
                c.buf += more
        assert c.buf.startswith(b"HTTP/1.1 100"), c.buf
        c.buf = c.buf.split(b"\r\n\r\n", 1)[1]
        await c.send(body)
        expect_digest(await c.read_response(b"POST"), b"POST", b"/e", body)
        await c.send(get(b"/after"))
        expect_digest(await c.read_response(), b"GET", b"/after", b"")
        assert up.requests[0].body == body


@pytest.mark.parametrize("status", [204, 304])
async def test_bodiless_status_with_content_length_does_not_swallow_next(tmp_path: Path, status: int) -> None:
    def responder(r: UpRequest) -> bytes:
        if r.target == b"/s":
            # 304 may carry the Content-Length of the representation; neither has a body.
            cl = b"Content-Length: 42\r\n" if status == 304 else b""
            return b"HTTP/1.1 %d X\r\n%s\r\n" % (status, cl)
        return ok(b"next " + r.target)

    async with raw_upstream(responder) as up, proxy(tmp_path, up) as port, Client.open(port) as c:
        await c.send(get(b"/s") + get(b"/n1"))
        r = await c.read_response()
        assert r.complete and r.status == status and r.body == b""
        r2 = await c.read_response()
        assert r2.complete and r2.status == 200 and r2.body == b"next /n1", r2
        await c.send(get(b"/n2"))
        r3 = await c.read_response()
        assert r3.body == b"next /n2"
        assert len(up.requests) == 3


async def test_upstream_response_with_both_content_length_and_chunked(tmp_path: Path) -> None:
    inner = b"chunked wins over content-length"

    def responder(r: UpRequest) -> bytes:
        if r.target == b"/both":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(
                inner, [7], ext=False
            )
        return ok(b"fine")

    async with raw_upstream(responder) as up, proxy(tmp_path, up) as port, Client.open(port) as c:
        await c.send(get(b"/both"))
        r = await c.read_response()
        assert r.complete, r
        if r.status == 200:
            assert r.body == inner  # never the first 5 bytes, never the chunk framing
            names = [n for n, _ in r.headers]
            assert not (b"content-length" in names and b"transfer-encoding" in names)
        else:
            assert r.status == 502, r
        # The client connection is still in sync.
        if not c.eof:
            await c.send(get(b"/ok"))
            r2 = await c.read_response()
            assert r2.complete and r2.body == b"fine", r2
        assert up.connections >= 1


# -- 4. upstreams misbehaving mid-message -------------------------------------------------------------


async def test_upstream_answers_before_reading_body(tmp_path: Path) -> None:
    async def early(up: RawUpstream, stream: trio.SocketStream) -> None:
        buf = await read_through_head(stream)
        if buf is None:
            return
        up.raw[-1] += buf
        if b"/early" in buf.split(b"\r\n", 1)[0]:
            await stream.send_all(ok(b"early answer", b"Connection: close\r\n"))
            return  # closes without reading the body
        # A normal request: read the body by Content-Length and answer.
        head, rest = buf.split(b"\r\n\r\n", 1)
        n = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                n = int(line.split(b":")[1])
        while len(rest) < n:
            rest += await stream.receive_some(65536)
        await stream.send_all(ok(b"normal " + hashlib.sha256(rest[:n]).hexdigest().encode()))

    body = os.urandom(4 << 20)
    async with raw_upstream(conn_handler=early) as up, proxy(tmp_path, up) as port:
        async with Client.open(port) as c:

            async def push() -> None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    await c.send(post_cl(b"/early", body))

            async with trio.open_nursery() as n:
                n.start_soon(push)
                r = await c.read_response(b"POST")
                n.cancel_scope.cancel()
            # Either the upstream's answer, complete, or a proxy error; never a corrupted mix.
            assert r.status in (200, 502), r
            if r.status == 200:
                assert r.complete and r.body == b"early answer", r
        async with Client.open(port) as c2:
            small = b"small body"
            await c2.send(post_cl(b"/normal", small))
            r2 = await c2.read_response(b"POST")
            assert r2.complete and r2.status == 200, r2
            assert r2.body == b"normal " + hashlib.sha256(small).hexdigest().encode()


@pytest.mark.parametrize("framing", ["content-length", "chunked", "chunked-mid-chunk"])
async def test_upstream_closes_mid_response_is_never_complete(tmp_path: Path, framing: str) -> None:
    async def truncating(up: RawUpstream, stream: trio.SocketStream) -> None:
        buf = await read_through_head(stream)
        if buf is None:
            return
        if b"/trunc" in buf.split(b"\r\n", 1)[0]:
            if framing == "content-length":
                await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"a" * 10)
            elif framing == "chunked":
                await stream.send_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n"
                )
            else:
                await stream.send_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n0123456789"
                )
            await trio.sleep(0.05)
            return  # FIN without finishing the message
        await stream.send_all(ok(b"healthy"))

    async with raw_upstream(conn_handler=truncating) as up, proxy(tmp_path, up) as port:
        async with Client.open(port) as c:
            await c.send(get(b"/trunc"))
            r = await c.read_response()
            if r.status == 200:
                assert not r.complete, f"a truncated upstream response looked complete: {r}"
            else:
                assert r.status == 502 and r.complete, r
        async with Client.open(port) as c2:
            await c2.send(get(b"/fine"))
            r2 = await c2.read_response()
            assert r2.complete and r2.status == 200 and r2.body == b"healthy", r2
        assert up.connections >= 2


# -- 5. clients that go away ----------------------------------------------------------------------------


async def test_client_disconnects_mid_request_body(tmp_path: Path) -> None:
    async with raw_upstream(digest_responder) as up, proxy(tmp_path, up) as port:
        async with Client.open(port) as c:
            await c.send(b"POST /cut HTTP/1.1\r\nHost: web\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000)
            await trio.sleep(0.05)
        for i in range(3):
            async with Client.open(port) as c2:
                await c2.send(post_cl(b"/ok%d" % i, b"abc"))
                expect_digest(await c2.read_response(b"POST"), b"POST", b"/ok%d" % i, b"abc")
        # The truncated request must never have been answered as if complete by the upstream.
        assert all(r.target != b"/cut" or len(r.body) == 100000 for r in up.requests)
        assert [r.target for r in up.requests if r.target != b"/cut"] == [b"/ok0", b"/ok1", b"/ok2"]


async def test_client_disconnects_mid_response(tmp_path: Path) -> None:
    big = os.urandom(8 << 20)

    def responder(r: UpRequest) -> bytes:
        return ok(big) if r.target == b"/big" else ok(b"small " + r.target)

    async with raw_upstream(responder) as up, proxy(tmp_path, up) as port:
        async with Client.open(port) as c:
            await c.send(get(b"/big"))
            got = 0
            with trio.fail_after(SAFETY):
                while got < 100_000:
                    got += len(await c._more())
        for i in range(3):
            async with Client.open(port) as c2:
                await c2.send(get(b"/s%d" % i))
                r = await c2.read_response()
                assert r.complete and r.body == b"small /s%d" % i, r
        assert [r.target for r in up.requests][-3:] == [b"/s0", b"/s1", b"/s2"]


# -- 6. malformed requests ----------------------------------------------------------------------------------


MALFORMED = {
    "bad-content-length": (b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 1x\r\n\r\nx", 400),
    "negative-content-length": (b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: -1\r\n\r\n", 400),
    "plus-content-length": (b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: +3\r\n\r\nabc", 400),
    "differing-content-lengths": (
        b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    ),
    "list-content-length-differs": (b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 3, 4\r\n\r\nabcd", 400),
    "cl-and-te": (
        b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "te-gzip": (b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400),
    "te-chunked-twice": (
        b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "te-identity": (b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: identity\r\n\r\n", 400),
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: web\r\nX-A: one\r\n two\r\n\r\n", 400),
    "bare-lf-in-head": (b"GET / HTTP/1.1\r\nHost: web\nX-A: b\r\n\r\n", 400),
    "bare-cr": (b"GET / HTTP/1.1\r\nHost: web\r\nX-A: a\rb\r\n\r\n", 400),
    "nul-in-value": (b"GET / HTTP/1.1\r\nHost: web\r\nX-A: a\x00b\r\n\r\n", 400),
    "space-before-colon": (b"GET / HTTP/1.1\r\nHost: web\r\nX-A : b\r\n\r\n", 400),
    "oversized-header": (b"GET / HTTP/1.1\r\nHost: web\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n", 431),
}


@pytest.mark.parametrize("name", list(MALFORMED))
async def test_malformed_request_refused_and_not_forwarded(tmp_path: Path, name: str) -> None:
    data, want = MALFORMED[name]
    async with raw_upstream(digest_responder) as up, proxy(tmp_path, up) as port:
        async with Client.open(port) as c:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await c.send(data)
            r = await c.read_response()
            assert r.status == want, (name, r)
        assert up.connections == 0 and up.requests == [], (name, up.raw)
        async with Client.open(port) as c2:
            await c2.send(get(b"/after"))
            expect_digest(await c2.read_response(), b"GET", b"/after", b"")


# -- 7. Connection: close, HTTP/1.0, keep-alive reuse ---------------------------------------------------


async def test_connection_close_from_client(tmp_path: Path) -> None:
    async with raw_upstream(digest_responder) as up, proxy(tmp_path, up) as port:
        async with Client.open(port) as c:
            # A pipelined request after the close must not be answered.
            await c.send(post_cl(b"/c1", b"abc", b"Connection: close\r\n") + get(b"/never"))
            r = await c.read_response(b"POST")
            expect_digest(r, b"POST", b"/c1", b"abc")
            assert (r.header(b"connection") or b"").lower() == b"close", r.headers
            rest = await c.read_until_eof()
            assert rest == b"", rest
        async with Client.open(port) as c2:
            await c2.send(get(b"/k1"))
            expect_digest(await c2.read_response(), b"GET", b"/k1", b"")
            await c2.send(get(b"/k2"))
            expect_digest(await c2.read_response(), b"GET", b"/k2", b"")
        assert [r.target for r in up.requests] == [b"/c1", b"/k1", b"/k2"]


async def test_http10_client(tmp_path: Path) -> None:
    def responder(r: UpRequest) -> bytes:
        if r.target == b"/chunky":
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(
                b"z" * 5000, [999], ext=False
            )
        return digest_responder(r)

    async with raw_upstream(responder) as up, proxy(tmp_path, up) as port:
        # HTTP/1.0 without keep-alive: one answer, then the connection closes; never chunked to 1.0.
        async with Client.open(port) as c:
            await c.send(b"GET /chunky HTTP/1.0\r\nHost: web\r\n\r\n")
            raw = await c.read_until_eof()
            head, _, body = raw.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1."), raw[:200]
            assert b"transfer-encoding" not in head.lower(), head
            assert body == b"z" * 5000, (head, body[:100])
        # HTTP/1.0 with a body and keep-alive.
        async with Client.open(port) as c:
            await c.send(
                b"POST /k HTTP/1.0\r\nHost: web\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nabc"
            )
            r = await c.read_response(b"POST", b"1.0")
            expect_digest(r, b"POST", b"/k", b"abc")
            if (r.header(b"connection") or b"").lower() == b"keep-alive":
                await c.send(b"GET /k2 HTTP/1.0\r\nHost: web\r\nConnection: keep-alive\r\n\r\n")
                expect_digest(await c.read_response(b"GET", b"1.0"), b"GET", b"/k2", b"")
        assert up.requests[0].target == b"/chunky"


# -- 8. a client's malformed body is the client's fault -------------------------------------------------


async def test_malformed_chunked_request_body_is_400_and_not_charged_to_upstream(tmp_path: Path) -> None:
    """The chunk-size error is only seen after the head was forwarded; it is still the client's fault:
    400 (README: malformed HTTP -> 400), not a 502 ``upstream/reset`` counted against a healthy upstream
    (which failure accrual would then eject)."""
    async with raw_upstream(digest_responder) as up:
        write_disco(tmp_path / "disco", "web", up.port)
        async with running_daemon(fs_config(tmp_path / "disco")) as d:
            port = d.port("out")
            statuses = []
            for _ in range(6):
                async with Client.open(port) as c:
                    await c.send(
                        b"POST /bad HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"3\r\nabc\r\nzz\r\nabc\r\n0\r\n\r\n"
                    )
                    statuses.append((await c.read_response(b"POST")).status)
            async with Client.open(port) as c:
                await c.send(get(b"/good"))
                expect_digest(await c.read_response(), b"GET", b"/good", b"")
            m = (await curl(f"{d.admin}/admin/metrics.json")).json()
            charged = {k: v for k, v in m.items() if "failures" in k and v}  # type: ignore[union-attr]
            assert statuses == [400] * 6 and charged == {}, (statuses, charged)
            assert [r.target for r in up.requests] == [b"/good"]


# -- 9. stray bytes from an upstream never answer another request ---------------------------------------

SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED"


@pytest.mark.parametrize("kind", ["head-with-body", "204-with-body", "304-with-body", "extra-after-cl"])
async def test_stray_upstream_bytes_never_answer_the_next_request(tmp_path: Path, kind: str) -> None:
    async def sloppy(up: RawUpstream, stream: trio.SocketStream) -> None:
        async for target in recorded_heads(up, stream):
            if target == b"/first":
                if kind == "head-with-body":
                    await stream.send_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED
                    )
                elif kind == "204-with-body":
                    await stream.send_all(b"HTTP/1.1 204 No Content\r\n\r\n" + SMUGGLED)
                elif kind == "304-with-body":
                    await stream.send_all(b"HTTP/1.1 304 Not Modified\r\n\r\n" + SMUGGLED)
                else:
                    await stream.send_all(ok(b"first") + SMUGGLED)
            else:
                await stream.send_all(ok(b"real " + target))

    method = b"HEAD" if kind == "head-with-body" else b"GET"
    async with raw_upstream(conn_handler=sloppy) as up, proxy(tmp_path, up) as port:
        async with Client.open(port) as c:
            await c.send(b"%s /first HTTP/1.1\r\nHost: web\r\n\r\n" % method)
            r1 = await c.read_response(method)
            assert r1.complete and r1.status in (200, 204, 304, 502), r1
        for i in range(3):
            async with Client.open(port) as c:
                await c.send(get(b"/n%d" % i))
                r = await c.read_response()
                assert b"SMUGGLED" not in r.body, (i, r)
                assert r.complete and r.status == 200 and r.body == b"real /n%d" % i, (i, r)


async def test_client_aborting_mid_body_is_not_an_upstream_failure(tmp_path: Path) -> None:
    """Clients that go away mid-upload must not be counted as failures of a healthy upstream, nor get it
    removed by failure accrual (5 consecutive failures by default)."""
    async with raw_upstream(digest_responder) as up:
        write_disco(tmp_path / "disco", "web", up.port)
        async with running_daemon(fs_config(tmp_path / "disco")) as d:
            port = d.port("out")
            for i in range(6):
                async with Client.open(port) as c:
                    await c.send(
                        b"POST /cut%d HTTP/1.1\r\nHost: web\r\nContent-Length: 100000\r\n\r\nxyz" % i
                    )
                    # Bounded wait until the head reached the upstream, then go away mid-body.
                    with trio.move_on_after(SAFETY):
                        while sum(len(r) for r in up.raw) == 0 or b"/cut%d" % i not in up.raw[-1]:
                            await trio.sleep(0.01)
            async with Client.open(port) as c:
                await c.send(get(b"/good"))
                expect_digest(await c.read_response(), b"GET", b"/good", b"")
            m = (await curl(f"{d.admin}/admin/metrics.json")).json()
            bad = {
                k: v
                for k, v in m.items()  # type: ignore[union-attr]
                if v and ("failures" in k or "removals" in k or "status/502" in k)
            }
            assert bad == {}, bad


# -- 10. more framing corners ------------------------------------------------------------------------------


async def test_expect_100_upstream_refuses_then_next_request(tmp_path: Path) -> None:
    """``Expect: 100-continue`` upload the upstream refuses (401, ``Connection: close``). hostproxy answers
    the 100 itself (the upstream sees no ``Expect``), so a strict client sends the body after the 100; the
    refusal must reach it intact and the client connection must stay in sync for its next request."""

    async def refuser(up: RawUpstream, stream: trio.SocketStream) -> None:
        async for target in recorded_heads(up, stream):
            if target == b"/upload":
                await stream.send_all(ok(b"denied", b"Connection: close\r\n").replace(b"200 OK", b"401 No"))
                return
            await stream.send_all(ok(b"real " + target))

    async with raw_upstream(conn_handler=refuser) as up, proxy(tmp_path, up) as port, Client.open(port) as c:
        await c.send(
            b"POST /upload HTTP/1.1\r\nHost: web\r\nExpect: 100-continue\r\nContent-Length: 20\r\n\r\n"
        )
        with trio.fail_after(SAFETY):
            while b"\r\n\r\n" not in c.buf:
                more = await c._more()
                assert more, "connection closed before any answer"
                c.buf += more
        if c.buf.startswith(b"HTTP/1.1 100"):
            c.buf = c.buf.split(b"\r\n\r\n", 1)[1]
            await c.send(b"y" * 20)
        r = await c.read_response(b"POST")
        assert r.complete and r.status == 401 and r.body == b"denied", r
        await c.send(get(b"/n"))
        r2 = await c.read_response()
        assert r2.complete and r2.status == 200 and r2.body == b"real /n", r2
        assert [q.target for q in up.requests] == [b"/upload", b"/n"]


async def test_interim_103_and_close_delimited_response(tmp_path: Path) -> None:
    payload = os.urandom(200_003)

    async def oldschool(up: RawUpstream, stream: trio.SocketStream) -> None:
        buf = await read_through_head(stream)
        if buf is None:
            return
        up.requests.append(UpRequest(b"GET", buf.split(b" ")[1], [], b"", []))
        await stream.send_all(b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n")
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: x/y\r\n\r\n")
        for i in range(0, len(payload), 65000):
            await stream.send_all(payload[i : i + 65000])
        # Close-delimited: EOF ends the body.

    async with raw_upstream(conn_handler=oldschool) as up, proxy(tmp_path, up) as port:
        for _ in range(2):
            async with Client.open(port) as c:
                await c.send(get(b"/old"))
                r = await c.read_response()
                assert r.complete and r.status == 200, r
                assert hashlib.sha256(r.body).digest() == hashlib.sha256(payload).digest(), len(r.body)
                assert r.informational in ([], [103]), r.informational
        assert len(up.requests) == 2


# -- 11. requests the proxy answers itself: their bodies are never parsed as requests --------------------

SMUGGLE = b"GET /smuggled HTTP/1.1\r\nHost: web\r\n\r\n"


@pytest.mark.parametrize("target_host", [b"missing", b"dead"])
@pytest.mark.parametrize("framing", ["cl", "chunked"])
@pytest.mark.parametrize("size", ["small", "large"])
async def test_proxy_made_error_never_parses_request_body_as_requests(
    tmp_path: Path, target_host: bytes, framing: str, size: str
) -> None:
    """A POST the proxy refuses itself (no route: 502 ``naming/neg``; connection refused: 502) whose body
    is made of request heads, pipelined with a real request: the body is drained or the connection
    closed; the upstream never sees ``/smuggled``, and ``/real`` is answered at most once, in order."""
    body = SMUGGLE * (1 if size == "small" else 300_000 // len(SMUGGLE) + 1)
    if framing == "cl":
        first = (
            b"POST /x HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n" % (target_host, len(body)) + body
        )
    else:
        first = b"POST /x HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n" % target_host + chunked(
            body, [4096], ext=False
        )
    with closed_port() as dead:
        async with raw_upstream(digest_responder) as up:
            write_disco(tmp_path / "disco", "dead", dead)
            async with proxy(tmp_path, up) as port, Client.open(port) as c:

                async def push() -> None:
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        await c.send(first + get(b"/real"))

                async with trio.open_nursery() as n:
                    n.start_soon(push)
                    r1 = await c.read_response(b"POST")
                    assert r1.complete and r1.status in (400, 502), r1
                    r2 = await c.read_response()
                    n.cancel_scope.cancel()
                if r2.status or size == "small":  # a small body is drained: the connection goes on
                    expect_digest(r2, b"GET", b"/real", b"")
                else:
                    assert c.eof, r2  # the proxy closed rather than drain a large body: fine
                extra = await c.read_until_eof() if c.eof else b""
                assert b"smuggled" not in extra
            assert all(q.target != b"/smuggled" for q in up.requests), [q.target for q in up.requests]
            assert [q.target for q in up.requests] in ([], [b"/real"])


async def test_early_keepalive_answer_then_rest_of_body_then_next_request(tmp_path: Path) -> None:
    """A correct upstream answers ``/early`` (keep-alive) before the body, then reads and discards the body.
    The client, having its answer, still sends the rest of its body, then a second request with a body.
    The second request must reach the upstream intact (never mixed into the first one's body)."""
    first_body = os.urandom(600_000)
    second_body = b"second request body"

    async def early_keepalive(up: RawUpstream, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            req: h11.Request | None = None
            body = bytearray()
            while True:
                ev = await next_event(conn, stream)
                if ev is None:
                    return
                if isinstance(ev, h11.Request):
                    req = ev
                    if req.target == b"/early":
                        await stream.send_all(
                            conn.send(h11.Response(status_code=200, headers=[("content-length", "5")]))
                        )
                        await stream.send_all(conn.send(h11.Data(data=b"early")))
                        await stream.send_all(conn.send(h11.EndOfMessage()))
                elif isinstance(ev, h11.Data):
                    body += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    break
                else:
                    return
            assert req is not None
            up.requests.append(UpRequest(req.method, req.target, list(req.headers), bytes(body), []))
            if req.target != b"/early":
                await stream.send_all(
                    conn.send(h11.Response(status_code=200, headers=[("content-length", str(len(body)))]))
                )
                await stream.send_all(conn.send(h11.Data(data=bytes(body))))
                await stream.send_all(conn.send(h11.EndOfMessage()))
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async with raw_upstream(conn_handler=early_keepalive) as up, proxy(tmp_path, up) as port:
        async with Client.open(port) as c:
            head = b"POST /early HTTP/1.1\r\nHost: web\r\nContent-Length: %d\r\n\r\n" % len(first_body)
            await c.send(head + first_body[:1000])
            r = await c.read_response(b"POST")
            assert r.complete and r.status == 200 and r.body == b"early", r
            closed = c.eof
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await c.send(first_body[1000:])
                await c.send(post_cl(b"/second", second_body))
            if not closed:
                r2 = await c.read_response(b"POST")
                if r2.status:  # or the proxy closed the connection: also fine
                    assert r2.complete and r2.status == 200 and r2.body == second_body, r2
        async with Client.open(port) as c2:
            await c2.send(post_cl(b"/third", b"3"))
            r3 = await c2.read_response(b"POST")
            assert r3.complete and r3.status == 200 and r3.body == b"3", r3
        for q in up.requests:
            if q.target == b"/early":
                assert q.body == first_body
            elif q.target == b"/second":
                assert q.body == second_body
            else:
                assert q.target == b"/third" and q.body == b"3", q


# -- 12. malformed responses from the upstream --------------------------------------------------------------

BAD_RESPONSES = {
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\nContent-Length: 4\r\n\r\nbody",
    "bare-lf-injects": b"HTTP/1.1 200 OK\r\nX-A: a\nX-Injected: 1\r\nContent-Length: 4\r\n\r\nbody",
    "bare-cr-injects": b"HTTP/1.1 200 OK\r\nX-A: a\rX-Injected: 1\r\nContent-Length: 4\r\n\r\nbody",
    "nul": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 4\r\n\r\nbody",
    "differing-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nbody",
    "cl-list-differs": b"HTTP/1.1 200 OK\r\nContent-Length: 4, 40\r\n\r\nbody",
    "te-gzip-only": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nbody",
    "bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nbody\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("name", list(BAD_RESPONSES))
async def test_malformed_upstream_response_is_never_passed_on_as_valid(tmp_path: Path, name: str) -> None:
    """What reaches the client is either a 502 or a well-formed message (h11 parses it strictly) with no
    header smuggled in; the next request works."""

    def responder(r: UpRequest) -> bytes:
        return BAD_RESPONSES[name] if r.target == b"/bad" else ok(b"good")

    async with raw_upstream(responder) as up, proxy(tmp_path, up) as port:
        async with Client.open(port) as c:
            await c.send(get(b"/bad"))
            r = await c.read_response()
            assert not r.error, (name, r)
            if name != "bare-lf-injects":  # a bare LF may end a response line (RFC 9112 §2.2; as h11)
                assert r.header(b"x-injected") is None, (name, r.headers)
            if r.status == 200:
                # Passed on: only if framing was unambiguous, and then never "completed" with a wrong body.
                assert name in ("obs-fold", "bare-lf-injects", "bare-cr-injects", "nul", "bad-chunk"), (
                    name,
                    r,
                )
                assert not r.complete or r.body == b"body", (name, r)
            else:
                assert r.status == 502 and r.complete, (name, r)
        async with Client.open(port) as c2:
            await c2.send(get(b"/ok"))
            r2 = await c2.read_response()
            assert r2.complete and r2.body == b"good", r2
        assert up.connections >= 1


# -- 13. ordering, bursts, full duplex, half-close -----------------------------------------------------------


async def test_pipelined_across_two_upstreams_slow_first_keeps_order(tmp_path: Path) -> None:
    release = trio.Event()

    async def slow_conn(up: RawUpstream, stream: trio.SocketStream) -> None:
        buf = await read_through_head(stream)
        if buf is None:
            return
        up.requests.append(UpRequest(b"GET", buf.split(b" ")[1], [], b"", []))
        await release.wait()
        await stream.send_all(ok(b"slow answer", b"Connection: close\r\n"))

    def fast(r: UpRequest) -> bytes:
        if r.target == b"/fast1":
            release.set()  # the slow one answers only after the fast one was forwarded, if ever
        return ok(b"fast " + r.target)

    async with raw_upstream(conn_handler=slow_conn) as slow, raw_upstream(fast) as quick:
        write_disco(tmp_path / "disco", "slow", slow.port)
        write_disco(tmp_path / "disco", "web", quick.port)
        async with running_daemon(fs_config(tmp_path / "disco")) as d, Client.open(d.port("out")) as c:
            await c.send(
                b"GET /s HTTP/1.1\r\nHost: slow\r\n\r\n"
                + get(b"/fast1")
                + b"GET /s2 HTTP/1.1\r\nHost: slow\r\n\r\n"
                + get(b"/fast2")
            )
            with trio.move_on_after(1):
                await release.wait()
            release.set()  # a proxy that handles pipelined requests one at a time never forwards /fast1 first
            bodies = [(await c.read_response()).body for _ in range(4)]
            assert bodies == [b"slow answer", b"fast /fast1", b"slow answer", b"fast /fast2"], bodies


async def test_burst_of_fifty_pipelined_requests_with_bodies(tmp_path: Path) -> None:
    bodies = [os.urandom((i * 7919) % 70_000) for i in range(50)]
    wire = bytearray()
    for i, b in enumerate(bodies):
        if i % 3 == 0:
            wire += post_cl(b"/b%d" % i, b)
        elif i % 3 == 1:
            wire += b"PUT /b%d HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n" % i + chunked(
                b, [999]
            )
        else:
            wire += get(b"/b%d" % i)
            bodies[i] = b""
    async with raw_upstream(digest_responder) as up, proxy(tmp_path, up) as port, Client.open(port) as c:

        async def push() -> None:
            for i in range(0, len(wire), 100_003):
                await c.send(bytes(wire[i : i + 100_003]))

        async with trio.open_nursery() as n:
            n.start_soon(push)
            for i, b in enumerate(bodies):
                method = [b"POST", b"PUT", b"GET"][i % 3]
                expect_digest(await c.read_response(method), method, b"/b%d" % i, b)
        assert [q.target for q in up.requests] == [b"/b%d" % i for i in range(50)]


async def test_full_duplex_echo_streams_both_ways(tmp_path: Path) -> None:
    """The upstream echoes each piece of the request body as it arrives (chunked); the client reads while
    it writes. Exact bytes both ways."""

    async def echo(up: RawUpstream, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            ev = await next_event(conn, stream)
            if ev is None:
                return
            if isinstance(ev, h11.Request):
                await stream.send_all(conn.send(h11.Response(status_code=200, headers=[])))
            elif isinstance(ev, h11.Data):
                await stream.send_all(conn.send(h11.Data(data=ev.data)))
            elif isinstance(ev, h11.EndOfMessage):
                await stream.send_all(conn.send(h11.EndOfMessage()))
                return
            else:
                return

    payload = os.urandom(3 << 20)
    async with raw_upstream(conn_handler=echo) as up, proxy(tmp_path, up) as port, Client.open(port) as c:

        async def push() -> None:
            await c.send(b"POST /echo HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(0, len(payload), 33_333):
                await c.send(chunked(payload[i : i + 33_333], [33_333], ext=False)[:-5])  # no last-chunk yet
            await c.send(b"0\r\n\r\n")

        async with trio.open_nursery() as n:
            n.start_soon(push)
            r = await c.read_response(b"POST")
        assert r.complete and r.status == 200
        assert hashlib.sha256(r.body).digest() == hashlib.sha256(payload).digest(), len(r.body)


async def test_client_half_close_after_complete_request_still_gets_answer(tmp_path: Path) -> None:
    """A client that shuts down its sending side after a complete request (``nc``-style) still gets the
    whole answer: a FIN after a complete request is not an abort."""

    def responder(r: UpRequest) -> bytes:
        return ok(b"answer to " + r.target + b" " + r.body)

    async with raw_upstream(responder) as up, proxy(tmp_path, up) as port, Client.open(port) as c:
        await c.send(post_cl(b"/hc", b"payload"))
        await c.stream.send_eof()
        r = await c.read_response(b"POST")
        assert r.complete and r.status == 200 and r.body == b"answer to /hc payload", r
        assert [q.target for q in up.requests] == [b"/hc"]


# -- 14. no duplicates on upstream connection failures ---------------------------------------------------


async def _read_request_by_cl(stream: trio.SocketStream, buf: bytes) -> tuple[bytes, bytes, bytes] | None:
    """Read one request head and its Content-Length body; (head, body, rest) or None at EOF."""
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        if not data:
            return None
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    n = 0
    for line in head.split(b"\r\n")[1:]:
        if line.lower().startswith(b"content-length:"):
            n = int(line.split(b":", 1)[1])
    while len(rest) < n:
        data = await stream.receive_some(65536)
        if not data:
            return None
        rest += data
    return head, rest[:n], rest[n:]


async def test_post_fully_delivered_then_reset_is_never_sent_twice(tmp_path: Path) -> None:
    """The upstream receives a whole POST, then resets the connection without answering. The request did
    reach the upstream: it must not be requeued or retried (it would run twice)."""

    async def take_then_reset(up: RawUpstream, stream: trio.SocketStream) -> None:
        got = await _read_request_by_cl(stream, b"")
        if got is None:
            return
        head, body, _ = got
        up.requests.append(UpRequest(b"POST", head.split(b" ")[1], [], body, []))
        if head.split(b" ")[1] == b"/ok":
            await stream.send_all(ok(b"fine"))
            return
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()

    body = os.urandom(20_000)
    async with raw_upstream(conn_handler=take_then_reset) as up, proxy(tmp_path, up) as port:
        async with Client.open(port) as c:
            await c.send(post_cl(b"/once", body))
            r = await c.read_response(b"POST")
            assert r.complete and r.status == 502, r
        assert [q.target for q in up.requests] == [b"/once"], [q.target for q in up.requests]
        assert up.requests[0].body == body


async def test_stale_pooled_connection_post_delivered_exactly_once(tmp_path: Path) -> None:
    """The upstream closes each connection right after its answer, without ``Connection: close``. The
    next POST may find the pooled connection dead; it must still arrive exactly once, body intact."""

    async def one_shot(up: RawUpstream, stream: trio.SocketStream) -> None:
        got = await _read_request_by_cl(stream, b"")
        if got is None:
            return
        head, body, _ = got
        up.requests.append(UpRequest(b"POST", head.split(b" ")[1], [], body, []))
        await stream.send_all(ok(hashlib.sha256(body).hexdigest().encode()))
        # FIN right after the answer: the proxy has already pooled the connection, or is about to.

    bodies = [os.urandom(50_000 + i) for i in range(5)]
    async with raw_upstream(conn_handler=one_shot) as up, proxy(tmp_path, up) as port, Client.open(port) as c:
        for i, b in enumerate(bodies):
            await c.send(post_cl(b"/p%d" % i, b))
            r = await c.read_response(b"POST")
            assert r.complete and r.status == 200, (i, r)
            assert r.body == hashlib.sha256(b).hexdigest().encode(), i
        assert [q.target for q in up.requests] == [b"/p%d" % i for i in range(5)]
        assert [q.body for q in up.requests] == bodies
