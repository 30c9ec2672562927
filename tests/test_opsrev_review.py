"""Running hostproxy as an operator does: signals during the start, a reload and a drain, the drain's
bound, systemd's notify protocol and watchdog, and the DaemonSet's shutdown order.

Real daemon processes (``python -m hostproxy run``) with real signals and a real notify socket (a
datagram socket the test binds, as systemd does), or in-process daemons where the test needs to hold
a reload or the event loop; upstreams are real servers on loopback that answer when the test lets
them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from hostproxy import daemon as daemon_mod
from hostproxy.config import load_config
from hostproxy.daemon import Daemon
from tests.test_lifecycle_helpers import Result, config, daemon_proc, get, write_disco


class GatedUpstream:
    """An HTTP/1.1 upstream that answers each request only once the test calls :meth:`release`."""

    def __init__(self) -> None:
        self.arrived = trio.Event()
        self.released = trio.Event()
        self.port = 0

    def release(self) -> None:
        self.released.set()

    async def _handle(self, stream: trio.SocketStream) -> None:
        buf = b""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async with stream:
                while b"\r\n\r\n" not in buf:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                self.arrived.set()
                await self.released.wait()
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await stream.receive_some(65536)


@contextlib.asynccontextmanager
async def gated_upstream() -> AsyncIterator[GatedUpstream]:
    up = GatedUpstream()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, up._handle, 0, host="127.0.0.1"))
        up.port = listeners[0].socket.getsockname()[1]
        yield up
        nursery.cancel_scope.cancel()


# -- signals during a drain (a real daemon process) --------------------------------------------------


async def test_sighup_during_a_drain_does_not_kill_the_draining_process(tmp_path: Path) -> None:
    """A SIGHUP (``systemctl reload``, a logrotate hook) that reaches a draining daemon is not a reload
    (none starts once draining), and must not be the end of the process either: it used to die of
    the signal's default action, cutting the requests it was draining."""
    async with gated_upstream() as up:
        disco = tmp_path / "disco"
        write_disco(disco, "web", up.port)
        cfg = tmp_path / "hostproxy.yaml"
        cfg.write_text(config(disco, grace_ms=60000))
        async with daemon_proc(cfg) as d:
            results: list[Result] = []
            async with trio.open_nursery() as nursery:

                async def request() -> None:
                    results.append(await get(d.port("out"), "/", timeout=60))

                nursery.start_soon(request)
                await up.arrived.wait()
                d.send(signal.SIGTERM)
                await d.wait_event("daemon.draining")
                d.send(signal.SIGHUP)
                ignored = await d.wait_event("daemon.signal_ignored", where=lambda e: e["signal"] == "SIGHUP")
                assert "draining" in ignored["reason"]
                assert d.proc.poll() is None
                up.release()
            assert [(r.outcome, r.status, r.body) for r in results] == [("ok", 200, b"ok")]
            assert await d.wait_exit() == 0
            assert not d.events("daemon.reloaded") and not d.events("daemon.reload_failed")


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
async def test_a_second_stop_signal_ends_the_drain_at_once(tmp_path: Path, second: signal.Signals) -> None:
    """SIGTERM (or SIGINT) again while draining: stop waiting for the requests in flight and exit now,
    through the normal shutdown (exit status 0, ``daemon.stopped`` logged), instead of being killed by
    the signal's default action."""
    async with gated_upstream() as up:
        disco = tmp_path / "disco"
        write_disco(disco, "web", up.port)
        cfg = tmp_path / "hostproxy.yaml"
        cfg.write_text(config(disco, grace_ms=600000))
        async with daemon_proc(cfg) as d:
            results: list[Result] = []
            async with trio.open_nursery() as nursery:

                async def request() -> None:
                    results.append(await get(d.port("out"), "/", timeout=60))

                nursery.start_soon(request)
                await up.arrived.wait()
                d.send(signal.SIGTERM)
                await d.wait_event("daemon.draining")
                d.send(second)
                # The grace is ten minutes: only the second signal can end the drain this soon.
                assert await d.wait_exit(timeout=30) == 0
            assert [r.outcome for r in results] == ["cut"]
            cut = d.events("daemon.drain_cut_short")
            assert len(cut) == 1 and cut[0]["signal"] == second.name and cut[0]["in_flight"] == 1
            assert d.events("daemon.stopped")
            assert not d.events("daemon.drain_grace_expired")


# -- the drain's bound, with a reload in progress (in-process, on trio's mock clock) ------------------


