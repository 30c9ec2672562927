"""Linkerd 1 configs as its examples and config reference write them: keys and kinds that must load
(with Linkerd's meaning), and the ones hostproxy refuses naming what to use instead."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from dtab import Path as DPath
from hostproxy.config import client_params_for, load_config, service_params_for
from namers.dnssrv import DnsSrvNamer, SrvFailure
from namers.dnssrv import from_config as dnssrv_from_config
from namers.rewrite import RewriteNamer
from tests.daemonutil import curl, fs_config, running_daemon
from tests.dnsserver import running_dnsmasq
from tests.upstreams import running_upstream


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """``hostproxy check`` (the real CLI) on ``text``."""
    cfg = tmp_path / "linkerd.yaml"
    cfg.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "hostproxy", "check", str(cfg)], capture_output=True, text=True, timeout=60
    )


def check_errors(tmp_path: Path, text: str) -> list[str]:
    """The error lines of ``hostproxy check`` without the file name and line: ``path: message``."""
    proc = check(tmp_path, text)
    assert proc.returncode == 1, proc.stdout
    return [ln.split(": ", 1)[1] for ln in proc.stderr.splitlines()[:-1]]


# -- a prefix written with a trailing '/' --------------------------------------------------------------
# Linkerd splits a prefix (and an io.l5d.rewrite pattern) on '/' and drops the empty pieces at the end, so
# "/#/io.l5d.fs/" is "/#/io.l5d.fs": its client TLS example for linker-to-linker TLS writes the prefix so.

TRAILING_SLASH_CLIENT = """\
routers:
- protocol: http
  interpreter:
    kind: default
    transformers:
    - {kind: io.l5d.port, port: 4141}
  dtab: /svc => /#/io.l5d.fs;
  client:
    kind: io.l5d.static
    configs:
    - prefix: /%/io.l5d.port/4141/#/io.l5d.fs/
      tls: {commonName: mesh.example, trustCertsBundle: /etc/ca.pem}
  service:
    kind: io.l5d.static
    configs:
    - prefix: /svc/
      totalTimeoutMs: 700
  servers:
  - port: 4140
"""


def test_a_prefix_with_a_trailing_slash_is_the_prefix_without_it(tmp_path: Path) -> None:
    proc = check(tmp_path, TRAILING_SLASH_CLIENT)
    assert proc.returncode == 0, proc.stderr
    router = load_config(TRAILING_SLASH_CLIENT, source="t.yaml").routers[0]
    tls = client_params_for(router, DPath.read("/%/io.l5d.port/4141/#/io.l5d.fs/web")).tls
    assert tls is not None and tls.common_name == "mesh.example"
    assert client_params_for(router, DPath.read("/$/inet/127.0.0.1/80")).tls is None
    assert service_params_for(router, DPath.read("/svc/web")).total_timeout_ms == 700


def test_two_slashes_inside_a_prefix_are_still_refused(tmp_path: Path) -> None:
    text = TRAILING_SLASH_CLIENT.replace("/%/io.l5d.port/4141/#/io.l5d.fs/", "/%/io.l5d.port//#/io.l5d.fs")
    assert check_errors(tmp_path, text) == [
        "routers[0].client.configs[0].prefix: empty segment in prefix '/%/io.l5d.port//#/io.l5d.fs' "
        "(two '/' in a row)"
    ]


async def test_a_static_client_entry_with_a_trailing_slash_applies_to_its_clients(tmp_path: Path) -> None:
    """The running daemon: the entry's loadBalancer is the one the client gets."""
    disco = tmp_path / "disco"
    disco.mkdir()
    async with running_upstream() as up:
        (disco / "app").write_text(f"127.0.0.1 {up.port}\n")
        text = fs_config(disco) + (
            "  client:\n    kind: io.l5d.static\n    configs:\n"
            "    - prefix: /#/io.l5d.fs/\n      loadBalancer: {kind: roundRobin}\n"
        )
        async with running_daemon(text) as d:
            r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: app")
            assert r.status == 200, r.l5d_err
            state = (await curl(f"{d.admin}/client_state.json")).json()
            assert state["/#/io.l5d.fs/app"]["loadBalancer"]["kind"] == "roundRobin"


