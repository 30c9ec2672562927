"""Waiting for an idle event loop, for periodic work that should run between bursts of requests.

A request is answered after every piece of work the loop does before it, so work that is not part
of any request (applying deferred metrics records, overload sampling) delays the requests that
arrive while it runs. :func:`wait_idle` returns once the loop has been idle for a moment: no task
runnable and no I/O ready for ``idle_s`` of real time; :func:`run_when_idle` does a piece of work
that way periodically (the daemon's flush of deferred metrics records). Bursts of requests (each request's reading,
forwarding and answering) keep the loop busy; the gaps between them are where such work belongs.

It is trio's own ``wait_all_tasks_blocked`` (the function ``trio.testing`` re-exports), imported
from where it is defined: importing ``trio.testing`` would cost the daemon's start about 80 ms for
modules it does not use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

try:
    from trio._core import wait_all_tasks_blocked as _wait_all_tasks_blocked
except ImportError:  # pragma: no cover - a trio that moved it
    from trio.testing import wait_all_tasks_blocked as _wait_all_tasks_blocked

__all__ = ["IDLE_S", "run_when_idle", "wait_idle"]

#: How long the loop must have been idle (seconds, real time), by default.
IDLE_S = 0.001


async def wait_idle(idle_s: float = IDLE_S, at_most_s: float | None = None) -> bool:
    """Return once the loop has been idle for ``idle_s``: True; or, with ``at_most_s``, after that
    long at most (a loop that is never idle): False."""
    if at_most_s is None:
        await _wait_all_tasks_blocked(idle_s)
        return True
    with trio.move_on_after(at_most_s):
        await _wait_all_tasks_blocked(idle_s)
        return True
    return False


async def run_when_idle(
    work: Callable[[], Any],
    pending: Callable[[], Any],
    *,
    every_s: float,
    idle_s: float = IDLE_S,
    at_most_s: float | None = None,
    quiet_max_s: float | None = None,
    final: Callable[[], Any] | None = None,
) -> None:
    """Every ``every_s``, when ``pending()`` is true, wait for an idle loop (``at_most_s`` at most)
    and call ``work()``: between bursts of requests, never inside one. ``work()`` may do a piece of
    what is pending: while ``pending()`` stays true, each next piece waits for an idle loop again,
    so that a request arriving meanwhile waits for one piece at most. While nothing is pending it
    looks half as often each time, down to once per ``quiet_max_s`` (None: always every
    ``every_s``), so that a quiet process does not wake for nothing; after ``work()`` it looks every
    ``every_s`` again. Runs until cancelled; then calls ``final()`` (``work`` when None) once, so
    nothing pending is left behind."""
    interval = every_s
    try:
        while True:
            await trio.sleep(interval)
            if pending():
                while True:
                    await wait_idle(idle_s, at_most_s=at_most_s)
                    work()
                    if not pending():
                        break
                interval = every_s
            elif quiet_max_s is not None and interval < quiet_max_s:
                interval = min(interval * 2, quiet_max_s)
    finally:
        (work if final is None else final)()
