"""The ``io.l5d.zipkin`` telemeter under attack: what Zipkin's Thrift model expects of a span (IPv6
endpoints, lowercase names), a Scribe collector that misbehaves (a reply split into bytes, a reply to
another call, a garbage or huge frame, no answer, a connection closed between batches), a sender that
must outlive any error, the sampling decision of a debug trace, and the spans of attempts cut short.

The misbehaving collector is a trio server that reads each framed ``Log`` call and writes its reply
with thriftpy2 (an independent Thrift implementation), so only the misbehaviour is hand-made."""

from __future__ import annotations

import base64
import ipaddress
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from thriftpy2.protocol import TBinaryProtocolFactory
from thriftpy2.protocol.binary import TBinaryProtocol
from thriftpy2.thrift import TMessageType
from thriftpy2.transport.memory import TMemoryBuffer
from thriftpy2.utils import deserialize

from hostproxy import daemon as daemon_module
from hostproxy import zipkin
from hostproxy.routing.tracectx import FLAG_DEBUG, encode_l5d_trace, span_of
from hostproxy.zipkin import SpanRecord, ZipkinExporter, encode_span
from tests.daemonutil import curl, fs_config, running_daemon
from tests.scribe_collector import running_collector, scribe_thrift, zipkin_thrift
from tests.upstreams import closed_port, running_upstream


def span(i: int = 1, **kw: Any) -> SpanRecord:
    base: dict[str, Any] = {
        "trace_id": 0x1000 + i,
        "span_id": 0x2000 + i,
        "parent_id": None,
        "name": "GET",
        "start_us": 1_700_000_000_000_000,
        "end_us": 1_700_000_000_001_000,
        "service_name": "#/io.l5d.fs/web",
        "remote": ("127.0.0.1", 8080),
        "tags": [("http.uri", "/")],
    }
    base.update(kw)
    return SpanRecord(**base)


def decoded(rec: SpanRecord) -> Any:
    return deserialize(zipkin_thrift.Span(), encode_span(rec), TBinaryProtocolFactory())


# -- what Zipkin's model expects -------------------------------------------------------------------


def test_an_ipv6_endpoint_is_written_in_zipkins_ipv6_field() -> None:
    """zipkinCore's Endpoint has ``4: optional binary ipv6`` (16 bytes); an IPv6 upstream's ``sa`` had
    neither address (ipv4 0, no ipv6)."""
    s = decoded(span(remote=("::1", 8443)))
    sa = next(b for b in s.binary_annotations if b.key == "sa")
    assert sa.host.ipv6 == ipaddress.IPv6Address("::1").packed
    assert sa.host.ipv4 == 0 and sa.host.port == 8443
    v4 = next(b for b in decoded(span()).binary_annotations if b.key == "sa")
    assert v4.host.ipv6 is None and v4.host.ipv4 == 0x7F000001


def test_service_names_are_lowercase_as_zipkin_requires() -> None:
    """zipkinCore: a service name is lowercase (Zipkin's UI and queries lowercase them); a client
    named after a file ``Web`` was reported as ``#/io.l5d.fs/Web``."""
    s = decoded(span(service_name="#/io.l5d.fs/Web"))
    assert {a.host.service_name for a in s.annotations} == {"#/io.l5d.fs/web"}
    assert {b.host.service_name for b in s.binary_annotations if b.key != "sa"} == {"#/io.l5d.fs/web"}


def test_the_debug_flag_of_l5d_ctx_trace_is_a_decision_to_sample() -> None:
    """Finagle: a debug trace is sampled (``TraceId.sampled`` is Some(true) when Debug is set), as B3's
    ``x-b3-flags: 1`` already was here."""
    ctx = encode_l5d_trace(span_id=5, parent_id=4, trace_id=3, flags=FLAG_DEBUG)
    assert span_of([(b"l5d-ctx-trace", ctx)]) == (3, 5, 4, None, True, True)


# -- a collector that misbehaves -------------------------------------------------------------------

Behaviour = Callable[[trio.SocketStream, int, int], Awaitable[bool]]


