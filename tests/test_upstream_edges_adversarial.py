"""Adversarial tests of the HTTP/1.1 client side against misbehaving or unusual upstreams.

The response direction: what an upstream sends back (1xx interim responses, ``101``, framing by the
close, smuggling-shaped framing, invalid status lines and fields, oversized heads, hop-by-hop fields,
trailers, slow heads, early answers) and what hostproxy must make of it. Each case is one of:

* relay it exactly (the client gets what the upstream meant, re-framed, hop-by-hop fields gone);
* refuse it with a 502 whose ``l5d-err`` says what was wrong, counted as ``upstream/reset``;
* in every case: never reuse an upstream connection whose framing was ambiguous, and never let an
  upstream desynchronise the client's connection (the next request on it gets its own answer).

Real components only, on 127.0.0.1: the real daemon (``tests/daemonutil.py``), a raw scripted upstream
written here (exact bytes out, every request head and the connection it came on recorded), a raw
client parsing with h11 (``tests/test_message_integrity_adversarial.py``), and, for the pool's own
bookkeeping, ``UpstreamPool`` against the raw upstream of ``tests/test_pool_adversarial.py``.
Not covered again here (see those two files): trailing/stray bytes, partial writes, truncated
responses, HEAD/204/304 bodies, obs-fold/bare CR/LF/NUL in response fields, differing
Content-Lengths, ``Transfer-Encoding: gzip`` alone, malformed requests.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from hostproxy.http import UpstreamPool, codec_fast, codec_h11
from hostproxy.http import upstream as upstream_mod
from tests.daemonutil import curl, fs_config, running_daemon
from tests.test_lifecycle_helpers import write_disco
from tests.test_message_integrity_adversarial import Client
from tests.test_pool_adversarial import Peer, req, running_raw, stats
from tests.test_pool_adversarial import RawUpstream as PoolRawUpstream

SAFETY = 10  # seconds: a safety net for every wait, never a timing assertion
SVC = "rt/out/service/svc/web"


# -- a scripted raw upstream ---------------------------------------------------------------------------

# What the upstream does for one request: the bytes to send (then the connection goes on), or a
# coroutine given the stream and the bytes read past the head, which returns whether to go on.
Action = bytes | Callable[[trio.SocketStream, bytes], Awaitable[bool]]


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra) + body


@dataclass
class Scripted:
    """Reads request heads (requests without bodies unless an action reads them) and answers each by
    its target from ``actions``; any other target gets ``ok(b"real " + target)`` on the same
    connection. ``seen`` records (connection index, target) per request, ``heads`` the raw heads."""

    actions: dict[bytes, Action] = field(default_factory=dict)
    port: int = 0
    connections: int = 0
    seen: list[tuple[int, bytes]] = field(default_factory=list)
    heads: list[bytes] = field(default_factory=list)

    def conn_of(self, target: bytes) -> list[int]:
        return [i for i, t in self.seen if t == target]

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._conn, listeners)

    async def _conn(self, stream: trio.SocketStream) -> None:
        index = self.connections
        self.connections += 1
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                target = head.split(b" ")[1]
                self.seen.append((index, target))
                self.heads.append(head)
                action = self.actions.get(target)
                if action is None:
                    await stream.send_all(ok(b"real " + target))
                elif isinstance(action, bytes):
                    await stream.send_all(action)
                else:
                    if not await action(stream, buf):
                        return
                    buf = b""
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()


def closing(data: bytes) -> Callable[[trio.SocketStream, bytes], Awaitable[bool]]:
    """Send ``data``, then close the connection (a body framed by the close ends there)."""

    async def action(stream: trio.SocketStream, _rest: bytes) -> bool:
        await stream.send_all(data)
        return False

    return action


@contextlib.asynccontextmanager
async def scripted(actions: dict[bytes, Action]) -> AsyncIterator[Scripted]:
    up = Scripted(actions)
    async with trio.open_nursery() as nursery:
        await nursery.start(up.serve)
        yield up
        nursery.cancel_scope.cancel()


def config(disco: Path, client: str = "", service: str = "") -> str:
    """One router ``out`` over the fs namer; no failure accrual (a test's own 502s never eject the
    endpoint), no requeues; ``client`` and ``service``: more lines, indented by 4."""
    return (
        fs_config(disco)
        + "  client:\n    kind: io.l5d.global\n    failureAccrual: {kind: none}\n"
        + "    requeueBudget: {minRetriesPerSec: 0, percentCanRetry: 0.0}\n"
        + client
        + "\n  service:\n    kind: io.l5d.global\n"
        + service
        + "\n"
    )


@contextlib.asynccontextmanager
async def daemon_for(tmp_path: Path, up: Scripted, client: str = "", service: str = "") -> AsyncIterator[Any]:
    write_disco(tmp_path / "disco", "web", up.port)
    async with running_daemon(config(tmp_path / "disco", client, service)) as d:
        yield d


def get(path: bytes, extra: bytes = b"") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: web\r\n%s\r\n" % (path, extra)


async def metrics(d: Any) -> dict[str, float]:
    return (await curl(f"{d.admin}/admin/metrics.json")).json()  # type: ignore[return-value]


async def raw_exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` (which should ask to close) on a new connection; every byte until EOF."""
    out = b""
    with trio.fail_after(SAFETY):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            while True:
                try:
                    data = await stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                if not data:
                    break
                out += data
    return out


