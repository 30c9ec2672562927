"""Adversarial end-to-end tests of the router and its clients: the real daemon on loopback, real upstreams.

Covers timeouts (total, per attempt, connect), ``l5d-success-class`` and retries, weighted dtab unions,
``/client_state.json`` and the client metrics, and failure accrual through the daemon.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from hostproxy.http.message import Body, Headers, Response
from tests.daemonutil import curl, fs_config, keepalive_gets, running_daemon
from tests.test_lifecycle_helpers import write_disco
from tests.upstreams import running_upstream, serving, stalled_port

FS_CLIENT = "#/io.l5d.fs/web"  # the client id of /svc/web bound through the fs namer, as metrics spell it


def cfg(
    disco: Path,
    *,
    client: str = "",
    service: str = "",
    dtab: str = "/svc => /#/io.l5d.fs;",
    server_extra: str = "",
) -> str:
    """``fs_config`` with global client and service configs; ``client`` and ``service`` are extra lines
    (indented by 4) under ``client:`` and ``service:``."""
    return (
        fs_config(disco, dtab=dtab, server_extra=server_extra)
        + f"  client:\n    kind: io.l5d.global\n{client}\n  service:\n    kind: io.l5d.global\n{service}\n"
    )


NO_REQUEUE = "    requeueBudget: {minRetriesPerSec: 0, percentCanRetry: 0.0}"
NO_ACCRUAL = "    failureAccrual: {kind: none}"
ROUND_ROBIN = "    loadBalancer: {kind: roundRobin}"


async def metrics(admin: str) -> dict[str, float]:
    return (await curl(f"{admin}/admin/metrics.json")).json()  # type: ignore[return-value]


async def get(d: object, path: str = "/", host: str = "web") -> object:
    return await curl(f"http://127.0.0.1:{d.port('out')}{path}", "-H", f"Host: {host}")  # type: ignore[attr-defined]


# -- programmable upstreams -------------------------------------------------------------------------


class Scripted:
    """An upstream answering the n-th request with ``statuses[n]`` (the last one repeats); counts calls."""

    def __init__(self, statuses: list[int], delays: list[float] | None = None) -> None:
        self.statuses = statuses
        self.delays = delays or [0.0]
        self.calls = 0

    async def handle(self, req: object, conn: object) -> Response:
        status = self.statuses[min(self.calls, len(self.statuses) - 1)]
        delay = self.delays[min(self.calls, len(self.delays) - 1)]
        self.calls += 1
        await req.body.read_all()  # type: ignore[attr-defined]
        if delay:
            await trio.sleep(delay)
        return Response(status, b"", Headers([]), Body.from_bytes(f"answer {self.calls}".encode()))


@contextlib.asynccontextmanager
async def scripted(
    statuses: list[int], delays: list[float] | None = None
) -> AsyncIterator[tuple[Scripted, int]]:
    s = Scripted(statuses, delays)
    async with serving(s.handle) as port:
        yield s, port


class Resetter:
    """An upstream that reads each request head, then resets the connection (TCP RST, no response)."""

    def __init__(self) -> None:
        self.calls = 0
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._conn, listeners)

    async def _conn(self, stream: trio.SocketStream) -> None:
        buf = b""
        try:
            while b"\r\n\r\n" not in buf:
                data = await stream.receive_some(65536)
                if not data:
                    await stream.aclose()
                    return
                buf += data
        except (trio.BrokenResourceError, OSError):
            return
        self.calls += 1
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()


@contextlib.asynccontextmanager
async def resetter() -> AsyncIterator[Resetter]:
    r = Resetter()
    async with trio.open_nursery() as nursery:
        await nursery.start(r.serve)
        yield r
        nursery.cancel_scope.cancel()


def keepalive_gets_of(port: int, host: str, count: int) -> list[tuple[int, bytes]]:
    """``count`` GETs over one keep-alive connection (reopened if the proxy asks to close); (status, body)."""
    return [(e.status, e.body) for e in keepalive_gets(port, [host] * count, reconnect=True)]


async def wait_for(pred: object, timeout: float = 5.0) -> None:
    """Poll an async predicate (a safety net for state settling after a response, never a timing assertion)."""
    with trio.move_on_after(timeout):
        while not await pred():  # type: ignore[operator]
            await trio.sleep(0.02)


# -- 1. totalTimeoutMs and requestAttemptTimeoutMs --------------------------------------------------


@pytest.mark.parametrize(
    "server_ms, total_ms, exceeded",
    [
        (200, None, "exceeded the server's timeoutMs (200 ms)"),
        (200, 5000, "exceeded the server's timeoutMs (200 ms)"),
        (5000, 200, "exceeded totalTimeoutMs (200 ms)"),
    ],
)
async def test_server_timeout_bounds_a_request_as_total_timeout_does(
    tmp_path: Path, server_ms: int, total_ms: int | None, exceeded: str
) -> None:
    """``servers[].timeoutMs``: 503, cause ``timeout/request``, and ``l5d-err`` naming the stricter
    of it and ``totalTimeoutMs``."""
    async with running_upstream() as up:
        write_disco(tmp_path / "disco", "web", up.port)
        service = f"    totalTimeoutMs: {total_ms}" if total_ms is not None else ""
        config = cfg(
            tmp_path / "disco", client=NO_ACCRUAL, service=service, server_extra=f"    timeoutMs: {server_ms}"
        )
        async with running_daemon(config) as d:
            r = await get(d, "/slow/3000")
            assert r.status == 503, (r.status, r.body)
            assert r.l5d_err == f"{exceeded} for /svc/web via /{FS_CLIENT}", r.l5d_err
            m = await metrics(d.admin)
            assert m["rt/out/service/svc/web/failures/timeout/request"] == 1
            assert (await get(d, "/")).status == 200  # a quick request is not cut


async def test_total_timeout_is_503_timeout_request_and_the_connection_is_not_reused(tmp_path: Path) -> None:
    async with running_upstream() as up:
        write_disco(tmp_path / "disco", "web", up.port)
        config = cfg(tmp_path / "disco", client=NO_ACCRUAL, service="    totalTimeoutMs: 200")
        async with running_daemon(config) as d:
            r = await get(d, "/slow/3000")
            assert r.status == 503, (r.status, r.body)
            assert r.l5d_err is not None and "totalTimeoutMs" in r.l5d_err
            assert r.body.decode() == r.l5d_err  # the same text as the body
            # The next request on the same client: a fresh connection, its own answer (not the slow one's).
            r2 = await get(d, "/")
            assert (r2.status, r2.body) == (200, b"ok")
            assert up.connections == 2
            assert [q.target for q in up.requests] == ["/slow/3000", "/"]
            m = await metrics(d.admin)
            assert m["rt/out/service/svc/web/failures/timeout/request"] == 1
            assert m[f"rt/out/client/{FS_CLIENT}/failures/timeout/request"] == 1
            assert m["rt/out/service/svc/web/status/503"] == 1
            # The client scope records the status the caller got, as the service scope does.
            client_statuses = {
                k: v for k, v in m.items() if k.startswith(f"rt/out/client/{FS_CLIENT}/status/")
            }
            assert client_statuses == {
                f"rt/out/client/{FS_CLIENT}/status/503": 1,
                f"rt/out/client/{FS_CLIENT}/status/5XX": 1,
                f"rt/out/client/{FS_CLIENT}/status/200": 1,
                f"rt/out/client/{FS_CLIENT}/status/2XX": 1,
            }, client_statuses


async def test_attempt_timeout_is_503_timeout_attempt_and_the_connection_is_not_reused(
    tmp_path: Path,
) -> None:
    async with running_upstream() as up:
        write_disco(tmp_path / "disco", "web", up.port)
        client = f"{NO_ACCRUAL}\n    requestAttemptTimeoutMs: 200"
        async with running_daemon(cfg(tmp_path / "disco", client=client)) as d:
            r = await get(d, "/slow/3000")
            # README "Routers, headers and errors" and spec §5.5: an attempt timeout is a 503 with l5d-err.
            assert r.l5d_err is not None and "requestAttemptTimeoutMs" in r.l5d_err
            m = await metrics(d.admin)
            assert m["rt/out/service/svc/web/failures/timeout/attempt"] == 1
            assert m[f"rt/out/client/{FS_CLIENT}/failures/timeout/attempt"] == 1
            r2 = await get(d, "/")
            assert (r2.status, r2.body) == (200, b"ok")
            assert up.connections == 2
            assert r.status == 503, (r.status, r.l5d_err)


async def test_attempt_timeout_shorter_than_total_gives_timeout_attempt(tmp_path: Path) -> None:
    """Both timeouts set, the attempt one shorter: the attempt timeout fires first and names the cause."""
    async with running_upstream() as up:
        write_disco(tmp_path / "disco", "web", up.port)
        client = f"{NO_ACCRUAL}\n    requestAttemptTimeoutMs: 150"
        async with running_daemon(
            cfg(tmp_path / "disco", client=client, service="    totalTimeoutMs: 5000")
        ) as d:
            r = await get(d, "/slow/3000")
            assert r.l5d_err is not None and "requestAttemptTimeoutMs" in r.l5d_err
            m = await metrics(d.admin)
            assert m["rt/out/service/svc/web/failures/timeout/attempt"] == 1
            assert "rt/out/service/svc/web/failures/timeout/request" not in m
            assert r.status == 503, (r.status, r.l5d_err)


async def test_attempt_timeout_of_a_get_is_retried_by_retryable_read_5xx(tmp_path: Path) -> None:
    """A timed-out attempt is a retryable exception for a read: sent again, answered the second time."""
    async with scripted([200], delays=[3.0, 0.0]) as (up, port):
        write_disco(tmp_path / "disco", "web", port)
        client = f"{NO_ACCRUAL}\n    requestAttemptTimeoutMs: 200"
        service = (
            "    responseClassifier: {kind: io.l5d.http.retryableRead5XX}\n"
            "    retries: {backoff: {kind: constant, ms: 0}}"
        )
        async with running_daemon(cfg(tmp_path / "disco", client=client, service=service)) as d:
            r = await get(d, "/")
            assert (r.status, r.body, r.l5d_err) == (200, b"answer 2", None)
            assert up.calls == 2
            m = await metrics(d.admin)
            assert m["rt/out/service/svc/web/retries/total"] == 1
            assert m["rt/out/service/svc/web/success"] == 1


# -- 2. connectTimeoutMs ----------------------------------------------------------------------------


async def test_connect_timeout_to_a_full_accept_queue(tmp_path: Path) -> None:
    with stalled_port() as port:
        write_disco(tmp_path / "disco", "web", port)
        client = f"{NO_ACCRUAL}\n{NO_REQUEUE}\n    connectTimeoutMs: 200"
        async with running_daemon(cfg(tmp_path / "disco", client=client)) as d:
            r = await get(d, "/")
            assert r.status == 502, (r.status, r.body)
            assert r.l5d_err is not None
            assert f"127.0.0.1:{port}" in r.l5d_err and "connect timeout 200 ms" in r.l5d_err
            assert r.header("l5d-retryable") == "true"
            m = await metrics(d.admin)
            assert m["rt/out/service/svc/web/failures/connect/timeout"] == 1
            assert m[f"rt/out/client/{FS_CLIENT}/failures/connect/timeout"] == 1
            assert m[f"rt/out/client/{FS_CLIENT}/status/502"] == 1


# -- 3. l5d-success-class and retries ---------------------------------------------------------------


async def test_success_class_with_the_default_classifier(tmp_path: Path) -> None:
    async with running_upstream() as up:
        write_disco(tmp_path / "disco", "web", up.port)
        async with running_daemon(cfg(tmp_path / "disco", client=NO_ACCRUAL)) as d:
            got = {}
            for code in (200, 404, 500, 503):
                r = await get(d, f"/status/{code}")
                assert r.status == code and r.l5d_err is None
                got[code] = r.header("l5d-success-class")
            assert got == {200: "1.0", 404: "1.0", 500: "0.0", 503: "0.0"}
            m = await metrics(d.admin)
            assert m["rt/out/service/svc/web/failures/upstream/5xx"] == 2
            assert m["rt/out/service/svc/web/success"] == 2


async def test_success_class_with_all_successful(tmp_path: Path) -> None:
    async with running_upstream() as up:
        write_disco(tmp_path / "disco", "web", up.port)
        service = "    responseClassifier: {kind: io.l5d.http.allSuccessful}"
        async with running_daemon(cfg(tmp_path / "disco", client=NO_ACCRUAL, service=service)) as d:
            for code in (200, 500, 503):
                r = await get(d, f"/status/{code}")
                assert r.status == code and r.header("l5d-success-class") == "1.0", (code, r.headers)
            m = await metrics(d.admin)
            assert m["rt/out/service/svc/web/success"] == 3
            assert "rt/out/service/svc/web/failures/upstream/5xx" not in m
            assert m.get("rt/out/service/svc/web/retries/total", 0) == 0


async def test_retryable_read_5xx_retries_a_get_503_then_200(tmp_path: Path) -> None:
    async with scripted([503, 200]) as (up, port):
        write_disco(tmp_path / "disco", "web", port)
        service = (
            "    responseClassifier: {kind: io.l5d.http.retryableRead5XX}\n"
            "    retries: {backoff: {kind: constant, ms: 0}}"
        )
        async with running_daemon(cfg(tmp_path / "disco", client=NO_ACCRUAL, service=service)) as d:
            r = await get(d, "/")
            assert (r.status, r.body) == (200, b"answer 2")
            assert r.l5d_err is None and r.header("l5d-success-class") == "1.0"
            assert up.calls == 2
            m = await metrics(d.admin)
            assert m["rt/out/service/svc/web/retries/total"] == 1
            assert m["rt/out/service/svc/web/success"] == 1
            assert m["rt/out/service/svc/web/requests"] == 1
            # A POST is not a read: the same script answers 503, passed through, not retried.
    async with scripted([503, 200]) as (up, port):
        write_disco(tmp_path / "disco2", "web", port)
        async with running_daemon(cfg(tmp_path / "disco2", client=NO_ACCRUAL, service=service)) as d:
            r = await curl(
                f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web", "-X", "POST", "--data-binary", "x"
            )
            assert r.status == 503 and r.header("l5d-success-class") == "0.0" and up.calls == 1
            m = await metrics(d.admin)
            assert m.get("rt/out/service/svc/web/retries/total", 0) == 0


# -- 4. weighted unions -----------------------------------------------------------------------------


async def test_weighted_union_splits_about_nine_to_one(tmp_path: Path) -> None:
    """400 requests over ``0.9 * A & 0.1 * B``: A's share is Binomial(400, 0.9)/400, mean 0.9, sd 0.015.
    Accepting 0.8..0.97 leaves 6.7 sd below and 4.7 sd above: a false failure has probability < 2e-6."""
    (tmp_path / "disco").mkdir()
    async with running_upstream() as a, running_upstream() as b:
        dtab = f"/svc/x => 0.9 * /$/inet/127.0.0.1/{a.port} & 0.1 * /$/inet/127.0.0.1/{b.port};"
        async with running_daemon(cfg(tmp_path / "disco", client=NO_ACCRUAL, dtab=dtab)) as d:
            got = await trio.to_thread.run_sync(keepalive_gets_of, d.port("out"), "x", 400)
            assert all(g == (200, b"ok") for g in got)
            na, nb = len(a.requests), len(b.requests)
            assert na + nb == 400
            assert 0.8 <= na / 400 <= 0.97, (na, nb)
            m = await metrics(d.admin)
            ca = m[f"rt/out/client/$/inet/127.0.0.1/{a.port}/requests"]
            cb = m[f"rt/out/client/$/inet/127.0.0.1/{b.port}/requests"]
            assert (ca, cb) == (na, nb)
            assert m["rt/out/service/svc/x/requests"] == 400


# -- 5. /client_state.json and the client's metrics -------------------------------------------------


async def test_client_state_shape_and_client_metrics(tmp_path: Path) -> None:
    async with running_upstream() as a, running_upstream() as b:
        write_disco(tmp_path / "disco", "web", a.port, b.port)
        client = f"{NO_ACCRUAL}\n{ROUND_ROBIN}"
        async with running_daemon(cfg(tmp_path / "disco", client=client)) as d:
            for _ in range(2):
                assert (await get(d)).status == 200
            assert len(a.requests) == len(b.requests) == 1  # round robin: one each
            resp = await curl(f"{d.admin}/client_state.json")
            assert resp.status == 200
            assert resp.header("content-type") == "application/json;charset=UTF-8"
            state = resp.json()
            assert isinstance(state, dict) and list(state) == ["/#/io.l5d.fs/web"]
            entry = state["/#/io.l5d.fs/web"]
            assert entry["state"] == "bound"
            want = {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"}
            assert isinstance(entry["addresses"], list) and set(entry["addresses"]) == want
            assert len(entry["addresses"]) == 2
            assert list(entry)[:2] == ["state", "addresses"]  # Linkerd's keys first
            assert set(entry["endpoints"]) == want
            for ep in entry["endpoints"].values():
                assert {"weight", "load", "status", "accrual", "pool"} <= set(ep)
                assert ep["weight"] == 1.0 and ep["accrual"] == "alive"
                assert isinstance(ep["pool"], dict)
            prefix = f"rt/out/client/{FS_CLIENT}"

            async def settled() -> bool:
                return (await metrics(d.admin)).get(f"{prefix}/pool_cached") == 2

            await wait_for(settled)
            m = await metrics(d.admin)
            assert m[f"{prefix}/loadbalancer/size"] == 2
            assert m[f"{prefix}/loadbalancer/available"] == 2
            assert m[f"{prefix}/failure_accrual/removals"] == 0
            # One keep-alive connection per endpoint, idle: open, in the pool, cached; nobody waiting.
            assert m[f"{prefix}/connections"] == 2
            assert m[f"{prefix}/pool_size"] == 2
            assert m[f"{prefix}/pool_cached"] == 2
            assert m[f"{prefix}/pool_waiters"] == 0
            assert a.connections == b.connections == 1


async def _drop_b_and_wait_for_the_namer(d: Any, disco: Path, port_a: int, port_b: int) -> None:
    """After one request through ``web``, take endpoint B out of its fs file and wait until the namer
    shows only A."""
    assert (await get(d)).status == 200
    write_disco(disco, "web", port_a)

    async def namer_has_one() -> bool:
        body = (await curl(f"{d.admin}/namer_state/io.l5d.fs.json")).body
        return str(port_a).encode() in body and str(port_b).encode() not in body

    await wait_for(namer_has_one, timeout=10)
    assert await namer_has_one(), "the namer never saw the change"


async def test_client_state_addresses_follow_the_namer_without_traffic(tmp_path: Path) -> None:
    """An endpoint removed from the fs file leaves the client's ``addresses`` and its balancer once the
    namer reports the new set, whether or not a request came since (Linkerd's client state follows the
    bound address Var)."""
    async with running_upstream() as a, running_upstream() as b:
        disco = tmp_path / "disco"
        write_disco(disco, "web", a.port, b.port)
        async with running_daemon(cfg(disco, client=NO_ACCRUAL)) as d:
            await _drop_b_and_wait_for_the_namer(d, disco, a.port, b.port)

            async def client_has_one() -> bool:
                st = (await curl(f"{d.admin}/client_state.json")).json()
                return st["/#/io.l5d.fs/web"]["addresses"] == [f"127.0.0.1:{a.port}"]  # type: ignore[index]

            await wait_for(client_has_one, timeout=2)
            st = (await curl(f"{d.admin}/client_state.json")).json()
            addresses = st["/#/io.l5d.fs/web"]["addresses"]  # type: ignore[index]
            m = await metrics(d.admin)
            size = m[f"rt/out/client/{FS_CLIENT}/loadbalancer/size"]
            assert (addresses, size) == ([f"127.0.0.1:{a.port}"], 1)


async def test_client_state_addresses_follow_the_namer_after_a_request(tmp_path: Path) -> None:
    """The same change, then requests: they all go to the endpoint left, and the state says so."""
    async with running_upstream() as a, running_upstream() as b:
        disco = tmp_path / "disco"
        write_disco(disco, "web", a.port, b.port)
        async with running_daemon(cfg(disco, client=NO_ACCRUAL)) as d:
            await _drop_b_and_wait_for_the_namer(d, disco, a.port, b.port)
            before_b = len(b.requests)
            for _ in range(6):
                assert (await get(d)).status == 200
            assert len(b.requests) == before_b
            st = (await curl(f"{d.admin}/client_state.json")).json()
            assert st["/#/io.l5d.fs/web"]["addresses"] == [f"127.0.0.1:{a.port}"]  # type: ignore[index]
            m = await metrics(d.admin)
            assert m[f"rt/out/client/{FS_CLIENT}/loadbalancer/size"] == 1


# -- 6. failure accrual -----------------------------------------------------------------------------


async def test_resetting_endpoint_is_removed_after_consecutive_failures(tmp_path: Path) -> None:
    async with running_upstream() as good, resetter() as bad:
        write_disco(tmp_path / "disco", "web", bad.port, good.port)
        client = (
            f"{NO_REQUEUE}\n{ROUND_ROBIN}\n"
            "    failureAccrual: {kind: io.l5d.consecutiveFailures, failures: 3,"
            " backoff: {kind: constant, ms: 60000}}"
        )
        async with running_daemon(cfg(tmp_path / "disco", client=client)) as d:
            prefix = f"rt/out/client/{FS_CLIENT}"
            statuses = []
            for _ in range(20):
                r = await get(d)
                statuses.append(r.status)
                if r.status != 200:
                    assert r.status == 502 and r.l5d_err is not None, (r.status, r.body)
                if bad.calls >= 3:
                    break
            assert bad.calls == 3
            assert statuses.count(502) == 3
            m = await metrics(d.admin)
            assert m[f"{prefix}/failure_accrual/removals"] == 1
            assert m[f"{prefix}/failures/upstream/reset"] == 3
            assert m[f"{prefix}/loadbalancer/available"] == 1
            st = (await curl(f"{d.admin}/client_state.json")).json()
            eps = st["/#/io.l5d.fs/web"]["endpoints"]  # type: ignore[index]
            assert eps[f"127.0.0.1:{good.port}"]["accrual"] == "alive"
            assert eps[f"127.0.0.1:{bad.port}"]["accrual"] != "alive"
            # The healthy endpoint keeps serving; the removed one gets nothing (backoff 60 s).
            served = len(good.requests)
            for _ in range(10):
                r = await get(d)
                assert (r.status, r.body) == (200, b"ok")
            assert bad.calls == 3 and len(good.requests) == served + 10
            m = await metrics(d.admin)
            assert m[f"{prefix}/failure_accrual/removals"] == 1


async def test_a_probe_cut_by_the_total_timeout_does_not_stop_probing(tmp_path: Path) -> None:
    """A removed endpoint's probe that ``totalTimeoutMs`` interrupts still counts as the probe's outcome:
    after the next backoff the endpoint is probed again (it is not left half-probed forever)."""
    async with running_upstream() as good, scripted([503, 200], delays=[0.0, 3.0, 0.0]) as (bad, bad_port):
        write_disco(tmp_path / "disco", "web", bad_port, good.port)
        client = (
            f"{NO_REQUEUE}\n{ROUND_ROBIN}\n"
            "    failureAccrual: {kind: io.l5d.consecutiveFailures, failures: 1,"
            " backoff: {kind: constant, ms: 50}}"
        )
        async with running_daemon(
            cfg(tmp_path / "disco", client=client, service="    totalTimeoutMs: 300")
        ) as d:
            prefix = f"rt/out/client/{FS_CLIENT}"
            for _ in range(4):
                await get(d)
                if bad.calls:
                    break
            assert bad.calls == 1  # answered 503: removed
            assert (await metrics(d.admin))[f"{prefix}/failure_accrual/removals"] == 1
            await trio.sleep(0.2)  # past the 50 ms backoff: the next pick may probe it
            for _ in range(10):
                await get(d)
                if bad.calls >= 2:
                    break
            assert bad.calls == 2  # the probe, cut by the total timeout
            await trio.sleep(0.2)  # past the backoff again
            for _ in range(10):
                r = await get(d)
                assert r.status in (200, 503)
                if bad.calls >= 3:
                    break
            st = (await curl(f"{d.admin}/client_state.json")).json()
            acc = st["/#/io.l5d.fs/web"]["endpoints"][f"127.0.0.1:{bad_port}"]["accrual"]  # type: ignore[index]
            assert bad.calls >= 3, acc


async def test_a_fanning_out_l5d_dtab_fails_that_request_and_not_the_others() -> None:
    """A per-request ``l5d-dtab`` of ~300 bytes whose rules each fan out would take 2**16 lookups on the
    event loop; the request fails at once (502 naming/failed, ``l5d-err`` saying why) and the next
    request is served as usual."""
    fan = "".join(f"/p{i}=>1*/p{i + 1}&1*/p{i + 1};" for i in range(16))
    async with running_upstream() as up:
        yaml = f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: http
  label: out
  dtab: /svc => /$/inet/127.0.0.1/{up.port};
  servers: [{{ip: 127.0.0.1, port: 0}}]
"""
        async with running_daemon(yaml) as d:
            url = f"http://127.0.0.1:{d.port('out')}/"
            override = f"/svc/web=>/p0;{fan}/p16=>/$/inet/127.0.0.1/{up.port}"
            with trio.fail_after(10):
                r = await curl(url, "-H", "Host: web", "-H", f"l5d-dtab: {override}")
            assert r.status == 502
            assert "needs more than 1000 lookups" in urllib.parse.unquote_plus(r.header("l5d-err") or "")
            ok = await curl(url, "-H", "Host: web")
            assert ok.status == 200
