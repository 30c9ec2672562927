"""socketOptions timeouts where they did not reach: an upgraded (101) connection's tunnel, and an
HTTP/1.1 request body read while its response streams; and what ``hostproxy check`` reads besides
dtab and TLS files (the access log file, the Kubernetes service-account files).

The peers are real sockets on loopback: bare TCP upstreams that answer ``101`` and then stay silent,
stop reading or stream, and raw TCP clients that stop sending or reading.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess

import pytest
import trio
from certs import make_pki
from structlog.testing import capture_logs

from tests.daemonutil import running_daemon
from tests.test_sockopts_review import http_config, metric, raw_upstream, read_head, read_to_end

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parent.parent

UPGRADE = b"GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
_STREAM_ENDS = (trio.BrokenResourceError, trio.ClosedResourceError)


# -- upgraded (101) connections -----------------------------------------------------------------------------


class Tunnel:
    """A bare upstream that answers every request with ``101`` and then runs ``then(stream)``;
    ``closed`` is set once the proxy has closed its side of the tunnel (the upstream read its end,
    or a write failed)."""

    def __init__(self, then: Callable[[trio.SocketStream, Tunnel], Awaitable[None]]) -> None:
        self.then = then
        self.closed = trio.Event()
        self.may_read = trio.Event()  # for an upstream that stops reading: read to the end after it
        self.received = 0

    async def __call__(self, stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(SWITCHING)
        try:
            await self.then(stream, self)
        except _STREAM_ENDS:
            self.closed.set()

    async def read_to_end(self, stream: trio.SocketStream) -> None:
        """Read (and count) until the proxy closes the connection."""
        while await self._receive(stream):
            pass
        self.closed.set()

    async def _receive(self, stream: trio.SocketStream) -> bool:
        data = await stream.receive_some(65536)
        self.received += len(data)
        return bool(data)


async def silent(stream: trio.SocketStream, tunnel: Tunnel) -> None:
    """Sends nothing; reads whatever comes until the end."""
    await tunnel.read_to_end(stream)


async def deaf(stream: trio.SocketStream, tunnel: Tunnel) -> None:
    """Sends nothing and reads nothing until the test allows it; then reads to the end."""
    await tunnel.may_read.wait()
    await tunnel.read_to_end(stream)


async def flooding(stream: trio.SocketStream, tunnel: Tunnel) -> None:
    """Sends as fast as the proxy takes it, until the proxy closes the connection."""
    chunk = b"f" * 65536
    while True:
        await stream.send_all(chunk)


async def ticking(stream: trio.SocketStream, tunnel: Tunnel) -> None:
    """Sends one byte every 100 ms, twelve times, reading what comes meanwhile; then reads on."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tunnel.read_to_end, stream)
        for _ in range(12):
            await trio.sleep(0.1)
            await stream.send_all(b"t")


async def counting(stream: trio.SocketStream, tunnel: Tunnel) -> None:
    """Reads and says nothing until it has 12 bytes, then answers how many it got."""
    while tunnel.received < 12:
        if not await tunnel._receive(stream):
            return
    await stream.send_all(b"got %d" % tunnel.received)
    await tunnel.read_to_end(stream)


@contextlib.asynccontextmanager
async def upgraded(port: int, *, small_buffer: bool = False) -> AsyncIterator[trio.SocketStream]:
    """A client connection to the daemon, upgraded: the ``101`` head is read."""
    sock = trio.socket.socket()
    if small_buffer:  # a client that stops reading stalls the daemon's writes sooner
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    await sock.connect(("127.0.0.1", port))
    async with trio.SocketStream(sock) as c:
        await c.send_all(UPGRADE)
        with trio.fail_after(10):
            head = await read_head(c)
        assert head.startswith(b"HTTP/1.1 101"), head
        yield c


async def tunnel_timeouts(d: object) -> float:
    port = d.port("http", 0)  # type: ignore[attr-defined]
    return await metric(d, f"rt/http/server/127.0.0.1/{port}/tunnel_timeouts")


def timeout_logs(logs: list[dict[str, object]]) -> list[str]:
    return [str(e["error"]) for e in logs if e["event"] == "http.tunnel_timeout"]


async def test_client_read_timeout_closes_a_tunnel_whose_upstream_goes_silent() -> None:
    up_side = Tunnel(silent)
    with capture_logs() as logs:
        async with (
            raw_upstream(up_side) as up,
            running_daemon(http_config(up, "{}", "{readTimeoutMs: 300}")) as d,
            upgraded(d.port("http")) as c,
        ):
            rest = await read_to_end(c)  # (fails the test after 20 s)
            assert rest == b""
            with trio.fail_after(10):
                await up_side.closed.wait()
            assert await tunnel_timeouts(d) == 1
    [error] = timeout_logs(logs)
    assert error.startswith(f"upstream 127.0.0.1:{up} sent nothing and took no bytes for 300 ms"), error
    assert error.endswith("(client.socketOptions.readTimeoutMs): connection closed"), error


