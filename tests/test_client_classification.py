"""The service's response classifier decides what the client's balancer and failure accrual count, and
a gRPC classifier reads ``grpc-status`` from a trailers-only head or from the trailers.

Pure parts with hand-made values; end to end through a real daemon with a real h2 upstream (an
``H2Server`` answering gRPC-shaped responses) and a real HTTP/1.1 upstream.
"""

from __future__ import annotations

from typing import Any

import h2.events
import pytest
import trio

from hostproxy.causes import Cause, Level
from hostproxy.classifier import grpc_status_of
from hostproxy.diagnose import Snapshot, diagnose
from hostproxy.h2 import H2Server, H2ServerParams
from hostproxy.http.message import Body, Headers, Request, Response
from tests.daemonutil import curl, fs_config, running_daemon
from tests.grpc_fixtures.rawh2 import RawClient
from tests.test_lifecycle_helpers import write_disco
from tests.upstreams import running_upstream

pytestmark = pytest.mark.timeout(60)


def test_grpc_status_comes_from_the_trailers_else_the_head() -> None:
    head = Headers([(b"grpc-status", b"14")])
    trailers = Headers([(b"grpc-status", b"0")])
    assert grpc_status_of(head, trailers) == 0
    assert grpc_status_of(head, None) == 14
    assert grpc_status_of(Headers(), Headers()) is None
    assert grpc_status_of(Headers([(b"grpc-status", b"x1")]), None) is None


def test_upstream_grpc_is_an_application_failure() -> None:
    assert Cause("upstream/grpc") is Cause.UPSTREAM_GRPC
    assert Cause.UPSTREAM_GRPC.level is Level.APPLICATION
    assert not Cause.UPSTREAM_GRPC.retryable_exception


def test_wtf_says_grpc_errors_are_the_applications() -> None:
    p = "rt/h2/service/svc/pkg.Svc"
    c = "rt/h2/client/$/inet/127.0.0.1/9"
    srv = "rt/h2/server/127.0.0.1/4142"
    m: dict[str, float] = {}
    for prefix in (p, c, srv):
        m |= {
            f"{prefix}/requests": 10,
            f"{prefix}/success": 6,
            f"{prefix}/failures": 4,
            f"{prefix}/failures/upstream/grpc": 4,
        }
    [f] = diagnose(Snapshot(metrics=m, bindings={"h2": {"/svc/pkg.Svc": ["/$/inet/127.0.0.1/9"]}})).findings
    assert (f.cause, f.fault, f.share) == ("upstream/grpc", "application", 0.4)
    assert f.verdict.startswith("application answers gRPC errors")


GRPC_MSG = b"\x00\x00\x00\x00\x00"


class GrpcApp:
    """``/pkg.Svc/Stream`` streams a message then trailers with grpc-status ``code``;
    ``/pkg.Svc/Only`` answers trailers-only with grpc-status ``code``."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.calls = 0

    async def handle(self, req: Request, info: object) -> Response:
        self.calls += 1
        await req.body.read_all()
        head = Headers([(b"content-type", b"application/grpc")])
        if req.target.endswith("/Only"):
            head.set(b"grpc-status", str(self.code).encode())
            return Response(200, headers=head, body=Body.empty())
        trailers = Headers([(b"grpc-status", str(self.code).encode()), (b"grpc-message", b"why")])

        class Source:
            sent = False

            async def read_chunk(self) -> bytes | None:
                if self.sent:
                    return None
                self.sent = True
                return GRPC_MSG

            @property
            def trailers(self) -> Headers:
                return trailers

            async def aclose(self) -> None:
                pass

        return Response(200, headers=head, body=Body(Source(), None))


def h2_yaml(port: int, classifier: str) -> str:
    return f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: h2
  label: h2
  dtab: /svc => /$/inet/127.0.0.1/{port};
  identifier: {{kind: io.l5d.header.path, segments: 1}}
  service: {{responseClassifier: {{kind: {classifier}}}}}
  client: {{failureAccrual: {{kind: io.l5d.consecutiveFailures, failures: 3}}}}
  servers: [{{ip: 127.0.0.1, port: 0}}]
"""


async def grpc_call(c: RawClient, port: int, path: str) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    sid = await c.request(
        path, port, method=b"POST", end_stream=False, extra=[(b"content-type", b"application/grpc")]
    )
    c.conn.send_data(sid, GRPC_MSG, end_stream=True)
    await c.flush()
    with trio.fail_after(5):
        _status, _body, trailers = await c.response(sid)
    head = next(e for e in c.events if type(e) is h2.events.ResponseReceived and e.stream_id == sid)
    return dict(head.headers), dict(trailers or [])


