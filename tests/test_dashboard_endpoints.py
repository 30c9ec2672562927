"""The dashboard's admin endpoints called directly: the page, its files, process, unbound, routers."""

from __future__ import annotations

import gc
import json
import os
import resource

from test_admin_server import FakeAdminContext

from hostproxy.admin import AdminHandler
from hostproxy.admin.dashboard import process_info
from hostproxy.causes import Cause
from hostproxy.http import Body, ConnInfo, Headers, Request, ServerParams


async def get(handler: AdminHandler, target: str) -> tuple[int, dict[str, str], bytes]:
    req = Request("GET", target, Headers([(b"host", b"127.0.0.1:9990")]), Body.from_bytes(b""))
    conn = ConnInfo(
        peer=("127.0.0.1", 40000), local=("127.0.0.1", 9990), params=ServerParams(), connection_id=1
    )
    resp = await handler(req, conn)
    headers = {k.decode(): v.decode() for k, v in resp.headers.items()}
    return resp.status, headers, await resp.body.read_all()


async def test_dashboard_page_and_files() -> None:
    handler = AdminHandler(FakeAdminContext())
    status, headers, body = await get(handler, "/")
    assert status == 200 and headers["content-type"] == "text/html;charset=UTF-8"
    assert headers["content-security-policy"].startswith(
        "default-src 'none'; script-src 'self'; style-src 'self'"
    )
    assert b'<script src="/files/dashboard.js" defer></script>' in body
    assert b'<link rel="stylesheet" href="/files/dashboard.css">' in body
    status, headers, body = await get(handler, "/files/dashboard.js")
    assert status == 200 and headers["content-type"] == "text/javascript;charset=UTF-8"
    assert b"/admin/metrics.json" in body and b"innerHTML" not in body.replace(b"(never innerHTML)", b"")
    status, headers, _ = await get(handler, "/files/dashboard.css")
    assert status == 200 and headers["content-type"] == "text/css;charset=UTF-8"
    status, _, body = await get(handler, "/files/..%2fhandlers.py")
    assert status == 404
    assert (
        body.decode() == "No dashboard file '../handlers.py': the files are dashboard.js and dashboard.css\n"
    )
    _, _, index = await get(handler, "/admin")
    for path in (
        "/admin/process.json",
        "/admin/unbound.json",
        "/admin/routers.json",
        "/admin/namer_state.json",
    ):
        assert path in index.decode()


async def test_process_json_describes_this_process() -> None:
    status, _, body = await get(AdminHandler(FakeAdminContext()), "/admin/process.json")
    doc = json.loads(body)
    assert status == 200
    assert set(doc) == {
        "pid",
        "rss_bytes",
        "max_rss_bytes",
        "cpu_seconds",
        "uptime_s",
        "open_fds",
        "fd_limit",
        "python",
        "gc",
    }
    assert doc["pid"] == os.getpid()
    # No policy is installed in this process (only the daemon's main installs one): the collections
    # per generation and the frozen objects, the rest unknown.
    gc_doc = doc["gc"]
    assert len(gc_doc["collections"]) == 3 and all(n >= 0 for n in gc_doc["collections"])
    assert gc_doc["frozen_objects"] == gc.get_freeze_count()
    assert gc_doc["pause_ms_max"] is None and gc_doc["freezes"] is None
    assert doc["rss_bytes"] > 1_000_000 and doc["cpu_seconds"] > 0 and doc["uptime_s"] > 0
    assert doc["fd_limit"] == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert 0 < doc["open_fds"] <= doc["fd_limit"]
    later = process_info(now=doc["uptime_s"] + 1e12)
    assert later["uptime_s"] > 1e11  # uptime is measured from the process start against the given clock


async def test_unbound_routers_and_namer_state() -> None:
    ctx = FakeAdminContext()
    scope = ctx.metrics.router("outgoing")
    for _ in range(3):
        scope.observe_unbound("/svc/typo", Cause.NAMING_NEG)
    scope.observe_unbound("/svc/slow", Cause.NAMING_FAILED)
    scope.service("/svc/web", True)
    handler = AdminHandler(ctx)
    status, _, body = await get(handler, "/admin/unbound.json")
    doc = json.loads(body)
    assert status == 200
    assert doc["outgoing"]["total"] == 4 and doc["outgoing"]["evictions"] == 0
    assert [(r["name"], r["count"], r["causes"]) for r in doc["outgoing"]["names"]] == [
        ("/svc/typo", 3, {"naming/neg": 3}),
        ("/svc/slow", 1, {"naming/failed": 1}),
    ]
    status, _, body = await get(handler, "/admin/routers.json")
    assert json.loads(body) == {
        "outgoing": {"dtab": "/svc=>/$/inet/127.1/9999;\n/ph=>/$/inet/127.1/1;\n", "services": ["/svc/web"]},
        "incoming": {"dtab": "/svc=>/#/io.l5d.fs;\n", "services": []},
    }
    status, _, body = await get(handler, "/admin/namer_state.json")
    assert json.loads(body) == ctx.namer_states()
