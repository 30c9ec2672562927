"""The access log: one line per request, free when off.

Theory of operation
-------------------
A router holds one ``AccessLog`` built by :meth:`AccessLog.from_config` from its ``httpAccessLog``
key (Linkerd's name): ``None`` gives the disabled log, a path gives a log that appends plain lines to
that file, and ``"-"`` (or ``"structlog"``) emits a structlog event named ``access`` instead.  The
request path checks one attribute, ``if access_log.enabled: access_log.log(...)``, so a disabled log
costs a single attribute read and formats nothing.

A file line is tab-separated and never contains a raw tab or newline (they are escaped), so a hostile
Host header or path cannot forge lines::

    2024-05-01T12:00:00.123Z  out  GET  /users/7  /svc/users  /#/io.l5d.fs/users  10.0.0.7:8080  200  -  3.2  512

(fields: time, router, method, path, service, client, endpoint, status, cause, duration in ms,
response bytes, i.e. the response's Content-Length as Linkerd logs it; ``-`` for a missing value).  The file is opened once in append mode with line
buffering, and reopened by :meth:`reopen` (call it on SIGHUP after logrotate moved the file).
Writes are synchronous: a local append of one short line; a failed write is counted in
``write_errors`` and never fails the request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import IO, Any

import structlog

__all__ = ["AccessLog"]

_ESCAPES = str.maketrans({"\t": "\\t", "\n": "\\n", "\r": "\\r", "\\": "\\\\"})
STRUCTLOG_TARGETS = frozenset({"-", "structlog"})


def _field(value: object) -> str:
    if value is None or value == "":
        return "-"
    return str(value).translate(_ESCAPES)


def _timestamp(t: float) -> str:
    whole_ms = round(t * 1000)
    secs, ms = divmod(whole_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ms:03d}Z"


def _open_append(path: str) -> IO[str]:
    return open(path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115 (kept open)


class AccessLog:
    """Where access lines go (see the module docstring); ``enabled`` is the one hot-path check."""

    def __init__(
        self,
        path: str | None = None,
        *,
        clock: Callable[[], float] = time.time,
        opener: Callable[[str], IO[str]] | None = None,
        key: str = "httpAccessLog",
    ) -> None:
        self.path = path
        self.enabled = path is not None
        self._clock = clock
        self._opener = opener or _open_append
        self._file: IO[str] | None = None
        self._events = path in STRUCTLOG_TARGETS
        self._log = structlog.get_logger("hostproxy.access") if self._events else None
        self.lines = 0
        self.write_errors = 0
        if self.enabled and not self._events:
            assert path is not None
            try:
                self._file = self._opener(path)
            except OSError as e:
                raise ValueError(
                    f"{key}: cannot open {path} for appending: {e.strerror or e}; "
                    "check that the directory exists and hostproxy may write to it"
                ) from None

    @classmethod
    def from_config(cls, path: str | None, key: str = "httpAccessLog", **kw: Any) -> AccessLog:
        """The access log for a router's ``httpAccessLog`` (or h2 ``h2AccessLog``, ``key``) value (None:
        off; ``-``: structlog events)."""
        if path is not None and not str(path).strip():
            raise ValueError(f"{key}: empty path; give a file path, '-' for log events, or leave it out")
        return cls(path, key=key, **kw)

    def log(
        self,
        *,
        router: str,
        method: str,
        path: str,
        service: str | None,
        client: str | None,
        endpoint: str | None,
        status: int | None,
        cause: str | None,
        duration_s: float,
        response_bytes: int | None = None,
    ) -> None:
        """Record one finished request (a no-op when disabled)."""
        if not self.enabled:
            return
        duration_ms = round(duration_s * 1000.0, 3)
        if self._log is not None:
            self.lines += 1
            self._log.info(
                "access",
                router=router,
                method=method,
                path=path,
                service=service,
                client=client,
                endpoint=endpoint,
                status=status,
                cause=cause,
                duration_ms=duration_ms,
                bytes=response_bytes,
            )
            return
        line = "\t".join(
            _field(v)
            for v in (
                _timestamp(self._clock()),
                router,
                method,
                path,
                service,
                client,
                endpoint,
                status,
                cause,
                f"{duration_ms:g}",
                response_bytes,
            )
        )
        f = self._file
        if f is None:
            self.write_errors += 1
            return
        try:
            f.write(line + "\n")
            self.lines += 1
        except (OSError, ValueError):
            self.write_errors += 1

    def reopen(self) -> None:
        """Close and reopen the file (after log rotation); a failure keeps logging disabled until the next try."""
        if self._file is None and (not self.enabled or self._events):
            return
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
        assert self.path is not None
        try:
            self._file = self._opener(self.path)
        except OSError:
            self.write_errors += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def statistics(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "path": self.path,
            "lines": self.lines,
            "write_errors": self.write_errors,
        }

    def __repr__(self) -> str:
        target = "off" if not self.enabled else ("structlog" if self._events else self.path)
        return f"<AccessLog {target} lines={self.lines}>"
