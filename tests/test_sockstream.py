"""SockStream: the same surface and error semantics as trio.SocketStream, yielding only to wait."""

from __future__ import annotations

import socket
from collections.abc import Awaitable
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from hostproxy.http.sockstream import SockStream, adopt, open_tcp


def _pair() -> tuple[SockStream, socket.socket]:
    a, b = socket.socketpair()
    return SockStream(a), b


async def test_receive_and_send_without_waiting_are_no_cancellation_points() -> None:
    stream, peer = _pair()
    with peer:
        peer.sendall(b"hello")
        await trio.lowlevel.checkpoint()
        with trio.CancelScope() as scope:
            scope.cancel()
            # Completed at once: no checkpoint (the yield before a write is shielded), so the
            # cancelled scope is not noticed.
            assert await stream.receive_some(3) == b"hel"
            await stream.send_all(b"x")
        assert not stream.waited
        assert peer.recv(10) == b"x"
        await stream.aclose()


class _Steps(trio.abc.Instrument):
    """Counts task steps (a step begins whenever a task is resumed)."""

    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1


async def _steps_taken(operation: Awaitable[None]) -> int:
    """How many task steps began while ``operation`` ran (0: it never yielded)."""
    counter = _Steps()
    trio.lowlevel.add_instrument(counter)
    try:
        await operation
    finally:
        trio.lowlevel.remove_instrument(counter)
    return counter.steps


async def test_send_all_lets_the_tasks_of_the_same_pass_run_before_it_writes() -> None:
    stream, peer = _pair()
    peer.setblocking(False)
    go = trio.Event()
    seen: list[str] = []

    async def writer() -> None:
        await go.wait()
        await stream.send_all(b"x")

    async def bystander() -> None:
        await go.wait()
        # Woken in the same loop pass as the writer: it runs before the write, whichever of the
        # two the loop runs first.
        try:
            peer.recv(10)
            seen.append("written")
        except BlockingIOError:
            seen.append("not yet")

    stream.yield_before_send = True
    with peer:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            nursery.start_soon(bystander)
            await trio.testing.wait_all_tasks_blocked()
            go.set()
        assert seen == ["not yet"]
        assert peer.recv(10) == b"x"

        # Off (the default), a write that the kernel takes at once does not yield at all.
        stream.yield_before_send = False
        assert await _steps_taken(stream.send_all(b"y")) == 0
        assert peer.recv(10) == b"y"
        stream.yield_before_send = True
        assert await _steps_taken(stream.send_all(b"z")) == 1  # one yield, then the write
        await stream.aclose()


async def test_receive_waits_and_a_wait_is_a_cancellation_point() -> None:
    stream, peer = _pair()
    with peer:
        await _waits_then_reads(stream, peer, stream.receive_some)
        await stream.aclose()


async def _waits_then_reads(stream: SockStream, peer: socket.socket, receive: Any) -> None:
    """``receive`` (a read of ``stream``) waits for bytes, its wait is a cancellation point, and it
    reads what ``peer`` sends later, then the end once ``peer`` closes."""
    with trio.move_on_after(0.05) as scope:
        await receive()
    assert scope.cancelled_caught
    assert stream.waited

    async def later() -> None:
        await trio.sleep(0.01)
        peer.sendall(b"data")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(later)
        assert await receive() == b"data"
    peer.close()
    assert await receive() == b""


async def test_send_all_sends_everything_through_a_full_buffer() -> None:
    stream, peer = _pair()
    payload = b"z" * (4 * 1024 * 1024)
    received = bytearray()

    async def drain() -> None:
        peer.setblocking(False)
        while len(received) < len(payload):
            await trio.lowlevel.wait_readable(peer)
            received.extend(peer.recv(1 << 20))

    with peer:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            await stream.send_all(payload)
        assert bytes(received) == payload
        assert stream.waited
        await stream.aclose()


async def test_errors_are_translated_like_trio_socket_stream() -> None:
    stream, peer = _pair()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    peer.close()
    with pytest.raises(trio.BrokenResourceError, match=r"^socket connection broken: \[Errno \d+\] ") as info:
        for _ in range(100):
            await stream.send_all(b"x" * 65536)
    assert isinstance(info.value.__cause__, OSError)
    await stream.aclose()
    with pytest.raises(trio.ClosedResourceError, match="^this socket was already closed$"):
        await stream.receive_some()
    with pytest.raises(trio.ClosedResourceError):
        await stream.send_all(b"x")
    await stream.aclose()  # idempotent


async def test_send_eof_then_send_is_closed() -> None:
    stream, peer = _pair()
    with peer:
        await stream.send_eof()
        await stream.send_eof()
        assert peer.recv(10) == b""
        with pytest.raises(trio.ClosedResourceError, match="^can't send data after sending EOF$"):
            await stream.send_all(b"x")
        await stream.aclose()


async def test_aclose_wakes_a_waiting_reader() -> None:
    stream, peer = _pair()
    with peer:

        async def read() -> None:
            with pytest.raises(trio.ClosedResourceError):
                await stream.receive_some()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await trio.sleep(0.01)
            await stream.aclose()


async def test_receive_polled_reads_at_once_when_bytes_are_there() -> None:
    stream, peer = _pair()
    with peer:
        assert not stream.readable_now()
        peer.sendall(b"reply")
        assert stream.readable_now()
        with trio.CancelScope() as scope:
            scope.cancel()
            # Readable: no wait, so no checkpoint, as receive_some.
            assert await stream.receive_polled(3) == b"rep"
        assert not stream.waited
        assert await stream.receive_polled() == b"ly"
        with pytest.raises(ValueError, match="max_bytes must be >= 1"):
            await stream.receive_polled(0)
        await stream.aclose()


async def test_receive_polled_waits_without_a_failed_recv() -> None:
    stream, peer = _pair()
    failed: list[int] = []
    real = stream.socket

    class Counting:
        """The stream's socket, counting the recv calls that found nothing."""

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def recv(self, n: int) -> bytes:
            try:
                return real.recv(n)
            except BlockingIOError:
                failed.append(n)
                raise

    stream.socket = Counting()  # type: ignore[assignment]
    with peer:
        await _waits_then_reads(stream, peer, stream.receive_polled)
        assert failed == []  # waited on the poll's word, never on an EAGAIN
        assert stream.readable_now()  # the end of the stream is readable
    stream.socket = real
    await stream.aclose()
    assert stream.readable_now()  # closed: a read raises at once rather than waiting
    with pytest.raises(trio.ClosedResourceError):
        await stream.receive_polled()


async def test_receive_polled_sees_a_reset_as_a_broken_stream() -> None:
    stream, peer = _pair()
    assert not stream.readable_now()  # makes the poll object before the reset
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    await stream.send_all(b"unread")
    peer.close()
    assert stream.readable_now()
    with pytest.raises(trio.BrokenResourceError, match="^socket connection broken"):
        await stream.receive_polled()
    await stream.aclose()


async def test_adopt_and_open_tcp() -> None:
    async def echo(server_stream: trio.SocketStream) -> None:
        mine = adopt(server_stream)
        try:
            while data := await mine.receive_some():
                await mine.send_all(data)
        finally:
            await mine.aclose()
            await server_stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        client = await open_tcp("127.0.0.1", port)
        assert client is not None
        assert client.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        await client.send_all(b"ping")
        assert await client.receive_some() == b"ping"
        await client.send_eof()
        assert await client.receive_some() == b""
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_open_tcp_refused_and_host_names() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        await open_tcp("127.0.0.1", port)
    assert await open_tcp("localhost", port) is None
