"""``ReplayableStream``: an h2 request body with no Content-Length, kept as it streams so that an attempt
can be sent again while it fits the retry buffer — never losing or reordering a byte, never holding the
body back until it ends (client-streaming gRPC waits for answers before it ends its stream).
"""

from __future__ import annotations

from typing import Any

import h2.events
import pytest
import trio

from hostproxy.h2 import H2Server, H2ServerParams
from hostproxy.http.message import Body, Headers, Request, Response
from hostproxy.retry import ReplayableStream
from tests.daemonutil import running_daemon
from tests.grpc_fixtures.rawh2 import RawClient

pytestmark = pytest.mark.timeout(30)


class Source:
    """Chunks handed out one by one; ``gate`` (when set) is waited on before each read."""

    def __init__(self, chunks: list[bytes], trailers: Headers | None = None) -> None:
        self.chunks = list(chunks)
        self._trailers = trailers
        self.gate: trio.Event | None = None
        self.reading = trio.Event()
        self.closed = False
        self.reads = 0

    async def read_chunk(self) -> bytes | None:
        self.reading.set()
        if self.gate is not None:
            await self.gate.wait()
        self.reads += 1
        return self.chunks.pop(0) if self.chunks else None

    @property
    def trailers(self) -> Headers | None:
        return self._trailers

    async def aclose(self) -> None:
        self.closed = True


async def take(body: Body, n: int | None = None) -> list[bytes]:
    out = []
    async for chunk in body:
        out.append(chunk)
        if n is not None and len(out) == n:
            break
    return out


async def test_one_attempt_sends_every_chunk_and_the_trailers() -> None:
    src = Source([b"a", b"bb", b"ccc"], Headers([(b"grpc-timeout", b"1S")]))
    stream = ReplayableStream(Body(src, None), limit=100)
    body = stream.next_body()
    assert await take(body) == [b"a", b"bb", b"ccc"]
    assert body.trailers is not None and body.trailers.get(b"grpc-timeout") == b"1S"
    assert stream.replayable


async def test_a_second_attempt_replays_what_was_sent_then_goes_on_and_the_first_is_cut_off() -> None:
    src = Source([b"1", b"2", b"3", b"4"])
    stream = ReplayableStream(Body(src, None), limit=100)
    first = stream.next_body()
    assert await take(first, 2) == [b"1", b"2"]
    second = stream.next_body()
    with pytest.raises(Exception, match="newer attempt"):
        await first.__anext__()
    assert await take(second) == [b"1", b"2", b"3", b"4"]
    assert src.reads == 5  # each original chunk read once (and its end)
    third = stream.next_body()
    assert await take(third) == [b"1", b"2", b"3", b"4"]  # all kept: read from memory


async def test_past_the_limit_the_whole_body_is_still_sent_and_no_attempt_may_follow() -> None:
    src = Source([b"x" * 6, b"y" * 6, b"z" * 6, b"w"])
    stream = ReplayableStream(Body(src, None), limit=10)
    body = stream.next_body()
    assert await take(body, 1) == [b"x" * 6]
    assert stream.replayable
    assert await take(body, 1) == [b"y" * 6]  # 12 > 10: sent, and the stream is no longer replayable
    assert not stream.replayable
    assert await take(body) == [b"z" * 6, b"w"]
    with pytest.raises(AssertionError):
        stream.next_body()


