"""End to end with real clients and servers on loopback: curl → Http1Server → UpstreamPool → upstream."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import trio
from upstreams import running_nginx, running_proxy, running_upstream, upstream_process


async def curl(*args: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> trio.Process:
    full_env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    full_env.update(env or {})
    return await trio.run_process(
        ["curl", "-sS", "--max-time", "60", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=full_env,
        stdin=stdin,
    )


async def test_http_proxy_env_var_routes_absolute_form_like_host() -> None:
    async with running_upstream() as up, running_proxy(up.port) as proxy:
        r = await curl("http://users/headers?x=1", env={"http_proxy": f"http://127.0.0.1:{proxy.port}"})
        assert r.returncode == 0, r.stderr
        assert up.requests[0].target == "/headers?x=1"
        assert up.requests[0].header("host") == "users"
        assert up.requests[0].header("proxy-connection") is None


async def test_chunked_upload_streamed_back_and_trailers_forwarded() -> None:
    payload = os.urandom(300_000)
    async with running_upstream() as up, running_proxy(up.port) as proxy:
        r = await curl("-T", "-", f"http://127.0.0.1:{proxy.port}/echo", stdin=payload)
        assert r.returncode == 0, r.stderr
        assert r.stdout == payload
        assert up.requests[0].header("transfer-encoding") == "chunked"
        r = await curl("--raw", "-i", f"http://127.0.0.1:{proxy.port}/trailers")
        text = r.stdout.decode()
        assert text.endswith("0\r\nx-checksum: abc\r\n\r\n"), text


async def test_curl_through_proxy_to_nginx(tmp_path: Path) -> None:
    with running_nginx(tmp_path) as nginx_port:
        expected = hashlib.sha256((tmp_path / "www" / "file.bin").read_bytes()).hexdigest()
        async with running_proxy(nginx_port) as proxy:
            base = f"http://127.0.0.1:{proxy.port}"
            r = await curl(f"{base}/hello", f"{base}/hello")  # two requests, one connection
            assert r.stdout == b"hello from nginx\nhello from nginx\n"
            r = await curl(f"{base}/file.bin")
            assert hashlib.sha256(r.stdout).hexdigest() == expected
            r = await curl("-I", f"{base}/file.bin")
            head = r.stdout.decode().lower()
            assert "content-length: 1048576" in head and "via: 1.1 hostproxy" in head
            r = await curl("-o", "/dev/null", "-w", "%{http_code}", f"{base}/missing")
            assert r.stdout == b"404"
            assert proxy.pool.statistics()["connects"] == 1  # type: ignore[attr-defined]


async def test_upstream_reset_mid_body_cuts_the_client_connection() -> None:
    async with running_upstream() as up, running_proxy(up.port) as proxy:
        r = await curl(f"http://127.0.0.1:{proxy.port}/reset")
        assert r.returncode == 18  # "transfer closed with outstanding read data remaining"
        r = await curl(f"http://127.0.0.1:{proxy.port}/")
        assert r.stdout == b"ok"


async def test_websocket_upgrade_is_tunnelled() -> None:
    async with running_upstream() as up, running_proxy(up.port) as proxy:
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with stream:
            await stream.send_all(
                b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nearly"
            )
            data = b""
            with trio.fail_after(10):
                while b"early" not in data:
                    data += await stream.receive_some(65536)
            head = data.split(b"\r\n\r\n")[0].lower()
            assert head.startswith(b"http/1.1 101")
            assert b"upgrade: websocket" in head and b"connection: upgrade" in head
            for message in (b"frame-1", b"\x00\x01binary\xff"):
                await stream.send_all(message)
                got = b""
                with trio.fail_after(10):
                    while len(got) < len(message):
                        got += await stream.receive_some(65536)
                assert got == message
        assert up.requests[0].header("upgrade") == "websocket"
        assert up.requests[0].header("sec-websocket-key") == "dGhlIHNhbXBsZSBub25jZQ=="


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


async def test_one_gib_upload_streams_in_bounded_memory(tmp_path: Path) -> None:
    size = 1 << 30
    sparse = tmp_path / "big.bin"
    with sparse.open("wb") as f:
        f.truncate(size)
    with upstream_process() as (_proc, up_port):
        async with running_proxy(up_port) as proxy:
            baseline = _rss_kib()
            peak = baseline
            done = trio.Event()

            async def sample() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, _rss_kib())
                    await trio.sleep(0.05)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sample)
                r = await curl("--max-time", "110", "-T", str(sparse), f"http://127.0.0.1:{proxy.port}/count")
                done.set()
            assert r.returncode == 0, r.stderr
            assert r.stdout == str(size).encode()
            growth_mib = (peak - baseline) / 1024
            assert growth_mib < 64, f"RSS grew by {growth_mib:.1f} MiB while streaming 1 GiB"


async def _raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        out = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                out += chunk
        return out


async def test_trailers_that_would_reframe_route_or_authenticate_are_dropped_both_ways() -> None:
    """A trailer section must not carry framing, routing, authentication or other fields the
    header section controls (RFC 9110 §6.5.1); a server that merges trailers into the header section
    would take them from behind the proxy. Dropped from requests and from responses, the others kept."""
    received: list[bytes] = []

    async def origin(stream: trio.SocketStream) -> None:
        async with stream:
            got = b""
            while not got.endswith(b"\r\n\r\n") or b"\r\n0\r\n" not in got:
                got += await stream.receive_some(65536)
            received.append(got)
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nok\r\n0\r\n"
                b"Grpc-Status: 0\r\nSet-Cookie: session=stolen\r\nContent-Length: 99\r\nLocation: /evil\r\n\r\n"
            )

    sent = (
        b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"5\r\nhello\r\n0\r\n"
        b"X-Checksum: abc\r\nHost: evil\r\nContent-Length: 3\r\nAuthorization: Bearer stolen\r\n"
        b"Cookie: a=b\r\nX-Forwarded-For: 10.9.9.9\r\n\r\n"
    )
    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(functools.partial(trio.serve_tcp, origin, 0, host="127.0.0.1"))
        async with running_proxy(listener.socket.getsockname()[1]) as proxy:
            out = await _raw_exchange(proxy.port, sent)
        nursery.cancel_scope.cancel()
    (request,) = received
    trailers = request.split(b"\r\n0\r\n", 1)[1].lower()
    assert b"x-checksum: abc" in trailers and b"x-forwarded-for: 10.9.9.9" in trailers, request
    for forbidden in (b"host:", b"content-length:", b"authorization:", b"cookie:"):
        assert forbidden not in trailers, request
    assert out.startswith(b"HTTP/1.1 200"), out
    trailers = out.split(b"\r\n0\r\n", 1)[1].lower()
    assert b"grpc-status: 0" in trailers, out
    for forbidden in (b"set-cookie:", b"content-length:", b"location:"):
        assert forbidden not in trailers, out


async def test_an_h2c_upgrade_is_not_passed_on() -> None:
    """``Upgrade: h2c`` through an HTTP/1.1 router: forwarded as a plain request (no ``Upgrade``, no
    ``HTTP2-Settings``), so no upstream can switch and hand the client an HTTP/2 connection that
    bypasses the proxy ("h2c smuggling"). A WebSocket upgrade still passes (test above)."""
    async with running_upstream() as up, running_proxy(up.port) as proxy:
        out = await _raw_exchange(
            proxy.port,
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nX-Keep: 1\r\n\r\n"
            b"GET /headers HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        assert out.startswith(b"HTTP/1.1 200"), out
        assert b"101" not in out.split(b"\r\n", 1)[0]
        first = up.requests[0]
        assert first.target == "/ws"
        assert first.header("upgrade") is None and first.header("http2-settings") is None
        assert first.header("x-keep") == "1"
        assert [r.target for r in up.requests] == ["/ws", "/headers"]  # the connection went on in HTTP/1.1


async def test_http2_settings_is_never_forwarded() -> None:
    """``HTTP2-Settings`` is connection-specific by definition (RFC 9113 §3.1, RFC 9110 §7.6.1): it
    was dropped only when ``Connection`` named it, so ``Connection: Upgrade`` alone (or no
    ``Connection`` at all) passed an h2c offer's settings on to the upstream."""
    async with running_upstream() as up, running_proxy(up.port) as proxy:
        out = await _raw_exchange(
            proxy.port,
            b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
            b"GET /b HTTP/1.1\r\nHost: a\r\nHTTP2-Settings: AAMAAABk\r\nConnection: close\r\n\r\n",
        )
        assert out.count(b"HTTP/1.1 200 ") == 2, out
        assert [r.target for r in up.requests] == ["/a", "/b"]
        for request in up.requests:
            assert request.header("http2-settings") is None, request.headers
            assert request.header("upgrade") is None, request.headers


async def test_a_request_target_of_no_http11_form_is_refused() -> None:
    """``other/web``, ``?x=1``, ``http:/x`` or ``*`` on a GET are none of HTTP/1.1's request-target forms
    (RFC 9112 §3.2): they were forwarded as they were, for each upstream to read its own way. Now 400
    (and the connection closes, as for every request refused before routing); ``OPTIONS *``, paths and
    absolute URLs pass."""
    async with running_upstream() as up, running_proxy(up.port) as proxy:
        for target in (b"other/web", b"?x=1", b"http:/x", b"*"):
            out = await _raw_exchange(
                proxy.port, b"GET " + target + b" HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"
            )
            assert out.startswith(b"HTTP/1.1 400"), (target, out)
            assert b"is not a path" in out, out
        out = await _raw_exchange(
            proxy.port,
            b"OPTIONS * HTTP/1.1\r\nHost: web\r\n\r\nGET http://web/abs HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
        )
        assert out.count(b"HTTP/1.1 200 ") == 2 and b"HTTP/1.1 400" not in out, out
        assert [r.target for r in up.requests] == ["*", "/abs"]
