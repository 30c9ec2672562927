"""Diagnostic tracing (TRACE + Max-Forwards + l5d-add-context): the pure rules, and end to end through two
routers of a real daemon to a real upstream with curl."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path as FsPath

import pytest

from dtab import Dtab, Path
from dtab.delegate import delegate
from hostproxy.routing import diagtrace
from hostproxy.routing.diagtrace import InvalidMaxForwards, TraceRequest, trace_request
from tests.daemonutil import Running, curl, fs_config, running_daemon
from tests.upstreams import TestUpstream, _free_port, running_upstream

# -- pure rules -------------------------------------------------------------------------------------


def test_only_trace_requests_with_either_header_are_traced() -> None:
    assert trace_request("GET", [(b"max-forwards", b"1"), (b"l5d-add-context", b"true")]) is None
    assert trace_request("TRACE", []) is None
    assert trace_request("TRACE", [(b"max-forwards", b"-1"), (b"l5d-add-context", b"true")]) is None
    assert trace_request("TRACE", [(b"max-forwards", b"0")]) == TraceRequest(0, False)
    assert trace_request("TRACE", [(b"l5d-add-context", b"true")]) == TraceRequest(None, True)
    assert trace_request("TRACE", [(b"max-forwards", b"+3"), (b"l5d-add-context", b"T")]) == TraceRequest(
        3, True
    )


@pytest.mark.parametrize(
    ("value", "expected"), [(b"1", True), (b"TRUE", True), (b"t", True), (b"yes", False)]
)
def test_add_context_truth_values(value: bytes, expected: bool) -> None:
    got = trace_request("TRACE", [(b"max-forwards", b"1"), (b"l5d-add-context", value)])
    assert got is not None and got.add_context is expected


@pytest.mark.parametrize("value", [b"", b"one", b"1.5", b" 1", b"2147483648", b"\xd9\xa1"])
def test_max_forwards_must_be_an_integer(value: bytes) -> None:
    with pytest.raises(InvalidMaxForwards, match=r"^Invalid value for Max-Forwards header$"):
        trace_request("TRACE", [(b"max-forwards", value)])


def test_max_forwards_is_decremented_when_forwarded() -> None:
    assert TraceRequest(3, True).forwarded_max_forwards() == b"2"
    assert TraceRequest(None, True).forwarded_max_forwards() is None
    assert TraceRequest(0, True).answer_here and not TraceRequest(1, True).answer_here


def test_resolution_lines_follow_the_rewrites_to_the_chosen_client() -> None:
    dtab = Dtab.read("/svc => /#/io.l5d.fs; /svc/web => /$/inet/127.0.0.1/1 | /#/io.l5d.fs/web-v2")
    tree = delegate(dtab, Path.read("/svc/web"))
    assert diagtrace.resolution_lines(tree, Path.read("/$/inet/127.0.0.1/1")) == [
        "  /svc/web",
        "  /$/inet/127.0.0.1/1 (/svc/web=>/$/inet/127.0.0.1/1 | /#/io.l5d.fs/web-v2)",
    ]
    assert diagtrace.resolution_lines(tree, Path.read("/#/nowhere")) == []
    assert diagtrace.resolution_lines(None, Path.read("/#/nowhere")) == []


def test_context_and_body_formats() -> None:
    ctx = diagtrace.format_context(
        router="out",
        duration_ms=3,
        service="/svc/web",
        client="/#/io.l5d.fs/web",
        addresses=["127.0.0.1:1", "127.0.0.1:2"],
        selected="127.0.0.1:2",
        resolution=["  /svc/web", "  /#/io.l5d.fs/web (/svc=>/#/io.l5d.fs)"],
    )
    assert ctx == (
        "--- Router: out ---\nrequest duration: 3 ms\nservice name: /svc/web\nclient name: /#/io.l5d.fs/web\n"
        "addresses: [127.0.0.1:1, 127.0.0.1:2]\nselected address: 127.0.0.1:2\ndtab resolution:\n"
        "  /svc/web\n  /#/io.l5d.fs/web (/svc=>/#/io.l5d.fs)\n"
    )
    assert (
        diagtrace.traced_body(b" below \n", "CTX\n", status=200, reason=b"OK", headers=[])
        == b"below\n\nCTX\n"
    )
    chunked = diagtrace.traced_body(None, "CTX\n", status=200, reason=b"OK", headers=[(b"x-a", b"1")])
    assert chunked == (
        b"x-a: 1\nHTTP 200 - OK\nDiagnostic trace encountered chunked response. Response content discarded."
        b"\n\nCTX\n"
    )


# -- end to end -------------------------------------------------------------------------------------


def _config(disco: FsPath, in_port: int) -> str:
    """Router ``out`` forwards to router ``in`` (on ``in_port``), which routes through the fs namer."""
    return fs_config(
        disco,
        dtab=f"/svc => /$/inet/127.0.0.1/{in_port};",
        extra_router=(
            f"- protocol: http\n  label: in\n  dtab: /svc => /#/io.l5d.fs;\n"
            f"  servers: [{{ip: 127.0.0.1, port: {in_port}}}]\n"
        ),
    )


@contextlib.asynccontextmanager
async def _daemon_and_upstream(tmp_path: FsPath) -> AsyncIterator[tuple[Running, TestUpstream]]:
    """A daemon whose router ``out`` forwards to its router ``in`` (on a fixed port, ``d.port("in")``),
    which routes ``web`` through the fs namer to a test upstream."""
    disco = tmp_path / "disco"
    disco.mkdir()
    async with running_upstream() as up:
        # Chosen once the upstream holds its port: a port probed and released earlier could have
        # been handed to the upstream, and the daemon would then fail to bind it.
        in_port = _free_port()
        (disco / "web").write_text(f"127.0.0.1 {up.port}\n")
        async with running_daemon(_config(disco, in_port)) as d:
            yield d, up


async def test_trace_through_two_routers_to_the_upstream(tmp_path: FsPath) -> None:
    async with _daemon_and_upstream(tmp_path) as (d, up):
        in_port = d.port("in")
        url = f"http://127.0.0.1:{d.port('out')}/len/5"
        trace = ("-X", "TRACE", "-H", "Host: web", "-H", "l5d-add-context: true")

        # Max-Forwards 2: out -> in -> the upstream, which answers; each router adds its account.
        r = await curl(url, *trace, "-H", "Max-Forwards: 2")
        assert r.status == 200, r
        text = r.body.decode()
        assert text.startswith("yyyyy\n\n--- Router: in ---\n"), text
        in_part, out_part = text.split("\n\n--- Router: out ---\n")
        assert f"addresses: [127.0.0.1:{up.port}]\nselected address: 127.0.0.1:{up.port}\n" in in_part
        assert "service name: /svc/web\nclient name: /#/io.l5d.fs/web\n" in in_part
        assert in_part.endswith("dtab resolution:\n  /svc/web\n  /#/io.l5d.fs/web (/svc=>/#/io.l5d.fs)")
        assert f"client name: /$/inet/127.0.0.1/{in_port}\n" in out_part
        assert f"selected address: 127.0.0.1:{in_port}\n" in out_part
        assert out_part.endswith(
            f"  /svc/web\n  /$/inet/127.0.0.1/{in_port}/web (/svc=>/$/inet/127.0.0.1/{in_port})\n"
        )
        assert up.requests[-1].method == "TRACE"
        assert up.requests[-1].header("max-forwards") == "0"
        seen = len(up.requests)

        # Max-Forwards 1: the second router answers itself; the upstream sees nothing.
        r = await curl(url, *trace, "-H", "Max-Forwards: 1")
        assert r.status == 200, r
        assert r.body.decode().startswith("--- Router: in ---\n")
        assert f"selected address: 127.0.0.1:{up.port}\n" in r.body.decode()
        assert "\n\n--- Router: out ---\n" in r.body.decode()
        assert len(up.requests) == seen

        # Max-Forwards 0 without context: an empty 200 from the first router.
        r = await curl(url, "-X", "TRACE", "-H", "Host: web", "-H", "Max-Forwards: 0")
        assert (r.status, r.body) == (200, b"")
        assert len(up.requests) == seen


async def test_trace_of_a_chunked_response_reports_the_head(tmp_path: FsPath) -> None:
    async with _daemon_and_upstream(tmp_path) as (d, up):
        r = await curl(
            f"http://127.0.0.1:{d.port('in')}/big/100",
            *("-X", "TRACE", "-H", "Host: web", "-H", "l5d-add-context: 1"),
        )
        assert r.status == 200, r
        text = r.body.decode()
        assert (
            "HTTP 200 - OK\nDiagnostic trace encountered chunked response. Response content discarded."
            in text
        )
        assert "x" * 100 not in text
        assert "\n\n--- Router: in ---\n" in text


async def test_bad_max_forwards_is_refused(tmp_path: FsPath) -> None:
    async with _daemon_and_upstream(tmp_path) as (d, up):
        r = await curl(
            f"http://127.0.0.1:{d.port('in')}/",
            *("-X", "TRACE", "-H", "Host: web", "-H", "Max-Forwards: many"),
        )
        assert r.status == 400
        assert r.l5d_err == "Invalid value for Max-Forwards header"
        assert up.requests == []
