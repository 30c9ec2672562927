"""The admin server, attacked as an on-call engineer's scripts and probes use it.

Real daemons and admin servers on loopback, real curl; each test's docstring says what was wrong.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio

from tests.daemonutil import curl, running_daemon

ROUTER = """
namers: []
routers:
- protocol: http
  label: out
  dtab: |
    /svc => /$/inet/127.0.0.1/1;
  servers:
  - ip: 127.0.0.1
    port: 0
"""


def _daemon_yaml(admin_extra: str = "") -> str:
    return "admin:\n  ip: 127.0.0.1\n  port: 0\n" + admin_extra + ROUTER


async def test_head_delegator_json_answers_as_get() -> None:
    """``HEAD /delegator.json?...`` (accepted wherever GET is, as the 405 and ``Allow`` say) was treated
    as a POST: it answered 415 "needs Content-Type: application/json" instead of GET's status, so a
    probe or ``curl -I`` of a delegation URL reported a failure that a GET does not have."""
    async with running_daemon(_daemon_yaml()) as d:
        url = f"{d.admin}/delegator.json?namespace=out&path=/svc/web&dtab=/svc=>/$/inet/127.0.0.1/1"
        get = await curl(url)
        head = await curl(url, "-I")
        assert get.status == 200, get.body
        assert head.status == 200, head.body
        assert head.header("content-type") == get.header("content-type")
        assert head.body == b""
        bad = f"{d.admin}/delegator.json?path=svc"
        assert (await curl(bad)).status == 400
        assert (await curl(bad, "-I")).status == 400


async def test_security_blacklist_covers_hostproxy_aliases(tmp_path: Path) -> None:
    """``admin.security.pathBlacklist`` hid ``/admin/metrics/prometheus`` and ``/namer_state/<prefix>.json``
    but hostproxy's own aliases served the same documents: ``/metrics`` (the Prometheus exposition) and
    ``/admin/namer_state.json`` (every namer's state), so an operator who blacklisted a path to keep it
    off a pod-address admin port still exposed its content."""
    (tmp_path / "web").write_text("127.0.0.1 1\n")
    security = (
        "  security:\n    pathBlacklist: ['/admin/metrics/prometheus', '/namer_state/io\\.l5d\\.fs\\.json']\n"
    )
    yaml_text = _daemon_yaml(security).replace(
        "namers: []", f"namers:\n- kind: io.l5d.fs\n  rootDir: {tmp_path}"
    )
    async with running_daemon(yaml_text) as d:
        assert (await curl(f"{d.admin}/admin/metrics/prometheus")).status == 404
        assert (await curl(f"{d.admin}/metrics")).status == 404
        assert (await curl(f"{d.admin}/namer_state/io.l5d.fs.json")).status == 404
        everything = await curl(f"{d.admin}/admin/namer_state.json")
        assert everything.status == 200, everything.body
        states = everything.json()
        assert isinstance(states, dict)
        assert "/io.l5d.fs" not in states
        assert "/$/inet" in states  # a namer whose own path is served still shows
        # what is not blacklisted is still served
        assert (await curl(f"{d.admin}/admin/metrics.json")).status == 200
    async with running_daemon(yaml_text.replace(security, "")) as d:
        assert (await curl(f"{d.admin}/metrics")).status == 200
        states = (await curl(f"{d.admin}/admin/namer_state.json")).json()
        assert isinstance(states, dict) and "/io.l5d.fs" in states


async def test_metrics_query_regex_cannot_freeze_the_daemon() -> None:
    """``/admin/metrics.json?q=`` ran the pattern with Python's backtracking ``re`` over every metric key
    in one step on the event loop: a pattern with a nested repetition (``(.*.*)*y``) never finished, and
    the whole daemon (routing included) stopped answering after one GET a diagnostics reader may send.
    Such patterns are now a 400 that says why; ordinary regexes and substrings keep working."""
    async with running_daemon(_daemon_yaml()) as d:
        for q in ["(.*.*)*y", "(a|aa)+y", "(x+)+y", r"(a)\1", ".*a.*b.*c.*y"]:
            r = await curl(f"{d.admin}/admin/metrics.json", "-G", "--data-urlencode", f"q={q}")
            assert r.status == 400, (q, r.status, r.body)
            assert b"q=" in r.body
        ping = await curl(f"{d.admin}/admin/ping")
        assert (ping.status, ping.body) == (200, b"pong")
        for q, key in [
            ("server", "rt/out/server/127.0.0.1/"),
            ("rt/.*/server/.*/requests", "rt/out/server/127.0.0.1/"),
            ("(server|service)/", "rt/out/server/127.0.0.1/"),
            ("(", None),  # not a regex: a literal substring, no key has it
        ]:
            r = await curl(f"{d.admin}/admin/metrics.json", "-G", "--data-urlencode", f"q={q}")
            assert r.status == 200, (q, r.body)
            doc = r.json()
            assert isinstance(doc, dict)
            if key is None:
                assert doc == {}
            else:
                assert doc and any(k.startswith(key) for k in doc), (q, doc)
        pretty = await curl(f"{d.admin}/admin/metrics.json?pretty=1&q=(x%2B)%2By")
        assert pretty.status == 400


async def test_deeply_nested_delegator_body_is_a_400() -> None:
    """A ``POST /delegator.json`` body of deeply nested JSON arrays (within the 64 KiB limit) made
    ``json.loads`` raise ``RecursionError``, which the handler did not expect: a 500 "Internal error"
    and a logged traceback, instead of the 400 "Malformed delegation request" any other bad body gets."""
    async with running_daemon(_daemon_yaml()) as d:
        body = "[" * 50_000
        r = await curl(
            f"{d.admin}/delegator.json",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        )
        assert r.status == 400, r.body
        assert r.body.startswith(b"Malformed delegation request")


async def test_logging_json_accepts_form_encoded_post() -> None:
    """``POST /logging.json`` read ``logger`` and ``level`` from the query string only. Linkerd's handler
    reads Finagle's request params, which include an ``application/x-www-form-urlencoded`` body, so a
    Linkerd script's ``curl -d logger=root -d level=DEBUG :9990/logging.json`` got a 400 "Missing logger
    and level" here; and the change it asked for never took effect."""
    import logging

    async with running_daemon(_daemon_yaml()) as d:
        name = "hostproxy.review_form"
        try:
            r = await curl(f"{d.admin}/logging.json", "-d", f"logger={name}", "-d", "level=error")
            assert r.status == 200, r.body
            assert {"logger": name, "level": "ERROR"} in r.json()  # type: ignore[operator]
            assert logging.getLogger(name).level == logging.ERROR
            # still a 400 when the form lacks a parameter, naming it
            r = await curl(f"{d.admin}/logging.json", "-d", f"logger={name}")
            assert r.status == 400 and b"level" in r.body
        finally:
            logging.getLogger(name).setLevel(logging.NOTSET)


async def test_metrics_tree_with_a_service_segment_named_like_a_value_key(tmp_path: Path) -> None:
    """``/admin/metrics.json?tree=1`` keeps a node's own value under ``counter``, ``gauge`` or ``stat.*``
    next to its children, but a child segment with one of those names (a service name taken from a
    request, here ``l5d-name: /web/requests/counter`` beside ``/web``) collided with it: the tree form
    answered 500 (``'int' object has no attribute 'setdefault'``) when the value came first, and
    silently dropped the subtree when it came second. Such a child is now kept as ``/<segment>``
    (``/`` never occurs in a segment, so it cannot clash)."""
    from tests.daemonutil import fs_config

    (tmp_path / "web").write_text("127.0.0.1 1\n")
    yaml_text = fs_config(tmp_path) + "  identifier: {kind: io.l5d.header}\n"
    async with running_daemon(yaml_text) as d:
        for name in ["/web", "/web/requests/counter"]:
            await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", f"l5d-name: {name}", timeout=10)
        flat = (await curl(f"{d.admin}/admin/metrics.json")).json()
        assert isinstance(flat, dict)
        assert flat["rt/out/service/svc/web/requests"] == 1
        assert flat["rt/out/service/svc/web/requests/counter/requests"] == 1
        r = await curl(f"{d.admin}/admin/metrics.json?tree=1")
        assert r.status == 200, r.body
        tree = r.json()
        assert isinstance(tree, dict)
        node = tree["rt"]["out"]["service"]["svc"]["web"]["requests"]
        assert node["counter"] == 1
        assert node["/counter"]["requests"] == {"counter": 1}
        sub = await curl(f"{d.admin}/admin/metrics.json?tree=1&q=rt/out/service/svc/web")
        assert sub.status == 200, sub.body


async def test_security_alias_rule_spares_the_prometheus_telemeter_path() -> None:
    """(With the alias rule above.) An ``io.l5d.prometheus`` telemeter whose ``path`` is ``/metrics`` is
    served at the path the operator chose even when ``/admin/metrics/prometheus`` is blacklisted."""
    yaml_text = (
        _daemon_yaml("  security:\n    pathBlacklist: ['/admin/metrics/prometheus']\n")
        + "telemetry:\n- kind: io.l5d.prometheus\n  path: /metrics\n"
    )
    async with running_daemon(yaml_text) as d:
        assert (await curl(f"{d.admin}/admin/metrics/prometheus")).status == 404
        r = await curl(f"{d.admin}/metrics")
        assert r.status == 200, r.body
        assert b"# TYPE" in r.body


async def _stall_admin(admin: str, n: int) -> list[trio.SocketStream]:
    """``n`` connections, each a POST /delegator.json whose announced body never comes."""
    host, port = admin.removeprefix("http://").rsplit(":", 1)
    streams = []
    for _ in range(n):
        s = await trio.open_tcp_stream(host, int(port))
        await s.send_all(
            b"POST /delegator.json HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 60000\r\n\r\n{"
        )
        streams.append(s)
    return streams


async def test_stalled_admin_clients_do_not_fail_the_health_probes() -> None:
    """64 admin connections that never finish their request (or never read their answer) held every
    one of the admin server's ``maxConcurrentRequests`` slots for ever: ``/admin/ping``, ``/live`` and
    ``/ready`` answered 503 "server admin is at maxConcurrentRequests=64", so anyone who could reach
    the admin port (it listens on the pod address for the kubelet's probes) could get the pod killed
    by its liveness probe and taken out of rotation. The probes, a few bytes each, are now answered
    beyond the cap; other endpoints still answer 503 there."""
    async with running_daemon(_daemon_yaml()) as d:
        streams = await _stall_admin(d.admin, 70)
        try:
            with trio.fail_after(30):
                while (await curl(f"{d.admin}/admin/metrics.json")).status != 503:
                    await trio.sleep(0.05)  # until the stalled requests hold every slot
            for path, body in [("/admin/ping", b"pong"), ("/live", b"live\n"), ("/ready", b"ready\n")]:
                r = await curl(f"{d.admin}{path}")
                assert (r.status, r.body) == (200, body), (path, r.status, r.body)
            assert (await curl(f"{d.admin}/client_state.json")).status == 503
        finally:
            for s in streams:
                await s.aclose()


async def test_stalled_admin_request_body_is_cut_off() -> None:
    """A request body that stopped arriving held its admin connection (and a request slot) for ever: the
    admin server had no ``request_body_timeout_s``. It now cuts such a request off (10 s between
    chunks; the admin bodies are at most 64 KiB of JSON or form), freeing the slot. A body that failed
    (stalled, or cut short by a client that left) was also logged as ``admin.handler_failed`` with a
    traceback and answered 500; it is the client's doing, a 400."""
    from test_admin_server import FakeAdminContext

    from hostproxy.admin import AdminServer

    server = AdminServer(FakeAdminContext(), port=0, max_concurrent_requests=2, request_body_timeout_s=0.2)
    assert AdminServer(FakeAdminContext(), port=0).params.request_body_timeout_s == 10.0
    async with trio.open_nursery() as nursery:
        ip, port = await nursery.start(server.serve)
        admin = f"http://{ip}:{port}"
        streams = await _stall_admin(admin, 2)
        try:
            for s in streams:  # each stalled request is cut off: its connection closes
                with trio.fail_after(10):
                    while await s.receive_some(65536):
                        pass
            r = await curl(f"{admin}/admin/metrics.json")
            assert r.status == 200, r.body
            # the client's doing, not a handler failure (which was logged with a traceback)
            assert server.handler.failures == 0
        finally:
            for s in streams:
                await s.aclose()
            nursery.cancel_scope.cancel()


async def test_admin_client_that_stops_reading_is_cut_off() -> None:
    """An admin client that sent requests and stopped reading the answers held its request slot for
    as long as it kept the connection open (the response write waited for ever), so a few such clients
    made every admin endpoint but the probes answer 503. A response not taken within
    ``response_write_timeout_s`` (30 s by default) now cuts the connection off and frees the slot."""
    import socket

    from test_admin_server import FakeAdminContext

    from hostproxy.admin import AdminServer

    server = AdminServer(FakeAdminContext(), port=0, max_concurrent_requests=2, response_write_timeout_s=2.0)
    assert AdminServer(FakeAdminContext(), port=0).params.response_write_timeout_s == 30.0
    async with trio.open_nursery() as nursery:
        ip, port = await nursery.start(server.serve)
        admin = f"http://{ip}:{port}"
        socks = []
        try:
            for _ in range(2):  # pipelined requests whose answers are never read
                s = trio.socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
                await s.connect((ip, port))
                stream = trio.SocketStream(s)
                await stream.send_all(b"GET /files/dashboard.js HTTP/1.1\r\nHost: x\r\n\r\n" * 200)
                socks.append(stream)
            with trio.fail_after(20):
                while (await curl(f"{admin}/admin/metrics.json")).status != 503:
                    await trio.sleep(0.02)  # until both stalled writes hold the two slots
            with trio.fail_after(20):
                while (await curl(f"{admin}/admin/metrics.json")).status != 200:
                    await trio.sleep(0.05)  # until the write timeout frees them
        finally:
            for stream in socks:
                await stream.aclose()
            nursery.cancel_scope.cancel()


@pytest.mark.skipif(
    shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
    reason="needs Debian's chromium (apt-get install chromium)",
)
async def test_dashboard_works_with_diagnostics_turned_off(tmp_path: Path) -> None:
    """With ``admin.security.diagnosticsEnabled: false`` (the UI kept, Linkerd's categories), the
    dashboard (a UI path) read ``/client_state.json`` and ``/admin/process.json`` (diagnostics, 404)
    together with the metrics and gave up the whole poll when either failed: it showed nothing but
    "admin server unreachable: /client_state.json answered 404", for ever (the failed poll was retried
    as the same kind). It now draws the routers from ``/admin/metrics.json`` and leaves out what it
    may not read."""
    from test_dashboard_browser import DataK, chromium, to_int, write_disco

    from tests.daemonutil import fs_config

    disco = tmp_path / "disco"
    write_disco(disco, "api", "127.0.0.1 1\n")  # refuses: a router with failures
    yaml_text = fs_config(disco).replace(
        "admin: {ip: 127.0.0.1, port: 0}",
        "admin:\n  ip: 127.0.0.1\n  port: 0\n  security: {diagnosticsEnabled: false}",
    )
    async with running_daemon(yaml_text) as d:
        for _ in range(2):
            assert (await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: api")).status == 502
        assert (await curl(d.admin + "/client_state.json")).status == 404
        metrics = (await curl(d.admin + "/admin/metrics.json")).json()
        assert isinstance(metrics, dict)
        dom = await chromium(d.admin + "/", tmp_path / "profile", "--virtual-time-budget=4000", "--dump-dom")
        page = DataK()
        page.feed(dom.decode())
        assert int(page.body.get("data-polls", "0")) >= 2, dom.decode()[-3000:]
        srv = f"rt/out/server/127.0.0.1/{d.port('out')}"
        assert to_int(page.one("out:failures")) == metrics[f"{srv}/failures"] == 2
        assert "unreachable" not in dom.decode()
