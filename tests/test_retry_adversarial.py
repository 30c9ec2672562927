"""Adversarial tests of retries, requeues, budgets and timeouts on the HTTP/1.1 path.

The real daemon in-process, real curl or raw sockets as the client, real upstreams on loopback. Each
test names the defect it guards against: what a request must never do (be lost, sent twice, spliced,
or turned into an unbounded number of attempts) and what the operator must be able to see.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from hostproxy.budget import BudgetConfig, RetryBudget
from hostproxy.config import ConfigError, load_config
from hostproxy.http.message import Body, Headers, Request, Response
from tests.daemonutil import curl, fs_config, running_daemon
from tests.test_lifecycle_helpers import write_disco
from tests.upstreams import closed_port, serving

FS_CLIENT = "rt/out/client/#/io.l5d.fs/web"  # the metrics prefix of the client of /svc/web
SAFETY = 20  # seconds: a safety net for every wait, never a timing assertion


def cfg(disco: Path, *, client: str = "", service: str = "") -> str:
    """``fs_config`` with a global client and service config; ``client``/``service``: extra lines (indent 4)."""
    return (
        fs_config(disco)
        + f"  client:\n    kind: io.l5d.global\n{client}\n  service:\n    kind: io.l5d.global\n{service}\n"
    )


async def metrics(d: object) -> dict[str, float]:
    return (await curl(f"{d.admin}/admin/metrics.json")).json()  # type: ignore[attr-defined,return-value]


class Recorder:
    """An upstream that records every request (target and body) and answers 200; a request to ``/hold``
    is answered only once ``release`` is set."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, bytes]] = []
        self.holding = trio.Event()
        self.release = trio.Event()

    async def handle(self, req: Request, conn: object) -> Response:
        body = await req.body.read_all(1 << 22)
        self.requests.append((req.target, body))
        if req.target == "/hold":
            self.holding.set()
            await self.release.wait()
        return Response(200, b"", Headers([]), Body.from_bytes(b"ok " + req.target.encode()))


@contextlib.asynccontextmanager
async def recorder() -> AsyncIterator[tuple[Recorder, int]]:
    r = Recorder()
    async with serving(r.handle) as port:
        try:
            yield r, port
        finally:
            r.release.set()


# -- requeues ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "max_waiters, status, cause, message",
    [
        # refused at once: maxWaiters already waiting
        (
            0,
            503,
            "overload",
            "connection pool for {ep} is full: 1 connections (maxSize) in use and 0 requests (maxWaiters) "
            "already waiting for one; raise client.hostConnectionPool.maxSize or maxWaiters, or add endpoints",
        ),
        # waited connectTimeoutMs for one of maxSize connections
        (
            1,
            502,
            "connect/timeout",
            "Unable to get a connection to {ep}: all 1 connections (maxSize) stayed in use for the connect "
            "timeout, 200 ms; raise client.hostConnectionPool.maxSize or connectTimeoutMs, or add endpoints",
        ),
    ],
)
async def test_a_request_refused_by_the_only_endpoints_full_pool_is_not_requeued_to_it(
    tmp_path: Path, max_waiters: int, status: int, cause: str, message: str
) -> None:
    """README: at ``maxSize`` a request waits for a connection *within the connect timeout*, and beyond
    ``maxWaiters`` it is refused at once. The client used to requeue such a refusal to the same, only
    endpoint up to 25 times: the request waited 26 connect timeouts instead of one (or spun through 26
    refusals), spent 25 tokens of the requeue budget that real connection failures need, and its 26
    failures had failure accrual mark the healthy (merely busy) endpoint dead."""
    async with recorder() as (up, port):
        write_disco(tmp_path / "disco", "web", port)
        client = (
            f"    connectTimeoutMs: 200\n    hostConnectionPool: {{maxSize: 1, maxWaiters: {max_waiters}}}"
        )
        async with running_daemon(cfg(tmp_path / "disco", client=client)) as d:
            url = f"http://127.0.0.1:{d.port('out')}"
            async with trio.open_nursery() as nursery:
                nursery.start_soon(curl, f"{url}/hold", "-H", "Host: web")
                with trio.fail_after(SAFETY):
                    await up.holding.wait()
                r = await curl(f"{url}/second", "-H", "Host: web")
                m = await metrics(d)
                up.release.set()
            assert r.status == status, (r.status, r.l5d_err)
            # The endpoint was reached; the pool is full: said so, with what to change (no "Unable to
            # establish connection", which sends an operator chasing a network fault).
            first_line = (r.l5d_err or "").split("\n")[0]
            assert first_line == message.format(ep=f"127.0.0.1:{port}"), r.l5d_err
            assert m[f"{FS_CLIENT}/failures/{cause}"] == 1
            # One attempt: nothing requeued, the requeue budget untouched (its 100-token reserve).
            assert m[f"{FS_CLIENT}/retries/budget"] == 100
            assert m[f"{FS_CLIENT}/failure_accrual/removals"] == 0
            assert m[f"{FS_CLIENT}/retries/requeues"] == 0
            assert [t for t, _ in up.requests] == ["/hold"]


