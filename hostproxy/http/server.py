"""The HTTP/1.1 server: trio listeners, one task per connection, the router as a callback.

Theory of operation
-------------------
``Http1Server.serve`` binds (or is given) listeners, reports their addresses through
``task_status.started`` and runs one task per accepted connection in its own nursery.  A connection
task is a loop over request/response cycles (keep-alive, pipelining answered in order) driven by a
``ServerCodec``:

1. read a request head under deadlines: ``idle_timeout_s`` until its first byte, then
   ``request_head_timeout_s`` for the whole head (slow clients get 408 and are cut off);
2. build a ``Request``: absolute-form targets normalised (proxy mode), hop-by-hop headers dropped,
   ``Via`` appended, ``Forwarded`` added when configured; refuse ``CONNECT`` (405), proxy loops
   (400, ``maxCallDepth``) and requests beyond ``maxConcurrentRequests`` (503 at once, no queue);
3. await ``handler(request, conn_info)`` in the connection task itself (no task per request);
4. write the response, re-framed: ``Content-Length`` from ``body.content_length`` or chunked (with
   trailers), no body for ``HEAD``/204/304; a ``101`` with an ``upgraded`` stream becomes a tunnel.

The request body is pulled from the socket only as the handler (or the upstream writer) reads it,
so bodies stream both ways with backpressure.  ``Expect: 100-continue`` is answered lazily, when the
body is first read.  Malformed requests (see ``codec``) get 400/414/431 and the connection is
closed, because its framing can no longer be trusted.

Failures stay inside their connection: an exception from the handler becomes a 502
``proxy/internal`` response (logged with a traceback as ``http.handler_failed``); anything else that
escapes a connection is logged as ``http.connection_failed`` and closes only that connection.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
import trio

from hostproxy.http.codec import (
    NEED_DATA,
    PAUSED,
    CodecLimits,
    ConnectionClosed,
    Data,
    EndOfMessage,
    ProtocolError,
    RequestHead,
    ServerCodec,
)
from hostproxy.http.errors import UpstreamError, error_response, response_for_exception
from hostproxy.http.hopbyhop import strip_hop_by_hop
from hostproxy.http.message import Body, Headers, Request, Response
from hostproxy.http.proxyheaders import (
    ForwardedConfig,
    append_forwarded,
    append_via,
    forwarded_element,
    obfuscated,
    split_absolute_form,
    via_count,
)

__all__ = ["ConnInfo", "Handler", "Http1Server", "ServerParams"]

log = structlog.get_logger("hostproxy.http.server")

RECEIVE_SIZE = 64 * 1024


@dataclass(frozen=True)
class ServerParams:
    """One HTTP/1.1 server (Linkerd's ``servers[]`` entry plus the router's HTTP limits)."""

    ip: str = "127.0.0.1"
    port: int = 0
    max_concurrent_requests: int | None = None
    max_headers_kb: int = 8
    max_initial_line_kb: int = 4
    max_header_count: int = 100
    request_head_timeout_s: float = 10.0
    idle_timeout_s: float | None = 60.0
    max_call_depth: int = 1000
    add_forwarded_header: ForwardedConfig | None = None
    router_label: str = "http"
    shutdown_grace_s: float = 5.0

    def codec_limits(self) -> CodecLimits:
        return CodecLimits(
            max_initial_line=self.max_initial_line_kb * 1024,
            max_headers=self.max_headers_kb * 1024,
            max_header_count=self.max_header_count,
        )


@dataclass(frozen=True)
class ConnInfo:
    """What a handler may know about the connection a request arrived on."""

    peer: tuple[str, int]
    local: tuple[str, int]
    params: ServerParams
    connection_id: int


Handler = Callable[[Request, ConnInfo], Awaitable[Response]]


@dataclass
class _Stats:
    connections: int = 0
    connections_total: int = 0
    requests_in_flight: int = 0
    requests_total: int = 0
    rejected_overload: int = 0
    bad_requests: int = 0
    connection_failures: int = 0


def _addr(sockaddr: Any) -> tuple[str, int]:
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
        return (str(sockaddr[0]), int(sockaddr[1]))
    return (str(sockaddr), 0)


class Http1Server:
    """Serve HTTP/1.1 on ``params.ip:params.port`` (or given listeners), calling ``handler``."""

    def __init__(
        self,
        handler: Handler,
        params: ServerParams | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.handler = handler
        self.params = params or ServerParams()
        self._rng = rng or random.Random()
        self._limits = self.params.codec_limits()
        self._stats = _Stats()
        self._ids = itertools.count(1)
        self.addresses: list[tuple[str, int]] = []

    def statistics(self) -> dict[str, int]:
        return dict(self._stats.__dict__)

    def __repr__(self) -> str:
        s = self._stats
        return (
            f"<Http1Server {self.params.router_label} on {self.addresses} connections={s.connections} "
            f"in_flight={s.requests_in_flight}>"
        )

    async def serve(
        self,
        listeners: Sequence[trio.SocketListener] | None = None,
        *,
        task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections until cancelled; reports the bound addresses via ``task_status``."""
        if listeners is None:
            listeners = await trio.open_tcp_listeners(self.params.port, host=self.params.ip)
        self.addresses = [_addr(lst.socket.getsockname()) for lst in listeners]
        log.info("http.server.started", router=self.params.router_label, addresses=self.addresses)
        try:
            async with trio.open_nursery() as nursery:
                for lst in listeners:
                    nursery.start_soon(self._accept_loop, lst, nursery)
                task_status.started(self.addresses)
        finally:
            for lst in listeners:
                with trio.CancelScope(shield=True):
                    await lst.aclose()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                log.warning("http.accept_failed", error=str(exc))
                await trio.sleep(0.1)
                continue
            nursery.start_soon(self._run_connection, stream)

    async def _run_connection(self, stream: trio.SocketStream) -> None:
        stats = self._stats
        stats.connections += 1
        stats.connections_total += 1
        try:
            conn = _Connection(self, stream, next(self._ids))
            await conn.run()
        except Exception:
            stats.connection_failures += 1
            log.exception("http.connection_failed", router=self.params.router_label)
        finally:
            stats.connections -= 1
            with trio.CancelScope(shield=True):
                await stream.aclose()


