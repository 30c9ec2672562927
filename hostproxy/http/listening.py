"""What every protocol's server does around its connections: listen, accept, stop, drain, count.

Theory of operation
-------------------
:class:`ListeningServer` is the base of ``Http1Server`` (``hostproxy.http.server``) and ``H2Server``
(``hostproxy.h2.server``). It owns the listening sockets and the connection tasks; a subclass says
only how one accepted stream becomes a connection object (a :class:`ServedConnection`: ``serve``,
``start_drain``) and, where its protocol needs it, how connections are admitted and accounted for
(the hooks at the end of the class). The daemon and the admin server drive every
protocol's server through the same surface: ``serve`` / ``stop_accepting`` / ``drain`` / ``idle`` /
``statistics`` / ``addresses`` / ``draining``.

* ``serve(listeners=None)`` binds ``params.ip:params.port`` (:func:`bind_listeners`: ``SO_REUSEPORT``,
  so a new process can listen beside an old one during an upgrade) unless it is given listeners
  (inherited sockets, systemd socket activation, TLS listeners), logs ``<prefix>.server.started``,
  reports the addresses through ``task_status.started`` and runs one accept loop per listener and one
  task per connection in one nursery. It returns once every connection has ended after
  :meth:`ListeningServer.stop_accepting`, or when cancelled; the listeners are closed either way.
* Accepting: an ``OSError`` from ``accept`` (``EMFILE`` and friends) is logged as
  ``<prefix>.accept_failed`` and retried after a pause instead of spinning; ``EBADF``/``EINVAL``
  mean the socket was closed under the loop and end it. Accepting waits while the overload manager
  says so (:meth:`ListeningServer._accept_allowed`), and a connection beyond
  ``params.max_connections`` is closed at once (:meth:`ListeningServer._admit`).
  A connection is counted in ``connections`` the moment it is admitted, so a burst cannot slip past a
  cap and ``idle`` cannot be true while a connection task is still about to start.
* ``stop_accepting`` closes the listening sockets and ends the accept loops. With
  ``serves_backlog`` set, connections the kernel already queued are accepted first
  (:func:`take_backlog`) and served like any other, so none is reset by the close: each accept
  loop, however it learns of the close (its cancel scope, or trio waking its pending ``accept``
  with ``ClosedResourceError``), starts them once it ends. Before that sweep the listener stops
  taking new handshakes (:func:`refuse_new_handshakes`: a socket filter dropping SYNs, whose
  clients retry in about a second on another ``SO_REUSEPORT`` listener or are refused after the
  close), so no connection completes between the sweep and the close. What the kernel alone still
  resets (``net.ipv4.tcp_migrate_req`` off): a handshake whose SYN came before the filter and whose
  final ACK arrives after the sweep, a window of microseconds on loopback.
* ``drain`` (once: ``<prefix>.server.draining`` with the connection and in-flight counts) sets
  ``draining``, stops accepting and tells every open connection to finish
  (``start_drain``, see :class:`ServedConnection`); a connection that starts after that is told at
  once.
* A connection task that raises is counted (``connection_failures``) and logged as
  ``<prefix>.connection_failed``; it ends only that connection. Its stream is closed either way.
* Idle deadlines: a protocol whose connections wait for their next request with a deadline can
  hand the waits to the server's :class:`IdleTimer` (``idle_timer``) instead of giving each wait its
  own deadline; the timer runs as a task in the connections' nursery while connections are open.
"""

from __future__ import annotations

import errno
import itertools
import os
import random
import select
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import inf
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import structlog
import trio

from hostproxy.http.sockopts import SocketOptions, configure_connection, configure_listener

__all__ = [
    "LISTEN_BACKLOG",
    "IdleTimer",
    "IdleWaiter",
    "ListeningServer",
    "ServedConnection",
    "ServerStats",
    "abort",
    "bind_listeners",
    "sockaddr",
    "take_backlog",
]

LISTEN_BACKLOG = 1024

#: How long the accept loop waits after an ``accept`` error (descriptors exhausted, ...).
ACCEPT_RETRY_S = 0.1
#: How often at most a server logs its failed ``accept`` calls.
ACCEPT_LOG_EVERY_S = 10.0
#: What to do about an ``accept`` that failed for want of a resource, by ``errno``: hostproxy's own
#: descriptor limit (EMFILE) or the host's file table (ENFILE), which raising the first cannot help.
_ACCEPT_HINTS = {
    errno.EMFILE: (
        "; hostproxy is out of file descriptors: raise LimitNOFILE= (systemd) or ulimit -n, or "
        "lower servers[].maxConnections"
    ),
    errno.ENFILE: (
        "; the host is out of file descriptors: raise fs.file-max or find the process holding them, "
        "or lower servers[].maxConnections"
    ),
}