@pytest.mark.parametrize(
    "args",
    [
        ("-H", "Transfer-Encoding: chunked", "--data-binary", "chunked body"),
        ("--data-binary", "x" * 40_000),  # a Content-Length past the retry buffer (16383): streamed
    ],
    ids=["chunked", "larger-than-retry-buffer"],
)
async def test_a_streamed_request_body_is_requeued_after_a_connect_failure(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    """README: "Requests that never reached an upstream are requeued on another endpoint within
    requeueBudget". A request whose body is streamed (chunked, or longer than the retry buffer) used to
    be answered 502 when its endpoint refused the connection, although neither its head nor a byte of its
    body had left: only in-memory bodies were requeued. Requeued, it is delivered once and whole."""
    async with recorder() as (up, port):
        with closed_port() as dead:
            write_disco(tmp_path / "disco", "web", dead, port)
            client = "    loadBalancer: {kind: roundRobin}\n    failureAccrual: {kind: none}"
            async with running_daemon(cfg(tmp_path / "disco", client=client)) as d:
                url = f"http://127.0.0.1:{d.port('out')}"
                answers = [await curl(f"{url}/r{i}", "-H", "Host: web", *args) for i in range(2)]
                m = await metrics(d)
    assert [(a.status, a.body, a.l5d_err) for a in answers] == [
        (200, b"ok /r0", None),
        (200, b"ok /r1", None),
    ]
    body = args[-1].encode()
    assert up.requests == [("/r0", body), ("/r1", body)]  # each delivered once, whole
    # Round robin over two endpoints: at least one of the two requests went to the dead one first.
    assert m[f"{FS_CLIENT}/retries/requeues"] >= 1
    assert f"{FS_CLIENT}/failures/connect/refused" not in m


# -- which request bodies can be retried ---------------------------------------------------------------


class FailsFirst(Recorder):
    """A :class:`Recorder` whose first answer is a 503."""

    async def handle(self, req: Request, conn: object) -> Response:
        resp = await super().handle(req, conn)
        return (
            Response(503, b"", Headers([]), Body.from_bytes(b"try again"))
            if len(self.requests) == 1
            else resp
        )


@pytest.mark.parametrize(
    "router_keys, size, retried",
    [
        ("  streamAfterContentLengthKB: 64\n", 40_000, True),  # buffered as configured: retried
        ("  streamingEnabled: false\n", 100_000, True),  # every body with a length is buffered
        ("", 8_000, False),  # the default, 5 KB, as Linkerd: longer bodies are streamed, never retried
        ("", 5 * 1024, True),
    ],
)
async def test_http_retry_buffer_is_stream_after_content_length_kb(
    tmp_path: Path, router_keys: str, size: int, retried: bool
) -> None:
    """README: ``streamAfterContentLengthKB`` — "Buffer bodies up to this size that have a
    Content-Length; stream larger ones" — and ``streamingEnabled``. Both were accepted and ignored: an
    HTTP/1.1 router kept bodies for retries up to a fixed 16383 bytes, so a 40 KB POST was never
    retried whatever the config said, and an 8 KB one was although Linkerd streams it. A buffered body is
    retried (and delivered whole each time), a streamed one is sent once."""
    up = FailsFirst()
    async with serving(up.handle) as port:
        write_disco(tmp_path / "disco", "web", port)
        service = "    responseClassifier: {kind: io.l5d.http.retryableAll5XX}"
        async with running_daemon(cfg(tmp_path / "disco", service=service) + router_keys) as d:
            body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
            (tmp_path / "body").write_bytes(body)
            r = await curl(
                f"http://127.0.0.1:{d.port('out')}/post",
                "-H",
                "Host: web",
                "--data-binary",
                f"@{tmp_path / 'body'}",
            )
            m = await metrics(d)
    if retried:
        assert (r.status, r.body) == (200, b"ok /post"), (r.status, r.l5d_err)
        assert up.requests == [("/post", body), ("/post", body)]
        assert m["rt/out/service/svc/web/retries/total"] == 1
    else:
        assert (r.status, r.body) == (503, b"try again")
        assert up.requests == [("/post", body)]
        assert m.get("rt/out/service/svc/web/retries/total", 0) == 0


@contextlib.asynccontextmanager
async def answers_before_the_body(close: bool) -> AsyncIterator[int]:
    """A raw upstream that answers ``413`` as soon as a request head arrived, reading none of the body;
    then closes the connection (``close``) or keeps it open without reading on. Yields its port."""

    async def conn(stream: trio.SocketStream) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = await stream.receive_some(65536)
            if not data:
                return
            buf += data
        await stream.send_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\n\r\ntoo big!")
        if close:
            await stream.aclose()
        else:
            await trio.sleep_forever()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, conn, listeners)
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("close", [True, False], ids=["then-closes", "then-stops-reading"])
async def test_a_large_buffered_body_still_hears_an_answer_sent_before_the_body_was_read(
    tmp_path: Path, close: bool
) -> None:
    """A body kept for retries is in memory, and an in-memory body used to be written whole, with its
    head, before the response was read. Fine for a few KB; but a large one (``streamingEnabled:
    false``, a large ``streamAfterContentLengthKB``) to an upstream that answers at once without
    reading it turned the upstream's answer into a 502 (it closed: the write failed) or a request
    that hung (it stopped reading). A large in-memory body is written alongside, as a streamed one is."""
    async with answers_before_the_body(close) as port:
        write_disco(tmp_path / "disco", "web", port)
        async with running_daemon(cfg(tmp_path / "disco") + "  streamingEnabled: false\n") as d:
            (tmp_path / "body").write_bytes(b"x" * 1_000_000)
            r = await curl(
                f"http://127.0.0.1:{d.port('out')}/up",
                "-H",
                "Host: web",
                "--data-binary",
                f"@{tmp_path / 'body'}",
                timeout=SAFETY,
            )
    assert (r.status, r.body, r.l5d_err) == (413, b"too big!", None)


