"""TLS wired into the daemon, end to end with real clients on loopback.

Server side: curl over TLS to a daemon's TLS server (``--cacert``), mTLS (refused without a client
certificate, served with one), ``forwardClientCert``, the startup error for a missing key, and the
drain backlog served over TLS. Client side: a TLS failure toward an upstream (unknown CA, name
mismatch, expired certificate, no client certificate) is a 502 with the reason in ``l5d-err``,
counted under cause ``tls`` and explained by ``hostproxy wtf --json``. ``/admin/tls.json`` shape and
the 14-day expiry warning.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from certs import Pki, TestCA, days_from_now, hello, make_listener_tls, make_pki, serving
from cryptography.hazmat.primitives.serialization import Encoding

from hostproxy.config import load_config
from hostproxy.daemon import Daemon, TlsStartupError
from hostproxy.http import Http1Server
from hostproxy.http.server import _take_backlog
from hostproxy.tls import TlsListener, TlsStream
from tests.daemonutil import curl, running_daemon
from tests.upstreams import running_upstream

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def tls_server_config(
    pki: Pki, app_port: int, *, mtls: bool = False, forward_cert: bool = False, extra_server: str = ""
) -> str:
    ca = f"\n      caCertPath: {pki.ca_path}\n      requireClientAuth: true" if mtls else ""
    fwd = "\n  client:\n    forwardClientCert: true" if forward_cert else ""
    return f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: http
  label: edge
  dtab: /svc => /$/inet/127.0.0.1/{app_port};{fwd}
  servers:
  - ip: 127.0.0.1
    port: 0
    tls:
      certPath: {pki.server_cert}
      keyPath: {pki.server_key}{ca}{extra_server}
"""


# -- the daemon as a TLS server ------------------------------------------------------------------------


async def test_curl_https_to_the_daemon(pki: Pki) -> None:
    async with running_upstream() as app, running_daemon(tls_server_config(pki, app.port)) as d:
        url = f"https://localhost:{d.port('edge')}/headers"
        r = await curl(url, "--cacert", pki.ca_path, "-H", "Host: web")
        assert r.status == 200, r
        seen = app.requests[-1]
        assert seen.header("l5d-dst-service") == "/svc/web"
        # Plaintext HTTP on the TLS port is answered in plaintext, 400 saying to use https; it never
        # reaches the router.
        before = len(app.requests)
        r = await curl(f"http://127.0.0.1:{d.port('edge')}/", "-H", "Host: web", timeout=5)
        assert r.status == 400 and r.headers["l5d-err"].startswith("This port speaks TLS"), r
        assert len(app.requests) == before
        # A client that does not trust the daemon's CA refuses it.
        r = await curl(url, "-H", "Host: web", timeout=5)
        assert r.status == 0 and r.exit_code == 60  # curl: peer certificate cannot be authenticated


async def test_mtls_refuses_a_client_without_certificate_and_serves_one_with(pki: Pki) -> None:
    async with running_upstream() as app, running_daemon(tls_server_config(pki, app.port, mtls=True)) as d:
        url = f"https://localhost:{d.port('edge')}/headers"
        r = await curl(url, "--cacert", pki.ca_path, "-H", "Host: web", timeout=5)
        assert r.status == 0 and r.exit_code != 0
        r = await curl(
            url,
            *pki.curl_mtls(),
            "-H",
            "Host: web",
        )
        assert r.status == 200, r
        slot = next(iter(d.daemon.slots.values()))
        assert slot.tls is not None
        stats = slot.tls.statistics()
        assert stats["handshake_failures"].get("no-client-certificate", 0) >= 1, stats
        assert stats["handshakes"] >= 1


