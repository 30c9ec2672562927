"""Adversarial review of the HTTP/1.1 client side: ``UpstreamPool`` and its use by the client and router.

Misbehaving upstreams on 127.0.0.1 (the scripted raw upstream of ``tests/test_pool_adversarial.py``);
each test states what the proxy must make of one of them. No timed assertions: events order the
steps, and bounded waits are safety nets.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from hostproxy.http import UpstreamPool, UpstreamReset
from hostproxy.http.upstream import PoolParams
from tests.test_pool_adversarial import Peer, RawUpstream, ok, req, running_raw, stats
from tests.test_upstream_edges_adversarial import get, l5d_err, proxied

SAFETY = 10  # seconds: a safety net for every wait, never a timing assertion


def _closes_after_head(path: str) -> object:
    """Answers every request with its path, but closes the connection (a FIN, no byte of a response)
    when it reads a request for ``path``."""

    async def handler(up: RawUpstream, peer: Peer) -> None:
        while (head := await peer.read_head()) is not None:
            if up.record(peer, head) == path:
                return  # (the connection closes: the keep-alive race, or a crashed worker)
            await peer.send(ok(b"ok"))

    return handler


# == a connection closed before any byte of a response ============================================


@pytest.mark.parametrize("reused", [False, True], ids=["fresh", "reused"])
async def test_a_connection_closed_before_any_response_byte_says_so_not_malformed(reused: bool) -> None:
    """The upstream read the request and closed the connection without a byte of a response. That is
    not a malformed response (the codec's words were h11's internal state: "can't handle event type
    ConnectionClosed when role=SERVER and state=SEND_RESPONSE"); the error says the upstream closed the
    connection before it answered and, on a reused connection, how long it had been idle in the pool
    and what to do about an upstream keep-alive timeout shorter than the pool's."""
    async with (
        running_raw(_closes_after_head("/gone")) as up,
        UpstreamPool("127.0.0.1", up.port, PoolParams(idle_timeout_s=30.0)) as pool,
    ):
        if reused:
            assert await (await pool.request(req("/warm"))).body.read_all() == b"ok"
        with pytest.raises(UpstreamReset) as info:
            await pool.request(req("/gone"))
        message = str(info.value)
        assert info.value.cause == "upstream/reset" and not info.value.retryable
        assert "malformed" not in message and "role=" not in message, message
        assert f"127.0.0.1:{up.port} closed the connection before sending a response" in message, message
        if reused:
            assert "it was a reused connection, returned to the pool" in message, message
            assert "client.hostConnectionPool.idleTimeMs (30000 ms)" in message, message
            assert "retryableRead5XX" in message, message
        else:
            assert "idle" not in message, message
        s = stats(pool)
        assert (s["open"], s["in_use"], s["resent"]) == (0, 0, 0)
        assert [line for _, line in up.requests][-1] == "GET /gone HTTP/1.1"


async def test_the_client_gets_the_plain_reason_in_l5d_err(tmp_path: Path) -> None:
    """Through the daemon: 502, cause ``upstream/reset``, and ``l5d-err`` names the close."""

    async def close_at_once(stream: trio.SocketStream, _rest: bytes) -> bool:
        return False

    async with proxied(tmp_path, {b"/gone": close_at_once}) as (up, d, c):
        await c.send(get(b"/gone"))
        with trio.fail_after(SAFETY):
            r = await c.read_response()
        assert r.complete and r.status == 502, r
        err = l5d_err(r)
        assert "closed the connection before sending a response" in err, err
        assert "role=" not in err and "malformed" not in err, err
