"""The HTTP/1.1 server over real loopback sockets: hardening, framing, limits, keep-alive."""

from __future__ import annotations

import json

import pytest
import trio
from test_http_codec import REJECTED
from upstreams import running_proxy, running_upstream

from hostproxy.http import Body, Response, ServerParams
from hostproxy.http.proxyheaders import ForwardedConfig, Labeler

Parsed = tuple[int, dict[str, str], bytes]


def parse_responses(raw: bytes, head_only: bool = False) -> list[Parsed]:
    """Split raw bytes into responses (Content-Length or chunked framing; 1xx included)."""
    out: list[Parsed] = []
    while raw:
        end = raw.index(b"\r\n\r\n")
        lines = raw[:end].decode("latin-1").split("\r\n")
        raw = raw[end + 4 :]
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        body = b""
        if status >= 200 and not head_only and status not in (204, 304):
            if headers.get("transfer-encoding") == "chunked":
                while True:
                    size_end = raw.index(b"\r\n")
                    size = int(raw[:size_end], 16)
                    raw = raw[size_end + 2 :]
                    if size == 0:
                        raw = raw[raw.index(b"\r\n") + 2 :] if not raw.startswith(b"\r\n") else raw[2:]
                        break
                    body += raw[:size]
                    raw = raw[size + 2 :]
            else:
                n = int(headers.get("content-length", "0"))
                body, raw = raw[:n], raw[n:]
        out.append((status, headers, body))
    return out


