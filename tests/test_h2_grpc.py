"""gRPC through the HTTP/2 proxy with a real grpcio server and client: every call shape,
deadlines, cancellation, error statuses, and the proxy's own errors as readable grpc-status."""

from __future__ import annotations

import grpc
import pytest
import trio

from tests.grpc_fixtures import EchoClient, GrpcTestServer
from tests.grpc_fixtures.h2proxy import running_h2_proxy

pytestmark = pytest.mark.timeout(60)


async def call(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))


@pytest.fixture
def grpc_server():  # type: ignore[no-untyped-def]
    with GrpcTestServer() as srv:
        yield srv


async def test_unary_and_error_status(grpc_server: GrpcTestServer) -> None:
    async with running_h2_proxy(grpc_server.port) as proxy:
        client = EchoClient(f"127.0.0.1:{proxy.port}")
        try:
            assert await call(client.unary, b"hello", timeout=10) == b"hello"
            big = bytes(range(256)) * 1024  # 256 KiB: larger than any flow-control window
            assert await call(client.unary, big, timeout=10) == big
            with pytest.raises(grpc.RpcError) as err:
                await call(client.unary, b"fail-now", timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details() == "bad request: fail-now"
        finally:
            client.close()


async def test_server_client_and_bidi_streaming(grpc_server: GrpcTestServer) -> None:
    async with running_h2_proxy(grpc_server.port) as proxy:
        client = EchoClient(f"127.0.0.1:{proxy.port}")
        try:
            msgs = await call(lambda: list(client.server_stream(b"500", timeout=20)))
            assert msgs == [f"msg-{i}".encode() for i in range(500)]
            parts = [b"a" * 1000, b"b" * 70000, b"c"]
            assert await call(client.client_stream, iter(parts), timeout=10) == b"".join(parts)
            out = await call(lambda: list(client.bidi(iter([b"x", b"yz", b"w" * 100000]), timeout=10)))
            assert out == [b"X", b"YZ", b"W" * 100000]
        finally:
            client.close()


async def test_deadline_exceeded_and_cancel_reach_the_upstream(grpc_server: GrpcTestServer) -> None:
    async with running_h2_proxy(grpc_server.port) as proxy:
        client = EchoClient(f"127.0.0.1:{proxy.port}")
        try:
            with pytest.raises(grpc.RpcError) as err:
                await call(client.slow, b"x", timeout=0.5)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # The client's RST_STREAM was passed on: the upstream handler saw its call cancelled.
            assert await call(grpc_server.state.cancelled.wait, 10)

            grpc_server.state.cancelled.clear()
            grpc_server.state.slow_started.clear()
            future = client.slow.future(b"y", timeout=30)
            assert await call(grpc_server.state.slow_started.wait, 10)
            future.cancel()
            assert await call(grpc_server.state.cancelled.wait, 10)
            # The cancelling client kept its connection and is still served.
            assert await call(client.unary, b"after", timeout=10) == b"after"
            assert proxy.server.statistics()["client_resets"] >= 2
            assert proxy.server.statistics()["flood_goaways"] == {}
        finally:
            client.close()


async def test_many_cancellations_keep_the_connection(grpc_server: GrpcTestServer) -> None:
    async with running_h2_proxy(grpc_server.port) as proxy:
        client = EchoClient(f"127.0.0.1:{proxy.port}")
        try:
            for _ in range(30):
                with pytest.raises(grpc.RpcError) as err:
                    await call(client.slow, b"x", timeout=0.05)
                assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert await call(client.unary, b"still", timeout=10) == b"still"
            stats = proxy.server.statistics()
            assert stats["flood_goaways"] == {}
            assert stats["connections_total"] == 1
        finally:
            client.close()


async def test_unreachable_upstream_is_unavailable_with_message() -> None:
    with GrpcTestServer() as srv:
        port = srv.port
    # The server is stopped: connecting to its port is refused.
    async with running_h2_proxy(port) as proxy:
        client = EchoClient(f"127.0.0.1:{proxy.port}")
        try:
            with pytest.raises(grpc.RpcError) as err:
                await call(client.unary, b"x", timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert err.value.details().startswith(f"Unable to establish connection to 127.0.0.1:{port}")
        finally:
            client.close()