@contextlib.asynccontextmanager
async def _stuck_reload(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[threading.Event, threading.Event]]:
    """Hold every reload inside its worker thread: yields (entered, gate); the thread goes on once
    ``gate`` is set (at the latest when the block ends)."""
    gate = threading.Event()
    entered = threading.Event()
    orig = daemon_mod.prepare_reload

    def prepare(*args: Any) -> Any:
        entered.set()
        gate.wait(60)
        return orig(*args)

    monkeypatch.setattr(daemon_mod, "prepare_reload", prepare)
    try:
        yield entered, gate
    finally:
        gate.set()


async def _settle(done: trio.Event, turns: int = 100) -> bool:
    """Let the daemon run until ``done`` is set or nothing moves (real time: 50 ms of quiet a turn)."""
    for _ in range(turns):
        if done.is_set():
            return True
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    return done.is_set()


async def test_the_drain_ends_within_one_grace_even_when_a_reload_held_it_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    """``admin.shutdownGraceMs`` bounds the whole drain. Waiting for a reload in progress used to
    take up to one grace and the servers' drain another one after it, so a SIGTERM during a stuck
    reload ran past ``TimeoutStopSec`` and systemd SIGKILLed the daemon. (Trio's clock here is the
    test's: it moves only when the test jumps it.)"""
    async with gated_upstream() as up:
        disco = tmp_path / "disco"
        write_disco(disco, "web", up.port)
        cfg = tmp_path / "hostproxy.yaml"
        cfg.write_text(config(disco, grace_ms=10000))
        daemon = Daemon(load_config(cfg.read_text(), source=str(cfg)), config_path=str(cfg))
        finished = trio.Event()
        async with _stuck_reload(monkeypatch) as (entered, _gate), trio.open_nursery() as nursery:

            async def run() -> None:
                await daemon.run()
                finished.set()

            nursery.start_soon(run)
            while not daemon.is_ready():
                await trio.testing.wait_all_tasks_blocked(cushion=0.01)
            results: list[Result] = []

            async def request() -> None:
                results.append(await get(daemon.addresses["out"][0][1], "/", timeout=600))

            nursery.start_soon(request)
            await up.arrived.wait()
            nursery.start_soon(daemon.reload)
            await trio.to_thread.run_sync(entered.wait)
            daemon.request_shutdown()
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            assert daemon.draining
            mock_clock.jump(6.0)
            assert not await _settle(finished, turns=5)  # within the grace: the request is awaited
            mock_clock.jump(6.0)  # 12 s since the SIGTERM: past the one grace
            assert await _settle(finished)
            assert [r.outcome for r in results] == ["cut"]
            nursery.cancel_scope.cancel()  # (the reload stuck in its thread is abandoned)


async def test_a_reload_asked_for_while_the_daemon_starts_waits_for_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGHUP that arrives while the daemon is still starting (a logrotate hook at boot, a
    ``kill -HUP`` right after the start) used to run the reload against a half-built daemon, whose
    assertion took the whole process down. It now waits for the start and then reloads."""
    disco = tmp_path / "disco"
    write_disco(disco, "web", 1)
    cfg = tmp_path / "hostproxy.yaml"
    cfg.write_text(config(disco))
    daemon = Daemon(load_config(cfg.read_text(), source=str(cfg)), config_path=str(cfg))
    namers_starting = trio.Event()
    go_on = trio.Event()
    orig = daemon_mod._Namers.run

    async def run(self: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        namers_starting.set()
        await go_on.wait()
        await orig(self, task_status=task_status)

    monkeypatch.setattr(daemon_mod._Namers, "run", run)
    reloaded: list[tuple[bool, str]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon.run)
        await namers_starting.wait()

        async def reload() -> None:
            reloaded.append(await daemon.reload())

        nursery.start_soon(reload)  # as the SIGHUP handler does
        await trio.testing.wait_all_tasks_blocked()
        go_on.set()
        with trio.fail_after(20):
            while not reloaded:
                await trio.sleep(0.01)
        assert reloaded[0][0], reloaded
        assert daemon.generation == 2 and daemon.is_ready()
        assert len(daemon.slots) == 1 and len(daemon.addresses["out"]) == 1
        r = await get(daemon.addresses["out"][0][1], "/", host="nowhere")
        assert r.outcome == "ok" and r.status == 502  # serving (no such service)
        daemon.request_shutdown()


async def test_a_sighup_storm_during_a_reload_is_one_more_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGHUPs that arrive while a reload runs join the one reload queued after it (which reads the
    file when its turn comes, so none is lost) instead of queueing one reload each."""
    disco = tmp_path / "disco"
    write_disco(disco, "web", 1)
    cfg = tmp_path / "hostproxy.yaml"
    cfg.write_text(config(disco))
    daemon = Daemon(load_config(cfg.read_text(), source=str(cfg)), config_path=str(cfg))
    with capture_logs() as logs:
        async with _stuck_reload(monkeypatch) as (entered, gate), trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            nursery.start_soon(daemon.serve_signals)
            with trio.fail_after(10):
                while signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, signal.SIG_IGN):
                    await trio.sleep(0.01)

            def events(name: str) -> list[dict[str, Any]]:
                return [e for e in logs if e["event"] == name]

            for n in range(1, 7):
                os.kill(os.getpid(), signal.SIGHUP)
                with trio.fail_after(10):  # each one seen on its own
                    while len(events("daemon.signal")) < n:
                        await trio.sleep(0.01)
                if n == 1:
                    await trio.to_thread.run_sync(entered.wait)  # the first reload runs (and is held)
            assert len(events("daemon.reload_coalesced")) == 4
            assert daemon._reload_lock.statistics().tasks_waiting == 1
            gate.set()
            with trio.fail_after(20):
                while len(events("daemon.reloaded")) < 2:
                    await trio.sleep(0.01)
            await trio.testing.wait_all_tasks_blocked(cushion=0.1)
            assert len(events("daemon.reloaded")) == 2 and daemon.generation == 3
            daemon.request_shutdown()
            nursery.cancel_scope.cancel()


