"""Admin paths: telemeter paths that an admin endpoint would shadow, an index that shows only what
``admin.security`` serves, and Linkerd's UI pages ``/logging`` and ``/admin/metrics``.

Real daemons on loopback, real curl (and headless Chromium for ``/logging``); each test's docstring
says what was wrong.
"""

from __future__ import annotations

import contextlib
import html
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from hostproxy.adminpaths import ADMIN_PATHS, colliding_endpoint
from hostproxy.config import ConfigError, load_config
from hostproxy.daemon import Daemon
from tests.daemonutil import curl, running_daemon

ROUTER = """
routers:
- protocol: http
  label: out
  dtab: |
    /svc => /$/inet/127.0.0.1/1;
  servers:
  - ip: 127.0.0.1
    port: 0
"""


def _yaml(admin_extra: str = "", telemetry: str = "") -> str:
    text = "admin:\n  ip: 127.0.0.1\n  port: 0\n" + admin_extra + ROUTER
    return text + ("telemetry:\n" + telemetry if telemetry else "")


def _issues(text: str) -> list[tuple[int, str, str]]:
    with pytest.raises(ConfigError) as info:
        load_config(text, source="t.yaml")
    return [(i.line, i.path, i.message) for i in info.value.errors]


# -- 1. telemeter paths ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "endpoint"),
    [
        ("/admin/ping", "/admin/ping (liveness)"),
        ("/client_state.json", "/client_state.json (the clients' state)"),
        ("/logging", "/logging (the log levels page)"),
        ("/admin/metrics", "/admin/metrics (the metrics page)"),
        ("/", "/ (the dashboard)"),
        ("/files/x.js", "/files/<name> (the dashboard's files)"),
        ("/namer_state/io.l5d.fs.json", "/namer_state/<prefix>.json (one namer's state)"),
    ],
)
def test_prometheus_path_on_an_admin_endpoint_is_a_config_error(path: str, endpoint: str) -> None:
    """An ``io.l5d.prometheus`` telemeter whose ``path`` an admin endpoint already answers passed
    validation and was then never served (the admin endpoint answered); now the config is refused
    at the ``path`` key's line, naming the endpoint and the default."""
    text = _yaml(telemetry=f"- kind: io.l5d.prometheus\n  path: '{path}'\n")
    line = text.splitlines().index(f"  path: '{path}'") + 1
    [(got_line, where, message)] = _issues(text)
    assert (got_line, where) == (line, "telemetry[0].path")
    assert message == (
        f"{path} is the admin endpoint {endpoint}, which answers there instead of this io.l5d.prometheus "
        "telemeter; choose a path no admin endpoint uses, or leave path out for the default "
        "/admin/metrics/prometheus"
    )


def test_two_telemeters_on_one_path_are_a_config_error() -> None:
    """Two ``io.l5d.prometheus`` telemeters on one path (both defaulted, or both written), or two
    ``io.l5d.recentRequests`` (both ``/requests``): only the first was ever served."""
    text = _yaml(
        telemetry="- kind: io.l5d.prometheus\n- kind: io.l5d.prometheus\n  prefix: b_\n"
        "- kind: io.l5d.prometheus\n  path: /p\n- kind: io.l5d.prometheus\n  path: /p\n"
        "- {kind: io.l5d.recentRequests, sampleRate: 1}\n- {kind: io.l5d.recentRequests, sampleRate: 1}\n"
    )
    lines = text.splitlines()
    second = lines.index("  prefix: b_")  # (1-based: the line before, the second telemeter's own)
    fourth = [i for i, ln in enumerate(lines) if ln == "  path: /p"][1] + 1
    assert _issues(text) == [
        (
            second,
            "telemetry[1].path",
            "/admin/metrics/prometheus is already the path of telemetry[0] (io.l5d.prometheus), which "
            "answers there instead of this telemeter; give each telemeter its own path",
        ),
        (
            fourth,
            "telemetry[3].path",
            "/p is already the path of telemetry[2] (io.l5d.prometheus), which answers there instead of "
            "this telemeter; give each telemeter its own path",
        ),
        (
            len(lines),
            "telemetry[5]",
            "a second io.l5d.recentRequests telemeter: /requests is already served by telemetry[4] "
            "(io.l5d.recentRequests); keep one of them",
        ),
    ]


