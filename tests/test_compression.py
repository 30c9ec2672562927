"""Linkerd's ``compressionLevel`` on HTTP/1.1 routers: the pure choices, the response transform, and a
real daemon between curl (or a raw client) and real upstreams."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import trio

from hostproxy.http.compress import (
    Compression,
    choose_coding,
    compress_response,
    is_textual,
    no_transform,
)
from hostproxy.http.message import Body, Headers, Response
from tests.daemonutil import curl, fs_config, running_daemon
from tests.upstreams import running_upstream, serving

TEXT = b"hello, compressible world. " * 40


@pytest.mark.parametrize(
    ("accept", "coding"),
    [
        (None, None),
        (b"", None),
        (b"gzip", "gzip"),
        (b"GZIP", "gzip"),
        (b"x-gzip", "gzip"),
        (b"deflate", "deflate"),
        (b"gzip, deflate, br", "gzip"),
        (b"gzip;q=0, deflate", "deflate"),
        (b"deflate;q=1, gzip;q=0.5", "deflate"),
        (b"gzip;q=0.5, deflate;q=0.5", "gzip"),
        (b"*", "gzip"),
        (b"gzip;q=0, *", "deflate"),
        (b"gzip;q=0, deflate;q=0, *", None),
        (b"identity", None),
        (b"br, zstd", None),
        (b"gzip;q=abc", None),
        (b"gzip;q=2", None),
        (b"gzip ; q=0.001", "gzip"),
    ],
)
def test_the_coding_follows_the_clients_q_values(accept: bytes | None, coding: str | None) -> None:
    assert choose_coding(accept) == coding


def test_textual_types_are_finagles() -> None:
    for t in (
        b"text/plain",
        b"text/html; charset=utf-8",
        b"Application/JSON",
        b"image/svg+xml",
        b"application/xml",
    ):
        assert is_textual(t), t
    for t in (None, b"", b"image/png", b"application/octet-stream", b"application/grpc", b"texts/plain"):
        assert not is_textual(t), t


def test_levels() -> None:
    assert Compression.from_level(0) is None
    assert Compression.from_level(-1) == Compression(6, True)
    assert Compression.from_level(9) == Compression(9, False)
    with pytest.raises(ValueError, match=r"^compressionLevel 10: use -1"):
        Compression.from_level(10)


def response(
    body: bytes = TEXT, status: int = 200, content_type: bytes = b"text/plain", **extra: bytes
) -> Response:
    headers = Headers([(b"content-type", content_type), (b"content-length", b"%d" % len(body))])
    for name, value in extra.items():
        headers.add(name.replace("_", "-").encode(), value)
    return Response(status, headers=headers, body=Body.from_bytes(body))


TEXTUAL = Compression(6, True)


def test_an_in_memory_body_is_compressed_at_once_with_its_new_length() -> None:
    resp = response(etag=b'"v1"', vary=b"Origin")
    assert compress_response(TEXTUAL, "GET", "1.1", b"gzip", resp)
    assert resp.headers.get(b"content-encoding") == b"gzip"
    assert resp.headers.get(b"content-length") is None
    assert resp.headers.get_all(b"vary") == [b"Origin", b"Accept-Encoding"]
    assert resp.headers.get(b"etag") == b'W/"v1"'
    data = resp.body.peek_memory()
    assert resp.body.content_length == len(data) < len(TEXT)
    assert gzip.decompress(data) == TEXT


def test_deflate_is_zlib_format() -> None:
    resp = response()
    assert compress_response(Compression(9, False), "GET", "1.1", b"deflate", resp)
    assert resp.headers.get(b"content-encoding") == b"deflate"
    assert zlib.decompress(resp.body.peek_memory()) == TEXT


@pytest.mark.parametrize(
    ("method", "version", "accept", "resp", "why"),
    [
        ("HEAD", "1.1", b"gzip", response(), "HEAD"),
        ("GET", "1.0", b"gzip", response(), "an HTTP/1.0 client"),
        ("GET", "1.1", None, response(), "no Accept-Encoding"),
        ("GET", "1.1", b"br", response(), "no coding we have"),
        ("GET", "1.1", b"gzip", response(status=204, body=b""), "204"),
        ("GET", "1.1", b"gzip", response(status=206), "206"),
        ("GET", "1.1", b"gzip", response(status=304, body=b""), "304"),
        ("GET", "1.1", b"gzip", response(body=b""), "an empty body"),
        ("GET", "1.1", b"gzip", response(content_encoding=b"br"), "already encoded"),
        ("GET", "1.1", b"gzip", response(cache_control=b"public, No-Transform"), "no-transform"),
        ("GET", "1.1", b"gzip", response(content_type=b"image/png"), "not textual at -1"),
    ],
)
def test_what_passes_through(
    method: str, version: str, accept: bytes | None, resp: Response, why: str
) -> None:
    before = list(resp.headers)
    assert not compress_response(TEXTUAL, method, version, accept, resp), why
    assert list(resp.headers) == before


def test_a_request_with_no_transform_gets_the_body_as_the_upstream_sent_it() -> None:
    resp = response()
    before = list(resp.headers)
    assert not compress_response(TEXTUAL, "GET", "1.1", b"gzip", resp, request_no_transform=True)
    assert list(resp.headers) == before
    asked = Headers([(b"cache-control", b"max-age=0"), (b"Cache-Control", b" NO-TRANSFORM ")])
    assert no_transform(asked) and not no_transform(Headers([(b"cache-control", b"no-transformx")]))


def test_a_level_from_1_to_9_compresses_every_type_and_keeps_an_existing_vary() -> None:
    resp = response(content_type=b"image/png", vary=b"accept-encoding")
    assert compress_response(Compression(1, False), "GET", "1.1", b"gzip", resp)
    assert resp.headers.get_all(b"vary") == [b"accept-encoding"]


class Chunks:
    """A streamed body source: the chunks in order, then the trailers."""

    def __init__(self, chunks: list[bytes], trailers: Headers | None = None) -> None:
        self.chunks = list(chunks)
        self._trailers = trailers
        self.closed = False

    async def read_chunk(self) -> bytes | None:
        return self.chunks.pop(0) if self.chunks else None

    @property
    def trailers(self) -> Headers | None:
        return self._trailers if not self.chunks else None

    async def aclose(self) -> None:
        self.closed = True


async def test_a_streamed_body_is_flushed_chunk_by_chunk_and_keeps_its_trailers() -> None:
    source = Chunks([b"first event\n", b"second event\n"], Headers([(b"x-checksum", b"abc")]))
    resp = Response(200, headers=Headers([(b"content-type", b"text/event-stream")]), body=Body(source, None))
    assert compress_response(TEXTUAL, "GET", "1.1", b"gzip", resp)
    assert resp.body.content_length is None
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    got = []
    async for piece in resp.body:
        got.append(d.decompress(piece))
    # Each upstream chunk can be read whole from the piece sent for it (nothing is held back).
    assert got[:2] == [b"first event\n", b"second event\n"]
    assert b"".join(got) + d.flush() == b"first event\nsecond event\n" and d.eof
    assert resp.body.trailers is not None and resp.body.trailers.get(b"x-checksum") == b"abc"


# -- a real daemon -------------------------------------------------------------------------------------


def upstream_dir(tmp_path: Path, port: int) -> Path:
    disco = tmp_path / "disco"
    disco.mkdir(exist_ok=True)
    (disco / "app").write_text(f"127.0.0.1 {port}\n")
    return disco


async def test_textual_responses_are_gzipped_for_curl_and_others_pass_through(tmp_path: Path) -> None:
    async with running_upstream() as up:
        text = fs_config(upstream_dir(tmp_path, up.port)) + "  compressionLevel: -1\n"
        async with running_daemon(text) as d:
            url = f"http://127.0.0.1:{d.port('out')}"
            plain = await curl(f"{url}/headers", "-H", "Host: app")
            assert plain.status == 200 and plain.header("content-encoding") is None
            raw = await curl(f"{url}/headers", "-H", "Host: app", "-H", "Accept-Encoding: gzip")
            assert raw.status == 200, raw.l5d_err
            assert raw.header("content-encoding") == "gzip"
            assert raw.header("vary") == "Accept-Encoding"
            doc = json.loads(gzip.decompress(raw.body))
            assert ["accept-encoding", "gzip"] in doc["headers"]  # (the upstream got the client's header)
            # curl --compressed decodes it; a streamed (chunked) body is compressed too.
            big = await curl(f"{url}/big/300000", "-H", "Host: app", "--compressed")
            assert big.status == 200 and len(big.body) == 300000
            # Not textual (the upstream's "ok" has no Content-Type): as the upstream sent it.
            ok = await curl(f"{url}/", "-H", "Host: app", "-H", "Accept-Encoding: gzip")
            assert ok.status == 200 and ok.body == b"ok" and ok.header("content-encoding") is None
            # A client that asks intermediaries not to transform the content gets the upstream's bytes.
            kept = await curl(
                f"{url}/headers",
                "-H",
                "Host: app",
                "-H",
                "Accept-Encoding: gzip",
                "-H",
                "Cache-Control: no-transform",
            )
            assert kept.status == 200 and kept.header("content-encoding") is None
            assert json.loads(kept.body)["headers"]


async def test_errors_hostproxy_makes_are_not_compressed(tmp_path: Path) -> None:
    async with running_upstream() as up:
        text = fs_config(upstream_dir(tmp_path, up.port)) + "  compressionLevel: 9\n"
        async with running_daemon(text) as d:
            r = await curl(
                f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: nowhere", "-H", "Accept-Encoding: gzip"
            )
            assert r.status in (400, 502) and r.l5d_err is not None
            assert r.header("content-encoding") is None


async def test_a_stream_reaches_the_client_as_it_is_sent(tmp_path: Path) -> None:
    """An event stream through a compressing router: the client decompresses the first event while the
    upstream still holds the second back (it sends it only when the test says so)."""
    go_on = trio.Event()

    class Events:
        def __init__(self) -> None:
            self.sent = 0

        async def read_chunk(self) -> bytes | None:
            self.sent += 1
            if self.sent == 1:
                return b"data: one\n\n"
            if self.sent == 2:
                await go_on.wait()
                return b"data: two\n\n"
            return None

        @property
        def trailers(self) -> Headers | None:
            return None

        async def aclose(self) -> None:
            pass

    async def handler(_req: object, _conn: object) -> Response:
        return Response(
            200, headers=Headers([(b"content-type", b"text/event-stream")]), body=Body(Events(), None)
        )

    async with serving(handler) as port:
        text = fs_config(upstream_dir(tmp_path, port)) + "  compressionLevel: -1\n"
        async with running_daemon(text) as d:
            stream = await trio.open_tcp_stream("127.0.0.1", d.port("out"))
            async with stream:
                await stream.send_all(b"GET /events HTTP/1.1\r\nHost: app\r\nAccept-Encoding: gzip\r\n\r\n")
                decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
                received = b""
                plain = b""
                with trio.fail_after(20):
                    while b"data: one" not in plain:
                        data = await stream.receive_some(65536)
                        assert data, "the connection closed early"
                        received += data
                        head, sep, rest = received.partition(b"\r\n\r\n")
                        if sep:
                            assert b"content-encoding: gzip" in head.lower(), head
                            assert b"transfer-encoding: chunked" in head.lower(), head
                            plain = decoder.decompress(_dechunk(rest))
                    go_on.set()
                    while not received.endswith(b"0\r\n\r\n"):
                        data = await stream.receive_some(65536)
                        assert data, "the connection closed early"
                        received += data
                body = _dechunk(received.partition(b"\r\n\r\n")[2])
                assert zlib.decompress(body, 16 + zlib.MAX_WBITS) == b"data: one\n\ndata: two\n\n"


def _dechunk(data: bytes) -> bytes:
    """The chunk data of a (possibly partial) chunked body."""
    out = b""
    while True:
        size_line, sep, rest = data.partition(b"\r\n")
        if not sep:
            return out
        size = int(size_line.split(b";")[0], 16)
        if size == 0 or len(rest) < size + 2:
            return out + rest[:size] if size else out
        out += rest[:size]
        data = rest[size + 2 :]


def test_levels_in_a_config(tmp_path: Path) -> None:
    cfg = tmp_path / "linkerd.yaml"
    cfg.write_text(
        "routers:\n- protocol: http\n  compressionLevel: 9\n  servers: [{port: 4140}]\n"
        "- protocol: http\n  label: b\n  compressionLevel: 10\n  servers: [{port: 4141}]\n"
        "- protocol: h2\n  compressionLevel: -1\n  servers: [{port: 4142}]\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "hostproxy", "check", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert any(
        "routers[1].compressionLevel: compressionLevel 10: use -1 (textual types at zlib level 6, Linkerd's "
        "default), 0 (off) or 1 to 9" in line
        for line in lines
    ), lines
    assert any(
        "routers[2].compressionLevel" in line and "applies to protocol: http routers only" in line
        for line in lines
    ), lines
    assert not any("routers[0]" in line for line in lines), lines
