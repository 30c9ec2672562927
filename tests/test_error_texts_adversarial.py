"""Adversarial checks of error texts and other request-path answers: defects each shown failing
before its fix.

- Error texts sent in ``l5d-err`` are Latin-1 (URL-encoded); a sign outside it (``…``) arrives as
  ``?``. The 400 for a request target of no HTTP/1.1 form said the target must be a path
  ``('/?')`` (a query, not a path), and the 503 for a daemon out of file descriptors pointed at
  ``/admin/metrics.json ?/connections``: the header misquoted the very advice the body gives.
"""

from __future__ import annotations

import errno
import time
from typing import Any
from urllib.parse import unquote_plus

import trio
import trio.testing
from structlog.testing import capture_logs
from upstreams import running_proxy, running_upstream

from hostproxy import router as router_mod
from hostproxy.config.validate import load_config
from hostproxy.diagnose import Snapshot, diagnose
from hostproxy.http import server as server_mod
from hostproxy.http.errors import out_of_resources, response_for_exception
from hostproxy.http.message import Body, Headers, Request, Response
from hostproxy.metrics import MetricsRegistry
from tests.routerstub import StubPool, conn_for, stub_router
from tests.test_server_listening import FakeListener, FakeServer


async def _raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        out = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                out += chunk
        return out


def _l5d_err_and_body(raw: bytes) -> tuple[str, str]:
    head, body = raw.split(b"\r\n\r\n", 1)
    (err,) = [
        line.split(b":", 1)[1].strip() for line in head.split(b"\r\n") if line.lower().startswith(b"l5d-err:")
    ]
    return unquote_plus(err.decode("ascii"), encoding="iso-8859-1"), body.decode("utf-8")


async def test_a_bad_request_target_l5d_err_says_what_the_body_says() -> None:
    """The 400 for ``other/web`` (and for a target past 64 characters, shown cut) reads the same in
    ``l5d-err`` as in the body: no sign turned into ``?``."""
    async with running_upstream() as up, running_proxy(up.port) as proxy:
        for target in (b"other/web", b"x" * 100):
            out = await _raw_exchange(
                proxy.port, b"GET " + target + b" HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"
            )
            assert out.startswith(b"HTTP/1.1 400"), out
            err, body = _l5d_err_and_body(out)
            assert err == body, (err, body)
            assert "('/?')" not in err, err


def test_out_of_descriptors_l5d_err_says_what_the_body_says() -> None:
    err = out_of_resources({errno.EMFILE}, "10.0.0.7:8080")
    assert err is not None
    response = response_for_exception(err)
    (value,) = response.headers.get_all(b"l5d-err")
    said = unquote_plus(value.decode("ascii"), encoding="iso-8859-1")
    assert said == str(err), said
    assert "?/connections" not in said, said


_STATIC_CFG = """
routers:
- protocol: http
  label: capped
  dtab: /svc => /$/inet/127.0.0.1/9001;
  service:
    kind: io.l5d.static
    configs:
    - prefix: /svc/a
      totalTimeoutMs: 1000
    - prefix: /svc/b
      responseClassifier: {kind: io.l5d.http.retryableAll5XX}
    - prefix: /svc/c
      totalTimeoutMs: 3000
  servers: [{ip: 127.0.0.1, port: 4140}]
"""


class _Unavailable(StubPool):
    """Every request: 503; counts what reached it."""

    calls = 0

    async def request(self, req: Request) -> Response:
        await trio.lowlevel.checkpoint()
        _Unavailable.calls += 1
        return Response(503, b"Service Unavailable", Headers(), Body.from_bytes(b"down"))


