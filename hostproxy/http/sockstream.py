"""``SockStream``: a plaintext TCP stream over a stdlib socket that only yields when it must wait.

Theory of operation
-------------------
``trio.SocketStream`` makes every ``send_all``/``receive_some`` a full checkpoint: a cancellation
check before the system call and a task switch after it, even when the call succeeded at once. The
HTTP/1.1 server and upstream pool do four such calls per proxied request, so that scheduling is a
noticeable share of a request's CPU. :class:`SockStream` does the system call on a non-blocking
stdlib socket directly and waits with ``trio.lowlevel.wait_readable``/``wait_writable`` only when
the kernel says ``EAGAIN`` (or, by choice, once before a write: see below):

* **Cancellation.** Every wait is a checkpoint (trio raises ``Cancelled`` there), so a timeout or a
  cancelled scope ends any operation that has to wait. An operation the kernel completes at once
  does not check for cancellation; a caller looping over such operations without ever waiting
  yields itself: :attr:`SockStream.waited` tells whether this stream waited since the caller last
  cleared it (the HTTP/1.1 server checkpoints once per request cycle that never waited).
* **Errors**, as ``trio.SocketStream`` raises them: ``ClosedResourceError`` ("this socket was already
  closed") once the socket is closed, ``BrokenResourceError`` ("socket connection broken: ...",
  chained to the ``OSError``) for any other socket error; ``ClosedResourceError`` after ``send_eof``
  (``"can't send data after sending EOF"``) and from a wait that another task's ``aclose`` ended.
* **Writes that go out together** (:attr:`SockStream.yield_before_send`, off by default; the
  upstream pool turns it on for its connections). ``send_all`` then first lets the other runnable
  tasks run (one yield, shielded from cancellation, so it is no cancellation point and nothing else
  changes) and sends after them. In a burst, the tasks of one loop pass each build their request
  and then write one after another, instead of each writing in the middle of the others' work, so
  an upstream that sleeps in its event loop between messages is woken once for the burst rather
  than once per request. A wake-up costs the sender the kernel's work to wake the peer's CPU: on
  the 2-vCPU guest of ``make bench`` a ``send`` that wakes its peer takes 11-24 µs against a few
  µs for one that does not. The price is one task switch per write, which a lone request pays
  without gain. Responses to clients are written at once: a client's latency ends with that write,
  and delaying it to batch the client's wake-ups measured worse.
* **What a failed write left.** When ``send_all`` fails, :attr:`SockStream.sent_before_failure` is how
  many bytes of that call's data the kernel had taken before the error (0: none left, so the
  upstream pool may send the request again on another connection without duplicating it). Set only
  on failure: a successful write costs nothing more.
* **Reads that expect to wait.** A ``recv`` with nothing to read costs about three times a plain
  system call, because the stdlib makes, raises and catches a ``BlockingIOError`` (with a traceback
  entry) for its ``EAGAIN``. Where the bytes are probably not there yet (the reply to a request just
  sent, a keep-alive client's next request), :meth:`SockStream.receive_polled` asks first with one
  ``poll`` of no timeout (a ``select.poll`` made on the stream's first such read) and waits when the
  socket is not readable; :meth:`SockStream.readable_now` is that check alone.
* **Ownership.** The stream owns its socket: ``aclose`` wakes any task waiting on it, then closes
  it. :func:`adopt` takes the descriptor over from an accepted ``trio.SocketStream`` that nothing
  has waited on yet (trio's public ``detach``: no second descriptor per connection; closing the
  emptied trio stream afterwards does nothing);
  :func:`open_tcp` connects a new socket to an IP address (None for a host name, which needs
  resolving: ``trio.open_tcp_stream`` does that).

Like ``trio.SocketStream`` it sets ``TCP_NODELAY`` and ``TCP_NOTSENT_LOWAT`` (16 KiB) on the
sockets it connects, and has ``socket`` (the stdlib socket: addresses, ``fileno``, idle polling),
``send_eof``, ``wait_send_all_might_not_block``, ``setsockopt``/``getsockopt``.
"""

from __future__ import annotations

import errno
import os
import select
import socket

import trio

__all__ = ["DEFAULT_RECEIVE_SIZE", "SockStream", "adopt", "open_tcp"]

DEFAULT_RECEIVE_SIZE = 65536

_CLOSED_ERRNOS = {errno.EBADF, errno.ENOTSOCK}

_wait_readable = trio.lowlevel.wait_readable
_wait_writable = trio.lowlevel.wait_writable
_yield = trio.lowlevel.cancel_shielded_checkpoint


def _translated(exc: OSError) -> trio.ClosedResourceError | trio.BrokenResourceError:
    """The stream error for a socket error (as ``trio.SocketStream`` translates it)."""
    error: trio.ClosedResourceError | trio.BrokenResourceError
    if exc.errno in _CLOSED_ERRNOS:
        error = trio.ClosedResourceError("this socket was already closed")
        error.__suppress_context__ = True  # ``raise ... from None``
    else:
        error = trio.BrokenResourceError(f"socket connection broken: {exc}")
        error.__cause__ = exc  # ``raise ... from exc``
    return error