log = structlog.get_logger("hostproxy.http.listening")


class ListenParams(Protocol):
    """The parameters the lifecycle reads (``ServerParams`` and its subclasses have them)."""

    @property
    def ip(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def router_label(self) -> str: ...

    @property
    def max_connections(self) -> int | None: ...

    @property
    def socket_options(self) -> SocketOptions | None: ...


@dataclass
class ServerStats:
    """The counters every protocol's server reports first, in this order (a server's statistics are
    a dataclass deriving from this one; its own fields follow)."""

    connections: int = 0
    connections_total: int = 0
    requests_in_flight: int = 0
    requests_total: int = 0
    rejected_overload: int = 0
    #: ``accept`` calls that failed (out of file descriptors and the like).
    accept_failures: int = 0


class LifecycleStats(Protocol):
    """The counters the lifecycle keeps in a server's statistics."""

    connections: int
    connections_total: int
    requests_in_flight: int
    connection_failures: int
    rejected_connections: int
    accept_paused: int
    accept_failures: int


class ServedConnection(Protocol):
    """One accepted connection, as the lifecycle drives it."""

    async def serve(self) -> None:
        """Serve the connection until it ends (its stream is closed afterwards by the server)."""

    def start_drain(self) -> None:
        """The server is draining: finish what is in progress, take nothing new, then close.

        Called on every :meth:`ListeningServer.drain` call while open (so it must be idempotent), and
        at once for a connection that starts while the server is draining."""


ConnT = TypeVar("ConnT", bound=ServedConnection)


def sockaddr(addr: Any) -> tuple[str, int]:
    """``(host, port)`` of a socket address (IPv6 flow info and scope dropped; ``(path, 0)`` else)."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        return (str(addr[0]), int(addr[1]))
    return (str(addr), 0)


def _proc_address(text: str) -> bytes:
    """An address of ``/proc/net/tcp{,6}`` (32-bit words in the host's byte order) in network order."""
    return b"".join(struct.pack("=I", int(text[i : i + 8], 16)) for i in range(0, len(text), 8))


def listening_elsewhere(ip: str, port: int, proc_net: str = "/proc/net") -> bool:
    """Whether some socket on this host already listens on TCP ``ip:port`` (or on the port of every
    address), as the kernel's table says: with ``SO_REUSEPORT`` a second bind succeeds in silence and
    the two sockets share the connections. False when the table cannot be read (not Linux)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    want = socket.inet_pton(family, ip)
    anywhere = bytes(len(want))
    try:
        with open(f"{proc_net}/{'tcp6' if family == socket.AF_INET6 else 'tcp'}") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if len(fields) < 4 or fields[3] != "0A":  # 0A: LISTEN
            continue
        addr, _, port_hex = fields[1].partition(":")
        try:
            if int(port_hex, 16) != port:
                continue
            local = _proc_address(addr)
        except ValueError:
            continue
        if local in (want, anywhere) or want == anywhere:
            return True
    return False


def bind_listeners(
    ip: str, port: int, *, reuse_port: bool = True, options: SocketOptions | None = None
) -> list[trio.SocketListener]:
    """Listening sockets on ``ip:port`` with ``SO_REUSEADDR`` and (by default) ``SO_REUSEPORT``.

    ``SO_REUSEPORT`` lets a second hostproxy process bind the same port during an upgrade; the kernel
    spreads new connections over both until the old one closes its listener. ``options`` (a server's
    ``socketOptions``) may turn ``SO_REUSEADDR`` off, set ``SO_KEEPALIVE`` (which accepted connections
    inherit) and the backlog (else ``LISTEN_BACKLOG``).
    """
    opts = options or SocketOptions()
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    where = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    # (Asked before the bind, said after it: when the other socket has no SO_REUSEPORT the bind fails
    # with its own message, and nothing is shared.)
    shared = bool(reuse_port and port and listening_elsewhere(ip, port))
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if opts.reuse_addr:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if opts.keep_alive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((ip, port))
        sock.listen(opts.backlog or LISTEN_BACKLOG)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRNOTAVAIL:
            advice = (
                f"no network interface of this host has the address {ip}: correct the ip in the config "
                "(admin.ip, servers[].ip), or listen on 0.0.0.0"
            )
        elif e.errno == errno.EACCES and 0 < port < 1024:
            advice = (
                f"port {port} is privileged: run hostproxy with CAP_NET_BIND_SERVICE "
                "(AmbientCapabilities= in its systemd unit), or use a port from 1024"
            )
        elif e.errno == errno.EADDRINUSE:
            advice = "is another process (not a hostproxy with SO_REUSEPORT) using the port?"
        else:
            advice = ""
        raise OSError(
            e.errno, f"cannot listen on {where}: {e.strerror}" + (f"; {advice}" if advice else "")
        ) from None
    if shared:
        log.warning(
            "listen.port_shared",
            address=where,
            message=(
                f"another socket already listens on {where}: with SO_REUSEPORT both take connections, "
                "the kernel spreading new ones over this process and that one. Expected while a "
                "hostproxy being replaced drains; otherwise stop the other process "
                f"(`ss -ltnp 'sport = :{port}'` names it)"
            ),
        )
    sock.setblocking(False)
    return [trio.SocketListener(trio.socket.from_stdlib_socket(sock))]


#: A classic BPF socket filter that drops TCP segments with SYN set and ACK clear (a new handshake's
#: first segment) and passes everything else. The filter sees the TCP header at offset 0; byte 13
#: holds the flags (SYN 0x02, ACK 0x10).
_DROP_SYN = (
    (0x30, 0, 0, 13),  # ldb [13]
    (0x54, 0, 0, 0x12),  # and #(SYN|ACK)
    (0x15, 0, 1, 0x02),  # jeq #SYN, drop, pass
    (0x06, 0, 0, 0),  # ret #0: drop
    (0x06, 0, 0, 0xFFFFFFFF),  # ret #-1: pass
)
_SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)


def refuse_new_handshakes(listener: Any) -> bool:
    """Stop ``listener`` from starting handshakes before it is closed: new SYNs are dropped (the
    client retransmits in about a second, and the kernel then gives it to another ``SO_REUSEPORT``
    listener of the port, or refuses it once this one is closed), while handshakes already under way
    still complete into the backlog. Without it a connection could complete its handshake between
    the last backlog sweep and the close, and be reset by the close.

    Linux only (``SO_ATTACH_FILTER``); False when it could not be attached (then nothing changes).
    Connections accepted afterwards inherit the filter, which only drops SYN-without-ACK segments an
    established connection has no use for."""
    import ctypes

    try:
        sock = listener.socket
        if sock.fileno() < 0 or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        code = b"".join(struct.pack("HBBI", *ins) for ins in _DROP_SYN)
        buf = ctypes.create_string_buffer(code, len(code))
        prog = struct.pack("HL", len(_DROP_SYN), ctypes.addressof(buf))
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, prog)
    except (OSError, AttributeError, TypeError, ValueError):
        return False
    return True


def take_backlog(listener: Any) -> list[Any]:
    """Accept (without blocking) every connection the kernel already queued on ``listener``; a TLS
    listener (one with ``wrap``) wraps each, so they are served over TLS like accepted ones.

    Returns the streams (none when the listener is already closed)."""
    wrap = getattr(listener, "wrap", None)
    taken: list[Any] = []
    try:
        fd = listener.socket.fileno()
        if fd < 0:
            return taken
        dup = socket.socket(fileno=os.dup(fd))
    except OSError:
        return taken
    try:
        dup.setblocking(False)
        while True:
            try:
                raw, _peer = dup.accept()
            except OSError:  # BlockingIOError: the backlog is empty
                break
            raw.setblocking(False)
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(raw))
            taken.append(wrap(stream) if wrap is not None else stream)
    finally:
        dup.close()
    return taken


def readable(sock: socket.socket) -> bool:
    """Whether a receive on ``sock`` would return at once: bytes, the end of the stream or an error
    are pending (a closed socket counts as readable: a wait on it ends at once too)."""
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


class IdleWaiter(Protocol):
    """A connection whose wait for its next request an :class:`IdleTimer` may end."""

    def idle_expired(self) -> None:
        """The wait's deadline passed (or a drain ends it): end the wait now, unless the request's
        bytes already arrived (then the connection serves them as if no deadline had passed)."""


class IdleTimer:
    """Ends the waits of idle connections past their deadlines: one task per server, instead of a
    deadline registered with trio's run loop and removed again for every wait.

    A connection calls :meth:`add` when it starts waiting for its next request and removes itself
    from :attr:`waiting` when the wait ends (however it ends). The timer task sleeps until the
    earliest deadline, then calls ``idle_expired`` on each connection whose deadline passed (and
    forgets it). With one idle timeout per server, deadlines are in the order the waits started, so
    :attr:`waiting` (a dict: insertion-ordered) is a FIFO and only its oldest entry is looked at; a
    drain brings deadlines forward (:meth:`advance`), so while the server drains every entry is.

    Precision is the same as a trio deadline's: the task wakes at the earliest deadline (it sleeps in
    a cancel scope whose deadline is moved when an earlier one arrives), and the connection is told in
    that same run-loop batch, so its cost is per idle timeout, not per request. The task starts (in
    the server's connection nursery) with the first finite deadline and ends when :meth:`stop` is
    called (the server has no connection left), so it never keeps the server's nursery open.
    """

    __slots__ = ("waiting", "_server", "_target", "_sleep", "_running", "_stop")

    def __init__(self, server: ListeningServer[Any]) -> None:
        #: The connections waiting for a request, with their deadlines (``inf``: only a drain ends it).
        self.waiting: dict[IdleWaiter, float] = {}
        self._server = server
        #: When the task wakes next (``inf``: it is not running, or has nothing to time).
        self._target = inf
        self._sleep: trio.CancelScope | None = None
        self._running = False
        self._stop = False

    @property
    def available(self) -> bool:
        """Whether the timer can run (the server is serving: there is a nursery for its task)."""
        return self._server._nursery is not None

    def add(self, conn: IdleWaiter, due: float) -> None:
        """``conn`` starts waiting; its wait is to end at ``due`` (a ``trio.current_time()``)."""
        self.waiting[conn] = due
        if due < self._target:
            self._wake_at(due)

    def advance(self, conn: IdleWaiter, due: float) -> None:
        """Bring a waiting connection's deadline forward to ``due`` (no-op if it is not waiting or
        its deadline is already earlier)."""
        waiting = self.waiting
        old = waiting.get(conn)
        if old is not None and due < old:
            waiting[conn] = due  # in place: the FIFO order no longer holds (only drain does this)
            if due < self._target:
                self._wake_at(due)

    def stop(self) -> None:
        """End the task (nothing is waiting: the server has no connection left)."""
        if self._running:
            self._stop = True
            self._target = inf  # the next ``add`` restarts the timer
            if self._sleep is not None:
                self._sleep.cancel()

    def _wake_at(self, due: float) -> None:
        self._target = due
        self._stop = False
        if self._sleep is not None:
            self._sleep.deadline = due
        elif not self._running:
            nursery = self._server._nursery
            assert nursery is not None, "IdleTimer used while its server is not serving"
            self._running = True
            nursery.start_soon(self._run)
        # else: the task is between two sleeps and looks at ``waiting`` before it sleeps again

    async def _run(self) -> None:
        try:
            while not self._stop:
                # With nothing to time (``inf``) it sleeps until an ``add`` sets a deadline: exiting
                # instead would restart a task whenever every connection happens to be busy.
                due = self._expire(trio.current_time())
                self._target = due
                with trio.CancelScope(deadline=due) as self._sleep:
                    await trio.sleep_forever()
                self._sleep = None
        finally:
            self._sleep = None
            self._running = False
            self._stop = False
            self._target = inf

    def _expire(self, now: float) -> float:
        """Tell the connections whose deadline passed; returns the earliest deadline left."""
        waiting = self.waiting
        if self._server.draining:
            expired = [conn for conn, due in waiting.items() if due <= now]
            for conn in expired:
                del waiting[conn]
                conn.idle_expired()
            return min(waiting.values(), default=inf)
        while waiting:
            conn = next(iter(waiting))
            due = waiting[conn]
            if due > now:
                return due
            del waiting[conn]
            conn.idle_expired()
        return inf


def abort(stream: trio.SocketStream) -> None:
    """Close a connection at once (the peer sees it closed, not a hang)."""
    try:
        stream.socket.close()
    except OSError:
        pass


class ListeningServer(Generic[ConnT]):
    """Listeners, accept loops, connection tasks, stop/drain and the lifecycle counters.

    A subclass sets ``logger`` (its module's logger), ``log_prefix`` (``"http"``, ``"h2"``: the first
    part of every lifecycle event name) and ``_stats`` (a dataclass whose fields are exactly its
    statistics keys, the :class:`LifecycleStats` ones among them), and implements the hooks.
    """

    logger: ClassVar[Any]
    log_prefix: ClassVar[str]
    #: Whether ``stop_accepting`` first accepts what the kernel already queued (see :func:`take_backlog`).
    serves_backlog: ClassVar[bool] = True

    params: ListenParams
    _stats: LifecycleStats

    def __init__(self, *, rng: random.Random | None = None, overload: Any = None) -> None:
        self._rng = rng or random.Random()
        self._ids = itertools.count(1)
        self.addresses: list[tuple[str, int]] = []
        #: ``hostproxy.overload.OverloadManager`` or None, read by the protocols that honour it.
        self.overload = overload
        self.draining = False
        self._listeners: list[Any] = []
        self._accepting: list[trio.CancelScope] = []
        self._conns: set[ConnT] = set()
        self._backlog: list[Any] = []
        # When a failed ``accept`` was last logged, and the count of failures then.
        self._accept_logged_at = -inf
        self._accept_logged_count = 0
        #: The nursery of the connection tasks while ``serve`` runs.
        self._nursery: trio.Nursery | None = None
        #: ``trio.current_time``, as the run's clock's own method while ``serve`` runs (one call
        #: where ``trio.current_time`` makes three).
        self.now: Callable[[], float] = trio.current_time
        self.idle_timer = IdleTimer(self)

    def statistics(self) -> dict[str, Any]:
        """The counters, a fresh dict (nested dicts copied too)."""
        return {k: dict(v) if isinstance(v, dict) else v for k, v in self._stats.__dict__.items()}

    def __repr__(self) -> str:
        s = self._stats
        return (
            f"<{type(self).__name__} {self.params.router_label} on {self.addresses} "
            f"connections={s.connections} in_flight={s.requests_in_flight}>"
        )

    async def serve(
        self,
        listeners: Sequence[Any] | None = None,
        *,
        task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled, or until stopped and idle; reports the bound addresses.

        Binds ``params.ip:params.port`` with :func:`bind_listeners` unless ``listeners`` are given
        (adopted sockets, e.g. from systemd socket activation, or TLS listeners).
        """
        if listeners is None:
            listeners = bind_listeners(
                self.params.ip, self.params.port, options=getattr(self.params, "socket_options", None)
            )
        self._listeners = list(listeners)
        self.addresses = [sockaddr(lst.socket.getsockname()) for lst in listeners]
        self.logger.info(
            f"{self.log_prefix}.server.started", router=self.params.router_label, addresses=self.addresses
        )
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.now = trio.lowlevel.current_clock().current_time
                for lst in listeners:
                    scope = trio.CancelScope()
                    self._accepting.append(scope)
                    nursery.start_soon(self._accept_loop, lst, nursery, scope)
                task_status.started(self.addresses)
        finally:
            self._nursery = None
            self.now = trio.current_time
            # Taken from the backlog but never started (``serve`` was cancelled first): close them.
            backlog, self._backlog = self._backlog, []
            for stream in backlog:
                abort(stream)
            with trio.CancelScope(shield=True):
                for lst in listeners:
                    await lst.aclose()

    # -- lifecycle ---------------------------------------------------------------------------------

    def stop_accepting(self) -> None:
        """Close the listening sockets now (with ``serves_backlog``, what the kernel already queued is
        accepted first and served)."""
        for lst in self._listeners:
            if self.serves_backlog:
                refuse_new_handshakes(lst)
                self._backlog.extend(take_backlog(lst))
            try:
                lst.socket.close()
            except OSError:
                pass
        for scope in self._accepting:
            scope.cancel()
        if self._listeners:
            self.logger.info(
                f"{self.log_prefix}.server.stopped_accepting",
                router=self.params.router_label,
                addresses=self.addresses,
            )

    def configure_listeners(self, options: SocketOptions | None) -> None:
        """Set ``options`` (``socketOptions``) on the listening sockets in use: a reload that changed
        them, or sockets adopted from systemd (what an accepted connection inherits from its
        listener, and the backlog, change at once; a closed listener is left alone)."""
        for lst in self._listeners:
            try:
                configure_listener(lst.socket, options, LISTEN_BACKLOG)
            except OSError:
                pass

    def drain(self) -> None:
        """Stop accepting and tell every open connection to finish (see the subclass for how)."""
        if not self.draining:
            self.draining = True
            self.logger.info(
                f"{self.log_prefix}.server.draining",
                router=self.params.router_label,
                addresses=self.addresses,
                connections=self._stats.connections,
                in_flight=self._stats.requests_in_flight,
            )
        self.stop_accepting()
        for conn in list(self._conns):
            conn.start_drain()

    @property
    def idle(self) -> bool:
        """No connection open (after :meth:`drain`, the drain is complete)."""
        return self._stats.connections == 0

    # -- accepting and running connections ---------------------------------------------------------

    async def _accept_loop(self, listener: Any, nursery: trio.Nursery, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                await self._accept_allowed()
                try:
                    stream = await listener.accept()
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    break  # closed by stop_accepting: trio wakes a waiting accept with this
                except OSError as exc:  # EMFILE and friends: back off instead of spinning
                    if exc.errno in (errno.EBADF, errno.EINVAL):
                        break  # the listener was closed under us (stop_accepting)
                    self._accept_failed(exc)
                    await trio.sleep(ACCEPT_RETRY_S)
                    continue
                self._start_connection(nursery, stream)
        # Ended by stop_accepting, whichever way the loop noticed (the scope's cancellation, or the
        # close waking the pending accept first): serve what was accepted from the backlog. Left
        # unserved, those connections would stay open until the process exits and then be reset,
        # their requests unanswered.
        backlog, self._backlog = self._backlog, []
        for stream in backlog:
            self._start_connection(nursery, stream)

    def _accept_failed(self, exc: OSError) -> None:
        """Count a failed ``accept`` and log it: the first, then at most once per
        ``ACCEPT_LOG_EVERY_S`` with how many failed since (it is retried every ``ACCEPT_RETRY_S``, so
        a daemon out of descriptors would otherwise log ten lines a second)."""
        self._stats.accept_failures += 1
        now = trio.current_time()
        if now - self._accept_logged_at < ACCEPT_LOG_EVERY_S:
            return
        hint = _ACCEPT_HINTS.get(exc.errno or 0, "")
        self.logger.warning(
            f"{self.log_prefix}.accept_failed",
            router=self.params.router_label,
            error=f"{exc}{hint}",
            failures=self._stats.accept_failures - self._accept_logged_count,
        )
        self._accept_logged_at = now
        self._accept_logged_count = self._stats.accept_failures

    def _start_connection(self, nursery: trio.Nursery, stream: Any) -> None:
        if not self._admit(stream):
            abort(stream)
            return
        self._stats.connections += 1  # counted at once, so a burst cannot exceed a cap
        opts = getattr(self.params, "socket_options", None)
        if opts is not None and opts.per_accepted_connection:
            configure_connection(stream, opts, accepted=True)
        nursery.start_soon(self._run_connection, stream)

    async def _run_connection(self, stream: Any) -> None:
        stats = self._stats
        stats.connections_total += 1
        conn: ConnT | None = None
        try:
            conn = self._new_connection(stream, next(self._ids))
            self._conns.add(conn)
            if self.draining:
                conn.start_drain()
            await conn.serve()
        except Exception:
            stats.connection_failures += 1
            self.logger.exception(f"{self.log_prefix}.connection_failed", router=self.params.router_label)
        finally:
            stats.connections -= 1
            if stats.connections == 0:
                self.idle_timer.stop()
            if conn is not None:
                self._conns.discard(conn)
                self._connection_closed(conn)
            with trio.CancelScope(shield=True):
                await stream.aclose()

    # -- hooks -------------------------------------------------------------------------------------

    async def _accept_allowed(self) -> None:
        """Return once the next ``accept`` may be called: at once, unless the overload manager holds
        accepting back (memory or descriptors), which leaves new connections in the kernel's backlog."""
        ov = self.overload
        if ov is not None and not ov.accept_allowed:
            self._stats.accept_paused += 1
            while not ov.accept_allowed:
                await trio.sleep(0.05)

    def _admit(self, stream: Any) -> bool:
        """Whether to serve a just-accepted connection (``params.max_connections`` caps open ones);
        a refused one is closed at once."""
        limit = self.params.max_connections
        if limit is not None and self._stats.connections >= limit:
            self._stats.rejected_connections += 1
            return False
        return True

    def _new_connection(self, stream: Any, conn_id: int) -> ConnT:
        """The connection object for an accepted ``stream`` (numbered from 1 per server)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _new_connection")

    def _connection_closed(self, conn: ConnT) -> None:
        """Bookkeeping once ``conn`` has ended (default: none)."""
