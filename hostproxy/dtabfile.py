"""The ``io.l5d.fs`` interpreter's dtab file: a watched file whose dtab is the router's base dtab.

Theory of operation
-------------------
``interpreter: {kind: io.l5d.fs, dtabFile: PATH}`` routes with the configured namers, as the default
interpreter does, but takes the base dtab from a file that operators edit while the proxy runs. Two
parts:

* :class:`DtabFileWatcher` — the pure core. It is fed what the file holds (``bytes``, or ``None`` when
  the file is missing) together with the time, and decides. A change is applied only once the same
  content has been seen for ``settle_s`` (a half-written file keeps changing, so it is never applied).
  Settled content that parses becomes a new *version*: the diff against the previous dtab (dentries
  added and removed) is logged as ``dtab.applied``, kept in a bounded history, and handed to
  ``on_change(dtab, version)`` so the router can swap its base dtab. Settled content that does not
  parse is *rejected*: the error, positioned as ``FILE:LINE:COL`` with the offending line and a caret,
  is logged as ``dtab.rejected`` and kept as ``last_error``; the last good dtab stays in force. A
  file that disappears is reported (``dtab.file_missing``) and also leaves the last good dtab in force.
  A missing or invalid file at *startup* is an error (:class:`DtabFileError`): there is no last good
  dtab to keep.
* :func:`watch_dtab_file` — the thin trio shell. Every ``interval_s`` (250 ms) it ``stat``s the file and
  reads it only when its identity, size or mtime changed; otherwise it just lets the core's clock tick.
  With the defaults a valid change applies within ``interval_s + settle_s`` (under a second).

``state_json()`` is what the admin server shows for the interpreter: the path, the version in force and
when it was applied, the dtab text, the last error and the recent history.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
import trio

from dtab import Dtab, DtabSyntaxError, parse_dtab
from hostproxy.regularfile import NotRegularFile, read_regular

__all__ = [
    "DtabFileError",
    "DtabFileWatcher",
    "Outcome",
    "load_dtab_file",
    "read_signature",
    "watch_dtab_file",
]

log = structlog.get_logger("hostproxy.dtabfile")

DEFAULT_INTERVAL_S = 0.25
DEFAULT_SETTLE_S = 0.5
DEFAULT_HISTORY = 20
MAX_FILE_BYTES = 1 << 20


class DtabFileError(Exception):
    """The dtab file cannot be used at startup; the message names the file and the fix.

    ``summary`` is the same in one line and ``detail`` the offending line of the file with a caret
    under the error (``None`` when the error has no position in the file), for a caller that shows
    the caret display apart (``hostproxy check``)."""

    def __init__(self, message: str, *, summary: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.summary = summary or message
        self.detail = detail


@dataclass(frozen=True)
class Outcome:
    """What one settled change did: ``applied`` (with ``version``) or not (with ``error``)."""

    applied: bool
    version: int
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    error: str | None = None


def _diff(old: Dtab, new: Dtab) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Dentries (as text) in ``new`` but not ``old``, and in ``old`` but not ``new`` (multisets)."""
    old_c = collections.Counter(d.show for d in old)
    new_c = collections.Counter(d.show for d in new)
    added = [d.show for d in new if _take(new_c, old_c, d.show)]
    old_c2 = collections.Counter(d.show for d in old)
    new_c2 = collections.Counter(d.show for d in new)
    removed = [d.show for d in old if _take(old_c2, new_c2, d.show)]
    return tuple(added), tuple(removed)


def _take(mine: collections.Counter[str], theirs: collections.Counter[str], key: str) -> bool:
    """Consume one ``key`` from ``mine``; True when it has no counterpart left in ``theirs``."""
    mine[key] -= 1
    if theirs[key] > 0:
        theirs[key] -= 1
        return False
    return True