def test_services_past_every_cap_keep_their_own_classifier(monkeypatch: Any) -> None:
    """Past the services a router keeps and past the sets of params whose policies it keeps, every
    service shared the policy of whichever params came first: a POST to a service configured with the
    default nonRetryable5XX was retried under another service's retryableAll5XX (and the other way,
    a service's own retryable classifier was ignored). They now share only the retry budget."""
    monkeypatch.setattr(router_mod, "MAX_SERVICE_ENTRIES", 0)
    monkeypatch.setattr(router_mod, "MAX_OVERFLOW_POLICIES", 1)
    monkeypatch.setattr(_Unavailable, "calls", 0)

    def post(host: bytes) -> Request:
        return Request("POST", "/", Headers([(b"host", host)]), Body.empty(), authority=host.decode())

    async def main() -> list[int]:
        cfg = load_config(_STATIC_CFG, source="test").routers[0]
        conn = conn_for(cfg)
        calls = []
        async with trio.open_nursery() as nursery:
            router = stub_router(cfg, nursery, _Unavailable, metrics=MetricsRegistry(time.monotonic))
            for name in (b"a", b"b", b"c"):
                before = _Unavailable.calls
                assert (await router.handle(post(name), conn)).status == 503
                calls.append(_Unavailable.calls - before)
            nursery.cancel_scope.cancel()
        return calls

    a, b, c = trio.run(main)
    assert a == 1 and b > 1, (a, b, c)  # nonRetryable5XX: tried once; retryableAll5XX: retried
    assert c == 1, f"a POST under nonRetryable5XX was sent {c} times"


