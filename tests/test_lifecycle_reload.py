"""Reload under load: a real daemon process, SIGHUP and POST /admin/reload, zero failed requests."""

from __future__ import annotations

import signal
from pathlib import Path

import trio

from tests.test_lifecycle_helpers import (
    admin_post,
    config,
    connect,
    daemon_proc,
    exchange,
    get,
    write_atomic,
    write_disco,
)
from tests.upstreams import running_upstream


async def _load(
    port: int, results: list[tuple[str, int, str]], stop: trio.Event, keepalive: bool, limit: int = 400
) -> None:
    """Requests in a bounded loop until ``stop``; records (outcome, status, which upstream answered)."""
    stream = await connect(port) if keepalive else None
    try:
        for _ in range(limit):
            if stop.is_set():
                return
            if stream is None:
                r = await get(port, "/headers")
            else:
                r, reusable = await exchange(stream, "/headers")
                if not reusable:
                    await stream.aclose()
                    stream = await connect(port)
            who = r.headers.get("x-upstream", "") if r.outcome == "ok" else ""
            results.append((r.outcome, r.status, who or r.error))
            await trio.sleep(0.005)
    finally:
        if stream is not None:
            await stream.aclose()


async def test_sighup_reload_under_load_switches_route_with_zero_failures(tmp_path: Path) -> None:
    async with running_upstream() as a, running_upstream() as b:
        disco = tmp_path / "disco"
        write_disco(disco, "a", a.port)
        write_disco(disco, "b", b.port)
        cfg = tmp_path / "hostproxy.yaml"
        cfg.write_text(config(disco, dtab="/svc/web => /#/io.l5d.fs/a;"))
        async with daemon_proc(cfg) as d:
            port = d.port("out")
            results: list[tuple[str, int, str]] = []
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_load, port, results, stop, True)
                nursery.start_soon(_load, port, results, stop, False)
                while len(results) < 40:
                    await trio.sleep(0.01)
                a_before = len(a.requests)
                write_atomic(cfg, config(disco, dtab="/svc/web => /#/io.l5d.fs/b;"))
                d.send(signal.SIGHUP)
                ev = await d.wait_event("daemon.reloaded")
                assert ev["generation"] == 2
                n = len(results)
                while len(results) < n + 40:
                    await trio.sleep(0.01)
                stop.set()
            failed = [r for r in results if r[:2] != ("ok", 200)]
            assert failed == []
            assert a_before > 0 and len(b.requests) > 0  # the reload changed the route
            # The listener kept its socket: the same port answers, no new server was started.
            assert [e["router"] for e in d.events("http.server.started")] == ["admin", "out"]


async def test_invalid_reload_keeps_running_config_and_reports_the_error(tmp_path: Path) -> None:
    async with running_upstream() as a:
        disco = tmp_path / "disco"
        write_disco(disco, "a", a.port)
        cfg = tmp_path / "hostproxy.yaml"
        cfg.write_text(config(disco, dtab="/svc/web => /#/io.l5d.fs/a;"))
        async with daemon_proc(cfg) as d:
            port = d.port("out")
            write_atomic(cfg, config(disco, dtab="/svc/web => /#/io.l5d.fs/a;") + "bogusKey: 1\n")
            r = await admin_post(d.admin_port, "/admin/reload")
            assert r.status == 500
            text = r.body.decode()
            assert text.startswith("reload rejected, the running config stays: 1 error(s)")
            assert f"{cfg}:" in text and "bogusKey" in text
            assert d.events("daemon.reload_failed")
            ok = await get(port, "/")
            assert (ok.outcome, ok.status) == ("ok", 200)
            state = await get(d.admin_port, "/overload.json", host="admin")
            assert b'"generation": 1' in state.body or b'"generation":1' in state.body


async def test_reload_adds_and_removes_routers_and_their_listeners(tmp_path: Path) -> None:
    async with running_upstream() as a:
        disco = tmp_path / "disco"
        write_disco(disco, "web", a.port)
        cfg = tmp_path / "hostproxy.yaml"
        extra = """
- protocol: http
  label: extra
  dtab: /svc => /#/io.l5d.fs;
  servers:
  - {ip: 127.0.0.1, port: 0}
"""
        cfg.write_text(config(disco))
        async with daemon_proc(cfg) as d:
            out_port = d.port("out")
            write_atomic(cfg, config(disco, extra_router=extra))
            r = await admin_post(d.admin_port, "/admin/reload")
            assert r.status == 200, r
            assert "1 server(s) added, 0 removed" in r.body.decode()
            started = await d.wait_event("http.server.started", where=lambda e: e["router"] == "extra")
            extra_port = int(started["addresses"][0][1])
            assert (await get(extra_port, "/")).status == 200
            assert (await get(out_port, "/")).status == 200
            # Remove it again: its listener is closed, the other keeps serving.
            write_atomic(cfg, config(disco))
            r = await admin_post(d.admin_port, "/admin/reload")
            assert r.status == 200 and "0 server(s) added, 1 removed" in r.body.decode()
            await d.wait_event("http.server.stopped_accepting")
            assert (await get(extra_port, "/")).outcome == "refused"
            assert (await get(out_port, "/")).status == 200
