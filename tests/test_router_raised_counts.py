"""A request that raises inside the router (its client went away while it waited on the upstream,
or the proxy failed) is counted as finished everywhere it was counted as started: its server, its
service and its client each end with nothing pending and one proxy/internal failure."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

from hostproxy.config.validate import load_config
from hostproxy.http.message import Request, Response
from hostproxy.metrics import MetricsRegistry
from tests.routerstub import StubPool, conn_for, get_request, stub_router

CFG = """
routers:
- protocol: http
  label: raised
  dtab: /svc => /$/inet/127.0.0.1/9001;
  servers: [{ip: 127.0.0.1, port: 4140}]
"""


class _Pool(StubPool):
    """Answers the first request; the next one fails as ``mode`` says."""

    mode = "cancel"
    calls = 0

    async def request(self, req: Request) -> Response:
        self.calls += 1
        if self.calls > 1:
            if _Pool.mode == "cancel":
                await trio.sleep_forever()
            raise RuntimeError("proxy bug")
        return await super().request(req)


def _values(metrics: MetricsRegistry) -> dict[str, Any]:
    out = {}
    for m in metrics.metrics():
        obj = m.obj
        out[m.key] = obj.value if hasattr(obj, "value") else obj.read() if hasattr(obj, "read") else None
    return out


@pytest.mark.parametrize("mode", ["cancel", "error"])
def test_a_request_that_raises_finishes_in_every_scope(mode: str, monkeypatch: Any) -> None:
    monkeypatch.setattr(_Pool, "mode", mode)
    metrics = MetricsRegistry(time.monotonic)

    async def main() -> None:
        cfg = load_config(CFG, source="test").routers[0]
        conn = conn_for(cfg)
        async with trio.open_nursery() as nursery:
            router = stub_router(cfg, nursery, _Pool, metrics=metrics)
            assert (await router.handle(get_request(), conn)).status == 200
            if mode == "cancel":
                with trio.move_on_after(0.05):  # the client went away while the upstream was slow
                    await router.handle(get_request(), conn)
            else:
                with pytest.raises(RuntimeError):
                    await router.handle(get_request(), conn)
            nursery.cancel_scope.cancel()

    trio.run(main)
    values = _values(metrics)
    for scope in ("server/127.0.0.1/4140", "service/svc/web", "client/$/inet/127.0.0.1/9001"):
        prefix = f"rt/raised/{scope}"
        assert values[f"{prefix}/requests"] == 2, scope
        assert values[f"{prefix}/success"] == 1, scope
        assert values[f"{prefix}/failures/proxy/internal"] == 1, scope
        assert values.get(f"{prefix}/pending", 0) == 0, scope
