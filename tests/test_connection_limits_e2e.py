"""Server connection caps through the real daemon: maxConnections and maxRequestsPerConnection."""

from __future__ import annotations

import socket
from pathlib import Path

import trio

from tests.daemonutil import curl, fs_config, keepalive_gets, running_daemon
from tests.upstreams import running_upstream


def cfg(disco: Path, server_extra: str) -> str:
    return fs_config(disco, server_extra=server_extra)


def keepalive_requests(port: int, count: int) -> list[tuple[int, bool]]:
    """(status, server asked to close) for each request sent over one keep-alive connection."""
    return [(e.status, e.close) for e in keepalive_gets(port, ["web"] * count)]


async def test_max_requests_per_connection_closes_after_the_limit(tmp_path: Path) -> None:
    async with running_upstream() as up:
        (tmp_path / "disco").mkdir()
        (tmp_path / "disco" / "web").write_text(f"127.0.0.1 {up.port}\n")
        async with running_daemon(cfg(tmp_path / "disco", "    maxRequestsPerConnection: 3")) as d:
            got = await trio.to_thread.run_sync(keepalive_requests, d.port("out"), 10)
            assert got == [(200, False), (200, False), (200, True)]


async def test_max_connections_turns_extra_connections_away_and_serves_the_rest(tmp_path: Path) -> None:
    async with running_upstream() as up:
        (tmp_path / "disco").mkdir()
        (tmp_path / "disco" / "web").write_text(f"127.0.0.1 {up.port}\n")
        async with running_daemon(cfg(tmp_path / "disco", "    maxConnections: 2")) as d:
            port = d.port("out")
            held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
            try:
                await trio.sleep(0.3)  # both accepted and counted
                r = await curl(f"http://127.0.0.1:{port}/", "-H", "Host: web", timeout=5)
                assert r.status == 0 and r.exit_code != 0  # closed at once, not left in a backlog
            finally:
                for s in held:
                    s.close()
            await trio.sleep(0.3)
            r = await curl(f"http://127.0.0.1:{port}/", "-H", "Host: web")
            assert r.status == 200
            rejected = sum(
                s.server.statistics().get("rejected_connections", 0) for s in d.daemon.slots.values()
            )
            assert rejected >= 1


async def test_h2_max_connections_turns_extra_connections_away(tmp_path: Path) -> None:
    """``maxConnections`` on an h2 router's server: a connection past the cap is closed at once."""
    (tmp_path / "disco").mkdir()
    config = """
admin: {ip: 127.0.0.1, port: 0}
routers:
- protocol: h2
  label: h2
  dtab: /svc => /$/inet/127.0.0.1/9;
  servers:
  - {ip: 127.0.0.1, port: 0, maxConnections: 2}
"""
    async with running_daemon(config) as d:
        port = d.port("h2")

        def connect_three() -> list[bytes]:
            """Two connections within the cap (each answers the client preface with the server's
            SETTINGS), then one past it."""
            socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
            try:
                for s in socks:
                    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                got = [s.recv(9) for s in socks]
                with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
                    try:
                        got.append(extra.recv(100))
                    except ConnectionResetError:
                        got.append(b"")
                return got
            finally:
                for s in socks:
                    s.close()

        first, second, extra = await trio.to_thread.run_sync(connect_three)
        assert first and second  # admitted: the server answered
        assert extra == b""  # past the cap: closed at once, nothing sent
        stats = [slot.server.statistics() for slot in d.daemon.slots.values()]
        assert sum(st.get("rejected_connections", 0) for st in stats) == 1