def head_of(raw: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The status line and the (lowercased name, value) fields of the first head in ``raw``."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    fields = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields.append((name.lower(), value.strip()))
    return lines[0], fields


def l5d_err(resp: Any) -> str:
    from urllib.parse import unquote_plus

    value = resp.header(b"l5d-err")
    return unquote_plus(value.decode("ascii"), encoding="iso-8859-1") if value is not None else ""


@contextlib.asynccontextmanager
async def proxied(
    tmp_path: Path, actions: dict[bytes, Action], client: str = "", service: str = ""
) -> AsyncIterator[tuple[Scripted, Any, Client]]:
    """A scripted upstream, a daemon routing ``web`` to it, and a raw client connection to the daemon."""
    async with (
        scripted(actions) as up,
        daemon_for(tmp_path, up, client, service) as d,
        Client.open(d.port("out")) as c,
    ):
        yield up, d, c


async def next_on_a_new_connection(up: Scripted, c: Client, path: bytes) -> None:
    """The client connection is still in step, and its next request went out on another upstream
    connection than ``path``'s (that one was not reused)."""
    await next_request_in_sync(c)
    assert up.conn_of(b"/next") != up.conn_of(path), up.seen


async def next_request_in_sync(c: Client, path: bytes = b"/next") -> None:
    """The client connection is still in step: its next request gets its own answer."""
    assert not c.eof, "the proxy closed the client connection"
    await c.send(get(path))
    r = await c.read_response()
    assert r.complete and r.status == 200 and r.body == b"real " + path, r


# == 1. interim (1xx) responses ===========================================================================


async def test_early_hints_are_forwarded_to_an_http11_client(tmp_path: Path) -> None:
    """RFC 9110 §15.2: "A proxy MUST forward 1xx responses unless the proxy itself requested the
    generation of the 1xx response." hostproxy did not ask for a 103, so an HTTP/1.1 client must see
    it (with its Link field) before the final response, which stays intact."""
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    async with proxied(tmp_path, {b"/hints": hints + ok(b"final")}) as (up, d, c):
        await c.send(get(b"/hints"))
        r = await c.read_response()
        assert r.complete and r.status == 200 and r.body == b"final", r
        assert r.informational == [103], f"the 103 Early Hints was not forwarded: {r.informational}"
        await next_request_in_sync(c)


async def test_no_interim_response_reaches_an_http10_client(tmp_path: Path) -> None:
    """RFC 9110 §15.2: "A server MUST NOT send a 1xx response to an HTTP/1.0 client." Whatever hostproxy
    does with an upstream's 1xx, a 1.0 client gets the final response only."""
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    async with scripted({b"/hints": interim + ok(b"final")}) as up, daemon_for(tmp_path, up) as d:
        raw = await raw_exchange(d.port("out"), b"GET /hints HTTP/1.0\r\nHost: web\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 200 "), raw[:200]
        assert raw.count(b"HTTP/1.1 1") == 0, raw[:300]
        assert raw.endswith(b"\r\n\r\nfinal"), raw[-100:]


async def test_many_interim_responses_then_the_final_one_keep_both_connections_in_step(
    tmp_path: Path,
) -> None:
    """An unasked ``100 Continue``, a ``102``, two ``103`` and an unknown ``199``, each in its own write,
    then the final response: the client gets that final response whole, its connection stays in step,
    and the upstream connection is reused for the next request (nothing ambiguous happened)."""
    parts = [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 102 Processing\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </b.js>; rel=preload\r\n\r\n",
        b"HTTP/1.1 199 Whatever\r\nX-Interim: 1\r\n\r\n",
        ok(b"the final response", b"X-Final: 1\r\n"),
    ]

    async def dribble(stream: trio.SocketStream, _rest: bytes) -> bool:
        for part in parts:
            await stream.send_all(part)
            await trio.sleep(0.01)
        return True

    async with proxied(tmp_path, {b"/interim": dribble}) as (up, d, c):
        await c.send(get(b"/interim"))
        r = await c.read_response()
        assert r.complete and r.status == 200 and r.body == b"the final response", r
        assert r.header(b"x-final") == b"1" and r.header(b"x-interim") is None, r.headers
        await next_request_in_sync(c)
        assert up.conn_of(b"/next") == up.conn_of(b"/interim"), up.seen


async def test_an_interim_response_with_a_content_length_has_no_body(tmp_path: Path) -> None:
    """A 1xx never has content (RFC 9110 §15.2), whatever ``Content-Length`` it carries: the bytes after
    its head are the final response, not a body to skip."""
    interim = b"HTTP/1.1 103 Early Hints\r\nContent-Length: 5\r\nLink: </a>\r\n\r\n"
    async with proxied(tmp_path, {b"/cl1xx": interim + ok(b"final")}) as (up, d, c):
        await c.send(get(b"/cl1xx"))
        r = await c.read_response()
        assert r.complete and r.status == 200 and r.body == b"final", r
        await next_request_in_sync(c)


@pytest.mark.parametrize("how", ["interim-flood", "byte-trickle"])
async def test_a_head_kept_coming_past_the_attempt_timeout_is_503_timeout_attempt(
    tmp_path: Path, how: str
) -> None:
    """An upstream that keeps the response head from ending (a ``100 Continue`` every 20 ms, or the
    head one byte at a time) does not extend ``requestAttemptTimeoutMs``: 503 naming it, and the
    connection is not reused (the next request goes out on a new one and is answered)."""
    head = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * 400 + b"\r\nContent-Length: 2\r\n\r\nok"

    async def stall(stream: trio.SocketStream, _rest: bytes) -> bool:
        with trio.move_on_after(SAFETY):
            if how == "interim-flood":
                while True:
                    await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    await trio.sleep(0.02)
            else:
                for i in range(len(head)):
                    await stream.send_all(head[i : i + 1])
                    await trio.sleep(0.02)
        return False

    client = "    requestAttemptTimeoutMs: 300\n"
    async with proxied(tmp_path, {b"/stall": stall}, client=client) as (up, d, c):
        await c.send(get(b"/stall"))
        r = await c.read_response()
        assert r.complete and r.status == 503, r
        assert "requestAttemptTimeoutMs" in l5d_err(r), l5d_err(r)
        await next_on_a_new_connection(up, c, b"/stall")
        m = await metrics(d)
        assert m.get(f"{SVC}/failures/timeout/attempt") == 1, {k: v for k, v in m.items() if "failures" in k}


async def test_a_slow_head_within_the_timeouts_is_relayed(tmp_path: Path) -> None:
    """The same trickled head, short enough to end well inside both timeouts: relayed whole."""
    head = b"HTTP/1.1 200 OK\r\nX-Slow: yes\r\nContent-Length: 4\r\n\r\nslow"

    async def trickle(stream: trio.SocketStream, _rest: bytes) -> bool:
        for i in range(0, len(head), 8):
            await stream.send_all(head[i : i + 8])
            await trio.sleep(0.01)
        return True

    client = "    requestAttemptTimeoutMs: 8000\n"
    service = "    totalTimeoutMs: 9000\n"
    async with proxied(tmp_path, {b"/slow": trickle}, client, service) as (up, d, c):
        await c.send(get(b"/slow"))
        r = await c.read_response()
        assert r.complete and r.status == 200 and r.body == b"slow", r
        assert r.header(b"x-slow") == b"yes"
        await next_request_in_sync(c)


# == 2. 101 Switching Protocols =============================================================================


async def test_101_to_a_request_that_asked_no_upgrade_is_a_precise_502_and_never_tunnelled(
    tmp_path: Path,
) -> None:
    """A plain GET answered ``101`` (with tunnel bytes behind it): a protocol switch nobody proposed.
    502 whose ``l5d-err`` names the unexpected 101, counted ``upstream/reset``; the bytes behind the
    101 never reach the client, whose connection stays in step; the upstream connection is dropped."""
    switch = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nTUNNEL-BYTES"
    )
    async with proxied(tmp_path, {b"/switch": switch}) as (up, d, c):
        await c.send(get(b"/switch"))
        r = await c.read_response()
        assert r.complete and r.status == 502, r
        assert b"TUNNEL-BYTES" not in r.body
        await next_on_a_new_connection(up, c, b"/switch")
        m = await metrics(d)
        assert m.get(f"{SVC}/failures/upstream/reset") == 1, {k: v for k, v in m.items() if "failures" in k}
        err = l5d_err(r)
        assert "invalid response" in err, err
        assert "101" in err, f"l5d-err does not say the upstream answered an unrequested 101: {err!r}"


