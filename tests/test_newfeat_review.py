"""Recent features attacked with real peers on loopback: socketOptions timeouts against healthy slow
exchanges, trace propagation, the Linkerd access log line, the admin UI pages and the check command.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from certs import make_pki

from hostproxy.config import ConfigError, load_config
from tests.daemonutil import curl, running_daemon
from tests.grpc_fixtures.rawh2 import RawClient
from tests.test_sockopts_review import h2_config, h2_upstream, http_config, metric, raw_upstream, read_head
from tests.upstreams import running_upstream

pytestmark = pytest.mark.timeout(90)


# -- socketOptions.readTimeoutMs does not cut exchanges that progress --------------------------------------


async def test_client_read_timeout_spares_an_upload_that_trickles_steadily() -> None:
    """An upstream that reads the whole body before answering (/count) says nothing while a 1 s upload
    progresses every 100 ms; a 300 ms client read timeout used to answer it 502 mid-upload."""
    async with (
        running_upstream() as app,
        running_daemon(http_config(app.port, "{}", "{readTimeoutMs: 300}")) as d,
    ):
        async with await trio.open_tcp_stream("127.0.0.1", d.port("http")) as c:
            await c.send_all(b"POST /count HTTP/1.1\r\nHost: web\r\nContent-Length: 100000\r\n\r\n")
            for _ in range(10):
                await c.send_all(b"x" * 10000)
                await trio.sleep(0.1)
            with trio.fail_after(10):
                got = await read_head(c)
                while not got.endswith(b"100000"):
                    got += await c.receive_some(100)
        assert got.startswith(b"HTTP/1.1 200"), got


async def test_h2_client_read_timeout_spares_an_upload_that_trickles_steadily() -> None:
    from hostproxy.http.message import Body, Response

    async def handler(request, info):  # type: ignore[no-untyped-def]
        data = await request.body.read_all()
        return Response(200, body=Body.from_bytes(str(len(data)).encode()))

    async with (
        h2_upstream(handler) as up,
        running_daemon(h2_config(up, client_opts="{readTimeoutMs: 300}")) as d,
    ):
        port = d.port("h2")
        async with RawClient.connect(port) as c:
            await c.start()
            sid = await c.request("/app/x", port, method=b"POST", end_stream=False)
            for _ in range(10):
                c.conn.send_data(sid, b"x" * 1000)
                await c.flush()
                await trio.sleep(0.1)
            c.conn.end_stream(sid)
            await c.flush()
            with trio.fail_after(10):
                status, body, _ = await c.response(sid)
        assert (status, body) == (200, b"10000"), (status, body)


class _Ticking:
    """A response body of ten one-byte messages, 100 ms apart (a server stream)."""

    trailers = None

    def __init__(self) -> None:
        self.n = 0

    async def read_chunk(self) -> bytes | None:
        if self.n >= 10:
            return None
        self.n += 1
        await trio.sleep(0.1)
        return b"m"

    async def aclose(self) -> None:
        pass


async def test_h2_server_read_timeout_spares_a_stream_whose_client_listens() -> None:
    """A bidirectional stream (gRPC's shape): the client sends one message, keeps its side open and
    listens while the server streams for 1 s. The server's 300 ms read timeout used to reset the
    stream after 300 ms for the client's quiet request body."""
    from hostproxy.http.message import Body, Response

    async def handler(request, info):  # type: ignore[no-untyped-def]
        return Response(200, body=Body(_Ticking(), None))

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
            with trio.fail_after(10):
                status, body, _ = await c.response(sid)
        assert (status, body) == (200, b"m" * 10), (status, body)


async def test_server_read_timeout_spares_a_request_whose_upstream_thinks_longer() -> None:
    """The client sent its whole request; nothing is awaited from it while the upstream thinks."""
    async with (
        running_upstream() as app,
        running_daemon(http_config(app.port, "{readTimeoutMs: 300}")) as d,
    ):
        r = await curl(f"http://127.0.0.1:{d.port('http')}/slow/1000", "-H", "Host: web")
        assert r.status == 200, r


async def test_h2_server_read_timeout_spares_a_request_whose_upstream_thinks_longer() -> None:
    from hostproxy.http.message import Body, Response

    async def handler(request, info):  # type: ignore[no-untyped-def]
        await trio.sleep(1.0)
        return Response(200, body=Body.from_bytes(b"done"))

    async with (
        h2_upstream(handler) as up,
        running_daemon(h2_config(up, server_opts="{readTimeoutMs: 300}")) as d,
    ):
        r = await curl(f"http://127.0.0.1:{d.port('h2')}/app/x", "--http2-prior-knowledge")
        assert (r.status, r.body) == (200, b"done"), r


async def test_timeouts_spare_a_websocket_tunnel_that_progresses_and_end_an_idle_one() -> None:
    """An upgraded connection has the timeouts too (they once did not apply to it): a message every
    100 ms keeps both sides progressing for 1 s, and once both are quiet for readTimeoutMs the tunnel
    is closed on both sides."""
    opts = "{readTimeoutMs: 300, writeTimeoutMs: 300}"
    async with running_upstream() as app, running_daemon(http_config(app.port, opts, opts)) as d:
        c = await trio.open_tcp_stream("127.0.0.1", d.port("http"))
        async with c:
            await c.send_all(
                b"GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            )
            head = await read_head(c)
            assert head.startswith(b"HTTP/1.1 101"), head
            for i in range(10):
                await trio.sleep(0.1)
                await c.send_all(b"hello %d" % i)
                with trio.fail_after(5):
                    got = await c.receive_some(100)
                assert got == b"hello %d" % i
            with trio.fail_after(10):
                assert await c.receive_some(100) == b""  # idle: closed
        port = d.port("http", 0)
        assert await metric(d, f"rt/http/server/127.0.0.1/{port}/tunnel_timeouts") == 1


# -- the access log: header bytes a client chooses ----------------------------------------------------------


def _access_config(port: int, log: object, fmt: str) -> str:
    return f"""
admin: {{port: 0}}
routers:
- protocol: http
  dtab: /svc => /$/inet/127.0.0.1/{port};
  httpAccessLog: {log}
  httpAccessLogFormat: {fmt}
  servers: [{{port: 0}}]
"""


async def _logged(log: Path) -> bytes:
    with trio.fail_after(10):
        while not log.exists() or not log.read_bytes().endswith(b"\n"):
            await trio.sleep(0.02)
    return log.read_bytes()


HOSTILE = (
    b"GET /a HTTP/1.1\r\nHost: web\x85x\r\n"
    b'User-Agent: caf\xc3\xa9 \x9b2J \xff\xfe\r\nReferer: r\x85"x\r\nConnection: close\r\n\r\n'
)


async def test_linkerd_access_line_escapes_c1_controls_and_shows_utf8_as_text(tmp_path: Path) -> None:
    """Header values may carry any byte from 0x80 up. A C1 control (0x85 NEL, which many log readers
    take for a line break; 0x9b, an 8-bit CSI that terminals act on) was written as a UTF-8 control
    character, and UTF-8 text as Latin-1 mojibake ("cafÃ©"). Bytes that are not UTF-8 are shown as
    \\xHH, controls escaped, UTF-8 as its text."""
    log = tmp_path / "access.log"
    async with running_upstream() as app, running_daemon(_access_config(app.port, log, "linkerd")) as d:
        c = await trio.open_tcp_stream("127.0.0.1", d.port("http"))
        async with c:
            await c.send_all(HOSTILE)
            assert (await read_head(c)).startswith(b"HTTP/1.1 200")
        line = (await _logged(log)).decode("utf-8")
    assert line.count("\n") == 1 and line.splitlines() == [line[:-1]], line
    assert all(ch.isprintable() for ch in line[:-1]), ascii(line)
    assert line.startswith("web\\x85x 127.0.0.1 - - ["), line
    assert line.endswith(' "r\\x85\\"x" "café \\x9b2J \\xff\\xfe"\n'), line


# -- hostproxy check and the daemon's start read the files a config names ----------------------------------


def _check(tmp_path: Path, yaml_text: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    return subprocess.run(
        [sys.executable, "-m", "hostproxy", "check", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("key", ["dtabFile", "certPath", "trustCerts"])
def test_check_refuses_a_named_pipe_instead_of_waiting_for_a_writer(tmp_path: Path, key: str) -> None:
    """A FIFO where a file is expected: opening it waited for a writer, so ``hostproxy check`` (and
    the daemon's start, which reads the files with the same code) hung for good."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    pkey = make_pki(tmp_path).server_key
    if key == "dtabFile":
        router = f"interpreter: {{kind: io.l5d.fs, dtabFile: {fifo}}}\n  servers: [{{port: 4140}}]"
    elif key == "certPath":
        router = (
            f"dtab: /svc => /#/x;\n  servers: [{{port: 4140, tls: {{certPath: {fifo}, keyPath: {pkey}}}}}]"
        )
    else:
        router = (
            "dtab: /svc => /#/x;\n  servers: [{port: 4140}]\n"
            f"  client: {{tls: {{commonName: a, trustCerts: [{fifo}]}}}}"
        )
    out = _check(tmp_path, f"admin: {{port: 9990}}\nrouters:\n- protocol: http\n  {router}\n")
    assert out.returncode != 0, out
    assert str(fifo) in out.stderr + out.stdout, out
    assert "named pipe" in out.stderr + out.stdout, out


def test_check_refuses_a_character_device_instead_of_reading_it_forever(tmp_path: Path) -> None:
    """/dev/zero as a certificate: read whole, it never ends (memory grows until the process dies)."""
    pki = make_pki(tmp_path)
    yaml_text = (
        "admin: {port: 9990}\nrouters:\n- protocol: http\n  dtab: /svc => /#/x;\n"
        f"  servers: [{{port: 4140, tls: {{certPath: {pki.server_cert}, keyPath: {pki.server_key}, "
        "caCertPath: /dev/zero, requireClientAuth: true}}]\n"
    )
    out = _check(tmp_path, yaml_text)
    assert out.returncode != 0, out
    assert "/dev/zero" in out.stderr + out.stdout and "character device" in out.stderr + out.stdout, out


# -- timestampHeader names a header of the caller's own ----------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "Host",
        "content-length",
        "Transfer-Encoding",
        "Connection",
        "TE",
        "Upgrade",
        "Expect",
        "Via",
        "l5d-dtab",
        "L5d-Reqid",
        "x-forwarded-client-cert",
        "Forwarded",
        "Keep-Alive",
        "Trailer",
    ],
)
def test_timestamp_header_naming_a_header_the_proxy_owns_is_a_config_error(name: str) -> None:
    """Such a name broke every request (Host: 502 'multiple Host headers'; l5d-dtab: 400 parsing the
    time as a dtab; Expect: an upstream answers 417), was forwarded as a hop-by-hop field with a
    number in it (Connection, TE, Upgrade), or was silently dropped (Content-Length, l5d-reqid)."""
    text = f"""
routers:
- protocol: http
  dtab: /svc => /#/x;
  servers: [{{port: 0, timestampHeader: {name}}}]
"""
    with pytest.raises(ConfigError) as info:
        load_config(text, source="t.yaml")
    [issue] = info.value.errors
    assert issue.path == "routers[0].servers[0].timestampHeader", issue
    assert name in issue.message and "X-Request-Start" in issue.message, issue.message


def test_timestamp_header_of_the_callers_own_loads() -> None:
    text = """
routers:
- protocol: http
  dtab: /svc => /#/x;
  servers: [{port: 0, timestampHeader: X-Request-Start}, {port: 1, timestampHeader: x-l5d-start}]
"""
    cfg = load_config(text, source="t.yaml")
    assert [s.timestamp_header for s in cfg.routers[0].servers] == ["X-Request-Start", "x-l5d-start"]


# -- l5d-sample that is not a rate ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "NaN", "-nan"])
async def test_an_l5d_sample_that_is_not_a_number_is_no_decision(value: str) -> None:
    """``l5d-sample: nan`` parsed as a float and clamped to 0 (max(0.0, nan) is 0.0): a trace received
    as sampled went on marked "do not sample". Not a rate, it is no decision: the flags pass on."""
    from hostproxy.routing.tracectx import (
        FLAG_SAMPLED,
        FLAG_SAMPLING_KNOWN,
        decode_l5d_trace,
        encode_l5d_trace,
    )

    sent = encode_l5d_trace(7, 3, 99, FLAG_SAMPLING_KNOWN | FLAG_SAMPLED).decode()
    async with running_upstream() as app, running_daemon(http_config(app.port, "{}")) as d:
        r = await curl(
            f"http://127.0.0.1:{d.port('http')}/headers",
            "-H",
            "Host: web",
            "-H",
            f"l5d-ctx-trace: {sent}",
            "-H",
            f"l5d-sample: {value}",
        )
        assert r.status == 200, r
    got = dict(r.json()["headers"])  # type: ignore[index]
    trace = decode_l5d_trace(got["l5d-ctx-trace"].encode())
    assert trace is not None and trace.trace_id == 99 and trace.parent_id == 7, trace
    assert trace.flags == FLAG_SAMPLING_KNOWN | FLAG_SAMPLED, trace


@pytest.mark.parametrize("fmt", ["hostproxy", "linkerd"])
async def test_h2_access_lines_escape_what_an_h2_client_may_send(tmp_path: Path, fmt: str) -> None:
    """HTTP/2 field values may hold any byte but NUL, CR and LF: a User-Agent with ESC and a CSI, a
    Referer with NEL. (A ``:path`` with a C1 control or U+2028, which the hostproxy line wrote as it
    came, is now refused by the h2 server as the HTTP/1.1 server refuses it, before any line.)"""
    from hostproxy.http.message import Body, Response

    async def handler(request, info):  # type: ignore[no-untyped-def]
        return Response(200, body=Body.from_bytes(b"ok"))

    log = tmp_path / "a.log"
    async with h2_upstream(handler) as up:
        cfg = f"""
admin: {{port: 0}}
routers:
- protocol: h2
  dtab: /svc => /$/inet/127.0.0.1/{up};
  identifier: {{kind: io.l5d.header.path, segments: 1}}
  h2AccessLog: {log}
  h2AccessLogFormat: {fmt}
  servers: [{{port: 0}}]
"""
        async with running_daemon(cfg) as d:
            port = d.port("h2")
            async with RawClient.connect(port) as c:
                await c.start()
                c.conn.config.validate_outbound_headers = False
                c.conn.config.normalize_outbound_headers = False
                refused = await c.request("/app/x\x85y\u2028z", port)
                hostile = [(b"user-agent", "u\x1b[2Jv \x9b2J".encode()), (b"referer", "r\x85x".encode())]
                sid = await c.request("/app/x", port, extra=hostile)
                with trio.fail_after(10):
                    refused_status, _, _ = await c.response(refused)
                    status, _, _ = await c.response(sid)
            line = (await _logged(log)).decode("utf-8")
    assert refused_status == 400
    assert status == 200
    assert line.count("\n") == 1 and line.splitlines() == [line[:-1]], ascii(line)
    assert all(ch.isprintable() or ch == "\t" for ch in line[:-1]), ascii(line)
    assert "/app/x" in line, line
    if fmt == "linkerd":
        assert "u\\x1b[2Jv \\x9b2J" in line and "r\\x85x" in line, ascii(line)


# -- socketOptions.writeTimeoutMs does not cut a peer that keeps reading, slowly --------------------------


async def test_server_write_timeout_spares_a_client_that_reads_slowly() -> None:
    """The client takes 4 KiB every 50 ms (80 KiB/s, a slow mobile link): every 500 ms it has taken
    something. Each 64 KiB write was bounded whole, so the connection was cut after ~37 KB."""
    size = 1024 * 1024
    async with running_upstream() as app, running_daemon(http_config(app.port, "{writeTimeoutMs: 500}")) as d:
        port = d.port("http")
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", port))
        got = 0
        async with trio.SocketStream(sock) as c:
            await c.send_all(f"GET /big/{size} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n".encode())
            with trio.fail_after(80):
                while True:
                    try:
                        chunk = await c.receive_some(4096)
                    except trio.BrokenResourceError:
                        break
                    if not chunk:
                        break
                    got += len(chunk)
                    await trio.sleep(0.05)
        assert got > size, got
        assert await metric(d, f"rt/http/server/127.0.0.1/{port}/write_timeouts") == 0


async def test_client_write_timeout_spares_an_upstream_that_reads_slowly() -> None:
    size = 512 * 1024

    async def slow_reader(stream: trio.SocketStream) -> None:
        head = await read_head(stream)
        body = len(head.partition(b"\r\n\r\n")[2])
        while body < size:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            body += len(chunk)
            await trio.sleep(0.05)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    async with (
        raw_upstream(slow_reader) as up,
        running_daemon(http_config(up, "{}", "{writeTimeoutMs: 500}")) as d,
    ):
        c = await trio.open_tcp_stream("127.0.0.1", d.port("http"))
        async with c:
            await c.send_all(f"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: {size}\r\n\r\n".encode())
            await c.send_all(b"z" * size)
            with trio.fail_after(80):
                head = await read_head(c)
        assert head.startswith(b"HTTP/1.1 200"), head
