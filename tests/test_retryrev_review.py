"""Review of response classification, retries, retry budgets and timeouts (HTTP/1.1 and h2).

Each test names the defect it guards against. Real upstreams on loopback, real curl as the client.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest
import trio

from hostproxy.causes import Cause
from hostproxy.classifier import HTTP_CLASSIFIERS, ResponseClass
from hostproxy.http.message import Body, Headers, Request, Response
from tests.daemonutil import curl, fs_config, running_daemon
from tests.grpc_fixtures.rawh2 import RawClient
from tests.test_lifecycle_helpers import write_disco
from tests.upstreams import serving


class Scripted:
    """An upstream answering its n-th request with ``statuses[n]`` (the last one from then on); records
    each request's method and body."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.seen: list[tuple[str, bytes]] = []

    async def handle(self, req: Request, conn: object) -> Response:
        body = await req.body.read_all(1 << 22)
        n = len(self.seen)
        self.seen.append((req.method, body))
        status = self.statuses[min(n, len(self.statuses) - 1)]
        return Response(status, b"", Headers([]), Body.from_bytes(f"attempt {n}".encode()))


@contextlib.asynccontextmanager
async def scripted(statuses: list[int]) -> AsyncIterator[tuple[Scripted, int]]:
    up = Scripted(statuses)
    async with serving(up.handle) as port:
        yield up, port


def cfg(disco: Path, classifier: str, *, service: str = "", client: str = "", backoff_ms: int = 0) -> str:
    """One router ``out`` on the fs namer; ``service``/``client``: extra keys (indented by 4; by 6 for
    keys of ``service.retries``)."""
    return fs_config(disco) + (
        f"  client:\n    kind: io.l5d.global\n    failureAccrual: {{kind: none}}\n{client}"
        f"  service:\n    kind: io.l5d.global\n    responseClassifier: {{kind: {classifier}}}\n"
        f"    retries:\n      backoff: {{kind: constant, ms: {backoff_ms}}}\n{service}"
    )


# -- methods --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(HTTP_CLASSIFIERS))
@pytest.mark.parametrize(
    "method", ["get", "Get", "head", "put", "delete", "post", "Patch", "PURGE", "CONNECT"]
)
def test_a_method_is_retryable_only_in_its_own_spelling(kind: str, method: str) -> None:
    """HTTP methods are case-sensitive (RFC 9110 section 9.1) and hostproxy forwards the method as the
    client spelled it: a ``get`` reaches the upstream as ``get``, a method that is not GET, which many
    servers take for a write (anything but ``GET`` goes to the update branch). The classifiers
    upper-cased the method before looking it up, so a 5XX answer to ``get`` or ``delete`` was retried
    as if it were a GET or a DELETE. (Finagle matches the standard names whatever their case, but it
    also sends them in upper case, so the upstream sees the method it classified.)"""
    c = HTTP_CLASSIFIERS[kind]
    expected = ResponseClass.SUCCESS if c.all_successful else ResponseClass.FAILURE
    assert c.classify(method, 503, None) is expected
    assert c.classify(method, None, Cause.UPSTREAM_RESET) is expected


async def test_a_lowercase_get_answered_503_is_not_sent_again(tmp_path: Path) -> None:
    """End to end: ``curl -X get`` through a router with ``retryableRead5XX`` to an upstream that answers
    503 then 200. The upstream saw ``get`` twice (the 503 retried); it is sent once and its 503 passed
    back, while ``GET`` is still retried."""
    for method, calls, status in [("get", 1, 503), ("GET", 2, 200)]:
        async with scripted([503, 200]) as (up, port):
            write_disco(tmp_path / "disco", "web", port)
            async with running_daemon(cfg(tmp_path / "disco", "io.l5d.http.retryableRead5XX")) as d:
                r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web", "-X", method)
        assert [m for m, _ in up.seen] == [method] * calls
        assert r.status == status


# -- h2: a body kept as it streams ----------------------------------------------------------------------


