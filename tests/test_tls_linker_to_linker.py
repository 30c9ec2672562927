"""Linker-to-linker over mTLS: two daemons as two hosts on loopback (127.0.0.2 = A, 127.0.0.3 = B).

A's outgoing routers send to B's incoming routers over mutual TLS (certificates made by the test: one
CA, a server+client certificate per host); B terminates TLS and delivers plaintext to the local
application: an HTTP/1.1 app, and a grpcio server through the h2 routers. A's client TLS comes from an
``io.l5d.static`` prefix whose ``{host}`` capture is the ``commonName``. Rotating both hosts'
certificates (rewriting the files) while requests flow loses none; B forwards the client certificate
A presented (``forwardClientCert``), which shows that new connections use the new certificate.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import trio
from certs import TestCA, days_from_now
from cryptography.hazmat.primitives.serialization import Encoding

from hostproxy.config import load_config
from hostproxy.daemon import Daemon
from tests.daemonutil import Running, curl
from tests.grpc_fixtures import EchoClient, GrpcTestServer
from tests.upstreams import running_upstream

pytestmark = pytest.mark.timeout(120)

A, B = "127.0.0.2", "127.0.0.3"


@contextlib.asynccontextmanager
async def host_daemon(yaml_text: str) -> AsyncIterator[Running]:
    """A daemon that re-reads changed certificate files every 0.1 s."""
    daemon = Daemon(load_config(yaml_text, source="test.yaml"), tls_reload_interval_s=0.1)
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        try:
            yield Running(daemon)
        finally:
            daemon.request_shutdown()


class Hosts:
    """The PKI: one CA; per host a certificate usable as TLS server and client."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = TestCA("mesh CA")
        self.ca_path = self.ca.write(directory, "mesh-ca")
        self.issue("a", days=90)
        self.issue("b", days=90)

    def issue(self, host: str, *, days: float) -> bytes:
        """(Re)write ``<host>.pem``/``<host>.key``; returns the certificate's DER."""
        ip = A if host == "a" else B
        issued = self.ca.issue(
            f"node-{host}",
            sans=(f"node-{host}.l5d.test", ip),
            client=True,
            server=True,
            not_after=days_from_now(days),
        )
        issued.write(self.dir, host)
        return issued.cert.public_bytes(Encoding.DER)

    def path(self, host: str, ext: str) -> str:
        return str(self.dir / f"{host}.{ext}")


def b_config(h: Hosts, app_port: int, grpc_port: int) -> str:
    tls = (
        f"{{certPath: {h.path('b', 'pem')}, keyPath: {h.path('b', 'key')}, caCertPath: {h.ca_path}, "
        "requireClientAuth: true}"
    )
    return f"""
admin: {{ip: {B}, port: 0}}
routers:
- protocol: http
  label: incoming
  dtab: /svc => /$/inet/{B}/{app_port};
  servers:
  - {{ip: {B}, port: 0, maxRequestsPerConnection: 3, tls: {tls}}}
  client: {{forwardClientCert: true}}
- protocol: h2
  label: incoming-h2
  dtab: /svc => /$/inet/127.0.0.1/{grpc_port};
  servers:
  - {{ip: {B}, port: 0, tls: {tls}}}
"""


def a_config(h: Hosts, b_in: int, b_in_h2: int) -> str:
    client = f"""  client:
    kind: io.l5d.static
    configs:
    - prefix: /$/inet/{{host}}/*
      tls:
        commonName: "{{host}}"
        trustCerts: [{h.ca_path}]
        clientAuth: {{certPath: {h.path("a", "pem")}, keyPath: {h.path("a", "key")}}}
"""
    return f"""
admin: {{ip: {A}, port: 0}}
routers:
- protocol: http
  label: outgoing
  dtab: /svc => /$/inet/{B}/{b_in};
  servers: [{{ip: {A}, port: 0}}]
{client}
- protocol: h2
  label: outgoing-h2
  dtab: /svc => /$/inet/{B}/{b_in_h2};
  servers: [{{ip: {A}, port: 0}}]
{client}
"""


def xfcc_hashes(app) -> set[str]:  # type: ignore[no-untyped-def]
    out = set()
    for req in app.requests:
        v = req.header("x-forwarded-client-cert")
        if v:
            out.add(v.split(";", 1)[0].removeprefix("Hash="))
    return out


