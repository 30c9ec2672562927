"""Attacks on access log rolling, response compression, admin TLS and the InfluxDB telemeter: each test
is a defect found in them, shown on real files, real sockets and a real daemon where it is end to end."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import h11
import pytest
import trio

from hostproxy.accesslog import AccessLog
from tests.daemonutil import curl, fs_config, running_daemon
from tests.test_accesslog_roll import Clock, line, paths_in, utc
from tests.test_influxdb_telemeter import parse

# -- helpers -------------------------------------------------------------------------------------------

Answer = Callable[[trio.SocketStream, bytes], Awaitable[None]]


async def _raw_upstream(
    answer: Answer, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """A bare upstream: for each connection, read one request head and let ``answer`` write the
    response bytes it wants (whatever framing)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def serve(stream: trio.SocketStream) -> None:
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head:
                data = await stream.receive_some(65536)
                if not data:
                    return
                head += data
            await answer(stream, head)

    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(serve, listeners)


def _disco(tmp_path: Path, port: int) -> Path:
    disco = tmp_path / "disco"
    disco.mkdir(exist_ok=True)
    (disco / "app").write_text(f"127.0.0.1 {port}\n")
    return disco


def _exchange(port: int, request: h11.Request) -> tuple[h11.Response, bytes, list[tuple[bytes, bytes]]]:
    """One request over a raw socket, read with h11: the response head, its body bytes as sent (still
    content-coded) and its trailers (blocking: run it in a thread)."""
    import socket

    conn = h11.Connection(h11.CLIENT)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(conn.send(request))
        s.sendall(conn.send(h11.EndOfMessage()))
        head: h11.Response | None = None
        body = b""
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                data = s.recv(65536)
                assert data, "the proxy closed the connection before the response ended"
                conn.receive_data(data)
            elif isinstance(ev, h11.Response):
                head = ev
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                assert head is not None
                return head, body, list(ev.headers)


# -- response compression ------------------------------------------------------------------------------


async def test_a_small_chunked_response_keeps_its_trailers_when_compressed(tmp_path: Path) -> None:
    """A chunked response small enough to arrive with its head is held in memory; compressed, it was
    given a Content-Length, and its trailers (which only a chunked body can carry) were dropped, while
    the same response uncompressed kept them."""

    async def answer(stream: trio.SocketStream, _head: bytes) -> None:
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
            b"Trailer: x-checksum\r\n\r\n1a\r\nhello, compressible world\n\r\n0\r\nx-checksum: abc\r\n\r\n"
        )

    async with trio.open_nursery() as nursery:
        port = await nursery.start(_raw_upstream, answer)
        text = fs_config(_disco(tmp_path, port)) + "  compressionLevel: -1\n"
        async with running_daemon(text) as d:
            headers = [("Host", "app"), ("TE", "trailers")]
            plain_head, plain, plain_trailers = await trio.to_thread.run_sync(
                _exchange, d.port("out"), h11.Request(method="GET", target="/", headers=headers)
            )
            assert plain == b"hello, compressible world\n"
            assert plain_trailers == [(b"x-checksum", b"abc")]
            head, body, trailers = await trio.to_thread.run_sync(
                _exchange,
                d.port("out"),
                h11.Request(method="GET", target="/", headers=[*headers, ("Accept-Encoding", "gzip")]),
            )
            fields = dict(head.headers)
            assert fields[b"content-encoding"] == b"gzip"
            assert gzip.decompress(body) == b"hello, compressible world\n"
            assert trailers == [(b"x-checksum", b"abc")]
            assert fields.get(b"transfer-encoding") == b"chunked" and b"content-length" not in fields
        nursery.cancel_scope.cancel()