class EarlyAnswer:
    """An h2c upstream (the ``h2`` library over trio) that answers its first stream ``503`` as soon as
    the request head arrives, and keeps taking that stream's body; later streams are answered ``200 ok``
    once their body ends. Records each stream's body (once it ended) and the resets it receives."""

    def __init__(self) -> None:
        self.streams = 0
        self.answered = trio.Event()
        self.bodies: list[bytes] = []
        self.resets: list[int] = []

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        async with trio.open_nursery() as nursery:
            task_status.started(listeners[0].socket.getsockname()[1])
            await trio.serve_listeners(self._conn, listeners, handler_nursery=nursery)

    async def _conn(self, stream: trio.SocketStream) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        await stream.send_all(conn.data_to_send())
        bodies: dict[int, bytearray] = {}
        while data := await stream.receive_some(65536):
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    self.streams += 1
                    bodies[ev.stream_id] = bytearray()
                    if self.streams == 1:
                        conn.send_headers(ev.stream_id, [(b":status", b"503")], end_stream=True)
                        self.answered.set()
                elif isinstance(ev, h2.events.DataReceived):
                    bodies[ev.stream_id] += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    self.bodies.append(bytes(bodies.pop(ev.stream_id)))
                    if ev.stream_id != 1:
                        conn.send_headers(ev.stream_id, [(b":status", b"200")])
                        conn.send_data(ev.stream_id, b"ok", end_stream=True)
                elif isinstance(ev, h2.events.StreamReset):
                    self.resets.append(ev.stream_id)
            if out := conn.data_to_send():
                await stream.send_all(out)


async def test_an_h2_body_that_outgrows_the_retry_buffer_during_the_backoff_is_still_retried_whole() -> None:
    """An h2 request body without a length is kept as it streams, and a retry is granted while what was
    sent of it fits ``retryBufferSize``. The attempt that failed went on sending the body meanwhile (its
    upstream answered 503 early and kept reading), so a body that grew past the buffer during the
    retry's backoff made the retry fail on an assertion: ``502 Internal proxy error: AssertionError: no
    attempt may start once the body cannot be replayed``. The attempt granted a retry stops sending at
    once; the retry replays what was kept and sends the rest: the whole body arrives, and the answer is
    the retry's."""
    origin = EarlyAnswer()
    async with trio.open_nursery() as nursery:
        up = await nursery.start(origin.serve)
        yaml = f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: h2
  label: h2
  dtab: /svc => /$/inet/127.0.0.1/{up};
  identifier: {{kind: io.l5d.header.path, segments: 1}}
  service:
    responseClassifier: {{kind: io.l5d.h2.retryableAll5XX}}
    retries: {{backoff: {{kind: constant, ms: 3000}}}}
  servers: [{{ip: 127.0.0.1, port: 0}}]