async def test_an_answer_before_a_streamed_body_was_read_is_not_a_connection_failure(tmp_path: Path) -> None:
    """A streamed request body (past ``streamAfterContentLengthKB``) to an upstream that answers at once
    and stops reading: the pool lets the rest of the body go once the response ended, and the server
    then tried to drain that closed body to keep the client connection: ``RuntimeError``, the client
    connection counted in ``connection_failures`` and logged as a crash with a traceback. The answer
    reaches the client, and the connection simply closes (the rest of its body is still on it)."""
    async with answers_before_the_body(close=False) as port:
        write_disco(tmp_path / "disco", "web", port)
        async with running_daemon(cfg(tmp_path / "disco")) as d:
            # (Larger than the socket buffers between the proxy and the upstream can hold.)
            (tmp_path / "body").write_bytes(b"x" * 8_000_000)
            url = f"http://127.0.0.1:{d.port('out')}/up"
            r = await curl(url, "-H", "Host: web", "--data-binary", f"@{tmp_path / 'body'}", timeout=SAFETY)
            state = (await curl(f"{d.admin}/overload.json")).json()
    assert (r.status, r.body, r.l5d_err) == (413, b"too big!", None)
    (server,) = [v for k, v in state["servers"].items() if k.startswith("out ")]  # type: ignore[index]
    assert server["connection_failures"] == 0, server


