"""hostproxy as a drop-in successor of Linkerd 1: behaviours of the reference catalogue
(``shared/spec/linkerd1-reference.md``) checked against a real daemon, real upstreams and real curl on
loopback. Each test names the section of the catalogue it checks.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import h2.events
import h2.settings
import pytest
import trio
from k8s_api.objects import endpoints, service
from k8s_api.server import open_fake_api
from sharedpath import COMPAT  # noqa: E402

from hostproxy.h2.server import H2Server, H2ServerParams
from hostproxy.http.errors import error_response
from hostproxy.http.message import Body, Headers, Response
from tests.certs import TestCA
from tests.daemonutil import curl, fs_config, keepalive_gets, running_daemon
from tests.grpc_fixtures import EchoClient, GrpcTestServer
from tests.grpc_fixtures.rawh2 import RawClient, ScriptedUpstream, read_events
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
        # A request refused as malformed before routing (no :authority) is cleared too.
        r = await curl(url, "--http2-prior-knowledge", "-H", "Host:")
        assert r.status == 400
        assert not [h for h in r.headers if h.startswith("l5d-")], r.headers


# -- the compat corpus: configs that run without a cluster, and what they configure takes effect -------


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def compat_on_loopback(
    name: str, disco: Path | None = None, ports: dict[int, int] | None = None
) -> tuple[str, dict[int, int]]:
    """The corpus config ``name`` with ``ip`` on loopback, ``rootDir`` → ``disco`` and every port it
    names (servers, admin, the Kubernetes API, and those ports where its dtab routes back to its own
    routers) mapped to the one ``ports`` gives or a free one; nothing else changed. The map: written
    port → port used."""
    text = (COMPAT / name).read_text().replace("0.0.0.0", "127.0.0.1")
    if disco is not None:
        text = re.sub(r"rootDir: .*", f"rootDir: {disco}", text)
    written = sorted({int(p) for p in re.findall(r"port: (\d+)", text)} - set(ports or {}))
    mapping = dict(zip(written, _free_ports(len(written)), strict=True)) | (ports or {})
    text = re.sub(r"port: (\d+)", lambda m: f"port: {mapping[int(m.group(1))]}", text)
    text = re.sub(r"/127\.1/(\d+)", lambda m: f"/127.1/{mapping.get(int(m.group(1)), m.group(1))}", text)
    return text, mapping


@contextlib.asynccontextmanager
async def failing_upstream() -> AsyncIterator[int]:
    """An upstream that answers every request 500 (an application failing); its port."""

    async def fail(req: Any, _conn: Any) -> Response:
        await req.body.read_all()
        return Response(status=500, body=Body.from_bytes(b"app failed"))

    async with serving(fail) as port:
        yield port


def _gets(port: int, n: int, method: str = "GET") -> list[int]:
    """``n`` requests to 127.0.0.1:``port`` over keep-alive connections; their statuses."""
    return [ex.status for ex in keepalive_gets(port, ["svc"] * n, reconnect=True)]


async def test_compat_failure_accrual_config_marks_the_failing_endpoint_dead(tmp_path: Path) -> None:
    """``failure-accrual``: four routers, one per accrual kind; the first splits its traffic over the
    other three by a union of their ports. ``none`` keeps sending to the failing endpoint;
    ``io.l5d.consecutiveFailures`` (5) and ``io.l5d.successRate`` (0.9 over 20) take it out for
    their 10 s constant backoff, after which every request succeeds."""
    disco = tmp_path / "disco"
    async with running_upstream() as good, failing_upstream() as bad:
        for svc in ("service1", "service2", "service3"):
            write_disco(disco, svc, good.port, bad)
        text, ports = compat_on_loopback("failure-accrual__linkerd.yaml", disco)
        async with running_daemon(text) as d:
            assert d.port("none") == ports[4141]
            metrics_url = f"{d.admin}/admin/metrics.json"
            for label, svc in (("none", "service1"), ("io.l5d.consecutiveFailures", "service2")):
                statuses = await trio.to_thread.run_sync(_gets, d.port(label), 60)
                assert set(statuses) <= {200, 500}
                m = (await curl(metrics_url)).json()
                removals = m.get(f"rt/{label}/client/#/io.l5d.fs/{svc}/failure_accrual/removals", 0)
                if label == "none":
                    assert removals == 0 and 500 in statuses[-20:], statuses
                else:
                    assert removals == 1 and set(statuses[-20:]) == {200}, statuses
            label = "io.l5d.successRate"
            statuses = await trio.to_thread.run_sync(_gets, d.port(label), 120)
            m = (await curl(metrics_url)).json()
            assert m[f"rt/{label}/client/#/io.l5d.fs/service3/failure_accrual/removals"] == 1
            assert set(statuses[-20:]) == {200}, statuses
            state = (await curl(f"{d.admin}/client_state.json")).json()
            eps = state["/#/io.l5d.fs/service3"]["endpoints"]
            assert eps[f"127.0.0.1:{bad}"]["accrual"] != "alive", eps
            # The front router: /svc => /$/inet/127.1/4141 & .../4142 & .../4143, its own routers.
            statuses = await trio.to_thread.run_sync(_gets, d.port("http"), 30)
            assert 200 in statuses and set(statuses) <= {200, 500}
            m = (await curl(metrics_url)).json()
            fronted = [
                k for k in m if k.startswith("rt/http/client/$/inet/127.1/") and k.endswith("/requests")
            ]
            assert len(fronted) == 3 and all(m[k] > 0 for k in fronted), fronted
            prom = await curl(f"{d.admin}/admin/metrics/prometheus")
            assert prom.status == 200 and b"_requests_total" in prom.body


async def test_compat_add_steps_config_retries_reads_and_balances_by_ewma(tmp_path: Path) -> None:
    """``add-steps``: ``/svc => /#/io.l5d.fs/app`` with ``io.l5d.http.retryableRead5XX`` (a GET that
    fails on one endpoint is retried, a POST is not), ``ewma``, success-rate accrual, and the
    Prometheus and recent-requests telemeters."""
    disco = tmp_path / "disco"
    async with running_upstream() as good, failing_upstream() as bad:
        write_disco(disco, "app", good.port, bad)
        text, _ = compat_on_loopback("add-steps__linkerd.yaml", disco)
        async with running_daemon(text) as d:
            base = f"http://127.0.0.1:{d.port('http')}/"
            # Reads: every one succeeds, the failures retried on the other endpoint.
            statuses = await trio.to_thread.run_sync(_gets, d.port("http"), 10)
            assert statuses == [200] * 10
            m = (await curl(f"{d.admin}/admin/metrics.json")).json()
            assert m["rt/http/service/svc/svc/retries/total"] >= 1
            # Each attempt is a request of the client (§7.3: retries sit above the client stack), so
            # the failure the retry hid shows there; the service saw successes only.
            retried = m["rt/http/service/svc/svc/retries/total"]
            assert m["rt/http/client/#/io.l5d.fs/app/requests"] == 10 + retried
            assert m["rt/http/client/#/io.l5d.fs/app/status/500"] == retried
            assert m["rt/http/client/#/io.l5d.fs/app/failures"] == retried
            assert m["rt/http/service/svc/svc/failures"] == 0
            # With the failing endpoint alone: a POST is not retried, its 500 (the application's, no
            # l5d-err) reaches the caller; a GET is retried (on it again) before its 500 does.
            write_disco(disco, "app", bad)
            with trio.fail_after(10):
                while (await curl(f"{d.admin}/client_state.json")).json()["/#/io.l5d.fs/app"][
                    "addresses"
                ] != [f"127.0.0.1:{bad}"]:
                    await trio.sleep(0.05)
            r = await curl(base, "-H", "Host: svc", "-d", "x")
            assert (r.status, r.l5d_err, r.body) == (500, None, b"app failed")
            m2 = (await curl(f"{d.admin}/admin/metrics.json")).json()
            assert m2["rt/http/service/svc/svc/retries/total"] == retried
            r = await curl(base, "-H", "Host: svc")
            assert (r.status, r.l5d_err, r.body) == (500, None, b"app failed")
            m2 = (await curl(f"{d.admin}/admin/metrics.json")).json()
            assert m2["rt/http/service/svc/svc/retries/total"] > retried
            state = (await curl(f"{d.admin}/client_state.json")).json()
            assert state["/#/io.l5d.fs/app"]["loadBalancer"]["kind"] == "ewma"
            assert (await curl(f"{d.admin}/admin/metrics/prometheus")).status == 200
            assert (await curl(f"{d.admin}/requests")).status == 200


# -- §1: Linkerd keys hostproxy refuses say so, each with its reason --------------------------------


def test_linkerd_keys_hostproxy_refuses_are_named_with_the_reason(tmp_path: Path) -> None:
    """Every Linkerd key the README lists as refused gets a message saying it is a Linkerd key and
    what to do, never "unknown key" or a wrong home (a server's ``label`` is Linkerd's, undocumented)."""
    cfg = tmp_path / "linkerd.yaml"
    cfg.write_text(
        """admin: {httpIdentifierPort: 9992, workerThreads: 2}