async def test_websocket_101_with_bytes_in_the_same_segment_and_hop_by_hop_fields(tmp_path: Path) -> None:
    """The 101 and the upstream's first tunnel bytes arrive in one write: those bytes reach the client
    right after the 101 (nothing lost in the codec's buffer). The 101 keeps ``Upgrade`` and
    ``Connection: upgrade`` but loses the fields its ``Connection`` names and ``Keep-Alive``."""

    async def accept(stream: trio.SocketStream, _rest: bytes) -> bool:
        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Hop\r\n"
            b"X-Hop: secret\r\nKeep-Alive: timeout=5\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
            b"\r\nHELLO-FROM-UPSTREAM"
        )
        while True:  # then echo
            data = await stream.receive_some(65536)
            if not data:
                return False
            await stream.send_all(data)

    async with scripted({b"/ws": accept}) as up, daemon_for(tmp_path, up) as d:
        stream = await trio.open_tcp_stream("127.0.0.1", d.port("out"))
        async with stream:
            await stream.send_all(
                b"GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            data = b""
            with trio.fail_after(SAFETY):
                while b"HELLO-FROM-UPSTREAM" not in data:
                    more = await stream.receive_some(65536)
                    assert more, data
                    data += more
            status, fields = head_of(data)
            assert status.startswith(b"HTTP/1.1 101"), data
            names = {n for n, _ in fields}
            assert (b"upgrade", b"websocket") in fields, fields
            assert b"x-hop" not in names and b"keep-alive" not in names, fields
            assert b"sec-websocket-accept" in names, fields
            assert data.split(b"\r\n\r\n", 1)[1] == b"HELLO-FROM-UPSTREAM", data
            await stream.send_all(b"ping-1")
            got = b""
            with trio.fail_after(SAFETY):
                while len(got) < 6:
                    more = await stream.receive_some(65536)
                    assert more, got
                    got += more
            assert got == b"ping-1"


async def test_upgrade_declined_with_a_200_keeps_the_client_connection_usable(tmp_path: Path) -> None:
    """An upstream may ignore ``Upgrade`` and answer normally: the 200 is relayed, and the client's
    connection carries the next request (nothing was switched)."""
    async with proxied(tmp_path, {b"/ws": ok(b"no upgrade for you")}) as (up, d, c):
        await c.send(get(b"/ws", b"Connection: Upgrade\r\nUpgrade: websocket\r\n"))
        r = await c.read_response()
        assert r.complete and r.status == 200 and r.body == b"no upgrade for you", r
        assert r.header(b"upgrade") is None
        await next_request_in_sync(c)
        assert b"upgrade: websocket" in up.heads[0].lower(), up.heads[0]


# == 3. bodies framed by the close, HTTP/1.0 upstreams ====================================================


async def test_http10_close_delimited_response_is_relayed_whole_on_a_kept_client_connection(
    tmp_path: Path,
) -> None:
    """``HTTP/1.0`` without ``Content-Length``: the body ends at the close. The 1.1 client gets it whole,
    re-framed (so its connection carries the next request); the upstream connection is gone."""
    payload = os.urandom(150_001)
    old = closing(b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n" + payload)
    async with proxied(tmp_path, {b"/old": old}) as (up, d, c):
        await c.send(get(b"/old"))
        r = await c.read_response()
        assert r.complete and r.status == 200, r
        assert hashlib.sha256(r.body).digest() == hashlib.sha256(payload).digest(), len(r.body)
        await next_on_a_new_connection(up, c, b"/old")


async def test_http10_keep_alive_response_loses_its_connection_fields(tmp_path: Path) -> None:
    """``HTTP/1.0`` with ``Connection: keep-alive`` and ``Keep-Alive``: both describe the upstream hop
    only and must not reach the client; the body (by ``Content-Length``) is intact."""
    resp = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5, max=100\r\nContent-Length: 5\r\n\r\nhello"
    async with proxied(tmp_path, {b"/ka": resp}) as (up, d, c):
        await c.send(get(b"/ka"))
        r = await c.read_response()
        assert r.complete and r.status == 200 and r.body == b"hello", r
        assert r.header(b"keep-alive") is None and r.header(b"connection") is None, r.headers
        await next_request_in_sync(c)


async def test_via_on_a_response_from_an_http10_upstream_names_the_version_received(tmp_path: Path) -> None:
    """RFC 9110 §7.6.3: ``Via``'s received-protocol is the version of the message as the proxy received
    it; the spec (§5.7): ``Via: 1.1 linkerd`` (or ``1.0 linkerd``) on requests and responses. A
    response received as HTTP/1.0 is forwarded with ``Via: 1.0 hostproxy``."""
    async with proxied(tmp_path, {b"/old": b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold"}) as (up, d, c):
        await c.send(get(b"/old"))
        r = await c.read_response()
        assert r.complete and r.body == b"old", r
        via = r.header(b"via")
        assert via is not None and via.endswith(b"1.0 hostproxy"), via
        await c.send(get(b"/new"))
        r2 = await c.read_response()
        assert r2.header(b"via") == b"1.1 hostproxy", r2.headers


@pytest.mark.parametrize("codec", ["fast", "h11"])
async def test_a_connection_whose_body_ended_at_the_close_is_not_kept_in_the_pool(
    monkeypatch: pytest.MonkeyPatch, codec: str
) -> None:
    """An HTTP/1.1 response without ``Content-Length`` or chunking ends when the upstream closes: once
    its body is read, that dead connection must be closed, not checked in as idle (where it shows in
    ``/client_state.json`` and metrics as a cached connection, holds a file descriptor until the next
    checkout or the idle timeout, and is counted as a "stale" discard later)."""
    if codec == "h11":
        monkeypatch.setattr(upstream_mod, "ClientCodec", codec_h11.ClientCodec)
        monkeypatch.setattr(upstream_mod, "_whole_body", None)
    else:
        monkeypatch.setattr(upstream_mod, "ClientCodec", codec_fast.ClientCodec)

    async def handler(up: PoolRawUpstream, peer: Peer) -> None:
        head = await peer.read_head()
        if head is not None:
            up.record(peer, head)
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the close")

    async with running_raw(handler) as up, UpstreamPool("127.0.0.1", up.port) as pool:
        r = await pool.request(req("/eof"))
        assert await r.body.read_all() == b"until the close"
        s = stats(pool)
        assert (s["open"], s["idle"], s["in_use"]) == (0, 0, 0), s


# == 4. framing that could smuggle a response =============================================================


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", id="cl-then-te"),
        pytest.param(b"Transfer-Encoding: chunked\r\nContent-Length: 40\r\n", id="te-then-cl"),
    ],
)
async def test_content_length_with_chunked_is_never_followed_by_reuse(tmp_path: Path, fields: bytes) -> None:
    """RFC 9112 §6.3: with both, chunked wins — and the message "ought to be handled as an error"
    (smuggling). Relaying it de-chunked is acceptable; reusing that upstream connection is not: a
    front end that believed the Content-Length would put the next response elsewhere. The next
    request must go out on a new connection; the client's connection stays in step."""
    both = b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n7\r\nchunked\r\n0\r\n\r\n"
    async with proxied(tmp_path, {b"/both": both}) as (up, d, c):
        await c.send(get(b"/both"))
        r = await c.read_response()
        assert r.complete and r.status in (200, 502), r
        if r.status == 200:
            assert r.body == b"chunked", r
        await next_request_in_sync(c)
        assert up.conn_of(b"/next") != up.conn_of(b"/both"), (
            f"the upstream connection that sent Content-Length with chunked was reused: {up.seen}"
        )


async def test_chunked_on_an_http10_response_is_decoded_or_refused_and_the_connection_closed(
    tmp_path: Path,
) -> None:
    """RFC 9112 §6.1: a 1.0 message with ``Transfer-Encoding`` has faulty framing and the connection
    must be closed after it, ``Connection: keep-alive`` or not. Never relayed with the chunk framing
    in the body; the upstream connection is not reused."""
    resp = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    async with proxied(tmp_path, {b"/te10": resp}) as (up, d, c):
        await c.send(get(b"/te10"))
        r = await c.read_response()
        assert r.complete and r.status in (200, 502), r
        if r.status == 200:
            assert r.body == b"hello", r
        await next_on_a_new_connection(up, c, b"/te10")


SMUGGLING_TE = {
    "gzip-chunked": b"Transfer-Encoding: gzip, chunked\r\n",
    "chunked-twice-one-field": b"Transfer-Encoding: chunked, chunked\r\n",
    "two-te-fields": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    "te-identity": b"Transfer-Encoding: identity\r\nContent-Length: 5\r\n",
    "te-comma-chunked": b"Transfer-Encoding: ,chunked\r\n",
    "te-x-chunked": b"Transfer-Encoding: xchunked\r\n",
}


@pytest.mark.parametrize("name", list(SMUGGLING_TE))
async def test_transfer_codings_other_than_exactly_chunked_are_refused(tmp_path: Path, name: str) -> None:
    """The body's length cannot be known the way every hop would agree on: 502 ``upstream/reset`` whose
    ``l5d-err`` names Transfer-Encoding; nothing of that body reaches the client; the next request is
    answered on a new upstream connection."""
    resp = b"HTTP/1.1 200 OK\r\n" + SMUGGLING_TE[name] + b"\r\n5\r\nhello\r\n0\r\n\r\n"
    async with proxied(tmp_path, {b"/te": resp}) as (up, d, c):
        await c.send(get(b"/te"))
        r = await c.read_response()
        assert r.complete and r.status == 502, r
        assert "transfer-encoding" in l5d_err(r).lower(), l5d_err(r)
        assert b"hello" not in r.body
        await next_on_a_new_connection(up, c, b"/te")


BAD_LENGTHS = {
    "plus": b"Content-Length: +5\r\n",
    "hex": b"Content-Length: 0x5\r\n",
    "negative": b"Content-Length: -5\r\n",
    "two-numbers": b"Content-Length: 5 5\r\n",
    "empty": b"Content-Length: \r\n",
    "overflow": b"Content-Length: 99999999999999999999999999\r\n",
}


@pytest.mark.parametrize("name", list(BAD_LENGTHS))
async def test_malformed_content_length_is_refused(tmp_path: Path, name: str) -> None:
    resp = b"HTTP/1.1 200 OK\r\n" + BAD_LENGTHS[name] + b"\r\nhello"
    async with proxied(tmp_path, {b"/cl": resp}) as (up, d, c):
        await c.send(get(b"/cl"))
        r = await c.read_response()
        assert r.complete and r.status == 502, r
        assert "content-length" in l5d_err(r).lower(), l5d_err(r)
        await next_request_in_sync(c)


# == 5. status lines =========================================================================================

BAD_STATUS_LINES = {
    "two-digits": b"HTTP/1.1 99 Small",
    "below-100": b"HTTP/1.1 099 Zero",
    "four-digits": b"HTTP/1.1 1000 Big",
    "short-code": b"HTTP/1.1 20 OK",
    "no-space-before-reason": b"HTTP/1.1 200OK",
    "double-space": b"HTTP/1.1  200 OK",
    "leading-space": b" HTTP/1.1 200 OK",
    "tab-separator": b"HTTP/1.1\t200 OK",
    "not-http": b"ICY 200 OK",
    "lowercase-http": b"http/1.1 200 OK",
    "letters-in-code": b"HTTP/1.1 2OO OK",
    "signed-code": b"HTTP/1.1 +20 OK",
    "no-version-dot": b"HTTP/11 200 OK",
}


@pytest.mark.parametrize("name", list(BAD_STATUS_LINES))
async def test_invalid_status_line_is_a_502_and_the_client_stays_in_step(tmp_path: Path, name: str) -> None:
    resp = BAD_STATUS_LINES[name] + b"\r\nContent-Length: 4\r\n\r\nbody"
    async with proxied(tmp_path, {b"/bad": resp}) as (up, d, c):
        await c.send(get(b"/bad"))
        r = await c.read_response()
        assert r.complete and r.status == 502, (name, r)
        assert "invalid response" in l5d_err(r), l5d_err(r)
        await next_on_a_new_connection(up, c, b"/bad")


async def test_control_bytes_in_the_reason_phrase_never_reach_the_client(tmp_path: Path) -> None:
    """RFC 9112 §4: reason-phrase = 1*( HTAB / SP / VCHAR / obs-text ). A reason with a control byte
    (here ``\\x01`` and ``\\x7f``, DEL) is refused (502) or replaced; it is never written to the client."""
    resp = b"HTTP/1.1 200 O\x01K\x7f\r\nContent-Length: 4\r\n\r\nbody"
    async with scripted({b"/ctl": resp}) as up, daemon_for(tmp_path, up) as d:
        raw = await raw_exchange(d.port("out"), get(b"/ctl", b"Connection: close\r\n"))
        status_line, _ = head_of(raw)
        assert re.fullmatch(rb"HTTP/1\.1 (200|502) [\t\x20-\x7e\x80-\xff]*", status_line), status_line


@pytest.mark.parametrize(
    "line", [pytest.param(b"HTTP/1.1 200", id="no-reason"), pytest.param(b"HTTP/1.1 200 ", id="empty-reason")]
)
async def test_status_line_without_a_reason_is_relayed(tmp_path: Path, line: bytes) -> None:
    """RFC 9112 §4: the reason phrase is optional (and clients ought to accept a missing space)."""
    async with proxied(tmp_path, {b"/nr": line + b"\r\nContent-Length: 4\r\n\r\nbody"}) as (up, d, c):
        await c.send(get(b"/nr"))
        r = await c.read_response()
        assert r.complete and r.status == 200 and r.body == b"body", r
        await next_request_in_sync(c)


# == 6. response fields ====================================================================================

BAD_FIELDS = {
    "space-before-colon": b"Content-Length : 40\r\n",
    "space-in-name": b"X Bad: 1\r\n",
    "empty-name": b": novalue\r\n",
    "no-colon": b"NoColonHere\r\n",
    "ctl-in-value": b"X-Ctl: a\x01b\r\n",
    "ctl-in-name": b"X-\x01Ctl: a\r\n",
    "high-byte-in-name": b"X-\xffName: a\r\n",
    "esc-in-value": b"X-Esc: a\x1b[31mred\r\n",
}


@pytest.mark.parametrize("name", list(BAD_FIELDS))
async def test_invalid_response_fields_are_refused_never_relayed(tmp_path: Path, name: str) -> None:
    """RFC 9112 §5.1: whitespace between a field name and its colon must be rejected or removed by a
    proxy before forwarding; names are tokens; values hold no control bytes but HTAB (RFC 9110 §5.5).
    What reaches the client is a 502 or a head with no such line; never the field as the upstream
    wrote it."""
    resp = b"HTTP/1.1 200 OK\r\n" + BAD_FIELDS[name] + b"Content-Length: 4\r\n\r\nbody"
    async with scripted({b"/f": resp}) as up, daemon_for(tmp_path, up) as d:
        raw = await raw_exchange(d.port("out"), get(b"/f", b"Connection: close\r\n"))
        head = raw.split(b"\r\n\r\n", 1)[0]
        assert head.startswith((b"HTTP/1.1 200 ", b"HTTP/1.1 502 ")), raw[:200]
        bad = BAD_FIELDS[name].rstrip(b"\r\n").lower()
        lines = head.split(b"\r\n")[1:]
        assert bad not in [line.lower() for line in lines], head
        for line in lines:
            assert re.fullmatch(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+:[ \t]*[\t\x20-\x7e\x80-\xff]*", line), line


@pytest.mark.parametrize("twice", [False, True], ids=["once", "same-head-twice"])
async def test_hop_by_hop_response_fields_are_stripped(tmp_path: Path, twice: bool) -> None:
    """``Connection`` (in two fields, mixed case) names ``X-Foo`` and ``x-bar``: both go, with
    ``Keep-Alive``, ``Proxy-Connection``, ``Proxy-Authenticate``, ``Upgrade`` (on a 200), ``Trailer``
    and ``Connection`` itself; ``X-Kept`` stays (``TE``: the next test). The same head sent twice exercises the codec's
    remembered heads. The upstream's ``Connection: close`` does not close the client's connection."""
    resp = (
        b"HTTP/1.1 200 OK\r\nConnection: X-Foo, keep-alive\r\nX-Foo: 1\r\nx-bar: 2\r\nConnection: x-BAR\r\n"
        b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nProxy-Authenticate: Basic realm=x\r\n"
        b"Upgrade: h2c\r\nTrailer: X-Sum\r\nTE: trailers\r\nX-Kept: yes\r\nContent-Length: 4\r\n\r\nbody"
    )
    closing_resp = resp.replace(b"Connection: x-BAR", b"Connection: x-BAR, close")
    async with proxied(tmp_path, {b"/hop": resp, b"/hop2": resp, b"/hopc": closing_resp}) as (up, d, c):
        for path in [b"/hop", b"/hop2", b"/hopc"] if twice else [b"/hopc"]:
            await c.send(get(path))
            r = await c.read_response()
            assert r.complete and r.status == 200 and r.body == b"body", r
            names = {n.lower() for n, _ in r.headers}
            leaked = names & {
                b"x-foo",
                b"x-bar",
                b"keep-alive",
                b"proxy-connection",
                b"proxy-authenticate",
                b"upgrade",
                b"trailer",
                b"connection",
            }
            assert not leaked, (path, r.headers)
            assert r.header(b"x-kept") == b"yes", r.headers
        await next_request_in_sync(c)


async def test_te_field_in_a_response_is_not_forwarded(tmp_path: Path) -> None:
    """``TE`` is hop-by-hop (RFC 9110 §7.6.1; Linkerd's StripHopByHopHeadersFilter strips it from
    responses too). Keeping ``TE: trailers`` is for requests (it tells the next hop the client takes
    trailers); in a response it means nothing to the client and must not be passed on."""
    resp = b"HTTP/1.1 200 OK\r\nTE: trailers, deflate\r\nX-Kept: yes\r\nContent-Length: 4\r\n\r\nbody"
    async with proxied(tmp_path, {b"/te": resp}) as (up, d, c):
        await c.send(get(b"/te"))
        r = await c.read_response()
        assert r.complete and r.status == 200 and r.body == b"body", r
        assert r.header(b"x-kept") == b"yes", r.headers
        assert r.header(b"te") is None, f"a response's TE field was forwarded: {r.headers}"


async def test_chunked_response_trailers_are_relayed_and_the_connection_reused(tmp_path: Path) -> None:
    """A chunked response with chunk extensions and trailers, to a client that sent ``TE: trailers``:
    the body and the end-to-end trailer arrive; both connections go on."""
    resp = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc123\r\n\r\n"
    )
    async with proxied(tmp_path, {b"/tr": resp}) as (up, d, c):
        await c.send(get(b"/tr", b"TE: trailers\r\n"))
        r = await c.read_response()
        assert r.complete and r.status == 200 and r.body == b"hello world", r
        assert (b"x-checksum", b"abc123") in r.trailers, r.trailers
        await next_request_in_sync(c)
        assert up.conn_of(b"/next") == up.conn_of(b"/tr"), up.seen


# == 7. sizes of response heads =============================================================================


async def test_response_header_block_over_max_headers_kb_is_a_502(tmp_path: Path) -> None:
    """README (config reference): ``maxHeadersKB`` (8) is the "Largest request or response header
    block". A 20 KiB response header block is refused: 502 whose ``l5d-err`` names the limit."""
    big = b"X-Big: " + b"b" * (20 * 1024) + b"\r\n"
    async with proxied(
        tmp_path, {b"/big": b"HTTP/1.1 200 OK\r\n" + big + b"Content-Length: 2\r\n\r\nok"}
    ) as (up, d, c):
        await c.send(get(b"/big"))
        r = await c.read_response()
        assert r.complete, r
        assert r.status == 502, f"a {len(big)}-byte response header block was relayed: {r.status}"
        assert "maxHeadersKB" in l5d_err(r), l5d_err(r)
        await next_request_in_sync(c)


async def test_status_line_over_max_initial_line_kb_is_a_502(tmp_path: Path) -> None:
    """README: ``maxInitialLineKB`` (4) is the "Longest request or status line". A 6 KiB reason phrase
    is refused with a 502 naming the limit."""
    line = b"HTTP/1.1 200 " + b"R" * (6 * 1024)
    async with proxied(tmp_path, {b"/long": line + b"\r\nContent-Length: 2\r\n\r\nok"}) as (up, d, c):
        await c.send(get(b"/long"))
        r = await c.read_response()
        assert r.complete, r
        assert r.status == 502, f"a {len(line)}-byte status line was relayed: {r.status}"
        assert "maxInitialLineKB" in l5d_err(r), l5d_err(r)
        await next_request_in_sync(c)


async def test_a_head_that_never_ends_is_cut_off_not_buffered(tmp_path: Path) -> None:
    """1 MiB of fields and no blank line: a 502 once past the limit, not a proxy buffering it all."""

    async def endless(stream: trio.SocketStream, _rest: bytes) -> bool:
        await stream.send_all(b"HTTP/1.1 200 OK\r\n")
        line = b"X-Fill: " + b"f" * 1000 + b"\r\n"
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            for _ in range(1024):
                await stream.send_all(line)
        return False

    async with proxied(tmp_path, {b"/endless": endless}) as (up, d, c):
        await c.send(get(b"/endless"))
        r = await c.read_response()
        assert r.complete and r.status == 502, r
        await next_request_in_sync(c)


async def test_response_with_a_thousand_fields_is_refused(tmp_path: Path) -> None:
    """Requests are capped at ``max_header_count`` (100) fields; a response head of 1000 tiny fields
    (4 KiB, under the size limit) is the same hazard for the client behind hostproxy (each field a
    parse and an allocation; the "HTTP/2 Bomb" lesson of field-lessons.md §3.5 is to cap the count,
    not only the bytes): 502, not relayed."""
    fields = b"".join(b"x%03d:1\r\n" % i for i in range(1000))
    async with proxied(
        tmp_path, {b"/many": b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\nok"}
    ) as (up, d, c):
        await c.send(get(b"/many"))
        r = await c.read_response()
        assert r.complete, r
        assert r.status == 502, f"{len(r.headers)} response fields were relayed"
        await next_request_in_sync(c)


# == 8. an upstream that answers before reading the request body ===========================================


async def test_early_refusal_then_lingering_close_reaches_the_uploading_client_intact(tmp_path: Path) -> None:
    """A correct server refusing an upload (413, ``Connection: close``) answers before reading the body,
    then closes its write side and reads and discards what still comes (a lingering close). The
    uploading client must get that 413 exactly, never a 502; it is not counted as a failure; the next
    request is answered on a new upstream connection."""
    body = os.urandom(2 << 20)
    refusal = b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 8\r\n\r\ntoo big!"

    async def refuse(stream: trio.SocketStream, _rest: bytes) -> bool:
        await stream.send_all(refusal)
        with contextlib.suppress(OSError):
            stream.socket.shutdown(socket.SHUT_WR)
        with trio.move_on_after(SAFETY):
            while await stream.receive_some(65536):
                pass
        return False

    async with proxied(tmp_path, {b"/upload": refuse}) as (up, d, c):

        async def push() -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await c.send(
                    b"POST /upload HTTP/1.1\r\nHost: web\r\nContent-Length: %d\r\n\r\n" % len(body) + body
                )

        async with trio.open_nursery() as n:
            n.start_soon(push)
            r = await c.read_response(b"POST")
            n.cancel_scope.cancel()
        assert r.complete and r.status == 413 and r.body == b"too big!", r
        async with Client.open(d.port("out")) as c2:
            await next_request_in_sync(c2)
        assert up.conn_of(b"/next") != up.conn_of(b"/upload"), up.seen
        m = await metrics(d)
        assert not {k: v for k, v in m.items() if v and k.startswith(f"{SVC}/failures")}, m