async def test_client_write_timeout_closes_a_tunnel_whose_upstream_stops_reading() -> None:
    up_side = Tunnel(deaf)
    with capture_logs() as logs:
        async with (
            raw_upstream(up_side) as up,
            running_daemon(http_config(up, "{}", "{writeTimeoutMs: 300}")) as d,
            upgraded(d.port("http")) as c,
        ):
            sent = 0

            async def upload() -> None:
                nonlocal sent
                chunk = b"u" * 65536
                with contextlib.suppress(*_STREAM_ENDS):
                    for _ in range(1024):  # 64 MiB: far more than the buffers on the way hold
                        await c.send_all(chunk)
                        sent += len(chunk)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(upload)
                await read_to_end(c)  # the daemon closes the client's side too
                nursery.cancel_scope.cancel()
            assert await tunnel_timeouts(d) == 1
            up_side.may_read.set()
            with trio.fail_after(10):
                await up_side.closed.wait()
            assert up_side.received < sent
    [error] = timeout_logs(logs)
    assert "took no bytes for 300 ms" in error and "(client.socketOptions.writeTimeoutMs)" in error, error


async def test_server_read_timeout_closes_a_tunnel_whose_client_goes_silent() -> None:
    up_side = Tunnel(silent)
    with capture_logs() as logs:
        async with (
            raw_upstream(up_side) as up,
            running_daemon(http_config(up, "{readTimeoutMs: 300}")) as d,
            upgraded(d.port("http")) as c,
        ):
            assert await read_to_end(c) == b""
            with trio.fail_after(10):
                await up_side.closed.wait()
            assert await tunnel_timeouts(d) == 1
    [error] = timeout_logs(logs)
    assert error == (
        "the client sent nothing and took no bytes for 0.3s on an upgraded (101) connection "
        "(socketOptions.readTimeoutMs)"
    ), error


@pytest.mark.parametrize("opts", ["{writeTimeoutMs: 300}", "{readTimeoutMs: 300}"])
async def test_server_timeouts_close_a_tunnel_whose_client_stops_reading(opts: str) -> None:
    """The upstream streams; the client neither reads nor sends. With writeTimeoutMs a write it takes
    nothing of ends the tunnel; with readTimeoutMs alone the writes count as progress only while the
    client takes them, so the tunnel ends once the buffers on the way are full."""
    up_side = Tunnel(flooding)
    with capture_logs() as logs:
        async with (
            raw_upstream(up_side) as up,
            running_daemon(http_config(up, opts)) as d,
            upgraded(d.port("http"), small_buffer=True) as c,
        ):
            with trio.fail_after(20):
                while await tunnel_timeouts(d) < 1:
                    await trio.sleep(0.05)
                await up_side.closed.wait()
            # What the client still finds is what was in its buffers: then the end.
            assert len(await read_to_end(c)) < 64 * 1024 * 1024
    [error] = timeout_logs(logs)
    key = "writeTimeoutMs" if "write" in opts else "readTimeoutMs"
    assert error.startswith("the client ") and error.endswith(f"(socketOptions.{key})"), error


ALL_TIMEOUTS = "{readTimeoutMs: 300, writeTimeoutMs: 300}"


async def test_timeouts_spare_a_tunnel_whose_upstream_streams_to_a_quiet_client() -> None:
    """The client only listens (its side progresses by what it takes) while the upstream sends a byte
    every 100 ms (its side progresses by what it sends) for 1.2 s."""
    up_side = Tunnel(ticking)
    async with (
        raw_upstream(up_side) as up,
        running_daemon(http_config(up, ALL_TIMEOUTS, ALL_TIMEOUTS)) as d,
        upgraded(d.port("http")) as c,
    ):
        got = b""
        with trio.fail_after(20):
            while len(got) < 12:
                data = await c.receive_some(100)
                assert data, got
                got += data
        assert got == b"t" * 12
        await c.send_all(b"still open")
        with trio.fail_after(10):
            while up_side.received < len(b"still open"):
                await trio.sleep(0.02)
        assert await tunnel_timeouts(d) == 0


