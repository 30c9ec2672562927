"""Requests whose client went away while they waited for the upstream's answer.

A hung upstream (it accepts and never answers) and clients that give up: with no timeout configured,
each abandoned request held its router slot, its upstream connection and its memory for as long as
the upstream stayed silent, so a router at ``maxConcurrentRequests`` answered every other service 503
for good. The real daemon in-process, real curl and raw sockets as clients, real upstreams on
loopback.
"""

from __future__ import annotations

import json
import socket
import ssl
import tempfile
from pathlib import Path

import trio

from tests.certs import make_pki
from tests.daemonutil import curl, fs_config, running_daemon
from tests.test_lifecycle_helpers import write_disco
from tests.test_retry_adversarial import SAFETY, metrics, recorder
from tests.test_wtf_e2e import wtf


async def test_a_request_whose_client_left_is_cancelled_and_frees_the_router() -> None:
    """The client of a request to a hung upstream closes its connection; within a few checks the
    request is cancelled: the router's only slot (``maxConcurrentRequests: 1``) serves another
    service again, the upstream connection is closed, and the request is counted as a 499 (client
    closed request), not as a proxy failure."""
    async with recorder() as (up, port):
        disco = Path(tempfile.mkdtemp())
        write_disco(disco, "web", port)
        write_disco(disco, "other", port)
        async with running_daemon(fs_config(disco) + "  maxConcurrentRequests: 1\n") as d:
            proxy = d.port("out")
            with socket.create_connection(("127.0.0.1", proxy)) as s:
                s.sendall(b"GET /hold HTTP/1.1\r\nHost: web\r\n\r\n")
                with trio.fail_after(SAFETY):
                    await up.holding.wait()
                busy = await curl(f"http://127.0.0.1:{proxy}/x", "-H", "Host: other")
                assert busy.status == 503 and "maxConcurrentRequests=1" in (busy.l5d_err or ""), busy
            # The client is gone; the upstream still holds its answer.
            with trio.fail_after(SAFETY):
                while True:
                    r = await curl(f"http://127.0.0.1:{proxy}/x", "-H", "Host: other")
                    if r.status == 200:
                        break
                    assert r.status == 503, r
                    await trio.sleep(0.2)
            assert r.body == b"ok /x"
            assert not up.release.is_set()  # the upstream never answered: the cancellation freed the slot
            m = await metrics(d)
            # ``hostproxy wtf`` names it: the callers gave up on the app, not on hostproxy (it said
            # "healthy": a 499 is no failure).
            code, out, err = await wtf(d.admin, "--json")
            assert code == 1, (out, err)
            findings = [f for f in json.loads(out)["findings"] if f["service"] == "/svc/web"]
            assert [(f["cause"], f["fault"], f["level"]) for f in findings] == [
                ("abandoned", "application", "application")
            ], findings
            assert "abandoned by their callers" in findings[0]["verdict"], findings
            assert "totalTimeoutMs" in findings[0]["next_step"], findings
            server = next(k.rsplit("/", 1)[0] for k in m if k.startswith("rt/out/server/"))
    assert m["rt/out/service/svc/web/status/499"] == 1, {k: v for k, v in m.items() if "499" in k}
    assert m.get("rt/out/service/svc/web/failures/proxy/internal", 0) == 0
    assert m.get(f"{server}/failures/proxy/internal", 0) == 0
    assert m[f"{server}/requests_abandoned"] == 1


async def test_a_client_that_waits_gets_its_slow_answer() -> None:
    """The check never cancels a request whose client is still there: an answer that takes several
    checks arrives (and so does one for a client that pipelined its next request meanwhile)."""
    async with recorder() as (up, port):
        disco = Path(tempfile.mkdtemp())
        write_disco(disco, "web", port)
        async with running_daemon(fs_config(disco)) as d:
            proxy = d.port("out")
            with socket.create_connection(("127.0.0.1", proxy)) as s:
                s.setblocking(False)
                s.sendall(b"GET /hold HTTP/1.1\r\nHost: web\r\n\r\nGET /next HTTP/1.1\r\nHost: web\r\n\r\n")
                with trio.fail_after(SAFETY):
                    await up.holding.wait()
                await trio.sleep(2.5)  # two and a half checks of the client
                up.release.set()
                data = b""
                with trio.fail_after(SAFETY):
                    while data.count(b"HTTP/1.1 200") < 2:
                        try:
                            chunk = s.recv(65536)
                        except BlockingIOError:
                            await trio.sleep(0.05)
                            continue
                        assert chunk, data
                        data += chunk
            assert b"ok /hold" in data and b"ok /next" in data, data
            m = await metrics(d)
    assert m.get("rt/out/service/svc/web/status/499", 0) == 0


