"""Errors of the HTTP layer and the responses the proxy generates for them.

Theory of operation
-------------------
Every failure the proxy reports to a client carries a *cause* from a small taxonomy, used for the
status code, for metrics and for logs:

=====================  ======  ===============================================================
cause                  status  meaning
=====================  ======  ===============================================================
``connect/refused``    502     the upstream refused the TCP connection
``connect/timeout``    502     the TCP connection was not established within connect_timeout
``connect/unreachable`` 502    no route to the upstream (network or host unreachable)
``tls``                502     the TLS handshake with the upstream failed (unknown CA, name
                               mismatch, expired, no client certificate...)
``upstream/reset``     502     the upstream closed or reset the connection mid-exchange, or
                               sent a response we could not parse
``timeout/request``    503     the upstream did not answer within the request timeout
``timeout/attempt``    503     one attempt exceeded ``requestAttemptTimeoutMs``
``overload``           503     ``maxConcurrentRequests`` reached on this server, an endpoint's
                               connection pool full (``maxSize`` and ``maxWaiters``), or hostproxy
                               out of file descriptors or socket memory (``OutOfResources``)
``bad-request``        400     the request was malformed (or a proxy loop was detected)
``no-route``           502     the router could not route the request
``proxy/internal``     502     a bug: an unexpected exception in the proxy
=====================  ======  ===============================================================

Upstream code raises ``UpstreamError`` subclasses (translated from ``OSError`` and friends once, at
the I/O edge); ``error_response`` turns a status, cause and message into a Linkerd-style response:
the message URL-encoded in ``l5d-err`` (``+`` for spaces, ISO-8859-1, as Java's ``URLEncoder``) and
repeated as a ``text/plain`` body.
"""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Iterable
from urllib.parse import quote_plus

from hostproxy.http.message import Body, Headers, Response

__all__ = [
    "h2_refusal",
    "CAUSE_STATUS",
    "ConnectError",
    "OutOfResources",
    "PoolExhausted",
    "ProxyInternalError",
    "RequestBodyError",
    "RequestTimeout",
    "UpstreamError",
    "UpstreamReset",
    "cleared_context_response",
    "error_response",
    "out_of_resources",
    "request_body_error_response",
    "request_body_timeout_response",
    "response_for_exception",
    "without_context_fields",
]


def h2_refusal(error_code: int, text: bytes) -> bytes:
    """What a port that will not speak HTTP/2 sends to an HTTP/2 client's connection preface: an empty
    SETTINGS frame (the server preface the client waits for), then GOAWAY (last stream 0,
    ``error_code``) whose debug data ``text`` says what to do instead."""
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    goaway = (len(text) + 8).to_bytes(3, "big") + b"\x07\x00\x00\x00\x00\x00"
    return settings + goaway + (0).to_bytes(4, "big") + error_code.to_bytes(4, "big") + text


CAUSE_STATUS: dict[str, int] = {
    "connect/refused": 502,
    "connect/timeout": 502,
    "connect/unreachable": 502,
    "tls": 502,
    "upstream/reset": 502,
    "timeout/request": 503,
    "timeout/attempt": 503,
    "overload": 503,
    "bad-request": 400,
    "no-route": 502,
    "proxy/internal": 502,
}

REASONS: dict[int, bytes] = {
    400: b"Bad Request",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
}

DEFAULT_MAX_ERR_HEADER_BYTES = 8 * 1024
DEFAULT_MAX_ERR_BODY_BYTES = 5120 * 1024