async def test_forward_client_cert_sets_and_strips_the_header(pki: Pki) -> None:
    cfg = tls_server_config(pki, 0, mtls=True, forward_cert=True)
    async with running_upstream() as app:
        cfg = cfg.replace("/$/inet/127.0.0.1/0;", f"/$/inet/127.0.0.1/{app.port};")
        async with running_daemon(cfg) as d:
            r = await curl(
                f"https://localhost:{d.port('edge')}/headers",
                *pki.curl_mtls(),
                "-H",
                "Host: web",
                "-H",
                'x-forwarded-client-cert: Subject="CN=forged"',
            )
            assert r.status == 200, r
            values = [v for n, v in app.requests[-1].headers if n == "x-forwarded-client-cert"]
            assert len(values) == 1, values
            digest = hashlib.sha256(pki.client.cert.public_bytes(Encoding.DER)).hexdigest()
            assert values[0].startswith(f'Hash={digest};Cert="-----BEGIN%20CERTIFICATE-----'), values[0]
            assert 'Subject="CN=client.test"' in values[0]
            assert values[0].endswith(";DNS=client.test")
            assert "forged" not in values[0]


async def test_a_missing_key_stops_the_start_with_the_path(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    cfg = tls_server_config(pki, 9).replace(pki.server_key, str(missing))
    daemon = Daemon(load_config(cfg, source="test.yaml"))
    with pytest.raises(
        TlsStartupError,
        match=(
            rf"^routers\[0\]\.servers\[0\]\.tls\.keyPath: cannot read {missing}: No such file or directory; "
            r"check the path and that hostproxy may read it$"
        ),
    ):
        await daemon.run()


async def test_hostproxy_run_reports_a_missing_certificate_and_exits(pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "hp.yaml"
    path.write_text(tls_server_config(pki, 9).replace(pki.server_cert, str(tmp_path / "gone.pem")))
    with trio.fail_after(30):
        proc = await trio.run_process(
            [sys.executable, "-m", "hostproxy", "run", str(path)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert proc.returncode == 1
    assert (
        f"hostproxy: failed to start: routers[0].servers[0].tls.certPath: cannot read {tmp_path}/gone.pem"
        in proc.stderr.decode()
    ), proc.stderr.decode()[-2000:]


async def test_drain_backlog_connections_are_served_over_tls(pki: Pki) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    tls_listener = TlsListener(listeners[0], make_listener_tls(pki.server_cert, pki.server_key))
    server = Http1Server(hello)
    port = listeners[0].socket.getsockname()[1]
    with socket.create_connection(("127.0.0.1", port)) as queued:
        # Wait until the kernel has queued it: the listener is not being served, so it stays there.
        with trio.fail_after(5):
            while True:
                _take_backlog(server, tls_listener)
                if server._backlog:
                    break
                await trio.sleep(0.01)
        assert len(server._backlog) == 1
        assert isinstance(server._backlog[0], TlsStream)
        queued.close()
    for s in server._backlog:
        await s.aclose()
    await tls_listener.aclose()


# -- TLS failures toward upstreams: 502, l5d-err, metrics, wtf -------------------------------------------


def tls_client_config(upstream_port: int, client_tls: str) -> str:
    return f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: http
  label: out
  dtab: /svc => /$/inet/127.0.0.1/{upstream_port};
  servers: [{{ip: 127.0.0.1, port: 0}}]
  client:
    failureAccrual: {{kind: none}}
    tls:
{client_tls}
"""


async def wtf_json(admin: str) -> dict:  # type: ignore[type-arg]
    with trio.fail_after(30):
        proc = await trio.run_process(
            [sys.executable, "-m", "hostproxy", "wtf", "--admin", admin, "--json"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert proc.returncode in (0, 1), proc.stderr.decode()[-2000:]
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _failure_cases(pki: Pki, tmp_path: Path) -> list[tuple[str, str, tuple[str, str], str, str]]:
    """(name, client tls yaml, upstream (cert, key), reason word, l5d-err fragment)."""
    other = TestCA("some other CA")
    oc, ok = other.issue("server.test", sans=("localhost", "127.0.0.1")).write(tmp_path, "other-server")
    ec, ek = pki.ca.issue(
        "server.test",
        sans=("localhost", "127.0.0.1"),
        not_before=days_from_now(-30),
        not_after=days_from_now(-2),
    ).write(tmp_path, "expired")
    trust = f"      commonName: localhost\n      trustCerts: [{pki.ca_path}]"
    return [
        ("unknown-ca", trust, (oc, ok), "unknown-ca", "CN=some other CA"),
        (
            "name-mismatch",
            trust.replace("localhost", "billing.internal"),
            (pki.server_cert, pki.server_key),
            "name-mismatch",
            "billing.internal",
        ),
        ("expired", trust, (ec, ek), "expired", "expired"),
    ]


@pytest.mark.parametrize("case", ["unknown-ca", "name-mismatch", "expired", "no-client-certificate"])
async def test_tls_failure_is_a_502_with_the_reason_counted_as_tls(
    pki: Pki, tmp_path: Path, case: str
) -> None:
    cases = {c[0]: c for c in _failure_cases(pki, tmp_path)}
    ca = None
    if case == "no-client-certificate":
        client_tls = f"      commonName: localhost\n      trustCerts: [{pki.ca_path}]"
        upstream, fragment, ca = (
            (pki.server_cert, pki.server_key),
            "requires a client certificate",
            pki.ca_path,
        )
    else:
        _, client_tls, upstream, _, fragment = cases[case]
    listener_tls = make_listener_tls(*upstream, ca=ca, require_client_auth=ca is not None)
    async with (
        serving(Http1Server(hello), listener_tls) as up_port,
        running_daemon(tls_client_config(up_port, client_tls)) as d,
    ):
        r = await curl(f"http://127.0.0.1:{d.port('out')}/x", "-H", "Host: web")
        assert r.status == 502, r
        assert r.l5d_err is not None and r.l5d_err.startswith(
            f"TLS handshake with 127.0.0.1:{up_port} failed"
        )
        assert fragment in r.l5d_err, r.l5d_err
        assert "service name: /svc/web" in r.l5d_err
        metrics = (await curl(f"{d.admin}/admin/metrics.json")).json()
        assert isinstance(metrics, dict)
        assert metrics["rt/out/service/svc/web/failures/tls"] >= 1, {
            k: v for k, v in metrics.items() if "fail" in k
        }
        report = await wtf_json(d.admin)
        tls = [f for f in report["findings"] if f["cause"] == "tls"]
        assert tls, report
        assert tls[0]["service"] == "/svc/web"
        assert tls[0]["endpoint"] == f"127.0.0.1:{up_port}"
        assert fragment in tls[0]["verdict"], tls[0]["verdict"]
        state = (await curl(f"{d.admin}/client_state.json")).json()
        assert isinstance(state, dict)
        last = state[f"/$/inet/127.0.0.1/{up_port}"]["tls"]["lastError"]
        expected_reason = "client-certificate-required" if case == "no-client-certificate" else cases[case][3]
        assert last["reason"] == expected_reason


async def test_mtls_to_an_upstream_succeeds_with_client_auth(pki: Pki) -> None:
    listener_tls = make_listener_tls(
        pki.server_cert, pki.server_key, ca=pki.ca_path, require_client_auth=True
    )
    client_tls = (
        f"      commonName: localhost\n      trustCerts: [{pki.ca_path}]\n"
        f"      clientAuth: {{certPath: {pki.client_cert}, keyPath: {pki.client_key}}}"
    )
    async with (
        serving(Http1Server(hello), listener_tls) as up_port,
        running_daemon(tls_client_config(up_port, client_tls)) as d,
    ):
        for i in range(3):
            r = await curl(f"http://127.0.0.1:{d.port('out')}/x{i}", "-H", "Host: web")
            assert r.status == 200, r
            assert r.body.startswith(f"hello /x{i} conn=".encode())
        assert listener_tls.statistics()["handshakes"] == 1  # one pooled TLS connection carried all three


async def test_a_missing_trust_file_stops_the_start(pki: Pki, tmp_path: Path) -> None:
    client_tls = f"      commonName: localhost\n      trustCerts: [{tmp_path}/ca-gone.pem]"
    daemon = Daemon(load_config(tls_client_config(9, client_tls), source="test.yaml"))
    with pytest.raises(BaseExceptionGroup) as info:
        await daemon.run()
    errors = info.value.exceptions
    assert len(errors) == 1 and isinstance(errors[0], TlsStartupError)
    assert str(errors[0]) == (
        f"routers[0].client.tls.trustCerts: cannot read {tmp_path}/ca-gone.pem: No such file "
        "or directory; check the path and that hostproxy may read it"
    )


# -- /admin/tls.json and the expiry warning --------------------------------------------------------------


async def test_admin_tls_json_lists_certificates_and_wtf_warns_before_expiry(
    pki: Pki, tmp_path: Path
) -> None:
    soon = pki.ca.issue("soon.test", sans=("localhost",), not_after=days_from_now(5.5))
    sc, sk = soon.write(tmp_path, "soon")
    client_tls = (
        f"      commonName: localhost\n      trustCerts: [{pki.ca_path}]\n"
        f"      clientAuth: {{certPath: {pki.client_cert}, keyPath: {pki.client_key}}}"
    )
    cfg = tls_client_config(9, client_tls).replace(
        "  servers: [{ip: 127.0.0.1, port: 0}]",
        f"  servers:\n  - ip: 127.0.0.1\n    port: 0\n    tls: {{certPath: {sc}, keyPath: {sk}}}",
    )
    async with running_daemon(cfg) as d:
        doc = (await curl(f"{d.admin}/admin/tls.json")).json()
        assert isinstance(doc, dict) and list(doc) == ["certificates"]
        certs = doc["certificates"]
        assert {(c["role"], c["path"]) for c in certs} == {
            ("server", sc),
            ("client", pki.client_cert),
            ("ca", pki.ca_path),
        }
        for c in certs:
            assert set(c) == {"path", "role", "router", "subject", "sans", "issuer", "notAfter", "daysLeft"}
            assert c["router"] == "out"
            assert c["notAfter"].endswith("Z")
        assert certs[0]["path"] == sc  # soonest expiry first
        assert certs[0]["subject"] == "CN=soon.test"
        assert certs[0]["sans"] == ["DNS:localhost"]
        assert certs[0]["issuer"] == "CN=hostproxy test CA"
        assert certs[0]["daysLeft"] == 5
        client = next(c for c in certs if c["role"] == "client")
        assert 88 <= client["daysLeft"] <= 90
        report = await wtf_json(d.admin)
        expiring = [f for f in report["findings"] if f["cause"] == "tls"]
        assert len(expiring) == 1, report
        assert expiring[0]["severity"] == "warning"
        assert expiring[0]["verdict"] == (
            f"server certificate {sc} (CN=soon.test) expires in 5 day(s), on {certs[0]['notAfter']}"
        )


def test_hostproxy_check_loads_the_linkerd_tls_example() -> None:
    from sharedpath import COMPAT

    example = COMPAT / "k8s-daemonset__k8s__linkerd-tls.yaml"
    out = subprocess.run(
        [sys.executable, "-m", "hostproxy", "check", str(example)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr.decode()
    assert b"2 routers: outgoing (http) on 0.0.0.0:4140; incoming (http) on 0.0.0.0:4141" in out.stdout


def test_a_static_tls_prefix_renamed_by_a_transformer_is_a_config_error(tmp_path: Path) -> None:
    from hostproxy.config import ConfigError

    text = f"""namers:
- kind: io.l5d.fs
  rootDir: {tmp_path}
routers:
- protocol: http
  dtab: /svc => /#/io.l5d.fs;
  interpreter:
    kind: default
    transformers:
    - kind: io.l5d.port
      port: 4141
  servers: [{{port: 4140}}]
  client:
    kind: io.l5d.static
    configs:
    - prefix: /#/io.l5d.fs/{{service}}
      tls:
        commonName: "{{service}}.example"
"""
    with pytest.raises(ConfigError) as info:
        load_config(text, source="l5d.yaml")
    assert [i.format() for i in info.value.errors] == [
        "l5d.yaml:16: routers[0].client.configs[0].prefix: client prefix '/#/io.l5d.fs/{service}' matches no "
        "client, so its tls settings never apply: the transformer(s) io.l5d.port rename clients of /#/io.l5d.fs "
        "to '/%/io.l5d.port/4141/#/io.l5d.fs/...'; write the prefix as '/%/io.l5d.port/4141/#/io.l5d.fs/{service}'"
    ]
    fixed = text.replace(
        "- prefix: /#/io.l5d.fs/{service}", "- prefix: /%/io.l5d.port/4141/#/io.l5d.fs/{service}"
    )
    assert load_config(fixed, source="l5d.yaml").routers[0].client is not None
