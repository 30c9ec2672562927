"""The daemon's garbage-collector policy: what survived a full collection stays out of the next ones.

Theory of operation
-------------------
CPython frees almost every object by reference counting; its cyclic collector exists for the rest and
pauses the whole process while it runs. A full (generation 2) collection walks every tracked object
that is not frozen, so its pause grows with the heap. The daemon freezes what it built at start
(``gc.freeze()`` after one collection), but everything made afterwards stays in the walk: with 1,000
clients built by traffic (bindings, pools, balancers, their metrics), ``make bench``'s admin part
measured full collections of 24, 30, 49, 80, 85, 105, 125 and 168 ms, each a stall of every request.

:class:`GcPolicy` is a pure state machine driven by the collector's callbacks (``gc.callbacks``: a
``start`` and a ``stop`` per collection), with the ``gc`` functions and the clock injected:

* **After every full collection, freeze.** The collection has just freed every unreachable cycle, so
  what it leaves was alive a moment ago; ``gc.freeze()`` moves it out of later walks. It costs
  nothing that grows with the heap (CPython splices its generation lists), so it is done in the
  ``stop`` callback itself, before anything new is made. The next full collection walks only what was
  made, and survived, since.
* **Once a period, one complete walk.** An object that dies while frozen is still freed by reference
  counting, as nearly all are; only a cycle that becomes garbage while frozen stays until it is
  unfrozen. So once ``full_every_s`` (default one hour) has passed since the last complete walk, the
  end of a full collection unfreezes instead of freezing: the next full collection walks the whole
  heap (the one long pause of the period) and frees what cycles died meanwhile, and freezing resumes
  at its end. What can pile up is bounded by what one period makes.
* A reload still does its own ``unfreeze``, ``collect``, ``freeze`` (what the old config built is
  garbage at once); :meth:`GcPolicy.walked_all` counts that as a complete walk.

Every pause is timed (``perf_counter`` between ``start`` and ``stop``), and
:meth:`GcPolicy.statistics` reports, per generation, the collections, their total and longest pause,
and the freezes, complete walks and currently frozen objects, for ``/admin/process.json``: a latency
spike that lines up with a long full collection is the collector's, not the network's.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["GcPolicy", "GcStats", "install", "installed", "uninstall"]

#: A complete walk of the heap at most this often (seconds), by default.
FULL_EVERY_S = 3600.0


class GcFunctions(Protocol):
    """The parts of the ``gc`` module the policy calls (the module itself in the daemon)."""

    def freeze(self) -> None: ...

    def unfreeze(self) -> None: ...

    def get_freeze_count(self) -> int: ...


@dataclass
class GcStats:
    """Pauses of one generation's collections."""

    collections: int = 0
    pause_s_total: float = 0.0
    pause_s_max: float = 0.0


@dataclass
class GcPolicy:
    """Freeze after full collections; once per ``full_every_s``, let one full collection walk all."""

    gc_functions: GcFunctions = field(default_factory=lambda: gc)  # type: ignore[arg-type]
    clock: Callable[[], float] = time.monotonic
    timer: Callable[[], float] = time.perf_counter
    full_every_s: float = FULL_EVERY_S
    #: Per generation (0, 1, 2).
    generations: tuple[GcStats, GcStats, GcStats] = field(
        default_factory=lambda: (GcStats(), GcStats(), GcStats())
    )
    freezes: int = 0
    complete_walks: int = 0
    #: True from an unfreeze until the full collection after it has ended (that one walks all).
    walking_all: bool = False
    _last_walk: float | None = None
    _started: float | None = None

    def walked_all(self) -> None:
        """Everything was just collected and frozen outside the callbacks (start, reload)."""
        self._last_walk = self.clock()
        self.walking_all = False
        self.complete_walks += 1

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        """The ``gc.callbacks`` entry: ``phase`` is ``"start"`` or ``"stop"``; ``info`` has the
        ``generation`` collected."""
        if phase == "start":
            self._started = self.timer()
            return
        if phase != "stop":
            return
        generation = info.get("generation", 0)
        if generation not in (0, 1, 2):
            return
        started, self._started = self._started, None
        stats = self.generations[generation]
        stats.collections += 1
        if started is not None:
            pause = self.timer() - started
            stats.pause_s_total += pause
            if pause > stats.pause_s_max:
                stats.pause_s_max = pause
        if generation != 2:
            return
        now = self.clock()
        if self.walking_all:
            # This collection walked the whole heap (everything was unfrozen before it).
            self.walking_all = False
            self._last_walk = now
            self.complete_walks += 1
        elif self._last_walk is None:
            self._last_walk = now
        elif now - self._last_walk >= self.full_every_s:
            # Let the next full collection see everything once; freeze again after it.
            self.gc_functions.unfreeze()
            self.walking_all = True
            return
        self.gc_functions.freeze()
        self.freezes += 1

    def statistics(self) -> dict[str, Any]:
        """What ``/admin/process.json`` shows under ``gc``."""
        return {
            "collections": [g.collections for g in self.generations],
            "pause_ms_total": [round(g.pause_s_total * 1000, 3) for g in self.generations],
            "pause_ms_max": [round(g.pause_s_max * 1000, 3) for g in self.generations],
            "freezes": self.freezes,
            "complete_walks": self.complete_walks,
            "frozen_objects": self.gc_functions.get_freeze_count(),
            "full_every_s": self.full_every_s,
        }


_installed: GcPolicy | None = None


def install(policy: GcPolicy) -> None:
    """Make ``policy`` the process's collector policy (replacing any installed before)."""
    global _installed
    uninstall()
    gc.callbacks.append(policy.on_gc)
    _installed = policy


def uninstall() -> None:
    """Remove the installed policy's callback (objects stay frozen as they are)."""
    global _installed
    if _installed is not None:
        try:
            gc.callbacks.remove(_installed.on_gc)
        except ValueError:
            pass
        _installed = None


def installed() -> GcPolicy | None:
    """The installed policy, if any."""
    return _installed