async def test_a_client_gone_before_interim_responses_frees_the_upstream_connection(tmp_path: Path) -> None:
    """The client resets its connection while its request waits for the upstream, which then answers
    ``103 Early Hints`` and a streamed ``200`` that it keeps open. Writing the interim response to the
    gone client failed before the final response was written, and nothing let the response body go: the
    upstream connection stayed checked out for good (one pool slot lost per such request; with
    ``maxSize`` the pool ends up full). It is closed, as it is when there is no interim response."""
    head_in = trio.Event()
    answer = trio.Event()
    upstream_closed = trio.Event()

    async def conn(stream: trio.SocketStream) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += await stream.receive_some(65536)
        head_in.set()
        await answer.wait()
        await stream.send_all(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        with contextlib.suppress(trio.BrokenResourceError):
            while await stream.receive_some(65536):
                pass
        upstream_closed.set()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, conn, listeners)
        write_disco(tmp_path / "disco", "web", listeners[0].socket.getsockname()[1])
        async with running_daemon(cfg(tmp_path / "disco")) as d:
            client = trio.socket.socket()
            await client.connect(("127.0.0.1", d.port("out")))
            await client.send(b"GET /hints HTTP/1.1\r\nHost: web\r\n\r\n")
            with trio.fail_after(SAFETY):
                await head_in.wait()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # a reset: the proxy's next write to it fails
            answer.set()
            with trio.move_on_after(SAFETY):
                await upstream_closed.wait()
            m = await metrics(d)
        nursery.cancel_scope.cancel()
    assert upstream_closed.is_set(), "the upstream connection was never let go"
    assert m[f"{FS_CLIENT}/connections"] == 0


async def test_a_close_delimited_response_cut_by_the_upstream_ends_in_a_reset(tmp_path: Path) -> None:
    """To an HTTP/1.0 client a response of unknown length is delimited by the end of the connection.
    When the upstream failed mid-body, the proxy closed that connection in an orderly way (FIN), which
    is exactly how such a response ends when it is whole: the client took the cut body for the
    complete one. The connection is now reset, so the client sees the response was broken."""
    first_chunk_in = trio.Event()

    async def conn(stream: trio.SocketStream) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = await stream.receive_some(65536)
            if not data:
                return
            buf += data
        # A chunked body cut short: the upstream closes before its last chunk (once the client has
        # the head and the first chunk, so that the head was surely sent on).
        await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await first_chunk_in.wait()
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, conn, listeners)
        write_disco(tmp_path / "disco", "web", listeners[0].socket.getsockname()[1])
        async with running_daemon(cfg(tmp_path / "disco")) as d:
            client = trio.socket.socket()
            await client.connect(("127.0.0.1", d.port("out")))
            await client.send(b"GET /cut HTTP/1.0\r\nHost: web\r\n\r\n")
            received, ending = b"", "clean end"
            with trio.fail_after(SAFETY):
                try:
                    while data := await client.recv(65536):
                        received += data
                        if received.endswith(b"\r\n\r\nhello"):
                            first_chunk_in.set()
                except ConnectionResetError:
                    ending = "reset"
            client.close()
        nursery.cancel_scope.cancel()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length" not in head.lower(), head
    assert body == b"hello"
    assert ending == "reset", f"a cut response ended like a whole one: {received!r}"


