"""gRPC-aware error responses for streams the proxy answers itself.

Theory of operation
-------------------
A gRPC client reads the outcome of a call from ``grpc-status`` and ``grpc-message``, not from the
HTTP status, and most gRPC libraries report a bare RST_STREAM or a ``text/plain`` 502 as an opaque
"internal" failure.  So when the proxy itself fails a gRPC request (``content-type:
application/grpc*``), ``grpc_error_response`` rewrites the proxy-generated response (one with
``error_cause`` set, see ``hostproxy.http.errors``) into a *trailers-only* response: HTTP 200,
``content-type: application/grpc``, ``grpc-status`` chosen from the failure cause, ``grpc-message``
percent-encoded as the gRPC spec requires, the ``l5d-err`` header kept, and no body.  The HTTP/2
server sends a response with an empty body and a ``grpc-status`` header as one HEADERS frame with
END_STREAM, which is what "trailers-only" means on the wire.

Responses from an application (no ``error_cause``) and non-gRPC requests pass unchanged.
"""

from __future__ import annotations

from hostproxy.http.message import Body, Headers, Response

__all__ = [
    "GRPC_STATUS_FOR_CAUSE",
    "encode_grpc_message",
    "grpc_error_response",
    "grpc_status_for",
    "is_grpc",
]

OK = 0
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
RESOURCE_EXHAUSTED = 8
INTERNAL = 13
UNAVAILABLE = 14

#: The gRPC status for each failure cause of the taxonomy (``hostproxy.causes``).
GRPC_STATUS_FOR_CAUSE: dict[str, int] = {
    "identification": INVALID_ARGUMENT,
    "bad-request": INVALID_ARGUMENT,
    "naming/neg": UNAVAILABLE,
    "naming/failed": UNAVAILABLE,
    "naming/stale": UNAVAILABLE,
    "no-route": UNAVAILABLE,
    "connect/refused": UNAVAILABLE,
    "connect/timeout": UNAVAILABLE,
    "connect/unreachable": UNAVAILABLE,
    "tls": UNAVAILABLE,
    "upstream/reset": UNAVAILABLE,
    "overload": UNAVAILABLE,
    "timeout/request": DEADLINE_EXCEEDED,
    "timeout/attempt": DEADLINE_EXCEEDED,
    "proxy/internal": INTERNAL,
}

_MAX_MESSAGE = 4096


def is_grpc(headers: Headers) -> bool:
    """True for a gRPC request: ``content-type: application/grpc`` or ``application/grpc+…``."""
    ct = headers.get(b"content-type")
    return ct is not None and ct.lower().startswith(b"application/grpc")


def grpc_status_for(cause: str | None) -> int:
    return GRPC_STATUS_FOR_CAUSE.get(cause or "", UNAVAILABLE)


def encode_grpc_message(message: str) -> bytes:
    """Percent-encode as the gRPC HTTP/2 spec says: UTF-8, every octet outside 0x20–0x7E and ``%``."""
    out = bytearray()
    for b in message.encode("utf-8", "replace")[:_MAX_MESSAGE]:
        if 0x20 <= b <= 0x7E and b != 0x25:
            out.append(b)
        else:
            out += b"%%%02X" % b
    return bytes(out)


def grpc_error_response(request_headers: Headers, response: Response, message: str | None = None) -> Response:
    """``response`` as a trailers-only gRPC error when the request was gRPC and the proxy made it.

    ``message`` defaults to the response's ``text/plain`` body when it is in memory.
    """
    if response.error_cause is None or not is_grpc(request_headers):
        return response
    if message is None:
        message = ""
        body = response.body
        if body.in_memory and not body.done:
            chunk = body._chunk  # in-memory body: reading it never blocks
            message = (chunk or b"").decode("utf-8", "replace")
    status = grpc_status_for(response.error_cause)
    headers = Headers._trusted(
        [
            (b"content-type", b"application/grpc"),
            (b"grpc-status", str(status).encode("ascii")),
            (b"grpc-message", encode_grpc_message(message)),
        ]
    )
    for name in (b"l5d-err", b"l5d-retryable"):
        value = response.headers.get(name)
        if value is not None:
            headers.add(name, value)
    return Response(
        status=200, headers=headers, body=Body.empty(), http_version="2", error_cause=response.error_cause
    )
