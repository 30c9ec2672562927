"""When and how the access log rolls: Linkerd 1's ``httpAccessLogRollPolicy`` (``h2AccessLogRollPolicy``)
and ``httpAccessLogRotateCount``, as pure functions of a clock reading and file names (no I/O).

Theory of operation
-------------------
A policy is parsed once from the config's string, in Linkerd's spellings (any case):

* ``never`` (the default) and ``sighup``: the file is never rolled by hostproxy. SIGHUP reopens the
  file under every policy (after logrotate moved it), so ``sighup`` is ``never`` here;
* ``hourly``, ``daily``: the file rolls at the first line written after the next full hour, or the
  next midnight;
* ``weekly(N)``: at the first line after the next midnight that starts day ``N`` of the week, counted
  as Java's calendar counts (1 is Sunday, 2 Monday ... 7 Saturday); never on the day it was opened;
* a size, ``<count>.<unit>`` with a unit from ``byte`` to ``exabyte`` (singular or plural; 1024-based,
  as Twitter's ``StorageUnit``): the file rolls before a line that would take it past that size.

Times are UTC (hostproxy's log lines are UTC); Linkerd used the host's time zone.

Rolling renames ``DIR/NAME.EXT`` to ``DIR/NAME-SUFFIX.EXT`` (``NAME-SUFFIX`` when the file name has no
dot), where the suffix is the time the file was opened: ``yyyyMMdd-HH`` hourly, ``yyyyMMdd`` daily
and weekly, ``yyyyMMdd-HHmmss`` by size; when a file of that time was rolled before, ``-1``, ``-2`` ...
is added to the suffix (one more than the highest there), so a roll never overwrites an earlier one
(Linkerd's rename would) and names sort in the order the files were rolled. A rotate count of 0 or
more then keeps that many of the newest rolled files (by the time in their names) and deletes the
rest; -1 keeps all. Only files
named exactly as this module names rolled files count (Linkerd deleted every file that began with the
name and ended with the extension, ``access-control.log`` beside ``access.log`` among them).
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass
from pathlib import PurePath

__all__ = [
    "RollPolicy",
    "next_free",
    "next_roll_time",
    "parse_policy",
    "rolled_name",
    "rolled_pattern",
    "to_delete",
]

_UNITS = {
    "byte": 1,
    "kilobyte": 1 << 10,
    "megabyte": 1 << 20,
    "gigabyte": 1 << 30,
    "terabyte": 1 << 40,
    "petabyte": 1 << 50,
    "exabyte": 1 << 60,
}
_SIZE = re.compile(r"(\d+)\.([a-z]+?)s?")
_WEEKLY = re.compile(r"weekly\(([1-7])\)")
_SUFFIX_FORMATS = {
    "hourly": "%Y%m%d-%H",
    "daily": "%Y%m%d",
    "weekly": "%Y%m%d",
    "size": "%Y%m%d-%H%M%S",
}
_SUFFIX_PATTERNS = {
    "hourly": r"\d{8}-\d{2}",
    "daily": r"\d{8}",
    "weekly": r"\d{8}",
    "size": r"\d{8}-\d{6}",
}
WHAT_TO_WRITE = (
    "write never, hourly, daily, weekly(N) with N from 1 (Sunday) to 7 (Saturday), sighup, or a size such as "
    "100.megabytes"
)


@dataclass(frozen=True)
class RollPolicy:
    """A parsed roll policy: ``kind`` is ``never``, ``hourly``, ``daily``, ``weekly`` or ``size``."""

    kind: str
    text: str
    weekday: int | None = None  # weekly: Java's day of the week, 1 (Sunday) .. 7 (Saturday)
    max_bytes: int | None = None  # size

    @property
    def rolls(self) -> bool:
        return self.kind != "never"


NEVER = RollPolicy("never", "never")


def parse_policy(text: str | None) -> RollPolicy:
    """The policy a config string names; ``ValueError`` saying what to write when it names none."""
    if text is None:
        return NEVER
    spelled = str(text).strip().lower()
    if spelled in ("never", "sighup"):
        return RollPolicy("never", str(text))
    if spelled in ("hourly", "daily"):
        return RollPolicy(spelled, str(text))
    weekly = _WEEKLY.fullmatch(spelled)
    if weekly:
        return RollPolicy("weekly", str(text), weekday=int(weekly.group(1)))
    if spelled.startswith("weekly"):
        raise ValueError(f"{text!r} is not a roll policy: the day of weekly(N) is 1 (Sunday) to 7 (Saturday)")
    size = _SIZE.fullmatch(spelled)
    if size and size.group(2) in _UNITS:
        count = int(size.group(1))
        if count <= 0:
            raise ValueError(f"{text!r} is not a roll policy: a size must be more than 0")
        return RollPolicy("size", str(text), max_bytes=count * _UNITS[size.group(2)])
    raise ValueError(f"{text!r} is not a roll policy: {WHAT_TO_WRITE}")


def next_roll_time(policy: RollPolicy, opened_at: float) -> float | None:
    """When a file opened at ``opened_at`` (seconds since the epoch) rolls, by time; None when only its
    size (or nothing) rolls it."""
    if policy.kind not in ("hourly", "daily", "weekly"):
        return None
    t = time.gmtime(opened_at)
    hour_start = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, 0, 0, 0, 0, 0))
    if policy.kind == "hourly":
        return float(hour_start + 3600)
    midnight = hour_start - t.tm_hour * 3600
    if policy.kind == "daily":
        return float(midnight + 86400)
    assert policy.weekday is not None
    # Java's 1 (Sunday) .. 7 (Saturday) as Python's 0 (Monday) .. 6 (Sunday).
    wanted = (policy.weekday - 2) % 7
    days = (wanted - t.tm_wday) % 7 or 7
    return float(midnight + days * 86400)


def _split(path: str) -> tuple[str, str, str]:
    p = PurePath(path)
    name = p.name
    dot = name.rfind(".")
    stem, ext = (name[:dot], name[dot:]) if dot > 0 else (name, "")
    return str(p.parent), stem, ext


def rolled_name(path: str, policy: RollPolicy, opened_at: float, taken: int = 0) -> str:
    """The name a file opened at ``opened_at`` is rolled to; ``taken``: how many names before it were
    taken (0 is the plain name, 1 adds ``-1`` to the suffix ...)."""
    parent, stem, ext = _split(path)
    suffix = time.strftime(_SUFFIX_FORMATS.get(policy.kind, "%Y"), time.gmtime(opened_at))
    if taken:
        suffix += f"-{taken}"
    return str(PurePath(parent) / f"{stem}-{suffix}{ext}")


def rolled_pattern(path: str, policy: RollPolicy) -> re.Pattern[str]:
    """The file names (not paths) of files rolled from ``path`` under ``policy``; groups ``time`` (the
    suffix) and ``n`` (the number added when the name was taken, or None)."""
    _parent, stem, ext = _split(path)
    suffix = _SUFFIX_PATTERNS.get(policy.kind, r"\d{4}")
    return re.compile(re.escape(stem) + f"-(?P<time>{suffix})" + r"(?:-(?P<n>\d+))?" + re.escape(ext))


def next_free(path: str, policy: RollPolicy, opened_at: float, names: list[str]) -> int:
    """The ``taken`` for :func:`rolled_name` that sorts after every rolled file in ``names`` (the
    directory's file names) with the same time: 0 when there is none, else one more than the highest
    number added (a number freed by the rotate count is not reused, so names keep their order)."""
    pattern = rolled_pattern(path, policy)
    wanted = PurePath(rolled_name(path, policy, opened_at)).name
    stamp = pattern.fullmatch(wanted)
    assert stamp is not None
    highest = -1
    for name in names:
        found = pattern.fullmatch(name)
        if found and found.group("time") == stamp.group("time"):
            highest = max(highest, int(found.group("n") or 0))
    return highest + 1


def to_delete(names: list[str], pattern: re.Pattern[str], rotate_count: int) -> list[str]:
    """Of the rolled files ``names`` (``pattern``: :func:`rolled_pattern`'s; other names are left
    alone), those a rotate count deletes: all but the ``rotate_count`` newest, by the time in their
    names and then the number added (oldest first); none for a negative count (keep all)."""
    if rotate_count < 0:
        return []
    rolled = []
    for name in names:
        found = pattern.fullmatch(name)
        if found:
            rolled.append((found.group("time"), int(found.group("n") or 0), name))
    rolled.sort()
    return [name for _t, _n, name in rolled[: max(0, len(rolled) - rotate_count)]]