async def tls_days(admin: str, role: str, path: str) -> int | None:
    doc = (await curl(f"{admin}/admin/tls.json")).json()
    assert isinstance(doc, dict)
    return next((c["daysLeft"] for c in doc["certificates"] if c["role"] == role and c["path"] == path), None)


async def test_outgoing_to_peer_incoming_over_mtls_http1_grpc_and_rotation(tmp_path: Path) -> None:
    h = Hosts(tmp_path)
    old_a = (tmp_path / "a.pem").read_bytes()
    with GrpcTestServer() as grpc_server:
        async with (
            running_upstream(host=B) as app,
            host_daemon(b_config(h, app.port, grpc_server.port)) as b,
            host_daemon(a_config(h, b.port("incoming"), b.port("incoming-h2"))) as a,
        ):
            out = f"http://{A}:{a.port('outgoing')}/headers"

            # HTTP/1.1: A -> (mTLS) -> B -> (plaintext) -> app.
            r = await curl(out, "-H", "Host: web")
            assert r.status == 200, r
            seen = app.requests[-1]
            assert seen.header("l5d-dst-service") == "/svc/web"
            assert (seen.header("via") or "").count("hostproxy") == 2
            from cryptography import x509

            old_hash = hashlib.sha256(
                x509.load_pem_x509_certificate(old_a).public_bytes(Encoding.DER)
            ).hexdigest()
            assert xfcc_hashes(app) == {old_hash}
            # B's incoming port speaks only TLS, and only to clients with a mesh certificate.
            r = await curl(f"http://{B}:{b.port('incoming')}/headers", "-H", "Host: web", timeout=5)
            assert r.status == 400 and r.headers["l5d-err"].startswith("This port speaks TLS"), r
            r = await curl(
                f"https://{B}:{b.port('incoming')}/headers",
                "--cacert",
                h.ca_path,
                "-H",
                "Host: web",
                timeout=5,
            )
            assert r.status == 0 and r.exit_code != 0

            # gRPC over h2: A's h2 router -> (mTLS, ALPN h2) -> B's h2 router -> grpcio.
            client = EchoClient(f"{A}:{a.port('outgoing-h2')}")
            try:
                got = await trio.to_thread.run_sync(lambda: client.unary(b"over-mtls", timeout=10))
                assert got == b"over-mtls"
                with pytest.raises(grpc.RpcError) as err:
                    await trio.to_thread.run_sync(lambda: client.unary(b"fail-please", timeout=10))
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            finally:
                client.close()
            h2_slot = next(s for s in b.daemon.slots.values() if s.router == "incoming-h2")
            assert h2_slot.tls is not None and h2_slot.tls.statistics()["handshakes"] >= 1

            # Rotation mid-traffic: requests flow from a background task while both hosts'
            # certificates are rewritten; every one must succeed.
            statuses: list[int] = []
            stop = trio.Event()

            async def traffic() -> None:
                while not stop.is_set():
                    res = await curl(out, "-H", "Host: web")
                    statuses.append(res.status)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(traffic)
                with trio.fail_after(60):
                    while len(statuses) < 8:
                        await trio.sleep(0.02)
                    new_a = h.issue("a", days=45)
                    h.issue("b", days=60)
                    while (
                        await tls_days(a.admin, "client", h.path("a", "pem")) != 44
                        or await tls_days(b.admin, "server", h.path("b", "pem")) != 59
                    ):
                        await trio.sleep(0.05)
                    rotated_at = len(statuses)
                    new_hash = hashlib.sha256(new_a).hexdigest()
                    # B closes connections after 3 requests, so A reconnects with the new certificate.
                    while new_hash not in xfcc_hashes(app) or len(statuses) < rotated_at + 8:
                        await trio.sleep(0.05)
                stop.set()
            assert statuses and all(s == 200 for s in statuses), statuses
            assert xfcc_hashes(app) == {old_hash, new_hash}
            b_slot = next(s for s in b.daemon.slots.values() if s.router == "incoming")
            assert b_slot.tls is not None and b_slot.tls.generation >= 2
            # gRPC keeps working across the rotation.
            client = EchoClient(f"{A}:{a.port('outgoing-h2')}")
            try:
                got = await trio.to_thread.run_sync(lambda: client.unary(b"after-rotation", timeout=10))
                assert got == b"after-rotation"
            finally:
                client.close()
