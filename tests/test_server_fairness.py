"""A plaintext HTTP/1.1 connection that never has to wait still lets other tasks run every cycle."""

from __future__ import annotations

from typing import Any

import trio
from test_http_server import exchange, parse_responses
from upstreams import running_proxy

from hostproxy.http import Body, Headers, Response


async def test_pipelined_requests_answered_without_waiting_yield_once_per_cycle() -> None:
    async def answer(request: Any, info: Any, pool: Any) -> Response:
        return Response(200, b"OK", Headers(), Body.from_bytes(b"ok"))

    count = 200
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0)

    async with running_proxy(1, handler=answer) as proxy:
        requests = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * (count - 1)
        requests += b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            raw = await exchange(proxy.port, requests)
            nursery.cancel_scope.cancel()
    responses = parse_responses(raw)
    assert [status for status, _, _ in responses] == [200] * count
    assert ticks >= count // 2
