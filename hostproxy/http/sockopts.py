"""Linkerd's ``socketOptions`` on the real sockets: listeners, accepted and connected connections.

Theory of operation
-------------------
:class:`SocketOptions` is the runtime form of a ``socketOptions`` section (admin, ``servers[]``,
``client``); :func:`socket_options` turns the config's section into it, or None when every key has
hostproxy's default, so a config without the section costs nothing more on any path.

What each option does and where it is set:

* ``backlog`` and ``reuseAddr`` are properties of the listening socket: :func:`configure_listener`
  (and ``bind_listeners``, which takes the options) sets them before the bind and ``listen``. With no
  ``backlog`` the listener keeps ``LISTEN_BACKLOG``. Neither matters to a client, whose connections are
  never bound to a local port.
* ``keepAlive`` is set on the listening socket too: Linux copies ``SO_KEEPALIVE`` (and starts its
  timer) on every connection the listener accepts, so accepted connections pay no system call for
  it. A client's connections get it with one ``setsockopt`` each, right after the connect.
* ``noDelay`` is on by default (trio's streams and :func:`hostproxy.http.sockstream.open_tcp` set
  ``TCP_NODELAY`` on every connection); ``noDelay: false`` clears it on each accepted or connected
  connection (:func:`configure_connection`).
* ``reusePort`` is not read here: every listener has ``SO_REUSEPORT`` (upgrades and reloads hand the
  port over through it), and the daemon logs a ``reusePort: false`` it does not honour.

Options are applied to the TCP socket under a TLS stream too (:func:`raw_socket` follows
``transport_stream``). A ``setsockopt`` that fails (the peer has already reset the connection) is
ignored: the connection fails on its first read or write instead.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "WRITE_PIECE",
    "SocketOptions",
    "configure_connection",
    "configure_listener",
    "raw_socket",
    "send_all_timed",
    "socket_options",
]

#: With ``writeTimeoutMs``, bytes are written in pieces of at most this size, each bounded by the
#: timeout: a peer that keeps taking bytes, however slowly (a piece per timeout), is not stalled; one
#: bound on a whole 64 KiB write cut a client reading steadily at less than 64 KiB per timeout.
WRITE_PIECE = 16 * 1024


async def send_all_timed(
    stream: Any, data: bytes, timeout_s: float | None, progressed: Callable[[], None] | None = None
) -> bool:
    """``stream.send_all(data)`` with each :data:`WRITE_PIECE` bounded by ``timeout_s`` (None: not
    bounded); False when a piece was not taken within it (the stream is then in no state to be used
    again). ``progressed`` is called after each piece the peer took (a read timeout that counts
    bytes moved either way restarts on it)."""
    import trio

    with memoryview(data) as view:  # pieces without copies
        for i in range(0, len(view), WRITE_PIECE):
            if timeout_s is None:
                await stream.send_all(view[i : i + WRITE_PIECE])
            else:
                with trio.move_on_after(timeout_s) as scope:
                    await stream.send_all(view[i : i + WRITE_PIECE])
                if scope.cancelled_caught:
                    return False
            if progressed is not None:
                progressed()
    return True


@dataclass(frozen=True, slots=True)
class SocketOptions:
    """The socket options hostproxy applies (defaults: what it does without a ``socketOptions``)."""

    no_delay: bool = True
    reuse_addr: bool = True
    keep_alive: bool = False
    #: ``listen`` backlog; None: the listener's default (``LISTEN_BACKLOG``).
    backlog: int | None = None

    @property
    def per_connection(self) -> bool:
        """Whether each connection needs a ``setsockopt`` of its own (what differs from the defaults
        every connection already has)."""
        return not self.no_delay or self.keep_alive

    @property
    def per_accepted_connection(self) -> bool:
        """The same, for accepted connections (``SO_KEEPALIVE`` comes from the listener)."""
        return not self.no_delay


def socket_options(cfg: Any) -> SocketOptions | None:
    """The runtime options of a config ``socketOptions`` section (None: all hostproxy's defaults)."""
    if cfg is None:
        return None
    opts = SocketOptions(
        no_delay=bool(cfg.no_delay),
        reuse_addr=bool(cfg.reuse_addr),
        keep_alive=bool(cfg.keep_alive),
        backlog=cfg.backlog,
    )
    return None if opts == SocketOptions() else opts


def raw_socket(stream: Any) -> Any:
    """The TCP socket under ``stream`` (a socket stream, or a TLS stream over one), or None."""
    for _ in range(4):
        sock = getattr(stream, "socket", None)
        if sock is not None:
            return sock
        stream = getattr(stream, "transport_stream", None)
        if stream is None:
            break
    return None


def configure_connection(stream: Any, opts: SocketOptions, *, accepted: bool = False) -> None:
    """Set ``opts`` on a connection's socket (only what its defaults do not already give it;
    ``accepted``: it inherited ``SO_KEEPALIVE`` from its listener)."""
    sock = raw_socket(stream)
    if sock is None:
        return
    try:
        if not opts.no_delay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        if opts.keep_alive and not accepted:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:
        pass  # the connection is already broken: its first read or write says so


def configure_listener(sock: Any, opts: SocketOptions | None, default_backlog: int) -> None:
    """Set ``opts`` on a listening socket, bound or not (``listen`` is called again with the backlog
    when it is already listening, which changes the backlog of a socket kept across a reload)."""
    opts = opts or SocketOptions()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1 if opts.reuse_addr else 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1 if opts.keep_alive else 0)
    sock.listen(opts.backlog or default_backlog)