def test_prometheus_path_with_a_query_is_a_config_error() -> None:
    [(_, where, message)] = _issues(_yaml(telemetry="- kind: io.l5d.prometheus\n  path: /m?x=1\n"))
    assert where == "telemetry[0].path"
    assert "a query or fragment" in message and "/admin/metrics/prometheus" in message


def test_prometheus_paths_that_serve_the_exposition_stay_valid() -> None:
    """The default (Linkerd's ``/admin/metrics/prometheus``) and ``/metrics`` already serve the
    exposition: a telemeter there is served, so they are not collisions."""
    for telemetry in ("- kind: io.l5d.prometheus\n", "- kind: io.l5d.prometheus\n  path: /metrics\n"):
        cfg = load_config(_yaml(telemetry=telemetry), source="t.yaml")
        assert cfg.telemetry[0].path in ("/admin/metrics/prometheus", "/metrics")  # type: ignore[attr-defined]


def test_admin_paths_are_exactly_the_handler_table() -> None:
    """The list config validation checks against is the admin server's: a new endpoint that is not
    added to it would let a telemeter be shadowed again."""
    from hostproxy.admin.handlers import AdminHandler
    from tests.test_admin_server import FakeAdminContext

    handler = AdminHandler(FakeAdminContext())
    fixed = {ep.path for ep in handler.endpoints if "<" not in ep.path}
    assert fixed == set(ADMIN_PATHS)
    for ep in handler.endpoints:
        example = ep.path.replace("<name>", "dashboard.js").replace("<prefix>", "io.l5d.fs")
        assert colliding_endpoint(example) is not None, ep.path
    assert colliding_endpoint("/my/metrics") is None


def test_hostproxy_check_reports_the_collision(tmp_path: Path) -> None:
    path = tmp_path / "h.yaml"
    text = _yaml(telemetry="- kind: io.l5d.prometheus\n  path: /admin/ping\n")
    path.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "hostproxy", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    line = text.splitlines().index("  path: /admin/ping") + 1
    assert proc.stderr.startswith(
        f"{path}:{line}: telemetry[0].path: /admin/ping is the admin endpoint /admin/ping (liveness)"
    )


@contextlib.asynccontextmanager
async def _daemon_from_file(path: Path) -> AsyncIterator[str]:
    daemon = Daemon(load_config(path), config_path=str(path))
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        try:
            assert daemon.admin_address is not None
            yield f"http://{daemon.admin_address[0]}:{daemon.admin_address[1]}"
        finally:
            daemon.request_shutdown()


async def test_reload_refuses_a_colliding_telemeter_path(tmp_path: Path) -> None:
    path = tmp_path / "h.yaml"
    path.write_text(_yaml(telemetry="- kind: io.l5d.prometheus\n"))
    async with _daemon_from_file(path) as admin:
        path.write_text(_yaml(telemetry="- kind: io.l5d.prometheus\n  path: /client_state.json\n"))
        r = await curl(f"{admin}/admin/reload", "-X", "POST")
        assert r.status == 500, r.body
        text = r.body.decode()
        assert text.startswith("reload rejected, the running config stays: 1 error(s)")
        assert f"{path}:" in text and "telemetry[0].path: /client_state.json is the admin endpoint" in text
        # The running config stays: /client_state.json is still the admin endpoint.
        state = await curl(f"{admin}/client_state.json")
        assert state.status == 200 and isinstance(state.json(), dict)


