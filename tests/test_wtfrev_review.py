"""``hostproxy wtf`` against a real daemon: the blame and the lead it gives for failures seen end to end."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import trio

from tests.daemonutil import curl, fs_config, running_daemon
from tests.test_wtf_e2e import by_service, write_disco, wtf


@contextlib.asynccontextmanager
async def raw_upstream(handle: Callable[[trio.SocketStream], Awaitable[None]]) -> AsyncIterator[int]:
    """A loopback listener that runs ``handle`` on each connection; its port."""

    async def guarded(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await handle(stream)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, guarded, listeners)
        try:
            yield listeners[0].socket.getsockname()[1]
        finally:
            nursery.cancel_scope.cancel()


async def cut_mid_body(stream: trio.SocketStream) -> None:
    """Answer 200 with a 100,000-byte Content-Length, send 1,000 bytes of it, then reset (RST)."""
    await stream.receive_some()
    await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()


async def test_wtf_says_a_response_was_cut_off_mid_body_and_quotes_the_error(tmp_path: Path) -> None:
    """The head went to the caller (200), the body was cut: wtf must say the response was cut off
    after its head (the caller got a truncated answer) with the endpoint's error, not guess at an idle
    keep-alive connection closed under a new request (which a cut body never is)."""
    disco = tmp_path / "disco"
    async with raw_upstream(cut_mid_body) as port:
        write_disco(disco, "mid", f"127.0.0.1 {port}\n")
        async with running_daemon(fs_config(disco)) as d:
            r = await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: mid")
            assert r.status == 200  # the head was passed on before the body broke
            state = (await curl(f"{d.admin}/client_state.json")).json()
            assert isinstance(state, dict)
            last = state["/#/io.l5d.fs/mid"]["endpoints"][f"127.0.0.1:{port}"]["lastFailure"]
            assert last["cause"] == "upstream/reset"
            assert last["message"].startswith("response body cut off after its head (200): ")
            assert f"connection to 127.0.0.1:{port} was closed or reset" in last["message"]

            code, out, err = await wtf(d.admin, "--json")
            assert code == 1, err
            f = by_service(json.loads(out))[("/svc/mid", "upstream/reset")]
            assert f["endpoint"] == f"127.0.0.1:{port}" and f["fault"] == "network/upstream"
            assert f["verdict"].startswith(
                f"upstream 127.0.0.1:{port} cut off the body of 100% of responses after their head was "
                "passed on (callers got a truncated answer); last error: response body cut off"
            )
            assert "keep-alive" not in f["verdict"] + f["next_step"]
            assert f["next_step"] == (
                f"check the app's logs/restarts on 127.0.0.1:{port} at these times: it died or gave up "
                "while writing the response body"
            )


async def test_wtf_pointed_at_a_router_port_says_so_and_where_the_admin_server_is(tmp_path: Path) -> None:
    """``--admin`` given a router's port (4140 for 9990, a common slip): the router answers wtf's own
    request with its 502 "Unable to route request!". wtf must say a router answered, not the admin
    server, and that this very request now counts as a failure of that router (the next wtf would
    otherwise report a no-route problem nobody else caused)."""
    disco = tmp_path / "disco"
    write_disco(disco, "web", "127.0.0.1 1\n")
    async with running_daemon(fs_config(disco)) as d:
        router = f"http://127.0.0.1:{d.port('out')}"
        code, out, err = await wtf(router)
        assert code == 1 and out == ""
        assert err.startswith(
            f"hostproxy wtf: {router}/admin/metrics.json was answered by a hostproxy router, not its admin "
            "server (a 502 with l5d-err: Unable to route request!"
        ), err
        assert "point --admin at the admin server (admin.ip/admin.port in the config; 9990 by default)" in err
        assert (
            f"this request is counted as a failure of that router (service /svc/127.0.0.1:{d.port('out')})"
            in err
        )
        code, out, _ = await wtf(router, "--json")
        assert code == 1
        doc = json.loads(out)
        assert doc["healthy"] is False and doc["findings"] == []
        assert "was answered by a hostproxy router, not its admin server" in doc["error"]


async def test_wtf_rates_one_failure_in_a_handful_of_requests_a_warning_not_an_error(tmp_path: Path) -> None:
    """One 502 in three requests is "33%", an ERROR by the share alone; so few failures rate nothing
    (the next request may bring it to 25% or 50%): a warning that says how few, while a service
    whose every request failed stays critical however few they were."""
    from tests.upstreams import closed_port, running_upstream

    disco = tmp_path / "disco"
    with closed_port() as refused:
        async with running_upstream() as up:
            write_disco(disco, "low", f"127.0.0.1 {up.port}\n")
            write_disco(disco, "down", f"127.0.0.1 {refused}\n")
            write_disco(disco, "many", f"127.0.0.1 {up.port}\n")
            async with running_daemon(fs_config(disco)) as d:
                base = f"http://127.0.0.1:{d.port('out')}"

                async def get(host: str, path: str = "/") -> int:
                    return (await curl(base + path, "-H", f"Host: {host}")).status

                assert [await get("low"), await get("low"), await get("low", "/status/502")] == [
                    200,
                    200,
                    502,
                ]
                assert [await get("down"), await get("down")] == [502, 502]
                statuses = [await get("many", "/status/500" if i < 3 else "/") for i in range(10)]
                assert statuses.count(500) == 3

                code, out, err = await wtf(d.admin, "--json")
                assert code == 1, err
                found = by_service(json.loads(out))
                low = found[("/svc/low", "upstream/5xx")]
                assert low["severity"] == "warning" and low["fault"] == "application"
                assert low["verdict"].endswith(" (1 of 3 requests: too few to rate)"), low["verdict"]
                down = found[("/svc/down", "connect/refused")]
                assert down["severity"] == "critical"  # every request failed: not a matter of rate
                assert "too few" not in down["verdict"]
                many = found[("/svc/many", "upstream/5xx")]
                assert many["severity"] == "error" and "too few" not in many["verdict"]

                code, out, _ = await wtf(d.admin)
                assert (
                    "WARNING  upstream/5xx [fault: application]  router out /svc/low  33% of 3 requests"
                    in out
                )


async def test_wtf_points_at_every_endpoint_answering_5xx_not_only_the_first(tmp_path: Path) -> None:
    """Both endpoints of a service answer 500: the next step must not send the on-call engineer to one
    host's logs as if the other were fine."""
    from tests.upstreams import running_upstream

    disco = tmp_path / "disco"
    async with running_upstream() as a, running_upstream() as b:
        write_disco(disco, "bad", f"127.0.0.1 {a.port}\n127.0.0.1 {b.port}\n")
        async with running_daemon(fs_config(disco) + "  client: {failureAccrual: {kind: none}}\n") as d:
            # (The balancer picks at random: ask until both were asked and failed, 8 requests at least.)
            for sent in range(1, 201):
                r = await curl(f"http://127.0.0.1:{d.port('out')}/status/500", "-H", "Host: bad")
                assert r.status == 500
                if sent >= 8 and a.requests and b.requests:
                    break
            assert a.requests and b.requests  # both were asked, both failed
            code, out, err = await wtf(d.admin, "--json")
            assert code == 1, err
            f = by_service(json.loads(out))[("/svc/bad", "upstream/5xx")]
            assert f["endpoint"] in (f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}")
            assert f["next_step"] == (
                f"look at the application's logs on {f['endpoint']} (and 1 more); the proxy is not the cause"
            )