routers:
- protocol: http
  announcers: []
  client: {requestAuthorizers: []}
  servers:
  - {label: edge, timestampHeader: x-ts, announce: []}
- protocol: h2
  servers: [{port: 4142, label: grpc}]
"""
    )
    proc = subprocess.run(
        [sys.executable, "-m", "hostproxy", "check", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()[:-1]
    keys = [ln.split(": ", 2)[1] for ln in lines]
    assert keys == [
        "admin.httpIdentifierPort",
        "admin.workerThreads",
        "routers[0].announcers",
        "routers[0].client.requestAuthorizers",
        "routers[0].servers[0].label",
        "routers[0].servers[0].announce",
        "routers[1].servers[0].label",
    ], proc.stderr
    for ln in lines:
        assert "Linkerd" in ln and ("remove it" in ln or "use /delegator.json" in ln), ln
        assert "unknown key" not in ln and "belongs in" not in ln, ln


# -- §7.1 /logging.json: Linkerd's level names ------------------------------------------------------


async def test_logging_json_takes_linkerds_level_names(tmp_path: Path) -> None:
    """§7.1: ``POST /logging.json?logger=&level=`` with the levels Linkerd's logging page offers
    (``com.twitter.logging``: ALL, TRACE, DEBUG, INFO, WARNING, ERROR, CRITICAL, FATAL, OFF)."""
    (tmp_path / "disco").mkdir()
    names = ["root", "hostproxy.conformance_test"]
    saved = {n: logging.getLogger(None if n == "root" else n).level for n in names}
    try:
        async with running_daemon(fs_config(tmp_path / "disco")) as d:
            url = f"{d.admin}/logging.json?logger=hostproxy.conformance_test&level="
            for level, python_level, shown in [
                ("ALL", logging.DEBUG, "DEBUG"),
                ("TRACE", logging.DEBUG, "DEBUG"),
                ("FATAL", logging.CRITICAL, "CRITICAL"),
                ("OFF", logging.CRITICAL + 10, "OFF"),
                ("info", logging.INFO, "INFO"),
            ]:
                r = await curl(url + level, "-X", "POST")
                assert r.status == 200, (level, r.body)
                assert {"logger": "hostproxy.conformance_test", "level": shown} in r.json()
                assert logging.getLogger("hostproxy.conformance_test").level == python_level
            r = await curl(url + "LOUD", "-X", "POST")
            assert r.status == 400
    finally:
        for n, level in saved.items():
            logging.getLogger(None if n == "root" else n).setLevel(level)


# -- §1.4 h2 endpoint keys: on clients too, and maxHeaderListBytes as Linkerd's code spells it ------


async def test_h2_client_settings_reach_the_upstream_and_the_code_spelling_of_max_header_list() -> None:
    """§1.4: Linkerd's h2 clients take the endpoint settings its servers take (``H2EndpointConfig``:
    ``initialStreamWindowBytes``, ``headerTableBytes``, ``maxFrameBytes``, ``maxHeaderListBytes``,
    ``windowUpdateRatio``); they were refused as server keys. And the key Linkerd's code reads is
    ``maxHeaderListBytes`` (its docs write ``maxHeaderListByts``): a server takes either."""
    received: list[dict[int, int]] = []

    async def record_settings(_i: int, conn: Any, stream: trio.SocketStream) -> None:
        paths: dict[int, bytes] = {}
        while True:
            events = await read_events(conn, stream)
            if not events:
                return
            for ev in events:
                if type(ev) is h2.events.RemoteSettingsChanged:
                    received.append({int(k): v.new_value for k, v in ev.changed_settings.items()})
                if type(ev) is h2.events.RequestReceived:
                    paths[ev.stream_id] = dict(ev.headers)[b":path"]
                if type(ev) is h2.events.StreamEnded:
                    conn.send_headers(ev.stream_id, [(b":status", b"200")])
                    conn.send_data(ev.stream_id, b"ok", end_stream=True)
            await stream.send_all(conn.data_to_send())

    up = ScriptedUpstream(record_settings)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(up.serve)
        cfg = f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: h2
  label: h2
  dtab: /svc => /$/inet/127.0.0.1/{port};
  servers: [{{ip: 127.0.0.1, port: 0, maxHeaderListBytes: 2000}}]
  client:
    initialStreamWindowBytes: 1048576
    maxFrameBytes: 32768
    headerTableBytes: 0
    maxHeaderListBytes: 65536
    windowUpdateRatio: 0.5
"""
        async with running_daemon(cfg) as d:
            url = f"http://127.0.0.1:{d.port('h2')}/"
            r = await curl(url, "--http2-prior-knowledge", "-H", "Host: web")
            assert r.status == 200 and r.body == b"ok"
            assert received, "the upstream saw no SETTINGS"
            settings = received[0]
            assert settings[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] == 1048576
            assert settings[h2.settings.SettingCodes.MAX_FRAME_SIZE] == 32768
            assert settings[h2.settings.SettingCodes.HEADER_TABLE_SIZE] == 0
            assert settings[h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE] == 65536
            # The server's maxHeaderListBytes is in force: a request past it is refused with 431.
            r = await curl(url, "--http2-prior-knowledge", "-H", "Host: web", "-H", "x-big: " + "b" * 3000)
            assert r.status == 431, (r.status, r.l5d_err)
        nursery.cancel_scope.cancel()