async def test_a_sighup_the_daemon_cannot_act_on_says_why(tmp_path: Path) -> None:
    """A daemon started from stdin (``hostproxy run -``) has no file to read again: a SIGHUP used to
    log only that it arrived; the refusal is logged with its reason, as a failed reload is."""
    disco = tmp_path / "disco"
    write_disco(disco, "web", 1)
    daemon = Daemon(load_config(config(disco), source="-"), config_path="-")
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            nursery.start_soon(daemon.serve_signals)
            with trio.fail_after(10):
                while signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, signal.SIG_IGN):
                    await trio.sleep(0.01)
            os.kill(os.getpid(), signal.SIGHUP)
            with trio.fail_after(10):
                while not any(e["event"] == "daemon.reload_failed" for e in logs):
                    await trio.sleep(0.01)
            daemon.request_shutdown()
            nursery.cancel_scope.cancel()
    failed = [e for e in logs if e["event"] == "daemon.reload_failed"]
    assert len(failed) == 1 and "needs a config file" in failed[0]["error"]


# -- systemd's notify protocol ------------------------------------------------------------------------


def _drain_socket(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096, socket.MSG_DONTWAIT).decode())
        except BlockingIOError:
            return out


def test_a_notify_socket_that_is_not_read_never_blocks_the_daemon(tmp_path: Path) -> None:
    """A notify socket whose queue is full (PID 1 busy, a receiver that stopped reading) used to block
    the sender, and the sender is the event loop: every proxied request stalled with it. A watchdog
    ping is now dropped at once, a state change waits a moment at most; both are logged."""
    from hostproxy import sdnotify

    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as filler:
            filler.connect(path)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    filler.send(b"X=1")
        env = {"NOTIFY_SOCKET": path}
        results: dict[str, bool] = {}

        def send_all() -> None:
            with capture_logs() as logs:
                results["watchdog"] = sdnotify.watchdog(env=env)
                results["ready"] = sdnotify.ready(env=env)
            results["logged"] = sum(e["event"] == "sdnotify.failed" for e in logs) == 2

        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        sender.join(30)
        assert not sender.is_alive(), "the notify send blocked on the full socket"
        assert results == {"watchdog": False, "ready": False, "logged": True}
        while _drain_socket(receiver):
            pass
        assert sdnotify.ready(env=env) is True
        assert _drain_socket(receiver) == ["READY=1"]