async def exchange(port: int, data: bytes, *, until_close: bool = True, timeout: float = 10) -> bytes:
    """Send ``data`` on a new connection and read until the server closes it."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        chunks = []
        with trio.fail_after(timeout):
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
                if not until_close:
                    break
        return b"".join(chunks)


@pytest.mark.parametrize(("raw", "status", "message"), REJECTED)
async def test_malformed_requests_get_400_and_are_never_forwarded(
    raw: bytes, status: int, message: str
) -> None:
    async with running_upstream() as up, running_proxy(up.port) as proxy:
        reply = await exchange(proxy.port, raw + b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        [(got, headers, body)] = parse_responses(reply)
        assert got == status
        assert body.decode().startswith(message)
        assert headers["l5d-err"]
        assert headers["connection"] == "close"
        assert up.requests == []


async def test_header_count_and_size_limits() -> None:
    params = ServerParams(max_header_count=5, max_headers_kb=1, max_initial_line_kb=1)
    async with running_upstream() as up, running_proxy(up.port, params) as proxy:
        many = b"".join(b"X-%d: v\r\n" % i for i in range(6))
        [(status, _, body)] = parse_responses(
            await exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n")
        )
        assert (status, body) == (431, b"request has more than 5 header fields")
        big = b"X: " + b"v" * 2000 + b"\r\n"
        [(status, _, body)] = parse_responses(
            await exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n" + big + b"\r\n")
        )
        assert (status, body) == (431, b"request headers exceed 1024 bytes (maxHeadersKB)")
        [(status, _, body)] = parse_responses(
            await exchange(proxy.port, b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n")
        )
        assert (status, body) == (414, b"request line exceeds 1024 bytes (maxInitialLineKB)")
        assert up.requests == []


async def test_slow_request_head_is_cut_off_with_408() -> None:
    params = ServerParams(request_head_timeout_s=0.3)
    async with running_upstream() as up, running_proxy(up.port, params) as proxy:
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n")  # never finished
            data = b""
            with trio.fail_after(10):
                while chunk := await stream.receive_some(65536):
                    data += chunk
        [(status, _, body)] = parse_responses(data)
        assert (status, body) == (408, b"request head not received within 0.3s")
        assert up.requests == []


async def test_idle_keep_alive_connection_is_closed_quietly() -> None:
    params = ServerParams(idle_timeout_s=0.2)
    async with running_upstream() as up, running_proxy(up.port, params) as proxy:
        reply = await exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        [(status, _, body)] = parse_responses(reply)  # then EOF, with no second response
        assert (status, body) == (200, b"ok")


async def test_connect_method_is_refused() -> None:
    async with running_upstream() as up, running_proxy(up.port) as proxy:
        reply = await exchange(
            proxy.port, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
        )
        [(status, headers, body)] = parse_responses(reply)
        assert status == 405
        assert headers["l5d-err"] == "CONNECT+tunnelling+is+not+supported+by+this+proxy"
        assert body == b"CONNECT tunnelling is not supported by this proxy"
        assert up.requests == []


async def test_max_call_depth_counts_via_entries() -> None:
    params = ServerParams(max_call_depth=2)
    async with running_upstream() as up, running_proxy(up.port, params) as proxy:
        ok = await exchange(
            proxy.port, b"GET /headers HTTP/1.1\r\nHost: a\r\nVia: 1.1 a, 1.1 b\r\nConnection: close\r\n\r\n"
        )
        [(status, _, body)] = parse_responses(ok)
        assert status == 200
        assert ["via", "1.1 a, 1.1 b, 1.1 hostproxy"] in json.loads(body)["headers"]
        loop = await exchange(
            proxy.port,
            b"GET / HTTP/1.1\r\nHost: a\r\nVia: 1.1 a, 1.1 b\r\nVia: 1.1 c\r\nConnection: close\r\n\r\n",
        )
        [(status, headers, body)] = parse_responses(loop)
        assert status == 400
        assert body == b"Maximum number of calls (2) has been exceeded. Please check for proxy loops."
        assert len(up.requests) == 1


async def test_max_concurrent_requests_rejects_excess_at_once() -> None:
    params = ServerParams(max_concurrent_requests=1)
    async with running_upstream() as up, running_proxy(up.port, params) as proxy:
        results: list[bytes] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: _collect(
                    results, proxy.port, b"GET /slow/3000 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                )
            )
            with trio.fail_after(10):
                while proxy.server.statistics()["requests_in_flight"] < 1:  # type: ignore[attr-defined]
                    await trio.sleep(0.01)
            reply = await exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            [(status, headers, body)] = parse_responses(reply)
            assert status == 503
            assert body == b"server http is at maxConcurrentRequests=1; retry later"
            assert results == []  # the slow request is still in flight: the 503 did not wait for it
        assert parse_responses(results[0])[0][0] == 200
        assert proxy.server.statistics()["rejected_overload"] == 1  # type: ignore[attr-defined]


async def _collect(results: list[bytes], port: int, data: bytes) -> None:
    results.append(await exchange(port, data))


async def test_pipelined_requests_answered_in_order_and_connection_close_honoured() -> None:
    async with running_upstream() as up, running_proxy(up.port) as proxy:
        raw = (
            b"GET /status/201 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /count HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
            b"PUT /count HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            b"GET /status/202 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            b"GET /never HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        responses = parse_responses(await exchange(proxy.port, raw))
        assert [(s, b) for s, _, b in responses] == [
            (201, b"status 201"),
            (200, b"5"),
            (200, b"3"),
            (202, b"status 202"),
        ]
        assert responses[-1][1]["connection"] == "close"
        assert [r.target for r in up.requests] == ["/status/201", "/count", "/count", "/status/202"]
        # Re-framed upstream: Content-Length kept, chunked stays chunked.
        assert up.requests[1].header("content-length") == "5"
        assert up.requests[2].header("transfer-encoding") == "chunked"


async def test_expect_100_continue_is_answered_when_the_body_is_read() -> None:
    async with running_upstream() as up, running_proxy(up.port) as proxy:
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with stream:
            await stream.send_all(
                b"POST /count HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
            )
            with trio.fail_after(10):
                interim = await stream.receive_some(65536)
            assert interim.startswith(b"HTTP/1.1 100 ")
            await stream.send_all(b"abcd")
            data = b""
            with trio.fail_after(10):
                while b"\r\n\r\n" not in data or not data.endswith(b"4"):
                    data += await stream.receive_some(65536)
            [(status, _, body)] = parse_responses(data)
            assert (status, body) == (200, b"4")
        assert up.requests[0].header("expect") is None


async def test_head_204_304_framing_on_a_kept_alive_connection() -> None:
    async with running_upstream() as up, running_proxy(up.port) as proxy:
        raw = (
            b"HEAD /len/10 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /status/204 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /status/304 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /len/3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        data = await exchange(proxy.port, raw)
        head, rest = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200") and b"content-length: 10" in head.lower()
        responses = parse_responses(rest)
        assert [(s, b) for s, _, b in responses] == [(204, b""), (304, b""), (200, b"yyy")]
        assert "content-length" not in responses[0][1] and "transfer-encoding" not in responses[0][1]


async def test_hop_by_hop_headers_dropped_and_forwarded_added() -> None:
    params = ServerParams(add_forwarded_header=ForwardedConfig(by=Labeler("router"), for_=Labeler("ip")))
    async with running_upstream() as up, running_proxy(up.port, params) as proxy:
        raw = (
            b"GET /headers HTTP/1.1\r\nHost: a\r\nConnection: close, X-Secret\r\nX-Secret: s\r\n"
            b"Keep-Alive: timeout=5\r\nProxy-Authorization: basic x\r\nTE: gzip, trailers\r\nX-End: e\r\n\r\n"
        )
        [(status, headers, body)] = parse_responses(await exchange(proxy.port, raw))
        got = json.loads(body)["headers"]
        names = [n for n, _ in got]
        assert status == 200 and headers["via"] == "1.1 hostproxy"
        for gone in ("x-secret", "keep-alive", "proxy-authorization", "connection"):
            assert gone not in names
        assert ["te", "trailers"] in got and ["x-end", "e"] in got
        assert ["forwarded", "by=http;for=127.0.0.1"] in got


async def test_handler_failure_is_contained_to_its_request() -> None:
    async def handler(request, info, pool):  # type: ignore[no-untyped-def]
        if request.target == "/boom":
            raise RuntimeError("kaboom")
        return Response(200, b"OK", body=Body.from_bytes(b"fine"))

    async with running_upstream() as up, running_proxy(up.port, handler=handler) as proxy:
        raw = b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\nGET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        responses = parse_responses(await exchange(proxy.port, raw))
        assert responses[0][0] == 502
        assert responses[0][1]["l5d-err"] == "Internal+proxy+error%3A+RuntimeError%3A+kaboom"
        assert responses[1][0] == 200 and responses[1][2] == b"fine"


async def test_absolute_form_target_routes_like_host() -> None:
    async with running_upstream() as up, running_proxy(up.port) as proxy:
        raw = b"GET http://users:8080/headers?x=1 HTTP/1.1\r\nHost: ignored\r\nConnection: close\r\n\r\n"
        [(status, _, body)] = parse_responses(await exchange(proxy.port, raw))
        doc = json.loads(body)
        assert status == 200 and doc["target"] == "/headers?x=1"
        assert ["host", "users:8080"] in doc["headers"] and ["host", "ignored"] not in doc["headers"]
