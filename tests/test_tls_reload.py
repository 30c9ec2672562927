"""Certificate reload: new connections get the new certificate while established ones keep working,
broken new files are rejected (old context kept, no retry until they change again), client trust and
client certificates reload too, and the watcher polls on its interval."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trio.testing
from certs import Issued, Pki, TestCA, hello, make_listener_tls, make_pki, serving

from hostproxy.config import model as m
from hostproxy.http import Http1Server
from hostproxy.tls import ClientTls, TlsError, TlsListener, peer_certificate, reload_all, watch_certificates

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def install(issued: Issued, cert_path: str, key_path: str) -> None:
    """Replace the files the way rotation tools do: write aside, then rename over."""
    for path, data in ((cert_path, issued.cert_pem), (key_path, issued.key_pem)):
        tmp = path + ".new"
        Path(tmp).write_bytes(data)
        os.replace(tmp, path)


async def request(stream: trio.abc.Stream, target: str) -> bytes:
    await stream.send_all(f"GET {target} HTTP/1.1\r\nhost: t\r\n\r\n".encode())
    with trio.fail_after(10):
        data = b""
        while b"conn=" not in data:
            data += await stream.receive_some(65536)
        return data


async def test_rotation_under_traffic(pki: Pki) -> None:
    install(pki.ca.issue("gen1.test"), pki.server_cert, pki.server_key)
    tls = make_listener_tls(pki.server_cert, pki.server_key)
    client = ClientTls(m.ClientTls(common_name="localhost", trust_certs=(pki.ca_path,)))
    failures: list[BaseException] = []
    served = 0

    async with serving(Http1Server(hello), tls) as port:

        async def traffic(stop: trio.Event) -> None:
            nonlocal served
            while not stop.is_set():
                try:
                    s = await client.connect("127.0.0.1", port, connect_timeout=5)
                    try:
                        assert b"hello /t" in await request(s, "/t")
                    finally:
                        await s.aclose()
                    served += 1
                except Exception as exc:  # pragma: no cover - reported below
                    failures.append(exc)
                await trio.sleep(0)

        established = await client.connect("127.0.0.1", port, connect_timeout=5)
        assert b"hello /before" in await request(established, "/before")
        assert peer_certificate(established).subject == "CN=gen1.test"  # type: ignore[union-attr]

        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(traffic, stop)
            with trio.fail_after(10):
                while served < 3:
                    await trio.sleep(0.01)
            install(pki.ca.issue("gen2.test"), pki.server_cert, pki.server_key)
            assert tls.maybe_reload() is True
            assert tls.maybe_reload() is False  # nothing changed since
            mark = served
            with trio.fail_after(10):
                while served < mark + 3:
                    await trio.sleep(0.01)
            stop.set()
        assert failures == []
        assert tls.generation == 2
        assert [c.subject for c in tls.certificates() if c.role == "server"] == ["CN=gen2.test"]

        fresh = await client.connect("127.0.0.1", port, connect_timeout=5)
        assert peer_certificate(fresh).subject == "CN=gen2.test"  # type: ignore[union-attr]
        await fresh.aclose()
        # The connection established before the rotation keeps its session and keeps working.
        reply = await request(established, "/after")
        assert b"hello /after conn=1" in reply
        assert peer_certificate(established).subject == "CN=gen1.test"  # type: ignore[union-attr]
        await established.aclose()


async def test_broken_new_files_are_rejected_and_the_old_context_kept(pki: Pki, tmp_path: Path) -> None:
    tls = make_listener_tls(pki.server_cert, pki.server_key)
    client = ClientTls(m.ClientTls(common_name="localhost", trust_certs=(pki.ca_path,)))
    async with serving(Http1Server(hello), tls) as port:
        # A new certificate whose key has not been written yet: the pair does not match.
        newer = pki.ca.issue("newer.test")
        Path(pki.server_cert).write_bytes(newer.cert_pem)
        assert tls.maybe_reload() is False
        stats = tls.statistics()
        assert stats["reload_failures"] == 1
        assert stats["generation"] == 1
        assert stats["last_reload_error"] == (
            f"tls: the key {pki.server_key} does not belong to the certificate {pki.server_cert}; install "
            "the key the certificate was issued for (renew both together)"
        )
        assert tls.maybe_reload() is False  # no retry until the files change again
        assert tls.statistics()["reload_failures"] == 1
        s = await client.connect("127.0.0.1", port, connect_timeout=5)
        assert peer_certificate(s).subject == "CN=server.test"  # type: ignore[union-attr]
        await s.aclose()
        assert [c.subject for c in tls.certificates() if c.role == "server"] == ["CN=server.test"]

        # A truncated certificate file is rejected the same way.
        Path(pki.server_key).write_bytes(newer.key_pem)
        Path(pki.server_cert).write_bytes(newer.cert_pem[:100])
        assert tls.maybe_reload() is False
        assert tls.statistics()["last_reload_error"] == (
            f"tls.certPath: {pki.server_cert} holds no PEM certificate (expected '-----BEGIN CERTIFICATE-----' "
            "blocks)"
        )
        Path(pki.server_cert).write_bytes(newer.cert_pem)
        Path(pki.server_key).write_bytes(newer.key_pem[:60])
        assert tls.maybe_reload() is False
        assert tls.statistics()["last_reload_error"] == (
            f"tls.keyPath: {pki.server_key} is not a PEM private key (expected '-----BEGIN PRIVATE KEY-----', "
            "PKCS#8; PKCS#1 'RSA PRIVATE KEY' and SEC1 'EC PRIVATE KEY' are accepted too)"
        )
        assert tls.statistics()["reload_failures"] == 3
        Path(pki.server_key).write_bytes(newer.key_pem)

        # The complete pair loads.
        Path(pki.server_cert).write_bytes(newer.cert_pem)
        assert tls.maybe_reload() is True
        assert tls.statistics()["last_reload_error"] is None
        s = await client.connect("127.0.0.1", port, connect_timeout=5)
        assert peer_certificate(s).subject == "CN=newer.test"  # type: ignore[union-attr]
        await s.aclose()


async def test_client_trust_and_client_certificate_reload(pki: Pki, tmp_path: Path) -> None:
    new_ca = TestCA("next CA")
    trust = tmp_path / "trust.pem"
    trust.write_bytes(pki.ca.cert_pem)
    server_tls = make_listener_tls(pki.server_cert, pki.server_key, ca=pki.ca_path, require_client_auth=True)
    client = ClientTls(
        m.ClientTls(
            common_name="localhost",
            trust_certs_bundle=str(trust),
            client_auth=m.ClientAuth(cert_path=pki.client_cert, key_path=pki.client_key),
        )
    )

    seen: list[str] = []
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = TlsListener(listeners[0], server_tls)
    port = listeners[0].socket.getsockname()[1]

    async def accept_loop() -> None:
        while True:
            stream = await listener.accept()
            try:
                await stream.send_all(b"hi")
                cert = peer_certificate(stream)
                seen.append(cert.subject if cert else "")
            except trio.BrokenResourceError:
                pass
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_loop)
        s = await client.connect("127.0.0.1", port, connect_timeout=5)
        assert await s.receive_some(10) == b"hi"
        await s.aclose()

        # The server moves to a certificate from the next CA: the client does not trust it yet.
        install(new_ca.issue("server.test"), pki.server_cert, pki.server_key)
        server_tls.maybe_reload()
        with pytest.raises(TlsError) as err:
            await client.connect("127.0.0.1", port, connect_timeout=5)
        assert err.value.reason == "unknown-ca"
        # The trust bundle gains the next CA; the client's own certificate is renewed too.
        trust.write_bytes(pki.ca.cert_pem + new_ca.cert_pem)
        install(
            pki.ca.issue("client2.test", sans=("client2.test",), client=True, server=False),
            pki.client_cert,
            pki.client_key,
        )
        assert client.maybe_reload() is True
        assert client.generation == 2
        assert [c.subject for c in client.certificates()] == [
            "CN=client2.test",
            "CN=hostproxy test CA",
            "CN=next CA",
        ]
        s = await client.connect("127.0.0.1", port, connect_timeout=5)
        assert await s.receive_some(10) == b"hi"
        await s.aclose()
        nursery.cancel_scope.cancel()
    await listener.aclose()
    assert seen == ["CN=client.test", "CN=client2.test"]


class _Counting:
    def __init__(self, results: list[bool | Exception]) -> None:
        self.results = results
        self.calls = 0

    def maybe_reload(self) -> bool:
        r = self.results[min(self.calls, len(self.results) - 1)]
        self.calls += 1
        if isinstance(r, Exception):
            raise r
        return r


def test_reload_all_counts_and_survives_a_broken_object() -> None:
    ok = _Counting([True, False])
    bad = _Counting([RuntimeError("bug")])
    assert reload_all([bad, ok]) == 1
    assert reload_all([bad, ok]) == 0
    assert (ok.calls, bad.calls) == (2, 2)


async def test_watcher_polls_every_interval(autojump_clock: trio.testing.MockClock) -> None:
    objs: list[_Counting] = [_Counting([False])]
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: watch_certificates(lambda: objs, interval_s=5, task_status=task_status)
        )
        await trio.sleep(12)
        assert objs[0].calls == 2
        objs.append(_Counting([False]))  # created later (a new client): watched from then on
        await trio.sleep(5)
        assert [o.calls for o in objs] == [3, 1]
        nursery.cancel_scope.cancel()