# -- overload ------------------------------------------------------------------------------------------


class HeldBody:
    """A response body source that sends nothing until ``release`` is set, then ``end`` and its end."""

    trailers = None

    def __init__(self) -> None:
        self.release = trio.Event()
        self.sent = False

    async def read_chunk(self) -> bytes | None:
        if self.sent:
            return None
        await self.release.wait()
        self.sent = True
        return b"end"

    async def aclose(self) -> None:
        self.release.set()


async def test_router_max_concurrent_requests_counts_a_response_still_streaming(tmp_path: Path) -> None:
    """README: the router's ``maxConcurrentRequests`` caps "requests in flight on the whole router". It
    stopped counting a request once the response head was returned, so any number of long streamed
    responses (downloads, event streams) were admitted past the cap, while a server's own
    ``maxConcurrentRequests`` counts them to their end. Now the router counts a request until its
    response body ended, and not a moment longer."""
    bodies: list[HeldBody] = []

    async def handle(req: Request, conn: object) -> Response:
        if req.target == "/stream":
            bodies.append(HeldBody())
            return Response(200, b"", Headers([]), Body(bodies[-1], None))
        return Response(200, b"", Headers([]), Body.from_bytes(b"quick"))

    async with serving(handle) as port:
        write_disco(tmp_path / "disco", "web", port)
        async with running_daemon(cfg(tmp_path / "disco") + "  maxConcurrentRequests: 1\n") as d:
            url = f"http://127.0.0.1:{d.port('out')}"
            streamed: list[object] = []
            async with trio.open_nursery() as nursery:

                async def stream() -> None:
                    streamed.append(await curl(f"{url}/stream", "-H", "Host: web", timeout=SAFETY))

                nursery.start_soon(stream)
                with trio.fail_after(SAFETY):
                    while not bodies:
                        await trio.sleep(0.01)
                during = await curl(f"{url}/quick", "-H", "Host: web")
                bodies[0].release.set()
            after = await curl(f"{url}/quick", "-H", "Host: web")
            state = (await curl(f"{d.admin}/overload.json")).json()
    assert (during.status, during.l5d_err) == (503, "router out is at maxConcurrentRequests=1; retry later")
    assert [(r.status, r.body) for r in streamed] == [(200, b"end")]  # type: ignore[attr-defined]
    assert (after.status, after.body) == (200, b"quick")
    assert state["routers"]["out"]["in_flight"] == 0  # type: ignore[index]


# -- budgets and backoffs the daemon cannot build are refused when the config loads --------------------


