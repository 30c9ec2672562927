"""hostproxy.http.sockio against real loopback sockets: the direct path is taken for plain trio streams
(a trio upgrade that hides the socket makes this fail), other streams go through their own methods,
large writes that fill the kernel buffer complete, and errors are the stream's own."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from hostproxy.http import sockio


async def _pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = trio.socket.socket()
    await client.connect(listener.getsockname())
    server, _ = await listener.accept()
    listener.close()
    return trio.SocketStream(client), trio.SocketStream(server)


async def test_plain_trio_streams_use_the_socket_directly() -> None:
    a, b = await _pair()
    async with a, b:
        assert type(sockio.raw_socket(a)) is socket.socket
        await sockio.send_all(a, b"ping")
        assert await sockio.receive_some(b, 100) == b"ping"
        await a.aclose()
        assert await sockio.receive_some(b, 100) == b""  # end of stream


async def test_other_streams_use_their_own_methods() -> None:
    left, right = trio.testing.memory_stream_pair()
    assert sockio.raw_socket(left) is None
    await sockio.send_all(left, b"hello")
    assert await sockio.receive_some(right, 100) == b"hello"


async def test_a_write_larger_than_the_kernel_buffer_waits_and_completes() -> None:
    a, b = await _pair()
    payload = bytes(range(256)) * 40_000  # ~10 MB: far past the socket buffers
    got = bytearray()

    async def reader() -> None:
        while len(got) < len(payload):
            chunk = await sockio.receive_some(b, 1 << 16)
            assert chunk
            got.extend(chunk)

    async with a, b, trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await sockio.send_all(a, payload)
    assert bytes(got) == payload


async def test_a_read_waits_for_data_and_honours_cancellation() -> None:
    a, b = await _pair()
    async with a, b:
        with trio.move_on_after(0.05) as scope:
            await sockio.receive_some(b, 100)
        assert scope.cancelled_caught

        async def later() -> None:
            await trio.sleep(0.02)
            await sockio.send_all(a, b"late")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(later)
            assert await sockio.receive_some(b, 100) == b"late"


async def test_errors_are_the_streams_errors() -> None:
    a, b = await _pair()
    b.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    await b.aclose()  # RST
    await trio.sleep(0.01)
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(100):
            await sockio.send_all(a, b"x" * 65536)
    await a.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await sockio.receive_some(a, 10)
    with pytest.raises(trio.ClosedResourceError):
        await sockio.send_all(a, b"x")


async def test_a_task_that_never_waits_still_yields() -> None:
    a, b = await _pair()
    ran = 0

    async def other() -> None:
        nonlocal ran
        ran += 1

    async with a, b, trio.open_nursery() as nursery:
        nursery.start_soon(other)
        # Every send completes at once; without the periodic yield ``other`` would not run here. Two
        # yields: trio may run this task first again after the first (it shuffles each batch).
        for _ in range(2 * sockio.FAIR_EVERY + 1):
            await sockio.send_all(a, b"x")
        assert ran == 1
