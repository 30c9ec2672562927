"""Adversarial tests of the operator commands (``hostproxy wtf``, ``state``) against real daemons and
real upstreams on loopback, and against admin addresses where something else answers.

Each test is a defect found by running the commands the way an on-call operator would at 3 a.m.:
the answer must be right (no wrong blame), and a wrong address must be said so, never a traceback.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import trio

from hostproxy.cli_state import render_tables
from hostproxy.diagnose import Snapshot, diagnose
from hostproxy.http.message import Body, Headers, Request, Response
from tests.daemonutil import curl, fs_config, running_daemon
from tests.upstreams import answer_each_head, closed_port, running_upstream, serving, stalled_port


async def hostproxy(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the real CLI in a subprocess: exit status, stdout, stderr."""
    with trio.fail_after(60):
        proc = await trio.run_process(
            [sys.executable, "-m", "hostproxy", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def answering(body: bytes) -> Callable[[Request, object], Awaitable[Response]]:
    """A handler answering every request 200 with ``body`` as JSON (some other service's API)."""

    async def handle(request: Request, info: object) -> Response:
        await request.body.aclose()
        headers = Headers([(b"content-type", b"application/json")])
        return Response(200, b"OK", headers, Body.from_bytes(body))

    return handle


# -- an admin address where something else answers ---------------------------------------------------


async def test_wtf_and_state_say_so_when_the_address_answers_json_that_is_no_admin_document() -> None:
    """Another service's JSON API at --admin (a list, a string): wtf and state crashed with a
    traceback (``TypeError: expected string``, ``IndexError``); an object without router metrics made
    wtf report "healthy" (exit 0) for a daemon it never read."""
    for body, what in ((b"[1, 2, 3]", "a JSON list"), (b'"hello"', "a JSON str")):
        async with serving(answering(body)) as port:
            admin = f"127.0.0.1:{port}"
            for command in ("wtf", "state"):
                code, out, err = await hostproxy(command, "--admin", admin)
                assert code == 1, (command, out, err)
                assert "Traceback" not in err
                assert what in err and "is this a hostproxy admin server" in err, err
            code, out, err = await hostproxy("wtf", "--admin", admin, "--json")
            assert code == 1 and "Traceback" not in err
            assert what in json.loads(out)["error"]
    async with serving(answering(b'{"status": "ok"}')) as port:
        code, out, err = await hostproxy("state", "--admin", f"127.0.0.1:{port}")
        assert code == 1 and out == "", out
        assert err.strip() == (
            f"hostproxy state: http://127.0.0.1:{port}/client_state.json is not a table of clients: "
            "is this a hostproxy admin server?"
        )
        code, out, err = await hostproxy("wtf", "--admin", f"127.0.0.1:{port}", "--json")
        assert code == 1, out
        doc = json.loads(out)
        assert doc["healthy"] is False
        assert doc["error"] == (
            f"http://127.0.0.1:{port}/admin/metrics.json has no router metrics (rt/...): "
            "is this a hostproxy admin server?"
        )


def test_a_counter_that_is_not_a_number_is_read_as_zero() -> None:
    """Python's JSON carries NaN and Infinity: a gauge computed as 0/0 crashed the whole diagnosis
    (``ValueError: cannot convert float NaN to integer``)."""
    metrics = {
        "rt/out/server/127.0.0.1/4140/requests": math.nan,
        "rt/out/service/svc/web/requests": 4,
        "rt/out/service/svc/web/failures/upstream/5xx": math.inf,
        "rt/out/service/svc/web/failures/connect/refused": 2,
    }
    report = diagnose(Snapshot(metrics=metrics, unbound={"out": {"names": []}, "rt/out/x/requests": 1}))
    assert [(f.service, f.cause, f.failures) for f in report.findings] == [("/svc/web", "connect/refused", 2)]
    assert list(report.routers) == ["out"]  # (an unbound table that is not one names no router)


async def test_wtf_reads_the_admin_server_directly_whatever_http_proxy_says(tmp_path: Path) -> None:
    """An operator's shell with http_proxy set (corporate hosts): wtf sent its admin requests to that
    proxy and reported "cannot read …: is hostproxy running?" about a daemon that was running."""
    disco = tmp_path / "disco"
    disco.mkdir()
    with closed_port() as nowhere:
        async with running_upstream() as up:
            (disco / "web").write_text(f"127.0.0.1 {up.port}\n")
            async with running_daemon(fs_config(disco)) as d:
                assert (await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")).status == 200
                proxy = f"http://127.0.0.1:{nowhere}"
                env = {
                    **os.environ,
                    "http_proxy": proxy,
                    "HTTP_PROXY": proxy,
                    "no_proxy": "",
                    "NO_PROXY": "",
                }
                for command in ("wtf", "state"):
                    code, out, err = await hostproxy(command, "--admin", d.admin, env=env)
                    assert code == 0, (command, out, err)
                code, out, _ = await hostproxy("wtf", "--admin", d.admin, env=env)
                assert out.startswith("healthy — router out: 1 requests, 0 failed")


# -- blame: 5xx a proxy downstream made, endpoints failure accrual took out ----------------------------


def by_finding(doc: dict[str, object]) -> dict[tuple[object, object], dict[str, object]]:
    findings = doc["findings"]
    assert isinstance(findings, list)
    return {(f["service"], f["cause"]): f for f in findings}


async def test_wtf_blames_a_proxy_downstream_for_the_5xx_it_made_and_the_application_for_its_own(
    tmp_path: Path,
) -> None:
    """Linker to linker: the outgoing router sends to a peer hostproxy's incoming router, whose app
    is down. The peer answers 502 with l5d-err; the outgoing router passes it on (upstream/5xx). wtf
    on the outgoing host said "application returns 5xx — look at the application's logs on <the peer
    proxy>; the proxy is not the cause": the wrong blame, and the wrong host. Each service is judged
    on its own answers: an application 500 through the same peer is still the application's."""
    disco = tmp_path / "disco"
    disco.mkdir()
    with closed_port() as down:
        async with running_upstream() as app:
            (disco / "web").write_text(f"127.0.0.1 {down}\n")
            (disco / "api").write_text(f"127.0.0.1 {app.port}\n")
            async with running_daemon(fs_config(disco, dtab="/svc => /#/io.l5d.fs;")) as peer:
                outgoing = f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: http
  label: outgoing
  dtab: /svc => /$/inet/127.0.0.1/{peer.port("out")};
  servers: [{{ip: 127.0.0.1, port: 0}}]
  service:
    retries: {{budget: {{minRetriesPerSec: 0, percentCanRetry: 0.0}}}}
"""
                async with running_daemon(outgoing) as d:
                    base = f"http://127.0.0.1:{d.port('outgoing')}"
                    r = await curl(base + "/", "-H", "Host: web")
                    assert r.status == 502 and r.l5d_err is not None
                    assert r.l5d_err.startswith(f"Unable to establish connection to 127.0.0.1:{down}")
                    assert (await curl(base + "/status/500", "-H", "Host: api")).status == 500
                    assert (await curl(base + "/", "-H", "Host: api")).status == 200

                    code, out, err = await hostproxy("wtf", "--admin", d.admin, "--json")
                    assert code == 1, err
                    found = by_finding(json.loads(out))
                    peer_at = f"127.0.0.1:{peer.port('out')}"
                    f = found[("/svc/web", "upstream/5xx")]
                    assert f["fault"] == "downstream proxy" and f["level"] == "proxy"
                    verdict = str(f["verdict"])
                    assert verdict.startswith(
                        f"a proxy downstream at {peer_at} answers 5xx for 100% of requests"
                    )
                    assert f"with l5d-err: Unable to establish connection to 127.0.0.1:{down}" in verdict
                    assert "application" not in str(f["next_step"])
                    assert f"`hostproxy wtf` on the host of {peer_at}" in str(f["next_step"])
                    f = found[("/svc/api", "upstream/5xx")]
                    assert f["fault"] == "application"
                    assert str(f["verdict"]).startswith("application returns 5xx for 50% of requests (500×1)")

                    # The text report says the same.
                    code, out, _ = await hostproxy("wtf", "--admin", d.admin)
                    assert "upstream/5xx [fault: downstream proxy]  router outgoing /svc/web" in out
                    # And wtf on the peer names the real culprit.
                    code, out, _ = await hostproxy("wtf", "--admin", peer.admin, "--json")
                    f = by_finding(json.loads(out))[("/svc/web", "connect/refused")]
                    assert f["endpoint"] == f"127.0.0.1:{down}"


async def test_wtf_reports_an_endpoint_failure_accrual_took_out_while_requeues_hid_its_failures(
    tmp_path: Path,
) -> None:
    """One of two endpoints refuses connections: every request is requeued to the other and
    succeeds, failure accrual marks the refusing one dead. wtf said "healthy" (exit 0) — half the
    service's capacity gone and not a word — because it wanted the client to have failed requests."""
    disco = tmp_path / "disco"
    disco.mkdir()
    with closed_port() as down:
        async with running_upstream() as up:
            (disco / "web").write_text(f"127.0.0.1 {down}\n127.0.0.1 {up.port}\n")
            async with running_daemon(fs_config(disco)) as d:
                base = f"http://127.0.0.1:{d.port('out')}"
                statuses = [(await curl(base + "/", "-H", "Host: web")).status for _ in range(20)]
                assert statuses == [200] * 20
                state = (await curl(d.admin + "/client_state.json")).json()
                assert isinstance(state, dict)
                assert state["/#/io.l5d.fs/web"]["endpoints"][f"127.0.0.1:{down}"]["accrual"] == "dead"

                code, out, err = await hostproxy("wtf", "--admin", d.admin, "--json")
                assert code == 1, (out, err)
                doc = json.loads(out)
                (f,) = doc["findings"]
                assert f["severity"] == "warning" and f["cause"] == "connect/refused"
                assert f["service"] == "/svc/web" and f["endpoint"] == f"127.0.0.1:{down}"
                assert f["failures"] == 0 and f["requests"] == 20
                assert f["verdict"] == (
                    f"endpoint 127.0.0.1:{down} of /#/io.l5d.fs/web is marked dead by failure accrual after "
                    f"connect/refused failures (last: Unable to establish connection to 127.0.0.1:{down}: "
                    "Connection refused); requests go to the other 1 endpoint(s)"
                )


# -- arguments -------------------------------------------------------------------------------------


async def test_hostproxy_dash_reads_the_config_from_stdin_as_linkerd_does() -> None:
    """``linkerd -`` reads the config from stdin, and ``hostproxy FILE`` is ``hostproxy run FILE``;
    ``hostproxy -`` was a usage error (``invalid choice: '-'``)."""
    with trio.fail_after(60):
        proc = await trio.run_process(
            [sys.executable, "-m", "hostproxy", "-"],
            stdin=b"routers: []\n",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "hostproxy: refusing to start: 1 error(s) in the config" in err
    assert "<stdin>:1: routers: no routers configured" in err


async def test_wtf_refuses_a_percentage_as_ignore_below_instead_of_reporting_healthy(tmp_path: Path) -> None:
    """``--ignore-below 5`` (meaning 5%) ignored every cause under 500% of the requests: a service
    failing every request was reported "healthy", exit 0."""
    disco = tmp_path / "disco"
    disco.mkdir()
    with closed_port() as down:
        (disco / "web").write_text(f"127.0.0.1 {down}\n")
        async with running_daemon(fs_config(disco)) as d:
            assert (await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")).status == 502
            code, out, err = await hostproxy("wtf", "--admin", d.admin, "--ignore-below", "5")
            assert code == 2 and out == "", out
            assert (
                "argument --ignore-below: 5 is not a share of requests from 0 to 1: write 0.05 for 5%" in err
            )
            code, out, _ = await hostproxy("wtf", "--admin", d.admin, "--ignore-below", "1", "--json")
            assert code == 1 and json.loads(out)["findings"][0]["share"] == 1.0


async def test_bad_timeouts_and_log_levels_are_usage_errors() -> None:
    """``--timeout 0`` made every read fail with "did not answer JSON (Timeout value out of range)"
    or "Operation now in progress" (blaming the admin server); ``--log-level bogus`` ran at info."""
    for command in ("wtf", "state"):
        for value in ("0", "-1", "nan"):
            code, out, err = await hostproxy(command, "--admin", "127.0.0.1:1", "--timeout", value)
            assert code == 2 and out == "", (command, value, err)
            assert f"argument --timeout: {value}: the timeout must be a number of seconds above 0" in err
    code, _, err = await hostproxy("run", "--log-level", "bogus", "config.yaml")
    assert code == 2 and "argument --log-level: invalid choice: 'bogus'" in err


async def test_state_json_is_one_document_also_when_the_admin_server_cannot_be_read() -> None:
    """Every ``--json`` output is exactly one JSON document on stdout: ``state --json`` printed
    nothing when the admin server was down, and ``hostproxy state --json | jq`` read no input."""
    with closed_port() as port:
        code, out, err = await hostproxy("state", "--admin", f"127.0.0.1:{port}", "--json")
    assert code == 1
    doc = json.loads(out)
    assert doc["clients"] == {} and doc["namers"] == {}
    assert doc["error"].startswith(f"cannot read http://127.0.0.1:{port}/client_state.json: ")
    assert "is hostproxy running" in err


async def test_wtf_says_which_kind_of_upstream_reset_it_was(tmp_path: Path) -> None:
    """``upstream/reset`` covers a reset, a response hostproxy refuses (a head past maxHeadersKB) and
    an h2 handshake an HTTP/1.1 app never completes; wtf guessed "app crashing, or its keep-alive
    timeout shorter than the pool's" for all of them. It now quotes the endpoint's last failure, and
    names the protocol mismatch."""
    disco = tmp_path / "disco"
    disco.mkdir()

    def huge_head(head: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 20000 + b"\r\nContent-Length: 2\r\n\r\nok"

    async with running_upstream() as h1_app, trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        nursery.start_soon(trio.serve_listeners, partial(answer_each_head, answer=huge_head), listeners)
        big_port = listeners[0].socket.getsockname()[1]
        (disco / "big").write_text(f"127.0.0.1 {big_port}\n")
        (disco / "h1").write_text(f"127.0.0.1 {h1_app.port}\n")
        h2_router = """- protocol: h2
  label: grpc
  dtab: /svc => /#/io.l5d.fs;
  servers: [{ip: 127.0.0.1, port: 0}]
"""
        async with running_daemon(fs_config(disco, extra_router=h2_router)) as d:
            r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: big")
            assert r.status == 502
            r = await curl(f"http://127.0.0.1:{d.port('grpc')}/", "--http2-prior-knowledge", "-H", "Host: h1")
            assert r.status == 502
            code, out, err = await hostproxy("wtf", "--admin", d.admin, "--json")
            assert code == 1, err
            found = {(f["router"], f["service"], f["cause"]): f for f in json.loads(out)["findings"]}
            f = found[("out", "/svc/big", "upstream/reset")]
            assert f["verdict"].startswith(
                f"upstream 127.0.0.1:{big_port} closes or resets connections mid-request for 100% of "
                "requests (or answers what hostproxy refuses); last error: "
            )
            assert "maxHeadersKB" in f["verdict"], f["verdict"]
            f = found[("grpc", "/svc/h1", "upstream/reset")]
            assert f["verdict"] == (
                f"upstream 127.0.0.1:{h1_app.port} closes connections before the HTTP/2 handshake completes, "
                "failing 100% of requests: it does not speak HTTP/2 in cleartext (prior knowledge) — an "
                "HTTP/1.1 app behind an h2 router?"
            )
            assert f"curl --http2-prior-knowledge http://127.0.0.1:{h1_app.port}/" in f["next_step"]
        nursery.cancel_scope.cancel()


async def test_documents_turned_off_by_admin_security_are_named_not_silently_skipped(tmp_path: Path) -> None:
    """``admin.security.diagnosticsEnabled: false`` answers 404 for /client_state.json and the
    other diagnostic documents. wtf read them as "this daemon does not have it" and diagnosed
    without a word (an endpoint failure accrual took out went unreported: "healthy"); state said
    "/client_state.json is missing: is this a hostproxy admin server?" of a hostproxy admin server."""
    disco = tmp_path / "disco"
    disco.mkdir()
    (disco / "web").write_text("127.0.0.1 9\n")
    config = fs_config(disco).replace(
        "admin: {ip: 127.0.0.1, port: 0}",
        "admin: {ip: 127.0.0.1, port: 0, security: {diagnosticsEnabled: false}}",
    )
    async with running_daemon(config) as d:
        code, out, err = await hostproxy("wtf", "--admin", d.admin, "--json")
        assert code == 0, (out, err)
        doc = json.loads(out)
        off = (
            "is turned off by the daemon's admin.security (diagnosticsEnabled: false, pathBlacklist); "
            "allow it with admin.security.pathWhitelist"
        )
        assert f"{d.admin}/client_state.json {off}" in doc["unreadable"]
        assert f"{d.admin}/admin/namer_state.json {off}" in doc["unreadable"]
        code, out, err = await hostproxy("state", "--admin", d.admin)
        assert code == 1 and out == ""
        assert err.strip() == f"hostproxy state: {d.admin}/client_state.json {off}"
        code, out, err = await hostproxy("wtf", "--admin", d.admin, "--interval", "100ms", "--json")
        assert code == 0, (out, err)
        assert f"{d.admin}/admin/unbound.json {off}" in json.loads(out)["unreadable"]
        # Without /admin/routers.json, a --router typo is still a usage error, not "healthy".
        code, out, err = await hostproxy("wtf", "--admin", d.admin, "--router", "uot", "--json")
        assert code == 2, (out, err)
        assert json.loads(out)["error"] == "--router uot: no such router; the routers are: out"
        code, out, err = await hostproxy("wtf", "--admin", d.admin, "--router", "out")
        assert code == 0, (out, err)


async def test_state_names_namer_states_admin_security_turned_off_and_shows_the_clients(
    tmp_path: Path,
) -> None:
    disco = tmp_path / "disco"
    disco.mkdir()
    async with running_upstream() as up:
        (disco / "web").write_text(f"127.0.0.1 {up.port}\n")
        config = fs_config(disco).replace(
            "admin: {ip: 127.0.0.1, port: 0}",
            "admin: {ip: 127.0.0.1, port: 0, security: {pathBlacklist: ['/admin/namer_state.json', '/namer_state/.*']}}",
        )
        async with running_daemon(config) as d:
            assert (await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")).status == 200
            code, out, err = await hostproxy("state", "--admin", d.admin)
            assert code == 0, err
            assert "/#/io.l5d.fs/web  bound\n" in out
            assert (
                f"not read: {d.admin}/admin/namer_state.json is turned off by the daemon's admin.security"
                in out
            )
            code, out, err = await hostproxy("state", "--admin", d.admin, "--json")
            doc = json.loads(out)
            assert "/#/io.l5d.fs/web" in doc["clients"] and doc["namers"] == {}
            assert doc["unreadable"] == [
                f"{d.admin}/admin/namer_state.json is turned off by the daemon's admin.security "
                "(diagnosticsEnabled: false, pathBlacklist); allow it with admin.security.pathWhitelist",
                f"{d.admin}/namer_state/io.l5d.fs.json is turned off by the daemon's admin.security "
                "(diagnosticsEnabled: false, pathBlacklist); allow it with admin.security.pathWhitelist",
            ]
    # Only the aggregate turned off: each namer's own document is read instead.
    config = fs_config(disco).replace(
        "admin: {ip: 127.0.0.1, port: 0}",
        "admin: {ip: 127.0.0.1, port: 0, security: {pathBlacklist: ['/admin/namer_state.json']}}",
    )
    async with running_upstream() as up:
        (disco / "web").write_text(f"127.0.0.1 {up.port}\n")
        async with running_daemon(config) as d:
            assert (await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")).status == 200
            code, out, err = await hostproxy("state", "--admin", d.admin, "--json")
            doc = json.loads(out)
            assert doc["namers"]["/io.l5d.fs"]["names"]["web"]["state"] == "bound"
            assert "unreadable" not in doc


# -- hostproxy dtab ----------------------------------------------------------------------------------


async def test_dtab_delegate_says_a_name_is_negative_for_want_of_its_namer(tmp_path: Path) -> None:
    """``hostproxy dtab delegate --dtab '/svc => /#/io.l5d.fs' /svc/web`` without ``--namer``
    answered "~ (neg: nothing binds this path)", as if no service web existed."""
    disco = tmp_path / "disco"
    disco.mkdir()
    (disco / "web").write_text("127.0.0.1 8080\n")
    code, out, err = await hostproxy("dtab", "delegate", "--dtab", "/svc => /#/io.l5d.fs", "/svc/web")
    assert code == 0, err
    assert out.splitlines()[1] == (
        "`-- /#/io.l5d.fs/web  [/svc => /#/io.l5d.fs]  -> ~ (neg: no namer /#/io.l5d.fs here: "
        "give --namer io.l5d.fs=DIR)"
    )
    # With the namer, a name it does not have is still just negative.
    args = ("dtab", "delegate", "--dtab", "/svc => /#/io.l5d.fs", "--namer", f"io.l5d.fs={disco}")
    code, out, err = await hostproxy(*args, "/svc/nope")
    assert out.splitlines()[1].endswith("-> ~ (neg: nothing binds this path)")
    code, out, err = await hostproxy(*args, "/svc/web")
    assert out.splitlines()[-1] == "binds to: /#/io.l5d.fs/web (127.0.0.1:8080)"


async def test_wtf_names_the_silent_dns_server_behind_many_failing_hosts_as_one_large_problem() -> None:
    """Every Host resolved by DNS, and the nameserver stops answering: each request fails its
    binding timeout. wtf listed one naming/failed per Host, each "ERROR 12%" (with 100 Hosts each
    a "WARNING 1%", and --ignore-below 0.2 reported "healthy" with every request failing), quoting
    only "Exceeded 0.5 seconds binding timeout" — not the DNS timeout /$/inet's state showed."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # a nameserver that never answers
        dns = f"127.0.0.1:{silent.getsockname()[1]}"
        config = f"""
admin: {{ip: 127.0.0.1, port: 0}}
dns: {{nameservers: ["{dns}"]}}
routers:
- protocol: http
  label: out
  dtab: /svc => /$/io.buoyant.rinet/80;
  bindingTimeoutMs: 300
  servers: [{{ip: 127.0.0.1, port: 0}}]
"""
        async with running_daemon(config) as d:
            hosts = [f"svc{i}.example" for i in range(8)]
            for host in hosts:
                r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", f"Host: {host}")
                assert r.status == 502 and "binding timeout" in (r.l5d_err or "")
            with trio.fail_after(30):  # until the resolver gave up on the last one
                while True:
                    state = (await curl(d.admin + "/admin/namer_state.json")).json()
                    assert isinstance(state, dict)
                    if state["/$/inet"]["names"].get("svc7.example", {}).get("state") == "failed":
                        break
                    await trio.sleep(0.2)
            code, out, err = await hostproxy("wtf", "--admin", d.admin, "--json")
            assert code == 1, err
            found = by_finding(json.loads(out))
            said = re.compile(
                rf"; namer /\$/inet fails [1-8] name\(s\), e.g. svc[0-7]\.example: resolving 'svc[0-7]\.example' "
                rf"via {re.escape(dns)} failed: .*timed out"
            )
            for host in hosts:
                f = found[(f"/svc/{host}", "naming/failed")]
                assert f["severity"] == "critical" and f["share"] == 0.125
                assert said.search(str(f["verdict"])), f["verdict"]
                assert str(f["next_step"]).startswith(
                    "fix what the namer's error names; /namer_state/$/inet.json"
                )
            code, out, _ = await hostproxy("wtf", "--admin", d.admin, "--json", "--ignore-below", "0.2")
            assert code == 1 and len(json.loads(out)["findings"]) == len(hosts)


async def test_wtf_does_not_call_an_application_slow_that_was_never_reached(tmp_path: Path) -> None:
    """An endpoint that never answers SYNs, and a totalTimeoutMs shorter than the connect timeout:
    each request runs out of time while hostproxy is still connecting. wtf said "the application
    is too slow: 100% of requests exceed totalTimeoutMs" (fault: application) of an application
    that never saw a byte. A really slow application is still called slow."""
    disco = tmp_path / "disco"
    disco.mkdir()
    with stalled_port() as stalled:
        async with running_upstream() as slow_app:
            (disco / "web").write_text(f"127.0.0.1 {stalled}\n")
            (disco / "slow").write_text(f"127.0.0.1 {slow_app.port}\n")
            async with running_daemon(fs_config(disco) + "  service: {totalTimeoutMs: 300}\n") as d:
                base = f"http://127.0.0.1:{d.port('out')}"
                for _ in range(2):
                    assert (await curl(base + "/", "-H", "Host: web")).status == 503
                assert (await curl(base + "/slow/2000", "-H", "Host: slow")).status == 503
                code, out, err = await hostproxy("wtf", "--admin", d.admin, "--json")
                assert code == 1, err
                found = by_finding(json.loads(out))
                f = found[("/svc/web", "timeout/request")]
                assert f["fault"] == "network/upstream" and f["level"] == "connection"
                assert f["endpoint"] == f"127.0.0.1:{stalled}"
                assert f["verdict"] == (
                    f"100% of requests exceed totalTimeoutMs while hostproxy is still connecting to "
                    f"127.0.0.1:{stalled}: no connection to it was ever established (2 connect(s) failed or "
                    "abandoned at the deadline), so the application was never reached — host down, SYNs "
                    "dropped by a firewall, or the app's accept queue full"
                )
                assert str(f["next_step"]).startswith(f"`nc -vz -w2 127.0.0.1 {stalled}` from this host")
                f = found[("/svc/slow", "timeout/request")]
                assert f["fault"] == "application"
                assert str(f["verdict"]).startswith("the application is too slow: 100% of requests exceed")
            # The same through an h2 router (its connects are shared by the requests waiting for them).
            h2 = """- protocol: h2
  label: h2
  dtab: /svc => /#/io.l5d.fs;
  servers: [{ip: 127.0.0.1, port: 0}]
  service: {totalTimeoutMs: 300}
"""
            async with running_daemon(fs_config(disco, extra_router=h2)) as d:
                r = await curl(
                    f"http://127.0.0.1:{d.port('h2')}/", "--http2-prior-knowledge", "-H", "Host: web"
                )
                assert r.status == 503
                code, out, err = await hostproxy("wtf", "--admin", d.admin, "--json")
                f = by_finding(json.loads(out))[("/svc/web", "timeout/request")]
                assert f["fault"] == "network/upstream" and f["endpoint"] == f"127.0.0.1:{stalled}"


# -- hostproxy run -------------------------------------------------------------------------------------


async def test_run_says_the_address_is_not_this_hosts_rather_than_a_port_in_use(tmp_path: Path) -> None:
    """A servers[].ip that no interface of the host has (a typo, the config of another host):
    ``failed to start: [Errno 99] … Cannot assign requested address; is another process using the
    port?`` sent the operator looking for a process that does not exist."""
    config = tmp_path / "hostproxy.yaml"
    with closed_port() as admin_port:
        config.write_text(
            f"admin: {{ip: 127.0.0.1, port: {admin_port}}}\n"
            "routers:\n- protocol: http\n  dtab: /svc => /$/inet/127.0.0.1/1;\n"
            "  servers: [{ip: 192.0.2.1, port: 4140}]\n"
        )
    code, out, err = await hostproxy("run", str(config))
    assert code == 1
    assert (
        "hostproxy: failed to start: [Errno 99] cannot listen on 192.0.2.1:4140: Cannot assign requested "
        "address; no network interface of this host has the address 192.0.2.1: correct the ip in the "
        "config (admin.ip, servers[].ip), or listen on 0.0.0.0"
    ) in err
    assert "another process" not in err


async def test_wtf_diagnoses_without_an_optional_document_that_answers_too_slowly() -> None:
    """A daemon slow to serve /client_state.json (many clients, a busy loop) past --timeout: wtf gave
    up with "cannot read …/client_state.json: timed out; is hostproxy running?" although it had
    just read the metrics from it."""
    metrics = json.dumps(
        {"rt/out/server/127.0.0.1/4140/requests": 5, "rt/out/service/svc/web/requests": 5}
    ).encode()

    async def admin(request: Request, info: object) -> Response:
        await request.body.aclose()
        if request.target == "/admin/metrics.json":
            return Response(
                200, b"OK", Headers([(b"content-type", b"application/json")]), Body.from_bytes(metrics)
            )
        if request.target == "/client_state.json":
            await trio.sleep(5)
        return Response(404, b"Not Found", Headers([]), Body.from_bytes(b"no"))

    async with serving(admin) as port:
        code, out, err = await hostproxy("wtf", "--admin", f"127.0.0.1:{port}", "--timeout", "0.5", "--json")
    assert code == 0, (out, err)
    doc = json.loads(out)
    assert doc["healthy"] is True
    assert doc["unreadable"] == [
        f"http://127.0.0.1:{port}/client_state.json did not answer within 0.5 s (--timeout); is the daemon "
        "overloaded? Raise --timeout to wait longer"
    ]


async def test_wtf_blames_a_proxy_downstream_for_the_grpc_error_it_made(tmp_path: Path) -> None:
    """The gRPC form of linker to linker: the peer's h2 router cannot reach the app and answers
    200 with grpc-status 14 and l5d-err; wtf on the outgoing host said "application answers gRPC
    errors — the proxy is not the cause"."""
    disco = tmp_path / "disco"
    disco.mkdir()
    h2 = """
admin: {{ip: 127.0.0.1, port: 0}}
{namers}routers:
- protocol: h2
  label: {label}
  dtab: {dtab}
  identifier: {{kind: io.l5d.header.token, header: ":authority"}}
  servers: [{{ip: 127.0.0.1, port: 0}}]
  service: {{responseClassifier: {{kind: io.l5d.h2.grpc.default}}}}
"""
    namers = f"namers:\n- kind: io.l5d.fs\n  rootDir: {disco}\n"
    with closed_port() as down:
        (disco / "web").write_text(f"127.0.0.1 {down}\n")
        async with running_daemon(h2.format(namers=namers, label="in", dtab="/svc => /#/io.l5d.fs;")) as peer:
            dtab = f"/svc => /$/inet/127.0.0.1/{peer.port('in')};"
            async with running_daemon(h2.format(namers="", label="out", dtab=dtab)) as d:
                r = await curl(
                    f"http://127.0.0.1:{d.port('out')}/pkg.Svc/Method",
                    "--http2-prior-knowledge",
                    *("-H", "Host: web", "-H", "content-type: application/grpc", "-H", "te: trailers"),
                    *("--data-binary", "@/dev/null"),
                )
                assert r.status == 200 and r.header("grpc-status") == "14" and r.l5d_err is not None
                code, out, err = await hostproxy("wtf", "--admin", d.admin, "--json")
                assert code == 1, err
                f = by_finding(json.loads(out))[("/svc/web", "upstream/grpc")]
                peer_at = f"127.0.0.1:{peer.port('in')}"
                assert f["fault"] == "downstream proxy"
                assert str(f["verdict"]).startswith(
                    f"a proxy downstream at {peer_at} answers gRPC errors for 100% of requests itself, with "
                    f"l5d-err: Unable to establish connection to 127.0.0.1:{down}"
                )


def test_a_refused_connect_through_the_daemonset_transformer_names_the_nodes_proxy_not_the_app() -> None:
    """Kubernetes linker to linker (io.l5d.k8s.daemonset): the endpoint of an outgoing client is the
    hostproxy/Linkerd pod on the destination's node. When it refuses, wtf said "upstream refuses
    connections (app down or wrong port?) — is the app listening on 10.1.1.2:4141?": the app is not
    there, the node's proxy is."""
    cid = "/%/io.l5d.k8s.daemonset/linkerd/incoming/l5d/#/io.l5d.k8s/default/http/web"
    p = "rt/out/service/svc/web"
    c = "rt/out/client" + cid
    metrics = {
        "rt/out/server/127.0.0.1/4140/requests": 4,
        f"{p}/requests": 4,
        f"{p}/failures": 4,
        f"{p}/failures/connect/refused": 4,
        f"{c}/requests": 4,
        f"{c}/failures/connect/refused": 4,
    }
    eps = {"10.1.1.2:4141": {"weight": 1.0, "pool": {"connect_failures": 9}, "accrual": "dead"}}
    snap = Snapshot(
        metrics=metrics,
        client_state={cid: {"state": "bound", "endpoints": eps}},
        bindings={"out": {"/svc/web": [cid]}},
    )
    (f,) = diagnose(snap).findings
    assert (f.cause, f.fault, f.endpoint, f.client) == (
        "connect/refused",
        "network/upstream",
        "10.1.1.2:4141",
        cid,
    )
    assert f.verdict == (
        "the proxy on the destination's node at 10.1.1.2:4141 (daemonset linkerd/l5d, port incoming) refuses "
        "connections: requests go to each node's hostproxy or Linkerd, not to the app — is that node's proxy "
        "pod running and listening?"
    )
    assert f.next_step.startswith(
        "`kubectl -n linkerd get pods -o wide` for the l5d pod on the node of 10.1.1.2:4141"
    )


def test_without_bindings_a_service_is_not_blamed_on_another_services_client() -> None:
    """With /admin/routers.json unreadable (no bindings), each failing service was blamed on the
    router's client with the most failures of its cause: /svc/b's refused connects were reported
    against /svc/a's client and endpoint."""

    def counters(scope: str, name: str, n: int) -> dict[str, float]:
        p = f"rt/out/{scope}/{name.lstrip('/')}"
        return {f"{p}/requests": n, f"{p}/failures": n, f"{p}/failures/connect/refused": n}

    metrics = {
        "rt/out/server/127.0.0.1/4140/requests": 13,
        **counters("service", "/svc/a", 10),
        **counters("service", "/svc/b", 3),
        **counters("client", "/#/io.l5d.fs/a", 10),
        **counters("client", "/#/io.l5d.fs/b", 3),
    }
    state = {
        "/#/io.l5d.fs/a": {"state": "bound", "addresses": ["10.0.0.1:80"]},
        "/#/io.l5d.fs/b": {"state": "bound", "addresses": ["10.0.0.2:80"]},
    }
    found = {f.service: f for f in diagnose(Snapshot(metrics=metrics, client_state=state)).findings}
    assert (found["/svc/a"].client, found["/svc/a"].endpoint) == ("/#/io.l5d.fs/a", "10.0.0.1:80")
    assert (found["/svc/b"].client, found["/svc/b"].endpoint) == ("/#/io.l5d.fs/b", "10.0.0.2:80")
    # Counts that tell nothing apart: no client rather than a wrong one.
    metrics.update(counters("client", "/#/io.l5d.fs/a", 7))
    metrics.update(counters("client", "/#/io.l5d.fs/b", 6))
    found = {f.service: f for f in diagnose(Snapshot(metrics=metrics, client_state=state)).findings}
    assert (found["/svc/b"].client, found["/svc/b"].endpoint) == (None, None)


async def test_wtf_reports_an_endpoint_failure_accrual_is_probing_back(tmp_path: Path) -> None:
    """Past its backoff, a dead endpoint's accrual state is probe_open (the next request probes it)
    until a probe succeeds; wtf reported only the state "dead", so once the backoff ran out (seconds,
    with Linkerd's default) the refusing endpoint vanished from the report: "healthy"."""
    disco = tmp_path / "disco"
    disco.mkdir()
    accrual = (
        "  client:\n    failureAccrual: {kind: io.l5d.consecutiveFailures, failures: 5, "
        "backoff: {kind: constant, ms: 200}}\n"
    )
    with closed_port() as down:
        async with running_upstream() as up:
            (disco / "web").write_text(f"127.0.0.1 {down}\n127.0.0.1 {up.port}\n")
            async with running_daemon(fs_config(disco) + accrual) as d:
                base = f"http://127.0.0.1:{d.port('out')}"

                async def accrual_state() -> str:
                    state = (await curl(d.admin + "/client_state.json")).json()
                    assert isinstance(state, dict)
                    client = state.get("/#/io.l5d.fs/web") or {"endpoints": {}}  # (made by the first request)
                    return str(client["endpoints"].get(f"127.0.0.1:{down}", {}).get("accrual"))

                with trio.fail_after(20):
                    # Requests (each answered by the live endpoint, the refusals requeued) until the
                    # balancer's random picks gave the refusing one its five failures in a row ...
                    while await accrual_state() not in ("dead", "probe_open"):
                        assert (await curl(base + "/", "-H", "Host: web")).status == 200
                    # ... then none, so that no request probes it before it is seen probe_open.
                    while await accrual_state() != "probe_open":
                        await trio.sleep(0.1)
                code, out, err = await hostproxy("wtf", "--admin", d.admin, "--json")
                assert code == 1, (out, err)
                (f,) = json.loads(out)["findings"]
                assert (f["cause"], f["endpoint"]) == ("connect/refused", f"127.0.0.1:{down}")
                assert "; it is being probed back, no probe has succeeded yet;" in f["verdict"]


def test_a_timeout_with_one_endpoint_never_reached_says_so_beside_the_slow_application() -> None:
    cid = "/#/io.l5d.fs/web"
    metrics = {
        "rt/out/server/127.0.0.1/4140/requests": 10,
        "rt/out/service/svc/web/requests": 10,
        "rt/out/service/svc/web/failures/timeout/request": 4,
        f"rt/out/client{cid}/requests": 10,
        f"rt/out/client{cid}/failures/timeout/request": 4,
    }
    eps = {
        "10.0.0.1:80": {"pool": {"connects": 3, "connect_failures": 0, "connects_abandoned": 0}},
        "10.0.0.2:80": {"pool": {"connects": 0, "connect_failures": 2, "connects_abandoned": 1}},
    }
    snap = Snapshot(
        metrics=metrics,
        client_state={cid: {"state": "bound", "endpoints": eps}},
        bindings={"out": {"/svc/web": [cid]}},
    )
    (f,) = diagnose(snap).findings
    assert f.fault == "application"
    assert f.verdict == (
        "the application is too slow: 40% of requests exceed totalTimeoutMs; but no connection to "
        "10.0.0.2:80 was ever established (host down, or SYNs dropped?): requests sent there never "
        "reached the application"
    )


async def test_wtf_reports_a_service_whose_file_was_deleted_once(tmp_path: Path) -> None:
    """A service that bound, then its fs file was deleted: its requests fail naming/neg, counted
    under the service and also kept in the table of unbound names. wtf listed the same
    (router, service, cause) twice, at 50% each, once as "a typo in the Host?"."""
    disco = tmp_path / "disco"
    disco.mkdir()
    async with running_upstream() as up:
        (disco / "web").write_text(f"127.0.0.1 {up.port}\n")
        async with running_daemon(fs_config(disco)) as d:
            base = f"http://127.0.0.1:{d.port('out')}/"
            assert [(await curl(base, "-H", "Host: web")).status for _ in range(2)] == [200, 200]
            (disco / "web").unlink()
            with trio.fail_after(10):
                while (await curl(base, "-H", "Host: web")).status != 502:
                    await trio.sleep(0.1)
            code, out, err = await hostproxy("wtf", "--admin", d.admin, "--json")
            assert code == 1, err
            findings = json.loads(out)["findings"]
            assert [(f["service"], f["cause"]) for f in findings] == [("/svc/web", "naming/neg")]
            # (one failure among successes: a warning that says so)
            requests = findings[0]["requests"]
            assert findings[0]["verdict"] == (
                f"no route: /svc/web is negative in the dtab of router out (1 of {requests} requests: too "
                "few to rate)"
            )


def test_state_writes_namer_addresses_as_addresses() -> None:
    """``hostproxy state`` wrote an IPv6 address of a namer as ``::1:8081`` (no address: which colon
    starts the port?) and dropped the weights the fs file gives."""
    names = {
        "web": {
            "state": "bound",
            "addrs": [
                {"host": "::1", "port": 8081, "weight": 2.0},
                {"host": "10.0.0.1", "port": 80, "weight": 1.0},
            ],
        }
    }
    text = render_tables({}, {"/io.l5d.fs": {"kind": "io.l5d.fs", "names": names}})
    assert "  web   bound  [::1]:8081*2, 10.0.0.1:80" in text


async def test_dtab_lint_of_a_large_generated_dtab_finishes(tmp_path: Path) -> None:
    """A dtab generated from a service catalogue (thousands of dentries): ``dtab lint`` compared
    every dentry with every other for each lookup and counted newlines from the start for each
    position — 10 s for 2,000 dentries, 80 s for 5,000, past 5 minutes for 10,000 (a pre-commit hook
    that never returns). The same findings now come from an index of the prefixes."""
    lines = [f"/svc/s{i} => /#/io.l5d.fs/s{i} | /$/inet/10.0.{i % 250}.{i % 200}/80;" for i in range(10000)]
    lines.append("/svc/s5 => /$/inet/127.0.0.1/80;")  # shadows line 6
    lines.append("/loop/a => /loop/b; /loop/b => /loop/a;")
    dtab = tmp_path / "big.dtab"
    dtab.write_text("\n".join(lines) + "\n")
    code, out, err = await hostproxy("dtab", "lint", str(dtab))  # (bounded: 60 s)
    assert code == 1, err
    found = out.splitlines()
    assert len(found) == 2, found
    assert found[0].startswith(f"{dtab}:6:1: warning: dentry '/svc/s5 => /#/io.l5d.fs/s5 | ")
    assert found[0].endswith("[shadowed]")
    assert found[1].startswith(f"{dtab}:10002:1: warning: rewrite cycle /loop/a -> /loop/b -> /loop/a")
