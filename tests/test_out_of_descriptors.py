"""hostproxy out of file descriptors: its fault, said so, and never blamed on a healthy endpoint.

A daemon process started under ``prlimit --nofile`` runs out of descriptors once enough client
connections are open. A request that then needs a new upstream connection used to fail as
``connect/refused`` — "the upstream refuses connections" — and failure accrual took the healthy
endpoint out. It is now a 503 ``overload`` whose ``l5d-err`` names the limit and what to raise, not
counted against the endpoint (``/client_state.json`` keeps it as ``outOfResources``, and ``hostproxy
wtf`` says whose fault it is); once connections close, requests are served again.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from hostproxy.http.errors import out_of_resources
from tests.daemonutil import curl
from tests.test_lifecycle_helpers import config, daemon_proc, exchange, write_disco
from tests.test_tls_daemon_e2e import wtf_json
from tests.upstreams import running_upstream

pytestmark = pytest.mark.timeout(60)

NOFILE = 64


async def test_running_out_of_descriptors_is_hostproxys_fault_not_the_endpoints(tmp_path: Path) -> None:
    async with running_upstream() as up:
        write_disco(tmp_path / "disco", "web", up.port)
        cfg = tmp_path / "hostproxy.yaml"
        cfg.write_text(config(tmp_path / "disco"))
        async with daemon_proc(
            cfg, argv_prefix=["prlimit", f"--nofile={NOFILE}:{NOFILE}", sys.executable]
        ) as d:
            port = d.port("out")
            conn = await trio.open_tcp_stream("127.0.0.1", port)
            # /close: the upstream closes its connection after each answer, so every request opens one.
            first, _ = await exchange(conn, "/close", host="web")
            assert first.status == 200
            conn = await trio.open_tcp_stream("127.0.0.1", port)
            held: list[socket.socket] = []
            try:
                for _ in range(NOFILE + 16):  # past the limit: the daemon stops accepting
                    held.append(socket.create_connection(("127.0.0.1", port)))
                await trio.sleep(0.5)  # (the daemon accepts what it can)
                result, _ = await exchange(conn, "/close", host="web")
            finally:
                for s in held:
                    s.close()
            assert result.outcome == "ok" and result.status == 503, result
            err = result.headers["l5d-err"]
            assert "out+of+file+descriptors+%28limit+64%29" in err, err
            assert "LimitNOFILE" in err
            # Once the connections are gone it serves again; the endpoint was never blamed.
            with trio.fail_after(20):
                while True:
                    r = await curl(f"http://127.0.0.1:{port}/", "-H", "Host: web", timeout=5)
                    if r.status == 200:
                        break
                    await trio.sleep(0.2)
            m: Any = (await curl(f"{d.admin}/admin/metrics.json")).json()
            client = "rt/out/client/#/io.l5d.fs/web"
            assert m[f"{client}/failure_accrual/removals"] == 0
            assert m.get(f"{client}/failures/connect/refused", 0) == 0
            assert m[f"{client}/failures/overload"] == 1
            assert d.events("client.out_of_resources")
            state: Any = (await curl(f"{d.admin}/client_state.json")).json()
            last = state["/#/io.l5d.fs/web"]["outOfResources"]
            assert last["endpoint"] == f"127.0.0.1:{up.port}" and "LimitNOFILE" in last["message"]
            report = await wtf_json(d.admin)
            (finding,) = [f for f in report["findings"] if f["cause"] == "overload"]
            assert finding["fault"] == "hostproxy" and finding["client"] == "/#/io.l5d.fs/web"
            assert (
                "could not open connections" in finding["verdict"] and "LimitNOFILE" in finding["next_step"]
            )


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (errno.EMFILE, "hostproxy is out of file descriptors"),
        (errno.ENFILE, "the host is out of file descriptors"),
        (errno.ENOBUFS, "the kernel is out of socket memory"),
        (errno.EADDRNOTAVAIL, "no local port is free for it"),
    ],
)
def test_each_local_exhaustion_is_named_with_its_fix(code: int, says: str) -> None:
    errnos = {code} if code == errno.EADDRNOTAVAIL else {errno.ECONNREFUSED, code}
    err = out_of_resources(errnos, "10.0.0.7:8080")
    assert err is not None and err.local and err.retryable and err.cause == "overload"
    assert str(err).startswith(
        f"hostproxy cannot open a connection to 10.0.0.7:8080: {os.strerror(code)}: {says}"
    )


def test_a_refused_connect_is_still_the_upstreams() -> None:
    assert out_of_resources({errno.ECONNREFUSED}, "10.0.0.7:8080") is None
