"""Linkerd's ``socketOptions`` (admin, servers[], client): validated, and set on the real sockets.

Every option is read back from the kernel: the test process runs the daemon, so the daemon's sockets
are found in ``/proc/self/fd`` by the addresses ``/proc/net/tcp`` gives them, and asked with
``getsockopt`` (a listener's backlog is its ``TCP_INFO`` ``tcpi_sacked``, which ``ss -ltn`` shows as
Send-Q). The peers are real: raw TCP and curl clients, trio/h11 and hostproxy upstreams, TLS on both
sides.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
from certs import Pki, hello, make_listener_tls, make_pki, serving
from structlog.testing import capture_logs

from hostproxy.config import ConfigError, load_config
from hostproxy.daemon import Daemon
from hostproxy.h2.server import H2Server, H2ServerParams
from hostproxy.http import Http1Server
from hostproxy.http.server import ServerParams
from tests.daemonutil import curl, running_daemon
from tests.grpc_fixtures.rawh2 import RawClient
from tests.upstreams import running_upstream

pytestmark = pytest.mark.timeout(90)

LISTEN = "0A"
ESTABLISHED = "01"


# -- reading the options back from the kernel ----------------------------------------------------------


def _tcp_table() -> Iterator[tuple[int, int, str, int]]:
    """``(local port, remote port, state, inode)`` of every TCP socket of the host."""
    for name in ("tcp", "tcp6"):
        with open(f"/proc/net/{name}") as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                yield local_port, remote_port, fields[3], int(fields[9])


@contextlib.contextmanager
def own_socket(local_port: int, remote_port: int = 0, state: str = ESTABLISHED) -> Iterator[socket.socket]:
    """A duplicate of this process's socket with these ports (closing it leaves the original open)."""
    inodes = {
        ino for lp, rp, st, ino in _tcp_table() if lp == local_port and rp == remote_port and st == state
    }
    assert inodes, f"no socket {local_port} -> {remote_port} in state {state}"
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and int(link[8:-1]) in inodes:
            dup = socket.socket(fileno=os.dup(int(fd)))
            try:
                yield dup
            finally:
                dup.close()
            return
    raise AssertionError(f"socket {local_port} -> {remote_port} is not this process's")


def nodelay(sock: socket.socket) -> bool:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def keepalive(sock: socket.socket) -> bool:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0


def reuseaddr(sock: socket.socket) -> bool:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0


def reuseport(sock: socket.socket) -> bool:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0


def backlog(sock: socket.socket) -> int:
    """A listening socket's backlog (``tcpi_sacked`` of ``TCP_INFO`` on a listener)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("=I", info, 28)[0])


def listener(port: int) -> contextlib.AbstractContextManager[socket.socket]:
    return own_socket(port, 0, LISTEN)


@contextlib.asynccontextmanager
async def client_connection(port: int, request: bytes = b"") -> AsyncIterator[trio.SocketStream]:
    """A raw TCP client of ``127.0.0.1:port``; ``request`` is sent and its answer's head read."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        if request:
            await stream.send_all(request)
            got = b""
            with trio.fail_after(10):
                while b"\r\n\r\n" not in got:
                    chunk = await stream.receive_some(65536)
                    assert chunk, got
                    got += chunk
            assert got.startswith(b"HTTP/1.1 200"), got
        yield stream


def local_port(stream: trio.SocketStream) -> int:
    return int(stream.socket.getsockname()[1])


# -- config -------------------------------------------------------------------------------------------


FULL = """
admin:
  port: 0
  socketOptions: {noDelay: false, reuseAddr: false, reusePort: true, keepAlive: true, backlog: 16}
routers:
- protocol: http
  client:
    kind: io.l5d.static
    configs:
    - prefix: /$/inet/*
      socketOptions: {keepAlive: true}
    - prefix: /$/inet/127.0.0.1/*
      socketOptions: {noDelay: false}
  servers:
  - port: 0
    socketOptions: {noDelay: false, keepAlive: true, backlog: 7}
- protocol: h2
  client: {socketOptions: {keepAlive: true}}
  servers: [{port: 0, socketOptions: {reusePort: false}}]
"""


