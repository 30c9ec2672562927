"""sd_notify: a real AF_UNIX datagram socket stands in for systemd's notify socket."""

from __future__ import annotations

import functools
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from hostproxy import sdnotify


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(2)
    try:
        yield sock, {"NOTIFY_SOCKET": str(path)}
    finally:
        sock.close()


def recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_no_socket_is_a_noop() -> None:
    assert sdnotify.notify("READY=1", env={}) is False
    assert sdnotify.ready(env={}) is False
    assert sdnotify.watchdog_interval(env={"WATCHDOG_USEC": "1000000"}) is None


def test_ready_with_status(notify_socket: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = notify_socket
    assert sdnotify.ready("listening on\n 127.0.0.1:4140", env=env) is True
    assert recv(sock) == "READY=1\nSTATUS=listening on 127.0.0.1:4140"


def test_stopping_status_watchdog(notify_socket: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = notify_socket
    sdnotify.stopping(env=env)
    sdnotify.status("draining 3 connections", env=env)
    sdnotify.watchdog(env=env)
    assert [recv(sock) for _ in range(3)] == ["STOPPING=1", "STATUS=draining 3 connections", "WATCHDOG=1"]


def test_reloading_sends_monotonic_usec(notify_socket: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = notify_socket
    sdnotify.reloading(env=env, monotonic_ns=12_345_678_999)
    assert recv(sock) == "RELOADING=1\nMONOTONIC_USEC=12345678"


def test_reloading_uses_clock_monotonic(notify_socket: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = notify_socket
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    sdnotify.reloading(env=env)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = recv(sock).split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_abstract_socket() -> None:
    name = f"hostproxy-test-{os.getpid()}-{id(object())}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    try:
        assert sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": "@" + name}) is True
        assert recv(sock) == "READY=1"
    finally:
        sock.close()


def test_missing_socket_is_reported_not_raised(tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "absent.sock")}
    assert sdnotify.notify("READY=1", env=env) is False


def test_relative_socket_path_is_refused() -> None:
    assert sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": "relative.sock"}) is False


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(extra: dict[str, str], expected: float | None) -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", **extra}
    assert sdnotify.watchdog_interval(env=env, pid=4242) == expected


def test_watchdog_interval_defaults_to_this_process() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert sdnotify.watchdog_interval(env=env) == 1.0


async def test_watchdog_loop_pings_each_interval(
    notify_socket: tuple[socket.socket, dict[str, str]], autojump_clock: trio.testing.MockClock
) -> None:
    sock, env = notify_socket
    sock.setblocking(False)
    env = {**env, "WATCHDOG_USEC": "2000000"}  # ping every second
    pings: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(sdnotify.watchdog_loop, env=env))
        await trio.sleep(0.5)
        pings.append(recv(sock))
        with pytest.raises(BlockingIOError):
            sock.recv(4096)
        await trio.sleep(1.0)
        pings.append(recv(sock))
        await trio.sleep(1.0)
        pings.append(recv(sock))
        nursery.cancel_scope.cancel()
    assert pings == ["WATCHDOG=1"] * 3


async def test_watchdog_loop_returns_without_watchdog(
    notify_socket: tuple[socket.socket, dict[str, str]],
) -> None:
    _sock, env = notify_socket
    with trio.move_on_after(5) as scope:
        await sdnotify.watchdog_loop(env=env)
    assert not scope.cancelled_caught
