"""HTTP/1.1 for hostproxy: message types, a sans-I/O codec, the trio server and upstream pools.

Public API (see each module's docstring):

- ``message``: ``Headers``, ``Body``, ``Request``, ``Response``
- ``server``: ``Http1Server(handler, params)``, ``ServerParams``, ``ConnInfo``
- ``upstream``: ``UpstreamPool(host, port, params)``, ``PoolParams``
- ``errors``: ``error_response``, ``UpstreamError`` and subclasses, ``CAUSE_STATUS``
"""

from hostproxy.http.errors import (
    CAUSE_STATUS,
    ConnectError,
    PoolExhausted,
    ProxyInternalError,
    RequestTimeout,
    UpstreamError,
    UpstreamReset,
    error_response,
    response_for_exception,
)
from hostproxy.http.message import Body, Headers, Request, Response
from hostproxy.http.server import ConnInfo, Handler, Http1Server, ServerParams
from hostproxy.http.upstream import PoolParams, UpstreamPool

__all__ = [
    "CAUSE_STATUS",
    "Body",
    "ConnInfo",
    "ConnectError",
    "Handler",
    "Headers",
    "Http1Server",
    "PoolParams",
    "PoolExhausted",
    "ProxyInternalError",
    "Request",
    "RequestTimeout",
    "Response",
    "ServerParams",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamReset",
    "error_response",
    "response_for_exception",
]
