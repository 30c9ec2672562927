"""The access log: file lines, structlog events, escaping, off by default, rotation."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import structlog

from hostproxy.accesslog import AccessLog

CLOCK = 1714564800.123  # 2024-05-01T12:00:00.123Z


def entry(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        router="out",
        method="GET",
        path="/users/7",
        service="/svc/users",
        client="/#/io.l5d.fs/users",
        endpoint="10.0.0.7:8080",
        status=200,
        cause=None,
        duration_s=0.0032,
        response_bytes=512,
    )
    base.update(over)
    return base


def test_off_by_default_writes_nothing() -> None:
    opened: list[str] = []
    log = AccessLog.from_config(None, opener=lambda p: opened.append(p) or io.StringIO())  # type: ignore[func-returns-value]
    assert log.enabled is False
    log.log(**entry())
    assert opened == [] and log.lines == 0
    assert repr(log) == "<AccessLog off lines=0>"


def test_file_lines_have_every_field(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog.from_config(str(path), clock=lambda: CLOCK)
    log.log(**entry())
    log.log(
        **entry(service=None, client=None, endpoint=None, status=502, cause="naming/neg", response_bytes=None)
    )
    log.close()
    assert path.read_text().splitlines() == [
        "2024-05-01T12:00:00.123Z\tout\tGET\t/users/7\t/svc/users\t/#/io.l5d.fs/users\t10.0.0.7:8080\t200\t-\t3.2\t512",
        "2024-05-01T12:00:00.123Z\tout\tGET\t/users/7\t-\t-\t-\t502\tnaming/neg\t3.2\t-",
    ]
    assert log.statistics() == {"enabled": True, "path": str(path), "lines": 2, "write_errors": 0}


def test_hostile_values_cannot_forge_lines(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog.from_config(str(path), clock=lambda: CLOCK)
    log.log(**entry(path="/x\n2024-01-01T00:00:00.000Z\tfake", service="/svc/a\tb\\c"))
    log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    fields = lines[0].split("\t")
    assert len(fields) == 11
    assert fields[3] == "/x\\n2024-01-01T00:00:00.000Z\\tfake"
    assert fields[4] == "/svc/a\\tb\\\\c"


def test_appends_and_reopens_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text("old line\n")
    log = AccessLog.from_config(str(path), clock=lambda: CLOCK)
    log.log(**entry())
    path.rename(tmp_path / "access.log.1")
    log.reopen()
    log.log(**entry(status=404))
    log.close()
    assert (tmp_path / "access.log.1").read_text().splitlines()[0] == "old line"
    assert len((tmp_path / "access.log.1").read_text().splitlines()) == 2
    assert path.read_text().splitlines()[0].split("\t")[7] == "404"


def test_unwritable_path_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "access.log"
    with pytest.raises(
        ValueError,
        match=r"^httpAccessLog: cannot open .*access\.log for appending: "
        r"No such file or directory; check that the directory exists",
    ):
        AccessLog.from_config(str(missing))
    with pytest.raises(ValueError, match=r"^httpAccessLog: empty path; give a file path, '-' for log events"):
        AccessLog.from_config("  ")


def test_write_failure_is_counted_not_raised() -> None:
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError(28, "No space left on device")

    log = AccessLog.from_config("/var/log/x", opener=lambda p: Broken())
    log.log(**entry())
    assert log.write_errors == 1 and log.lines == 0


def test_structlog_event_named_access() -> None:
    log = AccessLog.from_config("-")
    with structlog.testing.capture_logs() as events:
        log.log(**entry(status=503, cause="upstream/5xx"))
    assert events == [
        {
            "event": "access",
            "log_level": "info",
            "router": "out",
            "method": "GET",
            "path": "/users/7",
            "service": "/svc/users",
            "client": "/#/io.l5d.fs/users",
            "endpoint": "10.0.0.7:8080",
            "status": 503,
            "cause": "upstream/5xx",
            "duration_ms": 3.2,
            "bytes": 512,
        }
    ]
    assert repr(log) == "<AccessLog structlog lines=1>"