async def metrics(admin: str) -> dict[str, Any]:
    return (await curl(f"{admin}/admin/metrics.json")).json()  # type: ignore[return-value]


async def test_streamed_grpc_failure_is_counted_under_upstream_grpc_everywhere() -> None:
    app = GrpcApp(code=2)
    upstream = H2Server(app.handle, H2ServerParams())
    async with trio.open_nursery() as nursery:
        [(_, up)] = await nursery.start(upstream.serve)
        async with running_daemon(h2_yaml(up, "io.l5d.h2.grpc.default")) as d:
            async with RawClient.connect(d.port("h2")) as c:
                await c.start()
                head, trailers = await grpc_call(c, d.port("h2"), "/pkg.Svc/Stream")
            assert trailers[b"grpc-status"] == b"2" and trailers[b"l5d-success-class"] == b"0.0"
            assert b"l5d-success-class" not in head  # streamed: the verdict is in the trailers
            m = await metrics(d.admin)
            client = f"rt/h2/client/$/inet/127.0.0.1/{up}"
            server = f"rt/h2/server/127.0.0.1/{d.port('h2')}"
            for prefix in ("rt/h2/service/svc/pkg.Svc", client, server):
                assert m[f"{prefix}/failures/upstream/grpc"] == 1, prefix
                assert m[f"{prefix}/success"] == 0, prefix
        nursery.cancel_scope.cancel()
    assert app.calls == 1  # status 2 is not retryable under grpc.default


@pytest.mark.parametrize(
    ("code", "success_class", "accrual", "failures"), [(0, b"1.0", "alive", 0), (13, b"0.0", "dead", 3)]
)
async def test_trailers_only_grpc_answers_are_labelled_in_the_head_and_judged_by_accrual(
    code: int, success_class: bytes, accrual: str, failures: int
) -> None:
    """A trailers-only answer carries its verdict in its head. Accrual follows the classifier: three
    grpc-status 13 answers (HTTP 200) in a row take the endpoint out (``failures: 3``); status 0 not."""
    app = GrpcApp(code=code)
    upstream = H2Server(app.handle, H2ServerParams())
    async with trio.open_nursery() as nursery:
        [(_, up)] = await nursery.start(upstream.serve)
        async with running_daemon(h2_yaml(up, "io.l5d.h2.grpc.neverRetryable")) as d:
            async with RawClient.connect(d.port("h2")) as c:
                await c.start()
                for _ in range(3):
                    head, _trailers = await grpc_call(c, d.port("h2"), "/pkg.Svc/Only")
                    assert head[b"grpc-status"] == str(code).encode()
                    assert head[b"l5d-success-class"] == success_class
            state = (await curl(f"{d.admin}/client_state.json")).json()
            [ep] = state[f"/$/inet/127.0.0.1/{up}"]["endpoints"].values()
            assert ep["accrual"] == accrual
            m = await metrics(d.admin)
            assert m.get("rt/h2/service/svc/pkg.Svc/failures/upstream/grpc", 0) == failures
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("classifier", "accrual"), [("io.l5d.http.allSuccessful", "alive"), (None, "dead")])
async def test_http_accrual_follows_the_classifier(
    tmp_path: Any, classifier: str | None, accrual: str
) -> None:
    """With ``allSuccessful`` nothing is a failure, so 5XX answers do not take the endpoint out; with the
    default classifier three of them do."""
    async with running_upstream() as up:
        disco = tmp_path / "disco"
        write_disco(disco, "web", up.port)
        service = f"  service: {{responseClassifier: {{kind: {classifier}}}}}\n" if classifier else ""
        yaml = (
            fs_config(disco)
            + service
            + "  client: {failureAccrual: {kind: io.l5d.consecutiveFailures, failures: 3}}\n"
        )
        async with running_daemon(yaml) as d:
            for _ in range(3):
                r = await curl(f"http://127.0.0.1:{d.port('out')}/status/503", "-H", "Host: web")
                assert r.status == 503
                assert r.header("l5d-success-class") == ("1.0" if classifier else "0.0")
            state = (await curl(f"{d.admin}/client_state.json")).json()
            [ep] = state["/#/io.l5d.fs/web"]["endpoints"].values()
            assert ep["accrual"] == accrual
