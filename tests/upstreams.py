"""Reusable upstream servers for HTTP tests: a programmable trio/h11 server and an nginx launcher.

``TestUpstream`` listens on 127.0.0.1 (port 0) and picks its behaviour from the request path:

=====================  ==================================================================
``/echo``              stream the request body back as it arrives (chunked), trailers too
``/count``             read the whole body, answer with the number of bytes
``/status/N``          answer with status N
``/slow/MS``           wait MS milliseconds before answering
``/reset``             send a head promising 1000 bytes, 10 bytes, then reset the connection
``/big/N``             stream N bytes (chunked, 64 KiB chunks)
``/len/N``             N bytes with a Content-Length (HEAD gets the length and no body)
``/headers``           a JSON object: method, target, http_version and the headers received
``/trailers``          a chunked body followed by trailers ``x-checksum: abc``
``/close``             answer with ``Connection: close``
``/ws``                ``101 Switching Protocols`` when asked to upgrade, then echo raw bytes
anything else          200 ``ok``
=====================  ==================================================================

``idle_close_s`` makes it close keep-alive connections idle for that long (with a TCP RST when
``idle_reset`` is set).  It records every
request head in ``requests`` and counts ``connections`` and ``bytes_received``.

Run as a script (``python tests/upstreams.py``) it serves in its own process and prints its port,
so memory measurements of the process under test do not include it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import trio

CHUNK = 64 * 1024


@dataclass
class RecordedRequest:
    method: str
    target: str
    http_version: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None


@dataclass
class TestUpstream:
    __test__ = False  # not a pytest test class

    idle_close_s: float | None = None
    idle_reset: bool = False  # close idle connections with a TCP RST instead of a FIN
    port: int = 0
    host: str = "127.0.0.1"
    requests: list[RecordedRequest] = field(default_factory=list)
    connections: int = 0
    bytes_received: int = 0
    _scope: trio.CancelScope | None = None

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        with trio.CancelScope() as self._scope:
            async with trio.open_nursery() as nursery:
                task_status.started(self.port)
                await trio.serve_listeners(self._connection, listeners, handler_nursery=nursery)

    def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            async with stream:
                while True:
                    timeout = self.idle_close_s if self.idle_close_s is not None else 3600
                    with trio.move_on_after(timeout):
                        event = await self._next(stream, conn)
                        if type(event) is not h11.Request:
                            return
                        await self._handle(stream, conn, event)
                        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                            return
                        conn.start_next_cycle()
                        continue
                    if self.idle_reset:
                        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return  # idle for idle_close_s: close the connection
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError, OSError):
            return

    async def _next(self, stream: trio.SocketStream, conn: h11.Connection) -> h11.Event:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(CHUNK)
                conn.receive_data(data)
                continue
            return event  # type: ignore[return-value]

    async def _body(self, stream: trio.SocketStream, conn: h11.Connection) -> AsyncIterator[bytes]:
        while True:
            event = await self._next(stream, conn)
            if type(event) is h11.Data:
                self.bytes_received += len(event.data)
                yield bytes(event.data)
            elif type(event) is h11.EndOfMessage:
                self._last_trailers = list(event.headers)
                return
            else:
                return

    async def _send(self, stream: trio.SocketStream, conn: h11.Connection, event: h11.Event) -> None:
        data = conn.send(event)
        if data:
            await stream.send_all(data)

    async def _simple(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        status: int,
        body: bytes,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        hdrs = [("content-length", str(len(body)))] if status not in (204, 304) else []
        await self._send(stream, conn, h11.Response(status_code=status, headers=hdrs + (headers or [])))
        if body and status not in (204, 304):
            await self._send(stream, conn, h11.Data(data=body))
        await self._send(stream, conn, h11.EndOfMessage())

    async def _handle(self, stream: trio.SocketStream, conn: h11.Connection, req: h11.Request) -> None:
        target = req.target.decode("latin-1")
        self._last_trailers: list[tuple[bytes, bytes]] = []
        self.requests.append(
            RecordedRequest(
                req.method.decode(),
                target,
                req.http_version.decode(),
                [(n.decode("latin-1"), v.decode("latin-1")) for n, v in req.headers],
            )
        )
        path = target.split("?", 1)[0]
        parts = path.strip("/").split("/")
        head = parts[0]
        if head == "echo":
            await self._send(stream, conn, h11.Response(status_code=200, headers=[]))
            async for chunk in self._body(stream, conn):
                await self._send(stream, conn, h11.Data(data=chunk))
            await self._send(stream, conn, h11.EndOfMessage(headers=self._last_trailers))
            return
        # Everything else reads the request body first.
        count = 0
        async for chunk in self._body(stream, conn):
            count += len(chunk)
        if head == "count":
            await self._simple(stream, conn, 200, str(count).encode())
        elif head == "status":
            status = int(parts[1])
            await self._simple(
                stream, conn, status, b"" if status in (204, 304) else f"status {status}".encode()
            )
        elif head == "slow":
            await trio.sleep(int(parts[1]) / 1000)
            await self._simple(stream, conn, 200, b"slow")
        elif head == "reset":
            await self._send(
                stream, conn, h11.Response(status_code=200, headers=[("content-length", "1000")])
            )
            await self._send(stream, conn, h11.Data(data=b"0123456789"))
            sock = stream.socket
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            raise trio.ClosedResourceError("reset on purpose")
        elif head == "big":
            remaining = int(parts[1])
            await self._send(stream, conn, h11.Response(status_code=200, headers=[]))
            block = b"x" * CHUNK
            while remaining > 0:
                n = min(remaining, CHUNK)
                await self._send(stream, conn, h11.Data(data=block[:n]))
                remaining -= n
            await self._send(stream, conn, h11.EndOfMessage())
        elif head == "len":
            n = int(parts[1])
            hdrs = [("content-length", str(n))]
            await self._send(stream, conn, h11.Response(status_code=200, headers=hdrs))
            if req.method != b"HEAD" and n:
                await self._send(stream, conn, h11.Data(data=b"y" * n))
            await self._send(stream, conn, h11.EndOfMessage())
        elif head == "headers":
            doc = {
                "method": req.method.decode(),
                "target": target,
                "http_version": req.http_version.decode(),
                "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in req.headers],
            }
            await self._simple(
                stream, conn, 200, json.dumps(doc).encode(), [("content-type", "application/json")]
            )
        elif head == "trailers":
            await self._send(
                stream, conn, h11.Response(status_code=200, headers=[("transfer-encoding", "chunked")])
            )
            await self._send(stream, conn, h11.Data(data=b"with trailers"))
            await self._send(stream, conn, h11.EndOfMessage(headers=[("x-checksum", "abc")]))
        elif head == "close":
            await self._simple(stream, conn, 200, b"closing", [("connection", "close")])
        elif head == "ws" and req.method == b"GET" and any(n == b"upgrade" for n, _ in req.headers):
            await self._send(
                stream,
                conn,
                h11.InformationalResponse(
                    status_code=101, headers=[("upgrade", "websocket"), ("connection", "upgrade")]
                ),
            )
            pending = conn.trailing_data[0]
            if pending:
                await stream.send_all(pending)
            while True:
                data = await stream.receive_some(CHUNK)
                if not data:
                    raise trio.ClosedResourceError("tunnel closed")
                await stream.send_all(data)
        else:
            await self._simple(stream, conn, 200, b"ok")


@contextlib.asynccontextmanager
async def running_upstream(**kwargs: object) -> AsyncIterator[TestUpstream]:
    """Start a ``TestUpstream`` for the duration of the block."""
    up = TestUpstream(**kwargs)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(up.serve)
        try:
            yield up
        finally:
            up.stop()


@dataclass
class ProxyUnderTest:
    port: int
    server: object
    pool: object


@contextlib.asynccontextmanager
async def running_proxy(
    upstream_port: int, params: object = None, handler: object = None
) -> AsyncIterator[ProxyUnderTest]:
    """An ``Http1Server`` forwarding every request to 127.0.0.1:``upstream_port`` through one
    ``UpstreamPool`` (or calling ``handler(request, conn_info, pool)`` instead)."""
    from hostproxy.http import Http1Server, ServerParams, UpstreamPool

    async with UpstreamPool("127.0.0.1", upstream_port) as pool:

        async def forward(request, info):  # type: ignore[no-untyped-def]
            if handler is not None:
                return await handler(request, info, pool)  # type: ignore[operator]
            return await pool.request(request)

        server = Http1Server(forward, params or ServerParams())  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(server.serve)
            try:
                yield ProxyUnderTest(addresses[0][1], server, pool)
            finally:
                nursery.cancel_scope.cancel()


@contextlib.contextmanager
def upstream_process() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Run ``TestUpstream`` in a child process; yields (process, port).  Stopped on exit."""
    proc = subprocess.Popen(
        [sys.executable, __file__], stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(
                f"upstream process failed to start: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        yield proc, int(line)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


NGINX_CONF = """
{user_line}
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {prefix}/www;
        location = /hello {{ default_type text/plain; return 200 "hello from nginx\\n"; }}
        location = /missing {{ return 404; }}
    }}
}}
"""


@contextlib.contextmanager
def running_nginx(workdir: Path) -> Iterator[int]:
    """Start nginx on a free loopback port with a tiny site under ``workdir``; yields the port.

    Serves ``/hello`` (text), ``/missing`` (404) and static files from ``workdir/www`` (``/file.bin``
    holds 1 MiB).
    """
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    prefix = workdir.resolve()
    (prefix / "www").mkdir(parents=True, exist_ok=True)
    (prefix / "www" / "file.bin").write_bytes(os.urandom(1 << 20))
    port = _free_port()
    conf = prefix / "nginx.conf"
    # Workers of a root master would run as "nobody" and could not read a private tmp dir.
    user_line = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, user_line=user_line))
    proc = subprocess.Popen(
        [nginx, "-p", str(prefix), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"nginx exited with {proc.returncode}: {err}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not listen on 127.0.0.1:{port} within 10s")
            time.sleep(0.05)
        yield port
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":

    async def _main() -> None:
        up = TestUpstream()
        async with trio.open_nursery() as nursery:
            port = await nursery.start(up.serve)
            print(port, flush=True)

    trio.run(_main)


async def answer_each_head(stream: trio.SocketStream, answer: Callable[[bytes], bytes]) -> None:
    """A bare upstream for requests without bodies: for each request head read from ``stream`` (up to
    its blank line), send ``answer(head)``; until the peer closes."""
    buf = b""
    async with stream:
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            buf += data
            while b"\r\n\r\n" in buf:
                head, buf = buf.split(b"\r\n\r\n", 1)
                await stream.send_all(answer(head))


@contextlib.contextmanager
def stalled_port() -> Iterator[int]:
    """A port whose listener never accepts and whose accept queue is full: SYNs go unanswered."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
            fillers.append(c)
        yield port
    finally:
        for c in fillers:
            c.close()
        listener.close()


@contextlib.asynccontextmanager
async def serving(handler: Callable[..., Any]) -> AsyncIterator[int]:
    """hostproxy's own ``Http1Server`` on a free loopback port, answering every request with
    ``await handler(request, conn_info)``; its port."""
    from hostproxy.http import Http1Server, ServerParams

    server = Http1Server(handler, ServerParams(port=0))
    async with trio.open_nursery() as nursery:
        addrs = await nursery.start(server.serve)
        yield addrs[0][1]
        nursery.cancel_scope.cancel()


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]  # bound, not listening: connections are refused
