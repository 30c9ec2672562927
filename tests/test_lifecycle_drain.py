"""Drain, side-by-side upgrade, socket activation and sd_notify, with real daemon processes."""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

import trio

from tests.test_lifecycle_helpers import (
    Result,
    config,
    connect,
    daemon_proc,
    exchange,
    free_port,
    get,
    write_disco,
)
from tests.upstreams import running_upstream


async def _worker(
    port: int,
    path: str,
    results: list[Result],
    stop: trio.Event,
    limit: int = 300,
    done: list[int] | None = None,
) -> None:
    """New connection per request until refused (the listener is gone) or ``stop``."""
    try:
        for _ in range(limit):
            if stop.is_set():
                return
            r = await get(port, path)
            results.append(r)
            if r.outcome == "refused":
                return
    finally:
        if done is not None:
            done.append(1)


async def test_sigterm_drain_answers_every_request_the_upstream_received(tmp_path: Path) -> None:
    async with running_upstream() as up:
        disco = tmp_path / "disco"
        write_disco(disco, "web", up.port)
        cfg = tmp_path / "hostproxy.yaml"
        cfg.write_text(config(disco))
        async with daemon_proc(cfg) as d:
            port = d.port("out")
            results: list[Result] = []
            keepalive: list[Result] = []
            stop = trio.Event()
            done: list[int] = []

            async def on_keepalive() -> None:
                stream = await connect(port)
                try:
                    r, _ = await exchange(stream, "/slow/20")  # warm: the connection is kept alive
                    keepalive.append(r)
                    r, _ = await exchange(stream, "/slow/600")  # in flight when the drain starts
                    keepalive.append(r)
                finally:
                    await stream.aclose()

            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(_worker, port, "/slow/150", results, stop, 300, done)
                nursery.start_soon(on_keepalive)
                while len([r for r in results if r.outcome == "ok"]) < 8 or len(keepalive) < 1:
                    await trio.sleep(0.01)
                d.send(signal.SIGTERM)
                with trio.fail_after(20):
                    while len(done) < 4 or len(keepalive) < 2:
                        await trio.sleep(0.02)
            assert await d.wait_exit() == 0
            outcomes = {r.outcome for r in results}
            assert outcomes <= {"ok", "refused"}, [r for r in results if r.outcome not in ("ok", "refused")]
            ok = [r for r in results if r.outcome == "ok"]
            assert all(r.status == 200 for r in ok)
            # Every request the upstream saw got its whole response back to the client.
            assert len(up.requests) == len(ok) + len(keepalive)
            assert [(r.outcome, r.status) for r in keepalive] == [("ok", 200), ("ok", 200)]
            assert keepalive[1].headers.get("connection") == "close"
            assert keepalive[0].headers.get("connection") != "close"
            assert d.events("daemon.draining") and d.events("daemon.stopped")
            assert not d.events("daemon.drain_grace_expired")


async def test_drain_closes_idle_keepalive_connections_and_exits_before_the_grace(tmp_path: Path) -> None:
    async with running_upstream() as up:
        disco = tmp_path / "disco"
        write_disco(disco, "web", up.port)
        cfg = tmp_path / "hostproxy.yaml"
        cfg.write_text(config(disco, grace_ms=30000))
        async with daemon_proc(cfg) as d:
            stream = await connect(d.port("out"))
            r, reusable = await exchange(stream, "/")
            assert (r.status, reusable) == (200, True)
            d.send(signal.SIGTERM)
            with trio.fail_after(10):
                assert await stream.receive_some(100) == b""  # closed by the proxy, not left open
            await stream.aclose()
            assert await d.wait_exit(timeout=10) == 0  # long before the 30 s grace
            assert not d.events("daemon.drain_grace_expired")