async def test_every_prometheus_telemeter_is_served_at_its_path_with_its_prefix() -> None:
    """A second ``io.l5d.prometheus`` telemeter (another path, another prefix) was silently not served:
    only the first one reached the admin server."""
    telemetry = (
        "- kind: io.l5d.prometheus\n  path: /one\n  prefix: one_\n"
        "- kind: io.l5d.prometheus\n  path: /two\n  prefix: two_\n"
    )
    async with running_daemon(_yaml(telemetry=telemetry)) as d:
        one, two = await curl(f"{d.admin}/one"), await curl(f"{d.admin}/two")
        assert (one.status, two.status) == (200, 200), (one.body, two.body)
        names = {
            tag: {ln.split()[2] for ln in r.body.decode().splitlines() if ln.startswith("# TYPE ")}
            for tag, r in (("one", one), ("two", two))
        }
        assert names["one"] and all(n.startswith("one_") for n in names["one"])
        assert names["two"] == {"two_" + n.removeprefix("one_") for n in names["one"]}
        # The standing paths keep the first telemeter's prefix, as with one telemeter.
        std = await curl(f"{d.admin}/admin/metrics/prometheus")
        assert b"# TYPE one_" in std.body and b"# TYPE two_" not in std.body


# -- 2. the index shows only what admin.security serves ---------------------------------------------

_SECURITY = {
    "ui off": ("/no/such/page", "    uiEnabled: false\n"),
    "control off": ("/no/such/page", "    controlEnabled: false\n"),
    "diagnostics off": ("/help", "    diagnosticsEnabled: false\n"),
    "blacklist": (
        "/no/such/page",
        "    pathBlacklist: ['/client_state\\.json', '/admin/metrics/prometheus', '/files/.*', '/logging']\n",
    ),
    "whitelist": ("/admin", "    diagnosticsEnabled: false\n    pathWhitelist: ['/admin/ping', '/admin']\n"),
}


def _listed(index: str) -> list[str]:
    out = []
    for line in index.splitlines():
        m = re.match(r"^(?:GET|POST)(?:\|POST)?\s+(/\S*)", line)
        if m:
            out.append(m.group(1))
    return out


def _turned_off(path: str, body: bytes) -> bool:
    return body == f"No admin endpoint at {path} (turned off by admin.security).\n".encode()


@pytest.mark.parametrize("case", sorted(_SECURITY))
async def test_index_lists_only_served_endpoints(case: str) -> None:
    """The 404 page, ``/admin`` and ``/help`` listed every endpoint, including the ones
    ``admin.security`` turns off, so the index told a client what the operator hid."""
    index_path, security = _SECURITY[case]
    async with running_daemon(_yaml("  security:\n" + security)) as d:
        r = await curl(f"{d.admin}{index_path}")
        assert r.status == (404 if index_path == "/no/such/page" else 200)
        text = r.body.decode()
        listed = _listed(text)
        assert listed, text
        for path in listed:
            probe = path.replace("<name>", "dashboard.js").replace("<prefix>", "io.l5d.fs")
            got = await curl(f"{d.admin}{probe}")  # (a GET: control paths answer 405)
            assert not _turned_off(probe, got.body), (case, path)
        hidden = set()
        for path in sorted(ADMIN_PATHS):
            if _turned_off(path, (await curl(f"{d.admin}{path}")).body):
                hidden.add(path)
        assert hidden, case
        assert not hidden & set(listed), (case, hidden & set(listed))
        control = re.search(r"Control endpoints \((.*)\) answer", text)
        shown_control = (
            set(re.findall(r"(?:GET|POST) (/\S+?)(?:,|$)", control.group(1))) if control else set()
        )
        assert not shown_control & hidden, case
        if case == "control off":
            assert control is None and "/logging.json" not in text and "/admin/shutdown" not in text
        if case == "blacklist":
            assert "/files/<name>" not in listed and "/logging" not in listed and "/metrics" not in listed


async def test_help_with_diagnostics_off_lists_the_ui_and_control_endpoints() -> None:
    async with running_daemon(_yaml("  security:\n    diagnosticsEnabled: false\n")) as d:
        r = await curl(f"{d.admin}/help")
        assert r.status == 200
        assert set(_listed(r.body.decode())) == {
            "/",
            "/files/<name>",
            "/help",
            "/admin/metrics.json",
            "/metrics.json",
            "/admin/metrics",
            "/config.json",
            "/delegator.json",
            "/delegator",
            "/logging",
            "/logging.json",
            "/admin/ready",
            "/admin/shutdown",
            "/admin/reload",
        }