def test_a_rewrite_pattern_with_a_trailing_slash_is_the_pattern_without_it() -> None:
    n = RewriteNamer("/{service}/api/", "/srv/{service}")
    assert str(n.lookup(DPath.read("/web/api")).value) == "/srv/web"  # type: ignore[attr-defined]


@pytest.mark.parametrize("pattern", ["/a//b", "//b"])
def test_a_rewrite_pattern_with_two_slashes_inside_is_still_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match=r"has an empty segment \('//'\)$"):
        RewriteNamer(pattern, "/x")


# -- Linkerd kinds hostproxy does not have: named as Linkerd's, with what to use instead -----------------


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "namers:\n- {kind: io.l5d.k8s.istio, experimental: true, host: istio-pilot, port: 8080}\n",
            "namers[0].kind: namer kind 'io.l5d.k8s.istio' is a Linkerd namer that hostproxy does not "
            "support; use the io.l5d.k8s namer (Kubernetes Endpoints, with labelSelector for versions) or the "
            "io.l5d.fs namer",
        ),
        (
            "routers:\n- protocol: http\n  interpreter: {kind: io.l5d.k8s.istio, experimental: true}\n"
            "  servers: [{port: 4140}]\n",
            "routers[0].interpreter.kind: interpreter kind 'io.l5d.k8s.istio' is a Linkerd interpreter that "
            "hostproxy does not support; use a dtab file instead: interpreter: {kind: io.l5d.fs, dtabFile: FILE}",
        ),
        (
            "routers:\n- protocol: http\n  identifier: {kind: io.l5d.k8s.istio-ingress}\n"
            "  servers: [{port: 4140}]\n",
            "routers[0].identifier.kind: identifier kind 'io.l5d.k8s.istio-ingress' is a Linkerd identifier "
            "that hostproxy does not support; use io.l5d.header.token and route ingress hosts in the dtab",
        ),
        (
            "routers:\n- protocol: h2\n  identifier: {kind: io.l5d.k8s.istio-ingress}\n"
            "  servers: [{port: 4142}]\n",
            "routers[0].identifier.kind: identifier kind 'io.l5d.k8s.istio-ingress' is a Linkerd identifier "
            "that hostproxy does not support; use io.l5d.header.token and route ingress hosts in the dtab",
        ),
    ],
)
def test_linkerds_istio_kinds_are_named_as_linkerds(tmp_path: Path, text: str, error: str) -> None:
    """Not "unknown kind ...; did you mean 'io.l5d.k8s'?", which sends the reader to a namer that
    reads neither Pilot's routes nor its config."""
    if not text.startswith("routers:"):
        text += "routers:\n- protocol: http\n  servers: [{port: 4140}]\n"
    assert check_errors(tmp_path, text) == [error]


def test_announcers_and_request_authorizers_say_what_to_use_instead(tmp_path: Path) -> None:
    text = """\
routers:
- protocol: http
  announcers:
  - {kind: io.l5d.serversets, zkAddrs: [{host: 127.0.0.1, port: 2181}]}
  requestAuthorizers:
  - {kind: io.l5d.k8s.istio, mixerHost: mixer, mixerPort: 9091}
  servers:
  - port: 4140
    announce: [/#/io.l5d.serversets/web]
"""
    announce = (
        "is a Linkerd key that hostproxy does not support: hostproxy registers nothing with service "
        "discovery; register the service where its callers' namer looks (its io.l5d.fs file, a Kubernetes "
        "Service, DNS) and remove it"
    )
    assert check_errors(tmp_path, text) == [
        f"routers[0].announcers: 'announcers' {announce}",
        "routers[0].requestAuthorizers: 'requestAuthorizers' is a Linkerd key that hostproxy does not support: "
        "its one kind (io.l5d.k8s.istio) asks Istio's Mixer; authorize in the application, or admit only "
        "callers with a client certificate (servers[].tls.requireClientAuth), and remove it",
        f"routers[0].servers[0].announce: 'announce' {announce}",
    ]