async def test_a_tls_request_whose_client_left_is_cancelled_and_frees_the_router(tmp_path: Path) -> None:
    """The same over TLS: the check covered plaintext connections only, so a TLS client that gave up
    on a hung upstream kept its request in flight, its router slot (``maxConcurrentRequests: 1``: every
    other service answered 503) and its upstream connection, for as long as the upstream was silent."""
    pki = make_pki(tmp_path)
    tls = f"    tls:\n      certPath: {pki.server_cert}\n      keyPath: {pki.server_key}\n"
    context = ssl.create_default_context(cafile=pki.ca_path)
    async with recorder() as (up, port):
        disco = Path(tempfile.mkdtemp())
        write_disco(disco, "web", port)
        write_disco(disco, "other", port)
        async with running_daemon(fs_config(disco, server_extra=tls) + "  maxConcurrentRequests: 1\n") as d:
            proxy = d.port("out")
            url = f"https://localhost:{proxy}/x"
            resolve = f"localhost:{proxy}:127.0.0.1"

            def connect_and_ask() -> ssl.SSLSocket:  # (in a thread: the daemon runs on this event loop)
                s = context.wrap_socket(
                    socket.create_connection(("127.0.0.1", proxy)), server_hostname="localhost"
                )
                s.sendall(b"GET /hold HTTP/1.1\r\nHost: web\r\n\r\n")
                return s

            s = await trio.to_thread.run_sync(connect_and_ask)
            with trio.fail_after(SAFETY):
                await up.holding.wait()
            busy = await curl(url, "--cacert", pki.ca_path, "--resolve", resolve, "-H", "Host: other")
            assert busy.status == 503 and "maxConcurrentRequests=1" in (busy.l5d_err or ""), busy
            s.close()  # the TCP connection ends (no close_notify: as a client that gave up and exited)
            with trio.fail_after(SAFETY):
                while True:
                    r = await curl(url, "--cacert", pki.ca_path, "--resolve", resolve, "-H", "Host: other")
                    if r.status == 200:
                        break
                    assert r.status == 503, r
                    await trio.sleep(0.2)
            assert r.body == b"ok /x"
            assert not up.release.is_set()  # the upstream never answered: the cancellation freed the slot
            m = await metrics(d)
            server = next(k.rsplit("/", 1)[0] for k in m if k.startswith("rt/out/server/"))
    assert m["rt/out/service/svc/web/status/499"] == 1, {k: v for k, v in m.items() if "499" in k}
    assert m.get("rt/out/service/svc/web/failures/proxy/internal", 0) == 0
    assert m[f"{server}/requests_abandoned"] == 1


async def test_a_tls_client_that_waits_gets_its_slow_answer(tmp_path: Path) -> None:
    """The TLS check never cancels a request whose client is still connected: an answer that takes
    several checks arrives."""
    pki = make_pki(tmp_path)
    tls = f"    tls:\n      certPath: {pki.server_cert}\n      keyPath: {pki.server_key}\n"
    context = ssl.create_default_context(cafile=pki.ca_path)
    async with recorder() as (up, port):
        disco = Path(tempfile.mkdtemp())
        write_disco(disco, "web", port)
        async with running_daemon(fs_config(disco, server_extra=tls)) as d:
            proxy = d.port("out")

            def connect_and_ask() -> ssl.SSLSocket:  # (in a thread: the daemon runs on this event loop)
                s = context.wrap_socket(
                    socket.create_connection(("127.0.0.1", proxy)), server_hostname="localhost"
                )
                s.sendall(b"GET /hold HTTP/1.1\r\nHost: web\r\n\r\n")
                return s

            def read_answer(s: ssl.SSLSocket) -> bytes:
                s.settimeout(SAFETY)
                data = b""
                while b"ok /hold" not in data:
                    chunk = s.recv(65536)
                    assert chunk, data
                    data += chunk
                return data

            s = await trio.to_thread.run_sync(connect_and_ask)
            try:
                with trio.fail_after(SAFETY):
                    await up.holding.wait()
                await trio.sleep(2.5)  # two and a half checks of the client
                up.release.set()
                data = await trio.to_thread.run_sync(read_answer, s)
            finally:
                s.close()
            assert data.startswith(b"HTTP/1.1 200"), data
            m = await metrics(d)
    assert m.get("rt/out/service/svc/web/status/499", 0) == 0
