"""Overload actions on HTTP/2 servers: past the shed mark a new stream gets 503 ``overload`` (labelled
as the proxy's own refusal), past the no-keep-alive mark the connection is drained with GOAWAY
(NO_ERROR) once the streams in progress are answered — never cut.

Real ``H2Server`` on loopback, a raw h2 client; the overload manager is fed injected readings.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import h2.events
import pytest
import trio

from hostproxy.h2 import H2Server, H2ServerParams
from hostproxy.h2.link import keep_open_after_goaway
from hostproxy.http.message import Body, Request, Response
from hostproxy.overload import OverloadConfig, OverloadManager, Reading
from tests.grpc_fixtures.rawh2 import RawClient, goaway_of

pytestmark = pytest.mark.timeout(60)

LIMIT = 1000  # memoryLimitBytes of the injected readings: rss 800 is the no-keep-alive mark, 900 shed


def manager() -> OverloadManager:
    return OverloadManager(OverloadConfig(memory_limit_bytes=LIMIT), clock=lambda: 0.0)


def at(m: OverloadManager, rss: int) -> None:
    m.update(Reading(rss_bytes=rss, open_fds=10, fd_limit=1024))


class App:
    def __init__(self) -> None:
        self.requests: list[str] = []
        self.release = trio.Event()

    async def handle(self, req: Request, info: object) -> Response:
        self.requests.append(req.target)
        if req.target == "/slow":
            await self.release.wait()
        return Response(200, body=Body.from_bytes(b"ok"))


@contextlib.asynccontextmanager
async def serving(app: App, m: OverloadManager) -> AsyncIterator[tuple[H2Server, int]]:
    server = H2Server(app.handle, H2ServerParams(idle_timeout_s=None), overload=m)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        [(_, port)] = await nursery.start(server.serve)
        yield server, port
        nursery.cancel_scope.cancel()


async def closed_by_server(c: RawClient) -> bool:
    with trio.move_on_after(10):
        while not c.eof:
            await c.pump(ack=True)
    return c.eof


def response_headers(c: RawClient, sid: int) -> dict[bytes, bytes]:
    ev = next(e for e in c.events if type(e) is h2.events.ResponseReceived and e.stream_id == sid)
    return dict(ev.headers)


async def test_h2_stream_past_the_shed_mark_gets_503_overload_from_the_proxy() -> None:
    app, m = App(), manager()
    at(m, 900)
    assert m.shed_requests and m.accept_allowed
    async with serving(app, m) as (server, port), RawClient.connect(port) as c:
        keep_open_after_goaway(c.conn)
        await c.start()
        sid = await c.request("/", port)
        status, _body, _ = await c.response(sid)
        assert status == 503
        headers = response_headers(c, sid)
        err = urllib.parse.unquote_plus(headers[b"l5d-err"].decode())
        assert "hostproxy is shedding load" in err and "overload shed mark" in err
        assert app.requests == []  # never handed to the router
        assert m.shed_count == 1
        assert server.statistics()["rejected_overload"] == 1
        assert await closed_by_server(c)  # past no-keep-alive too: GOAWAY after the 503
        assert goaway_of(c).last_stream_id == sid
        at(m, 700)  # below every mark minus the hysteresis: served again, and kept alive
        async with RawClient.connect(port) as c2:
            await c2.start()
            for _ in range(2):
                sid2 = await c2.request("/", port)
                assert (await c2.response(sid2))[:2] == (200, b"ok")
            assert goaway_of(c2) is None
        assert app.requests == ["/", "/"]


async def test_h2_past_the_no_keepalive_mark_answers_the_stream_then_goaway() -> None:
    app, m = App(), manager()
    at(m, 800)
    assert not m.keepalive_allowed and not m.shed_requests
    async with serving(app, m) as (_server, port), RawClient.connect(port) as c:
        keep_open_after_goaway(c.conn)
        await c.start()
        sid = await c.request("/", port)
        assert (await c.response(sid))[:2] == (200, b"ok")
        assert await closed_by_server(c)  # this side never closes
        goaway = goaway_of(c)
        assert goaway is not None and goaway.error_code == 0 and goaway.last_stream_id == sid
    assert app.requests == ["/"]


async def test_h2_stream_in_flight_when_the_mark_is_crossed_is_finished_then_goaway() -> None:
    app, m = App(), manager()
    at(m, 100)
    async with serving(app, m) as (_server, port), RawClient.connect(port) as c:
        keep_open_after_goaway(c.conn)
        await c.start()
        sid = await c.request("/slow", port)
        with trio.fail_after(10):
            while app.requests != ["/slow"]:
                await trio.sleep(0.01)
        at(m, 850)  # no keep-alive from now on
        app.release.set()
        assert (await c.response(sid))[:2] == (200, b"ok")  # not cut
        assert await closed_by_server(c)
        goaway = goaway_of(c)
        assert goaway is not None and goaway.error_code == 0 and goaway.last_stream_id == sid


# -- hostproxy wtf says when the proxy itself is holding back ---------------------------------------


def test_wtf_finds_memory_past_a_mark_and_blames_hostproxy() -> None:
    from hostproxy.diagnose import Snapshot, diagnose

    def gauges(level: int, fds: int = 0) -> dict[str, float]:
        return {"overload/memory_level": level, "overload/fd_exhausted": fds}

    assert diagnose(Snapshot(metrics=gauges(0))).healthy
    [f] = diagnose(Snapshot(metrics=gauges(3))).findings
    assert f.severity == "critical" and f.cause == "overload" and f.fault == "hostproxy"
    assert "memory is past the overload stopAccept mark" in f.verdict
    assert "not accepting connections" in f.verdict
    assert "/overload.json" in f.next_step
    [f] = diagnose(Snapshot(metrics=gauges(2))).findings
    assert "shed mark" in f.verdict and "503" in f.verdict and f.fault == "hostproxy"
    [f] = diagnose(Snapshot(metrics=gauges(1))).findings
    assert f.severity == "warning" and "noKeepalive mark" in f.verdict
    [f] = diagnose(Snapshot(metrics=gauges(0, fds=1))).findings
    assert f.severity == "critical" and "file descriptors" in f.verdict and "not accepting" in f.verdict


async def test_wtf_and_admin_answer_while_memory_stops_accepting(tmp_path: Path) -> None:
    """Memory past every mark (a limit the process is far beyond): the router stops accepting, the admin
    server still answers, and ``hostproxy wtf`` names hostproxy as the one refusing."""
    import json
    import sys

    from tests.daemonutil import fs_config, running_daemon

    disco = tmp_path / "disco"
    disco.mkdir()
    text = "overload: {memoryLimitBytes: 1000000}\n" + fs_config(disco)
    async with running_daemon(text) as d:
        assert not d.daemon.overload.accept_allowed
        with trio.fail_after(60):
            proc = await trio.run_process(
                [sys.executable, "-m", "hostproxy", "wtf", "--admin", d.admin, "--json"],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        doc = json.loads(proc.stdout)
        found = [f for f in doc["findings"] if f["cause"] == "overload"]
        assert found, doc
        assert found[0]["fault"] == "hostproxy" and "stopAccept" in found[0]["verdict"]


async def test_http1_request_in_flight_when_the_mark_is_crossed_ends_whole_with_connection_close() -> None:
    from hostproxy.http.server import Http1Server

    app, m = App(), manager()
    at(m, 100)
    server = Http1Server(app.handle, overload=m)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        [(_, port)] = await nursery.start(server.serve)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        with trio.fail_after(10):
            while app.requests != ["/slow"]:
                await trio.sleep(0.01)
        at(m, 850)  # no keep-alive from now on
        app.release.set()
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(4096):
                data += chunk  # until the server closes
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and body == b"ok"
        assert b"\r\nconnection: close" in head.lower()
        await stream.aclose()
        nursery.cancel_scope.cancel()
