"""Adversarial tests of the operator commands (``hostproxy wtf``, ``state``) against real daemons and
real upstreams on loopback, and against admin addresses where something else answers.

Each test is a defect found by running the commands the way an on-call operator would at 3 a.m.:
the answer must be right (no wrong blame), and a wrong address must be said so, never a traceback.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from hostproxy.diagnose import Snapshot, diagnose
from hostproxy.http.message import Body, Headers, Request, Response
from tests.daemonutil import curl, fs_config, running_daemon
from tests.upstreams import closed_port, running_upstream, serving


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
    report = diagnose(Snapshot(metrics=metrics))
    assert [(f.service, f.cause, f.failures) for f in report.findings] == [("/svc/web", "connect/refused", 2)]


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