def reply_frame(seqid: int, code: int = 0, name: str = "Log") -> bytes:
    buf = TMemoryBuffer()
    proto = TBinaryProtocol(buf)
    proto.write_message_begin(name, TMessageType.REPLY, seqid)
    scribe_thrift.scribe.Log_result(success=code).write(proto)
    proto.write_message_end()
    payload = buf.getvalue()
    return struct.pack(">i", len(payload)) + payload


async def good(stream: trio.SocketStream, seqid: int, call: int) -> bool:
    del call
    await stream.send_all(reply_frame(seqid))
    return True


class RawCollector:
    """Reads framed ``Log`` calls (thriftpy2), keeps their entries, and answers as ``behave`` does:
    ``behave(stream, seqid, n)`` (n: the call's number on its connection, from 0) sends what it
    likes and says whether to keep the connection."""

    def __init__(self, behave: Behaviour = good) -> None:
        self.behave = behave
        self.entries: list[Any] = []
        self.connections = 0
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._connection, listeners, task_status=task_status)

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        buf = bytearray()
        call = 0
        async with stream:
            while True:
                while len(buf) < 4 or len(buf) < 4 + struct.unpack(">i", buf[:4])[0]:
                    data = await stream.receive_some()
                    if not data:
                        return
                    buf += data
                (size,) = struct.unpack(">i", buf[:4])
                payload, buf = bytes(buf[4 : 4 + size]), buf[4 + size :]
                proto = TBinaryProtocol(TMemoryBuffer(payload))
                name, kind, seqid = proto.read_message_begin()
                assert (name, kind) == ("Log", TMessageType.CALL)
                args = scribe_thrift.scribe.Log_args()
                args.read(proto)
                self.entries.extend(args.messages)
                keep = await self.behave(stream, seqid, call)
                call += 1
                if not keep:
                    return

    def span_ids(self) -> list[int]:
        out = []
        for e in self.entries:
            s = deserialize(zipkin_thrift.Span(), base64.b64decode(e.message), TBinaryProtocolFactory())
            out.append(s.id)
        return out


async def exporting(
    collector: RawCollector,
    batches: list[list[SpanRecord]],
    done: Callable[[ZipkinExporter], bool],
    on_failure: Callable[[ZipkinExporter], None] | None = None,
    **kw: Any,
) -> ZipkinExporter:
    """Run a collector and an exporter; record each batch once the one before has been sent or
    failed; return the exporter when ``done``."""
    kw.setdefault("flush_s", 0.02)
    kw.setdefault("retry_s", 0.02)
    async with trio.open_nursery() as nursery:
        port = (await nursery.start(collector.serve))[0].socket.getsockname()[1]
        exporter = ZipkinExporter("127.0.0.1", port, 1.0, **kw)
        await nursery.start(exporter.run)
        with trio.fail_after(20):
            for batch in batches:
                settled = exporter.sent + exporter.dropped
                failures = exporter.send_failures
                for rec in batch:
                    exporter.record(rec)
                while exporter.sent + exporter.dropped < settled + len(batch):
                    await trio.sleep(0.01)
                if on_failure is not None and exporter.send_failures > failures:
                    on_failure(exporter)
            while not done(exporter):
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    return exporter


async def test_a_reply_that_arrives_a_byte_at_a_time_is_read() -> None:
    async def bytewise(stream: trio.SocketStream, seqid: int, call: int) -> bool:
        for b in reply_frame(seqid):
            await stream.send_all(bytes([b]))
            await trio.sleep(0)
        return True

    collector = RawCollector(bytewise)
    exporter = await exporting(collector, [[span(1), span(2)], [span(3)]], lambda e: e.sent == 3)
    assert (exporter.send_failures, collector.connections) == (0, 1)


async def test_a_reply_to_another_call_is_not_taken_for_this_one() -> None:
    """A reply must carry the call's sequence id (and name): one for another call means the stream is
    out of step, and the batch's fate is unknown."""

    async def stale(stream: trio.SocketStream, seqid: int, call: int) -> bool:
        await stream.send_all(reply_frame(seqid + 7))
        return True

    exporter = await exporting(RawCollector(stale), [[span(1)]], lambda e: e.send_failures >= 1)
    assert exporter.sent == 0 and exporter.last_error is not None
    assert "sequence id" in exporter.last_error, exporter.last_error

    async def renamed(stream: trio.SocketStream, seqid: int, call: int) -> bool:
        await stream.send_all(reply_frame(seqid, name="Other"))
        return True

    exporter = await exporting(RawCollector(renamed), [[span(1)]], lambda e: e.send_failures >= 1)
    assert exporter.sent == 0 and "'Other'" in str(exporter.last_error), exporter.last_error


