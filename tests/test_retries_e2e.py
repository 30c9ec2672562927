"""Retries end to end: the real daemon in-process, real curl, a failing and a healthy upstream."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from hostproxy.http.message import Body, Headers, Response
from tests.daemonutil import curl, fs_config, running_daemon
from tests.test_lifecycle_helpers import write_disco
from tests.upstreams import running_upstream, serving


class Failing:
    """An upstream that answers every request with ``status`` (and extra headers); counts calls."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
        self.status = status
        self.headers = list(headers)
        self.calls = 0
        self.bodies: list[bytes] = []

    async def handle(self, req: object, conn: object) -> Response:
        self.calls += 1
        self.bodies.append(await req.body.read_all())  # type: ignore[attr-defined]
        return Response(self.status, b"", Headers(self.headers), Body.from_bytes(b"failed"))


@contextlib.asynccontextmanager
async def failing(status: int, headers: list[tuple[bytes, bytes]] = ()) -> AsyncIterator[tuple[Failing, int]]:  # type: ignore[assignment]
    f = Failing(status, headers)
    async with serving(f.handle) as port:
        yield f, port


def cfg(disco: Path, classifier: str = "io.l5d.http.retryableRead5XX", budget: str = "") -> str:
    return fs_config(disco) + (
        "  client:\n    kind: io.l5d.global\n    loadBalancer: {kind: roundRobin}\n"
        "    failureAccrual: {kind: none}\n"
        f"  service:\n    kind: io.l5d.global\n    responseClassifier: {{kind: {classifier}}}\n"
        f"    retries:\n      backoff: {{kind: constant, ms: 0}}\n      {budget}\n"
    )


async def _metrics(admin: str) -> dict[str, float]:
    return (await curl(f"{admin}/admin/metrics.json")).json()  # type: ignore[return-value]


async def test_retryable_503_is_retried_on_another_endpoint(tmp_path: Path) -> None:
    async with running_upstream() as good, failing(503) as (bad, bad_port):
        write_disco(tmp_path / "disco", "web", bad_port, good.port)
        async with running_daemon(cfg(tmp_path / "disco")) as d:
            for _ in range(6):
                r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")
                assert r.status == 200 and r.body == b"ok"
            m = await _metrics(d.admin)
            assert bad.calls >= 3  # round robin sent half of the first attempts there
            assert m["rt/out/service/svc/web/retries/total"] == bad.calls
            assert m["rt/out/service/svc/web/retries/budget_exhausted"] == 0
            assert len(good.requests) == 6


async def test_budget_exhaustion_returns_the_failure(tmp_path: Path) -> None:
    budget = "budget: {ttlSecs: 10, minRetriesPerSec: 1, percentCanRetry: 0.0}"
    async with failing(503) as (bad, bad_port):
        write_disco(tmp_path / "disco", "web", bad_port)
        async with running_daemon(cfg(tmp_path / "disco", budget=budget)) as d:
            for _ in range(3):
                r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")
                assert r.status == 503 and r.l5d_err is None  # the upstream's own 503, passed through
            m = await _metrics(d.admin)
            total = m["rt/out/service/svc/web/retries/total"]
            assert m["rt/out/service/svc/web/retries/budget_exhausted"] == 3
            assert 0 < total < 25 and bad.calls == 3 + total


async def test_chunked_body_is_never_retried_but_a_small_one_is(tmp_path: Path) -> None:
    async with failing(503) as (bad, bad_port):
        write_disco(tmp_path / "disco", "web", bad_port)
        async with running_daemon(
            cfg(
                tmp_path / "disco",
                classifier="io.l5d.http.retryableAll5XX",
                budget="budget: {minRetriesPerSec: 1, percentCanRetry: 0.0}",
            )
        ) as d:
            url = f"http://127.0.0.1:{d.port('out')}/"
            r = await curl(
                url, "-H", "Host: web", "-H", "Transfer-Encoding: chunked", "--data-binary", "streamed"
            )
            assert r.status == 503 and bad.calls == 1 and bad.bodies == [b"streamed"]
            r = await curl(url, "-H", "Host: web", "--data-binary", "small")
            assert r.status == 503 and bad.calls > 2
            assert set(bad.bodies[1:]) == {b"small"}  # every attempt carried the whole body
            state = (await curl(f"{d.admin}/overload.json")).json()
            retries = state["routers"]["out"]["retries"]["/svc/web"]  # type: ignore[index]
            assert retries["cannot_retry"] == 1 and retries["total"] == bad.calls - 2


async def test_l5d_retryable_from_a_downstream_proxy_is_honoured(tmp_path: Path) -> None:
    async with (
        running_upstream() as good,
        failing(500, [(b"l5d-retryable", b"true")]) as (bad, bad_port),
        failing(500) as (plain, plain_port),
    ):
        disco = tmp_path / "disco"
        write_disco(disco, "web", bad_port, good.port)
        write_disco(disco, "plain", plain_port, good.port)
        async with running_daemon(cfg(disco, classifier="io.l5d.http.nonRetryable5XX")) as d:
            url = f"http://127.0.0.1:{d.port('out')}/"
            for _ in range(4):
                assert (await curl(url, "-H", "Host: web")).status == 200
            assert bad.calls >= 2
            statuses = [(await curl(url, "-H", "Host: plain")).status for _ in range(4)]
            assert statuses.count(500) == plain.calls >= 2  # not marked retryable: passed through