async def test_a_body_content_coded_in_a_second_field_line_is_not_compressed_again(tmp_path: Path) -> None:
    """``Content-Encoding: identity`` then ``Content-Encoding: gzip`` is one list, ``identity, gzip``: the
    body is gzip. Only the first line was read, so the body was gzipped again and labelled with one
    ``gzip``: a client that decoded it got gzip bytes, not the upstream's text."""
    payload = gzip.compress(b"already compressed by the upstream " * 20)

    async def answer(stream: trio.SocketStream, _head: bytes) -> None:
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Encoding: identity\r\n"
            b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload
        )

    async with trio.open_nursery() as nursery:
        port = await nursery.start(_raw_upstream, answer)
        text = fs_config(_disco(tmp_path, port)) + "  compressionLevel: 9\n"
        async with running_daemon(text) as d:
            r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: app", "--compressed")
            assert r.status == 200 and r.exit_code == 0
            assert r.body == b"already compressed by the upstream " * 20
        nursery.cancel_scope.cancel()


async def test_accept_encoding_in_two_field_lines_is_one_list(tmp_path: Path) -> None:
    """``Accept-Encoding: br`` then ``Accept-Encoding: gzip`` accepts gzip (RFC 9110 §5.3: one list);
    only the first line was read."""
    from tests.upstreams import running_upstream

    async with running_upstream() as up:
        text = fs_config(_disco(tmp_path, up.port)) + "  compressionLevel: -1\n"
        async with running_daemon(text) as d:
            head, body, _ = await trio.to_thread.run_sync(
                _exchange,
                d.port("out"),
                h11.Request(
                    method="GET",
                    target="/headers",
                    headers=[("Host", "app"), ("Accept-Encoding", "br"), ("Accept-Encoding", "gzip")],
                ),
            )
            assert head.status_code == 200
            assert dict(head.headers).get(b"content-encoding") == b"gzip"
            assert b'"accept-encoding"' in gzip.decompress(body)


async def test_a_compressed_response_does_not_offer_byte_ranges(tmp_path: Path) -> None:
    """``Accept-Ranges: bytes`` on a gzipped body offers ranges of bytes it does not have: a client that
    resumes a download (``Range`` with ``If-Range`` on the date) gets the upstream's identity bytes from
    that offset and splices them onto gzip. A compressed response no longer carries it (as nginx)."""
    text = b"a compressible text body, " * 200

    async def answer(stream: trio.SocketStream, _head: bytes) -> None:
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nAccept-Ranges: bytes\r\n"
            b"Last-Modified: Thu, 26 Nov 2026 10:00:00 GMT\r\nContent-Length: %d\r\n\r\n" % len(text) + text
        )

    async with trio.open_nursery() as nursery:
        port = await nursery.start(_raw_upstream, answer)
        text_cfg = fs_config(_disco(tmp_path, port)) + "  compressionLevel: -1\n"
        async with running_daemon(text_cfg) as d:
            url = f"http://127.0.0.1:{d.port('out')}/file.txt"
            plain = await curl(url, "-H", "Host: app")
            assert plain.header("accept-ranges") == "bytes" and plain.body == text
            r = await curl(url, "-H", "Host: app", "-H", "Accept-Encoding: gzip")
            assert r.header("content-encoding") == "gzip" and gzip.decompress(r.body) == text
            assert r.header("accept-ranges") is None
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "digest",
    [
        b"Content-Digest: sha-256=:%s:",
        b"Repr-Digest: sha-256=:%s:",
        b"Digest: SHA-256=%s",
        b"Content-MD5: %s",
    ],
)
async def test_a_response_with_a_digest_of_its_bytes_is_not_compressed(tmp_path: Path, digest: bytes) -> None:
    """A digest (RFC 9530's ``Content-Digest``/``Repr-Digest``, RFC 3230's ``Digest``, ``Content-MD5``)
    is of the bytes as the upstream coded them: compressed, the response carried a digest its body no
    longer matched, and a client that checks it refused the response. It is passed through instead."""
    import base64
    import hashlib

    text = b"a compressible text body, " * 200
    value = base64.b64encode(hashlib.sha256(text).digest())

    async def answer(stream: trio.SocketStream, _head: bytes) -> None:
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            + digest % value
            + b"\r\nContent-Length: %d\r\n\r\n" % len(text)
            + text
        )

    async with trio.open_nursery() as nursery:
        port = await nursery.start(_raw_upstream, answer)
        cfg = fs_config(_disco(tmp_path, port)) + "  compressionLevel: -1\n"
        async with running_daemon(cfg) as d:
            r = await curl(
                f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: app", "-H", "Accept-Encoding: gzip"
            )
            assert r.status == 200 and r.header("content-encoding") is None
            assert r.body == text
            name = digest.split(b":")[0].decode()
            assert r.header(name) == (digest % value).split(b": ", 1)[1].decode()
        nursery.cancel_scope.cancel()


