"""Certificate reload: a trio task that polls the TLS objects' files and swaps in new contexts.

Theory of operation
-------------------
Each reloadable object (:class:`~hostproxy.tls.ServerTls`, :class:`~hostproxy.tls.ClientTls`) knows
the stat signature of the files its current context was built from and rebuilds only when it
changes (``maybe_reload()``; a broken new set is logged and the old context kept). The watcher just
calls ``maybe_reload()`` on each object every ``interval_s``: stat is cheap, and polling works the
same for files edited in place, replaced by rename, and Kubernetes secret volumes (a symlink swap).
``objects`` is a callable so clients created after start (one per bound name) are watched too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

import structlog
import trio

__all__ = ["DEFAULT_INTERVAL_S", "Reloadable", "reload_all", "watch_certificates"]

log = structlog.get_logger("hostproxy.tls")

DEFAULT_INTERVAL_S = 5.0


class Reloadable(Protocol):
    def maybe_reload(self) -> bool: ...


def reload_all(objects: Iterable[Reloadable]) -> int:
    """Call ``maybe_reload()`` on each object; the number that loaded a new generation."""
    n = 0
    for obj in objects:
        try:
            if obj.maybe_reload():
                n += 1
        except Exception:  # a bug in one object must not stop the others from reloading
            log.exception("tls.reload.failed", object=repr(obj))
    return n


async def watch_certificates(
    objects: Callable[[], Iterable[Reloadable]],
    *,
    interval_s: float = DEFAULT_INTERVAL_S,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Poll forever (until cancelled): every ``interval_s``, reload whatever changed."""
    task_status.started()
    while True:
        await trio.sleep(interval_s)
        reload_all(objects())
