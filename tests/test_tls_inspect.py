"""Certificate inspection (``/admin/tls.json`` content, ``expiring`` for ``wtf``) and the config check
for static client prefixes that a transformer made unmatchable."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from certs import Pki, days_from_now, make_listener_tls, make_pki
from sharedpath import COMPAT as _COMPAT_DIR

from hostproxy.config import model as m
from hostproxy.config.validate import load_config as _load_config
from hostproxy.tls import (
    ClientTls,
    check_tls_prefixes,
    config_certificates,
    expiring,
    read_certificates,
    tls_json,
)


def load_config(text: str | Path, source: str | None = None) -> m.Config:
    """The config as loaded before the prefix check: these tests call the check themselves."""
    return _load_config(text, source=source, check_client_prefixes=False)


COMPAT = _COMPAT_DIR / "k8s-daemonset__k8s__linkerd-tls.yaml"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


# -- inspection -----------------------------------------------------------------------------------------


def test_tls_json_shape_from_live_objects(pki: Pki) -> None:
    server = make_listener_tls(pki.server_cert, pki.server_key, ca=pki.ca_path)
    client = ClientTls(
        m.ClientTls(
            common_name="localhost",
            trust_certs=(pki.ca_path,),
            client_auth=m.ClientAuth(cert_path=pki.client_cert, key_path=pki.client_key),
        ),
        router="outgoing",
    )
    now = pki.server.cert.not_valid_before_utc + dt.timedelta(days=1, hours=1)
    body = tls_json([*server.certificates(), *client.certificates()], now)
    assert list(body) == ["certificates"]
    certs = body["certificates"]
    assert sorted((c["role"], c["router"], c["path"]) for c in certs) == [
        ("ca", "outgoing", pki.ca_path),
        ("ca", "test", pki.ca_path),
        ("client", "outgoing", pki.client_cert),
        ("server", "test", pki.server_cert),
    ]
    # Soonest expiry first: the leaves (90 days) before the CA (10 years).
    assert [c["notAfter"] for c in certs] == sorted(c["notAfter"] for c in certs)
    assert [c["role"] for c in certs][2:] == ["ca", "ca"]
    first = next(c for c in certs if c["role"] == "server")
    assert first == {
        "path": pki.server_cert,
        "role": "server",
        "router": "test",
        "subject": "CN=server.test",
        "sans": ["DNS:localhost", "IP:127.0.0.1", "DNS:proxy.test"],
        "issuer": "CN=hostproxy test CA",
        "notAfter": pki.server.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "daysLeft": 89,
    }


def test_read_certificates_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        read_certificates(b"not a certificate", path="x", role="ca")


def test_expiring_within_14_days_includes_expired(pki: Pki) -> None:
    soon = pki.ca.issue("soon.test", not_after=days_from_now(10))
    later = pki.ca.issue("later.test", not_after=days_from_now(30))
    gone = pki.ca.issue("gone.test", not_before=days_from_now(-20), not_after=days_from_now(-1))
    infos = [
        *read_certificates(soon.cert_pem, path="soon.pem", role="server"),
        *read_certificates(later.cert_pem, path="later.pem", role="server"),
        *read_certificates(gone.cert_pem, path="gone.pem", role="client"),
    ]
    now = dt.datetime.now(dt.UTC)
    assert [c.path for c in expiring(infos, now)] == ["gone.pem", "soon.pem"]
    assert [c.path for c in expiring(infos, now, days=60)] == ["gone.pem", "soon.pem", "later.pem"]
    assert expiring(infos, now - dt.timedelta(days=100)) == []
    assert [c.days_left(now) for c in infos] == [9, 29, -2]


def test_config_certificates_reads_every_file_named(pki: Pki, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    cfg = load_config(
        f"""
routers:
- protocol: http
  label: incoming
  servers:
  - port: 4141
    tls: {{certPath: {pki.server_cert}, keyPath: {pki.server_key}, caCertPath: {pki.ca_path}}}
- protocol: h2
  label: outgoing
  servers: [{{port: 4142}}]
  client:
    kind: io.l5d.static
    configs:
    - prefix: /
      tls:
        commonName: linkerd
        trustCertsBundle: {pki.ca_path}
        clientAuth: {{certPath: {pki.client_cert}, keyPath: {pki.client_key}}}
    - prefix: /$/inet/{{host}}
      tls: {{commonName: "{{host}}", trustCerts: [{missing}]}}
""",
        source="t.yaml",
    )
    certs = config_certificates(cfg)
    assert [(c.role, c.router, c.path, c.subject) for c in certs] == [
        ("server", "incoming", pki.server_cert, "CN=server.test"),
        ("ca", "incoming", pki.ca_path, "CN=hostproxy test CA"),
        ("client", "outgoing", pki.client_cert, "CN=client.test"),
        ("ca", "outgoing", pki.ca_path, "CN=hostproxy test CA"),
        ("ca", "outgoing", missing, ""),
    ]
    assert certs[-1].error == f"cannot read certificate {missing}: No such file or directory"
    body = tls_json(certs, dt.datetime.now(dt.UTC))
    assert body["certificates"][0]["path"] == missing  # unreadable ones first, with their error
    assert body["certificates"][0]["error"].startswith("cannot read certificate")
    assert body["certificates"][0]["daysLeft"] is None


# -- check_tls_prefixes ---------------------------------------------------------------------------------


def _router(transformers: str, prefix: str, *, namer_transformers: str = "") -> str:
    return f"""
