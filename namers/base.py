"""The namer plugin base: observable per-name state, "last good wins", bounded watching.

Theory of operation
-------------------
A namer answers, synchronously and during binding, what a name under its prefix means *now*; a
background task (:meth:`Namer.run`, started by the daemon in a nursery) keeps those answers current.
The two halves meet in a :class:`NameTable`, a plain object with no I/O and an injected wall clock:

* ``lookup(residual)`` splits the residual into the namer's *key* (the labels that name one watched
  thing, e.g. one file) and the rest, touches the key in the table (creating it ``pending`` and waking
  the runner when it is new) and turns the key's current :class:`NameState` into a name tree:
  ``pending`` -> :data:`PENDING`, ``bound``/``stale`` -> a bound leaf with the (last good) addresses,
  ``neg`` -> :data:`NEG`, ``failed`` -> :class:`NamerError`.
* the runner observes its backend and reports each answer with ``apply_bound``/``apply_neg``/
  ``apply_failure``. A failure after a good answer keeps the addresses and marks the name ``stale``
  (with the time it went stale); a failure with no addresses to keep is ``failed``. Every change bumps
  the name's ``version`` and calls the subscribers, ``callback(namer, key_path)``, synchronously in the
  trio thread, so binders can drop cached bindings and clients can re-read :meth:`Namer.addr`.

Names can come from untrusted input (a per-request dtab), so the table holds at most ``max_names``
keys: touching a new key when full evicts the least recently used name *without* a last good answer
(``pending``, ``neg``, ``failed``), and only when every name has one, the least recently used name
overall (its subscribers are told, and a later lookup simply starts watching it again). So made-up names
from request headers evict each other, never a name serving its last good answer during an outage. A
second ordered dict of the address-less keys keeps this O(1) amortised per lookup.

Each name remembers when the backend last *confirmed* its answer (``confirmed_at``; ``lastConfirmed``
in the admin JSON), apart from ``last_update`` (the last change of any kind). Saved state carries the
confirmation time and a restore keeps it, so an answer restored after restarts says how old it really
is (``lastUpdate``, ``staleAgeSecs``) instead of looking fresh.

Waking the runner is ``trio.Event.set()`` when called in the runner's trio thread, or
``TrioToken.run_sync_soon`` from another thread; before :meth:`Namer.run` has started, new keys simply
wait in the table and the runner picks them up when it starts.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import structlog
import trio

from namers._dtab import (
    NEG,
    PENDING,
    AddrBound,
    Address,
    AddrFailed,
    AddrNeg,
    AddrPending,
    BoundName,
    Leaf,
    NamerError,
    Path,
)

__all__ = [
    "DEFAULT_MAX_NAMES",
    "MAX_RESTORE_WARNINGS",
    "RestoreSkips",
    "RESTORED_ERROR",
    "SAVED_STATE_MAX_AGE",
    "STATE_FORMAT_VERSION",
    "Key",
    "NameState",
    "NameTable",
    "Namer",
    "State",
    "Subscriber",
    "Waker",
    "check_saved_state",
    "format_time",
    "parse_prefix",
]

log = structlog.get_logger("namers")

State = Literal["pending", "bound", "neg", "failed", "stale"]
Key = tuple[bytes, ...]
Subscriber = Callable[[Any, Path], None]

#: Default cap on the number of names one namer watches.
DEFAULT_MAX_NAMES = 1000


STALE_SINCE = "staleSince"  # address-set metadata: wall time the name went stale (last good served)

#: The error a restored, not yet confirmed name carries.
RESTORED_ERROR = "restored from saved state; not yet confirmed"

#: A restored name that no lookup asked for since the restart and whose answer was last confirmed
#: longer ago than this is not saved again: saved state expires instead of being carried forever.
SAVED_STATE_MAX_AGE = 30 * 24 * 3600.0

#: Names skipped when restoring saved state are each named in a warning up to this many; one more
#: warning counts the rest (a file from a broken writer can hold thousands).
MAX_RESTORE_WARNINGS = 10

#: The format of :meth:`Namer.export_state` (``version``); a file without one is version 1.
STATE_FORMAT_VERSION = 1


class RestoreSkips:
    """The saved entries one restore skipped as invalid: the first :data:`MAX_RESTORE_WARNINGS` are
    each named in a ``namer.state.restore.failed`` warning with why (``hint``: what happens to it),
    and :meth:`done` counts the rest in one more (``rest_hint``). ``what``: ``names`` or ``hosts``."""

    def __init__(self, kind: str, what: str, hint: str, rest_hint: str) -> None:
        self.kind, self.what, self.hint, self.rest_hint = kind, what, hint, rest_hint
        self.count = 0

    def skip(self, name: str, error: BaseException) -> None:
        self.count += 1
        if self.count <= MAX_RESTORE_WARNINGS:
            log.warning(
                "namer.state.restore.failed",
                namer=self.kind,
                name=name,
                error=str(error) or repr(error),
                hint=self.hint,
            )

    def done(self) -> None:
        if self.count > MAX_RESTORE_WARNINGS:
            log.warning(
                "namer.state.restore.failed",
                namer=self.kind,
                name=None,
                error=(
                    f"{self.count - MAX_RESTORE_WARNINGS} more saved {self.what} were skipped as invalid "
                    f"(only the first {MAX_RESTORE_WARNINGS} are named)"
                ),
                hint=self.rest_hint,
            )


def format_time(t: float | None) -> str | None:
    """Wall time as Linkerd prints it in namer state: ``2018-10-11 06:17:34 +0000`` (UTC)."""
    if t is None:
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S +0000", time.gmtime(t))


def key_text(key: Key) -> str:
    """A key as the admin JSON shows it: labels joined by ``/`` (``users``, ``dir/file``)."""
    return "/".join(label.decode("utf-8", "backslashreplace") for label in key)


def address_json(a: Address) -> dict[str, Any]:
    return {"host": a.host, "port": a.port, "weight": a.weight, "meta": dict(a.meta or {})}


@dataclass
class NameState:
    """What one watched name means now, and how it got there."""

    key: Key
    state: State = "pending"
    #: The last good address set (kept while ``stale``); ``None`` when there is none.
    addr: tuple[Address, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    last_update: float | None = None
    last_error: str | None = None
    stale_since: float | None = None
    #: Wall time the backend last gave this answer (``None``: never, or unknown for a restored name).
    confirmed_at: float | None = None
    #: False for a name restored from saved state until a lookup asks for it.
    used: bool = True
    version: int = 0

    def stale_age(self, now: float) -> float | None:
        if self.state != "stale" or self.stale_since is None:
            return None
        return max(0.0, now - self.stale_since)

    def current_addr(self) -> Any:
        """The ``Addr`` this state stands for."""
        if self.state == "bound":
            return AddrBound(tuple(self.addr or ()), dict(self.meta))
        if self.state == "stale":
            # Last good addresses, served while the backend fails; clients show the age.
            return AddrBound(tuple(self.addr or ()), {**self.meta, STALE_SINCE: self.stale_since})
        if self.state == "neg":
            return AddrNeg()
        if self.state == "failed":
            return AddrFailed(self.last_error or "failed")
        return AddrPending()

    def to_json(self, now: float) -> dict[str, Any]:
        age = self.stale_age(now)
        return {
            "state": self.state,
            "addrs": [address_json(a) for a in self.addr] if self.addr is not None else None,
            "lastUpdate": format_time(self.last_update),
            "lastConfirmed": format_time(self.confirmed_at),
            "lastError": self.last_error,
            "staleAgeSecs": round(age, 3) if age is not None else None,
            "version": self.version,
        }


class NameTable:
    """The sans-I/O core of a namer: per-key state, the transition rules, LRU bound.

    Each ``apply_*`` returns whether the name's observable state changed (and so whether subscribers
    must be told); applying the same answer twice is not a change.
    """

    def __init__(self, clock: Callable[[], float] = time.time, max_names: int = DEFAULT_MAX_NAMES) -> None:
        if max_names < 1:
            raise ValueError(f"max_names must be at least 1, got {max_names}")
        self.clock = clock
        self.max_names = max_names
        self._names: OrderedDict[Key, NameState] = OrderedDict()
        #: The keys of ``_names`` without a last good answer (``addr is None``), least recently used
        #: first: evicted before any name that has one.
        self._bare: OrderedDict[Key, None] = OrderedDict()
        self.evictions = 0
        self.updates = 0

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, key: object) -> bool:
        return key in self._names

    def get(self, key: Key) -> NameState | None:
        return self._names.get(key)

    def watched(self) -> list[Key]:
        return list(self._names)

    def states(self) -> list[NameState]:
        return list(self._names.values())

    def touch(self, key: Key) -> tuple[NameState, bool, list[NameState]]:
        """Mark ``key`` as just used; create it ``pending`` if new.

        Returns ``(state, created, evicted)``: the evicted states are the least recently used names
        dropped to stay within ``max_names``.
        """
        st = self._names.get(key)
        if st is not None:
            self._names.move_to_end(key)
            if key in self._bare:
                self._bare.move_to_end(key)
            return st, False, []
        evicted: list[NameState] = []
        while len(self._names) >= self.max_names:
            if self._bare:
                old_key, _ = self._bare.popitem(last=False)
                old = self._names.pop(old_key)
            else:
                _, old = self._names.popitem(last=False)
            evicted.append(old)
            self.evictions += 1
        st = NameState(key)
        self._names[key] = st
        self._bare[key] = None
        return st, True, evicted

    def forget(self, key: Key) -> NameState | None:
        self._bare.pop(key, None)
        return self._names.pop(key, None)

    def _track_addr(self, st: NameState) -> None:
        """Keep ``_bare`` in step after ``st.addr`` may have changed. A name that loses its addresses
        joins the address-less names as the most recently used (its last use is not tracked apart)."""
        if st.addr is None:
            if st.key not in self._bare:
                self._bare[st.key] = None
        else:
            self._bare.pop(st.key, None)

    def _changed(self, st: NameState) -> bool:
        st.version += 1
        st.last_update = self.clock()
        self.updates += 1
        return True

    def apply_bound(self, key: Key, addrs: Sequence[Address], meta: dict[str, Any] | None = None) -> bool:
        """A good answer: the name has exactly these addresses (possibly none)."""
        st = self._names.get(key)
        if st is None:
            return False
        new = tuple(addrs)
        new_meta = dict(meta or {})
        st.confirmed_at = self.clock()
        if st.state == "bound" and st.addr == new and st.meta == new_meta:
            return False
        st.state = "bound"
        st.addr = new
        st.meta = new_meta
        st.last_error = None
        st.stale_since = None
        self._track_addr(st)
        return self._changed(st)

    def confirm(self, key: Key) -> None:
        """The backend was seen to still give a ``bound`` or ``neg`` name's answer (nothing changed,
        so no one is told; the time shows as ``lastConfirmed`` and is what saved state is aged from)."""
        st = self._names.get(key)
        if st is not None and st.state in ("bound", "neg"):
            st.confirmed_at = self.clock()

    def apply_neg(self, key: Key) -> bool:
        """A good answer: the name does not exist (a dtab alternate may take over)."""
        st = self._names.get(key)
        if st is None:
            return False
        st.confirmed_at = self.clock()
        if st.state == "neg":
            return False
        st.state = "neg"
        st.addr = None
        st.meta = {}
        st.last_error = None
        st.stale_since = None
        self._track_addr(st)
        return self._changed(st)

    def apply_failure(self, key: Key, error: str) -> bool:
        """The backend could not answer: keep the last good addresses (``stale``) or fail."""
        st = self._names.get(key)
        if st is None:
            return False
        if st.addr is not None:
            if st.state == "stale" and st.last_error == error:
                return False
            if st.state != "stale":
                st.stale_since = self.clock()
            st.state = "stale"
        else:
            if st.state == "failed" and st.last_error == error:
                return False
            st.state = "failed"
        st.last_error = error
        return self._changed(st)

    def apply_partial(self, key: Key, addrs: Sequence[Address], error: str) -> bool:
        """Part of an answer: ``addrs`` (fresh addresses plus the last good ones the backend could
        not confirm) are served, and the name is ``stale`` with ``error`` until a whole answer."""
        st = self._names.get(key)
        if st is None:
            return False
        new = tuple(addrs)
        if st.state == "stale" and st.addr == new and st.last_error == error:
            return False
        if st.state != "stale":
            st.stale_since = self.clock()
        st.state = "stale"
        st.addr = new
        st.last_error = error
        self._track_addr(st)
        return self._changed(st)

    def restore(
        self, key: Key, addrs: Sequence[Address], meta: dict[str, Any], confirmed_at: float | None
    ) -> bool:
        """Seed a name known to no one yet with a saved answer: ``stale`` until the backend answers.

        ``confirmed_at`` is when the backend last gave that answer (from the saved state; ``None``
        when unknown). It is kept as the name's ``last_update``, ``confirmed_at`` and ``stale_since``,
        so the name's age is that of the answer, not of the restart. Only an unknown time falls back
        to now for ``stale_since`` (clients need some time to show a stale set as stale).
        """
        st = self._names.get(key)
        if st is None or st.state != "pending":
            return False
        now = self.clock()
        if confirmed_at is not None:
            confirmed_at = min(confirmed_at, now)  # a time from the future is not believed
        st.state = "stale"
        st.addr = tuple(addrs)
        st.meta = dict(meta)
        st.last_error = RESTORED_ERROR
        st.confirmed_at = confirmed_at
        st.used = False
        st.stale_since = confirmed_at if confirmed_at is not None else now
        st.version += 1
        st.last_update = confirmed_at
        self.updates += 1
        self._track_addr(st)
        return True


def source_text(source: Any) -> str:
    """``{"rootDir": "/d"}`` → ``rootDir=/d`` (what a saved ``source`` says, for a message)."""
    if not isinstance(source, dict):
        return repr(source)
    return ", ".join(f"{k}={v}" for k, v in sorted(source.items())) or "no settings"


def check_saved_state(data: Any, kind: str, prefix: str, source: dict[str, str] | None) -> None:
    """Raise ``ValueError`` (saying what is wrong and what to do) unless ``data`` is saved state of
    this format version for the namer ``kind`` at ``prefix`` with these ``source`` settings. State
    saved without a version (version 1) or a ``source`` (before either was saved) passes."""
    if not isinstance(data, dict) or not isinstance(data.get("names"), dict):
        raise ValueError("saved namer state must be an object with a 'names' object")
    version = data.get("version", 1)
    if version != STATE_FORMAT_VERSION or isinstance(version, bool):
        raise ValueError(
            f"saved in format version {version!r}; this hostproxy reads version {STATE_FORMAT_VERSION}"
            + (" (a newer hostproxy wrote it)" if isinstance(version, int) and version > 1 else "")
        )
    if data.get("kind") != kind or data.get("prefix") != prefix:
        raise ValueError(
            f"saved namer state is for {data.get('kind')!r} at {data.get('prefix')!r}, not "
            f"{kind!r} at {prefix!r}; remove the file or fix the prefix"
        )
    saved_source = data.get("source")
    if saved_source is not None and source is not None and saved_source != source:
        raise ValueError(
            f"saved for {kind} with {source_text(saved_source)}, not {source_text(source)}: "
            "its names mean other services here"
        )


def valid_saved_address(a: Any) -> Address:
    """One address from saved namer state, checked as strictly as the namers' own parsers check
    theirs (host a string, port 1-65535, weight a finite number >= 0); ``ValueError`` says which."""
    if not isinstance(a, dict):
        raise ValueError(f"address {a!r} is not an object")
    host = a.get("host")
    if not isinstance(host, str):
        raise ValueError(f"address host {host!r} is not a string")
    port = a.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"address {host}:{port!r} has a port out of range 1-65535")
    weight = a.get("weight", 1.0)
    if (
        isinstance(weight, bool)
        or not isinstance(weight, int | float)
        or not math.isfinite(weight)
        or weight < 0
    ):
        raise ValueError(f"address {host}:{port} has weight {weight!r}; it must be a finite number >= 0")
    meta = a.get("meta") or {}
    if not isinstance(meta, dict):
        raise ValueError(f"address {host}:{port} has meta {meta!r}, not an object")
    return Address(host, port, float(weight), dict(meta))


def saved_time(value: Any) -> float | None:
    """A saved ``lastUpdate`` (seconds since the epoch) or ``None`` when missing or not a finite
    number >= 0 (the answer is restored, its age unknown)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    t = float(value)
    return t if math.isfinite(t) and t >= 0 else None


