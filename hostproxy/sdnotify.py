"""systemd's notify protocol (``Type=notify``), without depending on systemd.

Theory of operation
-------------------
systemd passes the path of a datagram socket in ``NOTIFY_SOCKET``; a service reports its state by
sending newline-separated ``KEY=VALUE`` assignments to it, one datagram per message. A path starting
with ``@`` names a Linux abstract socket (the ``@`` stands for a leading NUL byte). When
``NOTIFY_SOCKET`` is unset (not started by systemd, or ``Type=simple``) every call here is a no-op
that returns False, so the daemon calls these helpers unconditionally.

What hostproxy sends, and when:

* ``READY=1`` once its listeners are bound and the initial config is loaded (:func:`ready`);
* ``RELOADING=1`` + ``MONOTONIC_USEC=<CLOCK_MONOTONIC in µs>`` when a reload starts
  (:func:`reloading`), then ``READY=1`` when it is done — without the timestamp ``systemctl reload``
  may return before the reload happened or time out;
* ``STOPPING=1`` when the drain starts (:func:`stopping`);
* ``WATCHDOG=1`` every :func:`watchdog_interval` seconds — half of ``WATCHDOG_USEC`` — from the event
  loop itself (:func:`watchdog_loop`), so a wedged loop stops pinging and systemd restarts the service.
  ``WATCHDOG_PID``, when set, names the process that must ping; any other process does not.

Send errors (the socket went away, the buffer is full) are logged and swallowed: the notify protocol is
advisory and must never take the proxy down, nor stall it: a socket whose queue is full (the service
manager is busy) is not waited for by a watchdog ping, and by a state change for
:data:`STATE_SEND_WAIT_S` at most.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog
import trio

__all__ = [
    "notify",
    "ready",
    "reloading",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
    "watchdog_loop",
]

log = structlog.get_logger("hostproxy.sdnotify")


def _socket_address(path: str) -> str | bytes:
    """The address to send to: ``@name`` is the abstract socket ``\\0name``."""
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    return path


#: How long a state change (READY=1, RELOADING=1, STOPPING=1) waits for room in a full notify socket;
#: the caller is the event loop, so not long. A watchdog ping does not wait: the next one follows.
STATE_SEND_WAIT_S = 0.5


def notify(state: str, *, env: Mapping[str, str] | None = None, wait_s: float = STATE_SEND_WAIT_S) -> bool:
    """Send ``state`` (``KEY=VALUE`` lines) to ``$NOTIFY_SOCKET``.

    Returns True when the datagram was sent, False when ``NOTIFY_SOCKET`` is unset or sending failed
    (the failure is logged as ``sdnotify.failed``). A socket whose queue is full (the service manager
    is not reading) gets ``wait_s`` seconds to make room, never more: the caller is the event loop.
    """
    environ = os.environ if env is None else env
    path = environ.get("NOTIFY_SOCKET", "")
    if not path:
        return False
    if not (path.startswith("/") or path.startswith("@")):
        log.warning(
            "sdnotify.failed",
            socket=path,
            error="NOTIFY_SOCKET must be an absolute path or an @abstract name; vsock is not supported",
        )
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(wait_s)
            sock.connect(_socket_address(path))
            sock.send(state.encode())
    except OSError as e:  # (TimeoutError and BlockingIOError included: the queue stayed full)
        log.warning("sdnotify.failed", socket=path, state=state, error=str(e))
        return False
    return True


def ready(status_text: str | None = None, *, env: Mapping[str, str] | None = None) -> bool:
    """``READY=1`` (with an optional ``STATUS=`` line): startup or a reload has finished."""
    msg = "READY=1"
    if status_text:
        msg += f"\nSTATUS={_one_line(status_text)}"
    return notify(msg, env=env)


def reloading(*, env: Mapping[str, str] | None = None, monotonic_ns: int | None = None) -> bool:
    """``RELOADING=1`` with ``MONOTONIC_USEC`` (CLOCK_MONOTONIC, µs); send :func:`ready` when done."""
    ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC) if monotonic_ns is None else monotonic_ns
    return notify(f"RELOADING=1\nMONOTONIC_USEC={ns // 1000}", env=env)


def stopping(*, env: Mapping[str, str] | None = None) -> bool:
    """``STOPPING=1``: the drain has started."""
    return notify("STOPPING=1", env=env)


def status(text: str, *, env: Mapping[str, str] | None = None) -> bool:
    """``STATUS=<text>``: one line shown by ``systemctl status``."""
    return notify(f"STATUS={_one_line(text)}", env=env)


def watchdog(*, env: Mapping[str, str] | None = None) -> bool:
    """``WATCHDOG=1``: the keep-alive ping (dropped, not waited for, when the socket is full)."""
    return notify("WATCHDOG=1", env=env, wait_s=0)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def watchdog_interval(*, env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or None when none are expected.

    None when ``WATCHDOG_USEC`` is unset, not a positive integer, when ``NOTIFY_SOCKET`` is unset, or
    when ``WATCHDOG_PID`` names another process (a child that inherited the environment must not ping).
    """
    environ = os.environ if env is None else env
    if not environ.get("NOTIFY_SOCKET"):
        return None
    raw = environ.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    wpid = environ.get("WATCHDOG_PID")
    if wpid:
        try:
            if int(wpid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 1_000_000 / 2


def _no_watchdog_reason(environ: Mapping[str, str]) -> str | None:
    """Why no pings are sent although ``WATCHDOG_USEC`` is set (None: it is not, or pings are sent)."""
    raw = environ.get("WATCHDOG_USEC")
    if not raw or not environ.get("NOTIFY_SOCKET"):
        return None
    wpid = environ.get("WATCHDOG_PID")
    if wpid and wpid.strip() != str(os.getpid()):
        return (
            f"WATCHDOG_PID={wpid} names another process (this one is {os.getpid()}): the watchdog is "
            "that process's; run hostproxy as the unit's main process (exec it from a wrapper script)"
        )
    return f"WATCHDOG_USEC={raw} is not a positive number of microseconds"


async def watchdog_loop(*, env: Mapping[str, str] | None = None) -> None:
    """Ping the watchdog every :func:`watchdog_interval` seconds until cancelled.

    Returns at once when no watchdog is configured. Run it in the daemon's nursery: it pings from the
    event loop, so a loop blocked by a runaway handler misses its pings and systemd restarts the
    service after ``WatchdogSec``.
    """
    interval = watchdog_interval(env=env)
    if interval is None:
        reason = _no_watchdog_reason(os.environ if env is None else env)
        if reason is not None:
            # systemd asked for pings this process will not send: say so, or the unit's watchdog
            # kills a healthy daemon with nothing in the log to tell why.
            log.warning("sdnotify.watchdog_skipped", reason=reason)
        return
    log.info("sdnotify.watchdog_started", interval_s=interval)
    while True:
        watchdog(env=env)
        await trio.sleep(interval)
