"""The access log: one line per request, free when off.

Theory of operation
-------------------
A router holds one ``AccessLog`` built by :meth:`AccessLog.from_config` from its ``httpAccessLog``
key (Linkerd's name): ``None`` gives the disabled log, a path gives a log that appends plain lines to
that file, and ``"-"`` (or ``"structlog"``) emits a structlog event named ``access`` instead.  The
request path checks one attribute, ``if access_log.enabled: access_log.log(...)``, so a disabled log
costs a single attribute read and formats nothing.

A file line is tab-separated and never contains a raw tab or newline (they are escaped), nor any other
character that is not printable (``\\xHH``, as in Linkerd's line below; a header value may hold any
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

Rolling (Linkerd's ``httpAccessLogRollPolicy`` and ``httpAccessLogRotateCount``; the policies, names
and counts are :mod:`hostproxy.logroll`'s) happens in the write that finds the file due: the file is
closed, renamed, a new one opened, and rolled files past the rotate count deleted, all before the
line is written to the new file. Every ``AccessLog`` of one path in this process writes through one
``_Sink`` (two routers may name one file, and a reload builds new routers while the old ones finish),
so a file is rolled once, by the policy of the newest open ``AccessLog`` (when it is closed, as a
router that a rejected reload built is, the one before it is in force again). Only a regular file is
rolled (never a link such as ``/dev/stdout``, a device or a directory), and a roll that fails is tried
again at the next roll time or after another size's worth of lines, not at every line. ``append=False``
(``httpAccessLogAppend: false``) truncates the file when this process first opens it; a reload or a
SIGHUP reopens it for appending, so that lines already written are kept.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import time
import weakref
from collections.abc import Callable
from typing import IO, Any

import structlog

from hostproxy import logroll

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


class NoReader(OSError):
    """The log path is a named pipe that no process reads (opening it for writing would wait for one)."""


def _open(path: str, truncate: bool) -> IO[str]:
    """The log file, line-buffered. Opened without waiting: a named pipe (``/dev/stdout`` in a container
    is often one) with a reader opens at once, one without raises :class:`NoReader` instead of holding
    the daemon's start until a reader comes; writes then block as a file's do."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | (os.O_TRUNC if truncate else os.O_APPEND)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if e.errno == errno.ENXIO:
            raise NoReader(e.errno, "it is a named pipe that no process reads") from None
        raise
    os.set_blocking(fd, True)
    return open(fd, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115 (kept open)


def _open_append(path: str) -> IO[str]:
    return _open(path, truncate=False)


def _open_truncate(path: str) -> IO[str]:
    return _open(path, truncate=True)


_log = structlog.get_logger("hostproxy.accesslog")
#: The sinks of the paths open in this process (by absolute path; a sink goes, and its file is closed,
#: with the last ``AccessLog`` writing to it), and the paths this process has opened at all
#: (``append=False`` truncates only the first time).
_SINKS: weakref.WeakValueDictionary[str, _Sink] = weakref.WeakValueDictionary()
_OPENED: set[str] = set()
_TOKENS = itertools.count()


class _Sink:
    """One open access-log file and its rolling (see the module docstring)."""

    def __init__(
        self,
        path: str,
        opener: Callable[[str], IO[str]],
        policy: logroll.RollPolicy,
        rotate_count: int,
        clock: Callable[[], float],
        file: IO[str],
    ) -> None:
        self.path = path
        self.opener = opener
        self.clock = clock
        self.file: IO[str] | None = file
        #: The settings of each open ``AccessLog`` writing here, oldest first (by its token): the newest
        #: one's are in force, and when it closes (a router a rejected reload built) the one before's.
        self.holders: dict[int, tuple[logroll.RollPolicy, int, Callable[[], float]]] = {}
        self.rolls = 0
        self.roll_errors = 0
        self.policy = policy
        self.rotate_count = rotate_count
        self._opened(self._size())

    def attach(
        self, token: int, policy: logroll.RollPolicy, rotate_count: int, clock: Callable[[], float]
    ) -> None:
        """One more ``AccessLog`` writes here: its settings are in force (it is the newest)."""
        self.holders[token] = (policy, rotate_count, clock)
        self._adopt(policy, rotate_count, clock)

    def _adopt(self, policy: logroll.RollPolicy, rotate_count: int, clock: Callable[[], float]) -> None:
        if (policy, rotate_count, clock) == (self.policy, self.rotate_count, self.clock):
            return
        if policy.max_bytes is not None and self.policy.max_bytes is None:
            self.written = self._size()  # (lines are counted only under a size policy)
        self.policy, self.rotate_count, self.clock = policy, rotate_count, clock
        self.next_roll = logroll.next_roll_time(policy, self.opened_at)

    def _size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except OSError:
            return 0

    def _opened(self, size: int) -> None:
        self.opened_at = self.clock()
        self.next_roll = logroll.next_roll_time(self.policy, self.opened_at)
        self.written = size

    def write(self, line: str) -> bool:
        """Write one line (rolling first when due); False when it could not be written."""
        data = line + "\n"
        max_bytes = self.policy.max_bytes
        size = 0  # (bytes are counted only under a size policy)
        if max_bytes is not None:
            size = len(data) if data.isascii() else len(data.encode("utf-8", "replace"))
        due_by_time = self.next_roll is not None and self.clock() >= self.next_roll
        if due_by_time or (
            max_bytes is not None
            and self.written
            and self.written + size > max_bytes
            and not (self._recounted() and (not self.written or self.written + size <= max_bytes))
        ):
            self.roll()
        f = self.file
        if f is None:
            return False
        try:
            f.write(data)
        except (OSError, ValueError):
            return False
        self.written += size
        return True

    def _recounted(self) -> bool:
        """Whether the open file is smaller than counted: something truncated it in place (logrotate's
        ``copytruncate`` copies the file away, then truncates it to nothing). Its size is then the count.
        Asked only when the count says the file is full, so it costs one ``fstat`` per roll."""
        f = self.file
        if f is None:
            return False
        try:
            st = os.fstat(f.fileno())
        except (OSError, ValueError):
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_size >= self.written:
            return False
        self.written = st.st_size
        return True

    def roll(self) -> None:
        """Close, rename, reopen, delete what the rotate count does not keep. A rename that fails keeps
        the file (lines go on being appended to it; counted in ``roll_errors`` and logged), and so does
        a path that is no regular file (a link such as ``/dev/stdout``, a device, a directory put in the
        file's place), which is never renamed. Either way the next try is at the next roll time, or
        after another size's worth of lines: not at every line."""
        try:
            mode: int | None = os.lstat(self.path).st_mode
        except OSError:
            mode = None  # (gone: the rename below fails, is counted, and a new file is opened)
        if mode is not None and not stat.S_ISREG(mode):
            self.roll_errors += 1
            _log.warning(
                "accesslog.roll_failed",
                path=self.path,
                error="not a regular file (a symbolic link, device or directory); it is not renamed",
                hint="log to a regular file to roll it, or set the roll policy to never",
            )
            self._opened(0)
            return
        self._close_file()
        target = ""
        failed = False
        try:
            taken = logroll.next_free(self.path, self.policy, self.opened_at, self._names())
            target = logroll.rolled_name(self.path, self.policy, self.opened_at, taken)
            while os.path.lexists(target):  # (a file of that name that is not a regular file)
                taken += 1
                target = logroll.rolled_name(self.path, self.policy, self.opened_at, taken)
            os.rename(self.path, target)
            self.rolls += 1
        except OSError as e:
            failed = True
            self.roll_errors += 1
            _log.warning(
                "accesslog.roll_failed",
                path=self.path,
                to=target,
                error=e.strerror or str(e),
                hint="lines go on being appended to the file; check the directory's permissions",
            )
        try:
            self.file = self.opener(self.path)
        except OSError as e:
            _log.warning("accesslog.reopen_failed", path=self.path, error=e.strerror or str(e))
        # (After a failed rename the file is as large as before: counted from here, so that the next
        # try comes after another size's worth.)
        self._opened(0 if failed else self._size())
        self._prune()

    def _names(self) -> list[str]:
        """The regular files in the log's directory (none when it cannot be read: logged)."""
        directory = os.path.dirname(self.path) or "."
        try:
            with os.scandir(directory) as entries:
                return [e.name for e in entries if e.is_file(follow_symlinks=False)]
        except OSError as e:
            _log.warning("accesslog.list_failed", directory=directory, error=e.strerror or str(e))
            return []

    def _prune(self) -> None:
        if self.rotate_count < 0:
            return
        directory = os.path.dirname(self.path) or "."
        pattern = logroll.rolled_pattern(self.path, self.policy)
        for name in logroll.to_delete(self._names(), pattern, self.rotate_count):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError as e:
                _log.warning("accesslog.prune_failed", path=name, error=e.strerror or str(e))

    def _close_file(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass
            self.file = None

    def reopen(self) -> bool:
        self._close_file()
        try:
            self.file = self.opener(self.path)
        except OSError:
            return False
        self._opened(self._size())
        return True

    def release(self, token: int) -> None:
        """An ``AccessLog`` closed: the settings of the newest one left are in force; the file closes
        with the last."""
        self.holders.pop(token, None)
        if self.holders:
            self._adopt(*list(self.holders.values())[-1])
        else:
            if _SINKS.get(self.path) is self:
                del _SINKS[self.path]
            if self.file is not None:
                self.file.close()
                self.file = None


def _open_sink(
    path: str,
    opener: Callable[[str], IO[str]] | None,
    policy: logroll.RollPolicy,
    rotate_count: int,
    append: bool,
    clock: Callable[[], float],
) -> _Sink:
    """The sink of ``path``: this process's shared one (default opener), or a private one (an injected
    opener, for tests); raises ``OSError`` when the file cannot be opened."""
    if opener is not None:
        sink = _Sink(path, opener, policy, rotate_count, clock, opener(path))
    else:
        # One sink per file, however the path spells its directory (through a symlink, with ``..``).
        absolute = os.path.abspath(path)
        where = os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute))
        shared = _SINKS.get(where)
        if shared is not None:
            if shared.file is None:  # (its last reopen failed)
                shared.file = _open_append(where)
            sink = shared
        else:
            first = where not in _OPENED
            file = (_open_append if append or not first else _open_truncate)(where)
            _OPENED.add(where)
            sink = _Sink(where, _open_append, policy, rotate_count, clock, file)
            _SINKS[where] = sink
    return sink


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
        roll_policy: str | None = None,
        rotate_count: int = -1,
        append: bool = True,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(
                f"{key}Format: unknown access log format {fmt!r}; use one of {', '.join(FORMATS)}"
            )
        try:
            policy = logroll.parse_policy(roll_policy)
        except ValueError as e:
            raise ValueError(f"{key}RollPolicy: {e}") from None
        self.path = path
        self.enabled = path is not None
        #: Whether lines are Linkerd's (the router then gives ``log`` the request's host, peer, version,
        #: referer and user agent).
        self.linkerd = fmt == "linkerd"
        self._clock = clock
        self._sink: _Sink | None = None
        self._token = next(_TOKENS)
        self._events = path in STRUCTLOG_TARGETS
        self._log = structlog.get_logger("hostproxy.access") if self._events else None
        self.lines = 0
        self.write_errors = 0
        if self.enabled and not self._events:
            assert path is not None
            try:
                self._sink = _open_sink(path, opener, policy, rotate_count, append, clock)
                self._sink.attach(self._token, policy, rotate_count, clock)
            except NoReader:
                raise ValueError(
                    f"{key}: {path} is a named pipe that no process reads, so nothing could be written; "
                    "start its reader first, or log to a file or '-' (log events)"
                ) from None
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
        sink = self._sink
        if sink is not None and sink.write(line):
            self.lines += 1
        else:
            self.write_errors += 1

    def reopen(self) -> None:
        """Close and reopen the file (after log rotation); a failure keeps logging disabled until the next try."""
        if self._sink is None:
            return
        if not self._sink.reopen():
            self.write_errors += 1

    def close(self) -> None:
        if self._sink is not None:
            self._sink.release(self._token)
            self._sink = None

    def statistics(self) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "enabled": self.enabled,
            "path": self.path,
            "lines": self.lines,
            "write_errors": self.write_errors,
        }
        sink = self._sink
        if sink is not None:
            stats.update(roll_policy=sink.policy.text, rolls=sink.rolls, roll_errors=sink.roll_errors)
        return stats

    def __repr__(self) -> str:
        target = "off" if not self.enabled else ("structlog" if self._events else self.path)
        return f"<AccessLog {target} lines={self.lines}>"
