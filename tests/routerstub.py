"""A router with no sockets for in-process tests of ``HttpRouter.handle``: a stub upstream pool that
answers after one checkpoint, the connection a router's first server would see, and the router."""

from __future__ import annotations

import random
import time
from typing import Any

import trio

from hostproxy.daemon import server_params
from hostproxy.http.message import Body, Headers, Request, Response
from hostproxy.http.server import ConnInfo
from hostproxy.metrics import MetricsRegistry
from hostproxy.router import HttpRouter


class StubPool:
    """Stands in for ``UpstreamPool``: each request is answered by :meth:`answer` after a checkpoint
    (by default 200 with ``x-port: <the endpoint's port>`` and the body ``hi``)."""

    def __init__(self, host: str, port: int, params: Any, *, nursery: Any = None, **kw: Any) -> None:
        self.port = port

    async def request(self, req: Request) -> Response:
        await trio.lowlevel.checkpoint()
        return self.answer(req)

    def answer(self, req: Request) -> Response:
        return Response(200, b"OK", Headers([(b"x-port", str(self.port).encode())]), Body.from_bytes(b"hi"))

    def statistics(self) -> dict[str, int]:
        return {}

    async def aclose(self) -> None:
        pass


def conn_for(cfg: Any) -> ConnInfo:
    """The connection a request to the router's first server arrives on."""
    params = server_params(cfg, cfg.servers[0], cfg.label, 1.0)
    server = cfg.servers[0]
    return ConnInfo(peer=("127.0.0.1", 5555), local=(server.ip, server.port), params=params, connection_id=1)


def stub_router(
    cfg: Any,
    nursery: trio.Nursery,
    pool: type[StubPool] = StubPool,
    *,
    metrics: MetricsRegistry | None = None,
    seed: int = 3,
    **kw: Any,
) -> HttpRouter:
    """A router for ``cfg`` (a loaded router config) whose clients use ``pool``."""
    return HttpRouter(
        cfg,
        namers=[],
        resolver=None,
        metrics=metrics if metrics is not None else MetricsRegistry(time.monotonic),
        nursery=nursery,
        rng=random.Random(seed),
        pool_factory=pool,
        **kw,
    )


def get_request(host: bytes = b"web") -> Request:
    return Request("GET", "/", Headers([(b"host", host)]), Body.empty(), authority=host.decode())
