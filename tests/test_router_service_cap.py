"""Past the number of services a router keeps (``MAX_SERVICE_ENTRIES``), services share one retry
policy per set of service params: before, each request for such a service got a fresh policy, whose
budget's reserve let it retry, so a flood of distinct service names retried without bound."""

from __future__ import annotations

import time
from typing import Any

import trio

from hostproxy import router as router_mod
from hostproxy.config.validate import load_config
from hostproxy.http.message import Body, Headers, Request, Response
from hostproxy.metrics import MetricsRegistry
from tests.routerstub import StubPool, conn_for, get_request, stub_router

CFG = """
routers:
- protocol: http
  label: capped
  dtab: /svc => /$/inet/127.0.0.1/9001;
  service:
    kind: io.l5d.global
    responseClassifier: {kind: io.l5d.http.retryableAll5XX}
    retries:
      budget: {ttlSecs: 10, minRetriesPerSec: 1, percentCanRetry: 0.0}
  servers: [{ip: 127.0.0.1, port: 4140}]
"""


class _Unavailable(StubPool):
    """Every request: 503 (retryable under retryableAll5XX); counts what reached it."""

    calls = 0

    async def request(self, req: Request) -> Response:
        await trio.lowlevel.checkpoint()
        _Unavailable.calls += 1
        return Response(503, b"Service Unavailable", Headers(), Body.from_bytes(b"down"))


def test_services_past_the_cap_share_a_retry_budget(monkeypatch: Any) -> None:
    monkeypatch.setattr(router_mod, "MAX_SERVICE_ENTRIES", 1)
    monkeypatch.setattr(_Unavailable, "calls", 0)
    names = [f"s{i}".encode() for i in range(21)]

    async def main() -> None:
        cfg = load_config(CFG, source="test").routers[0]
        conn = conn_for(cfg)
        async with trio.open_nursery() as nursery:
            router = stub_router(cfg, nursery, _Unavailable, metrics=MetricsRegistry(time.monotonic))
            for name in names:
                assert (await router.handle(get_request(name), conn)).status == 503
            nursery.cancel_scope.cancel()

    trio.run(main)
    # The reserve is 10 retries per budget (1 a second over 10 s): the first service's own budget
    # and the one the other twenty share, 20 in all. A budget each would have allowed 210.
    attempts = len(names)
    assert attempts < _Unavailable.calls <= attempts + 20, _Unavailable.calls