async def test_a_garbage_or_huge_reply_frame_fails_the_batch_and_a_new_connection_is_made() -> None:
    garbage = [
        struct.pack(">i", 0x7FFFFFFF),  # a 2 GiB frame
        struct.pack(">i", -5),
        # A frame whose method name has a negative length (read before as a name ending before it began).
        struct.pack(">i", 20)
        + struct.pack(">iii", -0x7FFEFFFE, -12, 1)
        + b"\x08\x00\x00\x00\x00\x00\x00\x00",
        # Not a strict Thrift message at all.
        struct.pack(">i", 12) + b"HTTP/1.1 400",
    ]

    errors: list[str] = []

    async def junk(stream: trio.SocketStream, seqid: int, call: int) -> bool:
        if garbage:
            await stream.send_all(garbage.pop(0))
            return False
        return await good(stream, seqid, call)

    collector = RawCollector(junk)
    exporter = await exporting(
        collector,
        [[span(i)] for i in range(5)],
        lambda e: e.sent >= 1,
        on_failure=lambda e: errors.append(str(e.last_error)),
    )
    assert garbage == []
    assert [m.split(": ", 1)[1] for m in errors] == [
        "the collector's reply frame has length 2147483647",
        "the collector's reply frame has length -5",
        "the collector's reply has a method name of length -12",
        "the collector's answer is not a Thrift message (it starts with b'HTTP/1.1')",
    ]
    assert (exporter.send_failures, exporter.sent, exporter.dropped) == (4, 1, 4)
    assert collector.connections == 5
    assert collector.span_ids()[-1] == 0x2004


async def test_a_collector_that_never_answers_costs_one_batch_and_a_new_connection() -> None:
    async def mute(stream: trio.SocketStream, seqid: int, call: int) -> bool:
        if call == 0 and len(collector_.entries) == 1:
            await trio.sleep_forever()
        return await good(stream, seqid, call)

    collector_ = RawCollector(mute)
    exporter = await exporting(collector_, [[span(1)], [span(2)]], lambda e: e.sent == 1, send_timeout_s=0.3)
    assert exporter.send_failures == 1 and exporter.dropped == 1
    assert exporter.last_error is not None and "did not answer in time" in exporter.last_error
    assert collector_.connections == 2


async def test_a_connection_the_collector_closed_between_batches_is_reopened_without_losing_a_batch() -> None:
    """A collector restarted, or one that closes idle connections: the next batch was written into the
    dead connection and lost (every collector restart cost a batch). It is sent again on a new one."""

    async def one_call_per_connection(stream: trio.SocketStream, seqid: int, call: int) -> bool:
        await good(stream, seqid, call)
        return False

    collector = RawCollector(one_call_per_connection)
    exporter = await exporting(collector, [[span(1)], [span(2)], [span(3)]], lambda e: e.sent == 3)
    assert (exporter.send_failures, exporter.dropped) == (0, 0)
    assert collector.connections == 3
    assert sorted(collector.span_ids()) == [0x2001, 0x2002, 0x2003]


async def test_a_fresh_connection_that_fails_is_not_tried_again_at_once() -> None:
    """The resend is for a connection reused after an idle time, not a loop: a collector that closes
    every connection unanswered costs one connection per batch."""

    async def hang_up(stream: trio.SocketStream, seqid: int, call: int) -> bool:
        return False

    collector = RawCollector(hang_up)
    exporter = await exporting(collector, [[span(1)], [span(2)]], lambda e: e.send_failures == 2)
    assert collector.connections == 2 and exporter.dropped == 2
    assert exporter.last_error is not None and "closed the connection" in exporter.last_error