"""
        async with running_daemon(yaml) as d, RawClient.connect(d.port("h2")) as c:
            await c.start()
            sid = await c.request("/stream", d.port("h2"), method=b"POST", end_stream=False)
            c.conn.send_data(sid, b"a" * 10)
            await c.flush()
            with trio.fail_after(20):
                await origin.answered.wait()  # the first attempt failed: its retry waits out the backoff
            for _ in range(2):  # past the 16383-octet retry buffer
                c.conn.send_data(sid, b"b" * 10_000)
                await c.flush()
            c.conn.send_data(sid, b"", end_stream=True)
            await c.flush()
            with trio.fail_after(20):
                status, body, _ = await c.response(sid)
        nursery.cancel_scope.cancel()
    assert (status, body) == (200, b"ok"), body
    assert origin.streams == 2
    assert origin.bodies == [b"a" * 10 + b"b" * 20_000]  # (the first attempt's stream was reset)
    assert origin.resets == [1]


# -- why a failure was not retried -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def hangs_up() -> AsyncIterator[tuple[list[bytes], int]]:
    """A raw HTTP/1.1 upstream that reads each request whole and closes without answering (a reset:
    a failure a retrying classifier may retry). Yields the requests it read, and its port."""
    seen: list[bytes] = []

    async def conn(stream: trio.SocketStream) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = await stream.receive_some(65536)
            if not data:
                return
            buf += data
        head, _, body = buf.partition(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        while len(body) < length:
            data = await stream.receive_some(65536)
            if not data:
                break
            body += data
        seen.append(body)
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, conn, listeners)
        yield seen, listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "what, args, service, backoff_ms, note",
    [
        (
            "a streamed body",
            ["-X", "POST", "--data-binary", "@BODY"],
            "",
            0,
            "not retried: its request body (9000 bytes) was streamed, not kept for a retry "
            "(bodies up to 5120 bytes are: the router's streamAfterContentLengthKB)",
        ),
        (
            "a chunked body",
            ["-X", "POST", "-H", "Transfer-Encoding: chunked", "--data-binary", "small"],
            "",
            0,
            "not retried: its request body was chunked (no Content-Length), and a chunked body is never kept "
            "for a retry",
        ),
        (
            "the budget",
            [],
            "      budget: {minRetriesPerSec: 0, percentCanRetry: 0.0}\n",
            0,
            "not retried: the retry budget of /svc/web is spent (service.retries.budget)",
        ),
        (
            "the deadline",  # a backoff that would end after the 30 s deadline
            [],
            "    totalTimeoutMs: 30000\n",
            60_000,
            "not retried: the next attempt would have started after the request's deadline",
        ),
    ],
)
async def test_a_failure_a_retry_could_have_hidden_says_why_it_was_not_retried(
    tmp_path: Path, what: str, args: list[str], service: str, backoff_ms: int, note: str
) -> None:
    """A reset by the upstream is a failure ``retryableAll5XX`` retries; when hostproxy did not retry it
    (its body could not be sent again, the budget was spent), the 502 said only what failed, so the
    caller could not tell a misconfigured classifier from a body too large to keep. The ``l5d-err``
    message now ends with why it was not retried. The body was sent once, whole."""
    (tmp_path / "body").write_bytes(b"z" * 9000)
    args = [a.replace("@BODY", f"@{tmp_path / 'body'}") for a in args]
    async with hangs_up() as (seen, port):
        write_disco(tmp_path / "disco", "web", port)
        config = cfg(
            tmp_path / "disco", "io.l5d.http.retryableAll5XX", service=service, backoff_ms=backoff_ms
        )
        async with running_daemon(config) as d:
            r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web", *args)
    assert r.status == 502 and r.l5d_err is not None, (what, r.status, r.headers)
    assert r.l5d_err.endswith("\n" + note), r.l5d_err
    assert len(seen) == 1


async def test_a_retry_whose_backoff_would_pass_the_deadline_is_not_made_and_the_answer_comes_at_once(
    tmp_path: Path,
) -> None:
    """Checked, unchanged: with ``totalTimeoutMs`` 30 s and a 60 s backoff, a 503 under ``retryableRead5XX``
    is not retried: the upstream's own 503 comes back (no ``l5d-err``), the upstream saw one attempt, and
    the service counts the give-up under ``deadline`` (``/overload.json``)."""
    async with scripted([503, 200]) as (up, port):
        write_disco(tmp_path / "disco", "web", port)
        service = "    totalTimeoutMs: 30000\n"
        config = cfg(tmp_path / "disco", "io.l5d.http.retryableRead5XX", service=service, backoff_ms=60_000)
        async with running_daemon(config) as d:
            r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")
            state = (await curl(f"{d.admin}/overload.json")).json()
    assert (r.status, r.body, r.l5d_err) == (503, b"attempt 0", None)
    assert len(up.seen) == 1
    retries = state["routers"]["out"]["retries"]["/svc/web"]  # type: ignore[index]
    assert (retries["deadline"], retries["total"]) == (1, 0), retries


# -- the service's retry budget, as Linkerd spends it ---------------------------------------------------------


async def test_the_service_retry_budget_is_spent_as_linkerds_and_shown_as_its_retries_budget_gauge(
    tmp_path: Path,
) -> None:
    """Linkerd's per-service budget with ``minRetriesPerSec: 0`` and ``percentCanRetry: 0.5``: every
    request deposits half a retry, a retry takes one. Against an upstream that fails every other call,
    the requests go: 500 (half a retry saved: not enough, ``budget_exhausted``), 200, 200 after a retry,
    200 after a retry, 500 (exhausted again) — the sequence Linkerd's own end-to-end test of
    per-service retry policies expects. Linkerd also shows the whole retries available as the service's
    ``retries/budget`` gauge (1 after the second request, 0 otherwise); hostproxy had no such gauge."""
    budget = "      budget: {minRetriesPerSec: 0, percentCanRetry: 0.5, ttlSecs: 60}\n"
    async with scripted([500, 200, 500, 200, 500, 200, 500]) as (up, port):
        write_disco(tmp_path / "disco", "web", port)
        async with running_daemon(
            cfg(tmp_path / "disco", "io.l5d.http.retryableRead5XX", service=budget)
        ) as d:
            seen = []
            for _ in range(5):
                r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")
                m = (await curl(f"{d.admin}/admin/metrics.json")).json()
                prefix = "rt/out/service/svc/web/retries"
                seen.append(
                    (
                        r.status,
                        m.get(f"{prefix}/budget"),  # type: ignore[union-attr]
                        m.get(f"{prefix}/total", 0),  # type: ignore[union-attr]
                        m.get(f"{prefix}/budget_exhausted", 0),  # type: ignore[union-attr]
                    )
                )
    assert seen == [(500, 0, 0, 1), (200, 1, 0, 1), (200, 0, 1, 1), (200, 0, 2, 1), (500, 0, 2, 2)]
    assert len(up.seen) == 7


# -- a response body that fails after its head was sent ---------------------------------------------------


@contextlib.asynccontextmanager
async def cuts_its_body(status: int) -> AsyncIterator[int]:
    """A raw HTTP/1.1 upstream answering ``status`` with ``Content-Length: 100`` and 5 bytes of it, then
    closing the connection once the proxy has read them (the head surely went on first). Its port."""

    async def conn(stream: trio.SocketStream) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = await stream.receive_some(65536)
            if not data:
                return
            buf += data
        await stream.send_all(f"HTTP/1.1 {status} X\r\nContent-Length: 100\r\n\r\nhello".encode())
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, conn, listeners)
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "status, counts",
    [
        # a success at its head, a failure once cut: moved from success to upstream/reset
        (200, {"success": 0, "failures": 1, "failures/upstream/5xx": None, "failures/upstream/reset": 1}),
        # a failure at its head already: it stays the one failure it was counted as
        (503, {"success": 0, "failures": 1, "failures/upstream/5xx": 1, "failures/upstream/reset": None}),
    ],
)
async def test_a_response_cut_mid_body_is_one_request_counted_once(
    tmp_path: Path, status: int, counts: dict[str, int | None]
) -> None:
    """The client sees the cut (curl: a partial body, exit 18), and the request is counted once. A 5XX
    answer (a failure the moment its head arrived) whose body was then cut was counted a second time as
    an ``upstream/reset`` failure, taken off a success it never was: ``failures`` 2 and ``success`` -1
    for the one request, on the server, the service and the client alike."""
    async with cuts_its_body(status) as port:
        write_disco(tmp_path / "disco", "web", port)
        async with running_daemon(cfg(tmp_path / "disco", "io.l5d.http.nonRetryable5XX")) as d:
            r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")
            m = (await curl(f"{d.admin}/admin/metrics.json")).json()
    assert (r.status, r.body, r.exit_code) == (status, b"hello", 18)
    server = next(k for k in m if k.startswith("rt/out/server/") and k.endswith("/requests"))  # type: ignore[union-attr]
    for scope in ("rt/out/service/svc/web", "rt/out/client/#/io.l5d.fs/web", server[: -len("/requests")]):
        got = {key: m.get(f"{scope}/{key}") for key in counts}  # type: ignore[union-attr]
        assert got == counts and m[f"{scope}/requests"] == 1, (scope, got)  # type: ignore[index]
