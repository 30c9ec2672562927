"""Last good namer answers that survive a restart (``namerState.dir``).

Theory of operation
-------------------
Monzo's 2017 outage taught that a proxy restarted while its discovery backend is down must not start
empty. With ``namerState: {dir: DIR}`` every namer's last good address sets (``Namer.export_state()``)
are written to ``DIR/<namer prefix>.json`` and loaded at start (``Namer.import_state()``), where they are
served as ``stale`` until the backend answers for them. The ``/$/inet`` resolver's last good DNS answers
are kept the same way, in ``DIR/@inet.json`` (``InetResolver`` has the same four methods: ``prefix``,
``subscribe``, ``export_state``, ``import_state``, and names its own file).

Writes are atomic (a temporary file in the same directory, ``fsync``, ``rename``), so a crash mid-write
leaves the previous file. A namer's file is rewritten only after the namer reported a change
(``subscribe``), at most once per ``interval_s``, every ``REFRESH_S`` (so that the saved confirmation
times of stable answers move on), plus a final save at shutdown, and never when what would be written
is what the file already holds. The name table is read (``export_state``, which copies what it
saves) in the trio thread; the encoding and the file operations run in a worker thread. A reload that rebuilds the namers flushes the running
store first (the new namers load that), then retires it: the retired namers, finishing old requests,
write nothing more over the file the new namers own. A crash mid-write leaves the temporary file;
one older than ``STALE_TEMPORARY_S`` is removed at the next start.

A file that cannot be read (also a named pipe or a device: it is opened without blocking and must be a
regular file of at most ``MAX_FILE_BYTES``), is empty, is not UTF-8 or not JSON (also JSON nested too
deep to decode), or belongs to another namer (kind, prefix, format version, or ``source``: the settings
that decide what its names mean, such as the fs ``rootDir`` or the Kubernetes API server) is reported
(``namer_state.load_failed``, with the path, why and what to do) and ignored: stale state is a
convenience, never a reason not to start, and never worse than none. Within a readable file, a name
whose saved addresses no namer could produce is skipped with a warning naming it
(``namer.state.restore.failed``) and the rest load; each restored name keeps the time its answer was
last confirmed (``lastUpdate``), so it shows its real age.
"""

from __future__ import annotations

import glob
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog
import trio

from hostproxy.regularfile import read_regular

log = structlog.get_logger("hostproxy.namerstate")

MAX_FILE_BYTES = 64 * 1024 * 1024

#: Every namer is saved again this often even when it reported no change: a stable answer notifies no
#: one, yet its confirmation time moves on, and a restart after a crash (no final save) would
#: otherwise age the answer from its last change. Only a namer whose file would differ is written.
REFRESH_S = 600.0

#: A temporary file of a state file this old was left by a write that did not finish (a crash).
STALE_TEMPORARY_S = 3600.0