def parse_prefix(prefix: str | Path | None, kind: str) -> Path:
    """A namer's configured ``prefix`` (default ``/<kind>``) as a :class:`Path`."""
    if prefix is None:
        return Path.of(kind)
    if isinstance(prefix, str):
        if not prefix.startswith("/"):
            raise ValueError(f"namer prefix {prefix!r} must start with '/', e.g. '/{kind}'")
        return Path.read(prefix)
    return prefix


class Waker:
    """Wakes a runner task from synchronous code, without awaiting.

    ``wake()`` from the runner's trio thread sets an event; from any other thread it schedules that
    through the run's ``TrioToken``; before :meth:`bind` (the runner has not started) it does nothing,
    since the runner looks at everything when it starts.
    """

    def __init__(self) -> None:
        self._event = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread: threading.Thread | None = None

    def bind(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.current_thread()

    def wake(self) -> None:
        token = self._token
        if token is None:
            return
        if threading.current_thread() is self._thread:
            self._event.set()
        else:
            try:
                token.run_sync_soon(self._set)
            except trio.RunFinishedError:
                self._token = None

    def _set(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """Sleep until woken or ``timeout`` passes; return whether it was woken."""
        with trio.move_on_after(timeout):
            await self._event.wait()
        woken = self._event.is_set()
        self._event = trio.Event()
        return woken


class Namer:
    """Base class of configured namers (``/#/<prefix>/...``).

    Subclasses set :attr:`kind`, implement :meth:`run` (report answers through ``self.table.apply_*``
    followed by :meth:`_notify`) and may override :meth:`split` (which labels of a residual form one
    watched name; default: the first label).
    """

    kind: ClassVar[str] = ""
    #: Whether :meth:`split` respells the labels of a residual (the k8s namer lowercases its key, as
    #: Linkerd's does): a change it notifies for a key then also concerns the residuals that spell that
    #: key otherwise (:meth:`canonical_residual`), which bindings were made with.
    normalizes_keys: ClassVar[bool] = False

    def __init__(
        self,
        *,
        prefix: str | Path | None = None,
        clock: Callable[[], float] = time.time,
        max_names: int = DEFAULT_MAX_NAMES,
        transformers: Iterable[Any] = (),
    ) -> None:
        self.prefix: Path = parse_prefix(prefix, self.kind)
        #: Transformers configured on this namer, applied by the interpreter to its bound results.
        self.transformers: tuple[Any, ...] = tuple(transformers)
        self.clock = clock
        self.table = NameTable(clock, max_names)
        #: See :data:`SAVED_STATE_MAX_AGE`.
        self.saved_state_max_age = SAVED_STATE_MAX_AGE
        self._subscribers: list[Subscriber] = []
        self.waker = Waker()
        self.lookups = 0
        self.callback_errors = 0

    # -- naming --------------------------------------------------------------------------------
    @property
    def bound_prefix(self) -> Path:
        """The effective prefix ``/#`` + prefix; bound ids start with it."""
        return Path.of("#") + self.prefix

    def bound_id(self, key: Key) -> Path:
        return self.bound_prefix + Path(tuple(key))

    def split(self, residual: Path) -> tuple[Key, Path] | None:
        """Split a residual into (watched key, rest); ``None`` means the namer has no such name."""
        labels = tuple(residual.labels)
        if not labels:
            return None
        return labels[:1], Path(labels[1:])

    def canonical_residual(self, residual: Path) -> Path:
        """``residual`` with its key as :meth:`split` spells it (unchanged when it names nothing)."""
        split = self.split(residual)
        if split is None:
            return residual
        key, rest = split
        return Path(tuple(key)) + rest

    # -- the binding side (synchronous) --------------------------------------------------------
    def lookup(self, residual: Path) -> Any:
        """What ``residual`` (the path after this namer's prefix) means now.

        A bound leaf, :data:`NEG`, or :data:`PENDING` until the first answer; raises
        :class:`NamerError` for a failed name. The first lookup of a name starts watching it.
        """
        self.lookups += 1
        split = self.split(residual)
        if split is None:
            return NEG
        key, rest = split
        st = self.touch(key)
        return self.tree_for(st, rest)

    def touch(self, key: Key) -> NameState:
        """Mark ``key`` used, start watching it if new, and return its state."""
        st, created, evicted = self.table.touch(key)
        st.used = True
        for old in evicted:
            log.info("namer.name.evicted", namer=self.kind, name=key_text(old.key), cap=self.table.max_names)
            self._notify(old.key)
        if created:
            self._wake()
        return st

    def tree_for(self, st: NameState, rest: Path) -> Any:
        if st.state == "pending":
            return PENDING
        if st.state == "neg":
            return NEG
        bid = self.bound_id(st.key)
        if st.state == "failed":
            raise NamerError(f"{bid}: {st.last_error}")
        return Leaf(BoundName(id=bid, residual=rest, addr=st.current_addr()))

    def addr(self, key: Key | Path) -> Any:
        """The current address set of a watched name (starts watching it if it is not)."""
        k = tuple(key.labels) if isinstance(key, Path) else tuple(key)
        return self.touch(k).current_addr()

    # -- observing -----------------------------------------------------------------------------
    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(namer, key_path)`` whenever a watched name's state changes or it is
        evicted. Returns a function that unsubscribes."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def _notify(self, key: Key) -> None:
        path = Path(tuple(key))
        for cb in list(self._subscribers):
            try:
                cb(self, path)
            except Exception:
                self.callback_errors += 1
                log.exception("namer.subscriber.failed", namer=self.kind, name=key_text(key))

    def _wake(self) -> None:
        self.waker.wake()

    def _bind_runner(self) -> None:
        """Called first thing in :meth:`run`: remember the trio thread for waking."""
        self.waker.bind()

    async def _wait_for_wake(self, timeout: float) -> bool:
        return await self.waker.wait(timeout)

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement run()")

    # -- persistence ---------------------------------------------------------------------------
    def export_state(self) -> dict[str, Any]:
        """The last good address sets, JSON-serialisable, for the daemon to save (``namerState.dir``)
        so that a restart while the backend is down does not start empty. A restored name that no
        lookup wanted since and whose answer is older than :attr:`saved_state_max_age` is left out
        (restored names of unknown age are kept)."""
        names = {}
        now = self.clock()
        for st in self.table.states():
            if st.addr is None:
                continue
            if (
                not st.used
                and st.confirmed_at is not None
                and now - st.confirmed_at > self.saved_state_max_age
            ):
                continue
            names[str(Path(st.key))] = {
                "addrs": [address_json(a) for a in st.addr],
                "meta": dict(st.meta),
                # when the backend last gave this answer, not when it was restored or last changed
                "lastUpdate": st.confirmed_at,
            }
        doc: dict[str, Any] = {
            "version": STATE_FORMAT_VERSION,
            "kind": self.kind,
            "prefix": str(self.bound_prefix),
        }
        source = self.state_source()
        if source is not None:
            doc["source"] = source
        doc["names"] = names
        return doc

    def state_source(self) -> dict[str, str] | None:
        """The settings that decide what this namer's names mean (``rootDir``, the API server), saved
        with its state: state saved for another backend at the same prefix is not restored (its names
        mean other services). ``None``: names mean the same whatever the settings."""
        return None

    def import_state(self, data: Any) -> int:
        """Seed names from :meth:`export_state` output. Restored names are ``stale`` (serving their
        saved addresses, aged from their saved ``lastUpdate``) until the backend answers for them;
        names already known are left alone. A name with an address no namer could produce (port
        outside 1-65535, a negative, NaN or infinite weight, ...) is skipped with a warning naming
        it; the others load. Returns how many were restored; raises ``ValueError`` for state saved
        by another namer (kind, prefix, or :meth:`state_source`) or in another format version."""
        check_saved_state(data, self.kind, str(self.bound_prefix), self.state_source())
        restored = 0
        skips = RestoreSkips(
            self.kind,
            "names",
            "this name starts empty; the other saved names are restored",
            "these names start empty; the other saved names are restored",
        )
        for name, entry in list(data["names"].items())[-self.table.max_names :]:
            try:
                key = tuple(Path.read(name).labels)
                if not isinstance(entry, dict) or not isinstance(entry.get("addrs"), list):
                    raise ValueError("the entry has no 'addrs' list")
                addrs = tuple(valid_saved_address(a) for a in entry["addrs"])
                meta = entry.get("meta") or {}
                if not isinstance(meta, dict):
                    raise ValueError(f"meta {meta!r} is not an object")
            except Exception as e:
                skips.skip(name, e)
                continue
            if not key or key in self.table:
                continue
            self.touch(key)
            self.table.restore(key, addrs, dict(meta), saved_time(entry.get("lastUpdate")))
            restored += 1
        skips.done()
        return restored

    # -- admin ---------------------------------------------------------------------------------
    def state_json(self) -> dict[str, Any]:
        """The body of ``/namer_state/<prefix>.json``."""
        now = self.clock()
        return {
            "kind": self.kind,
            "prefix": str(self.bound_prefix),
            "names": {key_text(st.key): st.to_json(now) for st in self.table.states()},
        }

    def statistics(self) -> dict[str, Any]:
        counts = {s: 0 for s in ("pending", "bound", "neg", "failed", "stale")}
        for st in self.table.states():
            counts[st.state] += 1
        return {
            "kind": self.kind,
            "prefix": str(self.bound_prefix),
            "watched": len(self.table),
            "max_names": self.table.max_names,
            "states": counts,
            "lookups": self.lookups,
            "updates": self.table.updates,
            "evictions": self.table.evictions,
            "callback_errors": self.callback_errors,
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.bound_prefix} watching {len(self.table)} names>"


def config_value(cfg: Any, *names: str) -> Any:
    """The first of ``names`` set in a namer's config: a Linkerd-style mapping (camelCase keys) or a
    config dataclass (snake_case attributes); ``None`` when none is set."""
    for name in names:
        if isinstance(cfg, Mapping):
            if name in cfg:
                return cfg[name]
        elif getattr(cfg, name, None) is not None:
            return getattr(cfg, name)
    return None