# -- Linkerd keys whose value asks for what hostproxy does anyway ---------------------------------------


def test_compression_level_zero_and_an_access_log_that_never_rolls_load(tmp_path: Path) -> None:
    """compressionLevel: 0 is Linkerd's "do not compress", what hostproxy does; a roll policy of never
    (Linkerd's default) rolls nothing, so the count of rolled files to keep is moot."""
    text = """\
routers:
- protocol: http
  compressionLevel: 0
  httpAccessLog: access.log
  httpAccessLogRollPolicy: Never
  httpAccessLogRotateCount: -1
  servers: [{port: 4140}]
- protocol: h2
  h2AccessLog: h2access.log
  h2AccessLogRollPolicy: never
  h2AccessLogRotateCount: 7
  servers: [{port: 4142}]
"""
    proc = check(tmp_path, text)
    assert proc.returncode == 0, proc.stderr


def test_compression_levels_and_access_log_rolling_load(tmp_path: Path) -> None:
    text = """\
routers:
- protocol: http
  compressionLevel: -1
  httpAccessLog: access.log
  httpAccessLogRollPolicy: daily
  httpAccessLogRotateCount: 7
  servers: [{port: 4140}]
- protocol: http
  label: nine
  compressionLevel: 9
  servers: [{port: 4141}]
- protocol: h2
  h2AccessLog: h2access.log
  h2AccessLogRollPolicy: 100.megabytes
  servers: [{port: 4142}]
"""
    proc = check(tmp_path, text)
    assert proc.returncode == 0, proc.stderr


async def test_compression_level_zero_leaves_responses_as_the_upstream_sent_them(tmp_path: Path) -> None:
    disco = tmp_path / "disco"
    disco.mkdir()
    async with running_upstream() as up:
        (disco / "app").write_text(f"127.0.0.1 {up.port}\n")
        text = fs_config(disco) + "  compressionLevel: 0\n"
        async with running_daemon(text) as d:
            r = await curl(
                f"http://127.0.0.1:{d.port('out')}/headers", "-H", "Host: app", "-H", "Accept-Encoding: gzip"
            )
            assert r.status == 200, r.l5d_err
            assert r.header("content-encoding") is None
            assert r.header("content-type") == "application/json"
            assert b'"accept-encoding", "gzip"' in r.body


# -- the access log of Linkerd's access-log examples -----------------------------------------------------


async def test_access_log_lines_give_the_response_bytes(tmp_path: Path) -> None:
    """The last field of a line is the response's Content-Length (as Linkerd's line gives it), ``-``
    for a response without one; it was ``-`` for every response."""
    disco = tmp_path / "disco"
    disco.mkdir()
    log_path = tmp_path / "access.log"
    async with running_upstream() as up:
        (disco / "app").write_text(f"127.0.0.1 {up.port}\n")
        text = fs_config(disco) + f"  httpAccessLog: {log_path}\n"
        async with running_daemon(text) as d:
            base = f"http://127.0.0.1:{d.port('out')}"
            assert (await curl(f"{base}/len/1234", "-H", "Host: app")).status == 200
            assert (await curl(f"{base}/big/100", "-H", "Host: app")).status == 200
            assert (await curl(f"{base}/", "-H", "Host: nowhere")).status == 502
    lines = [ln.split("\t") for ln in log_path.read_text().splitlines()]
    assert [(f[3], f[7], f[-1]) for f in lines] == [
        ("/len/1234", "200", "1234"),
        ("/big/100", "200", "-"),
        ("/", "502", lines[2][-1]),
    ]
    assert lines[2][-1].isdigit() and int(lines[2][-1]) > 0  # the l5d-err body hostproxy wrote


# -- io.l5d.dnssrv: dnsHosts by name ------------------------------------------------------------------------
# Linkerd resolves each dnsHosts entry (its reference example lists ns0.example.org and ns1.example.org) and
# asks the address on port 53.


