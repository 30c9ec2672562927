"""Last good namer answers that survive a restart (``namerState.dir``).

Theory of operation
-------------------
Monzo's 2017 outage taught that a proxy restarted while its discovery backend is down must not start
empty. With ``namerState: {dir: DIR}`` every namer's last good address sets (``Namer.export_state()``)
are written to ``DIR/<namer prefix>.json`` and loaded at start (``Namer.import_state()``), where they are
served as ``stale`` until the backend answers for them.

Writes are atomic (a temporary file in the same directory, ``fsync``, ``rename``), so a crash mid-write
leaves the previous file. A namer's file is rewritten only after the namer reported a change
(``subscribe``), at most once per ``interval_s``, plus a final save at shutdown. A file that cannot be
read, is not JSON (also JSON nested too deep to decode) or belongs to another namer is reported
(``namer_state.load_failed``, with the path, why and what to do) and ignored: stale state is a
convenience, never a reason not to start. Within a readable file, a name whose saved addresses no namer
could produce is skipped with a warning naming it (``namer.state.restore.failed``) and the rest load;
each restored name keeps the time its answer was last confirmed (``lastUpdate``), so it shows its real
age.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import structlog
import trio

log = structlog.get_logger("hostproxy.namerstate")

MAX_FILE_BYTES = 64 * 1024 * 1024


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
        self.restored: dict[str, int] = {}
        for i, n in enumerate(self.namers):
            n.subscribe(lambda _n, _key, i=i: self._mark(i))

    def path_for(self, namer: Any) -> Path:
        return self.dir / file_name(str(namer.prefix))

    def _mark(self, i: int) -> None:
        self._dirty.add(i)
        self._wake.set()

    # -- loading ----------------------------------------------------------------------------------

    def load_all(self) -> dict[str, int]:
        """Seed every namer from its file; returns ``{prefix: names restored}``. Never raises."""
        for n in self.namers:
            path = self.path_for(n)
            try:
                if not path.exists():
                    continue
                if path.stat().st_size > MAX_FILE_BYTES:
                    raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
                data = json.loads(path.read_text())
                count = n.import_state(data)
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
                    hint="the namer starts empty; delete the file if it belongs to another config",
                )
                continue
            self.restored[str(n.prefix)] = count
            log.info("namer_state.loaded", path=str(path), names=count)
        return dict(self.restored)

    # -- saving -----------------------------------------------------------------------------------

    def save(self, namer: Any) -> bool:
        path = self.path_for(namer)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            data = json.dumps(namer.export_state(), separators=(",", ":"), sort_keys=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=self.dir)
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                with_suppressed_unlink(tmp)
                raise
        except OSError as e:
            self.save_failures += 1
            log.warning(
                "namer_state.save_failed",
                path=str(path),
                error=str(e),
                hint="check that namerState.dir exists and is writable by the daemon",
            )
            return False
        self.saves += 1
        return True

    def save_all(self) -> None:
        for n in self.namers:
            self.save(n)
        self._dirty.clear()

    async def run(self, interval_s: float = 5.0, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Save changed namers at most every ``interval_s``; save everything once more when cancelled."""
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                await trio.sleep(interval_s)
                dirty, self._dirty = self._dirty, set()
                for i in sorted(dirty):
                    await trio.to_thread.run_sync(self.save, self.namers[i])
        finally:
            with trio.CancelScope(shield=True):
                self.save_all()

    def statistics(self) -> dict[str, Any]:
        return {
            "dir": str(self.dir),
            "saves": self.saves,
            "save_failures": self.save_failures,
            "restored": dict(self.restored),
        }


def with_suppressed_unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
