"""Routing changed while the daemon runs: watched dtab files, reloads and per-request overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hostproxy.config import ConfigError, load_config
from tests.test_lifecycle_helpers import config, daemon_proc, get, write_atomic, write_disco
from tests.upstreams import running_upstream


def _interp(path: Path) -> str:
    return f"  interpreter:\n    kind: io.l5d.fs\n    dtabFile: {path}\n"


async def test_dtab_file_cut_off_last_dentry_points_at_its_line(tmp_path: Path) -> None:
    """A dtab file whose last dentry is cut off (``/svc/x =>`` and the file's final line break) was
    rejected as ``FILE:4:1`` with an empty line under the caret: the end of the input was placed
    after the final line break, on a line the file does not have. The error now points just after
    the last thing written (``FILE:3:10``, the incomplete line shown), and the last good dtab stays."""
    async with running_upstream() as a:
        disco = tmp_path / "disco"
        write_disco(disco, "a", a.port)
        dtab_file = tmp_path / "dtab"
        dtab_file.write_text("/svc/web => /#/io.l5d.fs/a;\n")
        cfg = tmp_path / "hostproxy.yaml"
        cfg.write_text(config(disco, dtab="/svc/other => /#/io.l5d.fs/a;", interpreter=_interp(dtab_file)))
        async with daemon_proc(cfg) as d:
            port = d.port("out")
            assert (await get(port, "/")).status == 200
            write_atomic(dtab_file, "/svc/web => /#/io.l5d.fs/a;\n/svc/b => /#/io.l5d.fs/a;\n/svc/x =>\n\n")
            rejected = await d.wait_event("dtab.rejected")
            assert rejected["error"] == (
                f"{dtab_file}:3:10: a name ('/path', '!', '~', '$' or '(') expected but end of input found\n"
                "/svc/x =>\n"
                "         ^"
            )
            state = json.loads((await get(d.admin_port, "/dtab_state.json", host="admin")).body)["out"]
            assert state["version"] == 1 and state["last_error"]["message"] == rejected["error"]
            n = len(a.requests)
            assert (await get(port, "/")).status == 200 and len(a.requests) == n + 1


async def test_reload_to_a_broken_dtab_file_names_the_config_key(tmp_path: Path) -> None:
    """A reload whose config pointed a router at a dtab file that does not parse (or does not exist)
    was refused with only the dtab file's own error and the startup advice "fix it and start again":
    neither the config file's line nor the config path (``routers[0].interpreter.dtabFile``) was
    named, and no restart is needed. It now reads like every other reload error, FILE:LINE: PATH, and
    says to reload again; the running dtab stays in force."""
    async with running_upstream() as a:
        disco = tmp_path / "disco"
        write_disco(disco, "a", a.port)
        good = tmp_path / "good.dtab"
        good.write_text("/svc/web => /#/io.l5d.fs/a;\n")
        bad = tmp_path / "bad.dtab"
        bad.write_text("/svc/web => /#/io.l5d.fs/a;\n/svc/x => ;\n")
        cfg = tmp_path / "hostproxy.yaml"
        cfg.write_text(config(disco, dtab="/svc/other => /#/io.l5d.fs/a;", interpreter=_interp(good)))
        line = next(i for i, t in enumerate(cfg.read_text().splitlines(), 1) if "dtabFile:" in t)
        async with daemon_proc(cfg) as d:
            port = d.port("out")
            assert (await get(port, "/")).status == 200
            write_atomic(cfg, config(disco, dtab="/svc/other => /#/io.l5d.fs/a;", interpreter=_interp(bad)))
            r = await get(d.admin_port, "/admin/reload", method="POST", host="admin")
            assert r.status != 200
            assert r.body.decode() == (
                "reload rejected, the running config stays: 1 error(s)\n"
                f"{cfg}:{line}: routers[0].interpreter.dtabFile: dtab file {bad} is not a valid dtab: "
                "fix it and reload again\n"
                f"{bad}:2:11: a name ('/path', '!', '~', '$' or '(') expected but ';' found "
                "(a name tree term is missing)\n"
                "/svc/x => ;\n"
                "          ^\n"
            )
            missing = tmp_path / "missing.dtab"
            write_atomic(
                cfg, config(disco, dtab="/svc/other => /#/io.l5d.fs/a;", interpreter=_interp(missing))
            )
            r = await get(d.admin_port, "/admin/reload", method="POST", host="admin")
            assert r.body.decode().startswith(
                "reload rejected, the running config stays: 1 error(s)\n"
                f"{cfg}:{line}: routers[0].interpreter.dtabFile: dtab file {missing} does not exist"
            )
            n = len(a.requests)
            assert (await get(port, "/")).status == 200 and len(a.requests) == n + 1


def test_config_dtab_cut_off_last_dentry_points_at_its_line() -> None:
    """A config dtab block ending in an incomplete dentry was reported on the line after the block,
    column 1 (past the block's final line break), so `hostproxy check` and a refused reload named a
    line with no dentry on it. The error now names the line and column just after ``=>``."""
    text = (
        "routers:\n- protocol: http\n  dtab: |\n    /svc => /a;\n    /svc/x =>\n  servers: [{port: 4999}]\n"
    )
    with pytest.raises(ConfigError) as ei:
        load_config(text, source="c.yaml")
    assert ei.value.errors[0].format() == (
        "c.yaml:5: routers[0].dtab: invalid dtab at line 5, column 14: a name ('/path', '!', '~', '$' or '(') "
        "expected but end of input found\n"
        "    /svc/x =>\n"
        "             ^"
    )