class UpstreamError(Exception):
    """A request to an upstream failed.  ``cause`` is from the taxonomy above; ``endpoint`` is
    ``"host:port"``; ``retryable`` is True when no byte of the request reached the upstream and no
    byte of its body was read, so sending it again (elsewhere) cannot duplicate or truncate it."""

    cause = "proxy/internal"
    #: The failure was hostproxy's own (its resources), not the endpoint's: never counted against it.
    local = False
    #: The endpoint's connection pool refused the request at its own limits (``maxSize`` and
    #: ``maxWaiters``): the endpoint was never asked, and sending it there again at once is pointless.
    pool_full = False

    def __init__(self, message: str, *, endpoint: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.retryable = retryable


class ConnectError(UpstreamError):
    """The connection could not be established; the request was never sent (always retryable)."""

    def __init__(self, message: str, *, endpoint: str, cause: str) -> None:
        super().__init__(message, endpoint=endpoint, retryable=True)
        self.cause = cause


class UpstreamReset(UpstreamError):
    cause = "upstream/reset"


class RequestTimeout(UpstreamError):
    cause = "timeout/request"


class ProxyInternalError(UpstreamError):
    cause = "proxy/internal"


class PoolExhausted(UpstreamError):
    """The endpoint's pool is at ``maxSize`` with ``maxWaiters`` requests already waiting: refused
    before any byte was sent (retryable)."""

    cause = "overload"
    pool_full = True

    def __init__(self, message: str, *, endpoint: str) -> None:
        super().__init__(message, endpoint=endpoint, retryable=True)


class OutOfResources(UpstreamError):
    """hostproxy could not open a connection for want of its own resources (file descriptors,
    socket memory): the request was never sent, and it is not the endpoint's doing."""

    cause = "overload"
    local = True

    def __init__(self, message: str, *, endpoint: str) -> None:
        super().__init__(message, endpoint=endpoint, retryable=True)


#: ``errno``s of a connect that failed for want of hostproxy's own resources (or its host's), with
#: what to do.
_OUT_OF = {
    errno.EMFILE: (
        "hostproxy is out of file descriptors{limit}; raise its limit (LimitNOFILE= in the systemd unit, "
        "ulimit -n) or look for a connection leak (the connections and pool_size of each client in /admin/metrics.json)"
    ),
    errno.ENFILE: "the host is out of file descriptors (fs.file-max); find the process holding them",
    errno.ENOBUFS: "the kernel is out of socket memory on this host (net.core/ipv4 memory limits)",
    errno.ENOMEM: "the kernel is out of socket memory on this host (net.core/ipv4 memory limits)",
    errno.EADDRNOTAVAIL: (
        "no local port is free for it (ephemeral ports used up, often by connections in TIME_WAIT); "
        "widen net.ipv4.ip_local_port_range, or keep upstream connections alive longer "
        "(client.hostConnectionPool idleTimeMs, maxSize)"
    ),
}


def out_of_resources(errnos: set[int], endpoint: str) -> OutOfResources | None:
    """The error for a connect to ``endpoint`` that failed with one of ``errnos`` when one of them
    says hostproxy (or its host) ran out of a resource; None otherwise. EADDRNOTAVAIL is also what
    an address the host cannot reach from any of its own gives (``::1`` where IPv6 is off, as in
    many containers, for a name such as ``localhost``): beside another address's answer (refused,
    unreachable) it is that, and the endpoint's failure stands."""
    for code, advice in _OUT_OF.items():
        if code in errnos:
            if code == errno.EADDRNOTAVAIL and len(errnos) > 1:
                continue
            limit = ""
            if code == errno.EMFILE:
                soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
                limit = f" (limit {soft})" if soft != resource.RLIM_INFINITY else ""
            return OutOfResources(
                f"hostproxy cannot open a connection to {endpoint}: {os.strerror(code)}: "
                + advice.format(limit=limit),
                endpoint=endpoint,
            )
    return None


class PoolWaitTimeout(ConnectError):
    """The endpoint's pool stayed at ``maxSize`` connections in use for the whole connect timeout:
    cause ``connect/timeout``, the request unsent (retryable)."""

    pool_full = True

    def __init__(self, message: str, *, endpoint: str) -> None:
        super().__init__(message, endpoint=endpoint, cause="connect/timeout")


def error_response(
    status: int,
    cause: str,
    message: str,
    *,
    max_header_bytes: int = DEFAULT_MAX_ERR_HEADER_BYTES,
    max_body_bytes: int = DEFAULT_MAX_ERR_BODY_BYTES,
    retryable: bool | None = None,
    close: bool = False,
) -> Response:
    """A proxy-generated error response: ``l5d-err`` + ``text/plain`` body, both capped in size.

    ``retryable`` adds ``l5d-retryable: true|false``; ``close`` asks the server to close the client
    connection after the response (used when the request's framing cannot be trusted).
    """
    encoded = quote_plus(message, safe="", encoding="iso-8859-1", errors="replace").encode("ascii")
    if len(encoded) > max_header_bytes:
        encoded = encoded[:max_header_bytes]
        # Never cut a %XX escape in half.
        pct = encoded.rfind(b"%", max(0, len(encoded) - 2))
        if pct != -1:
            encoded = encoded[:pct]
    body = message.encode("utf-8", "replace")[:max_body_bytes]
    headers = Headers._trusted(
        [
            (b"l5d-err", encoded),
            (b"content-type", b"text/plain; charset=utf-8"),
        ]
    )
    if retryable is not None:
        headers.add(b"l5d-retryable", b"true" if retryable else b"false")
    if close:
        headers.add(b"connection", b"close")
    return Response(
        status=status,
        reason=REASONS.get(status, b""),
        headers=headers,
        body=Body.from_bytes(body),
        error_cause=cause,
    )


class RequestBodyError(Exception):
    """The client's request body failed: malformed (a bad chunk), cut short, or stalled past
    ``requestBodyTimeoutMs``. The client's doing, never the upstream's: answered 400 (when the client
    is still there) and never counted against an endpoint. ``client_gone``: the client left."""

    def __init__(self, message: str, *, client_gone: bool = False) -> None:
        super().__init__(message)
        self.client_gone = client_gone


def request_body_error_response(exc: RequestBodyError) -> Response:
    """400 for a request whose body failed; the connection closes (its framing cannot be trusted)."""
    return error_response(400, "bad-request", f"the request body failed: {exc}", close=True)


def request_body_timeout_response(message: str) -> Response:
    """408 for a request whose body did not arrive before the request's deadline (the client's
    doing, as a body error); the connection closes (the rest of the body is never read)."""
    return error_response(408, "bad-request", message, close=True)


def response_for_exception(exc: BaseException) -> Response:
    """The response for an exception that escaped a handler: ``UpstreamError`` by its cause, a failed
    request body as 400, anything else as ``proxy/internal`` (the caller logs those with a traceback)."""
    if isinstance(exc, RequestBodyError):
        return request_body_error_response(exc)
    if isinstance(exc, UpstreamError):
        status = CAUSE_STATUS.get(exc.cause, 502)
        return error_response(status, exc.cause, str(exc), retryable=exc.retryable)
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return error_response(502, "proxy/internal", f"Internal proxy error: {text}")


def without_context_fields(fields: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``fields`` less the ``l5d-*`` ones: what a ``clearContext`` server sends of a head or a trailer
    section other than a final response's head (that one: :func:`cleared_context_response`)."""
    return [(n, v) for n, v in fields if not n.startswith(b"l5d-")]


async def cleared_context_response(response: Response) -> Response:
    """``response`` as a server with ``clearContext: true`` sends it (Linkerd's ``ClearContext``): no
    ``l5d-*`` header, and no body when it carried ``l5d-err`` (a proxy error, here or downstream,
    whose text names services, dtabs and addresses that untrusted callers must not see). Its
    status stays. The emptied body is closed (an upstream's: its connection is let go)."""
    headers = response.headers
    had_err = False
    for name, _ in headers:
        if name.startswith(b"l5d-"):
            break
    else:
        return response  # (the usual case: nothing to clear)
    kept: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name.startswith(b"l5d-"):
            had_err = had_err or name == b"l5d-err"
        else:
            kept.append((name, value))
    response.headers = Headers._stripped(kept) if headers.hop_free else Headers._trusted(kept)
    if had_err:
        body, response.body = response.body, Body.from_bytes(b"")
        response.headers.remove(b"content-length")
        if not body.done:
            await body.aclose()
    return response
