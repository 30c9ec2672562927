"""The sans-I/O HTTP/1.1 codec interface (bytes in, events out) and the selected implementation.

Theory of operation
-------------------
The trio code never talks to a parser directly: it feeds received bytes to a codec with
``receive_data`` (``b""`` means EOF), pulls our own event types from ``next_event``, and asks the
codec for the bytes of what it wants to send.

Events: ``RequestHead`` / ``ResponseHead`` / ``Informational`` (1xx) / ``Data`` / ``EndOfMessage``
(with trailers) / ``ConnectionClosed``, or the ``NEED_DATA`` and ``PAUSED`` sentinels.  A peer that
breaks HTTP/1.1 raises ``ProtocolError`` (with the status a server answers: 400, 414, 431; 502 on
the client side); asking to send something HTTP/1.1 forbids raises ``LocalProtocolError``.

Two implementations give the same events, errors and framing decisions:

* ``codec_fast`` (the default): llhttp through ``httptools`` tokenises header fields in C; the
  start lines, framing and state are a small Python state machine.
* ``codec_h11``: the reference on h11, against which the fast codec is differential-tested.

The environment variable ``HOSTPROXY_HTTP1_CODEC`` selects one when this module is first imported:
``fast`` (or unset) or ``h11``; any other value is an error.  Both modules stay importable, so tests
can drive either directly.

Hardening on the server side, the same in both: request line longer than ``max_initial_line`` →
414; head longer than ``max_headers`` or more than ``max_header_count`` fields → 431; bare LF or
bare CR as a line terminator, NUL anywhere, obs-fold → 400; ``Content-Length`` together with
``Transfer-Encoding``, any ``Transfer-Encoding`` but exactly ``chunked``, differing duplicate
``Content-Length``, bad chunk framing, a missing ``Host`` on HTTP/1.1 → 400.  Pipelined requests
stay buffered until ``start_next_cycle`` and go through the same checks.

On the client side (``ProtocolError`` with 502): a status line longer than ``max_initial_line``, a
field block longer than ``max_headers`` or more than ``max_header_count`` fields (a 1xx head too), a
control byte other than HTAB in the reason phrase, a ``101`` to a request that proposed no upgrade.
A response framed by the close, or with both ``Content-Length`` and ``Transfer-Encoding``, is read
(by its chunks) but leaves ``can_reuse`` false.
"""

from __future__ import annotations

import os

from hostproxy.http.codec_base import (
    NEED_DATA,
    PAUSED,
    CodecLimits,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    HeaderList,
    Informational,
    LocalProtocolError,
    ProtocolError,
    RequestHead,
    ResponseHead,
)

__all__ = [
    "CODEC_NAME",
    "NEED_DATA",
    "PAUSED",
    "ClientCodec",
    "CodecLimits",
    "ConnectionClosed",
    "Data",
    "EndOfMessage",
    "Event",
    "HeaderList",
    "Informational",
    "LocalProtocolError",
    "ProtocolError",
    "RequestHead",
    "ResponseHead",
    "ServerCodec",
]

CODEC_NAME = os.environ.get("HOSTPROXY_HTTP1_CODEC", "fast").strip().lower() or "fast"

if CODEC_NAME == "fast":
    from hostproxy.http.codec_fast import ClientCodec, ServerCodec
elif CODEC_NAME == "h11":
    from hostproxy.http.codec_h11 import ClientCodec, ServerCodec  # type: ignore[assignment]
else:
    raise ImportError(
        f"HOSTPROXY_HTTP1_CODEC={CODEC_NAME!r} is not a codec: use 'fast' (the default) or 'h11'"
    )


def _benchmark(rounds: int = 20_000) -> None:  # pragma: no cover - a measurement, not a test
    """``python -m hostproxy.http.codec``: CPU per parsed + serialised proxied exchange, per codec.

    One exchange is what the proxy does for a small GET: the server side parses the request and
    writes a 200 with a body; the client side writes the request upstream and parses the response.
    """
    import importlib
    import time

    request = (
        b"GET /api/v1/items?id=42 HTTP/1.1\r\nHost: svc.example\r\nUser-Agent: bench/1.0\r\n"
        b"Accept: */*\r\nAccept-Encoding: gzip\r\nX-Request-Id: 1234567890abcdef\r\n\r\n"
    )
    response = (
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n"
        b"Connection: keep-alive\r\n\r\nhello, world\n"
    )
    out_headers = [(b"content-type", b"text/plain"), (b"content-length", b"13"), (b"via", b"1.1 hostproxy")]
    for name in ("h11", "fast"):
        impl = importlib.import_module(f"hostproxy.http.codec_{name}")
        server, client = impl.ServerCodec(), impl.ClientCodec()
        start = time.process_time()
        for _ in range(rounds):
            server.receive_data(request)
            head = server.next_event()
            server.next_event()
            client.send_request(head.method, head.target, head.headers)
            client.send_end()
            client.receive_data(response)
            client.next_event()
            body = client.next_event().data
            client.next_event()
            client.start_next_cycle()
            server.send_response(200, b"OK", out_headers)
            server.send_data(body)
            server.send_end()
            server.start_next_cycle()
        per = (time.process_time() - start) / rounds * 1e6
        print(f"{name:5} {per:7.1f} µs CPU per proxied exchange (parse + serialise, both sides)")


if __name__ == "__main__":  # pragma: no cover
    _benchmark()
