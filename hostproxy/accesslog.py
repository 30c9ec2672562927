"""The access log: one line per request, free when off.

Theory of operation
-------------------
A router holds one ``AccessLog`` built by :meth:`AccessLog.from_config` from its ``httpAccessLog``
key (Linkerd's name): ``None`` gives the disabled log, a path gives a log that appends plain lines to
that file, and ``"-"`` (or ``"structlog"``) emits a structlog event named ``access`` instead.  The
request path checks one attribute, ``if access_log.enabled: access_log.log(...)``, so a disabled log
costs a single attribute read and formats nothing.

A file line is tab-separated and never contains a raw tab or newline (they are escaped), nor any other
character that is not printable (``\\xHH``, as in Linkerd's line below; an h2 ``:path`` may hold any
byte but NUL, CR and LF), so a hostile Host header or path cannot forge lines::

    2024-05-01T12:00:00.123Z  out  GET  /users/7  /svc/users  /#/io.l5d.fs/users  10.0.0.7:8080  200  -  3.2  512

(fields: time, router, method, path, service, client, endpoint, status, cause, duration in ms,
response bytes, i.e. the response's Content-Length as Linkerd logs it; ``-`` for a missing value).

With ``fmt="linkerd"`` (the router's ``httpAccessLogFormat: linkerd``) a line is Linkerd 1's
Apache-style one instead, so that a log pipeline written for Linkerd keeps working::

    web 10.0.0.7 - - [01/05/2024:12:00:00 UTC] "GET /users/7 HTTP/1.1" 200 512 "-" "curl/8.5.0"

(Host, the client's address, identd and user as ``-``, the time the request ended in Linkerd's
``dd/MM/yyyy:HH:mm:ss`` with the zone, the request line, status, the response's Content-Length, Referer,
User-Agent). An h2 router's line is Linkerd's h2 one: ``:authority`` for the host, ``HTTP/2``, the zone
as ``+0000`` and ``-`` for the bytes. A ``"`` or ``\\`` in a quoted field is escaped with a backslash,
and control characters as in the hostproxy line, so a hostile header cannot forge a field or a line.
Header values are their bytes read as UTF-8; a byte that is not UTF-8, and a character that is not
printable (C1 controls such as 0x85 NEL and 0x9b CSI, which log readers and terminals act on), is
written as ``\\xHH`` (``\\uHHHH`` past 0xff).

The file is opened once in append mode with line
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
    text = str(value)
    if text.isascii() and text.isprintable():
        return text.translate(_ESCAPES)
    return _shown(text).translate(_LINE_AFTER)


def _timestamp(t: float) -> str:
    whole_ms = round(t * 1000)
    secs, ms = divmod(whole_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ms:03d}Z"


_QUOTED_ESCAPES = str.maketrans({'"': '\\"', "\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
FORMATS = ("hostproxy", "linkerd")


def _shown(value: str) -> str:
    """A header value as text for a log line: its bytes (the value is their Latin-1 decoding) read as
    UTF-8 where they are, a byte that is not as ``\\xHH``, and a character that is not printable (a
    control, C1's 0x85 NEL and 0x9b CSI among them) as ``\\xHH`` or ``\\uHHHH``; backslashes are
    doubled first, so every escape reads one way. Tab, CR and LF are the callers' (``\\t`` ...)."""
    if value.isascii() and value.isprintable():
        return value
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:  # not a header's bytes: shown as the text it is
        raw = None
    out: list[str] = []
    if raw is not None:
        text = raw.decode("utf-8", "surrogateescape")
    else:
        text = value
    for ch in text:
        o = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif 0xDC80 <= o <= 0xDCFF:  # a byte that is not UTF-8
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch.isprintable() or ch in "\t\n\r":
            out.append(ch)
        else:
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
    return "".join(out)


_LINE_AFTER = str.maketrans({"\t": "\\t", "\n": "\\n", "\r": "\\r"})
_QUOTED_AFTER = str.maketrans({'"': '\\"', "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_BARE_AFTER = str.maketrans({"\t": "\\t", "\n": "\\n", "\r": "\\r", " ": "%20"})


def _quoted(value: str | None) -> str:
    if not value:
        return "-"
    if value.isascii() and value.isprintable():
        return value.translate(_QUOTED_ESCAPES)
    return _shown(value).translate(_QUOTED_AFTER)


def _bare(value: object) -> str:
    """A field Linkerd writes unquoted: no space may be in it (each would split the line's fields)."""
    if value is None or value == "":
        return "-"
    text = str(value)
    if text.isascii() and text.isprintable():
        return text.translate(_ESCAPES).replace(" ", "%20")
    return _shown(text).translate(_BARE_AFTER)


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
        fmt: str = "hostproxy",
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(
                f"{key}Format: unknown access log format {fmt!r}; use one of {', '.join(FORMATS)}"
            )
        self.path = path
        self.enabled = path is not None
        #: Whether lines are Linkerd's (the router then gives ``log`` the request's host, peer, version,
        #: referer and user agent).
        self.linkerd = fmt == "linkerd"
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
        host: str | None = None,
        remote: str | None = None,
        version: str | None = None,
        referer: str | None = None,
        user_agent: str | None = None,
    ) -> None:
        """Record one finished request (a no-op when disabled). ``host`` .. ``user_agent`` are read
        for Linkerd's line only (``linkerd``)."""
        if not self.enabled:
            return
        duration_ms = round(duration_s * 1000.0, 3)
        if self.linkerd and self._log is None:
            self._write(
                self._linkerd_line(
                    method, path, status, response_bytes, host, remote, version, referer, user_agent
                )
            )
            return
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
        self._write(line)

    def _linkerd_line(
        self,
        method: str,
        path: str,
        status: int | None,
        response_bytes: int | None,
        host: str | None,
        remote: str | None,
        version: str | None,
        referer: str | None,
        user_agent: str | None,
    ) -> str:
        h2 = version == "2"
        t = time.gmtime(self._clock())
        stamp = time.strftime("%d/%m/%Y:%H:%M:%S", t) + (" +0000" if h2 else " UTC")
        request = f"{method.upper()} {path} HTTP/{version or '1.1'}"
        size = "-" if h2 or response_bytes is None else str(response_bytes)
        return (
            f'{_bare(host)} {_bare(remote)} - - [{stamp}] "{_quoted(request)}" {_bare(status)} {size} '
            f'"{_quoted(referer)}" "{_quoted(user_agent)}"'
        )

    def _write(self, line: str) -> None:
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
