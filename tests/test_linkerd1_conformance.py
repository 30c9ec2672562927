"""hostproxy as a drop-in successor of Linkerd 1: behaviours of the reference catalogue
(``shared/spec/linkerd1-reference.md``) checked against a real daemon, real upstreams and real curl on
loopback. Each test names the section of the catalogue it checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hostproxy.http.errors import error_response
from hostproxy.http.message import Body, Headers, Response
from tests.daemonutil import curl, fs_config, running_daemon
from tests.upstreams import running_upstream, serving


def write_disco(disco: Path, name: str, *ports: int) -> None:
    disco.mkdir(exist_ok=True)
    tmp = disco / f".{name}.tmp"
    tmp.write_text("".join(f"127.0.0.1 {p}\n" for p in ports))
    tmp.rename(disco / name)


# -- §6.3 clearContext: responses -------------------------------------------------------------------


async def test_clear_context_strips_l5d_response_headers_and_empties_error_bodies(tmp_path: Path) -> None:
    """§6.3: on a ``clearContext`` server every ``l5d-*`` response header is removed and a response
    carrying ``l5d-err`` loses its body (it names services, dtabs and addresses); the status stays."""

    async def downstream_error(_req: Any, _conn: Any) -> Response:
        # What a downstream Linkerd or hostproxy answers when it cannot route.
        return error_response(502, "naming/neg", "Unable to route request!\nservice name: /svc/secret")

    async def ok_with_l5d(_req: Any, _conn: Any) -> Response:
        hs = Headers([(b"l5d-success-class", b"1.0"), (b"x-app", b"1")])
        return Response(status=200, headers=hs, body=Body.from_bytes(b"app body"))

    async with running_upstream() as up, serving(downstream_error) as errport, serving(ok_with_l5d) as okport:
        disco = tmp_path / "disco"
        write_disco(disco, "web", up.port)
        write_disco(disco, "inner", errport)
        write_disco(disco, "app", okport)
        cfg = fs_config(disco, server_extra="    clearContext: true")
        async with running_daemon(cfg) as d:
            base = f"http://127.0.0.1:{d.port('out')}/"
            # hostproxy's own error: status kept, no l5d-err, no body.
            r = await curl(base, "-H", "Host: nosuch")
            assert r.status == 502
            assert not [h for h in r.headers if h.startswith("l5d-")], r.headers
            assert r.body == b"" and r.header("content-length") == "0"
            # A downstream proxy's error passed back through: the same.
            r = await curl(base, "-H", "Host: inner")
            assert r.status == 502
            assert not [h for h in r.headers if h.startswith("l5d-")], r.headers
            assert r.body == b""
            # A routed response: l5d-* headers go (l5d-success-class too), the body stays.
            r = await curl(base, "-H", "Host: app")
            assert r.status == 200 and r.body == b"app body" and r.header("x-app") == "1"
            assert not [h for h in r.headers if h.startswith("l5d-")], r.headers
            r = await curl(base, "-H", "Host: web")
            assert r.status == 200 and r.body == b"ok"
            assert r.header("l5d-success-class") is None


async def test_clear_context_on_an_h2_server_strips_l5d_response_headers(tmp_path: Path) -> None:
    """§6.3 on an h2 router: the same clearing, for plain HTTP/2 and gRPC error answers."""
    cfg = """
admin: {ip: 127.0.0.1, port: 0}
routers:
- protocol: h2
  label: h2
  dtab: /svc/web => /$/nil;
  servers:
  - {ip: 127.0.0.1, port: 0, clearContext: true}
"""
    async with running_daemon(cfg) as d:
        url = f"http://127.0.0.1:{d.port('h2')}/"
        r = await curl(url, "--http2-prior-knowledge", "-H", "Host: web")
        assert r.status == 502
        assert not [h for h in r.headers if h.startswith("l5d-")], r.headers
        assert r.body == b""
        r = await curl(
            url + "pkg.Svc/M",
            "--http2-prior-knowledge",
            "-H",
            "Host: web",
            "-H",
            "content-type: application/grpc",
            "-X",
            "POST",
        )
        assert r.status == 200 and r.header("grpc-status") == "14", r.headers
        assert not [h for h in r.headers if h.startswith("l5d-")], r.headers
        assert "svc" not in (r.header("grpc-message") or ""), r.headers
