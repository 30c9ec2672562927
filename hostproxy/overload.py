"""Overload watermarks: memory and file descriptors, with hysteresis, as Envoy's overload manager.

Theory of operation
-------------------
A proxy that runs out of memory or file descriptors fails every request at once, and often in ways
that are hard to see (``accept`` errors, the OOM killer). :class:`OverloadManager` degrades in steps
first, so that the requests that do get in still succeed. It is a pure state machine fed
:class:`Reading` values — resident memory, open file descriptors and the descriptor limit — that a
thin trio task (:func:`sample_loop`) takes from ``/proc/self`` every second.

Memory, as a fraction of ``memory_limit_bytes`` (the cgroup's ``memory.max`` by default; off when
there is no limit), climbs through three marks:

=================  ================  ==========================================================
level              default mark      action
=================  ================  ==========================================================
``no_keepalive``   80 %              close connections after the current response
``shed``           90 %              answer new requests 503 with cause ``overload``
``stop_accept``    95 %              stop accepting connections
=================  ================  ==========================================================

Each level includes the ones below it. Going up is immediate; coming down needs the reading to fall
``hysteresis`` (5 points) below the mark, so a reading hovering at a mark does not flap.

File descriptors: at ``fd_stop_accept`` (90 %) of the soft ``RLIMIT_NOFILE``, or when fewer than
``fd_reserve`` descriptors are left, the proxy stops accepting connections (what it has keeps working,
and upstream connections still have room); it accepts again below the mark minus the hysteresis.

The actions are read by the hot path as plain attributes (``keepalive_allowed``,
``shed_requests``, ``accept_allowed``), derived whenever ``memory_level`` or ``fd_exhausted`` is
assigned, so a request pays no call for them; every change is logged as ``overload.changed``, and
``state_json()`` is what logs, metrics and the admin ``wtf`` view show.
"""

from __future__ import annotations

import enum
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
import trio

from hostproxy.idle import wait_idle

__all__ = [
    "Level",
    "OverloadConfig",
    "OverloadConfigError",
    "OverloadManager",
    "Reading",
    "count_open_fds",
    "detect_memory_limit",
    "fd_limit",
    "read_rss_bytes",
    "sample",
    "sample_loop",
]

log = structlog.get_logger("hostproxy.overload")


class OverloadConfigError(ValueError):
    """Overload marks are inconsistent; the message names the mark and the valid range."""


class Level(enum.IntEnum):
    NORMAL = 0
    NO_KEEPALIVE = 1
    SHED = 2
    STOP_ACCEPT = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class OverloadConfig:
    memory_limit_bytes: int | None = None
    no_keepalive: float = 0.80
    shed: float = 0.90
    stop_accept: float = 0.95
    fd_stop_accept: float = 0.90
    fd_reserve: int = 16
    hysteresis: float = 0.05

    def __post_init__(self) -> None:
        marks = [("noKeepalive", self.no_keepalive), ("shed", self.shed), ("stopAccept", self.stop_accept)]
        for name, v in [*marks, ("fdStopAccept", self.fd_stop_accept)]:
            if not 0 < v <= 1:
                raise OverloadConfigError(f"overload.{name}: a fraction in (0, 1] is expected, got {v}")
        if not self.no_keepalive <= self.shed <= self.stop_accept:
            raise OverloadConfigError(
                f"overload marks must rise: noKeepalive ({self.no_keepalive}) <= shed ({self.shed}) "
                f"<= stopAccept ({self.stop_accept})"
            )
        if not 0 <= self.hysteresis < self.no_keepalive:
            raise OverloadConfigError(
                f"overload.hysteresis: must be >= 0 and below noKeepalive ({self.no_keepalive}), got {self.hysteresis}"
            )
        if self.memory_limit_bytes is not None and self.memory_limit_bytes <= 0:
            raise OverloadConfigError(
                f"overload.memoryLimitBytes: must be positive, got {self.memory_limit_bytes}; leave it unset to "
                "disable the memory watermarks"
            )
        if self.fd_reserve < 0:
            raise OverloadConfigError(f"overload.fdReserve: must be >= 0, got {self.fd_reserve}")

    def mark(self, level: Level) -> float:
        return {
            Level.NO_KEEPALIVE: self.no_keepalive,
            Level.SHED: self.shed,
            Level.STOP_ACCEPT: self.stop_accept,
        }[level]