namers:
- kind: io.l5d.fs
  rootDir: /tmp{namer_transformers}
routers:
- protocol: http
  interpreter:
    kind: default
    transformers:{transformers}
  servers: [{{port: 4140}}]
  client:
    kind: io.l5d.static
    configs:
    - prefix: /
      requestAttemptTimeoutMs: 100
    - prefix: {prefix}
      tls: {{commonName: "{{service}}.internal", trustCerts: [/ca.pem]}}
"""


PORT = """
    - kind: io.l5d.port
      port: 4141"""


def test_prefix_renamed_by_a_port_transformer_is_caught_with_the_fix() -> None:
    text = _router(PORT, "/#/io.l5d.fs/{service}")
    issues = check_tls_prefixes(load_config(text, source="l5d.yaml"), file="l5d.yaml")
    assert [(i.file, i.line, i.path) for i in issues] == [
        ("l5d.yaml", 18, "routers[0].client.configs[1].prefix")
    ]
    assert issues[0].message == (
        "client prefix '/#/io.l5d.fs/{service}' matches no client, so its tls settings never apply: the "
        "transformer(s) io.l5d.port rename clients of /#/io.l5d.fs to '/%/io.l5d.port/4141/#/io.l5d.fs/...'; "
        "write the prefix as '/%/io.l5d.port/4141/#/io.l5d.fs/{service}'"
    )
    assert issues[0].format().startswith("l5d.yaml:18: routers[0].client.configs[1].prefix: client prefix")
    fixed = _router(PORT, "/%/io.l5d.port/4141/#/io.l5d.fs/{service}")
    assert check_tls_prefixes(load_config(fixed, source="t")) == []
    wildcard = _router(PORT, "/%/io.l5d.port/*/#/io.l5d.fs/{service}")
    assert check_tls_prefixes(load_config(wildcard, source="t")) == []


def test_without_transformers_the_plain_prefix_is_fine() -> None:
    assert check_tls_prefixes(load_config(_router(" []", "/#/io.l5d.fs/{service}"), source="t")) == []


def test_chained_and_namer_transformers() -> None:
    chain = (
        PORT
        + """
    - kind: io.l5d.k8s.localnode"""
    )
    issues = check_tls_prefixes(load_config(_router(chain, "/#/io.l5d.fs/{service}"), source="t"))
    assert len(issues) == 1
    assert issues[0].message.endswith(
        "write the prefix as '/%/io.l5d.k8s.localnode/*/%/io.l5d.port/4141/#/io.l5d.fs/{service}'"
    )
    ok = _router(chain, "/%/io.l5d.k8s.localnode/{node}/%/io.l5d.port/4141/#/io.l5d.fs/{service}")
    assert check_tls_prefixes(load_config(ok, source="t")) == []

    namer_level = """
  transformers:
  - kind: io.l5d.localhost"""
    text = _router(" []", "/#/io.l5d.fs/{service}", namer_transformers=namer_level)
    issues = check_tls_prefixes(load_config(text, source="t"))
    assert [i.message.rsplit("; ", 1)[1] for i in issues] == [
        "write the prefix as '/%/io.l5d.localhost/#/io.l5d.fs/{service}'"
    ]


def test_service_names_are_not_client_names() -> None:
    issues = check_tls_prefixes(load_config(_router(" []", "/svc/{service}"), source="t"))
    assert [i.message for i in issues] == [
        "client prefix '/svc/{service}' matches no client, so its tls settings never apply: client "
        "parameters match bound client names, which here look like '/#/io.l5d.fs/...', '/$/...'; "
        "per-service settings (names like '/svc/...') go in the 'service' section"
    ]


def test_rinet_egress_pattern_and_unknown_namers_are_not_flagged() -> None:
    egress = _router(" []", "/$/io.buoyant.rinet/443/{service}")
    assert check_tls_prefixes(load_config(egress, source="t")) == []
    other_namer = _router(" []", "/#/io.l5d.k8s/default/{service}")
    assert check_tls_prefixes(load_config(other_namer, source="t")) == []


def test_linkerd_daemonset_tls_example_loads_and_passes() -> None:
    cfg = load_config(COMPAT)
    assert check_tls_prefixes(cfg, file=str(COMPAT)) == []
    outgoing = cfg.router("outgoing")
    assert outgoing.client.entries[0].params.tls.common_name == "linkerd"
    incoming = cfg.router("incoming")
    assert incoming.servers[0].tls.key_path == "/io.buoyant/linkerd/certs/key.pk8"


def test_daemonset_static_prefix_written_without_the_transformer_is_caught() -> None:
    text = (
        COMPAT.read_text()
        .replace(
            "  client:\n    tls:\n      commonName: linkerd\n",
            "  client:\n    kind: io.l5d.static\n    configs:\n    - prefix: /#/io.l5d.k8s/default/http/{service}\n"
            "      tls:\n        commonName: linkerd\n",
        )
        .replace("      trustCerts:\n      - /io.buoyant", "        trustCerts:\n        - /io.buoyant")
    )
    issues = check_tls_prefixes(load_config(text, source="d.yaml"))
    assert len(issues) == 1
    assert issues[0].message.endswith(
        "write the prefix as '/%/io.l5d.k8s.daemonset/default/incoming/l5d/#/io.l5d.k8s/default/http/{service}'"
    )
