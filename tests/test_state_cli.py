"""``hostproxy state``: pure table rendering, and the CLI against a real daemon."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

from hostproxy.cli_state import render_tables, table
from tests.daemonutil import curl, fs_config, running_daemon
from tests.upstreams import running_upstream


def test_table_aligns_columns() -> None:
    assert table(["A", "LONGER"], [["xx", 1], [None, "y"]]) == [
        "  A   LONGER",
        "  xx  1",
        "  -   y",
    ]


def test_render_tables_from_hand_made_documents() -> None:
    clients = {
        "/#/io.l5d.fs/web": {
            "state": "bound",
            "addresses": ["10.0.0.7:8080"],
            "stale": True,
            "endpoints": {
                "10.0.0.7:8080": {
                    "weight": 1.0,
                    "load": 2,
                    "status": "open",
                    "accrual": "dead",
                    "pool": {"open": 3, "connect_failures": 4},
                }
            },
        },
        "/#/io.l5d.fs/gone": {"state": "Neg", "addresses": []},
    }
    namers = {
        "/io.l5d.fs": {
            "kind": "io.l5d.fs",
            "names": {
                "web": {
                    "state": "stale",
                    "addrs": [{"host": "10.0.0.7", "port": 8080}],
                    "lastUpdate": "2024-05-01 12:00:00 +0000",
                    "staleAgeSecs": 252.0,
                    "lastError": "web:1: bad line",
                },
            },
        }
    }
    assert render_tables(clients, namers).splitlines() == [
        "CLIENTS (2)",
        "",
        "/#/io.l5d.fs/gone  Neg",
        "  (no endpoints)",
        "",
        "/#/io.l5d.fs/web  bound (stale: namer failing, serving last known endpoints)",
        "  ENDPOINT       WEIGHT  LOAD  STATUS  ACCRUAL  OPEN  CONNECT_FAILURES",
        "  10.0.0.7:8080  1.0     2     open    dead     3     4",
        "",
        "NAMERS (1)",
        "",
        "/io.l5d.fs (io.l5d.fs, 1 name)",
        "  NAME  STATE  ADDRESSES      LAST_UPDATE                STALE_FOR  LAST_ERROR",
        "  web   stale  10.0.0.7:8080  2024-05-01 12:00:00 +0000  4m12s      web:1: bad line",
    ]


async def test_state_cli_against_a_running_daemon(tmp_path: Path) -> None:
    disco = tmp_path / "disco"
    disco.mkdir()
    async with running_upstream() as up:
        (disco / "web").write_text(f"127.0.0.1 {up.port}\n")
        async with running_daemon(fs_config(disco)) as d:
            assert (await curl(f"http://127.0.0.1:{d.port('out')}/", "-H", "Host: web")).status == 200
            proc = await trio.run_process(
                [sys.executable, "-m", "hostproxy", "state", "--admin", d.admin, "--json"],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert proc.returncode == 0, proc.stderr
            doc = json.loads(proc.stdout)
            assert doc["clients"] == (await curl(d.admin + "/client_state.json")).json()
            assert doc["namers"]["/io.l5d.fs"]["names"]["web"]["state"] == "bound"
            proc = await trio.run_process(
                [sys.executable, "-m", "hostproxy", "state", "--admin", d.admin],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert proc.returncode == 0
            out = proc.stdout.decode()
            assert "/#/io.l5d.fs/web  bound\n" in out
            assert f"  127.0.0.1:{up.port}  1.0" in out
            assert "\n  web   bound  127.0.0.1:" in out
