"""A server's own counters in the metrics: Linkerd's `connections`, `connects` and `closes` under
`rt/<router>/server/<ip>/<port>/`, what turned clients away (malformed requests, refused
connections), and a TLS server's handshakes and handshake failures by reason. Real daemons in-process,
real curl and raw sockets on loopback; a reload moves the counters with the server.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import trio
from certs import Pki, make_pki

from tests.daemonutil import curl, running_daemon
from tests.test_lifecycle_adversarial import _config, _daemon_from_file, _disco
from tests.test_tls_daemon_e2e import tls_server_config, wtf_json
from tests.upstreams import running_upstream

pytestmark = pytest.mark.timeout(60)


async def _metrics(admin: str) -> dict[str, Any]:
    return (await curl(f"{admin}/admin/metrics.json")).json()  # type: ignore[return-value]


async def _until(admin: str, key: str, want: float) -> dict[str, Any]:
    """The metrics once ``key`` reads ``want`` (a generous bound: the server counts as the
    connection task ends)."""
    with trio.move_on_after(10):
        while True:
            m = await _metrics(admin)
            if m.get(key) == want:
                return m
            await trio.sleep(0.02)
    raise AssertionError(f"{key} never read {want}: {m.get(key)!r}")


async def test_connections_connects_closes_and_bad_requests_of_an_http_server(tmp_path: Path) -> None:
    async with running_upstream() as up, running_daemon(_config(_disco(tmp_path, web=up.port))) as d:
        port = d.port("out")
        scope = f"rt/out/server/127.0.0.1/{port}"
        m = await _metrics(d.admin)
        assert (m[f"{scope}/connections"], m[f"{scope}/connects"], m[f"{scope}/closes"]) == (0, 0, 0)
        assert m[f"{scope}/bad_requests"] == 0
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
            assert (await trio.to_thread.run_sync(s.recv, 65536)).startswith(b"HTTP/1.1 200")
            m = await _metrics(d.admin)
            assert m[f"{scope}/connections"] == 1  # kept alive, still open
            assert m[f"{scope}/connects"] == 1
        m = await _until(d.admin, f"{scope}/connections", 0)
        assert (m[f"{scope}/connects"], m[f"{scope}/closes"]) == (1, 1)
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: web\r\nBad Field: x\r\n\r\n")
            assert (await trio.to_thread.run_sync(s.recv, 65536)).startswith(b"HTTP/1.1 400")
        m = await _until(d.admin, f"{scope}/bad_requests", 1)
        assert m[f"{scope}/connects"] == 2
        prom = (await curl(f"{d.admin}/admin/metrics/prometheus")).body.decode()
        assert f'hostproxy_server_connects_total{{router="out",server="127.0.0.1:{port}"}} 2' in prom
        # Refused before routing too, where no request counter of the router sees them: CONNECT, a
        # target of no HTTP/1.1 form.
        for line in (b"CONNECT web:443 HTTP/1.1", b"GET other/web HTTP/1.1"):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(line + b"\r\nHost: web\r\n\r\n")
                assert (await trio.to_thread.run_sync(s.recv, 65536))[9:12] in (b"405", b"400")
        await _until(d.admin, f"{scope}/bad_requests", 3)


async def test_connections_refused_over_max_connections_are_counted(tmp_path: Path) -> None:
    async with running_upstream() as up:
        cfg = _config(_disco(tmp_path, web=up.port)).replace(
            "    port: 0\n", "    port: 0\n    maxConnections: 1\n", 1
        )
        async with running_daemon(cfg) as d:
            port = d.port("out")
            scope = f"rt/out/server/127.0.0.1/{port}"
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
                assert (await trio.to_thread.run_sync(s.recv, 65536)).startswith(b"HTTP/1.1 200")
                r = await curl(f"http://127.0.0.1:{port}/", "-H", "Host: web", timeout=5)
                assert r.status == 0  # closed at once: the one connection allowed is in use
                m = await _until(d.admin, f"{scope}/rejected_connections", 1)
                assert m[f"{scope}/connections"] == 1


async def test_tls_handshakes_and_failures_by_reason(tmp_path: Path) -> None:
    pki: Pki = make_pki(tmp_path)
    async with running_upstream() as up, running_daemon(tls_server_config(pki, up.port, mtls=True)) as d:
        port = d.port("edge")
        scope = f"rt/edge/server/127.0.0.1/{port}"
        url = f"https://localhost:{port}/"
        m = await _metrics(d.admin)
        assert (m[f"{scope}/tls/handshakes"], m[f"{scope}/tls/handshake_failures"]) == (0, 0)
        r = await curl(url, "--cacert", pki.ca_path, "-H", "Host: web", timeout=5)
        assert r.status == 0  # no client certificate: refused in the handshake
        m = await _until(d.admin, f"{scope}/tls/handshake_failures/no-client-certificate", 1)
        assert m[f"{scope}/tls/handshake_failures"] == 1
        assert m[f"{scope}/tls/handshake_failures/not-tls"] == 0
        r = await curl(
            url,
            *pki.curl_mtls(),
            "-H",
            "Host: web",
        )
        assert r.status == 200, r
        m = await _until(d.admin, f"{scope}/tls/handshakes", 1)
        assert m[f"{scope}/tls/handshake_failures"] == 1
        prom = (await curl(f"{d.admin}/admin/metrics/prometheus")).body.decode()
        assert (
            "hostproxy_server_tls_handshake_failures_total{"
            f'router="edge",server="127.0.0.1:{port}",reason="no-client-certificate"}} 1'
        ) in prom


async def test_http_only_servers_have_no_tls_counters(tmp_path: Path) -> None:
    async with running_daemon(_config(_disco(tmp_path))) as d:
        scope = f"rt/out/server/127.0.0.1/{d.port('out')}"
        m = await _metrics(d.admin)
        assert f"{scope}/connections" in m
        assert not [k for k in m if k.startswith(f"{scope}/tls/")]


async def test_a_reload_moves_the_counters_to_the_new_server(tmp_path: Path) -> None:
    """A router switched from HTTP/1.1 to h2 gets a new server: the old one's counters leave the
    metrics (its request stats stay), the new one's are there with the h2 server's own."""
    async with running_upstream() as up:
        disco = _disco(tmp_path, web=up.port)
        cfg = tmp_path / "hostproxy.yaml"
        cfg.write_text(_config(disco))
        async with _daemon_from_file(cfg) as d:
            old = f"rt/out/server/127.0.0.1/{d.addresses['out'][0][1]}"
            assert (
                await curl(f"http://127.0.0.1:{d.addresses['out'][0][1]}/", "-H", "Host: web")
            ).status == 200
            cfg.write_text(_config(disco, protocol="h2"))
            ok, message = await d.reload()
            assert ok, message
            new = f"rt/out/server/127.0.0.1/{d.addresses['out'][0][1]}"
            assert new != old
            assert d.admin_address is not None
            m = await _metrics(f"http://{d.admin_address[0]}:{d.admin_address[1]}")
            assert f"{old}/connects" not in m and f"{old}/bad_requests" not in m
            assert m[f"{old}/requests"] == 1
            assert (m[f"{new}/connections"], m[f"{new}/refused_streams"]) == (0, 0)
            assert f"{new}/bad_requests" not in m


async def test_wtf_says_clients_fail_the_tls_handshake_and_why(tmp_path: Path) -> None:
    pki: Pki = make_pki(tmp_path)
    async with running_upstream() as up, running_daemon(tls_server_config(pki, up.port, mtls=True)) as d:
        port = d.port("edge")
        r = await curl(f"https://localhost:{port}/", "--cacert", pki.ca_path, "-H", "Host: web", timeout=5)
        assert r.status == 0
        await _until(d.admin, f"rt/edge/server/127.0.0.1/{port}/tls/handshake_failures", 1)
        report = await wtf_json(d.admin)
        (finding,) = [f for f in report["findings"] if f["cause"] == "tls"]
        assert (finding["router"], finding["fault"], finding["failures"]) == ("edge", "caller", 1)
        assert "no-client-certificate 1" in finding["verdict"]
        assert f"127.0.0.1:{port}" in finding["verdict"]
