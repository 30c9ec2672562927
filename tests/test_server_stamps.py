"""What a server adds to the requests it receives, on HTTP/1.1 and h2 servers alike:
``timestampHeader`` (Linkerd's New Relic request-queue stamp: the time the request arrived, in
milliseconds since the epoch, appended to what the caller sent) and ``addForwardedHeader`` (RFC 7239
``Forwarded``), which h2 servers accepted and ignored. A real daemon, a real HTTP/1.1 upstream and an
h2c origin recording what they received, curl as the client.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.daemonutil import curl, running_daemon
from tests.test_h2_daemon_e2e import h2_origin
from tests.upstreams import running_upstream

pytestmark = pytest.mark.timeout(60)


def _config(protocol: str, port: int, server_extra: str) -> str:
    return f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: {protocol}
  label: r
  dtab: /svc/web => /$/inet/127.0.0.1/{port};
  servers:
  - ip: 127.0.0.1
    port: 0
{server_extra}
"""


STAMP = "    timestampHeader: X-Request-Start\n"
FORWARDED = "    addForwardedHeader:\n      by: {kind: static, label: _edge}\n      for: {kind: ip}\n"


async def test_http_server_stamps_each_request_with_its_arrival_time() -> None:
    async with running_upstream() as up, running_daemon(_config("http", up.port, STAMP)) as d:
        before = int(time.time() * 1000)
        r = await curl(f"http://127.0.0.1:{d.port('r')}/a", "-H", "Host: web")
        r2 = await curl(f"http://127.0.0.1:{d.port('r')}/b", "-H", "Host: web", "-H", "X-Request-Start: t=1")
        after = int(time.time() * 1000)
        assert r.status == 200 and r2.status == 200, (r, r2)
        first, second = up.requests[-2:]
        stamps = [v for n, v in first.headers if n == "x-request-start"]
        assert len(stamps) == 1 and stamps[0].isdigit(), first.headers
        assert before <= int(stamps[0]) <= after
        # appended to the caller's own value, as Linkerd adds it
        values = [v for n, v in second.headers if n == "x-request-start"]
        assert values[0] == "t=1" and len(values) == 2 and before <= int(values[1]) <= after, values


async def test_http_server_without_the_key_adds_no_stamp() -> None:
    async with running_upstream() as up, running_daemon(_config("http", up.port, "")) as d:
        r = await curl(f"http://127.0.0.1:{d.port('r')}/a", "-H", "Host: web")
        assert r.status == 200
        assert up.requests[-1].header("x-request-start") is None


async def test_h2_server_adds_the_stamp_and_the_forwarded_header() -> None:
    async with h2_origin() as (port, _seen):  # noqa: SIM117 (the daemon's dtab needs the origin's port)
        async with running_daemon(_config("h2", port, STAMP + FORWARDED)) as d:
            before = int(time.time() * 1000)
            r = await curl(f"http://127.0.0.1:{d.port('r')}/x", "--http2-prior-knowledge", "-H", "Host: web")
            after = int(time.time() * 1000)
            assert r.status == 200, r
            got = json.loads(r.body)["headers"]
            assert before <= int(got["x-request-start"]) <= after, got
            assert got["forwarded"] == "by=_edge;for=127.0.0.1", got


def test_a_timestamp_header_that_is_no_header_name_is_a_config_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.test_config_adversarial import issues

    cfg = _config("http", 8080, "    timestampHeader: 'X Request Start'\n")
    found = issues(cfg)
    assert len(found) == 1 and "routers[0].servers[0].timestampHeader: must be a header name" in found[0], (
        found
    )
    cfg = _config("h2", 8080, "    timestampHeader: ':path'\n")
    found = issues(cfg)
    assert len(found) == 1 and "routers[0].servers[0].timestampHeader: must be a header name" in found[0], (
        found
    )