def test_dns_hosts_given_by_name_load(tmp_path: Path) -> None:
    text = """\
namers:
- kind: io.l5d.dnssrv
  experimental: true
  dnsHosts: [ns0.example.org, "ns1.example.org:5353", 10.0.0.2]
routers:
- protocol: http
  dtab: /svc => /#/io.l5d.dnssrv;
  servers: [{port: 4140}]
"""
    proc = check(tmp_path, text)
    assert proc.returncode == 0, proc.stderr
    n = dnssrv_from_config(load_config(text, source="t.yaml").namers[0])
    assert n.nameservers == [("ns0.example.org", 53), ("ns1.example.org", 5353), ("10.0.0.2", 53)]


def test_a_dns_host_that_is_no_host_name_is_refused(tmp_path: Path) -> None:
    text = """\
namers:
- {kind: io.l5d.dnssrv, experimental: true, dnsHosts: ["ns 0.example.org"]}
routers:
- {protocol: http, servers: [{port: 4140}]}
"""
    assert check_errors(tmp_path, text) == [
        "namers[0].dnsHosts[0]: expected an IP address, a host name, or either with :port (e.g. 10.0.0.2, "
        "ns0.example.org, 10.0.0.2:53 or [fd00::2]:53), got 'ns 0.example.org'"
    ]