@dataclass(frozen=True)
class Reading:
    """One sample: resident memory, open descriptors, and the soft descriptor limit."""

    rss_bytes: int
    open_fds: int
    fd_limit: int


class OverloadManager:
    """The pure watermark state machine (see the module docstring)."""

    def __init__(self, config: OverloadConfig, *, clock: Callable[[], float]) -> None:
        self.config = config
        self._clock = clock
        self._level = Level.NORMAL
        self._fds_out = False
        #: The actions, read on the hot path as plain attributes; set from the state whenever
        #: :attr:`memory_level` or :attr:`fd_exhausted` is assigned (they change only on a reading).
        self.keepalive_allowed = True
        self.shed_requests = False
        self.accept_allowed = True
        self.last: Reading | None = None
        self.since = clock()
        self.transitions = 0
        self.shed_count = 0

    # -- the state, and the actions derived from it -------------------------------------------------
    @property
    def memory_level(self) -> Level:
        return self._level

    @memory_level.setter
    def memory_level(self, level: Level) -> None:
        self._level = level
        self._derive_actions()

    @property
    def fd_exhausted(self) -> bool:
        return self._fds_out

    @fd_exhausted.setter
    def fd_exhausted(self, exhausted: bool) -> None:
        self._fds_out = exhausted
        self._derive_actions()

    def _derive_actions(self) -> None:
        """Set the action attributes from the state (a request reads them without a call)."""
        level = self._level
        self.keepalive_allowed = level < Level.NO_KEEPALIVE
        self.shed_requests = level >= Level.SHED
        self.accept_allowed = level < Level.STOP_ACCEPT and not self._fds_out

    def note_shed(self) -> None:
        """The server answered one request 503 ``overload`` because of :attr:`shed_requests`."""
        self.shed_count += 1

    # -- feeding ----------------------------------------------------------------------------------
    def update(self, reading: Reading) -> list[str]:
        """Take a new reading; returns the changes it caused (also logged as ``overload.changed``)."""
        self.last = reading
        changes: list[str] = []
        level = self._memory_level(reading)
        if level != self.memory_level:
            changes.append(f"memory {self.memory_level.label} -> {level.label}")
            self.memory_level = level
        exhausted = self._fd_exhausted(reading)
        if exhausted != self.fd_exhausted:
            changes.append("fds: stop accepting" if exhausted else "fds: accepting again")
            self.fd_exhausted = exhausted
        if changes:
            self.transitions += len(changes)
            self.since = self._clock()
            log.warning(
                "overload.changed",
                changes=changes,
                memory_level=self.memory_level.label,
                fd_exhausted=self.fd_exhausted,
                rss_bytes=reading.rss_bytes,
                open_fds=reading.open_fds,
                fd_limit=reading.fd_limit,
            )
        return changes

    def _memory_level(self, r: Reading) -> Level:
        limit = self.config.memory_limit_bytes
        if limit is None:
            return Level.NORMAL
        ratio = r.rss_bytes / limit
        up = Level.NORMAL
        for lvl in (Level.NO_KEEPALIVE, Level.SHED, Level.STOP_ACCEPT):
            if ratio >= self.config.mark(lvl):
                up = lvl
        if up >= self.memory_level:
            return up
        # Falling: stay at the highest level (up to the current one) whose mark minus the
        # hysteresis the reading still reaches.
        for n in range(self.memory_level, Level.NORMAL, -1):
            if ratio >= self.config.mark(Level(n)) - self.config.hysteresis:
                return Level(n)
        return Level.NORMAL

    def fd_stop_threshold(self, limit: int) -> float:
        """Open descriptors at which accepting stops: the fraction of the limit, or the reserve."""
        return min(limit * self.config.fd_stop_accept, limit - self.config.fd_reserve)

    def _fd_exhausted(self, r: Reading) -> bool:
        if r.fd_limit <= 0:
            return False
        stop = self.fd_stop_threshold(r.fd_limit)
        if not self.fd_exhausted:
            return r.open_fds >= stop
        return r.open_fds >= stop - self.config.hysteresis * r.fd_limit

    # -- state ------------------------------------------------------------------------------------
    def state_json(self) -> dict[str, Any]:
        r = self.last
        limit = self.config.memory_limit_bytes
        memory: dict[str, Any] = {
            "level": self.memory_level.label,
            "rss_bytes": r.rss_bytes if r else None,
            "limit_bytes": limit,
            "ratio": round(r.rss_bytes / limit, 4) if r and limit else None,
            "marks": {
                "no_keepalive": self.config.no_keepalive,
                "shed": self.config.shed,
                "stop_accept": self.config.stop_accept,
            },
        }
        fds: dict[str, Any] = {
            "open": r.open_fds if r else None,
            "limit": r.fd_limit if r else None,
            "ratio": round(r.open_fds / r.fd_limit, 4) if r and r.fd_limit > 0 else None,
            "stop_accept_mark": self.config.fd_stop_accept,
            "exhausted": self.fd_exhausted,
        }
        return {
            "memory": memory,
            "fds": fds,
            "actions": {
                "keepalive": self.keepalive_allowed,
                "shed_requests": self.shed_requests,
                "accept": self.accept_allowed,
            },
            "hysteresis": self.config.hysteresis,
            "transitions": self.transitions,
            "shed": self.shed_count,
            "since": self.since,
        }

    def statistics(self) -> dict[str, Any]:
        """Flat numbers for metrics gauges."""
        r = self.last
        return {
            "memory_level": int(self.memory_level),
            "fd_exhausted": int(self.fd_exhausted),
            "rss_bytes": r.rss_bytes if r else 0,
            "open_fds": r.open_fds if r else 0,
            "fd_limit": r.fd_limit if r else 0,
            "transitions": self.transitions,
            "shed": self.shed_count,
        }

    def __repr__(self) -> str:
        return f"<OverloadManager memory={self.memory_level.label} fd_exhausted={self.fd_exhausted}>"


