"""Slow-HTTP attacks with a real attack tool: Debian's ``slowhttptest`` against a daemon process.

Three attacks, each while an honest client keeps asking for pages on the same server:

* **Slowloris** (``-H``): many connections that send a header line every second and never end the
  head. ``requestHeaderTimeoutMs`` cuts each one (408, counted in ``header_timeouts``); the honest
  client is served throughout.
* **Slow body** (``-B``, R-U-Dead-Yet): POSTs whose body comes in a few bytes at a time. One that
  stalls is ended by ``requestBodyTimeoutMs`` (counted in ``body_timeouts``); one that trickles
  without stalling by the request's deadline (the server's ``timeoutMs`` here: 408), and a body
  small enough to be kept for retries never reaches the upstream.
* **Slow read** (``-X``): clients advertising a tiny TCP window and reading a few bytes a second of a
  1 MiB answer. The proxy must not buffer the answers it cannot deliver: its memory stays bounded.

The daemon and the upstream run in their own processes, so the memory read is the daemon's alone.
Nothing here is timed: the attacks run for a fixed length, and the assertions are about what the
daemon counted, what the honest client got, and how much memory the daemon held.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.daemonutil import curl
from tests.test_lifecycle_helpers import DaemonProc, daemon_proc, get
from tests.upstreams import upstream_process

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        shutil.which("slowhttptest") is None, reason="slowhttptest is installed by `make test`"
    ),
]


def _config(up_port: int, server_extra: str) -> str:
    # slowhttptest sends `Host: 127.0.0.1:<port>`; every name goes to the one upstream.
    return f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: http
  label: out
  dtab: /svc => /$/inet/127.0.0.1/{up_port};
  servers:
  - ip: 127.0.0.1
    port: 0{server_extra}
"""


@asynccontextmanager
async def _daemon(tmp_path: Path, server_extra: str) -> AsyncIterator[tuple[DaemonProc, int]]:
    with upstream_process() as (_up, up_port):
        cfg = tmp_path / "hostproxy.yaml"
        cfg.write_text(_config(up_port, server_extra))
        async with daemon_proc(cfg) as d:
            yield d, up_port


async def _metrics(d: DaemonProc) -> dict[str, Any]:
    return (await curl(f"{d.admin}/admin/metrics.json")).json()  # type: ignore[return-value]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


