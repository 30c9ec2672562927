"""The admin server, attacked as an on-call engineer's scripts and probes use it.

Real daemons and admin servers on loopback, real curl; each test's docstring says what was wrong.
"""

from __future__ import annotations

from tests.daemonutil import curl, running_daemon

ROUTER = """
namers: []
routers:
- protocol: http
  label: out
  dtab: |
    /svc => /$/inet/127.0.0.1/1;
  servers:
  - ip: 127.0.0.1
    port: 0
"""


def _daemon_yaml(admin_extra: str = "") -> str:
    return "admin:\n  ip: 127.0.0.1\n  port: 0\n" + admin_extra + ROUTER


async def test_head_delegator_json_answers_as_get() -> None:
    """``HEAD /delegator.json?...`` (accepted wherever GET is, as the 405 and ``Allow`` say) was treated
    as a POST: it answered 415 "needs Content-Type: application/json" instead of GET's status, so a
    probe or ``curl -I`` of a delegation URL reported a failure that a GET does not have."""
    async with running_daemon(_daemon_yaml()) as d:
        url = f"{d.admin}/delegator.json?namespace=out&path=/svc/web&dtab=/svc=>/$/inet/127.0.0.1/1"
        get = await curl(url)
        head = await curl(url, "-I")
        assert get.status == 200, get.body
        assert head.status == 200, head.body
        assert head.header("content-type") == get.header("content-type")
        assert head.body == b""
        bad = f"{d.admin}/delegator.json?path=svc"
        assert (await curl(bad)).status == 400
        assert (await curl(bad, "-I")).status == 400
