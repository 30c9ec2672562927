"""An ``H2Server`` forwarding every stream to one upstream through one ``H2UpstreamPool``, with
proxy-generated errors converted for gRPC clients (what the router does for ``protocol: h2``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import trio

from hostproxy.h2 import H2ClientSettings, H2Server, H2ServerParams, H2UpstreamPool
from hostproxy.http.errors import UpstreamError, response_for_exception
from hostproxy.http.message import Request, Response


@dataclass
class H2Proxy:
    port: int
    server: H2Server
    pool: H2UpstreamPool


@contextlib.asynccontextmanager
async def running_h2_proxy(
    upstream_port: int,
    params: H2ServerParams | None = None,
    settings: H2ClientSettings | None = None,
    handler: Any = None,
) -> AsyncIterator[H2Proxy]:
    async with H2UpstreamPool("127.0.0.1", upstream_port, settings=settings) as pool:

        async def forward(request: Request, info: Any) -> Response:
            if handler is not None:
                return await handler(request, info, pool)  # type: ignore[no-any-return]
            try:
                return await pool.request(request)
            except UpstreamError as exc:
                return response_for_exception(exc)

        server = H2Server(forward, params or H2ServerParams())
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(server.serve)
            try:
                yield H2Proxy(addresses[0][1], server, pool)
            finally:
                nursery.cancel_scope.cancel()