@pytest.mark.parametrize(
    "section, fragment, error",
    [
        (
            "service",
            "retries: {budget: {ttlSecs: 61}}",
            "routers[0].service.retries.budget.ttlSecs: must be between 1 and 60 (seconds), got 61",
        ),
        (
            "client",
            "requeueBudget: {ttlSecs: 120}",
            "routers[0].client.requeueBudget.ttlSecs: must be between 1 and 60 (seconds), got 120",
        ),
        (
            "service",
            "retries: {backoff: {kind: jittered, minMs: 0, maxMs: 10}}",
            "routers[0].service.retries.backoff.minMs: must be greater than 0, got 0",
        ),
        (
            "service",
            "retries: {backoff: {kind: jittered, minMs: 100, maxMs: 10}}",
            "routers[0].service.retries.backoff.maxMs: must be >= minMs (100), got 10",
        ),
        (
            "client",
            "failureAccrual: {kind: io.l5d.consecutiveFailures, backoff: {kind: jittered, minMs: 50, maxMs: 5}}",
            "routers[0].client.failureAccrual.backoff.maxMs: must be >= minMs (50), got 5",
        ),
        (
            "client",
            "loadBalancer: {kind: aperture, lowLoad: 2.0, highLoad: 1.0}",
            "routers[0].client.loadBalancer.lowLoad: must be below highLoad (1.0), got 2.0",
        ),
    ],
)
def test_a_budget_or_backoff_that_cannot_be_built_is_refused_at_load(
    section: str, fragment: str, error: str
) -> None:
    """These values passed config validation (``ttlSecs`` only had to be positive, ``minMs`` 0 or more,
    and nothing compared ``maxMs`` with ``minMs`` or ``lowLoad`` with ``highLoad``), and then the
    budget, backoff or balancer refused them when the router built it for the first request: every
    request of that service or client was answered 502 ``proxy/internal`` with a traceback in the log.
    Now the config does not load, and the error names the key, the rule and the value."""
    text = (
        "routers:\n- protocol: http\n  dtab: /svc => /#/io.l5d.fs;\n  servers:\n  - port: 0\n"
        f"  {section}:\n    kind: io.l5d.global\n    {fragment}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(text, source="t.yaml")
    assert [i.format() for i in info.value.errors] == [f"t.yaml:8: {error}"]


@pytest.mark.parametrize("percent", [1.0e-320])
def test_a_tiny_percent_can_retry_builds_a_budget_of_its_reserve(percent: float) -> None:
    """``percentCanRetry`` may be anything from 0 to 1000. One so small that 1000 / percent overflows
    to infinity made building the budget raise ``OverflowError`` — every request of the service was
    answered 502 proxy/internal. The withdrawal saturates (as Finagle's Int does): deposits count for
    nothing, and the ``minRetriesPerSec × ttlSecs`` reserve is what can be spent."""
    now = [0.0]
    budget = RetryBudget(
        BudgetConfig(ttl_secs=10, min_retries_per_sec=1, percent_can_retry=percent), lambda: now[0]
    )
    for _ in range(1000):
        budget.deposit()
    assert [budget.try_withdraw() for _ in range(11)] == [True] * 10 + [False]


class AlwaysUnavailable(Recorder):
    """A :class:`Recorder` that answers every request 503."""

    async def handle(self, req: Request, conn: object) -> Response:
        await super().handle(req, conn)
        return Response(503, b"", Headers([]), Body.from_bytes(b"try again"))


async def test_retries_stop_once_the_client_has_gone(tmp_path: Path) -> None:
    """A client that closed its connection waits for nothing, yet its request went on being retried
    (every backoff, as long as the budget lasted), loading an upstream that was already failing for a
    response no one would read. A retry is now granted only while the client's connection is open
    (``retries/client_gone`` in the service's retry state counts the ones not made)."""
    up = AlwaysUnavailable()
    async with serving(up.handle) as port:
        write_disco(tmp_path / "disco", "web", port)
        service = (
            "    responseClassifier: {kind: io.l5d.http.retryableAll5XX}\n"
            "    retries: {backoff: {kind: constant, ms: 200}}"
        )
        async with running_daemon(cfg(tmp_path / "disco", service=service)) as d:
            # A client that stays: its request is retried (the budget allows it).
            r = await curl(f"http://127.0.0.1:{d.port('out')}/stays", "-H", "Host: web")
            assert r.status == 503
            stayed = len(up.requests)
            assert stayed > 1, up.requests
            # A client that sends its request and closes at once.
            with socket.create_connection(("127.0.0.1", d.port("out"))) as s:
                s.sendall(b"GET /gone HTTP/1.1\r\nHost: web\r\n\r\n")
            with trio.fail_after(SAFETY):
                while not any(t == "/gone" for t, _ in up.requests):
                    await trio.sleep(0.01)
            await trio.sleep(1.0)  # five backoffs: retries, had there been any, would have come
            gone = [t for t, _ in up.requests if t == "/gone"]
            assert gone == ["/gone"], up.requests
            state = (await curl(f"{d.admin}/overload.json")).json()
            m = await metrics(d)
    assert state["routers"]["out"]["retries"]["/svc/web"]["client_gone"] == 1, state["routers"]["out"]
    assert m["rt/out/service/svc/web/retries/total"] == stayed - 1