def test_index_with_every_endpoint_off_says_so() -> None:
    from hostproxy.admin.handlers import AdminHandler
    from tests.test_admin_server import FakeAdminContext

    sec = "admin:\n  security: {uiEnabled: false, controlEnabled: false, diagnosticsEnabled: false}\n"
    cfg = load_config(sec + ROUTER, source="t.yaml")
    text = AdminHandler(FakeAdminContext(), security=cfg.admin.security).index_text()
    assert text == "hostproxy admin endpoints:\n\n(none: admin.security turns every endpoint off)\n"


# -- 3. /logging and /admin/metrics -------------------------------------------------------------------


def _rows(page: str, table: str) -> dict[str, str]:
    """``{first cell: second cell}`` of the rows of ``<table id=table>``."""
    body = page.split(f'<table id="{table}">', 1)[1].split("</table>", 1)[0]
    out = {}
    for row in re.findall(r"<tr>(.*?)</tr>", body):
        cells = [html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
        if cells:
            out[cells[0]] = cells[1]
    return out


async def test_logging_page_lists_levels_and_its_forms_set_them() -> None:
    """``/logging`` (Linkerd's UI page for log levels) was a 404."""
    logging.getLogger("hostproxy.adminpaths_test").setLevel(logging.WARNING)
    try:
        async with running_daemon(_yaml()) as d:
            r = await curl(f"{d.admin}/logging")
            assert r.status == 200, r.body
            assert r.header("content-type") == "text/html;charset=UTF-8"
            assert "form-action 'self'" in (r.header("content-security-policy") or "")
            page = r.body.decode()
            levels = {e["logger"]: e["level"] for e in (await curl(f"{d.admin}/logging.json")).json()}  # type: ignore[union-attr]
            assert _rows(page, "loggers") == levels
            assert levels["hostproxy.adminpaths_test"] == "WARNING"
            assert page.count('<form method="post" action="/logging.json"') == len(levels) + 1
            # What a browser sends when the row's form is submitted.
            host = d.admin.removeprefix("http://")
            post = await curl(
                f"{d.admin}/logging.json",
                "-X",
                "POST",
                "-H",
                f"Origin: {d.admin}",
                "-H",
                "Sec-Fetch-Site: same-origin",
                "-H",
                f"Host: {host}",
                "--data",
                "logger=hostproxy.adminpaths_test&level=DEBUG",
            )
            assert post.status == 200, post.body
            again = (await curl(f"{d.admin}/logging")).body.decode()
            assert _rows(again, "loggers")["hostproxy.adminpaths_test"] == "DEBUG"
            assert "<option selected>DEBUG</option>" in again
    finally:
        logging.getLogger("hostproxy.adminpaths_test").setLevel(logging.NOTSET)


async def test_logging_page_follows_admin_security() -> None:
    """``/logging`` is a UI path: ``uiEnabled: false`` turns it off; with ``controlEnabled: false``
    (``/logging.json`` not served) it still lists the levels, without forms that would post to a 404."""
    async with running_daemon(_yaml("  security:\n    controlEnabled: false\n")) as d:
        r = await curl(f"{d.admin}/logging")
        assert r.status == 200
        page = r.body.decode()
        assert "root" in _rows(page, "loggers")
        assert "<form" not in page and "/logging.json" not in page
        assert "Changing levels is turned off by admin.security." in page
    async with running_daemon(_yaml("  security:\n    uiEnabled: false\n")) as d:
        assert (await curl(f"{d.admin}/logging")).status == 404
        assert (await curl(f"{d.admin}/admin/metrics")).status == 404
    async with running_daemon(_yaml("  security:\n    diagnosticsEnabled: false\n")) as d:
        assert (await curl(f"{d.admin}/logging")).status == 200
        assert (await curl(f"{d.admin}/admin/metrics")).status == 200


async def test_admin_metrics_is_twitter_servers_metric_query() -> None:
    """``/admin/metrics`` (TwitterServer's metric query, a UI path in Linkerd) was a 404: without a
    query it is a page of every metric and value; ``?m=<name>`` (repeatable, or a POSTed form) gives
    those metrics as ``[{"name", "value"}]``."""
    async with running_daemon(_yaml()) as d:
        flat = (await curl(f"{d.admin}/admin/metrics.json")).json()
        assert isinstance(flat, dict) and flat
        page = await curl(f"{d.admin}/admin/metrics")
        assert page.status == 200
        assert page.header("content-type") == "text/html;charset=UTF-8"
        rows = _rows(page.body.decode(), "metrics")
        # The same keys as /admin/metrics.json (read a moment apart: compare the keys, not values).
        assert set(rows) == set(flat)
        stable = sorted(flat)[0]
        assert f'href="/admin/metrics?m={stable}"' in page.body.decode()
        keys = [k for k in sorted(flat) if not k.startswith("process/")][:2]
        q = "&".join(f"m={k}" for k in [*keys, "no/such/metric"])
        got = await curl(f"{d.admin}/admin/metrics?{q}")
        assert got.status == 200 and got.header("content-type") == "application/json;charset=UTF-8"
        answer = got.json()
        assert isinstance(answer, list) and [e["name"] for e in answer] == keys
        for e in answer:
            assert set(e) == {"name", "value"} and isinstance(e["value"], int | float)
        posted = await curl(f"{d.admin}/admin/metrics", "-X", "POST", "--data", f"m={keys[0]}")
        assert [e["name"] for e in posted.json()] == [keys[0]]  # type: ignore[union-attr]


def test_pages_escape_names_and_values() -> None:
    """Logger names come from any code that sets a level, metric names from service names: neither
    can put markup in the pages."""
    from hostproxy.admin.pages import logging_page, metrics_page

    evil = '<script>alert(1)</script>"'
    page = logging_page({"root": "INFO", evil: "DEBUG"}).decode()
    assert "<script>" not in page
    assert _rows(page, "loggers") == {"root": "INFO", evil: "DEBUG"}
    assert f'name="logger" value="{html.escape(evil)}"' in page
    page = metrics_page({f"rt/out/service/{evil}/requests": 3}).decode()
    assert "<script>" not in page
    assert _rows(page, "metrics") == {f"rt/out/service/{evil}/requests": "3"}


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
async def test_logging_page_in_a_browser(tmp_path: Path) -> None:
    """The page renders in a real browser under its Content-Security-Policy: the table and a form
    per logger are in the DOM Chromium builds."""
    from tests.test_dashboard_browser import chromium

    async with running_daemon(_yaml()) as d:
        dom = (await chromium(d.admin + "/logging", tmp_path / "profile", "--dump-dom")).decode()
        levels = (await curl(f"{d.admin}/logging.json")).json()
        assert isinstance(levels, list)
        assert _rows(dom, "loggers") == {e["logger"]: e["level"] for e in levels}
        assert len(re.findall(r'<form method="post" action="/logging.json"', dom)) == len(levels) + 1


async def test_dashboard_links_only_to_served_endpoints() -> None:
    """The dashboard's navigation linked to ``/client_state.json``, ``/admin/unbound.json`` and the
    ``/admin`` index whatever ``admin.security`` served: an index of hidden endpoints too."""
    async with running_daemon(_yaml("  security:\n    diagnosticsEnabled: false\n")) as d:
        page = (await curl(f"{d.admin}/")).body.decode()
        links = re.findall(r'<a href="([^"]*)"', page)
        assert links == ["/", "/delegator", "/admin/metrics.json?pretty=1", "/logging"]
    async with running_daemon(_yaml()) as d:
        page = (await curl(f"{d.admin}/")).body.decode()
        links = re.findall(r'<a href="([^"]*)"', page)
        assert links == [
            "/",
            "/delegator",
            "/client_state.json",
            "/admin/metrics.json?pretty=1",
            "/admin/unbound.json",
            "/logging",
            "/admin",
        ]