class DtabFileWatcher:
    """The pure core of the dtab file watcher (see the module docstring)."""

    def __init__(
        self,
        path: str,
        *,
        on_change: Callable[[Dtab, int], None] | None = None,
        settle_s: float = DEFAULT_SETTLE_S,
        history: int = DEFAULT_HISTORY,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.on_change = on_change
        self.settle_s = settle_s
        self._wall = wall_clock
        self.dtab: Dtab = Dtab.EMPTY
        self.text = ""
        self.version = 0
        self.applied_at: float | None = None
        self.last_error: dict[str, Any] | None = None
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=history)
        self.missing = False
        self._applied_bytes: bytes | None = None
        self._rejected_bytes: bytes | None = None
        self._rejected_error: dict[str, Any] | None = None
        self._pending: bytes | None = None
        self._pending_since = 0.0

    # -- startup ------------------------------------------------------------------------------------
    def load_initial(self, data: bytes | None, *, then: str = "start again") -> Dtab:
        """Apply the file's content at startup (no settling); raise :class:`DtabFileError` when unusable
        (its message says to fix the file and ``then``: what to do next, ``"reload again"`` in a reload)."""
        if data is None:
            raise DtabFileError(
                f"dtab file {self.path} does not exist: create it (an empty file is an empty dtab) "
                "or fix interpreter.dtabFile"
            )
        dtab, error = self._parse(data)
        if dtab is None:
            assert error is not None
            position, _, caret = error.partition("\n")
            raise DtabFileError(
                f"dtab file {self.path} is not a valid dtab: fix it and {then}\n{error}",
                summary=f"dtab file {self.path} is not a valid dtab: {position}; fix it and {then}",
                detail=caret or None,
            )
        self._apply(data, dtab)
        return dtab

    # -- feeding --------------------------------------------------------------------------------------
    def observe(self, now: float, data: bytes | None) -> Outcome | None:
        """The file now holds ``data`` (None: missing). Returns an :class:`Outcome` when a change settled."""
        if data is None:
            self._pending = None
            if not self.missing:
                self.missing = True
                msg = f"dtab file {self.path} is missing; keeping dtab version {self.version}"
                self.last_error = {"message": msg, "at": self._wall()}
                log.warning("dtab.file_missing", path=self.path, version=self.version)
            return None
        self.missing = False
        if data == self._applied_bytes:
            # Back to what is in force (a bad edit reverted): nothing to do, and no error stands.
            self._pending = None
            self._rejected_bytes = None
            self.last_error = None
            return None
        if data == self._rejected_bytes:
            # Still the rejected content (back after the file was missing or unreadable): its
            # FILE:LINE:COL error is what stands, not the interruption's.
            self._pending = None
            self.last_error = self._rejected_error
            return None
        if data != self._pending:
            self._pending = data
            self._pending_since = now
            return None
        return self.tick(now)

    def tick(self, now: float) -> Outcome | None:
        """Time passed with the file unchanged: apply or reject the pending content once it settled."""
        if self._pending is None or now - self._pending_since < self.settle_s:
            return None
        data, self._pending = self._pending, None
        dtab, error = self._parse(data)
        if dtab is None:
            assert error is not None
            self._rejected_bytes = data
            self.last_error = self._rejected_error = {"message": error, "at": self._wall()}
            log.warning("dtab.rejected", path=self.path, version=self.version, error=error)
            return Outcome(False, self.version, error=error)
        self._rejected_bytes = None
        self.last_error = None
        added, removed = self._apply(data, dtab)
        return Outcome(True, self.version, added, removed)

    def read_failed(self, message: str) -> None:
        """The file exists but could not be read: record it; the dtab in force stays."""
        self._pending = None
        self.last_error = {"message": message, "at": self._wall()}
        log.warning("dtab.read_failed", path=self.path, version=self.version, error=message)

    # -- internals ------------------------------------------------------------------------------------
    def _parse(self, data: bytes) -> tuple[Dtab | None, str | None]:
        if len(data) > MAX_FILE_BYTES:
            return None, (
                f"{self.path}: {len(data)} bytes is larger than the {MAX_FILE_BYTES}-byte limit for a dtab "
                "file; split routing into fewer, broader dentries"
            )
        try:
            text = data.decode("utf-8-sig")  # (a byte order mark, as some editors write, is no dentry)
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            return None, f"{self.path}:{line}: not UTF-8 text (byte {e.start}); save the file as UTF-8"
        try:
            return parse_dtab(text), None
        except DtabSyntaxError as e:
            return None, str(e.relocated(self.path, 0))

    def _apply(self, data: bytes, dtab: Dtab) -> tuple[tuple[str, ...], tuple[str, ...]]:
        added, removed = _diff(self.dtab, dtab)
        self.dtab = dtab
        self.text = data.decode("utf-8-sig")
        self._applied_bytes = data
        self.version += 1
        self.applied_at = self._wall()
        entry = {
            "version": self.version,
            "applied_at": self.applied_at,
            "added": list(added),
            "removed": list(removed),
        }
        self.history.append(entry)
        log.info(
            "dtab.applied", path=self.path, version=self.version, added=list(added), removed=list(removed)
        )
        if self.on_change is not None:
            self.on_change(dtab, self.version)
        return added, removed

    # -- state ----------------------------------------------------------------------------------------
    def state_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "version": self.version,
            "applied_at": self.applied_at,
            "dtab": self.text,
            "dentries": [d.show for d in self.dtab],
            "pending": self._pending is not None,
            "missing": self.missing,
            "last_error": dict(self.last_error) if self.last_error else None,
            "history": [dict(h) for h in reversed(self.history)],
        }

    def __repr__(self) -> str:
        return f"<DtabFileWatcher {self.path} version={self.version} error={self.last_error is not None}>"


