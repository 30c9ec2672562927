"""Adversarial review of the production lifecycle: reload, dtab files, drain, retries, overload.

Each test names what a Linkerd 1 operator would call wrong if it failed. Real daemons in-process
(``Daemon.run`` in the test's trio run, reload through ``Daemon.reload`` on a config file), real
upstreams and real curl on loopback; pure cores with injected clocks where the logic is pure.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from hostproxy.config import load_config
from hostproxy.daemon import Daemon
from hostproxy.dtabfile import DtabFileWatcher
from tests.daemonutil import curl
from tests.test_h2_daemon_e2e import h2_origin
from tests.upstreams import running_upstream


@contextlib.asynccontextmanager
async def _daemon_from_file(path: Path) -> AsyncIterator[Daemon]:
    """A daemon started from ``path`` (so ``reload`` re-reads it), stopped on exit."""
    daemon = Daemon(load_config(path.read_text(), source=str(path)), config_path=str(path))
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        try:
            yield daemon
        finally:
            daemon.request_shutdown()


def _config(
    disco: Path, *, protocol: str = "http", top: str = "", dtab: str = "/svc => /#/io.l5d.fs;"
) -> str:
    ident = "\n  identifier: {kind: io.l5d.header.path, segments: 1}" if protocol == "h2" else ""
    return f"""
admin: {{ip: 127.0.0.1, port: 0}}
{top}
namers:
- kind: io.l5d.fs
  rootDir: {disco}
routers:
- protocol: {protocol}
  label: out{ident}
  dtab: |
    {dtab}
  servers:
  - ip: 127.0.0.1
    port: 0
"""


def _disco(tmp_path: Path, **names: int) -> Path:
    disco = tmp_path / "disco"
    disco.mkdir(exist_ok=True)
    for name, port in names.items():
        (disco / name).write_text(f"127.0.0.1 {port}\n")
    return disco


# -- reload ------------------------------------------------------------------------------------------


async def test_reload_switching_a_router_from_http_to_h2_serves_h2_on_its_listener(tmp_path: Path) -> None:
    """A router whose protocol changed is a new server: keeping the HTTP/1.1 server on the old key and
    giving it the h2 router's handler reported success while h2 clients got garbage."""
    async with running_upstream() as up:
        disco = _disco(tmp_path, web=up.port)
        cfg = tmp_path / "hostproxy.yaml"
        cfg.write_text(_config(disco))
        async with _daemon_from_file(cfg) as d:
            port = d.addresses["out"][0][1]
            r = await curl(f"http://127.0.0.1:{port}/", "-H", "Host: web")
            assert r.status == 200
            async with h2_origin() as (origin_port, seen):
                _disco(tmp_path, h2web=origin_port)
                cfg.write_text(_config(disco, protocol="h2"))
                ok, message = await d.reload()
                assert ok, message
                assert "1 server(s) added, 1 removed" in message
                h2_port = d.addresses["out"][0][1]
                r = await curl(f"http://127.0.0.1:{h2_port}/h2web/x", "--http2-prior-knowledge")
                assert r.status == 200, r
                assert [req.target for req in seen] == ["/h2web/x"]
            assert [type(s.server).__name__ for s in d.slots.values()] == ["H2Server"]


async def test_reload_applies_overload_watermarks_it_reports(tmp_path: Path) -> None:
    """``overload:`` changed by a reload is in force (the manager's config), not only in /config.json."""
    async with running_upstream() as up:
        disco = _disco(tmp_path, web=up.port)
        cfg = tmp_path / "hostproxy.yaml"
        cfg.write_text(_config(disco, top="overload: {memoryLimitBytes: 100000000000}"))
        async with _daemon_from_file(cfg) as d:
            assert d.overload.config.memory_limit_bytes == 100000000000
            cfg.write_text(
                _config(disco, top="overload: {memoryLimitBytes: 1000, shed: 0.5, noKeepalive: 0.4}")
            )
            ok, message = await d.reload()
            assert ok, message
            assert d.config_json()["overload"]["memoryLimitBytes"] == 1000
            assert d.overload.config.memory_limit_bytes == 1000
            assert d.overload.config.shed == 0.5


