"""Adversarial config review: values the runtime refuses, hostile YAML, settings accepted but not applied.

Each test here shows a defect found in review: a config that `hostproxy check` passed but the daemon then
refused on every request (or crashed on at startup, or that could not work), YAML that crashed the loader
or made it do unbounded work, an error that did not say where or what to do, and a setting that was
accepted and never applied.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from yaml.nodes import Node

from hostproxy.config import ConfigError, load_config
from tests.daemonutil import curl, running_daemon
from tests.test_lifecycle_helpers import admin_post, config, daemon_proc, get, write_atomic, write_disco
from tests.upstreams import running_upstream

ROUTER = "routers:\n- protocol: http\n  dtab: /svc => /#/io.l5d.fs;\n  servers:\n  - port: 4140\n"
H2_ROUTER = "routers:\n- protocol: h2\n  dtab: /svc => /#/io.l5d.fs;\n  servers:\n  - port: 4142\n"


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(text, source="t.yaml")
    return [i.format() for i in e.value.errors]


def check(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hostproxy", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- values the runtime refuses are config errors --------------------------------------------------------


@pytest.mark.parametrize(
    ("router", "extra", "expected"),
    [
        (
            ROUTER,
            "  client:\n    failureAccrual:\n      kind: io.l5d.consecutiveFailures\n"
            "      backoff: {kind: jittered, minMs: 1000, maxMs: 10}\n",
            "t.yaml:9: routers[0].client.failureAccrual.backoff.maxMs: must be >= minMs (1000), got 10",
        ),
        (
            ROUTER,
            "  client:\n    failureAccrual:\n      kind: io.l5d.consecutiveFailures\n"
            "      backoff: {kind: jittered, minMs: 0, maxMs: 10}\n",
            "t.yaml:9: routers[0].client.failureAccrual.backoff.minMs: must be greater than 0, got 0",
        ),
        (
            ROUTER,
            "  service:\n    retries:\n      backoff:\n        kind: jittered\n        minMs: 500\n"
            "        maxMs: 100\n",
            "t.yaml:11: routers[0].service.retries.backoff.maxMs: must be >= minMs (500), got 100",
        ),
        (
            ROUTER,
            "  client:\n    loadBalancer: {kind: p2c, enableProbation: true}\n",
            "t.yaml:7: routers[0].client.loadBalancer.enableProbation: advisory discovery removal is not "
            "supported; remove the key or set it to false",
        ),
        (
            ROUTER,
            "  client:\n    loadBalancer:\n      kind: aperture\n      lowLoad: 3.0\n      highLoad: 2.0\n",
            "t.yaml:9: routers[0].client.loadBalancer.lowLoad: must be below highLoad (2.0), got 3.0",
        ),
        (
            ROUTER,
            "  client:\n    failureAccrual: {kind: io.l5d.successRateWindowed, successRate: 0.5, "
            "window: 100000}\n",
            "t.yaml:7: routers[0].client.failureAccrual.window: expected a number in [1, 86400], got 100000",
        ),
        (
            ROUTER,
            "  client:\n    requeueBudget: {ttlSecs: 120}\n",
            "t.yaml:7: routers[0].client.requeueBudget.ttlSecs: must be between 1 and 60 (seconds), got 120",
        ),
        (
            ROUTER,
            "  client:\n    kind: io.l5d.static\n    configs:\n    - prefix: /#/io.l5d.fs/web\n"
            "      failureAccrual: {kind: io.l5d.consecutiveFailures, failures: 2000000}\n",
            "t.yaml:10: routers[0].client.configs[0].failureAccrual.failures: expected a number in "
            "[1, 1000000], got 2000000",
        ),
        (
            H2_ROUTER,
            "  service:\n    responseClassifier:\n      kind: io.l5d.h2.grpc.default\n"
            "      successStatusCodes: [0, 99]\n",
            "t.yaml:9: routers[0].service.responseClassifier.successStatusCodes: 99 is not a grpc-status "
            "code; use integers 0..16",
        ),
    ],
    ids=[
        "accrual-backoff-max-below-min",
        "accrual-backoff-min-zero",
        "retry-backoff-max-below-min",
        "enable-probation",
        "aperture-loads",
        "window-too-long",
        "requeue-ttl",
        "static-entry-failures",
        "grpc-status-code",
    ],
)
def test_values_the_runtime_refuses_are_config_errors(router: str, extra: str, expected: str) -> None:
    # These configs passed `hostproxy check` and started the daemon; then every request to a name
    # answered 502 "Internal proxy error" with the builder's exception.
    assert issues(router + extra) == [expected]


async def test_reload_to_a_backoff_the_runtime_refuses_is_rejected_and_traffic_still_flows(
    tmp_path: Path,
) -> None:
    async with running_upstream() as up:
        disco = tmp_path / "disco"
        write_disco(disco, "web", up.port)
        cfg = tmp_path / "hostproxy.yaml"
        cfg.write_text(config(disco))
        async with daemon_proc(cfg) as d:
            port = d.port("out")
            assert (await get(port, "/", host="web")).status == 200
            bad = config(
                disco,
                router_extra="  client:\n    failureAccrual:\n      kind: io.l5d.consecutiveFailures\n"
                "      backoff: {kind: jittered, minMs: 1000, maxMs: 10}",
            )
            write_atomic(cfg, bad)
            line = bad.splitlines().index("      backoff: {kind: jittered, minMs: 1000, maxMs: 10}") + 1
            r = await admin_post(d.admin_port, "/admin/reload")
            assert r.status == 500
            assert (
                f"{cfg}:{line}: routers[0].client.failureAccrual.backoff.maxMs: must be >= minMs (1000), got 10"
                in r.body.decode()
            )
            # The running config stays: a new name (a new client) is still served.
            write_disco(disco, "web2", up.port)
            r = await get(port, "/", host="web2")
            assert (r.outcome, r.status) == ("ok", 200)


async def test_reload_applies_namer_state_and_says_telemetry_is_kept(tmp_path: Path) -> None:
    # A reload that changed only namerState.dir kept the namers (nothing persisted to the new dir), and
    # one that changed telemetry reported success and showed the new telemetry in /config.json while
    # the recorder and the admin server went on with the old.
    async with running_upstream() as up:
        disco = tmp_path / "disco"
        write_disco(disco, "web", up.port)
        cfg = tmp_path / "hostproxy.yaml"
        telemetry = "telemetry:\n- kind: io.l5d.recentRequests\n  sampleRate: {rate}\n"
        cfg.write_text(config(disco, top=telemetry.format(rate=1.0)))
        async with daemon_proc(cfg) as d:
            state = tmp_path / "state"
            state.mkdir()
            write_atomic(
                cfg, config(disco, top=telemetry.format(rate=0.5) + f"namerState: {{dir: {state}}}\n")
            )
            r = await admin_post(d.admin_port, "/admin/reload")
            assert r.status == 200, r
            assert "namers rebuilt" in r.body.decode()
            assert "telemetry not changed (it changes only with a restart)" in r.body.decode()
            shown = json.loads((await get(d.admin_port, "/config.json", host="admin")).body)
            assert shown["telemetry"][0]["sampleRate"] == 1.0
            assert shown["namerState"]["dir"] == str(state)
            assert (await get(d.port("out"), "/", host="web")).status == 200
            with trio.fail_after(30):
                while not any(state.iterdir()):
                    await trio.sleep(0.05)


def test_run_refuses_to_start_on_overload_marks_admin_regex_and_static_forwarded_label(
    tmp_path: Path,
) -> None:
    # Each of these passed `check` and then crashed the daemon at startup with a traceback.
    cfg = tmp_path / "hostproxy.yaml"
    cfg.write_text(
        "admin:\n"
        "  port: 0\n"
        "  security:\n"
        "    pathWhitelist: ['/admin/(ping']\n"
        "overload:\n"
        "  noKeepalive: 0.95\n"
        "  shed: 0.5\n"
        "routers:\n"
        "- protocol: http\n"
        "  servers:\n"
        "  - port: 0\n"
        "    addForwardedHeader:\n"
        "      by: {kind: static}\n"
    )
    want = [
        f"{cfg}:4: admin.security.pathWhitelist[0]: not a valid regular expression: missing ), "
        "unterminated subpattern at position 7",
        f"{cfg}:6: overload: the memory marks must be in order noKeepalive (0.95) <= shed (0.5) "
        "<= stopAccept (0.95); change the one out of order",
        f"{cfg}:13: routers[0].servers[0].addForwardedHeader.by.label: missing required key 'label' "
        "(a labeler of kind static sends this label, e.g. _proxy1)",
    ]
    proc = check("run", str(cfg))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[0] == "hostproxy: refusing to start: 3 error(s) in the config"
    assert proc.stderr.splitlines()[1:] == want
    proc = check("check", str(cfg))
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[:-1] == want


def test_namer_settings_their_runtime_refuses_at_startup_are_config_errors() -> None:
    # Each passed `check`; then the daemon crashed at startup with a traceback naming "namers[]".
    namers = (
        "namers:\n"
        "- kind: io.l5d.rewrite\n  prefix: /r1\n  pattern: /{a}\n  name: /$/inet/{b}/80\n"
        "- kind: io.l5d.rewrite\n  prefix: /r2\n  pattern: no-slash\n  name: /x\n"
        "- kind: io.l5d.dnssrv\n  experimental: true\n  dnsHosts: [10.0.0.2, 'ns1 example']\n"
        "- kind: io.l5d.fs\n  rootDir: ''\n"
        "- kind: io.l5d.k8s\n  labelSelector: 'app version'\n"
        "- kind: io.l5d.fs\n  prefix: /f2\n  rootDir: /srv\n  transformers:\n  - {kind: io.l5d.port, port: 0}\n"
        "dns:\n  nameservers: [resolver.internal]\n"
    )
    ip = "expected an IP address or IP:port (e.g. 10.0.0.2, 10.0.0.2:53 or [fd00::2]:53), got"
    assert issues(namers + ROUTER) == [
        "t.yaml:5: namers[0].name: '/$/inet/{b}/80' uses {b}, which the pattern does not capture (it captures "
        "{a}); capture it in namers[].pattern or remove it",
        "t.yaml:8: namers[1].pattern: 'no-slash' must start with '/', e.g. '/{ns}/{svc}'",
        "t.yaml:12: namers[2].dnsHosts[1]: expected an IP address, a host name, or either with :port (e.g. "
        "10.0.0.2, ns0.example.org, 10.0.0.2:53 or [fd00::2]:53), got 'ns1 example'",
        "t.yaml:14: namers[3].rootDir: must not be empty: give the directory of service files",
        "t.yaml:16: namers[4].labelSelector: 'app version' is not a Kubernetes label key; give the key only, "
        "e.g. version (its value comes from the path)",
        "t.yaml:21: namers[5].transformers[0].port: must be a port number from 1 to 65535, got 0",
        f"t.yaml:23: dns.nameservers[0]: {ip} 'resolver.internal'",
    ]


def test_a_namer_prefix_written_with_the_hash_says_to_drop_it() -> None:
    # prefix: /#/disco passed; the namer then served /#/#/disco, so the dtab's /#/disco bound nothing
    # and every request answered 502.
    text = "namers:\n- kind: io.l5d.fs\n  prefix: /#/disco\n  rootDir: /srv\n" + ROUTER
    assert issues(text) == [
        "t.yaml:3: namers[0].prefix: a namer prefix is written without '/#' (this one would serve "
        "/#/#/disco/...); write prefix: /disco to serve /#/disco"
    ]


def test_k8s_namer_host_is_a_host_and_port_a_port() -> None:
    # A URL as host (the usual slip) or port 0 passed; the namer then failed every lookup, trying to
    # connect to a host named 'http://localhost:8001'.
    assert issues("namers:\n- kind: io.l5d.k8s\n  host: http://localhost:8001\n  port: 0\n" + ROUTER) == [
        "t.yaml:3: namers[0].host: expected a host name or IP address (no scheme, port or path: the port is "
        "`port`), got 'http://localhost:8001'",
        "t.yaml:4: namers[0].port: must be from 1 to 65535, got 0",
    ]


def test_a_daemonset_transformer_needs_a_k8s_namer() -> None:
    # Passed `check`; the daemon then crashed at startup with a ValueError traceback.
    daemonset = "{kind: io.l5d.k8s.daemonset, namespace: linkerd, port: incoming, service: l5d}"
    text = (
        f"namers:\n- kind: io.l5d.fs\n  rootDir: /srv\n  transformers:\n  - {daemonset}\n"
        + ROUTER
        + f"  interpreter:\n    kind: default\n    transformers:\n    - {daemonset}\n"
    )
    why = (
        "io.l5d.k8s.daemonset watches its Service through an io.l5d.k8s namer, and `namers` has none; add one "
        "(e.g. {kind: io.l5d.k8s, host: localhost, port: 8001})"
    )
    assert issues(text) == [
        f"t.yaml:5: namers[0].transformers[0].kind: {why}",
        f"t.yaml:14: routers[0].interpreter.transformers[0].kind: {why}",
    ]
    with_k8s = text.replace("namers:\n", "namers:\n- kind: io.l5d.k8s\n", 1)
    assert load_config(with_k8s, source="t.yaml").namers[0].kind == "io.l5d.k8s"


def test_run_reports_a_transformer_its_environment_cannot_serve_without_a_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "hostproxy.yaml"
    cfg.write_text(
        "admin: {ip: 127.0.0.1, port: 0}\n"
        f"namers:\n- kind: io.l5d.fs\n  rootDir: {tmp_path}\n  transformers:\n  - kind: io.l5d.k8s.localnode\n"
        "routers:\n- protocol: http\n  servers: [{ip: 127.0.0.1, port: 0}]\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("POD_IP", "NODE_NAME")}
    proc = subprocess.run(
        [sys.executable, "-m", "hostproxy", "run", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        "hostproxy: failed to start: io.l5d.k8s.localnode needs the POD_IP environment variable set to this "
        "pod's IP (got ''); set it from the downward API (fieldRef status.podIP), or use hostNetwork: true "
        "with NODE_NAME"
    )
    assert "Traceback" not in proc.stderr


def test_h2_server_settings_outside_what_http2_allows_are_config_errors() -> None:
    # Each passed `check` and the daemon started; then every h2 connection failed as it opened
    # (h2.connection_failed, InvalidSettingsValueError), curl seeing the connection close.
    server = "routers:\n- protocol: h2\n  servers:\n  - port: 4142\n"
    cases = {
        "maxFrameBytes: 100": "must be from 16384 to 16777215, got 100",
        "maxFrameBytes: 16777216": "must be from 16384 to 16777215, got 16777216",
        "initialStreamWindowBytes: 2147483648": "must be from 1 to 2147483647, got 2147483648",
        "headerTableBytes: 4294967296": "must be from 0 to 4294967295, got 4294967296",
        "maxConcurrentStreamsPerConnection: 4294967296": "must be from 1 to 4294967295, got 4294967296",
    }
    for setting, message in cases.items():
        key = setting.split(":")[0]
        assert issues(server + f"    {setting}\n") == [f"t.yaml:5: routers[0].servers[0].{key}: {message}"]


def test_tls_protocols_are_checked_with_the_config() -> None:
    # Passed `check`; the daemon then refused to start (TlsStartupError), so `check` said OK to a
    # config that could not run.
    text = ROUTER + "  client:\n    tls: {disableValidation: true, protocols: [TLSv1.2, TLSv1.1, TLSv9]}\n"
    assert issues(text) == [
        "t.yaml:7: routers[0].client.tls.protocols[1]: TLSv1.1 is insecure and not supported; use TLSv1.2 "
        "and/or TLSv1.3",
        "t.yaml:7: routers[0].client.tls.protocols[2]: unknown TLS version 'TLSv9'; use TLSv1.2 and/or TLSv1.3",
    ]


def test_overload_zero_mark_and_hysteresis_above_the_first_mark() -> None:
    assert issues(ROUTER + "overload: {noKeepalive: 0.0, shed: 0.0, stopAccept: 0.0}\n") == [
        "t.yaml:6: overload.noKeepalive: must be greater than 0 (a fraction up to 1.0)",
        "t.yaml:6: overload.shed: must be greater than 0 (a fraction up to 1.0)",
        "t.yaml:6: overload.stopAccept: must be greater than 0 (a fraction up to 1.0)",
    ]
    assert issues(ROUTER + "overload:\n  hysteresis: 0.9\n") == [
        "t.yaml:7: overload.hysteresis: must be below noKeepalive (0.8), got 0.9"
    ]


# -- hostile YAML ------------------------------------------------------------------------------------------


def test_alias_expansion_is_bounded() -> None:
    # 30 routers, each with 30 servers, each with 20 unknown keys: a 450-byte file that stood for
    # 18,000 errors (and ~1,000 times that with one more level or a larger fan-out).
    text = "a: &s {" + ", ".join(f"x{i}: 1" for i in range(20)) + "}\n"
    text += "b: &r {protocol: http, servers: [" + ", ".join(["*s"] * 30) + "]}\n"
    text += "routers: [" + ", ".join(["*r"] * 30) + "]\n"
    found = issues(text)
    assert len(found) == 1
    assert found[0].startswith(
        "t.yaml:3: the config cannot be loaded: aliases repeat more than 10000 nodes (at *r)"
    )


def test_recursive_alias_and_deep_nesting_are_errors_not_crashes() -> None:
    assert issues("a: &a [1, *a]\n" + ROUTER) == [
        "t.yaml:1: the config cannot be loaded: alias *a refers to a node that contains it; write it out"
    ]
    # PyYAML's composer recursed once per level: 2000 levels raised RecursionError
    assert issues("a: " + "[" * 2000 + "]" * 2000 + "\n" + ROUTER) == [
        "t.yaml:1: the config cannot be loaded: nested more than 64 levels deep"
    ]


@pytest.mark.parametrize(
    ("value", "described"),
    [
        ("9" * 5000, "an integer of 5000 digits, too large to read"),
        ("!!int abc", "'abc', which is not a valid !!int"),
        ("!!bool maybe", "'maybe', which is not a valid !!bool"),
        ("!!timestamp abc", "'abc', which is not a valid !!timestamp"),
        ("!!python/name:os.system ''", "a value with the unsupported tag !!python/name:os.system ('')"),
    ],
    ids=["huge-int", "int-tag", "bool-tag", "timestamp-tag", "python-tag"],
)
def test_scalars_their_tag_cannot_read_are_errors_not_crashes(value: str, described: str) -> None:
    text = ROUTER.replace("port: 4140", f"port: {value}")
    assert issues(text) == [f"t.yaml:5: routers[0].servers[0].port: expected an integer, got {described}"]


def test_check_cli_reports_an_unreadable_scalar_without_a_traceback() -> None:
    proc = check("check", "-", stdin=ROUTER + "  label: !!bool maybe\n")
    assert proc.returncode == 1
    assert proc.stderr == (
        "<stdin>:6: routers[0].label: expected a string, got 'maybe', which is not a valid !!bool\n"
        "-: 1 error\n"
    )


def test_characters_and_bytes_that_cannot_be_read_are_reported_at_their_line(tmp_path: Path) -> None:
    # A control character was reported at line 1 with PyYAML's own position text; bytes that are not
    # UTF-8 had no line at all in a file, and on stdin raised UnicodeDecodeError out of check.
    text = 'routers:\n- protocol: http\n  label: "a\x01"\n  servers: [{port: 4140}]\n'
    assert issues(text) == [
        "t.yaml:3: not valid YAML or JSON: character U+0001 is not allowed in YAML; remove it"
    ]
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"routers:\n- protocol: http\n  label: caf\xe9\n")
    message = "the config is not UTF-8 text: byte 0xe9 cannot be decoded (invalid continuation byte); save the file as UTF-8"
    proc = check("check", str(bad))
    assert (proc.returncode, proc.stderr) == (1, f"{bad}:3: {message}\n{bad}: 1 error\n")
    proc = subprocess.run(
        [sys.executable, "-m", "hostproxy", "check", "-"],
        input=bad.read_bytes(),
        capture_output=True,
        timeout=120,
    )
    assert (proc.returncode, proc.stderr.decode()) == (1, f"<stdin>:3: {message}\n-: 1 error\n")


def test_a_dtab_error_in_a_file_with_crlf_line_ends_is_placed_exactly() -> None:
    # The dtab's lines were matched back to the file with their CRs, which never matched: the error
    # fell back to the line after 'dtab: |', column 1.
    text = "routers:\n- protocol: http\n  dtab: |\n    /svc => /a;\n    /foo => /b c;\n  servers: [{port: 4140}]\n"
    message = "routers[0].dtab: invalid dtab at line 5, column 16: end of input expected but 'c' found"
    for t in (text, text.replace("\n", "\r\n")):
        with pytest.raises(ConfigError) as e:
            load_config(t, source="t.yaml")
        assert [(i.line, i.column) for i in e.value.errors] == [(5, 16)]
        assert e.value.errors[0].format().splitlines()[0] == f"t.yaml:5: {message}"


def test_a_tab_in_the_indentation_says_to_use_spaces() -> None:
    assert issues("routers:\n- protocol: http\n  servers:\n\t- port: 4140\n") == [
        "t.yaml:4: not valid YAML or JSON: found character '\\t' that cannot start any token (while scanning "
        "for the next token); YAML indents with spaces: replace the tab with spaces"
    ]


def test_a_second_yaml_document_says_what_to_do() -> None:
    # PyYAML's "but found another document (expected a single document in the stream)" said neither.
    assert issues(ROUTER + "---\nadmin: {port: 9991}\n") == [
        "t.yaml:6: the file holds a second YAML document from here; a config is one document: remove this "
        "'---' and what follows, or merge the two"
    ]


def test_loading_configs_does_not_keep_their_yaml_trees() -> None:
    # Every reload (SIGHUP, POST /admin/reload) loads the config again: the scalar constructor kept
    # each loaded node (and through its marks the whole text) forever.
    text = (Path(__file__).resolve().parents[1] / "configs" / "vm.yaml").read_text()

    def live_nodes() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, Node))

    load_config(text, source="a.yaml")
    before = live_nodes()
    for _ in range(20):
        load_config(text, source="a.yaml")
    assert live_nodes() - before == 0


def test_each_problem_is_reported_once() -> None:
    # A plugin's mapping (a router, a namer, a static client entry) is read twice: for its kind, then
    # for its keys; each problem in it was reported twice.
    text = (
        "namers:\n- kind: io.l5d.fs\n  rootDir: a\n  rootDir: b\n"
        "routers:\n- protocol: http\n  label: a\n  label: b\n  servers: [{port: 4140}]\n  1: x\n"
    )
    assert issues(text) == [
        "t.yaml:4: namers[0].rootDir: duplicate key 'rootDir' (first set on line 3); remove one",
        "t.yaml:8: routers[0].label: duplicate key 'label' (first set on line 7); remove one",
        "t.yaml:10: routers[0]: keys must be strings, got an integer (1)",
    ]


def test_router_labels_must_be_usable_metric_scopes() -> None:
    # label '' passed, and the daemon named that router by its protocol: with a second router left
    # unlabelled (so 'http' as well), the first was silently dropped, its server never bound.
    two = (
        "routers:\n- protocol: http\n  label: ''\n  servers: [{port: 4140}]\n"
        "- protocol: http\n  servers: [{port: 4141}]\n"
    )
    hint = (
        "must be a non-empty name without '/', spaces or control characters (it scopes the router's "
        "metrics, rt/<label>/..., and names it in the admin UI), e.g. outgoing; got"
    )
    assert issues(two) == [f"t.yaml:3: routers[0].label: {hint} ''"]
    # 'a/server' would put its metrics inside router a's (rt/a/server/...)
    assert issues(ROUTER + "  label: a/server\n") == [f"t.yaml:6: routers[0].label: {hint} 'a/server'"]


def test_two_spellings_of_one_ipv6_address_clash() -> None:
    text = (
        "routers:\n- protocol: http\n  servers:\n  - {ip: '::1', port: 4140}\n"
        "  - {ip: '0:0:0:0:0:0:0:1', port: 4140}\n"
    )
    assert issues(text) == [
        "t.yaml:5: routers[0].servers[1]: [0:0:0:0:0:0:0:1]:4140 clashes with routers[0].servers[0] "
        "([::1]:4140); use another port"
    ]


def test_a_key_in_the_wrong_section_says_where_it_belongs() -> None:
    # Linkerd 1.1 moved retries, totalTimeoutMs and responseClassifier to `service`; such configs got
    # "unknown key" and a list of this section's keys, none of them the one meant.
    text = (
        ROUTER + "  responseClassifier: {kind: io.l5d.http.retryableRead5XX}\n  timeoutMs: 100\n"
        "  client:\n    retries: {budget: {ttlSecs: 5}}\n  service:\n    loadBalancer: {kind: ewma}\n"
        "  tls: {disableValidation: true}\n"
    )
    assert issues(text) == [
        "t.yaml:6: routers[0].responseClassifier: 'responseClassifier' is not a key here; it belongs in "
        "routers[0].service",
        "t.yaml:7: routers[0].timeoutMs: 'timeoutMs' is not a key here; it belongs in an entry of routers[0].servers",
        "t.yaml:9: routers[0].client.retries: 'retries' is not a key here; it belongs in routers[0].service",
        "t.yaml:11: routers[0].service.loadBalancer: 'loadBalancer' is not a key here; it belongs in "
        "routers[0].client",
        "t.yaml:12: routers[0].tls: 'tls' is not a key here; it belongs in routers[0].client or an entry of "
        "routers[0].servers",
    ]


def test_ipv4_and_ipv6_listeners_on_one_port_do_not_clash() -> None:
    # IPv6 listeners are bound IPv6-only, so 0.0.0.0 and [::] on one port (the usual way to listen on
    # both families) work; check refused them as a clash.
    text = (
        "routers:\n- protocol: http\n  servers:\n  - {ip: 0.0.0.0, port: 4140}\n  - {ip: '::', port: 4140}\n"
    )
    proc = check("check", "-", stdin=text)
    assert (proc.returncode, proc.stdout) == (0, "-: OK: 1 router: http (http) on 0.0.0.0:4140, [::]:4140\n")
    # within a family the wildcard still clashes with every address
    assert issues(text + "  - {ip: '::1', port: 4140}\n") == [
        "t.yaml:6: routers[0].servers[2]: [::1]:4140 clashes with routers[0].servers[1] ([::]:4140); use another port"
    ]


# -- settings accepted but not applied ----------------------------------------------------------------------


async def test_originator_adds_its_gauge(tmp_path: Path) -> None:
    disco = tmp_path / "disco"
    disco.mkdir()
    text = f"""