async def test_a_chunk_read_by_a_superseded_attempt_goes_to_the_newer_one() -> None:
    """The older attempt is waiting on the original when the newer one starts: the chunk it then
    receives is kept and sent by the newer attempt — even when it is the one that passes the limit."""
    for limit in (100, 3):
        src = Source([b"ab", b"cd", b"ef"])
        stream = ReplayableStream(Body(src, None), limit=limit)
        first = stream.next_body()
        assert await take(first, 1) == [b"ab"]
        src.gate = trio.Event()
        src.reading = trio.Event()
        results: dict[str, Any] = {}

        async def older(first: Body = first, results: dict[str, Any] = results) -> None:
            try:
                await first.__anext__()
            except Exception as exc:  # noqa: BLE001 - the attempt is cut off
                results["older"] = str(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(older)
            await src.reading.wait()  # the older attempt holds the original's next read
            second = stream.next_body()
            src.gate.set()
        assert "newer attempt" in results["older"]
        assert await take(second) == [b"ab", b"cd", b"ef"], limit


async def test_closing_the_current_attempt_early_closes_the_original_and_ends_replays() -> None:
    src = Source([b"1", b"2", b"3"])
    stream = ReplayableStream(Body(src, None), limit=100)
    body = stream.next_body()
    assert await take(body, 1) == [b"1"]
    await body.aclose()
    assert src.closed and not stream.replayable


async def test_closing_a_superseded_attempt_leaves_the_original_alone() -> None:
    src = Source([b"1", b"2"])
    stream = ReplayableStream(Body(src, None), limit=100)
    first = stream.next_body()
    assert await take(first, 1) == [b"1"]
    second = stream.next_body()
    await first.aclose()
    assert not src.closed and stream.replayable
    assert await take(second) == [b"1", b"2"]


# -- end to end through an h2 router ------------------------------------------------------------------


class EchoFirst:
    """Answers each stream after its first DATA chunk (a client-streaming call that answers early),
    then echoes the rest as it comes; ``/flaky`` answers trailers-only grpc-status 14 the first time."""

    def __init__(self) -> None:
        self.calls = 0
        self.bodies: list[bytes] = []

    async def handle(self, req: Request, info: object) -> Response:
        self.calls += 1
        if req.target == "/flaky" and self.calls == 1:
            await req.body.aclose()
            head = Headers([(b"content-type", b"application/grpc"), (b"grpc-status", b"14")])
            return Response(200, headers=head, body=Body.empty())
        it = req.body.__aiter__()
        first = await it.__anext__()
        received = [first]
        app = self

        class Echo:
            async def read_chunk(self) -> bytes | None:
                if first is not None and len(received) == 1 and not getattr(self, "sent", False):
                    self.sent = True
                    return b"got:" + first
                try:
                    chunk = await it.__anext__()
                except StopAsyncIteration:
                    app.bodies.append(b"".join(received))
                    return None
                received.append(chunk)
                return b"got:" + chunk

            @property
            def trailers(self) -> Headers:
                return Headers([(b"grpc-status", b"0")])

            async def aclose(self) -> None:
                pass

        return Response(
            200, headers=Headers([(b"content-type", b"application/grpc")]), body=Body(Echo(), None)
        )


def h2_yaml(port: int) -> str:
    return f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: h2
  label: h2
  dtab: /svc => /$/inet/127.0.0.1/{port};
  identifier: {{kind: io.l5d.header.path, segments: 1}}
  service: {{responseClassifier: {{kind: io.l5d.h2.grpc.default}}}}
  servers: [{{ip: 127.0.0.1, port: 0}}]
"""


async def test_a_streaming_call_is_answered_before_its_request_ends() -> None:
    """The body is not held back until it ends: the upstream answers the first message while the
    client still holds its stream open, and everything arrives in order."""
    app = EchoFirst()
    upstream = H2Server(app.handle, H2ServerParams())
    async with trio.open_nursery() as nursery:
        [(_, up)] = await nursery.start(upstream.serve)
        async with running_daemon(h2_yaml(up)) as d, RawClient.connect(d.port("h2")) as c:
            await c.start()
            sid = await c.request("/stream", d.port("h2"), method=b"POST", end_stream=False)
            c.conn.send_data(sid, b"one")
            await c.flush()
            with trio.fail_after(5):
                ev = await c.until(lambda e: type(e) is h2.events.DataReceived and e.stream_id == sid)
            assert ev.data == b"got:one"  # answered while the request is still open
            c.conn.send_data(sid, b"two", end_stream=True)
            await c.flush()
            with trio.fail_after(5):
                status, body, trailers = await c.response(sid)
            assert (status, body) == (200, b"got:onegot:two")
            assert dict(trailers or [])[b"grpc-status"] == b"0"
        nursery.cancel_scope.cancel()
    assert app.bodies == [b"onetwo"]


async def test_a_streamed_call_refused_unavailable_is_sent_again_whole() -> None:
    app = EchoFirst()
    upstream = H2Server(app.handle, H2ServerParams())
    async with trio.open_nursery() as nursery:
        [(_, up)] = await nursery.start(upstream.serve)
        async with running_daemon(h2_yaml(up)) as d, RawClient.connect(d.port("h2")) as c:
            await c.start()
            sid = await c.request("/flaky", d.port("h2"), method=b"POST", end_stream=False)
            c.conn.send_data(sid, b"one")
            c.conn.send_data(sid, b"two", end_stream=True)
            await c.flush()
            with trio.fail_after(5):
                status, body, _trailers = await c.response(sid)
            assert (status, body) == (200, b"got:onegot:two")
        nursery.cancel_scope.cancel()
    assert app.calls == 2 and app.bodies == [b"onetwo"]