class SockStream:
    """A ``trio.abc.HalfCloseableStream`` over a non-blocking stdlib TCP socket (see the module)."""

    __slots__ = ("socket", "waited", "_eof_sent", "_poller", "yield_before_send", "sent_before_failure")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.socket = sock
        #: Set whenever an operation had to wait (and so passed a checkpoint); the owner clears it.
        self.waited = False
        self._eof_sent = False
        # ``readable_now``'s poll object, made on its first call (an idle connection carries none).
        self._poller: select.poll | None = None
        #: Whether ``send_all`` lets the other runnable tasks run before it writes (see the module).
        self.yield_before_send = False
        #: Bytes of its data the last failed ``send_all`` had sent before it failed (see the module).
        self.sent_before_failure = 0

    def __repr__(self) -> str:
        return f"<SockStream fd={self.socket.fileno()}>"

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            max_bytes = DEFAULT_RECEIVE_SIZE
        elif max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        sock = self.socket
        while True:
            try:
                return sock.recv(max_bytes)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise _translated(exc)  # noqa: B904 - its cause is set by _translated
            self.waited = True
            await _wait_readable(sock)

    def readable_now(self) -> bool:
        """Whether a read would not wait: the socket has bytes, its end or an error (one ``poll``
        with no timeout). True once the socket is closed (a read then raises at once)."""
        poller = self._poller
        if poller is None:
            fd = self.socket.fileno()
            if fd == -1:
                return True
            poller = self._poller = select.poll()
            poller.register(fd, select.POLLIN)  # (errors and hang-ups are always reported)
        return bool(poller.poll(0))

    async def receive_polled(self, max_bytes: int | None = None) -> bytes:
        """``receive_some`` for bytes that are probably not there yet: waits first unless
        :meth:`readable_now` (see the module docstring), so that a read that must wait costs a
        ``poll`` rather than a failed ``recv``."""
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if not self.readable_now():
            self.waited = True
            await _wait_readable(self.socket)
        return await self.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if data and self.yield_before_send:
            await _yield()  # the other runnable tasks first: their writes and this one go out together
        if self._eof_sent:
            raise trio.ClosedResourceError("can't send data after sending EOF")
        sock = self.socket
        if not data:
            if sock.fileno() == -1:
                raise trio.ClosedResourceError("socket was already closed")
            await trio.lowlevel.checkpoint()
            return
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.sent_before_failure = 0
            raise _translated(exc)  # noqa: B904 - its cause is set by _translated
        if sent == len(data):
            return
        try:
            with memoryview(data) as view:
                total = len(view)
                while sent < total:
                    self.waited = True
                    await _wait_writable(sock)
                    try:
                        sent += sock.send(view[sent:])
                    except BlockingIOError:
                        pass
                    except OSError as exc:
                        raise _translated(exc)  # noqa: B904 - its cause is set by _translated
        except BaseException:
            self.sent_before_failure = sent
            raise

    async def wait_send_all_might_not_block(self) -> None:
        sock = self.socket
        if sock.fileno() == -1:
            raise trio.ClosedResourceError
        self.waited = True
        await _wait_writable(sock)

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._eof_sent:
            return
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise _translated(exc)  # noqa: B904 - its cause is set by _translated
        self._eof_sent = True

    async def aclose(self) -> None:
        self._poller = None
        sock = self.socket
        if sock.fileno() != -1:
            trio.lowlevel.notify_closing(sock)
            sock.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """Close at once (``aclose`` without its checkpoint), e.g. from a ``finally`` that must not wait."""
        self._poller = None
        sock = self.socket
        if sock.fileno() != -1:
            trio.lowlevel.notify_closing(sock)
            sock.close()

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        self.socket.setsockopt(level, option, value)

    def getsockopt(self, level: int, option: int) -> int:
        return self.socket.getsockopt(level, option)

    async def __aenter__(self) -> SockStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def adopt(stream: trio.SocketStream) -> SockStream:
    """A :class:`SockStream` that owns ``stream``'s connection from now on.

    The descriptor is detached from ``stream`` (whose ``aclose`` then does nothing), so the connection
    still costs one descriptor. ``stream`` must not have waited on its socket yet (a freshly accepted
    stream), since trio's I/O manager keys its registrations by descriptor."""
    tsock = stream.socket
    family, type_, proto = tsock.family, tsock.type, tsock.proto
    fd = tsock.detach()
    try:
        sock = socket.socket(family, type_, proto, fd)
    except BaseException:
        os.close(fd)
        raise
    return SockStream(sock)


def _numeric_address(host: str, port: int) -> tuple[int, int, int, tuple[object, ...]] | None:
    """``(family, type, proto, address)`` when ``host`` is an IP address literal, else None."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError):
        return None
    family, type_, proto, _canonname, address = infos[0]
    return family, type_, proto, address


async def open_tcp(host: str, port: int) -> SockStream | None:
    """Connect to ``host:port`` when ``host`` is an IP address (None for a host name: resolve it with
    ``trio.open_tcp_stream`` instead). Raises ``OSError`` (with the connect's ``errno``) on failure.

    The connect is a cancellation point: cancelled while in progress, the socket is closed.
    """
    target = _numeric_address(host, port)
    if target is None:
        return None
    family, type_, proto, address = target
    sock = socket.socket(family, type_, proto)
    try:
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if hasattr(socket, "TCP_NOTSENT_LOWAT"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, 2**14)
        except OSError:
            pass
        err = sock.connect_ex(address)
        if err == errno.EINPROGRESS:
            await _wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        else:
            await trio.lowlevel.checkpoint()
        if err:
            raise OSError(err, os.strerror(err))
    except BaseException:
        sock.close()
        raise
    return SockStream(sock)