async def test_a_websocket_upgrade_that_also_offers_h2c_is_tunnelled_without_h2c() -> None:
    """``Upgrade: websocket, h2c`` offers two protocols; refusing h2c (no HTTP/2 connection past the
    proxy) dropped the whole upgrade, so the WebSocket the client also asked for never reached the
    upstream. The h2c token alone is dropped: the upstream sees ``Upgrade: websocket`` and the
    tunnel works."""
    async with running_upstream() as up, running_proxy(up.port) as proxy:
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with stream:
            await stream.send_all(
                b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                b"Upgrade: websocket, h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            data = b""
            with trio.fail_after(10):
                while b"\r\n\r\n" not in data:
                    chunk = await stream.receive_some(65536)
                    assert chunk, data
                    data += chunk
            assert data.lower().startswith(b"http/1.1 101"), data
            await stream.send_all(b"frame-1")
            got = data.split(b"\r\n\r\n", 1)[1]
            with trio.fail_after(10):
                while len(got) < 7:
                    got += await stream.receive_some(65536)
            assert got == b"frame-1"
        first = up.requests[0]
        assert first.header("upgrade") == "websocket" and first.header("http2-settings") is None


async def test_a_drain_that_starts_during_a_lingering_close_shortens_it(monkeypatch: Any) -> None:
    """A draining server lingers at most ``LINGER_DRAINING_S`` after an early answer, so the drain is
    not held by a client still sending its body; but only a linger that started after the drain was
    shortened: one already under way when the drain began went on for its whole ``LINGER_S`` (made
    an hour here, so only the drain can end it) while the client kept sending."""
    monkeypatch.setattr(server_mod, "LINGER_S", 3600.0)

    async def early(request: Request, info: Any, pool: Any) -> Response:  # answers, body unread
        return Response(403, b"Forbidden", Headers([(b"content-length", b"2")]), Body.from_bytes(b"no"))

    async with running_upstream() as up, running_proxy(up.port, handler=early) as proxy:
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with stream:
            await stream.send_all(
                b"POST /up HTTP/1.1\r\nHost: web\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 1000
            )
            data = b""
            with trio.fail_after(10):
                while b"\r\n\r\nno" not in data:  # the 403; the client goes on sending its body
                    data += await stream.receive_some(65536)
            assert data.startswith(b"HTTP/1.1 403"), data
            sent = 0
            with trio.fail_after(20):  # the client keeps sending: the server lingers until it closes
                try:
                    while True:
                        await stream.send_all(b"x" * 100)
                        sent += 1
                        if sent == 30:  # (lingering by then: the drain for reuse gives up after 1 s)
                            proxy.server.drain()
                        await trio.sleep(0.1)
                except trio.BrokenResourceError:
                    pass
            assert sent > 30


async def test_a_request_refused_before_routing_gets_its_answer_while_sending_its_body() -> None:
    """A request refused before routing (a target of no HTTP/1.1 form, a proxy loop) with a body
    the client sends whole before reading, as ``http.client`` does: the server closed with the body
    unread, which resets the connection, so the client's send failed and the 400 and its ``l5d-err``
    were lost. It now lingers as for any other early answer, and says ``Connection: close``."""
    body = b"x" * (8 * 1024 * 1024)
    async with running_upstream() as up, running_proxy(up.port) as proxy:
        for head in (
            b"POST other/web HTTP/1.1\r\nHost: web\r\n",
            b"POST /up HTTP/1.1\r\nHost: web\r\nVia: " + b",".join([b"1.1 a"] * 1001) + b"\r\n",
        ):
            stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
            async with stream:
                with trio.fail_after(20):
                    await stream.send_all(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
                    data = b""
                    while chunk := await stream.receive_some(65536):
                        data += chunk
            assert data.startswith(b"HTTP/1.1 400"), data
            assert b"\r\nconnection: close\r\n" in data.lower(), data
        assert not up.requests


async def test_a_host_out_of_descriptors_is_not_told_to_raise_its_own_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``accept`` failing with ENFILE means the host's file table is full (``fs.file-max``), not
    hostproxy's own limit: the log line told to raise LimitNOFILE / ``ulimit -n``, which cannot help.
    (The listener is a stand-in: a real host cannot be made to run out of its file table here.)"""
    server = FakeServer()
    listener = FakeListener()
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, [listener])
            await listener.feed.send(OSError(errno.ENFILE, "Too many open files in system"))
            await listener.feed.send(OSError(errno.EBADF, "Bad file descriptor"))
    (failed,) = [e for e in logs if e["event"] == "fake.accept_failed"]
    assert "LimitNOFILE" not in failed["error"] and "fs.file-max" in failed["error"], failed


def test_a_server_on_ipv6_is_named_by_an_address_openssl_can_connect_to() -> None:
    """A server finding names the server as ``host:port``; for an IPv6 server that gave
    ``::1:4140``, which neither reads as an address nor works in the ``openssl s_client -connect``
    the next step proposes: it is ``[::1]:4140``."""
    srv = "rt/out/server/::1/4140"
    m = {
        f"{srv}/requests": 10,
        f"{srv}/failures": 0,
        f"{srv}/success": 10,
        f"{srv}/tls/handshakes": 10,
        f"{srv}/tls/handshake_failures": 30,
        f"{srv}/tls/handshake_failures/eof": 30,
    }
    (f,) = diagnose(Snapshot(m)).findings
    assert "server [::1]:4140 of router out" in f.verdict, f.verdict
    assert "openssl s_client -connect [::1]:4140`" in f.next_step, f.next_step


def test_an_address_the_host_cannot_use_beside_a_refusal_is_the_endpoints_failure() -> None:
    """A name such as ``localhost`` gives ``::1`` and ``127.0.0.1``; where IPv6 is off (many
    containers) the connect to ``::1`` fails with EADDRNOTAVAIL while ``127.0.0.1`` refuses: the
    upstream is down. That was taken for ephemeral ports used up (a 503 saying to widen
    ip_local_port_range, never counted against the endpoint); it is the endpoint's refusal."""
    assert out_of_resources({errno.EADDRNOTAVAIL, errno.ECONNREFUSED}, "localhost:8080") is None
    err = out_of_resources({errno.EADDRNOTAVAIL}, "localhost:8080")
    assert err is not None and "no local port is free" in str(err)


def test_a_refused_override_is_not_kept_as_the_names_last_binding_error() -> None:
    """``last_error`` in ``/admin/unbound.json`` is what a name's binding said, which ``wtf`` quotes for
    a name whose naming failed; a refused address override (cause identification, its own finding)
    used to overwrite it."""
    cfg_text = """
routers:
- protocol: http
  label: edge
  dtab: /svc => /$/inet/127.0.0.1/9001;
  servers: [{ip: 0.0.0.0, port: 4140}]
"""

    async def main() -> list[dict[str, Any]]:
        cfg = load_config(cfg_text, source="test").routers[0]
        conn = conn_for(cfg)
        async with trio.open_nursery() as nursery:
            router = stub_router(cfg, nursery, StubPool, metrics=MetricsRegistry(time.monotonic))
            req = Request(
                "GET",
                "/",
                Headers([(b"host", b"web"), (b"l5d-dtab", b"/svc/web=>/$/inet/169.254.169.254/80")]),
                Body.empty(),
                authority="web",
            )
            assert (await router.handle(req, conn)).status == 400
            nursery.cancel_scope.cancel()
        return router.scope.unbound_names.table()

    (row,) = trio.run(main)
    assert row["name"] == "/svc/web" and row["causes"] == {"identification": 1}
    assert row["last_error"] is None
