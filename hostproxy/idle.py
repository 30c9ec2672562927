"""Waiting for an idle event loop, for periodic work that should run between bursts of requests.

A request is answered after every piece of work the loop does before it, so work that is not part
of any request (applying deferred metrics records, overload sampling) delays the requests that
arrive while it runs. :func:`wait_idle` returns once the loop has been idle for a moment: no task
runnable and no I/O ready for ``idle_s`` of real time. Bursts of requests (each request's reading,
forwarding and answering) keep the loop busy; the gaps between them are where such work belongs.

It is trio's own ``wait_all_tasks_blocked`` (the function ``trio.testing`` re-exports), imported
from where it is defined: importing ``trio.testing`` would cost the daemon's start about 80 ms for
modules it does not use.
"""

from __future__ import annotations

import trio

try:
    from trio._core import wait_all_tasks_blocked as _wait_all_tasks_blocked
except ImportError:  # pragma: no cover - a trio that moved it
    from trio.testing import wait_all_tasks_blocked as _wait_all_tasks_blocked

__all__ = ["IDLE_S", "wait_idle"]

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
