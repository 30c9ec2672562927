"""The admin server over real loopback HTTP: every endpoint's status, content type and JSON shape."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import h11
import pytest
import trio

from dtab import Dtab, Path, parse_dtab
from dtab.delegate import delegate as explain
from hostproxy.admin import AdminServer
from hostproxy.metrics import MetricsRegistry, PromId

JSON = "application/json;charset=UTF-8"
TEXT = "text/plain;charset=UTF-8"
HTML = "text/html;charset=UTF-8"
PROM = "text/plain; version=0.0.4"


class FakeAdminContext:
    """A test double of ``AdminContext``: canned state, real delegation through system namers."""

    def __init__(self) -> None:
        self.clock = 1000.0
        self.metrics = MetricsRegistry(lambda: self.clock)
        self.metrics.counter(
            "rt/outgoing/server/127.0.0.1/4140/requests",
            PromId("hostproxy_server_requests_total", (("router", "outgoing"),), "requests received"),
        ).incr(7)
        self.metrics.counter("rt/outgoing/client/$/inet/127.1/9030/requests").incr(3)
        self.metrics.gauge("rt/outgoing/client/$/inet/127.1/9030/pending", lambda: 2.0)
        self.ready = True
        self.shutdowns = 0
        self.reload_result: tuple[bool, str] = (True, "reloaded: 1 router, 1 namer")
        self.reloads = 0
        self.dtabs = {
            "outgoing": parse_dtab("/svc => /$/inet/127.1/9999; /ph => /$/inet/127.1/1"),
            "incoming": parse_dtab("/svc => /#/io.l5d.fs"),
        }
        self.requests: list[dict[str, Any]] | None = [
            {"method": "GET", "path": "/a", "status": 200},
            {"method": "POST", "path": "/b", "status": 502},
        ]
        self.delegations: list[tuple[str | None, str, str]] = []
        self.raise_in: str | None = None

    def _maybe_fail(self, name: str) -> None:
        if self.raise_in == name:
            raise RuntimeError(f"{name} exploded")

    def config_json(self) -> dict[str, Any]:
        self._maybe_fail("config_json")
        return {"admin": {"ip": "127.0.0.1", "port": 9990}, "routers": [{"protocol": "http"}]}

    def client_state(self) -> dict[str, Any]:
        return {
            "/$/inet/localhost/4100": {"state": "bound", "addresses": ["localhost:4100"]},
            "/#/io.l5d.fs/web": {"state": "Neg", "addresses": []},
        }

    def bound_names(self) -> list[str]:
        return ["/#/io.l5d.fs/web", "/#/io.l5d.fs/users"]

    def namer_states(self) -> dict[str, dict[str, Any]]:
        return {
            "/io.l5d.fs": {"kind": "io.l5d.fs", "prefix": "/io.l5d.fs", "names": {"web": {"state": "bound"}}}
        }

    def router_labels(self) -> list[str]:
        return list(self.dtabs)

    def router_dtab(self, label: str) -> Dtab:
        return self.dtabs[label]

    def delegate(self, label: str | None, dtab: Dtab, path: Path) -> dict[str, Any]:
        self.delegations.append((label, str(dtab), str(path)))
        return explain(dtab, path).to_json()

    def is_ready(self) -> bool:
        return self.ready

    def set_ready(self, ready: bool) -> None:
        self.ready = ready

    def request_shutdown(self) -> None:
        self.shutdowns += 1

    async def reload(self) -> tuple[bool, str]:
        self.reloads += 1
        return self.reload_result

    def recent_requests(self) -> list[dict[str, Any]] | None:
        return None if self.requests is None else list(self.requests)


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def ctype(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.body)


async def http(
    port: int,
    method: str,
    target: str,
    body: bytes = b"",
    headers: tuple[tuple[str, str], ...] = (),
) -> Reply:
    """One request on a new loopback connection, parsed with h11."""
    conn = h11.Connection(h11.CLIENT)
    hdrs = [("host", f"127.0.0.1:{port}"), ("connection", "close"), *headers]
    if body or method == "POST":
        hdrs.append(("content-length", str(len(body))))
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        data = conn.send(h11.Request(method=method, target=target, headers=hdrs))
        data += conn.send(h11.Data(data=body)) if body else b""
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)
        status = 0
        rheaders: dict[str, str] = {}
        chunks: list[bytes] = []
        with trio.fail_after(10):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                    rheaders = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
    return Reply(status, rheaders, b"".join(chunks))


@asynccontextmanager
async def running_admin(ctx: FakeAdminContext, **kwargs: Any) -> AsyncIterator[int]:
    server = AdminServer(ctx, "127.0.0.1", 0, **kwargs)
    async with trio.open_nursery() as nursery:
        ip, port = await nursery.start(server.serve)
        assert ip == "127.0.0.1" and port > 0
        try:
            yield port
        finally:
            nursery.cancel_scope.cancel()


@pytest.fixture
async def admin() -> AsyncIterator[tuple[FakeAdminContext, int]]:
    ctx = FakeAdminContext()
    async with running_admin(ctx) as port:
        yield ctx, port


Admin = tuple[FakeAdminContext, int]


# -- health and index ---------------------------------------------------------------------------


async def test_ping_answers_pong(admin: Admin) -> None:
    _, port = admin
    r = await http(port, "GET", "/admin/ping")
    assert (r.status, r.ctype, r.body) == (200, TEXT, b"pong")


async def test_head_of_a_get_endpoint_has_no_body(admin: Admin) -> None:
    _, port = admin
    r = await http(port, "HEAD", "/admin/ping")
    assert (r.status, r.ctype, r.body) == (200, TEXT, b"")


@pytest.mark.parametrize("path", ["/admin", "/admin/", "/admin/index.txt", "/help"])
async def test_index_lists_every_endpoint(admin: Admin, path: str) -> None:
    _, port = admin
    r = await http(port, "GET", path)
    assert (r.status, r.ctype) == (200, TEXT)
    for endpoint in (
        "/admin/ping",
        "/ready",
        "/live",
        "/admin/ready",
        "/admin/metrics.json",
        "/metrics.json",
        "/admin/metrics/prometheus",
        "/metrics",
        "/config.json",
        "/client_state.json",
        "/bound-names.json",
        "/namer_state/<prefix>.json",
        "/delegator.json",
        "/delegator",
        "/logging.json",
        "/requests",
        "/admin/shutdown",
        "/admin/reload",
    ):
        assert f" {endpoint} " in r.text, endpoint
    assert "admin.allowRemoteControl" in r.text


async def test_unknown_path_is_404_listing_the_endpoints(admin: Admin) -> None:
    _, port = admin
    r = await http(port, "GET", "/nope?x=1")
    assert (r.status, r.ctype) == (404, TEXT)
    assert r.text.startswith("No admin endpoint at /nope.\n\nhostproxy admin endpoints:\n")
    assert "/client_state.json" in r.text


async def test_ready_and_live(admin: Admin) -> None:
    ctx, port = admin
    r = await http(port, "GET", "/ready")
    assert (r.status, r.ctype, r.text) == (200, TEXT, "ready\n")
    ctx.ready = False
    r = await http(port, "GET", "/ready")
    assert (r.status, r.ctype, r.text) == (503, TEXT, "not ready\n")
    r = await http(port, "GET", "/live")
    assert (r.status, r.ctype, r.text) == (200, TEXT, "live\n")


async def test_ready_override_takes_out_of_rotation_and_back(admin: Admin) -> None:
    ctx, port = admin
    r = await http(port, "POST", "/admin/ready?state=false")
    assert (r.status, r.ctype, r.text) == (200, TEXT, "not ready\n")
    assert ctx.ready is False
    assert (await http(port, "GET", "/ready")).status == 503
    r = await http(port, "POST", "/admin/ready?state=true")
    assert (r.status, r.text) == (200, "ready\n")
    assert ctx.ready is True
    assert (await http(port, "GET", "/ready")).status == 200


async def test_ready_override_rejects_a_bad_state(admin: Admin) -> None:
    ctx, port = admin
    r = await http(port, "POST", "/admin/ready?state=maybe")
    assert (r.status, r.ctype) == (400, TEXT)
    assert r.text == (
        "POST /admin/ready needs ?state=true or ?state=false, got 'maybe': state=false takes this "
        "daemon out of rotation (/ready answers 503), state=true puts it back\n"
    )
    assert ctx.ready is True
    r = await http(port, "GET", "/admin/ready")
    assert r.status == 405
    assert r.headers["allow"] == "POST"


# -- state documents ----------------------------------------------------------------------------


async def test_client_state_bound_names_config_are_the_contexts_json(admin: Admin) -> None:
    ctx, port = admin
    for path, expected in (
        ("/client_state.json", ctx.client_state()),
        ("/bound-names.json", ctx.bound_names()),
        ("/config.json", ctx.config_json()),
        ("/requests", ctx.recent_requests()),
    ):
        r = await http(port, "GET", path)
        assert (r.status, r.ctype) == (200, JSON), path
        assert r.json() == expected, path


async def test_requests_are_capped_to_the_newest(admin: Admin) -> None:
    ctx, port = admin
    ctx.requests = [{"n": i} for i in range(1500)]
    r = await http(port, "GET", "/requests")
    body = r.json()
    assert len(body) == 1000
    assert body[0] == {"n": 500} and body[-1] == {"n": 1499}


async def test_requests_without_the_telemeter_say_how_to_record_them(admin: Admin) -> None:
    """An empty list would read as "no requests came": without the telemeter nothing is recorded."""
    ctx, port = admin
    ctx.requests = None
    r = await http(port, "GET", "/requests")
    assert r.status == 404
    assert "no io.l5d.recentRequests telemeter is configured" in r.text
    assert "kind: io.l5d.recentRequests, sampleRate: 1.0" in r.text
    ctx.requests = []
    r = await http(port, "GET", "/requests")
    assert (r.status, r.json()) == (200, [])


async def test_namer_state_by_prefix(admin: Admin) -> None:
    ctx, port = admin
    r = await http(port, "GET", "/namer_state/io.l5d.fs.json")
    assert (r.status, r.ctype) == (200, JSON)
    assert r.json() == ctx.namer_states()["/io.l5d.fs"]
    r = await http(port, "GET", "/namer_state/io.l5d.k8s.json")
    assert (r.status, r.ctype) == (404, TEXT)
    assert r.text == (
        "No namer with prefix /io.l5d.k8s: known namer prefixes: /io.l5d.fs "
        "(e.g. /namer_state/io.l5d.fs.json)\n"
    )


async def test_context_failure_is_a_500_naming_the_endpoint(admin: Admin) -> None:
    ctx, port = admin
    ctx.raise_in = "config_json"
    r = await http(port, "GET", "/config.json")
    assert (r.status, r.ctype) == (500, TEXT)
    assert r.text == "Internal error serving /config.json: RuntimeError: config_json exploded\n"
    assert (await http(port, "GET", "/admin/ping")).status == 200


# -- metrics ------------------------------------------------------------------------------------


async def test_metrics_json_flat_tree_query_pretty(admin: Admin) -> None:
    _, port = admin
    for path in ("/admin/metrics.json", "/metrics.json"):
        r = await http(port, "GET", path)
        assert (r.status, r.ctype) == (200, JSON)
        assert r.json() == {
            "rt/outgoing/client/$/inet/127.1/9030/pending": 2,
            "rt/outgoing/client/$/inet/127.1/9030/requests": 3,
            "rt/outgoing/server/127.0.0.1/4140/requests": 7,
        }
    r = await http(port, "GET", "/admin/metrics.json?q=server")
    assert r.json() == {"rt/outgoing/server/127.0.0.1/4140/requests": 7}
    r = await http(port, "GET", "/admin/metrics.json?tree=1&q=rt/outgoing/server")
    assert r.json() == {"127.0.0.1": {"4140": {"requests": {"counter": 7}}}}
    r = await http(port, "GET", "/admin/metrics.json?pretty=1&q=server")
    assert r.text == '{\n  "rt/outgoing/server/127.0.0.1/4140/requests": 7\n}'


async def test_metrics_json_missing_subtree_is_404(admin: Admin) -> None:
    _, port = admin
    r = await http(port, "GET", "/admin/metrics.json?tree=1&q=rt/nope")
    assert (r.status, r.ctype) == (404, JSON)
    assert r.json() == {"error": "No such subtree: rt/nope"}


async def test_prometheus_text(admin: Admin) -> None:
    _, port = admin
    for path in ("/admin/metrics/prometheus", "/metrics"):
        r = await http(port, "GET", path)
        assert (r.status, r.ctype) == (200, PROM)
        assert r.text == (
            "# HELP hostproxy_server_requests_total requests received\n"
            "# TYPE hostproxy_server_requests_total counter\n"
            'hostproxy_server_requests_total{router="outgoing"} 7\n'
        )


# -- logging ------------------------------------------------------------------------------------


@pytest.fixture
def restore_levels() -> Any:
    names = ["", "hostproxy.admin_test"]
    saved = {n: logging.getLogger(n or None).level for n in names}
    yield
    for n, level in saved.items():
        logging.getLogger(n or None).setLevel(level)


async def test_logging_json_lists_and_sets_levels(admin: Admin, restore_levels: None) -> None:
    _, port = admin
    logging.getLogger().setLevel(logging.INFO)
    r = await http(port, "GET", "/logging.json")
    assert (r.status, r.ctype) == (200, JSON)
    body = r.json()
    assert body[0] == {"logger": "root", "level": "INFO"}
    assert all(set(entry) == {"logger", "level"} for entry in body)
    r = await http(port, "POST", "/logging.json?logger=hostproxy.admin_test&level=debug")
    assert (r.status, r.ctype) == (200, JSON)
    assert {"logger": "hostproxy.admin_test", "level": "DEBUG"} in r.json()
    assert logging.getLogger("hostproxy.admin_test").level == logging.DEBUG
    r = await http(port, "POST", "/logging.json?logger=root&level=WARNING")
    assert r.status == 200
    assert logging.getLogger().level == logging.WARNING


async def test_logging_json_rejects_bad_input(admin: Admin, restore_levels: None) -> None:
    _, port = admin
    r = await http(port, "POST", "/logging.json?logger=hostproxy.admin_test&level=LOUD")
    assert (r.status, r.ctype) == (400, TEXT)
    assert r.text == (
        "Invalid level for logger hostproxy.admin_test: unknown log level 'LOUD': "
        "use one of DEBUG, INFO, WARNING, ERROR, CRITICAL\n"
    )
    r = await http(port, "POST", "/logging.json?level=DEBUG")
    assert r.status == 400
    assert r.text == (
        "Missing logger: use POST /logging.json?logger=<name|root>"
        "&level=<DEBUG|INFO|WARNING|ERROR|CRITICAL>\n"
    )
    r = await http(port, "POST", "/logging.json?logger=a%20b&level=DEBUG")
    assert r.status == 400
    assert r.text.startswith("Invalid logger name 'a b': use 'root' or a dotted name")


# -- lifecycle ----------------------------------------------------------------------------------


async def test_shutdown_is_a_post_answered_202(admin: Admin) -> None:
    ctx, port = admin
    r = await http(port, "GET", "/admin/shutdown")
    assert (r.status, r.headers["allow"]) == (405, "POST")
    assert r.text == "Method GET is not allowed on /admin/shutdown: use POST\n"
    assert ctx.shutdowns == 0
    r = await http(port, "POST", "/admin/shutdown")
    assert (r.status, r.ctype, r.text) == (202, TEXT, "shutting down: draining connections\n")
    assert ctx.shutdowns == 1


async def test_reload_reports_the_result(admin: Admin) -> None:
    ctx, port = admin
    r = await http(port, "POST", "/admin/reload")
    assert (r.status, r.ctype, r.text) == (200, TEXT, "reloaded: 1 router, 1 namer\n")
    ctx.reload_result = (
        False,
        "config.yaml:3: routers[0].protocol: unknown kind 'smtp'; kept the old config",
    )
    r = await http(port, "POST", "/admin/reload")
    assert (r.status, r.text) == (
        500,
        "config.yaml:3: routers[0].protocol: unknown kind 'smtp'; kept the old config\n",
    )
    assert ctx.reloads == 2


async def test_control_request_through_a_proxy_is_refused(admin: Admin) -> None:
    ctx, port = admin
    r = await http(port, "POST", "/admin/shutdown", headers=(("via", "1.1 hostproxy"),))
    assert (r.status, r.ctype) == (403, TEXT)
    assert r.text == (
        "POST /admin/shutdown refused: it arrived through a proxy (Via: 1.1 hostproxy); "
        "call control endpoints directly on the admin port, not through a router.\n"
    )
    assert ctx.shutdowns == 0


async def test_cross_origin_control_request_is_refused(admin: Admin) -> None:
    ctx, port = admin
    r = await http(port, "POST", "/admin/shutdown", headers=(("origin", "http://evil.example"),))
    assert r.status == 403
    assert r.text.startswith("POST /admin/shutdown refused: a browser sent it from another origin")
    same = (("origin", f"http://127.0.0.1:{port}"),)
    r = await http(port, "POST", "/admin/ready?state=false", headers=same)
    assert r.status == 200
    assert ctx.shutdowns == 0 and ctx.ready is False


# -- delegator ----------------------------------------------------------------------------------

WEB_TREE = {
    "type": "delegate",
    "path": "/svc/web",
    "delegate": {
        "type": "leaf",
        "path": "/$/inet/127.1/9999/web",
        "dentry": {"prefix": "/svc", "dst": "/$/inet/127.1/9999"},
        "bound": {
            "addr": {"type": "bound", "addrs": [{"ip": "127.0.0.1", "port": 9999, "meta": {}}], "meta": {}},
            "id": "/$/inet/127.1/9999",
            "path": "/web",
        },
    },
}


async def test_delegator_json_get(admin: Admin) -> None:
    ctx, port = admin
    r = await http(
        port, "GET", "/delegator.json?namespace=outgoing&path=/svc/web&dtab=/svc%3D%3E/$/inet/127.1/9999"
    )
    assert (r.status, r.ctype) == (200, JSON)
    assert r.json() == WEB_TREE
    assert ctx.delegations == [("outgoing", "/svc=>/$/inet/127.1/9999", "/svc/web")]


async def test_delegator_json_get_without_dtab_uses_the_empty_dtab(admin: Admin) -> None:
    ctx, port = admin
    r = await http(port, "GET", "/delegator.json?namespace=outgoing&path=/svc/web")
    assert r.status == 200
    assert r.json() == {"type": "neg", "path": "/svc/web"}
    assert ctx.delegations == [("outgoing", "", "/svc/web")]


async def test_delegator_json_post(admin: Admin) -> None:
    ctx, port = admin
    body = json.dumps({"namespace": "outgoing", "dtab": "/svc => /$/inet/127.1/9999", "path": "/svc/web"})
    r = await http(port, "POST", "/delegator.json", body.encode(), (("content-type", "application/json"),))
    assert (r.status, r.ctype) == (200, JSON)
    assert r.json() == WEB_TREE
    body = json.dumps({"dtab": "/svc => /$/inet/127.1/9999", "path": "/svc/web"})
    r = await http(
        port, "POST", "/delegator.json", body.encode(), (("content-type", "application/json; charset=utf-8"),)
    )
    assert r.status == 200
    assert ctx.delegations[-1][0] is None


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # the dtab is checked before the path
        ("path=bad&dtab=/a=>", "Invalid dtab: 1:5: "),
        ("path=bad&dtab=/a=>/b", "Invalid path: 1:1: "),
        ("dtab=/a=>/b", "Invalid path: missing 'path' (e.g. path=/svc/web)\n"),
        (
            "namespace=nope&path=/a",
            "Unknown namespace nope: it must be a router label (outgoing, incoming), "
            "or leave it out to delegate with the system namers only\n",
        ),
        ("path=/a&dtab=/a=>/b;/b=>/a", "Delegation failed: "),
    ],
)
async def test_delegator_json_get_errors(admin: Admin, query: str, expected: str) -> None:
    _, port = admin
    r = await http(port, "GET", "/delegator.json?" + query.replace("=>", "%3D%3E").replace(";", "%3B"))
    assert (r.status, r.ctype) == (400, TEXT)
    assert r.text.startswith(expected)


async def test_delegator_json_post_errors(admin: Admin) -> None:
    _, port = admin
    r = await http(
        port, "POST", "/delegator.json", b'{"dtab":"","path":"/a"}', (("content-type", "text/plain"),)
    )
    assert (r.status, r.ctype) == (415, TEXT)
    assert r.text.startswith("POST /delegator.json needs Content-Type: application/json, got text/plain;")
    ct = (("content-type", "application/json"),)
    for bad in (
        b"{",
        b"[]",
        b'{"dtab": "/a=>/b"}',
        b'{"dtab": 1, "path": "/a"}',
        b'{"dtab":"","path":"/a","namespace":3}',
    ):
        r = await http(port, "POST", "/delegator.json", bad, ct)
        assert r.status == 400, bad
        assert r.text.startswith("Malformed delegation request: " + bad.decode() + " (expected a JSON object")
    r = await http(port, "POST", "/delegator.json", b'{"dtab":"/a=>","path":"nope"}', ct)
    assert (r.status, r.text.startswith("Invalid dtab: ")) == (400, True)
    r = await http(port, "POST", "/delegator.json", b"x" * (64 * 1024 + 1), ct)
    assert (r.status, r.text) == (413, "Delegation request body exceeds 65536 bytes\n")
    r = await http(port, "PUT", "/delegator.json", b"{}", ct)
    assert (r.status, r.headers["allow"]) == (405, "GET, POST, HEAD")


async def test_delegator_page_is_self_contained(admin: Admin) -> None:
    ctx, port = admin
    ctx.dtabs["</script><b>"] = parse_dtab("/svc => /x")
    r = await http(port, "GET", "/delegator?router=incoming")
    assert (r.status, r.ctype) == (200, HTML)
    page = r.text
    assert "http://" not in page and "https://" not in page and "//cdn" not in page
    assert "<link" not in page and "src=" not in page
    data = page.split('<script type="application/json" id="routers">', 1)[1].split("</script>", 1)[0]
    assert json.loads(data) == {
        "routers": {
            "outgoing": "/svc=>/$/inet/127.1/9999;\n/ph=>/$/inet/127.1/1;\n",
            "incoming": "/svc=>/#/io.l5d.fs;\n",
            "</script><b>": "/svc=>/x;\n",
        },
        "selected": "incoming",
    }
    assert 'fetch("/delegator.json"' in page and '<textarea id="dtab"' in page
    assert '<select id="router">' in page and '<input type="text" id="path"' in page
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp


async def test_admin_server_reports_its_address_and_stops() -> None:
    ctx = FakeAdminContext()
    server = AdminServer(ctx, "127.0.0.1", 0)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.serve)
        assert address == server.address
        assert (await http(address[1], "GET", "/admin/ping")).body == b"pong"
        nursery.cancel_scope.cancel()
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", address[1])
