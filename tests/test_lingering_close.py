"""Lingering close: an error the proxy answers before reading a request body reaches the client.

A client that sends its whole body before it reads (Python's ``http.client``, as ``requests`` and
many others) used to get "connection reset by peer" instead of the response: the server closed the
socket with the unread body in it, the kernel answered with a reset, and the reset made the
client's TCP stack drop the response it had not read yet. The server now half-closes after such a
response and reads what the client still sends before closing. Real ``http.client`` clients (in a
thread) against a real daemon on loopback.
"""

from __future__ import annotations

import http.client
from pathlib import Path

import pytest
import trio

from tests.daemonutil import curl, fs_config, running_daemon
from tests.test_lifecycle_helpers import write_disco
from tests.upstreams import running_upstream

pytestmark = pytest.mark.timeout(60)

BODY = b"\0" * (20 * 1024 * 1024)  # far more than the socket buffers and the 256 KiB drained for reuse


def _post(port: int, headers: dict[str, str]) -> tuple[int, str]:
    """POST ``BODY`` the way ``http.client`` does (the whole body, then the response)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("POST", "/", body=BODY, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("l5d-err") or ""
    finally:
        conn.close()


async def _connections(admin: str, port: int) -> float:
    m = (await curl(f"{admin}/admin/metrics.json")).json()
    assert isinstance(m, dict)
    return float(m[f"rt/out/server/127.0.0.1/{port}/connections"])


@pytest.mark.parametrize(
    ("headers", "status", "err"),
    [
        ({"Host": "nowhere"}, 502, "Unable+to+route"),  # routing failed: the body was never read
        ({"Host": "web", "X-Big": "a" * 20000}, 431, "maxHeadersKB"),  # a head past the limit
        ({"Host": "web", "Bad Field": "x"}, 400, "malformed+request"),  # a malformed head
    ],
)
async def test_an_early_error_reaches_a_client_that_sends_its_whole_body_first(
    tmp_path: Path, headers: dict[str, str], status: int, err: str
) -> None:
    async with running_upstream() as up:
        write_disco(tmp_path / "disco", "web", up.port)
        async with running_daemon(fs_config(tmp_path / "disco")) as d:
            port = d.port("out")
            for _ in range(3):
                got, l5d_err = await trio.to_thread.run_sync(_post, port, headers)
                assert got == status
                assert err in l5d_err
            # The lingering ends with the client: no connection is left behind.
            with trio.fail_after(20):
                while await _connections(d.admin, port):
                    await trio.sleep(0.05)
            assert up.requests == []  # none of these reached the upstream