def test_both_spellings_of_max_header_list_bytes_on_one_server_are_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "linkerd.yaml"
    cfg.write_text(
        "routers:\n- protocol: h2\n  servers: [{port: 4142, maxHeaderListBytes: 1000, maxHeaderListByts: 2000}]\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "hostproxy", "check", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0] == (
        f"{cfg}:3: routers[0].servers[0].maxHeaderListBytes: maxHeaderListBytes and maxHeaderListByts are "
        "the same setting (Linkerd's code and docs spell it differently); remove one of them"
    )


# -- §1.1 the config is the single argument: a path, or '-' for stdin -------------------------------


def test_started_as_linkerd_is_with_the_config_on_stdin() -> None:
    """§1.1: ``linkerd -`` reads the config from stdin; so does ``hostproxy -``."""
    cfg = (
        "admin: {ip: 127.0.0.1, port: 0}\nrouters:\n- protocol: http\n  servers: [{ip: 127.0.0.1, port: 0}]\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "hostproxy", "-", "--log-level", "info"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdin is not None and proc.stderr is not None
        proc.stdin.write(cfg)
        proc.stdin.close()
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "daemon.started" in line:
                break
        assert any("daemon.started" in ln for ln in seen), "".join(seen)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def test_compat_k8s_daemonset_config_routes_through_the_incoming_router_of_the_pods_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``k8s-daemonset``: the outgoing router sends ``Host: world`` (dtab ``/host/world =>
    /srv/world-v1``) through ``io.l5d.k8s.daemonset`` to the ``incoming`` port of the l5d pod in the
    /24 of the app's pod, whose router keeps only this node's pods (``io.l5d.k8s.localnode``, from
    ``POD_IP``); the Kubernetes API (``localhost:8001`` in the file) is the in-repo fake one."""
    monkeypatch.setenv("POD_IP", "127.0.0.1")
    async with open_fake_api() as api, running_upstream() as app:
        text, ports = compat_on_loopback("k8s-daemonset__k8s__linkerd.yaml", ports={8001: api.port})
        incoming = ports[4141]
        api.put("services", service("world-v1", [("http", 80, "http")], ns="default"))
        api.put(
            "endpoints", endpoints("world-v1", ready=["127.0.0.1"], ports={"http": app.port}, ns="default")
        )
        api.put("services", service("l5d", [("incoming", 4141, incoming)], ns="default"))
        api.put(
            "endpoints", endpoints("l5d", ready=["127.0.0.1"], ports={"incoming": incoming}, ns="default")
        )
        async with running_daemon(text) as d:
            assert d.port("incoming") == incoming
            r = await curl(f"http://127.0.0.1:{d.port('outgoing')}/headers", "-H", "Host: world")
            assert r.status == 200, (r.status, r.l5d_err)
            seen = app.requests[-1]
            # The last hop is the incoming router's: its client is the localnode-transformed name.
            assert seen.header("l5d-dst-service") == "/svc/world"
            assert (
                seen.header("l5d-dst-client")
                == "/%/io.l5d.k8s.localnode/127.0.0.1/#/io.l5d.k8s/default/http/world-v1"
            )
            assert [v.strip() for v in (seen.header("via") or "").split(",")] == ["1.1 hostproxy"] * 2
            m = (await curl(f"{d.admin}/admin/metrics.json")).json()
            out_client = "rt/outgoing/client/%/io.l5d.k8s.daemonset/default/incoming/l5d/#/io.l5d.k8s/default/http/world-v1"
            assert m[f"{out_client}/requests"] == 1
            assert m["rt/incoming/service/svc/world/requests"] == 1


async def test_compat_getting_started_docker_config_routes_by_file(tmp_path: Path) -> None:
    """``getting-started/docker``: ``Host: hello`` → ``/#/io.l5d.fs/hello``, the addresses in the file."""
    disco = tmp_path / "disco"
    async with running_upstream() as up:
        write_disco(disco, "hello", up.port)
        text, _ = compat_on_loopback("getting-started__docker__linkerd.yaml", disco)
        async with running_daemon(text) as d:
            r = await curl(f"http://127.0.0.1:{d.port('http')}/", "-H", "Host: hello")
            assert (r.status, r.body) == (200, b"ok")
            assert up.requests[-1].header("l5d-dst-client") == "/#/io.l5d.fs/hello"
            r = await curl(f"http://127.0.0.1:{d.port('http')}/", "-H", "Host: nobody")
            assert r.status == 502 and (r.l5d_err or "").startswith("Unable to route request!")


async def test_compat_k8s_egress_config_routes_by_kubernetes_then_by_dns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``k8s-daemonset/linkerd-egress``: two ``io.l5d.k8s`` namers (one with a daemonset transformer
    of its own, under prefix ``/io.l5d.k8s.ds``) at their default address ``localhost:8001`` (the
    in-repo fake API is started there), and a dtab that tries Kubernetes first, then the port in the
    Host (``io.buoyant.porthostPfx`` into ``io.buoyant.rinet``), then DNS on port 80."""
    monkeypatch.setenv("POD_IP", "127.0.0.1")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 8001))
        except OSError:
            pytest.fail("127.0.0.1:8001 is taken; the egress config's namers use it (their default port)")
    async with open_fake_api(port=8001) as api, running_upstream() as app:
        text, ports = compat_on_loopback("k8s-daemonset__k8s__linkerd-egress.yaml")
        incoming = ports[4141]
        api.put("services", service("world-v1", [("http", 80, "http")], ns="default"))
        api.put(
            "endpoints", endpoints("world-v1", ready=["127.0.0.1"], ports={"http": app.port}, ns="default")
        )
        api.put("services", service("l5d", [("incoming", 4141, incoming)], ns="default"))
        api.put(
            "endpoints", endpoints("l5d", ready=["127.0.0.1"], ports={"incoming": incoming}, ns="default")
        )
        async with running_daemon(text) as d:
            out = f"http://127.0.0.1:{d.port('outgoing')}/headers"
            r = await curl(out, "-H", "Host: world")
            assert r.status == 200, r.l5d_err
            seen = app.requests[-1].header("l5d-dst-client")
            assert seen == "/%/io.l5d.k8s.localnode/127.0.0.1/#/io.l5d.k8s/default/http/world-v1"
            state = (await curl(f"{d.admin}/client_state.json")).json()
            assert (
                "/%/io.l5d.k8s.daemonset/default/incoming/l5d/#/io.l5d.k8s.ds/default/http/world-v1" in state
            )
            # Not a Kubernetes service: the port in the Host, by address.
            r = await curl(out, "-H", f"Host: 127.0.0.1:{app.port}")
            assert r.status == 200, r.l5d_err
            assert app.requests[-1].header("l5d-dst-client") == f"/$/io.buoyant.rinet/{app.port}/127.0.0.1"


async def test_compat_k8s_grpc_config_carries_grpc_through_both_h2_routers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``k8s-daemonset/linkerd-grpc``: h2 routers named by ``io.l5d.header.path`` (one segment), the
    dtab's ``io.buoyant.http.domainToPathPfx`` (``/svc/test.Echo`` → ``/grpc/Echo/test``) into the
    Kubernetes namer (first three segments lowercased: Service ``echo``, port ``grpc``), the daemonset
    transformer to the incoming router and its localnode client; a real grpcio client and server."""
    monkeypatch.setenv("POD_IP", "127.0.0.1")
    with GrpcTestServer() as grpc_server:
        async with open_fake_api() as api:
            text, ports = compat_on_loopback("k8s-daemonset__k8s__linkerd-grpc.yaml", ports={8001: api.port})
            incoming = ports[4141]
            api.put("services", service("echo", [("grpc", 80, "grpc")], ns="default"))
            api.put(
                "endpoints",
                endpoints("echo", ready=["127.0.0.1"], ports={"grpc": grpc_server.port}, ns="default"),
            )
            api.put("services", service("l5d", [("incoming", 4141, incoming)], ns="default"))
            api.put(
                "endpoints", endpoints("l5d", ready=["127.0.0.1"], ports={"incoming": incoming}, ns="default")
            )
            async with running_daemon(text) as d:
                client = EchoClient(f"127.0.0.1:{d.port('outgoing')}")
                try:
                    reply = await trio.to_thread.run_sync(lambda: client.unary(b"hello", timeout=10))
                    assert reply == b"hello"
                finally:
                    client.close()
                m = (await curl(f"{d.admin}/admin/metrics.json")).json()
                assert m["rt/incoming/service/svc/test.Echo/success"] == 1
                inc = "rt/incoming/client/%/io.l5d.k8s.localnode/127.0.0.1/#/io.l5d.k8s/default/grpc/echo"
                assert m[f"{inc}/success"] == 1


async def test_k8s_names_spelt_with_capitals_bind_when_the_namer_answers() -> None:
    """§3.3: the k8s namer lowercases the first three segments (``/default/http/World`` is Service
    ``world``), as Linkerd's does. A request naming it so before the namer had answered waited for
    an answer that came for ``world``, never matched to it: it failed at ``bindingTimeoutMs`` (and so
    did every later request with that spelling), while ``Host: world`` worked. gRPC names made by
    ``io.buoyant.http.domainToPathPfx`` (``/grpc/Greeter/helloworld``) are spelt so."""
    async with open_fake_api() as api, running_upstream() as app:
        api.put("services", service("world", [("http", 80, "http")], ns="default"))
        api.put("endpoints", endpoints("world", ready=["127.0.0.1"], ports={"http": app.port}, ns="default"))
        cfg = f"""
admin: {{ip: 127.0.0.1, port: 0}}
namers:
- {{kind: io.l5d.k8s, host: 127.0.0.1, port: {api.port}}}
routers:
- protocol: http
  label: out
  bindingTimeoutMs: 2000
  dtab: /svc => /#/io.l5d.k8s/default/http;
  servers: [{{ip: 127.0.0.1, port: 0}}]
"""
        async with running_daemon(cfg) as d:
            for host in ("World", "World", "WORLD", "world"):
                r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", f"Host: {host}")
                assert (r.status, r.l5d_err) == (200, None), host
                assert app.requests[-1].header("l5d-dst-client") == "/#/io.l5d.k8s/default/http/world"


async def test_compat_lifecycle_config_routes_http_and_grpc_through_the_rewrite_namer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``lifecycle/linkerd1``: ``Host: world.default`` → ``domainToPathPfx`` → ``/srv/default/world``
    → the ``io.l5d.rewrite`` namer (``/{port}/{ns}/{svc}`` → ``/k8s/{ns}/{port}/{svc}``), whose result
    the dtab sends to the k8s namer (at its default ``localhost:8001``, the fake API); HTTP/1.1 and
    h2 routers, each pair through the daemonset transformer (namespace ``linkerd``) and localnode."""
    monkeypatch.setenv("POD_IP", "127.0.0.1")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with GrpcTestServer() as grpc_server:
        async with open_fake_api(port=8001) as api, running_upstream() as app:
            text, ports = compat_on_loopback("lifecycle__linkerd1__linkerd.yaml")
            api.put("services", service("world", [("http", 80, "http"), ("grpc", 81, "grpc")], ns="default"))
            eps = {"http": app.port, "grpc": grpc_server.port}
            api.put("endpoints", endpoints("world", ready=["127.0.0.1"], ports=eps, ns="default"))
            incoming = {"http-incoming": ports[4141], "grpc-incoming": ports[4341]}
            api.put("services", service("l5d", [(n, p, p) for n, p in incoming.items()], ns="linkerd"))
            api.put("endpoints", endpoints("l5d", ready=["127.0.0.1"], ports=incoming, ns="linkerd"))
            async with running_daemon(text) as d:
                r = await curl(f"http://127.0.0.1:{d.port('http-outgoing')}/", "-H", "Host: world.default")
                assert (r.status, r.body) == (200, b"ok"), r.l5d_err
                got = app.requests[-1].header("l5d-dst-client")
                assert got == "/%/io.l5d.k8s.localnode/127.0.0.1/#/io.l5d.k8s/default/http/world"
                # gRPC by :authority: the grpcio server answers (an empty request is not one message).
                r = await curl(
                    f"http://127.0.0.1:{d.port('grpc-outgoing')}/test.Echo/Unary",
                    "--http2-prior-knowledge",
                    "-H",
                    "Host: world.default",
                    "-H",
                    "content-type: application/grpc",
                    "-H",
                    "te: trailers",
                    "--data-binary",
                    "",
                )
                assert r.status == 200 and r.l5d_err is None, (r.status, r.l5d_err)
                # grpcio's own answer to a request with no message in it:
                assert r.header("grpc-status") == "12", r.headers
                m = (await curl(f"{d.admin}/admin/metrics.json")).json()
                inc = (
                    "rt/grpc-incoming/client/%/io.l5d.k8s.localnode/127.0.0.1/#/io.l5d.k8s/default/grpc/world"
                )
                assert m[f"{inc}/requests"] == 1


async def test_compat_k8s_latency_config_gives_each_service_its_total_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``k8s-daemonset/linkerd-latency``: ``service.kind: io.l5d.static`` gives ``/svc/hello`` a 600 ms
    and ``/svc/world`` a 100 ms ``totalTimeoutMs``; a slow upstream gets 503 with the budget of its
    own service, and a quick one is answered."""
    monkeypatch.setenv("POD_IP", "127.0.0.1")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    async with open_fake_api(port=8001) as api, running_upstream() as app:
        text, ports = compat_on_loopback("k8s-daemonset__k8s__linkerd-latency.yaml")
        for svc in ("hello", "world-v1"):
            api.put("services", service(svc, [("http", 80, "http")], ns="default"))
            api.put("endpoints", endpoints(svc, ready=["127.0.0.1"], ports={"http": app.port}, ns="default"))
        api.put("services", service("l5d", [("incoming", 4141, ports[4141])], ns="default"))
        api.put(
            "endpoints", endpoints("l5d", ready=["127.0.0.1"], ports={"incoming": ports[4141]}, ns="default")
        )
        async with running_daemon(text) as d:
            out = f"http://127.0.0.1:{d.port('outgoing')}"
            for host, budget in (("hello", 600), ("world", 100)):
                # The first request also binds the name through both routers and the namer, within the
                # same budget: on a loaded machine that can take 100 ms. Once bound, a quick one is answered.
                for _ in range(50):
                    r = await curl(f"{out}/", "-H", f"Host: {host}")
                    if r.status == 200:
                        break
                    assert (r.l5d_err or "").startswith(f"exceeded totalTimeoutMs ({budget} ms)"), r.l5d_err
                assert (r.status, r.body) == (200, b"ok"), (host, r.l5d_err)
                r = await curl(f"{out}/slow/5000", "-H", f"Host: {host}")
                assert r.status == 503, (host, r.status)
                assert (r.l5d_err or "").startswith(
                    f"exceeded totalTimeoutMs ({budget} ms) for /svc/{host}"
                ), r.l5d_err


async def test_compat_k8s_tls_config_encrypts_the_hop_between_the_routers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``k8s-daemonset/linkerd-tls``: the outgoing router's client speaks TLS to the incoming router
    (``commonName: linkerd``, ``trustCerts``), whose server holds a PKCS#8 key (``key.pk8``); the
    certificate paths are the only other change to the file."""
    monkeypatch.setenv("POD_IP", "127.0.0.1")
    ca = TestCA("linkerd-examples CA")
    leaf = ca.issue("linkerd", sans=("linkerd",))
    (tmp_path / "certificate.pem").write_bytes(leaf.cert_pem)
    (tmp_path / "key.pk8").write_bytes(leaf.key_pem)
    (tmp_path / "cacertificate.pem").write_bytes(ca.cert_pem)
    async with open_fake_api() as api, running_upstream() as app:
        text, ports = compat_on_loopback("k8s-daemonset__k8s__linkerd-tls.yaml", ports={8001: api.port})
        text = text.replace("/io.buoyant/linkerd/certs/", f"{tmp_path}/")
        api.put("services", service("world-v1", [("http", 80, "http")], ns="default"))
        api.put(
            "endpoints", endpoints("world-v1", ready=["127.0.0.1"], ports={"http": app.port}, ns="default")
        )
        api.put("services", service("l5d", [("incoming", 4141, ports[4141])], ns="default"))
        api.put(
            "endpoints", endpoints("l5d", ready=["127.0.0.1"], ports={"incoming": ports[4141]}, ns="default")
        )
        async with running_daemon(text) as d:
            r = await curl(f"http://127.0.0.1:{d.port('outgoing')}/", "-H", "Host: world")
            assert (r.status, r.body) == (200, b"ok"), r.l5d_err
            # The incoming port speaks TLS only: plaintext is refused with the reason.
            r = await curl(f"http://127.0.0.1:{d.port('incoming')}/", "-H", "Host: world")
            assert r.status == 400 and "speaks TLS" in (r.l5d_err or "")
            tls = (await curl(f"{d.admin}/admin/tls.json")).json()
            assert {c["role"] for c in tls["certificates"]} >= {"server", "ca"}


async def test_compat_k8s_ingress_and_getting_started_configs_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """``k8s-daemonset/linkerd-ingress``: the ingress router names ``Host: www.hello.world`` by
    ``domainToPathPfx`` (``/domain/world/hello/www`` → ``/srv/hello``) and sends it through the daemonset
    transformer to the incoming router, whose dtab does the same. ``getting-started/k8s``: ``Host: web``
    → the Service port named ``service`` of ``web``."""
    monkeypatch.setenv("POD_IP", "127.0.0.1")
    async with open_fake_api() as api, running_upstream() as app:
        api.put("services", service("hello", [("http", 80, "http")], ns="default"))
        api.put("endpoints", endpoints("hello", ready=["127.0.0.1"], ports={"http": app.port}, ns="default"))
        text, ports = compat_on_loopback("k8s-daemonset__k8s__linkerd-ingress.yaml", ports={8001: api.port})
        api.put("services", service("l5d", [("incoming", 4141, ports[4141])], ns="default"))
        api.put(
            "endpoints", endpoints("l5d", ready=["127.0.0.1"], ports={"incoming": ports[4141]}, ns="default")
        )
        async with running_daemon(text) as d:
            r = await curl(f"http://127.0.0.1:{d.port('ingress')}/", "-H", "Host: www.hello.world")
            assert (r.status, r.body) == (200, b"ok"), r.l5d_err
            assert app.requests[-1].header("l5d-dst-service") == "/svc/www.hello.world"
            assert app.requests[-1].header("l5d-dst-client") == (
                "/%/io.l5d.k8s.localnode/127.0.0.1/#/io.l5d.k8s/default/http/hello"
            )
        api.put("services", service("web", [("service", 80, "service")], ns="default"))
        api.put("endpoints", endpoints("web", ready=["127.0.0.1"], ports={"service": app.port}, ns="default"))
        text, _ = compat_on_loopback("getting-started__k8s__linkerd.yaml", ports={8001: api.port})
        async with running_daemon(text) as d:
            r = await curl(f"http://127.0.0.1:{d.port('http')}/", "-H", "Host: web")
            assert (r.status, r.body) == (200, b"ok"), r.l5d_err
            assert app.requests[-1].header("l5d-dst-client") == "/#/io.l5d.k8s/default/service/web"


async def test_clear_context_strips_l5d_success_class_from_streamed_h2_trailers() -> None:
    """§6.3 with a streamed gRPC response: the gRPC classifier's ``l5d-success-class`` goes in its
    trailers (§6.1); a ``clearContext`` server sends the trailers (``grpc-status``) without it."""
    with GrpcTestServer() as grpc_server:
        cfg = f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: h2
  label: h2
  identifier: {{kind: io.l5d.header.path, segments: 1}}
  dtab: /svc => /$/inet/127.0.0.1/{grpc_server.port};
  service: {{responseClassifier: {{kind: io.l5d.h2.grpc.default}}}}
  servers:
  - {{ip: 127.0.0.1, port: 0}}
  - {{ip: 127.0.0.1, port: 0, clearContext: true}}
"""
        async with running_daemon(cfg) as d:
            trailers = {}
            for i in (0, 1):
                port = d.port("h2", i)
                async with RawClient.connect(port) as c:
                    await c.start()
                    sid = await c.request(
                        "/test.Echo/ServerStream",
                        port,
                        method=b"POST",
                        end_stream=False,
                        extra=[(b"content-type", b"application/grpc"), (b"te", b"trailers")],
                    )
                    c.conn.send_data(sid, b"\x00\x00\x00\x00\x01" + b"3", end_stream=True)
                    await c.flush()
                    with trio.fail_after(20):
                        ev = await c.until(lambda e: type(e) is h2.events.TrailersReceived)
                    assert ev is not None, c.events
                    trailers[i] = dict(ev.headers)
            assert trailers[0][b"grpc-status"] == b"0" and trailers[0][b"l5d-success-class"] == b"1.0"
            assert trailers[1][b"grpc-status"] == b"0" and b"l5d-success-class" not in trailers[1]


# -- §1.4 h2 routers' access log ---------------------------------------------------------------------


async def test_h2_access_log_writes_a_line_per_request(tmp_path: Path) -> None:
    """§1.4: h2 routers take ``h2AccessLog`` (http routers ``httpAccessLog``); it was refused."""
    log_path = tmp_path / "h2-access.log"
    async with h2_origin_port() as port:
        cfg = f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: h2
  label: h2
  h2AccessLog: {log_path}
  dtab: /svc/web => /$/inet/127.0.0.1/{port};
  servers: [{{ip: 127.0.0.1, port: 0}}]
"""
        async with running_daemon(cfg) as d:
            url = f"http://127.0.0.1:{d.port('h2')}/"
            assert (await curl(url, "--http2-prior-knowledge", "-H", "Host: web")).status == 200
            assert (await curl(url, "--http2-prior-knowledge", "-H", "Host: nowhere")).status == 502
    lines = log_path.read_text().splitlines()
    assert len(lines) == 2, lines
    assert "/svc/web" in lines[0] and f"127.0.0.1:{port}" in lines[0] and "200" in lines[0]
    assert "/svc/nowhere" in lines[1] and "naming/neg" in lines[1]


@contextlib.asynccontextmanager
async def h2_origin_port() -> AsyncIterator[int]:
    """hostproxy's own h2 server on a free loopback port, answering every request 200 ``ok``."""

    async def ok(req: Any, _conn: Any) -> Response:
        await req.body.read_all()
        return Response(status=200, body=Body.from_bytes(b"ok"))

    server = H2Server(ok, H2ServerParams(ip="127.0.0.1", port=0))
    async with trio.open_nursery() as nursery:
        addrs = await nursery.start(server.serve)
        yield addrs[0][1]
        nursery.cancel_scope.cancel()


# -- §7.1 /admin/server_info --------------------------------------------------------------------------


async def test_admin_server_info_answers_with_linkerds_fields(tmp_path: Path) -> None:
    """§7.1: ``/admin/server_info`` (TwitterServer's build info, which scripts read for the version)."""
    (tmp_path / "disco").mkdir()
    async with running_daemon(fs_config(tmp_path / "disco")) as d:
        r = await curl(f"{d.admin}/admin/server_info")
        assert r.status == 200 and (r.header("content-type") or "").startswith("application/json")
        info = r.json()
        assert isinstance(info, dict) and info["name"] == "hostproxy"
        assert isinstance(info["version"], str) and info["version"]
        assert isinstance(info["uptime"], int) and info["uptime"] >= 0
        assert isinstance(info["start_time"], str) and info["start_time"].endswith(str(time.gmtime().tm_year))


# -- §1.4 maxCallDepth: a proxy loop is named as one ---------------------------------------------------


async def test_a_proxy_loop_is_called_one_although_via_outgrows_the_header_limit_first() -> None:
    """§1.4: ``maxCallDepth`` (1000) counts ``Via`` entries, but each hop adds ~15 bytes to ``Via`` in
    the request and again in the response, so a loop hits ``maxHeadersKB`` (8 KB, ~530 hops) first
    (in Linkerd too). The caller got "response headers exceed 8192 bytes" and nothing about a loop;
    the error now says the Via names N proxies and asks whether it is a loop."""
    (port,) = _free_ports(1)
    cfg = f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: http
  label: loop
  maxHeadersKB: 3  # (about 200 hops, 400 sockets: a loop of 530 would need more than 1024 descriptors)
  dtab: /svc => /$/inet/127.0.0.1/{port};
  servers: [{{ip: 127.0.0.1, port: {port}}}]
"""
    async with running_daemon(cfg) as d:
        r = await curl(f"http://127.0.0.1:{d.port('loop')}/", "-H", "Host: back-to-me", timeout=60)
        assert r.status in (431, 502), (r.status, r.l5d_err)
        assert "proxies: a proxy loop?" in (r.l5d_err or ""), r.l5d_err
        # A request that arrives with such a Via is told the same.
        via = ", ".join(["1.1 hostproxy"] * 300)
        r = await curl(f"http://127.0.0.1:{d.port('loop')}/", "-H", "Host: x", "-H", f"Via: {via}")
        assert r.status == 431
        assert "its Via names 300 proxies: a proxy loop?" in (r.l5d_err or ""), r.l5d_err


def test_access_log_append_both_ways_loads(tmp_path: Path) -> None:
    """§1.4: ``httpAccessLogAppend`` (and h2's) defaults to true in Linkerd; ``false`` truncates the log
    when the daemon starts (``tests/test_accesslog_roll.py``): both load."""
    cfg = tmp_path / "linkerd.yaml"
    cfg.write_text(
        "routers:\n- protocol: http\n  httpAccessLogAppend: true\n  servers: [{port: 4140}]\n"
        "- protocol: h2\n  h2AccessLogAppend: false\n  servers: [{port: 4142}]\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "hostproxy", "check", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


# -- §5.7 Via on h2 responses ---------------------------------------------------------------------------


async def test_h2_responses_carry_via_as_http1_responses_do() -> None:
    """§5.7 and Linkerd's h2 ``ViaHeaderFilter`` (RFC 9110 §7.6.3): ``Via`` is appended to responses
    as well as requests; h2 responses had none, proxied or made by the proxy."""
    async with h2_origin_port() as port:
        cfg = f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: h2
  label: h2
  dtab: /svc/web => /$/inet/127.0.0.1/{port};
  servers: [{{ip: 127.0.0.1, port: 0}}]
"""
        async with running_daemon(cfg) as d:
            url = f"http://127.0.0.1:{d.port('h2')}/"
            r = await curl(url, "--http2-prior-knowledge", "-H", "Host: web")
            assert r.status == 200
            # The origin (hostproxy's own h2 server) adds one, this router another.
            assert r.header("via") == "2 hostproxy, 2 hostproxy", r.headers
            r = await curl(url, "--http2-prior-knowledge", "-H", "Host: nowhere")
            assert r.status == 502 and r.header("via") == "2 hostproxy", r.headers