def file_name(prefix: str) -> str:
    """``/io.l5d.k8s`` → ``io.l5d.k8s.json``; anything unusual in a prefix becomes ``_``."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", prefix.strip("/")) or "root"
    return f"{name}.json"


class NamerStateStore:
    """Saves and restores the namers' last good state under one directory."""

    def __init__(self, directory: str | os.PathLike[str], namers: list[Any]) -> None:
        self.dir = Path(directory)
        self.namers = list(namers)
        self._dirty: set[int] = set()
        self._wake = trio.Event()
        self.saves = 0
        self.save_failures = 0
        self.retired = False
        self.restored: dict[str, int] = {}
        #: Per namer: what was last written and the file it was written to (``st_ino``, ``st_size``,
        #: ``st_mtime_ns``), so that an unchanged state is not written (and fsynced) again.
        self._written: dict[int, tuple[bytes, tuple[int, int, int]]] = {}
        for i, n in enumerate(self.namers):
            n.subscribe(lambda _n, _key, i=i: self._mark(i))

    def path_for(self, namer: Any) -> Path:
        """``DIR/<prefix>.json``, or ``DIR/<namer.state_file>`` for one that names its own (the
        ``/$/inet`` resolver: ``@inet.json``, a name no prefix maps to)."""
        own = getattr(namer, "state_file", None)
        return self.dir / (own if isinstance(own, str) else file_name(str(namer.prefix)))

    def _mark(self, i: int) -> None:
        self._dirty.add(i)
        self._wake.set()

    # -- loading ----------------------------------------------------------------------------------

    def load_all(self) -> dict[str, int]:
        """Seed every namer from its file; returns ``{prefix: names restored}``. Never raises."""
        for n in self.namers:
            path = self.path_for(n)
            self._remove_stale_temporaries(path)
            try:
                if not path.exists():
                    continue
                # Not open() and read(): a named pipe would hold the start, /dev/zero never ends.
                raw = read_regular(str(path), MAX_FILE_BYTES)
                count = n.import_state(decode(raw))
            except (OSError, ValueError, RecursionError, TypeError) as e:
                # RecursionError: JSON nested deeper than the decoder's stack (a corrupt file).
                log.warning(
                    "namer_state.load_failed",
                    path=str(path),
                    error=(
                        "not valid namer state: JSON nested too deeply to decode (a corrupt file)"
                        if isinstance(e, RecursionError)
                        else str(e)
                    ),
                    hint=LOAD_FAILED_HINT,
                )
                continue
            self.restored[str(n.prefix)] = count
            log.info("namer_state.loaded", path=str(path), names=count)
        return dict(self.restored)

    def _remove_stale_temporaries(self, path: Path) -> None:
        """Remove the temporary files of ``path`` that a crash mid-write left (older than
        ``STALE_TEMPORARY_S``: a younger one may be another writer's, about to be renamed)."""
        try:
            candidates = list(self.dir.glob(f".{glob.escape(path.name)}.*"))
        except OSError:
            return
        now = time.time()
        for tmp in candidates:
            try:
                if tmp.is_symlink() or not tmp.is_file() or now - tmp.stat().st_mtime < STALE_TEMPORARY_S:
                    continue
                tmp.unlink()
            except OSError:
                continue
            log.info(
                "namer_state.temporary_removed", path=str(tmp), why="left by a write that did not finish"
            )

    # -- saving -----------------------------------------------------------------------------------

    def save(self, namer: Any) -> bool:
        """Write ``namer``'s state unless the file already holds it; False (logged) when it fails."""
        return self.write(namer, namer.export_state())

    def write(self, namer: Any, state: dict[str, Any]) -> bool:
        """Write ``state`` (``namer.export_state()``, taken in the trio thread: it reads the name
        table) as ``namer``'s file, atomically. Encodes and touches files only, so it may run in a
        worker thread. Nothing is written once the store is retired."""
        if self.retired:
            return False
        path = self.path_for(namer)
        try:
            data = json.dumps(state, separators=(",", ":"), sort_keys=True).encode()
            written = self._written.get(id(namer))
            if written is not None and written[0] == data and written[1] == file_id(path):
                return True  # nothing saved changed (a new error, a name gone stale): no write
            self.dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=self.dir)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                with_suppressed_unlink(tmp)
                raise
            self._written[id(namer)] = (data, file_id(path))
        except (OSError, TypeError, ValueError) as e:  # TypeError, ValueError: not encodable as JSON
            self.save_failures += 1
            log.warning(
                "namer_state.save_failed",
                path=str(path),
                error=str(e),
                hint=(
                    "check that namerState.dir exists and is writable by the daemon"
                    if isinstance(e, OSError)
                    else "a namer's answer holds a value JSON cannot encode; the previous file stays"
                ),
            )
            return False
        self.saves += 1
        return True

    def save_all(self) -> None:
        for n in self.namers:
            self.save(n)
        self._dirty.clear()

    async def flush(self) -> None:
        """Save every namer now, the writes in a worker thread."""
        self._dirty.clear()
        for n in self.namers:
            await trio.to_thread.run_sync(self.write, n, n.export_state())

    def retire(self) -> None:
        """Write nothing more, not even at the end: a reload gave the directory to new namers (their
        store loaded what this one last saved) and this one's namers only finish old requests."""
        self.retired = True

    async def run(
        self,
        interval_s: float = 5.0,
        refresh_s: float = REFRESH_S,
        *,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Save changed namers at most every ``interval_s``, every namer whose file would differ
        every ``refresh_s``, and everything once more when cancelled (unless retired)."""
        task_status.started()
        try:
            while True:
                with trio.move_on_after(refresh_s):
                    await self._wake.wait()
                if not self._wake.is_set():
                    self._dirty.update(range(len(self.namers)))  # confirmations only: see REFRESH_S
                self._wake = trio.Event()
                await trio.sleep(interval_s)
                dirty, self._dirty = self._dirty, set()
                for i in sorted(dirty):
                    n = self.namers[i]
                    await trio.to_thread.run_sync(self.write, n, n.export_state())
        finally:
            if not self.retired:
                with trio.CancelScope(shield=True):
                    self.save_all()

    def statistics(self) -> dict[str, Any]:
        return {
            "dir": str(self.dir),
            "saves": self.saves,
            "save_failures": self.save_failures,
            "restored": dict(self.restored),
        }


#: What follows a file that is not restored (``namer_state.load_failed``).
LOAD_FAILED_HINT = (
    "the namer starts without saved state (names wait for their backend); the file is replaced at the "
    "next save"
)


def decode(raw: bytes) -> Any:
    """A state file's bytes as JSON; ``ValueError`` says what is wrong and where (the byte offset)."""
    if len(raw) > MAX_FILE_BYTES:
        raise ValueError(f"larger than {MAX_FILE_BYTES} bytes; not namer state this daemon wrote")
    if not raw.strip():
        raise ValueError("the file is empty (a write cut short, or made by hand)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text at byte {e.start} (a corrupt or binary file)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON (cut short?): {e}") from None


def file_id(path: Path) -> tuple[int, int, int]:
    """What tells one version of the file at ``path`` from another; ``(0, 0, 0)`` when none."""
    try:
        st = path.stat()
    except OSError:
        return (0, 0, 0)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def with_suppressed_unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
