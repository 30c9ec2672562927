"""A bounded table of the most frequent names (space-saving), with per-cause counts.

Theory of operation
-------------------
Requests for names that never bound (typos, scans, attacks) must not create metrics per name, but
operators still want to know which names are being asked for. `TopN` keeps at most `capacity`
entries. A new name, when the table is full, evicts the entry with the lowest count (the least
recently seen among equals) and inherits that count as its `error` bound — the space-saving
algorithm: any name whose true count exceeds the smallest count in the table is guaranteed to be in
it, and `count - error <= true count <= count`. Names are truncated to `max_name` characters. Each
entry keeps the last error recorded with it (`last_error`, truncated to `max_error` characters): what
the namer or the binding said, for `hostproxy wtf` to quote.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["TopN"]


class _Entry:
    __slots__ = ("name", "count", "error", "causes", "first_seen", "last_seen", "last_error")

    def __init__(self, name: str, base: int, now: float) -> None:
        self.name = name
        self.count = base
        self.error = base
        self.causes: dict[str, int] = {}
        self.first_seen = now
        self.last_seen = now
        self.last_error: str | None = None


class TopN:
    def __init__(
        self,
        capacity: int = 64,
        now: Callable[[], float] = lambda: 0.0,
        max_name: int = 256,
        max_error: int = 1024,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"TopN capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.max_name = max_name
        self.max_error = max_error
        self._now = now
        self._entries: dict[str, _Entry] = {}
        self.total = 0
        self.evictions = 0

    def record(self, name: str, cause: str | None = None, error: str | None = None) -> None:
        name = name[: self.max_name]
        now = self._now()
        self.total += 1
        e = self._entries.get(name)
        if e is None:
            base = 0
            if len(self._entries) >= self.capacity:
                victim = min(self._entries.values(), key=lambda x: (x.count, x.last_seen))
                del self._entries[victim.name]
                base = victim.count
                self.evictions += 1
            e = _Entry(name, base, now)
            self._entries[name] = e
        e.count += 1
        e.last_seen = now
        if cause is not None:
            e.causes[cause] = e.causes.get(cause, 0) + 1
        if error is not None:
            e.last_error = error[: self.max_error]

    def __len__(self) -> int:
        return len(self._entries)

    def table(self) -> list[dict[str, Any]]:
        """Entries by descending count, as JSON-ready dicts."""
        rows = sorted(self._entries.values(), key=lambda x: (-x.count, x.name))
        return [
            {
                "name": e.name,
                "count": e.count,
                "error": e.error,
                "causes": dict(sorted(e.causes.items())),
                "first_seen": e.first_seen,
                "last_seen": e.last_seen,
                "last_error": e.last_error,
            }
            for e in rows
        ]