admin: {{ip: 127.0.0.1, port: 0}}
namers:
- kind: io.l5d.fs
  rootDir: {disco}
routers:
- protocol: http
  label: edge
  originator: true
  dtab: /svc => /#/io.l5d.fs;
  servers: [{{ip: 127.0.0.1, port: 0}}]
- protocol: http
  label: inner
  dtab: /svc => /#/io.l5d.fs;
  servers: [{{ip: 127.0.0.1, port: 0}}]
"""
    async with running_daemon(text) as r:
        with trio.fail_after(30):
            res = await curl(f"{r.admin}/admin/metrics.json")
        metrics = json.loads(res.body)
        assert metrics.get("rt/edge/originator") == 1
        assert "rt/inner/originator" not in metrics


async def test_prometheus_telemeter_path_and_prefix_apply(tmp_path: Path) -> None:
    # Both keys were accepted and ignored: the exposition was only at /admin/metrics/prometheus and
    # /metrics, its names unprefixed, and the configured path answered 404.
    text = """
admin: {ip: 127.0.0.1, port: 0}
telemetry:
- kind: io.l5d.prometheus
  path: /custom/prom
  prefix: edge_
routers:
- protocol: http
  label: out
  servers: [{ip: 127.0.0.1, port: 0}]
"""
    async with running_daemon(text) as r:
        with trio.fail_after(30):
            await curl(f"http://127.0.0.1:{r.port('out')}/")  # (a request, so the server has metrics)
            custom = await curl(f"{r.admin}/custom/prom")
            usual = await curl(f"{r.admin}/admin/metrics/prometheus")
        assert custom.status == 200 and usual.status == 200
        for res in (custom, usual):
            lines = res.body.decode().splitlines()
            assert "# TYPE edge_hostproxy_server_requests_total counter" in lines
            samples = [ln for ln in lines if ln and not ln.startswith("#")]
            assert samples and all(ln.startswith("edge_") for ln in samples)
    assert issues(ROUTER + "telemetry:\n- kind: io.l5d.prometheus\n  path: metrics\n  prefix: 'a-b'\n") == [
        "t.yaml:8: telemetry[0].path: must be a path starting with '/', got 'metrics'",
        "t.yaml:9: telemetry[0].prefix: must be the start of a Prometheus metric name "
        "([a-zA-Z_:][a-zA-Z0-9_:]*), got 'a-b'",
    ]