# -- access log rolling --------------------------------------------------------------------------------


def test_a_roll_that_keeps_failing_is_not_tried_again_on_every_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rename the directory refuses (permissions, a read-only or immutable directory) left the file
    past its size, so every later line tried the roll again: a directory listing, a failed rename, a
    reopen and a warning per request. After a failure the roll waits for another size's worth."""
    path = tmp_path / "access.log"
    log = AccessLog(str(path), clock=Clock(utc(2026, 11, 27, 2, 0, 0)), roll_policy="300.bytes")
    attempts: list[str] = []

    def refuse(src: str, dst: str) -> None:
        attempts.append(dst)
        tried_at.append(len(path.read_text().splitlines()))  # lines the file held at the try
        raise PermissionError(13, "Permission denied", src)

    tried_at: list[int] = []

    monkeypatch.setattr("hostproxy.accesslog.os.rename", refuse)
    for i in range(40):
        line(log, f"/r{i:02d}")
    stats = log.statistics()
    assert stats["lines"] == 40 and stats["write_errors"] == 0
    assert paths_in(path) == [f"/r{i:02d}" for i in range(40)]
    # One try when the file passed 300 bytes, then one per 300 bytes written since (not one a line).
    line_bytes = len(path.read_text().splitlines()[0]) + 1
    assert line_bytes < 150
    assert stats["roll_errors"] == len(attempts), attempts
    # The first try before the line that would pass 300 bytes, then one per 300 bytes' worth of lines
    # written since (a try per line would be one at every line from the first on).
    per_size = 300 // line_bytes
    assert tried_at == list(range(per_size, 40, per_size)), (tried_at, line_bytes)
    monkeypatch.undo()
    # Once renames work again, the file rolls within another size's worth of lines, once.
    for i in range(300 // line_bytes + 1):
        line(log, f"/after{i:02d}")
        if log.statistics()["rolls"]:
            break
    assert log.statistics()["rolls"] == 1
    assert len([p for p in tmp_path.iterdir() if p.name != "access.log"]) == 1
    log.close()


def test_a_log_path_that_became_a_directory_is_not_rolled_away(tmp_path: Path) -> None:
    """The file was replaced by a directory (someone's, with files in it): the roll renamed that
    directory to ``access-….log``, where the rotate count never looks, and made a new file."""
    clock = Clock(utc(2026, 11, 26, 23, 0, 0))
    path = tmp_path / "access.log"
    log = AccessLog(str(path), clock=clock, roll_policy="hourly", rotate_count=1)
    line(log, "/one")
    path.unlink()
    path.mkdir()
    (path / "keep.txt").write_text("not a log\n")
    clock.t = utc(2026, 11, 27, 0, 0, 0)
    line(log, "/two")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["access.log"]
    assert (path / "keep.txt").read_text() == "not a log\n"
    stats = log.statistics()
    assert (stats["rolls"], stats["roll_errors"]) == (0, 1)
    log.close()


def test_a_log_path_that_is_a_symlink_is_not_rolled(tmp_path: Path) -> None:
    """A path that is a link (``/dev/stdout`` is one, to ``/proc/self/fd/1``; or a link into another
    directory): rolling renamed the link itself and put a new regular file in its place, so lines no
    longer went where the link pointed. Only a regular file is rolled."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "real.log"
    logs = tmp_path / "logs"
    logs.mkdir()
    path = logs / "access.log"
    path.symlink_to(target)
    clock = Clock(utc(2026, 11, 26, 23, 0, 0))
    log = AccessLog(str(path), clock=clock, roll_policy="hourly")
    line(log, "/one")
    clock.t = utc(2026, 11, 27, 0, 0, 0)
    line(log, "/two")
    assert path.is_symlink() and os.readlink(path) == str(target)
    assert sorted(p.name for p in logs.iterdir()) == ["access.log"]
    assert paths_in(target) == ["/one", "/two"]
    assert log.statistics()["roll_errors"] == 1
    log.close()


# -- the InfluxDB telemeter ----------------------------------------------------------------------------


async def test_a_scrape_host_with_control_characters_keeps_the_document_valid(tmp_path: Path) -> None:
    """A ``Host`` may hold a tab (HTTP allows it inside a field value). Written raw into every line's
    ``host`` tag, it made each line invalid for Telegraf's parser (a tag value cannot hold a tab, CR,
    vertical tab or form feed, escaped or not), so one scrape with such a Host lost every metric."""
    from tests.upstreams import running_upstream

    async with running_upstream() as up:
        text = fs_config(_disco(tmp_path, up.port)) + "telemetry:\n- kind: io.l5d.influxdb\n"
        async with running_daemon(text) as d:
            r = await curl(d.admin + "/admin/metrics/influxdb", "-H", "Host: in\tjected, x=y")
            assert r.status == 200
            document = r.body.decode()
            for row in document.splitlines():
                assert not any(c in row for c in "\t\r\x0b\x0c"), row
            lines = parse(document)
            assert lines and all(tags["host"] == "in\\tjected, x=y" for _, tags, _ in lines)
            # A name that is not ASCII is the client's UTF-8, not its bytes read as Latin-1 ("cafÃ©").
            r = await curl(d.admin + "/admin/metrics/influxdb", "-H", "Host: café.local")
            assert all(tags["host"] == "café.local" for _, tags, _ in parse(r.body.decode()))


def test_tag_values_and_field_keys_never_hold_a_raw_control_character() -> None:
    from hostproxy.metrics.influx import influx_lines, scope_table
    from hostproxy.metrics.registry import MetricsRegistry
    from hostproxy.metrics.render import collect

    reg = MetricsRegistry(lambda: 1000.0)
    svc = reg.router("out").service("/svc/a\tb\rc\x0bd\x0ce\nf", True)
    svc.start()
    svc.finish(0.01, None, 200)
    bare = reg.router("out").service("/", True)  # (a service scope whose tag value is empty)
    bare.start()
    bare.finish(0.01, None, 200)
    reg.counter("odd/field\tname").incr(1)
    document = influx_lines(collect(list(reg.metrics())), scope_table(reg), "h")
    for row in document.splitlines():
        assert not any(c in row for c in "\t\r\x0b\x0c"), row
    lines = parse(document)
    assert any(tags.get("service") == "svc/a\\tb\\rc\\x0bd\\x0ce\\nf" for _, tags, _ in lines), lines
    assert any("field\\tname" in fields for _, _, fields in lines)
    # The line protocol has no empty tag value: such a tag is left out.
    assert all(value for _, tags, _ in lines for value in tags.values())
    assert not any(re.search(r"(^|[^\\]),service=[, ]", row) for row in document.splitlines())


# -- admin TLS -----------------------------------------------------------------------------------------


async def _cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "hostproxy", *args], capture_stdout=True, capture_stderr=True, check=False
    )


async def test_the_clis_say_what_to_do_when_the_admin_url_and_admin_tls_disagree(tmp_path: Path) -> None:
    """An https:// URL to a plaintext admin server failed with OpenSSL's "wrong version number" and the
    advice for a daemon that is not running; an untrusted certificate with that advice too."""
    from tests.certs import make_pki

    pki = make_pki(tmp_path)
    disco = tmp_path / "disco"
    disco.mkdir()
    async with running_daemon(fs_config(disco)) as d:
        assert d.daemon.admin_address is not None
        https = f"https://127.0.0.1:{d.daemon.admin_address[1]}"
        r = await _cli("wtf", "--admin", https, "--cacert", pki.ca_path)
        assert r.returncode == 1
        assert b"answered in plaintext (its config has no admin.tls): give --admin an http:// URL" in r.stderr
        assert b"is hostproxy running" not in r.stderr, r.stderr
    tls = f"{{certPath: {pki.server_cert}, keyPath: {pki.server_key}}}"
    text = fs_config(disco).replace(
        "admin: {ip: 127.0.0.1, port: 0}", f"admin:\n  ip: 127.0.0.1\n  port: 0\n  tls: {tls}"
    )
    async with running_daemon(text) as d:
        assert d.daemon.admin_address is not None
        r = await _cli("state", "--admin", f"https://127.0.0.1:{d.daemon.admin_address[1]}")
        assert r.returncode == 1
        assert b"CERTIFICATE_VERIFY_FAILED" in r.stderr
        assert b"not trusted: give the CA that signed it with --cacert" in r.stderr, r.stderr


async def test_a_rejected_reload_leaves_the_running_access_log_settings_alone(tmp_path: Path) -> None:
    """A reload builds its routers before it binds new servers; one that is then rejected (a port in
    use) threw its routers away, but their access logs had already handed the shared file their roll
    policy and rotate count, and their counters had replaced the running router's in the metrics. So
    a rejected ``httpAccessLogRotateCount: 0`` deleted the rolled logs the running config keeps, and
    ``access_log/lines`` stopped counting."""
    import socket

    from hostproxy.config import load_config
    from hostproxy.daemon import Daemon
    from tests.upstreams import running_upstream

    logs = tmp_path / "logs"
    logs.mkdir()
    log_path = logs / "access.log"
    kept = [logs / "access-20261101-000000.log", logs / "access-20261102-000000.log"]
    for old in kept:
        old.write_text("an earlier roll\n")

    def config(disco: Path, extra: str) -> str:
        return (
            fs_config(disco)
            + f"  httpAccessLog: {log_path}\n"
            + "  httpAccessLogRollPolicy: 200.bytes\n"
            + extra
        )

    async with running_upstream() as up:
        disco = _disco(tmp_path, up.port)
        path = tmp_path / "hostproxy.yaml"
        path.write_text(config(disco, "  httpAccessLogRotateCount: -1\n"))
        daemon = Daemon(load_config(path.read_text(), source=str(path)), config_path=str(path))
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            try:
                port = daemon.addresses["out"][0][1]
                namer = daemon._namers.namers[0]
                subscribers = len(namer._subscribers)
                with socket.socket() as taken:
                    taken.bind(("127.0.0.1", 0))
                    taken.listen(1)
                    busy = taken.getsockname()[1]
                    path.write_text(
                        config(disco, "  httpAccessLogRotateCount: 0\n").replace(
                            "  - ip: 127.0.0.1\n    port: 0\n",
                            f"  - ip: 127.0.0.1\n    port: 0\n  - ip: 127.0.0.1\n    port: {busy}\n",
                        )
                    )
                    ok, message = await daemon.reload()
                assert not ok and message.startswith("reload rejected"), message
                # (The router it built no longer follows the namers: each rejected reload leaked one.)
                assert len(namer._subscribers) == subscribers
                for i in range(8):  # (some 100 bytes a line: the file rolls by size)
                    r = await curl(f"http://127.0.0.1:{port}/r{i}", "-H", "Host: app")
                    assert r.status == 200
                names = sorted(p.name for p in logs.iterdir())
                assert all(old.exists() for old in kept), names  # (rotate count -1 keeps them all)
                assert len(names) > 3, names  # (it rolled, by the running config's size)
                doc = (await curl(f"{daemon_admin(daemon)}/admin/metrics.json")).json()
                assert isinstance(doc, dict)
                assert doc["rt/out/access_log/lines"] == 8, {
                    k: v for k, v in doc.items() if "access_log" in k
                }
            finally:
                daemon.request_shutdown()


def daemon_admin(daemon: object) -> str:
    address = getattr(daemon, "admin_address", None)
    assert address is not None
    return f"http://{address[0]}:{address[1]}"


def test_when_the_newest_log_of_a_file_closes_the_one_before_it_rolls_the_file(tmp_path: Path) -> None:
    clock = Clock(utc(2026, 11, 26, 23, 0, 0))
    path = tmp_path / "access.log"
    running = AccessLog(str(path), clock=clock, roll_policy="daily", rotate_count=-1)
    rejected = AccessLog(str(path), clock=clock, roll_policy="hourly", rotate_count=0)
    assert rejected.statistics()["roll_policy"] == "hourly"
    rejected.close()
    assert running.statistics()["roll_policy"] == "daily"
    line(running, "/one")
    clock.t = utc(2026, 11, 27, 0, 30, 0)
    line(running, "/two")
    clock.t = utc(2026, 11, 27, 1, 30, 0)
    line(running, "/three")  # (hourly would have rolled again here)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["access-20261126.log", "access.log"]
    assert paths_in(path) == ["/two", "/three"]
    running.close()


async def test_a_reload_that_moves_the_access_log_closes_the_old_file(tmp_path: Path) -> None:
    """The routers a reload replaced were retired without closing their access logs: the old file stayed
    open (until the garbage collector found the router, if ever), so logrotate's move of it never freed
    its space and its sink kept the replaced router's settings."""
    from hostproxy.config import load_config
    from hostproxy.daemon import Daemon
    from tests.upstreams import running_upstream

    first, second = tmp_path / "first.log", tmp_path / "second.log"

    def open_paths() -> set[str]:
        out = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                out.add(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                pass
        return out

    async with running_upstream() as up:
        disco = _disco(tmp_path, up.port)
        path = tmp_path / "hostproxy.yaml"
        path.write_text(fs_config(disco) + f"  httpAccessLog: {first}\n")
        daemon = Daemon(load_config(path.read_text(), source=str(path)), config_path=str(path))
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            try:
                replaced = daemon.routers["out"]  # (held: the garbage collector cannot close it)
                assert str(first) in open_paths()
                path.write_text(fs_config(disco) + f"  httpAccessLog: {second}\n")
                ok, message = await daemon.reload()
                assert ok, message
                assert daemon.routers["out"] is not replaced
                with trio.fail_after(20):
                    while str(first) in open_paths():
                        await trio.sleep(0.05)
                assert str(second) in open_paths()
            finally:
                daemon.request_shutdown()


def test_a_size_policy_taken_over_by_a_reload_counts_what_the_file_holds(tmp_path: Path) -> None:
    """Lines are counted only under a size policy, so a reload from ``daily`` to a size counted the file
    as it was when it was opened: it grew past the size by all it got in between."""
    clock = Clock(utc(2026, 11, 27, 2, 0, 0))
    path = tmp_path / "access.log"
    daily = AccessLog(str(path), clock=clock, roll_policy="daily")
    for i in range(10):
        line(daily, f"/d{i}")
    assert path.stat().st_size > 300
    by_size = AccessLog(str(path), clock=clock, roll_policy="300.bytes")
    line(by_size, "/first-after-reload")
    assert paths_in(path) == ["/first-after-reload"]
    assert by_size.statistics()["rolls"] == 1
    daily.close()
    by_size.close()
