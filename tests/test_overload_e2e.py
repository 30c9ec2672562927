"""Overload end to end: slowloris clients, the file-descriptor watermark, router maxConcurrentRequests."""

from __future__ import annotations

import json
import sys
import urllib.parse
from pathlib import Path

import trio

from tests.daemonutil import curl, running_daemon
from tests.test_lifecycle_helpers import config, connect, daemon_proc, exchange, get, write_disco
from tests.upstreams import running_upstream


async def test_slowloris_clients_do_not_stop_a_well_behaved_client(tmp_path: Path) -> None:
    async with running_upstream() as up:
        disco = tmp_path / "disco"
        write_disco(disco, "web", up.port)
        text = config(disco, server_extra=", requestHeaderTimeoutMs: 400, maxConnections: 500")
        async with running_daemon(text) as d:
            port = d.port("out")
            cut: list[bytes] = []

            async def slowloris() -> None:
                stream = await connect(port)
                try:
                    await stream.send_all(b"GET / HTTP/1.1\r\nHost: web\r\n")
                    with trio.move_on_after(5):
                        for _ in range(40):
                            await stream.send_all(b"X")  # never finishes the head
                            with trio.move_on_after(0.1):
                                data = await stream.receive_some(4096)
                                cut.append(data)
                                return
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    cut.append(b"")
                finally:
                    await stream.aclose()

            async with trio.open_nursery() as nursery:
                for _ in range(60):
                    nursery.start_soon(slowloris)
                await trio.sleep(0.1)
                for _ in range(5):
                    r = await curl(f"http://127.0.0.1:{port}/", "-H", "Host: web")
                    assert (r.status, r.body) == (200, b"ok")
            assert len(cut) == 60 and all(c.startswith(b"HTTP/1.1 408") or c == b"" for c in cut)
            stats = (await curl(f"{d.admin}/overload.json")).json()["servers"]  # type: ignore[index]
            (server,) = stats.values()
            assert server["header_timeouts"] == 60


async def test_router_max_concurrent_requests_rejects_excess_at_once(tmp_path: Path) -> None:
    async with running_upstream() as up:
        disco = tmp_path / "disco"
        write_disco(disco, "web", up.port)
        async with running_daemon(config(disco, router_extra="  maxConcurrentRequests: 2")) as d:
            port = d.port("out")
            results = []

            async def one() -> None:
                results.append(await get(port, "/slow/500"))

            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(one)
            statuses = sorted(r.status for r in results)
            assert statuses == [200, 200, 503, 503, 503]
            rejected = [r for r in results if r.status == 503]
            errs = [urllib.parse.unquote_plus(r.headers.get("l5d-err") or "") for r in rejected]
            assert all("router out is at maxConcurrentRequests=2" in e for e in errs), errs
            m = (await curl(f"{d.admin}/admin/metrics.json")).json()
            assert m["rt/out/server/127.0.0.1/" + str(port) + "/failures/overload"] == 3  # type: ignore[index]


async def test_fd_watermark_stops_accepting_before_the_limit(tmp_path: Path) -> None:
    async with running_upstream() as up:
        disco = tmp_path / "disco"
        write_disco(disco, "web", up.port)
        cfg = tmp_path / "hostproxy.yaml"
        cfg.write_text(config(disco, top="overload: {intervalMs: 100, fdReserve: 16}"))
        shim = (
            "import os, sys, resource; resource.setrlimit(resource.RLIMIT_NOFILE, (80, 80)); "
            "os.execv(sys.executable, [sys.executable] + sys.argv[1:])"
        )
        async with daemon_proc(cfg, argv_prefix=[sys.executable, "-c", shim]) as d:
            port = d.port("out")
            held = []
            try:
                # Idle connections until the daemon says it stopped accepting.
                with trio.fail_after(20):
                    while not d.events("overload.changed"):
                        s = await connect(port)
                        r, _ = await exchange(s, "/")
                        assert r.status == 200
                        held.append(s)
                        await trio.sleep(0.02)
                ev = d.events("overload.changed")[0]
                assert ev["changes"] == ["fds: stop accepting"] and ev["fd_limit"] == 80
                state = json.loads((await get(d.admin_port, "/overload.json", host="admin")).body)
                assert state["overload"]["fds"]["exhausted"] is True
                assert state["overload"]["actions"]["accept"] is False
                # New connections wait in the backlog instead of failing (an accept already waiting when
                # the mark was crossed may take one more); released, they are served.
                first = await connect(port)
                held.append(first)
                with trio.move_on_after(0.5):
                    await exchange(first, "/", timeout=0.5)
                waiting = await connect(port)
                r, _ = await exchange(waiting, "/", timeout=0.5)
                assert r.outcome == "timeout"
                await waiting.aclose()
                for s in held:
                    await s.aclose()
                held.clear()
                await d.wait_event("overload.changed", count=2)
                assert d.events("overload.changed")[1]["changes"] == ["fds: accepting again"]
                r = await get(port, "/")
                assert (r.outcome, r.status) == ("ok", 200)
                assert not d.events("http.accept_failed")  # never ran out of descriptors
            finally:
                for s in held:
                    await s.aclose()