async def test_side_by_side_upgrade_with_so_reuseport_refuses_nothing(tmp_path: Path) -> None:
    async with running_upstream() as up:
        disco = tmp_path / "disco"
        write_disco(disco, "web", up.port)
        port = free_port()
        cfg = tmp_path / "hostproxy.yaml"
        cfg.write_text(config(disco, port=port))
        results: list[Result] = []
        stop = trio.Event()
        done: list[int] = []
        async with daemon_proc(cfg, name="old") as old, trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(_worker, port, "/slow/10", results, stop, 2000, done)
            while len(results) < 20:
                await trio.sleep(0.01)
            async with daemon_proc(cfg, name="new") as new:
                assert new.port("out") == port
                n = len(results)
                while len(results) < n + 20:
                    await trio.sleep(0.01)
                old.send(signal.SIGTERM)
                assert await old.wait_exit() == 0
                n = len(results)
                while len(results) < n + 30:
                    await trio.sleep(0.01)
                # The workers finish before the last daemon goes: a request a worker started just
                # before ``stop`` could otherwise reach the port after the new daemon closed it, and
                # be refused because nothing listens any more (not what this test is about).
                stop.set()
                with trio.fail_after(20):
                    while len(done) < 3:
                        await trio.sleep(0.01)
                new.send(signal.SIGTERM)
                assert await new.wait_exit() == 0
        bad = [r for r in results if (r.outcome, r.status) != ("ok", 200)]
        assert bad == []
        assert len(results) >= 70


async def test_systemd_socket_activation_listener_is_adopted(tmp_path: Path) -> None:
    async with running_upstream() as up:
        disco = tmp_path / "disco"
        write_disco(disco, "web", up.port)
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(16)
        port = lsock.getsockname()[1]
        cfg = tmp_path / "hostproxy.yaml"
        cfg.write_text(config(disco, port=port))
        fd = lsock.fileno()
        shim = (
            f"import os, sys; os.dup2({fd}, 3); os.environ['LISTEN_PID'] = str(os.getpid()); "
            "os.execv(sys.executable, [sys.executable] + sys.argv[1:])"
        )
        try:
            async with daemon_proc(
                cfg,
                argv_prefix=[sys.executable, "-c", shim],
                pass_fds=(fd,),
                env={"LISTEN_FDS": "1", "LISTEN_FDNAMES": "outgoing"},
            ) as d:
                adopted = d.events("daemon.listen_fd_adopted")
                assert [(e["fd"], e["name"], e["address"]) for e in adopted] == [
                    (3, "outgoing", ["127.0.0.1", port])
                ]
                r = await get(port, "/")
                assert (r.outcome, r.status) == ("ok", 200)
        finally:
            lsock.close()


async def test_sd_notify_sequence_ready_reloading_stopping_watchdog(tmp_path: Path) -> None:
    async with running_upstream() as up:
        disco = tmp_path / "disco"
        write_disco(disco, "web", up.port)
        cfg = tmp_path / "hostproxy.yaml"
        cfg.write_text(config(disco))
        notify_path = str(tmp_path / "notify.sock")
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        await sock.bind(notify_path)
        messages: list[str] = []

        async def collect() -> None:
            while True:
                messages.append((await sock.recv(4096)).decode())

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect)
                env = {"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "200000"}
                async with daemon_proc(cfg, env=env) as d:
                    with trio.fail_after(10):
                        while (
                            not any(m.startswith("READY=1") for m in messages) or "WATCHDOG=1" not in messages
                        ):
                            await trio.sleep(0.02)
                    d.send(signal.SIGHUP)
                    await d.wait_event("daemon.reloaded")
                    d.send(signal.SIGTERM)
                    assert await d.wait_exit() == 0
                    await trio.sleep(0.1)
                nursery.cancel_scope.cancel()
        finally:
            sock.close()
        lifecycle = [m for m in messages if m != "WATCHDOG=1"]
        assert lifecycle[0].startswith("READY=1\nSTATUS=routing on out 127.0.0.1:")
        assert lifecycle[1].startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert int(lifecycle[1].split("MONOTONIC_USEC=")[1]) > 0
        assert lifecycle[2:] == ["READY=1", "STOPPING=1"]
        assert messages.count("WATCHDOG=1") >= 1