# -- the trio shell -----------------------------------------------------------------------------------

Signature = tuple[int, int, int, int, int]


def read_signature(path: str) -> tuple[Signature | None, bytes | None]:
    """``(identity, content)`` of the file, or ``(None, None)`` when it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, None
    sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    try:
        data = read_regular(path, MAX_FILE_BYTES)
    except FileNotFoundError:
        return None, None
    return sig, data


def load_dtab_file(path: str, *, router: str, then: str = "start again") -> DtabFileWatcher:
    """A watcher with the dtab ``path`` holds now loaded: what the daemon does for a router's
    ``interpreter.dtabFile`` before it binds a port, and ``hostproxy check`` to check the file.
    Raises :class:`DtabFileError` when the file is missing, cannot be read or is not a valid dtab
    (``then``: what to do once it is fixed)."""
    watcher = DtabFileWatcher(path)
    try:
        _sig, data = read_signature(path)
    except IsADirectoryError:
        raise DtabFileError(
            f"dtab file {path} of router {router} is a directory; point interpreter.dtabFile at a file"
        ) from None
    except NotRegularFile as e:
        raise DtabFileError(
            f"dtab file {path} of router {router} is {e.strerror}; point interpreter.dtabFile at a file"
        ) from None
    except OSError as e:
        raise DtabFileError(
            f"cannot read dtab file {path} of router {router}: {e}; check its permissions"
        ) from None
    watcher.load_initial(data, then=then)
    return watcher


def _stat(path: str) -> Signature | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


async def watch_dtab_file(
    watcher: DtabFileWatcher,
    *,
    interval_s: float = DEFAULT_INTERVAL_S,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Poll ``watcher.path`` forever, feeding :class:`DtabFileWatcher`; run it in the daemon's nursery.

    Call ``watcher.load_initial`` first (the daemon does so before binding ports, so a missing or
    broken file fails startup). Reads are small and local, so they run on the event loop.
    """
    last_sig: Signature | None = None  # read once at once: the file may have changed since startup
    task_status.started()
    first = True
    while True:
        if not first:
            await trio.sleep(interval_s)
        first = False
        now = trio.current_time()
        sig = _stat(watcher.path)
        if sig is None:
            last_sig = None
            watcher.observe(now, None)
            continue
        if sig == last_sig:
            watcher.tick(now)
            continue
        try:
            sig, data = read_signature(watcher.path)
        except OSError as e:
            # Logged once per change of the file (a chmod changes its ctime, so a fix is seen).
            last_sig = sig
            watcher.read_failed(f"cannot read dtab file {watcher.path}: {e}; check its permissions")
            continue
        last_sig = sig
        watcher.observe(now, data)
