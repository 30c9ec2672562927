"""``admin.tls`` (Linkerd's key): the admin server over TLS, with and without client certificates, read by
curl and by ``hostproxy state``/``wtf`` (``--cacert``, ``--cert``, ``--key``); its certificate in
``/admin/tls.json``; ``hostproxy check`` on its files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.certs import Pki, make_pki
from tests.daemonutil import curl, fs_config, running_daemon
from tests.upstreams import running_upstream


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def admin_tls_config(disco: Path, tls: str) -> str:
    return fs_config(disco).replace(
        "admin: {ip: 127.0.0.1, port: 0}", f"admin:\n  ip: 127.0.0.1\n  port: 0\n  tls: {tls}"
    )


async def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "hostproxy", *args], capture_stdout=True, capture_stderr=True, check=False
    )


async def test_the_admin_server_speaks_tls_and_the_clis_read_it(pki: Pki, tmp_path: Path) -> None:
    disco = tmp_path / "disco"
    disco.mkdir()
    async with running_upstream() as up:
        (disco / "web").write_text(f"127.0.0.1 {up.port}\n")
        cfg = admin_tls_config(disco, f"{{certPath: {pki.server_cert}, keyPath: {pki.server_key}}}")
        async with running_daemon(cfg) as d:
            assert d.daemon.admin_address is not None
            port = d.daemon.admin_address[1]
            https = f"https://127.0.0.1:{port}"
            r = await curl(f"{https}/admin/ping", "--cacert", pki.ca_path)
            assert (r.status, r.body) == (200, b"pong")
            # Plaintext gets no admin page.
            plain = await curl(f"http://127.0.0.1:{port}/admin/ping")
            assert plain.status != 200 and plain.body != b"pong"
            # Unverified (no --cacert): curl refuses the certificate.
            assert (await curl(f"{https}/admin/ping")).exit_code != 0
            # Traffic is unaffected; the admin certificate is listed.
            assert (await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")).status == 200
            doc = (await curl(f"{https}/admin/tls.json", "--cacert", pki.ca_path)).json()
            assert isinstance(doc, dict)
            assert {(c["role"], c["router"], c["path"]) for c in doc["certificates"]} == {
                ("server", "admin", pki.server_cert)
            }
            state = await cli("state", "--admin", https, "--cacert", pki.ca_path, "--json")
            assert state.returncode == 0, state.stderr
            assert json.loads(state.stdout)["namers"]["/io.l5d.fs"]["names"]["web"]["state"] == "bound"
            wtf = await cli("wtf", "--admin", https, "--cacert", pki.ca_path, "--json")
            assert wtf.returncode == 0, wtf.stderr
            assert json.loads(wtf.stdout)["healthy"] is True
            # Without the CA: the certificate is not trusted, and the CLI says why.
            untrusted = await cli("state", "--admin", https)
            assert untrusted.returncode == 1
            assert b"CERTIFICATE_VERIFY_FAILED" in untrusted.stderr, untrusted.stderr
            # TLS options with a plaintext URL are a mistake, said so.
            mixed = await cli("state", "--admin", f"http://127.0.0.1:{port}", "--cacert", pki.ca_path)
            assert mixed.returncode == 1
            assert b"--cacert, --cert and --key are for an admin server with admin.tls" in mixed.stderr


async def test_require_client_auth_admits_only_a_client_certificate(pki: Pki, tmp_path: Path) -> None:
    disco = tmp_path / "disco"
    disco.mkdir()
    tls = (
        f"{{certPath: {pki.server_cert}, keyPath: {pki.server_key}, caCertPath: {pki.ca_path}, "
        "requireClientAuth: true}"
    )
    async with running_daemon(admin_tls_config(disco, tls)) as d:
        assert d.daemon.admin_address is not None
        https = f"https://127.0.0.1:{d.daemon.admin_address[1]}"
        anonymous = await curl(f"{https}/admin/ping", "--cacert", pki.ca_path)
        assert anonymous.status != 200
        r = await curl(f"{https}/admin/ping", *pki.curl_mtls())
        assert (r.status, r.body) == (200, b"pong")
        no_cert = await cli("wtf", "--admin", https, "--cacert", pki.ca_path)
        assert no_cert.returncode == 1
        with_cert = await cli(
            "wtf",
            "--admin",
            https,
            "--cacert",
            pki.ca_path,
            "--cert",
            pki.client_cert,
            "--key",
            pki.client_key,
        )
        assert with_cert.returncode == 0, with_cert.stderr
        bad_key = await cli("wtf", "--admin", https, "--cacert", pki.ca_path, "--key", pki.client_key)
        assert bad_key.returncode == 1 and b"--key needs --cert" in bad_key.stderr


ROUTER = "routers:\n- protocol: http\n  servers: [{port: 4140}]\n"


def check(tmp_path: Path, text: str, *flags: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "linkerd.yaml"
    cfg.write_text(text if "routers:" in text else text + ROUTER)
    return subprocess.run(
        [sys.executable, "-m", "hostproxy", "check", *flags, str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_reads_the_admin_certificate_files(pki: Pki, tmp_path: Path) -> None:
    ok = check(tmp_path, f"admin:\n  tls: {{certPath: {pki.server_cert}, keyPath: {pki.server_key}}}\n")
    assert ok.returncode == 0, ok.stderr
    # The client's key does not belong to the server's certificate.
    wrong = check(tmp_path, f"admin:\n  tls: {{certPath: {pki.server_cert}, keyPath: {pki.client_key}}}\n")
    assert wrong.returncode == 1
    assert "admin.tls" in wrong.stderr and "linkerd.yaml:2" in wrong.stderr, wrong.stderr
    no_ca = check(
        tmp_path,
        f"admin:\n  tls:\n    certPath: {pki.server_cert}\n    keyPath: {pki.server_key}\n"
        "    requireClientAuth: true\n",
    )
    assert no_ca.returncode == 1
    assert "admin.tls.requireClientAuth: requireClientAuth: true needs admin.tls.caCertPath" in no_ca.stderr


def test_linkerds_admin_tls_example_loads(tmp_path: Path) -> None:
    # linkerd/examples/admin-tls.yaml: its files are not on this machine (listed, not errors).
    text = """\
