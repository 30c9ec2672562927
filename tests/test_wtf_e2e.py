"""``hostproxy wtf`` end to end: a real daemon, real failures, the real CLI in a subprocess.

One daemon routes several services, each broken in its own way (a closed port, a listener that
never accepts, an upstream that resets, one that answers 503, a dtab with no route, a typo Host,
a request without Host, a namer file that became malformed); ``wtf --json`` must name the right
cause and culprit for each, and nothing for the healthy service.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from tests.daemonutil import curl, fs_config, running_daemon
from tests.upstreams import running_upstream


def write_disco(disco: Path, name: str, text: str) -> None:
    disco.mkdir(exist_ok=True)
    tmp = disco / f".{name}.tmp"
    tmp.write_text(text)
    tmp.rename(disco / name)


def config(disco: Path, *, connect_timeout_ms: int = 300) -> str:
    return fs_config(disco, dtab="/svc => /#/io.l5d.fs;\n    /svc/users => ~;") + (
        f"  client:\n    connectTimeoutMs: {connect_timeout_ms}\n"
        # no requeues: each request makes one attempt, so a connect timeout costs one timeout
        "    requeueBudget: {minRetriesPerSec: 0, percentCanRetry: 0.0}\n"
    )


@contextlib.asynccontextmanager
async def resetting_upstream() -> AsyncIterator[int]:
    """A listener that reads each request and resets the connection (TCP RST) without answering."""

    async def handle(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await stream.receive_some()
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handle, listeners)
        try:
            yield listeners[0].socket.getsockname()[1]
        finally:
            nursery.cancel_scope.cancel()


async def wtf(admin: str, *args: str) -> tuple[int, str, str]:
    proc = await trio.run_process(
        [sys.executable, "-m", "hostproxy", "wtf", "--admin", admin, *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def by_service(doc: dict[str, Any]) -> dict[tuple[str | None, str], dict[str, Any]]:
    return {(f["service"], f["cause"]): f for f in doc["findings"]}


async def wait_for_stale(admin: str, name: str) -> None:
    with trio.fail_after(10):
        while True:
            state = (await curl(f"{admin}/namer_state/io.l5d.fs.json")).json()
            assert isinstance(state, dict)
            if state["names"].get(name, {}).get("state") == "stale":
                return
            await trio.sleep(0.1)


async def test_wtf_names_cause_and_culprit_for_each_broken_service(tmp_path: Path) -> None:
    disco = tmp_path / "disco"
    with socket.socket() as closed, socket.socket() as stuck:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        refused_port = closed.getsockname()[1]
        stuck.bind(("127.0.0.1", 0))
        stuck.listen(0)  # never accepts; fill its accept queue so that further SYNs are dropped
        stuck_port = stuck.getsockname()[1]
        fillers = []
        for _ in range(4):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", stuck_port))
            fillers.append(f)
        try:
            async with running_upstream() as up, resetting_upstream() as reset_port:
                write_disco(disco, "web", f"127.0.0.1 {up.port}\n")
                write_disco(disco, "web-refused", f"127.0.0.1 {refused_port}\n")
                write_disco(disco, "web-stuck", f"127.0.0.1 {stuck_port}\n")
                write_disco(disco, "web-reset", f"127.0.0.1 {reset_port}\n")
                write_disco(disco, "web-5xx", f"127.0.0.1 {up.port}\n")
                write_disco(disco, "web-stale", f"127.0.0.1 {up.port}\n")
                async with running_daemon(config(disco)) as d:
                    base = f"http://127.0.0.1:{d.port('out')}"

                    async def get(host: str, path: str = "/") -> int:
                        return (await curl(base + path, "-H", f"Host: {host}")).status

                    assert [await get("web") for _ in range(3)] == [200, 200, 200]
                    assert [await get("web-refused") for _ in range(2)] == [502, 502]
                    assert await get("web-stuck") == 502
                    assert [await get("web-reset") for _ in range(2)] == [502, 502]
                    assert [
                        await get("web-5xx", "/status/503"),
                        await get("web-5xx"),
                        await get("web-5xx"),
                    ] == [503, 200, 200]
                    assert await get("users") == 502  # negative in the dtab
                    assert await get("wbe") == 502  # a typo: no such file
                    assert await get("web-stale") == 200
                    write_disco(disco, "web-stale", "this is not an address\n")
                    await wait_for_stale(d.admin, "web-stale")
                    assert await get("web-stale") == 200  # last good addresses still served
                    # HTTP/1.0 without a Host: the identifier cannot name it.
                    stream = await trio.open_tcp_stream("127.0.0.1", d.port("out"))
                    async with stream:
                        await stream.send_all(b"GET / HTTP/1.0\r\n\r\n")
                        with trio.fail_after(5):
                            while await stream.receive_some():
                                pass

                    code, out, err = await wtf(d.admin, "--json")
                    assert code == 1, err
                    doc = json.loads(out)  # exactly one JSON document
                    assert doc["healthy"] is False
                    found = by_service(doc)

                    f = found[("/svc/web-refused", "connect/refused")]
                    assert f["client"] == "/#/io.l5d.fs/web-refused"
                    assert f["endpoint"] == f"127.0.0.1:{refused_port}"
                    assert f["severity"] == "critical" and f["share"] == 1.0 and f["level"] == "connection"
                    assert f["verdict"] == (
                        f"upstream 127.0.0.1:{refused_port} refuses connections (app down or wrong port?)"
                    )

                    f = found[("/svc/web-stuck", "connect/timeout")]
                    assert f["client"] == "/#/io.l5d.fs/web-stuck"
                    assert f["endpoint"] == f"127.0.0.1:{stuck_port}"
                    assert f["verdict"].startswith(f"connecting to 127.0.0.1:{stuck_port} times out")

                    f = found[("/svc/web-reset", "upstream/reset")]
                    assert f["client"] == "/#/io.l5d.fs/web-reset"
                    assert f["endpoint"] == f"127.0.0.1:{reset_port}"
                    assert f["verdict"].startswith(
                        f"upstream 127.0.0.1:{reset_port} closes or resets connections"
                    )

                    f = found[("/svc/web-5xx", "upstream/5xx")]
                    assert f["level"] == "application"
                    assert f["failures"] == 1 and f["requests"] == 3
                    assert f["share"] == round(1 / 3, 4)
                    assert f["endpoint"] == f"127.0.0.1:{up.port}"
                    assert f["verdict"] == (
                        "application returns 5xx for 33% of requests (503×1) — hostproxy is passing them through"
                        " (1 of 3 requests: too few to rate)"
                    )
                    assert f["severity"] == "warning"  # one failure among successes

                    f = found[("/svc/users", "naming/neg")]
                    assert f["router"] == "out" and f["client"] is None
                    assert f["verdict"].startswith(
                        "no route: /svc/users is negative in the dtab of router out"
                    )
                    f = found[("/svc/wbe", "naming/neg")]
                    assert f["verdict"].startswith("no route: /svc/wbe is negative in the dtab of router out")

                    f = found[(None, "identification")]
                    assert f["router"] == "out" and f["failures"] == 1

                    f = found[("/svc/web-stale", "naming/stale")]
                    assert f["severity"] == "warning"
                    assert f["client"] == "/#/io.l5d.fs/web-stale"
                    assert f["verdict"].startswith("namer io.l5d.fs stale for ")
                    assert f["verdict"].endswith("— serving last known endpoints (1)")

                    # Healthy services are absent; the worst come first.
                    assert not any(s == "/svc/web" for s, _ in found)
                    ranks = [("critical", "error", "warning").index(x["severity"]) for x in doc["findings"]]
                    assert ranks == sorted(ranks)

                    # --router restricts; an unknown router is a usage error, not "healthy".
                    code, out, _ = await wtf(d.admin, "--json", "--router", "elsewhere")
                    assert code == 2
                    assert (
                        json.loads(out)["error"] == "--router elsewhere: no such router; the routers are: out"
                    )

                    # The text form: a headline, then each finding with its verdict and next step.
                    code, out, _ = await wtf(d.admin)
                    assert code == 1
                    first = out.splitlines()[0]
                    assert first.startswith(f"{len(doc['findings'])} problems — router out: ")
                    assert (
                        f"  upstream 127.0.0.1:{refused_port} refuses connections (app down or wrong port?)"
                        in out
                    )
                    assert f"  client /#/io.l5d.fs/web-refused · endpoint 127.0.0.1:{refused_port}" in out
        finally:
            for f in fillers:
                f.close()


async def test_wtf_healthy_and_interval_window(tmp_path: Path) -> None:
    disco = tmp_path / "disco"
    async with running_upstream() as up:
        write_disco(disco, "web", f"127.0.0.1 {up.port}\n")
        async with running_daemon(config(disco)) as d:
            base = f"http://127.0.0.1:{d.port('out')}"
            assert (await curl(base + "/", "-H", "Host: web")).status == 200
            code, out, err = await wtf(d.admin, "--json")
            assert code == 0, (out, err)
            doc = json.loads(out)
            assert doc["healthy"] is True and doc["findings"] == []
            assert doc["routers"]["out"] == {"requests": 1, "failures": 0, "services": 1}
            assert doc["window"]["kind"] == "since_start"
            code, out, _ = await wtf(d.admin)
            assert code == 0 and out.startswith("healthy — router out: 1 requests, 0 failed (since start")

            # A failure before the interval is outside it: --interval reports only what happens between
            # its two samples.
            assert (await curl(base + "/status/500", "-H", "Host: web")).status == 500
            code, out, _ = await wtf(d.admin, "--json")
            assert code == 1 and by_service(json.loads(out))[("/svc/web", "upstream/5xx")]["failures"] == 1
            code, out, _ = await wtf(d.admin, "--json", "--interval", "300ms")
            assert code == 0, out
            assert json.loads(out)["window"] == {"kind": "interval", "seconds": 0.3}


async def test_wtf_unreachable_admin_is_exit_1_with_one_json_document() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
        code, out, err = await wtf(f"http://127.0.0.1:{port}", "--json")
        assert code == 1
        doc = json.loads(out)
        assert doc["healthy"] is False and doc["findings"] == []
        assert doc["error"].startswith(f"cannot read http://127.0.0.1:{port}/admin/metrics.json: ")
        code, out, err = await wtf(f"http://127.0.0.1:{port}")
        assert code == 1 and out == ""
        assert "is hostproxy running" in err


async def test_wtf_bad_interval_is_a_usage_error() -> None:
    code, out, err = await wtf("http://127.0.0.1:1", "--interval", "soon")
    assert code == 2 and out == ""
    assert err.strip() == (
        "hostproxy wtf: --interval: invalid duration 'soon': use a number with ms, s, m or h, e.g. 30s or 5m"
    )


async def test_wtf_quotes_the_namer_error_of_a_name_that_never_bound(tmp_path: Path) -> None:
    """A malformed fs file fails its name: wtf says which file and line, and what to write instead,
    as the request's l5d-err did."""
    disco = tmp_path / "disco"
    write_disco(disco, "broken", "garbage line here\n")
    async with running_daemon(config(disco)) as d:
        r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: broken")
        assert r.status == 502
        code, out, _ = await wtf(d.admin, "--json")
        assert code == 1
        finding = by_service(json.loads(out))[("/svc/broken", "naming/failed")]
        assert (
            f"{disco / 'broken'}:1: 'garbage line here' is not 'host port [* weight]'" in finding["verdict"]
        )
        assert "/namer_state/io.l5d.fs.json" in finding["next_step"]
        table = (await curl(f"{d.admin}/admin/unbound.json")).json()
        assert isinstance(table, dict)
        (row,) = table["out"]["names"]
        assert row["last_error"] is not None and row["last_error"] in (r.l5d_err or "")