class _ClientGone(Exception):
    """The client closed or reset the connection; nothing more can be sent."""


class _RequestBodySource:
    """Pulls the request body from the client connection as the consumer asks for it."""

    __slots__ = ("_conn", "trailers", "_done")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.trailers: Headers | None = None
        self._done = False

    async def read_chunk(self) -> bytes | None:
        if self._done:
            return None
        conn = self._conn
        codec = conn.codec
        while True:
            event = codec.next_event()
            if type(event) is Data:
                if event.data:
                    return event.data
                continue
            if type(event) is EndOfMessage:
                self._done = True
                if event.trailers:
                    self.trailers = Headers._trusted(event.trailers)
                return None
            if event is NEED_DATA:
                if codec.they_are_waiting_for_100_continue:
                    await conn.send_100_continue()
                data = await conn.receive()
                codec.receive_data(data)
                continue
            if type(event) is ConnectionClosed or event is PAUSED:
                raise _ClientGone("client closed the connection before the request body ended")
            raise ProtocolError(f"unexpected {event!r} in request body")

    async def aclose(self) -> None:
        self._done = True


class _Connection:
    def __init__(self, server: Http1Server, stream: trio.SocketStream, conn_id: int) -> None:
        self.server = server
        self.params = server.params
        self.stream = stream
        self.codec = ServerCodec(server._limits)
        self.send_lock = trio.Lock()
        sock = stream.socket
        self.info = ConnInfo(
            peer=_addr(sock.getpeername()),
            local=_addr(sock.getsockname()),
            params=server.params,
            connection_id=conn_id,
        )
        fwd = self.params.add_forwarded_header
        self.forwarded_labels = (
            (obfuscated(server._rng), obfuscated(server._rng)) if fwd is not None else ("", "")
        )

    # -- I/O helpers -----------------------------------------------------------------------------

    async def receive(self) -> bytes:
        try:
            return await self.stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise _ClientGone(f"client connection failed: {exc}") from None

    async def send(self, data: bytes) -> None:
        if not data:
            return
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.codec.send_failed()
            raise _ClientGone(f"client connection failed: {exc}") from None

    async def send_100_continue(self) -> None:
        async with self.send_lock:
            if self.codec.they_are_waiting_for_100_continue:
                await self.send(self.codec.send_informational(100, []))

    # -- the cycle loop --------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                try:
                    head = await self._read_head()
                except ProtocolError as exc:
                    self.server._stats.bad_requests += 1
                    await self._send_error_and_close(exc.status, "bad-request", str(exc))
                    return
                if head is None:
                    return
                keep_alive = await self._cycle(head)
                if not keep_alive:
                    return
        except _ClientGone:
            return

    async def _read_head(self) -> RequestHead | None:
        codec = self.codec
        params = self.params
        deadline: float | None = None
        while True:
            event = codec.next_event()
            if type(event) is RequestHead:
                return event
            if type(event) is ConnectionClosed:
                return None
            if event is not NEED_DATA:
                raise ProtocolError(f"unexpected {event!r} before a request head")
            if codec.has_buffered_data:
                if deadline is None:
                    deadline = trio.current_time() + params.request_head_timeout_s
                with trio.move_on_at(deadline):
                    codec.receive_data(await self.receive())
                    continue
                self.server._stats.bad_requests += 1
                await self._send_error_and_close(
                    408,
                    "bad-request",
                    f"request head not received within {params.request_head_timeout_s:g}s",
                )
                return None
            if params.idle_timeout_s is None:
                data = await self.receive()
            else:
                with trio.move_on_after(params.idle_timeout_s) as scope:
                    data = await self.receive()
                if scope.cancelled_caught:
                    return None  # idle keep-alive connection: close quietly
            deadline = trio.current_time() + params.request_head_timeout_s
            codec.receive_data(data)

    async def _send_error_and_close(self, status: int, cause: str, message: str) -> None:
        response = error_response(status, cause, message, close=True)
        try:
            await self._write_response(response, head_method=b"GET", close=True)
        except _ClientGone:
            pass

    def _build_request(self, head: RequestHead) -> Request | Response:
        """The request the handler sees, or an error response that answers it directly."""
        params = self.params
        method = head.method.decode("ascii")
        target = head.target.decode("latin-1")
        headers = Headers._trusted(head.headers)
        version = head.http_version.decode("ascii")
        if method == "CONNECT":
            return error_response(
                405, "bad-request", "CONNECT tunnelling is not supported by this proxy", close=True
            )
        if via_count(headers) > params.max_call_depth:
            return error_response(
                400,
                "bad-request",
                f"Maximum number of calls ({params.max_call_depth}) has been exceeded. "
                "Please check for proxy loops.",
            )
        scheme = "http"
        absolute = split_absolute_form(target) if target[:1] != "/" else None
        if absolute is not None:
            scheme, authority_s, target = absolute
            headers.set(b"host", authority_s.encode("latin-1"))
            authority: str | None = authority_s
        else:
            host = headers.get(b"host")
            authority = host.decode("latin-1") if host is not None else None
        upgrade_value = headers.get(b"upgrade")
        upgrade: bytes | None = None
        if upgrade_value is not None:
            conn_tokens = b",".join(headers.get_all(b"connection")).lower()
            if b"upgrade" in conn_tokens:
                upgrade = upgrade_value
        content_length: int | None = 0
        cl = headers.get(b"content-length")
        if headers.get(b"transfer-encoding") is not None:
            content_length = None
        elif cl is not None:
            content_length = int(cl)  # h11 validated it
        out = strip_hop_by_hop(headers, keep_upgrade=upgrade is not None)
        out.remove(b"content-length")
        out.remove(b"expect")
        append_via(out, version)
        fwd = params.add_forwarded_header
        if fwd is not None:
            append_forwarded(
                out,
                forwarded_element(
                    fwd,
                    local=self.info.local,
                    peer=self.info.peer,
                    connection_labels=self.forwarded_labels,
                    router_label=params.router_label,
                    rng=self.server._rng,
                ),
            )
        if content_length == 0:
            # Consume the (empty) body's end now: no I/O is needed for it.
            event = self.codec.next_event()
            if type(event) is not EndOfMessage:  # pragma: no cover - h11 guarantees it
                raise ProtocolError(f"expected the end of an empty body, got {event!r}")
            body = Body.empty()
        else:
            body = Body(_RequestBodySource(self), content_length)
        return Request(
            method=method,
            target=target,
            headers=out,
            body=body,
            http_version=version,
            scheme=scheme,
            authority=authority,
            upgrade=upgrade,
        )

    async def _cycle(self, head: RequestHead) -> bool:
        """Answer one request; returns whether the connection may carry another."""
        server = self.server
        stats = server._stats
        stats.requests_total += 1
        try:
            built = self._build_request(head)
        except ProtocolError as exc:
            stats.bad_requests += 1
            await self._send_error_and_close(exc.status, "bad-request", str(exc))
            return False
        if isinstance(built, Response):
            request_body: Body | None = None
            response = built
        else:
            request_body = built.body
            limit = self.params.max_concurrent_requests
            if limit is not None and stats.requests_in_flight >= limit:
                stats.rejected_overload += 1
                response = error_response(
                    503,
                    "overload",
                    f"server {self.params.router_label} is at maxConcurrentRequests={limit}; retry later",
                )
            else:
                stats.requests_in_flight += 1
                try:
                    return await self._dispatch(built, head.method)
                finally:
                    stats.requests_in_flight -= 1
        close = "close" in (response.headers.get(b"connection") or b"").decode("latin-1").lower()
        await self._write_response(response, head_method=head.method, close=close)
        return await self._finish_cycle(request_body, close)

    async def _dispatch(self, request: Request, method: bytes) -> bool:
        try:
            response = await self.server.handler(request, self.info)
        except _ClientGone:
            raise
        except Exception as exc:
            if not isinstance(exc, UpstreamError):
                log.exception("http.handler_failed", router=self.params.router_label, target=request.target)
            response = response_for_exception(exc)
        close = b"close" in (response.headers.get(b"connection") or b"").lower()
        if response.status == 101:
            if response.upgraded is None or request.upgrade is None:
                await response.body.aclose()
                response = error_response(
                    502, "proxy/internal", "101 Switching Protocols without an upgraded stream"
                )
            else:
                await self._tunnel(response)
                return False
        await self._write_response(response, head_method=method, close=close)
        return await self._finish_cycle(request.body, close)

    async def _finish_cycle(self, request_body: Body | None, close: bool) -> bool:
        codec = self.codec
        if close:
            return False
        if request_body is not None and not request_body.done and not codec.request_complete:
            # The handler answered without reading the whole request body.  Read and discard a
            # bounded amount so that the connection can be reused; otherwise close it.
            if codec.they_are_waiting_for_100_continue:
                return False
            with trio.move_on_after(1.0):
                drained = 0
                async for chunk in request_body:
                    drained += len(chunk)
                    if drained > 256 * 1024:
                        return False
            if not request_body.done:
                return False
        if not codec.can_reuse:
            return False
        codec.start_next_cycle()
        return True

    async def _write_response(self, response: Response, *, head_method: bytes, close: bool) -> None:
        codec = self.codec
        body = response.body
        try:
            headers = strip_hop_by_hop(response.headers)
            append_via(headers, "1.1")
            status = response.status
            no_body = head_method == b"HEAD" or status in (204, 304) or status < 200
            if no_body:
                headers.remove(b"transfer-encoding")
            else:
                headers.remove(b"content-length")
                if body.content_length is not None:
                    headers.add(b"content-length", str(body.content_length).encode("ascii"))
            if close:
                headers.add(b"connection", b"close")
            if no_body or body.in_memory:
                # The whole response is at hand: head, body and end in one write.
                data = b"" if no_body else body.peek_memory()
                trailers = body.trailers
                out = codec.send_response(status, response.reason, headers.items())
                if data:
                    out += codec.send_data(data)
                out += codec.send_end(trailers.items() if trailers and codec.response_chunked else None)
                async with self.send_lock:
                    await self.send(out)
                if not no_body:
                    body.consume_memory()
                return
            # The lock orders the head against a concurrent ``100 Continue`` from the body reader;
            # once the head is out, h11 no longer lets one be sent, so the body needs no lock.
            async with self.send_lock:
                await self.send(codec.send_response(status, response.reason, headers.items()))
            if not no_body:
                try:
                    async for chunk in body:
                        await self.send(codec.send_data(chunk))
                except _ClientGone:
                    raise
                except Exception as exc:
                    # The upstream failed mid-body: the head is out, so the only honest signal
                    # left is to cut the connection without the end of the message.
                    log.warning(
                        "http.response_aborted",
                        router=self.params.router_label,
                        error=str(exc),
                        cause=getattr(exc, "cause", "proxy/internal"),
                    )
                    codec.send_failed()
                    raise _ClientGone("response body failed") from None
            trailers = body.trailers if codec.response_chunked else None
            await self.send(codec.send_end(trailers.items() if trailers else None))
        finally:
            if not body.done:
                with trio.CancelScope(shield=True):
                    await body.aclose()

    async def _tunnel(self, response: Response) -> None:
        """Send the 101 and copy bytes both ways until either side closes."""
        upstream = response.upgraded
        assert upstream is not None
        codec = self.codec
        headers = strip_hop_by_hop(response.headers, keep_upgrade=True)
        append_via(headers, "1.1")
        try:
            async with self.send_lock:
                await self.send(codec.send_informational(101, headers.items()))
            pending = codec.switched_protocol_data()
            if pending:
                await upstream.send_all(pending)

            async def pump(receive: Callable[[], Awaitable[bytes]], send: Callable[[bytes], Awaitable[None]],
                           cancel: trio.CancelScope) -> None:
                try:
                    while True:
                        data = await receive()
                        if not data:
                            break
                        await send(data)
                except (_ClientGone, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
                finally:
                    cancel.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, self.receive, upstream.send_all, nursery.cancel_scope)
                nursery.start_soon(
                    pump, lambda: upstream.receive_some(RECEIVE_SIZE), self.send, nursery.cancel_scope
                )
        finally:
            with trio.CancelScope(shield=True):
                await upstream.aclose()