# -- readings from /proc (Linux) ------------------------------------------------------------------------


def read_rss_bytes(status_path: str = "/proc/self/status") -> int:
    """Resident set size from ``VmRSS`` in ``/proc/self/status``; 0 where it is not available."""
    try:
        with open(status_path, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    parts = line.split()
                    return int(parts[1]) * (1024 if len(parts) > 2 and parts[2].lower() == "kb" else 1)
    except OSError:
        return 0
    return 0


def count_open_fds(fd_dir: str = "/proc/self/fd") -> int:
    """Open file descriptors of this process (the directory handle used to count is not included)."""
    try:
        return max(0, len(os.listdir(fd_dir)) - 1)
    except OSError:
        return 0


def fd_limit() -> int:
    """The soft ``RLIMIT_NOFILE`` (0 when unlimited: the descriptor watermark is then off)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 0 if soft == resource.RLIM_INFINITY else int(soft)


def detect_memory_limit(cgroup_root: str = "/sys/fs/cgroup") -> int | None:
    """This process's cgroup v2 ``memory.max`` (a systemd ``MemoryMax=`` or a pod's memory limit), or None."""
    try:
        with open("/proc/self/cgroup", encoding="ascii") as f:
            rel = next((ln.split(":", 2)[2].strip() for ln in f if ln.startswith("0::")), "/")
    except OSError:
        rel = "/"
    for path in (
        os.path.join(cgroup_root, rel.lstrip("/"), "memory.max"),
        os.path.join(cgroup_root, "memory.max"),
    ):
        try:
            with open(path, encoding="ascii") as f:
                text = f.read().strip()
        except OSError:
            continue
        return int(text) if text.isdigit() else None
    return None


def sample() -> Reading:
    return Reading(read_rss_bytes(), count_open_fds(), fd_limit())


async def sample_loop(
    manager: OverloadManager,
    *,
    interval_s: float = 1.0,
    read: Callable[[], Reading] = sample,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Feed ``manager`` a reading every ``interval_s`` until cancelled (first one before ``started``).

    Each reading waits for an idle loop first (``hostproxy.idle``), a quarter of the interval at
    most: the reading lists the open descriptors, about 0.9 ms with 2,000 of them, which between two
    bursts of requests delays none of them; a loop that is never idle is read all the same."""
    manager.update(read())
    task_status.started()
    while True:
        await trio.sleep(interval_s)
        await wait_idle(at_most_s=interval_s / 4)
        manager.update(read())
