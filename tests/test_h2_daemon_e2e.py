"""HTTP/2 and gRPC through the real daemon: `protocol: h2` routers, real curl and grpcio clients.

Upstreams are a real grpcio server (tests.grpc_fixtures) and, for plain HTTP/2, hostproxy's own
H2Server with a trivial handler (an h2c origin that answers 200 with what it saw).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator

import grpc
import pytest
import trio

from hostproxy.h2.server import H2Server, H2ServerParams
from hostproxy.http.message import Body, Headers, Request, Response
from tests.daemonutil import curl, running_daemon
from tests.grpc_fixtures import EchoClient, GrpcTestServer

pytestmark = pytest.mark.timeout(90)

from sharedpath import COMPAT  # noqa: E402


@contextlib.asynccontextmanager
async def h2_origin(port: int = 0) -> AsyncIterator[tuple[int, list[Request]]]:
    seen: list[Request] = []

    async def handler(req: Request, _conn: object) -> Response:
        await req.body.read_all()
        seen.append(req)
        body = json.dumps(
            {
                "path": req.target,
                "authority": req.authority,
                "headers": {k.decode(): v.decode() for k, v in req.headers.items()},
            }
        ).encode()
        return Response(200, b"OK", Headers([(b"content-type", b"application/json")]), Body.from_bytes(body))

    server = H2Server(handler, H2ServerParams(ip="127.0.0.1", port=port))
    async with trio.open_nursery() as nursery:
        addrs = await nursery.start(server.serve)
        yield addrs[0][1], seen
        nursery.cancel_scope.cancel()


def h2_config(dtab: str, identifier: str = "") -> str:
    return f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: h2
  label: h2
  dtab: |
    {dtab}
{identifier}
  servers:
  - {{ip: 127.0.0.1, port: 0}}
"""


async def call(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))


async def test_curl_h2_prior_knowledge_routes_by_authority() -> None:
    async with h2_origin() as (port, _seen):  # noqa: SIM117 (the daemon's dtab needs the origin's port)
        async with running_daemon(h2_config(f"/svc/web => /$/inet/127.0.0.1/{port};")) as d:
            r = await curl(
                f"http://127.0.0.1:{d.port('h2')}/hello?x=1", "--http2-prior-knowledge", "-H", "Host: web"
            )
            assert r.status == 200, r
            got = json.loads(r.body)
            assert got["path"] == "/hello?x=1"
            assert got["headers"]["l5d-dst-service"] == "/svc/web"
            assert got["headers"]["l5d-dst-client"] == f"/$/inet/127.0.0.1/{port}"
            # A name with no route: an l5d-err response, not a bare reset.
            r = await curl(f"http://127.0.0.1:{d.port('h2')}/", "--http2-prior-knowledge", "-H", "Host: nope")
            assert r.status == 502 and (r.l5d_err or "").startswith("Unable to route request!")


async def test_grpc_through_the_daemon_by_path_identifier() -> None:
    ident = "  identifier:\n    kind: io.l5d.header.path\n    segments: 1\n"
    with GrpcTestServer() as grpc_server:
        dtab = (
            f"/srv => /$/inet/127.0.0.1/{grpc_server.port}; /grpc => /srv; "
            "/svc => /$/io.buoyant.http.domainToPathPfx/grpc;"
        )
        async with running_daemon(h2_config(dtab, ident)) as d:
            client = EchoClient(f"127.0.0.1:{d.port('h2')}")
            try:
                assert await call(client.unary, b"hello", timeout=10) == b"hello"
                streamed = await call(lambda: list(client.server_stream(b"3", timeout=10)))
                assert len(streamed) >= 1
                with pytest.raises(grpc.RpcError) as err:
                    await call(client.unary, b"fail-now", timeout=10)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            finally:
                client.close()
            metrics = (await curl(f"{d.admin}/admin/metrics.json")).json()
            assert isinstance(metrics, dict)
            keys = [k for k in metrics if k.startswith("rt/h2/service/") and k.endswith("/requests")]
            assert keys == ["rt/h2/service/svc/test.Echo/requests"], keys
            assert metrics[keys[0]] >= 3


async def test_grpc_unreachable_upstream_is_unavailable_with_the_reason() -> None:
    ident = "  identifier:\n    kind: io.l5d.header.path\n    segments: 1\n"
    async with running_daemon(h2_config("/svc => /$/inet/127.0.0.1/1;", ident)) as d:
        client = EchoClient(f"127.0.0.1:{d.port('h2')}")
        try:
            with pytest.raises(grpc.RpcError) as err:
                await call(client.unary, b"x", timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "Unable to establish connection to 127.0.0.1:1" in (err.value.details() or "")
        finally:
            client.close()


async def test_compat_perf_baseline_h2_config_routes() -> None:
    text = (COMPAT / "perf-baseline__linkerd1-perf__linkerd1-perf-1.yaml").read_text()
    text = re.sub(r"port: \d+", "port: 0", text.replace("0.0.0.0", "127.0.0.1"))
    try:
        origin = h2_origin(8080)
        port, seen = await origin.__aenter__()
    except OSError:
        pytest.fail("127.0.0.1:8080 is taken; the compat config's dtab names that port")
    try:
        async with running_daemon(text) as d:
            r = await curl(
                f"http://127.0.0.1:{d.port('h2')}/", "--http2-prior-knowledge", "-H", "Host: anything"
            )
            assert r.status == 200
            assert seen[-1].headers.get(b"l5d-dst-client") == b"/$/inet/127.1/8080"
    finally:
        await origin.__aexit__(None, None, None)


async def test_diagnostic_trace_over_h2() -> None:
    """TRACE with l5d-add-context on an h2 router: the origin's body, then the router's account."""
    async with h2_origin() as (port, seen):  # noqa: SIM117 (the daemon's dtab needs the origin's port)
        async with running_daemon(h2_config(f"/svc/web => /$/inet/127.0.0.1/{port};")) as d:
            url = f"http://127.0.0.1:{d.port('h2')}/t"
            base = (
                "--http2-prior-knowledge",
                "-X",
                "TRACE",
                "-H",
                "Host: web",
                "-H",
                "l5d-add-context: true",
            )
            r = await curl(url, *base, "-H", "Max-Forwards: 1")
            assert r.status == 200, r
            origin, context = r.body.decode().split("\n\n--- Router: h2 ---\n")
            assert json.loads(origin)["headers"]["max-forwards"] == "0"
            assert f"client name: /$/inet/127.0.0.1/{port}\n" in context
            assert f"selected address: 127.0.0.1:{port}\n" in context
            assert context.endswith(
                f"  /svc/web\n  /$/inet/127.0.0.1/{port} (/svc/web=>/$/inet/127.0.0.1/{port})\n"
            )
            assert len(seen) == 1
            r = await curl(url, *base, "-H", "Max-Forwards: 0")
            assert r.status == 200 and r.body.decode().startswith("\n\n--- Router: h2 ---\n"), r
            assert len(seen) == 1  # answered by the router