def test_socket_options_load_in_every_place_linkerd_takes_them() -> None:
    config = load_config(FULL, source="t.yaml")
    admin = config.admin.socket_options
    assert (admin.no_delay, admin.reuse_addr, admin.reuse_port, admin.keep_alive, admin.backlog) == (
        False,
        False,
        True,
        True,
        16,
    )
    http, h2 = config.routers
    server = http.servers[0].socket_options
    assert (server.no_delay, server.reuse_addr, server.keep_alive, server.backlog) == (False, True, True, 7)
    # A static entry sets socketOptions as a whole: the later matching entry's object wins, its keys
    # not given taking Linkerd's defaults (as Linkerd replaces the whole parameter).
    entries = http.client.entries
    assert entries[0].params.socket_options.keep_alive is True
    assert entries[1].params.socket_options.no_delay is False
    assert entries[1].params.socket_options.keep_alive is False
    assert h2.client.entries[0].params.socket_options.keep_alive is True
    assert h2.servers[0].socket_options.reuse_port is False
    # Defaults are Linkerd's: noDelay and reuseAddr on, keepAlive off, no backlog given.
    default = load_config(
        "routers: [{protocol: http, servers: [{port: 0}]}]", source="t"
    ).admin.socket_options
    assert (default.no_delay, default.reuse_addr, default.keep_alive, default.backlog) == (
        True,
        True,
        False,
        None,
    )
    assert config.to_json()["routers"][0]["servers"][0]["socketOptions"]["backlog"] == 7


def test_bad_socket_options_are_reported_with_their_path() -> None:
    text = """
admin: {socketOptions: {noDelay: "no"}}
routers:
- protocol: http
  client: {socketOptions: {keepAlive: 1, noDelai: true}}
  servers:
  - port: 0
    socketOptions: {backlog: 0}
  - port: 1
    socketOptions: {backlog: -3}
  - port: 2
    socketOptions: [noDelay]
"""
    with pytest.raises(ConfigError) as info:
        load_config(text, source="t.yaml")
    got = {(i.path, i.message) for i in info.value.errors}
    paths = {p for p, _ in got}
    assert paths == {
        "admin.socketOptions.noDelay",
        "routers[0].client.socketOptions.keepAlive",
        "routers[0].client.socketOptions.noDelai",
        "routers[0].servers[0].socketOptions.backlog",
        "routers[0].servers[1].socketOptions.backlog",
        "routers[0].servers[2].socketOptions",
    }, got
    messages = dict(got)
    assert "boolean" in messages["admin.socketOptions.noDelay"]
    assert "did you mean 'noDelay'" in messages["routers[0].client.socketOptions.noDelai"]
    assert messages["routers[0].servers[0].socketOptions.backlog"] == "must be from 1 to 2147483647, got 0"


def test_timeouts_load_as_positive_milliseconds() -> None:
    text = """
routers:
- protocol: http
  client: {socketOptions: {readTimeoutMs: 1000, writeTimeoutMs: 0}}
  servers: [{port: 0, socketOptions: {writeTimeoutMs: 1.5, readTimeoutMs: 2500}}]
"""
    with pytest.raises(ConfigError) as info:
        load_config(text, source="t.yaml")
    issues = {i.path: i.message for i in info.value.errors}
    assert issues == {
        "routers[0].client.socketOptions.writeTimeoutMs": "must be from 1 to 2147483647, got 0",
        "routers[0].servers[0].socketOptions.writeTimeoutMs": "expected an integer, got a number (1.5)",
    }, issues
    ok = load_config(text.replace("writeTimeoutMs: 0", "writeTimeoutMs: 3").replace("1.5", "4"), source="t")
    server = ok.routers[0].servers[0].socket_options
    assert (server.read_timeout_ms, server.write_timeout_ms) == (2500, 4)


