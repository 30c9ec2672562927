"""Connections the kernel queued before a drain closed the listener are served, not reset.

``stop_accepting`` takes what is in the listener's backlog before closing it; the accept loop, woken
by that close, must then start those connections. These tests queue connections (handshake done,
request sent) while the accept loop cannot run, drain with no checkpoint in between, and expect
every one to get its whole response and a clean close.
"""

from __future__ import annotations

import socket

import trio
import trio.testing
from test_http_server import parse_responses
from upstreams import running_proxy, running_upstream

from hostproxy.http.listening import refuse_new_handshakes

GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


async def read_until_close(sock: socket.socket, timeout: float = 10) -> bytes:
    """Everything the server sends until it closes; a reset fails the test."""
    tsock = trio.socket.from_stdlib_socket(sock)
    data = b""
    with trio.fail_after(timeout):
        while chunk := await tsock.recv(65536):
            data += chunk
    tsock.close()
    return data


async def queue_requests(port: int, n: int) -> list[socket.socket]:
    """``n`` connections with a request sent, all still in the listener's backlog: the server's
    accept loop is left waiting in ``accept`` first, and nothing checkpoints after the connects (the
    caller drains at once), so it cannot have taken them."""
    await trio.testing.wait_all_tasks_blocked()
    clients = []
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", port))
        c.sendall(GET)
        c.setblocking(False)
        clients.append(c)
    return clients


async def test_backlog_taken_by_drain_is_served() -> None:
    async with running_upstream() as up, running_proxy(up.port) as proxy:
        clients = await queue_requests(proxy.port, 5)
        proxy.server.drain()
        replies = [await read_until_close(c) for c in clients]
        for raw in replies:
            [(status, headers, body)] = parse_responses(raw)
            assert (status, headers.get("connection"), body) == (200, "close", b"ok")
        stats = proxy.server.statistics()
        assert (stats["connections_total"], stats["connection_failures"]) == (5, 0)
        with trio.fail_after(5):
            while not proxy.server.idle:
                await trio.sleep(0.01)
        # The listener is gone: a new connection is refused.
        try:
            socket.create_connection(("127.0.0.1", proxy.port), timeout=5).close()
            raise AssertionError("connected after the drain")
        except ConnectionRefusedError:
            pass


async def test_backlog_taken_by_stop_accepting_is_served() -> None:
    async with running_upstream() as up, running_proxy(up.port) as proxy:
        clients = await queue_requests(proxy.port, 3)
        proxy.server.stop_accepting()  # not draining: the connections stay open after their response
        for c in clients:
            tsock = trio.socket.from_stdlib_socket(c)
            data = b""
            with trio.fail_after(10):
                while not data.endswith(b"ok"):
                    chunk = await tsock.recv(65536)
                    assert chunk, "closed before a whole response"
                    data += chunk
            [(status, headers, _body)] = parse_responses(data)
            assert status == 200 and headers.get("connection") != "close"
            tsock.close()


def test_refuse_new_handshakes_drops_syns_and_keeps_the_backlog() -> None:
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    port = lsock.getsockname()[1]
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(lsock))
    queued = socket.create_connection(("127.0.0.1", port))
    try:
        assert refuse_new_handshakes(listener)
        # A new handshake gets no answer (its SYN is dropped) instead of being queued or reset.
        late = socket.socket()
        late.settimeout(0.3)
        try:
            late.connect(("127.0.0.1", port))
            raise AssertionError("a handshake completed after refuse_new_handshakes")
        except TimeoutError:
            pass
        finally:
            late.close()
        # What was queued before is still there to take, and it works.
        lsock.setblocking(False)
        taken, _ = lsock.accept()
        queued.sendall(b"ping")
        assert taken.recv(4) == b"ping"
        taken.close()
    finally:
        queued.close()
        lsock.close()
