"""Raw HTTP/2 peers for tests: frames crafted with hyperframe/hpack over loopback sockets.

``RawClient`` speaks prior-knowledge h2 with *manual* flow control (nothing is acknowledged unless
the test says so) and can write arbitrary frames (floods).  ``ScriptedUpstream`` is an h2 server
whose connections run a test-supplied coroutine (GOAWAY, silence, resets).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import hpack
import trio
from hyperframe.frame import Frame

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class RawClient:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.events: list[Any] = []
        self.eof = False
        self.encoder = hpack.Encoder()

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, port: int) -> AsyncIterator[RawClient]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            yield cls(stream)
        finally:
            await stream.aclose()

    async def start(self, settings: dict[int, int] | None = None) -> None:
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        await self.flush()

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.stream.send_all(data)

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    def frames(self, *frames: Frame) -> bytes:
        return b"".join(f.serialize() for f in frames)

    def header_block(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        return self.encoder.encode(headers)

    async def request(
        self,
        path: str,
        port: int,
        *,
        end_stream: bool = True,
        method: bytes = b"GET",
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> int:
        sid = self.conn.get_next_available_stream_id()
        headers = [
            (b":method", method),
            (b":scheme", b"http"),
            (b":authority", f"127.0.0.1:{port}".encode()),
            (b":path", path.encode()),
        ] + (extra or [])
        self.conn.send_headers(sid, headers, end_stream=end_stream)
        await self.flush()
        return sid

    async def pump(self, *, ack: bool = False) -> list[Any]:
        """Read once; returns the new events (acknowledging DATA when ``ack``)."""
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, OSError):
            data = b""
        if not data:
            self.eof = True
            return []
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.eof = True
            return []
        for ev in events:
            if ack and type(ev) is h2.events.DataReceived:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        with contextlib.suppress(trio.BrokenResourceError, OSError):
            await self.flush()
        self.events.extend(events)
        return events

    async def until(self, pred: Callable[[Any], bool], *, ack: bool = True) -> Any:
        """Pump until an event matches ``pred`` (returns it) or the connection ends (returns None)."""
        for ev in self.events:
            if pred(ev):
                return ev
        while not self.eof:
            for ev in await self.pump(ack=ack):
                if pred(ev):
                    return ev
        return None

    async def response(self, sid: int) -> tuple[int, bytes, list[tuple[bytes, bytes]] | None]:
        """Read stream ``sid`` to its end: (status, body, trailers); status -1 when it was reset."""
        status = 0
        body = bytearray()
        trailers = None
        seen = 0
        while True:
            while seen < len(self.events):
                ev = self.events[seen]
                seen += 1
                if getattr(ev, "stream_id", None) != sid:
                    continue
                if type(ev) is h2.events.ResponseReceived:
                    status = int(dict(ev.headers)[b":status"])
                elif type(ev) is h2.events.DataReceived:
                    body += ev.data
                elif type(ev) is h2.events.TrailersReceived:
                    trailers = ev.headers
                elif type(ev) is h2.events.StreamReset:
                    return -1, bytes(body), None
                if getattr(ev, "stream_ended", None) is not None or type(ev) is h2.events.StreamEnded:
                    return status, bytes(body), trailers
            if self.eof:
                raise AssertionError(f"connection ended before stream {sid} did")
            await self.pump(ack=True)


def goaway_of(client: RawClient) -> Any:
    return next((e for e in client.events if type(e) is h2.events.ConnectionTerminated), None)


class ScriptedUpstream:
    """An h2 server on 127.0.0.1 whose connection ``i`` (0-based) runs ``script(i, conn, stream)``."""

    def __init__(
        self, script: Callable[[int, h2.connection.H2Connection, trio.SocketStream], Awaitable[None]]
    ):
        self.script = script
        self.connections = 0
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._conn, listeners, handler_nursery=nursery)

    async def _conn(self, stream: trio.SocketStream) -> None:
        i = self.connections
        self.connections += 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        await stream.send_all(conn.data_to_send())
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await self.script(i, conn, stream)
        await stream.aclose()


async def read_events(conn: h2.connection.H2Connection, stream: trio.SocketStream) -> list[Any]:
    data = await stream.receive_some(65536)
    if not data:
        return []
    events = conn.receive_data(data)
    out = conn.data_to_send()
    if out:
        await stream.send_all(out)
    return events


async def read_frames_until_closed(stream: trio.SocketStream, timeout_s: float = 20.0) -> list[Frame]:
    """Every frame the peer sends until it closes the connection (raw: no h2 state involved)."""
    from hyperframe.frame import Frame as F

    buf = bytearray()
    with trio.move_on_after(timeout_s):
        while True:
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, OSError):
                break
            if not data:
                break
            buf += data
    frames: list[Frame] = []
    pos = 0
    while pos + 9 <= len(buf):
        frame, length = F.parse_frame_header(memoryview(bytes(buf[pos : pos + 9])))
        if pos + 9 + length > len(buf):
            break
        frame.parse_body(memoryview(bytes(buf[pos + 9 : pos + 9 + length])))
        frames.append(frame)
        pos += 9 + length
    return frames
