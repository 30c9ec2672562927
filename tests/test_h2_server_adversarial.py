"""Adversarial tests of the HTTP/2 server side: what a client can make one connection hold, how a
malformed request is refused, and what a client speaking the wrong protocol is told.

Real servers on loopback, real clients (raw frames through the ``h2`` library and hyperframe, curl).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import h2.events
import h2.settings
import pytest
import trio

from hostproxy.h2 import H2Server, H2ServerParams
from hostproxy.http.message import Body, Headers, Request, Response
from tests.grpc_fixtures.rawh2 import RawClient

pytestmark = pytest.mark.timeout(60)


async def echo_target(req: Request, _info: object) -> Response:
    """An origin whose response carries a header made from the request's target (unique per request)."""
    await req.body.read_all()
    return Response(
        200,
        headers=Headers([(b"x-target", req.target.encode() * 4)]),
        body=Body.from_bytes(b"ok"),
    )


@contextlib.asynccontextmanager
async def serving(handler: object, params: H2ServerParams | None = None) -> AsyncIterator[int]:
    server = H2Server(handler, params or H2ServerParams())  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        [(_, port)] = await nursery.start(server.serve)
        yield port
        nursery.cancel_scope.cancel()


# -- HPACK state a client can make the server hold ------------------------------------------------


async def test_a_client_advertising_a_huge_header_table_does_not_make_the_server_keep_its_headers() -> None:
    """A client may advertise SETTINGS_HEADER_TABLE_SIZE up to 4 GiB. The server's encoder keeps each
    distinct field it sends in that table, so without a cap a long-lived connection whose responses
    carry distinct values (request ids, echoes, dates) grows without bound. The client's decoder
    mirrors the server's encoder table exactly, so its size is what the server holds."""
    async with serving(echo_target) as port, RawClient.connect(port) as c:
        huge = 1 << 30
        c.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.HEADER_TABLE_SIZE: huge}
        )
        c.conn.decoder.max_allowed_table_size = huge
        await c.start()
        for i in range(300):
            sid = await c.request(f"/distinct-{i:05d}", port)
            status, body, _ = await c.response(sid)
            assert (status, body) == (200, b"ok")
        table = c.conn.decoder.header_table
        assert table.maxsize <= 4096, table.maxsize
        assert table._current_size <= 4096, table._current_size
