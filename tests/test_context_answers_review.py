"""Adversarial review of the request path: clearContext on answers that
are not plain responses (101, interim, trailers), client checks, retries and client stats. Real
daemon in-process, real upstreams and raw sockets on loopback."""

from __future__ import annotations

import socket
from pathlib import Path

import trio

from hostproxy.h2 import H2Server, H2ServerParams
from hostproxy.h2.link import CANCEL
from tests.daemonutil import fs_config, running_daemon
from tests.grpc_fixtures.rawh2 import RawClient
from tests.test_h2_client_adversarial import h2_router
from tests.test_h2_proxy import App
from tests.test_linkerd1_conformance import write_disco
from tests.test_retry_adversarial import FS_CLIENT, AlwaysUnavailable, cfg, metrics, recorder
from tests.upstreams import running_upstream, serving

SAFETY = 10


async def _read_until(stream: trio.SocketStream, marker: bytes) -> bytes:
    data = b""
    with trio.fail_after(SAFETY):
        while marker not in data:
            chunk = await stream.receive_some(65536)
            assert chunk, data
            data += chunk
    return data


async def test_clear_context_upgrade_answer_carries_no_l5d_fields(tmp_path: Path) -> None:
    """A clearContext HTTP/1.1 server's ``101 Switching Protocols`` is a response like any other: the
    classifier's ``l5d-success-class`` the router sets on it must not reach the untrusted caller (it
    went out in the 101 head, which the tunnel writes itself)."""
    async with running_upstream() as up:
        disco = tmp_path / "disco"
        write_disco(disco, "web", up.port)
        async with running_daemon(fs_config(disco, server_extra="    clearContext: true")) as d:
            stream = await trio.open_tcp_stream("127.0.0.1", d.port("out"))
            async with stream:
                await stream.send_all(
                    b"GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
                )
                data = await _read_until(stream, b"\r\n\r\n")
                head = data.split(b"\r\n\r\n")[0].lower()
                assert head.startswith(b"http/1.1 101"), head
                assert b"upgrade: websocket" in head, head
                assert b"\r\nl5d-" not in head, head
                await stream.send_all(b"frame")
                assert (await _read_until(stream, b"frame")).endswith(b"frame")


