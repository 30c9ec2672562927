"""Reading a file a config names (a dtab file, a TLS certificate or key) without being held by it.

``open`` on a named pipe (FIFO) waits for a writer, and a character device such as ``/dev/zero`` or
``/dev/urandom`` never ends: read at start (or by ``hostproxy check``), either held the process for
good. :func:`read_regular` opens without blocking and refuses anything that is not a regular file,
saying what it is, with :class:`NotRegularFile` (an ``OSError``, so that callers report it as they
report a file they cannot read); a directory raises ``IsADirectoryError`` as ``open`` does.
"""

from __future__ import annotations

import errno
import os
import stat

__all__ = ["NotRegularFile", "read_regular"]

_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class NotRegularFile(OSError):
    """The path names something other than a regular file (``strerror`` says what)."""


def read_regular(path: str, limit: int | None = None) -> bytes:
    """The content of the regular file ``path`` (its first ``limit + 1`` bytes when ``limit`` is
    given, so that a caller can tell a file past its limit). Raises ``OSError`` as ``open`` does,
    ``IsADirectoryError`` for a directory and :class:`NotRegularFile` for anything else."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        if not stat.S_ISREG(mode):
            what = next((name for test, name in _KINDS if test(mode)), "not a regular file")
            raise NotRegularFile(errno.EINVAL, f"{what}, not a regular file", path)
        return f.read() if limit is None else f.read(limit + 1)