async def test_reload_does_not_report_admin_settings_it_did_not_apply(tmp_path: Path) -> None:
    """Admin settings change only with a restart: after a reload the running config still shows the
    admin section in force (and its shutdown grace is the one drains use), and the message says so."""
    async with running_upstream() as up:
        disco = _disco(tmp_path, web=up.port)
        cfg = tmp_path / "hostproxy.yaml"
        cfg.write_text(_config(disco))
        async with _daemon_from_file(cfg) as d:
            before = d.config_json()["admin"]
            cfg.write_text(_config(disco).replace("port: 0}", "port: 0, shutdownGraceMs: 1}", 1))
            ok, message = await d.reload()
            assert ok, message
            assert "admin" in message and "restart" in message
            assert d.config_json()["admin"] == before
            assert d.config.admin.shutdown_grace_ms == 10000


# -- drain -------------------------------------------------------------------------------------------


async def test_sigterm_during_a_reload_drains_the_servers_the_reload_adds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM that arrives while a reload is starting its new namers: the drain must also cover the
    server that reload adds, instead of leaving it accepting until the grace runs out."""
    from hostproxy import daemon as daemon_mod

    async with running_upstream() as up:
        disco = _disco(tmp_path, web=up.port)
        other = tmp_path / "disco2"
        other.mkdir()
        (other / "web").write_text(f"127.0.0.1 {up.port}\n")
        cfg = tmp_path / "hostproxy.yaml"
        grace = "admin: {ip: 127.0.0.1, port: 0, shutdownGraceMs: 3000}"
        cfg.write_text(_config(disco).replace("admin: {ip: 127.0.0.1, port: 0}", grace))
        async with _daemon_from_file(cfg) as d:
            extra = """
- protocol: http
  label: extra
  dtab: /svc => /#/io.l5d.fs;
  servers:
  - {ip: 127.0.0.1, port: 0}
"""
            text = _config(other).replace("admin: {ip: 127.0.0.1, port: 0}", grace) + extra
            cfg.write_text(text)
            orig_run = daemon_mod._Namers.run

            async def run(self: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                d.request_shutdown()  # SIGTERM, while the reload waits for its namers
                for _ in range(20):
                    await trio.sleep(0)
                await orig_run(self, task_status=task_status)

            monkeypatch.setattr(daemon_mod._Namers, "run", run)
            ok, message = await d.reload()
            assert ok, message
            assert {s.router for s in d.slots.values()} == {"out", "extra"}
            with trio.fail_after(5):
                while not all(s.server.draining for s in d.slots.values()):
                    await trio.sleep(0.01)
            assert (await d.reload())[0] is False  # and no reload starts once draining


# -- dtab files --------------------------------------------------------------------------------------


def test_a_rejected_dtab_file_keeps_its_file_line_error_after_it_went_missing_or_unreadable() -> None:
    """A bad edit is rejected with FILE:LINE:COL; when the file then disappears for a moment (an editor
    saving by rename) or cannot be read, and comes back with the same bad content, the state must show
    the rejection again, not a stale 'missing' / 'cannot read' for a file that is there."""
    w = DtabFileWatcher("/etc/hostproxy/dtab", settle_s=0.5, wall_clock=lambda: 0.0)
    w.load_initial(b"/svc => /#/io.l5d.fs;\n")
    bad = b"/svc => /#/io.l5d.fs;\n/svc/api => /#/io.l5d.fs/api\n/svc/web => /#/io.l5d.fs/web;\n"
    assert w.observe(1.0, bad) is None
    outcome = w.tick(2.0)
    assert outcome is not None and not outcome.applied
    assert outcome.error is not None and outcome.error.startswith("/etc/hostproxy/dtab:3:1:")
    for interruption in ("missing", "unreadable"):
        if interruption == "missing":
            w.observe(3.0, None)
            assert "missing" in w.state_json()["last_error"]["message"]
        else:
            w.read_failed("cannot read dtab file /etc/hostproxy/dtab: permission denied")
        w.observe(4.0, bad)
        w.tick(5.0)
        state = w.state_json()
        assert state["missing"] is False and state["version"] == 1
        assert state["last_error"]["message"] == outcome.error
