"""The dashboard at ``/`` and the process facts behind ``/admin/process.json``.

Theory of operation
-------------------
The dashboard is three files in ``hostproxy/admin/static/`` served from the package: the page
(``/``), its script and its stylesheet (``/files/<name>``); nothing is loaded from elsewhere, and
the ``Content-Security-Policy`` sent with the page allows only these same-origin files and
same-origin ``fetch``.  The page polls ``/admin/metrics.json`` every second and computes rates and
interval success rates from successive samples (as Linkerd's dashboard does), and reads
``/client_state.json`` and ``/admin/process.json`` every other second.  Files are read once and
cached; the server does no per-request work beyond handing out bytes.

``process_info()`` reads ``/proc/self`` and ``resource``: pid, resident set size, CPU seconds,
uptime, open file descriptors and their soft limit, the Python version, and the garbage collector's
collections, pauses and frozen objects (``gc``, see ``hostproxy.gcpolicy``).  Where ``/proc`` is
missing (not Linux) it falls back to ``resource`` alone and reports what it cannot know as ``None``.
"""

from __future__ import annotations

import functools
import gc
import importlib.metadata
import importlib.resources
import os
import platform
import resource
import time
from typing import Any

from hostproxy import gcpolicy

__all__ = [
    "DASHBOARD_CSP",
    "STATIC_TYPES",
    "dashboard_page",
    "gc_info",
    "process_info",
    "static_file",
]

STATIC_TYPES: dict[str, str] = {
    "dashboard.js": "text/javascript;charset=UTF-8",
    "dashboard.css": "text/css;charset=UTF-8",
}

DASHBOARD_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)

# Fallback start time when /proc/self/stat cannot be read.
_IMPORTED_AT = time.time()


@functools.cache
def _read(name: str) -> bytes:
    return importlib.resources.files("hostproxy.admin").joinpath("static", name).read_bytes()


def dashboard_page() -> bytes:
    return _read("dashboard.html")


def static_file(name: str) -> tuple[bytes, str] | None:
    """``(body, content type)`` of a dashboard asset, or None for a name that is not one."""
    ctype = STATIC_TYPES.get(name)
    if ctype is None:
        return None
    return _read(name), ctype


def _proc_start_time() -> float | None:
    """The wall time this process started, from /proc (None when unavailable)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
        # Field 22 (starttime, clock ticks after boot); the command name (field 2) may hold spaces.
        fields = stat[stat.rindex(")") + 2 :].split()
        start_ticks = int(fields[19])
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return int(line.split()[1]) + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return None


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _open_fds() -> int | None:
    for d in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(d))
        except OSError:
            continue
    return None


def process_info(now: float | None = None) -> dict[str, Any]:
    """The ``/admin/process.json`` document."""
    now = time.time() if now is None else now
    usage = resource.getrusage(resource.RUSAGE_SELF)
    started = _proc_start_time() or _IMPORTED_AT
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    rss = _rss_bytes()
    return {
        "pid": os.getpid(),
        "rss_bytes": rss if rss is not None else usage.ru_maxrss * 1024,
        "max_rss_bytes": usage.ru_maxrss * 1024,
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
        "uptime_s": round(max(0.0, now - started), 3),
        "open_fds": _open_fds(),
        "fd_limit": soft if soft != resource.RLIM_INFINITY else None,
        "python": platform.python_version(),
        "gc": gc_info(),
    }


def server_info(now: float | None = None) -> dict[str, Any]:
    """The ``/admin/server_info`` document: TwitterServer's fields that mean something here (``name``,
    ``version``, ``start_time``, ``uptime`` in milliseconds), so scripts that read Linkerd's keep
    working."""
    now = time.time() if now is None else now
    started = _proc_start_time() or _IMPORTED_AT
    try:
        version = importlib.metadata.version("hostproxy")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "name": "hostproxy",
        "version": version,
        "start_time": time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime(started)),
        "uptime": int(max(0.0, now - started) * 1000),
        "python": platform.python_version(),
    }


def gc_info() -> dict[str, Any]:
    """The collector's part of ``/admin/process.json``: the daemon's policy's statistics (see
    ``hostproxy.gcpolicy``), or, where none is installed (an in-process daemon), the collections
    per generation and the frozen objects, with the pauses unknown (``None``)."""
    policy = gcpolicy.installed()
    if policy is not None:
        return policy.statistics()
    return {
        "collections": [g["collections"] for g in gc.get_stats()],
        "pause_ms_total": None,
        "pause_ms_max": None,
        "freezes": None,
        "complete_walks": None,
        "frozen_objects": gc.get_freeze_count(),
        "full_every_s": None,
    }