async def _attack(port: int, path: str, *args: str) -> str:
    """Run slowhttptest against ``path`` on ``port``; its report (stdout)."""
    proc = await trio.run_process(
        ["slowhttptest", *args, "-u", f"http://127.0.0.1:{port}{path}"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, (proc.returncode, out[-2000:], proc.stderr.decode(errors="replace"))
    return out


async def _honest_client(port: int, results: list[int], stop: trio.Event) -> None:
    """A page every 100 ms on a fresh connection while the attack lasts (at least ten)."""
    while not stop.is_set() or len(results) < 10:
        r = await get(port, "/", host="web", timeout=20)
        results.append(r.status if r.outcome == "ok" else -1)
        await trio.sleep(0.1)


async def _attack_beside_honest_client(
    port: int, path: str, args: str, also: Callable[[trio.Event], Awaitable[None]] | None = None
) -> tuple[str, int]:
    """Run slowhttptest (``args``, space-separated) against ``path`` while an honest client keeps
    asking for pages (and ``also(stop)`` runs, if given); assert every honest page was served.
    Returns the tool's report and how many pages the honest client got."""
    results: list[int] = []
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_honest_client, port, results, stop)
        if also is not None:
            nursery.start_soon(also, stop)
        report = await _attack(port, path, *args.split())
        stop.set()
    assert results and set(results) == {200}, results
    return report, len(results)


async def _until_no_connections(d: DaemonProc, scope: str) -> dict[str, Any]:
    """The metrics once the server has no connection open (the attack's are all gone)."""
    with trio.move_on_after(30):
        while True:
            m = await _metrics(d)
            if m[f"{scope}/connections"] == 0:
                return m
            await trio.sleep(0.1)
    raise AssertionError(f"connections still open: {m[f'{scope}/connections']}")


async def test_slowloris_connections_are_cut_by_the_header_timeout_and_honest_clients_served(
    tmp_path: Path,
) -> None:
    async with _daemon(tmp_path, "\n    requestHeaderTimeoutMs: 1500") as (d, _):
        port = d.port("out")
        scope = f"rt/out/server/127.0.0.1/{port}"
        report, _ = await _attack_beside_honest_client(port, "/", "-H -c 200 -r 100 -i 1 -l 8 -x 10")
        m = await _until_no_connections(d, scope)
        assert "No open connections left" in report, report[-1500:]
        # Each attack connection was cut by the proxy's header deadline (408), none by the tool.
        assert m[f"{scope}/header_timeouts"] >= 150, m[f"{scope}/header_timeouts"]
        assert m[f"{scope}/header_timeouts"] == m[f"{scope}/bad_requests"]


async def test_stalling_bodies_are_ended_by_the_body_timeout_and_the_upstream_is_released(
    tmp_path: Path,
) -> None:
    async with _daemon(tmp_path, "\n    requestBodyTimeoutMs: 1500") as (d, up_port):
        port = d.port("out")
        scope = f"rt/out/server/127.0.0.1/{port}"
        # 10 bytes of body every 3 s: each body stalls past the 1.5 s between two reads.
        await _attack_beside_honest_client(port, "/count", "-B -c 100 -r 100 -i 3 -l 8 -s 8192 -x 10")
        m = await _until_no_connections(d, scope)
        assert m[f"{scope}/body_timeouts"] >= 75, m[f"{scope}/body_timeouts"]
        # The proxy let go of everything those requests held: nothing is pending now.
        assert m[f"rt/out/client/$/inet/127.0.0.1/{up_port}/pending"] == 0
        assert m[f"{scope}/pending"] == 0


async def test_trickling_bodies_are_ended_at_the_request_deadline_before_any_upstream_sees_them(
    tmp_path: Path,
) -> None:
    """A body that never stalls (10 bytes a second) passes the stall timeout; the server's
    ``timeoutMs`` bounds the whole request, its body included: 408 when it runs out, and a body small
    enough to be kept for retries never reached the upstream at all."""
    async with _daemon(tmp_path, "\n    timeoutMs: 2000") as (d, up_port):
        port = d.port("out")
        scope = f"rt/out/server/127.0.0.1/{port}"
        report, honest = await _attack_beside_honest_client(
            port, "/count", "-B -c 100 -r 100 -i 1 -l 10 -s 4096 -x 10"
        )
        m = await _until_no_connections(d, scope)
        assert "No open connections left" in report, report[-1500:]
        assert m[f"{scope}/status/408"] >= 75, m.get(f"{scope}/status/408")
        assert m[f"{scope}/body_timeouts"] == 0  # none stalled: the deadline ended them
        client = f"rt/out/client/$/inet/127.0.0.1/{up_port}"
        # The honest client's requests, and slowhttptest's probes (a plain GET now and then); none
        # of the 100 attack requests.
        assert m[f"{client}/requests"] - honest <= 10, (m[f"{client}/requests"], honest)
        assert m[f"{client}/pending"] == 0


async def test_slow_readers_do_not_make_the_proxy_buffer_their_answers(tmp_path: Path) -> None:
    async with _daemon(tmp_path, "") as (d, _):
        port = d.port("out")
        baseline = _rss_kib(d.proc.pid)
        peak = baseline

        async def sample(stop: trio.Event) -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, _rss_kib(d.proc.pid))
                await trio.sleep(0.05)

        # 100 readers of 1 MiB each (100 MiB in all), windows of 64-512 bytes, 32 bytes a second.
        await _attack_beside_honest_client(
            port, f"/len/{1 << 20}", "-X -c 100 -r 100 -l 8 -w 64 -y 512 -n 1 -z 32", also=sample
        )
        growth_mib = (peak - baseline) / 1024
        assert growth_mib < 32, (
            f"the daemon's RSS grew by {growth_mib:.1f} MiB under 100 slow readers of 1 MiB"
        )
