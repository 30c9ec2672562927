"""A real grpcio test service (generic handlers over raw bytes; no generated stubs) and helpers.

Service ``test.Echo``:

==================  =================================================================================
``Unary``           echoes the request; a request starting with ``fail`` aborts with
                    INVALID_ARGUMENT and the message ``bad request: <payload>``
``ServerStream``    the request is a decimal count N (and optional ``:delay_ms``): N messages
                    ``msg-<i>``, ``delay_ms`` apart
``ClientStream``    the concatenation of every request message
``Bidi``            echoes each message as it arrives, upper-cased
``Slow``            waits up to 30 s for cancellation; records whether the call was cancelled
==================  =================================================================================
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc

SERVICE = "test.Echo"


@dataclass
class ServiceState:
    cancelled: threading.Event = field(default_factory=threading.Event)
    slow_started: threading.Event = field(default_factory=threading.Event)
    calls: int = 0


def _handlers(state: ServiceState) -> grpc.GenericRpcHandler:
    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        state.calls += 1
        if request.startswith(b"fail"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad request: {request.decode()}")
        return request

    def server_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        state.calls += 1
        count, _, delay = request.decode().partition(":")
        for i in range(int(count)):
            if delay:
                time.sleep(int(delay) / 1000)
            yield f"msg-{i}".encode()

    def client_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        state.calls += 1
        return b"".join(requests)

    def bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        state.calls += 1
        for r in requests:
            yield r.upper()

    def slow(request: bytes, context: grpc.ServicerContext) -> bytes:
        state.calls += 1
        state.slow_started.set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not context.is_active():
                state.cancelled.set()
                return b""
            time.sleep(0.01)
        return b"slow"

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
            "Slow": grpc.unary_unary_rpc_method_handler(slow),
        },
    )


class GrpcTestServer:
    """``with GrpcTestServer() as srv:`` serves ``test.Echo`` on 127.0.0.1:``srv.port``."""

    def __init__(self) -> None:
        self.state = ServiceState()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers((_handlers(self.state),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def __enter__(self) -> GrpcTestServer:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(grace=None).wait(5)


class EchoClient:
    """Raw-bytes stubs for ``test.Echo`` over an insecure channel to ``target``."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        path = f"/{SERVICE}/"
        self.unary = self.channel.unary_unary(path + "Unary")
        self.server_stream = self.channel.unary_stream(path + "ServerStream")
        self.client_stream = self.channel.stream_unary(path + "ClientStream")
        self.bidi = self.channel.stream_stream(path + "Bidi")
        self.slow = self.channel.unary_unary(path + "Slow")

    def close(self) -> None:
        self.channel.close()