admin:
  ip: 0.0.0.0
  port: 9990
  tls:
    certPath: finagle/h2/src/e2e/resources/linkerd-tls-e2e-cert.pem
    keyPath: finagle/h2/src/e2e/resources/linkerd-tls-e2e-key.pem
    caCertPath: finagle/h2/src/e2e/resources/cacert.pem

telemetry:
- kind: io.l5d.recentRequests
  sampleRate: 1.0

routers:
- protocol: http
  label: linkerd-admin
  dtab: |
    /svc/* => /$/inet/127.1/9990;
  servers:
  - port: 4140
    ip: 0.0.0.0
"""
    proc = check(tmp_path, text, "--json")
    assert proc.returncode == 0, proc.stderr
    missing = json.loads(proc.stdout)["files_missing"]
    assert {m["path"] for m in missing} >= {"admin.tls.certPath", "admin.tls.keyPath", "admin.tls.caCertPath"}


def _subject(port: int, ca: str) -> str:
    import socket
    import ssl

    ctx = ssl.create_default_context(cafile=ca)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        cert = s.getpeercert()
    assert cert is not None
    return dict(x[0] for x in cert["subject"])["commonName"]


async def test_a_renewed_admin_certificate_is_served_without_a_restart(pki: Pki, tmp_path: Path) -> None:
    disco = tmp_path / "disco"
    disco.mkdir()
    cfg = admin_tls_config(disco, f"{{certPath: {pki.server_cert}, keyPath: {pki.server_key}}}")
    async with running_daemon(cfg) as d:
        assert d.daemon.admin_address is not None
        port = d.daemon.admin_address[1]
        assert await trio.to_thread.run_sync(_subject, port, pki.ca_path) == "server.test"
        renewed = pki.ca.issue("renewed.test", sans=("localhost", "127.0.0.1"))
        for path, data in ((pki.server_cert, renewed.cert_pem), (pki.server_key, renewed.key_pem)):
            Path(path + ".new").write_bytes(data)  # written aside and renamed over, as rotation tools do
            os.replace(path + ".new", path)
        # The certificate watch re-reads changed files every few seconds.
        with trio.fail_after(30):
            while await trio.to_thread.run_sync(_subject, port, pki.ca_path) != "renewed.test":
                await trio.sleep(0.2)
