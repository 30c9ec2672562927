"""``httpAccessLogFormat: linkerd`` (``h2AccessLogFormat`` on h2 routers): the access log in Linkerd 1's
Apache-style line, so that a log pipeline written for Linkerd's lines keeps working. A real daemon, a
real upstream (HTTP/1.1, and an h2c origin), curl as the client."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from hostproxy.accesslog import AccessLog
from tests.daemonutil import curl, running_daemon
from tests.test_h2_daemon_e2e import h2_origin
from tests.upstreams import running_upstream

pytestmark = pytest.mark.timeout(60)


def _config(protocol: str, port: int, log: Path, fmt: str) -> str:
    prefix = "http" if protocol == "http" else "h2"
    return f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: {protocol}
  label: r
  {prefix}AccessLog: {log}
  {prefix}AccessLogFormat: {fmt}
  dtab: /svc/web => /$/inet/127.0.0.1/{port};
  servers:
  - {{ip: 127.0.0.1, port: 0}}
"""


async def _lines(log: Path, n: int) -> list[str]:
    import trio

    with trio.fail_after(10):
        while True:
            lines = log.read_text().splitlines() if log.exists() else []
            if len(lines) >= n:
                return lines
            await trio.sleep(0.02)


async def test_http_router_writes_linkerds_line(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    async with running_upstream() as up, running_daemon(_config("http", up.port, log, "linkerd")) as d:
        r = await curl(
            f"http://127.0.0.1:{d.port('r')}/a?x=1",
            "-H",
            "Host: web",
            "-H",
            "Referer: http://from.example/",
            "-A",
            'agent/1 "quoted"',
        )
        assert r.status == 200, r
        (line,) = await _lines(log, 1)
    m = re.fullmatch(
        r'web 127\.0\.0\.1 - - \[(\d\d/\d\d/\d{4}:\d\d:\d\d:\d\d) UTC\] "GET /a\?x=1 HTTP/1\.1" 200 (\d+|-) '
        r'"http://from\.example/" "agent/1 \\"quoted\\""',
        line,
    )
    assert m is not None, line
    stamp = time.strptime(m.group(1), "%d/%m/%Y:%H:%M:%S")
    assert abs(time.mktime(stamp) - time.mktime(time.gmtime())) < 3600  # today's UTC time, not a fixed one


async def test_h2_router_writes_linkerds_h2_line(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    async with h2_origin() as (port, _seen):  # noqa: SIM117 (the daemon's dtab needs the origin's port)
        async with running_daemon(_config("h2", port, log, "linkerd")) as d:
            r = await curl(f"http://127.0.0.1:{d.port('r')}/x", "--http2-prior-knowledge", "-H", "Host: web")
            assert r.status == 200, r
            (line,) = await _lines(log, 1)
    assert re.fullmatch(
        r'web 127\.0\.0\.1 - - \[\d\d/\d\d/\d{4}:\d\d:\d\d:\d\d \+0000\] "GET /x HTTP/2" 200 - "-" "curl/[^"]+"',
        line,
    ), line


async def test_the_default_format_is_hostprox_own_line(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    async with running_upstream() as up, running_daemon(_config("http", up.port, log, "hostproxy")) as d:
        r = await curl(f"http://127.0.0.1:{d.port('r')}/a", "-H", "Host: web")
        assert r.status == 200, r
        (line,) = await _lines(log, 1)
    fields = line.split("\t")
    assert fields[1:4] == ["r", "GET", "/a"] and fields[4] == "/svc/web" and fields[7] == "200", fields


def test_linkerd_line_escapes_what_could_forge_a_field() -> None:
    out: list[str] = []

    class Sink:
        def write(self, s: str) -> None:
            out.append(s)

    log = AccessLog("x.log", opener=lambda p: Sink(), fmt="linkerd", clock=lambda: 0.0)  # type: ignore[arg-type,return-value]
    log.log(
        router="r",
        method="GET",
        path="/p",
        service=None,
        client=None,
        endpoint=None,
        status=502,
        cause="upstream/reset",
        duration_s=0.1,
        response_bytes=None,
        host=None,
        remote="10.0.0.9",
        version="1.1",
        referer='a" "b',
        user_agent="ua\\x",
    )
    assert out == ['- 10.0.0.9 - - [01/01/1970:00:00:00 UTC] "GET /p HTTP/1.1" 502 - "a\\" \\"b" "ua\\\\x"\n']


def test_an_unknown_format_is_a_config_error() -> None:
    from tests.test_config_adversarial import issues

    found = issues(_config("http", 8080, Path("/tmp/a.log"), "apache"))
    assert len(found) == 1 and "routers[0].httpAccessLogFormat" in found[0] and "linkerd" in found[0], found