async def test_a_reload_the_drain_overtook_ends_with_stopping_not_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RELOADING=1 is answered when the reload is done, but a reload that a drain overtook must not
    tell systemd READY=1 after STOPPING=1: the last state systemd hears of is the one the daemon is in."""
    disco = tmp_path / "disco"
    write_disco(disco, "web", 1)
    cfg = tmp_path / "hostproxy.yaml"
    cfg.write_text(config(disco))
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        daemon = Daemon(
            load_config(cfg.read_text(), source=str(cfg)), config_path=str(cfg), env={"NOTIFY_SOCKET": path}
        )
        async with _stuck_reload(monkeypatch) as (entered, gate), trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            reloaded: list[tuple[bool, str]] = []

            async def reload() -> None:
                reloaded.append(await daemon.reload())

            nursery.start_soon(reload)
            await trio.to_thread.run_sync(entered.wait)
            daemon.request_shutdown()
            with trio.fail_after(10):
                while not daemon.draining:
                    await trio.sleep(0.01)
            gate.set()  # the reload finishes now, while the daemon drains
        messages = _drain_socket(sock)
    lifecycle = [m.split("\n")[0] for m in messages if m != "WATCHDOG=1"]
    assert lifecycle[:3] == ["READY=1", "RELOADING=1", "STOPPING=1"], lifecycle
    assert lifecycle[-1] == "STOPPING=1", lifecycle
    assert "READY=1" not in lifecycle[2:], lifecycle
    assert len(reloaded) == 1


async def test_watchdog_pings_come_from_the_event_loop_and_stop_while_it_is_wedged(tmp_path: Path) -> None:
    """WATCHDOG=1 keeps coming while the loop turns, and none comes while the loop is blocked (a
    thread that kept pinging would hide a wedged daemon from systemd)."""
    disco = tmp_path / "disco"
    write_disco(disco, "web", 1)
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "40000"}  # a ping every 20 ms
        daemon = Daemon(load_config(config(disco), source="test.yaml"), env=env)
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            pings = 0
            with trio.fail_after(10):
                while pings < 3:
                    await trio.sleep(0.02)
                    pings += _drain_socket(sock).count("WATCHDOG=1")
            # Wedge the event loop (no checkpoint) for 25 intervals, as a runaway handler would.
            _drain_socket(sock)
            time.sleep(0.5)
            during = _drain_socket(sock)
            assert "WATCHDOG=1" not in during
            with trio.fail_after(10):
                while "WATCHDOG=1" not in _drain_socket(sock):
                    await trio.sleep(0.02)
            daemon.request_shutdown()


@pytest.mark.parametrize("watchdog_pid_ours", [True, False])
async def test_real_daemon_on_an_abstract_notify_socket_and_watchdog_pid(
    tmp_path: Path, watchdog_pid_ours: bool
) -> None:
    """``NOTIFY_SOCKET=@name`` (a Linux abstract socket, as systemd may pass) gets READY=1, the
    watchdog pings and STOPPING=1 from a real daemon; with ``WATCHDOG_PID`` naming another process the
    daemon sends no ping at all (the watchdog is that process's) and says so in its log."""
    disco = tmp_path / "disco"
    write_disco(disco, "web", 1)
    cfg = tmp_path / "hostproxy.yaml"
    cfg.write_text(config(disco))
    name = f"hostproxy-test-{os.getpid()}-{watchdog_pid_ours}"
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await sock.bind(b"\0" + name.encode())
    messages: list[str] = []
    env = {"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "100000"}
    other_pid = str(os.getpid())  # the test's process: not the daemon
    if not watchdog_pid_ours:
        env["WATCHDOG_PID"] = other_pid

    async def collect() -> None:
        while True:
            messages.append((await sock.recv(4096)).decode())

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect)
            async with daemon_proc(cfg, env=env) as d:
                with trio.fail_after(20):
                    while not any(m.startswith("READY=1") for m in messages):
                        await trio.sleep(0.02)
                if watchdog_pid_ours:
                    with trio.fail_after(20):
                        while messages.count("WATCHDOG=1") < 2:
                            await trio.sleep(0.02)
                    assert d.events("sdnotify.watchdog_started")
                else:
                    # Said once at start, so that a unit whose watchdog kills the daemon tells why.
                    skipped = await d.wait_event("sdnotify.watchdog_skipped")
                    assert f"WATCHDOG_PID={other_pid}" in skipped["reason"]
                    assert not d.events("sdnotify.watchdog_started")
                d.send(signal.SIGTERM)
                assert await d.wait_exit() == 0
            with trio.fail_after(10):
                while "STOPPING=1" not in messages:
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
    finally:
        sock.close()
    assert ("WATCHDOG=1" in messages) is watchdog_pid_ours, messages
    assert [m.split("\n")[0] for m in messages if m != "WATCHDOG=1"] == ["READY=1", "STOPPING=1"]
    assert not d.events("sdnotify.failed")


# -- the DaemonSet ------------------------------------------------------------------------------------


def test_the_api_sidecar_outlives_the_drain() -> None:
    """The kubectl proxy the namer reaches the API through must stay up while hostproxy is still in
    its preStop and its drain: a pod's containers without a preStop get SIGTERM at once, so without
    one the namer lost the API for the whole drain and names not yet resolved failed on the node."""
    from tests.test_deploy_files import by_kind, configmap_config_text, container
    from tests.test_deploy_files import load_config_with_planned_kinds_accepted as load

    ds = by_kind("daemonset.yaml", "DaemonSet")
    proxy, sidecar = container(ds), container(ds, "kubectl")
    script = " ".join(proxy["lifecycle"]["preStop"]["exec"]["command"])
    found = re.search(r"time\.sleep\((\d+(?:\.\d+)?)\)", script)
    assert found is not None
    grace_s = load(configmap_config_text()).admin.shutdown_grace_ms / 1000
    assert sidecar["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    sidecar_s = float(sidecar["lifecycle"]["preStop"]["exec"]["command"][1])
    assert sidecar_s >= float(found.group(1)) + grace_s
    assert ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > sidecar_s