async def test_wtf_says_when_the_retry_budget_kept_failures_from_being_retried(tmp_path: Path) -> None:
    """Retryable 503s that the service's empty retry budget let through: still the application's
    fault, but the verdict says hostproxy made no retry for want of budget (else "why did retries not
    hide it?" is the next question, with no answer on screen)."""
    from tests.upstreams import running_upstream

    disco = tmp_path / "disco"
    async with running_upstream() as up:
        write_disco(disco, "web", f"127.0.0.1 {up.port}\n")
        cfg = fs_config(disco) + (
            "  service:\n"
            "    responseClassifier: {kind: io.l5d.http.retryableRead5XX}\n"
            "    retries: {budget: {minRetriesPerSec: 0, percentCanRetry: 0.0}}\n"
        )
        async with running_daemon(cfg) as d:
            for _ in range(3):
                r = await curl(f"http://127.0.0.1:{d.port('out')}/status/503", "-H", "Host: web")
                assert r.status == 503
            assert len(up.requests) == 3  # none retried
            code, out, err = await wtf(d.admin, "--json")
            assert code == 1, err
            f = by_service(json.loads(out))[("/svc/web", "upstream/5xx")]
            assert f["fault"] == "application"
            assert f["verdict"].endswith(
                "; 3 retries were not made: the service's retry budget was spent (service.retries.budget)"
            ), f["verdict"]