async def test_the_sender_outlives_an_error_it_did_not_foresee() -> None:
    """A collector host that trio cannot even encode (an empty label) raised UnicodeError out of the
    sender task, and with it out of the daemon's nursery. The batch is lost, the error kept, and the
    sender goes on."""
    exporter = ZipkinExporter("collector..example", 9410, 1.0, flush_s=0.02, retry_s=0.02)
    async with trio.open_nursery() as nursery:
        await nursery.start(exporter.run)
        exporter.record(span(1))
        with trio.fail_after(20):
            while exporter.send_failures < 1:
                await trio.sleep(0.01)
        exporter.record(span(2))
        with trio.fail_after(20):
            while exporter.send_failures < 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert exporter.dropped == 2 and exporter.last_error is not None
    assert exporter.last_error.startswith("the Zipkin collector at collector..example:9410: "), (
        exporter.last_error
    )


# -- config ----------------------------------------------------------------------------------------


def check(tmp_path: Path, keys: str) -> str:
    cfg = tmp_path / "z.yaml"
    cfg.write_text(
        "routers:\n- protocol: http\n  servers: [{port: 4140}]\n"
        f"telemetry:\n- kind: io.l5d.zipkin\n  {keys}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "hostproxy", "check", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0, proc.stdout
    return proc.stderr + proc.stdout


def test_a_collector_host_or_port_that_cannot_work_is_a_config_error(tmp_path: Path) -> None:
    out = check(tmp_path, "host: collector..example")
    assert "z.yaml:6: telemetry[0].host: " in out and "empty" in out and "'collector..example'" in out, out
    out = check(tmp_path, f"host: {'a' * 64}.example")
    assert "z.yaml:6: telemetry[0].host: " in out and "63" in out, out
    out = check(tmp_path, "port: 0")
    assert "z.yaml:6: telemetry[0].port: must be from 1 to 65535, got 0" in out, out


# -- a real daemon ---------------------------------------------------------------------------------


def zipkin_config(disco: Path, port: int, rate: float, extra: str = "") -> str:
    return (
        fs_config(disco)
        + extra
        + f"telemetry:\n- kind: io.l5d.zipkin\n  host: 127.0.0.1\n  port: {port}\n  sampleRate: {rate}\n"
    )


def tags_of(s: Any) -> dict[str, bytes]:
    return {b.key: b.value for b in s.binary_annotations}


async def wait_for_spans(collector: Any, n: int) -> list[Any]:
    with trio.fail_after(20):
        while len(collector.entries) < n:
            await trio.sleep(0.05)
    return list(collector.spans())


async def test_a_debug_trace_is_recorded_at_sample_rate_zero(tmp_path: Path) -> None:
    disco = tmp_path / "disco"
    disco.mkdir()
    ctx = encode_l5d_trace(span_id=0x55, parent_id=0x44, trace_id=0x33, flags=FLAG_DEBUG).decode()
    with running_collector() as collector:
        async with running_upstream() as up:
            (disco / "web").write_text(f"127.0.0.1 {up.port}\n")
            async with running_daemon(zipkin_config(disco, collector.port, 0.0)) as d:
                r = await curl(
                    f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web", "-H", f"l5d-ctx-trace: {ctx}"
                )
                assert r.status == 200
                (s,) = await wait_for_spans(collector, 1)
                assert s.trace_id == 0x33 and s.parent_id == 0x55 and s.debug is True


async def test_an_attempt_cut_short_by_the_total_timeout_is_a_span_with_an_error(tmp_path: Path) -> None:
    """An attempt cancelled (the request's totalTimeoutMs, or the caller gone) left no span: the
    slowest requests, the ones a trace is for, were missing from Zipkin."""
    disco = tmp_path / "disco"
    disco.mkdir()
    with running_collector() as collector:
        async with running_upstream() as up:
            (disco / "web").write_text(f"127.0.0.1 {up.port}\n")
            cfg = zipkin_config(disco, collector.port, 1.0, "  service: {totalTimeoutMs: 200}\n")
            async with running_daemon(cfg) as d:
                r = await curl(f"http://127.0.0.1:{d.port('out')}/slow/5000", "-H", "Host: web")
                assert r.status == 503 and r.l5d_err is not None and "totalTimeoutMs" in r.l5d_err
                (s,) = await wait_for_spans(collector, 1)
                tags = tags_of(s)
                assert tags["error"] == b"cancelled" and "http.rsp.status" not in tags
                assert tags["http.uri"] == b"/slow/5000"
                assert [a.value for a in s.annotations] == ["cs", "cr"]


async def test_an_attempt_timeout_is_a_span_with_its_cause(tmp_path: Path) -> None:
    disco = tmp_path / "disco"
    disco.mkdir()
    with running_collector() as collector:
        async with running_upstream() as up:
            (disco / "web").write_text(f"127.0.0.1 {up.port}\n")
            cfg = zipkin_config(disco, collector.port, 1.0, "  client: {requestAttemptTimeoutMs: 200}\n")
            async with running_daemon(cfg) as d:
                r = await curl(f"http://127.0.0.1:{d.port('out')}/slow/5000", "-H", "Host: web")
                assert r.status >= 500
                spans = await wait_for_spans(collector, 1)
                assert {tags_of(s)["error"] for s in spans} == {b"timeout/attempt"}


async def test_the_spans_of_the_last_requests_go_out_when_the_daemon_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender sends every second; a daemon stopped (a deploy, a restart) within that second lost
    the spans of its last requests. Stopping now sends what is queued first. (Here the sender would
    not send for an hour.)"""
    monkeypatch.setattr(zipkin, "FLUSH_S", 3600.0)
    disco = tmp_path / "disco"
    disco.mkdir()
    with running_collector() as collector:
        async with running_upstream() as up:
            (disco / "web").write_text(f"127.0.0.1 {up.port}\n")
            async with running_daemon(zipkin_config(disco, collector.port, 1.0)) as d:
                for _ in range(3):
                    r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")
                    assert r.status == 200
                assert not collector.entries  # (not yet sent: the flush is a second away)
            assert len(collector.spans()) == 3


async def test_a_stopping_daemon_does_not_wait_for_a_collector_that_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The collector is away: the exporter is waiting to retry (an hour, here); stopping does not wait
    for it (though it would give the spans an hour, here), and the spans queued are left (counted as
    queued, never sent)."""
    monkeypatch.setattr(zipkin, "RETRY_S", 3600.0)
    monkeypatch.setattr(daemon_module, "ZIPKIN_DRAIN_S", 3600.0)
    disco = tmp_path / "disco"
    disco.mkdir()
    with closed_port() as dead, trio.fail_after(60):
        async with running_upstream() as up:
            (disco / "web").write_text(f"127.0.0.1 {up.port}\n")
            async with running_daemon(zipkin_config(disco, dead, 1.0)) as d:
                exporter = d.daemon.zipkin[0]
                r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")
                assert r.status == 200
                with trio.fail_after(20):
                    while exporter.send_failures < 1:
                        await trio.sleep(0.05)
                r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")
                assert r.status == 200
    stats = exporter.statistics()
    assert (stats["queued"], stats["sent"], stats["send_failures"]) == (1, 0, 1)


async def test_draining_after_a_failure_long_past_still_sends() -> None:
    """A batch failed once; the collector came back. Draining sends what is queued (an earlier failure
    does not count as the drain's)."""
    failed = []

    async def once_garbage(stream: trio.SocketStream, seqid: int, call: int) -> bool:
        if not failed:
            failed.append(seqid)
            await stream.send_all(struct.pack(">i", -1))
            return False
        return await good(stream, seqid, call)

    collector = RawCollector(once_garbage)
    async with trio.open_nursery() as nursery:
        port = (await nursery.start(collector.serve))[0].socket.getsockname()[1]
        exporter = ZipkinExporter("127.0.0.1", port, 1.0, flush_s=0.02, retry_s=0.02)
        await nursery.start(exporter.run)
        exporter.record(span(1))
        with trio.fail_after(20):
            while exporter.send_failures < 1:
                await trio.sleep(0.01)
            while exporter._retrying:  # (past the retry wait)
                await trio.sleep(0.01)
            exporter.flush_s = 3600.0  # (from the next wait on: only a drain sends)
            await trio.sleep(0.1)
            exporter.record(span(2))
            await exporter.drain()
        nursery.cancel_scope.cancel()
    assert exporter.sent == 1 and collector.span_ids() == [0x2001, 0x2002]


async def test_two_telemeters_each_get_every_span_and_a_reload_keeps_them(tmp_path: Path) -> None:
    """Two ``io.l5d.zipkin`` telemeters: each collector gets every span; the counters add both up. A
    reload rebuilds the router (its clients record to the same exporters) and leaves the telemetry as
    it was (a change to it waits for a restart)."""
    from hostproxy.config import load_config
    from hostproxy.daemon import Daemon

    disco = tmp_path / "disco"
    disco.mkdir()

    def config(a: int, b: int, router_extra: str = "", rate: float = 1.0) -> str:
        return (
            fs_config(disco)
            + router_extra
            + "telemetry:\n"
            + f"- kind: io.l5d.zipkin\n  host: 127.0.0.1\n  port: {a}\n  sampleRate: {rate}\n"
            + f"- kind: io.l5d.zipkin\n  host: 127.0.0.1\n  port: {b}\n  sampleRate: {rate}\n"
            + "- kind: io.l5d.prometheus\n"
        )

    with running_collector() as one, running_collector() as two:
        async with running_upstream() as up:
            (disco / "web").write_text(f"127.0.0.1 {up.port}\n")
            path = tmp_path / "hostproxy.yaml"
            path.write_text(config(one.port, two.port))
            daemon = Daemon(load_config(path.read_text(), source=str(path)), config_path=str(path))
            async with trio.open_nursery() as nursery:
                await nursery.start(daemon.run)
                try:
                    url = f"http://127.0.0.1:{daemon.addresses['out'][0][1]}/"
                    assert (await curl(url, "-H", "Host: web")).status == 200
                    before = daemon.routers["out"]
                    path.write_text(config(one.port, two.port, "  service: {totalTimeoutMs: 9000}\n", 0.0))
                    ok, message = await daemon.reload()
                    assert ok and "telemetry not changed" in message, message
                    assert daemon.routers["out"] is not before
                    url = f"http://127.0.0.1:{daemon.addresses['out'][0][1]}/"
                    assert (await curl(url, "-H", "Host: web")).status == 200
                    first = await wait_for_spans(one, 2)
                    second = await wait_for_spans(two, 2)
                    assert sorted(s.id for s in first) == sorted(s.id for s in second)
                    admin = "http://{}:{}".format(*daemon.admin_address or ("", 0))
                    with trio.fail_after(20):
                        while (await curl(f"{admin}/admin/metrics.json")).json()["zipkin/sent"] != 4:  # type: ignore[index]
                            await trio.sleep(0.05)
                    prom = (await curl(f"{admin}/admin/metrics/prometheus")).body.decode()
                    assert "\nhostproxy_zipkin_spans_sent_total 4\n" in prom, prom
                    assert "\nhostproxy_zipkin_spans_recorded_total 4\n" in prom
                    assert "\nhostproxy_zipkin_send_failures_total 0\n" in prom
                finally:
                    daemon.request_shutdown()


async def test_a_huge_target_is_cut_in_the_span_so_the_queue_stays_small(tmp_path: Path) -> None:
    """A router that allows long request lines (``maxInitialLineKB``; an h2 ``:path`` may be up to
    64 KiB) put the whole target in the span: 1,000 queued spans of 60 KB targets were 60 MB while
    the collector was away. A tag's value is cut at ``MAX_TAG_CHARS``; the request is forwarded whole."""
    disco = tmp_path / "disco"
    disco.mkdir()
    target = "/headers?q=" + "x" * 40_000
    with running_collector() as collector:
        async with running_upstream() as up:
            (disco / "web").write_text(f"127.0.0.1 {up.port}\n")
            cfg = zipkin_config(disco, collector.port, 1.0, "  maxInitialLineKB: 64\n")
            async with running_daemon(cfg) as d:
                r = await curl(f"http://127.0.0.1:{d.port('out')}{target}", "-H", "Host: web")
                assert r.status == 200, r.l5d_err
                assert up.requests[-1].target == target
                (s,) = await wait_for_spans(collector, 1)
                uri = tags_of(s)["http.uri"].decode()
                assert len(uri) == zipkin.MAX_TAG_CHARS and target.startswith(uri)


def test_a_128_bit_l5d_ctx_trace_is_continued_and_exported_whole() -> None:
    """Finagle serializes a 128-bit trace id as 40 bytes (the high 64 bits last) and reads 32 or 40;
    a 40-byte ``l5d-ctx-trace`` from a Finagle or Linkerd hop started a new trace here, splitting the
    trace in Zipkin."""
    import random

    from hostproxy.routing.tracectx import DEFAULT, decode_l5d_trace

    raw = struct.pack(">QQQQQ", 0x55, 0x44, 0x33, 2 | 4, 0xABC)
    ctx = base64.b64encode(raw)
    got = decode_l5d_trace(ctx)
    assert got is not None and (got.span_id, got.trace_id, got.trace_id_high) == (0x55, 0x33, 0xABC)
    out = dict(DEFAULT.forward({b"l5d-ctx-trace": ctx}, None, random.Random(1)))
    child = base64.b64decode(out[b"l5d-ctx-trace"])
    assert len(child) == 40
    span, parent, trace, flags, high = struct.unpack(">QQQQQ", child)
    assert (parent, trace, flags, high) == (0x55, 0x33, 6, 0xABC)
    assert out[b"l5d-reqid"] == b"0000000000000033"
    nxt = dict(DEFAULT.next_attempt(list(out.items()), random.Random(2)))
    again = struct.unpack(">QQQQQ", base64.b64decode(nxt[b"l5d-ctx-trace"]))
    assert again[1:] == (0x55, 0x33, 6, 0xABC) and again[0] != span
    ids = span_of([(b"l5d-ctx-trace", out[b"l5d-ctx-trace"])])
    assert ids == (0x33, span, 0x55, 0xABC, True, False)
    s = decoded(span_record_of(ids))
    assert s.trace_id_high == 0xABC and s.trace_id == 0x33


def span_record_of(ids: Any) -> SpanRecord:
    trace, span_id, parent, high, _, debug = ids
    return span(trace_id=trace, span_id=span_id, parent_id=parent, trace_id_high=high, debug=debug)


async def test_try_later_is_tried_again_as_finagles_scribe_tracer_does() -> None:
    """Finagle's Scribe tracer (Linkerd's) tries a batch answered TRY_LATER up to 3 times in all; here
    the first TRY_LATER lost the batch. A collector that keeps saying it costs 3 calls, then the batch."""
    calls: list[int] = []

    async def busy_twice(stream: trio.SocketStream, seqid: int, call: int) -> bool:
        calls.append(seqid)
        await stream.send_all(reply_frame(seqid, 1 if len(calls) <= 2 else 0))
        return True

    collector = RawCollector(busy_twice)
    exporter = await exporting(collector, [[span(1)]], lambda e: e.sent == 1, try_later_backoff_s=0.01)
    assert (exporter.send_failures, exporter.dropped, len(calls), collector.connections) == (0, 0, 3, 1)

    calls.clear()

    async def always_busy(stream: trio.SocketStream, seqid: int, call: int) -> bool:
        calls.append(seqid)
        await stream.send_all(reply_frame(seqid, 1))
        return True

    exporter = await exporting(
        RawCollector(always_busy), [[span(1)]], lambda e: e.send_failures == 1, try_later_backoff_s=0.01
    )
    assert len(calls) == 3 and exporter.dropped == 1
    assert str(exporter.last_error).endswith("the collector answered TRY_LATER (3 times)")


async def test_hostile_header_values_do_not_break_the_span(tmp_path: Path) -> None:
    """A Host of bytes that are not UTF-8, and a target of obs-text: the request is forwarded and its
    span encodes (the values as Finagle's did, each byte a character)."""
    disco = tmp_path / "disco"
    disco.mkdir()
    with running_collector() as collector:
        async with running_upstream() as up:
            dtab = f"/svc/* => /$/inet/127.0.0.1/{up.port};"
            cfg = (
                fs_config(disco, dtab=dtab)
                + f"telemetry:\n- kind: io.l5d.zipkin\n  host: 127.0.0.1\n  port: {collector.port}\n"
                + "  sampleRate: 1.0\n"
            )
            async with running_daemon(cfg) as d:
                r = await curl(f"http://127.0.0.1:{d.port('out')}/caf\xe9", "-H", "Host: w\udcffb")
                (s,) = await wait_for_spans(collector, 1)
                tags = tags_of(s)
                assert r.status == 200, r.l5d_err
                assert tags["http.req.host"] == "w\xffb".encode()