class _Hosts(trio.abc.HostnameResolver):
    """Host names for trio's getaddrinfo: ``answer(host)`` gives an IP, or raises ``socket.gaierror``."""

    def __init__(self, answer: Callable[[str], str]) -> None:
        self.answer = answer
        self.asked: list[str] = []

    async def getaddrinfo(
        self, host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> list[tuple[Any, ...]]:
        name = host.decode() if isinstance(host, bytes) else host
        self.asked.append(name)
        ip = self.answer(name)
        fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
        return [(fam, socket.SOCK_DGRAM, 17, "", (ip, int(port)))]

    async def getnameinfo(self, sockaddr: Any, flags: int) -> Any:  # pragma: no cover - not used
        raise NotImplementedError


async def test_a_dns_host_given_by_name_is_asked_at_its_address(tmp_path: Path) -> None:
    records = ["srv-host=_http._tcp.web.test,a.test,8080,0,10", "host-record=a.test,127.0.0.11"]
    async with running_dnsmasq(tmp_path, records) as dns, trio.open_nursery() as nursery:
        port = dns.address.rsplit(":", 1)[1]
        hosts = _Hosts(lambda name: "127.0.0.1")
        trio.socket.set_custom_hostname_resolver(hosts)
        try:
            n = DnsSrvNamer([f"ns0.example.org:{port}"], timeout=1.0, refresh_interval=0.2)
            changed: list[Any] = []
            n.subscribe(lambda namer, key: changed.append(key))
            await nursery.start(n.run)
            n.lookup(DPath.read("/_http._tcp.web.test"))
            with trio.fail_after(10):
                while not changed:
                    await trio.sleep(0.01)
            st = n.table.get((b"_http._tcp.web.test",))
            assert {(a.host, a.port) for a in st.addr or ()} == {("127.0.0.11", 8080)}
            assert hosts.asked == ["ns0.example.org"]  # once, as Linkerd resolves it once
        finally:
            trio.socket.set_custom_hostname_resolver(None)
            nursery.cancel_scope.cancel()


async def test_a_dns_host_name_that_does_not_resolve_fails_the_lookup_and_is_asked_again() -> None:
    def nowhere(name: str) -> str:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    hosts = _Hosts(nowhere)
    trio.socket.set_custom_hostname_resolver(hosts)
    try:
        n = DnsSrvNamer(["ns0.example.org"], timeout=1.0)
        out = await n.query("_http._tcp.web.test")
        assert out == SrvFailure(
            "SRV lookup of '_http._tcp.web.test' via ns0.example.org:53 failed: dnsHosts entry "
            "'ns0.example.org' does not resolve (Name or service not known)"
        )
        await n.query("_http._tcp.web.test")
        assert hosts.asked == ["ns0.example.org", "ns0.example.org"]
    finally:
        trio.socket.set_custom_hostname_resolver(None)


# -- keys of Linkerd 0.x's syntax that Linkerd's reference still shows ------------------------------------


def test_old_client_tls_syntax_and_a_prefix_outside_static_configs_say_what_to_write(tmp_path: Path) -> None:
    """Linkerd 1 refuses these too, but its reference still shows them (a client's ``tls: {kind:
    io.l5d.boundPath, caCertPath: ...}``, a ``prefix`` in a global client): the error says what to write
    instead of listing the valid keys."""
    text = """\
routers:
- protocol: h2
  client:
    prefix: /#/io.l5d.fs/{service}
    tls: {kind: io.l5d.noValidation, caCertPath: ca.pem, commonName: web}
  service:
    prefix: /svc
    totalTimeoutMs: 500
  servers: [{port: 4142}]
"""
    assert check_errors(tmp_path, text) == [
        "routers[0].client.prefix: 'prefix' is a key of a static client's entries: write client: {kind: "
        "io.l5d.static, configs: [{prefix: ..., <the other keys>}]}, or remove it to apply the keys to every "
        "client",
        "routers[0].client.tls.kind: 'kind' is Linkerd 0.x's client TLS syntax (io.l5d.noValidation, "
        "io.l5d.static, io.l5d.boundPath), which Linkerd 1 refuses too: remove it and write commonName (with "
        "{captures} of a static client prefix, for io.l5d.boundPath) and trustCertsBundle, or disableValidation: "
        "true",
        "routers[0].client.tls.caCertPath: 'caCertPath' is Linkerd 0.x's name in a client's tls (a server's tls "
        "takes it): a client trusts the CAs of trustCertsBundle: FILE",
        "routers[0].service.prefix: 'prefix' is a key of a static service's entries: write service: {kind: "
        "io.l5d.static, configs: [{prefix: ..., <the other keys>}]}, or remove it to apply the keys to every "
        "service",
    ]


# -- io.l5d.k8s.daemonset: k8sHost and k8sPort --------------------------------------------------------------
# Linkerd's transformer asks the API at k8sHost:k8sPort; hostproxy's watches through an io.l5d.k8s namer,
# so it takes the namer with that host and port (the first io.l5d.k8s namer when both are Linkerd's
# defaults, localhost:8001).

TWO_APIS = """\
namers:
- {kind: io.l5d.k8s, host: localhost, port: 8001}
- kind: io.l5d.k8s
  prefix: /east
  host: 127.0.0.1
  port: 8002
  transformers:
  - {kind: io.l5d.k8s.daemonset, namespace: default, service: l5d, port: incoming, k8sHost: 127.0.0.1,
     k8sPort: 8002}
routers:
- {protocol: http, label: out, dtab: /svc => /#/east/default/http;, servers: [{port: 0}]}
admin: {port: 0}
"""


def test_the_daemonset_transformer_watches_through_the_namer_of_its_k8s_host_and_port(tmp_path: Path) -> None:
    from hostproxy.daemon import Daemon

    assert check(tmp_path, TWO_APIS).returncode == 0
    daemon = Daemon(load_config(TWO_APIS, source="t.yaml"))
    ns = daemon._namers
    assert [n for n, _ in ns.transformer_watches] == [ns.namers[1]]


def test_a_daemonset_k8s_host_and_port_that_no_namer_has_is_refused(tmp_path: Path) -> None:
    text = TWO_APIS.replace("k8sPort: 8002", "k8sPort: 8443")
    assert check_errors(tmp_path, text) == [
        "namers[1].transformers[0].k8sHost: io.l5d.k8s.daemonset watches its Service through the io.l5d.k8s "
        "namer with its k8sHost and k8sPort (127.0.0.1:8443), and none has them (namers[0]: localhost:8001, "
        "namers[1]: 127.0.0.1:8002); set k8sHost and k8sPort to a namer's host and port, or add an "
        "io.l5d.k8s namer for 127.0.0.1:8443"
    ]
