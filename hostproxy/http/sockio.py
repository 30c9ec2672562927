"""Socket reads and writes for the HTTP/1.1 hot path, without a scheduler round trip when the kernel can
answer at once.

``trio.SocketStream.receive_some``/``send_all`` yield to the scheduler after every completed operation
(a *checkpoint*) and wrap each call in several context managers. For a proxy that is four or more
yields per request, and under a burst every yield lets the other connections' work run first: the
last request of a burst waits for every other request's every step. Here a plaintext socket is read
and written directly while the kernel has data or buffer space; only when it has not does the task
wait (``wait_readable``/``wait_writable``: a checkpoint, so deadlines and cancellation still apply
whenever the peer is slow). A task that never has to wait still yields every ``FAIR_EVERY``
operations, so a connection with a flood of pipelined data cannot hold the event loop.

Anything that is not a plain ``trio.SocketStream`` (TLS, test doubles) goes through the stream's own
methods. Errors are the ones the stream would raise: ``trio.BrokenResourceError`` for a broken
connection, ``trio.ClosedResourceError`` for a socket this process closed.
"""

from __future__ import annotations

import errno
import socket
from typing import cast

import trio

# Immediate operations (no wait) between two forced yields, over all connections.
FAIR_EVERY = 64

_streak = 0


def raw_socket(stream: object) -> socket.socket | None:
    """The stdlib socket under a plaintext trio stream, or None (TLS, other streams).

    Reads trio's private ``SocketType._sock``: trio is pinned in the lock file, and a test fails if a
    new trio hides it (everything then still works, through the stream's methods).
    """
    if type(stream) is not trio.SocketStream:
        return None
    sock = getattr(stream.socket, "_sock", None)
    return sock if type(sock) is socket.socket else None


def _broken(exc: OSError) -> Exception:
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("this socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


async def _fair() -> None:
    global _streak
    _streak += 1
    if _streak >= FAIR_EVERY:
        _streak = 0
        await trio.lowlevel.checkpoint()


async def receive_some(stream: trio.abc.ReceiveStream, max_bytes: int) -> bytes:
    """``stream.receive_some(max_bytes)``; b"" at end of stream."""
    sock = raw_socket(stream)
    if sock is None:
        return cast(bytes, await stream.receive_some(max_bytes))
    global _streak
    while True:
        try:
            data = sock.recv(max_bytes)
        except BlockingIOError:
            _streak = 0
            try:
                await trio.lowlevel.wait_readable(sock)
            except OSError as exc:
                raise _broken(exc) from exc
            continue
        except OSError as exc:
            raise _broken(exc) from exc
        await _fair()
        return data


async def send_all(stream: trio.abc.SendStream, data: bytes) -> None:
    """``stream.send_all(data)``: returns once the kernel took every byte."""
    sock = raw_socket(stream)
    if sock is None:
        await stream.send_all(data)
        return
    assert isinstance(stream, trio.SocketStream)
    if not data:
        await stream.send_all(data)
        return
    if stream.socket.did_shutdown_SHUT_WR:
        raise trio.ClosedResourceError("can't send data after sending EOF")
    global _streak
    try:
        sent = sock.send(data)
    except BlockingIOError:
        sent = 0
    except OSError as exc:
        raise _broken(exc) from exc
    if sent == len(data):
        await _fair()
        return
    _streak = 0
    with memoryview(data) as view:
        while sent < len(data):
            try:
                await trio.lowlevel.wait_writable(sock)
                with view[sent:] as rest:
                    sent += sock.send(rest)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise _broken(exc) from exc