async def test_timeouts_spare_a_tunnel_whose_client_streams_to_a_quiet_upstream() -> None:
    """The client sends a byte every 100 ms for 1.2 s; the upstream takes them and says nothing until
    it has all twelve (its side progresses by what it takes, the client's by what it sends)."""
    up_side = Tunnel(counting)
    async with (
        raw_upstream(up_side) as up,
        running_daemon(http_config(up, ALL_TIMEOUTS, ALL_TIMEOUTS)) as d,
        upgraded(d.port("http")) as c,
    ):
        for _ in range(12):
            await trio.sleep(0.1)
            await c.send_all(b"c")
        with trio.fail_after(10):
            got = await c.receive_some(100)
        assert got == b"got 12"
        assert await tunnel_timeouts(d) == 0


# -- an HTTP/1.1 request body read while the response streams --------------------------------------------------


async def test_server_read_timeout_spares_an_upload_that_pauses_while_its_response_streams() -> None:
    """Full duplex: the upstream answers at once and streams a chunk every 100 ms while it reads the
    request body; the client sends half the body, listens for 1 s, then sends the rest. The connection
    progressed all along (the response), so readTimeoutMs (300 ms) must not cut the body."""
    size = 20000

    async def streams(stream: trio.SocketStream) -> None:
        head = await read_head(stream)
        body = head.partition(b"\r\n\r\n")[2]
        await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        done = trio.Event()

        async def tick() -> None:
            while not done.is_set():
                await stream.send_all(b"1\r\nt\r\n")
                await trio.sleep(0.1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick)
            while len(body) < size:
                data = await stream.receive_some(65536)
                if not data:
                    break
                body += data
            done.set()
        count = b"%d" % len(body)
        await stream.send_all(b"%x\r\n%s\r\n0\r\n\r\n" % (len(count), count))
        await trio.sleep_forever()

    async with raw_upstream(streams) as up, running_daemon(http_config(up, "{readTimeoutMs: 300}")) as d:
        async with await trio.open_tcp_stream("127.0.0.1", d.port("http")) as c:
            await c.send_all(b"POST /up HTTP/1.1\r\nHost: web\r\nContent-Length: %d\r\n\r\n" % size)
            await c.send_all(b"a" * (size // 2))
            got = b""
            with trio.move_on_after(1.0):
                while True:
                    data = await c.receive_some(65536)
                    assert data, got
                    got += data
            assert got.startswith(b"HTTP/1.1 200") and got.count(b"1\r\nt\r\n") >= 5, got
            await c.send_all(b"b" * (size // 2))
            with trio.fail_after(10):
                while not got.endswith(b"0\r\n\r\n"):
                    data = await c.receive_some(65536)
                    assert data, got
                    got += data
        assert b"5\r\n20000\r\n" in got, got
        port = d.port("http", 0)
        assert await metric(d, f"rt/http/server/127.0.0.1/{port}/body_timeouts") == 0


# -- hostproxy check: the access log file and the Kubernetes service-account files ----------------------------


def check_as(
    args: list[str], *, env: dict[str, str] | None = None, other_user: bool = False
) -> CompletedProcess[str]:
    """``hostproxy check ARGS``; ``other_user``: as an unprivileged user (``nobody`` when the tests
    run as root, whom file modes do not stop)."""
    prefix: list[str] = []
    if other_user and os.geteuid() == 0:
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    run_env.update(env or {})
    return subprocess.run(
        [*prefix, sys.executable, "-m", "hostproxy", "check", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=run_env,
        check=False,
    )


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user may enter (``tmp_path`` is private to the test's user)."""
    d = Path(tempfile.mkdtemp(prefix="hostproxy-check-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        for p in [d, *d.rglob("*")]:
            with contextlib.suppress(OSError):
                p.chmod(0o755 if p.is_dir() else 0o644)
        shutil.rmtree(d, ignore_errors=True)


def access_log_config(d: Path, log: Path | str, protocol: str = "http") -> Path:
    key = "h2AccessLog" if protocol == "h2" else "httpAccessLog"
    cfg = d / "hostproxy.yaml"
    cfg.write_text(
        "admin: {ip: 127.0.0.1, port: 0}\n"
        "routers:\n"
        f"- protocol: {protocol}\n"
        "  dtab: /svc => /$/inet/127.0.0.1/1;\n"
        f"  {key}: {log}\n"
        "  servers:\n"
        "  - {ip: 127.0.0.1, port: 0}\n"
    )
    cfg.chmod(0o644)
    return cfg


@pytest.mark.parametrize("protocol", ["http", "h2"])
def test_check_notes_an_access_log_whose_directory_is_not_here(shared_dir: Path, protocol: str) -> None:
    key = f"routers[0].{'h2AccessLog' if protocol == 'h2' else 'httpAccessLog'}"
    log = shared_dir / "logs" / "access.log"
    cfg = access_log_config(shared_dir, log, protocol)
    r = check_as([str(cfg)])
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert r.stdout.endswith(
        f"; not on this machine, so read when the daemon starts (--require-files: an error): {log} ({key})\n"
    ), r.stdout
    doc = json.loads(check_as(["--json", str(cfg)]).stdout)
    assert doc["ok"] is True and doc["files_missing"] == [{"path": key, "file": str(log)}]
    r = check_as(["--require-files", str(cfg)])
    assert r.returncode == 1
    name = key.split(".")[1]
    assert r.stderr == (
        f"{cfg}:5: {key}: the directory {log.parent} of the access log {log} does not exist; create it "
        f"(hostproxy creates the log file, not its directory) or fix {name}\n"
        f"{cfg}: 1 error\n"
    )
    r = check_as(["--no-files", str(cfg)])
    assert r.returncode == 0 and "(--no-files)" in r.stdout, r
    assert not log.parent.exists()


def test_check_leaves_the_access_log_as_it_finds_it(shared_dir: Path) -> None:
    """A log that is not there yet is creatable (the daemon creates it): check does not create it; one
    that is there is appendable: check neither truncates nor touches it. '-' names no file."""
    log = shared_dir / "access.log"
    cfg = access_log_config(shared_dir, log)
    for args in (["--require-files", str(cfg)], [str(cfg)]):
        r = check_as(args)
        assert (r.returncode, r.stderr) == (0, ""), r.stderr
        assert "not on this machine" not in r.stdout
    assert not log.exists()
    log.write_text("a line\n")
    os.utime(log, (1_000_000, 1_000_000))
    r = check_as(["--require-files", str(cfg)])
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert log.read_text() == "a line\n" and log.stat().st_mtime == 1_000_000
    r = check_as(["--require-files", str(access_log_config(shared_dir, "'-'"))])
    assert (r.returncode, r.stderr) == (0, ""), r.stderr


def test_check_refuses_an_access_log_the_daemon_could_not_open(shared_dir: Path) -> None:
    """What makes the daemon's start fail ("cannot open ... for appending"), refused by check."""
    d = shared_dir
    # A directory where the file should be, and a file where its directory should be.
    (d / "adir").mkdir()
    r = check_as([str(access_log_config(d, d / "adir"))])
    assert r.returncode == 1
    assert (
        f"routers[0].httpAccessLog: the access log {d / 'adir'} is a directory; give a file path" in r.stderr
    )
    (d / "afile").write_text("")
    r = check_as([str(access_log_config(d, d / "afile" / "access.log"))])
    assert r.returncode == 1
    assert f"cannot create the access log {d / 'afile' / 'access.log'}: {d / 'afile'} is not a directory" in (
        r.stderr
    )
    # An empty path, which the daemon refuses too.
    r = check_as([str(access_log_config(d, "''"))])
    assert r.returncode == 1
    assert "routers[0].httpAccessLog: empty path; give a file path, '-' for log events, or leave it out" in (
        r.stderr
    )


def test_check_refuses_an_access_log_this_user_may_not_write(shared_dir: Path) -> None:
    d = shared_dir
    locked = d / "locked"
    locked.mkdir()
    cfg = access_log_config(d, locked / "access.log")
    locked.chmod(0o555)  # the file cannot be created
    r = check_as([str(cfg)], other_user=True)
    assert r.returncode == 1, r
    assert f"{cfg}:5: routers[0].httpAccessLog: cannot create the access log {locked / 'access.log'}: " in (
        r.stderr
    )
    assert f"the directory {locked} is not writable by this user (uid " in r.stderr, r.stderr
    locked.chmod(0o755)
    (locked / "access.log").write_text("kept\n")
    (locked / "access.log").chmod(0o444)  # it exists, but cannot be appended to
    r = check_as([str(cfg)], other_user=True)
    assert r.returncode == 1, r
    assert (
        f"cannot append to the access log {locked / 'access.log'}: it is not writable by this user (uid "
        in (r.stderr)
    ), r.stderr
    assert (locked / "access.log").read_text() == "kept\n"
    (locked / "access.log").chmod(0o666)
    r = check_as([str(cfg)], other_user=True)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr


IN_CLUSTER = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


def k8s_config(d: Path, host: str = "") -> Path:
    cfg = d / "hostproxy.yaml"
    cfg.write_text(
        "namers:\n"
        "- kind: io.l5d.k8s\n" + (f"  host: {host}\n" if host else "") + f"  serviceAccountDir: {d / 'sa'}\n"
        "routers:\n"
        "- protocol: http\n"
        "  dtab: /svc => /#/io.l5d.k8s;\n"
        "  servers: [{port: 0}]\n"
    )
    return cfg


def test_check_reads_the_service_account_files_an_in_cluster_k8s_namer_uses(tmp_path: Path) -> None:
    cfg = k8s_config(tmp_path)
    sa = tmp_path / "sa"
    # Not mounted here: noted, an error with --require-files.
    r = check_as([str(cfg)], env=IN_CLUSTER)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert r.stdout.endswith(
        f"(--require-files: an error): {sa / 'ca.crt'} (namers[0].serviceAccountDir), "
        f"{sa / 'token'} (namers[0].serviceAccountDir)\n"
    ), r.stdout
    r = check_as(["--require-files", str(cfg)], env=IN_CLUSTER)
    assert r.returncode == 1
    assert r.stderr == (
        f"{cfg}:3: namers[0].serviceAccountDir: io.l5d.k8s: service account CA certificate "
        f"{sa / 'ca.crt'} is missing or empty; mount the service account (automountServiceAccountToken) "
        "or set namers[].host\n"
        f"{cfg}: 1 error\n"
    )
    assert check_as(["--no-files", str(cfg)], env=IN_CLUSTER).returncode == 0
    # Mounted, with an empty token: the daemon could not authenticate.
    sa.mkdir()
    pki = make_pki(tmp_path)
    shutil.copy(pki.ca_path, sa / "ca.crt")
    (sa / "token").write_text("")
    r = check_as([str(cfg)], env=IN_CLUSTER)
    assert r.returncode == 1
    assert f"namers[0].serviceAccountDir: io.l5d.k8s: service account token {sa / 'token'} is missing" in (
        r.stderr
    )
    # A CA file that holds no certificate.
    (sa / "token").write_text("eyJhbGciOi.token\n")
    (sa / "ca.crt").write_text("not a certificate\n")
    r = check_as([str(cfg)], env=IN_CLUSTER)
    assert r.returncode == 1
    assert f"io.l5d.k8s: cannot load the CA certificate {sa / 'ca.crt'}" in r.stderr, r.stderr
    shutil.copy(pki.ca_path, sa / "ca.crt")
    r = check_as(["--require-files", str(cfg)], env=IN_CLUSTER)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr


def test_check_leaves_service_account_files_alone_when_the_namer_does_not_use_them(tmp_path: Path) -> None:
    """Outside a pod (no KUBERNETES_SERVICE_HOST) the namer talks to localhost:8001, and with a host
    it talks plain HTTP there: the service account is not read, so nothing is missing."""
    for cfg, env in ((k8s_config(tmp_path), {}), (k8s_config(tmp_path, host="localhost"), IN_CLUSTER)):
        r = check_as(["--require-files", str(cfg)], env=env)
        assert (r.returncode, r.stderr) == (0, ""), r.stderr
        assert "serviceAccountDir" not in r.stdout


def test_check_refuses_a_token_this_user_may_not_read(shared_dir: Path) -> None:
    cfg = k8s_config(shared_dir)
    sa = shared_dir / "sa"
    sa.mkdir()
    shutil.copy(make_pki(shared_dir).ca_path, sa / "ca.crt")
    (sa / "ca.crt").chmod(0o644)
    (sa / "token").write_text("secret\n")
    (sa / "token").chmod(0o600)
    r = check_as([str(cfg)], env=IN_CLUSTER, other_user=True)
    assert r.returncode == 1, r
    assert f"cannot read the service account token {sa / 'token'} (Permission denied)" in r.stderr, r.stderr


def test_check_reads_the_service_account_of_an_in_cluster_k8s_external_namer(tmp_path: Path) -> None:
    cfg = tmp_path / "hostproxy.yaml"
    cfg.write_text(
        "namers:\n"
        "- kind: io.l5d.k8s.external\n"
        "  experimental: true\n"
        f"  serviceAccountDir: {tmp_path / 'sa'}\n"
        "routers:\n"
        "- protocol: http\n"
        "  dtab: /svc => /#/io.l5d.k8s.external;\n"
        "  servers: [{port: 0}]\n"
    )
    r = check_as(["--require-files", str(cfg)], env=IN_CLUSTER)
    assert r.returncode == 1
    assert (
        f"namers[0].serviceAccountDir: io.l5d.k8s.external: service account CA certificate "
        f"{tmp_path / 'sa' / 'ca.crt'} is missing or empty" in r.stderr
    ), r.stderr
