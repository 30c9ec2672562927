"""HTTP/2 and gRPC for ``protocol: h2`` routers: a server and an upstream pool that speak the same
``Request``/``Response``/``Body`` types as the HTTP/1.1 ones, hardened against HTTP/2 floods."""

from hostproxy.h2.grpc import grpc_error_response, is_grpc
from hostproxy.h2.limits import FloodGuard, FrameScanner, H2Limits, TokenBucket, Verdict
from hostproxy.h2.server import H2Server, H2ServerParams
from hostproxy.h2.upstream import H2ClientSettings, H2StreamReset, H2UpstreamPool

__all__ = [
    "FloodGuard",
    "FrameScanner",
    "H2ClientSettings",
    "H2Limits",
    "H2Server",
    "H2ServerParams",
    "H2StreamReset",
    "H2UpstreamPool",
    "TokenBucket",
    "Verdict",
    "grpc_error_response",
    "is_grpc",
]