def test_hostproxy_check_accepts_socket_options(tmp_path: Path) -> None:
    path = tmp_path / "linkerd.yaml"
    path.write_text(FULL)
    proc = subprocess.run(
        [sys.executable, "-m", "hostproxy", "check", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


# -- servers and clients of an HTTP/1.1 router ---------------------------------------------------------


def http_config(app_port: int, server_opts: str, client_opts: str = "{}") -> str:
    return f"""
admin: {{port: 0}}
routers:
- protocol: http
  dtab: /svc => /$/inet/127.0.0.1/{app_port};
  client: {{socketOptions: {client_opts}}}
  servers:
  - port: 0
    socketOptions: {server_opts}
  - port: 0
"""


REQUEST = b"GET /x HTTP/1.1\r\nHost: web\r\n\r\n"


async def test_http_server_and_client_sockets_carry_the_options() -> None:
    """The configured server's listener and accepted connections, and the client's connections to the
    upstream, have the options; the second server (no socketOptions) keeps hostproxy's defaults."""
    server_opts = "{noDelay: false, keepAlive: true, reuseAddr: false, backlog: 7}"
    async with running_upstream() as app:
        cfg = http_config(app.port, server_opts, "{noDelay: false, keepAlive: true}")
        async with running_daemon(cfg) as d:
            port, plain = d.port("http", 0), d.port("http", 1)
            with listener(port) as lst:
                assert backlog(lst) == 7
                assert not reuseaddr(lst)
                assert reuseport(lst)  # always: upgrades and reloads hand the port over through it
            with listener(plain) as lst:
                assert backlog(lst) == 1024
                assert reuseaddr(lst) and reuseport(lst)
                assert not keepalive(lst)
            async with client_connection(port, REQUEST) as c:
                with own_socket(port, local_port(c)) as accepted:
                    assert not nodelay(accepted)
                    assert keepalive(accepted)
                [(upstream_side, _)] = [
                    (lp, st) for lp, rp, st, _ in _tcp_table() if rp == app.port and st == ESTABLISHED
                ]
                with own_socket(upstream_side, app.port) as connected:
                    assert not nodelay(connected)
                    assert keepalive(connected)
            async with client_connection(plain, REQUEST) as c:
                with own_socket(plain, local_port(c)) as accepted:
                    assert nodelay(accepted)
                    assert not keepalive(accepted)


async def test_the_kernel_runs_keepalive_timers_on_accepted_connections() -> None:
    """``ss -tnoi`` shows a keepalive timer on the accepted connection (the kernel really probes it)."""
    async with running_upstream() as app, running_daemon(http_config(app.port, "{keepAlive: true}")) as d:
        port = d.port("http", 0)
        async with client_connection(port, REQUEST) as c:
            out = await trio.run_process(
                [
                    "ss",
                    "-tnoH",
                    "state",
                    "established",
                    f"( sport = :{port} and dport = :{local_port(c)} )",
                ],
                capture_stdout=True,
            )
            assert b"timer:(keepalive" in out.stdout, out.stdout


async def test_client_socket_options_follow_static_prefixes() -> None:
    """A static client entry's socketOptions apply to the clients its prefix matches only."""
    async with running_upstream() as a, running_upstream() as b:
        cfg = f"""
admin: {{port: 0}}
routers:
- protocol: http
  dtab: |
    /svc/a => /$/inet/127.0.0.1/{a.port};
    /svc/b => /$/inet/127.0.0.1/{b.port};
  client:
    kind: io.l5d.static
    configs:
    - prefix: /$/inet/127.0.0.1/{a.port}
      socketOptions: {{keepAlive: true}}
  servers: [{{port: 0}}]
"""
        async with running_daemon(cfg) as d:
            port = d.port("http")
            async with client_connection(
                port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: b\r\n\r\n"
            ):
                with trio.fail_after(10):
                    while b.connections == 0 or a.connections == 0:
                        await trio.sleep(0.01)
                for app, want in ((a, True), (b, False)):
                    [side] = [lp for lp, rp, st, _ in _tcp_table() if rp == app.port and st == ESTABLISHED]
                    with own_socket(side, app.port) as connected:
                        assert keepalive(connected) is want, app.port


async def test_no_delay_false_clears_it_on_connections_to_host_names() -> None:
    """A client reaching its endpoint by host name (trio's connect, not hostproxy's) gets the options too."""
    async with running_upstream() as app:
        cfg = http_config(app.port, "{}", "{noDelay: false, keepAlive: true}").replace(
            "/$/inet/127.0.0.1/", "/$/inet/localhost/"
        )
        async with running_daemon(cfg) as d:
            r = await curl(f"http://127.0.0.1:{d.port('http')}/", "-H", "Host: web")
            assert r.status == 200, r
            [(side, _)] = [(lp, st) for lp, rp, st, _ in _tcp_table() if rp == app.port and st == ESTABLISHED]
            with own_socket(side, app.port) as connected:
                assert not nodelay(connected) and keepalive(connected)


# -- h2, TLS, the admin server -------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


async def test_h2_tls_server_and_h2_client_sockets_carry_the_options(pki: Pki) -> None:
    """An h2 router with a TLS server: curl over TLS (ALPN h2) gets an accepted connection with the
    options; the client's connection to an h2 upstream has the client's."""

    async def answer(request, info):  # type: ignore[no-untyped-def]
        return await hello(request, info)

    upstream = H2Server(answer, H2ServerParams())
    async with trio.open_nursery() as nursery:
        [(_, up)] = await nursery.start(upstream.serve)
        cfg = f"""
admin: {{port: 0}}
routers:
- protocol: h2
  dtab: /svc => /$/inet/127.0.0.1/{up};
  identifier: {{kind: io.l5d.header.path, segments: 1}}
  client: {{socketOptions: {{noDelay: false, keepAlive: true}}}}
  servers:
  - port: 0
    socketOptions: {{noDelay: false, keepAlive: true, backlog: 9}}
    tls: {{certPath: {pki.server_cert}, keyPath: {pki.server_key}}}
"""
        async with running_daemon(cfg) as d:
            port = d.port("h2")
            with listener(port) as lst:
                assert backlog(lst) == 9
            async with await trio.open_tcp_stream("127.0.0.1", port) as held:
                # A second connection held open while curl's request goes through.
                r = await curl(f"https://localhost:{port}/app", "--http2", "--cacert", pki.ca_path)
                assert r.status == 200 and r.body.startswith(b"hello /app"), r
                with own_socket(port, local_port(held)) as accepted:
                    assert not nodelay(accepted) and keepalive(accepted)
                [side] = [lp for lp, rp, st, _ in _tcp_table() if rp == up and st == ESTABLISHED]
                with own_socket(side, up) as connected:
                    assert not nodelay(connected) and keepalive(connected)
        nursery.cancel_scope.cancel()


async def test_tls_client_connections_carry_the_options(pki: Pki) -> None:
    server = Http1Server(hello, ServerParams(router_label="app"))
    tls = make_listener_tls(pki.server_cert, pki.server_key)
    async with serving(server, tls) as up:
        cfg = f"""
admin: {{port: 0}}
routers:
- protocol: http
  dtab: /svc => /$/inet/127.0.0.1/{up};
  client:
    socketOptions: {{noDelay: false, keepAlive: true}}
    tls: {{commonName: localhost, trustCertsBundle: {pki.ca_path}}}
  servers: [{{port: 0}}]
"""
        async with running_daemon(cfg) as d:
            r = await curl(f"http://127.0.0.1:{d.port('http')}/t", "-H", "Host: web")
            assert r.status == 200 and r.body.startswith(b"hello /t"), r
            [side] = [lp for lp, rp, st, _ in _tcp_table() if rp == up and st == ESTABLISHED]
            with own_socket(side, up) as connected:
                assert not nodelay(connected) and keepalive(connected)


async def test_admin_server_sockets_carry_the_options() -> None:
    cfg = """
admin: {port: 0, socketOptions: {noDelay: false, keepAlive: true, backlog: 5}}
routers: [{protocol: http, servers: [{port: 0}]}]
"""
    async with running_daemon(cfg) as d:
        port = d.daemon.admin_address[1]  # type: ignore[index]
        with listener(port) as lst:
            assert backlog(lst) == 5
        async with client_connection(port, b"GET /admin/ping HTTP/1.1\r\nHost: a\r\n\r\n") as c:
            with own_socket(port, local_port(c)) as accepted:
                assert not nodelay(accepted) and keepalive(accepted)


# -- reusePort, reloads --------------------------------------------------------------------------------


async def test_reuse_port_false_is_logged_and_the_listener_keeps_it() -> None:
    cfg = """
admin: {port: 0, socketOptions: {reusePort: false}}
routers:
- protocol: http
  servers: [{port: 0, socketOptions: {reusePort: true}}, {port: 0, socketOptions: {reusePort: false}}]
"""
    with capture_logs() as logs:
        async with running_daemon(cfg) as d:
            for i in (0, 1):
                with listener(d.port("http", i)) as lst:
                    assert reuseport(lst)
    kept = [e for e in logs if e["event"] == "listen.reuse_port_kept"]
    assert [e["key"] for e in kept] == [
        "admin.socketOptions.reusePort",
        "routers[0].servers[1].socketOptions.reusePort",
    ]
    assert "always have SO_REUSEPORT" in kept[0]["message"]


async def test_a_reload_sets_changed_options_on_the_listener_it_keeps(tmp_path: Path) -> None:
    """The server keeps its socket across the reload (same address); its backlog and what its new
    connections get change at once."""
    async with running_upstream() as app:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        path = tmp_path / "hostproxy.yaml"
        path.write_text(
            http_config(app.port, "{backlog: 7}").replace(
                "- port: 0\n    socketOptions", f"- port: {port}\n    socketOptions"
            )
        )
        daemon = Daemon(load_config(path.read_text(), source=str(path)), config_path=str(path))
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            with listener(port) as lst:
                assert backlog(lst) == 7 and not keepalive(lst)
                inode_before = os.fstat(lst.fileno()).st_ino
            path.write_text(
                path.read_text().replace("{backlog: 7}", "{backlog: 11, keepAlive: true, noDelay: false}")
            )
            ok, message = await daemon.reload()
            assert ok, message
            with listener(port) as lst:
                assert os.fstat(lst.fileno()).st_ino == inode_before  # the same listening socket
                assert backlog(lst) == 11
            async with client_connection(port, REQUEST) as c:
                with own_socket(port, local_port(c)) as accepted:
                    assert keepalive(accepted) and not nodelay(accepted)
            daemon.request_shutdown()


# -- readTimeoutMs and writeTimeoutMs: real peers that stop sending or reading ---------------------------


async def read_to_end(stream: trio.abc.Stream, *, limit: int = 1 << 30) -> bytes:
    """What ``stream`` delivers until its end (or a reset); fails the test after 20 s."""
    got = bytearray()
    with trio.fail_after(20):
        while len(got) < limit:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            got += chunk
    return bytes(got)


async def metric(d: object, key: str) -> float:
    r = await curl(f"{d.admin}/admin/metrics.json")  # type: ignore[attr-defined]
    return r.json().get(key, 0)  # type: ignore[no-any-return,union-attr]


@contextlib.asynccontextmanager
async def raw_upstream(handler: object) -> AsyncIterator[int]:
    """A bare TCP upstream on loopback running ``handler(stream)`` per connection; its port. Its
    sockets have a small receive buffer, so that a peer writing to one that does not read is
    stalled after a few hundred KB rather than megabytes."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    await sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    listener = trio.SocketListener(sock)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handler, [listener])
        yield sock.getsockname()[1]
        nursery.cancel_scope.cancel()


async def read_head(stream: trio.abc.Stream) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        buf += chunk
    return buf


async def test_server_read_timeout_cuts_off_a_client_that_stops_mid_body() -> None:
    async with running_upstream() as app, running_daemon(http_config(app.port, "{readTimeoutMs: 300}")) as d:
        port = d.port("http", 0)
        async with await trio.open_tcp_stream("127.0.0.1", port) as c:
            # Longer than streamAfterContentLengthKB: streamed to the upstream as it arrives.
            await c.send_all(
                b"POST /count HTTP/1.1\r\nHost: web\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10
            )
            got = await read_to_end(c)
        assert got.startswith(b"HTTP/1.1 400 "), got
        assert b"request body stalled for 0.3s (socketOptions.readTimeoutMs)" in got, got
        assert await metric(d, f"rt/http/server/127.0.0.1/{port}/body_timeouts") == 1
        assert [r.target for r in app.requests] == ["/count"]


async def test_server_read_timeout_answers_a_head_that_stalls_408() -> None:
    async with running_upstream() as app, running_daemon(http_config(app.port, "{readTimeoutMs: 300}")) as d:
        port = d.port("http", 0)
        async with await trio.open_tcp_stream("127.0.0.1", port) as c:
            await c.send_all(b"GET / HTTP/1.1\r\nHost: web\r\n")
            got = await read_to_end(c)
        assert got.startswith(b"HTTP/1.1 408 "), got
        assert b"nothing received for 0.3s (socketOptions.readTimeoutMs)" in got, got
        assert await metric(d, f"rt/http/server/127.0.0.1/{port}/header_timeouts") == 1
        assert app.requests == []


async def test_server_read_timeout_closes_an_idle_keep_alive_connection() -> None:
    """Finagle's read timeout closes a connection that sends nothing, between requests too: the
    wait for the next request is bounded by it (serverSession.idleTimeMs would be 60 s)."""
    async with running_upstream() as app, running_daemon(http_config(app.port, "{readTimeoutMs: 300}")) as d:
        async with client_connection(d.port("http", 0), REQUEST) as c:
            rest = await read_to_end(c)
        assert b"HTTP/1.1" not in rest  # closed quietly, nothing more sent


async def test_server_write_timeout_cuts_off_a_client_that_stops_reading() -> None:
    size = 256 * 1024 * 1024
    async with running_upstream() as app, running_daemon(http_config(app.port, "{writeTimeoutMs: 300}")) as d:
        port = d.port("http", 0)
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        await sock.connect(("127.0.0.1", port))
        async with trio.SocketStream(sock) as c:
            await c.send_all(f"GET /big/{size} HTTP/1.1\r\nHost: web\r\n\r\n".encode())
            head = await read_head(c)
            assert head.startswith(b"HTTP/1.1 200"), head
            # The client reads nothing more: the daemon's writes stall, and it cuts the connection.
            with trio.fail_after(20):
                while await metric(d, f"rt/http/server/127.0.0.1/{port}/write_timeouts") < 1:
                    await trio.sleep(0.05)
            rest = await read_to_end(c)
        assert len(head) + len(rest) < size  # the response was cut, not delivered


async def test_client_read_timeout_fails_an_upstream_that_never_answers_with_502() -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await trio.sleep_forever()

    async with raw_upstream(silent) as up, running_daemon(http_config(up, "{}", "{readTimeoutMs: 300}")) as d:
        r = await curl(f"http://127.0.0.1:{d.port('http')}/", "-H", "Host: web")
        assert r.status == 502, r
        assert (
            r.l5d_err is not None
            and "sent nothing for 300 ms (client.socketOptions.readTimeoutMs)" in r.l5d_err
        )
        client = f"rt/http/client/$/inet/127.0.0.1/{up}"
        assert await metric(d, f"{client}/failures/upstream/reset") == 1


async def test_client_read_timeout_cuts_a_response_that_stops_mid_body() -> None:
    async def stops(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"y" * 10)
        await trio.sleep_forever()

    with capture_logs() as logs:
        async with (
            raw_upstream(stops) as up,
            running_daemon(http_config(up, "{}", "{readTimeoutMs: 300}")) as d,
        ):
            async with await trio.open_tcp_stream("127.0.0.1", d.port("http")) as c:
                await c.send_all(REQUEST)
                got = await read_to_end(c)
            head, _, body = got.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"content-length: 1000" in head.lower(), got
            assert body == b"y" * 10  # the 10 bytes, then the connection ends short of the length
    [aborted] = [e for e in logs if e["event"] == "http.response_aborted"]
    assert "client.socketOptions.readTimeoutMs" in aborted["error"] and aborted["cause"] == "upstream/reset"


async def test_client_write_timeout_fails_an_upstream_that_stops_reading_the_body_with_502() -> None:
    async def deaf(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await trio.sleep_forever()  # reads nothing more, answers nothing

    size = 64 * 1024 * 1024
    async with raw_upstream(deaf) as up, running_daemon(http_config(up, "{}", "{writeTimeoutMs: 300}")) as d:
        async with await trio.open_tcp_stream("127.0.0.1", d.port("http")) as c:
            await c.send_all(f"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: {size}\r\n\r\n".encode())

            async def upload() -> None:
                chunk = b"z" * 65536
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    for _ in range(size // len(chunk)):
                        await c.send_all(chunk)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(upload)
                with trio.fail_after(20):
                    head = await read_head(c)
                nursery.cancel_scope.cancel()
        assert head.startswith(b"HTTP/1.1 502"), head
        assert b"client.socketOptions.writeTimeoutMs" in head, head
        assert await metric(d, f"rt/http/client/$/inet/127.0.0.1/{up}/failures/upstream/reset") == 1


# -- the same on h2 routers -------------------------------------------------------------------------------


def h2_config(up: int, server_opts: str = "{}", client_opts: str = "{}") -> str:
    return f"""
admin: {{port: 0}}
routers:
- protocol: h2
  dtab: /svc => /$/inet/127.0.0.1/{up};
  identifier: {{kind: io.l5d.header.path, segments: 1}}
  client: {{socketOptions: {client_opts}}}
  servers: [{{port: 0, socketOptions: {server_opts}}}]
"""


class _Stalling:
    """A response body that sends ten bytes and then nothing."""

    trailers = None

    def __init__(self) -> None:
        self.sent = False

    async def read_chunk(self) -> bytes | None:
        if not self.sent:
            self.sent = True
            return b"y" * 10
        await trio.sleep_forever()
        return None  # pragma: no cover

    async def aclose(self) -> None:
        pass


@contextlib.asynccontextmanager
async def h2_upstream(handler: object) -> AsyncIterator[int]:
    from hostproxy.h2.server import H2Server, H2ServerParams

    server = H2Server(handler, H2ServerParams())  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        [(_, up)] = await nursery.start(server.serve)
        yield up
        nursery.cancel_scope.cancel()


async def test_h2_client_read_timeout_resets_a_response_that_stops_mid_body() -> None:
    from hostproxy.http.message import Body, Response

    async def handler(request, info):  # type: ignore[no-untyped-def]
        return Response(200, body=Body(_Stalling(), None))

    async with (
        h2_upstream(handler) as up,
        running_daemon(h2_config(up, client_opts="{readTimeoutMs: 300}")) as d,
    ):
        port = d.port("h2")
        async with RawClient.connect(port) as c:
            await c.start()
            sid = await c.request("/app/x", port)
            with trio.fail_after(20):
                status, body, _ = await c.response(sid)
        assert (status, body) == (-1, b"y" * 10)  # the head and ten bytes, then the stream is reset


async def test_h2_client_read_timeout_fails_an_upstream_that_never_answers_with_502() -> None:
    async def handler(request, info):  # type: ignore[no-untyped-def]
        await trio.sleep_forever()

    async with (
        h2_upstream(handler) as up,
        running_daemon(h2_config(up, client_opts="{readTimeoutMs: 300}")) as d,
    ):
        r = await curl(f"http://127.0.0.1:{d.port('h2')}/app/x", "--http2-prior-knowledge")
        assert r.status == 502, r
        assert r.l5d_err is not None and "(client.socketOptions.readTimeoutMs)" in r.l5d_err, r.l5d_err


async def test_h2_client_write_timeout_fails_an_upstream_that_stops_reading_with_502() -> None:
    import h2.events

    async def handler(request, info):  # type: ignore[no-untyped-def]
        await trio.sleep_forever()  # never reads the body: its window stays at zero

    async with (
        h2_upstream(handler) as up,
        running_daemon(h2_config(up, client_opts="{writeTimeoutMs: 300}")) as d,
    ):
        port = d.port("h2")
        async with RawClient.connect(port) as c:
            await c.start()
            sid = await c.request("/app/x", port, method=b"POST", end_stream=False)

            def answered(ev: object) -> bool:
                return type(ev) is h2.events.ResponseReceived and ev.stream_id == sid

            with trio.fail_after(20):
                # Send body as long as the daemon takes it: past the upstream's window, it holds
                # what it cannot forward, and its stream to the upstream stalls.
                while not any(answered(ev) for ev in c.events) and not c.eof:
                    window = c.conn.local_flow_control_window(sid)
                    if window:
                        c.conn.send_data(sid, b"z" * min(window, 16384))
                        await c.flush()
                    else:
                        await c.pump(ack=True)
                head = await c.until(answered)
                _status, body, _ = await c.response(sid)
        assert head is not None and dict(head.headers)[b":status"] == b"502", c.events
        assert b"(client.socketOptions.writeTimeoutMs)" in body, body


async def test_h2_server_read_timeout_fails_a_request_whose_body_stalls() -> None:
    async def handler(request, info):  # type: ignore[no-untyped-def]
        from hostproxy.http.message import Body, Response

        return Response(200, body=Body.from_bytes(await request.body.read_all()))

    async with (
        h2_upstream(handler) as up,
        running_daemon(h2_config(up, server_opts="{readTimeoutMs: 300}")) as d,
    ):
        port = d.port("h2")
        async with RawClient.connect(port) as c:
            await c.start()
            sid = await c.request("/app/x", port, method=b"POST", end_stream=False)
            c.conn.send_data(sid, b"x" * 10)
            await c.flush()
            with trio.fail_after(20):
                status, body, _ = await c.response(sid)
        assert status == 400, (status, body)
        assert b"request body stalled for 0.3s (socketOptions.readTimeoutMs)" in body, body


async def test_h2_server_write_timeout_resets_a_stream_its_client_does_not_read() -> None:
    import h2.events

    from hostproxy.http.message import Body, Response

    async def handler(request, info):  # type: ignore[no-untyped-def]
        return Response(200, body=Body.from_bytes(b"w" * (1024 * 1024)))

    async with (
        h2_upstream(handler) as up,
        running_daemon(h2_config(up, server_opts="{writeTimeoutMs: 300}")) as d,
    ):
        port = d.port("h2")
        async with RawClient.connect(port) as c:
            await c.start()
            sid = await c.request("/app/x", port)
            with trio.fail_after(20):  # nothing acknowledged: the stream's window reaches zero
                reset = await c.until(
                    lambda ev: type(ev) is h2.events.StreamReset and ev.stream_id == sid, ack=False
                )
        assert reset is not None


async def test_admin_read_timeout_answers_a_head_that_stalls_408() -> None:
    cfg = """
admin: {port: 0, socketOptions: {readTimeoutMs: 300}}
routers: [{protocol: http, servers: [{port: 0}]}]
"""
    async with running_daemon(cfg) as d:
        port = d.daemon.admin_address[1]  # type: ignore[index]
        async with await trio.open_tcp_stream("127.0.0.1", port) as c:
            await c.send_all(b"GET /admin/ping HTTP/1.1\r\nHost: a\r\n")
            got = await read_to_end(c)
        assert got.startswith(b"HTTP/1.1 408 ") and b"(socketOptions.readTimeoutMs)" in got, got