async def _raw_upstream(answer: bytes, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """A loopback upstream that answers every request head with ``answer`` (raw bytes)."""

    async def handle(stream: trio.SocketStream) -> None:
        buf = b""
        with trio.move_on_after(SAFETY):
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    buf += chunk
                buf = buf.split(b"\r\n\r\n", 1)[1]
                await stream.send_all(answer)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def test_clear_context_interim_answers_and_trailers_carry_no_l5d_fields(tmp_path: Path) -> None:
    """The interim (1xx) answers a clearContext server passes on and the trailers of a chunked
    response lose their ``l5d-*`` fields too (a downstream proxy's), as its response heads do; the
    other fields stay."""
    answer = (
        b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\nl5d-err: secret%20dtab\r\n\r\n"
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n"
        b"4\r\nbody\r\n0\r\nx-sum: 7\r\nl5d-success-class: 0.0\r\n\r\n"
    )
    async with trio.open_nursery() as nursery:
        port = await nursery.start(_raw_upstream, answer)
        disco = tmp_path / "disco"
        write_disco(disco, "web", port)
        async with running_daemon(fs_config(disco, server_extra="    clearContext: true")) as d:
            stream = await trio.open_tcp_stream("127.0.0.1", d.port("out"))
            async with stream:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: web\r\nTE: trailers\r\n\r\n")
                data = b""
                with trio.fail_after(SAFETY):
                    while b"\r\n0\r\n" not in data or not data.endswith(b"\r\n\r\n"):
                        chunk = await stream.receive_some(65536)
                        assert chunk, data
                        data += chunk
        nursery.cancel_scope.cancel()
    text = data.lower()
    assert text.startswith(b"http/1.1 103"), text
    assert b"link: </a.css>" in text and b"x-sum: 7" in text and b"body" in text, text
    assert b"l5d-" not in text, text


async def test_a_retry_backoff_is_no_attempt_of_the_client(tmp_path: Path) -> None:
    """Each attempt is a request of the client, and only an attempt is: while the router waits out a
    retry's backoff nothing is in flight to the client (its ``pending`` was 1), the next attempt's
    latency starts when it is sent (it included the backoff), and a request whose client leaves
    during the backoff is counted as the service's 499 but as no further request of the client (the
    client counted a 499 attempt that was never made)."""
    up = AlwaysUnavailable()
    async with serving(up.handle) as port:
        write_disco(tmp_path / "disco", "web", port)
        service = (
            "    responseClassifier: {kind: io.l5d.http.retryableAll5XX}\n"
            "    retries: {backoff: {kind: constant, ms: 30000}}"
        )
        async with running_daemon(cfg(tmp_path / "disco", service=service)) as d:
            with socket.create_connection(("127.0.0.1", d.port("out"))) as s:
                s.sendall(b"GET /gone HTTP/1.1\r\nHost: web\r\n\r\n")
                with trio.fail_after(SAFETY):
                    while True:  # the first attempt answered and counted: the backoff has begun
                        m = await metrics(d)
                        if m.get(f"{FS_CLIENT}/requests", 0) == 1:
                            break
                        await trio.sleep(0.05)
                assert m[f"{FS_CLIENT}/pending"] == 0, {k: v for k, v in m.items() if "client" in k}
            with trio.fail_after(SAFETY):
                while m.get("rt/out/service/svc/web/status/499", 0) == 0:
                    await trio.sleep(0.2)
                    m = await metrics(d)
    assert [t for t, _ in up.requests] == ["/gone"]
    assert m[f"{FS_CLIENT}/requests"] == 1 and m[f"{FS_CLIENT}/status/503"] == 1, m
    assert m.get(f"{FS_CLIENT}/status/499", 0) == 0, {k: v for k, v in m.items() if "client" in k}
    assert m[f"{FS_CLIENT}/pending"] == 0


async def test_a_request_its_client_abandoned_is_no_success(tmp_path: Path) -> None:
    """A request cancelled because its client left (499) is neither a failure nor a success: an
    upstream that hangs every request while clients give up on their side showed a success rate of
    100% (each abandoned request counted in ``success``) on the server, the service and the client
    -- a total outage as a healthy service on every dashboard."""
    async with recorder() as (up, port):
        write_disco(tmp_path / "disco", "web", port)
        async with running_daemon(fs_config(tmp_path / "disco")) as d:
            with socket.create_connection(("127.0.0.1", d.port("out"))) as s:
                s.sendall(b"GET /hold HTTP/1.1\r\nHost: web\r\n\r\n")
                with trio.fail_after(SAFETY):
                    await up.holding.wait()
            m = await metrics(d)
            with trio.fail_after(SAFETY):
                while m.get("rt/out/service/svc/web/status/499", 0) == 0:
                    await trio.sleep(0.2)
                    m = await metrics(d)
            server = next(k.rsplit("/", 1)[0] for k in m if k.startswith("rt/out/server/"))
    for prefix in ("rt/out/service/svc/web", FS_CLIENT, server):
        assert m[f"{prefix}/requests"] == 1 and m[f"{prefix}/status/499"] == 1, prefix
        assert m.get(f"{prefix}/success", 0) == 0, prefix
        assert m.get(f"{prefix}/failures", 0) == 0, prefix
        assert m[f"{prefix}/pending"] == 0, prefix


async def test_an_h2_stream_its_client_reset_is_a_499_not_a_proxy_failure() -> None:
    """An h2 client that cancels its stream (RST_STREAM CANCEL: a gRPC deadline, a user who gave up)
    while the request waits for the upstream left as an HTTP/1.1 client that closes its connection
    does: a 499, no failure of anyone's. It was counted as a 502 ``proxy/internal`` failure on the
    server, the service and the client, so ``hostproxy wtf`` blamed the proxy for its callers'
    deadlines."""
    app = App()
    upstream = H2Server(app.handle, H2ServerParams())
    async with trio.open_nursery() as nursery:
        [(_, port)] = await nursery.start(upstream.serve)
        async with (
            running_daemon(h2_router(f"/svc => /$/inet/127.0.0.1/{port};")) as d,
            RawClient.connect(d.port("h2")) as c,
        ):
            await c.start()
            sid = await c.request("/hang", port)
            with trio.fail_after(SAFETY):
                while not app.requests:
                    await trio.sleep(0.01)
            c.conn.reset_stream(sid, error_code=CANCEL)
            await c.flush()
            with trio.fail_after(SAFETY):
                await app.cancelled.wait()
                while True:
                    m = await metrics(d)
                    if m.get(f"rt/h2/service/svc/127.0.0.1:{port}/requests"):
                        break
                    await trio.sleep(0.05)
            # The connection serves on.
            sid = await c.request("/", port)
            assert (await c.response(sid))[0] == 200
        nursery.cancel_scope.cancel()
    server = next(k.rsplit("/", 1)[0] for k in m if k.startswith("rt/h2/server/"))
    for prefix in (f"rt/h2/service/svc/127.0.0.1:{port}", f"rt/h2/client/$/inet/127.0.0.1/{port}", server):
        assert m[f"{prefix}/status/499"] == 1, (prefix, {k: v for k, v in m.items() if k.startswith(prefix)})
        assert m.get(f"{prefix}/failures", 0) == 0, prefix
        assert m.get(f"{prefix}/success", 0) == 0, prefix
