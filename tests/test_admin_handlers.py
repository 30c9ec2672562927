"""AdminHandler called directly (no sockets): control-endpoint policy, delegation timeout, bounds."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from test_admin_server import FakeAdminContext

import hostproxy.admin.handlers as handlers
from dtab import Dtab, Path
from hostproxy.admin import AdminHandler, is_loopback
from hostproxy.http import Body, ConnInfo, Headers, Request, Response, ServerParams

CONTROL = [
    ("POST", "/admin/shutdown"),
    ("POST", "/admin/reload"),
    ("POST", "/admin/ready?state=false"),
    ("POST", "/logging.json?logger=hostproxy.admin_handler_test&level=DEBUG"),
]


@pytest.fixture(autouse=True)
def restore_test_logger() -> Any:
    logger = logging.getLogger("hostproxy.admin_handler_test")
    level = logger.level
    yield
    logger.setLevel(level)


def conn(peer: str) -> ConnInfo:
    return ConnInfo(peer=(peer, 40000), local=("127.0.0.1", 9990), params=ServerParams(), connection_id=1)


def request(
    method: str, target: str, body: bytes = b"", headers: tuple[tuple[bytes, bytes], ...] = ()
) -> Request:
    return Request(method, target, Headers([(b"host", b"127.0.0.1:9990"), *headers]), Body.from_bytes(body))


async def call(
    handler: AdminHandler, method: str, target: str, peer: str = "127.0.0.1", **kw: Any
) -> tuple[Response, bytes]:
    response = await handler(request(method, target, **kw), conn(peer))
    return response, await response.body.read_all()


def state(ctx: FakeAdminContext) -> tuple[int, int, bool]:
    return ctx.shutdowns, ctx.reloads, ctx.ready


@pytest.mark.parametrize(("method", "target"), CONTROL)
async def test_control_endpoints_refuse_remote_peers(method: str, target: str) -> None:
    ctx = FakeAdminContext()
    handler = AdminHandler(ctx)
    before = state(ctx)
    response, body = await call(handler, method, target, peer="10.1.2.3")
    path = target.split("?")[0]
    assert response.status == 403
    assert response.headers.get("content-type") == b"text/plain;charset=UTF-8"
    assert body.decode() == (
        f"POST {path} is a control endpoint and answers only loopback clients (127.0.0.0/8, ::1); "
        "this request came from 10.1.2.3. Set admin.allowRemoteControl: true to allow control "
        "from other hosts.\n"
    )
    assert state(ctx) == before
    assert handler.statistics()["refused_control"] == 1


@pytest.mark.parametrize(("method", "target"), CONTROL)
@pytest.mark.parametrize("peer", ["127.0.0.1", "127.3.4.5", "::1", "::ffff:127.0.0.1"])
async def test_control_endpoints_answer_loopback_peers(method: str, target: str, peer: str) -> None:
    ctx = FakeAdminContext()
    response, _ = await call(AdminHandler(ctx), method, target, peer=peer)
    assert response.status in (200, 202)


@pytest.mark.parametrize(("method", "target"), CONTROL)
async def test_allow_remote_control_lets_remote_peers_in(method: str, target: str) -> None:
    ctx = FakeAdminContext()
    response, _ = await call(AdminHandler(ctx, allow_remote_control=True), method, target, peer="10.1.2.3")
    assert response.status in (200, 202)


async def test_remote_peers_may_read() -> None:
    ctx = FakeAdminContext()
    handler = AdminHandler(ctx)
    for target in ("/admin/ping", "/logging.json", "/client_state.json", "/delegator.json?path=/a"):
        response, _ = await call(handler, "GET", target, peer="10.1.2.3")
        assert response.status == 200, target
    assert handler.statistics()["refused_control"] == 0


async def test_cross_site_fetch_is_refused_even_with_remote_control_allowed() -> None:
    ctx = FakeAdminContext()
    handler = AdminHandler(ctx, allow_remote_control=True)
    response, body = await call(
        handler, "POST", "/admin/shutdown", headers=((b"sec-fetch-site", b"cross-site"),)
    )
    assert response.status == 403
    assert body.decode() == (
        "POST /admin/shutdown refused: a browser sent it cross-site; control endpoints accept only "
        "same-origin or non-browser requests (e.g. curl -X POST).\n"
    )
    response, body = await call(handler, "POST", "/admin/shutdown", headers=((b"origin", b"null"),))
    assert response.status == 403
    assert ctx.shutdowns == 0


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.255.0.9", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("fe80::1%eth0", False),
        ("128.0.0.1", False),
        ("", False),
        ("localhost", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


class AsyncDelegateContext(FakeAdminContext):
    """A context whose delegation waits (as when a namer is still pending)."""

    def __init__(self, wait_s: float) -> None:
        super().__init__()
        self.wait_s = wait_s

    def delegate(self, label: str | None, dtab: Dtab, path: Path) -> Any:
        sync = super().delegate

        async def later() -> dict[str, Any]:
            await trio.sleep(self.wait_s)
            return sync(label, dtab, path)

        return later()


async def test_delegation_that_does_not_answer_in_2s_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = AdminHandler(AsyncDelegateContext(wait_s=3600))
    response, body = await call(handler, "GET", "/delegator.json?path=/$/inet/127.1/80")
    assert (response.status, body) == (503, b"Request timed out.\n")


async def test_delegation_that_answers_in_time_is_served(autojump_clock: trio.testing.MockClock) -> None:
    handler = AdminHandler(AsyncDelegateContext(wait_s=1.5))
    response, body = await call(handler, "GET", "/delegator.json?path=/$/inet/127.1/80")
    assert response.status == 200
    assert json.loads(body)["type"] == "leaf"


async def test_oversized_delegation_tree_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "MAX_DELEGATE_JSON", 100)
    handler = AdminHandler(FakeAdminContext())
    response, body = await call(handler, "GET", "/delegator.json?path=/$/inet/127.1/80")
    assert response.status == 500
    assert body.decode().startswith("Delegation tree is ")
    assert body.decode().endswith(
        " bytes, over the 100-byte limit of /delegator.json; delegate a more specific path or a smaller dtab\n"
    )


async def test_statistics_and_repr() -> None:
    handler = AdminHandler(FakeAdminContext())
    await call(handler, "GET", "/admin/ping")
    await call(handler, "GET", "/nope")
    assert handler.statistics() == {"requests_total": 2, "refused_control": 0, "failures": 0}
    assert repr(handler).startswith("<AdminHandler endpoints=")


KNOWN_STATUSES = {200, 202, 400, 403, 404, 405, 413, 415, 503}


@settings(max_examples=150, deadline=None)
@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE"]),
    path=st.sampled_from(
        ["/delegator.json", "/admin/metrics.json", "/logging.json", "/namer_state/", "/admin/ready", "/x"]
    ),
    query=st.text(alphabet="abcdeqtrpz=&%/;:>!~|*#$0123456789 ", max_size=40),
    body=st.binary(max_size=64),
)
def test_any_request_gets_a_deliberate_answer(method: str, path: str, query: str, body: bytes) -> None:
    ctx = FakeAdminContext()
    handler = AdminHandler(ctx)

    async def main() -> tuple[int, int]:
        headers = ((b"content-type", b"application/json"),)
        response, _ = await call(handler, method, f"{path}?{query}", body=body, headers=headers)
        return response.status, handler.failures

    status, failures = trio.run(main)
    assert status in KNOWN_STATUSES
    assert failures == 0


async def test_admin_security_turns_paths_off_with_404() -> None:
    from hostproxy.config import load_config

    cfg = load_config(
        "admin:\n  security:\n    controlEnabled: false\n    pathBlacklist: ['/client_state[.]json']\n"
        "routers:\n- protocol: http\n  servers: [{port: 0}]\n",
        source="t.yaml",
    )
    ctx = FakeAdminContext()
    handler = AdminHandler(ctx, security=cfg.admin.security)
    response, body = await call(handler, "POST", "/admin/shutdown")
    assert response.status == 404 and "admin.security" in body.decode()
    assert ctx.shutdowns == 0
    response, _ = await call(handler, "GET", "/client_state.json")
    assert response.status == 404
    response, _ = await call(handler, "GET", "/admin/ping")
    assert response.status == 200
