"""``io.l5d.fs``: service discovery from a directory of files, watched.

Theory of operation
-------------------
``/#/io.l5d.fs/<name>/rest...`` names the file ``<rootDir>/<name>``; it binds to
``BoundName(id=/#/io.l5d.fs/<name>, residual=/rest..., addr=AddrBound(addresses))`` with the
addresses parsed by :mod:`namers.fsformat`. Subdirectories nest (``/#/io.l5d.fs/<dir>/<file>/rest``);
a missing file, or a directory, is ``NEG`` so a dtab alternate can take over.

Three parts:

* :func:`scan` (blocking, run in a worker thread) checks the root directory and stats every watched
  path; it reads a file only when its signature (device, inode, size, mtime, ctime) changed or a
  re-read is forced, and returns one observation per name (:class:`Missing`, :class:`IsDir`,
  :class:`Unchanged`, :class:`FileText`, :class:`ReadError`). The ctime catches an in-place rewrite
  that keeps size and mtime (``cp -p``, ``touch -r``, ``rsync -t --inplace``): nothing can set it
  back. A write within the same timestamp tick as our read changes no timestamp at all, so, as git
  does for its "racy" index entries, a file whose mtime or ctime is within :data:`RACY_WINDOW_NS` of
  the time it was read is marked ``racy`` and read again on the next polls until it is not (a few
  small reads per change). A dangling symlink (a ConfigMap mount caught mid-swap, a link to a file
  not there) is a read error, not a missing file: the name keeps its last good addresses. A name
  too long to be a file name (``ENAMETOOLONG``) is missing.
* :class:`FsCore` (pure, time passed in) turns observations into :class:`NameTable` transitions:
  missing or directory -> ``neg``; text -> ``bound`` or, for a malformed file, a failure that keeps
  the last good addresses (``stale``) and carries ``file:line``; unreadable -> failure; a missing or
  unreadable ``rootDir`` -> every name fails with an error naming the path. A file with *no
  addresses* (empty, or only comments and blank lines) seen while the name has addresses is not
  believed at once, since a writer that truncates and rewrites in place shows it for a moment (and
  may write its header comment first): it is re-read after ``settle`` seconds, and only a file still
  without addresses then empties the name. Two more half-written states wait the same way: a file
  changed a moment ago (``racy``) whose last line has no line end (a writer caught mid-line, ``10.0.0.2
  8`` of ``10.0.0.2 8080``) is read again until it ends its line or stops changing, for at most
  ``settle`` seconds; and a file with addresses that disappears is believed gone only if it is still
  gone after ``settle`` (a writer that unlinks and re-creates it, as ``git checkout`` does). (Writers
  that write a temporary file and ``rename`` it never show these states.)
* :class:`FsNamer` wires them: its :meth:`~FsNamer.run` task polls every ``poll_interval`` seconds
  (0.25 by default) or at once when a lookup asks for a new name, so changes apply within a second,
  and never lets one name's trouble stop the others.

A hung filesystem (an NFS server that stops answering) blocks ``stat``/``open``/``read`` in the worker
thread without end. Only one scan runs at a time, so a hung scan holds one thread and no more are
started; a watchdog in the trio task marks the scan *hung* once it has run for ``scan_timeout`` seconds
(by default :data:`SCAN_TIMEOUT_POLLS` poll intervals, at least :data:`SCAN_TIMEOUT_FLOOR`; Linkerd's
fs namer has no such setting). :meth:`FsCore.mark_hung` then reports a failure for every watched name
through the name table, as any namer failure is reported: a name with addresses keeps serving them,
``stale`` with the error; a name never answered yet (``pending``) is ``failed`` at once rather than
waited for; a negative name (its file missing) stays negative, since that is its last good answer and a
dtab alternative depends on it. The namer's state JSON shows the hang (``scan``). When the scan
finally returns, its results are applied and every name is back to what its file says; a file the
scan found unchanged gets the answer it had before the hang.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import structlog
import trio

from namers._dtab import NEG, PENDING, Path
from namers.base import DEFAULT_MAX_NAMES, Key, Namer, NameTable, config_value, format_time, key_text
from namers.fsformat import MAX_FILE_SIZE, FsFormatError, check_size, parse_addresses

__all__ = [
    "KIND",
    "MAX_DEPTH",
    "RACY_WINDOW_NS",
    "SCAN_TIMEOUT_FLOOR",
    "SCAN_TIMEOUT_POLLS",
    "FileText",
    "FsCore",
    "FsNamer",
    "IsDir",
    "Missing",
    "ReadError",
    "Unchanged",
    "check_root",
    "from_config",
    "observe",
    "safe_label",
    "scan",
]

KIND = "io.l5d.fs"
log = structlog.get_logger("namers.fs")

#: Deepest subdirectory nesting a lookup follows.
MAX_DEPTH = 16

Sig = tuple[int, ...]  # (device, inode, size, mtime_ns, ctime_ns)

#: A file changed this close (either way) to the moment it was read may be written again within the
#: same timestamp tick without any visible change; such a read is ``racy`` and repeated. 2 s covers
#: the coarsest common filesystem timestamps (FAT; 1 s on ext3, HFS+ and some NFS servers).
RACY_WINDOW_NS = 2_000_000_000

#: A scan still running after this many poll intervals is hung (a filesystem that stopped answering)...
SCAN_TIMEOUT_POLLS = 40
#: ... but never before this many seconds: a slow, busy filesystem is not a hung one. With the default
#: poll interval (0.25 s) both give 10 s.
SCAN_TIMEOUT_FLOOR = 10.0


def default_scan_timeout(poll_interval: float) -> float:
    """How long a scan may run before the names are marked stale: see :data:`SCAN_TIMEOUT_POLLS`."""
    return max(SCAN_TIMEOUT_FLOOR, SCAN_TIMEOUT_POLLS * poll_interval)


# -- observations (what one scan saw for one name) ----------------------------------------------
@dataclass(frozen=True)
class Missing:
    pass


@dataclass(frozen=True)
class IsDir:
    pass


@dataclass(frozen=True)
class Unchanged:
    pass


@dataclass(frozen=True)
class FileText:
    sig: Sig
    text: str
    #: Read within :data:`RACY_WINDOW_NS` of its last change: a same-tick rewrite would go unseen,
    #: so read it again.
    racy: bool = False


@dataclass(frozen=True)
class ReadError:
    message: str


Observation = Missing | IsDir | Unchanged | FileText | ReadError
Request = tuple[Key, "Sig | None", bool]  # (key, signature last read, force a re-read)


def safe_label(label: bytes) -> bool:
    """Whether a path label can name a file under rootDir (no traversal, no separators)."""
    return label not in (b".", b"..") and b"/" not in label and b"\0" not in label and b"\\" not in label


def file_path(root: str, key: Key) -> str:
    return os.path.join(root, *(os.fsdecode(label) for label in key))


# -- the blocking half ---------------------------------------------------------------------------
def check_root(root: str) -> str | None:
    """``None`` when ``root`` is a readable directory, else what is wrong and what to do."""
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return f"io.l5d.fs rootDir {root!r} does not exist; create it or fix namers[].rootDir"
    except OSError as e:
        return f"io.l5d.fs rootDir {root!r} cannot be read ({e.strerror}); fix its permissions or namers[].rootDir"
    if not stat.S_ISDIR(st.st_mode):
        return f"io.l5d.fs rootDir {root!r} is not a directory; point namers[].rootDir at a directory"
    if not os.access(root, os.R_OK | os.X_OK):
        return f"io.l5d.fs rootDir {root!r} cannot be read (permission denied); fix its permissions"
    return None


def _cannot(path: str, doing: str, e: OSError) -> str:
    """Why ``path`` could not be read, and what to do: the fix depends on the error (a permission
    problem is the file's, running out of descriptors is the daemon's)."""
    if e.errno in (errno.EMFILE, errno.ENFILE):
        return (
            f"{path}: cannot {doing} ({e.strerror}): hostproxy is out of file descriptors; raise its "
            "limit (LimitNOFILE= in the systemd unit, ulimit -n) or look for a connection leak "
            "(/admin/metrics.json …/connections)"
        )
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"{path}: cannot {doing} ({e.strerror}); fix its permissions"
    return f"{path}: cannot {doing} ({e.strerror}); reading it again"


def _sig(st: os.stat_result) -> Sig:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _dangling(path: str) -> str | None:
    """What is wrong when ``path`` is a symlink whose target does not exist, else ``None``."""
    try:
        if not stat.S_ISLNK(os.lstat(path).st_mode):
            return None
        target = os.readlink(path)
    except OSError:
        return None
    return (
        f"{path} is a symlink to {target!r}, which does not exist (a ConfigMap mount mid-update, or a "
        "broken link): fix the link or remove it"
    )


def observe(
    root: str, key: Key, prev: Sig | None, force: bool, now_ns: Callable[[], int] = time.time_ns
) -> Observation:
    path = file_path(root, key)
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        dangling = _dangling(path)
        return ReadError(dangling) if dangling is not None else Missing()
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            return Missing()  # no file can have that name (a made-up name from a request)
        return ReadError(_cannot(path, "stat", e))
    if stat.S_ISDIR(st.st_mode):
        return IsDir()
    if not stat.S_ISREG(st.st_mode):
        return ReadError(f"{path} is not a regular file; replace it with a file of 'host port' lines")
    sig = _sig(st)
    if sig == prev and not force:
        return Unchanged()
    try:
        # Without blocking: a FIFO put in the file's place since the stat would hold open(2) until a
        # writer comes (no effect on a regular file); what was opened is checked again below.
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
            fst = os.fstat(f.fileno())
            if not stat.S_ISREG(fst.st_mode):
                return ReadError(f"{path} is not a regular file; replace it with a file of 'host port' lines")
            sig = _sig(fst)
            try:
                check_size(fst.st_size, path)
            except FsFormatError as e:
                return ReadError(str(e))
            data = f.read(MAX_FILE_SIZE + 1)
            read_ns = now_ns()
    except FileNotFoundError:
        # gone between stat and open (replaced, or a symlink swapped): look again next poll
        return ReadError(f"{path}: disappeared while being read; reading it again")
    except OSError as e:
        return ReadError(_cannot(path, "read", e))
    try:
        check_size(len(data), path)
        text = data.decode("utf-8")
    except FsFormatError as e:
        return ReadError(str(e))
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return ReadError(f"{path}:{line}: not UTF-8 text; save the file as UTF-8")
    racy = any(abs(read_ns - stamp) < RACY_WINDOW_NS for stamp in (fst.st_mtime_ns, fst.st_ctime_ns))
    return FileText(sig, text, racy)


def scan(root: str, requests: Sequence[Request]) -> tuple[str | None, list[tuple[Key, Observation]]]:
    """Check ``root`` and observe every requested name. Blocking: run it in a worker thread."""
    root_error = check_root(root)
    if root_error is not None:
        return root_error, []
    return None, [(key, observe(root, key, prev, force)) for key, prev, force in requests]


# -- the pure half --------------------------------------------------------------------------------
@dataclass
class _Tracked:
    kind: str | None = None  # "file", "dir", "missing", "error"
    sig: Sig | None = None
    settle_until: float | None = None
    racy: bool = False
    #: For a file: the error its last applied read gave (malformed), ``None`` when it bound.
    error: str | None = None


class FsCore:
    """Turns scan observations into name-state transitions. No I/O; ``now`` is passed in
    (a monotonic time, used only for the settle delay)."""

    def __init__(
        self, table: NameTable, root: str, settle: float = 0.5, scan_timeout: float = SCAN_TIMEOUT_FLOOR
    ) -> None:
        self.table = table
        self.root = root
        self.settle = settle
        self.scan_timeout = scan_timeout
        self.root_error: str | None = None
        self._tracked: dict[Key, _Tracked] = {}
        self.reads = 0
        self.settles = 0
        #: When the scan in progress started (``now``), and its wall time; ``None`` between scans.
        self.scan_started: float | None = None
        self.scan_started_wall: float | None = None
        #: Whether the scan in progress has been declared hung; how many scans were.
        self.hung = False
        self.hangs = 0
        #: Names :meth:`mark_hung` reported a failure for, put back when a scan completes.
        self._hung_keys: set[Key] = set()
        #: The failure every name gets while the scan hangs (one text, so repeating it is no change).
        self.hang_error = (
            f"io.l5d.fs rootDir {root!r}: a scan has not finished within {scan_timeout:g}s (the "
            "filesystem is not answering: a hung NFS or FUSE mount?); the last good addresses are "
            f"served until a scan finishes; check the mount (stat {root})"
        )

    def is_dir(self, key: Key) -> bool:
        t = self._tracked.get(key)
        return t is not None and t.kind == "dir"

    def requests(self, now: float) -> list[Request]:
        """What the next scan must look at; forgets names the table no longer holds."""
        keys = self.table.watched()
        for gone in set(self._tracked) - set(keys):
            del self._tracked[gone]
        out: list[Request] = []
        for key in keys:
            t = self._tracked.get(key)
            if t is None:
                out.append((key, None, False))
                continue
            force = (t.settle_until is not None and now >= t.settle_until) or t.racy
            out.append((key, t.sig if t.kind == "file" else None, force))
        return out

    # -- a scan that does not come back -------------------------------------------------------------
    def begin_scan(self, now: float) -> None:
        """A scan starts now (a monotonic time); it is hung if it is still running at :meth:`deadline`."""
        self.scan_started = now
        self.scan_started_wall = self.table.clock()
        self.hung = False

    def deadline(self) -> float | None:
        """When the scan in progress counts as hung; ``None`` when no scan runs."""
        return None if self.scan_started is None else self.scan_started + self.scan_timeout

    def mark_hung(self, now: float) -> list[Key]:
        """If the scan in progress has run for ``scan_timeout``, report :attr:`hang_error` for every
        watched name that has no negative answer (call it again for names looked up since: repeating
        it changes nothing). Returns the keys whose state changed."""
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return []
        if not self.hung:
            self.hung = True
            self.hangs += 1
            log.error(
                "namer.fs.scan.hung", root=self.root, timeout_s=self.scan_timeout, error=self.hang_error
            )
        changed: list[Key] = []
        for st in self.table.states():
            if st.state == "neg":
                continue  # the file was missing: its last good answer, which a dtab alternative relies on
            self._hung_keys.add(st.key)
            if self.table.apply_failure(st.key, self.hang_error):
                changed.append(st.key)
        return changed

    def _end_scan(self) -> bool:
        """The scan in progress has returned (or failed); whether it had been declared hung."""
        was_hung = self.hung
        if was_hung:
            log.info(
                "namer.fs.scan.recovered",
                root=self.root,
                started=format_time(self.scan_started_wall),
                hint="the filesystem answered again; names show what their files say",
            )
        self.scan_started = self.scan_started_wall = None
        self.hung = False
        return was_hung

    def end_scan_failed(self) -> None:
        """The scan in progress raised instead of returning (already logged by the caller)."""
        self._end_scan()

    def _restore_hung(self) -> list[Key]:
        """After a completed scan, give each name :meth:`mark_hung` failed, and that the scan did not
        change (its file unchanged, or still settling), the answer it had before the hang."""
        changed: list[Key] = []
        for key in self._hung_keys:
            st = self.table.get(key)
            if st is None or st.last_error != self.hang_error:
                continue  # gone, or the scan gave it a new answer
            t = self._tracked.get(key)
            if t is not None and t.kind == "file" and t.error is not None:
                if self.table.apply_failure(key, t.error):
                    changed.append(key)
            elif t is not None and t.kind == "file" and st.addr is not None:
                if self.table.apply_bound(key, st.addr, st.meta):
                    changed.append(key)
            elif t is not None:
                t.sig = None  # nothing to put back: read it again on the next scan
        self._hung_keys.clear()
        return changed

    def apply_scan(
        self, root_error: str | None, observations: Iterable[tuple[Key, Observation]], now: float
    ) -> list[Key]:
        """Apply one scan's results (which ends the scan in progress, if any); return the keys whose
        state changed."""
        self._end_scan()
        changed: list[Key] = []
        if root_error is not None:
            if root_error != self.root_error:
                log.error("namer.fs.root.failed", error=root_error)
            self.root_error = root_error
            for t in self._tracked.values():
                # read everything again once the root is back, but remember what each name was: a
                # file with addresses still missing from a re-created root waits for `settle`
                t.sig, t.settle_until, t.racy = None, None, False
            for key in self.table.watched():
                if self.table.apply_failure(key, root_error):
                    changed.append(key)
            self._hung_keys.clear()
            return changed
        if self.root_error is not None:
            log.info("namer.fs.root.recovered", root=self.root)
            self.root_error = None
        for key, obs in observations:
            if key in self.table and self.apply(key, obs, now):
                changed.append(key)
        if self._hung_keys:
            changed.extend(k for k in self._restore_hung() if k not in changed)
        return changed

    def _settling(self, t: _Tracked, now: float) -> bool:
        """Whether what was just seen waits for the settle delay (started at its first sight) before
        it is believed."""
        if t.settle_until is None:
            t.settle_until = now + self.settle
            self.settles += 1
            return True
        return now < t.settle_until

    def apply(self, key: Key, obs: Observation, now: float) -> bool:
        t = self._tracked.setdefault(key, _Tracked())
        if isinstance(obs, Unchanged):
            if t.error is None and t.settle_until is None:
                # Seen to hold still: a confirmation (``lastConfirmed``, the saved state's age).
                self.table.confirm(key)
            return False
        # Gone where it had addresses: maybe a writer that unlinks and creates (git checkout, rm and
        # cp) caught in between. Believe it only if it is still gone after `settle`.
        if (
            isinstance(obs, Missing)
            and t.kind == "file"
            and self._has_addresses(key)
            and self._settling(t, now)
        ):
            return False
        if isinstance(obs, Missing | IsDir):
            t.kind = "dir" if isinstance(obs, IsDir) else "missing"
            t.sig = None
            t.settle_until = None
            t.racy = False
            t.error = None
            return self.table.apply_neg(key)
        if isinstance(obs, ReadError):
            t.kind = "error"
            t.sig = None
            t.settle_until = None
            t.racy = False
            t.error = None
            return self.table.apply_failure(key, obs.message)
        assert isinstance(obs, FileText)
        self.reads += 1
        t.kind = "file"
        t.sig = obs.sig
        t.racy = obs.racy
        # Changed a moment ago and ending mid-line: maybe a writer caught between two writes
        # ('10.0.0.2 8' of '10.0.0.2 8080'), which would publish an address the file never held. Read
        # again until it ends its line, or stops changing, or `settle` has passed.
        if obs.racy and obs.text and not obs.text.endswith(("\n", "\r")) and self._settling(t, now):
            return False
        source = file_path(self.root, key)
        try:
            addrs = parse_addresses(obs.text, source)
        except FsFormatError as e:
            t.settle_until = None
            t.error = str(e)
            return self.table.apply_failure(key, t.error)
        if not addrs and self._has_addresses(key):
            # No addresses where there were some: maybe a truncate-then-write caught half-way
            # (empty, or only its header so far). Believe it only if it still says so after `settle`.
            if t.settle_until is None:
                t.settle_until = now + self.settle
                self.settles += 1
                return False
            if now < t.settle_until:
                return False
        t.settle_until = None
        t.error = None
        return self.table.apply_bound(key, addrs)

    def _has_addresses(self, key: Key) -> bool:
        st = self.table.get(key)
        return st is not None and bool(st.addr)


# -- the trio shell ---------------------------------------------------------------------------------
class FsNamer(Namer):
    """The ``io.l5d.fs`` namer over ``root_dir`` (relative paths are taken from the working directory
    at construction)."""

    kind: ClassVar[str] = KIND

    def __init__(
        self,
        root_dir: str | os.PathLike[str],
        *,
        prefix: str | Path | None = None,
        clock: Callable[[], float] | None = None,
        max_names: int = DEFAULT_MAX_NAMES,
        transformers: Iterable[Any] = (),
        poll_interval: float = 0.25,
        settle: float = 0.5,
        scan_timeout: float | None = None,
        scanner: Callable[[str, Sequence[Request]], tuple[str | None, list[tuple[Key, Observation]]]]
        | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {"prefix": prefix, "max_names": max_names, "transformers": transformers}
        if clock is not None:
            kwargs["clock"] = clock
        super().__init__(**kwargs)
        self.root_dir = os.path.abspath(os.fspath(root_dir))
        self.poll_interval = poll_interval
        if scan_timeout is None:
            scan_timeout = default_scan_timeout(poll_interval)
        self.core = FsCore(self.table, self.root_dir, settle, scan_timeout)
        #: The blocking scan; ``None``: :func:`scan` (tests put one that blocks in its place).
        self.scanner = scanner
        #: One scan thread at a time, outside trio's shared thread limit: a scan hung in the kernel
        #: holds this one token, never the threads the rest of the daemon uses.
        self._limiter = trio.CapacityLimiter(1)
        self.polls = 0
        self.poll_errors = 0

    def lookup(self, residual: Path) -> Any:
        """``/<name>[/<name>...]/rest``: follows subdirectories, binds the first file."""
        self.lookups += 1
        labels = tuple(residual.labels)
        for i in range(1, min(len(labels), MAX_DEPTH) + 1):
            if not safe_label(labels[i - 1]):
                return NEG
            key = labels[:i]
            st = self.touch(key)
            if st.state == "pending":
                return PENDING
            if self.core.is_dir(key):
                continue
            return self.tree_for(st, Path(labels[i:]))
        return NEG

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Poll the directory until cancelled. Reports started after the first scan (or once it is
        hung), so names looked up before the daemon started are answered by then; a bad rootDir is
        logged at that point. After a hung scan returns, scans again at once (names looked up
        meanwhile were not in it)."""
        self._bind_runner()
        log.info("namer.fs.started", root=self.root_dir, prefix=str(self.bound_prefix))
        started = False

        def report_started() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        while True:
            was_hung = await self.poll_once(on_hung=report_started)
            report_started()
            if not was_hung:
                await self._wait_for_wake(self.poll_interval)

    async def poll_once(self, on_hung: Callable[[], None] | None = None) -> bool:
        """One scan of every watched name; errors are logged and counted, never raised. While the
        scan runs longer than ``scan_timeout`` the names are marked (see :meth:`FsCore.mark_hung`)
        and ``on_hung`` is called. Returns whether the scan had been marked hung."""
        self.polls += 1
        was_hung = False
        try:
            now = trio.current_time()
            requests = self.core.requests(now)
            self.core.begin_scan(now)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_scan, on_hung)
                root_error, observations = await trio.to_thread.run_sync(
                    self.scanner or scan,
                    self.root_dir,
                    requests,
                    abandon_on_cancel=True,
                    limiter=self._limiter,
                )
                nursery.cancel_scope.cancel()
            was_hung = self.core.hung
            changed = self.core.apply_scan(root_error, observations, trio.current_time())
        except Exception:
            self.core.end_scan_failed()
            self.poll_errors += 1
            log.exception("namer.fs.poll.failed", root=self.root_dir)
            return was_hung
        self._report(changed)
        return was_hung

    async def _watch_scan(self, on_hung: Callable[[], None] | None) -> None:
        """Runs beside a scan until it returns: once it has run ``scan_timeout``, marks the names (and
        again for names looked up while it hangs)."""
        deadline = self.core.deadline()
        if deadline is None:
            return
        await trio.sleep_until(deadline)
        while True:
            self._report(self.core.mark_hung(trio.current_time()))
            if on_hung is not None:
                on_hung()
                on_hung = None
            await self._wait_for_wake(self.poll_interval)

    def _report(self, changed: Iterable[Key]) -> None:
        for key in changed:
            st = self.table.get(key)
            if st is not None:
                log.info(
                    "namer.fs.update.complete",
                    name=key_text(key),
                    state=st.state,
                    version=st.version,
                    error=st.last_error,
                )
            self._notify(key)

    def state_source(self) -> dict[str, str]:
        """Saved names are files under this ``rootDir``: another one's mean other services."""
        return {"rootDir": self.root_dir}

    def state_json(self) -> dict[str, Any]:
        body = super().state_json()
        body["rootDir"] = self.root_dir
        body["rootError"] = self.core.root_error
        core = self.core
        body["scan"] = {
            "running": core.scan_started is not None,
            "startedAt": format_time(core.scan_started_wall),
            "hung": core.hung,
            "timeoutSecs": core.scan_timeout,
            "lastError": core.hang_error if core.hung else None,
            "hangs": core.hangs,
        }
        return body

    def statistics(self) -> dict[str, Any]:
        stats = super().statistics()
        stats.update(
            root_dir=self.root_dir,
            root_error=self.core.root_error,
            polls=self.polls,
            poll_errors=self.poll_errors,
            reads=self.core.reads,
            settles=self.core.settles,
            scan_hung=self.core.hung,
            scan_hangs=self.core.hangs,
        )
        return stats


def from_config(cfg: Any) -> FsNamer:
    """Build the namer from a ``namers[]`` entry (a mapping or a config dataclass) with ``rootDir``
    and optional ``prefix`` and ``transformers``."""
    root = config_value(cfg, "rootDir", "root_dir")
    if root is None or root == "":
        raise ValueError(
            "namers[].rootDir is required for kind io.l5d.fs: set it to the directory of service files"
        )
    prefix = config_value(cfg, "prefix")
    transformers = config_value(cfg, "transformers") or ()
    return FsNamer(str(root), prefix=prefix, transformers=transformers)
